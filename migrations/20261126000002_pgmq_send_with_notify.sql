-- Sending with a wake-up. `tasker.pgmq_send_with_notify` keeps tasker-core's name and
-- signature (its orchestrator calls it unqualified). A notification is only a hint: the
-- receiver still reads the queue, and a fallback poller covers lost notifications.

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

CREATE OR REPLACE FUNCTION tasker.pgmq_send_with_notify(
    queue_name    text,
    message       jsonb,
    delay_seconds integer DEFAULT 0
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_msg_id bigint;
    ns         text := tasker.extract_queue_namespace(queue_name);
    ready_at   timestamptz := clock_timestamp() + make_interval(secs => coalesce(delay_seconds, 0));
    payload    text;
BEGIN
    SELECT pgmq.send(queue_name, message, coalesce(delay_seconds, 0)) INTO new_msg_id;

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
$$;
