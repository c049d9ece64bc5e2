# frozen_string_literal: true

require "json"
require "open3"
require "rbconfig"
require "tmpdir"

# The operator's commands end to end: the real exe/tasker_worker worker process, and
# `tasker_worker COMMAND` processes acting on it (status, tasks, task, retry, cancel,
# resolve, dead-letters, replay, workers, migrate), plus the Client's refusals.
RSpec.describe "operations (tasker_worker COMMAND and TaskerWorker::Client)", :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_operations") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:flag) { File.join(dir, "broken") }

  before do
    client.register_templates(File.join(root, "spec/fixtures/operations"))
    @pids = []
  end

  after do
    @pids.each { |pid| Process.kill(:KILL, pid) rescue nil } # rubocop:disable Style/RescueModifier
    @pids.each { |pid| Process.wait(pid) rescue nil } # rubocop:disable Style/RescueModifier, Style/CombinableLoops
    FileUtils.rm_rf(dir)
  end

  def spawn_worker
    log = File.join(dir, "worker.log")
    pid = Process.spawn({ "DATABASE_URL" => migrated_database_url },
                        RbConfig.ruby, File.join(root, "exe/tasker_worker"), "-c", "2", "-n", "ops", "--orchestrate", "-t", "1",
                        "-r", File.join(root, "spec/fixtures/operations_handlers.rb"), out: log, err: log)
    @pids << pid
    wait_until("the worker to start") { File.exist?(log) && File.read(log).include?("pid #{pid}") }
    pid
  end

  # [stdout, stderr, exit status] of `tasker_worker *args`, bounded.
  # `url: nil` runs it without DATABASE_URL.
  def tasker_worker(*args, url: migrated_database_url)
    Timeout.timeout(60) do
      env = { "DATABASE_URL" => url, "TASKER_CONFIG_PATH" => nil }
      out, err, status = Open3.capture3(env, RbConfig.ruby, File.join(root, "exe/tasker_worker"), *args)
      [out, err, status.exitstatus]
    end
  end

  def json(*args)
    out, err, code = tasker_worker(*args, "--json")
    expect(code).to eq(0), "tasker_worker #{args.join(" ")} exited #{code}: #{err}"
    JSON.parse(out)
  end

  def new_task(**context)
    client.create_task(namespace: "ops", name: "ops", version: "1.0.0", context: context)
  end

  def wait_state(uuid, state)
    wait_until("task #{uuid} to be #{state}") { client.task(uuid)[:state] == state }
  end

  it "shows, retries, resolves and cancels against a running worker" do
    pid = spawn_worker
    status = wait_until("the worker's heartbeat") { (s = json("status"))["workers"].any? && s }
    expect(status["workers"].first).to include("pid" => pid, "state" => "running", "namespaces" => ["ops"])
    expect(status["schema_up_to_date"]).to be(true)
    expect(status["queues"].map { |q| q["queue_name"] }).to include("worker_ops_queue")

    File.write(flag, "")
    failed = new_task(fail_while: flag)
    wait_state(failed, "blocked_by_failures")
    listed = json("tasks", "--state", "blocked_by_failures", "--namespace", "ops")
    expect(listed.map { |t| t["task_uuid"] }).to eq([failed])
    table, = tasker_worker("task", failed)
    expect(table).to match(%r{flaky\s+-\s+error\s+1/1\s+.*flaky is broken while})
    expect(table).to match(/after\s+flaky\s+pending/)

    File.delete(flag)
    out, err, code = tasker_worker("retry", failed)
    expect([code, err]).to eq([0, ""])
    expect(out).to include("1 step(s) enqueued")
    expect(client.wait(failed)[:state]).to eq("complete")

    File.write(flag, "")
    resolved = new_task(fail_while: flag)
    wait_state(resolved, "blocked_by_failures")
    flaky = client.task(resolved)[:steps].find { |s| s[:name] == "flaky" }[:step_uuid]
    expect(json("resolve", flaky, "--result", '{"result": {"by": "hand"}}')["task_state"]).to eq("steps_in_process")
    expect(client.wait(resolved)[:state]).to eq("complete")

    slow = new_task(seconds: 30)
    wait_until("the slow step to run") { client.task(slow)[:steps].any? { |s| s[:name] == "after" && s[:state] == "in_progress" } }
    expect(json("cancel", slow)).to include("task_state" => "cancelled")
    _, err, code = tasker_worker("cancel", slow)
    expect(code).to eq(1)
    expect(err).to include("InvalidStateError", "is cancelled")
    expect(client.task(slow)[:state]).to eq("cancelled")

    Process.kill(:TERM, pid)
    Timeout.timeout(30) { Process.wait(pid) }
    @pids.delete(pid)
    expect(json("workers").first).to include("pid" => pid, "state" => "stopped")
  end

  it "lists and replays a dead letter once, and refuses what the state machine does not allow" do
    task = new_task
    first = client.task(task)[:steps].find { |s| s[:name] == "flaky" }[:step_uuid]
    message = db.exec("DELETE FROM pgmq.q_worker_ops_queue RETURNING message::text").getvalue(0, 0)
    expect(JSON.parse(message)["step_uuid"]).to eq(first)
    id = SecureRandom.uuid
    db.exec_params("INSERT INTO tasker.dead_letters (dead_letter_uuid, queue_name, msg_id, read_ct, message, reason) " \
                   "VALUES ($1, 'worker_ops_queue', 1, 4, $2, 'gave up')", [id, message])
    table, = tasker_worker("dead-letters")
    expect(table.lines.first).to match(/\Aid\s+queue_name\s+msg_id/)
    expect(table).to include(id, "gave up")
    # Two processes at once: one replays, the other is refused.
    replays = Array.new(2) { Thread.new { tasker_worker("replay", id) } }.map(&:value)
    expect(replays.map(&:last).sort).to eq([0, 1])
    expect(replays.map { |r| r[1] }.join).to match(/InvalidStateError: .*replayed already/)
    expect(db.exec("SELECT count(*) FROM pgmq.q_worker_ops_queue").getvalue(0, 0)).to eq("1")

    cancelled = new_task
    cancels = Array.new(2) { Thread.new { tasker_worker("cancel", cancelled) } }.map(&:value)
    expect(cancels.map(&:last).sort).to eq([0, 1])
    expect(client.task(cancelled)[:steps].map { |s| s[:state] }).to eq(%w[cancelled cancelled])

    spawn_worker
    expect(client.wait(task)[:state]).to eq("complete")
    expect { client.retry_step(first) }.to raise_error(TaskerWorker::InvalidStateError, /is complete: its steps cannot be retried/)
    expect { client.cancel_task(SecureRandom.uuid) }.to raise_error(TaskerWorker::NotFoundError)
    expect { client.cancel_task("nope") }.to raise_error(TaskerWorker::InvalidInputError)
    expect(client.dead_letters.first[:replayed_at]).not_to be_nil
    expect(client.tasks(state: "complete", before: Time.now + 60).map { |t| t[:task_uuid] }).to eq([task])
  end

  it "migrates a fresh database and says when the schema is not up to date" do
    url = TestDatabase.create
    out, _, code = tasker_worker("status", url: url)
    expect(code).to eq(1)
    expect(out).to include("schema: NOT up to date", "tasker_worker migrate")
    out, _, code = tasker_worker("migrate", url: url)
    expect([code, out]).to match([0, /applied \d+ migration\(s\)/])
    config = File.join(dir, "worker.toml")
    File.write(config, "[database]\nurl = #{url.dump}\n")
    out, err, code = tasker_worker("status", "-C", config, url: nil)
    expect([code, err, out]).to match([0, "", /\Aschema: up to date$/])
    out, _, code = tasker_worker("help", url: nil)
    expect([code, out]).to match([0, /^  dead-letters  dead letters, newest first/])
    _, err, code = tasker_worker("tasks", "--limit", "x")
    expect([code, err]).to match([2, /invalid argument/])
  end
end
