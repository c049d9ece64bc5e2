//! Creates a task from a registered template: the task, one step per template step, the
//! dependency edges, and the root steps enqueued (state and message in one transaction, so a
//! message never names a step that is not `enqueued`). Two round trips: the template is read,
//! then everything is written by one statement.

use crate::error::{TaskerError, TaskerResult};
use crate::messaging;
use crate::orchestration::template::TaskTemplate;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::HashMap;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub context: Value,
    /// Creating twice with one key returns the first task.
    pub idempotency_key: Option<String>,
}

/// Everything a task is made of, in one statement (its own transaction). `pending` below is
/// tasker-core's first task and step state, not a test marker. The task and its
/// `pending` -> `steps_in_process` transitions, the steps with their `pending` transitions
/// (root steps: then `enqueued`), the dependency edges, and the root steps' messages, sent
/// with tasker.pgmq_send_with_notify. Nothing is written when the idempotency key (identity
/// hash) is taken; the statement then returns no task. The data-modifying CTEs all run,
/// each joined to the inserted task; the sends are counted in the final SELECT so they run.
const CREATE_TASK_SQL: &str = include_str!("../../sql/queries/create_task.sql");

/// Returns the new task's uuid (or, for a repeated idempotency key, the existing one's).
/// A context over the JSON limits (`crate::limits`) is refused with `InvalidInput`, naming
/// the limit.
/// Two round trips: the template, then `CREATE_TASK_SQL`.
pub async fn create_task(pool: &PgPool, request: &TaskRequest) -> TaskerResult<Uuid> {
    // Refused before anything is written: a context the worker could not decode would leave
    // every step of the task failing as invalid_input.
    crate::limits::check_value(&request.context, "the task context")?;
    let row = sqlx::query(
        "SELECT nt.named_task_uuid, nt.configuration FROM tasker.named_tasks nt \
         JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid \
         WHERE tn.name = $1 AND nt.name = $2 AND nt.version = $3",
    )
    .bind(&request.namespace)
    .bind(&request.name)
    .bind(&request.version)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        TaskerError::Configuration(format!(
            "no task template {}/{}@{} is registered",
            request.namespace, request.name, request.version
        ))
    })?;
    let named_task_uuid: Uuid = row.try_get(0)?;
    let template: TaskTemplate = serde_json::from_value(row.try_get(1)?)?;
    let queue = messaging::worker_queue_name(&template.namespace_name)?;

    let task_uuid = Uuid::now_v7();
    let correlation_id = Uuid::now_v7();
    let identity = request
        .idempotency_key
        .clone()
        .unwrap_or_else(|| task_uuid.to_string());
    let task_transitions = [Uuid::now_v7(), Uuid::now_v7()];
    let rows = StepRows::of(&template);
    let created: Option<Uuid> = sqlx::query_scalar(CREATE_TASK_SQL)
        .bind(task_uuid)
        .bind(named_task_uuid)
        .bind(&request.context)
        .bind(&identity)
        .bind(correlation_id)
        .bind(&task_transitions[..])
        .bind(&rows.step_uuids)
        .bind(&rows.names)
        .bind(&rows.retryable)
        .bind(&rows.max_attempts)
        .bind(&rows.pending_uuids)
        .bind(&rows.enqueued_uuids)
        .bind(&rows.edge_uuids)
        .bind(&rows.edge_from)
        .bind(&rows.edge_to)
        .bind(&queue)
        .fetch_optional(pool)
        .await?;
    match created {
        Some(task) => Ok(task),
        // The key is taken (possibly by a task committed after the statement's snapshot, so
        // it is looked up in a statement of its own).
        None => Ok(
            sqlx::query_scalar("SELECT task_uuid FROM tasker.tasks WHERE identity_hash = $1")
                .bind(&identity)
                .fetch_one(pool)
                .await?,
        ),
    }
}

/// The rows of a template's steps, as parallel arrays in template order: each step's uuid,
/// name, retry settings and `pending` transition; the `enqueued` transition of each root step
/// (None for the others); and the dependency edges.
struct StepRows {
    step_uuids: Vec<Uuid>,
    names: Vec<String>,
    retryable: Vec<bool>,
    max_attempts: Vec<i32>,
    pending_uuids: Vec<Uuid>,
    enqueued_uuids: Vec<Option<Uuid>>,
    edge_uuids: Vec<Uuid>,
    edge_from: Vec<Uuid>,
    edge_to: Vec<Uuid>,
}

impl StepRows {
    fn of(template: &TaskTemplate) -> Self {
        let by_name: HashMap<&str, Uuid> = template
            .steps
            .iter()
            .map(|step| (step.name.as_str(), Uuid::now_v7()))
            .collect();
        let mut rows = StepRows {
            step_uuids: Vec::new(),
            names: Vec::new(),
            retryable: Vec::new(),
            max_attempts: Vec::new(),
            pending_uuids: Vec::new(),
            enqueued_uuids: Vec::new(),
            edge_uuids: Vec::new(),
            edge_from: Vec::new(),
            edge_to: Vec::new(),
        };
        for step in &template.steps {
            let uuid = by_name[step.name.as_str()];
            rows.step_uuids.push(uuid);
            rows.names.push(step.name.clone());
            rows.retryable.push(step.retry.retryable);
            rows.max_attempts.push(step.retry.max_attempts as i32);
            rows.pending_uuids.push(Uuid::now_v7());
            rows.enqueued_uuids
                .push(step.dependencies.is_empty().then(Uuid::now_v7));
            for parent in &step.dependencies {
                rows.edge_uuids.push(Uuid::now_v7());
                rows.edge_from.push(by_name[parent.as_str()]);
                rows.edge_to.push(uuid);
            }
        }
        rows
    }
}

/// Appends a step transition; the previous one (if any) stops being most recent. One
/// statement: the new row is built from the count of retired rows, so the retiring UPDATE
/// has run before it is inserted (the partial unique index on `most_recent` sees one row).
pub(crate) async fn insert_step_transition(
    tx: &mut PgConnection,
    step_uuid: Uuid,
    from: Option<&str>,
    to: &str,
    sort_key: i32,
    metadata: Value,
) -> TaskerResult<()> {
    sqlx::query(
        "WITH retired AS ( \
             UPDATE tasker.workflow_step_transitions SET most_recent = false, updated_at = now() \
              WHERE workflow_step_uuid = $2 AND most_recent AND $7 RETURNING 1) \
         INSERT INTO tasker.workflow_step_transitions \
         (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent) \
         SELECT $1, $2, $3, $4, $5, $6, true FROM (SELECT count(*) FROM retired) AS r",
    )
    .bind(Uuid::now_v7())
    .bind(step_uuid)
    .bind(from)
    .bind(to)
    .bind(metadata)
    .bind(sort_key)
    .bind(from.is_some())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
