# frozen_string_literal: true

module Examples
  module Errors
    class AlwaysPermanent < TaskerWorker::StepHandler
      def call(_context)
        raise TaskerWorker::PermanentError, "this step can never succeed"
      end
    end

    class AlwaysRetryable < TaskerWorker::StepHandler
      def call(context)
        raise TaskerWorker::RetryableError, "still unavailable (attempt #{context.attempt})"
      end
    end

    # Fails its first attempt, succeeds on the next: the retry is the point.
    class FailOnce < TaskerWorker::StepHandler
      def call(context)
        raise TaskerWorker::RetryableError, "first attempt fails" if context.attempt == 1

        { "succeeded_on_attempt" => context.attempt }
      end
    end
  end
end
