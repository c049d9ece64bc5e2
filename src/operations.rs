//! The operator's levers and views (issue 17), usable without a worker in the process: list
//! tasks, cancel a task, retry a step or a task, resolve a step manually, list and replay dead
//! letters, list worker processes, and a status summary. Each lever is one call of a function
//! in `sql/functions/operations.sql`, in one transaction that locks the task's row and then
//! its steps' rows in the orchestrator's and the workers' order, so it is safe from several
//! processes at once and against running workers; what the state machine does not allow is
//! refused with `TaskerError::InvalidState`, an unknown uuid with `TaskerError::NotFound`.

use crate::database;
use crate::error::{TaskerError, TaskerResult};
use crate::limits;
use crate::orchestration::{task_summary, StepSummary};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A worker whose heartbeat is older than this (and that has not stopped) is shown as `gone`.
pub const GONE_AFTER_SECONDS: i32 = 30;
/// A worker row whose heartbeat is older than this is deleted by whoever lists workers or
/// heartbeats.
pub const PRUNE_AFTER_SECONDS: i32 = 3600;
/// At most this many rows from `tasks` and `dead_letters`, whatever the caller asks.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// What `tasks` lists; every field narrows the list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Tasks created before this time (for paging: pass the last row's `created_at`).
    pub before: Option<DateTime<Utc>>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TaskRow {
    pub task_uuid: Uuid,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub steps: i64,
    pub steps_in_error: i64,
}

/// A task with its DAG: each step's parents (by name), state, attempts and error message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskDetail {
    pub task_uuid: Uuid,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub complete: bool,
    pub context: Value,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// As in `TaskSummary` (with each step's stored result).
    pub steps: Vec<StepSummary>,
    pub dag: Vec<StepNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepNode {
    pub step_uuid: Uuid,
    pub name: String,
    pub parents: Vec<String>,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    /// `results.error.message` of a failed step (with its `error_type` when there is one).
    pub error: Option<String>,
}

/// What a lever did to its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub task_uuid: Uuid,
    /// The task's state afterwards.
    pub task_state: String,
    /// Steps cancelled (cancel), or step messages sent (retry, resolve).
    pub steps: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub queue_name: String,
    pub msg_id: i64,
    pub read_ct: i32,
    pub message: Option<Value>,
    pub reason: String,
    pub worker_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub worker_id: String,
    pub hostname: String,
    pub pid: i32,
    pub namespaces: Vec<String>,
    pub concurrency: i32,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// running, quiet, stopped, or gone (no heartbeat for `GONE_AFTER_SECONDS`).
    pub state: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub queue_name: String,
    pub length: i64,
    pub oldest_message_age_seconds: Option<i32>,
}

/// `status`: the schema, and (when it is up to date) workers, queues and counts by state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub schema_up_to_date: bool,
    /// What is missing or out of date (`ensure_schema`'s message) when it is not.
    pub schema_problem: Option<String>,
    pub workers: Vec<WorkerRow>,
    pub queues: Vec<QueueDepth>,
    pub tasks_by_state: BTreeMap<String, i64>,
    pub steps_by_state: BTreeMap<String, i64>,
}

/// `text` as an RFC 3339 time (`what` names it in the error).
pub fn parse_time(text: &str, what: &str) -> TaskerResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| TaskerError::InvalidInput(format!("{what} {text:?} is not an RFC 3339 time: {err}")))
}

/// A refusal raised by sql/functions/operations.sql, as its TaskerError.
fn refusal(err: sqlx::Error) -> TaskerError {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            Some("TWNFD") => return TaskerError::NotFound(db.message().to_string()),
            Some("TWSTA") => return TaskerError::InvalidState(db.message().to_string()),
            _ => {}
        }
    }
    TaskerError::Database(err)
}

/// A state with at most this many tasks is listed from the state's index (its tasks sorted),
/// a commoner one by walking tasks newest first (issue 18: < 100 ms with 100k tasks either way).
const RARE_STATE_TASKS: i64 = 20_000;

pub async fn tasks(pool: &PgPool, filter: &TaskFilter) -> TaskerResult<Vec<TaskRow>> {
    if let Some(state) = &filter.state {
        let in_state: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM tasker.task_transitions \
              WHERE most_recent AND to_state = $1 LIMIT $2) s",
        )
        .bind(state)
        .bind(RARE_STATE_TASKS + 1)
        .fetch_one(pool)
        .await?;
        if in_state <= RARE_STATE_TASKS {
            return tasks_query(pool, filter, true).await;
        }
    }
    tasks_query(pool, filter, false).await
}

/// `from_state`: candidates are the state's tasks (materialised, then sorted), not every task.
async fn tasks_query(pool: &PgPool, filter: &TaskFilter, from_state: bool) -> TaskerResult<Vec<TaskRow>> {
    let from = if from_state {
        "FROM (SELECT task_uuid FROM tasker.task_transitions WHERE most_recent AND to_state = $1 OFFSET 0) c \
           JOIN tasker.tasks t ON t.task_uuid = c.task_uuid "
    } else {
        "FROM tasker.tasks t "
    };
    let sql = format!(
        "SELECT t.task_uuid, tn.name AS namespace, nt.name, nt.version, tt.to_state AS state, \
                t.created_at::timestamptz AS created_at, t.completed_at::timestamptz AS completed_at, \
                (SELECT count(*) FROM tasker.workflow_steps ws WHERE ws.task_uuid = t.task_uuid) AS steps, \
                (SELECT count(*) FROM tasker.workflow_steps ws \
                   JOIN tasker.workflow_step_transitions tr \
                     ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent AND tr.to_state = 'error' \
                  WHERE ws.task_uuid = t.task_uuid) AS steps_in_error \
           {from}\
           JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid \
           JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid \
           JOIN tasker.task_transitions tt ON tt.task_uuid = t.task_uuid AND tt.most_recent \
          WHERE ($1::text IS NULL OR tt.to_state = $1) AND ($2::text IS NULL OR tn.name = $2) \
            AND ($3::text IS NULL OR nt.name = $3) AND ($4::timestamptz IS NULL OR t.created_at < $4) \
          ORDER BY t.created_at DESC, t.task_uuid DESC LIMIT $5"
    );
    Ok(sqlx::query_as::<_, TaskRow>(&sql)
        .bind(&filter.state)
        .bind(&filter.namespace)
        .bind(&filter.name)
        .bind(filter.before)
        .bind(filter.limit.clamp(1, MAX_LIST_LIMIT))
        .fetch_all(pool)
        .await?)
}

/// The task (`task_summary`) and its DAG.
pub async fn task_detail(pool: &PgPool, task_uuid: Uuid) -> TaskerResult<TaskDetail> {
    let summary = task_summary(pool, task_uuid).await.map_err(|err| match err {
        TaskerError::Configuration(msg) => TaskerError::NotFound(msg),
        other => other,
    })?;
    let edges: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT e.to_step_uuid, ns.name FROM tasker.workflow_step_edges e \
           JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = e.from_step_uuid \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
          WHERE ws.task_uuid = $1 ORDER BY ns.name",
    )
    .bind(task_uuid)
    .fetch_all(pool)
    .await?;
    let dag = summary
        .steps
        .iter()
        .map(|s| StepNode {
            step_uuid: s.step_uuid,
            name: s.name.clone(),
            parents: edges
                .iter()
                .filter(|(to, _)| *to == s.step_uuid)
                .map(|(_, n)| n.clone())
                .collect(),
            state: s.state.clone(),
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            error: s.results.as_ref().and_then(error_message),
        })
        .collect();
    Ok(TaskDetail {
        task_uuid: summary.task_uuid,
        namespace: summary.namespace,
        name: summary.name,
        version: summary.version,
        state: summary.state,
        complete: summary.complete,
        context: summary.context,
        created_at: summary.created_at,
        completed_at: summary.completed_at,
        steps: summary.steps,
        dag,
    })
}

fn error_message(results: &Value) -> Option<String> {
    let error = results.get("error").filter(|e| e.is_object())?;
    let message = error["message"].as_str().unwrap_or("(no message)");
    Some(match error["error_type"].as_str() {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_string(),
    })
}

/// Cancels a task (see `tasker.operations_cancel_task`); `steps` is how many it cancelled.
pub async fn cancel_task(pool: &PgPool, task_uuid: Uuid) -> TaskerResult<Outcome> {
    let steps: i32 = sqlx::query_scalar("SELECT tasker.operations_cancel_task($1)")
        .bind(task_uuid)
        .fetch_one(pool)
        .await
        .map_err(refusal)?;
    Ok(Outcome {
        task_uuid,
        task_state: "cancelled".into(),
        steps,
    })
}

/// Retries one step in `error` with a fresh attempt budget; its task resumes.
pub async fn retry_step(pool: &PgPool, step_uuid: Uuid) -> TaskerResult<Outcome> {
    retry(pool, None, Some(step_uuid)).await
}

/// Retries every step in `error` of a task with a fresh attempt budget; the task resumes.
pub async fn retry_task(pool: &PgPool, task_uuid: Uuid) -> TaskerResult<Outcome> {
    retry(pool, Some(task_uuid), None).await
}

async fn retry(pool: &PgPool, task: Option<Uuid>, step: Option<Uuid>) -> TaskerResult<Outcome> {
    let (task_uuid, task_state, steps): (Uuid, String, i32) = sqlx::query_as(
        "SELECT coalesce($1, (SELECT task_uuid FROM tasker.workflow_steps WHERE workflow_step_uuid = $2)), \
                r.task_state, r.sent FROM tasker.operations_retry($1, $2) r",
    )
    .bind(task)
    .bind(step)
    .fetch_one(pool)
    .await
    .map_err(refusal)?;
    Ok(Outcome {
        task_uuid,
        task_state,
        steps,
    })
}

/// Resolves a step manually with `result` as its stored result; its children are released
/// as if it had completed.
pub async fn resolve_step_manually(pool: &PgPool, step_uuid: Uuid, result: &Value) -> TaskerResult<Outcome> {
    limits::check_value(result, "the manual result")?;
    let (task_uuid, task_state, steps): (Uuid, String, i32) = sqlx::query_as(
        "SELECT (SELECT task_uuid FROM tasker.workflow_steps WHERE workflow_step_uuid = $1), r.task_state, r.sent \
           FROM tasker.operations_resolve_step($1, $2) r",
    )
    .bind(step_uuid)
    .bind(result)
    .fetch_one(pool)
    .await
    .map_err(refusal)?;
    Ok(Outcome {
        task_uuid,
        task_state,
        steps,
    })
}

/// Dead letters, newest first.
pub async fn dead_letters(pool: &PgPool, limit: i64) -> TaskerResult<Vec<DeadLetter>> {
    let rows = sqlx::query(
        "SELECT dead_letter_uuid, queue_name, msg_id, read_ct, message, reason, worker_id, \
                created_at, replayed_at \
           FROM tasker.dead_letters ORDER BY created_at DESC, dead_letter_uuid DESC LIMIT $1",
    )
    .bind(limit.clamp(1, MAX_LIST_LIMIT))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            // A dead letter's body is whatever was on the queue: decoded under the JSON
            // limits, and shown as absent when it is over them.
            let message = crate::messaging::client::json_column(&r, "message", "a dead letter's message")
                .unwrap_or(None);
            Ok(DeadLetter {
                id: r.try_get(0)?,
                queue_name: r.try_get(1)?,
                msg_id: r.try_get(2)?,
                read_ct: r.try_get(3)?,
                message,
                reason: r.try_get(5)?,
                worker_id: r.try_get(6)?,
                created_at: r.try_get(7)?,
                replayed_at: r.try_get(8)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Sends a dead letter's message again to its queue; returns the new message's id.
pub async fn replay_dead_letter(pool: &PgPool, id: Uuid) -> TaskerResult<i64> {
    sqlx::query_scalar("SELECT tasker.operations_replay_dead_letter($1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(refusal)
}

/// Worker processes, newest first; rows older than `prune_after` seconds are deleted, and
/// workers silent for `gone_after` seconds are shown as `gone`.
pub async fn workers_with(pool: &PgPool, gone_after: i32, prune_after: i32) -> TaskerResult<Vec<WorkerRow>> {
    Ok(sqlx::query_as::<_, WorkerRow>(
        "SELECT worker_id, hostname, pid, namespaces, concurrency, started_at, last_heartbeat, state, version \
           FROM tasker.operations_workers($1, $2)",
    )
    .bind(gone_after)
    .bind(prune_after)
    .fetch_all(pool)
    .await?)
}

/// `workers_with` the default thresholds.
pub async fn workers(pool: &PgPool) -> TaskerResult<Vec<WorkerRow>> {
    workers_with(pool, GONE_AFTER_SECONDS, PRUNE_AFTER_SECONDS).await
}

/// The schema's state, and when it is up to date: workers, queue depths (every PGMQ queue),
/// tasks and steps counted by state.
pub async fn status(pool: &PgPool) -> TaskerResult<Status> {
    let mut status = Status {
        schema_up_to_date: true,
        schema_problem: None,
        workers: Vec::new(),
        queues: Vec::new(),
        tasks_by_state: BTreeMap::new(),
        steps_by_state: BTreeMap::new(),
    };
    match database::ensure_schema(pool).await {
        Ok(()) => {}
        Err(TaskerError::Migration(problem)) => {
            status.schema_up_to_date = false;
            status.schema_problem = Some(problem);
            return Ok(status);
        }
        Err(other) => return Err(other),
    }
    status.workers = workers(pool).await?;
    status.queues = queue_depths(pool).await?;
    status.tasks_by_state = counts(
        pool,
        "SELECT to_state, count(*) FROM tasker.task_transitions WHERE most_recent GROUP BY to_state",
    )
    .await?;
    status.steps_by_state = counts(
        pool,
        "SELECT to_state, count(*) FROM tasker.workflow_step_transitions WHERE most_recent GROUP BY to_state",
    )
    .await?;
    Ok(status)
}

async fn queue_depths(pool: &PgPool) -> TaskerResult<Vec<QueueDepth>> {
    let queues: Vec<(String, i64, Option<i32>)> = sqlx::query_as(
        "SELECT queue_name, queue_length, oldest_msg_age_sec FROM pgmq.metrics_all() ORDER BY queue_name",
    )
    .fetch_all(pool)
    .await?;
    Ok(queues
        .into_iter()
        .map(|(queue_name, length, oldest)| QueueDepth {
            queue_name,
            length,
            oldest_message_age_seconds: oldest,
        })
        .collect())
}

async fn counts(pool: &PgPool, sql: &'static str) -> TaskerResult<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

// ---- The dashboard's views (issue 18, lib/tasker_worker/web.rb) ----

/// Steps that finished (complete) and failed (error) in one minute of the last hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ActivityMinute {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
}

/// `activity`: the last hour, minute by minute (minutes with neither left out), its totals,
/// and every queue's depth (the overview's numbers, without `status`'s counts of every row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activity {
    pub completed_last_hour: i64,
    pub failed_last_hour: i64,
    /// completed_last_hour / 3600.
    pub steps_per_second: f64,
    pub minutes: Vec<ActivityMinute>,
    pub queues: Vec<QueueDepth>,
}

/// A step in `error` or `waiting_for_retry`, with its task and its stored error.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct FailedStep {
    pub step_uuid: Uuid,
    pub step_name: String,
    pub task_uuid: Uuid,
    pub namespace: String,
    pub task_name: String,
    pub state: String,
    pub attempts: i32,
    /// `results.error.error_type` (or `error_class`), `unknown` when the step stored neither.
    pub error_type: String,
    pub message: Option<String>,
    pub failed_at: DateTime<Utc>,
}

/// One state change of a task (step_name None) or of one of its steps.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Transition {
    pub step_name: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub created_at: DateTime<Utc>,
}

/// The activity figures' query: per minute of the last hour, the step transitions to
/// complete and to error. Its WHERE is the predicate of workflow_step_transitions_activity_idx
/// (migration 20261205000001), the only rows it reads (tests/dashboard.rs checks the plan).
pub const ACTIVITY_SQL: &str = "SELECT date_trunc('minute', created_at)::timestamptz AS minute, \
            count(*) FILTER (WHERE to_state = 'complete') AS completed, \
            count(*) FILTER (WHERE to_state = 'error') AS failed \
       FROM tasker.workflow_step_transitions \
      WHERE created_at > now() - interval '1 hour' AND to_state IN ('complete', 'error') \
      GROUP BY 1 ORDER BY 1";

/// Steps completed and failed over the last hour (step transitions to complete / error).
pub async fn activity(pool: &PgPool) -> TaskerResult<Activity> {
    let minutes: Vec<ActivityMinute> = sqlx::query_as(ACTIVITY_SQL).fetch_all(pool).await?;
    let completed_last_hour = minutes.iter().map(|m| m.completed).sum::<i64>();
    let failed_last_hour = minutes.iter().map(|m| m.failed).sum::<i64>();
    Ok(Activity {
        completed_last_hour,
        failed_last_hour,
        steps_per_second: completed_last_hour as f64 / 3600.0,
        minutes,
        queues: queue_depths(pool).await?,
    })
}

/// Steps now in `error` or `waiting_for_retry`, most recently failed first, at most `limit`.
pub async fn failed_steps(pool: &PgPool, limit: i64) -> TaskerResult<Vec<FailedStep>> {
    Ok(sqlx::query_as::<_, FailedStep>(
        "SELECT ws.workflow_step_uuid AS step_uuid, ns.name AS step_name, ws.task_uuid, tn.name AS namespace, \
                nt.name AS task_name, tr.to_state AS state, coalesce(ws.attempts, 0) AS attempts, \
                coalesce(ws.results #>> '{error,error_type}', ws.results #>> '{error,error_class}', 'unknown') \
                  AS error_type, \
                ws.results #>> '{error,message}' AS message, tr.created_at::timestamptz AS failed_at \
           FROM tasker.workflow_step_transitions tr \
           JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = tr.workflow_step_uuid \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
           JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid \
           JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid \
           JOIN tasker.task_namespaces tn ON tn.task_namespace_uuid = nt.task_namespace_uuid \
          WHERE tr.most_recent AND tr.to_state IN ('error', 'waiting_for_retry') \
          ORDER BY tr.created_at DESC, ws.workflow_step_uuid LIMIT $1",
    )
    .bind(limit.clamp(1, MAX_LIST_LIMIT))
    .fetch_all(pool)
    .await?)
}

/// The task's transitions and its steps', oldest first; NotFound for an unknown task.
pub async fn task_transitions(pool: &PgPool, task_uuid: Uuid) -> TaskerResult<Vec<Transition>> {
    let rows = sqlx::query_as::<_, Transition>(
        "SELECT NULL::text AS step_name, from_state::text, to_state::text, created_at::timestamptz AS created_at \
           FROM tasker.task_transitions WHERE task_uuid = $1 \
         UNION ALL \
         SELECT ns.name, tr.from_state::text, tr.to_state::text, tr.created_at::timestamptz \
           FROM tasker.workflow_steps ws \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
           JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid \
          WHERE ws.task_uuid = $1 \
          ORDER BY created_at, step_name NULLS FIRST LIMIT 2000",
    )
    .bind(task_uuid)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(TaskerError::NotFound(format!("no task {task_uuid}")));
    }
    Ok(rows)
}
