//! `WorkerCommand`, the commands the `ActorCommandProcessor` routes, and (re-exported from
//! `handlers::pipeline`, where the handlers that consume it define it) `DispatchHandlerMessage`.

use crate::messaging::QueuedMessage;
use crate::worker::state::WorkerStatus;
use tokio::sync::oneshot;

pub use crate::worker::handlers::pipeline::{DispatchHandlerMessage, StepCompletion};

/// Commands the `ActorCommandProcessor` routes to the actors. Callers outside the worker get
/// a sender from `WorkerCore::command_sender`; inside, the completion processor reports each
/// commit with `ProcessStepCompletion`.
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
    /// The completion processor committed a batch: `committed` results stored, `stale` ones
    /// discarded. Recorded as the worker's last commit (`WorkerStatus::last_commit_ms_ago`).
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
