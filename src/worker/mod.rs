//! The worker: claims steps from PGMQ, runs their handlers, commits their results.
//! Module map follows the seed (`actors/`, `handlers/`, `event_systems/`,
//! `actor_command_processor`, `core`, `step_claim`); `hydration`, `in_flight`,
//! `lease_keeper`, `heartbeat`, `prefetch`, `state`, `stats`, `step_context` and `task` are helpers it did not name.
//!
//! Imports go one way: `core` -> `actors` (the registry wires everything) ->
//! `actor_command_processor`, `event_systems`, `handlers`, `lease_keeper`, `heartbeat` -> the leaves
//! (`state`, `stats`, `in_flight`, `prefetch`, `step_claim`, `hydration`, `step_context`, `task`).
//! `handlers` import nothing from `actors`.

pub mod actor_command_processor;
pub mod actors;
pub mod checkpoints;
pub mod core;
pub mod event_systems;
pub mod handlers;
pub mod heartbeat;
pub mod hydration;
pub mod in_flight;
pub mod lease_keeper;
#[cfg(feature = "bench")]
pub mod loopback;
pub mod prefetch;
pub mod state;
pub mod stats;
pub mod step_claim;
pub mod step_context;
pub mod task;

pub use self::core::WorkerCore;
pub use actors::registry::DispatchMode;
pub use handlers::ffi_dispatch_channel::{
    CheckpointSaved, CompletionRejected, FfiCompletion, FfiDispatchChannel, FfiDispatchMetrics, FfiStepEvent,
};
pub use handlers::pipeline::{DispatchHandlerMessage, StepCompletion};
pub use handlers::traits::{
    handler_fn, InMemoryHandlerRegistry, StepHandler, StepHandlerRegistry, StepResult, StepSuccess,
};
pub use state::{ShutdownReport, WorkerStatus};
pub use step_context::{HandlerSpec, StepContext};
