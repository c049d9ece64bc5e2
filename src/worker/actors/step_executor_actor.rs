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

use crate::error::TaskerResult;
use crate::messaging::{client, QueuedMessage, StepMessage};
use crate::worker::handlers::pipeline::DispatchHandlerMessage;
use crate::worker::hydration;
use crate::worker::in_flight::{InFlight, InFlightEntry};
use crate::worker::stats::WorkerCounters;
use crate::worker::step_claim::{self, Claim, ClaimOutcome, ClaimRequest, NextMessage, NextOutcome};
use crate::worker::step_context::StepContext;
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
    pub claim_batch_size: usize,
    /// See `concurrent_batches`.
    pub concurrent_batches: usize,
    pub max_delivery_attempts: u32,
    pub capacity: Arc<Semaphore>,
    pub dispatch_tx: mpsc::Sender<DispatchHandlerMessage>,
    pub in_flight: Arc<InFlight>,
    pub counters: Arc<WorkerCounters>,
    pub wake: Arc<Notify>,
    pub quiet: Arc<AtomicBool>,
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
        loop {
            tokio::select! {
                _ = stop.stopped() => break,
                _ = this.wake.notified() => {
                    tokio::select! {
                        _ = this.drain(&mut next_queue, &mut batches, &batch_slots, &drained_reads) => {}
                        _ = stop.stopped() => break,
                    }
                }
                Some((queue, message)) = from_messages.recv() => {
                    let permit = tokio::select! {
                        permit = this.acquire(1) => permit.and_then(|mut p| p.pop()),
                        _ = stop.stopped() => break,
                    };
                    let Some(permit) = permit else { continue };
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
            if self.quiet.load(Ordering::Acquire) {
                return;
            }
            let queue = self.queues[*next_queue % self.queues.len()].clone();
            *next_queue = next_queue.wrapping_add(1);
            let this = self.clone();
            let drained_reads = drained_reads.clone();
            let saw_full = saw_full.clone();
            batches.spawn(async move {
                let _held = slot;
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
                    }
                    Err(err) => {
                        drained_reads.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %err, queue = %queue, "claiming from the queue failed");
                        // Holding the batch slot a while keeps a failing database from being
                        // asked again at once.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        }
    }

    /// One batch: reads, checks and claims up to one message per permit in one call, then
    /// dispatches the claimed steps. Messages the SQL side left unchecked take the slow way
    /// (`process`). Returns how many messages were read.
    async fn claim_and_dispatch(
        &self,
        queue: &Arc<str>,
        mut permits: Vec<OwnedSemaphorePermit>,
    ) -> TaskerResult<usize> {
        let read = step_claim::claim_next(
            &self.pool,
            queue,
            &self.worker_id,
            permits.len(),
            self.visibility_timeout_seconds,
        )
        .await?;
        if read.is_empty() {
            WorkerCounters::add(&self.counters.empty_reads, 1);
            return Ok(0);
        }
        let count = read.len();
        WorkerCounters::add(&self.counters.messages_read, count);
        WorkerCounters::add(&self.counters.read_batches, 1);
        let mut poison = Vec::new();
        let mut unchecked = Vec::new();
        for NextMessage { message, outcome } in read {
            match outcome {
                NextOutcome::Claimed {
                    claim,
                    context: Ok(context),
                } => {
                    let Some(permit) = permits.pop() else { break };
                    if !self.dispatch(claim, context, permit).await {
                        return Ok(count);
                    }
                }
                NextOutcome::Claimed {
                    claim,
                    context: Err(reason),
                } => {
                    // Not expected: the SQL side claims only steps that hydrate. The claim
                    // lapses with the lease and the message is read again.
                    tracing::error!(step_uuid = %claim.step_uuid, %reason, "a claimed step could not be hydrated");
                    self.unhydratable(queue, &message, reason, &mut poison);
                }
                NextOutcome::Duplicate { state } => {
                    WorkerCounters::add(&self.counters.duplicates, 1);
                    tracing::debug!(msg_id = message.msg_id, %state, "duplicate message archived");
                }
                NextOutcome::Missing => {}
                NextOutcome::Unhydratable(reason) => self.unhydratable(queue, &message, reason, &mut poison),
                NextOutcome::Unchecked => unchecked.push(message),
            }
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

    /// A step that cannot be hydrated: retried after its lease, dead-lettered once it has been
    /// read more than `max_delivery_attempts` times.
    fn unhydratable(
        &self,
        queue: &Arc<str>,
        queued: &QueuedMessage,
        reason: String,
        poison: &mut Vec<(QueuedMessage, String)>,
    ) {
        WorkerCounters::add(&self.counters.hydration_failures, 1);
        if queued.read_ct as u32 > self.max_delivery_attempts {
            poison.push((
                queued.clone(),
                format!("could not be hydrated in {} deliveries: {reason}", queued.read_ct),
            ));
        } else {
            tracing::warn!(msg_id = queued.msg_id, queue = %queue, read_ct = queued.read_ct, %reason, "step could not be hydrated; retrying after the lease");
        }
    }

    /// Records a claimed step as in flight and hands it to the dispatch channel. False when
    /// the channel is closed (shutting down; the lease lapses and the step is reclaimed).
    async fn dispatch(&self, claim: Claim, mut context: StepContext, permit: OwnedSemaphorePermit) -> bool {
        context.attempts = claim.attempts;
        WorkerCounters::add(&self.counters.claimed, 1);
        if claim.reclaimed_from.is_some() {
            WorkerCounters::add(&self.counters.reclaimed, 1);
        }
        let now = Instant::now();
        self.in_flight.insert(
            claim.token,
            InFlightEntry {
                step_uuid: claim.step_uuid,
                queue_name: claim.queue_name.clone(),
                msg_id: claim.msg_id,
                claimed_at: now,
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
        if self.quiet.load(Ordering::Acquire) {
            return None;
        }
        let first = self.capacity.clone().acquire_owned().await.ok()?;
        if self.quiet.load(Ordering::Acquire) {
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
            match StepMessage::deserialize(&message.message) {
                Ok(step_message) => parsed.push((message, step_message)),
                Err(err) => poison.push((message, format!("unparseable step message: {err}"))),
            }
        }

        let step_messages: Vec<StepMessage> = parsed.iter().map(|(_, m)| *m).collect();
        let mut contexts = if step_messages.is_empty() {
            Default::default()
        } else {
            hydration::hydrate(&self.pool, &step_messages).await?
        };
        let mut requests = Vec::with_capacity(parsed.len());
        for (queued, step_message) in &parsed {
            match contexts.get(&step_message.step_uuid) {
                Some(Ok(_)) => requests.push(ClaimRequest {
                    msg_id: queued.msg_id,
                    message: *step_message,
                }),
                Some(Err(reason)) => self.unhydratable(queue, queued, reason.clone(), &mut poison),
                None => {}
            }
        }
        if !poison.is_empty() {
            self.dead_letter(queue, &poison).await?;
        }
        if requests.is_empty() {
            return Ok(());
        }

        let outcomes = step_claim::claim_batch(&self.pool, queue, &self.worker_id, &requests).await?;
        for (request, outcome) in requests.iter().zip(outcomes) {
            match outcome {
                ClaimOutcome::Claimed(claim) => {
                    let Some(Ok(context)) = contexts.remove(&request.message.step_uuid) else {
                        continue;
                    };
                    let Some(permit) = permits.pop() else { break };
                    if !self.dispatch(claim, context, permit).await {
                        return Ok(());
                    }
                }
                ClaimOutcome::Duplicate { state } => {
                    WorkerCounters::add(&self.counters.duplicates, 1);
                    tracing::debug!(step_uuid = %request.message.step_uuid, %state, "duplicate message archived");
                }
                ClaimOutcome::Missing => {}
            }
        }
        Ok(())
    }

    /// Records each message in `tasker.dead_letters` and archives it, in one transaction.
    async fn dead_letter(&self, queue: &Arc<str>, poison: &[(QueuedMessage, String)]) -> TaskerResult<()> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = poison.iter().map(|_| Uuid::now_v7()).collect();
        let msg_ids: Vec<i64> = poison.iter().map(|(m, _)| m.msg_id).collect();
        let read_cts: Vec<i32> = poison.iter().map(|(m, _)| m.read_ct).collect();
        let bodies: Vec<Value> = poison.iter().map(|(m, _)| m.message.clone()).collect();
        let reasons: Vec<&str> = poison.iter().map(|(_, r)| r.as_str()).collect();
        sqlx::query(include_str!("../../../sql/queries/dead_letter.sql"))
            .bind(&ids)
            .bind(&msg_ids)
            .bind(&read_cts)
            .bind(&bodies)
            .bind(&reasons)
            .bind(queue.as_ref())
            .bind(self.worker_id.as_ref())
            .execute(&mut *tx)
            .await?;
        client::archive(&mut *tx, queue, &msg_ids).await?;
        tx.commit().await?;
        WorkerCounters::add(&self.counters.dead_lettered, poison.len());
        for (message, reason) in poison {
            tracing::error!(msg_id = message.msg_id, queue = %queue, %reason, "message dead-lettered");
        }
        Ok(())
    }
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
