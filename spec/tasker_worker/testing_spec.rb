# frozen_string_literal: true

require "tasker_worker/testing"

module TestingSpec
  class Total < TaskerWorker::StepHandler
    def call(context)
      items = context.input(:order, :items)
      { "total" => items.sum { |item| item["price"] } * config.fetch("multiplier", 1) }
    end
  end

  class Invoice < TaskerWorker::StepHandler
    def call(context)
      total = context.dependency_result(:total)["total"]
      success(result: { "invoiced" => total }, metadata: { "attempt" => context.attempt })
    end
  end

  class Declines < TaskerWorker::StepHandler
    def call(_context) = failure(message: "declined", error_type: "card_declined")
  end

  class Unserialisable < TaskerWorker::StepHandler
    def call(_context) = { "ok" => true, "client" => Object.new }
  end
end

RSpec.describe TaskerWorker::Testing do
  let(:order) { { order: { items: [{ price: 4 }, { price: 6 }] } } }

  it "runs a handler that returns a Hash" do
    outcome = described_class.run(TestingSpec::Total, context: order, config: { multiplier: 2 })

    expect(outcome).to be_success
    expect(outcome).to have_attributes(result: { "total" => 20 }, metadata: {}, error: nil, retryable?: false)
    expect(outcome.completion).to eq(success: true, result: { "total" => 20 }, metadata: {})
  end

  it "runs a handler instance" do
    expect(described_class.run(TestingSpec::Total.new, context: order).result).to eq("total" => 10)
  end

  it "runs a handler named by its class, as the worker resolves it" do
    expect(described_class.run("TestingSpec::Total", context: order).result).to eq("total" => 10)
  end

  it "hands plain dependency results to the handler as stored results" do
    outcome = described_class.run(TestingSpec::Invoice, dependency_results: { "total" => { total: 10 } }, attempt: 2)

    expect(outcome.result).to eq("invoiced" => 10)
    expect(outcome.metadata).to eq("attempt" => 2)
  end

  it "gives the handler the step name, attempt, limit and inputs" do
    seen = described_class.run(step_name: "charge", attempt: 3, max_attempts: 3, inputs: { "a" => 1 }) do |context|
      [context.step_name, context.last_attempt?, context.inputs]
    end

    expect(seen.result).to eq(["charge", true, { "a" => 1 }])
  end

  it "gives the result as the core stores it, with String keys, as a child step would read it" do
    outcome = described_class.run(context: {}) { |_context| { total: 10, lines: [{ sku: :a1 }] } }

    expect(outcome.result).to eq("total" => 10, "lines" => [{ "sku" => "a1" }])
    child = described_class.run(dependency_results: { "totals" => outcome.result }) do |context|
      context.dependency_result("totals").fetch("total")
    end
    expect(child.result).to eq(10)
  end

  it "runs a block handler" do
    outcome = described_class.run(context: { n: 2 }) { |context| context.input(:n) * 21 }

    expect(outcome).to be_success
    expect(outcome.result).to eq(42)
  end

  describe "errors, mapped as the worker maps them" do
    def run_raising(error)
      described_class.run { |_context| raise error }
    end

    it "maps a PermanentError" do
      outcome = run_raising(TaskerWorker::PermanentError.new("bad order", error_code: "E1"))

      expect(outcome).not_to be_success
      expect(outcome.retryable?).to be(false)
      expect(outcome.error).to include(error_type: "permanent_error", message: "bad order", error_code: "E1")
    end

    it "maps a RetryableError with its retry_after" do
      outcome = run_raising(TaskerWorker::RetryableError.new("busy", retry_after: 5))

      expect(outcome.retryable?).to be(true)
      expect(outcome.error).to include(error_type: "retryable_error", retry_after: 5)
    end

    it "maps any other exception to a retryable handler_error" do
      outcome = run_raising(KeyError.new("key not found: x"))

      expect(outcome).to have_attributes(success?: false, retryable?: true, error_type: "handler_error",
                                         message: "key not found: x")
      expect(outcome.error[:error_class]).to eq("KeyError")
    end

    it "maps a returned failure" do
      outcome = described_class.run(TestingSpec::Declines)

      expect(outcome).to have_attributes(success?: false, retryable?: false, error_type: "card_declined",
                                         message: "declined")
    end

    it "reports an unknown handler name as handler_not_found" do
      outcome = described_class.run("TestingSpec::Missing")

      expect(outcome).to have_attributes(success?: false, error_type: "handler_not_found", retryable?: false)
      expect(outcome.message).to include("TestingSpec::Missing")
    end
  end

  describe "results the core could not store" do
    it "turns an object without a JSON form into invalid_result" do
      outcome = described_class.run(TestingSpec::Unserialisable)

      expect(outcome).to have_attributes(success?: false, retryable?: false, error_type: "invalid_result")
      expect(outcome.message).to match(/could not be converted to JSON: result\["client"\] is Object/)
    end

    it "turns NaN into invalid_result" do
      outcome = described_class.run { |_context| { "ratio" => [1.0, Float::NAN] } }

      expect(outcome.error_type).to eq("invalid_result")
      expect(outcome.message).to include('result["ratio"][1] is NaN')
    end

    it "checks metadata too" do
      outcome = described_class.run do |_context|
        TaskerWorker::StepHandler.new.success(result: 1, metadata: { "at" => Time.now })
      end

      expect(outcome.message).to include('metadata["at"] is Time')
    end

    it "turns a non-String key into invalid_result" do
      expect(described_class.run { |_context| { 1 => "one" } }.message).to include("result has the key 1")
    end

    it "refuses what the core's limits refuse: too deep, self-referencing, too large" do
      deep = ->(levels) { (1..levels).reduce(1) { |inner, _| [inner] } }
      expect(described_class.run { |_context| deep.call(64) }).to be_success
      expect(described_class.run { |_context| deep.call(65) }.message).to include("nests deeper than 64 levels")
      expect(described_class.run { |_context| [].tap { |a| a << a } }.error_type).to eq("invalid_result")
      huge = described_class.run { |_context| { "blob" => "x" * TaskerWorker::Native::MAX_JSON_BYTES } }
      expect(huge.message).to include("the limit is 16777216 bytes")
    end

    it "accepts Symbols, which become JSON strings" do
      expect(described_class.run { |_context| { status: :paid } }).to be_success
    end
  end

  describe "checkpoints" do
    # Sums 0...10 two items per run, yielding in between, as a long step would on a worker.
    let(:summer) do
      Class.new(TaskerWorker::StepHandler) do
        def call(context)
          from = context.checkpoint_cursor || 0
          total = (context.accumulated_results || {}).fetch("total", 0) + from + from + 1
          return { "total" => total, "resumed_at" => context.checkpoint_cursor } if from + 2 >= 10

          checkpoint_yield(cursor: from + 2, items_processed: from + 2, accumulated_results: { "total" => total })
        end
      end
    end

    it "runs a yielding handler again with its new checkpoint until it returns" do
      outcome = described_class.run(summer)
      expect(outcome.result).to eq("total" => (0...10).sum, "resumed_at" => 8)
    end

    it "starts from a given checkpoint, as a retried or reclaimed step does" do
      saved = { "cursor" => 6, "items_processed" => 6, "accumulated_results" => { "total" => (0...6).sum } }
      expect(described_class.run(summer, checkpoint: saved).result).to eq("total" => (0...10).sum, "resumed_at" => 8)
    end

    after { TaskerWorker.reset_configuration! }

    it "fails a handler that yields more than the configured max_yields_per_claim times" do
      forever = Class.new(TaskerWorker::StepHandler) { def call(_ctx) = checkpoint_yield(cursor: 1, items_processed: 1) }
      TaskerWorker.configuration.checkpoint_max_yields_per_claim = 3
      outcome = described_class.run(forever)
      expect([outcome.error_type, outcome.retryable?, outcome.message]).to match(["checkpoint_yield_limit", true, /3 yields/])
    end
  end

  it "needs a handler or a block" do
    expect { described_class.run }.to raise_error(ArgumentError, /handler or a block/)
  end
end
