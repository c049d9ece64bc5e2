# frozen_string_literal: true

module TaskerWorker
  # Base class of every error this gem raises.
  class Error < StandardError; end

  # A setting or argument is invalid; the message names it.
  class ConfigurationError < Error; end

  # PostgreSQL refused or dropped the connection, or a statement failed.
  class DatabaseError < Error; end

  # Installing PGMQ or running the schema migrations failed.
  class MigrationError < Error; end

  # A queue operation was rejected (bad queue name, missing queue).
  class QueueError < Error; end

  # A value could not be converted to or from JSON.
  class SerializationError < Error; end

  # A defect in the native extension (for example a caught Rust panic). Please report it.
  class InternalError < Error; end
end
