-- The worker's commit of handler results. Applied by src/database/migrate.rs after the
-- migrations; edit the definition here.

-- Part of both commits' tail (tasker.worker_finish_commit): sends the orchestration message
-- of each result of p_tokens in p_sent_tokens to orchestration_step_results with the
-- notification tasker.pgmq_send_with_notify sends for each (message_with_payload;
-- message_ready when the payload would be too large), then acks the worker messages the live
-- results (those in p_live_tokens) were claimed through, per queue: archived, or deleted when
-- p_delete (worker.ack_mode = delete). A live result not in p_sent_tokens was completed in
-- the commit itself (tasker.worker_complete_in_commit) and needs no message.
DROP FUNCTION IF EXISTS tasker.worker_send_results_and_ack(uuid[], jsonb[], text[], bigint[], uuid[], boolean,
                                                          timestamptz);
CREATE OR REPLACE FUNCTION tasker.worker_send_results_and_ack(
    p_tokens      uuid[],
    p_messages    jsonb[],
    p_queue_names text[],
    p_msg_ids     bigint[],
    p_live_tokens uuid[],
    p_sent_tokens uuid[],
    p_delete      boolean,
    p_sent_at     timestamptz
)
RETURNS void
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    payloads   text[];
    payload    text;
    archive_to record;
BEGIN
    WITH sent AS (
        INSERT INTO pgmq.q_orchestration_step_results (vt, message)
        SELECT p_sent_at, i.message
          FROM unnest(p_tokens, p_messages) WITH ORDINALITY AS i(token, message, n)
         WHERE i.token = ANY(p_sent_tokens)
         ORDER BY i.n
        RETURNING msg_id, message
    ), built AS (
        SELECT s.msg_id,
               json_build_object(
                   'event_type', 'message_with_payload', 'msg_id', s.msg_id,
                   'queue_name', 'orchestration_step_results', 'namespace', 'orchestration',
                   'message', s.message, 'ready_at', p_sent_at, 'delay_seconds', 0)::text AS full_payload,
               json_build_object(
                   'event_type', 'message_ready', 'msg_id', s.msg_id,
                   'queue_name', 'orchestration_step_results', 'namespace', 'orchestration',
                   'ready_at', p_sent_at, 'delay_seconds', 0, 'payload_omitted', true)::text AS short_payload
          FROM sent s
    )
    SELECT array_agg(CASE WHEN length(b.full_payload) > tasker.pgmq_payload_size_threshold()
                          THEN b.short_payload ELSE b.full_payload END ORDER BY b.msg_id)
      INTO payloads
      FROM built b;
    FOREACH payload IN ARRAY coalesce(payloads, '{}') LOOP
        PERFORM pg_notify('pgmq_message_ready.orchestration', payload);
    END LOOP;

    FOR archive_to IN
        SELECT i.queue_name, array_agg(i.msg_id) AS msg_ids
          FROM unnest(p_tokens, p_queue_names, p_msg_ids) AS i(token, queue_name, msg_id)
         WHERE i.token = ANY(p_live_tokens)
         GROUP BY i.queue_name
    LOOP
        IF p_delete THEN
            PERFORM tasker.worker_delete_messages(archive_to.queue_name, archive_to.msg_ids);
        ELSE
            PERFORM tasker.worker_archive(archive_to.queue_name, archive_to.msg_ids);
        END IF;
    END LOOP;
END;
$$;

-- Which live results of a commit (p_live_tokens of p_tokens) the embedded orchestrator
-- completes in it (orchestration.complete_in_commit, when this process runs the embedded
-- orchestrator): those marked in p_complete (successes) whose steps are not decision or
-- batchable steps (tasker.orchestrator_dynamic_steps; those go by message, to
-- src/orchestration/dynamic.rs). Their tokens, steps and the uuids of their `complete`
-- transitions (the first of each result's share of p_uuids, as tasker.worker_complete_in_commit
-- splits them), in p_tokens' order; NULL for none.
CREATE OR REPLACE FUNCTION tasker.worker_completed_here(
    p_live_tokens uuid[],
    p_tokens      uuid[],
    p_step_uuids  uuid[],
    p_complete    boolean[],
    p_uuids       uuid[],
    OUT tokens    uuid[],
    OUT steps     uuid[],
    OUT uuids     uuid[]
)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    stride  integer := coalesce(array_length(p_uuids, 1) / nullif(array_length(p_tokens, 1), 0), 0);
    dynamic uuid[];
BEGIN
    IF p_complete IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(i.token ORDER BY i.n), array_agg(i.step_uuid ORDER BY i.n),
           array_agg(p_uuids[(i.n::integer - 1) * stride + 1] ORDER BY i.n)
      INTO tokens, steps, uuids
      FROM unnest(p_tokens, p_step_uuids, p_complete) WITH ORDINALITY AS i(token, step_uuid, complete, n)
     WHERE i.complete AND i.token = ANY(p_live_tokens);
    IF steps IS NULL THEN
        RETURN;
    END IF;
    dynamic := tasker.orchestrator_dynamic_steps(steps);
    IF cardinality(dynamic) > 0 THEN
        SELECT array_agg(d.token ORDER BY d.n), array_agg(d.step_uuid ORDER BY d.n), array_agg(d.uuid ORDER BY d.n)
          INTO tokens, steps, uuids
          FROM unnest(tokens, steps, uuids) WITH ORDINALITY AS d(token, step_uuid, uuid, n)
         WHERE d.step_uuid <> ALL(dynamic);
    END IF;
END;
$$;

-- The embedded orchestrator's work on the successes a commit completed (p_done_tokens, of
-- p_tokens; tasker.worker_completed_here), in the commit's transaction, in the batch's order:
-- the commit has written each step's `enqueued_for_orchestration` transition (not most
-- recent), its `complete` transition (uuid p_uuids[(n - 1) * stride + 1], stride =
-- length(p_uuids) / length(p_tokens)) and `processed`; tasker.orchestrator_complete_step (no
-- message: p_msg_id NULL) enqueues its ready children and settles the task, with the rest of
-- p_uuids[(n - 1) * stride + 1 .. n * stride]. One row per such result: its outcome
-- (completed) and the task's new state. The caller holds the tasks' row locks (taken before
-- the steps', the order the orchestrator takes them in).
-- Its arguments changed (the completed tokens instead of p_complete).
DROP FUNCTION IF EXISTS tasker.worker_complete_in_commit(uuid[], uuid[], uuid[], uuid[], boolean[], uuid[]);
CREATE OR REPLACE FUNCTION tasker.worker_complete_in_commit(
    p_done_tokens uuid[],
    p_tokens      uuid[],
    p_task_uuids  uuid[],
    p_step_uuids  uuid[],
    p_uuids       uuid[]
)
RETURNS TABLE (token uuid, outcome text, task_state text)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    stride integer := coalesce(array_length(p_uuids, 1) / nullif(array_length(p_tokens, 1), 0), 0);
    r      record;
BEGIN
    FOR r IN
        SELECT i.token, i.task_uuid, i.step_uuid, i.n::integer AS n
          FROM unnest(p_tokens, p_task_uuids, p_step_uuids) WITH ORDINALITY AS i(token, task_uuid, step_uuid, n)
         WHERE i.token = ANY(p_done_tokens)
         ORDER BY i.n
    LOOP
        RETURN QUERY
        SELECT r.token, c.outcome, c.task_state
          FROM tasker.orchestrator_complete_step(NULL, r.task_uuid, r.step_uuid,
                                                 p_uuids[(r.n - 1) * stride + 1 : r.n * stride]) c;
    END LOOP;
END;
$$;

-- Locks the rows of the tasks whose results the commit completes (p_complete), in uuid
-- order, before the commit locks their steps: the orchestrator and the operations take a
-- task's row before its steps', so a commit that completes steps takes them in that order too.
CREATE OR REPLACE FUNCTION tasker.worker_lock_completed_tasks(p_task_uuids uuid[], p_complete boolean[])
RETURNS void
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM 1 FROM tasker.tasks t
     WHERE t.task_uuid = ANY(ARRAY(SELECT i.task_uuid FROM unnest(p_task_uuids, p_complete) AS i(task_uuid, complete)
                                    WHERE i.complete))
     ORDER BY t.task_uuid
       FOR UPDATE;
END;
$$;

-- The tail of both commits, after the live results (p_live_tokens) are stored: goes on
-- with those the commit completed (p_done_tokens; tasker.worker_complete_in_commit), sends the
-- orchestration message of every other live result and acks the worker messages
-- (tasker.worker_send_results_and_ack), and returns a row per live result: its token, and
-- for one completed here the orchestrator's outcome and the task's new state.
-- Its arguments changed (the completed tokens instead of p_complete).
DROP FUNCTION IF EXISTS tasker.worker_finish_commit(uuid[], uuid[], jsonb[], text[], bigint[], uuid[], boolean,
                                                   timestamptz, uuid[], boolean[], uuid[]);
CREATE OR REPLACE FUNCTION tasker.worker_finish_commit(
    p_tokens      uuid[],
    p_step_uuids  uuid[],
    p_messages    jsonb[],
    p_queue_names text[],
    p_msg_ids     bigint[],
    p_live_tokens uuid[],
    p_delete      boolean,
    p_sent_at     timestamptz,
    p_task_uuids  uuid[],
    p_done_tokens uuid[],
    p_uuids       uuid[]
)
RETURNS TABLE (token uuid, outcome text, task_state text)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    done_tokens   uuid[];
    done_outcomes text[];
    done_states   text[];
BEGIN
    IF p_done_tokens IS NOT NULL THEN
        SELECT array_agg(c.token), array_agg(c.outcome), array_agg(c.task_state)
          INTO done_tokens, done_outcomes, done_states
          FROM tasker.worker_complete_in_commit(p_done_tokens, p_tokens, p_task_uuids, p_step_uuids, p_uuids) c;
    END IF;

    PERFORM tasker.worker_send_results_and_ack(
        p_tokens, p_messages, p_queue_names, p_msg_ids, p_live_tokens,
        ARRAY(SELECT l.token FROM unnest(p_live_tokens) AS l(token)
               WHERE NOT EXISTS (SELECT 1 FROM unnest(done_tokens, done_outcomes) AS d(token, outcome)
                                  WHERE d.token = l.token AND d.outcome = 'completed')),
        p_delete, p_sent_at);

    RETURN QUERY
    SELECT l.token, d.outcome, d.task_state
      FROM unnest(p_live_tokens) AS l(token)
      LEFT JOIN unnest(done_tokens, done_outcomes, done_states) AS d(token, outcome, task_state) ON d.token = l.token;
END;
$$;

-- Commits a batch of handler results (see src/worker/handlers/completion_processor.rs): for
-- each result whose claim token is still the step's current transition, move the step to
-- enqueued_for_orchestration (or enqueued_as_error_for_orchestration), store its results,
-- send its StepMessage to orchestration_step_results with the notification
-- tasker.pgmq_send_with_notify would send, and archive the worker message it was claimed
-- through (tasker.worker_archive). Returns a row for each token that committed (the others
-- were stale: the step was reclaimed, and changed nothing). With p_complete (the embedded
-- orchestrator in the worker's process; NULL otherwise), each live result marked in it that is
-- not a decision or batchable step (tasker.worker_completed_here) is completed here as well:
-- its result's transition is written as not most recent, followed by the step's `complete`
-- (transition uuids p_uuids), the step is marked processed, and
-- tasker.worker_complete_in_commit enqueues its children and settles its task. Such a result
-- sends no orchestration message; the row carries the outcome and the task's new state.
-- Commits durably (the session's synchronous_commit): the
-- result is what makes the step's work count. Generic plans without sequential scans: see the
-- header of worker_claim.sql.
DROP FUNCTION IF EXISTS tasker.worker_commit_results(uuid[], uuid[], uuid[], text[], jsonb[], jsonb[], jsonb[], text[],
                                                    bigint[]);
CREATE OR REPLACE FUNCTION tasker.worker_commit_results(
    p_tokens           uuid[],
    p_step_uuids       uuid[],
    p_transition_uuids uuid[],
    p_to_states        text[],
    p_metadata         jsonb[],
    p_results          jsonb[],
    p_messages         jsonb[],
    p_queue_names      text[],
    p_msg_ids          bigint[],
    p_task_uuids       uuid[] DEFAULT NULL,
    p_complete         boolean[] DEFAULT NULL,
    p_uuids            uuid[] DEFAULT NULL
)
RETURNS TABLE (token uuid, outcome text, task_state text)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    live_tokens   uuid[];
    live_sort     integer[];
    live_steps    uuid[];
    live_results  jsonb[];
    done_tokens   uuid[];
    done_steps    uuid[];
    done_uuids    uuid[];
    sent_at       timestamptz := clock_timestamp();
BEGIN
    IF p_complete IS NOT NULL THEN
        PERFORM tasker.worker_lock_completed_tasks(p_task_uuids, p_complete);
    END IF;
    PERFORM 1 FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = ANY(p_step_uuids)
     ORDER BY s.workflow_step_uuid
       FOR UPDATE;

    WITH retired AS (
        UPDATE tasker.workflow_step_transitions t
           SET most_recent = false, updated_at = now()
         WHERE t.workflow_step_transition_uuid = ANY(p_tokens) AND t.most_recent
        RETURNING t.workflow_step_transition_uuid, t.sort_key
    )
    SELECT array_agg(r.workflow_step_transition_uuid), array_agg(r.sort_key)
      INTO live_tokens, live_sort
      FROM retired r;

    IF live_tokens IS NULL THEN
        RETURN;
    END IF;

    -- One live result per step: a step has one current claim.
    SELECT array_agg(i.step_uuid), array_agg(i.results)
      INTO live_steps, live_results
      FROM unnest(p_tokens, p_step_uuids, p_results) AS i(token, step_uuid, results)
     WHERE i.token = ANY(live_tokens);
    IF p_complete IS NOT NULL THEN
        SELECT c.tokens, c.steps, c.uuids INTO done_tokens, done_steps, done_uuids
          FROM tasker.worker_completed_here(live_tokens, p_tokens, p_step_uuids, p_complete, p_uuids) c;
    END IF;

    -- The result's transition, and for a result completed here (done_tokens) the step's `complete`
    -- after it, as tasker.orchestrator_complete_step writes it.
    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    SELECT i.transition_uuid, i.step_uuid, 'in_progress', i.to_state, i.metadata, l.sort_key + 1,
           i.token <> ALL(coalesce(done_tokens, '{}')), now(), now()
      FROM unnest(p_tokens, p_step_uuids, p_transition_uuids, p_to_states, p_metadata)
           AS i(token, step_uuid, transition_uuid, to_state, metadata)
      JOIN unnest(live_tokens, live_sort) AS l(token, sort_key) ON l.token = i.token
    UNION ALL
    SELECT d.uuid, d.step_uuid, 'enqueued_for_orchestration', 'complete', '{"event": "complete"}'::jsonb,
           l.sort_key + 2, true, now(), now()
      FROM unnest(done_tokens, done_steps, done_uuids) AS d(token, step_uuid, uuid)
      JOIN unnest(live_tokens, live_sort) AS l(token, sort_key) ON l.token = d.token;

    UPDATE tasker.workflow_steps s
       SET results = live_results[array_position(live_steps, s.workflow_step_uuid)],
           in_process = false, updated_at = now(),
           processed = CASE WHEN s.workflow_step_uuid = ANY(coalesce(done_steps, '{}')) THEN true ELSE s.processed END,
           processed_at = CASE WHEN s.workflow_step_uuid = ANY(coalesce(done_steps, '{}')) THEN now()
                               ELSE s.processed_at END
     WHERE s.workflow_step_uuid = ANY(live_steps);

    RETURN QUERY
    SELECT * FROM tasker.worker_finish_commit(p_tokens, p_step_uuids, p_messages, p_queue_names, p_msg_ids, live_tokens,
                                              false, sent_at, p_task_uuids, done_tokens, p_uuids);
END;
$$;

-- The messages of p_queue_name among p_msg_ids still held through the read that made each
-- claim (read_ct unchanged: no later read after a lapsed lease). The lean commit's lease
-- check. Not locked (a lock is a WAL record per message). A read that takes a message after
-- this check (its lease lapsed just then) is in a claim that waits for the step row this
-- commit holds, while the commit's archive waits for that read: as with the transition
-- commit, PostgreSQL ends one of the two (a deadlock error); the claim's read is undone, or
-- the commit is retried and then finds the lease gone (stale).
CREATE OR REPLACE FUNCTION tasker.worker_held_messages(p_queue_name text, p_msg_ids bigint[], p_read_cts integer[])
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    held bigint[];
BEGIN
    IF p_queue_name IS NULL OR p_queue_name !~ '^[a-z0-9_]{1,47}$' THEN
        RAISE EXCEPTION 'invalid queue name %', p_queue_name USING ERRCODE = '22023';
    END IF;
    EXECUTE format(
        'SELECT array_agg(q.msg_id) FROM (SELECT q.msg_id FROM pgmq.%I q '
        'JOIN unnest($1, $2) AS i(msg_id, read_ct) ON q.msg_id = i.msg_id AND q.read_ct = i.read_ct) q',
        'q_' || p_queue_name)
      INTO held USING p_msg_ids, p_read_cts;
    RETURN held;
END;
$$;

-- Deletes the messages p_msg_ids of p_queue_name (the ack of worker.ack_mode = delete).
CREATE OR REPLACE FUNCTION tasker.worker_delete_messages(p_queue_name text, p_msg_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    IF p_queue_name IS NULL OR p_queue_name !~ '^[a-z0-9_]{1,47}$' THEN
        RAISE EXCEPTION 'invalid queue name %', p_queue_name USING ERRCODE = '22023';
    END IF;
    EXECUTE format('DELETE FROM pgmq.%I WHERE msg_id = ANY ($1)', 'q_' || p_queue_name) USING p_msg_ids;
END;
$$;

-- Commits a batch of results of lease-only claims (tasker.worker_claim_steps_lean;
-- worker.lean_claim = true). As tasker.worker_commit_results, but a result is live when its
-- message is still held (tasker.worker_held_messages: in the queue, read_ct as at the claim)
-- AND the step's current transition is still p_previous (the one the claim found); for each
-- live result it writes the claim's `in_progress` transition (uuid p_tokens[n], not most
-- recent; none when the claim found the step in_progress already) and then the result's
-- enqueued_(as_error_)for_orchestration transition, so the history reads as the transition
-- claim's does. The worker messages are archived, or deleted when p_delete
-- (worker.ack_mode = delete). Returns a row per token that committed (the others changed
-- nothing); p_task_uuids, p_complete and p_uuids as for tasker.worker_commit_results.
DROP FUNCTION IF EXISTS tasker.worker_commit_results_lean(uuid[], uuid[], integer[], uuid[], uuid[], text[], jsonb[],
                                                         jsonb[], jsonb[], text[], bigint[], boolean);
CREATE OR REPLACE FUNCTION tasker.worker_commit_results_lean(
    p_tokens           uuid[],
    p_previous         uuid[],
    p_read_cts         integer[],
    p_step_uuids       uuid[],
    p_transition_uuids uuid[],
    p_to_states        text[],
    p_metadata         jsonb[],
    p_results          jsonb[],
    p_messages         jsonb[],
    p_queue_names      text[],
    p_msg_ids          bigint[],
    p_delete           boolean,
    p_task_uuids       uuid[] DEFAULT NULL,
    p_complete         boolean[] DEFAULT NULL,
    p_uuids            uuid[] DEFAULT NULL
)
RETURNS TABLE (token uuid, outcome text, task_state text)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    held          text[] := '{}';  -- queue_name:msg_id
    held_queue    record;
    live_tokens   uuid[];
    live_steps    uuid[];
    live_from     text[];
    live_sort     integer[];
    live_results  jsonb[];
    done_tokens   uuid[];
    done_steps    uuid[];
    done_uuids    uuid[];
    sent_at       timestamptz := clock_timestamp();
BEGIN
    IF p_complete IS NOT NULL THEN
        PERFORM tasker.worker_lock_completed_tasks(p_task_uuids, p_complete);
    END IF;
    PERFORM 1 FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = ANY(p_step_uuids)
     ORDER BY s.workflow_step_uuid
       FOR UPDATE;

    FOR held_queue IN
        SELECT i.queue_name, array_agg(i.msg_id) AS msg_ids, array_agg(i.read_ct) AS read_cts
          FROM unnest(p_queue_names, p_msg_ids, p_read_cts) AS i(queue_name, msg_id, read_ct)
         GROUP BY i.queue_name
    LOOP
        held := held || ARRAY(SELECT held_queue.queue_name || ':' || h.msg_id
                                FROM unnest(tasker.worker_held_messages(held_queue.queue_name, held_queue.msg_ids,
                                                                        held_queue.read_cts)) AS h(msg_id));
    END LOOP;

    -- Retire the claim's transition where the lease still holds; one live result per step.
    WITH candidates AS (
        SELECT DISTINCT ON (i.step_uuid) i.*
          FROM unnest(p_tokens, p_previous, p_step_uuids, p_queue_names, p_msg_ids)
               AS i(token, previous, step_uuid, queue_name, msg_id)
         WHERE i.queue_name || ':' || i.msg_id = ANY(held)
         ORDER BY i.step_uuid, i.msg_id
    ), retired AS (
        UPDATE tasker.workflow_step_transitions t
           SET most_recent = false, updated_at = now()
          FROM candidates c
         WHERE t.workflow_step_transition_uuid = c.previous AND t.workflow_step_uuid = c.step_uuid
           AND t.most_recent
        RETURNING c.token, t.workflow_step_uuid, t.to_state, t.sort_key
    )
    SELECT array_agg(r.token), array_agg(r.workflow_step_uuid), array_agg(r.to_state), array_agg(r.sort_key)
      INTO live_tokens, live_steps, live_from, live_sort
      FROM retired r;

    IF live_tokens IS NULL THEN
        RETURN;
    END IF;
    IF p_complete IS NOT NULL THEN
        SELECT c.tokens, c.steps, c.uuids INTO done_tokens, done_steps, done_uuids
          FROM tasker.worker_completed_here(live_tokens, p_tokens, p_step_uuids, p_complete, p_uuids) c;
    END IF;

    -- The claim's in_progress transition (unless the claim found it written), then the result's,
    -- and for a result completed here (done_tokens) the step's `complete` after it, as
    -- tasker.orchestrator_complete_step writes it.
    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    SELECT i.token, l.step_uuid, l.from_state, 'in_progress',
           jsonb_build_object(
               'event', CASE WHEN i.read_ct > 1 THEN 'reclaim' ELSE 'start' END,
               'worker_id', i.metadata ->> 'worker_id',
               'queue_name', i.queue_name,
               'msg_id', i.msg_id::text,
               'read_ct', i.read_ct,
               'correlation_id', i.metadata -> 'correlation_id',
               'claimed_at', s.last_attempted_at,
               'timestamp', clock_timestamp()),
           l.sort_key + 1, false, now(), now()
      FROM unnest(live_tokens, live_steps, live_from, live_sort) AS l(token, step_uuid, from_state, sort_key)
      JOIN unnest(p_tokens, p_read_cts, p_metadata, p_queue_names, p_msg_ids)
           AS i(token, read_ct, metadata, queue_name, msg_id) ON i.token = l.token
      JOIN tasker.workflow_steps s ON s.workflow_step_uuid = l.step_uuid
     WHERE l.from_state <> 'in_progress'
    UNION ALL
    SELECT i.transition_uuid, l.step_uuid, 'in_progress', i.to_state, i.metadata,
           l.sort_key + CASE WHEN l.from_state = 'in_progress' THEN 1 ELSE 2 END,
           l.token <> ALL(coalesce(done_tokens, '{}')), now(), now()
      FROM unnest(live_tokens, live_steps, live_from, live_sort) AS l(token, step_uuid, from_state, sort_key)
      JOIN unnest(p_tokens, p_transition_uuids, p_to_states, p_metadata)
           AS i(token, transition_uuid, to_state, metadata) ON i.token = l.token
    UNION ALL
    SELECT d.uuid, d.step_uuid, 'enqueued_for_orchestration', 'complete', '{"event": "complete"}'::jsonb,
           l.sort_key + CASE WHEN l.from_state = 'in_progress' THEN 2 ELSE 3 END, true, now(), now()
      FROM unnest(live_tokens, live_from, live_sort) AS l(token, from_state, sort_key)
      JOIN unnest(done_tokens, done_steps, done_uuids) AS d(token, step_uuid, uuid) ON d.token = l.token;

    SELECT array_agg(i.results ORDER BY l.n)
      INTO live_results
      FROM unnest(live_tokens) WITH ORDINALITY AS l(token, n)
      JOIN unnest(p_tokens, p_results) AS i(token, results) ON i.token = l.token;

    UPDATE tasker.workflow_steps s
       SET results = live_results[array_position(live_steps, s.workflow_step_uuid)],
           in_process = false, updated_at = now(),
           processed = CASE WHEN s.workflow_step_uuid = ANY(coalesce(done_steps, '{}')) THEN true ELSE s.processed END,
           processed_at = CASE WHEN s.workflow_step_uuid = ANY(coalesce(done_steps, '{}')) THEN now()
                               ELSE s.processed_at END
     WHERE s.workflow_step_uuid = ANY(live_steps);

    RETURN QUERY
    SELECT * FROM tasker.worker_finish_commit(p_tokens, p_step_uuids, p_messages, p_queue_names, p_msg_ids, live_tokens,
                                              p_delete, sent_at, p_task_uuids, done_tokens, p_uuids);
END;
$$;
