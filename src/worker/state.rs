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
use tokio::sync::Semaphore;

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
    /// Written by `quiet` and shutdown; the executor stops claiming once it is set.
    pub quiet: Arc<AtomicBool>,
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
            quiet: self.quiet.load(Ordering::Relaxed),
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
