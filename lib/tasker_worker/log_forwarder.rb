# frozen_string_literal: true

module TaskerWorker
  # Carries the Rust core's log records to the Ruby logger. One thread per process drains
  # them in batches; the core drops (and counts) records rather than wait for Ruby.
  module LogForwarder
    LEVELS = {
      "ERROR" => Logger::ERROR, "WARN" => Logger::WARN, "INFO" => Logger::INFO,
      "DEBUG" => Logger::DEBUG, "TRACE" => Logger::DEBUG
    }.freeze

    # A core record as the logger gets it: the text "message key=value ..." for any logger,
    # with the message and fields kept apart for the default formatter's JSON lines.
    class Line < String
      attr_reader :message, :fields

      def initialize(message, fields)
        @message = message
        @fields = fields
        super([message, *fields.map { |key, value| "#{key}=#{Line.value_text(value)}" }].join(" "))
      end

      # Quoted only when needed, so the line stays easy to grep and to parse.
      def self.value_text(value)
        text = value.to_s
        text.match?(/\A[^\s"=]+\z/) ? text : text.inspect
      end
    end

    @mutex = Mutex.new
    @thread = nil
    @written = 0 # records the thread has handed to the logger; only the thread adds to it

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

      # Waits up to `timeout` seconds until every record the core queued before the call is
      # written, so a process that exits next (the CLI after a stop) loses none of its last lines.
      def flush(timeout = 1.0)
        target = Native.queued_logs
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
        while @written < target && @thread&.alive?
          break if Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline

          sleep 0.002
        end
        @written >= target
      end

      private

      def run
        Thread.current.name = "tasker_worker.logs"
        loop do
          batch = Native.drain_logs(1.0)
          batch.each { |level, target, message, fields| write(level, target, message, fields) }
          @written += batch.size
        end
      end

      def write(level, target, message, fields)
        line = Line.new(message, fields.to_h)
        (@logger || TaskerWorker.logger).add(LEVELS.fetch(level, Logger::INFO), line, target)
      rescue StandardError
        nil # a broken logger must not kill log forwarding
      end
    end
  end

  def self.logger
    configuration.logger
  end
end
