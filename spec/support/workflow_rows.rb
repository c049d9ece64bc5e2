# frozen_string_literal: true

require "json"
require "securerandom"

# Inserts a task and its steps the way an orchestrator would (the embedded orchestrator
# comes later), enqueues steps, and reads back their state and stored results.
class WorkflowRows
  attr_reader :task_uuid, :steps, :namespace

  # steps: [{ name:, callable:, depends_on: [names], timeout_seconds: }]
  def self.create(conn, namespace:, steps:, context: {}, task_name: "spec_task")
    GcStress.paused { new(conn, namespace).tap { |w| w.insert(task_name, steps, context) } }
  end

  def initialize(conn, namespace)
    @conn = conn
    @namespace = namespace
    @steps = {}
  end

  def insert(task_name, steps, context)
    template = { name: task_name, version: "1.0.0", steps: steps.map { |s| template_step(s) } }
    @conn.transaction do
      named_task = upsert_template(task_name, template)
      @task_uuid = SecureRandom.uuid
      exec("INSERT INTO tasker.tasks (task_uuid, named_task_uuid, context, identity_hash, correlation_id) " \
           "VALUES ($1, $2, $3, $4, $5)", [@task_uuid, named_task, JSON.generate(context), @task_uuid, SecureRandom.uuid])
      steps.each { |s| insert_step(s[:name]) }
      steps.each { |s| (s[:depends_on] || []).each { |parent| insert_edge(parent, s[:name]) } } # rubocop:disable Style/CombinableLoops -- every step row must exist before an edge refers to it
    end
  end

  # Moves the step to enqueued and sends its message, as the orchestrator does.
  def enqueue(name)
    transition(name, "enqueued")
    queue = "worker_#{@namespace}_queue"
    exec("SELECT pgmq.create($1) WHERE NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)", [queue])
    message = { task_uuid: @task_uuid, step_uuid: @steps.fetch(name), correlation_id: SecureRandom.uuid }
    exec("SELECT tasker.pgmq_send_with_notify($1, $2::jsonb, 0)", [queue, JSON.generate(message)])
  end

  def state(name)
    exec("SELECT to_state FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 AND most_recent",
         [@steps.fetch(name)]).getvalue(0, 0)
  end

  def results(name)
    raw = exec("SELECT results FROM tasker.workflow_steps WHERE workflow_step_uuid = $1", [@steps.fetch(name)]).getvalue(
      0, 0
    )
    raw && JSON.parse(raw)
  end

  # Waits until the step reaches one of the two states a worker leaves it in.
  def wait_for_result(name, timeout: 20)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until %w[enqueued_for_orchestration enqueued_as_error_for_orchestration].include?(state(name))
      raise "step #{name} has no result after #{timeout}s (state #{state(name)})" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.02
    end
    results(name)
  end

  private

  def template_step(step)
    { name: step[:name], handler: { callable: step[:callable], initialization: step[:initialization] || {} },
      dependencies: step[:depends_on] || [], timeout_seconds: step[:timeout_seconds] }.compact
  end

  def upsert_template(task_name, template)
    ns = exec("INSERT INTO tasker.task_namespaces (task_namespace_uuid, name) VALUES ($1, $2) " \
              "ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING task_namespace_uuid",
              [SecureRandom.uuid, @namespace]).getvalue(0, 0)
    exec("INSERT INTO tasker.named_tasks (named_task_uuid, task_namespace_uuid, name, version, configuration) " \
         "VALUES ($1, $2, $3, '1.0.0', $4) ON CONFLICT (task_namespace_uuid, name, version) " \
         "DO UPDATE SET configuration = EXCLUDED.configuration RETURNING named_task_uuid",
         [SecureRandom.uuid, ns, task_name, JSON.generate(template)]).getvalue(0, 0)
  end

  def insert_step(name)
    named_step = exec("INSERT INTO tasker.named_steps (named_step_uuid, name) VALUES ($1, $2) " \
                      "ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING named_step_uuid",
                      [SecureRandom.uuid, name]).getvalue(0, 0)
    @steps[name] = SecureRandom.uuid
    exec("INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, inputs) VALUES ($1, $2, $3, '{}')",
         [@steps[name], @task_uuid, named_step])
    exec("INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, to_state, sort_key, most_recent) " \
         "VALUES ($1, $2, 'pending', 1, true)", [SecureRandom.uuid, @steps[name]])
  end

  def insert_edge(parent, child)
    exec("INSERT INTO tasker.workflow_step_edges (workflow_step_edge_uuid, from_step_uuid, to_step_uuid) VALUES ($1, $2, $3)",
         [SecureRandom.uuid, @steps.fetch(parent), @steps.fetch(child)])
  end

  def transition(name, state)
    @conn.transaction do
      current = exec("UPDATE tasker.workflow_step_transitions SET most_recent = false " \
                     "WHERE workflow_step_uuid = $1 AND most_recent RETURNING to_state, sort_key", [@steps.fetch(name)])
      exec("INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent) " \
           "VALUES ($1, $2, $3, $4, $5, true)",
           [SecureRandom.uuid, @steps[name], current.getvalue(0, 0), state, current.getvalue(0, 1).to_i + 1])
    end
  end

  def exec(sql, params)
    GcStress.paused { @conn.exec_params(sql, params) }
  end
end
