//! A task as a client sees it: its state, and each step's state, attempts and stored result.

use crate::error::{TaskerError, TaskerResult};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    pub task_uuid: Uuid,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub complete: bool,
    pub context: Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub steps: Vec<StepSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSummary {
    pub step_uuid: Uuid,
    pub name: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub results: Option<Value>,
}

pub async fn task_summary(pool: &PgPool, task_uuid: Uuid) -> TaskerResult<TaskSummary> {
    let task = sqlx::query(
        "SELECT tn.name, nt.name, nt.version, tt.to_state, t.complete, t.context, t.created_at::timestamptz, \
         t.completed_at::timestamptz \
         FROM tasker.tasks t \
         JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid \
         JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid \
         JOIN tasker.task_transitions tt ON tt.task_uuid = t.task_uuid AND tt.most_recent \
         WHERE t.task_uuid = $1",
    )
    .bind(task_uuid)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| TaskerError::Configuration(format!("no task {task_uuid}")))?;
    let steps = sqlx::query(
        "SELECT ws.workflow_step_uuid, ns.name, tr.to_state, coalesce(ws.attempts, 0), coalesce(ws.max_attempts, 3), ws.results \
         FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
         WHERE ws.task_uuid = $1 ORDER BY ws.workflow_step_uuid",
    )
    .bind(task_uuid)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(StepSummary {
            step_uuid: row.try_get(0)?,
            name: row.try_get(1)?,
            state: row.try_get(2)?,
            attempts: row.try_get(3)?,
            max_attempts: row.try_get(4)?,
            results: row.try_get(5)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(TaskSummary {
        task_uuid,
        namespace: task.try_get(0)?,
        name: task.try_get(1)?,
        version: task.try_get(2)?,
        state: task.try_get(3)?,
        complete: task.try_get(4)?,
        context: task.try_get::<Option<Value>, _>(5)?.unwrap_or(Value::Null),
        created_at: task.try_get(6)?,
        completed_at: task.try_get(7)?,
        steps,
    })
}
