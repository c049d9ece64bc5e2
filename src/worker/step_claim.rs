//! Claiming steps, a batch per transaction.
//!
//! A claim is a new `in_progress` transition; its uuid is the claim token that the
//! completion must present. The partial unique index on `most_recent` transitions makes it
//! atomic, and the step rows are locked first (in uuid order, as the completion processor
//! does) so a claim never races a completion of the same step.
//!
//! For each message the current state decides:
//! - `pending` / `enqueued` → claim (attempts + 1);
//! - `in_progress` claimed through this same message → its lease lapsed: reclaim (attempts + 1,
//!   the new transition names the previous claim);
//! - `in_progress` through another message, or any later state → duplicate: archive it, run
//!   nothing.

use crate::error::TaskerResult;
use crate::messaging::{self, StepMessage};
use serde_json::json;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Proof that this worker holds a step: the transition it inserted, and the message it
/// must archive when the result commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub token: Uuid,
    pub step_uuid: Uuid,
    pub task_uuid: Uuid,
    pub correlation_id: Uuid,
    pub queue_name: Arc<str>,
    pub msg_id: i64,
    /// The attempt this claim starts (1 for the first).
    pub attempts: i32,
    /// The claim this one replaced after its lease lapsed.
    pub reclaimed_from: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Claimed(Claim),
    /// The step is already held through another message, or past execution; the message was
    /// archived.
    Duplicate {
        state: String,
    },
    /// No such step (or no transition yet); the message is left for a later read.
    Missing,
}

/// A message to claim: its id in `queue_name` and the step it names.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    pub msg_id: i64,
    pub message: StepMessage,
}

const LOCK_STEPS_SQL: &str = "SELECT workflow_step_uuid FROM tasker.workflow_steps \
     WHERE workflow_step_uuid = ANY($1) ORDER BY workflow_step_uuid FOR UPDATE";

const DECIDE_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS i(step_uuid, msg_id)
), cur AS (
    SELECT t.workflow_step_uuid, t.workflow_step_transition_uuid, t.to_state, t.sort_key, t.metadata
      FROM tasker.workflow_step_transitions t
     WHERE t.most_recent AND t.workflow_step_uuid = ANY($1)
), decided AS (
    SELECT i.step_uuid, i.msg_id, c.workflow_step_transition_uuid AS prev_uuid, c.to_state, c.sort_key,
           CASE WHEN c.to_state IS NULL THEN 'missing'
                WHEN c.to_state IN ('pending', 'enqueued') THEN 'claim'
                WHEN c.to_state = 'in_progress'
                     AND c.metadata ->> 'queue_name' = $3
                     AND c.metadata ->> 'msg_id' = i.msg_id::text THEN 'reclaim'
                ELSE 'duplicate' END AS action
      FROM input i LEFT JOIN cur c ON c.workflow_step_uuid = i.step_uuid
), flipped AS (
    UPDATE tasker.workflow_step_transitions t SET most_recent = false, updated_at = now()
      FROM decided d
     WHERE d.action IN ('claim', 'reclaim') AND t.workflow_step_transition_uuid = d.prev_uuid
)
SELECT step_uuid, prev_uuid, to_state, sort_key, action FROM decided
"#;

const INSERT_CLAIMS_SQL: &str = r#"
WITH claims AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::jsonb[])
        AS c(token, step_uuid, from_state, sort_key, metadata)
), inserted AS (
    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent)
    SELECT token, step_uuid, from_state, 'in_progress', metadata, sort_key + 1, true FROM claims
)
UPDATE tasker.workflow_steps s
   SET attempts = s.attempts + 1, in_process = true, last_attempted_at = now(), updated_at = now()
  FROM claims c
 WHERE s.workflow_step_uuid = c.step_uuid
RETURNING s.workflow_step_uuid, s.attempts
"#;

/// Claims a batch of messages read from `queue_name`, in one transaction. The outcomes are
/// in the order of `requests`. Two requests for one step: the first decides, the others come
/// back `Missing` (left under their lease; a later read sorts them out).
pub async fn claim_batch(
    pool: &PgPool,
    queue_name: &Arc<str>,
    worker_id: &str,
    requests: &[ClaimRequest],
) -> TaskerResult<Vec<ClaimOutcome>> {
    let mut seen = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        seen.entry(r.message.step_uuid).or_insert(i);
    }
    let firsts: Vec<&ClaimRequest> = requests
        .iter()
        .enumerate()
        .filter(|(i, r)| seen[&r.message.step_uuid] == *i)
        .map(|(_, r)| r)
        .collect();
    let step_uuids: Vec<Uuid> = firsts.iter().map(|r| r.message.step_uuid).collect();
    let msg_ids: Vec<i64> = firsts.iter().map(|r| r.msg_id).collect();

    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_STEPS_SQL)
        .bind(&step_uuids)
        .execute(&mut *tx)
        .await?;
    let decisions = sqlx::query(DECIDE_SQL)
        .bind(&step_uuids)
        .bind(&msg_ids)
        .bind(queue_name.as_ref())
        .fetch_all(&mut *tx)
        .await?;

    let mut by_step: HashMap<Uuid, ClaimOutcome> = HashMap::with_capacity(decisions.len());
    let (mut tokens, mut claim_steps, mut from_states, mut sort_keys, mut metadata) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut duplicate_msg_ids = Vec::new();
    for row in &decisions {
        let step_uuid: Uuid = row.try_get("step_uuid")?;
        let action: String = row.try_get("action")?;
        let state: Option<String> = row.try_get("to_state")?;
        let request = firsts[step_uuids
            .iter()
            .position(|s| *s == step_uuid)
            .unwrap_or_default()];
        match action.as_str() {
            "claim" | "reclaim" => {
                let token = Uuid::now_v7();
                let prev: Uuid = row.try_get("prev_uuid")?;
                let reclaimed_from = (action == "reclaim").then_some(prev);
                tokens.push(token);
                claim_steps.push(step_uuid);
                from_states.push(state.unwrap_or_default());
                sort_keys.push(row.try_get::<i32, _>("sort_key")?);
                metadata.push(json!({
                    "event": if reclaimed_from.is_some() { "reclaim" } else { "start" },
                    "worker_id": worker_id,
                    "queue_name": queue_name.as_ref(),
                    "msg_id": request.msg_id.to_string(),
                    "correlation_id": request.message.correlation_id,
                    "reclaimed_from": reclaimed_from,
                    "timestamp": chrono::Utc::now(),
                }));
                by_step.insert(
                    step_uuid,
                    ClaimOutcome::Claimed(Claim {
                        token,
                        step_uuid,
                        task_uuid: request.message.task_uuid,
                        correlation_id: request.message.correlation_id,
                        queue_name: queue_name.clone(),
                        msg_id: request.msg_id,
                        attempts: 0,
                        reclaimed_from,
                    }),
                );
            }
            "duplicate" => {
                duplicate_msg_ids.push(request.msg_id);
                by_step.insert(
                    step_uuid,
                    ClaimOutcome::Duplicate {
                        state: state.unwrap_or_default(),
                    },
                );
            }
            _ => {
                by_step.insert(step_uuid, ClaimOutcome::Missing);
            }
        }
    }

    if !tokens.is_empty() {
        let attempts = sqlx::query(INSERT_CLAIMS_SQL)
            .bind(&tokens)
            .bind(&claim_steps)
            .bind(&from_states)
            .bind(&sort_keys)
            .bind(&metadata)
            .fetch_all(&mut *tx)
            .await?;
        for row in attempts {
            let step_uuid: Uuid = row.try_get("workflow_step_uuid")?;
            if let Some(ClaimOutcome::Claimed(claim)) = by_step.get_mut(&step_uuid) {
                claim.attempts = row.try_get("attempts")?;
            }
        }
    }
    if !duplicate_msg_ids.is_empty() {
        messaging::client::archive(&mut *tx, queue_name, &duplicate_msg_ids).await?;
    }
    tx.commit().await?;

    Ok(requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if seen[&r.message.step_uuid] == i {
                by_step
                    .remove(&r.message.step_uuid)
                    .unwrap_or(ClaimOutcome::Missing)
            } else {
                ClaimOutcome::Missing
            }
        })
        .collect())
}
