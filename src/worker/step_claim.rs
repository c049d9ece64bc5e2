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

/// Locks step rows in uuid order; claims and completions both take these locks first.
pub(crate) const LOCK_STEPS_SQL: &str = "SELECT workflow_step_uuid FROM tasker.workflow_steps \
     WHERE workflow_step_uuid = ANY($1) ORDER BY workflow_step_uuid FOR UPDATE";

const DECIDE_SQL: &str = r#"
WITH input AS (
    SELECT i.*, row_number() OVER (PARTITION BY i.step_uuid ORDER BY i.msg_id) AS nth
      FROM unnest($1::uuid[], $2::bigint[]) AS i(step_uuid, msg_id)
), cur AS (
    SELECT t.workflow_step_uuid, t.workflow_step_transition_uuid, t.to_state, t.sort_key, t.metadata
      FROM tasker.workflow_step_transitions t
     WHERE t.most_recent AND t.workflow_step_uuid = ANY($1)
), decided AS (
    SELECT i.step_uuid, i.msg_id, c.workflow_step_transition_uuid AS prev_uuid, c.to_state, c.sort_key,
           CASE WHEN c.to_state IS NULL THEN 'missing'
                WHEN c.to_state IN ('pending', 'enqueued') AND i.nth = 1 THEN 'claim'
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
SELECT step_uuid, msg_id, prev_uuid, to_state, sort_key, action FROM decided
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
/// in the order of `requests`. Several messages for one step in a batch: at most one claims
/// (the lowest id, or the one the current claim was made through); the others are duplicates.
pub async fn claim_batch(
    pool: &PgPool,
    queue_name: &Arc<str>,
    worker_id: &str,
    requests: &[ClaimRequest],
) -> TaskerResult<Vec<ClaimOutcome>> {
    let mut step_uuids: Vec<Uuid> = requests.iter().map(|r| r.message.step_uuid).collect();
    let msg_ids: Vec<i64> = requests.iter().map(|r| r.msg_id).collect();
    let by_msg: HashMap<i64, &ClaimRequest> = requests.iter().map(|r| (r.msg_id, r)).collect();

    let mut tx = pool.begin().await?;
    let mut lock_order = step_uuids.clone();
    lock_order.sort();
    lock_order.dedup();
    sqlx::query(LOCK_STEPS_SQL)
        .bind(&lock_order)
        .execute(&mut *tx)
        .await?;
    let decisions = sqlx::query(DECIDE_SQL)
        .bind(&step_uuids)
        .bind(&msg_ids)
        .bind(queue_name.as_ref())
        .fetch_all(&mut *tx)
        .await?;
    step_uuids.clear();

    let mut outcomes: HashMap<i64, ClaimOutcome> = HashMap::with_capacity(decisions.len());
    let (mut tokens, mut from_states, mut sort_keys, mut metadata) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut duplicate_msg_ids = Vec::new();
    for row in &decisions {
        let msg_id: i64 = row.try_get("msg_id")?;
        let action: String = row.try_get("action")?;
        let state: Option<String> = row.try_get("to_state")?;
        let Some(request) = by_msg.get(&msg_id) else {
            continue;
        };
        let outcome = match action.as_str() {
            "claim" | "reclaim" => {
                let token = Uuid::now_v7();
                let prev: Uuid = row.try_get("prev_uuid")?;
                let reclaimed_from = (action == "reclaim").then_some(prev);
                tokens.push(token);
                step_uuids.push(request.message.step_uuid);
                from_states.push(state.unwrap_or_default());
                sort_keys.push(row.try_get::<i32, _>("sort_key")?);
                metadata.push(json!({
                    "event": if reclaimed_from.is_some() { "reclaim" } else { "start" },
                    "worker_id": worker_id,
                    "queue_name": queue_name.as_ref(),
                    "msg_id": msg_id.to_string(),
                    "correlation_id": request.message.correlation_id,
                    "reclaimed_from": reclaimed_from,
                    "timestamp": chrono::Utc::now(),
                }));
                ClaimOutcome::Claimed(Claim {
                    token,
                    step_uuid: request.message.step_uuid,
                    task_uuid: request.message.task_uuid,
                    correlation_id: request.message.correlation_id,
                    queue_name: queue_name.clone(),
                    msg_id,
                    attempts: 0,
                    reclaimed_from,
                })
            }
            "duplicate" => {
                duplicate_msg_ids.push(msg_id);
                ClaimOutcome::Duplicate {
                    state: state.unwrap_or_default(),
                }
            }
            _ => ClaimOutcome::Missing,
        };
        outcomes.insert(msg_id, outcome);
    }

    if !tokens.is_empty() {
        let attempts = sqlx::query(INSERT_CLAIMS_SQL)
            .bind(&tokens)
            .bind(&step_uuids)
            .bind(&from_states)
            .bind(&sort_keys)
            .bind(&metadata)
            .fetch_all(&mut *tx)
            .await?;
        let attempts: HashMap<Uuid, i32> = attempts
            .iter()
            .map(|row| Ok((row.try_get("workflow_step_uuid")?, row.try_get("attempts")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        for outcome in outcomes.values_mut() {
            if let ClaimOutcome::Claimed(claim) = outcome {
                claim.attempts = attempts.get(&claim.step_uuid).copied().unwrap_or_default();
            }
        }
    }
    if !duplicate_msg_ids.is_empty() {
        messaging::client::archive(&mut *tx, queue_name, &duplicate_msg_ids).await?;
    }
    tx.commit().await?;

    Ok(requests
        .iter()
        .map(|r| outcomes.remove(&r.msg_id).unwrap_or(ClaimOutcome::Missing))
        .collect())
}
