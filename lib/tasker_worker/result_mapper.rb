# frozen_string_literal: true

module TaskerWorker
  # Turns what a handler returned or raised into the completion Hash the core commits.
  # The worker and TaskerWorker::Testing both go through here, so a handler's outcome in a
  # spec is the outcome it has in production.
  module ResultMapper
    MAX_BACKTRACE_LINES = 50

    module_function

    # Runs the block (a handler call) and maps its return value or its exception, of any
    # class: a handler must not stop the worker (SystemExit) or leave its step without a
    # result (NoMemoryError, SystemStackError, ScriptError, Interrupt...).
    def capture
      from_return(yield)
    rescue Exception => e # rubocop:disable Lint/RescueException -- every outcome of a handler becomes a result
      from_exception(e)
    end

    def from_return(value)
      case value
      when StepHandler::Success then success(value.result, value.metadata)
      when StepHandler::Failure then from_failure(value)
      else success(value, {})
      end
    end

    def from_exception(exception)
      return handler_not_found(exception.callable, exception) if exception.is_a?(HandlerNotFoundError)
      return handler_exit(exception) if exception.is_a?(SystemExit)

      retry_after = exception.retry_after if exception.is_a?(RetryableError)
      failure(message: message_of(exception), error_type: error_type_of(exception),
              retryable: !exception.is_a?(PermanentError), error_class: class_name_of(exception),
              backtrace: backtrace_of(exception), retry_after: retry_after, **step_error_details(exception))
    end

    # The core could not convert the handler's return value to JSON (it raised
    # SerializationError); retrying would return the same value, so this is permanent.
    def invalid_result(reason)
      why = reason.is_a?(Exception) ? message_of(reason) : reason.to_s
      failure(message: "the handler's return value could not be converted to JSON: #{why}",
              error_type: "invalid_result", retryable: false, error_class: InvalidResultError.name)
    end

    # `exit`, `exit 3`, `abort "why"` or `raise SystemExit` inside a handler: the step fails
    # for good (handler_exit, not retryable), since running it again would exit again; the
    # worker keeps running.
    def handler_exit(exception)
      said = message_of(exception)
      how = said == "exit" ? "called exit(#{exception.status})" : "called exit(#{exception.status}) or abort: #{said}"
      failure(message: "the handler #{how}; a handler cannot stop the worker", error_type: "handler_exit",
              retryable: false, error_class: class_name_of(exception), backtrace: backtrace_of(exception),
              context: { "exit_status" => exception.status })
    end

    # The handler's thread was killed (Thread#kill, Thread#exit) before the handler returned:
    # nothing was raised, so there is no message or backtrace. Retryable, like any error.
    def handler_killed
      failure(message: "the handler's thread was killed (Thread#kill or Thread#exit) before the handler returned",
              error_type: "handler_killed", retryable: true, error_class: "Thread#kill")
    end

    # `reason` is a String, or the HandlerNotFoundError the registry raised (or its message,
    # which already starts with "no handler for ...").
    def handler_not_found(callable, reason)
      reason = reason.reason || reason.message if reason.is_a?(HandlerNotFoundError)
      reason = message_of(reason) if reason.is_a?(Exception)
      prefix = "no handler for #{callable.to_s.inspect}"
      failure(message: reason.to_s.start_with?(prefix) ? reason.to_s : "#{prefix}: #{reason}",
              error_type: "handler_not_found", retryable: false, error_class: HandlerNotFoundError.name,
              context: { "callable" => callable.to_s })
    end

    def success(result, metadata)
      { success: true, result: result, metadata: metadata || {} }
    end

    def from_failure(value)
      failure(message: value.message.empty? ? value.error_type : value.message, error_type: value.error_type,
              retryable: value.retryable, error_class: value.class.name, retry_after: value.retry_after,
              error_code: value.error_code, context: value.context, metadata: value.metadata)
    end

    def failure(message:, error_type:, retryable:, error_class:, backtrace: [], retry_after: nil, error_code: nil,
                context: {}, metadata: {})
      error = { message: message, error_type: error_type, retryable: retryable, error_class: error_class,
                backtrace: backtrace, retry_after: retry_after, error_code: error_code, context: context || {} }
      { success: false, result: nil, metadata: metadata || {}, error: error }
    end

    def error_type_of(exception)
      case exception
      when PermanentError then "permanent_error"
      when RetryableError then "retryable_error"
      else "handler_error"
      end
    end

    # A bare `raise SomeError, ""` still has to say something in the orchestrator's records.
    # On Ruby 3.1 #message of a NameError carries error_highlight's source snippet and
    # did_you_mean's hints; #original_message is the message alone.
    # An exception's own #message (or #backtrace) may raise, or return something that is not
    # UTF-8 text: the step still gets a result, saying so.
    def message_of(exception)
      message = text(exception.respond_to?(:original_message) ? exception.original_message : exception.message)
      message.strip.empty? ? class_name_of(exception) : message
    rescue Exception => e # rubocop:disable Lint/RescueException -- a broken #message must not lose the result
      "#{class_name_of(exception)} (its #message raised #{e.class.name || e.class.inspect})"
    end

    def class_name_of(exception)
      text(exception.class.name || exception.class.inspect)
    end

    def backtrace_of(exception)
      Array(exception.backtrace).first(MAX_BACKTRACE_LINES).map { |line| text(line) }
    rescue Exception => e # rubocop:disable Lint/RescueException -- a broken #backtrace must not lose the result
      ["(the exception's #backtrace raised #{e.class.name || e.class.inspect})"]
    end

    def text(value)
      string = value.is_a?(String) ? value : String(value)
      string.encode(Encoding::UTF_8, invalid: :replace, undef: :replace)
    end

    def step_error_details(exception)
      return {} unless exception.is_a?(StepError)

      { error_code: exception.error_code, context: exception.context }
    end

    private_class_method :success, :from_failure, :failure, :error_type_of, :message_of, :class_name_of,
                         :backtrace_of, :step_error_details, :text
  end
end
