-- The worker's hot path as one call each: a batch of claims, a batch of results. Each call is
-- one round trip and, outside an explicit transaction, one transaction. The statements are
-- static, so plpgsql plans them once per connection (PGMQ's functions build their SQL with
-- format() and plan it on every call), and they reach rows by primary key through = ANY.

-- Claims the steps named by messages read from `queue_name` (see src/worker/step_claim.rs
-- for the rules). One row per input message: action is claim, reclaim, duplicate or
-- missing; a claim row carries its token (the new in_progress transition) and the step's
-- attempts. Duplicate messages are archived.
--
-- The claim commits with synchronous_commit off when this call is its own transaction: a
-- claim lost in a server crash only means the message is read again after its visibility
-- timeout, and a result's synchronous commit flushes the claim before it (WAL is flushed in
-- order), so a committed result never names a lost claim.
CREATE OR REPLACE FUNCTION tasker.worker_claim_steps(
    p_queue_name      text,
    p_worker_id       text,
    p_step_uuids      uuid[],
    p_msg_ids         bigint[],
    p_correlation_ids uuid[],
    p_tokens          uuid[]
)
RETURNS TABLE (msg_id bigint, action text, state text, token uuid, previous uuid, attempts integer)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    -- The decision for each input message, as parallel arrays.
    d_msg     bigint[];
    d_step    uuid[];
    d_corr    uuid[];
    d_token   uuid[];
    d_prev    uuid[];
    d_state   text[];
    d_sort    integer[];
    d_action  text[];
    claimed_prev  uuid[];
    claimed_steps uuid[];
    duplicates bigint[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Row locks first, in uuid order (completions take them the same way), so the decision
    -- below reads the transitions as they are once nobody else holds these steps.
    PERFORM 1 FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = ANY(p_step_uuids)
     ORDER BY s.workflow_step_uuid
       FOR UPDATE;

    WITH input AS (
        SELECT i.*, row_number() OVER (PARTITION BY i.step_uuid ORDER BY i.msg_id) AS nth
          FROM unnest(p_step_uuids, p_msg_ids, p_correlation_ids, p_tokens)
               AS i(step_uuid, msg_id, correlation_id, token)
    ), cur AS (
        SELECT t.workflow_step_uuid, t.workflow_step_transition_uuid, t.to_state, t.sort_key, t.metadata
          FROM tasker.workflow_step_transitions t
         WHERE t.most_recent AND t.workflow_step_uuid = ANY(p_step_uuids)
    ), decided AS (
        SELECT i.msg_id, i.step_uuid, i.correlation_id, i.token,
               c.workflow_step_transition_uuid AS prev_uuid, c.to_state, c.sort_key,
               CASE WHEN c.to_state IS NULL THEN 'missing'
                    WHEN c.to_state IN ('pending', 'enqueued') AND i.nth = 1 THEN 'claim'
                    WHEN c.to_state = 'in_progress'
                         AND c.metadata ->> 'queue_name' = p_queue_name
                         AND c.metadata ->> 'msg_id' = i.msg_id::text THEN 'reclaim'
                    ELSE 'duplicate' END AS action
          FROM input i LEFT JOIN cur c ON c.workflow_step_uuid = i.step_uuid
    )
    SELECT array_agg(msg_id), array_agg(step_uuid), array_agg(correlation_id), array_agg(token),
           array_agg(prev_uuid), array_agg(to_state), array_agg(sort_key), array_agg(action)
      INTO d_msg, d_step, d_corr, d_token, d_prev, d_state, d_sort, d_action
      FROM decided;

    IF d_msg IS NULL THEN
        RETURN;
    END IF;

    SELECT array_agg(d.prev_uuid), array_agg(d.step_uuid) INTO claimed_prev, claimed_steps
      FROM unnest(d_prev, d_step, d_action) AS d(prev_uuid, step_uuid, action)
     WHERE d.action IN ('claim', 'reclaim');

    UPDATE tasker.workflow_step_transitions t
       SET most_recent = false, updated_at = now()
     WHERE t.workflow_step_transition_uuid = ANY(claimed_prev);

    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
    SELECT d.token, d.step_uuid, d.to_state, 'in_progress',
           jsonb_build_object(
               'event', CASE d.action WHEN 'reclaim' THEN 'reclaim' ELSE 'start' END,
               'worker_id', p_worker_id,
               'queue_name', p_queue_name,
               'msg_id', d.msg_id::text,
               'correlation_id', d.correlation_id,
               'reclaimed_from', CASE d.action WHEN 'reclaim' THEN d.prev_uuid END,
               'timestamp', clock_timestamp()),
           d.sort_key + 1, true
      FROM unnest(d_msg, d_step, d_corr, d_token, d_prev, d_state, d_sort, d_action)
           AS d(msg_id, step_uuid, correlation_id, token, prev_uuid, to_state, sort_key, action)
     WHERE d.action IN ('claim', 'reclaim');

    SELECT array_agg(d.msg_id) INTO duplicates
      FROM unnest(d_msg, d_action) AS d(msg_id, action)
     WHERE d.action = 'duplicate';
    IF duplicates IS NOT NULL THEN
        PERFORM pgmq.archive(p_queue_name, duplicates);
    END IF;

    RETURN QUERY
    WITH bumped AS (
        UPDATE tasker.workflow_steps s
           SET attempts = s.attempts + 1, in_process = true, last_attempted_at = now(), updated_at = now()
         WHERE s.workflow_step_uuid = ANY(claimed_steps)
        RETURNING s.workflow_step_uuid, s.attempts
    )
    SELECT d.msg_id, d.action, d.to_state,
           CASE WHEN d.action IN ('claim', 'reclaim') THEN d.token END,
           d.prev_uuid, b.attempts
      FROM unnest(d_msg, d_step, d_token, d_prev, d_state, d_action)
           AS d(msg_id, step_uuid, token, prev_uuid, to_state, action)
      LEFT JOIN bumped b ON b.workflow_step_uuid = d.step_uuid AND d.action IN ('claim', 'reclaim');
END;
$$;

-- Commits a batch of handler results (see src/worker/handlers/completion_processor.rs): for
-- each result whose claim token is still the step's current transition, move the step to
-- enqueued_for_orchestration (or enqueued_as_error_for_orchestration), store its results,
-- send its StepMessage to orchestration_step_results with a notification, and archive the
-- worker message it was claimed through. Returns the tokens that committed; the others were
-- stale (the step was reclaimed) and changed nothing.
CREATE OR REPLACE FUNCTION tasker.worker_commit_results(
    p_tokens           uuid[],
    p_step_uuids       uuid[],
    p_transition_uuids uuid[],
    p_to_states        text[],
    p_metadata         jsonb[],
    p_results          jsonb[],
    p_messages         jsonb[],
    p_queue_names      text[],
    p_msg_ids          bigint[]
)
RETURNS SETOF uuid
LANGUAGE plpgsql
AS $$
DECLARE
    live_tokens   uuid[];
    live_sort     integer[];
    live_steps    uuid[];
    live_results  jsonb[];
    sent_at       timestamptz := clock_timestamp();
    payloads      text[];
    payload       text;
    archive_to    record;
BEGIN
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

    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
    SELECT i.transition_uuid, i.step_uuid, 'in_progress', i.to_state, i.metadata, l.sort_key + 1, true
      FROM unnest(p_tokens, p_step_uuids, p_transition_uuids, p_to_states, p_metadata)
           AS i(token, step_uuid, transition_uuid, to_state, metadata)
      JOIN unnest(live_tokens, live_sort) AS l(token, sort_key) ON l.token = i.token;

    UPDATE tasker.workflow_steps s
       SET results = live_results[array_position(live_steps, s.workflow_step_uuid)],
           in_process = false, updated_at = now()
     WHERE s.workflow_step_uuid = ANY(live_steps);

    -- The orchestration messages, with the notification tasker.pgmq_send_with_notify sends
    -- for each (message_with_payload; message_ready when the payload would be too large).
    WITH sent AS (
        INSERT INTO pgmq.q_orchestration_step_results (vt, message)
        SELECT sent_at, i.message
          FROM unnest(p_tokens, p_messages) WITH ORDINALITY AS i(token, message, n)
         WHERE i.token = ANY(live_tokens)
         ORDER BY i.n
        RETURNING msg_id, message
    ), built AS (
        SELECT s.msg_id,
               json_build_object(
                   'event_type', 'message_with_payload', 'msg_id', s.msg_id,
                   'queue_name', 'orchestration_step_results', 'namespace', 'orchestration',
                   'message', s.message, 'ready_at', sent_at, 'delay_seconds', 0)::text AS full_payload,
               json_build_object(
                   'event_type', 'message_ready', 'msg_id', s.msg_id,
                   'queue_name', 'orchestration_step_results', 'namespace', 'orchestration',
                   'ready_at', sent_at, 'delay_seconds', 0, 'payload_omitted', true)::text AS short_payload
          FROM sent s
    )
    SELECT array_agg(CASE WHEN length(b.full_payload) > tasker.pgmq_payload_size_threshold()
                          THEN b.short_payload ELSE b.full_payload END ORDER BY b.msg_id)
      INTO payloads
      FROM built b;
    FOREACH payload IN ARRAY payloads LOOP
        PERFORM pg_notify('pgmq_message_ready.orchestration', payload);
    END LOOP;

    FOR archive_to IN
        SELECT i.queue_name, array_agg(i.msg_id) AS msg_ids
          FROM unnest(p_tokens, p_queue_names, p_msg_ids) AS i(token, queue_name, msg_id)
         WHERE i.token = ANY(live_tokens)
         GROUP BY i.queue_name
    LOOP
        PERFORM pgmq.archive(archive_to.queue_name, archive_to.msg_ids);
    END LOOP;

    RETURN QUERY SELECT unnest(live_tokens);
END;
$$;
