-- The worker's reads and claims as one call each: tasker.worker_read (a queue read, planned
-- once per session) and tasker.worker_claim_next (read, check and claim a batch of steps).

-- Reads up to p_qty visible messages of pgmq.q_{p_queue_name} and hides them for
-- p_vt_seconds, as pgmq.read does (lowest ids first, FOR UPDATE SKIP LOCKED, read_ct + 1, vt
-- and, where the queue table has it, last_read_at); rows in msg_id order. The read commits
-- with synchronous_commit off: a lease lost in a server crash only means the message is read
-- again. (Called inside a larger transaction, that transaction's commit is asynchronous too.)
--
-- The statement is prepared once per session and queue (tasker_read_{p_queue_name}):
-- planning it on every call, as pgmq.read does, costs three times what running it does. It
-- runs with a generic plan (see the end of this file), so the rows to update are found by
-- key (= ANY): a join to the CTE would be planned for an unknown LIMIT, as a hash join over a
-- scan of the whole queue table.
CREATE OR REPLACE FUNCTION tasker.worker_read(
    p_queue_name text,
    p_qty        integer,
    p_vt_seconds double precision
)
RETURNS TABLE (msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb)
LANGUAGE plpgsql
AS $$
DECLARE
    queue_table    text := 'q_' || p_queue_name;
    read_statement text := 'tasker_read_' || p_queue_name;  -- at most 59 characters
    m_id      bigint[];
    m_read_ct integer[];
    m_enq     timestamptz[];
    m_vt      timestamptz[];
    m_body    jsonb[];
BEGIN
    IF p_queue_name IS NULL OR p_queue_name !~ '^[a-z0-9_]{1,47}$' THEN
        RAISE EXCEPTION 'invalid queue name %', p_queue_name USING ERRCODE = '22023';
    END IF;
    IF p_qty IS NULL OR p_vt_seconds IS NULL THEN
        RAISE EXCEPTION 'qty and vt must not be null' USING ERRCODE = '22004';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements ps WHERE ps.name = read_statement) THEN
        EXECUTE format(
            'PREPARE %1$I(integer, double precision) AS '
            'WITH cte AS (SELECT msg_id FROM pgmq.%2$I WHERE vt <= clock_timestamp() '
            '               ORDER BY msg_id ASC LIMIT $1 FOR UPDATE SKIP LOCKED), '
            '     got AS (UPDATE pgmq.%2$I m SET %3$s vt = clock_timestamp() + make_interval(secs => $2), '
            '                    read_ct = m.read_ct + 1 '
            '              WHERE m.msg_id = ANY (ARRAY(SELECT msg_id FROM cte)) '
            '             RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message) '
            'SELECT array_agg(msg_id ORDER BY msg_id), array_agg(read_ct ORDER BY msg_id), '
            '       array_agg(enqueued_at ORDER BY msg_id), array_agg(vt ORDER BY msg_id), '
            '       array_agg(message ORDER BY msg_id) FROM got',
            read_statement,
            queue_table,
            CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a
                               WHERE a.attrelid = to_regclass(format('pgmq.%I', queue_table))
                                 AND a.attname = 'last_read_at' AND NOT a.attisdropped)
                 THEN 'last_read_at = clock_timestamp(),' ELSE '' END);
    END IF;
    EXECUTE format('EXECUTE %I(%s, %s)', read_statement, p_qty, p_vt_seconds)
      INTO m_id, m_read_ct, m_enq, m_vt, m_body;
    RETURN QUERY SELECT * FROM unnest(m_id, m_read_ct, m_enq, m_vt, m_body);
END;
$$;

-- Moves the given messages of pgmq.q_{p_queue_name} to pgmq.a_{p_queue_name}, as
-- pgmq.archive does (every column the two tables share, archived_at by its default);
-- returns the ids that were still in the queue. Prepared once per session and queue
-- (tasker_archive_{p_queue_name}) rather than planned on every call.
CREATE OR REPLACE FUNCTION tasker.worker_archive(p_queue_name text, p_msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql
AS $$
DECLARE
    archive_statement text := 'tasker_archive_' || p_queue_name;  -- at most 62 characters
    columns text;
    archived bigint[];
BEGIN
    IF p_queue_name IS NULL OR p_queue_name !~ '^[a-z0-9_]{1,47}$' THEN
        RAISE EXCEPTION 'invalid queue name %', p_queue_name USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements ps WHERE ps.name = archive_statement) THEN
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO columns
          FROM pg_attribute a
         WHERE a.attrelid = to_regclass(format('pgmq.%I', 'a_' || p_queue_name))
           AND a.attnum > 0 AND NOT a.attisdropped
           AND EXISTS (SELECT 1 FROM pg_attribute q
                        WHERE q.attrelid = to_regclass(format('pgmq.%I', 'q_' || p_queue_name))
                          AND q.attname = a.attname AND q.attnum > 0 AND NOT q.attisdropped);
        IF columns IS NULL THEN
            RAISE EXCEPTION 'queue % does not exist', p_queue_name USING ERRCODE = '42P01';
        END IF;
        EXECUTE format(
            'PREPARE %1$I(bigint[]) AS '
            'WITH gone AS (DELETE FROM pgmq.%2$I WHERE msg_id = ANY ($1) RETURNING %4$s), '
            '     kept AS (INSERT INTO pgmq.%3$I (%4$s) SELECT %4$s FROM gone RETURNING msg_id) '
            'SELECT array_agg(msg_id ORDER BY msg_id) FROM kept',
            archive_statement, 'q_' || p_queue_name, 'a_' || p_queue_name, columns);
    END IF;
    EXECUTE format('EXECUTE %I(%L)', archive_statement, p_msg_ids) INTO archived;
    RETURN QUERY SELECT unnest(archived);
END;
$$;

-- What a handler gets for each step (src/worker/hydration.rs builds the StepContext from
-- these columns): the step, its task and template, the template's definition of the step
-- (by name, or by `__template_step_name` in its inputs) and the stored results of every
-- ancestor step, by name.
CREATE OR REPLACE FUNCTION tasker.worker_step_contexts(p_step_uuids uuid[])
RETURNS TABLE (
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb
)
LANGUAGE sql STABLE
AS $$
    SELECT ws.workflow_step_uuid, ws.task_uuid, ws.inputs, ws.attempts, ws.max_attempts, ws.retryable,
           ns.name::text, t.context, t.correlation_id, nt.name::text, nt.version::text, tn.name::text,
           (SELECT s FROM jsonb_array_elements(nt.configuration -> 'steps') s
             WHERE s ->> 'name' = coalesce(ws.inputs ->> '__template_step_name', ns.name)
             LIMIT 1),
           (WITH RECURSIVE ancestors(step_uuid) AS (
                SELECT e.from_step_uuid FROM tasker.workflow_step_edges e
                 WHERE e.to_step_uuid = ws.workflow_step_uuid
                UNION
                SELECT e.from_step_uuid FROM tasker.workflow_step_edges e
                  JOIN ancestors a ON e.to_step_uuid = a.step_uuid)
            SELECT jsonb_object_agg(ans.name, aws.results)
              FROM ancestors a
              JOIN tasker.workflow_steps aws ON aws.workflow_step_uuid = a.step_uuid
              JOIN tasker.named_steps ans ON ans.named_step_uuid = aws.named_step_uuid
             WHERE aws.results IS NOT NULL)
      FROM tasker.workflow_steps ws
      JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid
      JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid
      JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid
      JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid
     WHERE ws.workflow_step_uuid = ANY (p_step_uuids)
$$;

-- Read, check and claim a batch of steps in one call: one round trip and one transaction
-- (committed with synchronous_commit off, as tasker.worker_claim_steps explains) instead of
-- a read, a hydration query and a claim call, each a round trip and the read a durable
-- commit of its own.
--
-- 1. Reads up to p_qty visible messages of pgmq.q_{p_queue_name} (tasker.worker_read).
-- 2. A message whose three ids are canonical uuid strings and whose step can be hydrated
--    (the step exists, belongs to the message's task, and its template has a step of that
--    name with a handler whose callable is a string and whose initialization, if given, is
--    an object) is claimed through tasker.worker_claim_steps, with the token p_tokens[n] for
--    the n-th message read. The checks are those src/worker/hydration.rs makes, so a step
--    claimed here always hydrates.
-- 3. Returns one row per message read, in msg_id order, with the message, the action and,
--    for claimed rows and unhydratable ones, the hydration columns of
--    src/worker/hydration.rs (the worker builds the StepContext, or the reason a step cannot
--    be hydrated, from them). Actions:
--      claim, reclaim, duplicate, missing - as tasker.worker_claim_steps decides;
--      unhydratable - not claimed; the worker retries it and dead-letters it after
--                     max_delivery_attempts reads;
--      unparsed     - the message is not three canonical uuids; not claimed; the worker
--                     parses it itself (and dead-letters it, or claims it the slow way).
CREATE OR REPLACE FUNCTION tasker.worker_claim_next(
    p_queue_name text,
    p_worker_id  text,
    p_qty        integer,
    p_vt_seconds double precision,
    p_tokens     uuid[]
)
RETURNS TABLE (
    msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb,
    action text, state text, token uuid, previous uuid,
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    -- The messages read, as parallel arrays in msg_id order.
    m_id      bigint[];
    m_read_ct integer[];
    m_enq     timestamptz[];
    m_vt      timestamptz[];
    m_body    jsonb[];
    -- Claimable messages, and what tasker.worker_claim_steps made of them.
    c_step  uuid[];
    c_msg   bigint[];
    c_corr  uuid[];
    c_token uuid[];
    r_msg     bigint[];
    r_action  text[];
    r_state   text[];
    r_token   uuid[];
    r_prev    uuid[];
    r_attempts integer[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);

    SELECT array_agg(r.msg_id ORDER BY r.msg_id), array_agg(r.read_ct ORDER BY r.msg_id),
           array_agg(r.enqueued_at ORDER BY r.msg_id), array_agg(r.vt ORDER BY r.msg_id),
           array_agg(r.message ORDER BY r.msg_id)
      INTO m_id, m_read_ct, m_enq, m_vt, m_body
      FROM tasker.worker_read(p_queue_name, p_qty, p_vt_seconds) r;

    IF m_id IS NULL THEN
        RETURN;
    END IF;

    -- Which messages parse and hydrate (the checks src/worker/hydration.rs makes).
    SELECT array_agg(p.step_uuid ORDER BY p.n), array_agg(p.msg_id ORDER BY p.n),
           array_agg(p.correlation_id ORDER BY p.n), array_agg(p_tokens[p.n::integer] ORDER BY p.n)
      INTO c_step, c_msg, c_corr, c_token
      FROM (SELECT m.msg_id, m.n,
                   (m.body ->> 'step_uuid')::uuid AS step_uuid,
                   (m.body ->> 'task_uuid')::uuid AS task_uuid,
                   (m.body ->> 'correlation_id')::uuid AS correlation_id
              FROM unnest(m_id, m_body) WITH ORDINALITY AS m(msg_id, body, n)
             WHERE tasker.worker_is_step_message(m.body)) p
      JOIN LATERAL tasker.worker_step_contexts(ARRAY[p.step_uuid]) h ON h.task_uuid = p.task_uuid
     WHERE tasker.worker_is_runnable_definition(h.step_definition);

    IF c_step IS NOT NULL THEN
        SELECT array_agg(c.msg_id), array_agg(c.action), array_agg(c.state), array_agg(c.token),
               array_agg(c.previous), array_agg(c.attempts)
          INTO r_msg, r_action, r_state, r_token, r_prev, r_attempts
          FROM tasker.worker_claim_steps(p_queue_name, p_worker_id, c_step, c_msg, c_corr, c_token) c;
    END IF;

    RETURN QUERY
    WITH m AS (
        SELECT m.*,
               CASE WHEN tasker.worker_is_step_message(m.message)
                    THEN (m.message ->> 'step_uuid')::uuid END AS step_uuid
          FROM unnest(m_id, m_read_ct, m_enq, m_vt, m_body) AS m(msg_id, read_ct, enqueued_at, vt, message)
    ), r AS (
        SELECT * FROM unnest(r_msg, r_action, r_state, r_token, r_prev, r_attempts)
                   AS r(msg_id, action, state, token, previous, attempts)
    )
    SELECT m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message,
           CASE WHEN m.step_uuid IS NULL THEN 'unparsed'
                ELSE coalesce(r.action, 'unhydratable') END,
           r.state, r.token, r.previous,
           h.workflow_step_uuid, h.task_uuid, h.inputs, coalesce(r.attempts, h.attempts), h.max_attempts,
           h.retryable, h.step_name, h.context, h.correlation_id, h.task_name,
           h.task_version, h.namespace, h.step_definition, h.dependency_results
      FROM m
      LEFT JOIN r ON r.msg_id = m.msg_id
      -- Contexts go back for claimed steps, and for unclaimed ones (the reason is built from
      -- them). One step per call: the function is inlined, and each lookup is by key.
      LEFT JOIN LATERAL tasker.worker_step_contexts(ARRAY[m.step_uuid]) h
        ON r.action IS NULL OR r.action IN ('claim', 'reclaim')
     ORDER BY m.msg_id;
END;
$$;

-- A StepMessage the SQL side can read: an object whose task_uuid, step_uuid and
-- correlation_id are canonical (8-4-4-4-12 hex) uuid strings. Anything else is left to the
-- worker's own parser.
CREATE OR REPLACE FUNCTION tasker.worker_is_step_message(body jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT jsonb_typeof(body) = 'object'
       AND coalesce(body ->> 'task_uuid' ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
                     AND jsonb_typeof(body -> 'task_uuid') = 'string', false)
       AND coalesce(body ->> 'step_uuid' ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
                     AND jsonb_typeof(body -> 'step_uuid') = 'string', false)
       AND coalesce(body ->> 'correlation_id' ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
                     AND jsonb_typeof(body -> 'correlation_id') = 'string', false)
$$;

-- A template step definition the worker can run: its handler is an object whose callable
-- is a string and whose initialization, when present, is an object (HandlerSpec in
-- src/worker/step_context.rs).
CREATE OR REPLACE FUNCTION tasker.worker_is_runnable_definition(definition jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(jsonb_typeof(definition -> 'handler') = 'object'
               AND jsonb_typeof(definition -> 'handler' -> 'callable') = 'string'
               AND (NOT (definition -> 'handler' ? 'initialization')
                    OR jsonb_typeof(definition -> 'handler' -> 'initialization') = 'object'),
           false)
$$;


-- tasker.worker_commit_results as in migration 20261126000003, but archiving through
-- tasker.worker_archive (a prepared statement) instead of pgmq.archive (planned per call).
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
        PERFORM tasker.worker_archive(archive_to.queue_name, archive_to.msg_ids);
    END LOOP;

    RETURN QUERY SELECT unnest(live_tokens);
END;
$$;

-- The worker's functions run with generic plans, and without sequential scans.
--
-- A plpgsql statement is planned for its parameters (a custom plan) on its first five runs in
-- a session and afterwards whenever the generic plan does not look cheaper; these statements
-- reach rows by key through arrays, where a custom plan is never better and planning them
-- costs about as much as running them (BENCHMARKS.md: pickup 2.0 -> 1.4 ms).
--
-- A generic plan is made once per session and kept until the tables' statistics change. Made
-- while the tables are small (a worker started on a new database), it scans them whole and
-- joins by hashing, and keeps doing so as they grow, for as long as nothing ANALYZEs them
-- (autovacuum off, or not yet run): a 100k-step drain fell from thousands of steps/s to a
-- few hundred. Every row these functions touch is reached through an index (primary keys,
-- the most_recent partial index, the edge indexes), so sequential scans are switched off
-- for them: their plans are index plans whatever the tables' size when they were made.
-- The settings apply to the functions they call as well.
ALTER FUNCTION tasker.worker_read(text, integer, double precision)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION tasker.worker_read(text, integer, double precision)
    SET enable_seqscan = off;
ALTER FUNCTION tasker.worker_archive(text, bigint[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION tasker.worker_archive(text, bigint[])
    SET enable_seqscan = off;
ALTER FUNCTION tasker.worker_claim_next(text, text, integer, double precision, uuid[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION tasker.worker_claim_next(text, text, integer, double precision, uuid[])
    SET enable_seqscan = off;
ALTER FUNCTION tasker.worker_claim_steps(text, text, uuid[], bigint[], uuid[], uuid[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION tasker.worker_claim_steps(text, text, uuid[], bigint[], uuid[], uuid[])
    SET enable_seqscan = off;
ALTER FUNCTION tasker.worker_commit_results(uuid[], uuid[], uuid[], text[], jsonb[], jsonb[], jsonb[], text[], bigint[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION tasker.worker_commit_results(uuid[], uuid[], uuid[], text[], jsonb[], jsonb[], jsonb[], text[], bigint[])
    SET enable_seqscan = off;
