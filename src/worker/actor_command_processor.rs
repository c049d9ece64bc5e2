//! `ActorCommandProcessor`: routes each `WorkerCommand` to the actor that owns it. Pure
//! routing: it never waits on the database, so status requests answer even while the
//! executor is busy. It stops first in a shutdown (commands sent after that are refused).

use crate::messaging::QueuedMessage;
use crate::worker::actors::messages::{StepCompletion, WorkerCommand};
use crate::worker::actors::step_executor_actor::ReadMessage;
use crate::worker::state::WorkerState;
use crate::worker::task::StopSignal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

pub struct ActorCommandProcessor {
    pub state: Arc<WorkerState>,
    pub wake: Arc<Notify>,
    pub completion_tx: mpsc::Sender<StepCompletion>,
    pub from_messages_tx: mpsc::Sender<ReadMessage>,
}

impl ActorCommandProcessor {
    /// Runs until stopped (callers may keep senders, so their drop cannot be what ends it).
    pub async fn run(self, mut commands: mpsc::Receiver<WorkerCommand>, mut stop: StopSignal) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.route(command).await,
                    None => return,
                },
                _ = stop.stopped() => return,
            }
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
                *self.state.last_commit.lock() = Some(Instant::now());
                tracing::trace!(committed, stale, "completion batch committed");
            }
            WorkerCommand::GetWorkerStatus { reply } => {
                let _ = reply.send(self.state.status());
            }
            WorkerCommand::SetEventIntegration { enabled } => {
                self.state.events_enabled.store(enabled, Ordering::Relaxed);
            }
        }
    }

    async fn hand_over(&self, queue_name: String, message: QueuedMessage) {
        let Some(queue) = self
            .state
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
