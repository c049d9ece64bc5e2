//! The embedded orchestrator's result processor. For each message on
//! `orchestration_step_results`, in one transaction holding the task's row lock:
//! 1. success → the step becomes `complete`; each child whose parents are now all complete is
//!    enqueued (state, then message). The task lock makes "exactly once" hold when two
//!    processes finish two parents of one child at the same moment;
//! 2. failure → while the step and its result are retryable and attempts < max_attempts, the
//!    step waits for its backoff (a delayed message: the template's backoff, or the handler's
//!    hint when longer); otherwise it becomes `error` and the task `blocked_by_failures`
//!    (tasker-core's state for it), whose remaining steps are then never enqueued;
//! 3. the task becomes `complete` when every step is; a cancelled task's late results are
//!    recorded (a success completes its step, a failure cancels it) and change nothing else;
//! 4. the message is archived in the same transaction. A message for a step not waiting for
//!    orchestration (a duplicate) is archived and changes nothing;
//! 5. each message read is judged alone: one that cannot be decoded (over the JSON limits,
//!    not JSON) or is not a StepMessage is dead-lettered (`tasker.dead_letters`) at once, and
//!    one whose processing keeps failing is dead-lettered once it has been read more than
//!    `max_delivery_attempts` times; nothing is looped on;
//! 6. processing that fails while the database is away is retried with a short backoff
//!    (`RetryBackoff`) as soon as it is back, for up to half the visibility timeout, not
//!    after it.
//!
//! 7. a success of a `decision` or `batchable` step (tasker.orchestrator_complete_step answers
//!    `dynamic` for it and changes nothing): `process_dynamic` applies its outcome
//!    (`super::dynamic`: the chosen steps, or the batch workers and their convergence) and
//!    completes the step in one transaction; an outcome that cannot be applied fails the step
//!    (`error`, the reason in its result; the task becomes `blocked_by_failures`).
//!
//! A success is the hot path of every workflow: it is one call of
//! `tasker.orchestrator_complete_step` (sql/functions/orchestrator.sql), one round trip and one
//! transaction. A failure result (rare; the retry policy is the template's) is handled here,
//! in a transaction of its own.
//!
//! Safe to run in every worker process at once.

use crate::config::OrchestrationConfig;
use crate::error::{RetryBackoff, TaskerResult};
use crate::messaging::{self, Poison, QueuedMessage, StepMessage, STEP_RESULTS_QUEUE};
use crate::orchestration::dynamic;
use crate::orchestration::task_initializer::insert_step_transition;
use crate::orchestration::template::TaskTemplate;
use crate::worker::event_systems::worker_event_system::NotifiedMessage;
use crate::worker::task::StopSignal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct OrchestratorCounters {
    pub results_processed: AtomicU64,
    /// Of those, processed straight from their notification, without a read.
    pub results_from_notifications: AtomicU64,
    /// Successes completed in the worker's own result transaction, with no results message
    /// (`orchestration.complete_in_commit`); counted in results_processed too.
    pub completed_in_commit: AtomicU64,
    pub steps_completed: AtomicU64,
    pub steps_retried: AtomicU64,
    pub steps_failed: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub duplicates: AtomicU64,
    pub processing_errors: AtomicU64,
    /// Result messages moved to `tasker.dead_letters`.
    pub dead_lettered: AtomicU64,
    /// Steps created by decision and batchable outcomes.
    pub dynamic_steps_created: AtomicU64,
    /// Decision / batchable outcomes refused (their step failed).
    pub outcomes_refused: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrchestratorStatus {
    pub results_processed: u64,
    pub results_from_notifications: u64,
    pub completed_in_commit: u64,
    pub steps_completed: u64,
    pub steps_retried: u64,
    pub steps_failed: u64,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    pub duplicates: u64,
    pub processing_errors: u64,
    pub dead_lettered: u64,
    pub dynamic_steps_created: u64,
    pub outcomes_refused: u64,
}

impl OrchestratorCounters {
    pub fn snapshot(&self) -> OrchestratorStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OrchestratorStatus {
            results_processed: get(&self.results_processed),
            results_from_notifications: get(&self.results_from_notifications),
            completed_in_commit: get(&self.completed_in_commit),
            steps_completed: get(&self.steps_completed),
            steps_retried: get(&self.steps_retried),
            steps_failed: get(&self.steps_failed),
            tasks_completed: get(&self.tasks_completed),
            tasks_failed: get(&self.tasks_failed),
            duplicates: get(&self.duplicates),
            processing_errors: get(&self.processing_errors),
            dead_lettered: get(&self.dead_lettered),
            dynamic_steps_created: get(&self.dynamic_steps_created),
            outcomes_refused: get(&self.outcomes_refused),
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
    /// Reads of a message whose processing failed before it is dead-lettered.
    pub max_delivery_attempts: u32,
    /// Limits of decision and batchable outcomes.
    pub dynamic: OrchestrationConfig,
}

impl ResultProcessor {
    /// Runs until stopped: reads the queue when woken, and processes the messages its
    /// notifications carried (`notified`) without reading them. Stopping may cut a message
    /// short: its transaction rolls back and the message is read again after its visibility
    /// timeout, by whichever orchestrator runs then.
    pub async fn run(self, mut notified: mpsc::Receiver<NotifiedMessage>, mut stop: StopSignal) {
        loop {
            tokio::select! {
                _ = stop.stopped() => return,
                _ = self.wake.notified() => tokio::select! {
                    _ = self.drain() => {}
                    _ = stop.stopped() => return,
                },
                Some(message) = notified.recv() => tokio::select! {
                    _ = self.process_notified(message) => {}
                    _ = stop.stopped() => return,
                },
            }
        }
    }

    async fn drain(&self) {
        let mut backoff = RetryBackoff::default();
        loop {
            let read = messaging::client::read_each(
                &self.pool,
                STEP_RESULTS_QUEUE,
                self.visibility_timeout_seconds,
                self.batch_size,
            )
            .await;
            let messages = match read {
                Ok(messages) if messages.is_empty() => return,
                Ok(messages) => messages,
                Err(err) if err.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "reading step results failed while the database is away; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reading step results failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return;
                }
            };
            backoff.reset();
            let mut poison = Vec::new();
            for message in messages {
                let message = match message {
                    Ok(message) => message,
                    Err(bad) => {
                        poison.push(Poison::from(bad));
                        continue;
                    }
                };
                let Ok(step_message) = StepMessage::deserialize(&message.message) else {
                    poison.push(Poison::of(
                        &message,
                        "not a step result message (task_uuid, step_uuid, correlation_id)".into(),
                    ));
                    continue;
                };
                if let Err(err) = self.process_retrying(&message, &step_message).await {
                    bump(&self.counters.processing_errors);
                    if message.read_ct as u32 > self.max_delivery_attempts {
                        poison.push(Poison::of(
                            &message,
                            format!("processing failed in {} deliveries: {err}", message.read_ct),
                        ));
                    } else {
                        tracing::warn!(error = %err, msg_id = message.msg_id, read_ct = message.read_ct, "processing a step result failed; it is retried after its visibility timeout");
                    }
                }
            }
            if !poison.is_empty() {
                match messaging::client::dead_letter(&self.pool, STEP_RESULTS_QUEUE, None, &poison).await {
                    Ok(()) => {
                        self.counters
                            .dead_lettered
                            .fetch_add(poison.len() as u64, Ordering::Relaxed);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "dead-lettering step result messages failed; they are read again after their visibility timeout")
                    }
                }
            }
        }
    }

    /// `process`, retried with `RetryBackoff` while it fails because the database is away, for
    /// up to half the visibility timeout (the message stays leased to this processor).
    async fn process_retrying(&self, queued: &QueuedMessage, message: &StepMessage) -> TaskerResult<()> {
        let give_up = tokio::time::Instant::now()
            + Duration::from_secs(self.visibility_timeout_seconds.max(0) as u64 / 2);
        let mut backoff = RetryBackoff::default();
        loop {
            match self.process(queued.msg_id, message).await {
                Err(err) if err.is_transient() && tokio::time::Instant::now() < give_up => {
                    bump(&self.counters.processing_errors);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, msg_id = queued.msg_id, retry_in_ms = delay.as_millis() as u64, "processing a step result failed while the database is away; retrying");
                    tokio::time::sleep(delay).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn process(&self, msg_id: i64, message: &StepMessage) -> TaskerResult<()> {
        let outcome = self.complete_step(COMPLETE_READ_SQL, msg_id, message).await?;
        self.settle_outcome(outcome, msg_id, message).await
    }

    /// A message known from its notification: processed at once if no one else has it (a
    /// reader, another orchestrator); otherwise, or when it is not a StepMessage or
    /// processing fails, left to the read path.
    async fn process_notified(&self, notified: NotifiedMessage) {
        let message = match StepMessage::deserialize(&notified.message) {
            Ok(message) if notified.queue_name == STEP_RESULTS_QUEUE => message,
            _ => return self.wake.notify_one(),
        };
        let done = match self
            .complete_step(COMPLETE_NOTIFIED_SQL, notified.msg_id, &message)
            .await
        {
            Ok(Some(outcome)) => {
                bump(&self.counters.results_from_notifications);
                self.settle_outcome(Some(outcome), notified.msg_id, &message)
                    .await
            }
            Ok(None) => Ok(()), // taken elsewhere, or already archived
            Err(err) => Err(err),
        };
        if let Err(err) = done {
            tracing::debug!(error = %err, msg_id = notified.msg_id, "processing a notified step result failed; it is read from the queue instead");
            self.wake.notify_one();
        }
    }

    /// One call of `tasker.orchestrator_complete_step`; `None` when `sql` found the message
    /// taken.
    async fn complete_step(
        &self,
        sql: &'static str,
        msg_id: i64,
        message: &StepMessage,
    ) -> TaskerResult<Option<(String, Option<String>)>> {
        // Time-ordered uuids for the transitions it may insert: the step's, the task's, then
        // the children's (past those, PostgreSQL makes random ones).
        let uuids: Vec<Uuid> = (0..COMPLETE_STEP_UUIDS).map(|_| Uuid::now_v7()).collect();
        Ok(sqlx::query_as(sql)
            .bind(msg_id)
            .bind(message.task_uuid)
            .bind(message.step_uuid)
            .bind(&uuids)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Counts what `tasker.orchestrator_complete_step` did; a failure result goes on to
    /// `process_failure`.
    async fn settle_outcome(
        &self,
        outcome: Option<(String, Option<String>)>,
        msg_id: i64,
        message: &StepMessage,
    ) -> TaskerResult<()> {
        let Some((outcome, task_state)) = outcome else {
            return Ok(());
        };
        match outcome.as_str() {
            "completed" => {
                bump(&self.counters.steps_completed);
                self.count_settled(message.task_uuid, task_state.as_deref());
            }
            "failed_result" => return self.process_failure(msg_id, message).await,
            "dynamic" => return self.process_dynamic(msg_id, message).await,
            _ => bump(&self.counters.duplicates),
        }
        bump(&self.counters.results_processed);
        Ok(())
    }

    fn count_settled(&self, task_uuid: Uuid, settled: Option<&str>) {
        count_settled(&self.counters, &self.pool, task_uuid, settled);
    }

    /// A success of a decision or batchable step, in one transaction holding the task's row
    /// lock: its outcome is applied (`dynamic::plan_growth`, `dynamic::apply`), then the step
    /// is completed by `tasker.orchestrator_complete_step` (which enqueues its ready children,
    /// the new steps among them, and archives the message), then any other new step whose
    /// parents are all complete is enqueued. A replay finds the step complete and changes
    /// nothing. An outcome that cannot be applied fails the step instead (`refuse_outcome`).
    /// In a task blocked by a failed step the outcome is applied too, and its steps wait
    /// (pending) for the operator's retry or resolve; a cancelled task's is not.
    async fn process_dynamic(&self, msg_id: i64, message: &StepMessage) -> TaskerResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM tasker.tasks WHERE task_uuid = $1 FOR UPDATE")
            .bind(message.task_uuid)
            .fetch_optional(&mut *tx)
            .await?;
        let task = sqlx::query(include_str!("../../sql/queries/result_failure_task.sql"))
            .bind(message.task_uuid)
            .fetch_optional(&mut *tx)
            .await?;
        let mut created = Vec::new();
        let mut template_holder = None;
        if let Some(task) = &task {
            let template: TaskTemplate = serde_json::from_value(task.try_get(1)?)?;
            let task_state: String = task.try_get(2)?;
            let step = sqlx::query(
                "SELECT coalesce(ws.inputs ->> '__template_step_name', ns.name), ws.results, tr.to_state, tr.sort_key \
                 FROM tasker.workflow_steps ws \
                 JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
                 JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
                 WHERE ws.workflow_step_uuid = $1 AND ws.task_uuid = $2",
            )
            .bind(message.step_uuid)
            .bind(message.task_uuid)
            .fetch_optional(&mut *tx)
            .await?;
            let applies = step.as_ref().is_some_and(|s| {
                s.try_get::<String, _>(2)
                    .is_ok_and(|st| st == "enqueued_for_orchestration")
            }) && task_state != "cancelled";
            if let (Some(step), true) = (step, applies) {
                let step_name: String = step.try_get(0)?;
                let sort_key: i32 = step.try_get(3)?;
                let refused = |reason: String| dynamic::Refused {
                    error_type: "invalid_step_result",
                    message: reason,
                };
                let plan = match messaging::client::json_column(&step, "results", "the step's stored result")
                {
                    Ok(results) => {
                        let existing: HashSet<String> = sqlx::query_scalar(
                            "SELECT ns.name::text FROM tasker.workflow_steps ws \
                             JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
                             WHERE ws.task_uuid = $1",
                        )
                        .bind(message.task_uuid)
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect();
                        dynamic::plan_growth(
                            &template,
                            &step_name,
                            results.as_ref(),
                            &existing,
                            &self.dynamic,
                        )
                    }
                    Err(bad) => Err(refused(format!(
                        "step {step_name:?}: its result cannot be read: {}",
                        bad.reason
                    ))),
                };
                let ctx = TaskCtx {
                    task_uuid: message.task_uuid,
                    correlation_id: task.try_get(0)?,
                    template: &template,
                    task_state: task_state.clone(),
                };
                match plan {
                    Ok(growth) => {
                        created = dynamic::apply(&mut tx, message.task_uuid, &growth).await?;
                        if !created.is_empty() {
                            tracing::info!(event = "steps_created", task_uuid = %message.task_uuid, step_uuid = %message.step_uuid, step = %step_name, created = created.len(), steps = ?growth.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), "outcome applied");
                        }
                    }
                    Err(refused) => {
                        self.refuse_outcome(&mut tx, &ctx, message.step_uuid, &step, sort_key, &refused)
                            .await?;
                        messaging::client::archive(&mut *tx, STEP_RESULTS_QUEUE, &[msg_id]).await?;
                        tx.commit().await?;
                        bump(&self.counters.outcomes_refused);
                        bump(&self.counters.results_processed);
                        return Ok(());
                    }
                }
            }
            template_holder = Some((template, task.try_get::<Uuid, _>(0)?, task_state));
        }
        let uuids: Vec<Uuid> = (0..COMPLETE_STEP_UUIDS).map(|_| Uuid::now_v7()).collect();
        let (outcome, task_state): (String, Option<String>) = sqlx::query_as(COMPLETE_DYNAMIC_SQL)
            .bind(msg_id)
            .bind(message.task_uuid)
            .bind(message.step_uuid)
            .bind(&uuids)
            .fetch_one(&mut *tx)
            .await?;
        if outcome == "failed_result" {
            drop(tx);
            return self.process_failure(msg_id, message).await;
        }
        // A blocked task's new steps wait, as its others do, for the operator's retry or
        // resolve (which enqueues every ready pending step).
        if outcome == "completed" && !created.is_empty() {
            if let Some((template, correlation_id, t_state)) =
                template_holder.as_ref().filter(|(_, _, state)| {
                    !["blocked_by_failures", "error", "cancelled"].contains(&state.as_str())
                })
            {
                let ctx = TaskCtx {
                    task_uuid: message.task_uuid,
                    correlation_id: *correlation_id,
                    template,
                    task_state: t_state.clone(),
                };
                self.enqueue_ready(&mut tx, &ctx, &created).await?;
            }
        }
        tx.commit().await?;
        self.counters
            .dynamic_steps_created
            .fetch_add(created.len() as u64, Ordering::Relaxed);
        if outcome == "completed" {
            bump(&self.counters.steps_completed);
            self.count_settled(message.task_uuid, task_state.as_deref());
        } else {
            bump(&self.counters.duplicates);
        }
        bump(&self.counters.results_processed);
        Ok(())
    }

    /// New steps that are `pending` with every parent complete (those not children of the
    /// deciding step, which `tasker.orchestrator_complete_step` enqueued): enqueued.
    async fn enqueue_ready(
        &self,
        tx: &mut PgConnection,
        ctx: &TaskCtx<'_>,
        steps: &[Uuid],
    ) -> TaskerResult<()> {
        let ready: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT ws.workflow_step_uuid, tr.sort_key FROM tasker.workflow_steps ws \
             JOIN tasker.workflow_step_transitions tr \
               ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent AND tr.to_state = 'pending' \
             WHERE ws.workflow_step_uuid = ANY($1) \
               AND NOT EXISTS (SELECT 1 FROM tasker.workflow_step_edges pe \
                                 JOIN tasker.workflow_step_transitions pt \
                                   ON pt.workflow_step_uuid = pe.from_step_uuid AND pt.most_recent \
                                WHERE pe.to_step_uuid = ws.workflow_step_uuid \
                                  AND pt.to_state NOT IN ('complete', 'resolved_manually')) \
             ORDER BY ws.workflow_step_uuid",
        )
        .bind(steps)
        .fetch_all(&mut *tx)
        .await?;
        for (step_uuid, sort_key) in ready {
            insert_step_transition(
                tx,
                step_uuid,
                Some("pending"),
                "enqueued",
                sort_key + 1,
                json!({"event": "enqueue"}),
            )
            .await?;
            self.send_step(tx, ctx, step_uuid, 0).await?;
        }
        Ok(())
    }

    /// Fails a decision / batchable step whose outcome cannot be applied: its stored result
    /// becomes a non-retryable failure carrying the reason (the handler's `result` is kept),
    /// the step goes to `error`, and the task settles (to `blocked_by_failures`).
    async fn refuse_outcome(
        &self,
        tx: &mut PgConnection,
        ctx: &TaskCtx<'_>,
        step_uuid: Uuid,
        step: &sqlx::postgres::PgRow,
        sort_key: i32,
        refused: &dynamic::Refused,
    ) -> TaskerResult<()> {
        let state: String = step.try_get(2)?;
        let mut results = messaging::client::json_column(step, "results", "the step's stored result")
            .ok()
            .flatten()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| json!({}));
        results["success"] = json!(false);
        results["status"] = json!("error");
        results["error"] =
            json!({"message": refused.message, "error_type": refused.error_type, "retryable": false});
        if !results["metadata"].is_object() {
            results["metadata"] = json!({});
        }
        results["metadata"]["retryable"] = json!(false);
        results["metadata"]["error_type"] = json!(refused.error_type);
        sqlx::query("UPDATE tasker.workflow_steps SET results = $2, in_process = false, updated_at = now() WHERE workflow_step_uuid = $1")
            .bind(step_uuid)
            .bind(&results)
            .execute(&mut *tx)
            .await?;
        insert_step_transition(
            tx,
            step_uuid,
            Some(&state),
            "error",
            sort_key + 1,
            json!({"event": "fail", "error_type": refused.error_type, "message": refused.message}),
        )
        .await?;
        bump(&self.counters.steps_failed);
        tracing::warn!(event = "outcome_refused", task_uuid = %ctx.task_uuid, %step_uuid, namespace = %ctx.template.namespace_name, task = %ctx.template.name, error_type = refused.error_type, reason = %refused.message, "an outcome could not be applied; the step failed");
        self.settle_task(tx, ctx).await
    }

    /// A failure result: retried after its backoff or failed (with the task), in one
    /// transaction holding the task's row lock.
    async fn process_failure(&self, msg_id: i64, message: &StepMessage) -> TaskerResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM tasker.tasks WHERE task_uuid = $1 FOR UPDATE")
            .bind(message.task_uuid)
            .fetch_optional(&mut *tx)
            .await?;
        let task = sqlx::query(include_str!("../../sql/queries/result_failure_task.sql"))
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
        messaging::client::archive(&mut *tx, STEP_RESULTS_QUEUE, &[msg_id]).await?;
        tx.commit().await?;
        bump(&self.counters.results_processed);
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, ctx: &TaskCtx<'_>, step_uuid: Uuid) -> TaskerResult<()> {
        let Some(step) = sqlx::query(include_str!("../../sql/queries/result_failure_step.sql"))
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
            "enqueued_as_error_for_orchestration" => {
                let attempts: i32 = step.try_get(1)?;
                let max_attempts: i32 = step.try_get(2)?;
                let step_retryable: bool = step.try_get(3)?;
                // Decoded under the JSON limits; a result that is not (stored by some other
                // writer) is not retryable, so the step fails and its task settles instead of
                // the message failing on every read.
                let results = messaging::client::json_column(&step, "results", "the step's stored result")
                    .unwrap_or_else(|bad| {
                        tracing::warn!(%step_uuid, reason = %bad.reason, "a failure result could not be decoded; the step is not retried");
                        None
                    });
                let result_retryable = results
                    .as_ref()
                    .and_then(|r| r["metadata"]["retryable"].as_bool())
                    .unwrap_or(false);
                if ctx.task_state == "cancelled" {
                    // A late result of a cancelled task: recorded (the worker stored it), never
                    // retried; the step ends cancelled and nothing else changes.
                    insert_step_transition(
                        tx,
                        step_uuid,
                        Some(&state),
                        "cancelled",
                        sort_key + 1,
                        json!({"event": "cancel", "late_result": true, "attempts": attempts}),
                    )
                    .await?;
                    sqlx::query("UPDATE tasker.workflow_steps SET in_process = false, updated_at = now() WHERE workflow_step_uuid = $1")
                        .bind(step_uuid)
                        .execute(&mut *tx)
                        .await?;
                    return Ok(());
                } else if step_retryable && result_retryable && attempts < max_attempts {
                    let template_step: String = step.try_get(7)?;
                    let policy = ctx
                        .template
                        .step(&template_step)
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
                    let retry_at = chrono::Utc::now() + chrono::Duration::seconds(i64::from(delay));
                    tracing::info!(event = "step_retried", task_uuid = %ctx.task_uuid, %step_uuid, namespace = %ctx.template.namespace_name, task = %ctx.template.name, step = %name, attempt = attempts, max_attempts, retry_in_s = delay, retry_at = %retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "step retried");
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
                    let why = if !step_retryable || !result_retryable {
                        "not retryable"
                    } else {
                        "no attempts left"
                    };
                    tracing::warn!(event = "step_errored", task_uuid = %ctx.task_uuid, %step_uuid, namespace = %ctx.template.namespace_name, task = %ctx.template.name, step = %name, attempt = attempts, max_attempts, reason = why, "step failed for good");
                }
            }
            _ => {
                bump(&self.counters.duplicates);
                return Ok(());
            }
        }
        self.settle_task(tx, ctx).await
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

    /// Moves the task to `blocked_by_failures` at the first failed step, to `complete` when all are done
    /// (`tasker.orchestrator_settle_task`, sql/functions/orchestrator.sql).
    async fn settle_task(&self, tx: &mut PgConnection, ctx: &TaskCtx<'_>) -> TaskerResult<()> {
        let settled: Option<String> =
            sqlx::query_scalar("SELECT tasker.orchestrator_settle_task($1, $2, $3)")
                .bind(ctx.task_uuid)
                .bind(&ctx.task_state)
                .bind(Uuid::now_v7())
                .fetch_one(&mut *tx)
                .await?;
        self.count_settled(ctx.task_uuid, settled.as_deref());
        Ok(())
    }
}

/// Counts a task that settled (and logs it).
fn count_settled(counters: &OrchestratorCounters, pool: &PgPool, task_uuid: Uuid, settled: Option<&str>) {
    match settled {
        Some("complete") => bump(&counters.tasks_completed),
        Some("blocked_by_failures" | "error") => bump(&counters.tasks_failed),
        _ => return,
    }
    if tracing::enabled!(tracing::Level::INFO) {
        let state = settled.unwrap_or_default().to_string();
        tokio::spawn(log_settled(pool.clone(), task_uuid, state));
    }
}

/// Counts a success the worker completed in its own result transaction
/// (`orchestration.complete_in_commit`), as the result processor counts one it completed;
/// `task_state` is the task's new state when it settled.
pub fn record_completed_in_commit(
    counters: &OrchestratorCounters,
    pool: &PgPool,
    task_uuid: Uuid,
    task_state: Option<&str>,
) {
    bump(&counters.steps_completed);
    bump(&counters.results_processed);
    bump(&counters.completed_in_commit);
    count_settled(counters, pool, task_uuid, task_state);
}

/// "task settled" with its duration and step count: one read per settled task, off the
/// processing path (spawned), only when the line is logged.
async fn log_settled(pool: PgPool, task_uuid: Uuid, state: String) {
    let sql = "SELECT t.namespace_name, t.task_name, \
                      (EXTRACT(EPOCH FROM now() - t.created_at) * 1000)::bigint, \
                      (SELECT count(*) FROM tasker.workflow_steps s WHERE s.task_uuid = t.task_uuid)::bigint \
               FROM (SELECT tk.task_uuid, tk.created_at, ns.name AS namespace_name, nt.name AS task_name \
                     FROM tasker.tasks tk \
                     JOIN tasker.named_tasks nt ON nt.named_task_uuid = tk.named_task_uuid \
                     JOIN tasker.task_namespaces ns ON ns.task_namespace_uuid = nt.task_namespace_uuid \
                     WHERE tk.task_uuid = $1) t";
    let row: Result<Option<(String, String, i64, i64)>, _> =
        sqlx::query_as(sql).bind(task_uuid).fetch_optional(&pool).await;
    match row {
        Ok(Some((namespace, task, duration_ms, steps))) => {
            tracing::info!(event = "task_settled", %task_uuid, %namespace, %task, %state, duration_ms, steps, "task settled");
        }
        _ => tracing::info!(event = "task_settled", %task_uuid, %state, "task settled"),
    }
}

/// Time-ordered uuids passed per result for the children it may enqueue (see `complete_step`).
const CHILD_TRANSITION_UUIDS: usize = 16;

/// Time-ordered uuids passed per completed step: the step's transition, the task's, then the
/// children's (past those, PostgreSQL makes random ones).
pub const COMPLETE_STEP_UUIDS: usize = 2 + CHILD_TRANSITION_UUIDS;

/// A success result in one call (sql/functions/orchestrator.sql), for a message read (leased).
const COMPLETE_READ_SQL: &str =
    "SELECT outcome, task_state FROM tasker.orchestrator_complete_step($1, $2, $3, $4)";

/// The same, after a decision / batchable outcome was applied in the caller's transaction.
const COMPLETE_DYNAMIC_SQL: &str =
    "SELECT outcome, task_state FROM tasker.orchestrator_complete_step($1, $2, $3, $4, true)";

/// The same for a message not read, known from its notification: it is taken first, by
/// locking its row if it is visible and no one else holds it (a reader's read or another
/// orchestrator's call), so it is processed once; no row when it is taken elsewhere or gone.
/// The lock lasts until the call's transaction commits, and the call archives the message.
const COMPLETE_NOTIFIED_SQL: &str = include_str!("../../sql/queries/complete_notified_step.sql");

struct TaskCtx<'a> {
    task_uuid: Uuid,
    correlation_id: Uuid,
    template: &'a TaskTemplate,
    task_state: String,
}
