//! Domain events on real PostgreSQL: published only after the result commits, routed by
//! condition and delivery mode, checked against their schema.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::messaging::StepFailure;
use tasker_worker::testing::{
    break_step_results_queue, repair_step_results_queue, wait_for, worker_config, TestDatabase, TestWorkflow,
};
use tasker_worker::worker::event_systems::domain_event_system::DomainEvent;
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

fn registry(gate: Option<Arc<Notify>>) -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Ship",
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                Ok(StepSuccess::new(json!({"tracking": "TRK1"})))
            }
        }),
    );
    registry.register(
        "Retry",
        handler_fn(|_ctx| async { Err(StepFailure::new("busy", "busy", true)) }),
    );
    registry.register(
        "Fatal",
        handler_fn(|_ctx| async { Err(StepFailure::new("fatal", "fatal", false)) }),
    );
    registry
}

fn step(name: &str, callable: &str, events: Value) -> Value {
    json!({"name": name, "handler": {"callable": callable}, "publishes_events": events})
}

async fn durable_events(pool: &sqlx::PgPool, ns: &str) -> Vec<DomainEvent> {
    let rows: Vec<Value> = sqlx::query_scalar(&format!(
        "SELECT message FROM pgmq.q_{ns}_domain_events ORDER BY msg_id"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

fn drain_fast(core: &WorkerCore) -> Vec<DomainEvent> {
    std::iter::from_fn(|| core.domain_events().next_fast_event(Duration::from_millis(1))).collect()
}

#[tokio::test]
async fn events_route_by_condition_and_delivery_mode_with_the_envelope() {
    let db = TestDatabase::migrated().await;
    let core = WorkerCore::start(worker_config(&db, &["shop"]), DispatchMode::Rust(registry(None)))
        .await
        .unwrap();
    let template = json!({"name": "events", "version": "1.0.0", "steps": [
        step("ship", "Ship", json!([
            {"name": "order.shipped", "condition": "success", "delivery_mode": "durable"},
            {"name": "order.shipped.fast", "condition": "success", "delivery_mode": "fast"},
            {"name": "order.any", "condition": "always", "delivery_mode": "broadcast"},
            {"name": "order.failed", "condition": "failure", "delivery_mode": "broadcast"}])),
        step("retry", "Retry", json!([
            {"name": "retry.retryable", "condition": "retryable_failure", "delivery_mode": "durable"},
            {"name": "retry.permanent", "condition": "permanent_failure", "delivery_mode": "durable"}])),
        step("fatal", "Fatal", json!([
            {"name": "fatal.retryable", "condition": "retryable_failure", "delivery_mode": "durable"},
            {"name": "fatal.permanent", "condition": "permanent_failure", "delivery_mode": "fast"}])),
    ]});
    let wf = TestWorkflow::create(&db.pool, "shop", template, json!({"order": 1})).await;
    for name in ["ship", "retry", "fatal"] {
        wf.enqueue(name).await;
    }
    let durable = wait_for("three durable events", WAIT, || async {
        let events = durable_events(&db.pool, "shop").await;
        (events.len() == 3).then_some(events)
    })
    .await;
    let mut names: Vec<&str> = durable.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["order.any", "order.shipped", "retry.retryable"]);
    let shipped = durable.iter().find(|e| e.name == "order.shipped").unwrap();
    assert_eq!(
        (shipped.namespace.as_str(), shipped.step_name.as_str()),
        ("shop", "ship")
    );
    assert_eq!(
        (shipped.task_uuid, shipped.step_uuid, shipped.correlation_id),
        (wf.task_uuid, wf.step("ship"), wf.correlation_id)
    );
    assert_eq!(shipped.payload["result"]["tracking"], "TRK1");
    assert_eq!(shipped.payload["success"], true);

    wait_for("three fast events", WAIT, || async {
        (core.status().await.unwrap().domain_events.published_fast == 3).then_some(())
    })
    .await;
    let mut fast_names: Vec<String> = drain_fast(&core).into_iter().map(|e| e.name).collect();
    fast_names.sort();
    assert_eq!(fast_names, ["fatal.permanent", "order.any", "order.shipped.fast"]);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn nothing_is_published_for_a_result_whose_commit_rolled_back() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Notify::new());
    let core = WorkerCore::start(
        worker_config(&db, &["rollback"]),
        DispatchMode::Rust(registry(Some(gate.clone()))),
    )
    .await
    .unwrap();
    let template = json!({"name": "events", "version": "1.0.0", "steps": [
        step("ship", "Ship", json!([{"name": "order.shipped", "delivery_mode": "broadcast"}]))]});
    let wf = TestWorkflow::create(&db.pool, "rollback", template, json!({})).await;
    wf.enqueue("ship").await;
    wait_for("the step to run", WAIT, || async {
        (wf.state("ship").await == "in_progress").then_some(())
    })
    .await;

    break_step_results_queue(&db.pool).await;
    gate.notify_one();
    wait_for("a failed commit", WAIT, || async {
        (core.status().await.unwrap().counters.commit_failures >= 1).then_some(())
    })
    .await;
    assert!(
        durable_events(&db.pool, "rollback").await.is_empty(),
        "a durable event for an uncommitted result"
    );
    assert!(
        drain_fast(&core).is_empty(),
        "a fast event for an uncommitted result"
    );

    repair_step_results_queue(&db.pool).await;
    let events = wait_for("the event after the commit", WAIT, || async {
        let events = durable_events(&db.pool, "rollback").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(wf.state("ship").await, "enqueued_for_orchestration");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_payload_failing_its_schema_is_counted_not_published() {
    let db = TestDatabase::migrated().await;
    let core = WorkerCore::start(
        worker_config(&db, &["schema"]),
        DispatchMode::Rust(registry(None)),
    )
    .await
    .unwrap();
    let template = json!({"name": "events", "version": "1.0.0", "steps": [
        step("ship", "Ship", json!([
            {"name": "ok", "delivery_mode": "durable",
             "schema": {"type": "object", "properties": {"result": {"required": ["tracking"]}}}},
            {"name": "bad", "delivery_mode": "durable",
             "schema": {"type": "object", "properties": {"result": {"required": ["invoice"]}}}}]))]});
    let wf = TestWorkflow::create(&db.pool, "schema", template, json!({})).await;
    wf.enqueue("ship").await;
    let stats = wait_for("the schema check", WAIT, || async {
        let stats = core.status().await.unwrap().domain_events;
        (stats.invalid_payload == 1 && stats.published_durable == 1).then_some(stats)
    })
    .await;
    assert_eq!(stats.dropped_durable, 0);
    let names: Vec<String> = durable_events(&db.pool, "schema")
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["ok"]);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}
