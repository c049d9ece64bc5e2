//! What the worker's tasks share, and the status read from it. A leaf: it imports no actor
//! or handler module, so every one of them can import it.

use crate::database::WorkerPools;
use crate::worker::event_systems::domain_event_system::{DomainEventStats, DomainEventSystem};
use crate::worker::in_flight::InFlight;
use crate::worker::prefetch::StartWaits;
use crate::worker::stats::{CounterSnapshot, WorkerCounters};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, Semaphore};

/// Shared state of one worker. Each flag has one writer; the rest only read it.
pub struct WorkerState {
    pub worker_id: Arc<str>,
    pub namespaces: Vec<String>,
    pub queues: Vec<Arc<str>>,
    /// The shared pool, and the claim and commit paths' own (`WorkerPools`).
    pub pools: WorkerPools,
    /// The most steps it may hold claimed (the claim capacity's ceiling).
    pub max_in_flight: usize,
    /// The claim capacity now: `max_in_flight` when the prefetch is fixed; with the adaptive
    /// prefetch it moves between the floor and the ceiling (src/worker/prefetch.rs).
    pub capacity_now: Arc<AtomicUsize>,
    /// Claimed steps' waits for a handler, read by the adaptive prefetch.
    pub start_waits: Arc<StartWaits>,
    /// One permit per step claimed and not yet finished by a handler (handlers + prefetch);
    /// the permit returns when the handler's result is handed to the completion processor.
    pub capacity: Arc<Semaphore>,
    pub in_flight: Arc<InFlight>,
    pub counters: Arc<WorkerCounters>,
    /// Closed by `quiet` and shutdown; the executor starts no claim once it is closed.
    pub claims: Arc<ClaimGate>,
    /// Written by `SetEventIntegration`; read by the completion processor after each commit.
    pub events_enabled: Arc<AtomicBool>,
    /// Written by the event system: its LISTEN connection is up.
    pub listener_connected: Arc<AtomicBool>,
    /// Written by the command processor from `ProcessStepCompletion`: when a batch last committed.
    pub last_commit: Mutex<Option<Instant>>,
    /// Cleared when shutdown has finished.
    pub running: AtomicBool,
    pub domain_events: Arc<DomainEventSystem>,
}

/// Whether the executor may start a claim (a read of a batch, or a handed-over message's
/// check and claim), and how many it has under way. Quiet closes it for good: a claim that
/// began before runs to its end, and `settled` waits for those.
#[derive(Default)]
pub struct ClaimGate {
    quiet: AtomicBool,
    under_way: AtomicUsize,
    idle: Notify,
}

/// A claim under way; dropping it ends the claim.
pub struct ClaimUnderWay(Arc<ClaimGate>);

impl ClaimGate {
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::SeqCst)
    }

    /// Closes the gate; true for the call that closed it.
    pub fn close(&self) -> bool {
        !self.quiet.swap(true, Ordering::SeqCst)
    }

    /// A claim may begin: `None` once quiet. Counted before the flag is read (and the flag
    /// set before the count is read), so `settled` never misses a claim that got through.
    pub fn begin(self: &Arc<Self>) -> Option<ClaimUnderWay> {
        self.under_way.fetch_add(1, Ordering::SeqCst);
        let claim = ClaimUnderWay(self.clone());
        (!self.is_quiet()).then_some(claim)
    }

    /// Returns once the gate is closed and no claim is under way: from then on the worker
    /// takes no step it does not already hold.
    pub async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.is_quiet() && self.under_way.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for ClaimUnderWay {
    fn drop(&mut self) {
        if self.0.under_way.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStatus {
    pub running: bool,
    /// Not claiming new steps (quiet or stopping).
    pub quiet: bool,
    /// The LISTEN connection is up (always false in `polling` mode).
    pub listener_connected: bool,
    pub worker_id: String,
    pub namespaces: Vec<String>,
    pub in_flight: usize,
    pub capacity: usize,
    pub oldest_in_flight_ms: Option<u64>,
    /// Time since a result batch last committed (none yet: `None`).
    pub last_commit_ms_ago: Option<u64>,
    pub counters: CounterSnapshot,
    pub domain_events: DomainEventStats,
    /// Connections open now, over every pool of the worker (`WorkerPools`), and those idle.
    pub pool_size: u32,
    pub pool_idle: usize,
    /// Of `pool_size`, those of the claim pool and of the commit pool; `None` when the claim
    /// and commit paths share the one pool (`database.max_connections` too small to split).
    pub pool_claims: Option<u32>,
    pub pool_commits: Option<u32>,
}

impl WorkerState {
    pub fn status(&self) -> WorkerStatus {
        let roles = self.pools.role_sizes();
        WorkerStatus {
            running: self.running.load(Ordering::Relaxed),
            quiet: self.claims.is_quiet(),
            listener_connected: self.listener_connected.load(Ordering::Relaxed),
            worker_id: self.worker_id.to_string(),
            namespaces: self.namespaces.clone(),
            in_flight: self.in_flight.len(),
            capacity: self.capacity_now.load(Ordering::Relaxed),
            oldest_in_flight_ms: self.in_flight.oldest_age().map(|d| d.as_millis() as u64),
            last_commit_ms_ago: self.last_commit.lock().map(|at| at.elapsed().as_millis() as u64),
            counters: self.counters.snapshot(),
            domain_events: self.domain_events.stats(),
            pool_size: self.pools.size(),
            pool_idle: self.pools.num_idle(),
            pool_claims: roles.map(|(claims, _)| claims),
            pool_commits: roles.map(|(_, commits)| commits),
        }
    }
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// In-flight steps that committed while shutting down.
    pub finished: usize,
    /// In-flight steps whose leases were given back for other workers.
    pub released: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_closed_gate_starts_no_claim_and_settles_once_the_claims_under_way_end() {
        let gate = Arc::new(ClaimGate::default());
        let first = gate.begin().expect("open: a claim may begin");
        let second = gate.begin().expect("open: a claim may begin");
        assert!(gate.close(), "the first close closes it");
        assert!(!gate.close(), "a second close changes nothing");
        assert!(gate.begin().is_none(), "quiet: no claim begins");

        let settled = tokio::spawn({
            let gate = gate.clone();
            async move { gate.settled().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!settled.is_finished(), "one claim is still under way");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .expect("settles when the last claim ends")
            .unwrap();
    }

    #[tokio::test]
    async fn an_open_gate_is_not_settled() {
        let gate = Arc::new(ClaimGate::default());
        let waited = tokio::time::timeout(Duration::from_millis(50), gate.settled()).await;
        assert!(waited.is_err(), "settled before quiet");
        gate.close();
        tokio::time::timeout(Duration::from_secs(5), gate.settled())
            .await
            .expect("closed with nothing under way: settled at once");
    }
}
