//! The embedded orchestrator with Rust handlers on real PostgreSQL: whole workflows, joins
//! enqueued exactly once, retries that wait their backoff, permanent failures.

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::{DeploymentMode, TaskerConfig};
use tasker_worker::messaging::{MessageClient, StepFailure, StepMessage, STEP_RESULTS_QUEUE};
use tasker_worker::orchestration::{create_task, register_template, Orchestrator, TaskRequest, TaskTemplate};
use tasker_worker::testing::{task_request, task_state, wait_for, wait_settled, worker_config, TestDatabase};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Step name, from state, to state, sort key, most recent, max attempts, retryable.
type StepTransitionRow = (String, Option<String>, String, i32, bool, i32, bool);

const DIAMOND: &str = r#"
name: diamond
namespace_name: NS
version: 1.0.0
steps:
  - { name: start, handler: { callable: Square } }
  - { name: left, handler: { callable: Square }, dependencies: [start] }
  - { name: right, handler: { callable: Square }, dependencies: [start] }
  - { name: join, handler: { callable: Sum }, dependencies: [left, right] }
"#;

/// Square: squares the task's `n` (or its only parent's result); Sum: adds its parents'.
fn math_registry() -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Square",
        handler_fn(|ctx: StepContext| async move {
            let input = ctx
                .dependency_results
                .values()
                .next()
                .map(|r| r["result"].as_i64().unwrap())
                .unwrap_or_else(|| ctx.task_context["n"].as_i64().unwrap());
            Ok(StepSuccess::new(json!(input * input)))
        }),
    );
    registry.register(
        "Sum",
        handler_fn(|ctx: StepContext| async move {
            let parents = ctx.step_definition["dependencies"].as_array().unwrap().clone();
            let sum: i64 = parents
                .iter()
                .map(|p| {
                    ctx.dependency_results[p.as_str().unwrap()]["result"]
                        .as_i64()
                        .unwrap()
                })
                .sum();
            Ok(StepSuccess::new(json!(sum)))
        }),
    );
    registry
}

async fn step_row(pool: &sqlx::PgPool, task: Uuid, step: &str) -> (String, Option<serde_json::Value>, i32) {
    sqlx::query_as(
        "SELECT tr.to_state, ws.results, ws.attempts FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
         WHERE ws.task_uuid = $1 AND ns.name = $2",
    )
    .bind(task)
    .bind(step)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn transitions(
    pool: &sqlx::PgPool,
    task: Uuid,
    step: &str,
) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as(
        "SELECT tr.to_state, tr.created_at FROM tasker.workflow_step_transitions tr \
         JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = tr.workflow_step_uuid \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         WHERE ws.task_uuid = $1 AND ns.name = $2 ORDER BY tr.sort_key",
    )
    .bind(task)
    .bind(step)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn setup(
    db: &TestDatabase,
    ns: &str,
    yaml: &str,
    registry: Arc<InMemoryHandlerRegistry>,
) -> (TaskerConfig, WorkerCore, Orchestrator) {
    let template = TaskTemplate::from_yaml(&yaml.replace("NS", ns), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let config = worker_config(db, &[ns]);
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(registry))
        .await
        .unwrap();
    let orchestrator = Orchestrator::start(&config).await.unwrap();
    (config, worker, orchestrator)
}

#[tokio::test]
async fn a_diamond_runs_to_complete_and_its_join_is_enqueued_once() {
    let db = TestDatabase::migrated().await;
    let (_config, worker, mut orchestrator) = setup(&db, "diamond", DIAMOND, math_registry()).await;
    let task = create_task(&db.pool, &task_request("diamond", "diamond", json!({"n": 2})))
        .await
        .unwrap();

    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    // start = 4, left = right = 16, join = 32
    assert_eq!(step_row(&db.pool, task, "join").await.1.unwrap()["result"], 32);
    let join: Vec<String> = transitions(&db.pool, task, "join")
        .await
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        join,
        [
            "pending",
            "enqueued",
            "in_progress",
            "enqueued_for_orchestration",
            "complete"
        ]
    );
    let done: bool = sqlx::query_scalar("SELECT complete FROM tasker.tasks WHERE task_uuid = $1")
        .bind(task)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(done);
    // Counted after the statement commits: it may trail the database by a moment.
    wait_for("the settled task to be counted", WAIT, || async {
        (orchestrator.status().tasks_completed == 1).then_some(())
    })
    .await;
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

/// Result messages that name nothing waiting for orchestration (a second copy of a step's
/// result, a task that does not exist, a message that is not a StepMessage) are archived and
/// change nothing.
#[tokio::test]
async fn stray_and_repeated_result_messages_are_archived_and_change_nothing() {
    let db = TestDatabase::migrated().await;
    let (_config, worker, mut orchestrator) = setup(&db, "stray", DIAMOND, math_registry()).await;
    let task = create_task(&db.pool, &task_request("stray", "diamond", json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    let (join_step, correlation_id): (Uuid, Uuid) = sqlx::query_as(
        "SELECT ws.workflow_step_uuid, t.correlation_id FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid \
         WHERE ws.task_uuid = $1 AND ns.name = 'join'",
    )
    .bind(task)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let before = transitions(&db.pool, task, "join").await;
    let counted = orchestrator.status();
    let client = MessageClient::new(db.pool.clone());
    let repeated = StepMessage {
        task_uuid: task,
        step_uuid: join_step,
        correlation_id,
    };
    let unknown = StepMessage {
        task_uuid: Uuid::now_v7(),
        step_uuid: join_step,
        correlation_id,
    };
    for message in [json!(repeated), json!(unknown), json!({"not": "a step message"})] {
        client
            .send_with_notify(STEP_RESULTS_QUEUE, &message, 0)
            .await
            .unwrap();
    }

    wait_for("the three messages to be archived", WAIT, || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_orchestration_step_results")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let status = orchestrator.status();
    assert_eq!(status.duplicates, counted.duplicates + 2, "{status:?}");
    assert_eq!(status.steps_completed, counted.steps_completed, "{status:?}");
    assert_eq!(status.tasks_completed, counted.tasks_completed, "{status:?}");
    assert_eq!(status.processing_errors, 0, "{status:?}");
    assert_eq!(transitions(&db.pool, task, "join").await, before);
    assert_eq!(task_state(&db.pool, task).await, "complete");
    let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.a_orchestration_step_results")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        archived,
        4 + 3,
        "four results of the diamond, then the three strays"
    );
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

/// With LISTEN only (no poll), every result reaches the orchestrator as a notification that
/// carries it, and is processed from there without a read of the queue.
#[tokio::test]
async fn results_are_processed_straight_from_their_notifications() {
    let db = TestDatabase::migrated().await;
    let template = TaskTemplate::from_yaml(&DIAMOND.replace("NS", "direct"), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let mut config = worker_config(&db, &["direct"]);
    config.worker.deployment_mode = DeploymentMode::EventDriven;
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(math_registry()))
        .await
        .unwrap();
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let task = create_task(&db.pool, &task_request("direct", "diamond", json!({"n": 2})))
        .await
        .unwrap();

    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    assert_eq!(step_row(&db.pool, task, "join").await.1.unwrap()["result"], 32);
    let status = orchestrator.status();
    assert_eq!(status.results_processed, 4, "{status:?}");
    assert_eq!(status.results_from_notifications, 4, "{status:?}");
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

#[tokio::test]
async fn two_orchestrators_and_two_workers_finish_every_task_enqueuing_each_join_once() {
    let db = TestDatabase::migrated().await;
    let (config, worker_a, mut orch_a) = setup(&db, "pair", DIAMOND, math_registry()).await;
    let worker_b = WorkerCore::start(config.clone(), DispatchMode::Rust(math_registry()))
        .await
        .unwrap();
    let mut orch_b = Orchestrator::start(&config).await.unwrap();
    let mut tasks = Vec::new();
    for n in 1..=15i64 {
        tasks.push((
            n,
            create_task(&db.pool, &task_request("pair", "diamond", json!({"n": n})))
                .await
                .unwrap(),
        ));
    }
    for (n, task) in &tasks {
        assert_eq!(wait_settled(&db.pool, *task, WAIT).await, "complete");
        assert_eq!(
            step_row(&db.pool, *task, "join").await.1.unwrap()["result"],
            json!(2 * (*n).pow(4))
        );
        let enqueued = transitions(&db.pool, *task, "join")
            .await
            .iter()
            .filter(|t| t.0 == "enqueued")
            .count();
        assert_eq!(enqueued, 1);
    }
    // Each orchestrator counts a settled task after its statement commits, so the last
    // count may trail the database by a moment.
    let completed = wait_for("both orchestrators to count 15 settled tasks", WAIT, || async {
        let n = orch_a.status().tasks_completed + orch_b.status().tasks_completed;
        (n >= 15).then_some(n)
    })
    .await;
    assert_eq!(completed, 15);
    for w in [worker_a, worker_b] {
        w.shutdown().await.unwrap();
    }
    orch_a.shutdown().await;
    orch_b.shutdown().await;
    db.drop_database().await;
}

const FLAKY: &str = r#"
name: flaky
namespace_name: NS
version: 1.0.0
steps:
  - name: first
    handler: { callable: FailOnce }
    retry: { max_attempts: 3, backoff: exponential, backoff_base_ms: 1000, max_backoff_ms: 5000 }
  - { name: second, handler: { callable: Ok }, dependencies: [first] }
"#;

#[tokio::test]
async fn a_retryable_failure_waits_its_backoff_then_succeeds() {
    let db = TestDatabase::migrated().await;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    registry.register(
        "FailOnce",
        handler_fn(move |_ctx| {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err(StepFailure::new("flaky", "try again", true))
                } else {
                    Ok(StepSuccess::new(json!("ok")))
                }
            }
        }),
    );
    registry.register(
        "Ok",
        handler_fn(|_ctx| async { Ok(StepSuccess::new(json!("done"))) }),
    );
    let (_c, worker, mut orchestrator) = setup(&db, "flaky", FLAKY, registry).await;
    let task = create_task(&db.pool, &task_request("flaky", "flaky", json!({})))
        .await
        .unwrap();

    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    let (_, results, attempts) = step_row(&db.pool, task, "first").await;
    assert_eq!((results.unwrap()["result"].clone(), attempts), (json!("ok"), 2));
    let history = transitions(&db.pool, task, "first").await;
    let states: Vec<&str> = history.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        states,
        [
            "pending",
            "enqueued",
            "in_progress",
            "enqueued_as_error_for_orchestration",
            "waiting_for_retry",
            "enqueued",
            "in_progress",
            "enqueued_for_orchestration",
            "complete"
        ]
    );
    let waited = history[6].1 - history[4].1;
    assert!(
        waited >= chrono::Duration::milliseconds(900),
        "the retry ran after {waited:?}, before its 1 s backoff"
    );
    wait_for("the retry to be counted", WAIT, || async {
        (orchestrator.status().steps_retried == 1).then_some(())
    })
    .await;
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

const FAILING: &str = r#"
name: failing
namespace_name: NS
version: 1.0.0
steps:
  - { name: a, handler: { callable: Ok } }
  - name: b
    handler: { callable: Broken }
    dependencies: [a]
    retry: { max_attempts: 2, backoff_base_ms: 0, max_backoff_ms: 0 }
  - { name: c, handler: { callable: Ok }, dependencies: [b] }
"#;

async fn run_failing(permanent: bool) -> (String, (String, Option<serde_json::Value>, i32), String) {
    let db = TestDatabase::migrated().await;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Ok",
        handler_fn(|_ctx| async { Ok(StepSuccess::new(json!("ok"))) }),
    );
    registry.register(
        "Broken",
        handler_fn(move |_ctx| async move { Err(StepFailure::new("broken", "always broken", !permanent)) }),
    );
    let ns = if permanent { "permanent" } else { "exhausted" };
    let (_c, worker, mut orchestrator) = setup(&db, ns, FAILING, registry).await;
    let task = create_task(&db.pool, &task_request(ns, "failing", json!({})))
        .await
        .unwrap();
    let state = wait_settled(&db.pool, task, WAIT).await;
    let b = step_row(&db.pool, task, "b").await;
    let c = step_row(&db.pool, task, "c").await.0;
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
    (state, b, c)
}

#[tokio::test]
async fn a_permanent_failure_blocks_the_task_and_downstream_never_runs() {
    let (task, (b_state, b_results, b_attempts), c_state) = run_failing(true).await;
    assert_eq!(
        (task.as_str(), b_state.as_str(), b_attempts, c_state.as_str()),
        ("blocked_by_failures", "error", 1, "pending")
    );
    assert_eq!(b_results.unwrap()["error"]["message"], "always broken");
}

#[tokio::test]
async fn a_retryable_failure_exhausts_max_attempts_then_errors() {
    let (task, (b_state, _, b_attempts), c_state) = run_failing(false).await;
    assert_eq!(
        (task.as_str(), b_state.as_str(), b_attempts, c_state.as_str()),
        ("blocked_by_failures", "error", 2, "pending")
    );
}

/// What create_task writes, row by row, before any worker runs: the task's two transitions,
/// every step `pending` and the root `enqueued` after it, the edges, and one message (for the
/// root); a repeated idempotency key writes nothing more.
#[tokio::test]
async fn create_task_writes_the_task_steps_edges_and_the_root_message_once() {
    let db = TestDatabase::migrated().await;
    let template = TaskTemplate::from_yaml(&DIAMOND.replace("NS", "rows"), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let keyed = TaskRequest {
        idempotency_key: Some("rows-1".into()),
        ..task_request("rows", "diamond", json!({"n": 3}))
    };
    let task = create_task(&db.pool, &keyed).await.unwrap();
    assert_eq!(create_task(&db.pool, &keyed).await.unwrap(), task);

    let task_states: Vec<(Option<String>, String, i32, bool)> = sqlx::query_as(
        "SELECT from_state::text, to_state::text, sort_key, most_recent FROM tasker.task_transitions \
         WHERE task_uuid = $1 ORDER BY sort_key",
    )
    .bind(task)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        task_states,
        [
            (None, "pending".into(), 1, false),
            (Some("pending".into()), "steps_in_process".into(), 2, true)
        ]
    );
    let step_states: Vec<StepTransitionRow> = sqlx::query_as(
        "SELECT ns.name::text, tr.from_state::text, tr.to_state::text, tr.sort_key, tr.most_recent, \
                ws.max_attempts, ws.retryable \
           FROM tasker.workflow_step_transitions tr \
           JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = tr.workflow_step_uuid \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
          WHERE ws.task_uuid = $1 ORDER BY ns.name, tr.sort_key",
    )
    .bind(task)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let pending =
        |name: &str, current: bool| (name.to_string(), None, "pending".to_string(), 1, current, 3, true);
    assert_eq!(
        step_states,
        [
            pending("join", true),
            pending("left", true),
            pending("right", true),
            pending("start", false),
            (
                "start".into(),
                Some("pending".into()),
                "enqueued".into(),
                2,
                true,
                3,
                true
            ),
        ]
    );
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT fs.name::text, ts.name::text FROM tasker.workflow_step_edges e \
           JOIN tasker.workflow_steps f ON f.workflow_step_uuid = e.from_step_uuid \
           JOIN tasker.named_steps fs ON fs.named_step_uuid = f.named_step_uuid \
           JOIN tasker.workflow_steps t ON t.workflow_step_uuid = e.to_step_uuid \
           JOIN tasker.named_steps ts ON ts.named_step_uuid = t.named_step_uuid \
          WHERE f.task_uuid = $1 ORDER BY 1, 2",
    )
    .bind(task)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let edge = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        edges,
        [
            edge("left", "join"),
            edge("right", "join"),
            edge("start", "left"),
            edge("start", "right")
        ]
    );
    let messages: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT message FROM pgmq.q_worker_rows_queue ORDER BY msg_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let (start, correlation_id): (Uuid, Uuid) = sqlx::query_as(
        "SELECT ws.workflow_step_uuid, t.correlation_id FROM tasker.workflow_steps ws \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
           JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid \
          WHERE ws.task_uuid = $1 AND ns.name = 'start'",
    )
    .bind(task)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        messages,
        [json!({"task_uuid": task, "step_uuid": start, "correlation_id": correlation_id})]
    );
    db.drop_database().await;
}

#[tokio::test]
async fn create_task_is_idempotent_by_key_and_rejects_unknown_templates() {
    let db = TestDatabase::migrated().await;
    let template = TaskTemplate::from_yaml(&DIAMOND.replace("NS", "idem"), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let keyed = TaskRequest {
        idempotency_key: Some("order-42".into()),
        ..task_request("idem", "diamond", json!({"n": 1}))
    };
    let first = create_task(&db.pool, &keyed).await.unwrap();
    assert_eq!(create_task(&db.pool, &keyed).await.unwrap(), first);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasker.tasks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let err = create_task(&db.pool, &task_request("idem", "nope", json!({})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("idem/nope@1.0.0"), "{err}");
    db.drop_database().await;
}
