# frozen_string_literal: true

require "stringio"

# Handlers that exit, raise what is not a StandardError, kill their thread, hang, or return
# what JSON cannot hold: each step gets its result at once and the worker keeps running.
RSpec.describe "hostile handlers", :worker, :ffi do
  let(:registry) { TaskerWorker::HandlerRegistry.new }
  let(:log) { StringIO.new }

  before { TaskerWorker.configure { |c| c.logger = Logger.new(log) } }

  def steps_for(namespace, callables)
    rows = WorkflowRows.create(db, namespace: namespace, steps: callables.map { |c| { name: c.downcase, callable: c } })
    rows.tap { rows.steps.each_key { |name| rows.enqueue(name) } }
  end

  # A result well before the 30 s completion timeout, so not the core's ffi_timeout.
  def quick_result(rows, step)
    rows.wait_for_result(step, timeout: 10).tap { |r| expect(r.dig("error", "error_type")).not_to eq("ffi_timeout") }
  end

  it "turns exit, exit 3, raise SystemExit and abort into handler_exit failures; the worker keeps running" do
    registry.register("Exit") { |_c| exit }
    registry.register("Exit3") { |_c| exit 3 }
    registry.register("Raise") { |_c| raise SystemExit.new(4, "raised") }
    registry.register("Abort") do |_c|
      $stderr = StringIO.new # abort prints its message
      abort "cannot go on"
    ensure
      $stderr = STDERR
    end
    registry.register("Echo") { |c| { "n" => c.input(:n) } }
    worker = start_worker(registry: registry, concurrency: 2, namespaces: ["exits"], completion_timeout: 30)
    rows = steps_for("exits", %w[Exit Exit3 Raise Abort])

    expected = { "exit" => [0, "called exit(0)"], "exit3" => [3, "called exit(3)"],
                 "raise" => [4, "exit(4) or abort: raised"], "abort" => [1, "exit(1) or abort: cannot go on"] }
    expected.each do |step, (status, message)|
      error = quick_result(rows, step)["error"]
      expect(error).to include("error_type" => "handler_exit", "retryable" => false)
      expect(error["message"]).to include(message)
      expect(error.dig("context", "exit_status")).to eq(status)
      expect(error.dig("context", "error_class")).to eq("SystemExit")
    end
    expect(log.string).to include("of step exit3 (#{rows.steps["exit3"]}) called exit(3); the step fails")
    expect(worker).to be_running
    echo = WorkflowRows.create(db, namespace: "exits", context: { n: 9 }, steps: [{ name: "echo", callable: "Echo" }])
    echo.enqueue("echo")
    expect(echo.wait_for_result("echo")["result"]).to eq("n" => 9)
  end

  it "completes at once, with class, message and backtrace, a step whose handler raises anything at all" do
    broken = Class.new(StandardError) do
      def message = raise("no message for you")
      def backtrace = raise("no backtrace either")
    end
    stub_const("BrokenMessageError", broken)
    registry.register("NoMemory") { |_c| raise NoMemoryError, "out of memory" }
    registry.register("Interrupted") { |_c| raise Interrupt }
    registry.register("Deep") { |_c| (recurse = ->(n) { recurse.call(n + 1) + 1 }).call(0) }
    registry.register("Script") { |_c| raise ScriptError, "bad script" }
    registry.register("NotImpl") { |_c| raise NotImplementedError, "later" }
    registry.register("Broken") { |_c| raise BrokenMessageError }
    registry.register("Killed") { |_c| Thread.current.kill }
    worker = start_worker(registry: registry, concurrency: 3, namespaces: ["raises"], completion_timeout: 30)
    rows = steps_for("raises", %w[NoMemory Interrupted Deep Script NotImpl Broken Killed])

    expected = { "nomemory" => ["NoMemoryError", "out of memory"], "interrupted" => %w[Interrupt Interrupt],
                 "deep" => ["SystemStackError", "stack level too deep"], "script" => ["ScriptError", "bad script"],
                 "notimpl" => %w[NotImplementedError later],
                 "broken" => ["BrokenMessageError", "BrokenMessageError (its #message raised RuntimeError)"] }
    expected.each do |step, (klass, message)|
      error = quick_result(rows, step)["error"]
      expect(error).to include("error_type" => "handler_error", "retryable" => true)
      expect(error["message"]).to include(message)
      expect(error.dig("context", "error_class")).to eq(klass)
      expect(error["backtrace"]).not_to be_empty
    end
    expect(rows.results("broken").dig("error", "backtrace").first).to include("#backtrace raised RuntimeError")
    killed = quick_result(rows, "killed")["error"]
    expect(killed).to include("error_type" => "handler_killed", "retryable" => true)
    expect(log.string).to include("of step nomemory (#{rows.steps["nomemory"]}) raised NoMemoryError")
    wait_until("the killed thread to be replaced") { worker.status[:threads] == 3 }
    expect(worker.status[:ffi]).to include(timed_out: 0)
  end

  it "replaces the thread of a handler that hangs past its timeout, and kills one that will not stop" do
    interrupted = Queue.new
    registry.register("Hangs") do |_c|
      sleep
    rescue TaskerWorker::HandlerAbandoned => e
      interrupted << e.message
      raise
    end
    registry.register("Stubborn") do |_c|
      loop do
        sleep
      rescue Exception # rubocop:disable Lint/RescueException -- a handler that ignores being abandoned
        interrupted << :ignored
      end
    ensure
      interrupted << :killed
    end
    registry.register("Echo") { |c| { "n" => c.input(:n) } }
    worker = start_worker(registry: registry, concurrency: 1, namespaces: ["hung"], completion_timeout: 0.3)
    hangs = steps_for("hung", ["Hangs"])
    expect(hangs.wait_for_result("hangs")["error"]["error_type"]).to eq("ffi_timeout")
    expect(wait_until("the interrupt") { interrupted.pop(true) rescue nil }).to include("step hangs timed out") # rubocop:disable Style/RescueModifier

    stubborn = steps_for("hung", ["Stubborn"])
    expect(stubborn.wait_for_result("stubborn")["error"]["error_type"]).to eq("ffi_timeout")
    expect(wait_until("the ignored interrupt") { interrupted.pop(true) rescue nil }).to eq(:ignored) # rubocop:disable Style/RescueModifier
    expect(wait_until("the kill after the grace") { interrupted.pop(true) rescue nil }).to eq(:killed) # rubocop:disable Style/RescueModifier

    # With one thread configured, a fresh one still runs the next step.
    echo = WorkflowRows.create(db, namespace: "hung", context: { n: 3 }, steps: [{ name: "echo", callable: "Echo" }])
    echo.enqueue("echo")
    expect(echo.wait_for_result("echo")["result"]).to eq("n" => 3)
    status = worker.status
    expect(status).to include(threads: 1, abandoned_threads: 2)
    expect(status[:ffi]).to include(timed_out: 2)
    wait_until("the late completions to be rejected") { worker.status[:ffi][:rejected_completions] == 2 }
    expect(log.string).to include("interrupted it and started a fresh thread")
  end

  it "fails as invalid_result a result with NaN or Infinity, too deep, self-referencing or too large" do
    deep = ->(levels) { (1..levels).reduce(1) { |inner, _| { "a" => inner } } }
    registry.register("Nan") { |_c| { "x" => [1, { "y" => Float::NAN }] } }
    registry.register("Inf") { |_c| { "x" => -Float::INFINITY } }
    registry.register("Levels64") { |_c| deep.call(64) }
    registry.register("Levels65") { |_c| deep.call(65) }
    registry.register("Levels10000") { |_c| deep.call(10_000) }
    registry.register("SelfRef") { |_c| [].tap { |a| a << a << a } }
    registry.register("Huge") { |_c| { "blob" => "x" * (16 * 1024 * 1024) } }
    start_worker(registry: registry, concurrency: 2, namespaces: ["badvalues"])
    rows = steps_for("badvalues", %w[Nan Inf Levels64 Levels65 Levels10000 SelfRef Huge])

    expect(rows.wait_for_result("levels64")["success"]).to be(true)
    {
      "nan" => 'holds NaN at the top[:result]["x"][1]["y"]; JSON has no NaN or Infinity',
      "inf" => "holds Infinity",
      "levels65" => "the result nests deeper than 64 levels",
      "levels10000" => "nests deeper than 64 levels of Hashes and Arrays (the limit)",
      "selfref" => "nests deeper than 64 levels of Hashes and Arrays (the limit)",
      "huge" => "bytes of JSON; the limit is 16777216 bytes"
    }.each do |step, message|
      error = rows.wait_for_result(step)["error"]
      expect(error).to include("error_type" => "invalid_result", "retryable" => false)
      expect(error["message"]).to include(message)
    end
  end

  it "raises ForkError from every method of a worker inherited by a forked child" do
    worker = start_worker(registry: registry, concurrency: 1, namespaces: ["forkall"])
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      answers = %i[running? status quiet! stop start concurrency namespaces shutdown_timeout].map do |name|
        worker.public_send(name)
        "#{name}: no error"
      rescue TaskerWorker::ForkError
        "#{name}: ForkError"
      end
      writer.write(answers.join("\n"))
      writer.close
      exit!(0)
    end
    writer.close
    Process.wait(pid)
    expect(reader.read.lines.map(&:chomp)).to all(end_with(": ForkError"))
    expect(worker).to be_running
  end
end

RSpec.describe "Client.create_task over the limits", :worker do
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }

  it "raises InvalidInputError, an ArgumentError naming the limit, and creates nothing" do
    deep = (1..10_000).reduce(1) { |inner, _| [inner] }
    self_ref = {}.tap { |h| h["me"] = h }
    {
      deep => "the task context nests deeper than 64 levels of Hashes and Arrays (the limit)",
      self_ref => "the task context nests deeper than 64 levels",
      { "x" => Float::NAN } => "the task context holds NaN",
      { "x" => "y" * (16 * 1024 * 1024) } => "the limit is 16777216 bytes"
    }.each do |context, message|
      expect { client.create_task(namespace: "nowhere", name: "none", context: context) }
        .to raise_error(TaskerWorker::InvalidInputError, /#{Regexp.escape(message)}/)
    end
    expect(TaskerWorker::InvalidInputError.ancestors).to include(ArgumentError)
    expect(db.exec("SELECT count(*) FROM tasker.tasks").getvalue(0, 0).to_i).to eq(0)
  end
end
