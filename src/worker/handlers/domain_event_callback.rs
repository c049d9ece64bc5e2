//! `PostHandlerCallback`: called for each result only after its transaction committed, so
//! whatever it publishes describes a result the orchestrator can already see. The worker's
//! implementation is `DomainEventSystem` (event_systems/domain_event_system.rs).

use crate::messaging::StepExecutionResult;
use crate::worker::step_context::StepContext;

pub trait PostHandlerCallback: Send + Sync + 'static {
    /// Must not block: it runs on the completion processor's task.
    fn on_handler_complete(&self, context: &StepContext, result: &StepExecutionResult, worker_id: &str);
}
