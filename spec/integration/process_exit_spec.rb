# frozen_string_literal: true

require "rbconfig"
require "tmpdir"

# The exit status of the tasker_worker process says how it ended, and no handler ends it.
RSpec.describe "the tasker_worker process's exit status", :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_exit") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:log) { File.join(dir, "worker.log") }

  before { client.register_templates(File.join(root, "spec/fixtures/tasks")) }

  after do
    Process.kill(:KILL, @pid) if @pid && !@waited
    Process.wait(@pid) if @pid && !@waited
    FileUtils.rm_rf(dir)
  end

  def spawn_worker
    @pid = Process.spawn({ "DATABASE_URL" => migrated_database_url }, RbConfig.ruby, File.join(root, "exe/tasker_worker"),
                         "-c", "2", "-n", "hostile", "--orchestrate", "-t", "5",
                         "-r", File.join(root, "spec/fixtures/process_handlers.rb"), out: log, err: log)
    wait_until("the worker to start") { File.exist?(log) && File.read(log).include?("pid #{@pid}") }
  end

  def wait_exit(timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until (done = Process.wait2(@pid, Process::WNOHANG))
      raise "the worker did not exit within #{timeout} s:\n#{File.read(log)}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.05
    end
    @waited = true
    done.last
  end

  def step_error(task)
    summary = client.wait(task, timeout: 20)
    expect(summary[:state]).to eq("blocked_by_failures")
    summary[:steps].first[:results]["error"]
  end

  it "survives `exit 3` and `raise Interrupt` in handlers, then exits 0 on SIGINT (Ctrl-C)" do
    spawn_worker
    exited = client.create_task(namespace: "hostile", name: "hostile", context: { do: "exit" })
    interrupted = client.create_task(namespace: "hostile", name: "hostile", context: { do: "interrupt" })

    expect(step_error(exited)).to include("error_type" => "handler_exit", "retryable" => false)
    expect(step_error(interrupted)).to include("error_type" => "handler_error", "message" => "Interrupt")
    expect(File.read(log)).to include("of step misbehave").and include("called exit(3); the step fails")
    ok = client.create_task(namespace: "hostile", name: "hostile", context: { do: "nothing" })
    expect(client.wait(ok, timeout: 20)[:state]).to eq("complete")

    Process.kill(:INT, @pid)
    expect(wait_exit(15).exitstatus).to eq(0)
    expect(File.read(log)).to include("tasker_worker: stopped")
  end

  it "names its database (password hidden) when it starts, and when it cannot reach it exits 1" do
    spawn_worker
    expect(File.read(log)).to match(%r{pid #{@pid}, 2 threads, namespaces hostile, database postgres://})

    refused = "postgres://postgres:secret@127.0.0.1:1/nowhere"
    output = IO.popen({ "DATABASE_URL" => refused }, [RbConfig.ruby, File.join(root, "exe/tasker_worker"), "-n", "hostile"],
                      err: %i[child out], &:read)
    expect($CHILD_STATUS.exitstatus).to eq(1) # CLI::EXIT_BOOT_FAILED
    expect(output).to include("could not start: TaskerWorker::DatabaseError")
      .and include("(database postgres://postgres:***@127.0.0.1:1/nowhere)")
    expect(output).not_to include("secret")
  end

  it "exits non-zero, logging the cause, when the process crashes" do
    spawn_worker
    client.create_task(namespace: "hostile", name: "hostile", context: { do: "crash_main" })

    expect(wait_exit(20).exitstatus).to eq(3) # CLI::EXIT_CRASHED
    expect(File.read(log)).to include("tasker_worker: crashed: RuntimeError: the application crashed")
  end
end
