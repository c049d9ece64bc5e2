# frozen_string_literal: true

require "rbconfig"
require "tmpdir"

# The tasker_worker process: several at once share the work; a killed one loses nothing; a
# stopped one finishes or releases what it holds.
RSpec.describe "the tasker_worker process", :worker do
  let(:root) { File.expand_path("../..", __dir__) }

  let(:dir) { Dir.mktmpdir("tasker_worker_process") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }

  before do
    File.write(File.join(dir, "worker.toml"), "[worker]\nvisibility_timeout_seconds = 2\npoll_interval_ms = 100\n")
    client.register_templates(File.join(root, "spec/fixtures/tasks"))
    @pids = []
  end

  after do
    @pids.each { |pid| Process.kill(:KILL, pid) rescue nil } # rubocop:disable Style/RescueModifier
    # Every process is killed before any is waited for, so they die at once, not one by one.
    @pids.each { |pid| Process.wait(pid) rescue nil } # rubocop:disable Style/RescueModifier, Style/CombinableLoops
    FileUtils.rm_rf(dir)
  end

  def spawn_worker(name, timeout: 10)
    log = File.join(dir, "#{name}.log")
    pid = Process.spawn({ "DATABASE_URL" => migrated_database_url },
                        RbConfig.ruby, File.join(root, "exe/tasker_worker"), "-c", "3", "-n", "slow_chain",
                        "--orchestrate", "-C", File.join(dir, "worker.toml"), "-t", timeout.to_s,
                        "-r", File.join(root, "spec/fixtures/process_handlers.rb"), out: log, err: log)
    @pids << pid
    wait_until("worker #{name} to start") { File.exist?(log) && File.read(log).include?("pid #{pid}") }
    pid
  end

  def create_tasks(count, seconds)
    Array.new(count) { client.create_task(namespace: "slow_chain", name: "slow_chain", context: { seconds: seconds }) }
  end

  def step_transitions(state)
    db.exec_params("SELECT workflow_step_uuid, metadata FROM tasker.workflow_step_transitions WHERE to_state = $1", [state]).to_a
  end

  def expect_each_step_committed_once(tasks)
    tasks.each { |t| expect(client.wait(t, timeout: 60)[:state]).to eq("complete") }
    committed = step_transitions("enqueued_for_orchestration").map { |r| r["workflow_step_uuid"] }
    expect(committed.size).to eq(tasks.size * 3)
    expect(committed.uniq.size).to eq(committed.size)
    expect(step_transitions("complete").size).to eq(tasks.size * 3)
  end

  def in_progress_count
    db.exec("SELECT count(*) FROM tasker.workflow_step_transitions WHERE most_recent AND to_state = 'in_progress'").getvalue(0, 0).to_i
  end

  it "shares the work between two processes, each step committed once" do
    spawn_worker("a")
    spawn_worker("b")
    tasks = create_tasks(20, 0.05)

    expect_each_step_committed_once(tasks)
    workers = step_transitions("in_progress").map { |r| JSON.parse(r["metadata"])["worker_id"] }.uniq
    expect(workers.size).to eq(2)
  end

  it "loses nothing when a process is killed with SIGKILL mid-workflow" do
    victim = spawn_worker("victim")
    tasks = create_tasks(6, 0.5)
    wait_until("steps in flight in the victim") { in_progress_count >= 3 }
    Process.kill(:KILL, victim)
    Process.wait(victim)
    @pids.delete(victim)

    spawn_worker("survivor")
    expect_each_step_committed_once(tasks)
    reclaims = step_transitions("in_progress").count { |r| JSON.parse(r["metadata"])["event"] == "reclaim" }
    expect(reclaims).to be >= 1
  end

  it "exits within -t on SIGTERM, finishing the steps it holds" do
    pid = spawn_worker("stopping", timeout: 10)
    tasks = create_tasks(3, 1.0)
    wait_until("three steps in flight") { in_progress_count == 3 }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    Process.kill(:TERM, pid)
    _, status = Process.wait2(pid)
    @pids.delete(pid)

    expect(status.exitstatus).to eq(0)
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 10 + 5
    expect(in_progress_count).to eq(0) # finished (or released), never left claimed
    spawn_worker("after")
    expect_each_step_committed_once(tasks)
  end

  it "runs exactly what its -C file sets, and logs debug lines with -v" do
    path = File.join(dir, "from_file.toml")
    File.write(path, <<~TOML)
      [worker]
      namespaces = ["slow_chain"]
      shutdown_timeout_ms = 7000
      poll_interval_ms = 100
      prefetch = 3
      [worker.mpsc_channels.handler_dispatch]
      max_concurrent_handlers = 3
    TOML
    log = File.join(dir, "from_file.log")
    pid = Process.spawn({ "DATABASE_URL" => migrated_database_url }, RbConfig.ruby, File.join(root, "exe/tasker_worker"),
                        "-C", path, "-v", "-r", File.join(root, "spec/fixtures/process_handlers.rb"), "--orchestrate",
                        out: log, err: log)
    @pids << pid
    wait_until("the worker to start") { File.exist?(log) && File.read(log).include?("pid #{pid}") }

    expect(File.read(log)).to include("3 threads, namespaces slow_chain, database #{migrated_database_url}, shutdown timeout 7.0 s")
    tasks = create_tasks(1, 0.01)
    expect(client.wait(tasks.first, timeout: 30)[:state]).to eq("complete")
    Process.kill(:TTIN, pid)
    status = wait_until("the TTIN status line") { File.read(log)[/^.*INFO  tasker_worker: status .*$/] }
    expect(status).to match(/:namespaces\s*=>\s*\["slow_chain"\]/).and match(/:capacity\s*=>\s*6\b/)
      .and match(/:threads\s*=>\s*3\b/)
    expect(File.read(log)).to match(/^\S+ DEBUG /)
  end
end
