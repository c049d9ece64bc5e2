//! Creates a task from a registered template: the task, one step per template step, the
//! dependency edges, and the root steps enqueued (state and message in one transaction, so a
//! message never names a step that is not `enqueued`). Two round trips: the template is read
//! and the task planned in Rust (`plan_task`), then the SQL function `tasker.create_task`
//! writes the plan, in whichever transaction its caller is in.

use crate::error::{TaskerError, TaskerResult};
use crate::messaging;
use crate::orchestration::template::{IdentityStrategy, StepType, TaskTemplate};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use std::collections::{HashMap, HashSet};
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
/// A context over the JSON limits (`crate::limits`) is refused with `InvalidInput`, naming
/// the limit. Two round trips: the template (`plan_task`), then `tasker.create_task` (its own
/// transaction; sql/functions/tasks.sql).
pub async fn create_task(pool: &PgPool, request: &TaskRequest) -> TaskerResult<Uuid> {
    let plan = plan_task(pool, request).await?;
    let created: Option<Uuid> = sqlx::query_scalar("SELECT tasker.create_task($1)")
        .bind(sqlx::types::Json(&plan))
        .fetch_one(pool)
        .await?;
    match created {
        Some(task) => Ok(task),
        // The key is taken (possibly by a task committed after the statement's snapshot, so
        // it is looked up in a statement of its own).
        None => Ok(
            sqlx::query_scalar("SELECT task_uuid FROM tasker.tasks WHERE identity_hash = $1")
                .bind(&plan.identity_hash)
                .fetch_one(pool)
                .await?,
        ),
    }
}

/// What `tasker.create_task` writes for one task (sql/functions/tasks.sql documents the
/// shape), made from the registered template: every uuid (UUIDv7, so rows sort by creation),
/// the steps in template order with their retry settings, the root steps (an `enqueued_uuid`),
/// the edges, and the namespace's queue. Anyone may execute it, in any transaction: the Ruby
/// client runs it on an ActiveRecord connection inside the app's transaction.
#[derive(Debug, Clone, Serialize)]
pub struct TaskPlan {
    pub task_uuid: Uuid,
    pub named_task_uuid: Uuid,
    pub context: Value,
    pub identity_hash: String,
    pub correlation_id: Uuid,
    pub queue: String,
    pub task_transitions: [Uuid; 2],
    pub steps: Vec<PlannedStep>,
    pub edges: Vec<PlannedEdge>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub step_uuid: Uuid,
    pub name: String,
    pub retryable: bool,
    pub max_attempts: i32,
    pub pending_uuid: Uuid,
    /// Root steps only: the `enqueued` transition (and a message is sent).
    pub enqueued_uuid: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedEdge {
    pub edge_uuid: Uuid,
    pub from_step: Uuid,
    pub to_step: Uuid,
}

/// Reads the template and plans the task; writes nothing. Refuses a context over the JSON
/// limits (`InvalidInput`) and an unknown template (`Configuration`).
pub async fn plan_task(pool: &PgPool, request: &TaskRequest) -> TaskerResult<TaskPlan> {
    // Refused before anything is written: a context the worker could not decode would leave
    // every step of the task failing as invalid_input.
    crate::limits::check_value(&request.context, "the task context")?;
    let row = sqlx::query(
        "SELECT nt.named_task_uuid, nt.configuration, nt.identity_strategy::text FROM tasker.named_tasks nt \
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
    let template: TaskTemplate = serde_json::from_value(row.try_get(1)?)?;
    let named_task_uuid: Uuid = row.try_get(0)?;
    let strategy: String = row.try_get(2)?;
    let task_uuid = Uuid::now_v7();
    let identity_hash = identity_hash(request, &strategy, named_task_uuid, task_uuid)?;
    let (steps, edges) = planned_steps(&template);
    Ok(TaskPlan {
        task_uuid,
        named_task_uuid,
        context: request.context.clone(),
        identity_hash,
        correlation_id: Uuid::now_v7(),
        queue: messaging::worker_queue_name(&template.namespace_name)?,
        task_transitions: [Uuid::now_v7(), Uuid::now_v7()],
        steps,
        edges,
    })
}

/// The task's `identity_hash` (UNIQUE: creating a task whose hash exists returns that task),
/// by the template's `named_tasks.identity_strategy`, as tasker-core orders them: an
/// idempotency key, when given, is the identity; else `strict` hashes the template and the
/// context (SHA-256 of the named task's uuid and the context as JSON with every object's keys
/// sorted, so key order does not matter), `caller_provided` refuses a request without a key,
/// and `always_unique` (this project's default) is the new task's uuid. tasker-core's own
/// hash is a 64-bit hasher's, so the two never recognise each other's strict tasks.
fn identity_hash(
    request: &TaskRequest,
    strategy: &str,
    named_task_uuid: Uuid,
    task_uuid: Uuid,
) -> TaskerResult<String> {
    if let Some(key) = &request.idempotency_key {
        return Ok(key.clone());
    }
    match IdentityStrategy::parse(strategy) {
        Some(IdentityStrategy::Strict) => {
            let mut canonical = String::new();
            write_canonical(&request.context, &mut canonical);
            let digest = Sha256::new()
                .chain_update(named_task_uuid.as_bytes())
                .chain_update(canonical.as_bytes())
                .finalize();
            Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
        }
        Some(IdentityStrategy::CallerProvided) => Err(TaskerError::InvalidInput(format!(
            "task template {}/{}@{} has identity_strategy caller_provided: create_task needs an idempotency_key",
            request.namespace, request.name, request.version
        ))),
        Some(IdentityStrategy::AlwaysUnique) => Ok(task_uuid.to_string()),
        None => Err(TaskerError::Configuration(format!(
            "task template {}/{}@{}: unknown identity_strategy {strategy:?}",
            request.namespace, request.name, request.version
        ))),
    }
}

/// JSON text with every object's keys in sorted order (serde_json's own order depends on its
/// features).
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The steps created with the task. A static template: all of them. With dynamic step types,
/// tasker-core's initial set, made stricter: never a `batch_worker` (a template for the
/// workers a batchable step's outcome creates) nor a `deferred_convergence` (created by the
/// outcome it waits for), nor anything below a decision (created by its outcome), a
/// batch_worker or a deferred_convergence. tasker-core creates a convergence that is not below
/// a decision at once, with no edge, so it runs first; here it waits for its outcome. Edges
/// only between steps created here.
pub(crate) fn initial_step_names(template: &TaskTemplate) -> HashSet<String> {
    let mut excluded = HashSet::new();
    for step in &template.steps {
        match step.kind() {
            StepType::Standard | StepType::Batchable => {}
            StepType::Decision => excluded.extend(template.descendants(&step.name)),
            StepType::DeferredConvergence | StepType::BatchWorker => {
                excluded.insert(step.name.clone());
                excluded.extend(template.descendants(&step.name));
            }
        }
    }
    template
        .steps
        .iter()
        .map(|s| s.name.clone())
        .filter(|name| !excluded.contains(name))
        .collect()
}

fn planned_steps(template: &TaskTemplate) -> (Vec<PlannedStep>, Vec<PlannedEdge>) {
    let created = initial_step_names(template);
    let by_name: HashMap<&str, Uuid> = template
        .steps
        .iter()
        .filter(|step| created.contains(&step.name))
        .map(|step| (step.name.as_str(), Uuid::now_v7()))
        .collect();
    let mut steps = Vec::with_capacity(by_name.len());
    let mut edges = Vec::new();
    for step in template.steps.iter().filter(|s| created.contains(&s.name)) {
        let uuid = by_name[step.name.as_str()];
        let parents: Vec<Uuid> = step
            .dependencies
            .iter()
            .filter_map(|parent| by_name.get(parent.as_str()).copied())
            .collect();
        steps.push(PlannedStep {
            step_uuid: uuid,
            name: step.name.clone(),
            retryable: step.retry.retryable,
            max_attempts: step.retry.max_attempts as i32,
            pending_uuid: Uuid::now_v7(),
            enqueued_uuid: parents.is_empty().then(Uuid::now_v7),
        });
        for from_step in parents {
            edges.push(PlannedEdge {
                edge_uuid: Uuid::now_v7(),
                from_step,
                to_step: uuid,
            });
        }
    }
    (steps, edges)
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
         (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent, \
          created_at, updated_at) \
         SELECT $1, $2, $3, $4, $5, $6, true, now(), now() FROM (SELECT count(*) FROM retired) AS r",
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
