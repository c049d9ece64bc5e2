# frozen_string_literal: true

require "erb"
require "yaml"
require "rails/railtie"
require_relative "rails_transactions"

module TaskerWorker
  # Loaded when Rails is (lib/tasker_worker.rb, and the CLI before it boots an app). It owns:
  # 1. configuration: config/tasker_worker.yml (per environment, ERB allowed, every option of
  #    TaskerWorker.configure), then the app's initializers; the database URL defaults to the
  #    app's primary database, the logger to Rails.logger;
  # 2. running each step inside the app's executor (connections go back to the pool after each
  #    step, query cache, CurrentAttributes reset), or its reloader where code reloading is on,
  #    so an edited handler is used by the next step;
  # 3. a warning when the worker's threads outnumber the ActiveRecord pool;
  # 4. create_task inside an ActiveRecord transaction writes on its connection (it commits or
  #    rolls back with the app's rows);
  # 5. the rake tasks tasker_worker:migrate and tasker_worker:status, and keeping the tasker
  #    schema in databases that db:test:prepare / db:schema:load rebuild.
  class Railtie < ::Rails::Railtie
    initializer "tasker_worker.configuration", before: :load_config_initializers do |app|
      RailsSupport.configure_from(app)
      Hooks.step_wrapper = RailsSupport.step_wrapper(app)
      Hooks.worker_starting = ->(worker) { RailsSupport.check_pool(worker.concurrency) }
      Hooks.transaction_connection = ->(client) { RailsTransactions.connection_for(client) }
      Hooks.error_reporter = RailsSupport.error_reporter
    end

    # The tasker and pgmq schemas are the gem's, installed by migrate!: neither schema dump
    # holds them (nor sqlx's table of applied migrations), so loading a dump and migrating
    # again gives the same database.
    initializer "tasker_worker.schema_dumps" do
      ActiveSupport.on_load(:active_record) do
        ActiveRecord::SchemaDumper.ignore_tables |= [RailsSupport::SQLX_TABLE]
        ActiveRecord::Tasks::DatabaseTasks.structure_dump_flags = RailsSupport.dump_flags(
          ActiveRecord::Tasks::DatabaseTasks.structure_dump_flags
        )
      end
    end

    rake_tasks { load File.expand_path("tasks/tasker_worker.rake", __dir__) }
  end

  # What the Railtie does, as plain methods (the rake tasks use them too).
  module RailsSupport
    CONFIG_FILE = "config/tasker_worker.yml"
    SQLX_TABLE = "_sqlx_migrations"
    EXCLUDED_FROM_DUMPS = ["--exclude-schema=tasker", "--exclude-schema=pgmq", "--exclude-table=public.#{SQLX_TABLE}"].freeze

    class << self
      def configure_from(app)
        options = file_options(app)
        TaskerWorker.configure do |c|
          options.each { |option, value| c.public_send(:"#{option}=", value) }
          c.database_url ||= database_url_for(app, ::Rails.env)
          c.logger = ::Rails.logger if c.default_logger? && ::Rails.logger
        end
      end

      # This environment's section of config/tasker_worker.yml (empty without the file).
      def file_options(app, env = ::Rails.env)
        path = app.root.join(CONFIG_FILE)
        return {} unless path.exist?

        sections = YAML.safe_load(ERB.new(path.read).result, aliases: true, filename: path.to_s) || {}
        section = sections.fetch(env, {}) || {}
        raise ConfigurationError, "#{CONFIG_FILE}: the #{env} section must be a mapping" unless section.is_a?(Hash)

        section.transform_keys(&:to_sym).tap do |options|
          unknown = options.keys - Configuration::OPTIONS
          raise ConfigurationError, "#{CONFIG_FILE} (#{env}): unknown option #{unknown.first}" if unknown.any?
        end
      rescue Psych::Exception => e
        raise ConfigurationError, "#{CONFIG_FILE}: #{e.message}"
      end

      # The URL the worker uses in `env`: the file's database_url, else the app's primary
      # database (config/database.yml, which also honours DATABASE_URL). nil without either.
      def database_url_for(app, env)
        file_options(app, env)[:database_url] || primary_database_url(app, env)
      end

      # Installs the tasker schema in `env`'s database (after a dump was loaded into it).
      def migrate_environment(env)
        url = database_url_for(::Rails.application, env)
        raise ConfigurationError, "no database for #{env}: set database_url in #{CONFIG_FILE} or config/database.yml" unless url

        result = Database.migrate!(url)
        puts "tasker_worker (#{env}): #{Database.describe(result)}" unless result[:applied].empty?
      end

      # The app's pg_dump flags (an Array, a Hash by adapter, or none) plus ours.
      def dump_flags(existing)
        case existing
        when nil then EXCLUDED_FROM_DUMPS.dup
        when Hash then existing.merge(postgresql: Array(existing[:postgresql]) | EXCLUDED_FROM_DUMPS)
        else Array(existing) | EXCLUDED_FROM_DUMPS
        end
      end

      def step_wrapper(app)
        if reloading?(app)
          ->(&step) { app.reloader.wrap(&step) }
        else
          ->(&step) { app.executor.wrap(&step) }
        end
      end

      def check_pool(concurrency)
        return unless defined?(::ActiveRecord::Base)

        pool = ::ActiveRecord::Base.connection_db_config&.pool
        return unless pool && concurrency > pool

        TaskerWorker.logger.warn("concurrency #{concurrency} exceeds the ActiveRecord pool of #{pool}: " \
                                 "handlers that use ActiveRecord will wait for connections; set pool: #{concurrency} " \
                                 "(or more) in config/database.yml")
      end

      # Rails.error (Rails >= 7) hears of each handler exception, handled, with the step in
      # its context; nil on Rails 6.1, which has no error reporter.
      def error_reporter
        return unless ::Rails.respond_to?(:error)

        lambda do |exception, context|
          # Keywords Rails 7.0 already takes (`source:` came in 7.1).
          ::Rails.error.report(exception, handled: true, severity: :error,
                                          context: { tasker_step: context.step_name, tasker_step_uuid: context.step_uuid,
                                                     tasker_task_uuid: context.task_uuid,
                                                     tasker_handler: context.handler_callable })
        end
      end

      private

      def reloading?(app)
        config = app.config
        config.respond_to?(:reloading_enabled?) ? config.reloading_enabled? : !config.cache_classes
      end

      def primary_database_url(app, env)
        return unless defined?(::ActiveRecord::Base)

        db = ::ActiveRecord::Base.configurations.configs_for(env_name: env.to_s, name: "primary") ||
             ::ActiveRecord::Base.configurations.configs_for(env_name: env.to_s).first
        db && url_from(db.configuration_hash)
      rescue StandardError => e
        raise ConfigurationError, "#{app.class.name}: could not read the #{env} database configuration: #{e.message}"
      end

      def url_from(config)
        return config[:url] if config[:url]
        return unless config[:adapter].to_s.match?(/postg/)

        userinfo = [config[:username], config[:password]].compact.map { |part| ERB::Util.url_encode(part.to_s) }.join(":")
        host = config[:host].to_s
        port = ":#{config[:port]}" if config[:port]
        "postgres://#{"#{userinfo}@" unless userinfo.empty?}#{host}#{port}/#{config[:database]}"
      end
    end
  end
end
