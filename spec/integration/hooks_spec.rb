# frozen_string_literal: true

# TaskerWorker::Hooks, where a framework plugs in (the Railtie sets them; spec/rails tests that).
RSpec.describe TaskerWorker::Hooks, :worker do
  let(:registry) { TaskerWorker::HandlerRegistry.new }

  after do
    described_class.error_reporter = nil
    described_class.step_wrapper = nil
  end

  def one_step(namespace, callable)
    WorkflowRows.create(db, namespace: namespace, steps: [{ name: "only", callable: callable }]).tap { |w| w.enqueue("only") }
  end

  it "tells the error reporter of each handler exception, with its step; a raising reporter changes nothing" do
    reported = Queue.new
    described_class.error_reporter = lambda do |exception, context|
      reported << [exception.class, exception.message, context.step_name]
      raise "the reporter is broken"
    end
    registry.register("Boom") { |_context| raise ArgumentError, "bad input" }
    start_worker(registry: registry, concurrency: 1, namespaces: ["reported"])

    result = one_step("reported", "Boom").wait_for_result("only")
    # The reporter ran before the failure was committed, so the queue holds it by now
    # (pop(true) raises at once if not).

    expect(reported.pop(true)).to eq([ArgumentError, "bad input", "only"])
    expect(result["error"]).to include("message" => "bad input", "error_type" => "handler_error")
  end

  it "runs each step inside the step wrapper" do
    wrapped = Queue.new
    described_class.step_wrapper = lambda do |&step|
      wrapped << :before
      step.call.tap { wrapped << :after }
    end
    registry.register("Plain") { |_context| { "ok" => true } }
    start_worker(registry: registry, concurrency: 1, namespaces: ["wrapped"])

    expect(one_step("wrapped", "Plain").wait_for_result("only")["result"]).to eq("ok" => true)
    expect([wrapped.pop(true), wrapped.pop(true)]).to eq(%i[before after])
  end
end
