# frozen_string_literal: true

RSpec.describe TaskerWorker::Native do
  it "is the Rust core, with the gem's version" do
    expect(described_class.core_version).to eq(TaskerWorker::VERSION)
  end

  it "computes queue namespaces in Rust" do
    expect(described_class.queue_namespace("worker_payments_queue")).to eq("payments")
    expect(described_class.queue_namespace("orchestration_step_results")).to eq("orchestration")
    expect(described_class.queue_namespace("unrelated")).to eq("default")
  end

  it "names worker queues" do
    expect(described_class.worker_queue_name("order_fulfillment")).to eq("worker_order_fulfillment_queue")
  end

  it "raises a Ruby exception, not a crash, for a bad argument" do
    expect { described_class.worker_queue_name("Bad Name;") }
      .to raise_error(TaskerWorker::ConfigurationError, /namespace "Bad Name;"/)
  end

  it "raises TypeError for an argument of the wrong type" do
    expect { described_class.worker_queue_name(42) }.to raise_error(TypeError)
  end
end

RSpec.describe TaskerWorker::Native::Loopback do
  it "hands out synthetic steps and takes their completions, once each" do
    loopback = described_class.new(2)
    event = loopback.next_step(5.0)
    expect(event).to include(step_name: "noop", attempts: 1)
    expect(event[:task_context]).to include("order_id" => 1234)
    expect(loopback.complete(event[:event_id], { success: true, result: {} })).to be(true)
    expect { loopback.complete(event[:event_id], { success: true, result: {} }) }
      .to raise_error(TaskerWorker::CompletionRejected, /already completed/)
  end
end
