//! Checkpoints: a long step saves its progress (a cursor, a count of items processed and the
//! results accumulated so far) in `workflow_steps.checkpoint` while it runs, and resumes from
//! it when it runs again: after a checkpoint yield (at once, same claim), after a retryable
//! failure (the retry's claim), or after a crash (the reclaim once the lease lapses).
//!
//! The record is tasker-core's shape (`{cursor, items_processed, timestamp,
//! accumulated_results, history: [{cursor, timestamp}, ...]}`); unlike theirs the history is
//! bounded (`worker.checkpoints.max_history`) and so is the size (`max_bytes`). A save is
//! written only while its claim token is the step's current claim
//! (`tasker.worker_save_checkpoint`, sql/functions/checkpoints.sql), so a claim that lost its
//! step cannot overwrite the checkpoint of the claim that replaced it. Each save is its own
//! transaction, committed durably. A checkpoint is never cleared: it survives completion, as
//! tasker-core's does.

use crate::config::CheckpointsConfig;
use crate::error::TaskerError;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use std::sync::OnceLock;
use uuid::Uuid;

const SAVE_SQL: &str =
    "SELECT outcome, checkpoint FROM tasker.worker_save_checkpoint($1, $2, $3, $4, $5, $6, $7)";

/// What a handler asks to save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointData {
    /// Where to resume: any JSON value (an offset, a key, an object).
    #[serde(default)]
    pub cursor: Value,
    /// Items processed so far, in total (not since the last checkpoint).
    pub items_processed: u64,
    /// Results carried to the run that resumes (a running total, the ids seen, ...).
    #[serde(default)]
    pub accumulated_results: Option<Value>,
}

/// Why a checkpoint was not saved.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The claim is not the step's current one (reclaimed, timed out, committed, stopped).
    #[error("stale claim: {0}")]
    StaleClaim(String),
    /// Over a `worker.checkpoints` limit; the message names it.
    #[error("{0}")]
    Limit(String),
    /// The step does not exist (deleted while it ran).
    #[error("step {0} does not exist")]
    Missing(Uuid),
    #[error(transparent)]
    Database(#[from] TaskerError),
}

impl From<sqlx::Error> for CheckpointError {
    fn from(err: sqlx::Error) -> Self {
        CheckpointError::Database(err.into())
    }
}

/// Checkpoints saved by this process (`tasker_steps_checkpointed_total`).
pub fn checkpointed() -> &'static Counter {
    static COUNTER: OnceLock<Counter> = OnceLock::new();
    COUNTER.get_or_init(Counter::default)
}

/// The size of `data` against `max_bytes` before anything is sent: the cursor and the
/// accumulated results, as JSON text.
pub fn check_size(data: &CheckpointData, limits: &CheckpointsConfig) -> Result<(), CheckpointError> {
    let bytes = serde_json::to_string(&data.cursor)
        .map(|t| t.len())
        .unwrap_or(usize::MAX)
        + data
            .accumulated_results
            .as_ref()
            .map(|v| serde_json::to_string(v).map(|t| t.len()).unwrap_or(usize::MAX))
            .unwrap_or(0);
    if bytes > limits.max_bytes as usize {
        return Err(CheckpointError::Limit(format!(
            "the checkpoint's cursor and accumulated results are {bytes} bytes of JSON; \
             the limit is {} (worker.checkpoints.max_bytes); nothing was saved",
            limits.max_bytes
        )));
    }
    Ok(())
}

/// Saves `data` as the checkpoint of `step_uuid` if `token` is still its current claim;
/// returns the record as stored.
pub async fn save(
    pool: &PgPool,
    step_uuid: Uuid,
    token: Uuid,
    data: &CheckpointData,
    limits: &CheckpointsConfig,
) -> Result<Value, CheckpointError> {
    check_size(data, limits)?;
    let items = i64::try_from(data.items_processed).map_err(|_| {
        CheckpointError::Limit(format!("items_processed {} is too large", data.items_processed))
    })?;
    let (outcome, record): (String, Option<Value>) = sqlx::query_as(SAVE_SQL)
        .bind(step_uuid)
        .bind(token)
        .bind(&data.cursor)
        .bind(items)
        .bind(&data.accumulated_results)
        .bind(limits.max_history as i32)
        .bind(limits.max_bytes as i32)
        .fetch_one(pool)
        .await?;
    match (outcome.as_str(), record) {
        ("saved", Some(record)) => {
            checkpointed().inc();
            tracing::debug!(event = "step_checkpointed", %step_uuid, items_processed = data.items_processed, "checkpoint saved");
            Ok(record)
        }
        ("stale", _) => Err(CheckpointError::StaleClaim(format!(
            "step {step_uuid} is no longer held by claim {token} (it was reclaimed or finished); \
             the checkpoint was not saved"
        ))),
        ("too_large", _) => Err(CheckpointError::Limit(format!(
            "the checkpoint of step {step_uuid} is over {} bytes of JSON with its history \
             (worker.checkpoints.max_bytes); nothing was saved",
            limits.max_bytes
        ))),
        ("missing", _) => Err(CheckpointError::Missing(step_uuid)),
        (other, _) => Err(CheckpointError::Database(TaskerError::Database(
            sqlx::Error::Protocol(format!("tasker.worker_save_checkpoint returned {other:?}")),
        ))),
    }
}

/// The record a coalesced save keeps in memory (not written): `data` on the history of the
/// last record, as the next written save will store it.
pub fn unsaved_record(data: &CheckpointData, last: Option<&Value>) -> Value {
    let history = last
        .and_then(|l| l.get("history"))
        .cloned()
        .unwrap_or_else(|| Value::Array(Vec::new()));
    serde_json::json!({
        "cursor": data.cursor,
        "items_processed": data.items_processed,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "accumulated_results": data.accumulated_results,
        "history": history,
    })
}
