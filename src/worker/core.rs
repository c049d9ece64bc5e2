//! `WorkerCore`: boots a worker and stops it.
//!
//! Start: connect, check the schema, create the queues of its namespaces (and the results
//! queue), then start the actors (see `WorkerActorRegistry`).
//!
//! Graceful shutdown: stop claiming, wait up to `shutdown_timeout_ms` for in-flight steps
//! to commit, then give the remaining leases back at once (visibility timeout 0) so other
//! workers take those steps without waiting for the lease to lapse.
//!
//! Dropping a `WorkerCore` without `shutdown` aborts everything at once, like a crash: leases
//! are not released and lapse on their own.

use crate::config::TaskerConfig;
use crate::database;
use crate::error::{TaskerError, TaskerResult};
use crate::messaging::{self, client, MessageClient, STEP_RESULTS_QUEUE};
use crate::orchestration::OrchestratorCounters;
use crate::worker::actors::messages::WorkerCommand;
use crate::worker::actors::registry::{DispatchMode, WorkerActorRegistry};
use crate::worker::actors::step_executor_actor::concurrent_batches;
use crate::worker::event_systems::domain_event_system::DomainEventSystem;
use crate::worker::handlers::ffi_dispatch_channel::FfiDispatchChannel;
use crate::worker::in_flight::InFlight;
use crate::worker::prefetch::StartWaits;
use crate::worker::state::{ClaimGate, ShutdownReport, WorkerState, WorkerStatus};
use crate::worker::stats::WorkerCounters;
use parking_lot::Mutex;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

pub struct WorkerCore {
    shared: Arc<WorkerState>,
    registry: WorkerActorRegistry,
    shutdown_timeout: Duration,
    visibility_timeout_seconds: u32,
}

impl WorkerCore {
    /// Starts a worker. With `DispatchMode::Ffi`, `ffi_channel()` is where threads pull steps.
    pub async fn start(config: TaskerConfig, dispatch: DispatchMode) -> TaskerResult<Self> {
        Self::start_with(config, dispatch, None).await
    }

    /// `start`, beside the embedded orchestrator whose counters are `orchestrator`: when given
    /// and `orchestration.complete_in_commit` is on, the worker completes its successes in its
    /// own result transaction (see `CompletionProcessorService`).
    pub async fn start_with(
        config: TaskerConfig,
        dispatch: DispatchMode,
        orchestrator: Option<Arc<OrchestratorCounters>>,
    ) -> TaskerResult<Self> {
        let complete_in_commit = orchestrator.filter(|_| config.orchestration.complete_in_commit);
        // The semaphore starts at the floor; the adaptive prefetch (prefetch unset) raises it.
        let capacity = config.worker.claim_capacity();
        let max_in_flight = config.worker.claim_capacity_ceiling();
        let pools = database::WorkerPools::connect(
            &config.database.url,
            &config.database.pool_settings(),
            concurrent_batches(max_in_flight, config.worker.claim_batch_size as usize) as u32,
            config
                .worker
                .effective_completion_concurrency(complete_in_commit.is_some()) as u32,
        )
        .await?;
        let pool = pools.shared.clone();
        database::ensure_schema(&pool).await?;
        let client = MessageClient::new(pool.clone());
        let mut queues = Vec::with_capacity(config.worker.namespaces.len());
        for namespace in &config.worker.namespaces {
            let queue = messaging::worker_queue_name(namespace)?;
            client.create_queue(&queue).await?;
            client
                .create_queue(&messaging::domain_events_queue_name(namespace)?)
                .await?;
            queues.push(Arc::<str>::from(queue));
        }
        let events_config = &config.worker.mpsc_channels.domain_events;
        let domain_events = Arc::new(DomainEventSystem::new(
            events_config.durable_buffer_size,
            events_config.fast_buffer_size,
        ));
        client.create_queue(STEP_RESULTS_QUEUE).await?;

        let shared = Arc::new(WorkerState {
            worker_id: format!("worker_{}", uuid::Uuid::now_v7()).into(),
            namespaces: config.worker.namespaces.clone(),
            queues,
            pools,
            max_in_flight,
            capacity_now: Arc::new(AtomicUsize::new(capacity)),
            start_waits: Arc::new(StartWaits::default()),
            capacity: Arc::new(Semaphore::new(capacity)),
            in_flight: Arc::new(InFlight::default()),
            counters: Arc::new(WorkerCounters::default()),
            claims: Arc::new(ClaimGate::default()),
            events_enabled: Arc::new(AtomicBool::new(true)),
            listener_connected: Arc::new(AtomicBool::new(false)),
            last_commit: Mutex::new(None),
            running: AtomicBool::new(true),
            domain_events,
        });
        let registry = WorkerActorRegistry::start(&config, shared.clone(), dispatch, complete_in_commit);
        tracing::info!(event = "worker_started", worker_id = %shared.worker_id, namespaces = %shared.namespaces.join(","), capacity, max_capacity = max_in_flight, deployment_mode = ?config.worker.deployment_mode, "worker started");
        let core = Self {
            shared,
            registry,
            shutdown_timeout: config.worker.shutdown_timeout(),
            visibility_timeout_seconds: config.worker.visibility_timeout_seconds,
        };
        Ok(core)
    }

    /// The pull channel, when started with `DispatchMode::Ffi`.
    pub fn ffi_channel(&self) -> Option<&Arc<FfiDispatchChannel>> {
        self.registry.ffi_channel()
    }

    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    pub fn pool(&self) -> &PgPool {
        &self.shared.pools.shared
    }

    /// The shared state, for the metrics listener (`crate::metrics::Probe`).
    pub fn state(&self) -> &Arc<WorkerState> {
        &self.shared
    }

    /// Sends commands to the worker (`WorkerCommand`).
    pub fn command_sender(&self) -> mpsc::Sender<WorkerCommand> {
        self.registry.command_tx.clone()
    }

    /// Status, answered by the command processor.
    pub async fn status(&self) -> TaskerResult<WorkerStatus> {
        let (reply, answer) = oneshot::channel();
        self.registry
            .command_tx
            .send(WorkerCommand::GetWorkerStatus { reply })
            .await
            .map_err(|_| TaskerError::Configuration("the worker is stopped".into()))?;
        answer
            .await
            .map_err(|_| TaskerError::Configuration("the worker is stopped".into()))
    }

    /// Status read directly from the shared counters (no command round trip), for callers
    /// outside the runtime.
    pub fn status_now(&self) -> WorkerStatus {
        self.shared.status()
    }

    /// Domain events: the fast queue Ruby subscribers pull from, and counters.
    pub fn domain_events(&self) -> &Arc<DomainEventSystem> {
        &self.shared.domain_events
    }

    /// Stops claiming new steps; in-flight steps run to completion. A claim already under
    /// way when it is called (a read in progress) still ends in a dispatch: `quiet_settled`
    /// waits for those too.
    pub fn quiet(&self) {
        if self.shared.claims.close() {
            tracing::info!(event = "worker_quiet", worker_id = %self.shared.worker_id, in_flight = self.shared.in_flight.len(), "worker quiet: no new steps will be claimed");
        }
        self.registry.wake.notify_one();
    }

    /// `quiet`, then waits until no claim is under way: once it returns, the worker takes no
    /// step it does not already hold.
    pub async fn quiet_settled(&self) {
        self.quiet();
        self.shared.claims.settled().await;
    }

    /// Graceful stop, waiting up to the configured `shutdown_timeout_ms` for in-flight steps.
    pub async fn shutdown(self) -> TaskerResult<ShutdownReport> {
        let timeout = self.shutdown_timeout;
        self.shutdown_within(timeout).await
    }

    /// Graceful stop, waiting up to `timeout` for in-flight steps (see
    /// `WorkerActorRegistry::shutdown` for the order), then giving back the leases left.
    pub async fn shutdown_within(self, timeout: Duration) -> TaskerResult<ShutdownReport> {
        tracing::info!(event = "worker_stopping", worker_id = %self.shared.worker_id, in_flight = self.shared.in_flight.len(), timeout_ms = timeout.as_millis() as u64, "worker stopping");
        self.quiet();
        let before = self.shared.in_flight.len();
        self.registry
            .shutdown(tokio::time::Instant::now() + timeout)
            .await;
        let released = release_leases(&self.shared, self.visibility_timeout_seconds).await;
        self.shared.running.store(false, Ordering::Relaxed);
        self.shared.pools.close().await;
        let report = ShutdownReport {
            finished: before.saturating_sub(released),
            released,
        };
        let counters = self.shared.counters.snapshot();
        tracing::info!(event = "worker_stopped", worker_id = %self.shared.worker_id, claimed = counters.claimed, succeeded = counters.succeeded, failed = counters.failed, reclaimed = counters.reclaimed, stale = counters.stale_completions, dead_lettered = counters.dead_lettered, finished = report.finished, released = report.released, "worker stopped");
        Ok(report)
    }
}

/// Makes every in-flight message visible again at once.
async fn release_leases(shared: &WorkerState, visibility_timeout_seconds: u32) -> usize {
    let mut released = 0;
    for (queue, msg_ids) in shared.in_flight.by_queue() {
        match client::set_vt(&shared.pools.shared, &queue, &msg_ids, 0).await {
            Ok(ids) => released += ids.len(),
            Err(err) => {
                tracing::warn!(error = %err, %queue, "releasing leases failed; they lapse after {visibility_timeout_seconds} s")
            }
        }
    }
    WorkerCounters::add(&shared.counters.leases_released, released);
    shared.in_flight.clear();
    released
}
