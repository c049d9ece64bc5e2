//! `CompletionProcessorService`: commits results. It owns:
//! 1. group commit: it takes every result waiting in the completion channel (up to
//!    `completion_batch_size`) and commits them in ONE transaction; up to
//!    `completion_concurrency` such commits run at once (each takes what waits when it starts);
//! 2. in that transaction, per result: check the claim token is still the step's current
//!    transition, move the step to `enqueued_for_orchestration` (or `..._as_error_...`), write
//!    `workflow_steps.results`, send the StepMessage to `orchestration_step_results` with
//!    notify, and archive the worker message — all or nothing;
//! 3. after COMMIT only: count the result and call the post-handler callback;
//! 4. stale results (the step was reclaimed meanwhile) are discarded and counted, and do not
//!    archive anything;
//! 5. with the embedded orchestrator in this process (`orchestration.complete_in_commit`), each
//!    success is also completed in that transaction (`tasker.worker_complete_in_commit`: the
//!    step becomes complete, its ready children are enqueued, the task settles) and sends no
//!    results message; a decision or batchable step's success and every failure still go to
//!    `orchestration_step_results` for the orchestrator's result processor.
//!
//! A commit that fails while the database is away (`TaskerError::is_transient`) is retried
//! with a short backoff (`RetryBackoff`: 100 ms doubling to 2 s) for up to
//! `TRANSIENT_RETRY_FOR`, so it commits as soon as the database is back, not after a lease.
//! When a batch fails otherwise it is retried one result at a time, so one bad result cannot
//! block the others. A result the database rejects as data (e.g. a NUL character in a string)
//! becomes an `invalid_result` failure. A result that still cannot be committed is dropped:
//! its lease is no longer renewed, so the step is re-run after the lease lapses.

use crate::config::AckMode;
use crate::error::{RetryBackoff, TaskerError, TaskerResult};
use crate::messaging::{ExecutionTiming, StepExecutionResult, StepFailure, StepMessage};
use crate::metrics::{self, Timings};
use crate::orchestration::{self, OrchestratorCounters};
use crate::worker::handlers::domain_event_callback::PostHandlerCallback;
use crate::worker::handlers::pipeline::StepCompletion;
use crate::worker::in_flight::InFlight;
use crate::worker::stats::WorkerCounters;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// One round trip: `tasker.worker_commit_results` (sql/functions/worker_commit.sql) locks the
/// steps, checks each claim token, records the results, sends the orchestration messages
/// with their notifications and archives the worker messages, in the caller's transaction
/// (here: the call's own, committed with the server's synchronous_commit).
const COMMIT_SQL: &str =
    "SELECT * FROM tasker.worker_commit_results($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
/// Results of lease-only claims (`worker.lean_claim`): `tasker.worker_commit_results_lean`
/// also checks each message's read count and the step's transition at the claim, and writes
/// the claim's `in_progress` transition.
const COMMIT_LEAN_SQL: &str =
    "SELECT * FROM tasker.worker_commit_results_lean($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

/// Retry pauses for a result that failed to commit on its own (not for the database being
/// away), before it is dropped.
const SINGLE_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// How long a commit is retried while the database is away. Past a lease the step may have
/// been claimed again elsewhere; the commit then finds its token stale and changes nothing,
/// so retrying longer is safe, and bounded only so that a database gone for good is given up.
const TRANSIENT_RETRY_FOR: Duration = Duration::from_secs(600);

pub struct CompletionProcessorService {
    pub pool: PgPool,
    /// Most results committed in one transaction.
    pub batch_size: usize,
    /// Commits in flight at once (`worker.completion_concurrency`, at least 1).
    pub concurrency: usize,
    pub worker_id: Arc<str>,
    /// `worker.ack_mode`.
    pub ack_mode: AckMode,
    pub in_flight: Arc<InFlight>,
    pub counters: Arc<WorkerCounters>,
    pub callback: Arc<dyn PostHandlerCallback>,
    pub events_enabled: Arc<AtomicBool>,
    /// Told of each committed batch (the registry sends it on as `ProcessStepCompletion`);
    /// must not block.
    pub on_commit: Option<Arc<dyn Fn(CommitReport) + Send + Sync>>,
    /// The embedded orchestrator's counters when successes are completed in the commit
    /// (`orchestration.complete_in_commit` with the orchestrator in this process).
    pub complete_in_commit: Option<Arc<OrchestratorCounters>>,
}

/// What a commit did with each live result (the others were stale): `Some` when it was also
/// completed in the commit (`tasker.worker_complete_in_commit`).
pub type Committed = HashMap<Uuid, Option<CompletedInCommit>>;

/// The orchestrator's outcome for a result completed in the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedInCommit {
    /// `completed`, or `dynamic` (a decision / batchable step: left to the message route).
    pub outcome: String,
    /// The task's new state when it settled.
    pub task_state: Option<String>,
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReport {
    pub committed: usize,
    pub stale: usize,
}

/// What one commit did with each result.
struct CommitOutcome {
    committed: Vec<(StepCompletion, Option<CompletedInCommit>)>,
    stale: Vec<StepCompletion>,
}

impl CompletionProcessorService {
    /// Runs until every sender of the completion channel is gone, it is drained and its
    /// commits are done. A batch is taken when a commit slot is free, so results that arrive
    /// while every slot is busy wait for the next batch.
    pub async fn run(self, mut completion_rx: mpsc::Receiver<StepCompletion>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.concurrency.max(1)));
        let mut commits = JoinSet::new();
        while let Some(first) = completion_rx.recv().await {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let mut batch = vec![first];
            while batch.len() < this.batch_size {
                match completion_rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let processor = this.clone();
            commits.spawn(async move {
                let tokens: Vec<Uuid> = batch.iter().map(|c| c.claim.token).collect();
                let in_flight = processor.in_flight.clone();
                // Its own task, so a panic is seen here; aborted with this one (the worker
                // dropped without a shutdown stops its commits, as a crash would).
                let commit = tokio::spawn(async move { processor.process(batch).await });
                let _abort = AbortOnDrop(commit.abort_handle());
                if let Err(err) = commit.await {
                    if err.is_panic() {
                        // A bug. Released here, the leases lapse and the steps run again.
                        tracing::error!(error = %err, steps = tokens.len(), "a result commit panicked; its steps run again after their leases lapse");
                        for token in &tokens {
                            in_flight.remove(token);
                        }
                    }
                }
                drop(slot);
            });
            while commits.try_join_next().is_some() {}
        }
        while commits.join_next().await.is_some() {}
    }

    async fn process(&self, batch: Vec<StepCompletion>) {
        if batch.len() == 1 {
            let only = batch.into_iter().next().expect("one");
            return self.process_single(only).await;
        }
        let size = batch.len();
        match self.commit_while_away(&batch).await {
            Ok(committed) => self.finish(split(batch, &committed)),
            Err(err) => {
                WorkerCounters::add(&self.counters.commit_failures, 1);
                tracing::warn!(error = %err, size, "completion batch failed; committing its results one at a time");
                for completion in batch {
                    self.process_single(completion).await;
                }
            }
        }
    }

    async fn process_single(&self, mut completion: StepCompletion) {
        let mut converted = false;
        for (attempt, delay) in std::iter::once(None)
            .chain(SINGLE_RETRY_DELAYS.iter().map(Some))
            .enumerate()
        {
            if let Some(delay) = delay {
                tokio::time::sleep(*delay).await;
            }
            let one = std::slice::from_ref(&completion);
            let outcome = self.commit_while_away(one).await;
            if outcome.is_err() {
                WorkerCounters::add(&self.counters.commit_failures, 1);
            }
            match outcome {
                Ok(committed) => return self.finish(split(vec![completion], &committed)),
                Err(err) if is_data_error(&err) && !converted => {
                    tracing::warn!(error = %err, step_uuid = %completion.claim.step_uuid, "the database rejected a result; storing an invalid_result failure instead");
                    completion.result = invalid_result(&completion, &self.worker_id, &err);
                    converted = true;
                }
                Err(err) => {
                    tracing::warn!(error = %err, attempt, step_uuid = %completion.claim.step_uuid, "committing a result failed");
                }
            }
        }
        tracing::error!(step_uuid = %completion.claim.step_uuid, "giving up on committing a result; the step will be re-run after its lease lapses");
        WorkerCounters::add(&self.counters.completion_failures, 1);
        self.in_flight.remove(&completion.claim.token);
    }

    /// `commit`, retried with `RetryBackoff` while the error says the database is away (for
    /// up to `TRANSIENT_RETRY_FOR`). A commit that also completes its successes and fails
    /// otherwise is tried again at once without completing them: the results are stored and
    /// sent to the orchestrator's queue, whose processing handles (and dead-letters) a result
    /// it cannot apply, rather than the step being re-run. Any other error is returned at once.
    async fn commit_while_away(&self, batch: &[StepCompletion]) -> TaskerResult<Committed> {
        let give_up = tokio::time::Instant::now() + TRANSIENT_RETRY_FOR;
        let mut backoff = RetryBackoff::default();
        let mut complete = self.complete_in_commit.is_some();
        loop {
            let started = std::time::Instant::now();
            let outcome = commit(&self.pool, &self.worker_id, self.ack_mode, complete, batch).await;
            Timings::observe(&metrics::timings().commit, started.elapsed());
            match outcome {
                Err(err) if err.is_transient() && tokio::time::Instant::now() < give_up => {
                    WorkerCounters::add(&self.counters.commit_failures, 1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, size = batch.len(), retry_in_ms = delay.as_millis() as u64, "committing results failed while the database is away; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(err) if complete => {
                    WorkerCounters::add(&self.counters.commit_failures, 1);
                    tracing::warn!(error = %err, size = batch.len(), "completing steps in the result commit failed; committing the results for the orchestrator's queue instead");
                    complete = false;
                }
                outcome => return outcome,
            }
        }
    }

    fn finish(&self, outcome: CommitOutcome) {
        WorkerCounters::add(&self.counters.commit_batches, 1);
        if let Some(on_commit) = &self.on_commit {
            on_commit(CommitReport {
                committed: outcome.committed.len(),
                stale: outcome.stale.len(),
            });
        }
        WorkerCounters::add(&self.counters.stale_completions, outcome.stale.len());
        for stale in outcome.stale {
            let context = &stale.context;
            tracing::info!(event = "stale_result", task_uuid = %stale.claim.task_uuid, step_uuid = %stale.claim.step_uuid, namespace = %context.namespace, step = %context.step_name, token = %stale.claim.token, "discarded a stale result: the step was reclaimed");
            self.in_flight.remove(&stale.claim.token);
        }
        let events = self.events_enabled.load(Ordering::Relaxed);
        let timings = metrics::timings();
        for (done, in_commit) in outcome.committed {
            if let (Some(counters), Some(in_commit)) = (&self.complete_in_commit, &in_commit) {
                if in_commit.outcome == "completed" {
                    orchestration::record_completed_in_commit(
                        counters,
                        &self.pool,
                        done.claim.task_uuid,
                        in_commit.task_state.as_deref(),
                    );
                }
            }
            let counter = if done.result.success {
                log_succeeded(&done);
                &self.counters.succeeded
            } else {
                log_failed(&done);
                timings.failed(done.result.error.as_ref().and_then(|e| e.error_type.as_deref()));
                &self.counters.failed
            };
            WorkerCounters::add(counter, 1);
            let execution_ms = done.result.metadata.execution_time_ms.max(0) as u64;
            Timings::observe(&timings.handler, Duration::from_millis(execution_ms));
            if let Some(entry) = self.in_flight.remove(&done.claim.token) {
                Timings::observe(&timings.step, entry.claimed_at.elapsed());
                if let Some(enqueued_at) = entry.enqueued_at {
                    let total = (chrono::Utc::now() - enqueued_at).to_std().unwrap_or_default();
                    Timings::observe(&timings.end_to_end, total);
                }
            }
            if events {
                self.callback
                    .on_handler_complete(&done.context, &done.result, &self.worker_id);
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A committed success, at debug.
fn log_succeeded(done: &StepCompletion) {
    let context = &done.context;
    tracing::debug!(event = "step_succeeded", task_uuid = %done.claim.task_uuid, step_uuid = %done.claim.step_uuid, namespace = %context.namespace, task = %context.task_name, step = %context.step_name, handler = %context.handler.callable, attempt = done.claim.attempts, max_attempts = context.max_attempts, execution_ms = done.result.metadata.execution_time_ms, "step succeeded");
}

/// A committed failure: what failed and why. Whether (and when) it is retried is the
/// orchestrator's decision, logged as "step retried" or "step failed for good".
pub fn log_failed(done: &StepCompletion) {
    let context = &done.context;
    let error = done.result.error.as_ref();
    let retryable = error.map(|e| e.retryable).unwrap_or(false) && context.retryable;
    tracing::warn!(event = "step_failed",
        task_uuid = %done.claim.task_uuid,
        step_uuid = %done.claim.step_uuid,
        namespace = %context.namespace,
        task = %context.task_name,
        step = %context.step_name,
        handler = %context.handler.callable,
        attempt = done.claim.attempts,
        max_attempts = context.max_attempts,
        error_type = error.and_then(|e| e.error_type.as_deref()).unwrap_or("unknown"),
        error_class = error
            .and_then(|e| e.context.as_ref())
            .and_then(|c| c.get("error_class"))
            .and_then(|c| c.as_str())
            .unwrap_or(""),
        error = error.map(|e| e.message.as_str()).unwrap_or(""),
        retryable,
        will_retry = retryable && done.claim.attempts < context.max_attempts,
        "step failed"
    );
}

fn split(batch: Vec<StepCompletion>, committed: &Committed) -> CommitOutcome {
    let mut outcome = CommitOutcome {
        committed: Vec::with_capacity(batch.len()),
        stale: Vec::new(),
    };
    for completion in batch {
        match committed.get(&completion.claim.token) {
            Some(in_commit) => outcome.committed.push((completion, in_commit.clone())),
            None => outcome.stale.push(completion),
        }
    }
    outcome
}

/// One transaction for the whole batch. Returns the claim tokens whose results committed
/// (the others were stale), each with what the orchestrator did when `complete` (successes
/// completed in the commit). Results of lease-only claims and of transition claims (a batch
/// holds one kind; both only if a worker's mode changed) commit through their own function,
/// in the same transaction.
pub async fn commit(
    pool: &PgPool,
    worker_id: &str,
    ack_mode: AckMode,
    complete: bool,
    batch: &[StepCompletion],
) -> TaskerResult<Committed> {
    let (lean, plain): (Vec<&StepCompletion>, Vec<&StepCompletion>) =
        batch.iter().partition(|c| c.claim.lease.is_some());
    if lean.is_empty() || plain.is_empty() {
        let all: Vec<&StepCompletion> = batch.iter().collect();
        return Ok(commit_rows(worker_id, ack_mode, complete, &all)?
            .send(pool)
            .await?
            .into_iter()
            .collect());
    }
    let mut tx = pool.begin().await?;
    let mut committed = commit_rows(worker_id, ack_mode, complete, &lean)?
        .send(&mut *tx)
        .await?;
    committed.extend(
        commit_rows(worker_id, ack_mode, complete, &plain)?
            .send(&mut *tx)
            .await?,
    );
    tx.commit().await?;
    Ok(committed.into_iter().collect())
}

/// The arrays one commit statement binds (all of one claim kind).
struct CommitRows<'a> {
    lean: bool,
    /// Delete the messages instead of archiving them (lease-only claims only).
    delete: bool,
    tokens: Vec<Uuid>,
    previous: Vec<Uuid>,
    read_cts: Vec<i32>,
    step_uuids: Vec<Uuid>,
    transition_uuids: Vec<Uuid>,
    to_states: Vec<&'static str>,
    metadata: Vec<serde_json::Value>,
    results: Vec<serde_json::Value>,
    messages: Vec<serde_json::Value>,
    queue_names: Vec<&'a str>,
    msg_ids: Vec<i64>,
    /// Set when successes are completed in the commit: each result's task, whether it is
    /// completed (a success), and orchestration::COMPLETE_STEP_UUIDS transition uuids per result.
    task_uuids: Option<Vec<Uuid>>,
    complete: Option<Vec<bool>>,
    complete_uuids: Option<Vec<Uuid>>,
}

type CommitRow = (Uuid, Option<String>, Option<String>);

impl CommitRows<'_> {
    async fn send<'e, E>(self, executor: E) -> TaskerResult<Vec<(Uuid, Option<CompletedInCommit>)>>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let rows: Vec<CommitRow> = if self.lean {
            sqlx::query_as(COMMIT_LEAN_SQL)
                .bind(&self.tokens)
                .bind(&self.previous)
                .bind(&self.read_cts)
                .bind(&self.step_uuids)
                .bind(&self.transition_uuids)
                .bind(&self.to_states)
                .bind(&self.metadata)
                .bind(&self.results)
                .bind(&self.messages)
                .bind(&self.queue_names)
                .bind(&self.msg_ids)
                .bind(self.delete)
                .bind(&self.task_uuids)
                .bind(&self.complete)
                .bind(&self.complete_uuids)
                .fetch_all(executor)
                .await?
        } else {
            sqlx::query_as(COMMIT_SQL)
                .bind(&self.tokens)
                .bind(&self.step_uuids)
                .bind(&self.transition_uuids)
                .bind(&self.to_states)
                .bind(&self.metadata)
                .bind(&self.results)
                .bind(&self.messages)
                .bind(&self.queue_names)
                .bind(&self.msg_ids)
                .bind(&self.task_uuids)
                .bind(&self.complete)
                .bind(&self.complete_uuids)
                .fetch_all(executor)
                .await?
        };
        Ok(rows
            .into_iter()
            .map(|(token, outcome, task_state)| {
                let in_commit = outcome.map(|outcome| CompletedInCommit { outcome, task_state });
                (token, in_commit)
            })
            .collect())
    }
}

fn commit_rows<'a>(
    worker_id: &str,
    ack_mode: AckMode,
    complete: bool,
    batch: &[&'a StepCompletion],
) -> TaskerResult<CommitRows<'a>> {
    let n = batch.len();
    let mut rows = CommitRows {
        lean: batch.first().is_some_and(|c| c.claim.lease.is_some()),
        delete: ack_mode == AckMode::Delete,
        tokens: Vec::with_capacity(n),
        previous: Vec::with_capacity(n),
        read_cts: Vec::with_capacity(n),
        step_uuids: Vec::with_capacity(n),
        transition_uuids: Vec::with_capacity(n),
        to_states: Vec::with_capacity(n),
        metadata: Vec::with_capacity(n),
        results: Vec::with_capacity(n),
        messages: Vec::with_capacity(n),
        queue_names: Vec::with_capacity(n),
        msg_ids: Vec::with_capacity(n),
        task_uuids: complete.then(|| batch.iter().map(|c| c.claim.task_uuid).collect()),
        complete: complete.then(|| batch.iter().map(|c| c.result.success).collect()),
        complete_uuids: complete.then(|| {
            (0..n * orchestration::COMPLETE_STEP_UUIDS)
                .map(|_| Uuid::now_v7())
                .collect()
        }),
    };
    // The worker id is `worker_<uuid>`.
    let worker_uuid = worker_id
        .strip_prefix("worker_")
        .and_then(|id| Uuid::parse_str(id).ok());
    for &c in batch {
        let success = c.result.success;
        rows.tokens.push(c.claim.token);
        if let Some(lease) = c.claim.lease {
            rows.previous.push(lease.previous);
            rows.read_cts.push(lease.read_ct);
        }
        rows.step_uuids.push(c.claim.step_uuid);
        rows.transition_uuids.push(Uuid::now_v7());
        rows.to_states.push(if success {
            "enqueued_for_orchestration"
        } else {
            "enqueued_as_error_for_orchestration"
        });
        // `worker_uuid` and `correlation_id` are the keys tasker-core's audit trigger reads.
        rows.metadata.push(json!({
            "event": if success { "enqueue_for_orchestration" } else { "enqueue_as_error_for_orchestration" },
            "worker_id": worker_id,
            "worker_uuid": worker_uuid,
            "correlation_id": c.context.correlation_id,
            "claim": c.claim.token,
            "success": success,
            "execution_time_ms": c.result.metadata.execution_time_ms,
            "timestamp": chrono::Utc::now(),
        }));
        rows.results.push(serde_json::to_value(&c.result)?);
        rows.messages.push(serde_json::to_value(StepMessage {
            task_uuid: c.claim.task_uuid,
            step_uuid: c.claim.step_uuid,
            correlation_id: c.context.correlation_id,
        })?);
        rows.queue_names.push(c.claim.queue_name.as_ref());
        rows.msg_ids.push(c.claim.msg_id);
    }
    Ok(rows)
}

/// Class 22 (data exception), e.g. a string PostgreSQL cannot store in jsonb.
fn is_data_error(err: &TaskerError) -> bool {
    match err {
        TaskerError::Database(sqlx::Error::Database(db)) => {
            db.code().is_some_and(|code| code.starts_with("22"))
        }
        _ => false,
    }
}

fn invalid_result(completion: &StepCompletion, worker_id: &str, err: &TaskerError) -> StepExecutionResult {
    let metadata = &completion.result.metadata;
    let timing = ExecutionTiming {
        started_at: metadata.started_at.unwrap_or(metadata.completed_at),
        completed_at: metadata.completed_at,
        worker_id: worker_id.to_string(),
    };
    let failure = StepFailure::new(
        "invalid_result",
        format!("the handler's result could not be stored: {err}"),
        false,
    );
    StepExecutionResult::failure(completion.claim.step_uuid, failure, &timing)
}
