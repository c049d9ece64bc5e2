-- Creates a task with its steps, edges and root-step messages in one statement
-- (src/orchestration/task_initializer.rs: create_task binds $1..$16).
WITH task AS (
    INSERT INTO tasker.tasks (task_uuid, named_task_uuid, context, identity_hash, correlation_id)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (identity_hash) DO NOTHING
    RETURNING task_uuid, correlation_id
), task_states AS (
    INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent)
    SELECT ($6::uuid[])[1], t.task_uuid, NULL, 'pending', 1, false FROM task t
    UNION ALL
    SELECT ($6::uuid[])[2], t.task_uuid, 'pending', 'steps_in_process', 2, true FROM task t
), steps AS (
    INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts, inputs)
    SELECT s.step_uuid, t.task_uuid, ns.named_step_uuid, s.retryable, s.max_attempts, '{}'::jsonb
      FROM task t
     CROSS JOIN unnest($7::uuid[], $8::text[], $9::boolean[], $10::integer[]) WITH ORDINALITY
           AS s(step_uuid, name, retryable, max_attempts, n)
      JOIN tasker.named_steps ns ON ns.name = s.name
     ORDER BY s.n
), step_states AS (
    INSERT INTO tasker.workflow_step_transitions
    (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
    SELECT s.pending_uuid, s.step_uuid, NULL, 'pending', '{"event": "initialize"}'::jsonb, 1, s.enqueued_uuid IS NULL
      FROM task t CROSS JOIN unnest($7::uuid[], $11::uuid[], $12::uuid[]) AS s(step_uuid, pending_uuid, enqueued_uuid)
    UNION ALL
    SELECT s.enqueued_uuid, s.step_uuid, 'pending', 'enqueued', '{"event": "enqueue"}'::jsonb, 2, true
      FROM task t CROSS JOIN unnest($7::uuid[], $12::uuid[]) AS s(step_uuid, enqueued_uuid)
     WHERE s.enqueued_uuid IS NOT NULL
), edges AS (
    INSERT INTO tasker.workflow_step_edges (workflow_step_edge_uuid, from_step_uuid, to_step_uuid)
    SELECT e.edge_uuid, e.from_step, e.to_step
      FROM task t CROSS JOIN unnest($13::uuid[], $14::uuid[], $15::uuid[]) AS e(edge_uuid, from_step, to_step)
), sent AS (
    SELECT tasker.pgmq_send_with_notify($16,
               jsonb_build_object('task_uuid', t.task_uuid, 'step_uuid', r.step_uuid, 'correlation_id', t.correlation_id), 0)
      FROM task t CROSS JOIN unnest($7::uuid[], $12::uuid[]) WITH ORDINALITY AS r(step_uuid, enqueued_uuid, n)
     WHERE r.enqueued_uuid IS NOT NULL
     ORDER BY r.n
)
SELECT t.task_uuid, (SELECT count(*) FROM sent) FROM task t
