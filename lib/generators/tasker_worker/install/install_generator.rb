# frozen_string_literal: true

require "rails/generators"
require "rails/generators/active_record"

module TaskerWorker
  module Generators
    # `bin/rails generate tasker_worker:install`: the configuration, an initializer, an example
    # task template with its handler and spec, and a migration that installs PGMQ and the
    # tasker schema when `bin/rails db:migrate` runs.
    class InstallGenerator < ::Rails::Generators::Base
      include ::ActiveRecord::Generators::Migration

      source_root File.expand_path("templates", __dir__)
      desc "Adds tasker_worker to this app: config/tasker_worker.yml, an initializer, config/tasks/, " \
           "app/handlers/ with an example and its spec, and a migration installing the tasker schema."

      def configuration
        template "tasker_worker.yml.tt", "config/tasker_worker.yml"
        template "initializer.rb.tt", "config/initializers/tasker_worker.rb"
      end

      def example_workflow
        template "greeting.yml.tt", "config/tasks/greeting.yml"
        template "greeting_handler.rb.tt", "app/handlers/greeting_handler.rb"
        template "greeting_handler_spec.rb.tt", "spec/handlers/greeting_handler_spec.rb"
      end

      def schema_migration
        migration_template "install_tasker_worker.rb.tt", "db/migrate/install_tasker_worker.rb"
      end

      private

      def migration_version
        "[#{::ActiveRecord::Migration.current_version}]"
      end

      def spec_helper
        File.exist?(File.join(destination_root, "spec/rails_helper.rb")) ? "rails_helper" : nil
      end
    end
  end
end
