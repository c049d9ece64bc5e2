-- The dashboard's activity figures (src/operations.rs, activity) count the step transitions
-- of the last hour to `complete` and `error`, and nothing else reads step transitions by
-- created_at. The index 20261203000002 made over every transition's created_at cost each
-- step three to four WAL records on the worker's hot path (its `in_progress` and
-- `enqueued_for_orchestration` rows, and their retire updates, never match that query);
-- this one holds only the rows the query reads (BENCHMARKS.md, session 12).
CREATE INDEX IF NOT EXISTS workflow_step_transitions_activity_idx
    ON tasker.workflow_step_transitions (created_at)
 WHERE to_state IN ('complete', 'error');
DROP INDEX IF EXISTS tasker.workflow_step_transitions_created_at_idx;
