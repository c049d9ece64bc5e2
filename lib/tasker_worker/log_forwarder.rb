# frozen_string_literal: true

module TaskerWorker
  # Carries the Rust core's log records to the Ruby logger. One thread per process drains
  # them in batches; the core drops (and counts) records rather than wait for Ruby.
  module LogForwarder
    LEVELS = {
      "ERROR" => Logger::ERROR, "WARN" => Logger::WARN, "INFO" => Logger::INFO,
      "DEBUG" => Logger::DEBUG, "TRACE" => Logger::DEBUG
    }.freeze

    @mutex = Mutex.new
    @thread = nil

    class << self
      # Starts the forwarding thread once (again after a fork, where it does not exist).
      def start
        @mutex.synchronize do
          Native.log_level = TaskerWorker.configuration.log_level.to_s
          @thread = Thread.new { run } unless @thread&.alive?
        end
      end

      private

      def run
        Thread.current.name = "tasker_worker.logs"
        loop { Native.drain_logs(1.0).each { |level, target, message| write(level, target, message) } }
      end

      def write(level, target, message)
        TaskerWorker.logger.add(LEVELS.fetch(level, Logger::INFO), message, target)
      rescue StandardError
        nil # a broken logger must not kill log forwarding
      end
    end
  end

  def self.logger
    configuration.logger
  end
end
