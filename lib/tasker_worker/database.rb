# frozen_string_literal: true

module TaskerWorker
  # Schema management. `migrate!` installs PGMQ (unless the database already has the
  # extension) and the `tasker` schema; it is idempotent and safe to run from several
  # processes at once.
  module Database
    # Returns { pgmq_source: "sql" | "extension", pgmq_installed_now: bool, applied: [versions] }.
    # Without an argument: the configured database (TaskerWorker.configure, DATABASE_URL; in
    # Rails, config/tasker_worker.yml or the app's primary database).
    def self.migrate!(url = TaskerWorker.configuration.database_url)
      if url.nil? || url.empty?
        raise ConfigurationError, "database url is not set: pass one, set DATABASE_URL, or " \
                                  "TaskerWorker.configure { |c| c.database_url = ... }"
      end

      native_migrate(url)
    end

    # The URL without its password, for messages.
    def self.redact(url)
      url.to_s.sub(%r{\A([a-z]+://[^:/@]*):[^@/]*@}i, '\1:***@')
    end

    # One line for a person: what migrate! did.
    def self.describe(result)
      applied = result[:applied]
      pgmq = result[:pgmq_installed_now] ? "installed PGMQ" : "PGMQ already there (#{result[:pgmq_source]})"
      "#{applied.empty? ? "schema up to date" : "applied #{applied.size} migration(s)"}, #{pgmq}"
    end
  end
end
