-- Retention: what finds finished tasks by age (tasker.retention_candidates,
-- sql/functions/retention.sql), and per-table autovacuum settings for the tables a drain
-- churns, so they stay small and their indexes clean under a sustained drain instead of
-- waiting for the default 20 % of a large table to be dead. The same settings for each
-- queue's q_/a_ tables are set where queues are created (tasker.retention_queue_settings);
-- here for the queues that exist already. They apply only where autovacuum runs.

CREATE INDEX task_transitions_retention_idx
    ON tasker.task_transitions (to_state, created_at) WHERE most_recent;

-- Updated (most_recent, state, attempts, results) for every step: vacuum after 1 % of the
-- rows plus 1000 are dead, and after as many inserts.
ALTER TABLE tasker.tasks SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE tasker.workflow_steps SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE tasker.workflow_step_transitions SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE tasker.task_transitions SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

DO $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT queue_name FROM pgmq.meta WHERE NOT is_partitioned LOOP
        EXECUTE format('ALTER TABLE pgmq.%I SET (autovacuum_vacuum_scale_factor = 0,'
                       ' autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0,'
                       ' autovacuum_vacuum_insert_threshold = 1000, autovacuum_analyze_scale_factor = 0.05,'
                       ' autovacuum_vacuum_cost_delay = 0)', 'q_' || q);
        EXECUTE format('ALTER TABLE pgmq.%I SET (autovacuum_vacuum_scale_factor = 0.02,'
                       ' autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0.02,'
                       ' autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0.05,'
                       ' autovacuum_vacuum_cost_delay = 0)', 'a_' || q);
    END LOOP;
END
$$;
