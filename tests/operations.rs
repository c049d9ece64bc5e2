//! The operator's levers (src/operations.rs, sql/functions/operations.sql) on real
//! PostgreSQL, against a running worker and orchestrator: cancel, retry (a step, a task),
//! resolve manually, replay a dead letter, each refused where the state machine says no and
//! raced from two pools at once; and the workers' heartbeats (registered, stopped, gone,
//! pruned).

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::database::{self, PoolSettings};
use tasker_worker::messaging::{StepFailure, StepMessage};
use tasker_worker::operations::{self, TaskFilter};
use tasker_worker::orchestration::{create_task, register_template, Orchestrator, TaskRequest, TaskTemplate};
use tasker_worker::testing::{task_state, wait_for, worker_config, TestDatabase};
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore};
use tasker_worker::TaskerError;
use tokio::sync::Semaphore;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

const CHAIN: &str = r#"
name: chain
namespace_name: NS
version: 1.0.0
steps:
  - { name: first, handler: { callable: First }, retry: { max_attempts: 1 } }
  - { name: second, handler: { callable: Second }, dependencies: [first] }
"#;

/// Handlers of CHAIN: `First` waits for a permit of `gate` (when one is given) and fails
/// permanently while `fail_first` is above zero (counting down); `Second` counts its runs.
struct Handlers {
    gate: Option<Arc<Semaphore>>,
    fail_first: Arc<AtomicUsize>,
    first_runs: Arc<AtomicUsize>,
    second_runs: Arc<AtomicUsize>,
}

impl Handlers {
    fn new(gate: Option<Arc<Semaphore>>, fail_first: usize) -> Self {
        Self {
            gate,
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            first_runs: Arc::new(AtomicUsize::new(0)),
            second_runs: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn registry(&self) -> Arc<InMemoryHandlerRegistry> {
        let registry = Arc::new(InMemoryHandlerRegistry::new());
        let (gate, fail, runs) = (
            self.gate.clone(),
            self.fail_first.clone(),
            self.first_runs.clone(),
        );
        registry.register(
            "First",
            handler_fn(move |_ctx| {
                let (gate, fail, runs) = (gate.clone(), fail.clone(), runs.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if let Some(gate) = gate {
                        gate.acquire().await.unwrap().forget();
                    }
                    let failing = fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        Err(StepFailure::new("broken", "first is broken", false))
                    } else {
                        Ok(StepSuccess::new(json!(1)))
                    }
                }
            }),
        );
        let runs = self.second_runs.clone();
        registry.register(
            "Second",
            handler_fn(move |ctx| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(StepSuccess::new(
                        json!({"first": ctx.dependency_results["first"]["result"]}),
                    ))
                }
            }),
        );
        registry
    }
}

struct Running {
    worker: WorkerCore,
    orchestrator: Orchestrator,
    config: TaskerConfig,
}

impl Running {
    async fn stop(mut self) {
        self.orchestrator.shutdown().await;
        self.worker.shutdown().await.unwrap();
    }
}

async fn start(db: &TestDatabase, ns: &str, handlers: &Handlers) -> Running {
    let template = TaskTemplate::from_yaml(&CHAIN.replace("NS", ns), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let config = worker_config(db, &[ns]);
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(handlers.registry()))
        .await
        .unwrap();
    let orchestrator = Orchestrator::start(&config).await.unwrap();
    Running {
        worker,
        orchestrator,
        config,
    }
}

async fn new_task(db: &TestDatabase, ns: &str) -> Uuid {
    create_task(
        &db.pool,
        &TaskRequest {
            namespace: ns.into(),
            name: "chain".into(),
            version: "1.0.0".into(),
            context: json!({}),
            idempotency_key: None,
        },
    )
    .await
    .unwrap()
}

/// (state, attempts, step uuid) of the task's step `name`.
async fn step(pool: &sqlx::PgPool, task: Uuid, name: &str) -> (String, i32, Uuid) {
    sqlx::query_as(
        "SELECT tr.to_state, ws.attempts, ws.workflow_step_uuid FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
         WHERE ws.task_uuid = $1 AND ns.name = $2",
    )
    .bind(task)
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_task(pool: &sqlx::PgPool, task: Uuid, want: &str) {
    wait_for(&format!("the task to be {want}"), WAIT, || async {
        (task_state(pool, task).await == want).then_some(())
    })
    .await
}

async fn wait_step(pool: &sqlx::PgPool, task: Uuid, name: &str, want: &str) {
    wait_for(&format!("step {name} to be {want}"), WAIT, || async {
        (step(pool, task, name).await.0 == want).then_some(())
    })
    .await
}

async fn second_pool(db: &TestDatabase) -> sqlx::PgPool {
    database::connect(
        &db.url,
        &PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap()
}

fn refused(err: TaskerError) -> String {
    match err {
        TaskerError::InvalidState(msg) => msg,
        other => panic!("expected InvalidState, got {other:?}"),
    }
}

#[tokio::test]
async fn cancelling_a_running_task_records_the_late_result_and_runs_nothing_more() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Semaphore::new(0));
    let handlers = Handlers::new(Some(gate.clone()), 0);
    let running = start(&db, "cancel_ns", &handlers).await;
    let task = new_task(&db, "cancel_ns").await;
    wait_step(&db.pool, task, "first", "in_progress").await;

    let outcome = operations::cancel_task(&db.pool, task).await.unwrap();
    assert_eq!((outcome.task_state.as_str(), outcome.steps), ("cancelled", 1)); // `second` only
    assert_eq!(step(&db.pool, task, "second").await.0, "cancelled");

    gate.add_permits(1); // the running step finishes after the cancel
    wait_step(&db.pool, task, "first", "complete").await;
    let results: serde_json::Value = sqlx::query_scalar(
        "SELECT results FROM tasker.workflow_steps WHERE task_uuid = $1 AND results IS NOT NULL",
    )
    .bind(task)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(results["result"], json!(1), "the late result is recorded");
    assert_eq!(task_state(&db.pool, task).await, "cancelled");
    assert_eq!(step(&db.pool, task, "second").await.0, "cancelled");
    assert_eq!(handlers.second_runs.load(Ordering::SeqCst), 0);

    let again = operations::cancel_task(&db.pool, task).await.unwrap_err();
    assert!(refused(again).contains("is cancelled"));
    let missing = operations::cancel_task(&db.pool, Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(matches!(missing, TaskerError::NotFound(_)), "{missing:?}");
    running.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_late_failure_of_a_cancelled_task_is_not_retried() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Semaphore::new(0));
    let handlers = Handlers::new(Some(gate.clone()), 1);
    let running = start(&db, "cancel_fail_ns", &handlers).await;
    let task = new_task(&db, "cancel_fail_ns").await;
    wait_step(&db.pool, task, "first", "in_progress").await;
    operations::cancel_task(&db.pool, task).await.unwrap();
    gate.add_permits(1);
    wait_step(&db.pool, task, "first", "cancelled").await;
    assert_eq!(task_state(&db.pool, task).await, "cancelled");
    running.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn retrying_a_failed_step_gives_it_fresh_attempts_and_the_task_resumes() {
    let db = TestDatabase::migrated().await;
    let handlers = Handlers::new(None, 1);
    let running = start(&db, "retry_ns", &handlers).await;
    let task = new_task(&db, "retry_ns").await;
    wait_task(&db.pool, task, "blocked_by_failures").await;
    let (state, attempts, first) = step(&db.pool, task, "first").await;
    assert_eq!((state.as_str(), attempts), ("error", 1));
    let (_, _, second) = step(&db.pool, task, "second").await;

    let not_failed = operations::retry_step(&db.pool, second).await.unwrap_err();
    assert!(refused(not_failed).contains("only a step in error"));

    let outcome = operations::retry_step(&db.pool, first).await.unwrap();
    assert_eq!(outcome.task_uuid, task);
    assert_eq!(
        (outcome.task_state.as_str(), outcome.steps),
        ("steps_in_process", 1)
    );
    wait_task(&db.pool, task, "complete").await;
    assert_eq!(
        step(&db.pool, task, "first").await.1,
        1,
        "a fresh budget: one attempt since the retry"
    );
    assert_eq!(handlers.second_runs.load(Ordering::SeqCst), 1);

    let done = operations::retry_task(&db.pool, task).await.unwrap_err();
    assert!(refused(done).contains("is complete"));
    running.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn retry_task_and_resolve_step_manually() {
    let db = TestDatabase::migrated().await;
    let handlers = Handlers::new(None, 2);
    let running = start(&db, "resolve_ns", &handlers).await;

    // Both fail (fail_first is 2) before either is retried or resolved.
    let retried = new_task(&db, "resolve_ns").await;
    wait_task(&db.pool, retried, "blocked_by_failures").await;
    let resolved = new_task(&db, "resolve_ns").await;
    wait_task(&db.pool, resolved, "blocked_by_failures").await;

    let outcome = operations::retry_task(&db.pool, retried).await.unwrap();
    assert_eq!(outcome.steps, 1);
    wait_task(&db.pool, retried, "complete").await;

    let (_, _, first) = step(&db.pool, resolved, "first").await;
    let outcome = operations::resolve_step_manually(&db.pool, first, &json!({"result": 41}))
        .await
        .unwrap();
    assert_eq!(outcome.steps, 1, "its child is released");
    wait_task(&db.pool, resolved, "complete").await;
    assert_eq!(step(&db.pool, resolved, "first").await.0, "resolved_manually");
    let second: serde_json::Value = sqlx::query_scalar(
        "SELECT ws.results FROM tasker.workflow_steps ws JOIN tasker.named_steps ns USING (named_step_uuid) \
          WHERE ws.task_uuid = $1 AND ns.name = 'second'",
    )
    .bind(resolved)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        second["result"]["first"],
        json!(41),
        "the child sees the manual result"
    );
    let again = operations::resolve_step_manually(&db.pool, first, &json!({}))
        .await
        .unwrap_err();
    assert!(refused(again).contains("is complete"));

    let errors = operations::tasks(
        &db.pool,
        &TaskFilter {
            state: Some("complete".into()),
            namespace: Some("resolve_ns".into()),
            limit: 10,
            ..TaskFilter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(errors.len(), 2);
    let detail = operations::task_detail(&db.pool, resolved).await.unwrap();
    let second = detail.dag.iter().find(|s| s.name == "second").unwrap();
    assert_eq!(second.parents, vec!["first".to_string()]);
    running.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn two_processes_at_once_one_wins_the_other_is_refused() {
    let db = TestDatabase::migrated().await;
    let other = second_pool(&db).await;
    let handlers = Handlers::new(None, 4);
    let running = start(&db, "race_ns", &handlers).await;

    // Retry, raced: one retry goes through and sends one message, the other is refused.
    let task = new_task(&db, "race_ns").await;
    wait_task(&db.pool, task, "blocked_by_failures").await;
    let (_, _, first) = step(&db.pool, task, "first").await;
    let (a, b) = tokio::join!(
        operations::retry_step(&db.pool, first),
        operations::retry_step(&other, first)
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} / {b:?}");
    refused(a.err().or(b.err()).unwrap());
    wait_task(&db.pool, task, "blocked_by_failures").await; // it fails again (fail_first was 4)
    assert_eq!(handlers.first_runs.load(Ordering::SeqCst), 2);

    // Cancel against retry, raced: whichever runs second sees the first's outcome.
    let (c, r) = tokio::join!(
        operations::cancel_task(&db.pool, task),
        operations::retry_task(&other, task)
    );
    let state = task_state(&db.pool, task).await;
    match (&c, &r) {
        (Ok(_), Err(_)) => assert_eq!(state, "cancelled"),
        (Ok(_), Ok(_)) => assert_eq!(state, "cancelled"), // retried, then cancelled
        other => panic!("cancel must win or follow: {other:?}"),
    }
    let (c1, c2) = tokio::join!(
        operations::cancel_task(&db.pool, task),
        operations::cancel_task(&other, task)
    );
    assert!(
        c1.is_err() && c2.is_err(),
        "a cancelled task cannot be cancelled again"
    );
    running.stop().await;
    other.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_replayed_dead_letter_runs_once() {
    let db = TestDatabase::migrated().await;
    let handlers = Handlers::new(None, 0);
    let gate_ns = "replay_ns";
    let template = TaskTemplate::from_yaml(&CHAIN.replace("NS", gate_ns), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let task = new_task(&db, gate_ns).await;
    // Take the root step's message off its queue into a dead letter, as the worker does with
    // a message it gave up on.
    let (_, _, first) = step(&db.pool, task, "first").await;
    let correlation: Uuid =
        sqlx::query_scalar("SELECT correlation_id FROM tasker.tasks WHERE task_uuid = $1")
            .bind(task)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM pgmq.q_worker_replay_ns_queue")
        .execute(&db.pool)
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let body = serde_json::to_value(StepMessage {
        task_uuid: task,
        step_uuid: first,
        correlation_id: correlation,
    })
    .unwrap();
    sqlx::query(
        "INSERT INTO tasker.dead_letters (dead_letter_uuid, queue_name, msg_id, read_ct, message, reason) \
         VALUES ($1, 'worker_replay_ns_queue', 1, 4, $2, 'hydration failed 4 times')",
    )
    .bind(id)
    .bind(&body)
    .execute(&db.pool)
    .await
    .unwrap();
    let letters = operations::dead_letters(&db.pool, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.as_ref(), Some(&body));

    let running = start(&db, gate_ns, &handlers).await;
    let other = second_pool(&db).await;
    let (a, b) = tokio::join!(
        operations::replay_dead_letter(&db.pool, id),
        operations::replay_dead_letter(&other, id)
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} / {b:?}");
    assert!(refused(a.err().or(b.err()).unwrap()).contains("replayed already"));
    wait_task(&db.pool, task, "complete").await;
    assert_eq!(handlers.first_runs.load(Ordering::SeqCst), 1);
    assert!(operations::dead_letters(&db.pool, 10).await.unwrap()[0]
        .replayed_at
        .is_some());
    let missing = operations::replay_dead_letter(&db.pool, Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(matches!(missing, TaskerError::NotFound(_)), "{missing:?}");
    running.stop().await;
    other.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn heartbeats_register_stop_go_stale_and_are_pruned() {
    let db = TestDatabase::migrated().await;
    let handlers = Handlers::new(None, 0);
    let running = start(&db, "beat_ns", &handlers).await;
    let id = running.worker.worker_id().to_string();
    let row = wait_for("the worker's row", WAIT, || async {
        operations::workers(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .find(|w| w.worker_id == id)
    })
    .await;
    assert_eq!(row.state, "running");
    assert_eq!(row.pid, std::process::id() as i32);
    assert_eq!(row.namespaces, vec!["beat_ns".to_string()]);
    assert_eq!(
        row.concurrency as usize,
        running.config.worker.claim_capacity_ceiling()
    );
    assert_eq!(row.version, tasker_worker::version());
    running.worker.quiet();
    wait_for("the worker to be listed quiet", WAIT, || async {
        let rows = operations::workers(&db.pool).await.unwrap();
        rows.into_iter().find(|w| w.worker_id == id && w.state == "quiet")
    })
    .await;

    // A process that died: its heartbeat is old, it is shown as gone, then pruned.
    sqlx::query(
        "INSERT INTO tasker.workers (worker_id, hostname, pid, namespaces, concurrency, state, version, last_heartbeat) \
         VALUES ('worker_dead', 'h', 1, '{beat_ns}', 1, 'running', '0', now() - interval '2 minutes')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let listed = operations::workers(&db.pool).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|w| w.worker_id == "worker_dead")
            .unwrap()
            .state,
        "gone"
    );
    assert_eq!(
        listed.iter().find(|w| w.worker_id == id).unwrap().state,
        "quiet",
        "a live worker is not gone"
    );
    sqlx::query("UPDATE tasker.workers SET last_heartbeat = now() - interval '2 hours' WHERE worker_id = 'worker_dead'")
        .execute(&db.pool)
        .await
        .unwrap();
    let listed = operations::workers(&db.pool).await.unwrap();
    assert!(listed.iter().all(|w| w.worker_id != "worker_dead"), "pruned");

    running.stop().await;
    let stopped = operations::workers(&db.pool).await.unwrap();
    assert_eq!(
        stopped.iter().find(|w| w.worker_id == id).unwrap().state,
        "stopped"
    );
    // A stopped worker is never shown as gone, however old its last heartbeat.
    let stale = operations::workers_with(&db.pool, 0, 3600).await.unwrap();
    assert_eq!(stale.iter().find(|w| w.worker_id == id).unwrap().state, "stopped");

    let status = operations::status(&db.pool).await.unwrap();
    assert!(status.schema_up_to_date);
    assert!(status
        .queues
        .iter()
        .any(|q| q.queue_name == "worker_beat_ns_queue"));
    db.drop_database().await;
}

#[tokio::test]
async fn status_names_what_the_schema_is_missing() {
    let db = TestDatabase::migrated().await;
    sqlx::query("DELETE FROM tasker.schema_functions WHERE file_name = 'operations.sql'")
        .execute(&db.pool)
        .await
        .unwrap();
    let status = operations::status(&db.pool).await.unwrap();
    assert!(!status.schema_up_to_date);
    assert!(status
        .schema_problem
        .unwrap()
        .contains("sql/functions/operations.sql"));
    db.drop_database().await;
}

const SOLO: &str = r#"
name: chain
namespace_name: NS
version: 1.0.0
steps:
  - { name: first, handler: { callable: First } }
"#;

#[tokio::test]
async fn a_task_cancelled_while_its_last_step_runs_stays_cancelled() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Semaphore::new(0));
    let handlers = Handlers::new(Some(gate.clone()), 0);
    let ns = "cancel_last_ns";
    let template = TaskTemplate::from_yaml(&SOLO.replace("NS", ns), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let config = worker_config(&db, &[ns]);
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(handlers.registry()))
        .await
        .unwrap();
    let orchestrator = Orchestrator::start(&config).await.unwrap();
    let running = Running {
        worker,
        orchestrator,
        config,
    };
    let task = new_task(&db, ns).await;
    wait_step(&db.pool, task, "first", "in_progress").await;
    assert_eq!(operations::cancel_task(&db.pool, task).await.unwrap().steps, 0);
    gate.add_permits(1);
    // Every step is complete now, and still the task is not: it was cancelled.
    wait_step(&db.pool, task, "first", "complete").await;
    assert_eq!(task_state(&db.pool, task).await, "cancelled");
    running.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_cancelled_steps_message_is_archived_without_running() {
    let db = TestDatabase::migrated().await;
    let handlers = Handlers::new(None, 0);
    let ns = "cancel_queued_ns";
    let template = TaskTemplate::from_yaml(&CHAIN.replace("NS", ns), "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let task = new_task(&db, ns).await;
    let outcome = operations::cancel_task(&db.pool, task).await.unwrap();
    assert_eq!(outcome.steps, 2, "the enqueued root and its pending child");
    let running = start(&db, ns, &handlers).await;
    wait_for("the cancelled step's message to be archived", WAIT, || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_worker_cancel_queued_ns_queue")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(handlers.first_runs.load(Ordering::SeqCst), 0);
    assert_eq!(task_state(&db.pool, task).await, "cancelled");
    running.stop().await;
    db.drop_database().await;
}
