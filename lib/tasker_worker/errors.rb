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

  # Raised by a handler to fail its step with a code and context the orchestrator keeps.
  # Raise a subclass: PermanentError or RetryableError. Any other exception a handler
  # raises fails the step as a retryable "handler_error".
  class StepError < Error
    attr_reader :error_code, :context

    def initialize(message = nil, error_code: nil, context: {})
      super(message)
      @error_code = error_code&.to_s
      @context = context || {}
    end
  end

  # The step can never succeed (bad input, declined card): it is not retried.
  class PermanentError < StepError; end

  # The step may succeed later (a timeout, a rate limit): it is retried, no sooner than
  # `retry_after` seconds when given.
  class RetryableError < StepError
    attr_reader :retry_after

    # The core stores the hint as whole seconds, so fractions round up rather than retry early.
    def self.coerce_retry_after(value)
      return nil if value.nil?
      return value.ceil if value.is_a?(Numeric) && value.real? && value.finite? && value >= 0

      raise ArgumentError, "retry_after must be a number of seconds >= 0 or nil, got #{value.inspect}"
    end

    def initialize(message = nil, retry_after: nil, error_code: nil, context: {})
      super(message, error_code: error_code, context: context)
      @retry_after = self.class.coerce_retry_after(retry_after)
    end
  end

  # No registration and no handler class matches a step's callable. `callable` is the
  # name looked up and `reason` says why nothing matched.
  class HandlerNotFoundError < Error
    attr_reader :callable, :reason

    def initialize(message = nil, callable: nil, reason: nil)
      @callable = callable&.to_s
      @reason = reason
      super(message || "no handler for #{@callable.inspect}: #{reason}")
    end
  end

  # A handler returned something that cannot be stored as a step result.
  class InvalidResultError < Error; end

  # A worker was used in a forked child; only the process that started it may use it.
  class ForkError < Error; end

  # The core refused a completion: the step is unknown, its lease was lost, or it was
  # already completed.
  class CompletionRejected < Error; end
end

module TaskerWorker
  # `Client.wait` gave up before the task settled.
  class TimeoutError < Error; end
end

module TaskerWorker
  # An operation (Client#cancel_task, #retry_step, #replay_dead_letter, ...) named a task,
  # step or dead letter that does not exist.
  class NotFoundError < Error; end

  # An operation the state machine does not allow: cancelling a task already complete or
  # cancelled, retrying a step not in error, resolving a step a worker holds, replaying a dead
  # letter twice. The message says the state and what is allowed.
  class InvalidStateError < Error; end
end

module TaskerWorker
  # An input is over a documented limit (e.g. a task context nested deeper than 64 levels or
  # larger than 16 MiB of JSON, or holding NaN); the message names the limit.
  class InvalidInputError < ArgumentError; end

  # Raised (with Thread#raise) inside a handler that is still running after its step was
  # failed with ffi_timeout; its thread has already been replaced. Not a StandardError, so a
  # handler's `rescue => e` does not swallow it; a thread that ignores it is killed after
  # Processor::ABANDON_GRACE_SECONDS.
  class HandlerAbandoned < Exception; end # rubocop:disable Lint/InheritException -- must pass a handler's `rescue => e`
end

module TaskerWorker
  # A checkpoint (`context.checkpoint(cursor:, ...)`) was not saved because this claim no
  # longer holds its step: the lease lapsed and another worker reclaimed it, or the step timed
  # out or was already completed. Nothing was changed; the step's result from this run will
  # not be committed either, so the handler may stop.
  class StaleClaimError < Error; end

  # A checkpoint is over a `worker.checkpoints` limit (max_bytes, max_yields_per_claim); the
  # message names the key. Nothing was saved.
  class CheckpointLimitError < InvalidInputError; end
end
