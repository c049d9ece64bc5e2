//! The worker: claims steps from PGMQ, runs their handlers, commits their results.
//! Module map follows the seed (`actors/`, `handlers/`, `event_systems/`,
//! `actor_command_processor`, `core`, `step_claim`); `hydration`, `in_flight`,
//! `lease_keeper`, `stats` and `step_context` are helpers it did not name.

pub mod actor_command_processor;
pub mod actors;
pub mod core;
pub mod event_systems;
pub mod handlers;
pub mod hydration;
pub mod in_flight;
pub mod lease_keeper;
pub mod loopback;
pub mod stats;
pub mod step_claim;
pub mod step_context;

pub use self::core::{ShutdownReport, WorkerCore, WorkerStatus};
pub use actors::registry::DispatchMode;
pub use handlers::ffi_dispatch_channel::{
    CompletionRejected, FfiCompletion, FfiDispatchChannel, FfiDispatchMetrics, FfiStepEvent,
};
pub use handlers::traits::{
    handler_fn, InMemoryHandlerRegistry, StepHandler, StepHandlerRegistry, StepResult, StepSuccess,
};
pub use step_context::{HandlerSpec, StepContext};
