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
end
