-- The worker's commit of handler results. Applied by src/database/migrate.rs after the
-- migrations; edit the definition here.

-- Commits a batch of handler results (see src/worker/handlers/completion_processor.rs): for
-- each result whose claim token is still the step's current transition, move the step to
-- enqueued_for_orchestration (or enqueued_as_error_for_orchestration), store its results,
-- send its StepMessage to orchestration_step_results with the notification
-- tasker.pgmq_send_with_notify would send, and archive the worker message it was claimed
-- through (tasker.worker_archive). Returns the tokens that committed; the others were stale
-- (the step was reclaimed) and changed nothing. Commits durably (the session's
-- synchronous_commit): the result is what makes the step's work count. Generic plans without
-- sequential scans: see the header of worker_claim.sql.
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
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
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
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    SELECT i.transition_uuid, i.step_uuid, 'in_progress', i.to_state, i.metadata, l.sort_key + 1, true, now(), now()
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
        PERFORM tasker.worker_archive(archive_to.queue_name, archive_to.msg_ids);
    END LOOP;

    RETURN QUERY SELECT unnest(live_tokens);
END;
$$;
