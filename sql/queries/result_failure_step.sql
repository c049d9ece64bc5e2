-- A failure result: the step and its current transition (src/orchestration/result_processor.rs: apply).
-- NULL attempts / max_attempts (tasker-core's schema allows both) count as 0, as their
-- orchestrator's retry rule counts them (COALESCE(attempts,0) >= COALESCE(max_attempts,0)).
-- The last column is the template step (a batch worker's is its __template_step_name).
SELECT ns.name, coalesce(ws.attempts, 0), coalesce(ws.max_attempts, 0), ws.retryable, ws.results, tr.to_state, tr.sort_key,
       coalesce(ws.inputs ->> '__template_step_name', ns.name)
FROM tasker.workflow_steps ws
JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid
JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent
WHERE ws.workflow_step_uuid = $1 AND ws.task_uuid = $2
