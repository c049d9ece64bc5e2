//! `WorkerActorRegistry`: builds the channels and the worker's tasks, starts them consumers
//! first, and stops them in pipeline order (`shutdown`). Each task is a `Task` field of its
//! own; dropping the registry without `shutdown` aborts them all at once, as a crashed
//! process would.
//!
//! ```text
//! event system --wake--> executor --dispatch--> handlers (Rust | FFI) --completion--> completion processor
//!   (source)   command processor --from_messages/completion-->     lease keeper (source)     --> domain event publisher
//! ```

use crate::config::TaskerConfig;
use crate::orchestration::OrchestratorCounters;
use crate::retention::{Retention, RetentionPolicy};
use crate::worker::actor_command_processor::ActorCommandProcessor;
use crate::worker::actors::messages::{StepCompletion, WorkerCommand};
use crate::worker::actors::step_executor_actor::{concurrent_batches, StepExecutorActor};
use crate::worker::event_systems::worker_event_system::WorkerEventSystem;
use crate::worker::handlers::completion_processor::CompletionProcessorService;
use crate::worker::handlers::dispatch_service::HandlerDispatchService;
use crate::worker::handlers::ffi_dispatch_channel::FfiDispatchChannel;
use crate::worker::handlers::traits::StepHandlerRegistry;
use crate::worker::heartbeat::Heartbeat;
use crate::worker::lease_keeper::LeaseKeeper;
use crate::worker::prefetch::AdaptivePrefetch;
use crate::worker::state::WorkerState;
use crate::worker::task::Task;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Who runs the handlers of claimed steps.
pub enum DispatchMode {
    /// Rust handlers from a registry, run by the `HandlerDispatchService`.
    Rust(Arc<dyn StepHandlerRegistry>),
    /// Threads of another language pull claimed steps through an `FfiDispatchChannel`.
    Ffi,
}

/// How long results already handed over may take to commit once the handlers are done,
/// and durable events to be sent, before their tasks are aborted.
const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// The handler side of the pipeline.
enum Handlers {
    /// Ends when the executor has dropped the dispatch sender and its handlers are done.
    Rust { dispatch: Task },
    /// The forwarder ends like `Rust`; the monitor is a source.
    Ffi {
        channel: Arc<FfiDispatchChannel>,
        forwarder: Task,
        monitor: Task,
    },
}

pub struct WorkerActorRegistry {
    state: Arc<WorkerState>,
    event_system: Task,
    command_processor: Task,
    executor: Task,
    handlers: Handlers,
    lease_keeper: Task,
    completion_processor: Task,
    domain_event_publisher: Task,
    /// Registers the process in `tasker.workers`; stopped last, it records `stopped`.
    heartbeat: Task,
    /// Retention rounds every `retention.interval_seconds` (none when 0).
    retention: Option<Task>,
    /// The adaptive prefetch (none when `worker.prefetch` is set).
    prefetch: Option<Task>,
    pub command_tx: mpsc::Sender<WorkerCommand>,
    pub wake: Arc<Notify>,
}

impl WorkerActorRegistry {
    /// Builds and starts every task; `complete_in_commit`: the embedded orchestrator's
    /// counters when the worker completes its successes in its result transaction.
    pub fn start(
        config: &TaskerConfig,
        state: Arc<WorkerState>,
        dispatch: DispatchMode,
        complete_in_commit: Option<Arc<OrchestratorCounters>>,
    ) -> Self {
        let worker = &config.worker;
        let channels = &worker.mpsc_channels;
        let (dispatch_tx, dispatch_rx) = mpsc::channel(match dispatch {
            DispatchMode::Rust(_) => channels.handler_dispatch.dispatch_buffer_size,
            DispatchMode::Ffi => channels.ffi_dispatch.dispatch_buffer_size,
        });
        let (completion_tx, completion_rx) =
            mpsc::channel::<StepCompletion>(channels.handler_dispatch.completion_buffer_size);
        let (command_tx, command_rx) = mpsc::channel(channels.handler_dispatch.dispatch_buffer_size);
        let (from_messages_tx, from_messages_rx) =
            mpsc::channel(channels.handler_dispatch.dispatch_buffer_size);
        let wake = Arc::new(Notify::new());

        let reports = command_tx.clone();
        let completion = CompletionProcessorService {
            pool: state.pools.commits().clone(),
            batch_size: worker.completion_batch_size as usize,
            concurrency: worker.effective_completion_concurrency(complete_in_commit.is_some()),
            worker_id: state.worker_id.clone(),
            ack_mode: worker.ack_mode,
            in_flight: state.in_flight.clone(),
            counters: state.counters.clone(),
            callback: state.domain_events.clone(),
            events_enabled: state.events_enabled.clone(),
            on_commit: Some(Arc::new(move |report| {
                let _ = reports.try_send(WorkerCommand::ProcessStepCompletion {
                    committed: report.committed,
                    stale: report.stale,
                });
            })),
            complete_in_commit,
        };
        let completion_processor = Task::spawn(completion.run(completion_rx));
        let domain_event_publisher = Task::spawn(
            state
                .domain_events
                .clone()
                .run_durable_publisher(state.pools.shared.clone()),
        );

        let handlers = match dispatch {
            DispatchMode::Rust(registry) => {
                let service = HandlerDispatchService::new(
                    registry,
                    channels.handler_dispatch.max_concurrent_handlers,
                    channels.handler_dispatch.handler_timeout(),
                    completion_tx.clone(),
                    state.worker_id.clone(),
                )
                .with_start_waits(state.start_waits.clone());
                Handlers::Rust {
                    dispatch: Task::spawn(service.run(dispatch_rx)),
                }
            }
            DispatchMode::Ffi => {
                let channel = Arc::new(
                    FfiDispatchChannel::new(
                        &channels.ffi_dispatch,
                        completion_tx.clone(),
                        state.worker_id.clone(),
                    )
                    .with_start_waits(state.start_waits.clone()),
                );
                channel.enable_checkpoints(
                    state.pools.shared.clone(),
                    worker.checkpoints.clone(),
                    tokio::runtime::Handle::current(),
                );
                Handlers::Ffi {
                    forwarder: Task::spawn(channel.clone().run_forwarder(dispatch_rx)),
                    monitor: Task::spawn_source(|stop| channel.clone().run_monitor(stop)),
                    channel,
                }
            }
        };

        let lease_keeper = LeaseKeeper {
            pool: state.pools.shared.clone(),
            in_flight: state.in_flight.clone(),
            counters: state.counters.clone(),
            visibility_timeout_seconds: worker.visibility_timeout_seconds,
        };
        let lease_keeper = Task::spawn_source(|stop| lease_keeper.run(stop));

        let prefetch = worker.adaptive_prefetch().then(|| {
            let adapter = AdaptivePrefetch::new(
                state.capacity.clone(),
                state.start_waits.clone(),
                state.capacity_now.clone(),
                worker.claim_capacity(),
                state.max_in_flight,
                channels.handler_dispatch.max_concurrent_handlers,
            );
            Task::spawn_source(|stop| adapter.run(stop))
        });

        let executor = StepExecutorActor {
            pool: state.pools.claims().clone(),
            worker_id: state.worker_id.clone(),
            queues: state.queues.clone(),
            visibility_timeout_seconds: worker.visibility_timeout_seconds,
            lean_claim: worker.lean_claim,
            ack_mode: worker.ack_mode,
            claim_batch_size: worker.claim_batch_size as usize,
            concurrent_batches: concurrent_batches(state.max_in_flight, worker.claim_batch_size as usize),
            max_delivery_attempts: worker.max_delivery_attempts,
            capacity: state.capacity.clone(),
            start_waits: state.start_waits.clone(),
            dispatch_tx,
            in_flight: state.in_flight.clone(),
            counters: state.counters.clone(),
            wake: wake.clone(),
            claims: state.claims.clone(),
        };
        let executor = Task::spawn_source(|stop| executor.run(from_messages_rx, stop));

        let processor = ActorCommandProcessor {
            state: state.clone(),
            wake: wake.clone(),
            completion_tx,
            from_messages_tx,
        };
        let command_processor = Task::spawn_source(|stop| processor.run(command_rx, stop));

        let events = WorkerEventSystem {
            pool: state.pools.shared.clone(),
            namespaces: worker.namespaces.clone(),
            deployment_mode: worker.deployment_mode,
            poll_interval: worker.poll_interval(),
            wake: wake.clone(),
            counters: state.counters.clone(),
            connected: state.listener_connected.clone(),
            direct: None,
        };
        let event_system = Task::spawn_source(|stop| events.run(stop));

        let heartbeat = Heartbeat {
            pool: state.pools.shared.clone(),
            worker_id: state.worker_id.clone(),
            namespaces: worker.namespaces.clone(),
            concurrency: state.max_in_flight,
            claims: state.claims.clone(),
        };
        let heartbeat = Task::spawn_source(|stop| heartbeat.run(stop));

        let retention = config.retention.interval().map(|interval| {
            let retention = Retention {
                pool: state.pools.shared.clone(),
                policy: RetentionPolicy::from(&config.retention),
                interval,
            };
            Task::spawn_source(|stop| retention.run(stop))
        });

        Self {
            state,
            event_system,
            command_processor,
            executor,
            handlers,
            lease_keeper,
            completion_processor,
            domain_event_publisher,
            heartbeat,
            retention,
            prefetch,
            command_tx,
            wake,
        }
    }

    /// The pull channel, in `DispatchMode::Ffi`.
    pub fn ffi_channel(&self) -> Option<&Arc<FfiDispatchChannel>> {
        match &self.handlers {
            Handlers::Ffi { channel, .. } => Some(channel),
            Handlers::Rust { .. } => None,
        }
    }

    /// Stops every task in pipeline order: the sources of work, then the executor (a claim
    /// under way finishes), then up to `handlers_deadline` for in-flight steps to finish, then
    /// the handler side, the commits of results already handed over, the lease keeper, the
    /// durable events of committed results, and last the heartbeat (which records the process
    /// `stopped`). Leases still held are the caller's to release.
    pub async fn shutdown(self, handlers_deadline: tokio::time::Instant) {
        let Self {
            state,
            event_system,
            command_processor,
            executor,
            handlers,
            lease_keeper,
            completion_processor,
            domain_event_publisher,
            heartbeat,
            retention,
            prefetch,
            command_tx,
            wake: _,
        } = self;
        if let Some(retention) = retention {
            retention.stop().await;
        }
        if let Some(prefetch) = prefetch {
            prefetch.stop().await;
        }
        event_system.stop().await;
        command_processor.stop().await;
        drop(command_tx);
        executor.stop().await;
        state.in_flight.wait_empty(handlers_deadline).await;
        match handlers {
            Handlers::Rust { dispatch } => {
                // Handlers still running past the deadline are aborted; their steps are released.
                let left = handlers_deadline.saturating_duration_since(tokio::time::Instant::now());
                dispatch.stop_within(left).await;
            }
            Handlers::Ffi {
                channel,
                forwarder,
                monitor,
            } => {
                // Late completions are rejected from here on; their steps are released.
                channel.stop();
                monitor.stop().await;
                forwarder.stop().await;
            }
        }
        // Every completion sender is gone now: the processor commits what it holds and ends.
        if !completion_processor.stop_within(DRAIN_BOUND).await {
            tracing::warn!("results still waiting to commit after {DRAIN_BOUND:?} were abandoned; their steps are released");
        }
        lease_keeper.stop().await;
        state.domain_events.close();
        if !domain_event_publisher.stop_within(DRAIN_BOUND).await {
            tracing::warn!("durable domain events still unsent after {DRAIN_BOUND:?} were dropped");
        }
        heartbeat.stop().await;
    }
}
