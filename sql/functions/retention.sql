-- Retention: deleting finished tasks (with every row keyed on them) and old PGMQ archive
-- rows, in batches, called by src/retention.rs; and the autovacuum settings of a queue's
-- tables, called where queues are created (src/messaging/client.rs). Applied by
-- src/database/migrate.rs after the migrations; edit the definitions here.
--
-- What goes with a task: its task_transitions, its workflow_steps, their
-- workflow_step_transitions and every workflow_step_edges row touching them. Not deleted with
-- it: dead letters (tasker.dead_letters, kept for people to inspect; they hold a copy of the
-- message, no key) and the PGMQ messages about it, which age out of the archive tables on
-- their own clock (p_archive_after of tasker.retention_prune_archive).
--
-- Locks: candidate tasks' rows FOR UPDATE SKIP LOCKED (a task an operation or the
-- orchestrator holds is left for a later batch, never waited for), then the candidates are
-- checked again under the lock, so a task retried or reopened meanwhile is kept.

-- Task states that end a task, as the two retention ages group them.
CREATE OR REPLACE FUNCTION tasker.retention_states(p_kind text)
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_kind
        WHEN 'completed' THEN ARRAY['complete', 'resolved_manually']
        WHEN 'failed' THEN ARRAY['blocked_by_failures', 'error', 'cancelled']
    END
$$;

-- True when none of p_task's steps is still with a worker or on its way to the
-- orchestrator (a cancelled task's step may still be running).
CREATE OR REPLACE FUNCTION tasker.retention_steps_at_rest(p_task uuid)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1
          FROM tasker.workflow_steps ws
          JOIN tasker.workflow_step_transitions wst
            ON wst.workflow_step_uuid = ws.workflow_step_uuid AND wst.most_recent
         WHERE ws.task_uuid = p_task
           AND wst.to_state IN ('enqueued', 'in_progress', 'enqueued_for_orchestration',
                                'enqueued_as_error_for_orchestration'))
$$;

-- Up to p_limit tasks whose most recent transition is one of p_states and older than
-- p_older_than_seconds, with their steps at rest; p_only, when given, narrows them to those
-- tasks. Uses task_transitions_retention_idx (to_state, created_at) WHERE most_recent.
CREATE OR REPLACE FUNCTION tasker.retention_candidates(
    p_states             text[],
    p_older_than_seconds bigint,
    p_limit              integer,
    p_only               uuid[] DEFAULT NULL
)
RETURNS SETOF uuid
LANGUAGE sql STABLE AS $$
    SELECT tt.task_uuid
      FROM tasker.task_transitions tt
     WHERE tt.most_recent
       AND tt.to_state = ANY (p_states)
       AND tt.created_at < now() - make_interval(secs => p_older_than_seconds)
       AND (p_only IS NULL OR tt.task_uuid = ANY (p_only))
       AND tasker.retention_steps_at_rest(tt.task_uuid)
     LIMIT p_limit
$$;

-- Deletes one batch (at most p_batch_size tasks) of the tasks tasker.retention_candidates
-- names, with their rows; returns the rows deleted per table. Fewer than p_batch_size tasks
-- deleted means nothing more was eligible (or the rest was locked).
CREATE OR REPLACE FUNCTION tasker.retention_prune_tasks(
    p_states             text[],
    p_older_than_seconds bigint,
    p_batch_size         integer
)
RETURNS TABLE (table_name text, deleted bigint)
LANGUAGE plpgsql SET search_path = tasker, public AS $$
DECLARE
    v_locked uuid[];
    v_tasks  uuid[];
    v_steps  uuid[];
    v_n      bigint;
BEGIN
    SELECT coalesce(array_agg(l.task_uuid), '{}') INTO v_locked
      FROM (SELECT t.task_uuid
              FROM tasker.tasks t
             WHERE t.task_uuid IN (SELECT tasker.retention_candidates(p_states, p_older_than_seconds, p_batch_size))
               FOR UPDATE OF t SKIP LOCKED) l;
    -- Again under the lock (a new snapshot): a task changed between the two is kept.
    SELECT coalesce(array_agg(c), '{}') INTO v_tasks
      FROM tasker.retention_candidates(p_states, p_older_than_seconds, p_batch_size, v_locked) c;
    SELECT coalesce(array_agg(ws.workflow_step_uuid), '{}') INTO v_steps
      FROM tasker.workflow_steps ws WHERE ws.task_uuid = ANY (v_tasks);

    DELETE FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = ANY (v_steps);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    table_name := 'tasker.workflow_step_transitions'; deleted := v_n; RETURN NEXT;
    DELETE FROM tasker.workflow_step_edges
     WHERE from_step_uuid = ANY (v_steps) OR to_step_uuid = ANY (v_steps);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    table_name := 'tasker.workflow_step_edges'; deleted := v_n; RETURN NEXT;
    DELETE FROM tasker.workflow_steps WHERE workflow_step_uuid = ANY (v_steps);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    table_name := 'tasker.workflow_steps'; deleted := v_n; RETURN NEXT;
    DELETE FROM tasker.task_transitions WHERE task_uuid = ANY (v_tasks);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    table_name := 'tasker.task_transitions'; deleted := v_n; RETURN NEXT;
    DELETE FROM tasker.tasks WHERE task_uuid = ANY (v_tasks);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    table_name := 'tasker.tasks'; deleted := v_n; RETURN NEXT;
END
$$;

-- What tasker.retention_prune_tasks would delete, in total, per table (a dry run).
CREATE OR REPLACE FUNCTION tasker.retention_count_tasks(
    p_states             text[],
    p_older_than_seconds bigint
)
RETURNS TABLE (table_name text, deleted bigint)
LANGUAGE sql STABLE AS $$
    WITH t AS (SELECT tasker.retention_candidates(p_states, p_older_than_seconds, 2147483647) AS task_uuid),
         s AS (SELECT ws.workflow_step_uuid FROM tasker.workflow_steps ws JOIN t USING (task_uuid))
    SELECT 'tasker.workflow_step_transitions',
           (SELECT count(*) FROM tasker.workflow_step_transitions WHERE workflow_step_uuid IN (SELECT * FROM s))
    UNION ALL
    SELECT 'tasker.workflow_step_edges',
           (SELECT count(*) FROM tasker.workflow_step_edges
             WHERE from_step_uuid IN (SELECT * FROM s) OR to_step_uuid IN (SELECT * FROM s))
    UNION ALL SELECT 'tasker.workflow_steps', (SELECT count(*) FROM s)
    UNION ALL
    SELECT 'tasker.task_transitions',
           (SELECT count(*) FROM tasker.task_transitions WHERE task_uuid IN (SELECT * FROM t))
    UNION ALL SELECT 'tasker.tasks', (SELECT count(*) FROM t)
$$;

-- Deletes (or, with p_dry_run, counts) up to p_batch_size rows of queue p_queue's archive
-- table archived more than p_older_than_seconds ago. Uses PGMQ's archived_at index.
CREATE OR REPLACE FUNCTION tasker.retention_prune_archive(
    p_queue              text,
    p_older_than_seconds bigint,
    p_batch_size         integer,
    p_dry_run            boolean
)
RETURNS bigint
LANGUAGE plpgsql SET search_path = tasker, public AS $$
DECLARE
    v_table text := 'a_' || p_queue;
    v_n     bigint;
BEGIN
    IF p_dry_run THEN
        EXECUTE format('SELECT count(*) FROM pgmq.%I WHERE archived_at < now() - make_interval(secs => $1)', v_table)
           INTO v_n USING p_older_than_seconds;
    ELSE
        EXECUTE format(
            'WITH d AS (DELETE FROM pgmq.%1$I WHERE msg_id IN (SELECT msg_id FROM pgmq.%1$I'
            ' WHERE archived_at < now() - make_interval(secs => $1) LIMIT $2) RETURNING 1)'
            ' SELECT count(*) FROM d', v_table)
           INTO v_n USING p_older_than_seconds, p_batch_size;
    END IF;
    RETURN v_n;
END
$$;

-- Per-table autovacuum settings for queue p_queue's tables: vacuum after a fixed number of
-- dead rows rather than a fraction of the table (a busy queue's table is small but churns),
-- and the archive (large: only inserted into and pruned) after a small fraction of its rows
-- changed or inserted, with no cost delay, so a sustained drain does not leave the read scanning dead index
-- entries. Applies only where autovacuum runs.
CREATE OR REPLACE FUNCTION tasker.retention_queue_settings(p_queue text)
RETURNS void
LANGUAGE plpgsql SET search_path = tasker, public AS $$
BEGIN
    EXECUTE format('ALTER TABLE pgmq.%I SET (autovacuum_vacuum_scale_factor = 0,'
                   ' autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0,'
                   ' autovacuum_vacuum_insert_threshold = 1000, autovacuum_analyze_scale_factor = 0.05,'
                   ' autovacuum_vacuum_cost_delay = 0)', 'q_' || p_queue);
    EXECUTE format('ALTER TABLE pgmq.%I SET (autovacuum_vacuum_scale_factor = 0.02,'
                   ' autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0.02,'
                   ' autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0.05,'
                   ' autovacuum_vacuum_cost_delay = 0)', 'a_' || p_queue);
END
$$;
