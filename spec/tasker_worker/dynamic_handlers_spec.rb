# frozen_string_literal: true

require "spec_helper"
require "tasker_worker/testing"

module DynamicHandlersSpec
  class Classify < TaskerWorker::DecisionHandler
    def decide(context)
      context.input(:amount) > 1_000 ? "committee" : %w[fast_track notify]
    end
  end

  class Scan < TaskerWorker::BatchableHandler
    worker_template "scan_slice"

    def batches(context)
      split(context.input(:rows), workers: 5)
    end
  end

  class Slice < TaskerWorker::BatchWorkerHandler
    def process(batch, _context)
      { "sum" => batch.range.sum }
    end
  end
end

RSpec.describe "dynamic workflow handlers" do
  def run(handler, **options, &block) = TaskerWorker::Testing.run(handler, **options, &block)

  describe TaskerWorker::DecisionHandler do
    it "stores the chosen steps as tasker-core's create_steps outcome, with metadata" do
      outcome = run(DynamicHandlersSpec::Classify, context: { amount: 50 })
      expect(outcome).to be_success
      expect(outcome.result).to eq("decision_point_outcome" => { "type" => "create_steps",
                                                                 "step_names" => %w[fast_track notify] })
      expect(outcome.metadata).to eq("decision_point" => true, "outcome_type" => "create_steps",
                                     "branches_created" => 2)
      expect(run(DynamicHandlersSpec::Classify, context: { amount: 5_000 }).result["decision_point_outcome"])
        .to eq("type" => "create_steps", "step_names" => ["committee"])
    end

    it "gives no_branches for nil, [] and #no_branches, keeping result data beside the outcome" do
      [nil, []].each do |none|
        expect(run(Class.new(described_class) { define_method(:decide) { |_c| none } }).result)
          .to eq("decision_point_outcome" => { "type" => "no_branches" })
      end
      skipping = Class.new(described_class) { def decide(_ctx) = no_branches(result: { reason: "small" }) }
      expect(run(skipping).result).to eq("reason" => "small", "decision_point_outcome" => { "type" => "no_branches" })
      routing = Class.new(described_class) { def decide(_ctx) = route(:a, "b", "a", result: { score: 3 }) }
      expect(run(routing).result)
        .to eq("score" => 3, "decision_point_outcome" => { "type" => "create_steps", "step_names" => %w[a b] })
    end

    it "fails the step for good, naming the problem, when #decide returns something else" do
      { { "a" => 1 } => /must return step names/, 7 => /must return step names/, [""] => /non-empty Strings/,
        ["ok", 3] => /non-empty Strings/ }.each do |returned, message|
        outcome = run(Class.new(described_class) { define_method(:decide) { |_c| returned } })
        expect(outcome).to be_failure
        expect(outcome.retryable?).to be(false)
        expect(outcome.message).to match(message)
        expect(outcome.error[:error_code]).to eq("invalid_decision_outcome")
      end
      clash = Class.new(described_class) { def decide(_ctx) = route("a", result: { decision_point_outcome: 1 }) }
      expect(run(clash).message).to match(/must not carry its own decision_point_outcome/)
    end

    it "refuses a subclass without #decide" do
      outcome = run(Class.new(described_class))
      expect([outcome.error_type, outcome.message]).to match(["permanent_error", /must implement #decide/])
    end
  end

  describe TaskerWorker::BatchableHandler do
    it "splits rows into near-equal batches as tasker-core's create_batches outcome" do
      outcome = run(DynamicHandlersSpec::Scan, context: { rows: 1_000 })
      batches = outcome.result.fetch("batch_processing_outcome")
      expect(batches).to include("type" => "create_batches", "worker_template_name" => "scan_slice",
                                 "worker_count" => 5, "total_items" => 1_000)
      expect(batches["cursor_configs"].first).to eq("batch_id" => "001", "start_cursor" => 0, "end_cursor" => 200,
                                                    "batch_size" => 200)
      expect(batches["cursor_configs"].map { |c| c["batch_id"] }).to eq(%w[001 002 003 004 005])
      expect(outcome.result).to include("worker_count" => 5, "total_items" => 1_000)
      expect(outcome.metadata).to eq("batchable" => true, "outcome_type" => "create_batches", "worker_count" => 5)
    end

    it "covers every row exactly once whatever the split" do
      [[1, 1], [7, 3], [10, 4], [999, 5], [1_000, 7]].each do |total, workers|
        cursors = TaskerWorker::Batches.split(total, workers: workers)
        expect(cursors.flat_map { |c| (c["start_cursor"]...c["end_cursor"]).to_a }).to eq((0...total).to_a)
        expect(cursors.size).to be <= workers
        expect(cursors.sum { |c| c["batch_size"] }).to eq(total)
      end
      expect(TaskerWorker::Batches.split(10, batch_size: 4).map { |c| c["batch_size"] }).to eq([4, 4, 2])
    end

    it "gives no_batches for zero rows, nil and #no_batches" do
      expect(run(DynamicHandlersSpec::Scan, context: { rows: 0 }).result)
        .to eq("batch_processing_outcome" => { "type" => "no_batches" })
      none = Class.new(described_class) { def batches(_ctx) = no_batches(reason: "empty store") }
      expect(run(none).result).to eq("reason" => "empty store", "batch_processing_outcome" => { "type" => "no_batches" })
    end

    it "accepts Ranges and cursor Hashes of any JSON value, and takes the worker template from the config" do
      ranges = Class.new(described_class) { def batches(_ctx) = [0...10, 10..14] }
      cursors = run(ranges, config: { worker_template_name: "w" }).result["batch_processing_outcome"]
      expect(cursors["cursor_configs"].map { |c| c.values_at("start_cursor", "end_cursor", "batch_size") })
        .to eq([[0, 10, 10], [10, 15, 5]])
      expect(cursors["worker_template_name"]).to eq("w")
      keyed = Class.new(described_class) do
        worker_template "w"
        def batches(_ctx) = [{ batch_id: "a", start_cursor: "2026-01", end_cursor: "2026-02", batch_size: 31 }]
      end
      expect(run(keyed).result["batch_processing_outcome"]["cursor_configs"])
        .to eq([{ "batch_id" => "a", "start_cursor" => "2026-01", "end_cursor" => "2026-02", "batch_size" => 31 }])
    end

    it "fails the step for good on a batch it cannot read or without a worker template" do
      {
        "nope" => /must return an Array/, [5] => /must be a Range or a cursor Hash/,
        [3...3] => /empty or reversed/, [{ start_cursor: "a", end_cursor: "b" }] => /batch_size must be an Integer/,
        [{ start_cursor: 0 }] => /needs start_cursor and end_cursor/,
        [{ batch_id: "x", start_cursor: 0, end_cursor: 1 }, { batch_id: "x", start_cursor: 1, end_cursor: 2 }] =>
          /batch ids must be unique/
      }.each do |returned, message|
        outcome = run(Class.new(described_class) do
          worker_template "w"
          define_method(:batches) { |_c| returned }
        end)
        expect([outcome.retryable?, outcome.message, outcome.error[:error_code]])
          .to match([false, message, "invalid_batch_outcome"])
      end
      orphan = run(Class.new(described_class) { def batches(_ctx) = [0...1] })
      expect(orphan.message).to match(/has no worker template/)
    end
  end

  describe TaskerWorker::BatchWorkerHandler do
    let(:inputs) do
      { "cursor" => { "batch_id" => "002", "start_cursor" => 200, "end_cursor" => 400, "batch_size" => 200 },
        "batch_metadata" => { "cursor_field" => "id", "failure_strategy" => "fail_fast" }, "is_no_op" => false,
        "__template_step_name" => "scan_slice" }
    end

    it "runs #process with the step's batch" do
      expect(run(DynamicHandlersSpec::Slice, inputs: inputs).result).to eq("sum" => (200...400).sum)
      batch = TaskerWorker::StepContext.build(inputs: inputs).batch
      expect(batch.to_h).to eq(batch_id: "002", start_cursor: 200, end_cursor: 400, size: 200, cursor_field: "id",
                               failure_strategy: "fail_fast", no_op: false)
    end

    it "answers the no-op placeholder without calling #process" do
      placeholder = inputs.merge("is_no_op" => true,
                                 "cursor" => { "batch_id" => "000", "start_cursor" => 0, "end_cursor" => 0,
                                               "batch_size" => 0 })
      expect(run(Class.new(described_class), inputs: placeholder).result)
        .to eq("batch_id" => "000", "no_op" => true, "processed_count" => 0)
    end

    it "fails a step that is not a batch worker" do
      outcome = run(DynamicHandlersSpec::Slice, inputs: {})
      expect([outcome.retryable?, outcome.message]).to match([false, /is not a batch worker/])
    end
  end

  it "collects the batch workers' results for a convergence step, leaving out the no-op placeholder" do
    context = TaskerWorker::StepContext.build(dependency_results: {
                                                "scan_slice_002" => { "result" => { "sum" => 2 } },
                                                "scan_slice_001" => { "result" => { "sum" => 1 } },
                                                "scan_slice_000" => { "result" => { "no_op" => true } },
                                                "scan" => { "result" => { "batch_processing_outcome" => {} } }
                                              })
    expect(context.batch_results("scan_slice")).to eq("scan_slice_001" => { "sum" => 1 },
                                                      "scan_slice_002" => { "sum" => 2 })
    expect(context.batch_results("other")).to eq({})
  end

  it "registers a block as the hook of a handler base, and refuses a block with anything else" do
    registry = TaskerWorker::HandlerRegistry.new
    registry.register("Route", TaskerWorker::DecisionHandler) { |context| context.input(:to) }
    registry.register("Split", TaskerWorker::BatchableHandler) { |_c| TaskerWorker::Batches.split(4, batch_size: 2) }
    registry.register("Work", TaskerWorker::BatchWorkerHandler) { |batch, _c| { "n" => batch.size } }
    context = TaskerWorker::StepContext.build(task_context: { to: "b" })
    expect(registry.resolve("Route").call(context).result)
      .to eq("decision_point_outcome" => { "type" => "create_steps", "step_names" => ["b"] })
    split = registry.resolve("Split", config: { "worker_template_name" => "w" }).call(context)
    expect(split.result["batch_processing_outcome"]["worker_count"]).to eq(2)
    work = TaskerWorker::StepContext.build(inputs: { cursor: { batch_id: "1", start_cursor: 0, end_cursor: 3,
                                                               batch_size: 3 } })
    expect(registry.resolve("Work").call(work)).to eq("n" => 3)
    expect { registry.register("Bad", DynamicHandlersSpec::Slice.new) { |c| c } }
      .to raise_error(TaskerWorker::ConfigurationError, /not both/)
  end
end
