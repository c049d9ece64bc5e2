# frozen_string_literal: true

RSpec.describe TaskerWorker::ResultMapper do
  let(:handler) { TaskerWorker::StepHandler.new }

  def raised(exception)
    raise exception
  rescue StandardError => e
    e
  end

  describe ".from_return" do
    it "maps a Success to its result and metadata" do
      completion = described_class.from_return(handler.success(result: { "id" => 1 }, metadata: { "ms" => 2 }))

      expect(completion).to eq(success: true, result: { "id" => 1 }, metadata: { "ms" => 2 })
    end

    it "maps a Failure to a failed completion with every field" do
      failure = handler.failure(message: "declined", error_type: "card_declined", retryable: true, retry_after: 30,
                                error_code: "E42", metadata: { "m" => 1 }, context: { "c" => 2 })

      expect(described_class.from_return(failure)).to eq(
        success: false, result: nil, metadata: { "m" => 1 },
        error: { message: "declined", error_type: "card_declined", retryable: true,
                 error_class: "TaskerWorker::StepHandler::Failure", backtrace: [], retry_after: 30,
                 error_code: "E42", context: { "c" => 2 } }
      )
    end

    it "gives a Failure with an empty message its error type as message" do
      completion = described_class.from_return(handler.failure(message: ""))

      expect(completion[:error][:message]).to eq("handler_failure")
    end

    it "maps a plain Hash to a success with that Hash as result" do
      expect(described_class.from_return({ total: 3 })).to eq(success: true, result: { total: 3 }, metadata: {})
    end

    it "maps nil to a success with a nil result" do
      expect(described_class.from_return(nil)).to eq(success: true, result: nil, metadata: {})
    end

    it "maps any other value to a success with it as result" do
      expect(described_class.from_return([1, "two"])).to eq(success: true, result: [1, "two"], metadata: {})
      expect(described_class.from_return(42)[:result]).to eq(42)
    end
  end

  describe ".from_exception" do
    it "maps a PermanentError to a permanent failure" do
      error = described_class.from_exception(raised(TaskerWorker::PermanentError.new("bad order")))[:error]

      expect(error).to include(message: "bad order", error_type: "permanent_error", retryable: false,
                               error_class: "TaskerWorker::PermanentError", retry_after: nil)
    end

    it "maps a RetryableError to a retryable failure with its retry_after" do
      completion = described_class.from_exception(raised(TaskerWorker::RetryableError.new("busy", retry_after: 15)))

      expect(completion).to include(success: false, result: nil, metadata: {})
      expect(completion[:error]).to include(message: "busy", error_type: "retryable_error", retryable: true,
                                            error_class: "TaskerWorker::RetryableError", retry_after: 15)
    end

    it "maps any other StandardError to a retryable handler_error" do
      error = described_class.from_exception(raised(RuntimeError.new("boom")))[:error]

      expect(error).to include(message: "boom", error_type: "handler_error", retryable: true,
                               error_class: "RuntimeError", retry_after: nil, error_code: nil, context: {})
    end

    it "keeps the backtrace" do
      error = described_class.from_exception(raised(RuntimeError.new("boom")))[:error]

      expect(error[:backtrace].first).to include(File.basename(__FILE__))
    end

    it "names the class when the message is empty" do
      expect(described_class.from_exception(raised(ArgumentError.new("")))[:error][:message]).to eq("ArgumentError")
      expect(described_class.from_exception(raised(TaskerWorker::PermanentError.new))[:error][:message])
        .to eq("TaskerWorker::PermanentError")
    end

    it "keeps only the first 50 lines of the backtrace" do
      exception = RuntimeError.new("deep")
      exception.set_backtrace(Array.new(80) { |i| "handler.rb:#{i}" })

      backtrace = described_class.from_exception(exception)[:error][:backtrace]
      expect(backtrace).to eq(Array.new(50) { |i| "handler.rb:#{i}" })
    end

    it "gives an exception that was never raised an empty backtrace" do
      expect(described_class.from_exception(RuntimeError.new("x"))[:error][:backtrace]).to eq([])
    end

    it "keeps a StepError's error_code and context" do
      exception = TaskerWorker::PermanentError.new("no stock", error_code: :out_of_stock, context: { "sku" => "A1" })

      expect(described_class.from_exception(exception)[:error]).to include(error_code: "out_of_stock",
                                                                           context: { "sku" => "A1" })
    end

    it "leaves out error_highlight's source snippet" do
      message = described_class.from_exception(raised_no_method_error)[:error][:message]

      expect(message).to start_with("undefined method `no_such_method'")
      expect(message).not_to include("\n")
    end

    def raised_no_method_error
      nil.no_such_method
    rescue NoMethodError => e
      e
    end

    it "maps a HandlerNotFoundError to handler_not_found" do
      exception = TaskerWorker::HandlerNotFoundError.new(callable: "Missing", reason: "not defined")

      expect(described_class.from_exception(exception)[:error])
        .to include(error_type: "handler_not_found", retryable: false, message: 'no handler for "Missing": not defined')
    end
  end

  describe ".capture" do
    it "maps the block's value" do
      expect(described_class.capture { { "a" => 1 } }).to eq(success: true, result: { "a" => 1 }, metadata: {})
    end

    it "maps what the block raises instead of raising it" do
      expect(described_class.capture { raise TaskerWorker::PermanentError, "no" }[:error][:error_type])
        .to eq("permanent_error")
    end
  end

  describe ".invalid_result" do
    it "is a permanent invalid_result failure saying why" do
      completion = described_class.invalid_result(TaskerWorker::SerializationError.new("Float NaN at result.x"))

      expect(completion).to include(success: false, result: nil, metadata: {})
      expect(completion[:error]).to include(
        error_type: "invalid_result", retryable: false, error_class: "TaskerWorker::InvalidResultError",
        message: "the handler's return value could not be converted to JSON: Float NaN at result.x"
      )
    end

    it "accepts a message" do
      expect(described_class.invalid_result("too deep")[:error][:message]).to end_with(": too deep")
    end
  end

  describe ".handler_not_found" do
    it "is a permanent handler_not_found failure naming the callable" do
      completion = described_class.handler_not_found("Billing::Charge", "uninitialized constant Billing")

      expect(completion).to include(success: false, result: nil)
      expect(completion[:error]).to include(
        error_type: "handler_not_found", retryable: false, error_class: "TaskerWorker::HandlerNotFoundError",
        message: 'no handler for "Billing::Charge": uninitialized constant Billing',
        context: { "callable" => "Billing::Charge" }
      )
    end

    it "does not repeat the prefix when given the registry error's message" do
      error = TaskerWorker::HandlerNotFoundError.new(callable: "X", reason: "gone")

      expect(described_class.handler_not_found("X", error.message)[:error][:message]).to eq('no handler for "X": gone')
    end

    it "takes the reason from the registry's error" do
      error = TaskerWorker::HandlerNotFoundError.new(callable: "X", reason: "X is a module, not a handler class")

      expect(described_class.handler_not_found("X", error)[:error][:message])
        .to eq('no handler for "X": X is a module, not a handler class')
    end
  end
end
