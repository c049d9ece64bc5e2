//! Claiming steps, a batch per transaction.
//!
//! A claim is a new `in_progress` transition; its uuid is the claim token that the
//! completion must present. The partial unique index on `most_recent` transitions makes it
//! atomic, and the step rows are locked first (in uuid order, as the completion processor
//! does) so a claim never races a completion of the same step.
//!
//! For each message the current state decides:
//! - `enqueued`, or `pending` with every parent complete → claim (attempts + 1);
//! - `in_progress` claimed through this same message → its lease lapsed: reclaim (attempts + 1,
//!   the new transition names the previous claim);
//! - either of those when `attempts` has reached `max_attempts` → exhausted: claimed without
//!   a new attempt, and failed by the worker as `max_attempts_exceeded`; never run again;
//! - `in_progress` through another message, or waiting for orchestration → duplicate;
//! - `pending` with a parent not complete, or a later state (`complete`, `error`,
//!   `waiting_for_retry`, ...), or a step of another task → out of order.
//!
//! Duplicate and out-of-order messages are archived; nothing runs for them.
//!
//! With `worker.lean_claim` the claim writes no transition (`tasker.worker_claim_steps_lean`,
//! sql/functions/worker_claim.sql): the claim is the message's lease, named by its read count
//! and the step's current transition (`Lease`), which the commit checks; the `in_progress`
//! transition (uuid `token`) is written by the commit, with the result.

use crate::error::TaskerResult;
use crate::messaging::client::{queue_error, validate_queue_name};
use crate::messaging::{QueuedMessage, StepMessage, Undecodable};
use crate::worker::hydration;
use crate::worker::step_context::StepContext;
use serde::Deserialize;
use sqlx::postgres::PgRow;
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
    /// When its message was first enqueued (for the end-to-end latency), when known.
    pub enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A lease-only claim (`worker.lean_claim`): what its commit checks. None: the claim is
    /// the `in_progress` transition `token`.
    pub lease: Option<Lease>,
}

/// What a lease-only claim holds: its message as read (`read_ct`; a later read after the
/// lease lapsed raises it) and the step's transition when claimed (`previous`; anything
/// that moves the step replaces it). The commit counts only while both still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub read_ct: i32,
    pub previous: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Claimed(Claim),
    /// The step is already held through another message, or past execution; the message was
    /// archived.
    Duplicate {
        state: String,
    },
    /// The step is not runnable (see the module comment); the message was archived.
    OutOfOrder {
        state: String,
    },
    /// Claimed, but the step has no attempts left: to be failed as `max_attempts_exceeded`.
    Exhausted(Claim),
    /// No such step (or no transition yet); the message is left for a later read.
    Missing,
}

/// A message to claim: its id in `queue_name` and the step it names.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    pub msg_id: i64,
    /// The message's read count as read (the lease-only claim's token).
    pub read_ct: i32,
    pub message: StepMessage,
}

/// One round trip: `tasker.worker_claim_steps` (sql/functions/worker_claim.sql) locks, decides,
/// inserts the claims and archives duplicates; its claims commit asynchronously (see there).
const CLAIM_SQL: &str = include_str!("../../sql/queries/claim_steps.sql");
/// The same with the lease-only claim (`tasker.worker_claim_steps_lean`).
const CLAIM_LEAN_SQL: &str = "SELECT msg_id, action, state, token, previous, attempts \
     FROM tasker.worker_claim_steps_lean($1, $2, $3, $4, $5, $6)";

/// Claims a batch of messages read from `queue_name`, in one transaction. The outcomes are
/// in the order of `requests`. Several messages for one step in a batch: at most one claims
/// (the lowest id, or the one the current claim was made through); the others are duplicates.
pub async fn claim_batch(
    pool: &PgPool,
    queue_name: &Arc<str>,
    worker_id: &str,
    requests: &[ClaimRequest],
) -> TaskerResult<Vec<ClaimOutcome>> {
    claim_batch_with(pool, queue_name, worker_id, requests, false).await
}

/// `claim_batch`, with the lease-only claim when `lean` (`worker.lean_claim`).
pub async fn claim_batch_with(
    pool: &PgPool,
    queue_name: &Arc<str>,
    worker_id: &str,
    requests: &[ClaimRequest],
    lean: bool,
) -> TaskerResult<Vec<ClaimOutcome>> {
    let step_uuids: Vec<Uuid> = requests.iter().map(|r| r.message.step_uuid).collect();
    let msg_ids: Vec<i64> = requests.iter().map(|r| r.msg_id).collect();
    let correlation_ids: Vec<Uuid> = requests.iter().map(|r| r.message.correlation_id).collect();
    let tokens: Vec<Uuid> = requests.iter().map(|_| Uuid::now_v7()).collect();
    let by_msg: HashMap<i64, &ClaimRequest> = requests.iter().map(|r| (r.msg_id, r)).collect();

    let rows = if lean {
        let read_cts: Vec<i32> = requests.iter().map(|r| r.read_ct).collect();
        sqlx::query(CLAIM_LEAN_SQL)
            .bind(queue_name.as_ref())
            .bind(worker_id)
            .bind(&step_uuids)
            .bind(&msg_ids)
            .bind(&read_cts)
            .bind(&tokens)
            .fetch_all(pool)
            .await?
    } else {
        sqlx::query(CLAIM_SQL)
            .bind(queue_name.as_ref())
            .bind(worker_id)
            .bind(&step_uuids)
            .bind(&msg_ids)
            .bind(&correlation_ids)
            .bind(&tokens)
            .fetch_all(pool)
            .await?
    };

    let mut outcomes: HashMap<i64, ClaimOutcome> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let msg_id: i64 = row.try_get("msg_id")?;
        let action: &str = row.try_get("action")?;
        let state: Option<String> = row.try_get("state")?;
        let Some(request) = by_msg.get(&msg_id) else {
            continue;
        };
        let claim = || -> Result<Claim, sqlx::Error> {
            Ok(Claim {
                token: row.try_get("token")?,
                step_uuid: request.message.step_uuid,
                task_uuid: request.message.task_uuid,
                correlation_id: request.message.correlation_id,
                queue_name: queue_name.clone(),
                msg_id,
                attempts: row.try_get::<Option<i32>, _>("attempts")?.unwrap_or_default(),
                reclaimed_from: reclaimed_from(row, action, state.as_deref())?,
                enqueued_at: None,
                lease: lease(row, lean, request.read_ct)?,
            })
        };
        let outcome = match action {
            "claim" | "reclaim" => ClaimOutcome::Claimed(claim()?),
            "exhausted" => ClaimOutcome::Exhausted(claim()?),
            "duplicate" => ClaimOutcome::Duplicate {
                state: state.unwrap_or_default(),
            },
            "out_of_order" => ClaimOutcome::OutOfOrder {
                state: state.unwrap_or_default(),
            },
            _ => ClaimOutcome::Missing,
        };
        outcomes.insert(msg_id, outcome);
    }

    Ok(requests
        .iter()
        .map(|r| outcomes.remove(&r.msg_id).unwrap_or(ClaimOutcome::Missing))
        .collect())
}

/// What `claim_next` did with one message it read.
#[derive(Debug)]
// One short-lived value per message read, moved straight on: boxing the context would
// only add an allocation per step.
#[allow(clippy::large_enum_variant)]
pub enum NextMessage {
    /// Claimed, with the step's context, or the reason it could not be built (a task context
    /// over the JSON limits, say): the step is then failed as `invalid_input`.
    Claimed {
        claim: Claim,
        context: Result<StepContext, String>,
    },
    /// Claimed without a new attempt: its attempts have reached `max_attempts`.
    Exhausted {
        claim: Claim,
        max_attempts: i32,
    },
    Duplicate {
        msg_id: i64,
        state: String,
    },
    /// Not runnable (see the module comment); archived.
    OutOfOrder {
        msg_id: i64,
        state: String,
    },
    Missing,
    /// Not claimed: the step cannot be hydrated, for this reason.
    Unhydratable {
        message: QueuedMessage,
        reason: String,
    },
    /// Not claimed: the message is not exactly three canonical uuids (or the SQL side found
    /// the step unhydratable and this side did not). The caller parses and claims it the
    /// slow way.
    Unchecked(QueuedMessage),
    /// Not claimed: the message itself could not be decoded (over the JSON limits, not JSON).
    Undecodable(Undecodable),
}

/// One round trip: `tasker.worker_claim_next` (sql/functions/worker_claim.sql) reads, checks,
/// claims and returns the hydration columns, in one transaction committed asynchronously.
const CLAIM_NEXT_SQL: &str = "SELECT * FROM tasker.worker_claim_next($1, $2, $3, $4, $5)";
/// The same with the lease-only claim (`worker.lean_claim`).
const CLAIM_NEXT_LEAN_SQL: &str = "SELECT * FROM tasker.worker_claim_next_lean($1, $2, $3, $4, $5)";

/// Reads up to `qty` messages of `queue_name` under a lease of `visibility_timeout_seconds`
/// and claims those whose steps can run. One row per message read, in msg_id order.
pub async fn claim_next(
    pool: &PgPool,
    queue_name: &Arc<str>,
    worker_id: &str,
    qty: usize,
    visibility_timeout_seconds: u32,
) -> TaskerResult<Vec<NextMessage>> {
    claim_next_with(
        pool,
        queue_name,
        worker_id,
        qty,
        visibility_timeout_seconds,
        false,
    )
    .await
}

/// `claim_next`, with the lease-only claim when `lean` (`worker.lean_claim`).
pub async fn claim_next_with(
    pool: &PgPool,
    queue_name: &Arc<str>,
    worker_id: &str,
    qty: usize,
    visibility_timeout_seconds: u32,
    lean: bool,
) -> TaskerResult<Vec<NextMessage>> {
    validate_queue_name(queue_name)?;
    let tokens: Vec<Uuid> = (0..qty).map(|_| Uuid::now_v7()).collect();
    let rows = sqlx::query(if lean { CLAIM_NEXT_LEAN_SQL } else { CLAIM_NEXT_SQL })
        .bind(queue_name.as_ref())
        .bind(worker_id)
        .bind(qty as i32)
        .bind(f64::from(visibility_timeout_seconds))
        .bind(&tokens)
        .fetch_all(pool)
        .await
        .map_err(|err| queue_error(queue_name, err))?;
    rows.iter()
        .map(|row| next_message(row, queue_name, lean))
        .collect()
}

fn next_message(row: &PgRow, queue_name: &Arc<str>, lean: bool) -> TaskerResult<NextMessage> {
    let action: String = row.try_get("action")?;
    let state: Option<String> = row.try_get("state")?;
    let decoded = QueuedMessage::decode(row)?;
    let claimed = matches!(action.as_str(), "claim" | "reclaim" | "exhausted");
    let message = match decoded {
        Ok(message) => message,
        // Not expected for a claimed row (the SQL side claims only flat three-uuid messages),
        // but a claimed step must get an outcome: its ids come from the hydration columns.
        Err(bad) if claimed => {
            let claim = claim_from_row(row, queue_name, bad.msg_id, &action, state.as_deref(), None, lean)?;
            return Ok(NextMessage::Claimed {
                claim,
                context: Err(format!("its message could not be decoded: {}", bad.reason)),
            });
        }
        Err(bad) => return Ok(NextMessage::Undecodable(bad)),
    };
    // Every action but `unparsed` is for a message the SQL side read as a StepMessage.
    let step_message = match action.as_str() {
        "unparsed" => None,
        _ => StepMessage::deserialize(&message.message).ok(),
    };
    let Some(step_message) = step_message else {
        return Ok(NextMessage::Unchecked(message));
    };
    let msg_id = message.msg_id;
    Ok(match action.as_str() {
        "claim" | "reclaim" => {
            let claim = claim_from_row(
                row,
                queue_name,
                msg_id,
                &action,
                state.as_deref(),
                Some(&step_message),
                lean,
            )?;
            let waited = (chrono::Utc::now() - message.enqueued_at)
                .to_std()
                .unwrap_or_default();
            crate::metrics::Timings::observe(&crate::metrics::timings().queue_wait, waited);
            // Its `attempts` is set from the claim when it is dispatched.
            let context = hydration::context_from_row(row, &step_message);
            NextMessage::Claimed { claim, context }
        }
        "exhausted" => NextMessage::Exhausted {
            claim: claim_from_row(
                row,
                queue_name,
                msg_id,
                &action,
                state.as_deref(),
                Some(&step_message),
                lean,
            )?,
            max_attempts: row.try_get::<Option<i32>, _>("max_attempts")?.unwrap_or_default(),
        },
        "duplicate" => NextMessage::Duplicate {
            msg_id,
            state: state.unwrap_or_default(),
        },
        "out_of_order" => NextMessage::OutOfOrder {
            msg_id,
            state: state.unwrap_or_default(),
        },
        "unhydratable" => {
            if row.try_get::<Option<Uuid>, _>("workflow_step_uuid")?.is_none() {
                NextMessage::Unhydratable {
                    message,
                    reason: format!("step {} does not exist", step_message.step_uuid),
                }
            } else {
                match hydration::context_from_row(row, &step_message) {
                    Err(reason) => NextMessage::Unhydratable { message, reason },
                    Ok(_) => NextMessage::Unchecked(message),
                }
            }
        }
        _ => NextMessage::Missing,
    })
}

/// The claim a claimed row stands for; the ids from the message, or (when it could not be
/// decoded) from the hydration columns.
fn claim_from_row(
    row: &PgRow,
    queue_name: &Arc<str>,
    msg_id: i64,
    action: &str,
    state: Option<&str>,
    message: Option<&StepMessage>,
    lean: bool,
) -> Result<Claim, sqlx::Error> {
    let (step_uuid, task_uuid, correlation_id) = match message {
        Some(m) => (m.step_uuid, m.task_uuid, m.correlation_id),
        None => (
            row.try_get("workflow_step_uuid")?,
            row.try_get("task_uuid")?,
            row.try_get("correlation_id")?,
        ),
    };
    Ok(Claim {
        token: row.try_get("token")?,
        step_uuid,
        task_uuid,
        correlation_id,
        queue_name: queue_name.clone(),
        msg_id,
        attempts: row.try_get::<Option<i32>, _>("attempts")?.unwrap_or_default(),
        reclaimed_from: reclaimed_from(row, action, state)?,
        enqueued_at: row.try_get("enqueued_at").ok(),
        lease: lease(row, lean, row.try_get("read_ct")?)?,
    })
}

/// A lease-only claim's lease: the read count it was read with and the transition it found.
fn lease(row: &PgRow, lean: bool, read_ct: i32) -> Result<Option<Lease>, sqlx::Error> {
    if !lean {
        return Ok(None);
    }
    Ok(Some(Lease {
        read_ct,
        previous: row.try_get("previous")?,
    }))
}

/// The lapsed claim a reclaim (or an exhausted reclaim) replaced.
fn reclaimed_from(row: &PgRow, action: &str, state: Option<&str>) -> Result<Option<Uuid>, sqlx::Error> {
    if action == "reclaim" || (action == "exhausted" && state == Some("in_progress")) {
        row.try_get("previous")
    } else {
        Ok(None)
    }
}
