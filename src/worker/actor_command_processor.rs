//! `ActorCommandProcessor`: routes each `WorkerCommand` to the actor that owns it. Pure
//! routing: it never waits on the database, so status requests answer even while the
//! executor is busy.

use crate::messaging::QueuedMessage;
use crate::worker::actors::messages::{StepCompletion, WorkerCommand};
use crate::worker::actors::step_executor_actor::ReadMessage;
use crate::worker::core::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

pub struct ActorCommandProcessor {
    pub shared: Arc<Shared>,
    pub wake: Arc<Notify>,
    pub completion_tx: mpsc::Sender<StepCompletion>,
    pub from_messages_tx: mpsc::Sender<ReadMessage>,
}

impl ActorCommandProcessor {
    pub async fn run(self, mut commands: mpsc::Receiver<WorkerCommand>) {
        while let Some(command) = commands.recv().await {
            self.route(command).await;
        }
    }

    async fn route(&self, command: WorkerCommand) {
        match command {
            WorkerCommand::ExecuteStep => self.wake.notify_one(),
            WorkerCommand::ExecuteStepWithCorrelation { namespace, msg_id } => {
                tracing::trace!(%namespace, msg_id, "wake-up for a message");
                self.wake.notify_one();
            }
            WorkerCommand::ExecuteStepFromMessage { queue_name, message } => {
                self.hand_over(queue_name, message).await;
            }
            WorkerCommand::SendStepResult(completion) => {
                if self.completion_tx.send(*completion).await.is_err() {
                    tracing::warn!("completion processor stopped; result not committed");
                }
            }
            WorkerCommand::ProcessStepCompletion { committed, stale } => {
                tracing::debug!(committed, stale, "completion batch reported");
            }
            WorkerCommand::GetWorkerStatus { reply } => {
                let _ = reply.send(self.shared.status());
            }
            WorkerCommand::SetEventIntegration { enabled } => {
                self.shared.events_enabled.store(enabled, Ordering::Relaxed);
            }
        }
    }

    async fn hand_over(&self, queue_name: String, message: QueuedMessage) {
        let Some(queue) = self
            .shared
            .queues
            .iter()
            .find(|q| q.as_ref() == queue_name)
            .cloned()
        else {
            tracing::warn!(%queue_name, msg_id = message.msg_id, "message from a queue this worker does not serve; ignored");
            return;
        };
        if self.from_messages_tx.send((queue, message)).await.is_err() {
            tracing::warn!("step executor stopped; message left under its lease");
        }
    }
}
