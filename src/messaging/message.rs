//! Messages on the queues. Results never travel on a queue: the worker writes them to
//! `workflow_steps.results` and sends only these three uuids ("database as API").

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The message on `worker_{ns}_queue` (orchestrator -> worker) and on
/// `orchestration_step_results` (worker -> orchestrator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMessage {
    pub task_uuid: Uuid,
    pub step_uuid: Uuid,
    pub correlation_id: Uuid,
}

/// The NOTIFY payload `tasker.pgmq_send_with_notify` sends on `pgmq_message_ready.{ns}`.
/// A notification is only a wake-up: the receiver reads the queue either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum NotifyEvent {
    MessageWithPayload {
        msg_id: i64,
        queue_name: String,
        namespace: String,
        message: serde_json::Value,
        ready_at: String,
        delay_seconds: i32,
    },
    MessageReady {
        msg_id: i64,
        queue_name: String,
        namespace: String,
        ready_at: String,
        /// Absent from tasker-core's truncated form (a payload over about 7800 bytes).
        #[serde(default)]
        delay_seconds: i32,
        #[serde(default)]
        payload_omitted: bool,
        /// tasker-core's function sets it on the truncated form; ours never does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// tasker-core's `pgmq_send_batch_with_notify` (this project never sends it): several
    /// messages on one queue. The worker reads the queue on it, as on `message_ready`.
    BatchReady {
        msg_ids: Vec<i64>,
        queue_name: String,
        namespace: String,
        message_count: i64,
        ready_at: String,
        #[serde(default)]
        delay_seconds: i32,
    },
}

impl NotifyEvent {
    /// The first message it announces (a batch may announce none).
    pub fn msg_id(&self) -> Option<i64> {
        match self {
            NotifyEvent::MessageWithPayload { msg_id, .. } | NotifyEvent::MessageReady { msg_id, .. } => {
                Some(*msg_id)
            }
            NotifyEvent::BatchReady { msg_ids, .. } => msg_ids.first().copied(),
        }
    }

    pub fn queue_name(&self) -> &str {
        match self {
            NotifyEvent::MessageWithPayload { queue_name, .. }
            | NotifyEvent::MessageReady { queue_name, .. }
            | NotifyEvent::BatchReady { queue_name, .. } => queue_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_message_has_exactly_the_three_uuids() {
        let msg = StepMessage {
            task_uuid: Uuid::nil(),
            step_uuid: Uuid::max(),
            correlation_id: Uuid::nil(),
        };
        let json = serde_json::to_value(msg).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["correlation_id", "step_uuid", "task_uuid"]);
        assert_eq!(serde_json::from_value::<StepMessage>(json).unwrap(), msg);
    }

    #[test]
    fn notify_event_reads_both_shapes() {
        let small: NotifyEvent = serde_json::from_str(
            r#"{"event_type":"message_with_payload","msg_id":7,"queue_name":"worker_a_queue","namespace":"a",
                "message":{"x":1},"ready_at":"2026-01-01T00:00:00Z","delay_seconds":0}"#,
        )
        .unwrap();
        assert_eq!(small.msg_id(), Some(7));
        let large: NotifyEvent = serde_json::from_str(
            r#"{"event_type":"message_ready","msg_id":8,"queue_name":"worker_a_queue","namespace":"a",
                "ready_at":"2026-01-01T00:00:00Z","delay_seconds":0,"payload_omitted":true}"#,
        )
        .unwrap();
        assert_eq!(large.queue_name(), "worker_a_queue");
        // tasker-core's truncated form has no delay_seconds.
        let truncated: NotifyEvent = serde_json::from_str(
            r#"{"event_type":"message_ready","msg_id":9,"queue_name":"worker_a_queue","namespace":"a",
                "ready_at":"2026-01-01T00:00:00Z","truncated":true}"#,
        )
        .unwrap();
        assert!(matches!(
            truncated,
            NotifyEvent::MessageReady {
                msg_id: 9,
                truncated: true,
                delay_seconds: 0,
                ..
            }
        ));
        let batch: NotifyEvent = serde_json::from_str(
            r#"{"event_type":"batch_ready","msg_ids":[10,11],"queue_name":"worker_a_queue","namespace":"a",
                "message_count":2,"ready_at":"2026-01-01T00:00:00Z","delay_seconds":0}"#,
        )
        .unwrap();
        assert_eq!((batch.msg_id(), batch.queue_name()), (Some(10), "worker_a_queue"));
        assert!(matches!(batch, NotifyEvent::BatchReady { message_count: 2, .. }));
    }
}
