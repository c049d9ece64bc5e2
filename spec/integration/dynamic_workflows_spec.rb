# frozen_string_literal: true

require "tmpdir"

Dir[File.expand_path("../../examples/handlers/*.rb", __dir__)].sort.each { |f| require f }

module DynamicWorkflowsSpec
  FAILED_ONCE = Set.new
  FAILED_ONCE_LOCK = Mutex.new

  # Fails the first attempt of batch 002, then sums like the example worker.
  class FlakySlice < TaskerWorker::BatchWorkerHandler
    def process(batch, context)
      first = FAILED_ONCE_LOCK.synchronize { FAILED_ONCE.add?([context.task_uuid, batch.batch_id]) }
      raise TaskerWorker::RetryableError, "slice #{batch.batch_id} hiccup" if batch.batch_id == "002" && first

      { "sum" => batch.range.sum, "rows" => batch.size, "attempt" => context.attempt }
    end
  end

  # Routes by the task's `route`; the inner decision by `inner`.
  class Outer < TaskerWorker::DecisionHandler
    def decide(context) = context.input(:route)
  end

  class Inner < TaskerWorker::DecisionHandler
    def decide(context) = context.input(:inner)
  end

  class Leaf < TaskerWorker::StepHandler
    def call(context) = { "ran" => context.step_name }
  end

  # Which of its possible parents ran.
  class Join < TaskerWorker::StepHandler
    def call(context) = { "saw" => context.dependency_results.keys.sort }
  end
end

# Dynamic workflows end to end: Ruby handlers on a worker's threads, the embedded orchestrator
# creating the chosen steps and the batch workers.
RSpec.describe "dynamic workflows", :worker do
  let(:templates) { Dir.mktmpdir("dynamic_templates") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }

  before do
    FileUtils.cp(Dir[File.expand_path("../../examples/tasks/{expense_review,inventory_scan}.yaml", __dir__)], templates)
    File.write(File.join(templates, "flaky_scan.yaml"),
               File.read(File.join(templates, "inventory_scan.yaml"))
                   .sub("name: inventory_scan", "name: flaky_scan")
                   .sub("callable: Examples::Inventory::SumSlice", "callable: DynamicWorkflowsSpec::FlakySlice"))
    File.write(File.join(templates, "nested.yaml"), <<~YAML)
      name: nested
      namespace_name: finance
      version: 1.0.0
      steps:
        - { name: start, handler: { callable: DynamicWorkflowsSpec::Leaf } }
        - { name: outer, type: decision, dependencies: [start], handler: { callable: DynamicWorkflowsSpec::Outer } }
        - { name: left, dependencies: [outer], handler: { callable: DynamicWorkflowsSpec::Leaf } }
        - { name: inner, type: decision, dependencies: [outer], handler: { callable: DynamicWorkflowsSpec::Inner } }
        - { name: inner_a, dependencies: [inner], handler: { callable: DynamicWorkflowsSpec::Leaf } }
        - { name: inner_b, dependencies: [inner], handler: { callable: DynamicWorkflowsSpec::Leaf } }
        - name: join
          type: deferred_convergence
          dependencies: [left, inner_a, inner_b]
          handler: { callable: DynamicWorkflowsSpec::Join }
    YAML
    start_worker(registry: TaskerWorker.handler_registry, orchestrate: true, templates_path: templates,
                 concurrency: 4, namespaces: %w[finance inventory])
  end

  after { FileUtils.rm_rf(templates) }

  def run(namespace, name, context)
    client.wait(client.create_task(namespace: namespace, name: name, context: context), timeout: 60)
  end

  def results(task) = task[:steps].to_h { |s| [s[:name], s.dig(:results, "result")] }

  it "takes the branch the decision chose, and only that one, on each input" do
    small = run("finance", "expense_review", { amount: 120, employee: "ada" })
    expect(small[:state]).to eq("complete")
    expect(results(small).keys).to contain_exactly("intake", "classify", "fast_track", "close_out")
    expect(results(small)["close_out"]).to eq("closed" => true, "path" => "fast_track", "amount" => 120)

    large = run("finance", "expense_review", { amount: 5_000, employee: "bob" })
    expect(large[:state]).to eq("complete")
    expect(results(large).keys).to contain_exactly("intake", "classify", "committee", "close_out")
    expect(results(large)["close_out"]["path"]).to eq("committee")
  end

  it "runs nested decisions and a convergence over whichever branches exist" do
    task = run("finance", "nested", { route: %w[inner], inner: "inner_b" })
    expect(task[:state]).to eq("complete")
    expect(results(task).keys).to contain_exactly("start", "outer", "inner", "inner_b", "join")
    expect(results(task)["join"]["saw"]).to include("inner_b")
    expect(results(task)["join"]["saw"]).not_to include("left", "inner_a")
  end

  it "completes a task whose decision creates no step" do
    task = run("finance", "nested", { route: [] })
    expect(task[:state]).to eq("complete")
    expect(results(task).keys).to contain_exactly("start", "outer")
    expect(results(task)["outer"]["decision_point_outcome"]).to eq("type" => "no_branches")
  end

  it "sums 1,000 rows in 5 batch workers and converges to the right total" do
    task = run("inventory", "inventory_scan", { rows: 1_000 })
    expect(task[:state]).to eq("complete")
    workers = task[:steps].map { |s| s[:name] }.grep(/\Asum_slice_/)
    expect(workers).to contain_exactly("sum_slice_001", "sum_slice_002", "sum_slice_003", "sum_slice_004",
                                       "sum_slice_005")
    expect(results(task)["total"]).to eq("total" => (0...1_000).sum, "rows" => 1_000, "workers" => 5)
  end

  it "converges over zero rows through the no-op placeholder worker" do
    task = run("inventory", "inventory_scan", { rows: 0 })
    expect(task[:state]).to eq("complete")
    expect(results(task)["sum_slice_000"]).to eq("batch_id" => "000", "no_op" => true, "processed_count" => 0)
    expect(results(task)["total"]).to eq("total" => 0, "rows" => 0, "workers" => 0)
  end

  it "retries a batch worker that fails once, and the total is still right" do
    task = run("inventory", "flaky_scan", { rows: 500 })
    expect(task[:state]).to eq("complete")
    retried = task[:steps].find { |s| s[:name] == "sum_slice_002" }
    expect(retried[:attempts]).to eq(2)
    expect(results(task)["total"]).to eq("total" => (0...500).sum, "rows" => 500, "workers" => 5)
  end
end
