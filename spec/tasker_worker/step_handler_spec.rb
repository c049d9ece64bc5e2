# frozen_string_literal: true

module StepHandlerSpec
  class ChargeCard < TaskerWorker::StepHandler
    def call(_context) = success(result: { "charged" => config["amount"] })
  end

  class HTTPFetchV2 < TaskerWorker::StepHandler; end
end

RSpec.describe TaskerWorker::StepHandler do
  subject(:handler) { StepHandlerSpec::ChargeCard.new(config: { "amount" => 10 }) }

  it "exposes the template's initialization as config" do
    expect(handler.config).to eq("amount" => 10)
  end

  it "defaults config to an empty Hash, also when given nil" do
    expect(described_class.new.config).to eq({})
    expect(described_class.new(config: nil).config).to eq({})
  end

  describe "#success" do
    it "returns a frozen Success with the result and metadata" do
      success = handler.success(result: { "id" => 1 }, metadata: { "ms" => 3 })

      expect(success).to be_a(TaskerWorker::StepHandler::Success).and be_frozen
      expect(success).to have_attributes(result: { "id" => 1 }, metadata: { "ms" => 3 }, success?: true)
    end

    it "defaults to a nil result and empty metadata" do
      expect(handler.success).to have_attributes(result: nil, metadata: {})
    end

    it "rejects metadata that is not a Hash" do
      expect { handler.success(metadata: "fast") }.to raise_error(ArgumentError, /metadata must be a Hash/)
    end
  end

  describe "#failure" do
    it "returns a frozen, permanent handler_failure by default" do
      failure = handler.failure(message: "card declined")

      expect(failure).to be_a(TaskerWorker::StepHandler::Failure).and be_frozen
      expect(failure).to have_attributes(message: "card declined", error_type: "handler_failure", retryable: false,
                                         retry_after: nil, error_code: nil, metadata: {}, context: {},
                                         success?: false)
    end

    it "keeps every field given, with retry_after rounded up to whole seconds" do
      failure = handler.failure(message: "rate limited", error_type: :rate_limited, retryable: true,
                                retry_after: 1.2, error_code: 429, metadata: { "a" => 1 }, context: { "b" => 2 })

      expect(failure).to have_attributes(error_type: "rate_limited", retryable: true, retry_after: 2,
                                         error_code: "429", metadata: { "a" => 1 }, context: { "b" => 2 })
    end

    it "rejects a negative retry_after" do
      expect { handler.failure(message: "x", retry_after: -1) }.to raise_error(ArgumentError, /retry_after/)
    end
  end

  it "fails permanently when a subclass does not implement #call" do
    expect { StepHandlerSpec::HTTPFetchV2.new.call(nil) }
      .to raise_error(TaskerWorker::PermanentError, /StepHandlerSpec::HTTPFetchV2 must implement #call/)
  end

  describe ".handler_name" do
    it "is the snake_case of the class name without its namespace" do
      expect(StepHandlerSpec::ChargeCard.handler_name).to eq("charge_card")
      expect(StepHandlerSpec::HTTPFetchV2.handler_name).to eq("http_fetch_v2")
    end

    it "is nil for an anonymous class" do
      expect(Class.new(described_class).handler_name).to be_nil
    end
  end
end
