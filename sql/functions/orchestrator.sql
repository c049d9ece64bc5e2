-- The embedded orchestrator's common case in one call: a step result that reports success
-- (src/orchestration/result_processor.rs). One round trip and one transaction, instead of a
-- transaction of nine round trips and a durable commit; failed results keep the Rust path
-- (retry policy, sql/queries/result_failure_*.sql). Applied by src/database/migrate.rs after
-- the migrations; edit the definition here. Generic plans without sequential scans: see the
-- header of worker_claim.sql.

-- Moves the task to `blocked_by_failures` at its first step in error (tasker-core's state
-- for it: the task waits for an operator, who may retry or resolve the step, or cancel the
-- task), or to `complete` when every step is complete (or resolved manually), given its
-- current state; the new transition is p_transition_uuid. Returns the new state, or NULL when
-- the task stays as it is (always for a task already complete, blocked, in error, cancelled
-- or resolved manually). The caller holds the task's row lock.
CREATE OR REPLACE FUNCTION tasker.orchestrator_settle_task(
    p_task_uuid       uuid,
    p_task_state      text,
    p_transition_uuid uuid
)
RETURNS text
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    total   bigint;
    done    bigint;
    errors  bigint;
    settled text;
BEGIN
    IF p_task_state IN ('complete', 'blocked_by_failures', 'error', 'cancelled', 'resolved_manually') THEN
        RETURN NULL;
    END IF;
    SELECT count(*),
           count(*) FILTER (WHERE tr.to_state IN ('complete', 'resolved_manually')),
           count(*) FILTER (WHERE tr.to_state = 'error')
      INTO total, done, errors
      FROM tasker.workflow_steps ws
      JOIN tasker.workflow_step_transitions tr
        ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent
     WHERE ws.task_uuid = p_task_uuid;
    settled := CASE WHEN errors > 0 THEN 'blocked_by_failures' WHEN done = total THEN 'complete' END;
    IF settled IS NULL THEN
        RETURN NULL;
    END IF;
    WITH retired AS (
        UPDATE tasker.task_transitions SET most_recent = false
         WHERE task_uuid = p_task_uuid AND most_recent
        RETURNING sort_key
    )
    INSERT INTO tasker.task_transitions
        (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent, created_at, updated_at)
    SELECT p_transition_uuid, p_task_uuid, p_task_state, settled,
           coalesce((SELECT max(sort_key) FROM retired), 0) + 1, true, now(), now();
    UPDATE tasker.tasks
       SET complete = (settled = 'complete'), completed_at = now(), updated_at = now()
     WHERE task_uuid = p_task_uuid;
    RETURN settled;
END;
$$;

-- Those of p_step_uuids that are `decision` or `batchable` steps of their task's template
-- (found by coalesce(inputs->>'__template_step_name', its name)): a success of such a step is
-- applied by src/orchestration/dynamic.rs, not completed as a plain step. A template without
-- such steps costs one containment test of its configuration.
CREATE OR REPLACE FUNCTION tasker.orchestrator_dynamic_steps(p_step_uuids uuid[])
RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    RETURN ARRAY(
        SELECT ws.workflow_step_uuid
          FROM tasker.workflow_steps ws
          JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid
          JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid
          JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid
         WHERE ws.workflow_step_uuid = ANY(p_step_uuids)
           AND (nt.configuration -> 'steps' @> '[{"type": "decision"}]'
                OR nt.configuration -> 'steps' @> '[{"type": "batchable"}]'
                OR nt.configuration -> 'steps' @> '[{"step_type": "decision"}]'
                OR nt.configuration -> 'steps' @> '[{"step_type": "batchable"}]')
           AND EXISTS (SELECT 1 FROM jsonb_array_elements(nt.configuration -> 'steps') s
                        WHERE s ->> 'name' = coalesce(ws.inputs ->> '__template_step_name', ns.name)
                          AND coalesce(s ->> 'type', s ->> 'step_type') IN ('decision', 'batchable')));
END;
$$;

-- Processes one message of orchestration_step_results (p_msg_id, naming p_step_uuid of
-- p_task_uuid) when the step's result is a success, in the caller's transaction:
-- 1. the task's row is locked (then its state read, so it is current);
-- 2. the step becomes `complete` (transition p_uuids[1]);
-- 3. unless the task is blocked by failures, in `error` or `cancelled` (a cancelled task's
--    late result is recorded and changes nothing else), each child whose parents are now all complete is
--    enqueued: its `enqueued` transition (p_uuids[3..], then random uuids) and its message on
--    worker_{namespace}_queue, sent with tasker.pgmq_send_with_notify;
-- 4. the task settles (tasker.orchestrator_settle_task; transition p_uuids[2]);
-- 5. the message is archived.
-- Returns (outcome, task_state):
--   completed     - all of the above; task_state is the task's new state, or NULL;
--   failed_result - the step waits with a failure result: nothing changed, nothing archived
--                   (the caller applies the retry policy);
--   duplicate     - no such task, or the step is not waiting for orchestration: archived,
--                   nothing else changed;
--   dynamic       - the step is a `decision` or `batchable` step of its template
--                   (tasker.orchestrator_dynamic_steps) and p_dynamic is false: nothing
--                   changed, nothing archived. The caller applies the outcome
--                   (src/orchestration/dynamic.rs) and calls again, in the same transaction,
--                   with p_dynamic true.
--
-- It commits with synchronous_commit off when the call is its own transaction (as the
-- worker's claims do): everything it writes follows from the result message, which the worker
-- committed durably and which stays on the queue until this commit archives it. Lost in a
-- server crash, the message is read again and processed the same way. Anything durable that
-- depends on it (a child step's result, committed synchronously) flushes it first, WAL being
-- written in order. A child claimed in the window and lost with it is re-run: handlers run at
-- least once, as after any crash.
-- p_msg_id NULL: the worker's own result transaction has completed the step
-- (tasker.worker_commit_results, sql/functions/worker_commit.sql, through
-- tasker.worker_complete_in_commit): it holds the task's row lock, found the step not dynamic,
-- and wrote the step's `enqueued_for_orchestration` transition (not most recent), its
-- `complete` transition (p_uuids[1]) and `processed`, so steps 1 and 2 are skipped. There is no
-- message to archive, and the commit keeps the session's synchronous_commit (the result is in
-- it).
-- The 4-argument version this replaced: dropped, so no overload is left beside this one.
DROP FUNCTION IF EXISTS tasker.orchestrator_complete_step(bigint, uuid, uuid, uuid[]);

CREATE OR REPLACE FUNCTION tasker.orchestrator_complete_step(
    p_msg_id    bigint,
    p_task_uuid uuid,
    p_step_uuid uuid,
    p_uuids     uuid[],
    p_dynamic   boolean DEFAULT false
)
RETURNS TABLE (outcome text, task_state text)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t_state       text;
    t_correlation uuid;
    t_queue       text;
    s_state       text;
    s_sort        integer;
    sent          bigint[];
BEGIN
    IF p_msg_id IS NOT NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM 1 FROM tasker.tasks t WHERE t.task_uuid = p_task_uuid FOR UPDATE;
        IF NOT FOUND THEN
            PERFORM tasker.worker_archive('orchestration_step_results', ARRAY[p_msg_id]);
            RETURN QUERY SELECT 'duplicate'::text, NULL::text;
            RETURN;
        END IF;
    END IF;
    SELECT tt.to_state, t.correlation_id, 'worker_' || tn.name || '_queue'
      INTO t_state, t_correlation, t_queue
      FROM tasker.tasks t
      JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid
      JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid
      LEFT JOIN tasker.task_transitions tt ON tt.task_uuid = t.task_uuid AND tt.most_recent
     WHERE t.task_uuid = p_task_uuid;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::text;
        RETURN;
    END IF;

    IF p_msg_id IS NOT NULL THEN
        SELECT tr.to_state, tr.sort_key INTO s_state, s_sort
          FROM tasker.workflow_steps ws
          JOIN tasker.workflow_step_transitions tr
            ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent
         WHERE ws.workflow_step_uuid = p_step_uuid AND ws.task_uuid = p_task_uuid;
        IF s_state = 'enqueued_as_error_for_orchestration' THEN
            RETURN QUERY SELECT 'failed_result'::text, t_state;
            RETURN;
        END IF;
        IF s_state IS DISTINCT FROM 'enqueued_for_orchestration' THEN
            PERFORM tasker.worker_archive('orchestration_step_results', ARRAY[p_msg_id]);
            RETURN QUERY SELECT 'duplicate'::text, NULL::text;
            RETURN;
        END IF;
        IF NOT p_dynamic AND p_step_uuid = ANY(tasker.orchestrator_dynamic_steps(ARRAY[p_step_uuid])) THEN
            RETURN QUERY SELECT 'dynamic'::text, t_state;
            RETURN;
        END IF;

        -- The INSERT reads both counts, so the UPDATEs have run before it.
        WITH retired AS (
            UPDATE tasker.workflow_step_transitions SET most_recent = false, updated_at = now()
             WHERE workflow_step_uuid = p_step_uuid AND most_recent
            RETURNING 1
        ), processed AS (
            UPDATE tasker.workflow_steps
               SET processed = true, processed_at = now(), in_process = false, updated_at = now()
             WHERE workflow_step_uuid = p_step_uuid
            RETURNING 1
        )
        INSERT INTO tasker.workflow_step_transitions
            (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
             created_at, updated_at)
        SELECT p_uuids[1], p_step_uuid, 'enqueued_for_orchestration', 'complete', '{"event": "complete"}'::jsonb,
               s_sort + 1, true, now(), now()
          FROM (SELECT count(*) FROM retired) AS r, (SELECT count(*) FROM processed) AS p;
    END IF;

    IF t_state IS NULL OR t_state NOT IN ('blocked_by_failures', 'error', 'cancelled') THEN
        -- From the step's edges, each child's and each of its parents' current transition
        -- by key (LATERAL ... OFFSET 0): planned as a join, statistics taken while few steps
        -- were pending had made it walk every pending step's transition for each completion
        -- (tests/plans_by_key.rs).
        WITH ready AS (
            SELECT c.to_step_uuid AS step_uuid, ct.sort_key,
                   row_number() OVER (ORDER BY c.to_step_uuid) AS n
              FROM tasker.workflow_step_edges c
             CROSS JOIN LATERAL (SELECT ct.sort_key FROM tasker.workflow_step_transitions ct
                                  WHERE ct.workflow_step_uuid = c.to_step_uuid AND ct.most_recent
                                    AND ct.to_state = 'pending'
                                 OFFSET 0) ct
             WHERE c.from_step_uuid = p_step_uuid
               AND NOT EXISTS (
                   SELECT 1 FROM tasker.workflow_step_edges pe
                    CROSS JOIN LATERAL (SELECT pt.to_state FROM tasker.workflow_step_transitions pt
                                         WHERE pt.workflow_step_uuid = pe.from_step_uuid AND pt.most_recent
                                        OFFSET 0) pt
                    WHERE pe.to_step_uuid = c.to_step_uuid
                      AND pt.to_state NOT IN ('complete', 'resolved_manually'))
        ), retired AS (
            UPDATE tasker.workflow_step_transitions t SET most_recent = false, updated_at = now()
              FROM ready r WHERE t.workflow_step_uuid = r.step_uuid AND t.most_recent
            RETURNING 1
        ), enqueued AS (
            INSERT INTO tasker.workflow_step_transitions
                (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
                 created_at, updated_at)
            SELECT coalesce(p_uuids[r.n::integer + 2], gen_random_uuid()), r.step_uuid, 'pending', 'enqueued',
                   '{"event": "enqueue"}'::jsonb, r.sort_key + 1, true, now(), now()
              FROM ready r, (SELECT count(*) FROM retired) AS done
            RETURNING workflow_step_uuid
        )
        SELECT array_agg(s.msg_id) INTO sent
          FROM (SELECT tasker.pgmq_send_with_notify(t_queue,
                           jsonb_build_object('task_uuid', p_task_uuid, 'step_uuid', e.workflow_step_uuid,
                                              'correlation_id', t_correlation), 0) AS msg_id
                  FROM enqueued e
                 ORDER BY e.workflow_step_uuid) s;
    END IF;

    IF p_msg_id IS NOT NULL THEN
        PERFORM tasker.worker_archive('orchestration_step_results', ARRAY[p_msg_id]);
    END IF;
    RETURN QUERY SELECT 'completed'::text, tasker.orchestrator_settle_task(p_task_uuid, t_state, p_uuids[2]);
END;
$$;
