-- What tasker_worker needs in a database whose `tasker` schema was made by tasker-core's own
-- migrations, in place of our baseline migration (which would re-create their tables). Only
-- objects of our own: nothing here creates, alters or drops a table of theirs. Each statement
-- is idempotent; the migration runner (src/database/migrate.rs) applies this file once and
-- records the baseline version as `tasker_core_schema`.

-- Messages the worker could not run and will not retry (the baseline's definition; the
-- `replayed_at` column and the second index come from migration 20261202000001, which runs
-- on both kinds of database).
CREATE TABLE IF NOT EXISTS tasker.dead_letters (
    dead_letter_uuid uuid PRIMARY KEY,
    queue_name       text NOT NULL,
    msg_id           bigint NOT NULL,
    read_ct          integer NOT NULL,
    message          jsonb,
    reason           text NOT NULL,
    worker_id        text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_queue_created_idx ON tasker.dead_letters (queue_name, created_at);

DO $$
BEGIN
    IF to_regtype('tasker.worker_step_context') IS NULL THEN
        CREATE TYPE tasker.worker_step_context AS (
            workflow_step_uuid uuid, task_uuid uuid, inputs jsonb, attempts integer, max_attempts integer,
            retryable boolean, step_name text, context jsonb, correlation_id uuid, task_name text,
            task_version text, namespace text, step_definition jsonb, dependency_results jsonb
        );
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS tasker.schema_functions (
    file_name  text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
