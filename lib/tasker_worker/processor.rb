# frozen_string_literal: true

module TaskerWorker
  # One worker thread. It owns:
  # 1. pulling the next claimed step from the Rust core (`next_step`, GVL released);
  # 2. resolving and running the step's handler;
  # 3. turning whatever happened into a completion and handing it back (`complete`), at once,
  #    whatever the handler did: an exception of any class (SystemExit included) becomes a
  #    failure result, and a thread killed mid-handler completes its step on its way out;
  # 4. being abandoned (`abandon`) when its step timed out in the core: HandlerAbandoned is
  #    raised inside the handler, never elsewhere, and the thread ends instead of taking more.
  # A step whose result cannot be converted is completed as an `invalid_result` failure.
  # A handler that returns a checkpoint yield (StepHandler#checkpoint_yield) has it saved and
  # is run again at once, same claim, with the new checkpoint in its context; a yield that
  # cannot be saved fails the step (retryable `checkpoint_error`, or `checkpoint_yield_limit`
  # past `worker.checkpoints.max_yields_per_claim`), and the retry resumes from the last one.
  class Processor
    POLL_SECONDS = 0.5
    # How long an abandoned thread has to leave its handler after HandlerAbandoned before the
    # worker kills it.
    ABANDON_GRACE_SECONDS = 1.0

    attr_reader :thread

    def initialize(native, registry, index, on_exit)
      @native = native
      @registry = registry
      @index = index
      @on_exit = on_exit
      @done = false
      @lock = Mutex.new
      @event = nil
    end

    def start
      @thread = Thread.new { run }
      self
    end

    def terminate
      @done = true
    end

    # If this thread is still running the handler of `event_id`: it takes no more steps and
    # HandlerAbandoned is raised in the handler. Returns the event (nil when the handler
    # already returned; then there is nothing to abandon).
    def abandon(event_id)
      @lock.synchronize do
        next unless @event && @event[:event_id] == event_id

        @done = true
        @thread.raise(HandlerAbandoned, "step #{@event[:step_name]} timed out in the core (ffi_timeout); " \
                                        "this handler's thread was replaced")
        @event
      end
    end

    private

    # Interrupts from `abandon` are held back outside the handler (`outcome` lets them in), so
    # one can never hit a later step or the completion of this one.
    def run
      Thread.current.name = "tasker_worker.processor.#{@index}"
      Thread.handle_interrupt(HandlerAbandoned => :never) do
        until @done || @native.stopped?
          event = next_event
          process(event) if event
        end
      end
    rescue Exception => e # rubocop:disable Lint/RescueException -- logged; the thread is replaced
      TaskerWorker.logger.error("processor thread #{@index} failed: #{e.class}: #{e.message}")
    ensure
      @on_exit.call(self)
    end

    # An error from the extension itself is logged and retried after a pause rather than
    # killing the thread (which would be replaced and fail the same way at once).
    def next_event
      @native.next_step(POLL_SECONDS)
    rescue StandardError => e
      TaskerWorker.logger.error("next_step failed: #{e.class}: #{e.message}")
      sleep 1
      nil
    end

    # `ensure` also runs when the thread is killed inside the handler: the step is completed
    # then, not left to the completion timeout.
    def process(event)
      @lock.synchronize { @event = event }
      completed = false
      completed = complete(event, outcome(StepContext.new(event, checkpointer(event))))
    ensure
      complete(event, ResultMapper.handler_killed) unless completed
      @lock.synchronize { @event = nil }
    end

    # Resolution errors (HandlerNotFoundError) and handler exceptions map the same way here
    # as in TaskerWorker::Testing. The framework's wrapper (Rails: executor or reloader) runs
    # around resolution too, so a reloaded handler class is the one resolved.
    def outcome(context)
      value = Hooks.wrap_step do
        Thread.handle_interrupt(HandlerAbandoned => :immediate) { run_handler(context) }
      end
      ResultMapper.from_return(value)
    rescue Exception => e # rubocop:disable Lint/RescueException -- no handler can stop the worker or lose its step
      log_unusual(context, e) unless e.is_a?(StandardError)
      report(e, context)
      ResultMapper.from_exception(e)
    end

    # Each run resolves a new handler instance, as for any step.
    def run_handler(context)
      loop do
        value = @registry.resolve(context.handler_callable, config: context.config).call(context)
        return value unless value.is_a?(StepHandler::CheckpointYield)

        failed = checkpoint_yield(context, value)
        return failed if failed
      end
    end

    # Saves a returned checkpoint yield; nil when saved, else the failure to complete with.
    def checkpoint_yield(context, value)
      context.yield_checkpoint(value)
      nil
    rescue CheckpointLimitError => e
      yield_failure("checkpoint_yield_limit", e)
    rescue Error => e
      yield_failure("checkpoint_error", e)
    end

    def yield_failure(error_type, exception)
      StepHandler::Failure.new(message: "Checkpoint yield failed: #{exception.message}", error_type: error_type,
                               retryable: true, context: { "error_class" => exception.class.name })
    end

    def checkpointer(event)
      native = @native
      event_id = event[:event_id]
      ->(data, yielded) { native.checkpoint(event_id, data, yielded) }
    end

    # The framework's error reporter (Rails >= 7: Rails.error) hears of every handler
    # exception; a reporter that raises is logged and changes nothing.
    def report(exception, context)
      Hooks.error_reporter&.call(exception, context)
    rescue Exception => e # rubocop:disable Lint/RescueException -- the step's failure must still be committed
      TaskerWorker.logger.error("tasker_worker: the error reporter raised #{e.class}: #{e.message}")
    end

    # What a StandardError means is the handler's business; anything else (exit, a signal
    # class, NoMemoryError, ...) is worth a line naming the step.
    def log_unusual(context, exception)
      what = exception.is_a?(SystemExit) ? "called exit(#{exception.status})" : "raised #{exception.class}"
      TaskerWorker.logger.error("the handler #{context.handler_callable} of step #{context.step_name} " \
                                "(#{context.step_uuid}) #{what}; the step fails and the worker keeps running")
    end

    # True once the core has the completion or has refused it for good.
    def complete(event, completion)
      @native.complete(event[:event_id], completion)
    rescue SerializationError => e
      @native.complete(event[:event_id], ResultMapper.invalid_result(e))
    rescue CompletionRejected => e
      TaskerWorker.logger.warn("completion of step #{event[:step_name]} rejected: #{e.message}")
      true
    end
  end
end
