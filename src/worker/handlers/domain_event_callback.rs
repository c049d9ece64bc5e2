//! `PostHandlerCallback`: called for each result only after its transaction committed, so
//! whatever it publishes describes a result the orchestrator can already see. The domain
//! event publisher (a later part of the project) plugs in here.

use crate::messaging::StepExecutionResult;
use crate::worker::step_context::StepContext;

pub trait PostHandlerCallback: Send + Sync + 'static {
    /// Must not block: it runs on the completion processor's task.
    fn on_handler_complete(&self, context: &StepContext, result: &StepExecutionResult, worker_id: &str);
}

/// The callback used until domain events exist: does nothing.
pub struct NoopPostHandlerCallback;

impl PostHandlerCallback for NoopPostHandlerCallback {
    fn on_handler_complete(&self, _context: &StepContext, _result: &StepExecutionResult, _worker_id: &str) {}
}
