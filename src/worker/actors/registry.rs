//! `WorkerActorRegistry`: builds the channels and actors, starts them in dependency order
//! (consumers before producers) and stops them in reverse. Every actor task is aborted when
//! the registry is dropped, so a dropped worker stops at once, as a crashed process would.

use crate::config::TaskerConfig;
use crate::worker::actor_command_processor::ActorCommandProcessor;
use crate::worker::actors::messages::{StepCompletion, WorkerCommand};
use crate::worker::actors::step_executor_actor::{concurrent_batches, StepExecutorActor};
use crate::worker::core::Shared;
use crate::worker::event_systems::worker_event_system::WorkerEventSystem;
use crate::worker::handlers::completion_processor::CompletionProcessorService;
use crate::worker::handlers::dispatch_service::HandlerDispatchService;
use crate::worker::handlers::ffi_dispatch_channel::FfiDispatchChannel;
use crate::worker::handlers::traits::StepHandlerRegistry;
use crate::worker::lease_keeper::LeaseKeeper;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Who runs the handlers of claimed steps.
pub enum DispatchMode {
    /// Rust handlers from a registry, run by the `HandlerDispatchService`.
    Rust(Arc<dyn StepHandlerRegistry>),
    /// Threads of another language pull claimed steps through an `FfiDispatchChannel`.
    Ffi,
}

struct Actor {
    name: &'static str,
    handle: JoinHandle<()>,
}

pub struct WorkerActorRegistry {
    /// In start order.
    actors: Vec<Actor>,
    pub command_tx: mpsc::Sender<WorkerCommand>,
    pub completion_tx: mpsc::Sender<StepCompletion>,
    pub wake: Arc<Notify>,
    pub ffi: Option<Arc<FfiDispatchChannel>>,
}

impl WorkerActorRegistry {
    /// Builds and starts every actor.
    pub fn start(config: &TaskerConfig, shared: Arc<Shared>, dispatch: DispatchMode) -> Self {
        let worker = &config.worker;
        let channels = &worker.mpsc_channels;
        let (dispatch_tx, dispatch_rx) = mpsc::channel(match dispatch {
            DispatchMode::Rust(_) => channels.handler_dispatch.dispatch_buffer_size,
            DispatchMode::Ffi => channels.ffi_dispatch.dispatch_buffer_size,
        });
        let (completion_tx, completion_rx) = mpsc::channel(channels.handler_dispatch.completion_buffer_size);
        let (command_tx, command_rx) = mpsc::channel(channels.handler_dispatch.dispatch_buffer_size);
        let (from_messages_tx, from_messages_rx) =
            mpsc::channel(channels.handler_dispatch.dispatch_buffer_size);
        let wake = Arc::new(Notify::new());
        let mut actors = Vec::new();
        let mut spawn =
            |name: &'static str, fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
                actors.push(Actor {
                    name,
                    handle: tokio::spawn(fut),
                });
            };

        let completion = CompletionProcessorService {
            pool: shared.pool.clone(),
            batch_size: worker.completion_batch_size as usize,
            worker_id: shared.worker_id.clone(),
            in_flight: shared.in_flight.clone(),
            counters: shared.counters.clone(),
            callback: shared.domain_events.clone(),
            events_enabled: shared.events_enabled.clone(),
        };
        spawn("completion_processor", Box::pin(completion.run(completion_rx)));
        spawn(
            "domain_event_publisher",
            Box::pin(
                shared
                    .domain_events
                    .clone()
                    .run_durable_publisher(shared.pool.clone()),
            ),
        );

        let ffi = match dispatch {
            DispatchMode::Rust(registry) => {
                let service = HandlerDispatchService::new(
                    registry,
                    channels.handler_dispatch.max_concurrent_handlers,
                    channels.handler_dispatch.handler_timeout(),
                    completion_tx.clone(),
                    shared.worker_id.clone(),
                );
                spawn("handler_dispatch", Box::pin(service.run(dispatch_rx)));
                None
            }
            DispatchMode::Ffi => {
                let channel = Arc::new(FfiDispatchChannel::new(
                    &channels.ffi_dispatch,
                    completion_tx.clone(),
                    shared.worker_id.clone(),
                ));
                spawn(
                    "ffi_dispatch",
                    Box::pin(channel.clone().run_forwarder(dispatch_rx)),
                );
                spawn("ffi_monitor", Box::pin(channel.clone().run_monitor()));
                Some(channel)
            }
        };

        let lease_keeper = LeaseKeeper {
            pool: shared.pool.clone(),
            in_flight: shared.in_flight.clone(),
            counters: shared.counters.clone(),
            visibility_timeout_seconds: worker.visibility_timeout_seconds,
        };
        spawn("lease_keeper", Box::pin(lease_keeper.run()));

        let executor = StepExecutorActor {
            pool: shared.pool.clone(),
            worker_id: shared.worker_id.clone(),
            queues: shared.queues.clone(),
            visibility_timeout_seconds: worker.visibility_timeout_seconds,
            claim_batch_size: worker.claim_batch_size as usize,
            concurrent_batches: concurrent_batches(shared.max_in_flight, worker.claim_batch_size as usize),
            max_delivery_attempts: worker.max_delivery_attempts,
            capacity: shared.capacity.clone(),
            dispatch_tx,
            in_flight: shared.in_flight.clone(),
            counters: shared.counters.clone(),
            wake: wake.clone(),
            quiet: shared.quiet.clone(),
            busy: shared.executor_busy.clone(),
        };
        spawn("step_executor", Box::pin(executor.run(from_messages_rx)));

        let processor = ActorCommandProcessor {
            shared: shared.clone(),
            wake: wake.clone(),
            completion_tx: completion_tx.clone(),
            from_messages_tx,
        };
        spawn("command_processor", Box::pin(processor.run(command_rx)));

        let events = WorkerEventSystem {
            pool: shared.pool.clone(),
            namespaces: worker.namespaces.clone(),
            deployment_mode: worker.deployment_mode,
            poll_interval: worker.poll_interval(),
            wake: wake.clone(),
            counters: shared.counters.clone(),
            direct: None,
        };
        spawn("worker_event_system", Box::pin(events.run()));

        Self {
            actors,
            command_tx,
            completion_tx,
            wake,
            ffi,
        }
    }

    /// Stops the named actor (aborting its task) and waits until it has stopped.
    pub async fn stop(&mut self, name: &str) {
        if let Some(i) = self.actors.iter().position(|a| a.name == name) {
            let actor = self.actors.remove(i);
            actor.handle.abort();
            let _ = actor.handle.await;
        }
    }

    /// Stops the remaining actors in reverse start order.
    pub async fn stop_all(&mut self) {
        while let Some(actor) = self.actors.pop() {
            actor.handle.abort();
            let _ = actor.handle.await;
        }
    }

    pub fn running(&self) -> Vec<&'static str> {
        self.actors.iter().map(|a| a.name).collect()
    }
}

impl Drop for WorkerActorRegistry {
    fn drop(&mut self) {
        for actor in self.actors.iter().rev() {
            actor.handle.abort();
        }
    }
}
