# frozen_string_literal: true

require "uri"

module TaskerWorker
  # create_task inside an ActiveRecord transaction (the Railtie sets Hooks.transaction_connection
  # to `connection_for`): the transaction's connection when it is on the tasker database.
  module RailsTransactions
    LOCAL_HOSTS = [nil, "", "localhost", "127.0.0.1", "::1", "[::1]"].freeze
    private_constant :LOCAL_HOSTS

    class << self
      # The ActiveRecord connection when it holds an open transaction on the client's
      # database, else nil (create_task then makes its own transaction). A transaction on
      # another database is named in a warning once: the task cannot be part of it.
      def connection_for(client)
        return unless defined?(::ActiveRecord::Base) && ::ActiveRecord::Base.connection_pool.active_connection?

        connection = ::ActiveRecord::Base.connection
        return unless connection.transaction_open? && connection.adapter_name.match?(/postg/i)
        return connection.raw_connection if same_database?(client.database_url, connection.pool.db_config.configuration_hash)

        warn_other_database_once(client.database_url)
        nil
      end

      # Host (any spelling of this machine counts as one), port and database name.
      def same_database?(url, config)
        return false unless url

        uri = URI.parse(url)
        place(uri.host, uri.port, uri.path.delete_prefix("/")) == place(config[:host], config[:port], config[:database])
      rescue URI::InvalidURIError
        false
      end

      private

      def place(host, port, database)
        host = host.to_s
        [LOCAL_HOSTS.include?(host) || host.start_with?("/") ? :local : host.downcase, (port || 5432).to_i, database.to_s]
      end

      def warn_other_database_once(url)
        return if @warned_other_database

        @warned_other_database = true
        TaskerWorker.logger.warn("tasker_worker: create_task inside an ActiveRecord transaction, but the tasker database " \
                                 "(#{Database.redact(url)}) is not the app's: the task is created at once, outside it")
      end
    end
  end
end
