-- A success result for a message known from its notification, taken by locking its row
-- (src/orchestration/result_processor.rs: COMPLETE_NOTIFIED_SQL).
SELECT o.outcome, o.task_state
FROM (SELECT msg_id FROM pgmq.q_orchestration_step_results
WHERE msg_id = $1 AND vt <= clock_timestamp() FOR UPDATE SKIP LOCKED) q
CROSS JOIN LATERAL tasker.orchestrator_complete_step(q.msg_id, $2, $3, $4) o
