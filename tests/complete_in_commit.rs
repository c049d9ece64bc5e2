//! `orchestration.complete_in_commit`: with the embedded orchestrator in the worker's process,
//! a success is completed in the worker's own result transaction (no message on
//! orchestration_step_results); failures and decision outcomes keep the message route. Real
//! PostgreSQL, Rust handlers.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::messaging::StepFailure;
use tasker_worker::orchestration::{
    create_task, register_template, Orchestrator, OrchestratorStatus, TaskTemplate,
};
use tasker_worker::testing::{task_request, wait_for, wait_settled, worker_config, TestDatabase};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

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

const FLAKY: &str = r#"
name: flaky
namespace_name: NS
version: 1.0.0
steps:
  - name: first
    handler: { callable: FailOnce }
    retry: { max_attempts: 3, backoff: exponential, backoff_base_ms: 100, max_backoff_ms: 200 }
  - { name: second, handler: { callable: Square }, dependencies: [first] }
"#;

const ROUTE: &str = r#"
name: route
namespace_name: NS
version: 1.0.0
steps:
  - { name: intake, handler: { callable: Square } }
  - { name: classify, type: decision, dependencies: [intake], handler: { callable: Decide } }
  - { name: fast_track, dependencies: [classify], handler: { callable: Square } }
  - { name: committee, dependencies: [classify], handler: { callable: Square } }
"#;

/// Square: the task's `n` (or its first ancestor's result) squared; Sum: its parents' results
/// added (by the template's dependencies); FailOnce: a retryable failure on its first run, then `n`; Decide: fast_track.
fn registry() -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Square",
        handler_fn(|ctx: StepContext| async move {
            let input = ctx
                .dependency_results
                .values()
                .next()
                .and_then(|r| r["result"].as_i64())
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
    let calls = Arc::new(AtomicUsize::new(0));
    registry.register(
        "FailOnce",
        handler_fn(move |ctx: StepContext| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err(StepFailure::new("flaky", "try again", true))
                } else {
                    Ok(StepSuccess::new(ctx.task_context["n"].clone()))
                }
            }
        }),
    );
    registry.register(
        "Decide",
        handler_fn(|_ctx: StepContext| async move {
            Ok(StepSuccess::new(json!({
                "decision_point_outcome": {"type": "create_steps", "step_names": ["fast_track"]}
            })))
        }),
    );
    registry
}

struct Node {
    worker: WorkerCore,
    orchestrator: Orchestrator,
}

impl Node {
    /// An orchestrator, then a worker beside it (as `tasker_worker::node` starts them).
    async fn start(config: &TaskerConfig) -> Self {
        let orchestrator = Orchestrator::start(config).await.unwrap();
        let worker = WorkerCore::start_with(
            config.clone(),
            DispatchMode::Rust(registry()),
            Some(orchestrator.counters().clone()),
        )
        .await
        .unwrap();
        Self { worker, orchestrator }
    }

    /// The orchestrator's counters once `tasks` settled tasks are counted (counted after each
    /// commit, they may trail the database by a moment).
    async fn counted(&self, tasks: u64) -> OrchestratorStatus {
        wait_for("the settled tasks to be counted", WAIT, || async {
            let status = self.orchestrator.status();
            (status.tasks_completed == tasks).then_some(status)
        })
        .await
    }

    async fn stop(mut self) {
        self.worker.shutdown().await.unwrap();
        self.orchestrator.shutdown().await;
    }
}

async fn setup(db: &TestDatabase, ns: &str) -> TaskerConfig {
    for yaml in [DIAMOND, FLAKY, ROUTE] {
        let template = TaskTemplate::from_yaml(&yaml.replace("NS", ns), "test").unwrap();
        register_template(&db.pool, &template).await.unwrap();
    }
    worker_config(db, &[ns])
}

/// Result messages ever sent to orchestration_step_results (waiting or archived).
async fn result_messages(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pgmq.q_orchestration_step_results) \
              + (SELECT count(*) FROM pgmq.a_orchestration_step_results)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn step_states(pool: &sqlx::PgPool, task: Uuid) -> Vec<(String, Vec<String>, Option<Value>)> {
    sqlx::query_as(
        "SELECT ns.name::text, array_agg(tr.to_state::text ORDER BY tr.sort_key), ws.results -> 'result' \
           FROM tasker.workflow_steps ws \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
           JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid \
          WHERE ws.task_uuid = $1 GROUP BY ns.name, ws.results ORDER BY ns.name",
    )
    .bind(task)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// One step's row of `assert_completed_rows`: name, transitions, the `complete` transition's
/// event, only it current, the sort keys' span, chained from_states, processed, idle.
type CompletedRows = (String, i64, Option<String>, bool, i64, bool, bool, bool);

/// What tasker-core's orchestrator reads of a completed step, checked for every step of
/// `task`: one current transition, the `complete` one, each transition's from_state the
/// previous one's to_state, consecutive sort keys, the `complete` transition's event, and the
/// step row processed, with its processed_at, and not in process.
async fn assert_completed_rows(pool: &sqlx::PgPool, task: Uuid) {
    let rows: Vec<CompletedRows> = sqlx::query_as(
        "SELECT ns.name::text, count(*), \
                min(tr.metadata ->> 'event') FILTER (WHERE tr.to_state = 'complete'), \
                bool_and(tr.most_recent = (tr.to_state = 'complete')), \
                (max(tr.sort_key) - min(tr.sort_key) + 1)::bigint, \
                bool_and(tr.from_state IS NOT DISTINCT FROM \
                         (SELECT p.to_state FROM tasker.workflow_step_transitions p \
                           WHERE p.workflow_step_uuid = tr.workflow_step_uuid AND p.sort_key = tr.sort_key - 1)), \
                bool_and(ws.processed AND ws.processed_at IS NOT NULL), \
                bool_and(NOT ws.in_process) \
           FROM tasker.workflow_steps ws \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
           JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid \
          WHERE ws.task_uuid = $1 GROUP BY ns.name ORDER BY ns.name",
    )
    .bind(task)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!rows.is_empty(), "task {task} has steps");
    for (name, count, event, current, span, chained, processed, idle) in rows {
        assert_eq!(
            event.as_deref(),
            Some("complete"),
            "{name}: the complete transition's event"
        );
        assert!(current, "{name}: only the complete transition is most recent");
        assert_eq!(span, count, "{name}: consecutive sort keys");
        assert!(chained, "{name}: each from_state is the previous to_state");
        assert!(processed, "{name}: processed, with processed_at");
        assert!(idle, "{name}: not in process");
    }
}

/// The transition states (to_state, by sort_key) of a step that ran once and completed;
/// "pending" here is the state a step is created in, not a skipped test.
const RAN: [&str; 5] = [
    "pending",
    "enqueued",
    "in_progress",
    "enqueued_for_orchestration",
    "complete",
];

#[tokio::test]
async fn successes_complete_in_the_worker_commit_without_a_results_message() {
    let db = TestDatabase::migrated().await;
    let config = setup(&db, "fused").await;
    assert!(config.orchestration.complete_in_commit, "on by default");
    let node = Node::start(&config).await;
    let task = create_task(&db.pool, &task_request("fused", "diamond", json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");

    let steps = step_states(&db.pool, task).await;
    let expected: Vec<(String, Vec<String>, Option<Value>)> =
        [("join", 32), ("left", 16), ("right", 16), ("start", 4)]
            .into_iter()
            .map(|(name, result)| {
                (
                    name.to_string(),
                    RAN.map(String::from).to_vec(),
                    Some(json!(result)),
                )
            })
            .collect();
    assert_eq!(steps, expected, "the same history as the message route writes");
    assert_completed_rows(&db.pool, task).await;
    let (complete, completed_at): (bool, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT complete, completed_at FROM tasker.tasks WHERE task_uuid = $1")
            .bind(task)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(complete && completed_at.is_some());
    assert_eq!(result_messages(&db.pool).await, 0, "no results message was sent");
    let status = node.counted(1).await;
    assert_eq!(status.completed_in_commit, 4, "{status:?}");
    assert_eq!(status.steps_completed, 4, "{status:?}");
    assert_eq!(status.results_processed, 4, "{status:?}");
    assert_eq!(status.duplicates, 0, "{status:?}");
    node.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn turned_off_every_result_goes_through_the_results_queue() {
    let db = TestDatabase::migrated().await;
    let mut config = setup(&db, "unfused").await;
    config.orchestration.complete_in_commit = false;
    let node = Node::start(&config).await;
    let task = create_task(&db.pool, &task_request("unfused", "diamond", json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    assert_eq!(result_messages(&db.pool).await, 4);
    assert_completed_rows(&db.pool, task).await;
    let status = node.counted(1).await;
    assert_eq!(status.completed_in_commit, 0, "{status:?}");
    assert_eq!(status.steps_completed, 4, "{status:?}");
    node.stop().await;
    db.drop_database().await;
}

/// A failure goes to the orchestrator by message (its retry policy), the retry's success and
/// the next step complete in the commit; a decision step's success goes by message (its
/// outcome creates steps), its chosen step completes in the commit.
#[tokio::test]
async fn failures_and_decisions_keep_the_message_route() {
    let db = TestDatabase::migrated().await;
    let config = setup(&db, "mixed").await;
    let node = Node::start(&config).await;
    let flaky = create_task(&db.pool, &task_request("mixed", "flaky", json!({"n": 3})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, flaky, WAIT).await, "complete");
    let steps = step_states(&db.pool, flaky).await;
    assert_eq!(steps[0].0, "first");
    // Transition states in order ("pending": the state the step was created in).
    assert_eq!(
        steps[0].1,
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
    assert_eq!(
        steps[1],
        ("second".into(), RAN.map(String::from).to_vec(), Some(json!(9)))
    );
    assert_eq!(result_messages(&db.pool).await, 1, "only the failure was sent");

    let route = create_task(&db.pool, &task_request("mixed", "route", json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, route, WAIT).await, "complete");
    let names: Vec<String> = step_states(&db.pool, route)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(
        names,
        ["classify", "fast_track", "intake"],
        "committee was not chosen"
    );
    assert_eq!(result_messages(&db.pool).await, 2, "and the decision's success");
    let status = node.counted(2).await;
    // flaky: first's retry and second; route: intake and fast_track.
    assert_eq!(status.completed_in_commit, 4, "{status:?}");
    assert_eq!(status.steps_retried, 1, "{status:?}");
    assert_eq!(status.steps_completed, 5, "{status:?}");
    node.stop().await;
    db.drop_database().await;
}

/// Two processes, each completing its successes in its commits: a join whose parents finish
/// in both at once is enqueued once (each commit holds the task's row first).
#[tokio::test]
async fn two_nodes_enqueue_each_join_once() {
    let db = TestDatabase::migrated().await;
    let config = setup(&db, "pairf").await;
    let a = Node::start(&config).await;
    let b = Node::start(&config).await;
    let mut tasks = Vec::new();
    for n in 1..=20i64 {
        let task = create_task(&db.pool, &task_request("pairf", "diamond", json!({"n": n})))
            .await
            .unwrap();
        tasks.push((n, task));
    }
    for (n, task) in &tasks {
        assert_eq!(wait_settled(&db.pool, *task, WAIT).await, "complete");
        let steps = step_states(&db.pool, *task).await;
        assert_eq!(steps[0].0, "join");
        assert_eq!(steps[0].1, RAN.map(String::from).to_vec(), "task {n}");
        assert_eq!(steps[0].2, Some(json!(2 * n.pow(4))), "task {n}");
    }
    let completed = wait_for("20 settled tasks to be counted", WAIT, || async {
        let n = a.orchestrator.status().tasks_completed + b.orchestrator.status().tasks_completed;
        (n >= 20).then_some(n)
    })
    .await;
    assert_eq!(completed, 20);
    assert_eq!(result_messages(&db.pool).await, 0);
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

/// The lease-only claim's commit completes its successes the same way.
#[tokio::test]
async fn the_lean_claim_commit_completes_in_the_commit_too() {
    let db = TestDatabase::migrated().await;
    let mut config = setup(&db, "leanf").await;
    config.worker.lean_claim = true;
    let node = Node::start(&config).await;
    let task = create_task(&db.pool, &task_request("leanf", "diamond", json!({"n": 3})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    let steps = step_states(&db.pool, task).await;
    assert_eq!(
        steps[0],
        ("join".into(), RAN.map(String::from).to_vec(), Some(json!(162)))
    );
    assert_completed_rows(&db.pool, task).await;
    assert_eq!(result_messages(&db.pool).await, 0);
    let status = node.counted(1).await;
    assert_eq!(status.completed_in_commit, 4, "{status:?}");
    node.stop().await;
    db.drop_database().await;
}

/// When completing a step in the commit fails (here a trigger refuses every `complete`
/// transition), the results are committed for the orchestrator's queue instead: stored once,
/// the handler not re-run, the message there for the orchestrator (whose processing then
/// fails the same way: retried, then dead-lettered, as for any result it cannot apply).
#[tokio::test]
async fn a_completion_that_fails_in_the_commit_falls_back_to_the_message() {
    let db = TestDatabase::migrated().await;
    let config = setup(&db, "fallback").await;
    sqlx::raw_sql(
        "CREATE FUNCTION public.refuse_complete() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'no complete transitions today'; END $$; \
         CREATE TRIGGER refuse_complete BEFORE INSERT ON tasker.workflow_step_transitions \
         FOR EACH ROW WHEN (NEW.to_state = 'complete') EXECUTE FUNCTION public.refuse_complete();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let node = Node::start(&config).await;
    let task = create_task(&db.pool, &task_request("fallback", "diamond", json!({"n": 2})))
        .await
        .unwrap();
    wait_for("start's result to be sent to the orchestrator", WAIT, || async {
        (result_messages(&db.pool).await == 1).then_some(())
    })
    .await;
    let steps = step_states(&db.pool, task).await;
    let start = steps.iter().find(|s| s.0 == "start").unwrap();
    assert_eq!(
        start.1,
        // Transition states in order ("pending": the state the step was created in).
        ["pending", "enqueued", "in_progress", "enqueued_for_orchestration"],
        "stored once, not re-run"
    );
    assert_eq!(start.2, Some(json!(4)));
    let attempts: i32 = sqlx::query_scalar(
        "SELECT ws.attempts FROM tasker.workflow_steps ws \
           JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
          WHERE ws.task_uuid = $1 AND ns.name = 'start'",
    )
    .bind(task)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert_eq!(node.worker.status_now().counters.succeeded, 1);
    assert_eq!(node.orchestrator.status().completed_in_commit, 0);
    node.stop().await;
    db.drop_database().await;
}
