//! Messages between the worker's actors.

use crate::messaging::{QueuedMessage, StepExecutionResult};
use crate::worker::core::WorkerStatus;
use crate::worker::step_claim::Claim;
use crate::worker::step_context::StepContext;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use uuid::Uuid;

/// Commands the `ActorCommandProcessor` routes to the actors.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Read and run whatever is ready in the worker's queues (a wake-up).
    ExecuteStep,
    /// A wake-up caused by a specific message (from a NOTIFY); the id is kept for logs.
    ExecuteStepWithCorrelation {
        namespace: String,
        msg_id: i64,
    },
    /// Run a message that was already read (under its visibility timeout) from `queue_name`.
    ExecuteStepFromMessage {
        queue_name: String,
        message: QueuedMessage,
    },
    /// A handler's result for a claim: commit it.
    SendStepResult(Box<StepCompletion>),
    /// The completion processor committed (or gave up on) a batch; counted in status.
    ProcessStepCompletion {
        committed: usize,
        stale: usize,
    },
    GetWorkerStatus {
        reply: oneshot::Sender<WorkerStatus>,
    },
    /// Turn the post-commit callback (domain events) on or off.
    SetEventIntegration {
        enabled: bool,
    },
}

/// A claimed, hydrated step on its way to a handler. The capacity permit travels with it
/// and is released when the handler's result is handed to the completion processor.
#[derive(Debug)]
pub struct DispatchHandlerMessage {
    pub event_id: Uuid,
    pub claim: Claim,
    pub context: Arc<StepContext>,
    pub permit: OwnedSemaphorePermit,
    pub claimed_at: Instant,
}

/// A result on its way to the completion processor.
#[derive(Debug)]
pub struct StepCompletion {
    pub claim: Claim,
    pub context: Arc<StepContext>,
    pub result: StepExecutionResult,
}
