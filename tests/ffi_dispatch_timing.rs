//! The pull channel's clocks, with tokio's time paused and no database: a polled step that is
//! not completed fails with `ffi_timeout` at its deadline and not before, a late completion is
//! rejected, and steps left unpolled or running past the threshold are reported as starving.
//! A paused runtime advances its clock only when every task waits on a timer, so each `sleep`
//! here moves time forward exactly, monitor tick by monitor tick.

use serde_json::{json, Map};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::FfiDispatchConfig;
use tasker_worker::worker::step_claim::Claim;
use tasker_worker::worker::task::Task;
use tasker_worker::worker::{
    CompletionRejected, DispatchHandlerMessage, FfiCompletion, FfiDispatchChannel, HandlerSpec,
    StepCompletion, StepContext,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

/// The monitor's period for these thresholds (a quarter of the starvation threshold, at most
/// 100 ms): the most a deadline can be overshot by.
const TICK: Duration = Duration::from_millis(100);

struct Harness {
    channel: Arc<FfiDispatchChannel>,
    dispatch: mpsc::Sender<DispatchHandlerMessage>,
    completions: mpsc::Receiver<StepCompletion>,
    slots: Arc<Semaphore>,
    _tasks: (Task, Task),
}

fn harness(completion_timeout_ms: u64, starvation_warning_threshold_ms: u64) -> Harness {
    let config = FfiDispatchConfig {
        dispatch_buffer_size: 10,
        completion_timeout_ms,
        starvation_warning_threshold_ms,
    };
    let (completion_tx, completions) = mpsc::channel(10);
    let (dispatch, dispatch_rx) = mpsc::channel(10);
    let channel = Arc::new(FfiDispatchChannel::new(&config, completion_tx, "timing".into()));
    let forwarder = Task::spawn(channel.clone().run_forwarder(dispatch_rx));
    let monitor = Task::spawn_source(|stop| channel.clone().run_monitor(stop));
    Harness {
        channel,
        dispatch,
        completions,
        slots: Arc::new(Semaphore::new(10)),
        _tasks: (forwarder, monitor),
    }
}

impl Harness {
    /// Dispatches one step and waits until the forwarder has queued it for the threads.
    async fn dispatch_step(&self) -> Uuid {
        let step_uuid = Uuid::now_v7();
        let context = StepContext {
            task_uuid: Uuid::now_v7(),
            step_uuid,
            correlation_id: Uuid::now_v7(),
            namespace: "timing".into(),
            task_name: "timing".into(),
            task_version: "1.0.0".into(),
            step_name: "slow".into(),
            task_context: json!({}),
            inputs: json!({}),
            handler: HandlerSpec {
                callable: "Slow".into(),
                initialization: Map::new(),
            },
            dependency_results: Map::new(),
            attempts: 1,
            max_attempts: 3,
            retryable: true,
            timeout_seconds: None,
            step_definition: json!({}),
            checkpoint: None,
        };
        let message = DispatchHandlerMessage {
            event_id: Uuid::now_v7(),
            claim: Claim {
                token: Uuid::now_v7(),
                step_uuid,
                task_uuid: context.task_uuid,
                correlation_id: context.correlation_id,
                queue_name: "worker_timing_queue".into(),
                msg_id: 1,
                attempts: 1,
                reclaimed_from: None,
                enqueued_at: None,
            },
            context: Arc::new(context),
            permit: self.slots.clone().try_acquire_owned().unwrap(),
            claimed_at: std::time::Instant::now(),
        };
        let queued_before = self.channel.metrics().queued;
        self.dispatch.send(message).await.unwrap();
        while self.channel.metrics().queued == queued_before {
            tokio::task::yield_now().await;
        }
        step_uuid
    }
}

fn success() -> FfiCompletion {
    FfiCompletion {
        success: true,
        result: json!({"ok": true}),
        metadata: Map::new(),
        error: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_polled_step_not_completed_fails_with_ffi_timeout_at_its_deadline_and_not_before() {
    let mut h = harness(1_000, 60_000);
    let step_uuid = h.dispatch_step().await;
    let event = h.channel.try_next_step().expect("a queued step");
    let polled_at = Instant::now();

    tokio::time::sleep(Duration::from_millis(990)).await;
    assert!(h.completions.try_recv().is_err(), "failed before its deadline");
    assert!(h.channel.take_timed_out().is_empty());
    assert_eq!(h.channel.metrics().timed_out, 0);
    assert_eq!(h.channel.metrics().running, 1);

    let timed_out = h.completions.recv().await.expect("an ffi_timeout result");
    let waited = polled_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000),
        "timed out after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1_000) + TICK,
        "timed out only after {waited:?}"
    );
    assert_eq!(timed_out.claim.step_uuid, step_uuid);
    assert!(!timed_out.result.success);
    let error = timed_out.result.error.expect("the failure");
    assert_eq!(error.error_type.as_deref(), Some("ffi_timeout"));
    assert!(error.retryable);
    assert!(
        error.message.contains("did not complete within 1000 ms"),
        "{}",
        error.message
    );
    let metrics = h.channel.metrics();
    assert_eq!((metrics.timed_out, metrics.running), (1, 0));
    // The embedder learns which event's thread is hung, once.
    assert_eq!(h.channel.take_timed_out(), vec![event.event_id]);
    assert!(h.channel.take_timed_out().is_empty());
    assert_eq!(
        h.slots.available_permits(),
        10,
        "the timed-out step's slot is free again"
    );

    // The handler finishing late is told so, and nothing more is sent.
    assert_eq!(
        h.channel.complete(event.event_id, success()),
        Err(CompletionRejected::TimedOut(event.event_id))
    );
    assert!(h.completions.try_recv().is_err());
    assert_eq!(h.channel.metrics().rejected_completions, 1);
}

#[tokio::test(start_paused = true)]
async fn a_completion_in_time_is_accepted_once_and_never_also_timed_out() {
    let mut h = harness(60_000, 60_000);
    h.dispatch_step().await;
    let event = h.channel.try_next_step().expect("a queued step");
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(h.channel.complete(event.event_id, success()), Ok(()));
    let done = h.completions.recv().await.expect("the success");
    assert!(done.result.success);
    assert_eq!(
        h.channel.complete(event.event_id, success()),
        Err(CompletionRejected::AlreadyCompleted(event.event_id))
    );
    // Long past the deadline the completed step is not failed as well.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(h.channel.metrics().timed_out, 0);
    assert!(h.completions.try_recv().is_err());
    let unknown = Uuid::now_v7();
    assert_eq!(
        h.channel.complete(unknown, success()),
        Err(CompletionRejected::Unknown(unknown))
    );
}

#[tokio::test(start_paused = true)]
async fn steps_waiting_unpolled_and_handlers_running_past_the_threshold_are_reported() {
    let h = harness(60_000, 1_000);
    h.dispatch_step().await;
    let queued_at = Instant::now();

    tokio::time::sleep(Duration::from_millis(950)).await;
    assert_eq!(
        h.channel.metrics().starvation_warnings,
        0,
        "warned before the threshold"
    );
    tokio::time::sleep(TICK).await;
    let metrics = h.channel.metrics();
    assert_eq!(
        metrics.starvation_warnings, 1,
        "an unpolled step past the threshold"
    );
    assert!(metrics.oldest_queued_ms.unwrap() >= 1_000, "{metrics:?}");
    assert!(queued_at.elapsed() <= Duration::from_millis(1_000) + TICK);

    // Polled now; running past the threshold is the second warning (one per threshold at most).
    let _event = h.channel.try_next_step().expect("the step");
    let polled_at = Instant::now();
    assert_eq!(h.channel.metrics().queued, 0);
    tokio::time::sleep(Duration::from_millis(950)).await;
    assert_eq!(h.channel.metrics().starvation_warnings, 1);
    tokio::time::sleep(TICK + TICK).await;
    let metrics = h.channel.metrics();
    assert_eq!(
        metrics.starvation_warnings, 2,
        "a handler running past the threshold"
    );
    assert!(metrics.oldest_running_ms.unwrap() >= 1_000, "{metrics:?}");
    assert!(polled_at.elapsed() <= Duration::from_millis(1_000) + 2 * TICK);
}

#[tokio::test(start_paused = true)]
async fn stopping_abandons_running_steps_and_rejects_their_completions() {
    let mut h = harness(60_000, 60_000);
    h.dispatch_step().await;
    let event = h.channel.try_next_step().expect("a queued step");
    h.channel.stop();
    assert!(h.channel.is_stopped());
    assert_eq!(
        h.channel.complete(event.event_id, success()),
        Err(CompletionRejected::Stopped(event.event_id))
    );
    assert!(h.channel.next_step(Duration::from_millis(1)).is_none());
    // The channel held the only completion sender and dropped it: the completion processor
    // would see its input end, with nothing sent for the abandoned step.
    assert!(h.completions.recv().await.is_none());
}
