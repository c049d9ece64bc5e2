-- Claims a batch of messages the slow way (src/worker/step_claim.rs: claim_batch).
SELECT msg_id, action, state, token, previous, attempts
FROM tasker.worker_claim_steps($1, $2, $3, $4, $5, $6)
