-- The dashboard (issue 18, lib/tasker_worker/web.rb) with 100k tasks and more: the tasks page
-- pages newest first by (created_at, task_uuid); the overview counts step transitions of the
-- last hour by created_at.
CREATE INDEX IF NOT EXISTS tasks_created_at_uuid_idx ON tasker.tasks (created_at DESC, task_uuid DESC);
CREATE INDEX IF NOT EXISTS workflow_step_transitions_created_at_idx
    ON tasker.workflow_step_transitions (created_at);
CREATE INDEX IF NOT EXISTS task_transitions_task_created_idx ON tasker.task_transitions (task_uuid, created_at);
