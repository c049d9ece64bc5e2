-- A failure result: the task (correlation id, template, current state), under its row
-- lock (src/orchestration/result_processor.rs: process_failure).
SELECT t.correlation_id, nt.configuration, tt.to_state FROM tasker.tasks t
JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid
JOIN tasker.task_transitions tt ON tt.task_uuid = t.task_uuid AND tt.most_recent
WHERE t.task_uuid = $1
