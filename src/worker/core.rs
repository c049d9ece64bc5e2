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
use crate::worker::actors::messages::WorkerCommand;
use crate::worker::actors::registry::{DispatchMode, WorkerActorRegistry};
use crate::worker::event_systems::domain_event_system::{DomainEventStats, DomainEventSystem};
use crate::worker::handlers::ffi_dispatch_channel::FfiDispatchChannel;
use crate::worker::in_flight::InFlight;
use crate::worker::stats::{CounterSnapshot, WorkerCounters};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// State the actors share. Each piece has one writer; the rest only read it.
pub struct Shared {
    pub worker_id: Arc<str>,
    pub namespaces: Vec<String>,
    pub queues: Vec<Arc<str>>,
    pub pool: PgPool,
    pub max_in_flight: usize,
    /// One permit per step claimed and not yet finished by a handler (handlers + prefetch);
    /// the permit returns when the handler's result is handed to the completion processor.
    pub capacity: Arc<Semaphore>,
    pub in_flight: Arc<InFlight>,
    pub counters: Arc<WorkerCounters>,
    pub quiet: Arc<AtomicBool>,
    pub events_enabled: Arc<AtomicBool>,
    pub executor_busy: Arc<tokio::sync::RwLock<()>>,
    pub running: AtomicBool,
    pub domain_events: Arc<DomainEventSystem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStatus {
    pub running: bool,
    /// Not claiming new steps (quiet or stopping).
    pub quiet: bool,
    pub worker_id: String,
    pub namespaces: Vec<String>,
    pub in_flight: usize,
    pub capacity: usize,
    pub oldest_in_flight_ms: Option<u64>,
    pub counters: CounterSnapshot,
    pub domain_events: DomainEventStats,
    pub pool_size: u32,
    pub pool_idle: usize,
}

impl Shared {
    pub fn status(&self) -> WorkerStatus {
        WorkerStatus {
            running: self.running.load(Ordering::Relaxed),
            quiet: self.quiet.load(Ordering::Relaxed),
            worker_id: self.worker_id.to_string(),
            namespaces: self.namespaces.clone(),
            in_flight: self.in_flight.len(),
            capacity: self.max_in_flight,
            oldest_in_flight_ms: self.in_flight.oldest_age().map(|d| d.as_millis() as u64),
            counters: self.counters.snapshot(),
            domain_events: self.domain_events.stats(),
            pool_size: self.pool.size(),
            pool_idle: self.pool.num_idle(),
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

pub struct WorkerCore {
    shared: Arc<Shared>,
    registry: WorkerActorRegistry,
    shutdown_timeout: Duration,
    visibility_timeout_seconds: u32,
}

impl WorkerCore {
    /// Starts a worker. With `DispatchMode::Ffi`, `ffi_channel()` is where threads pull steps.
    pub async fn start(config: TaskerConfig, dispatch: DispatchMode) -> TaskerResult<Self> {
        let pool = database::connect(&config.database.url, &config.database.pool_settings()).await?;
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

        let max_in_flight = config.worker.claim_capacity();
        let shared = Arc::new(Shared {
            worker_id: format!("worker_{}", uuid::Uuid::now_v7()).into(),
            namespaces: config.worker.namespaces.clone(),
            queues,
            pool,
            max_in_flight,
            capacity: Arc::new(Semaphore::new(max_in_flight)),
            in_flight: Arc::new(InFlight::default()),
            counters: Arc::new(WorkerCounters::default()),
            quiet: Arc::new(AtomicBool::new(false)),
            events_enabled: Arc::new(AtomicBool::new(true)),
            executor_busy: Arc::new(tokio::sync::RwLock::new(())),
            running: AtomicBool::new(true),
            domain_events,
        });
        let registry = WorkerActorRegistry::start(&config, shared.clone(), dispatch);
        tracing::info!(worker_id = %shared.worker_id, namespaces = ?shared.namespaces, capacity = max_in_flight, "worker started");
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
        self.registry.ffi.as_ref()
    }

    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
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

    /// Stops claiming new steps; in-flight steps run to completion.
    pub fn quiet(&self) {
        self.shared.quiet.store(true, Ordering::Release);
        self.registry.wake.notify_one();
    }

    /// Graceful stop, waiting up to the configured `shutdown_timeout_ms` for in-flight steps.
    pub async fn shutdown(self) -> TaskerResult<ShutdownReport> {
        let timeout = self.shutdown_timeout;
        self.shutdown_within(timeout).await
    }

    /// Graceful stop, waiting up to `timeout` for in-flight steps.
    pub async fn shutdown_within(mut self, timeout: Duration) -> TaskerResult<ShutdownReport> {
        self.quiet();
        self.registry.stop("worker_event_system").await;
        // Wait for a half-done claim batch, then stop the executor.
        drop(self.shared.executor_busy.write().await);
        self.registry.stop("step_executor").await;

        let before = self.shared.in_flight.len();
        let deadline = Instant::now() + timeout;
        while !self.shared.in_flight.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.registry.stop("handler_dispatch").await;
        if let Some(ffi) = &self.registry.ffi {
            // Late completions are rejected from here on; their steps are released below.
            ffi.stop();
        }
        self.registry.stop("ffi_dispatch").await;
        self.registry.stop("ffi_monitor").await;
        // Let results already handed over commit before the processor stops.
        let drain_deadline = Instant::now() + Duration::from_secs(2);
        let completion_tx = &self.registry.completion_tx;
        while completion_tx.capacity() < completion_tx.max_capacity() && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.registry.stop("lease_keeper").await;
        self.registry.stop("completion_processor").await;
        // Durable events of committed results still go out, within a bound.
        let events_deadline = Instant::now() + Duration::from_secs(2);
        while !self.shared.domain_events.durable_idle() && Instant::now() < events_deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.registry.stop("domain_event_publisher").await;
        let released = self.release_leases().await;
        self.registry.stop_all().await;
        self.shared.running.store(false, Ordering::Relaxed);
        self.shared.pool.close().await;
        let report = ShutdownReport {
            finished: before.saturating_sub(released),
            released,
        };
        tracing::info!(worker_id = %self.shared.worker_id, finished = report.finished, released = report.released, "worker stopped");
        Ok(report)
    }

    /// Makes every in-flight message visible again at once.
    async fn release_leases(&self) -> usize {
        let mut released = 0;
        for (queue, msg_ids) in self.shared.in_flight.by_queue() {
            match client::set_vt(&self.shared.pool, &queue, &msg_ids, 0).await {
                Ok(ids) => released += ids.len(),
                Err(err) => {
                    tracing::warn!(error = %err, %queue, "releasing leases failed; they lapse after {} s", self.visibility_timeout_seconds)
                }
            }
        }
        WorkerCounters::add(&self.shared.counters.leases_released, released);
        self.shared.in_flight.clear();
        released
    }
}
