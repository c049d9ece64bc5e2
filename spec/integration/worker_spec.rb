# frozen_string_literal: true

require "stringio"

RSpec.describe TaskerWorker::Worker, :worker, :ffi do
  let(:registry) { TaskerWorker::HandlerRegistry.new }

  def one_step(namespace, callable, context: {}, timeout_seconds: nil)
    WorkflowRows.create(db, namespace: namespace, context: context,
                            steps: [{ name: "only", callable: callable, timeout_seconds: timeout_seconds }])
                .tap { |w| w.enqueue("only") }
  end

  it "runs a Ruby handler class with its context and commits the result" do
    stub_const("SpecSquare", Class.new(TaskerWorker::StepHandler) do
      def call(context)
        success(result: { "square" => context.input(:n)**2, "attempt" => context.attempt }, metadata: { "by" => "spec" })
      end
    end)
    start_worker(registry: registry, concurrency: 2, namespaces: ["square"])
    rows = one_step("square", "SpecSquare", context: { n: 12 })

    result = rows.wait_for_result("only")
    expect(result).to include("success" => true, "status" => "completed",
                              "result" => { "square" => 144, "attempt" => 1 })
    expect(result["metadata"]["custom"]).to eq("by" => "spec")
    expect(rows.state("only")).to eq("enqueued_for_orchestration")
  end

  it "runs N handlers at the same time on N threads" do
    n = 4
    arrived = 0
    lock = Mutex.new
    all_here = ConditionVariable.new
    registry.register("Rendezvous") do |_context|
      lock.synchronize do
        arrived += 1
        all_here.broadcast
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
        all_here.wait(lock, 0.1) while arrived < n && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
        { "saw" => arrived }
      end
    end
    start_worker(registry: registry, concurrency: n, namespaces: ["together"])
    steps = Array.new(n) { one_step("together", "Rendezvous") }

    results = steps.map { |rows| rows.wait_for_result("only") }
    # Each handler returned only once all n were inside a handler at the same moment.
    expect(results.map { |r| r.dig("result", "saw") }).to all(eq(n))
  end

  it "commits a failure result for every way a handler can fail" do
    registry.register("Raises") { |_c| raise ArgumentError, "bad input" }
    registry.register("Permanent") { |_c| raise TaskerWorker::PermanentError, "card declined" }
    registry.register("Retryable") { |_c| raise TaskerWorker::RetryableError.new("gateway busy", retry_after: 3) }
    registry.register("BadValue") { |_c| { "object" => Object.new } }
    start_worker(registry: registry, concurrency: 4, namespaces: ["failing"])
    rows = WorkflowRows.create(db, namespace: "failing", steps: %w[Raises Permanent Retryable BadValue Missing::Handler]
      .map { |c| { name: c.downcase.tr(":", "_"), callable: c } })
    rows.steps.each_key { |name| rows.enqueue(name) }

    expected = {
      "raises" => ["handler_error", true, "bad input"],
      "permanent" => ["permanent_error", false, "card declined"],
      "retryable" => ["retryable_error", true, "gateway busy"],
      "badvalue" => ["invalid_result", false, "could not be converted"],
      "missing__handler" => ["handler_not_found", false, "Missing::Handler"]
    }
    expected.each do |step, (error_type, retryable, message)|
      result = rows.wait_for_result(step)
      expect(result["success"]).to be(false)
      expect(result["error"]).to include("error_type" => error_type, "retryable" => retryable)
      expect(result["metadata"]["retryable"]).to be(retryable)
      expect(result["error"]["message"]).to include(message)
    end
    expect(rows.results("raises").dig("error", "context", "error_class")).to eq("ArgumentError")
    expect(rows.results("raises").dig("error", "backtrace")).not_to be_empty
    expect(rows.results("retryable").dig("orchestration_metadata", "backoff_hint", "delay_seconds")).to eq(3)
  end

  it "warns about steps nobody polls when every thread is busy, and counts it" do
    log = StringIO.new
    TaskerWorker.configure { |c| c.logger = Logger.new(log) }
    release = Queue.new
    registry.register("Slow") { |_c| release.pop }
    worker = start_worker(registry: registry, concurrency: 1, namespaces: ["starve"], starvation_warning_threshold: 0.2)
    one_step("starve", "Slow")
    second = one_step("starve", "Slow")

    status = wait_until("a starvation warning") do
      s = worker.status
      s if s[:ffi][:starvation_warnings] >= 1
    end
    expect(status[:ffi][:running]).to eq(1)
    wait_until("the warning in the Ruby log") { log.string.include?("starvation") }
    release << :go << :go
    second.wait_for_result("only")
  end

  it "fails a handler past the completion timeout with ffi_timeout and rejects its late completion" do
    registry.register("TooSlow") do |_c|
      sleep 1.2
      { "late" => true }
    end
    worker = start_worker(registry: registry, concurrency: 1, namespaces: ["timeout"], completion_timeout: 0.3)
    rows = one_step("timeout", "TooSlow")

    result = rows.wait_for_result("only")
    expect(result["error"]).to include("error_type" => "ffi_timeout", "retryable" => true)
    wait_until("the late completion to be rejected") { worker.status[:ffi][:rejected_completions] == 1 }
    expect(rows.results("only")["error"]["error_type"]).to eq("ffi_timeout")
  end

  it "completes at once the step of a thread killed mid-handler, and replaces the thread" do
    started = Queue.new
    registry.register("Forever") do |_c|
      started << Thread.current
      sleep
    end
    worker = start_worker(registry: registry, concurrency: 2, namespaces: ["killed"], completion_timeout: 30)
    rows = one_step("killed", "Forever")
    started.pop.kill

    result = rows.wait_for_result("only", timeout: 10)
    expect(result["error"]).to include("error_type" => "handler_killed", "retryable" => true)
    wait_until("the thread to be replaced") { worker.status[:threads] == 2 }
    expect(worker.status[:ffi][:timed_out]).to eq(0)
  end

  it "raises ForkError in a forked child and keeps working in the parent" do
    registry.register("Echo") { |c| { "n" => c.input(:n) } }
    worker = start_worker(registry: registry, concurrency: 1, namespaces: ["forked"])
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      begin
        worker.status
        writer.write("no error")
      rescue TaskerWorker::ForkError => e
        writer.write("ForkError: #{e.message}")
      end
      writer.close
      exit!(0)
    end
    writer.close
    Process.wait(pid)
    expect(reader.read).to match(/\AForkError: this worker was started in process #{Process.pid}/)
    expect(one_step("forked", "Echo", context: { n: 5 }).wait_for_result("only")["result"]).to eq("n" => 5)
  end

  it "runs a few hundred real steps" do
    registry.register("Sum") { |c| { "sum" => c.input(:a) + c.input(:b) } }
    worker = start_worker(registry: registry, concurrency: 5, namespaces: ["many"])
    steps = Array.new(300) { |i| one_step("many", "Sum", context: { a: i, b: 1 }) }

    steps.each_with_index { |rows, i| expect(rows.wait_for_result("only")["result"]).to eq("sum" => i + 1) }
    # A result is visible in the database just before the worker counts it.
    wait_until("all 300 results counted", timeout: 10) { worker.status[:counters][:succeeded] >= 300 }
    expect(worker.status[:counters]).to include(succeeded: 300, failed: 0)
  end
end
