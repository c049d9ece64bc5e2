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
      # Starts the forwarding thread once (again after a fork, where it does not exist). The
      # core's records go to `config`'s logger at `config`'s level: a Worker passes its own
      # configuration, which may set log_level or logger beyond the global one.
      def start(config = TaskerWorker.configuration)
        @mutex.synchronize do
          Native.log_level = config.log_level.to_s
          @logger = config.logger
          @thread = Thread.new { run } unless @thread&.alive?
        end
      end

      private

      def run
        Thread.current.name = "tasker_worker.logs"
        loop { Native.drain_logs(1.0).each { |level, target, message| write(level, target, message) } }
      end

      def write(level, target, message)
        (@logger || TaskerWorker.logger).add(LEVELS.fetch(level, Logger::INFO), message, target)
      rescue StandardError
        nil # a broken logger must not kill log forwarding
      end
    end
  end

  def self.logger
    configuration.logger
  end
end
