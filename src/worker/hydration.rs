//! Builds the `StepContext` of a step from its hydration columns (`tasker.worker_step_contexts`:
//! the task, its template's step definition from `named_tasks.configuration`, and the results
//! of all ancestor steps). `tasker.worker_claim_next` returns them with each claim; `hydrate`
//! reads them for a batch of messages read elsewhere.
//! A step that cannot be hydrated gets a reason; its message is retried and, past
//! `max_delivery_attempts`, dead-lettered. A step of another task than its message names is
//! marked so (`Unhydrated::other_task`): the message is archived as out of order.
//! The JSON columns are decoded from their text under the JSON limits (`crate::limits`), so a
//! context that nests too deep is a reason for this step, not an error for the batch.

use crate::error::TaskerResult;
use crate::messaging::client::json_column;
use crate::messaging::StepMessage;
use crate::worker::step_context::{HandlerSpec, StepContext};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use uuid::Uuid;

/// `tasker.worker_step_contexts` (sql/functions/worker_claim.sql): the columns `context_from_row`
/// reads, for every step of the batch.
/// The step's checkpoint is read beside them, as `tasker.worker_claim_next` returns it.
const HYDRATE_SQL: &str = "SELECT c.*, ws.checkpoint FROM tasker.worker_step_contexts($1) c \
                           JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = c.workflow_step_uuid";

/// Why a step could not be hydrated.
#[derive(Debug, Clone, PartialEq)]
pub struct Unhydrated {
    pub reason: String,
    /// The step exists but belongs to another task than the message's.
    pub other_task: bool,
}

impl From<String> for Unhydrated {
    fn from(reason: String) -> Self {
        Self {
            reason,
            other_task: false,
        }
    }
}

/// Hydrates every message's step. The map holds, per step uuid, the context or the reason
/// it could not be built.
pub async fn hydrate(
    pool: &PgPool,
    messages: &[StepMessage],
) -> TaskerResult<HashMap<Uuid, Result<StepContext, Unhydrated>>> {
    let step_uuids: Vec<Uuid> = messages.iter().map(|m| m.step_uuid).collect();
    let rows = sqlx::query(HYDRATE_SQL).bind(&step_uuids).fetch_all(pool).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let step_uuid: Uuid = row.try_get("workflow_step_uuid")?;
        found.insert(step_uuid, row);
    }
    let mut out = HashMap::with_capacity(messages.len());
    for message in messages {
        let outcome = match found.get(&message.step_uuid) {
            None => Err(format!("step {} does not exist", message.step_uuid).into()),
            Some(row) => check_task(row, message)
                .and_then(|()| context_from_row(row, message).map_err(Unhydrated::from)),
        };
        out.insert(message.step_uuid, outcome);
    }
    Ok(out)
}

fn check_task(row: &PgRow, message: &StepMessage) -> Result<(), Unhydrated> {
    let task_uuid: Uuid = row
        .try_get("task_uuid")
        .map_err(|e| Unhydrated::from(format!("reading step {}: {e}", message.step_uuid)))?;
    if task_uuid != message.task_uuid {
        return Err(Unhydrated {
            reason: format!(
                "step {} belongs to task {task_uuid}, not {}",
                message.step_uuid, message.task_uuid
            ),
            other_task: true,
        });
    }
    Ok(())
}

pub(crate) fn context_from_row(row: &PgRow, message: &StepMessage) -> Result<StepContext, String> {
    let get = |e: sqlx::Error| format!("reading step {}: {e}", message.step_uuid);
    let task_uuid: Uuid = row.try_get("task_uuid").map_err(get)?;
    if task_uuid != message.task_uuid {
        return Err(format!(
            "step {} belongs to task {task_uuid}, not {}",
            message.step_uuid, message.task_uuid
        ));
    }
    let json = |column: &str, what: &str| {
        json_column(row, column, what).map_err(|bad| format!("step {}: {}", message.step_uuid, bad.reason))
    };
    let step_name: String = row.try_get("step_name").map_err(get)?;
    let task_name: String = row.try_get("task_name").map_err(get)?;
    let step_definition = json("step_definition", "the step's template definition")?;
    let step_definition = step_definition
        .ok_or_else(|| format!("the template of task {task_name:?} has no step named {step_name:?}"))?;
    let handler: HandlerSpec = step_definition
        .get("handler")
        .cloned()
        .ok_or_else(|| format!("step {step_name:?} of template {task_name:?} has no handler"))
        .and_then(|h| {
            serde_json::from_value(h)
                .map_err(|e| format!("step {step_name:?} of template {task_name:?}: bad handler: {e}"))
        })?;
    let dependency_results = json("dependency_results", "the parents' results")?;
    let dependency_results = match dependency_results {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let timeout_seconds = step_definition.get("timeout_seconds").and_then(Value::as_u64);
    Ok(StepContext {
        task_uuid,
        step_uuid: message.step_uuid,
        correlation_id: row.try_get("correlation_id").map_err(get)?,
        namespace: row.try_get("namespace").map_err(get)?,
        task_name,
        task_version: row.try_get("task_version").map_err(get)?,
        step_name,
        task_context: json("context", "task context")?.unwrap_or(Value::Null),
        inputs: json("inputs", "the step's inputs")?.unwrap_or(Value::Null),
        handler,
        dependency_results,
        attempts: row.try_get("attempts").map_err(get)?,
        max_attempts: row.try_get("max_attempts").map_err(get)?,
        retryable: row.try_get("retryable").map_err(get)?,
        timeout_seconds,
        step_definition,
        checkpoint: json("checkpoint", "the step's checkpoint")?.filter(|c| !c.is_null()),
    })
}
