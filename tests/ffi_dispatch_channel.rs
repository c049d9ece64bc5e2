//! The pull channel on real PostgreSQL, driven by OS threads as Ruby threads drive it.

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasker_worker::config::TaskerConfig;
use tasker_worker::testing::{template, wait_for, worker_config, TestDatabase, TestWorkflow};
use tasker_worker::worker::{
    CompletionRejected, DispatchMode, FfiCompletion, FfiDispatchChannel, WorkerCore,
};

const WAIT: Duration = Duration::from_secs(20);

async fn start(config: TaskerConfig) -> (WorkerCore, Arc<FfiDispatchChannel>) {
    let core = WorkerCore::start(config, DispatchMode::Ffi)
        .await
        .expect("worker starts");
    let channel = core.ffi_channel().expect("ffi channel").clone();
    (core, channel)
}

fn ok(result: serde_json::Value) -> FfiCompletion {
    serde_json::from_value(json!({ "success": true, "result": result })).unwrap()
}

/// `next_step` from a blocking thread, as a Ruby thread calls it.
async fn poll(channel: &Arc<FfiDispatchChannel>) -> Option<tasker_worker::worker::FfiStepEvent> {
    let channel = channel.clone();
    tokio::task::spawn_blocking(move || channel.next_step(Duration::from_secs(10)))
        .await
        .unwrap()
}

async fn one_step(db: &TestDatabase, ns: &str) -> TestWorkflow {
    let wf = TestWorkflow::create(
        &db.pool,
        ns,
        template("one", &[("only", "Ruby::Handler", &[])]),
        json!({"n": 3}),
    )
    .await;
    wf.enqueue("only").await;
    wf
}

async fn wait_state(wf: &TestWorkflow, state: &str) {
    wait_for(state, WAIT, || async {
        (wf.state("only").await == state).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_pull_run_and_complete_steps_concurrently() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["ffi"]);
    config
        .worker
        .mpsc_channels
        .handler_dispatch
        .max_concurrent_handlers = 4;
    let (core, channel) = start(config).await;
    let mut workflows = Vec::new();
    for _ in 0..4 {
        workflows.push(one_step(&db, "ffi").await);
    }
    // Four threads each take one step and hold it until all four are running.
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (channel, barrier) = (channel.clone(), barrier.clone());
            std::thread::spawn(move || {
                let event = channel.next_step(Duration::from_secs(10)).expect("a step");
                barrier.wait();
                let n = event.context.task_context["n"].as_i64().unwrap();
                channel
                    .complete(event.event_id, ok(json!({ "cubed": n * n * n })))
                    .expect("accepted");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for wf in &workflows {
        wait_state(wf, "enqueued_for_orchestration").await;
        assert_eq!(wf.results("only").await.unwrap()["result"]["cubed"], 27);
    }
    let m = channel.metrics();
    assert_eq!((m.polled, m.completed, m.running, m.queued), (4, 4, 0, 0));
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_completes_once_and_unknown_ids_are_rejected() {
    let db = TestDatabase::migrated().await;
    let (core, channel) = start(worker_config(&db, &["once"])).await;
    let wf = one_step(&db, "once").await;
    let event = poll(&channel).await.expect("a step");
    assert_eq!(event.context.step_uuid, wf.step("only"));
    channel.complete(event.event_id, ok(json!(1))).unwrap();
    assert_eq!(
        channel.complete(event.event_id, ok(json!(2))),
        Err(CompletionRejected::AlreadyCompleted(event.event_id))
    );
    let stranger = uuid::Uuid::now_v7();
    assert_eq!(
        channel.complete(stranger, ok(json!(3))),
        Err(CompletionRejected::Unknown(stranger))
    );
    wait_state(&wf, "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"], 1);
    assert_eq!(channel.metrics().rejected_completions, 2);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_keeps_message_type_class_and_backoff() {
    let db = TestDatabase::migrated().await;
    let (core, channel) = start(worker_config(&db, &["fail"])).await;
    let wf = one_step(&db, "fail").await;
    let event = poll(&channel).await.unwrap();
    let failure: FfiCompletion = serde_json::from_value(json!({
        "success": false,
        "error": { "message": "gateway busy", "error_type": "retryable_error", "retryable": true,
                   "error_class": "TaskerWorker::RetryableError", "retry_after": 9, "backtrace": ["a.rb:1"] }
    }))
    .unwrap();
    channel.complete(event.event_id, failure).unwrap();
    wait_state(&wf, "enqueued_as_error_for_orchestration").await;
    let r = wf.results("only").await.unwrap();
    assert_eq!(r["error"]["message"], "gateway busy");
    assert_eq!(r["error"]["error_type"], "retryable_error");
    assert_eq!(r["error"]["retryable"], true);
    assert_eq!(r["metadata"]["retryable"], true);
    assert_eq!(r["error"]["backtrace"], json!(["a.rb:1"]));
    assert_eq!(
        r["error"]["context"]["error_class"],
        "TaskerWorker::RetryableError"
    );
    assert_eq!(r["orchestration_metadata"]["backoff_hint"]["delay_seconds"], 9);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_completion_timeout_fails_with_ffi_timeout_and_its_late_completion_is_rejected() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["slow"]);
    config.worker.mpsc_channels.ffi_dispatch.completion_timeout_ms = 200;
    let (core, channel) = start(config).await;
    let wf = one_step(&db, "slow").await;
    let event = poll(&channel).await.unwrap();
    wait_state(&wf, "enqueued_as_error_for_orchestration").await;
    let r = wf.results("only").await.unwrap();
    assert_eq!(r["error"]["error_type"], "ffi_timeout");
    assert_eq!(r["error"]["retryable"], true);
    assert_eq!(
        channel.complete(event.event_id, ok(json!("late"))),
        Err(CompletionRejected::TimedOut(event.event_id))
    );
    let m = channel.metrics();
    assert_eq!((m.timed_out, m.running), (1, 0));
    assert_eq!(core.status().await.unwrap().in_flight, 0, "the slot is freed");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_waiting_unpolled_past_the_threshold_raise_a_starvation_warning() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["starve"]);
    config
        .worker
        .mpsc_channels
        .handler_dispatch
        .max_concurrent_handlers = 2;
    config
        .worker
        .mpsc_channels
        .ffi_dispatch
        .starvation_warning_threshold_ms = 100;
    let (core, channel) = start(config).await;
    let first = one_step(&db, "starve").await;
    let _second = one_step(&db, "starve").await;
    // One thread takes one step and sits on it; the other step waits with nobody to poll it.
    let event = poll(&channel).await.unwrap();
    // The step the thread sits on passes the threshold too (a slow handler, also warned
    // about), and the two steps may be claimed a few ms apart: wait until the unpolled one
    // is past the threshold as well.
    let m = wait_for("a starvation warning", WAIT, || async {
        let m = channel.metrics();
        (m.starvation_warnings >= 1 && m.queued == 1 && m.oldest_queued_ms >= Some(100)).then_some(m)
    })
    .await;
    assert_eq!(m.running, 1);
    assert_eq!(m.waiting_threads, 0);
    assert!(m.oldest_queued_ms.unwrap() >= 100, "{m:?}");
    channel.complete(event.event_id, ok(json!(null))).unwrap();
    wait_for("first done", WAIT, || async {
        (first.state("only").await == "enqueued_for_orchestration").then_some(())
    })
    .await;
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_step_times_out_empty_and_returns_at_once_when_stopped() {
    let db = TestDatabase::migrated().await;
    let (core, channel) = start(worker_config(&db, &["idle"])).await;
    let started = Instant::now();
    let idle = tokio::task::spawn_blocking({
        let channel = channel.clone();
        move || channel.next_step(Duration::from_millis(150))
    })
    .await
    .unwrap();
    assert!(idle.is_none());
    assert!(started.elapsed() >= Duration::from_millis(150));

    let waiter = std::thread::spawn({
        let channel = channel.clone();
        move || channel.next_step(Duration::from_secs(600))
    });
    wait_for("a waiting thread", WAIT, || async {
        (channel.metrics().waiting_threads == 1).then_some(())
    })
    .await;
    core.shutdown().await.unwrap();
    assert!(
        waiter.join().unwrap().is_none(),
        "a stopped channel hands out nothing"
    );
    assert!(channel.is_stopped());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_next_step_takes_only_a_step_that_is_already_queued() {
    let db = TestDatabase::migrated().await;
    let (core, channel) = start(worker_config(&db, &["try"])).await;
    assert!(channel.try_next_step().is_none(), "nothing queued yet");
    let wf = one_step(&db, "try").await;
    let event = wait_for("the step to be queued", WAIT, || async {
        channel.try_next_step()
    })
    .await;
    assert_eq!(event.context.step_uuid, wf.step("only"));
    assert!(channel.try_next_step().is_none(), "the one step was taken");
    channel.complete(event.event_id, ok(json!({}))).expect("accepted");
    wait_state(&wf, "enqueued_for_orchestration").await;
    core.shutdown().await.unwrap();
    db.drop_database().await;
}
