# frozen_string_literal: true

require "spec_helper"
require "tasker_worker/testing"

# The outcome objects the Ruby handler bases store, written to tests/fixtures/ruby_outcomes.json,
# which tests/tasker_core_contract.rs reads with a strict mirror of tasker-core's outcome types.
# This spec fails when the file is not what the classes produce now; regenerate it with
# TASKER_WRITE_FIXTURES=1 rspec spec/tasker_worker/outcome_contract_spec.rb.
RSpec.describe "outcome objects (the contract with tasker-core's orchestrator)" do
  fixture = File.expand_path("../../tests/fixtures/ruby_outcomes.json", __dir__)

  def result_of(base, &hook)
    handler = Class.new(base) do
      worker_template "slice" if base == TaskerWorker::BatchableHandler
      define_method(base.hook, &hook)
    end
    outcome = TaskerWorker::Testing.run(handler)
    raise "#{base}: #{outcome.message}" unless outcome.success?

    outcome.result
  end

  let(:outcomes) do
    decision = TaskerWorker::DecisionHandler
    batchable = TaskerWorker::BatchableHandler
    {
      "create_steps" => result_of(decision) { |_ctx| %w[fast_track notify] },
      "create_steps_with_data" => result_of(decision) { |_ctx| route("committee", result: { score: 0.4 }) },
      "no_branches" => result_of(decision) { |_ctx| nil },
      "create_batches_split" => result_of(batchable) { |_ctx| split(900, batch_size: 500) },
      "create_batches_cursors" => result_of(batchable) do |_ctx|
        [{ start_cursor: "2026-01-01", end_cursor: "2026-02-01", batch_size: 31 }, 10...20]
      end,
      "no_batches" => result_of(batchable) { |_ctx| no_batches(reason: "nothing to do") }
    }
  end

  it "stores what tests/fixtures/ruby_outcomes.json holds" do
    text = "#{JSON.pretty_generate(outcomes)}\n"
    File.write(fixture, text) if ENV["TASKER_WRITE_FIXTURES"] == "1"
    expect(File.read(fixture)).to eq(text), "regenerate with TASKER_WRITE_FIXTURES=1 (then run the Rust contract test)"
  end
end
