-- Operating the worker (issue 17): worker heartbeats and the operator's levers (cancel a
-- task, retry a step or a task, resolve a step manually, replay a dead letter), called by
-- src/operations.rs and src/worker/heartbeat.rs. Applied by src/database/migrate.rs after the
-- migrations; edit the definitions here.
--
-- Locks: the task's row first (FOR UPDATE, as tasker.orchestrator_complete_step and the
-- failure path take it), then its steps' rows in uuid order (as tasker.worker_claim_steps
-- takes them), so an operation and the orchestrator or a worker serialise and never
-- deadlock; two operations on one task run one after the other, the second seeing the first's
-- outcome. What the state machine does not allow is refused with SQLSTATE 'TWSTA' (the
-- message says what the state is and what is allowed); an unknown task, step or dead letter
-- with 'TWNFD'. src/operations.rs maps them to TaskerError::InvalidState / NotFound.

-- Records p_step's new state p_to (from p_from, after sort key p_sort) as its most recent
-- transition. The caller holds the step's row lock.
CREATE OR REPLACE FUNCTION tasker.operations_step_transition(
    p_step     uuid,
    p_from     text,
    p_to       text,
    p_sort     integer,
    p_metadata jsonb
)
RETURNS void
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    UPDATE tasker.workflow_step_transitions SET most_recent = false, updated_at = now()
     WHERE workflow_step_uuid = p_step AND most_recent;
    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    VALUES (gen_random_uuid(), p_step, p_from, p_to, p_metadata, p_sort + 1, true, now(), now());
END;
$$;

-- Records the task's new state p_to (from p_from) as its most recent transition. The caller
-- holds the task's row lock.
CREATE OR REPLACE FUNCTION tasker.operations_task_transition(
    p_task     uuid,
    p_from     text,
    p_to       text,
    p_metadata jsonb
)
RETURNS void
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    WITH retired AS (
        UPDATE tasker.task_transitions SET most_recent = false, updated_at = now()
         WHERE task_uuid = p_task AND most_recent
        RETURNING sort_key
    )
    INSERT INTO tasker.task_transitions
        (task_transition_uuid, task_uuid, from_state, to_state, metadata, sort_key, most_recent, created_at, updated_at)
    SELECT gen_random_uuid(), p_task, p_from, p_to, p_metadata,
           coalesce((SELECT max(sort_key) FROM retired), 0) + 1, true, now(), now();
END;
$$;

-- Locks the task's row, then its steps' rows in uuid order, and returns the task's current
-- state. Raises TWNFD when there is no such task.
CREATE OR REPLACE FUNCTION tasker.operations_lock_task(p_task uuid)
RETURNS text
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    t_state text;
BEGIN
    PERFORM 1 FROM tasker.tasks WHERE task_uuid = p_task FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no task %', p_task USING ERRCODE = 'TWNFD';
    END IF;
    PERFORM 1 FROM tasker.workflow_steps WHERE task_uuid = p_task ORDER BY workflow_step_uuid FOR UPDATE;
    SELECT to_state INTO t_state FROM tasker.task_transitions WHERE task_uuid = p_task AND most_recent;
    RETURN t_state;
END;
$$;

-- The task of step p_step. Raises TWNFD when there is no such step.
CREATE OR REPLACE FUNCTION tasker.operations_task_of_step(p_step uuid)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    t uuid;
BEGIN
    SELECT task_uuid INTO t FROM tasker.workflow_steps WHERE workflow_step_uuid = p_step;
    IF t IS NULL THEN
        RAISE EXCEPTION 'no step %', p_step USING ERRCODE = 'TWNFD';
    END IF;
    RETURN t;
END;
$$;

-- After a step of task p_task was retried or resolved: unless a step is still in `error`, the
-- task leaves `blocked_by_failures` (or `error`) for `steps_in_process`, every `pending` step
-- whose parents are all complete (or resolved manually) is enqueued with its message (the
-- orchestrator enqueues none while the task is blocked), and the task settles (`complete` when every step is).
-- p_enqueue are steps to enqueue as well (retried ones, already moved to `enqueued`).
-- Returns the task's state afterwards and how many messages were sent. The caller holds the
-- locks of tasker.operations_lock_task.
CREATE OR REPLACE FUNCTION tasker.operations_resume_task(
    p_task       uuid,
    p_task_state text,
    p_enqueue    uuid[]
)
RETURNS TABLE (task_state text, sent integer)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t_queue       text;
    t_correlation uuid;
    t_state       text := p_task_state;
    n_errors      bigint;
    ready         uuid[];
    settled       text;
    n_sent        integer := 0;
BEGIN
    SELECT 'worker_' || tn.name || '_queue', t.correlation_id INTO t_queue, t_correlation
      FROM tasker.tasks t
      JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid
      JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid
     WHERE t.task_uuid = p_task;
    SELECT count(*) INTO n_errors
      FROM tasker.workflow_steps ws
      JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent
     WHERE ws.task_uuid = p_task AND tr.to_state = 'error';
    IF n_errors > 0 THEN
        -- still blocked by another failed step: only the retried steps run
        PERFORM tasker.pgmq_send_with_notify(t_queue,
                    jsonb_build_object('task_uuid', p_task, 'step_uuid', s, 'correlation_id', t_correlation), 0)
           FROM unnest(p_enqueue) AS s;
        RETURN QUERY SELECT t_state, coalesce(cardinality(p_enqueue), 0);
        RETURN;
    END IF;
    IF t_state IN ('blocked_by_failures', 'error') THEN
        PERFORM tasker.operations_task_transition(p_task, t_state, 'steps_in_process', '{"event": "resume"}'::jsonb);
        UPDATE tasker.tasks SET completed_at = NULL, complete = false, updated_at = now() WHERE task_uuid = p_task;
        t_state := 'steps_in_process';
    END IF;
    SELECT array_agg(ws.workflow_step_uuid ORDER BY ws.workflow_step_uuid) INTO ready
      FROM tasker.workflow_steps ws
      JOIN tasker.workflow_step_transitions tr
        ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent AND tr.to_state = 'pending'
     WHERE ws.task_uuid = p_task
       AND NOT EXISTS (
           SELECT 1 FROM tasker.workflow_step_edges pe
             JOIN tasker.workflow_step_transitions pt
               ON pt.workflow_step_uuid = pe.from_step_uuid AND pt.most_recent
            WHERE pe.to_step_uuid = ws.workflow_step_uuid
              AND pt.to_state NOT IN ('complete', 'resolved_manually'));
    PERFORM tasker.operations_step_transition(tr.workflow_step_uuid, 'pending', 'enqueued', tr.sort_key,
                                              '{"event": "enqueue"}'::jsonb)
       FROM tasker.workflow_step_transitions tr
      WHERE tr.workflow_step_uuid = ANY(coalesce(ready, '{}')) AND tr.most_recent;
    SELECT count(*)::integer INTO n_sent
      FROM (SELECT tasker.pgmq_send_with_notify(t_queue,
                       jsonb_build_object('task_uuid', p_task, 'step_uuid', s, 'correlation_id', t_correlation), 0)
              FROM unnest(coalesce(p_enqueue, '{}') || coalesce(ready, '{}')) AS s) m;
    settled := tasker.orchestrator_settle_task(p_task, t_state, gen_random_uuid());
    RETURN QUERY SELECT coalesce(settled, t_state), n_sent;
END;
$$;

-- Cancels task p_task: every step not yet started (pending, enqueued, waiting for retry)
-- becomes `cancelled` and never runs (a worker archives its message as out of order); a
-- step running now is left to finish, and its result is recorded but changes nothing (the
-- orchestrator enqueues nothing for a cancelled task); the task becomes `cancelled`.
-- Refused (TWSTA) for a task already complete, cancelled or resolved manually. Returns how
-- many steps it cancelled.
CREATE OR REPLACE FUNCTION tasker.operations_cancel_task(p_task uuid)
RETURNS integer
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    t_state text;
    n       integer;
BEGIN
    t_state := tasker.operations_lock_task(p_task);
    IF t_state IN ('complete', 'cancelled', 'resolved_manually') THEN
        RAISE EXCEPTION 'task % is %: only a task not yet complete, cancelled or resolved can be cancelled', p_task, t_state
              USING ERRCODE = 'TWSTA';
    END IF;
    SELECT count(*)::integer INTO n
      FROM (SELECT tasker.operations_step_transition(tr.workflow_step_uuid, tr.to_state, 'cancelled', tr.sort_key,
                                                     '{"event": "cancel"}'::jsonb)
              FROM tasker.workflow_steps ws
              JOIN tasker.workflow_step_transitions tr
                ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent
             WHERE ws.task_uuid = p_task AND tr.to_state IN ('pending', 'enqueued', 'waiting_for_retry')
             ORDER BY ws.workflow_step_uuid) c;
    PERFORM tasker.operations_task_transition(p_task, t_state, 'cancelled', '{"event": "cancel"}'::jsonb);
    UPDATE tasker.tasks SET complete = false, completed_at = now(), updated_at = now() WHERE task_uuid = p_task;
    RETURN n;
END;
$$;

-- Retries steps in `error` of one task: p_step alone, or (p_step NULL) every step of task
-- p_task in `error`. Each gets a fresh attempt budget (attempts 0), becomes `enqueued` and is
-- sent to its queue; the task resumes (tasker.operations_resume_task). Refused (TWSTA) for a
-- step not in `error`, a task that is cancelled, complete or resolved manually, or (p_step
-- NULL) a task with no step in error. Returns the task's state afterwards and the messages
-- sent.
CREATE OR REPLACE FUNCTION tasker.operations_retry(p_task uuid, p_step uuid)
RETURNS TABLE (task_state text, sent integer)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t_state text;
    s_state text;
    retried uuid[];
BEGIN
    IF p_step IS NOT NULL THEN
        p_task := tasker.operations_task_of_step(p_step);
    END IF;
    t_state := tasker.operations_lock_task(p_task);
    IF t_state IN ('complete', 'cancelled', 'resolved_manually') THEN
        RAISE EXCEPTION 'task % is %: its steps cannot be retried', p_task, t_state USING ERRCODE = 'TWSTA';
    END IF;
    IF p_step IS NOT NULL THEN
        SELECT to_state INTO s_state FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = p_step AND most_recent;
        IF s_state IS DISTINCT FROM 'error' THEN
            RAISE EXCEPTION 'step % is %: only a step in error can be retried', p_step, coalesce(s_state, 'pending')
                  USING ERRCODE = 'TWSTA';
        END IF;
        retried := ARRAY[p_step];
    ELSE
        SELECT array_agg(ws.workflow_step_uuid ORDER BY ws.workflow_step_uuid) INTO retried
          FROM tasker.workflow_steps ws
          JOIN tasker.workflow_step_transitions tr
            ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent AND tr.to_state = 'error'
         WHERE ws.task_uuid = p_task;
        IF retried IS NULL THEN
            RAISE EXCEPTION 'task % is % with no step in error: nothing to retry', p_task, t_state USING ERRCODE = 'TWSTA';
        END IF;
    END IF;
    UPDATE tasker.workflow_steps
       SET attempts = 0, in_process = false, processed = false, processed_at = NULL,
           backoff_request_seconds = NULL, updated_at = now()
     WHERE workflow_step_uuid = ANY(retried);
    PERFORM tasker.operations_step_transition(tr.workflow_step_uuid, 'error', 'enqueued', tr.sort_key,
                                              '{"event": "retry", "manual": true}'::jsonb)
       FROM tasker.workflow_step_transitions tr
      WHERE tr.workflow_step_uuid = ANY(retried) AND tr.most_recent;
    RETURN QUERY SELECT r.task_state, r.sent FROM tasker.operations_resume_task(p_task, t_state, retried) r;
END;
$$;

-- Resolves step p_step manually (tasker-core's `resolved_manually`) with p_result as its
-- stored result: its children are released as if it had completed, and the task resumes
-- (tasker.operations_resume_task). Allowed for a step no worker holds: pending, enqueued,
-- waiting for retry or in error; refused (TWSTA) otherwise, and for a task complete,
-- cancelled or resolved manually. Returns the task's state afterwards and the messages sent.
CREATE OR REPLACE FUNCTION tasker.operations_resolve_step(p_step uuid, p_result jsonb)
RETURNS TABLE (task_state text, sent integer)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t_uuid  uuid;
    t_state text;
    s_state text;
    s_sort  integer;
BEGIN
    t_uuid := tasker.operations_task_of_step(p_step);
    t_state := tasker.operations_lock_task(t_uuid);
    IF t_state IN ('complete', 'cancelled', 'resolved_manually') THEN
        RAISE EXCEPTION 'task % is %: its steps cannot be resolved', t_uuid, t_state USING ERRCODE = 'TWSTA';
    END IF;
    SELECT to_state, sort_key INTO s_state, s_sort
      FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = p_step AND most_recent;
    IF s_state IS NULL OR s_state NOT IN ('pending', 'enqueued', 'waiting_for_retry', 'error') THEN
        RAISE EXCEPTION 'step % is %: only a step pending, enqueued, waiting for retry or in error can be resolved manually',
              p_step, coalesce(s_state, 'pending') USING ERRCODE = 'TWSTA';
    END IF;
    UPDATE tasker.workflow_steps
       SET results = p_result, processed = true, processed_at = now(), in_process = false, updated_at = now()
     WHERE workflow_step_uuid = p_step;
    PERFORM tasker.operations_step_transition(p_step, s_state, 'resolved_manually', s_sort,
                                              '{"event": "resolve_manually"}'::jsonb);
    RETURN QUERY SELECT r.task_state, r.sent FROM tasker.operations_resume_task(t_uuid, t_state, '{}'::uuid[]) r;
END;
$$;

-- Sends dead letter p_id's message again to the queue it came from (with a NOTIFY) and marks
-- it replayed; returns the new message's id. Refused (TWSTA) when it was replayed already or
-- has no JSON message (its body could not be parsed); TWNFD when there is no such dead letter.
CREATE OR REPLACE FUNCTION tasker.operations_replay_dead_letter(p_id uuid)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    d      tasker.dead_letters%ROWTYPE;
    msg_id bigint;
BEGIN
    SELECT * INTO d FROM tasker.dead_letters WHERE dead_letter_uuid = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no dead letter %', p_id USING ERRCODE = 'TWNFD';
    END IF;
    IF d.replayed_at IS NOT NULL THEN
        RAISE EXCEPTION 'dead letter % was replayed already, at %', p_id, d.replayed_at USING ERRCODE = 'TWSTA';
    END IF;
    IF d.message IS NULL THEN
        RAISE EXCEPTION 'dead letter % has no JSON message to replay (%)', p_id, d.reason USING ERRCODE = 'TWSTA';
    END IF;
    msg_id := tasker.pgmq_send_with_notify(d.queue_name, d.message, 0);
    UPDATE tasker.dead_letters SET replayed_at = now() WHERE dead_letter_uuid = p_id;
    RETURN msg_id;
END;
$$;

-- A worker process's heartbeat: inserts its row (tasker.workers) or refreshes last_heartbeat
-- and state, and deletes the rows of processes whose heartbeat is older than p_prune_after
-- seconds (gone long ago, or stopped).
CREATE OR REPLACE FUNCTION tasker.worker_heartbeat(
    p_worker_id   text,
    p_hostname    text,
    p_pid         integer,
    p_namespaces  text[],
    p_concurrency integer,
    p_version     text,
    p_state       text,
    p_prune_after integer
)
RETURNS void
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    INSERT INTO tasker.workers (worker_id, hostname, pid, namespaces, concurrency, state, version)
    VALUES (p_worker_id, p_hostname, p_pid, p_namespaces, p_concurrency, p_state, p_version)
    ON CONFLICT (worker_id) DO UPDATE
       SET last_heartbeat = now(), state = EXCLUDED.state, concurrency = EXCLUDED.concurrency;
    DELETE FROM tasker.workers
     WHERE last_heartbeat < now() - make_interval(secs => p_prune_after) AND worker_id <> p_worker_id;
END;
$$;

-- The worker processes, newest first, after deleting those whose heartbeat is older than
-- p_prune_after seconds. A process that has not stopped and whose heartbeat is older than
-- p_gone_after seconds is shown as `gone` (it died or lost the database).
CREATE OR REPLACE FUNCTION tasker.operations_workers(p_gone_after integer, p_prune_after integer)
RETURNS TABLE (
    worker_id text, hostname text, pid integer, namespaces text[], concurrency integer,
    started_at timestamptz, last_heartbeat timestamptz, state text, version text
)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM tasker.workers w WHERE w.last_heartbeat < now() - make_interval(secs => p_prune_after);
    RETURN QUERY
    SELECT w.worker_id, w.hostname, w.pid, w.namespaces, w.concurrency, w.started_at, w.last_heartbeat,
           CASE WHEN w.state <> 'stopped' AND w.last_heartbeat < now() - make_interval(secs => p_gone_after)
                THEN 'gone' ELSE w.state END,
           w.version
      FROM tasker.workers w
     ORDER BY w.started_at DESC, w.worker_id;
END;
$$;
