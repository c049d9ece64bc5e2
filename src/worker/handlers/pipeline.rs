//! What travels the handler system's two channels: claimed steps on the dispatch channel
//! (from the step executor to whoever runs handlers) and results on the completion channel
//! (from them to the completion processor). Defined here, beside the handlers that take and
//! make them, so the handlers import nothing from `actors/`.

use crate::messaging::StepExecutionResult;
use crate::worker::step_claim::Claim;
use crate::worker::step_context::StepContext;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

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
