//! The embedded orchestrator's result processor. For each message on
//! `orchestration_step_results`, in one transaction holding the task's row lock:
//! 1. success → the step becomes `complete`; each child whose parents are now all complete is
//!    enqueued (state, then message). The task lock makes "exactly once" hold when two
//!    processes finish two parents of one child at the same moment;
//! 2. failure → while the step and its result are retryable and attempts < max_attempts, the
//!    step waits for its backoff (a delayed message: the template's backoff, or the handler's
//!    hint when longer); otherwise it becomes `error` and so does the task, whose remaining
//!    steps are then never enqueued;
//! 3. the task becomes `complete` when every step is;
//! 4. the message is archived in the same transaction. A message for a step not waiting for
//!    orchestration (a duplicate) is archived and changes nothing.
//!
//! Safe to run in every worker process at once.

use crate::error::TaskerResult;
use crate::messaging::{self, QueuedMessage, StepMessage, STEP_RESULTS_QUEUE};
use crate::orchestration::task_initializer::{insert_step_transition, insert_task_transition};
use crate::orchestration::template::TaskTemplate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct OrchestratorCounters {
    pub results_processed: AtomicU64,
    pub steps_completed: AtomicU64,
    pub steps_retried: AtomicU64,
    pub steps_failed: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub duplicates: AtomicU64,
    pub processing_errors: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrchestratorStatus {
    pub results_processed: u64,
    pub steps_completed: u64,
    pub steps_retried: u64,
    pub steps_failed: u64,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    pub duplicates: u64,
    pub processing_errors: u64,
}

impl OrchestratorCounters {
    pub fn snapshot(&self) -> OrchestratorStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OrchestratorStatus {
            results_processed: get(&self.results_processed),
            steps_completed: get(&self.steps_completed),
            steps_retried: get(&self.steps_retried),
            steps_failed: get(&self.steps_failed),
            tasks_completed: get(&self.tasks_completed),
            tasks_failed: get(&self.tasks_failed),
            duplicates: get(&self.duplicates),
            processing_errors: get(&self.processing_errors),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub struct ResultProcessor {
    pub pool: PgPool,
    pub wake: Arc<Notify>,
    pub counters: Arc<OrchestratorCounters>,
    pub batch_size: i32,
    /// How long a read message stays hidden; a processor that dies mid-message frees it then.
    pub visibility_timeout_seconds: i32,
}

impl ResultProcessor {
    pub async fn run(self) {
        loop {
            self.wake.notified().await;
            self.drain().await;
        }
    }

    async fn drain(&self) {
        loop {
            let read = messaging::client::read(
                &self.pool,
                STEP_RESULTS_QUEUE,
                self.visibility_timeout_seconds,
                self.batch_size,
            )
            .await;
            let messages = match read {
                Ok(messages) if messages.is_empty() => return,
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "reading step results failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return;
                }
            };
            for message in messages {
                if let Err(err) = self.process(&message).await {
                    bump(&self.counters.processing_errors);
                    tracing::warn!(error = %err, msg_id = message.msg_id, "processing a step result failed; it is retried after its visibility timeout");
                }
            }
        }
    }

    async fn process(&self, queued: &QueuedMessage) -> TaskerResult<()> {
        let mut tx = self.pool.begin().await?;
        let Ok(message) = StepMessage::deserialize(&queued.message) else {
            tracing::error!(msg_id = queued.msg_id, message = %queued.message, "unparseable step result message archived");
            messaging::client::archive(&mut *tx, STEP_RESULTS_QUEUE, &[queued.msg_id]).await?;
            tx.commit().await?;
            return Ok(());
        };
        let task = sqlx::query(
            "SELECT t.correlation_id, nt.configuration, tt.to_state FROM tasker.tasks t \
             JOIN tasker.named_tasks nt ON nt.named_task_uuid = t.named_task_uuid \
             JOIN tasker.task_transitions tt ON tt.task_uuid = t.task_uuid AND tt.most_recent \
             WHERE t.task_uuid = $1 FOR UPDATE OF t",
        )
        .bind(message.task_uuid)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(task) = task {
            let template: TaskTemplate = serde_json::from_value(task.try_get(1)?)?;
            let task_state: String = task.try_get(2)?;
            let correlation_id: Uuid = task.try_get(0)?;
            let ctx = TaskCtx {
                task_uuid: message.task_uuid,
                correlation_id,
                template: &template,
                task_state,
            };
            self.apply(&mut tx, &ctx, message.step_uuid).await?;
        } else {
            bump(&self.counters.duplicates);
        }
        messaging::client::archive(&mut *tx, STEP_RESULTS_QUEUE, &[queued.msg_id]).await?;
        tx.commit().await?;
        bump(&self.counters.results_processed);
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, ctx: &TaskCtx<'_>, step_uuid: Uuid) -> TaskerResult<()> {
        let Some(step) = sqlx::query(
            "SELECT ns.name, ws.attempts, ws.max_attempts, ws.retryable, ws.results, tr.to_state, tr.sort_key \
             FROM tasker.workflow_steps ws \
             JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
             JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
             WHERE ws.workflow_step_uuid = $1 AND ws.task_uuid = $2",
        )
        .bind(step_uuid)
        .bind(ctx.task_uuid)
        .fetch_optional(&mut *tx)
        .await?
        else {
            bump(&self.counters.duplicates);
            return Ok(());
        };
        let name: String = step.try_get(0)?;
        let state: String = step.try_get(5)?;
        let sort_key: i32 = step.try_get(6)?;
        match state.as_str() {
            "enqueued_for_orchestration" => {
                // The transition and the step row in one statement; the INSERT reads both
                // counts, so the UPDATEs have run before it.
                sqlx::query(
                    "WITH retired AS ( \
                         UPDATE tasker.workflow_step_transitions SET most_recent = false, updated_at = now() \
                          WHERE workflow_step_uuid = $2 AND most_recent RETURNING 1), \
                     processed AS ( \
                         UPDATE tasker.workflow_steps \
                            SET processed = true, processed_at = now(), in_process = false, updated_at = now() \
                          WHERE workflow_step_uuid = $2 RETURNING 1) \
                     INSERT INTO tasker.workflow_step_transitions \
                     (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent) \
                     SELECT $1, $2, 'enqueued_for_orchestration', 'complete', '{\"event\": \"complete\"}'::jsonb, $3, true \
                       FROM (SELECT count(*) FROM retired) AS r, (SELECT count(*) FROM processed) AS p",
                )
                .bind(Uuid::now_v7())
                .bind(step_uuid)
                .bind(sort_key + 1)
                .execute(&mut *tx)
                .await?;
                bump(&self.counters.steps_completed);
                if ctx.task_state != "error" {
                    self.enqueue_ready_children(tx, ctx, step_uuid).await?;
                }
            }
            "enqueued_as_error_for_orchestration" => {
                let attempts: i32 = step.try_get(1)?;
                let max_attempts: i32 = step.try_get(2)?;
                let step_retryable: bool = step.try_get(3)?;
                let results: Option<Value> = step.try_get(4)?;
                let result_retryable = results
                    .as_ref()
                    .and_then(|r| r["metadata"]["retryable"].as_bool())
                    .unwrap_or(false);
                if step_retryable && result_retryable && attempts < max_attempts {
                    let policy = ctx
                        .template
                        .step(&name)
                        .map(|s| s.retry.clone())
                        .unwrap_or_default();
                    let backoff_s = policy.backoff_ms(attempts as u32 + 1).div_ceil(1000);
                    let hint_s = results
                        .as_ref()
                        .and_then(|r| r["orchestration_metadata"]["backoff_hint"]["delay_seconds"].as_u64())
                        .unwrap_or(0);
                    let delay = backoff_s.max(hint_s) as i32;
                    let meta =
                        json!({"event": "wait_for_retry", "attempts": attempts, "delay_seconds": delay});
                    insert_step_transition(
                        tx,
                        step_uuid,
                        Some(&state),
                        "waiting_for_retry",
                        sort_key + 1,
                        meta,
                    )
                    .await?;
                    insert_step_transition(
                        tx,
                        step_uuid,
                        Some("waiting_for_retry"),
                        "enqueued",
                        sort_key + 2,
                        json!({"event": "retry"}),
                    )
                    .await?;
                    self.send_step(tx, ctx, step_uuid, delay).await?;
                    bump(&self.counters.steps_retried);
                } else {
                    insert_step_transition(
                        tx,
                        step_uuid,
                        Some(&state),
                        "error",
                        sort_key + 1,
                        json!({"event": "fail", "attempts": attempts}),
                    )
                    .await?;
                    sqlx::query("UPDATE tasker.workflow_steps SET in_process = false, updated_at = now() WHERE workflow_step_uuid = $1")
                        .bind(step_uuid)
                        .execute(&mut *tx)
                        .await?;
                    bump(&self.counters.steps_failed);
                }
            }
            _ => {
                bump(&self.counters.duplicates);
                return Ok(());
            }
        }
        self.settle_task(tx, ctx).await
    }

    /// Enqueues every child of `parent` whose parents are now all complete: its `enqueued`
    /// transition and its message, in one statement (the task's row lock, held by the
    /// caller, makes this exactly once per child).
    async fn enqueue_ready_children(
        &self,
        tx: &mut PgConnection,
        ctx: &TaskCtx<'_>,
        parent: Uuid,
    ) -> TaskerResult<()> {
        let queue = messaging::worker_queue_name(&ctx.template.namespace_name)?;
        // Time-ordered uuids for the new transitions; past these (a fan-out wider than
        // TRANSITION_UUIDS children) PostgreSQL makes random ones.
        let transition_uuids: Vec<Uuid> = (0..TRANSITION_UUIDS).map(|_| Uuid::now_v7()).collect();
        sqlx::query(
            "WITH ready AS ( \
                 SELECT c.to_step_uuid AS step_uuid, ct.sort_key, \
                        row_number() OVER (ORDER BY c.to_step_uuid) AS n \
                   FROM tasker.workflow_step_edges c \
                   JOIN tasker.workflow_step_transitions ct \
                     ON ct.workflow_step_uuid = c.to_step_uuid AND ct.most_recent AND ct.to_state = 'pending' \
                  WHERE c.from_step_uuid = $1 AND NOT EXISTS ( \
                        SELECT 1 FROM tasker.workflow_step_edges pe \
                          JOIN tasker.workflow_step_transitions pt \
                            ON pt.workflow_step_uuid = pe.from_step_uuid AND pt.most_recent \
                         WHERE pe.to_step_uuid = c.to_step_uuid AND pt.to_state NOT IN ('complete', 'resolved_manually'))), \
             retired AS ( \
                 UPDATE tasker.workflow_step_transitions t SET most_recent = false, updated_at = now() \
                   FROM ready r WHERE t.workflow_step_uuid = r.step_uuid AND t.most_recent \
                 RETURNING 1), \
             enqueued AS ( \
                 INSERT INTO tasker.workflow_step_transitions \
                 (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent) \
                 SELECT coalesce(($2::uuid[])[r.n], gen_random_uuid()), r.step_uuid, 'pending', 'enqueued', \
                        '{\"event\": \"enqueue\"}'::jsonb, r.sort_key + 1, true \
                   FROM ready r, (SELECT count(*) FROM retired) AS done \
                 RETURNING workflow_step_uuid) \
             SELECT tasker.pgmq_send_with_notify($3, \
                        jsonb_build_object('task_uuid', $4::uuid, 'step_uuid', e.workflow_step_uuid, 'correlation_id', $5::uuid), 0) \
               FROM enqueued e ORDER BY e.workflow_step_uuid",
        )
        .bind(parent)
        .bind(&transition_uuids)
        .bind(&queue)
        .bind(ctx.task_uuid)
        .bind(ctx.correlation_id)
        .fetch_all(&mut *tx)
        .await?;
        Ok(())
    }

    async fn send_step(
        &self,
        tx: &mut PgConnection,
        ctx: &TaskCtx<'_>,
        step_uuid: Uuid,
        delay: i32,
    ) -> TaskerResult<()> {
        let queue = messaging::worker_queue_name(&ctx.template.namespace_name)?;
        let message = StepMessage {
            task_uuid: ctx.task_uuid,
            step_uuid,
            correlation_id: ctx.correlation_id,
        };
        messaging::client::send_with_notify(&mut *tx, &queue, &message, delay).await?;
        Ok(())
    }

    /// Moves the task to `error` at the first failed step, to `complete` when all are done.
    async fn settle_task(&self, tx: &mut PgConnection, ctx: &TaskCtx<'_>) -> TaskerResult<()> {
        let counts = sqlx::query(
            "SELECT count(*), count(*) FILTER (WHERE tr.to_state IN ('complete', 'resolved_manually')), \
                    count(*) FILTER (WHERE tr.to_state = 'error') \
             FROM tasker.workflow_steps ws \
             JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
             WHERE ws.task_uuid = $1",
        )
        .bind(ctx.task_uuid)
        .fetch_one(&mut *tx)
        .await?;
        let (total, done, errors): (i64, i64, i64) =
            (counts.try_get(0)?, counts.try_get(1)?, counts.try_get(2)?);
        let settled = match ctx.task_state.as_str() {
            "complete" | "error" => None,
            _ if errors > 0 => Some("error"),
            _ if done == total => Some("complete"),
            _ => None,
        };
        if let Some(state) = settled {
            insert_task_transition(tx, ctx.task_uuid, Some(&ctx.task_state), state).await?;
            sqlx::query("UPDATE tasker.tasks SET complete = $2, completed_at = now(), updated_at = now() WHERE task_uuid = $1")
                .bind(ctx.task_uuid)
                .bind(state == "complete")
                .execute(&mut *tx)
                .await?;
            bump(if state == "complete" {
                &self.counters.tasks_completed
            } else {
                &self.counters.tasks_failed
            });
        }
        Ok(())
    }
}

/// Transition uuids made per `enqueue_ready_children` call (see there).
const TRANSITION_UUIDS: usize = 16;

struct TaskCtx<'a> {
    task_uuid: Uuid,
    correlation_id: Uuid,
    template: &'a TaskTemplate,
    task_state: String,
}
