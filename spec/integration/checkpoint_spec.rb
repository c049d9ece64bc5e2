# frozen_string_literal: true

require "rbconfig"
require "tmpdir"
require_relative "../../examples/handlers/checkpointed"

# Checkpointed steps on real PostgreSQL: a worker process killed with kill -9 mid-step and a
# second one resuming from the checkpoint; returned checkpoint yields run to completion on
# one claim; a claim that lost its step cannot save; the limits.
RSpec.describe "checkpointed steps", :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_checkpoint") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:outcomes) { Thread::Queue.new }

  before do
    client.register_templates(File.join(root, "examples/tasks"))
    @pids = []
  end

  after do
    @pids.each { |pid| Process.kill(:KILL, pid) rescue nil } # rubocop:disable Style/RescueModifier
    @pids.each { |pid| Process.wait(pid) rescue nil } # rubocop:disable Style/RescueModifier, Style/CombinableLoops
    FileUtils.rm_rf(dir)
  end

  def spawn_worker(name)
    log = File.join(dir, "#{name}.log")
    pid = Process.spawn({ "DATABASE_URL" => migrated_database_url },
                        RbConfig.ruby, File.join(root, "exe/tasker_worker"), "-c", "2", "-n", "checkpointed_workflow",
                        "--orchestrate", "-C", File.join(dir, "worker.toml"),
                        "-r", File.join(root, "examples/handlers/checkpointed.rb"), out: log, err: log)
    @pids << pid
    wait_until("worker #{name} to start") { File.exist?(log) && File.read(log).include?("pid #{pid}") }
    pid
  end

  def step_row(task_uuid)
    db.exec_params("SELECT workflow_step_uuid, checkpoint, attempts FROM tasker.workflow_steps WHERE task_uuid = $1",
                   [task_uuid]).first
  end

  def checkpoint_of(task_uuid)
    raw = step_row(task_uuid)&.fetch("checkpoint")
    raw && JSON.parse(raw)
  end

  def transitions(step_uuid, state)
    db.exec_params("SELECT metadata FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 AND to_state = $2",
                   [step_uuid, state]).map { |r| JSON.parse(r["metadata"]) }
  end

  def result_of(task, step)
    task[:steps].find { |s| s[:name] == step }[:results]
  end

  def write_templates(*steps)
    templates = File.join(dir, "templates")
    FileUtils.mkdir_p(templates)
    steps.each do |name, max_attempts|
      File.write(File.join(templates, "#{name}.yaml"), <<~YAML)
        name: #{name}
        namespace_name: checkpoint_spec
        version: 1.0.0
        steps:
          - name: only
            handler: { callable: CheckpointSpec::#{name} }
            retry: { max_attempts: #{max_attempts}, backoff: fixed, backoff_base_ms: 0 }
      YAML
    end
    client.register_templates(templates)
  end

  # Ruby 3.1's Queue#pop has no timeout.
  def next_outcome
    wait_until("the handler's outcome") { !outcomes.empty? }
    outcomes.pop
  end

  def run(name)
    client.wait(client.create_task(namespace: "checkpoint_spec", name: name, context: {}), timeout: 30)
  end

  it "resumes a step whose worker process was killed with kill -9 from its checkpoint, each item once" do
    File.write(File.join(dir, "worker.toml"), "[worker]\nvisibility_timeout_seconds = 2\npoll_interval_ms = 100\n")
    victim = spawn_worker("victim")
    task = client.create_task(namespace: "checkpointed_workflow", name: "checkpointed_sum",
                              context: { count: 30, seconds: 0.1 })
    wait_until("some checkpoints") { checkpoint_of(task)&.fetch("items_processed", 0).to_i >= 5 }
    Process.kill(:KILL, victim)
    Process.wait(victim)
    @pids.delete(victim)
    at_kill = checkpoint_of(task)
    expect(at_kill["items_processed"]).to be < 30

    spawn_worker("survivor")
    finished = client.wait(task, timeout: 60)
    expect(finished[:state]).to eq("complete")
    result = result_of(finished, "sum_items")["result"]
    expect(result["items"]).to eq((1..30).to_a)
    expect(result["sum"]).to eq((1..30).sum)
    expect(result["runs"].size).to eq(2)
    expect(result["runs"].first["started_at"]).to eq(1)
    expect(result["runs"].last["started_at"]).to be >= at_kill["cursor"]
    expect(result["runs"].last["started_at"]).to be > 5

    step_uuid = step_row(task)["workflow_step_uuid"]
    expect(transitions(step_uuid, "in_progress").map { |m| m["event"] }).to include("reclaim")
    # The checkpoint is kept after completion (as tasker-core keeps it).
    kept = checkpoint_of(task)
    expect(kept).to include("cursor" => 31, "items_processed" => 30)
    expect(kept["history"].size).to be <= 100
  end

  context "with a worker in this process" do
    it "runs a handler returning checkpoint yields to completion on one claim, saving each" do
      start_worker(registry: TaskerWorker.handler_registry, orchestrate: true, namespaces: ["checkpointed_workflow"],
                   checkpoint_min_interval: 0)
      task = client.create_task(namespace: "checkpointed_workflow", name: "checkpointed_batches",
                                context: { count: 100, batch: 10 })
      finished = client.wait(task, timeout: 30)
      expect(finished[:state]).to eq("complete")
      expected = { "sum" => 5050, "runs" => 10, "items_processed" => 100, "attempt" => 1 }
      expect(result_of(finished, "sum_in_batches")["result"]).to eq(expected)
      row = step_row(task)
      expect(row["attempts"].to_i).to eq(1)
      expect(transitions(row["workflow_step_uuid"], "in_progress").size).to eq(1)
      saved = checkpoint_of(task)
      expect(saved).to include("cursor" => 91, "items_processed" => 90,
                               "accumulated_results" => { "sum" => 4095, "runs" => 9 })
      expect(saved["history"].map { |h| h["cursor"] }).to eq([11, 21, 31, 41, 51, 61, 71, 81, 91])
    end

    it "raises StaleClaimError when the claim lost its step, and keeps the newer checkpoint" do
      write_templates(["Stale", 1])
      url = migrated_database_url
      registry = TaskerWorker::HandlerRegistry.new
      registry.register("CheckpointSpec::Stale") do |context|
        context.checkpoint(cursor: 1, items_processed: 1, accumulated: { "by" => "first claim" })
        # Another worker reclaims the step: a newer in_progress transition, with its checkpoint.
        conn = TestDatabase.connect(url)
        conn.exec_params("UPDATE tasker.workflow_step_transitions SET most_recent = false " \
                         "WHERE workflow_step_uuid = $1 AND most_recent", [context.step_uuid])
        conn.exec_params("INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, " \
                         "workflow_step_uuid, from_state, to_state, sort_key, most_recent) " \
                         "SELECT gen_random_uuid(), $1, 'in_progress', 'in_progress', max(sort_key) + 1, true " \
                         "FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1", [context.step_uuid])
        conn.exec_params("UPDATE tasker.workflow_steps SET checkpoint = '{\"cursor\": 50}' " \
                         "WHERE workflow_step_uuid = $1", [context.step_uuid])
        conn.close
        begin
          context.checkpoint(cursor: 2, items_processed: 2)
          outcomes << :saved
        rescue TaskerWorker::StaleClaimError => e
          outcomes << e
        end
        { "done" => true }
      end
      start_worker(registry: registry, orchestrate: true, namespaces: ["checkpoint_spec"], checkpoint_min_interval: 0)
      task = client.create_task(namespace: "checkpoint_spec", name: "Stale", context: {})

      error = next_outcome
      expect(error).to be_a(TaskerWorker::StaleClaimError)
      expect(error.message).to match(/no longer held by claim/)
      expect(checkpoint_of(task)).to eq("cursor" => 50)
    end

    it "refuses a checkpoint over max_bytes and fails a step past max_yields_per_claim" do
      write_templates(["TooBig", 1], ["Forever", 1])
      registry = TaskerWorker::HandlerRegistry.new
      registry.register("CheckpointSpec::TooBig") do |context|
        context.checkpoint(cursor: 1, items_processed: 1, accumulated: "x" * 2000)
      rescue TaskerWorker::CheckpointLimitError => e
        outcomes << e
        { "refused" => true }
      end
      registry.register("CheckpointSpec::Forever") do |context|
        TaskerWorker::StepHandler::CheckpointYield.new(cursor: context.checkpoint_cursor.to_i + 1,
                                                       items_processed: context.checkpoint_items_processed + 1)
      end
      start_worker(registry: registry, orchestrate: true, namespaces: ["checkpoint_spec"],
                   checkpoint_max_bytes: 1024, checkpoint_max_yields_per_claim: 3, checkpoint_min_interval: 0)

      too_big = run("TooBig")
      error = next_outcome
      expect(error).to be_a(TaskerWorker::CheckpointLimitError)
      expect(error).to be_a(ArgumentError)
      expect(error.message).to include("worker.checkpoints.max_bytes")
      expect(too_big[:state]).to eq("complete")
      expect(checkpoint_of(too_big[:task_uuid])).to be_nil

      forever = run("Forever")
      expect(forever[:state]).to eq("blocked_by_failures")
      error = result_of(forever, "only")["error"]
      expect(error).to include("error_type" => "checkpoint_yield_limit", "retryable" => true)
      expect(error["message"]).to include("worker.checkpoints.max_yields_per_claim")
      expect(checkpoint_of(forever[:task_uuid])).to include("cursor" => 3, "items_processed" => 3)
    end
  end
end
