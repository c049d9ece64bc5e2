//! Batching keys change what the worker does: `claim_batch_size` bounds each read,
//! `completion_batch_size` bounds each commit.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::testing::{template, wait_for, worker_config, TestDatabase, TestWorkflow};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore, WorkerStatus,
};

async fn run_ten(config: TaskerConfig, db: &TestDatabase) -> WorkerStatus {
    // Enqueue first, so the worker's first read sees all ten.
    for _ in 0..10 {
        TestWorkflow::create(
            &db.pool,
            "batch",
            template("noop", &[("noop", "Noop", &[])]),
            json!({}),
        )
        .await
        .enqueue("noop")
        .await;
    }
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register("Noop", handler_fn(|_ctx| async { Ok(StepSuccess::default()) }));
    let core = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .unwrap();
    let status = wait_for("ten results", Duration::from_secs(20), || async {
        let status = core.status().await.unwrap();
        (status.counters.succeeded == 10).then_some(status)
    })
    .await;
    core.shutdown().await.unwrap();
    status
}

#[tokio::test]
async fn claim_batch_size_bounds_each_read() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["batch"]);
    config.worker.claim_batch_size = 1;
    let one = run_ten(config.clone(), &db).await;
    assert_eq!(one.counters.read_batches, 10, "{:?}", one.counters);

    config.worker.claim_batch_size = 10;
    let ten = run_ten(config, &db).await;
    assert_eq!(ten.counters.read_batches, 1, "{:?}", ten.counters);
    db.drop_database().await;
}

#[tokio::test]
async fn completion_batch_size_one_commits_each_result_alone() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["batch"]);
    config.worker.completion_batch_size = 1;
    let status = run_ten(config, &db).await;
    assert_eq!(status.counters.commit_batches, 10);
    db.drop_database().await;
}
