# frozen_string_literal: true

module TaskerWorker
  # Schema management. `migrate!` installs PGMQ (unless the database already has the
  # extension) and the `tasker` schema; it is idempotent and safe to run from several
  # processes at once.
  module Database
    # Returns { pgmq_source: "sql" | "extension", pgmq_installed_now: bool, applied: [versions] }.
    def self.migrate!(url = ENV["DATABASE_URL"])
      raise ConfigurationError, "database url is not set: pass one or set DATABASE_URL" if url.nil? || url.empty?

      native_migrate(url)
    end
  end
end
