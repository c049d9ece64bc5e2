-- Creates a task from a plan the Rust core made (src/orchestration/task_initializer.rs:
-- TaskPlan, from a registered template): the task and its pending -> steps_in_process
-- transitions, one step per template step with its pending transition (root steps: then
-- enqueued), the dependency edges, and each root step's message, sent with
-- tasker.pgmq_send_with_notify. Returns the new task's uuid, or NULL when the plan's identity
-- hash (the idempotency key) is taken, and then writes nothing.
--
-- Every column tasker-core's schema requires is written (its timestamps have no defaults there;
-- edges are named 'provides', as their code names them).
--
-- It runs in the caller's transaction: the Rust client calls it in a transaction of its
-- own; a Rails app calls it on the ActiveRecord connection inside the app's transaction, so
-- the task commits or rolls back with the app's rows, and its NOTIFY (sent at COMMIT) never
-- announces a task that was rolled back.
--
-- The plan (every uuid made by the core, so rows sort by creation time as UUIDv7):
--   { task_uuid, named_task_uuid, context, identity_hash, correlation_id, queue,
--     task_transitions: [uuid, uuid],
--     steps: [{ step_uuid, name, retryable, max_attempts, pending_uuid, enqueued_uuid|null }],
--     edges: [{ edge_uuid, from_step, to_step }] }
CREATE OR REPLACE FUNCTION tasker.create_task(p_plan jsonb)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = tasker, public
AS $$
DECLARE
    v_task uuid;
    v_correlation uuid := (p_plan ->> 'correlation_id')::uuid;
BEGIN
    INSERT INTO tasker.tasks
        (task_uuid, named_task_uuid, context, identity_hash, correlation_id, requested_at, created_at, updated_at)
    VALUES ((p_plan ->> 'task_uuid')::uuid, (p_plan ->> 'named_task_uuid')::uuid, p_plan -> 'context',
            p_plan ->> 'identity_hash', v_correlation, now(), now(), now())
    ON CONFLICT (identity_hash) DO NOTHING
    RETURNING task_uuid INTO v_task;
    IF v_task IS NULL THEN
        RETURN NULL;
    END IF;

    INSERT INTO tasker.task_transitions
        (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent, created_at, updated_at)
    VALUES ((p_plan -> 'task_transitions' ->> 0)::uuid, v_task, NULL, 'pending', 1, false, now(), now()),
           ((p_plan -> 'task_transitions' ->> 1)::uuid, v_task, 'pending', 'steps_in_process', 2, true, now(), now());

    INSERT INTO tasker.workflow_steps
        (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts, inputs, created_at, updated_at)
    SELECT (s.step ->> 'step_uuid')::uuid, v_task, ns.named_step_uuid, (s.step ->> 'retryable')::boolean,
           (s.step ->> 'max_attempts')::integer, '{}'::jsonb, now(), now()
      FROM jsonb_array_elements(p_plan -> 'steps') WITH ORDINALITY AS s(step, n)
      JOIN tasker.named_steps ns ON ns.name = s.step ->> 'name'
     ORDER BY s.n;

    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    SELECT s.pending_uuid, s.step_uuid, NULL, 'pending', '{"event": "initialize"}'::jsonb, 1, s.enqueued_uuid IS NULL,
           now(), now()
      FROM jsonb_to_recordset(p_plan -> 'steps') AS s(step_uuid uuid, pending_uuid uuid, enqueued_uuid uuid)
    UNION ALL
    SELECT s.enqueued_uuid, s.step_uuid, 'pending', 'enqueued', '{"event": "enqueue"}'::jsonb, 2, true, now(), now()
      FROM jsonb_to_recordset(p_plan -> 'steps') AS s(step_uuid uuid, enqueued_uuid uuid)
     WHERE s.enqueued_uuid IS NOT NULL;

    INSERT INTO tasker.workflow_step_edges
        (workflow_step_edge_uuid, from_step_uuid, to_step_uuid, name, created_at, updated_at)
    SELECT e.edge_uuid, e.from_step, e.to_step, 'provides', now(), now()
      FROM jsonb_to_recordset(coalesce(p_plan -> 'edges', '[]'::jsonb)) AS e(edge_uuid uuid, from_step uuid, to_step uuid);

    PERFORM tasker.pgmq_send_with_notify(p_plan ->> 'queue',
                jsonb_build_object('task_uuid', v_task, 'step_uuid', (s.step ->> 'step_uuid')::uuid,
                                   'correlation_id', v_correlation), 0)
       FROM jsonb_array_elements(p_plan -> 'steps') WITH ORDINALITY AS s(step, n)
      WHERE s.step ->> 'enqueued_uuid' IS NOT NULL
      ORDER BY s.n;

    RETURN v_task;
END;
$$;
