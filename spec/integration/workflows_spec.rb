# frozen_string_literal: true

Dir[File.expand_path("../../examples/handlers/*.rb", __dir__)].sort.each { |f| require f }

# Every example workflow, end to end: the embedded orchestrator and Ruby handlers on threads.
RSpec.describe "example workflows", :worker do
  # rubocop:disable Lint/ConstantDefinitionInBlock -- fixed inputs every example of the file reads
  TEMPLATES = File.expand_path("../../examples/tasks", __dir__)
  NAMESPACES = %w[linear_workflow diamond_workflow tree_workflow mixed_dag_workflow order_fulfillment
                  test_errors].freeze
  # rubocop:enable Lint/ConstantDefinitionInBlock

  let(:client) { TaskerWorker::Client.for(migrated_database_url) }

  before do
    start_worker(registry: TaskerWorker.handler_registry, orchestrate: true, templates_path: TEMPLATES,
                 concurrency: 4, namespaces: NAMESPACES)
  end

  def run(namespace, name, context)
    client.wait(client.create_task(namespace: namespace, name: name, context: context), timeout: 30)
  end

  def results(task)
    task[:steps].to_h { |s| [s[:name], s[:results]["result"]] }
  end

  it "stops its embedded orchestrator when it stops, keeping the orchestrator's counters" do
    expect(run("linear_workflow", "mathematical_sequence", { even_number: 2 })[:state]).to eq("complete")
    worker = @workers.last
    worker.stop(timeout: 5)
    expect(worker.status[:orchestrator]).to include(tasks_completed: 1, tasks_failed: 0)

    # A running orchestrator would read this within its 0.1 s poll.
    message = { task_uuid: SecureRandom.uuid, step_uuid: SecureRandom.uuid, correlation_id: SecureRandom.uuid }
    msg_id = db.exec_params("SELECT pgmq.send('orchestration_step_results', $1::jsonb)", [message.to_json]).getvalue(0,
                                                                                                                     0)
    sleep 0.5
    unread = db.exec_params("SELECT count(*) FROM pgmq.q_orchestration_step_results WHERE msg_id = $1 AND read_ct = 0",
                            [msg_id]).getvalue(0, 0).to_i
    expect(unread).to eq(1), "the stopped worker's orchestrator still reads its queue"
  end

  it "runs the linear workflow: each step squares the previous" do
    task = run("linear_workflow", "mathematical_sequence", { even_number: 2 })
    expect(task[:state]).to eq("complete")
    expect(results(task)).to eq("linear_step_1" => 4, "linear_step_2" => 16, "linear_step_3" => 256,
                                "linear_step_4" => 65_536)
  end

  it "runs the diamond: the join sees both branches" do
    task = run("diamond_workflow", "parallel_computation", { even_number: 2 })
    expect(task[:state]).to eq("complete")
    expect(results(task)).to eq("diamond_start" => 4, "diamond_branch_b" => 16, "diamond_branch_c" => 16,
                                "diamond_end" => 1024)
  end

  it "runs the tree: eight steps and a four-way join" do
    task = run("tree_workflow", "hierarchical_tree", { even_number: 2 })
    expect(task[:state]).to eq("complete")
    expect(task[:steps].size).to eq(8)
    expect(results(task)).to include("tree_leaf_d" => 256, "tree_leaf_g" => 256, "tree_final_convergence" => 1_048_576)
  end

  it "runs the mixed DAG: seven steps and a three-way join" do
    task = run("mixed_dag_workflow", "complex_dag", { even_number: 2 })
    expect(task[:state]).to eq("complete")
    expect(results(task)).to eq("dag_init" => 4, "dag_process_left" => 16, "dag_process_right" => 16,
                                "dag_validate" => 1024, "dag_transform" => 256, "dag_analyze" => 256,
                                "dag_finalize" => 2_359_296)
  end

  it "fulfills an order with a realistic context" do
    order = { customer: { id: 42, email: "ada@example.com" },
              items: [{ sku: "BOOK-1", quantity: 2, price: 12.5 }, { sku: "PEN-9", quantity: 3, price: 1.25 }],
              payment: { method: "card", token: "tok_visa" },
              shipping: { method: "express", address: "1 Main St" } }
    task = run("order_fulfillment", "business_workflow", order)
    expect(task[:state]).to eq("complete")
    r = results(task)
    expect(r["validate_order"]).to eq("customer_id" => 42, "item_count" => 2, "total" => 28.75)
    expect(r["reserve_inventory"]["reservations"].map { |x| x["sku"] }).to eq(%w[BOOK-1 PEN-9])
    expect(r["process_payment"]).to include("amount" => 28.75, "gateway" => "demo-gateway")
    expect(r["ship_order"]).to include("carrier_method" => "express", "amount_charged" => 28.75)
  end

  it "stops an order at a declined card: the task is blocked by the failure and shipping never runs" do
    order = { customer: { id: 1, email: "x@example.com" }, items: [{ sku: "A", quantity: 1, price: 5 }],
              payment: { method: "card", token: "tok_declined" }, shipping: { method: "ground" } }
    task = run("order_fulfillment", "business_workflow", order)
    steps = task[:steps].to_h { |s| [s[:name], s] }
    expect(task[:state]).to eq("blocked_by_failures")
    expect(steps["process_payment"][:state]).to eq("error")
    expect(steps["process_payment"][:results]["error"]["message"]).to eq("card declined")
    expect(steps["ship_order"][:state]).to eq("pending")
  end

  it "handles each error scenario: permanent, retryable until exhausted, fail once then succeed" do
    task = run("test_errors", "error_scenarios", {})
    steps = task[:steps].to_h { |s| [s[:name], s] }
    expect(task[:state]).to eq("blocked_by_failures")
    expect(steps["permanent_failure"]).to include(state: "error", attempts: 1)
    expect(steps["permanent_failure"][:results]["error"]).to include("error_type" => "permanent_error",
                                                                     "retryable" => false)
    # Let the other two settle (the task is already blocked).
    wait_until("the retries to settle") do
      now = client.task(task[:task_uuid])[:steps].to_h { |s| [s[:name], s] }
      now if %w[error complete].include?(now["retryable_exhausted"][:state]) && now["fail_once"][:state] == "complete"
    end => settled
    expect(settled["retryable_exhausted"]).to include(state: "error", attempts: 2)
    expect(settled["fail_once"]).to include(state: "complete", attempts: 2)
    expect(settled["fail_once"][:results]["result"]).to eq("succeeded_on_attempt" => 2)
  end
end
