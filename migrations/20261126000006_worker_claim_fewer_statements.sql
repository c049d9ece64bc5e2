-- The worker's claim in fewer, simpler statements. Inside tasker.worker_claim_next, what
-- costs is the number of statements and the size of their plans (each is started and ended
-- by the executor), not the rows: a one-step claim ran 0.78 ms in PostgreSQL, of which the
-- read through tasker.worker_read took 0.18, the hydration check 0.15, the claim 0.31 and
-- the returned contexts 0.12 (BENCHMARKS.md, session 4). Now:
-- 1. the read runs the prepared statement itself (tasker.worker_prepare_read), not through
--    tasker.worker_read's result set;
-- 2. each message's step is hydrated once, before the claim, and the contexts are kept (as
--    tasker.worker_step_context values) for the result instead of being queried again; the
--    step's inputs, its task's context and its ancestors' results do not change while the
--    step waits to be claimed;
-- 3. tasker.worker_claim_steps decides, retires, inserts and bumps in one statement each,
--    skipping the writes when nothing is claimed and the archive when nothing is a duplicate.
-- Behaviour, arguments and results are as in migration 20261126000004.

-- Prepares the read of pgmq.q_{p_queue_name} for this session (tasker_read_{p_queue_name},
-- see tasker.worker_read) unless it is prepared already; returns the statement's name.
CREATE OR REPLACE FUNCTION tasker.worker_prepare_read(p_queue_name text)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    queue_table    text := 'q_' || p_queue_name;
    read_statement text := 'tasker_read_' || p_queue_name;  -- at most 59 characters
BEGIN
    IF p_queue_name IS NULL OR p_queue_name !~ '^[a-z0-9_]{1,47}$' THEN
        RAISE EXCEPTION 'invalid queue name %', p_queue_name USING ERRCODE = '22023';
    END IF;
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
    RETURN read_statement;
END;
$$;

-- tasker.worker_read as in migration 20261126000004, preparing through
-- tasker.worker_prepare_read.
CREATE OR REPLACE FUNCTION tasker.worker_read(
    p_queue_name text,
    p_qty        integer,
    p_vt_seconds double precision
)
RETURNS TABLE (msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    read_statement text;
    m_id      bigint[];
    m_read_ct integer[];
    m_enq     timestamptz[];
    m_vt      timestamptz[];
    m_body    jsonb[];
BEGIN
    IF p_qty IS NULL OR p_vt_seconds IS NULL THEN
        RAISE EXCEPTION 'qty and vt must not be null' USING ERRCODE = '22004';
    END IF;
    read_statement := tasker.worker_prepare_read(p_queue_name);
    PERFORM set_config('synchronous_commit', 'off', true);
    EXECUTE format('EXECUTE %I(%s, %s)', read_statement, p_qty, p_vt_seconds)
      INTO m_id, m_read_ct, m_enq, m_vt, m_body;
    RETURN QUERY SELECT * FROM unnest(m_id, m_read_ct, m_enq, m_vt, m_body);
END;
$$;

-- One row of tasker.worker_step_contexts, as a value.
CREATE TYPE tasker.worker_step_context AS (
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb
);

-- tasker.worker_claim_steps: the rules, arguments and results of migration 20261126000003.
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
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    d_msg     bigint[];
    d_step    uuid[];
    d_corr    uuid[];
    d_token   uuid[];
    d_prev    uuid[];
    d_state   text[];
    d_sort    integer[];
    d_action  text[];
    b_step    uuid[];
    b_attempts integer[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = ANY(p_step_uuids)
     ORDER BY s.workflow_step_uuid
       FOR UPDATE;

    SELECT array_agg(i.msg_id ORDER BY i.n), array_agg(i.step_uuid ORDER BY i.n),
           array_agg(i.correlation_id ORDER BY i.n), array_agg(i.token ORDER BY i.n),
           array_agg(c.workflow_step_transition_uuid ORDER BY i.n), array_agg(c.to_state ORDER BY i.n),
           array_agg(c.sort_key ORDER BY i.n),
           array_agg(CASE WHEN c.to_state IS NULL THEN 'missing'
                          WHEN c.to_state IN ('pending', 'enqueued')
                               AND NOT EXISTS (SELECT 1 FROM unnest(p_step_uuids, p_msg_ids) AS o(step_uuid, msg_id)
                                                WHERE o.step_uuid = i.step_uuid AND o.msg_id < i.msg_id) THEN 'claim'
                          WHEN c.to_state = 'in_progress'
                               AND c.metadata ->> 'queue_name' = p_queue_name
                               AND c.metadata ->> 'msg_id' = i.msg_id::text THEN 'reclaim'
                          ELSE 'duplicate' END ORDER BY i.n)
      INTO d_msg, d_step, d_corr, d_token, d_prev, d_state, d_sort, d_action
      FROM unnest(p_step_uuids, p_msg_ids, p_correlation_ids, p_tokens) WITH ORDINALITY
           AS i(step_uuid, msg_id, correlation_id, token, n)
      LEFT JOIN tasker.workflow_step_transitions c
        ON c.workflow_step_uuid = i.step_uuid AND c.most_recent;

    IF d_msg IS NULL THEN
        RETURN;
    END IF;

    IF 'claim' = ANY(d_action) OR 'reclaim' = ANY(d_action) THEN
        UPDATE tasker.workflow_step_transitions t
           SET most_recent = false, updated_at = now()
          FROM unnest(d_prev, d_action) AS d(prev_uuid, action)
         WHERE t.workflow_step_transition_uuid = d.prev_uuid AND d.action IN ('claim', 'reclaim');

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

        WITH bumped AS (
            UPDATE tasker.workflow_steps s
               SET attempts = s.attempts + 1, in_process = true, last_attempted_at = now(), updated_at = now()
              FROM unnest(d_step, d_action) AS d(step_uuid, action)
             WHERE s.workflow_step_uuid = d.step_uuid AND d.action IN ('claim', 'reclaim')
            RETURNING s.workflow_step_uuid, s.attempts
        )
        SELECT array_agg(b.workflow_step_uuid), array_agg(b.attempts) INTO b_step, b_attempts FROM bumped b;
    END IF;

    IF 'duplicate' = ANY(d_action) THEN
        PERFORM tasker.worker_archive(p_queue_name,
                    ARRAY(SELECT d.msg_id FROM unnest(d_msg, d_action) AS d(msg_id, action) WHERE d.action = 'duplicate'));
    END IF;

    RETURN QUERY
    SELECT d.msg_id, d.action, d.to_state,
           CASE WHEN d.action IN ('claim', 'reclaim') THEN d.token END,
           d.prev_uuid,
           CASE WHEN d.action IN ('claim', 'reclaim') THEN b_attempts[array_position(b_step, d.step_uuid)] END
      FROM unnest(d_msg, d_step, d_token, d_prev, d_state, d_action)
           AS d(msg_id, step_uuid, token, prev_uuid, to_state, action);
END;
$$;

-- tasker.worker_claim_next: the steps, arguments and results of migration 20261126000004.
CREATE OR REPLACE FUNCTION tasker.worker_claim_next(
    p_queue_name text, p_worker_id text, p_qty integer, p_vt_seconds double precision, p_tokens uuid[])
RETURNS TABLE (
    msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb,
    action text, state text, token uuid, previous uuid,
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    read_statement text;
    m_id      bigint[];
    m_read_ct integer[];
    m_enq     timestamptz[];
    m_vt      timestamptz[];
    m_body    jsonb[];
    h_n       bigint[];
    h_ctx     tasker.worker_step_context[];
    h_ok      boolean[];
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
    IF p_qty IS NULL OR p_vt_seconds IS NULL THEN
        RAISE EXCEPTION 'qty and vt must not be null' USING ERRCODE = '22004';
    END IF;
    read_statement := tasker.worker_prepare_read(p_queue_name);
    PERFORM set_config('synchronous_commit', 'off', true);
    EXECUTE format('EXECUTE %I(%s, %s)', read_statement, p_qty, p_vt_seconds)
      INTO m_id, m_read_ct, m_enq, m_vt, m_body;
    IF m_id IS NULL THEN
        RETURN;
    END IF;

    SELECT array_agg(x.n ORDER BY x.n), array_agg(x.h ORDER BY x.n),
           array_agg(x.ok ORDER BY x.n),
           array_agg(x.step_uuid ORDER BY x.n) FILTER (WHERE x.ok),
           array_agg(x.msg_id ORDER BY x.n) FILTER (WHERE x.ok),
           array_agg(x.correlation_id ORDER BY x.n) FILTER (WHERE x.ok),
           array_agg(p_tokens[x.n::integer] ORDER BY x.n) FILTER (WHERE x.ok)
      INTO h_n, h_ctx, h_ok, c_step, c_msg, c_corr, c_token
      FROM (SELECT p.n, p.msg_id, p.step_uuid, p.correlation_id,
                   ROW(h.*)::tasker.worker_step_context AS h,
                   h.task_uuid IS NOT NULL AND h.task_uuid = p.task_uuid
                     AND tasker.worker_is_runnable_definition(h.step_definition) AS ok
              FROM (SELECT m.msg_id, m.n,
                           (m.body ->> 'step_uuid')::uuid AS step_uuid,
                           (m.body ->> 'task_uuid')::uuid AS task_uuid,
                           (m.body ->> 'correlation_id')::uuid AS correlation_id
                      FROM unnest(m_id, m_body) WITH ORDINALITY AS m(msg_id, body, n)
                     WHERE tasker.worker_is_step_message(m.body)) p
              LEFT JOIN LATERAL (SELECT * FROM tasker.worker_step_contexts(ARRAY[p.step_uuid]) OFFSET 0) h ON true) x;

    IF c_step IS NOT NULL THEN
        SELECT array_agg(c.msg_id), array_agg(c.action), array_agg(c.state), array_agg(c.token),
               array_agg(c.previous), array_agg(c.attempts)
          INTO r_msg, r_action, r_state, r_token, r_prev, r_attempts
          FROM tasker.worker_claim_steps(p_queue_name, p_worker_id, c_step, c_msg, c_corr, c_token) c;
    END IF;

    RETURN QUERY
    SELECT m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message,
           CASE WHEN h.n IS NULL THEN 'unparsed' ELSE coalesce(r.action, 'unhydratable') END,
           r.state, r.token, r.previous,
           (h.ctx).workflow_step_uuid, (h.ctx).task_uuid, (h.ctx).inputs, coalesce(r.attempts, (h.ctx).attempts),
           (h.ctx).max_attempts, (h.ctx).retryable, (h.ctx).step_name, (h.ctx).context, (h.ctx).correlation_id,
           (h.ctx).task_name, (h.ctx).task_version, (h.ctx).namespace, (h.ctx).step_definition,
           (h.ctx).dependency_results
      FROM (SELECT m.*, array_position(h_n, m.n) AS hn
              FROM unnest(m_id, m_read_ct, m_enq, m_vt, m_body) WITH ORDINALITY
                   AS m(msg_id, read_ct, enqueued_at, vt, message, n)) m
      LEFT JOIN LATERAL (SELECT m.hn AS n, h_ctx[m.hn] AS ctx) h ON true
      LEFT JOIN unnest(r_msg, r_action, r_state, r_token, r_prev, r_attempts)
                AS r(msg_id, action, state, token, previous, attempts) ON r.msg_id = m.msg_id
     ORDER BY m.msg_id;
END;
$$;
