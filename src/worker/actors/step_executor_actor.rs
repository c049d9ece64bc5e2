//! `StepExecutorActor`: turns queue messages into dispatched steps. It owns:
//! 1. capacity: it takes a permit per step BEFORE reading, so it never reads more messages
//!    than there are free slots (handlers + prefetch; a permit returns when the step's
//!    handler has finished and its result is handed to the completion processor);
//! 2. claiming, a batch per call of `tasker.worker_claim_next`: read under the lease (round-
//!    robin over the namespaces' queues), check that each step can be hydrated, claim it,
//!    and return its context, in one round trip and one transaction;
//! 3. poison handling: unparseable messages are dead-lettered at once; messages whose step
//!    cannot be hydrated are retried and dead-lettered after `max_delivery_attempts` reads;
//! 4. handing claimed steps to the dispatch channel, recorded as in flight.
//!
//! Up to `concurrent_batches` batches are claimed at once, once a read has come back full
//! (tasks in a `JoinSet`, aborted with the actor). Batches never share a message (a read
//! passes over locked and leased rows), and claims lock their steps in uuid order, so they
//! cannot deadlock. Messages the SQL side cannot read as a StepMessage, and messages handed
//! over already read, take the slow way: parse here, one hydration query, one claim call
//! (`process`).

use crate::config::AckMode;
use crate::error::{RetryBackoff, TaskerResult};
use crate::messaging::{
    client, ExecutionTiming, Poison, QueuedMessage, StepExecutionResult, StepFailure, StepMessage,
};
use crate::metrics::{self, Timings};
use crate::worker::handlers::completion_processor;
use crate::worker::handlers::pipeline::{DispatchHandlerMessage, StepCompletion};
use crate::worker::hydration;
use crate::worker::in_flight::{InFlight, InFlightEntry};
use crate::worker::prefetch::StartWaits;
use crate::worker::state::ClaimGate;
use crate::worker::stats::WorkerCounters;
use crate::worker::step_claim::{self, Claim, ClaimOutcome, ClaimRequest, NextMessage};
use crate::worker::step_context::{HandlerSpec, StepContext};
use crate::worker::task::StopSignal;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Batches claimed at once: two when the capacity (handlers + prefetch) holds two full
/// batches, else one. The second batch waits up to `FULL_BATCH_LINGER` for a full batch of
/// slots (see `drain`); measured in BENCHMARKS.md (concurrency 10: 3,178 -> 4,380 steps/s).
pub fn concurrent_batches(capacity: usize, claim_batch_size: usize) -> usize {
    if capacity >= 2 * claim_batch_size {
        2
    } else {
        1
    }
}

/// How long a batch claimed beside another waits for a full batch of free slots before it
/// takes what is free. Only then: an idle worker, or one with a single batch in flight,
/// claims at once.
const FULL_BATCH_LINGER: Duration = Duration::from_millis(2);

/// One permit per slot.
fn split_permits(mut many: OwnedSemaphorePermit) -> Vec<OwnedSemaphorePermit> {
    let mut one_each = Vec::with_capacity(many.num_permits());
    while many.num_permits() > 1 {
        if let Some(one) = many.split(1) {
            one_each.push(one);
        }
    }
    one_each.push(many);
    one_each
}

#[derive(Clone)]
pub struct StepExecutorActor {
    pub pool: PgPool,
    pub worker_id: Arc<str>,
    pub queues: Vec<Arc<str>>,
    pub visibility_timeout_seconds: u32,
    /// `worker.lean_claim`: the lease-only claim (src/worker/step_claim.rs).
    pub lean_claim: bool,
    /// `worker.ack_mode`, for the failures committed here.
    pub ack_mode: AckMode,
    pub claim_batch_size: usize,
    /// See `concurrent_batches`.
    pub concurrent_batches: usize,
    pub max_delivery_attempts: u32,
    pub capacity: Arc<Semaphore>,
    /// Told when a read comes back full, the queue holding at least as many messages as the
    /// claim had slots (the adaptive prefetch grows only then).
    pub start_waits: Arc<StartWaits>,
    pub dispatch_tx: mpsc::Sender<DispatchHandlerMessage>,
    pub in_flight: Arc<InFlight>,
    pub counters: Arc<WorkerCounters>,
    pub wake: Arc<Notify>,
    pub claims: Arc<ClaimGate>,
}

/// Messages already read elsewhere, handed to the actor (`ExecuteStepFromMessage`).
pub type ReadMessage = (Arc<str>, QueuedMessage);

impl StepExecutorActor {
    /// Runs until stopped. Waiting for slots or a wake-up ends at once; a claim already
    /// under way (a batch task, or a handed-over message) runs to its end, so no claim is
    /// left half done. Ending drops the dispatch channel's sender, which ends the handler
    /// side once it has taken what was dispatched.
    pub async fn run(self, mut from_messages: mpsc::Receiver<ReadMessage>, mut stop: StopSignal) {
        let this = Arc::new(self);
        let mut next_queue = 0usize;
        let mut batches = JoinSet::new();
        let batch_slots = Arc::new(Semaphore::new(this.concurrent_batches.max(1)));
        let drained_reads = Arc::new(AtomicUsize::new(0));
        // Pauses between claims that fail while the database is away, shared by the batches.
        let claim_backoff = Arc::new(parking_lot::Mutex::new(RetryBackoff::default()));
        loop {
            tokio::select! {
                _ = stop.stopped() => break,
                _ = this.wake.notified() => {
                    tokio::select! {
                        _ = this.drain(&mut next_queue, &mut batches, &batch_slots, &drained_reads, &claim_backoff) => {}
                        _ = stop.stopped() => break,
                    }
                }
                Some((queue, message)) = from_messages.recv() => {
                    let permit = tokio::select! {
                        permit = this.acquire(1) => permit.and_then(|mut p| p.pop()),
                        _ = stop.stopped() => break,
                    };
                    let Some(permit) = permit else { continue };
                    let Some(_under_way) = this.claims.begin() else { continue };
                    if let Err(err) = this.process(&queue, vec![message], vec![permit]).await {
                        tracing::warn!(error = %err, "processing a handed-over message failed");
                    }
                }
                Some(_) = batches.join_next(), if !batches.is_empty() => {}
            }
        }
        while batches.join_next().await.is_some() {}
    }

    /// Claims batches until every queue has come back drained (a read returned fewer messages
    /// than it asked for, or failed); each batch (one call of
    /// `tasker.worker_claim_next`: read, check, claim) and its dispatch run in their own task
    /// while the loop takes the next batch slot.
    async fn drain(
        self: &Arc<Self>,
        next_queue: &mut usize,
        batches: &mut JoinSet<()>,
        batch_slots: &Arc<Semaphore>,
        drained_reads: &Arc<AtomicUsize>,
        claim_backoff: &Arc<parking_lot::Mutex<RetryBackoff>>,
    ) {
        drained_reads.store(0, Ordering::Relaxed);
        let saw_full = Arc::new(AtomicBool::new(false));
        loop {
            // The batch slot first, then the handler slots: slots that free up while an earlier
            // batch is being claimed all go into the next read.
            let Ok(slot) = batch_slots.clone().acquire_owned().await else {
                return;
            };
            // Finished batches are reaped here too: this loop can run for as long as the
            // queues stay full, and a JoinSet keeps every finished task until it is joined.
            while batches.try_join_next().is_some() {}
            if drained_reads.load(Ordering::Relaxed) >= self.queues.len() {
                // The last reads of every queue found nothing. Batches still running may yet
                // find more; done only when they have not.
                drop(slot);
                while batches.join_next().await.is_some() {}
                if drained_reads.load(Ordering::Relaxed) >= self.queues.len() {
                    return;
                }
                continue;
            }
            let others = self.concurrent_batches.max(1) - 1 - batch_slots.available_permits();
            if others > 0 && !saw_full.load(Ordering::Relaxed) {
                // One batch at a time until a read comes back full: a wake-up for a single
                // message would otherwise cost a second, empty claim call beside the first.
                drop(slot);
                let _ = batches.join_next().await;
                continue;
            }
            // With another batch in flight, this one waits a little for a full batch of free
            // slots: the steps of the batch before are usually about to finish. Taking only
            // what is free at once would split the slots into small batches, and a batch costs
            // about as much to claim whatever its size.
            let full = if others > 0 {
                let batch = self
                    .capacity
                    .clone()
                    .acquire_many_owned(self.claim_batch_size as u32);
                match tokio::time::timeout(FULL_BATCH_LINGER, batch).await {
                    Ok(Ok(many)) => Some(split_permits(many)),
                    _ => None,
                }
            } else {
                None
            };
            let acquired = match full {
                Some(permits) => Some(permits),
                None => self.acquire(self.claim_batch_size).await,
            };
            let Some(permits) = acquired else {
                return;
            };
            let Some(under_way) = self.claims.begin() else {
                return;
            };
            let queue = self.queues[*next_queue % self.queues.len()].clone();
            *next_queue = next_queue.wrapping_add(1);
            let this = self.clone();
            let drained_reads = drained_reads.clone();
            let saw_full = saw_full.clone();
            let claim_backoff = claim_backoff.clone();
            batches.spawn(async move {
                let _held = (slot, under_way);
                let asked = permits.len();
                match this.claim_and_dispatch(&queue, permits).await {
                    // Fewer messages than asked for: nothing more is visible in this queue
                    // now. A message sent later wakes the executor again (its NOTIFY, or the
                    // fallback poll), so the queue is not read again in this drain.
                    Ok(read) if read < asked => {
                        drained_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        drained_reads.store(0, Ordering::Relaxed);
                        saw_full.store(true, Ordering::Relaxed);
                        // As many messages as slots: the capacity, not the queue, bounded it.
                        this.start_waits.record_limited();
                    }
                    Err(err) if err.is_transient() => {
                        drained_reads.fetch_add(1, Ordering::Relaxed);
                        // The database is away: ask again after a short backoff (not only at
                        // the next poll or notification), so claiming resumes as soon as it
                        // is back. Holding the batch slot meanwhile keeps it from being asked
                        // again at once.
                        let delay = claim_backoff.lock().next_delay();
                        tracing::warn!(error = %err, queue = %queue, retry_in_ms = delay.as_millis() as u64, "claiming from the queue failed while the database is away; retrying");
                        tokio::time::sleep(delay).await;
                        this.wake.notify_one();
                        return;
                    }
                    Err(err) => {
                        drained_reads.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %err, queue = %queue, "claiming from the queue failed");
                        // Holding the batch slot a while keeps a failing database from being
                        // asked again at once.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                claim_backoff.lock().reset();
            });
        }
    }

    /// One batch: reads, checks and claims up to one message per permit in one call, then
    /// dispatches the claimed steps. Messages the SQL side left unchecked take the slow way
    /// (`process`). Returns how many messages were read. Each message is judged alone: one
    /// that cannot be decoded is dead-lettered, the rest of the read goes on.
    async fn claim_and_dispatch(
        &self,
        queue: &Arc<str>,
        mut permits: Vec<OwnedSemaphorePermit>,
    ) -> TaskerResult<usize> {
        let started = Instant::now();
        let read = step_claim::claim_next_with(
            &self.pool,
            queue,
            &self.worker_id,
            permits.len(),
            self.visibility_timeout_seconds,
            self.lean_claim,
        )
        .await?;
        Timings::observe(&metrics::timings().claim, started.elapsed());
        if read.is_empty() {
            WorkerCounters::add(&self.counters.empty_reads, 1);
            return Ok(0);
        }
        let count = read.len();
        WorkerCounters::add(&self.counters.messages_read, count);
        WorkerCounters::add(&self.counters.read_batches, 1);
        let mut poison = Vec::new();
        let mut unchecked = Vec::new();
        let mut failed = Vec::new();
        let mut closed = false;
        for next in read {
            match next {
                NextMessage::Claimed {
                    claim,
                    context: Ok(context),
                } => {
                    // Closed: shutting down; the lease lapses and the step is claimed again.
                    if closed {
                        continue;
                    }
                    let Some(permit) = permits.pop() else { break };
                    closed = !self.dispatch(claim, context, permit).await;
                }
                NextMessage::Claimed {
                    claim,
                    context: Err(reason),
                } => {
                    let failure = invalid_input(&claim, &reason);
                    failed.push((claim, failure));
                }
                NextMessage::Exhausted { claim, max_attempts } => {
                    let failure = self.exhausted_failure(&claim, max_attempts).await;
                    failed.push((claim, failure));
                }
                NextMessage::Duplicate { msg_id, state } => self.duplicate(msg_id, &state),
                NextMessage::OutOfOrder { msg_id, state } => self.out_of_order(msg_id, &state),
                NextMessage::Missing => {}
                NextMessage::Unhydratable { message, reason } => {
                    self.unhydratable(queue, &message, reason, &mut poison)
                }
                NextMessage::Unchecked(message) => unchecked.push(message),
                NextMessage::Undecodable(bad) => poison.push(Poison::from(bad)),
            }
        }
        for (claim, failure) in failed {
            self.fail_claimed(claim, failure).await;
        }
        if !poison.is_empty() {
            self.dead_letter(queue, &poison).await?;
        }
        if !unchecked.is_empty() {
            let take = permits.split_off(permits.len().saturating_sub(unchecked.len()));
            self.process(queue, unchecked, take).await?;
        }
        Ok(count)
    }

    fn duplicate(&self, msg_id: i64, state: &str) {
        WorkerCounters::add(&self.counters.duplicates, 1);
        tracing::debug!(msg_id, %state, "duplicate message archived");
    }

    fn out_of_order(&self, msg_id: i64, state: &str) {
        WorkerCounters::add(&self.counters.out_of_order, 1);
        tracing::warn!(event = "out_of_order", msg_id, %state, "message for a step that is not ready to run archived; nothing ran");
    }

    /// A step that cannot be hydrated: retried after its lease, dead-lettered once it has been
    /// read more than `max_delivery_attempts` times.
    fn unhydratable(
        &self,
        queue: &Arc<str>,
        queued: &QueuedMessage,
        reason: String,
        poison: &mut Vec<Poison>,
    ) {
        WorkerCounters::add(&self.counters.hydration_failures, 1);
        if queued.read_ct as u32 > self.max_delivery_attempts {
            poison.push(Poison::of(
                queued,
                format!("could not be hydrated in {} deliveries: {reason}", queued.read_ct),
            ));
        } else {
            tracing::warn!(msg_id = queued.msg_id, queue = %queue, read_ct = queued.read_ct, %reason, "step could not be hydrated; retrying after the lease");
        }
    }

    /// A claimed step that will not run gets its failure result committed here (as the
    /// completion processor commits any result: the token checked, the orchestration message
    /// sent, the worker message archived), so the orchestrator settles it and its task. A
    /// commit that fails while the database is away is retried (`RetryBackoff`) for up to a
    /// lease; past that, or for any other error, the lease lapses and the step is claimed
    /// again, and fails again.
    async fn fail_claimed(&self, claim: Claim, failure: StepFailure) {
        let step_uuid = claim.step_uuid;
        tracing::error!(%step_uuid, error_type = %failure.error_type, reason = %failure.message, "a claimed step will not run; committing its failure");
        let now = chrono::Utc::now();
        let timing = ExecutionTiming {
            started_at: now,
            completed_at: now,
            worker_id: self.worker_id.to_string(),
        };
        let completion = StepCompletion {
            context: Arc::new(unrun_context(&claim)),
            result: StepExecutionResult::failure(step_uuid, failure, &timing),
            claim,
        };
        let give_up = Instant::now() + Duration::from_secs(u64::from(self.visibility_timeout_seconds));
        let mut backoff = RetryBackoff::default();
        loop {
            match completion_processor::commit(
                &self.pool,
                &self.worker_id,
                self.ack_mode,
                false,
                std::slice::from_ref(&completion),
            )
            .await
            {
                Ok(committed) => {
                    let counter = if committed.contains_key(&completion.claim.token) {
                        completion_processor::log_failed(&completion);
                        metrics::timings().failed(Some(&completion_error_type(&completion)));
                        &self.counters.failed
                    } else {
                        &self.counters.stale_completions
                    };
                    WorkerCounters::add(counter, 1);
                    return;
                }
                Err(err) if err.is_transient() && Instant::now() < give_up => {
                    WorkerCounters::add(&self.counters.commit_failures, 1);
                    tracing::warn!(error = %err, %step_uuid, "committing a failure failed while the database is away; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(err) => {
                    WorkerCounters::add(&self.counters.completion_failures, 1);
                    tracing::error!(error = %err, %step_uuid, "committing a failure failed; the step is claimed again after its lease");
                    return;
                }
            }
        }
    }

    /// The failure of a step whose claim found no attempts left, naming the claims it lost
    /// (those a reclaim replaced: their leases lapsed before a result).
    async fn exhausted_failure(&self, claim: &Claim, max_attempts: i32) -> StepFailure {
        let lost: Vec<String> = sqlx::query_scalar(
            "SELECT metadata ->> 'reclaimed_from' FROM tasker.workflow_step_transitions \
             WHERE workflow_step_uuid = $1 AND metadata ->> 'reclaimed_from' IS NOT NULL ORDER BY sort_key",
        )
        .bind(claim.step_uuid)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        StepFailure::new(
            "max_attempts_exceeded",
            format!(
                "step {} has used {} of its {} attempts; its lease lapsed with no result on {} claim(s) ({}), so it is not run again",
                claim.step_uuid,
                claim.attempts,
                max_attempts,
                lost.len(),
                lost.join(", ")
            ),
            false,
        )
        .with_context("attempts", claim.attempts)
        .with_context("max_attempts", max_attempts)
        .with_context("lost_claims", lost)
    }

    /// Records a claimed step as in flight and hands it to the dispatch channel. False when
    /// the channel is closed (shutting down; the lease lapses and the step is reclaimed).
    async fn dispatch(&self, claim: Claim, mut context: StepContext, permit: OwnedSemaphorePermit) -> bool {
        context.attempts = claim.attempts;
        WorkerCounters::add(&self.counters.claimed, 1);
        if let Some(previous) = claim.reclaimed_from {
            WorkerCounters::add(&self.counters.reclaimed, 1);
            tracing::warn!(event = "step_reclaimed", task_uuid = %claim.task_uuid, step_uuid = %claim.step_uuid, namespace = %context.namespace, step = %context.step_name, attempt = claim.attempts, max_attempts = context.max_attempts, previous_claim = %previous, "step reclaimed after its lease lapsed");
        }
        let now = Instant::now();
        self.in_flight.insert(
            claim.token,
            InFlightEntry {
                step_uuid: claim.step_uuid,
                queue_name: claim.queue_name.clone(),
                msg_id: claim.msg_id,
                claimed_at: now,
                enqueued_at: claim.enqueued_at,
            },
        );
        let token = claim.token;
        let message = DispatchHandlerMessage {
            event_id: Uuid::now_v7(),
            claim,
            context: Arc::new(context),
            permit,
            claimed_at: now,
        };
        if self.dispatch_tx.send(message).await.is_err() {
            self.in_flight.remove(&token);
            return false;
        }
        true
    }

    /// Waits for at least one free slot, then takes up to `max` without waiting more.
    /// `None` when quiet (claiming stopped).
    async fn acquire(&self, max: usize) -> Option<Vec<OwnedSemaphorePermit>> {
        if self.claims.is_quiet() {
            return None;
        }
        let first = self.capacity.clone().acquire_owned().await.ok()?;
        if self.claims.is_quiet() {
            return None;
        }
        let mut permits = vec![first];
        let extra = max.saturating_sub(1).min(self.capacity.available_permits());
        if extra > 0 {
            if let Ok(more) = self.capacity.clone().try_acquire_many_owned(extra as u32) {
                permits.extend(split_permits(more));
            }
        }
        Some(permits)
    }

    /// Parses, hydrates, claims and dispatches messages already read from `queue`, one permit
    /// each, in a hydration query and a claim call (messages handed over by
    /// `ExecuteStepFromMessage`, and those `claim_and_dispatch` leaves unchecked).
    async fn process(
        &self,
        queue: &Arc<str>,
        messages: Vec<QueuedMessage>,
        mut permits: Vec<OwnedSemaphorePermit>,
    ) -> TaskerResult<()> {
        let mut poison = Vec::new();
        let mut parsed = Vec::with_capacity(messages.len());
        for message in messages {
            // A message handed over was decoded by its reader; its size and depth are checked
            // here all the same, as the claim path's are.
            let parsed_message = crate::limits::check_value(&message.message, "queue message")
                .map_err(|e| e.to_string())
                .and_then(|()| StepMessage::deserialize(&message.message).map_err(|e| e.to_string()));
            match parsed_message {
                Ok(step_message) => parsed.push((message, step_message)),
                Err(err) => poison.push(Poison::of(&message, format!("unparseable step message: {err}"))),
            }
        }

        let step_messages: Vec<StepMessage> = parsed.iter().map(|(_, m)| *m).collect();
        let mut contexts = if step_messages.is_empty() {
            Default::default()
        } else {
            hydration::hydrate(&self.pool, &step_messages).await?
        };
        let mut requests = Vec::with_capacity(parsed.len());
        let mut other_task = Vec::new();
        for (queued, step_message) in &parsed {
            match contexts.get(&step_message.step_uuid) {
                Some(Ok(_)) => requests.push(ClaimRequest {
                    msg_id: queued.msg_id,
                    read_ct: queued.read_ct,
                    message: *step_message,
                }),
                Some(Err(unhydrated)) if unhydrated.other_task => {
                    tracing::debug!(reason = %unhydrated.reason, "message names a step of another task");
                    other_task.push(queued.msg_id);
                }
                Some(Err(unhydrated)) => {
                    self.unhydratable(queue, queued, unhydrated.reason.clone(), &mut poison)
                }
                None => {}
            }
        }
        if !other_task.is_empty() {
            client::archive(&self.pool, queue, &other_task).await?;
            for msg_id in other_task {
                self.out_of_order(msg_id, "of another task");
            }
        }
        if !poison.is_empty() {
            self.dead_letter(queue, &poison).await?;
        }
        if requests.is_empty() {
            return Ok(());
        }

        let outcomes =
            step_claim::claim_batch_with(&self.pool, queue, &self.worker_id, &requests, self.lean_claim)
                .await?;
        for (request, outcome) in requests.iter().zip(outcomes) {
            let context = contexts.remove(&request.message.step_uuid);
            match outcome {
                ClaimOutcome::Claimed(claim) => match context {
                    Some(Ok(context)) => {
                        let Some(permit) = permits.pop() else {
                            let failure = StepFailure::new(
                                "worker_capacity",
                                "no capacity permit was left for a claimed step",
                                true,
                            );
                            self.fail_claimed(claim, failure).await;
                            continue;
                        };
                        if !self.dispatch(claim, context, permit).await {
                            return Ok(());
                        }
                    }
                    _ => {
                        let failure = invalid_input(&claim, "its context was lost after the claim");
                        self.fail_claimed(claim, failure).await;
                    }
                },
                ClaimOutcome::Exhausted(claim) => {
                    let max_attempts = match &context {
                        Some(Ok(context)) => context.max_attempts,
                        _ => claim.attempts,
                    };
                    let failure = self.exhausted_failure(&claim, max_attempts).await;
                    self.fail_claimed(claim, failure).await;
                }
                ClaimOutcome::Duplicate { state } => self.duplicate(request.msg_id, &state),
                ClaimOutcome::OutOfOrder { state } => self.out_of_order(request.msg_id, &state),
                ClaimOutcome::Missing => {}
            }
        }
        Ok(())
    }

    /// Records each message in `tasker.dead_letters` and archives it, in one transaction.
    async fn dead_letter(&self, queue: &Arc<str>, poison: &[Poison]) -> TaskerResult<()> {
        client::dead_letter(&self.pool, queue, Some(&self.worker_id), poison).await?;
        WorkerCounters::add(&self.counters.dead_lettered, poison.len());
        Ok(())
    }
}

/// What a failure result of a step that never ran is committed with: only its ids are known
/// (the commit reads the correlation id; the post-commit callback is not called for it).
fn completion_error_type(completion: &StepCompletion) -> String {
    let error = completion.result.error.as_ref();
    error
        .and_then(|e| e.error_type.clone())
        .unwrap_or_else(|| "unknown".to_string())
}

fn unrun_context(claim: &Claim) -> StepContext {
    StepContext {
        task_uuid: claim.task_uuid,
        step_uuid: claim.step_uuid,
        correlation_id: claim.correlation_id,
        namespace: String::new(),
        task_name: String::new(),
        task_version: String::new(),
        step_name: String::new(),
        task_context: Value::Null,
        inputs: Value::Null,
        handler: HandlerSpec {
            callable: String::new(),
            initialization: Default::default(),
        },
        dependency_results: Default::default(),
        attempts: claim.attempts,
        max_attempts: claim.attempts,
        retryable: false,
        timeout_seconds: None,
        step_definition: Value::Null,
        checkpoint: None,
    }
}

/// The failure of a claimed step that cannot be hydrated: its input is bad and stays bad.
fn invalid_input(claim: &Claim, reason: &str) -> StepFailure {
    StepFailure::new(
        "invalid_input",
        format!("step {} cannot be run: {reason}", claim.step_uuid),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::concurrent_batches;

    #[test]
    fn a_second_batch_runs_only_with_room_for_two_full_batches() {
        // concurrency 10 + prefetch 10, batches of 10: two.
        assert_eq!(concurrent_batches(20, 10), 2);
        assert_eq!(concurrent_batches(19, 10), 1);
        // concurrency 4 + prefetch 4: one.
        assert_eq!(concurrent_batches(8, 10), 1);
        assert_eq!(concurrent_batches(50, 10), 2);
        assert_eq!(concurrent_batches(1, 1), 1);
        assert_eq!(concurrent_batches(2, 1), 2);
    }
}
