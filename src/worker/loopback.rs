//! A pull channel with no database behind it, for measuring the hand-off itself
//! (`next_step` + `complete`, and the conversions at the FFI boundary). It keeps `capacity`
//! synthetic steps ready; each completion is counted and replaced by a new step. Used by
//! `bench/ffi_handoff.rb`; nothing in the worker uses it, and it is built only with the
//! `bench` feature.

use crate::config::FfiDispatchConfig;
use crate::worker::handlers::ffi_dispatch_channel::FfiDispatchChannel;
use crate::worker::handlers::pipeline::DispatchHandlerMessage;
use crate::worker::step_claim::Claim;
use crate::worker::step_context::{HandlerSpec, StepContext};
use serde_json::{json, Map};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

pub struct Loopback {
    pub channel: Arc<FfiDispatchChannel>,
    completed: Arc<AtomicU64>,
}

impl Loopback {
    /// Starts the feeder on the current tokio runtime.
    pub fn start(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (dispatch_tx, dispatch_rx) = mpsc::channel(capacity);
        let (completion_tx, mut completion_rx) = mpsc::channel(capacity);
        let config = FfiDispatchConfig {
            dispatch_buffer_size: capacity,
            completion_timeout_ms: 3_600_000,
            starvation_warning_threshold_ms: 3_600_000,
        };
        let channel = Arc::new(FfiDispatchChannel::new(&config, completion_tx, "loopback".into()));
        let completed = Arc::new(AtomicU64::new(0));
        tokio::spawn(channel.clone().run_forwarder(dispatch_rx));
        let slots = Arc::new(Semaphore::new(capacity));
        let context = Arc::new(sample_context());
        let counter = completed.clone();
        tokio::spawn(async move {
            for _ in 0..capacity {
                if dispatch_tx.send(message(&slots, &context)).await.is_err() {
                    return;
                }
            }
            while let Some(done) = completion_rx.recv().await {
                drop(done);
                counter.fetch_add(1, Ordering::Relaxed);
                if dispatch_tx.send(message(&slots, &context)).await.is_err() {
                    return;
                }
            }
        });
        Self { channel, completed }
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

fn message(slots: &Arc<Semaphore>, context: &Arc<StepContext>) -> DispatchHandlerMessage {
    let permit = slots
        .clone()
        .try_acquire_owned()
        .expect("a slot is freed before each refill");
    DispatchHandlerMessage {
        event_id: Uuid::now_v7(),
        claim: Claim {
            token: Uuid::now_v7(),
            step_uuid: context.step_uuid,
            task_uuid: context.task_uuid,
            correlation_id: context.correlation_id,
            queue_name: "worker_loopback_queue".into(),
            msg_id: 0,
            attempts: 1,
            reclaimed_from: None,
            enqueued_at: None,
        },
        context: context.clone(),
        permit,
        claimed_at: Instant::now(),
    }
}

/// A context the size of a typical small step: a few input fields, one parent result.
fn sample_context() -> StepContext {
    StepContext {
        task_uuid: Uuid::now_v7(),
        step_uuid: Uuid::now_v7(),
        correlation_id: Uuid::now_v7(),
        namespace: "loopback".into(),
        task_name: "loopback".into(),
        task_version: "1.0.0".into(),
        step_name: "noop".into(),
        task_context: json!({"order_id": 1234, "customer": {"id": 7, "email": "a@example.com"}}),
        inputs: json!({}),
        handler: HandlerSpec {
            callable: "Noop".into(),
            initialization: Map::new(),
        },
        dependency_results: Map::from_iter([(
            "previous".to_string(),
            json!({"success": true, "result": {"ok": true}, "status": "completed"}),
        )]),
        attempts: 1,
        max_attempts: 3,
        retryable: true,
        timeout_seconds: None,
        step_definition: json!({}),
        checkpoint: None,
    }
}
