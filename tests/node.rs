//! `Node`, the engine as an embedder drives it, on real PostgreSQL: it starts the
//! orchestrator and the worker on its own runtime, runs whole workflows, stops in order
//! with a report, and reports its status before and after. Plain `#[test]`s: a node blocks
//! the calling thread and must not be driven from inside a tokio runtime.

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasker_worker::node::{Node, NodeOptions};
use tasker_worker::orchestration::{create_task, register_template, TaskRequest, TaskTemplate};
use tasker_worker::testing::{worker_config, TestDatabase};
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess};
use tasker_worker::TaskerError;

const CHAIN: &str = r#"
name: chain
namespace_name: node_ns
version: 1.0.0
steps:
  - { name: first, handler: { callable: Double } }
  - { name: second, handler: { callable: Double }, dependencies: [first] }
"#;

fn doubling() -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Double",
        handler_fn(|ctx: StepContext| async move {
            let input = ctx
                .dependency_results
                .values()
                .next()
                .map(|r| r["result"].as_i64().unwrap())
                .unwrap_or_else(|| ctx.task_context["n"].as_i64().unwrap());
            Ok(StepSuccess::new(json!(input * 2)))
        }),
    );
    registry
}

fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn task_state(rt: &tokio::runtime::Runtime, db: &TestDatabase, task: uuid::Uuid) -> String {
    rt.block_on(
        sqlx::query_scalar(
            "SELECT to_state FROM tasker.task_transitions WHERE task_uuid = $1 AND most_recent",
        )
        .bind(task)
        .fetch_one(&db.pool),
    )
    .unwrap()
}

#[test]
fn a_node_runs_workflows_then_stops_worker_before_orchestrator_with_a_report() {
    let rt = test_runtime();
    let db = rt.block_on(TestDatabase::migrated());
    let template = TaskTemplate::from_yaml(CHAIN, "test").unwrap();
    rt.block_on(register_template(&db.pool, &template)).unwrap();
    let mut config = worker_config(&db, &["node_ns"]);
    config.runtime.worker_threads = 1;

    let node = Node::start(
        config,
        NodeOptions {
            dispatch: DispatchMode::Rust(doubling()),
            orchestrate: true,
            on_thread_start: None,
        },
    )
    .unwrap();
    assert!(node.ffi_channel().is_none(), "Rust dispatch has no pull channel");
    let request = TaskRequest {
        namespace: "node_ns".into(),
        name: "chain".into(),
        version: "1.0.0".into(),
        context: json!({"n": 3}),
        idempotency_key: None,
    };
    let task = rt.block_on(create_task(&db.pool, &request)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while task_state(&rt, &db, task) != "complete" {
        assert!(Instant::now() < deadline, "the task did not complete");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The orchestrator can settle the task before the completion processor, whose commit it
    // read, has counted that commit: wait for the count rather than reading it once.
    let running = loop {
        let status = node.status();
        let worker = status
            .worker
            .as_ref()
            .expect("a running worker reports its status");
        if worker.counters.succeeded >= 2 {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker never counted both results");
        std::thread::sleep(Duration::from_millis(10));
    };
    let worker = running.worker.clone().unwrap();
    assert!(worker.running);
    assert_eq!(worker.counters.succeeded, 2);
    assert_eq!(running.orchestrator.unwrap().tasks_completed, 1);
    assert!(!node.is_stopped());

    let report = node.stop(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(report.map(|r| (r.finished, r.released)), Some((0, 0)));
    assert!(node.is_stopped());
    assert!(node.stop(None).unwrap().is_none(), "a second stop does nothing");
    let stopped = node.status();
    assert!(stopped.worker.is_none());
    assert_eq!(
        stopped.orchestrator.map(|o| o.tasks_completed),
        Some(1),
        "the orchestrator's counters outlive it"
    );
    drop(node);
    rt.block_on(db.drop_database());
}

#[test]
fn a_node_that_cannot_start_reports_why_and_leaves_nothing_running() {
    let rt = test_runtime();
    let db = rt.block_on(TestDatabase::migrated());
    let mut config = worker_config(&db, &["node_ns"]);
    // A database without the schema: the orchestrator refuses it before the worker starts.
    let empty = rt.block_on(TestDatabase::empty());
    config.database.url = empty.url.clone();
    let started = Node::start(
        config,
        NodeOptions {
            dispatch: DispatchMode::Rust(doubling()),
            orchestrate: true,
            on_thread_start: None,
        },
    );
    match started {
        Err(TaskerError::Migration(message)) => assert!(message.contains("migrate"), "{message}"),
        Err(other) => panic!("expected a schema error, got {other}"),
        Ok(_) => panic!("a node started on a database without the schema"),
    }
    rt.block_on(empty.drop_database());
    rt.block_on(db.drop_database());
}

#[test]
fn quiet_stops_claiming_and_dropping_a_running_node_aborts_it() {
    let rt = test_runtime();
    let db = rt.block_on(TestDatabase::migrated());
    let node = Node::start(
        worker_config(&db, &["node_ns"]),
        NodeOptions {
            dispatch: DispatchMode::Ffi,
            orchestrate: false,
            on_thread_start: None,
        },
    )
    .unwrap();
    assert!(node.ffi_channel().is_some());
    node.quiet();
    assert!(node.status().worker.unwrap().quiet);
    assert!(node.status().orchestrator.is_none());
    // Dropped without stop: must return promptly (tasks aborted), as a crash would.
    let before = Instant::now();
    drop(node);
    assert!(before.elapsed() < Duration::from_secs(5));
    rt.block_on(db.drop_database());
}
