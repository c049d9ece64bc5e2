# frozen_string_literal: true

module TaskerWorker
  # One worker thread. It owns:
  # 1. pulling the next claimed step from the Rust core (`next_step`, GVL released);
  # 2. resolving and running the step's handler;
  # 3. turning whatever happened into a completion and handing it back (`complete`).
  # A handler's exception never escapes; a step whose result cannot be converted is
  # completed as an `invalid_result` failure instead.
  class Processor
    POLL_SECONDS = 0.5

    attr_reader :thread

    def initialize(native, registry, index, on_exit)
      @native = native
      @registry = registry
      @index = index
      @on_exit = on_exit
      @done = false
    end

    def start
      @thread = Thread.new { run }
      self
    end

    def terminate
      @done = true
    end

    private

    def run
      Thread.current.name = "tasker_worker.processor.#{@index}"
      until @done || @native.stopped?
        event = next_event
        process(event) if event
      end
    ensure
      @on_exit.call(self)
    end

    # An error from the extension itself is logged and retried after a pause rather than
    # killing the thread (which would be replaced and fail the same way at once).
    def next_event
      @native.next_step(POLL_SECONDS)
    rescue StandardError => e
      TaskerWorker.logger.error("tasker_worker: next_step failed: #{e.class}: #{e.message}")
      sleep 1
      nil
    end

    def process(event)
      context = StepContext.new(event)
      complete(event[:event_id], outcome(context))
    end

    # Resolution errors (HandlerNotFoundError) and handler exceptions map the same way here
    # as in TaskerWorker::Testing. The framework's wrapper (Rails: executor or reloader) runs
    # around resolution too, so a reloaded handler class is the one resolved.
    def outcome(context)
      Hooks.wrap_step do
        ResultMapper.capture { @registry.resolve(context.handler_callable, config: context.config).call(context) }
      end
    end

    def complete(event_id, completion)
      @native.complete(event_id, completion)
    rescue SerializationError => e
      @native.complete(event_id, ResultMapper.invalid_result(e))
    rescue CompletionRejected => e
      TaskerWorker.logger.warn("tasker_worker: completion rejected: #{e.message}")
    end
  end
end
