# frozen_string_literal: true

RSpec.describe "domain events", :worker do
  let(:registry) { TaskerWorker::HandlerRegistry.new }

  after { TaskerWorker::DomainEvents.unsubscribe_all }

  def publish_step(namespace, events)
    rows = WorkflowRows.create(db, namespace: namespace, steps: [{ name: "ship", callable: "Ship" }])
    template = JSON.parse(db.exec_params("SELECT configuration FROM tasker.named_tasks WHERE name = 'spec_task' " \
                                         "AND task_namespace_uuid = (SELECT task_namespace_uuid FROM tasker.task_namespaces WHERE name = $1)",
                                         [namespace]).getvalue(0, 0))
    template["steps"][0]["publishes_events"] = events
    db.exec_params("UPDATE tasker.named_tasks SET configuration = $1 WHERE name = 'spec_task'",
                   [JSON.generate(template)])
    rows.tap { |r| r.enqueue("ship") }
  end

  it "delivers fast events to Ruby subscribers after the result commits, even when one subscriber raises" do
    registry.register("Ship") { |_c| { "tracking" => "TRK9" } }
    received = Queue.new
    TaskerWorker.subscribe("order.shipped") { |_e| raise "a broken subscriber" }
    TaskerWorker.subscribe("order.shipped") { |event| received << event }
    TaskerWorker.subscribe("*") { |event| received << [:any, event.name] }
    worker = start_worker(registry: registry, namespaces: ["events"])
    rows = publish_step("events", [{ "name" => "order.shipped", "delivery_mode" => "fast" }])

    event = wait_until("the event") { received.pop(true) rescue nil } # rubocop:disable Style/RescueModifier
    wildcard = wait_until("the wildcard delivery") { received.pop(true) rescue nil } # rubocop:disable Style/RescueModifier
    expect(event).to be_a(TaskerWorker::DomainEvent)
    expect(event.name).to eq("order.shipped")
    expect(event.step_uuid).to eq(rows.steps["ship"])
    expect(event.payload["result"]).to eq("tracking" => "TRK9")
    expect(rows.state("ship")).to eq("enqueued_for_orchestration") # committed before published
    expect(wildcard).to eq([:any, "order.shipped"])
    wait_until("the counts") { worker.status[:subscribers] == { delivered: 2, errors: 1 } }
  end

  it "puts durable events on {namespace}_domain_events with the envelope" do
    registry.register("Ship") { |_c| { "tracking" => "TRK10" } }
    start_worker(registry: registry, namespaces: ["durable"])
    rows = publish_step("durable", [{ "name" => "order.shipped" }])

    message = wait_until("the durable event") do
      db.exec("SELECT message FROM pgmq.q_durable_domain_events").to_a.first
    end
    envelope = JSON.parse(message["message"])
    expect(envelope).to include("name" => "order.shipped", "namespace" => "durable", "step_name" => "ship",
                                "task_uuid" => rows.task_uuid, "step_uuid" => rows.steps["ship"])
    expect(envelope.keys).to include("event_id", "correlation_id", "occurred_at", "payload")
  end

  # One task per call, its single step publishing `events`, enqueued once `max_attempts` is set.
  def failing_step(namespace, events, max_attempts:)
    rows = WorkflowRows.create(db, namespace: namespace, steps: [{ name: "ship", callable: "Ship" }])
    template = JSON.parse(db.exec("SELECT configuration FROM tasker.named_tasks WHERE name = 'spec_task'").getvalue(0, 0))
    template["steps"][0]["publishes_events"] = events
    db.exec_params("UPDATE tasker.named_tasks SET configuration = $1 WHERE name = 'spec_task'", [JSON.generate(template)])
    db.exec_params("UPDATE tasker.workflow_steps SET max_attempts = $1 WHERE workflow_step_uuid = $2",
                   [max_attempts, rows.steps["ship"]])
    rows.tap { |r| r.enqueue("ship") }
  end

  # `count` tasks of one step each publishing a fast order.shipped, all enqueued once the
  # template says so (WorkflowRows.create rewrites the template).
  def fast_steps(namespace, count)
    rows = Array.new(count) { WorkflowRows.create(db, namespace: namespace, steps: [{ name: "ship", callable: "Ship" }]) }
    template = JSON.parse(db.exec("SELECT configuration FROM tasker.named_tasks WHERE name = 'spec_task'").getvalue(0, 0))
    template["steps"][0]["publishes_events"] = [{ "name" => "order.shipped", "delivery_mode" => "fast" }]
    db.exec_params("UPDATE tasker.named_tasks SET configuration = $1 WHERE name = 'spec_task'", [JSON.generate(template)])
    rows.each { |r| r.enqueue("ship") }
  end

  def pop_within(queue, what) = wait_until(what) { queue.pop(true) rescue nil } # rubocop:disable Style/RescueModifier

  it "keeps delivering after subscribers raise exceptions of any class, and stop does not re-raise them" do
    registry.register("Ship") { |_c| {} }
    received = Queue.new
    [NotImplementedError, SystemExit, Interrupt, NoMemoryError].each do |klass|
      TaskerWorker.subscribe("order.shipped") { |_e| raise klass }
    end
    TaskerWorker.subscribe("order.shipped") { |event| received << event.step_uuid }
    worker = start_worker(registry: registry, namespaces: ["rude"])
    fast = [{ "name" => "order.shipped", "delivery_mode" => "fast" }]
    first = publish_step("rude", fast)
    expect(pop_within(received, "the first event")).to eq(first.steps["ship"])
    second = publish_step("rude", fast)
    expect(pop_within(received, "the second event")).to eq(second.steps["ship"])

    expect(worker.status[:subscribers]).to eq(delivered: 2, errors: 8)
    expect { worker.stop(timeout: 2) }.not_to raise_error
  end

  it "delivers the fast events still queued at a graceful stop" do
    registry.register("Ship") { |_c| {} }
    gate = Queue.new
    delivered = 0
    TaskerWorker.subscribe("order.shipped") do |_e|
      gate.pop if delivered.zero?
      sleep 0.02 # a subscriber slower than the steps
      delivered += 1
    end
    worker = start_worker(registry: registry, namespaces: ["draining"])
    steps = fast_steps("draining", 10)
    steps.each { |rows| rows.wait_for_result("ship") }
    wait_until("nine events queued behind the first") { worker.status.dig(:domain_events, :fast_queued) == 9 }

    gate << :go
    worker.stop(timeout: 5)
    expect(delivered).to eq(10)
    expect(worker.status[:domain_events]).to include(dropped_fast: 0, fast_queued: 0)
  end

  it "counts as dropped the queued fast events a stop has no time to deliver" do
    registry.register("Ship") { |_c| {} }
    gate = Queue.new
    delivered = 0
    TaskerWorker.subscribe("order.shipped") do |_e|
      gate.pop if delivered.zero?
      sleep 0.3
      delivered += 1
    end
    worker = start_worker(registry: registry, namespaces: ["dropping"])
    steps = fast_steps("dropping", 10)
    steps.each { |rows| rows.wait_for_result("ship") }
    wait_until("nine events queued behind the first") { worker.status.dig(:domain_events, :fast_queued) == 9 }

    gate << :go
    worker.stop(timeout: 0.5)
    dropped = worker.status.dig(:domain_events, :dropped_fast)
    expect(dropped).to be >= 5
    expect(delivered + dropped).to eq(10)
  end

  it "publishes permanent_failure, not retryable_failure, for the last failed attempt" do
    registry.register("Ship") { |_c| raise TaskerWorker::RetryableError, "gateway busy" }
    received = Queue.new
    TaskerWorker.subscribe("*") { |event| received << [event.name, event.step_uuid] }
    start_worker(registry: registry, namespaces: ["lastattempt"])
    events = [{ "name" => "ship.retrying", "condition" => "retryable_failure", "delivery_mode" => "fast" },
              { "name" => "ship.failed", "condition" => "permanent_failure", "delivery_mode" => "fast" }]
    with_retries = failing_step("lastattempt", events, max_attempts: 3)
    expect(pop_within(received, "the retryable event")).to eq(["ship.retrying", with_retries.steps["ship"]])
    last = failing_step("lastattempt", events, max_attempts: 1)
    expect(pop_within(received, "the permanent event")).to eq(["ship.failed", last.steps["ship"]])
    expect(last.results("ship")["error"]).to include("retryable" => true) # the handler's word; the attempts ran out
    expect(received).to be_empty
  end
end
