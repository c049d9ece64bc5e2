# frozen_string_literal: true

require "json"
require "open3"
require "rbconfig"
require "tmpdir"

# Retention from Ruby: TaskerWorker::Client#prune with the configured ages, the
# `tasker_worker prune [--dry-run]` command end to end, and the retention_* options' checks.
# Histories are written with SQL and backdated, not run.
RSpec.describe "retention (TaskerWorker::Client#prune and tasker_worker prune)", :worker do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:dir) { Dir.mktmpdir("tasker_worker_retention") }
  let(:client) { TaskerWorker::Client.for(migrated_database_url) }
  let(:hour) { 3600 }

  after { FileUtils.rm_rf(dir) }

  # A task of two steps (a -> b) whose task and steps moved to `state` `age` seconds ago.
  def finished_task(state, age)
    rows = WorkflowRows.create(db, namespace: "ret", task_name: "ret",
                                   steps: [{ name: "a", callable: "A" }, { name: "b", callable: "B", depends_on: ["a"] }])
    db.exec_params("UPDATE tasker.workflow_step_transitions SET most_recent = false WHERE workflow_step_uuid IN " \
                   "(SELECT workflow_step_uuid FROM tasker.workflow_steps WHERE task_uuid = $1)", [rows.task_uuid])
    db.exec_params("INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, " \
                   "from_state, to_state, sort_key, most_recent, created_at) SELECT gen_random_uuid(), workflow_step_uuid, " \
                   "'pending', $2, 2, true, now() - make_interval(secs => $3) FROM tasker.workflow_steps WHERE task_uuid = $1",
                   [rows.task_uuid, state, age])
    db.exec_params("INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, to_state, sort_key, most_recent, " \
                   "created_at) VALUES (gen_random_uuid(), $1, $2, 1, true, now() - make_interval(secs => $3))",
                   [rows.task_uuid, state, age])
    rows.task_uuid
  end

  def rows_of(task)
    db.exec_params("SELECT (SELECT count(*) FROM tasker.tasks WHERE task_uuid = $1) + " \
                   "(SELECT count(*) FROM tasker.workflow_steps WHERE task_uuid = $1) + " \
                   "(SELECT count(*) FROM tasker.task_transitions WHERE task_uuid = $1)", [task]).getvalue(0, 0).to_i
  end

  def configuration(**options)
    TaskerWorker.configuration.dup.tap do |c|
      c.config_path = nil
      options.each { |option, value| c.public_send("#{option}=", value) }
    end
  end

  def tasker_worker(*args)
    Timeout.timeout(60) do
      env = { "DATABASE_URL" => migrated_database_url, "TASKER_CONFIG_PATH" => nil }
      out, err, status = Open3.capture3(env, RbConfig.ruby, File.join(root, "exe/tasker_worker"), *args)
      [out, err, status.exitstatus]
    end
  end

  it "prunes with the configured ages: old completed tasks go with their rows, new and failed ones stay" do
    old = finished_task("complete", 48 * hour)
    young = finished_task("complete", 60)
    failed = finished_task("error", 48 * hour)
    config = configuration(retention_completed_after: 24 * hour)

    dry = client.prune(dry_run: true, configuration: config)
    expect(dry).to include(ran: true, dry_run: true, batches: 0)
    expect(dry[:deleted]).to include("tasker.tasks" => 1, "tasker.workflow_steps" => 2, "tasker.workflow_step_edges" => 1,
                                     "tasker.workflow_step_transitions" => 4, "tasker.task_transitions" => 1)
    expect(rows_of(old)).to eq(4)

    report = client.prune(configuration: config)
    expect(report[:ran]).to be(true)
    expect(report[:deleted]).to include(dry[:deleted])
    expect([rows_of(old), rows_of(young), rows_of(failed)]).to eq([0, 4, 4])

    report = client.prune(configuration: configuration(retention_completed_after: 24 * hour, retention_failed_after: hour))
    expect(report[:deleted]["tasker.tasks"]).to eq(1)
    expect([rows_of(young), rows_of(failed)]).to eq([4, 0])
  end

  it "tasker_worker prune --dry-run counts, and tasker_worker prune deletes and prints what, per table" do
    old = finished_task("complete", 48 * hour)
    toml = File.join(dir, "worker.toml")
    File.write(toml, "[retention]\ncompleted_after_seconds = 86400\n")

    out, err, code = tasker_worker("prune", "--dry-run", "--json", "-C", toml)
    expect([code, err]).to eq([0, ""])
    expect(JSON.parse(out)).to include("ran" => true, "dry_run" => true)
    expect(JSON.parse(out)["deleted"]).to include("tasker.tasks" => 1, "tasker.workflow_steps" => 2)
    expect(rows_of(old)).to eq(4)

    out, err, code = tasker_worker("prune", "-C", toml)
    expect([code, err]).to eq([0, ""])
    expect(out.lines.first).to match(/\Adeleted 9 row\(s\) in \d+ batch\(es\):/)
    expect(out).to match(/^tasker\.tasks\s+1$/).and match(/^tasker\.workflow_step_transitions\s+4$/)
    expect(rows_of(old)).to eq(0)
  end

  it "refuses bad retention options in configure, naming the option and the core key" do
    config = TaskerWorker::Configuration.new
    expect { config.retention_batch_size = 0 }
      .to raise_error(TaskerWorker::ConfigurationError, /retention_batch_size.*retention\.batch_size|retention\.batch_size/)
    expect { config.retention_interval = 3 }.to raise_error(TaskerWorker::ConfigurationError, /retention\.interval_seconds/)
    expect { config.retention_completed_after = "7d" }.to raise_error(TaskerWorker::ConfigurationError, /retention_completed_after/)
  end
end
