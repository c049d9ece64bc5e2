//! Batching keys change what the worker does: `claim_batch_size` bounds each read,
//! `completion_batch_size` bounds each commit.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::database::{PoolSettings, WorkerPools};
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

/// Connections `pool` hands out before its acquire timeout, all held at once.
async fn hold_all(pool: &sqlx::PgPool, held: &mut Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>) -> usize {
    let mut n = 0;
    while let Ok(conn) = pool.acquire().await {
        held.push(conn);
        n += 1;
    }
    n
}

fn settings(max_connections: u32) -> PoolSettings {
    PoolSettings {
        max_connections,
        acquire_timeout: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn the_claim_and_commit_paths_get_connections_of_their_own_within_max_connections() {
    let db = TestDatabase::migrated().await;
    let pools = WorkerPools::connect(&db.url, &settings(10), 2, 3).await.unwrap();
    let mut held = Vec::new();
    let claims = hold_all(pools.claims(), &mut held).await;
    let commits = hold_all(pools.commits(), &mut held).await;
    let shared = hold_all(&pools.shared, &mut held).await;
    assert_eq!((claims, commits, shared), (2, 3, 5));
    assert_eq!(pools.size(), 10, "every pool counted, max_connections in all");
    drop(held);
    pools.close().await;

    // Too few for the shared pool to keep two: one pool for every role, still 4 in all.
    let pools = WorkerPools::connect(&db.url, &settings(4), 2, 1).await.unwrap();
    let mut held = Vec::new();
    let claims = hold_all(pools.claims(), &mut held).await;
    assert_eq!(claims, 4, "the claims take from the one pool");
    assert_eq!(hold_all(pools.commits(), &mut held).await, 0);
    assert_eq!(hold_all(&pools.shared, &mut held).await, 0);
    assert_eq!(pools.size(), 4);
    drop(held);
    pools.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_worker_drains_on_its_role_pools_and_reports_their_connections() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["batch"]);
    config.database.max_connections = 9;
    let status = run_ten(config, &db).await;
    assert_eq!(status.counters.succeeded, 10);
    // Claims and commits ran on their own pools: each opened a connection, and within their
    // sizes (two batches at once: 10 handlers, claim capacity up to 40, batches of 20; one commit).
    assert!(
        matches!(status.pool_claims, Some(1..=2)),
        "{:?}",
        status.pool_claims
    );
    assert_eq!(status.pool_commits, Some(1));
    assert!(status.pool_size <= 9, "{}", status.pool_size);

    // A pool too small to split: the claims and commits take from the one pool.
    let mut config = worker_config(&db, &["batch"]);
    config.database.max_connections = 4;
    let status = run_ten(config, &db).await;
    assert_eq!((status.pool_claims, status.pool_commits), (None, None));
    assert!(status.pool_size <= 4, "{}", status.pool_size);
    db.drop_database().await;
}
