//! The core's notable events, each asserted from the captured log with its fields: a step
//! reclaimed after its lease lapsed, a stale result discarded, a message out of order, a
//! message dead-lettered, a worker started / quiet / stopping / stopped. (A failed, retried,
//! errored or timed-out step and a settled task: spec/integration/operate_spec.rb, through
//! the worker process, in text and JSON.)

use parking_lot::Mutex;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::messaging::MessageClient;
use tasker_worker::testing::{template, wait_for, worker_config, TestDatabase, TestWorkflow};
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore};
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const WAIT: Duration = Duration::from_secs(20);

/// One captured event: its level, message and fields (every value as text).
#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    message: String,
    fields: BTreeMap<String, String>,
}

struct Capture;

struct Collect(Captured);

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.0.message = text,
            name => {
                self.0.fields.insert(name.to_string(), text);
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.0.message = value.to_string(),
            name => {
                self.0.fields.insert(name.to_string(), value.to_string());
            }
        }
    }
}

fn captured() -> &'static Mutex<Vec<Captured>> {
    static LOG: OnceLock<Mutex<Vec<Captured>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
        Mutex::new(Vec::new())
    })
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut collect = Collect(Captured {
            level: *event.metadata().level(),
            message: String::new(),
            fields: BTreeMap::new(),
        });
        event.record(&mut collect);
        captured().lock().push(collect.0);
    }
}

/// The captured events named `event` whose `key` field is `value` (tests run at once, so
/// each picks out its own by a field only it has).
fn events(event: &str, key: &str, value: &str) -> Vec<Captured> {
    captured()
        .lock()
        .iter()
        .filter(|c| c.fields.get("event").map(String::as_str) == Some(event))
        .filter(|c| c.fields.get(key).map(String::as_str) == Some(value))
        .cloned()
        .collect()
}

async fn wait_event(event: &str, key: &str, value: &str) -> Captured {
    wait_for(&format!("a {event} line with {key}={value}"), WAIT, || async {
        events(event, key, value).into_iter().next()
    })
    .await
}

async fn start(config: TaskerConfig, registry: Arc<InMemoryHandlerRegistry>) -> WorkerCore {
    captured();
    WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .expect("worker starts")
}

fn registry(gate: Option<Arc<Notify>>, label: &'static str) -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Gate",
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                Ok(StepSuccess::new(json!({ "by": label })))
            }
        }),
    );
    registry
}

/// Waits until `step` is `state`; on timeout, panics with the step's transitions and every
/// captured warning or error (what went wrong is in one of them).
async fn wait_state(wf: &TestWorkflow, step: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while wf.state(step).await != state {
        if tokio::time::Instant::now() >= deadline {
            let problems: Vec<Captured> = captured()
                .lock()
                .iter()
                .filter(|c| c.level <= tracing::Level::WARN)
                .cloned()
                .collect();
            panic!(
                "timed out after {WAIT:?} waiting for {step} to be {state}; its transitions: {:?}; warnings and errors logged: {problems:#?}",
                wf.transitions(step).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_and_the_stale_result_it_leaves_are_each_logged_with_their_step() {
    let db = TestDatabase::migrated().await;
    let config = worker_config(&db, &["log_late"]);
    let gate = Arc::new(Notify::new());
    let slow = start(config.clone(), registry(Some(gate.clone()), "slow")).await;
    let wf = TestWorkflow::create(
        &db.pool,
        "log_late",
        template("one", &[("only", "Gate", &[])]),
        json!({}),
    )
    .await;
    wf.enqueue("only").await;
    wait_state(&wf, "only", "in_progress").await;
    slow.quiet_settled().await;
    sqlx::query("UPDATE pgmq.q_worker_log_late_queue SET vt = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let other = start(config, registry(None, "other")).await;
    let step_uuid = wf.step("only").to_string();

    let reclaimed = wait_event("step_reclaimed", "step_uuid", &step_uuid).await;
    assert_eq!(reclaimed.level, tracing::Level::WARN);
    assert_eq!(reclaimed.message, "step reclaimed after its lease lapsed");
    for (key, value) in [("namespace", "log_late"), ("step", "only"), ("attempt", "2")] {
        assert_eq!(
            reclaimed.fields.get(key).map(String::as_str),
            Some(value),
            "{reclaimed:?}"
        );
    }
    assert!(reclaimed.fields.contains_key("previous_claim"), "{reclaimed:?}");
    wait_state(&wf, "only", "enqueued_for_orchestration").await;

    gate.notify_one();
    let stale = wait_event("stale_result", "step_uuid", &step_uuid).await;
    assert_eq!(stale.level, tracing::Level::INFO);
    assert_eq!(stale.fields.get("step").map(String::as_str), Some("only"));
    assert_eq!(stale.fields.get("task_uuid"), reclaimed.fields.get("task_uuid"));

    let worker_id = slow.worker_id().to_string();
    slow.shutdown().await.unwrap();
    let stopped = wait_event("worker_stopped", "worker_id", &worker_id).await;
    assert_eq!(
        stopped.fields.get("stale").map(String::as_str),
        Some("1"),
        "{stopped:?}"
    );
    assert_eq!(stopped.fields.get("succeeded").map(String::as_str), Some("0"));
    for event in ["worker_started", "worker_quiet", "worker_stopping"] {
        assert_eq!(events(event, "worker_id", &worker_id).len(), 1, "{event} once");
    }
    other.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_out_of_order_and_a_dead_letter_are_each_logged() {
    let db = TestDatabase::migrated().await;
    let config = worker_config(&db, &["log_poison"]);
    let core = start(config, registry(None, "w")).await;
    let steps: &[(&str, &str, &[&str])] = &[("first", "Gate", &[]), ("second", "Gate", &["first"])];
    let wf = TestWorkflow::create(&db.pool, "log_poison", template("two", steps), json!({})).await;
    let early = wf.send("second").await; // its parent has not run
    let client = MessageClient::new(db.pool.clone());
    let garbage = client
        .send_with_notify("worker_log_poison_queue", &json!({"hello": "world"}), 0)
        .await
        .unwrap();

    let out_of_order = wait_event("out_of_order", "msg_id", &early.to_string()).await;
    assert_eq!(out_of_order.level, tracing::Level::WARN);
    assert_eq!(
        out_of_order.fields.get("state").map(String::as_str),
        Some("pending")
    );
    let dead = wait_event("dead_lettered", "msg_id", &garbage.to_string()).await;
    assert_eq!(dead.level, tracing::Level::ERROR);
    assert_eq!(
        dead.fields.get("queue").map(String::as_str),
        Some("worker_log_poison_queue")
    );
    assert!(dead.fields["reason"].contains("unparseable"), "{dead:?}");
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_retention_round_is_logged_once_with_its_counts() {
    captured();
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    client.create_queue("worker_logret_queue").await.expect("queue");
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            client
                .send_with_notify("worker_logret_queue", &json!({ "i": i }), 0)
                .await
                .expect("send"),
        );
    }
    client
        .archive("worker_logret_queue", &ids)
        .await
        .expect("archive");
    sqlx::query("UPDATE pgmq.a_worker_logret_queue SET archived_at = now() - interval '2 days'")
        .execute(&db.pool)
        .await
        .expect("backdate");
    let policy = tasker_worker::retention::RetentionPolicy {
        completed_after: Some(Duration::from_secs(86_400)),
        failed_after: None,
        archive_after: Some(Duration::from_secs(86_400)),
        batch_size: 100,
    };
    tasker_worker::retention::round(&db.pool, &policy).await;
    // 7 archived messages: a count no other test of this binary logs.
    let line = wait_event("retention_pruned", "archived_messages", "7").await;
    assert_eq!(line.level, tracing::Level::INFO);
    assert_eq!(
        line.fields.get("tasks").map(String::as_str),
        Some("0"),
        "{line:?}"
    );
    assert!(line.fields.contains_key("duration_ms"), "{line:?}");
    assert_eq!(events("retention_pruned", "archived_messages", "7").len(), 1);
    db.drop_database().await;
}
