-- Sending with a wake-up, and the worker's prepared queue reads and archives.
-- Applied by src/database/migrate.rs after the migrations; edit the definition here.

-- The namespace a queue belongs to, used for the channel name:
-- orchestration* -> orchestration; worker_X_queue -> X; X_queue -> X; else default.
CREATE OR REPLACE FUNCTION tasker.extract_queue_namespace(queue_name text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
AS $$
    SELECT CASE
        WHEN queue_name ~ '^orchestration' THEN 'orchestration'
        WHEN queue_name ~ '^worker_.+_queue$' THEN substring(queue_name FROM '^worker_(.+?)_queue$')
        WHEN queue_name ~ '^.+_queue$' THEN substring(queue_name FROM '^(.+?)_queue$')
        ELSE 'default'
    END
$$;

-- NOTIFY payloads are limited to 8000 bytes; above this size the message body is left out
-- and the receiver reads it from the queue as it always does.
CREATE OR REPLACE FUNCTION tasker.pgmq_payload_size_threshold()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 7000 $$;

-- Prepares the send to pgmq.q_{p_queue_name} for this session (tasker_send_{p_queue_name})
-- unless it is prepared already; returns the statement's name, or NULL for a queue name this
-- project would not create (the caller sends through pgmq.send then). The INSERT is the one
-- pgmq.send runs (vt, message; headers keep their default), which pgmq.send builds and plans
-- on every call: about 48 us against 11 us in a loop, 118 us in a workflow's commit
-- (BENCHMARKS.md, session 14). The queue must exist, as for pgmq.send.
CREATE OR REPLACE FUNCTION tasker.worker_prepare_send(p_queue_name text)
RETURNS text
LANGUAGE plpgsql
SET search_path = tasker, public
AS $$
DECLARE
    send_statement text := 'tasker_send_' || p_queue_name;  -- at most 59 characters
BEGIN
    IF p_queue_name IS NULL OR p_queue_name !~ '^[a-z0-9_]{1,47}$' THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements ps WHERE ps.name = send_statement) THEN
        EXECUTE format(
            'PREPARE %1$I(jsonb, integer) AS '
            'INSERT INTO pgmq.%2$I (vt, message) '
            'VALUES (clock_timestamp() + make_interval(secs => $2), $1) RETURNING msg_id',
            send_statement, 'q_' || p_queue_name);
    END IF;
    RETURN send_statement;
END;
$$;

-- pgmq.send (through tasker.worker_prepare_send's statement) plus a notification on
-- pgmq_message_ready.{namespace}. Keeps tasker-core's name
-- and signature (its orchestrator calls it unqualified). A notification is only a hint: the
-- receiver still reads the queue, and a fallback poller covers lost notifications.
--
-- On a database whose `tasker` schema tasker-core's migrations made, their own function of this
-- name and signature is kept (their orchestrator and ours both send through it, and its
-- notifications are a superset of ours); ours is installed everywhere else, marked by the
-- comment 'tasker_worker' so that a later migrate replaces only its own definition.
DO $install$
DECLARE
    existing regprocedure := to_regprocedure('tasker.pgmq_send_with_notify(text, jsonb, integer)');
BEGIN
    IF existing IS NOT NULL
       AND coalesce(obj_description(existing, 'pg_proc'), '') <> 'tasker_worker'
       AND EXISTS (SELECT 1 FROM tasker.tasker_worker_migrations WHERE mode = 'tasker_core_schema')
    THEN
        RETURN;
    END IF;
    EXECUTE $definition$
CREATE OR REPLACE FUNCTION tasker.pgmq_send_with_notify(
    queue_name    text,
    message       jsonb,
    delay_seconds integer DEFAULT 0
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = tasker, public
AS $$
DECLARE
    new_msg_id bigint;
    ns         text := tasker.extract_queue_namespace(queue_name);
    ready_at   timestamptz := clock_timestamp() + make_interval(secs => coalesce(delay_seconds, 0));
    payload    text;
    send_statement text;
BEGIN
    send_statement := tasker.worker_prepare_send(queue_name);
    IF send_statement IS NULL THEN
        SELECT pgmq.send(queue_name, message, coalesce(delay_seconds, 0)) INTO new_msg_id;
    ELSE
        EXECUTE format('EXECUTE %I(%L, %s)', send_statement, message, coalesce(delay_seconds, 0)) INTO new_msg_id;
    END IF;

    payload := json_build_object(
        'event_type', 'message_with_payload',
        'msg_id', new_msg_id,
        'queue_name', queue_name,
        'namespace', ns,
        'message', message,
        'ready_at', ready_at,
        'delay_seconds', coalesce(delay_seconds, 0))::text;

    IF length(payload) > tasker.pgmq_payload_size_threshold() THEN
        payload := json_build_object(
            'event_type', 'message_ready',
            'msg_id', new_msg_id,
            'queue_name', queue_name,
            'namespace', ns,
            'ready_at', ready_at,
            'delay_seconds', coalesce(delay_seconds, 0),
            'payload_omitted', true)::text;
    END IF;

    PERFORM pg_notify('pgmq_message_ready.' || ns, payload);
    RETURN new_msg_id;
END;
$$
$definition$;
    COMMENT ON FUNCTION tasker.pgmq_send_with_notify(text, jsonb, integer) IS 'tasker_worker';
END
$install$;

-- Prepares the read of pgmq.q_{p_queue_name} for this session (tasker_read_{p_queue_name})
-- unless it is prepared already; returns the statement's name. Planning the read on every
-- call, as pgmq.read does, costs three times what running it does. The rows to update are
-- found by key (= ANY): a join to the CTE would be planned, generically, for an unknown
-- LIMIT, as a hash join over a scan of the whole queue table.
CREATE OR REPLACE FUNCTION tasker.worker_prepare_read(p_queue_name text)
RETURNS text
LANGUAGE plpgsql
SET search_path = tasker, public
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

-- Reads up to p_qty visible messages of pgmq.q_{p_queue_name} and hides them for
-- p_vt_seconds, as pgmq.read does (lowest ids first, FOR UPDATE SKIP LOCKED, read_ct + 1, vt
-- and, where the queue table has it, last_read_at); rows in msg_id order. Runs the statement
-- tasker.worker_prepare_read prepares. The read commits with synchronous_commit off: a lease
-- lost in a server crash only means the message is read again. (Called inside a larger
-- transaction, that transaction's commit is asynchronous too.) Generic plans without
-- sequential scans: see the header of worker_claim.sql.
CREATE OR REPLACE FUNCTION tasker.worker_read(
    p_queue_name text,
    p_qty        integer,
    p_vt_seconds double precision
)
RETURNS TABLE (msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz, message jsonb)
LANGUAGE plpgsql
SET search_path = tasker, public
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

-- Moves the given messages of pgmq.q_{p_queue_name} to pgmq.a_{p_queue_name}, as
-- pgmq.archive does (every column the two tables share, archived_at by its default);
-- returns the ids that were still in the queue. Prepared once per session and queue
-- (tasker_archive_{p_queue_name}) rather than planned on every call.
CREATE OR REPLACE FUNCTION tasker.worker_archive(p_queue_name text, p_msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = tasker, public
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
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
