# frozen_string_literal: true

RSpec.describe TaskerWorker::StepContext, "checkpoints" do
  let(:saved) do
    { "cursor" => 75, "items_processed" => 75, "timestamp" => "2026-01-06T12:00:00.000000Z",
      "accumulated_results" => { "running_total" => 2850 },
      "history" => [{ "cursor" => 75, "timestamp" => "2026-01-06T12:00:00.000000Z" }] }
  end

  it "reads nothing without a checkpoint" do
    context = described_class.build
    expect(context.checkpoint).to be_nil
    expect(context).to have_attributes(checkpoint?: false, has_checkpoint?: false, checkpoint_cursor: nil,
                                       checkpoint_items_processed: 0, accumulated_results: nil)
  end

  it "reads a checkpoint given to build, with String keys as the core delivers it" do
    context = described_class.build(checkpoint: { cursor: 75, items_processed: 75,
                                                  accumulated_results: { running_total: 2850 } })
    expect(context).to have_attributes(checkpoint?: true, has_checkpoint?: true, checkpoint_cursor: 75,
                                       checkpoint_items_processed: 75,
                                       accumulated_results: { "running_total" => 2850 })
    expect(context.checkpoint.keys).to all(be_a(String))
  end

  it "reads the checkpoint of a delivered event" do
    context = described_class.new({ checkpoint: saved })
    expect(context.checkpoint).to eq(saved)
    expect(context.checkpoint_cursor).to eq(75)
  end

  it "keeps a checkpoint saved without a worker in memory, as the core would shape it" do
    context = described_class.build
    expect(context.checkpoint(cursor: { "page" => 2 }, items_processed: 20, accumulated: [1, 2])).to be(true)
    expect(context.checkpoint(cursor: { "page" => 3 }, items_processed: 30, accumulated: [1, 2, 3])).to be(true)
    expect(context.checkpoint_cursor).to eq({ "page" => 3 })
    expect(context.checkpoint_items_processed).to eq(30)
    expect(context.accumulated_results).to eq([1, 2, 3])
    expect(context.checkpoint["history"].map { |h| h["cursor"] }).to eq([{ "page" => 2 }, { "page" => 3 }])
  end

  it "hands a save to its checkpointer and shows what the core stored" do
    calls = []
    checkpointer = lambda do |data, yielded|
      calls << [data, yielded]
      { saved: false, checkpoint: saved }
    end
    context = described_class.new({}, checkpointer)
    expect(context.checkpoint(cursor: 75, items_processed: 75, accumulated: { "running_total" => 2850 })).to be(false)
    expect(calls).to eq([[{ cursor: 75, items_processed: 75, accumulated_results: { "running_total" => 2850 } }, false]])
    expect(context.checkpoint).to eq(saved)
  end

  it "refuses a negative or non-Integer items_processed, and unknown keys" do
    context = described_class.build
    expect { context.checkpoint(cursor: 1, items_processed: -1) }.to raise_error(ArgumentError, /items_processed/)
    expect { context.checkpoint(cursor: 1, items_processed: 1.5) }.to raise_error(ArgumentError, /items_processed/)
    expect { context.checkpoint(cursor: 1, items_processed: 1, extra: 2) }.to raise_error(ArgumentError, /extra/)
    expect(context.checkpoint).to be_nil
  end

  it "builds a frozen checkpoint yield from a handler" do
    handler = TaskerWorker::StepHandler.new
    value = handler.checkpoint_yield(cursor: 5, items_processed: 5, accumulated_results: { "sum" => 15 })
    expect(value).to be_frozen
    expect(value).to have_attributes(checkpoint?: true, success?: false, cursor: 5, items_processed: 5,
                                     accumulated_results: { "sum" => 15 })
    expect { handler.checkpoint_yield(cursor: 5, items_processed: nil) }.to raise_error(ArgumentError)
  end
end

RSpec.describe TaskerWorker::Configuration, "checkpoint options" do
  it "sends them to the core in its units and refuses a bad one naming the core key" do
    config = described_class.new
    config.checkpoint_min_interval = 0.25
    config.checkpoint_max_history = 10
    expect(config.to_core_overrides).to include("worker.checkpoints.min_interval_ms" => 250,
                                                "worker.checkpoints.max_history" => 10)
    expect { config.checkpoint_max_history = 0 }
      .to raise_error(TaskerWorker::ConfigurationError, /checkpoint_max_history .*worker\.checkpoints\.max_history/)
    expect { config.checkpoint_max_bytes = 10 }
      .to raise_error(TaskerWorker::ConfigurationError, /worker\.checkpoints\.max_bytes/)
  end
end
