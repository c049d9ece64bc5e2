# frozen_string_literal: true

require "net/http"
require "open3"
require "rbconfig"
require "socket"
require "stringio"
require "tmpdir"

# What an operator sees of a tasker_worker process: one log line per notable event (text or
# JSON), /metrics whose counters match the database, and /ready following the worker's state.
RSpec.describe "operating the tasker_worker process", :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_operate") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:log) { File.join(dir, "worker.log") }
  let(:port) { TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] } }

  before do
    File.write(File.join(dir, "worker.toml"), "[worker]\npoll_interval_ms = 100\n")
    client.register_templates(File.join(root, "spec/fixtures/operate"))
  end

  after do
    if @pid
      Process.kill(:KILL, @pid) rescue nil # rubocop:disable Style/RescueModifier
      Process.wait(@pid) rescue nil # rubocop:disable Style/RescueModifier
    end
    FileUtils.rm_rf(dir)
  end

  def spawn_worker(*flags)
    @pid = Process.spawn({ "DATABASE_URL" => migrated_database_url },
                         RbConfig.ruby, File.join(root, "exe/tasker_worker"), "-c", "3", "-n", "operate", "--orchestrate",
                         "-C", File.join(dir, "worker.toml"), "-r", File.join(root, "spec/fixtures/operate_handlers.rb"),
                         *flags, out: log, err: log)
    wait_until("the worker to start") { File.exist?(log) && File.read(log).include?("pid #{@pid}") }
  end

  def stop_worker
    Process.kill(:TERM, @pid)
    wait_until("the worker to exit") { Process.wait(@pid, Process::WNOHANG) }
    @pid = nil
    File.readlines(log, chomp: true)
  end

  def run_tasks(*what, seconds: 0)
    what.map { |action| client.create_task(namespace: "operate", name: "operate", context: { do: action, seconds: seconds }) }
  end

  def get(path)
    response = Net::HTTP.start("127.0.0.1", port, open_timeout: 5, read_timeout: 10) { |http| http.get(path) }
    [response.code.to_i, response.body]
  end

  # { "tasker_steps_claimed_total" => 3.0, ... }, labelled samples summed under their name.
  def scrape
    code, body = get("/metrics")
    expect(code).to eq(200)
    body.lines.grep_v(/\A#/).each_with_object(Hash.new(0.0)) do |line, samples|
      name, value = line.split
      samples[name.sub(/\{.*\}/, "")] += Float(value)
    end
  end

  def count(sql) = db.exec(sql).getvalue(0, 0).to_i

  def transitions(state) = count("SELECT count(*) FROM tasker.workflow_step_transitions WHERE to_state = '#{state}'")

  def tasks_in(state) = count("SELECT count(*) FROM tasker.task_transitions WHERE most_recent AND to_state = '#{state}'")

  it "writes one JSON object per line, its /metrics counters match the database, and /ready follows quiet" do
    spawn_worker("--log-format", "json", "--metrics-port", port.to_s)
    tasks = run_tasks("ok", "ok", "ok", "ok", "permanent", "bug", "retry", seconds: 0.3)
    wait_until("steps in flight") { count("SELECT count(*) FROM tasker.workflow_step_transitions WHERE most_recent AND to_state = 'in_progress'").positive? }
    expect(scrape["tasker_steps_claimed_total"]).to be >= 1 # scraped during the drain
    settled = tasks.map { |t| client.wait(t, timeout: 30)[:state] }
    expect(settled.tally).to eq("complete" => 4, "blocked_by_failures" => 3)

    expected = {
      "tasker_steps_claimed_total" => transitions("in_progress"),
      "tasker_steps_succeeded_total" => transitions("enqueued_for_orchestration"),
      "tasker_steps_failed_total" => transitions("enqueued_as_error_for_orchestration"),
      "tasker_steps_retried_total" => transitions("waiting_for_retry"),
      "tasker_tasks_completed_total" => tasks_in("complete"),
      "tasker_tasks_failed_total" => tasks_in("blocked_by_failures"),
      # every success, completed in the worker's commit (orchestration.complete_in_commit)
      "tasker_steps_completed_in_commit_total" => transitions("complete")
    }
    expect(expected.values).to eq([9, 4, 5, 2, 4, 3, 4]) # the bug and the retry: two attempts each
    wait_until("the counters to match the database", timeout: 5) { scrape.slice(*expected.keys) == expected.transform_values(&:to_f) }
    samples = scrape
    expect(samples["tasker_handler_seconds_count"]).to eq(9)
    expect(samples["tasker_step_end_to_end_seconds_count"]).to eq(9)
    expect(samples["tasker_queue_depth"]).to be >= 0

    wait_until("/ready to answer 200", timeout: 10) { get("/ready").first == 200 }
    expect(JSON.parse(get("/ready").last)).to include("status" => "ready", "threads_alive" => 3, "threads_expected" => 3)
    Process.kill(:TSTP, @pid)
    wait_until("/ready to answer 503", timeout: 10) { get("/ready").first == 503 }
    expect(JSON.parse(get("/ready").last)["reasons"]).to include(a_string_starting_with("quiet"))
    expect(get("/health").first).to eq(200)

    lines = stop_worker.map { |line| JSON.parse(line) }
    expect(lines).to all(include("time", "level", "target", "message", "fields"))
    events = lines.group_by { |l| l["fields"]["event"] }
    expect(lines.map { |l| l["message"] }).to include(a_string_starting_with("tasker_worker #{TaskerWorker::VERSION}: pid"))
    expect(events.keys).to include("worker_started", "worker_quiet", "worker_stopping", "worker_stopped", "step_failed",
                                   "step_retried", "step_errored", "task_settled")
    failed = events["step_failed"].map { |l| l["fields"] }
    expect(failed.size).to eq(5)
    permanent = failed.find { |f| f["error"] == "card declined" }
    expect(permanent).to include("namespace" => "operate", "task" => "operate", "step" => "only",
                                 "handler" => "SpecHandlers::Operate", "attempt" => 1, "max_attempts" => 2,
                                 "error_class" => "TaskerWorker::PermanentError", "retryable" => false)
    expect(permanent["task_uuid"]).to match(/\A\h{8}-/)
    bug = failed.find { |f| f["error_class"] == "ArgumentError" && f["attempt"] == 1 }
    expect(bug).to include("retryable" => true, "will_retry" => true)
    expect(events["step_retried"].first["fields"]).to include("attempt" => 1, "max_attempts" => 2, "retry_in_s" => 0,
                                                              "retry_at" => a_string_matching(/\A\d{4}-\d\d-\d\dT/))
    settled = events["task_settled"].map { |l| l["fields"] }
    expect(settled.map { |f| f["state"] }.tally).to eq("complete" => 4, "blocked_by_failures" => 3)
    expect(settled.first).to include("steps" => 1, "duration_ms" => a_kind_of(Integer), "namespace" => "operate")
    expect(events["worker_stopped"].first["fields"]).to include("claimed" => 9, "succeeded" => 4, "failed" => 5)
    expect(lines.map { |l| l["level"] }.uniq - %w[DEBUG INFO WARN ERROR]).to be_empty
  end

  it "refuses a bad --log-format on the command line, and a metrics port in use at start naming the key" do
    exe = File.join(root, "exe/tasker_worker")
    out, status = Open3.capture2e({ "DATABASE_URL" => migrated_database_url }, RbConfig.ruby, exe, "--log-format", "yaml")
    expect([status.exitstatus, out]).to match([2, /invalid argument: --log-format yaml/])

    TCPServer.open("127.0.0.1", 0) do |taken|
      out, status = Open3.capture2e({ "DATABASE_URL" => migrated_database_url }, RbConfig.ruby, exe, "-n", "operate",
                                    "--metrics-port", taken.addr[1].to_s, "-r", File.join(root, "spec/fixtures/operate_handlers.rb"))
      expect([status.exitstatus, out]).to match([1, /metrics\.port: cannot listen on 127\.0\.0\.1:#{taken.addr[1]}/])
    end
  end

  it "logs a step that timed out with its step, handler and attempt" do
    log = StringIO.new
    registry = TaskerWorker::HandlerRegistry.new
    registry.register("TooSlow") { |_c| sleep 1.2 }
    start_worker(registry: registry, concurrency: 1, namespaces: ["op_timeout"], completion_timeout: 0.3,
                 logger: Logger.new(log))
    rows = WorkflowRows.create(db, namespace: "op_timeout", steps: [{ name: "only", callable: "TooSlow" }]).tap { |w| w.enqueue("only") }
    rows.wait_for_result("only")

    line = wait_until("the timed-out line") { log.string[/^.*event=step_timed_out.*$/] }
    expect(line).to include("WARN", "namespace=op_timeout", "step=only", "handler=TooSlow", "attempt=1", "waited_ms=")
    expect(line).to include("task_uuid=", "step_uuid=")
  end

  # The CLI exits right after stop returns; a line still queued in the core would be lost. A
  # slow log device keeps the forwarding thread behind, as a busy process does.
  it "has the core's worker_stopped line in the log when stop returns, however slow the log device" do
    log = StringIO.new
    slow = Object.new
    slow.define_singleton_method(:write) do |*parts|
      sleep 0.15
      log.write(*parts)
    end
    slow.define_singleton_method(:close) { nil }
    worker = start_worker(registry: TaskerWorker::HandlerRegistry.new, concurrency: 1, namespaces: ["op_flush"],
                          logger: Logger.new(slow))
    wait_until("the start line") { log.string.include?("event=worker_started") }
    worker.stop
    expect(log.string.lines.grep(/event=worker_stopped/).size).to eq(1)
    expect(TaskerWorker::LogForwarder.flush(0)).to be(true)
  end

  it "writes text lines with no doubled prefix and no multi-line driver output, successes at debug" do
    spawn_worker("-v")
    tasks = run_tasks("ok", "permanent")
    tasks.each { |t| client.wait(t, timeout: 30) }
    lines = stop_worker

    expect(lines).to all(match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) \S+: \S/))
    expect(lines.grep(/tasker_worker: tasker_worker:/)).to be_empty
    expect(lines.grep(/DEBUG sqlx::query/)).to be_empty # statements are at trace
    succeeded = lines.grep(/event=step_succeeded/)
    expect(succeeded.size).to eq(1)
    expect(succeeded.first).to match(/\A\S+ DEBUG /).and include("step=only", "handler=SpecHandlers::Operate")
    failed = lines.grep(/event=step_failed/)
    expect(failed.size).to eq(1)
    expect(failed.first).to include("WARN", 'error="card declined"', "error_class=TaskerWorker::PermanentError",
                                    "attempt=1", "max_attempts=2", "retryable=false")
    expect(lines.grep(/event=task_settled/).size).to eq(2)
    expect(lines.grep(/event=worker_stopped/).size).to eq(1)
    expect(lines.grep(/INFO  tasker_worker: stopped/).size).to eq(1)
  end
end
