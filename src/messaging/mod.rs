//! The wire protocol shared with tasker-core: queue names, the three-uuid `StepMessage`,
//! the `StepExecutionResult` stored in `workflow_steps.results`, and a PGMQ client whose
//! sends go through `tasker.pgmq_send_with_notify`.

pub mod client;
mod message;
mod queues;
mod result;

pub use client::{MessageClient, Poison, QueuedMessage, Undecodable};
pub use message::{NotifyEvent, StepMessage};
pub use queues::{
    domain_events_queue_name, extract_namespace, message_ready_channel, validate_namespace,
    worker_queue_name, ORCHESTRATION_NAMESPACE, STEP_RESULTS_QUEUE,
};
pub use result::{
    BackoffHint, BackoffType, ExecutionTiming, OrchestrationMetadata, StepExecutionError,
    StepExecutionMetadata, StepExecutionResult, StepFailure,
};
