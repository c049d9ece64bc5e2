-- The worker's claim: read, check and claim a batch of steps in one call
-- (tasker.worker_claim_next), and the pieces it is made of. Applied by
-- src/database/migrate.rs after the migrations; edit the definition here.
--
-- Planner settings. The worker's and the orchestrator's functions are declared with
-- SET plan_cache_mode = force_generic_plan and SET enable_seqscan = off (tests/migrations.rs
-- checks them; a CREATE OR REPLACE without them drops them).
-- A plpgsql statement is planned for its parameters (a custom plan) on its first five runs in
-- a session and afterwards whenever the generic plan does not look cheaper; these statements
-- reach rows by key through arrays, where a custom plan is never better and planning them
-- costs about as much as running them (BENCHMARKS.md: pickup 2.0 -> 1.4 ms).
-- A generic plan is made once per session and kept until the tables' statistics change. Made
-- while the tables are small (a worker started on a new database), it scans them whole and
-- joins by hashing, and keeps doing so as they grow, for as long as nothing ANALYZEs them: a
-- 100k-step drain fell from thousands of steps/s to a few hundred. Every row these functions
-- touch is reached through an index (primary keys, the most_recent partial index, the edge
-- indexes), so sequential scans are off for them: their plans are index plans whatever the
-- tables' size when they were made. The settings apply to the functions they call as well.
-- Turning sequential scans off does not stop a plan from walking a whole index, though: a join
-- the planner may drive from the large side (every step with results, every pending
-- transition) when the statistics say that side is nearly empty is written as
-- LATERAL (... OFFSET 0) from the few rows at hand, so each lookup is by key
-- (tests/plans_by_key.rs; BENCHMARKS.md, "Retention").
--
-- What costs inside tasker.worker_claim_next is the number of statements and the size of
-- their plans, not the rows (BENCHMARKS.md, session 4); hence the read runs the prepared
-- statement itself, each message's step is hydrated once (kept as a
-- tasker.worker_step_context value, a type of the baseline migration), and
-- tasker.worker_claim_steps writes in one statement each, skipping what is not needed.

-- What a handler gets for each step (src/worker/hydration.rs builds the StepContext from
-- these columns): the step, its task and template, the template's definition of the step
-- (by name, or by `__template_step_name` in its inputs) and the stored results of every
-- ancestor step, by name. tasker-core's schema lets attempts and max_attempts be NULL (a step
-- starts with attempts NULL; max_attempts defaults to 3 there): NULL attempts count as 0, a
-- NULL max_attempts as that default. The claim counts attempts the same way, and a NULL
-- max_attempts sets no limit on claims.
CREATE OR REPLACE FUNCTION tasker.worker_step_contexts(p_step_uuids uuid[])
RETURNS TABLE (
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb
)
LANGUAGE sql STABLE
AS $$
    SELECT ws.workflow_step_uuid, ws.task_uuid, ws.inputs, coalesce(ws.attempts, 0), coalesce(ws.max_attempts, 3),
           ws.retryable,
           ns.name::text, t.context, t.correlation_id, nt.name::text, nt.version::text, tn.name::text,
           (SELECT s FROM jsonb_array_elements(nt.configuration -> 'steps') s
             WHERE s ->> 'name' = coalesce(ws.inputs ->> '__template_step_name', ns.name)
             LIMIT 1),
           -- Each ancestor and each of its parents is looked up by key (LATERAL ... OFFSET 0
           -- keeps the planner from turning these into a scan of every step or every edge:
           -- with statistics taken while few steps had results, and none for the edges, the
           -- generic plan had walked all steps with results for every claim; see
           -- tests/plans_by_key.rs).
           (WITH RECURSIVE ancestors(step_uuid) AS (
                SELECT e.from_step_uuid FROM tasker.workflow_step_edges e
                 WHERE e.to_step_uuid = ws.workflow_step_uuid
                UNION
                SELECT p.from_step_uuid
                  FROM ancestors a
                 CROSS JOIN LATERAL (SELECT e.from_step_uuid FROM tasker.workflow_step_edges e
                                      WHERE e.to_step_uuid = a.step_uuid OFFSET 0) p)
            SELECT jsonb_object_agg(d.name, d.results)
              FROM ancestors a
             CROSS JOIN LATERAL (SELECT ans.name, aws.results
                                   FROM tasker.workflow_steps aws
                                   JOIN tasker.named_steps ans ON ans.named_step_uuid = aws.named_step_uuid
                                  WHERE aws.workflow_step_uuid = a.step_uuid AND aws.results IS NOT NULL
                                 OFFSET 0) d)
      FROM tasker.workflow_steps ws
      JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid
      JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid
      JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid
      JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid
     WHERE ws.workflow_step_uuid = ANY (p_step_uuids)
$$;

-- A StepMessage the SQL side can read: an object of exactly three keys, task_uuid, step_uuid
-- and correlation_id, each a canonical (8-4-4-4-12 hex) uuid string. So a message claimed
-- here is small and flat, and the worker always decodes it. Anything else (extra keys, deep
-- or huge values) is left to the worker's own parser, which applies the JSON limits.
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
       AND body - '{task_uuid,step_uuid,correlation_id}'::text[] = '{}'::jsonb
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

-- Claims the steps named by messages read from `queue_name` (see src/worker/step_claim.rs
-- for the rules). Row locks first, in uuid order (completions take them the same way). One
-- row per input message, its action:
--   claim        - the step is enqueued, or pending with every parent complete (or resolved
--                  manually), and this is the batch's lowest msg_id for it;
--   reclaim      - the step is in_progress through this very message (its lease lapsed);
--   exhausted    - claim or reclaim, but the step's attempts have reached max_attempts:
--                  claimed (a new in_progress transition) WITHOUT a new attempt, for the
--                  worker to fail it as max_attempts_exceeded; it never runs again;
--   duplicate    - in_progress through another message, waiting for orchestration, or a
--                  later message of this batch for the same step;
--   out_of_order - the step is not runnable: pending with a parent not complete, or
--                  waiting_for_retry, complete, error, cancelled, resolved_manually;
--   missing      - no such step, or no transition yet.
-- A claim row carries its token (the new in_progress transition) and the step's attempts.
-- Duplicate and out-of-order messages are archived. The readiness check costs nothing for
-- enqueued steps (the common case); the attempts check reads the step row already locked.
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
SET search_path = tasker, public
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
    d_attempts integer[];
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
                          WHEN c.to_state = 'in_progress' THEN
                               CASE WHEN c.metadata ->> 'queue_name' = p_queue_name
                                         AND c.metadata ->> 'msg_id' = i.msg_id::text
                                    THEN CASE WHEN coalesce(s.attempts, 0) >= s.max_attempts THEN 'exhausted' ELSE 'reclaim' END
                                    ELSE 'duplicate' END
                          WHEN c.to_state IN ('enqueued_for_orchestration', 'enqueued_as_error_for_orchestration')
                               THEN 'duplicate'
                          WHEN c.to_state NOT IN ('pending', 'enqueued') THEN 'out_of_order'
                          WHEN EXISTS (SELECT 1 FROM unnest(p_step_uuids, p_msg_ids) AS o(step_uuid, msg_id)
                                        WHERE o.step_uuid = i.step_uuid AND o.msg_id < i.msg_id) THEN 'duplicate'
                          WHEN c.to_state = 'pending'
                               AND EXISTS (SELECT 1 FROM tasker.workflow_step_edges pe
                                             LEFT JOIN tasker.workflow_step_transitions pt
                                               ON pt.workflow_step_uuid = pe.from_step_uuid AND pt.most_recent
                                            WHERE pe.to_step_uuid = i.step_uuid
                                              AND coalesce(pt.to_state, 'pending') NOT IN ('complete', 'resolved_manually'))
                               THEN 'out_of_order'
                          WHEN coalesce(s.attempts, 0) >= s.max_attempts THEN 'exhausted'
                          ELSE 'claim' END ORDER BY i.n),
           array_agg(coalesce(s.attempts, 0) ORDER BY i.n)
      INTO d_msg, d_step, d_corr, d_token, d_prev, d_state, d_sort, d_action, d_attempts
      FROM unnest(p_step_uuids, p_msg_ids, p_correlation_ids, p_tokens) WITH ORDINALITY
           AS i(step_uuid, msg_id, correlation_id, token, n)
      LEFT JOIN tasker.workflow_step_transitions c
        ON c.workflow_step_uuid = i.step_uuid AND c.most_recent
      LEFT JOIN tasker.workflow_steps s ON s.workflow_step_uuid = i.step_uuid;

    IF d_msg IS NULL THEN
        RETURN;
    END IF;

    IF d_action && ARRAY['claim', 'reclaim', 'exhausted'] THEN
        UPDATE tasker.workflow_step_transitions t
           SET most_recent = false, updated_at = now()
          FROM unnest(d_prev, d_action) AS d(prev_uuid, action)
         WHERE t.workflow_step_transition_uuid = d.prev_uuid AND d.action IN ('claim', 'reclaim', 'exhausted');

        INSERT INTO tasker.workflow_step_transitions
            (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent,
             created_at, updated_at)
        SELECT d.token, d.step_uuid, d.to_state, 'in_progress',
               jsonb_build_object(
                   'event', CASE d.action WHEN 'claim' THEN 'start' ELSE d.action END,
                   'worker_id', p_worker_id,
                   'queue_name', p_queue_name,
                   'msg_id', d.msg_id::text,
                   'correlation_id', d.correlation_id,
                   'reclaimed_from', CASE WHEN d.to_state = 'in_progress' THEN d.prev_uuid END,
                   'timestamp', clock_timestamp()),
               d.sort_key + 1, true, now(), now()
          FROM unnest(d_msg, d_step, d_corr, d_token, d_prev, d_state, d_sort, d_action)
               AS d(msg_id, step_uuid, correlation_id, token, prev_uuid, to_state, sort_key, action)
         WHERE d.action IN ('claim', 'reclaim', 'exhausted');

        WITH bumped AS (
            UPDATE tasker.workflow_steps s
               SET attempts = coalesce(s.attempts, 0) + 1, in_process = true, last_attempted_at = now(), updated_at = now()
              FROM unnest(d_step, d_action) AS d(step_uuid, action)
             WHERE s.workflow_step_uuid = d.step_uuid AND d.action IN ('claim', 'reclaim')
            RETURNING s.workflow_step_uuid, s.attempts
        )
        SELECT array_agg(b.workflow_step_uuid), array_agg(b.attempts) INTO b_step, b_attempts FROM bumped b;
    END IF;

    IF d_action && ARRAY['duplicate', 'out_of_order'] THEN
        PERFORM tasker.worker_archive(p_queue_name,
                    ARRAY(SELECT d.msg_id FROM unnest(d_msg, d_action) AS d(msg_id, action)
                           WHERE d.action IN ('duplicate', 'out_of_order')));
    END IF;

    RETURN QUERY
    SELECT d.msg_id, d.action, d.to_state,
           CASE WHEN d.action IN ('claim', 'reclaim', 'exhausted') THEN d.token END,
           d.prev_uuid,
           CASE WHEN d.action IN ('claim', 'reclaim') THEN b_attempts[array_position(b_step, d.step_uuid)]
                WHEN d.action = 'exhausted' THEN d.attempts END
      FROM unnest(d_msg, d_step, d_token, d_prev, d_state, d_action, d_attempts)
           AS d(msg_id, step_uuid, token, prev_uuid, to_state, action, attempts);
END;
$$;

-- Read, check and claim a batch of steps in one call: one round trip and one transaction
-- (committed with synchronous_commit off, as tasker.worker_claim_steps explains).
--
-- 1. Reads up to p_qty visible messages of pgmq.q_{p_queue_name}, as tasker.worker_read.
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
--      claim, reclaim, exhausted, duplicate, out_of_order, missing - as
--                     tasker.worker_claim_steps decides;
--      out_of_order - also: the step exists but belongs to another task than the
--                     message's; archived, not claimed;
--      unhydratable - not claimed; the worker retries it and dead-letters it after
--                     max_delivery_attempts reads;
--      unparsed     - the message is not three canonical uuids; not claimed; the worker
--                     parses it itself (and dead-letters it, or claims it the slow way).
--    A claimed row also carries the step's saved checkpoint (sql/functions/checkpoints.sql),
--    so a reclaimed or retried step resumes from it.
-- Its columns changed (checkpoint), which CREATE OR REPLACE cannot do.
DROP FUNCTION IF EXISTS tasker.worker_claim_next(text, text, integer, double precision, uuid[]);
CREATE FUNCTION tasker.worker_claim_next(
    p_queue_name text, p_worker_id text, p_qty integer, p_vt_seconds double precision, p_tokens uuid[])
RETURNS TABLE (
    msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb,
    action text, state text, token uuid, previous uuid,
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb, checkpoint jsonb
)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY SELECT * FROM tasker.worker_claim_read(p_queue_name, p_worker_id, p_qty, p_vt_seconds, p_tokens, false);
END;
$$;

-- tasker.worker_claim_next with the lease-only claim (tasker.worker_claim_steps_lean): a
-- claimed row's `previous` is the step's current transition, which the commit checks, and its
-- `token` the uuid the commit gives the in_progress transition.
DROP FUNCTION IF EXISTS tasker.worker_claim_next_lean(text, text, integer, double precision, uuid[]);
CREATE FUNCTION tasker.worker_claim_next_lean(
    p_queue_name text, p_worker_id text, p_qty integer, p_vt_seconds double precision, p_tokens uuid[])
RETURNS TABLE (
    msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb,
    action text, state text, token uuid, previous uuid,
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb, checkpoint jsonb
)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY SELECT * FROM tasker.worker_claim_read(p_queue_name, p_worker_id, p_qty, p_vt_seconds, p_tokens, true);
END;
$$;

-- The body of both: p_lean picks the claim.
DROP FUNCTION IF EXISTS tasker.worker_claim_read(text, text, integer, double precision, uuid[], boolean);
CREATE FUNCTION tasker.worker_claim_read(
    p_queue_name text, p_worker_id text, p_qty integer, p_vt_seconds double precision, p_tokens uuid[],
    p_lean boolean)
RETURNS TABLE (
    msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb,
    action text, state text, token uuid, previous uuid,
    workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
    retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
    task_version text, namespace text, step_definition jsonb, dependency_results jsonb, checkpoint jsonb
)
LANGUAGE plpgsql
SET search_path = tasker, public
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
    o_msg     bigint[];
    c_step  uuid[];
    c_msg   bigint[];
    c_corr  uuid[];
    c_token uuid[];
    c_read_ct integer[];
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
           array_agg(p_tokens[x.n::integer] ORDER BY x.n) FILTER (WHERE x.ok),
           array_agg(m_read_ct[x.n::integer] ORDER BY x.n) FILTER (WHERE x.ok),
           array_agg(x.msg_id) FILTER (WHERE x.other_task)
      INTO h_n, h_ctx, h_ok, c_step, c_msg, c_corr, c_token, c_read_ct, o_msg
      FROM (SELECT p.n, p.msg_id, p.step_uuid, p.correlation_id,
                   ROW(h.*)::tasker.worker_step_context AS h,
                   h.task_uuid IS NOT NULL AND h.task_uuid = p.task_uuid
                     AND tasker.worker_is_runnable_definition(h.step_definition) AS ok,
                   coalesce(h.task_uuid <> p.task_uuid, false) AS other_task
              FROM (SELECT m.msg_id, m.n,
                           (m.body ->> 'step_uuid')::uuid AS step_uuid,
                           (m.body ->> 'task_uuid')::uuid AS task_uuid,
                           (m.body ->> 'correlation_id')::uuid AS correlation_id
                      FROM unnest(m_id, m_body) WITH ORDINALITY AS m(msg_id, body, n)
                     WHERE tasker.worker_is_step_message(m.body)) p
              LEFT JOIN LATERAL (SELECT * FROM tasker.worker_step_contexts(ARRAY[p.step_uuid]) OFFSET 0) h ON true) x;

    IF o_msg IS NOT NULL THEN
        PERFORM tasker.worker_archive(p_queue_name, o_msg);
    END IF;

    IF c_step IS NOT NULL AND p_lean THEN
        SELECT array_agg(c.msg_id), array_agg(c.action), array_agg(c.state), array_agg(c.token),
               array_agg(c.previous), array_agg(c.attempts)
          INTO r_msg, r_action, r_state, r_token, r_prev, r_attempts
          FROM tasker.worker_claim_steps_lean(p_queue_name, p_worker_id, c_step, c_msg, c_read_ct, c_token) c;
    ELSIF c_step IS NOT NULL THEN
        SELECT array_agg(c.msg_id), array_agg(c.action), array_agg(c.state), array_agg(c.token),
               array_agg(c.previous), array_agg(c.attempts)
          INTO r_msg, r_action, r_state, r_token, r_prev, r_attempts
          FROM tasker.worker_claim_steps(p_queue_name, p_worker_id, c_step, c_msg, c_corr, c_token) c;
    END IF;

    RETURN QUERY
    SELECT m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message,
           CASE WHEN h.n IS NULL THEN 'unparsed'
                WHEN m.msg_id = ANY(o_msg) THEN 'out_of_order'
                ELSE coalesce(r.action, 'unhydratable') END,
           r.state, r.token, r.previous,
           (h.ctx).workflow_step_uuid, (h.ctx).task_uuid, (h.ctx).inputs, coalesce(r.attempts, (h.ctx).attempts),
           (h.ctx).max_attempts, (h.ctx).retryable, (h.ctx).step_name, (h.ctx).context, (h.ctx).correlation_id,
           (h.ctx).task_name, (h.ctx).task_version, (h.ctx).namespace, (h.ctx).step_definition,
           (h.ctx).dependency_results,
           (SELECT cs.checkpoint FROM tasker.workflow_steps cs
             WHERE r.token IS NOT NULL AND cs.workflow_step_uuid = (h.ctx).workflow_step_uuid)
      FROM (SELECT m.*, array_position(h_n, m.n) AS hn
              FROM unnest(m_id, m_read_ct, m_enq, m_vt, m_body) WITH ORDINALITY
                   AS m(msg_id, read_ct, enqueued_at, vt, message, n)) m
      LEFT JOIN LATERAL (SELECT m.hn AS n, h_ctx[m.hn] AS ctx) h ON true
      LEFT JOIN unnest(r_msg, r_action, r_state, r_token, r_prev, r_attempts)
                AS r(msg_id, action, state, token, previous, attempts) ON r.msg_id = m.msg_id
     ORDER BY m.msg_id;
END;
$$;

-- The lease-only claim (worker.lean_claim = true; issue 19). The same decisions as
-- tasker.worker_claim_steps, but the claim writes no transition: the step keeps its current
-- transition (`enqueued`, or `pending` with every parent complete) while it runs, and the claim
-- is the message's lease itself, named by (queue, msg_id, read_ct) and the step's current
-- transition (`previous` in the result). The only row written is the step's: attempts + 1,
-- in_process = true, last_attempted_at (a step that crashes its worker on every attempt still
-- runs out of attempts and is failed as max_attempts_exceeded). tasker.worker_commit_results_lean
-- commits a result only while the message is still in the queue with that read_ct (a later
-- read after the lease lapsed raised it) and the step's current transition is still `previous`
-- (nothing else moved the step meanwhile), and writes the `in_progress` transition there,
-- with the result, so tasker-core's orchestrator finds the rows it always finds.
-- Telling a reclaim from a duplicate without a claim row: a step held (in_process, claimed
-- since its current transition: last_attempted_at >= its created_at) through a message read
-- for the first time (read_ct 1) is held through another message: duplicate; read before
-- (read_ct > 1): its lease lapsed, reclaim. A step moved since its last claim (an operator's
-- retry, say, after a result that was then stale) is not held, whatever in_process says. A duplicate misjudged as a reclaim (a message
-- for the held step read before and left, e.g. as missing) only runs twice: the commits' checks
-- let at most one of the two results count. A step `in_progress` by the transition claim
-- (a worker without lean_claim) is claimed as before: reclaim through its own message, else
-- duplicate; the lean commit then writes no second in_progress row.
CREATE OR REPLACE FUNCTION tasker.worker_claim_steps_lean(
    p_queue_name      text,
    p_worker_id       text,
    p_step_uuids      uuid[],
    p_msg_ids         bigint[],
    p_read_cts        integer[],
    p_tokens          uuid[]
)
RETURNS TABLE (msg_id bigint, action text, state text, token uuid, previous uuid, attempts integer)
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    d_msg     bigint[];
    d_step    uuid[];
    d_token   uuid[];
    d_prev    uuid[];
    d_state   text[];
    d_action  text[];
    d_attempts integer[];
    b_step    uuid[];
    b_attempts integer[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM tasker.workflow_steps s
     WHERE s.workflow_step_uuid = ANY(p_step_uuids)
     ORDER BY s.workflow_step_uuid
       FOR UPDATE;

    SELECT array_agg(i.msg_id ORDER BY i.n), array_agg(i.step_uuid ORDER BY i.n),
           array_agg(i.token ORDER BY i.n),
           array_agg(c.workflow_step_transition_uuid ORDER BY i.n), array_agg(c.to_state ORDER BY i.n),
           array_agg(CASE WHEN c.to_state IS NULL THEN 'missing'
                          WHEN c.to_state = 'in_progress' THEN
                               CASE WHEN c.metadata ->> 'queue_name' = p_queue_name
                                         AND c.metadata ->> 'msg_id' = i.msg_id::text
                                    THEN CASE WHEN coalesce(s.attempts, 0) >= s.max_attempts THEN 'exhausted' ELSE 'reclaim' END
                                    ELSE 'duplicate' END
                          WHEN c.to_state IN ('enqueued_for_orchestration', 'enqueued_as_error_for_orchestration')
                               THEN 'duplicate'
                          WHEN c.to_state NOT IN ('pending', 'enqueued') THEN 'out_of_order'
                          WHEN EXISTS (SELECT 1 FROM unnest(p_step_uuids, p_msg_ids) AS o(step_uuid, msg_id)
                                        WHERE o.step_uuid = i.step_uuid AND o.msg_id < i.msg_id) THEN 'duplicate'
                          WHEN s.in_process AND s.last_attempted_at >= c.created_at
                               AND coalesce(i.read_ct, 1) <= 1 THEN 'duplicate'
                          WHEN c.to_state = 'pending'
                               AND EXISTS (SELECT 1 FROM tasker.workflow_step_edges pe
                                             LEFT JOIN tasker.workflow_step_transitions pt
                                               ON pt.workflow_step_uuid = pe.from_step_uuid AND pt.most_recent
                                            WHERE pe.to_step_uuid = i.step_uuid
                                              AND coalesce(pt.to_state, 'pending') NOT IN ('complete', 'resolved_manually'))
                               THEN 'out_of_order'
                          WHEN coalesce(s.attempts, 0) >= s.max_attempts THEN 'exhausted'
                          WHEN s.in_process AND s.last_attempted_at >= c.created_at THEN 'reclaim'
                          ELSE 'claim' END ORDER BY i.n),
           array_agg(coalesce(s.attempts, 0) ORDER BY i.n)
      INTO d_msg, d_step, d_token, d_prev, d_state, d_action, d_attempts
      FROM unnest(p_step_uuids, p_msg_ids, p_read_cts, p_tokens) WITH ORDINALITY
           AS i(step_uuid, msg_id, read_ct, token, n)
      LEFT JOIN tasker.workflow_step_transitions c
        ON c.workflow_step_uuid = i.step_uuid AND c.most_recent
      LEFT JOIN tasker.workflow_steps s ON s.workflow_step_uuid = i.step_uuid;

    IF d_msg IS NULL THEN
        RETURN;
    END IF;

    IF d_action && ARRAY['claim', 'reclaim'] THEN
        WITH bumped AS (
            UPDATE tasker.workflow_steps s
               SET attempts = coalesce(s.attempts, 0) + 1, in_process = true, last_attempted_at = now(), updated_at = now()
              FROM unnest(d_step, d_action) AS d(step_uuid, action)
             WHERE s.workflow_step_uuid = d.step_uuid AND d.action IN ('claim', 'reclaim')
            RETURNING s.workflow_step_uuid, s.attempts
        )
        SELECT array_agg(b.workflow_step_uuid), array_agg(b.attempts) INTO b_step, b_attempts FROM bumped b;
    END IF;

    IF d_action && ARRAY['duplicate', 'out_of_order'] THEN
        PERFORM tasker.worker_archive(p_queue_name,
                    ARRAY(SELECT d.msg_id FROM unnest(d_msg, d_action) AS d(msg_id, action)
                           WHERE d.action IN ('duplicate', 'out_of_order')));
    END IF;

    RETURN QUERY
    SELECT d.msg_id, d.action, d.to_state,
           CASE WHEN d.action IN ('claim', 'reclaim', 'exhausted') THEN d.token END,
           d.prev_uuid,
           CASE WHEN d.action IN ('claim', 'reclaim') THEN b_attempts[array_position(b_step, d.step_uuid)]
                WHEN d.action = 'exhausted' THEN d.attempts END
      FROM unnest(d_msg, d_step, d_token, d_prev, d_state, d_action, d_attempts)
           AS d(msg_id, step_uuid, token, prev_uuid, to_state, action, attempts);
END;
$$;
