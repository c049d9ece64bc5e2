# frozen_string_literal: true

RSpec.describe TaskerWorker::StepContext do
  subject(:context) { described_class.new(event) }

  let(:event) do
    {
      event_id: "evt-1", task_uuid: "task-1", step_uuid: "step-1", correlation_id: "corr-1",
      namespace: "order_fulfillment", task_name: "business_workflow", task_version: "1.0.0",
      step_name: "charge_card",
      task_context: { "order" => { "items" => [{ "sku" => "A1" }], "total" => 30 }, "n" => 2 },
      inputs: { "currency" => "EUR" },
      handler: { callable: "OrderFulfillment::ChargeCard", initialization: { "gateway" => "x" } },
      dependency_results: {
        "validate_order" => { "success" => true, "result" => { "valid" => true }, "metadata" => { "ms" => 1 } },
        "reserve_stock" => { "success" => true, "result" => 7 }
      },
      attempts: 2, max_attempts: 3, retryable: true, timeout_seconds: 30
    }
  end

  it "exposes the step's identity" do
    expect(context).to have_attributes(
      event_id: "evt-1", task_uuid: "task-1", step_uuid: "step-1", correlation_id: "corr-1",
      namespace: "order_fulfillment", task_name: "business_workflow", task_version: "1.0.0",
      step_name: "charge_card", handler_callable: "OrderFulfillment::ChargeCard"
    )
  end

  it "exposes the handler's initialization as config" do
    expect(context.config).to eq("gateway" => "x")
  end

  it "exposes the task's whole input and the step's inputs" do
    expect(context.task_context).to eq(event[:task_context])
    expect(context.inputs).to eq("currency" => "EUR")
  end

  describe "#input" do
    it "looks up a key given as a Symbol or a String" do
      expect(context.input(:n)).to eq(2)
      expect(context.input("n")).to eq(2)
    end

    it "digs through nested hashes and arrays" do
      expect(context.input(:order, :items, 0, :sku)).to eq("A1")
      expect(context.input("order", "total")).to eq(30)
    end

    it "is nil when any level is missing" do
      expect(context.input(:missing)).to be_nil
      expect(context.input(:order, :missing, :deeper)).to be_nil
      expect(context.input(:order, :items, 5, :sku)).to be_nil
    end

    it "finds Symbol keys too" do
      expect(described_class.new(task_context: { order: { id: 9 } }).input("order", "id")).to eq(9)
    end

    it "needs a key" do
      expect { context.input }.to raise_error(ArgumentError)
    end
  end

  describe "dependencies" do
    it "returns an ancestor's handler result by String or Symbol name" do
      expect(context.dependency_result("validate_order")).to eq("valid" => true)
      expect(context.dependency_result(:reserve_stock)).to eq(7)
    end

    it "returns nil for a step that is not an ancestor" do
      expect(context.dependency_result(:unknown)).to be_nil
      expect(context.dependency(:unknown)).to be_nil
    end

    it "returns an ancestor's whole stored result" do
      expect(context.dependency(:validate_order)).to include("success" => true, "metadata" => { "ms" => 1 })
    end

    it "maps every ancestor to its handler result" do
      expect(context.dependency_results).to eq("validate_order" => { "valid" => true }, "reserve_stock" => 7)
    end
  end

  describe "attempts" do
    it "exposes the attempt, the limit and the timeout" do
      expect(context).to have_attributes(attempt: 2, max_attempts: 3, timeout_seconds: 30, retryable?: true)
    end

    it "is a retry after the first attempt" do
      expect(context.retry?).to be(true)
      expect(described_class.build(attempts: 1).retry?).to be(false)
    end

    it "knows the last attempt" do
      expect(context.last_attempt?).to be(false)
      expect(described_class.build(attempts: 3, max_attempts: 3).last_attempt?).to be(true)
    end
  end

  it "returns the raw event" do
    expect(context.to_h).to equal(event)
  end

  describe "#logger" do
    it "is TaskerWorker.logger when the gem defines one" do
      logger = Logger.new(nil)
      allow(TaskerWorker).to receive(:logger).and_return(logger)

      expect(context.logger).to equal(logger)
    end

    it "otherwise is a logger that writes nothing" do
      allow(TaskerWorker).to receive(:respond_to?).and_call_original
      allow(TaskerWorker).to receive(:respond_to?).with(:logger).and_return(false)

      expect(context.logger).to be_a(Logger)
      expect { context.logger.error("x") }.not_to output.to_stdout
    end
  end

  describe ".build" do
    subject(:built) { described_class.build }

    it "fills every field with a default" do
      expect(built).to have_attributes(namespace: "default", step_name: "step", attempt: 1, max_attempts: 3,
                                       task_context: {}, inputs: {}, config: {}, dependency_results: {},
                                       timeout_seconds: nil)
      expect([built.event_id, built.task_uuid, built.step_uuid, built.correlation_id])
        .to all(match(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/))
    end

    it "gives JSON data the shape the core delivers: String keys, Symbols as Strings" do
      built = described_class.build(task_context: { order: { status: :paid } }, inputs: { a: 1 },
                                    handler: { callable: "X", initialization: { key: "v" } })

      expect(built.task_context).to eq("order" => { "status" => "paid" })
      expect(built.inputs).to eq("a" => 1)
      expect(built.config).to eq("key" => "v")
      expect(built.handler_callable).to eq("X")
    end

    it "rejects a field the event does not have" do
      expect { described_class.build(context: {}) }.to raise_error(ArgumentError, /context/)
    end
  end
end
