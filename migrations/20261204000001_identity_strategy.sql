-- tasker-core's `named_tasks.identity_strategy` (their type, nullability and default), which
-- their orchestrator selects: how a task's identity_hash is made when it is created (see
-- src/orchestration/task_initializer.rs). Not run on tasker-core's own schema, which has it.
DO $$
BEGIN
    CREATE TYPE tasker.identity_strategy AS ENUM ('strict', 'caller_provided', 'always_unique');
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$;

ALTER TABLE tasker.named_tasks
    ADD COLUMN IF NOT EXISTS identity_strategy tasker.identity_strategy NOT NULL DEFAULT 'strict';
