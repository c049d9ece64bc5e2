//! Creates a task from a registered template: the task, one step per template step, the
//! dependency edges, and the root steps enqueued (state first, then the message, in one
//! transaction, so a message never names a step that is not `enqueued`).

use crate::error::{TaskerError, TaskerResult};
use crate::messaging::{self, StepMessage};
use crate::orchestration::template::TaskTemplate;
use serde_json::{json, Value};
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

/// Returns the new task's uuid (or, for a repeated idempotency key, the existing one's).
pub async fn create_task(pool: &PgPool, request: &TaskRequest) -> TaskerResult<Uuid> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT nt.named_task_uuid, nt.configuration FROM tasker.named_tasks nt \
         JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid \
         WHERE tn.name = $1 AND nt.name = $2 AND nt.version = $3",
    )
    .bind(&request.namespace)
    .bind(&request.name)
    .bind(&request.version)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        TaskerError::Configuration(format!(
            "no task template {}/{}@{} is registered",
            request.namespace, request.name, request.version
        ))
    })?;
    let named_task_uuid: Uuid = row.try_get(0)?;
    let template: TaskTemplate = serde_json::from_value(row.try_get(1)?)?;

    let task_uuid = Uuid::now_v7();
    let correlation_id = Uuid::now_v7();
    let identity = request
        .idempotency_key
        .clone()
        .unwrap_or_else(|| task_uuid.to_string());
    let inserted = sqlx::query(
        "INSERT INTO tasker.tasks (task_uuid, named_task_uuid, context, identity_hash, correlation_id) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (identity_hash) DO NOTHING",
    )
    .bind(task_uuid)
    .bind(named_task_uuid)
    .bind(&request.context)
    .bind(&identity)
    .bind(correlation_id)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        let existing = sqlx::query_scalar("SELECT task_uuid FROM tasker.tasks WHERE identity_hash = $1")
            .bind(&identity)
            .fetch_one(&mut *tx)
            .await?;
        tx.rollback().await?;
        return Ok(existing);
    }
    insert_task_transition(&mut tx, task_uuid, None, "pending").await?;

    let steps = insert_steps(&mut tx, task_uuid, &template).await?;
    let roots: Vec<&str> = template
        .steps
        .iter()
        .filter(|s| s.dependencies.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    let queue = messaging::worker_queue_name(&template.namespace_name)?;
    for root in roots {
        let step_uuid = steps[root];
        insert_step_transition(
            &mut tx,
            step_uuid,
            Some("pending"),
            "enqueued",
            2,
            json!({"event": "enqueue"}),
        )
        .await?;
        let message = StepMessage {
            task_uuid,
            step_uuid,
            correlation_id,
        };
        messaging::client::send_with_notify(&mut *tx, &queue, &message, 0).await?;
    }
    insert_task_transition(&mut tx, task_uuid, Some("pending"), "steps_in_process").await?;
    tx.commit().await?;
    Ok(task_uuid)
}

/// Inserts every step of the template with its `pending` transition, and the dependency
/// edges: three statements whatever the number of steps. A step whose name has no
/// `named_steps` row is not inserted (templates are registered with all of theirs).
async fn insert_steps(
    tx: &mut PgConnection,
    task_uuid: Uuid,
    template: &TaskTemplate,
) -> TaskerResult<HashMap<String, Uuid>> {
    let n = template.steps.len();
    let steps: HashMap<String, Uuid> = template
        .steps
        .iter()
        .map(|step| (step.name.clone(), Uuid::now_v7()))
        .collect();
    let (mut step_uuids, mut names, mut retryable, mut max_attempts, mut transitions) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for step in &template.steps {
        step_uuids.push(steps[&step.name]);
        names.push(step.name.as_str());
        retryable.push(step.retry.retryable);
        max_attempts.push(step.retry.max_attempts as i32);
        transitions.push(Uuid::now_v7());
    }
    sqlx::query(
        "INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts, inputs) \
         SELECT s.step_uuid, $2, ns.named_step_uuid, s.retryable, s.max_attempts, '{}'::jsonb \
           FROM unnest($1::uuid[], $3::text[], $4::boolean[], $5::integer[]) WITH ORDINALITY \
                AS s(step_uuid, name, retryable, max_attempts, n) \
           JOIN tasker.named_steps ns ON ns.name = s.name \
          ORDER BY s.n",
    )
    .bind(&step_uuids)
    .bind(task_uuid)
    .bind(&names)
    .bind(&retryable)
    .bind(&max_attempts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO tasker.workflow_step_transitions \
         (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent) \
         SELECT t.transition_uuid, t.step_uuid, NULL, 'pending', '{\"event\": \"initialize\"}'::jsonb, 1, true \
           FROM unnest($1::uuid[], $2::uuid[]) AS t(transition_uuid, step_uuid)",
    )
    .bind(&transitions)
    .bind(&step_uuids)
    .execute(&mut *tx)
    .await?;
    let (mut edge_uuids, mut from, mut to) = (Vec::new(), Vec::new(), Vec::new());
    for step in &template.steps {
        for parent in &step.dependencies {
            edge_uuids.push(Uuid::now_v7());
            from.push(steps[parent]);
            to.push(steps[&step.name]);
        }
    }
    if !edge_uuids.is_empty() {
        sqlx::query(
            "INSERT INTO tasker.workflow_step_edges (workflow_step_edge_uuid, from_step_uuid, to_step_uuid) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[])",
        )
        .bind(&edge_uuids)
        .bind(&from)
        .bind(&to)
        .execute(&mut *tx)
        .await?;
    }
    Ok(steps)
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

/// Appends a task transition (sort key follows the last one), in one statement as above.
pub(crate) async fn insert_task_transition(
    tx: &mut PgConnection,
    task_uuid: Uuid,
    from: Option<&str>,
    to: &str,
) -> TaskerResult<()> {
    sqlx::query(
        "WITH retired AS ( \
             UPDATE tasker.task_transitions SET most_recent = false \
              WHERE task_uuid = $2 AND most_recent RETURNING sort_key) \
         INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent) \
         SELECT $1, $2, $3, $4, coalesce((SELECT max(sort_key) FROM retired), 0) + 1, true",
    )
    .bind(Uuid::now_v7())
    .bind(task_uuid)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
