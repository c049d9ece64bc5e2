//! The worker core end to end on real PostgreSQL with Rust handlers: claim → dispatch →
//! complete, every failure kind, and the crash-safety guarantees.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::{DeploymentMode, TaskerConfig};
use tasker_worker::messaging::{MessageClient, StepFailure, StepMessage};
use tasker_worker::testing::{
    break_step_results_queue, repair_step_results_queue, template, wait_for, worker_config, TestDatabase,
    TestWorkflow,
};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

async fn start(config: TaskerConfig, registry: Arc<InMemoryHandlerRegistry>) -> WorkerCore {
    WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .expect("worker starts")
}

async fn wait_listening(core: &WorkerCore) {
    wait_for("the LISTEN connection", WAIT, || async {
        core.status_now().listener_connected.then_some(())
    })
    .await;
}

fn echo_registry() -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Double",
        handler_fn(|ctx: StepContext| async move {
            let n = ctx.task_context["n"].as_i64().unwrap_or(0);
            Ok(StepSuccess::new(
                json!({ "doubled": n * 2, "attempt": ctx.attempts }),
            ))
        }),
    );
    registry
}

/// A task whose template has one step, `step`, run by `callable`.
async fn one_step(
    db: &TestDatabase,
    ns: &str,
    task: &str,
    step: &str,
    callable: &str,
    context: Value,
) -> TestWorkflow {
    TestWorkflow::create(&db.pool, ns, template(task, &[(step, callable, &[])]), context).await
}

async fn wait_state(wf: &TestWorkflow, step: &str, state: &str) {
    wait_for(&format!("step {step} to reach {state}"), WAIT, || async {
        (wf.state(step).await == state).then_some(())
    })
    .await
}

async fn queue_len(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.{table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn orchestration_messages(pool: &sqlx::PgPool) -> Vec<StepMessage> {
    let rows: Vec<Value> =
        sqlx::query_scalar("SELECT message FROM pgmq.q_orchestration_step_results ORDER BY msg_id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

#[tokio::test]
async fn one_step_is_claimed_run_and_committed_with_its_orchestration_message() {
    let db = TestDatabase::migrated().await;
    let core = start(worker_config(&db, &["math"]), echo_registry()).await;
    let wf = one_step(&db, "math", "double", "double", "Double", json!({"n": 21})).await;
    let msg_id = wf.enqueue("double").await;

    wait_state(&wf, "double", "enqueued_for_orchestration").await;
    let results = wf.results("double").await.expect("results written");
    assert_eq!(results["success"], true);
    assert_eq!(results["status"], "completed");
    assert_eq!(results["result"], json!({"doubled": 42, "attempt": 1}));
    assert_eq!(results["step_uuid"], wf.step("double").to_string());
    assert_eq!(results["metadata"]["worker_id"], core.worker_id());
    assert!(results["error"].is_null());
    assert_eq!(wf.attempts("double").await, 1);

    let states: Vec<String> = wf
        .transitions("double")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        states,
        ["pending", "enqueued", "in_progress", "enqueued_for_orchestration"]
    );
    assert_eq!(orchestration_messages(&db.pool).await, vec![wf.message("double")]);
    assert_eq!(queue_len(&db.pool, "q_worker_math_queue").await, 0);
    let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.a_worker_math_queue WHERE msg_id = $1")
        .bind(msg_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(archived, 1, "the worker message is archived with the result");

    // The commit is visible before the completion processor counts it.
    let status = wait_for("the result to be counted", Duration::from_secs(10), || async {
        let status = core.status().await.unwrap();
        (status.counters.succeeded >= 1).then_some(status)
    })
    .await;
    assert_eq!(
        (
            status.counters.claimed,
            status.counters.succeeded,
            status.in_flight
        ),
        (1, 1, 0)
    );
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_batch_of_steps_all_commit_exactly_once() {
    let db = TestDatabase::migrated().await;
    let core = start(worker_config(&db, &["math"]), echo_registry()).await;
    let mut workflows = Vec::new();
    for n in 0..40 {
        let wf = one_step(&db, "math", "double", "double", "Double", json!({"n": n})).await;
        wf.enqueue("double").await;
        workflows.push(wf);
    }
    wait_for("40 results", WAIT, || async {
        (core.status().await.unwrap().counters.succeeded == 40).then_some(())
    })
    .await;
    for (n, wf) in workflows.iter().enumerate() {
        assert_eq!(
            wf.results("double").await.unwrap()["result"]["doubled"],
            json!(n as i64 * 2)
        );
    }
    assert_eq!(orchestration_messages(&db.pool).await.len(), 40);
    let status = core.status().await.unwrap();
    assert!(status.counters.commit_batches <= 40, "{:?}", status.counters);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn each_failure_kind_becomes_the_right_failure_result() {
    let db = TestDatabase::migrated().await;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Fails",
        handler_fn(|_ctx| async move {
            Err(StepFailure {
                retry_after_seconds: Some(7),
                ..StepFailure::new("", "gateway busy", true)
            })
        }),
    );
    registry.register(
        "Declines",
        handler_fn(|_ctx| async move { Err(StepFailure::new("card_declined", "card declined", false)) }),
    );
    registry.register(
        "Panics",
        handler_fn(|_ctx| async move { panic!("index out of range") }),
    );
    registry.register(
        "Sleeps",
        handler_fn(|_ctx| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(StepSuccess::default())
        }),
    );
    let mut config = worker_config(&db, &["errors"]);
    config.worker.mpsc_channels.handler_dispatch.handler_timeout_ms = 200;
    let core = start(config, registry).await;
    let wf = TestWorkflow::create(
        &db.pool,
        "errors",
        template(
            "failures",
            &[
                ("fails", "Fails", &[]),
                ("declines", "Declines", &[]),
                ("panics", "Panics", &[]),
                ("sleeps", "Sleeps", &[]),
                ("unknown", "NoSuchHandler", &[]),
            ],
        ),
        json!({}),
    )
    .await;
    for step in ["fails", "declines", "panics", "sleeps", "unknown"] {
        wf.enqueue(step).await;
    }
    let expect = [
        ("fails", "handler_error", true, "gateway busy"),
        ("declines", "card_declined", false, "card declined"),
        ("panics", "handler_panic", false, "panicked: index out of range"),
        ("sleeps", "handler_timeout", true, "did not finish within 200 ms"),
        ("unknown", "handler_not_found", false, "NoSuchHandler"),
    ];
    for (step, error_type, retryable, message) in expect {
        wait_state(&wf, step, "enqueued_as_error_for_orchestration").await;
        let r = wf.results(step).await.unwrap();
        assert_eq!(r["success"], false, "{step}");
        assert_eq!(r["error"]["error_type"], error_type, "{step}: {r}");
        assert_eq!(r["error"]["retryable"], retryable, "{step}");
        assert_eq!(r["metadata"]["retryable"], retryable, "{step}");
        assert_eq!(r["status"], if retryable { "failed" } else { "error" }, "{step}");
        let text = r["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{step}: {text}");
    }
    let fails = wf.results("fails").await.unwrap();
    assert_eq!(
        fails["orchestration_metadata"]["backoff_hint"]["delay_seconds"],
        7
    );
    assert_eq!(core.status().await.unwrap().counters.failed, 5);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn handlers_get_the_task_context_handler_config_and_all_ancestor_results() {
    let db = TestDatabase::migrated().await;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Record",
        handler_fn(|ctx: StepContext| async move {
            Ok(StepSuccess::new(json!({
                "step": ctx.step_name,
                "deps": ctx.dependency_results.keys().cloned().collect::<Vec<_>>(),
                "from_a": ctx.dependency_results.get("a").map(|r| r["result"]["step"].clone()),
                "order": ctx.task_context["order"],
                "namespace": ctx.namespace,
                "max_attempts": ctx.max_attempts,
            })))
        }),
    );
    let core = start(worker_config(&db, &["chain"]), registry).await;
    let wf = TestWorkflow::create(
        &db.pool,
        "chain",
        template(
            "chain",
            &[
                ("a", "Record", &[]),
                ("b", "Record", &["a"]),
                ("c", "Record", &["b"]),
            ],
        ),
        json!({"order": 7}),
    )
    .await;
    for step in ["a", "b", "c"] {
        wf.enqueue(step).await;
        wait_state(&wf, step, "enqueued_for_orchestration").await;
    }
    let c = wf.results("c").await.unwrap();
    let mut deps: Vec<String> = serde_json::from_value(c["result"]["deps"].clone()).unwrap();
    deps.sort();
    assert_eq!(deps, ["a", "b"], "all ancestors, not only the parent");
    assert_eq!(c["result"]["from_a"], "a");
    assert_eq!(c["result"]["order"], 7);
    assert_eq!(c["result"]["namespace"], "chain");
    assert_eq!(c["result"]["max_attempts"], 3);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn two_workers_racing_on_duplicate_messages_commit_one_result_per_step() {
    let db = TestDatabase::migrated().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = || {
        let registry = Arc::new(InMemoryHandlerRegistry::new());
        let runs = runs.clone();
        registry.register(
            "Count",
            handler_fn(move |_ctx| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(StepSuccess::new(json!("ok")))
                }
            }),
        );
        registry
    };
    let a = start(worker_config(&db, &["race"]), registry()).await;
    let b = start(worker_config(&db, &["race"]), registry()).await;
    let mut workflows = Vec::new();
    for _ in 0..20 {
        let wf = one_step(&db, "race", "one", "only", "Count", json!({})).await;
        wf.enqueue("only").await;
        wf.send("only").await;
        wf.send("only").await;
        workflows.push(wf);
    }
    for wf in &workflows {
        wait_state(wf, "only", "enqueued_for_orchestration").await;
    }
    wait_for("all messages handled", WAIT, || async {
        (queue_len(&db.pool, "q_worker_race_queue").await == 0).then_some(())
    })
    .await;
    for wf in &workflows {
        let done = wf
            .transitions("only")
            .await
            .iter()
            .filter(|(s, _)| s == "enqueued_for_orchestration")
            .count();
        assert_eq!(done, 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 20, "each step ran once");
    assert_eq!(orchestration_messages(&db.pool).await.len(), 20);
    // Commits are visible before their completion processors count them.
    let (sa, sb) = wait_for("every result to be counted", WAIT, || async {
        let (sa, sb) = (
            a.status().await.unwrap().counters,
            b.status().await.unwrap().counters,
        );
        (sa.succeeded + sb.succeeded >= 20).then_some((sa, sb))
    })
    .await;
    assert_eq!(sa.succeeded + sb.succeeded, 20);
    assert_eq!(sa.duplicates + sb.duplicates, 40, "{sa:?} {sb:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    db.drop_database().await;
}

fn blocking_registry(gate: Arc<Notify>, label: &'static str) -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Gate",
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok(StepSuccess::new(json!({ "by": label })))
            }
        }),
    );
    registry
}

fn quick_registry(label: &'static str) -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Gate",
        handler_fn(move |_ctx| async move { Ok(StepSuccess::new(json!({ "by": label }))) }),
    );
    registry
}

#[tokio::test]
async fn a_worker_that_dies_mid_handler_loses_nothing_another_reclaims_after_the_lease() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["crash"]);
    config.worker.visibility_timeout_seconds = 1;
    let dying = start(
        config.clone(),
        blocking_registry(Arc::new(Notify::new()), "dying"),
    )
    .await;
    let wf = one_step(&db, "crash", "one", "only", "Gate", json!({})).await;
    wf.enqueue("only").await;
    wait_state(&wf, "only", "in_progress").await;
    drop(dying); // no shutdown: tasks aborted, leases not released

    let survivor = start(config, quick_registry("survivor")).await;
    wait_state(&wf, "only", "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "survivor");
    assert_eq!(wf.attempts("only").await, 2, "the lost attempt counts");
    let transitions = wf.transitions("only").await;
    let states: Vec<&str> = transitions.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        states,
        [
            "pending",
            "enqueued",
            "in_progress",
            "in_progress",
            "enqueued_for_orchestration"
        ]
    );
    assert_eq!(transitions[3].1["event"], "reclaim");
    assert!(transitions[3].1["reclaimed_from"].is_string());
    assert_eq!(survivor.status().await.unwrap().counters.reclaimed, 1);
    survivor.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_late_completion_after_a_reclaim_is_discarded_and_archives_nothing() {
    let db = TestDatabase::migrated().await;
    let config = worker_config(&db, &["late"]);
    let gate = Arc::new(Notify::new());
    let slow = start(config.clone(), blocking_registry(gate.clone(), "slow")).await;
    let wf = one_step(&db, "late", "one", "only", "Gate", json!({})).await;
    wf.enqueue("only").await;
    wait_state(&wf, "only", "in_progress").await;

    // The slow worker stalls past its lease (as in a long GC pause or a network partition).
    // A stalled worker reads nothing either: quiet it and wait for a read already under way,
    // or its own 100 ms poll may re-read the message first and reclaim the step for itself
    // (seen under a loaded test run).
    slow.quiet_settled().await;
    sqlx::query("UPDATE pgmq.q_worker_late_queue SET vt = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let other = start(config, quick_registry("other")).await;
    wait_state(&wf, "only", "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "other");

    gate.notify_one();
    wait_for("the stale completion", WAIT, || async {
        (slow.status().await.unwrap().counters.stale_completions == 1).then_some(())
    })
    .await;
    assert_eq!(
        wf.results("only").await.unwrap()["result"]["by"],
        "other",
        "the late result must not overwrite"
    );
    assert_eq!(orchestration_messages(&db.pool).await.len(), 1);
    let slow_status = slow.status().await.unwrap();
    assert_eq!((slow_status.counters.succeeded, slow_status.in_flight), (0, 0));
    slow.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_handler_running_longer_than_the_lease_keeps_it() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["long"]);
    config.worker.visibility_timeout_seconds = 1;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Long",
        handler_fn(|_ctx| async move {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            Ok(StepSuccess::new(json!("long")))
        }),
    );
    let long = start(config.clone(), registry).await;
    let wf = one_step(&db, "long", "one", "only", "Long", json!({})).await;
    wf.enqueue("only").await;
    wait_state(&wf, "only", "in_progress").await;
    let intruder_runs = Arc::new(AtomicUsize::new(0));
    let intruder_registry = Arc::new(InMemoryHandlerRegistry::new());
    let counter = intruder_runs.clone();
    intruder_registry.register(
        "Long",
        handler_fn(move |_ctx| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(StepSuccess::new(json!("intruder"))) }
        }),
    );
    let intruder = start(config, intruder_registry).await;
    wait_state(&wf, "only", "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"], "long");
    assert_eq!(
        intruder_runs.load(Ordering::SeqCst),
        0,
        "the lease lapsed while its handler ran"
    );
    assert!(long.status().await.unwrap().counters.leases_renewed >= 2);
    assert_eq!(wf.attempts("only").await, 1);
    long.shutdown().await.unwrap();
    intruder.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn malformed_and_unhydratable_messages_are_dead_lettered_and_the_worker_keeps_running() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["poison"]);
    config.worker.visibility_timeout_seconds = 1;
    config.worker.max_delivery_attempts = 2;
    let core = start(config, echo_registry()).await;
    let client = MessageClient::new(db.pool.clone());
    let garbage = client
        .send_with_notify("worker_poison_queue", &json!({"hello": "world"}), 0)
        .await
        .unwrap();
    let ghost = StepMessage {
        task_uuid: uuid::Uuid::now_v7(),
        step_uuid: uuid::Uuid::now_v7(),
        correlation_id: uuid::Uuid::now_v7(),
    };
    let missing = client
        .send_with_notify("worker_poison_queue", &ghost, 0)
        .await
        .unwrap();
    let wf = one_step(&db, "poison", "double", "double", "Double", json!({"n": 1})).await;
    wf.enqueue("double").await;
    wait_state(&wf, "double", "enqueued_for_orchestration").await;

    let letters: Vec<(i64, i32, String)> = wait_for("two dead letters", WAIT, || async {
        let rows: Vec<(i64, i32, String)> =
            sqlx::query_as("SELECT msg_id, read_ct, reason FROM tasker.dead_letters ORDER BY msg_id")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(letters[0].0, garbage);
    assert_eq!(
        letters[0].1, 1,
        "an unparseable message is dead-lettered on its first read"
    );
    assert!(letters[0].2.contains("unparseable"), "{}", letters[0].2);
    assert_eq!(letters[1].0, missing);
    assert_eq!(
        letters[1].1, 3,
        "dead-lettered after more than max_delivery_attempts reads"
    );
    assert!(letters[1].2.contains("does not exist"), "{}", letters[1].2);
    assert_eq!(queue_len(&db.pool, "q_worker_poison_queue").await, 0);
    let status = core.status().await.unwrap();
    assert_eq!(status.counters.dead_lettered, 2);
    assert!(status.running);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_step_message_with_uuids_in_other_forms_is_still_claimed_and_run() {
    // The claim call reads canonical uuid strings itself; other forms that the message's
    // parser accepts (32 hex digits, braces) take the slow way and run all the same.
    let db = TestDatabase::migrated().await;
    let core = start(worker_config(&db, &["forms"]), echo_registry()).await;
    let wf = one_step(&db, "forms", "double", "double", "Double", json!({"n": 4})).await;
    wf.set_state("double", "enqueued").await;
    let message = wf.message("double");
    let body = json!({
        "task_uuid": message.task_uuid.simple().to_string(),
        "step_uuid": message.step_uuid.simple().to_string(),
        "correlation_id": message.correlation_id.braced().to_string(),
    });
    let client = MessageClient::new(db.pool.clone());
    client.create_queue("worker_forms_queue").await.unwrap();
    client
        .send_with_notify("worker_forms_queue", &body, 0)
        .await
        .unwrap();

    wait_state(&wf, "double", "enqueued_for_orchestration").await;
    let results = wf.results("double").await.expect("results written");
    assert_eq!(results["result"], json!({"doubled": 8, "attempt": 1}));
    let status = core.status().await.unwrap();
    assert_eq!(status.counters.dead_lettered, 0);
    assert_eq!(status.counters.hydration_failures, 0);
    assert_eq!(queue_len(&db.pool, "q_worker_forms_queue").await, 0);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn the_result_and_the_orchestration_message_commit_together_or_not_at_all() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Notify::new());
    let core = start(
        worker_config(&db, &["atomic"]),
        blocking_registry(gate.clone(), "ok"),
    )
    .await;
    let wf = one_step(&db, "atomic", "one", "only", "Gate", json!({})).await;
    wf.enqueue("only").await;
    wait_state(&wf, "only", "in_progress").await;

    // Break the results queue so the send fails after the results are written.
    break_step_results_queue(&db.pool).await;
    gate.notify_one();
    wait_for("a failed commit", WAIT, || async {
        (core.status().await.unwrap().counters.commit_failures >= 1).then_some(())
    })
    .await;
    assert_eq!(wf.state("only").await, "in_progress");
    assert_eq!(
        wf.results("only").await,
        None,
        "results must roll back with the failed send"
    );
    assert_eq!(
        queue_len(&db.pool, "q_worker_atomic_queue").await,
        1,
        "the message must not be archived"
    );

    repair_step_results_queue(&db.pool).await;
    wait_state(&wf, "only", "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "ok");
    assert_eq!(orchestration_messages(&db.pool).await, vec![wf.message("only")]);
    assert_eq!(queue_len(&db.pool, "q_worker_atomic_queue").await, 0);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn notify_wakes_an_event_driven_worker_which_never_polls() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["wake"]);
    config.worker.deployment_mode = DeploymentMode::EventDriven;
    let core = start(config, echo_registry()).await;
    // The LISTEN connection is up (its start triggers one read of its own).
    wait_listening(&core).await;
    let wf = one_step(&db, "wake", "double", "double", "Double", json!({"n": 2})).await;
    wf.enqueue("double").await;
    wait_state(&wf, "double", "enqueued_for_orchestration").await;
    let counters = core.status().await.unwrap().counters;
    assert!(counters.notifications >= 1, "{counters:?}");
    assert_eq!(counters.polls, 0, "event_driven mode must not poll");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

/// A wake-up for one message costs one read: the read that returned fewer messages than it
/// asked for shows the queue drained, so no second, empty read follows it.
#[tokio::test]
async fn a_notified_message_costs_one_read_and_no_empty_one() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["oneread"]);
    config.worker.deployment_mode = DeploymentMode::EventDriven;
    let core = start(config, echo_registry()).await;
    wait_listening(&core).await;
    // The read its connection triggers has been made.
    wait_for("the first read", WAIT, || async {
        (core.status_now().counters.empty_reads >= 1).then_some(())
    })
    .await;
    let before = core.status().await.unwrap().counters;
    for n in 0..3 {
        let wf = one_step(
            &db,
            "oneread",
            &format!("double{n}"),
            "double",
            "Double",
            json!({"n": n}),
        )
        .await;
        wf.enqueue("double").await;
        wait_state(&wf, "double", "enqueued_for_orchestration").await;
    }
    let after = core.status().await.unwrap().counters;
    assert_eq!(after.read_batches - before.read_batches, 3, "{after:?}");
    assert_eq!(after.empty_reads - before.empty_reads, 0, "{after:?}");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_polling_worker_finds_steps_without_notify() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["poll"]);
    config.worker.deployment_mode = DeploymentMode::Polling;
    let core = start(config, echo_registry()).await;
    let wf = one_step(&db, "poll", "double", "double", "Double", json!({"n": 2})).await;
    // Past the start's first look at the queue (which a slow start can run after the
    // enqueue below), so only a poll can find the step.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let polls = core.status().await.unwrap().counters.polls;
        if polls >= 1 {
            break polls;
        }
        assert!(tokio::time::Instant::now() < deadline, "the poller never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wf.enqueue("double").await;
    wait_state(&wf, "double", "enqueued_for_orchestration").await;
    let counters = core.status().await.unwrap().counters;
    assert_eq!(counters.notifications, 0);
    let after = counters.polls;
    assert!(after > before, "found by a poll: {before} -> {after}");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn handlers_never_exceed_max_concurrent_handlers_and_prefetch_bounds_the_claims() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["cap"]);
    config
        .worker
        .mpsc_channels
        .handler_dispatch
        .max_concurrent_handlers = 2;
    config.worker.prefetch = Some(1);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let (r, p, o) = (running.clone(), peak.clone(), open.clone());
    registry.register(
        "Busy",
        handler_fn(move |_ctx| {
            let (r, p, o) = (r.clone(), p.clone(), o.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                while !o.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(StepSuccess::default())
            }
        }),
    );
    let core = start(config, registry).await;
    let mut workflows = Vec::new();
    for _ in 0..8 {
        let wf = one_step(&db, "cap", "busy", "busy", "Busy", json!({})).await;
        wf.enqueue("busy").await;
        workflows.push(wf);
    }
    let claimed = || async {
        let mut n = 0;
        for wf in &workflows {
            if wf.state("busy").await == "in_progress" {
                n += 1;
            }
        }
        n
    };
    wait_for("two handlers running", WAIT, || async {
        (running.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    wait_for("three steps claimed", WAIT, || async {
        (claimed().await == 3).then_some(())
    })
    .await;
    // Held there while the handlers are busy: 2 running + 1 prefetched, the rest unread.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(claimed().await, 3, "two handlers plus a prefetch of one");
    assert_eq!(running.load(Ordering::SeqCst), 2);
    assert_eq!(queue_len(&db.pool, "q_worker_cap_queue").await, 8);

    open.store(true, Ordering::SeqCst);
    for wf in &workflows {
        wait_state(wf, "busy", "enqueued_for_orchestration").await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2, "two handler slots, and both used");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn only_the_configured_namespaces_are_served() {
    let db = TestDatabase::migrated().await;
    let core = start(worker_config(&db, &["mine"]), echo_registry()).await;
    let theirs = one_step(&db, "theirs", "double", "double", "Double", json!({"n": 1})).await;
    theirs.enqueue("double").await;
    let mine = one_step(&db, "mine", "double", "double", "Double", json!({"n": 1})).await;
    mine.enqueue("double").await;
    wait_state(&mine, "double", "enqueued_for_orchestration").await;
    assert_eq!(theirs.state("double").await, "enqueued");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn graceful_shutdown_releases_unfinished_steps_at_once() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["stop"]);
    config.worker.shutdown_timeout_ms = 200;
    let core = start(config, blocking_registry(Arc::new(Notify::new()), "never")).await;
    let wf = one_step(&db, "stop", "one", "only", "Gate", json!({})).await;
    let msg_id = wf.enqueue("only").await;
    wait_state(&wf, "only", "in_progress").await;
    let report = core.shutdown().await.unwrap();
    assert_eq!((report.finished, report.released), (0, 1));
    // Visible again immediately, not after the 30 s lease.
    let visible = MessageClient::new(db.pool.clone())
        .read("worker_stop_queue", 30, 10)
        .await
        .unwrap();
    assert_eq!(visible.iter().map(|m| m.msg_id).collect::<Vec<_>>(), vec![msg_id]);
    db.drop_database().await;
}

#[tokio::test]
async fn a_worker_refuses_to_start_on_a_database_without_the_schema() {
    let db = TestDatabase::empty().await;
    let err = WorkerCore::start(worker_config(&db, &["x"]), DispatchMode::Rust(echo_registry()))
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("migrate"), "{err}");
    db.drop_database().await;
}

#[tokio::test]
async fn each_committed_result_notifies_the_orchestration_channel_as_pgmq_send_with_notify_does() {
    let db = TestDatabase::migrated().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("pgmq_message_ready.orchestration").await.unwrap();
    let client = MessageClient::new(db.pool.clone());

    // The reference: what tasker.pgmq_send_with_notify sends for one message.
    client.create_queue("orchestration_probe").await.unwrap();
    client
        .send_with_notify("orchestration_probe", &json!({"probe": true}), 0)
        .await
        .unwrap();
    let reference: Value = serde_json::from_str(listener.recv().await.unwrap().payload()).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();

    let core = start(worker_config(&db, &["note"]), echo_registry()).await;
    let mut workflows = Vec::new();
    for n in 0..5 {
        let wf = one_step(&db, "note", "double", "double", "Double", json!({"n": n})).await;
        wf.enqueue("double").await;
        workflows.push(wf);
    }
    let mut notified = Vec::new();
    while notified.len() < 5 {
        let next = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("a notification for each result")
            .unwrap();
        notified.push(serde_json::from_str::<Value>(next.payload()).unwrap());
    }
    core.shutdown().await.unwrap();

    let rows: Vec<(i64, Value)> =
        sqlx::query_as("SELECT msg_id, message FROM pgmq.q_orchestration_step_results ORDER BY msg_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 5);
    for payload in &notified {
        assert_eq!(keys(payload), keys(&reference), "{payload}");
        assert_eq!(payload["event_type"], "message_with_payload");
        assert_eq!(payload["queue_name"], "orchestration_step_results");
        assert_eq!(payload["namespace"], "orchestration");
        assert_eq!(payload["delay_seconds"], 0);
        let row = rows
            .iter()
            .find(|(id, _)| payload["msg_id"] == *id)
            .unwrap_or_else(|| panic!("no queued message for {payload}"));
        assert_eq!(payload["message"], row.1);
    }
    let mut ids: Vec<i64> = notified.iter().map(|p| p["msg_id"].as_i64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "one notification per message");
    let expected: Vec<Value> = workflows.iter().map(|wf| json!(wf.message("double"))).collect();
    for message in expected {
        assert!(rows.iter().any(|(_, m)| *m == message), "{message} was sent");
    }
    db.drop_database().await;
}

/// A registry whose `Sleep` handler takes `millis`.
fn sleeping_registry(millis: u64) -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Sleep",
        handler_fn(move |_ctx| async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok(StepSuccess::default())
        }),
    );
    registry
}

/// Runs `steps` one-step tasks of `Sleep` through a worker of 2 handlers and the adaptive
/// prefetch (floor 2 + 2, ceiling 2 + 6); returns the capacities status showed meanwhile.
async fn capacities_over_a_drain(db: &TestDatabase, ns: &str, steps: usize, millis: u64) -> Vec<usize> {
    let mut config = worker_config(db, &[ns]);
    config
        .worker
        .mpsc_channels
        .handler_dispatch
        .max_concurrent_handlers = 2;
    assert_eq!(config.worker.prefetch, None, "the default prefetch adapts");
    let mut workflows = Vec::new();
    for _ in 0..steps {
        let wf = one_step(db, ns, "sleep", "sleep", "Sleep", json!({})).await;
        wf.enqueue("sleep").await;
        workflows.push(wf);
    }
    let core = start(config, sleeping_registry(millis)).await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue_len(&db.pool, &format!("q_worker_{ns}_queue")).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the drain did not finish");
        seen.push(core.status_now().capacity);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for wf in &workflows {
        wait_state(wf, "sleep", "enqueued_for_orchestration").await;
    }
    core.shutdown().await.unwrap();
    seen
}

#[tokio::test]
async fn the_adaptive_prefetch_grows_while_claimed_steps_start_quickly() {
    let db = TestDatabase::migrated().await;
    let seen = capacities_over_a_drain(&db, "quick", 300, 4).await;
    assert_eq!(seen.first(), Some(&4), "it starts at the floor: {seen:?}");
    assert!(seen.iter().all(|c| (4..=8).contains(c)), "{seen:?}");
    assert!(seen.iter().any(|c| *c > 4), "it never grew: {seen:?}");
    db.drop_database().await;
}

#[tokio::test]
async fn the_adaptive_prefetch_stays_at_its_floor_while_claimed_steps_wait() {
    let db = TestDatabase::migrated().await;
    // Each prefetched step waits a whole handler run (150 ms) for a free handler.
    let seen = capacities_over_a_drain(&db, "slow", 12, 150).await;
    assert!(seen.len() > 20, "the drain took under 0.4 s: {seen:?}");
    assert!(seen.iter().all(|c| *c == 4), "{seen:?}");
    db.drop_database().await;
}

#[tokio::test]
async fn the_adaptive_prefetch_stays_at_its_floor_while_the_worker_keeps_up() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["steady"]);
    config
        .worker
        .mpsc_channels
        .handler_dispatch
        .max_concurrent_handlers = 2;
    let core = start(config, sleeping_registry(4)).await;
    wait_listening(&core).await;
    let mut seen = Vec::new();
    // One quick step every 60 ms: each starts at once, but no read ever comes back full.
    for _ in 0..15 {
        let wf = one_step(&db, "steady", "sleep", "sleep", "Sleep", json!({})).await;
        wf.enqueue("sleep").await;
        wait_state(&wf, "sleep", "enqueued_for_orchestration").await;
        seen.push(core.status_now().capacity);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(seen.iter().all(|c| *c == 4), "{seen:?}");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}
