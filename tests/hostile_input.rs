//! Hostile input on real PostgreSQL, with Rust handlers and the embedded orchestrator: queue
//! messages that cannot be decoded, task contexts over the JSON limits, claims that lapse
//! with no attempts left, messages for steps that are not ready, results over the limits.
//! Every input ends dead-lettered or archived, every claimed step gets a committed outcome.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::error::TaskerError;
use tasker_worker::limits::{MAX_JSON_BYTES, MAX_JSON_DEPTH};
use tasker_worker::messaging::{MessageClient, StepMessage, STEP_RESULTS_QUEUE};
use tasker_worker::orchestration::{create_task, register_template, Orchestrator, TaskTemplate};
use tasker_worker::testing::{
    task_request, template, wait_for, wait_settled, worker_config, TestDatabase, TestWorkflow,
};
use tasker_worker::worker::step_claim::{self, NextMessage};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// `depth` nested arrays as JSON text, far past what serde_json decodes by default (128).
fn nested_text(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Runs of each step name, and a registry whose `Echo` counts them and returns the task's
/// `n` plus its parents' results.
type Runs = Arc<parking_lot::Mutex<HashMap<String, usize>>>;

fn counting_registry() -> (Arc<InMemoryHandlerRegistry>, Runs) {
    let runs: Runs = Arc::default();
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let seen = runs.clone();
    registry.register(
        "Echo",
        handler_fn(move |ctx: StepContext| {
            *seen.lock().entry(ctx.step_name.clone()).or_default() += 1;
            async move {
                let parents: Vec<Value> = ctx
                    .dependency_results
                    .values()
                    .map(|r| r["result"].clone())
                    .collect();
                Ok(StepSuccess::new(
                    json!({"n": ctx.task_context["n"], "parents": parents}),
                ))
            }
        }),
    );
    registry.register(
        "Deep",
        handler_fn(|_ctx: StepContext| async move {
            let mut deep = json!(1);
            for _ in 0..MAX_JSON_DEPTH + 6 {
                deep = json!([deep]);
            }
            Ok(StepSuccess::new(deep))
        }),
    );
    (registry, runs)
}

/// Sends JSON text as it is (cast by PostgreSQL, never parsed here) to a queue.
async fn send_raw(pool: &sqlx::PgPool, queue: &str, text: &str) -> i64 {
    MessageClient::new(pool.clone())
        .create_queue(queue)
        .await
        .expect("queue");
    sqlx::query_scalar("SELECT tasker.pgmq_send_with_notify($1, $2::jsonb, 0)")
        .bind(queue)
        .bind(text)
        .fetch_one(pool)
        .await
        .expect("raw send")
}

async fn start_worker(config: TaskerConfig, registry: Arc<InMemoryHandlerRegistry>) -> WorkerCore {
    WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .expect("worker starts")
}

async fn register(db: &TestDatabase, yaml: &str) {
    let template = TaskTemplate::from_yaml(yaml, "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
}

/// (name, state, results, attempts, max_attempts) of each step of a task, by name.
async fn steps(pool: &sqlx::PgPool, task: Uuid) -> Vec<(String, String, Option<Value>, i32, i32)> {
    sqlx::query_as(
        "SELECT ns.name::text, tr.to_state::text, ws.results, ws.attempts, ws.max_attempts FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
         WHERE ws.task_uuid = $1 ORDER BY ns.name",
    )
    .bind(task)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn step_uuid(pool: &sqlx::PgPool, task: Uuid, name: &str) -> Uuid {
    sqlx::query_scalar(
        "SELECT ws.workflow_step_uuid FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid WHERE ws.task_uuid = $1 AND ns.name = $2",
    )
    .bind(task)
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn correlation_id(pool: &sqlx::PgPool, task: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT correlation_id FROM tasker.tasks WHERE task_uuid = $1")
        .bind(task)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// (queue, msg_id, read_ct, message, reason) of every dead letter, oldest first.
async fn dead_letters(pool: &sqlx::PgPool) -> Vec<(String, i64, i32, Option<Value>, String)> {
    sqlx::query_as("SELECT queue_name, msg_id, read_ct, message, reason FROM tasker.dead_letters ORDER BY created_at, msg_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn queue_len(pool: &sqlx::PgPool, queue: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.q_{queue}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn messages_too_deep_to_decode_are_dead_lettered_and_the_rest_of_their_read_runs() {
    let db = TestDatabase::migrated().await;
    let (registry, runs) = counting_registry();
    let queue = "worker_deep_queue";
    let mut workflows = Vec::new();
    for n in 0..3 {
        let wf = TestWorkflow::create(
            &db.pool,
            "deep",
            template("one", &[("only", "Echo", &[])]),
            json!({"n": n}),
        )
        .await;
        workflows.push(wf);
    }
    // Sent before the worker starts, so all five come back in one read: a message nesting
    // 200 levels, a real message with a deep extra key, then the three real messages.
    let deep_text = nested_text(200);
    let deep = send_raw(&db.pool, queue, &deep_text).await;
    let decorated = {
        let m = workflows[0].message("only");
        format!(
            r#"{{"task_uuid":"{}","step_uuid":"{}","correlation_id":"{}","x":{}}}"#,
            m.task_uuid,
            m.step_uuid,
            m.correlation_id,
            nested_text(150)
        )
    };
    let decorated = send_raw(&db.pool, queue, &decorated).await;
    for wf in &workflows {
        wf.enqueue("only").await;
    }
    let mut config = worker_config(&db, &["deep"]);
    config.worker.claim_batch_size = 10;
    let core = start_worker(config, registry).await;

    for wf in &workflows {
        wait_for("the step to commit", WAIT, || async {
            (wf.state("only").await == "enqueued_for_orchestration").then_some(())
        })
        .await;
        assert_eq!(wf.attempts("only").await, 1, "claimed once, never reclaimed");
    }
    let letters = wait_for("two dead letters", WAIT, || async {
        let rows = dead_letters(&db.pool).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let by_msg: HashMap<i64, _> = letters.iter().map(|l| (l.1, l)).collect();
    let (queue_name, _, read_ct, message, reason) = by_msg[&deep];
    assert_eq!(queue_name, queue);
    assert_eq!(*read_ct, 1, "dead-lettered on its first read");
    assert!(reason.contains("64 levels"), "{reason}");
    let start = message
        .as_ref()
        .and_then(Value::as_str)
        .expect("the start of its text");
    assert!(deep_text.starts_with(start) && start.len() >= 100, "{start}");
    let (_, _, _, _, reason) = by_msg[&decorated];
    assert!(reason.contains("64 levels"), "{reason}");
    assert_eq!(runs.lock().get("only"), Some(&3));
    assert_eq!(queue_len(&db.pool, queue).await, 0);
    let status = core.status().await.unwrap();
    assert!(status.running);
    assert_eq!((status.counters.dead_lettered, status.counters.reclaimed), (2, 0));
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

const ONE_STEP: &str = r#"
name: one
namespace_name: NS
version: 1.0.0
steps:
  - { name: only, handler: { callable: Echo }, retry: { max_attempts: 2, backoff_base_ms: 10 } }
"#;

const CHAIN: &str = r#"
name: chain
namespace_name: NS
version: 1.0.0
steps:
  - { name: first, handler: { callable: Echo } }
  - { name: second, handler: { callable: Echo }, dependencies: [first] }
"#;

#[tokio::test]
async fn bad_result_messages_are_dead_lettered_by_the_orchestrator_and_real_results_go_on() {
    let db = TestDatabase::migrated().await;
    register(&db, &CHAIN.replace("NS", "orchbad")).await;
    let config = worker_config(&db, &["orchbad"]);
    let orchestrator = Orchestrator::start(&config).await.unwrap();
    let deep = send_raw(&db.pool, STEP_RESULTS_QUEUE, &nested_text(300)).await;
    let not_a_step = send_raw(&db.pool, STEP_RESULTS_QUEUE, r#"{"hello": "world"}"#).await;
    let (registry, runs) = counting_registry();
    let worker = start_worker(config, registry).await;
    let task = create_task(&db.pool, &task_request("orchbad", "chain", json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");

    let letters = wait_for("two dead letters", WAIT, || async {
        let rows = dead_letters(&db.pool).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let by_msg: HashMap<i64, _> = letters.iter().map(|l| (l.1, l)).collect();
    assert_eq!(by_msg[&deep].0, STEP_RESULTS_QUEUE);
    assert!(by_msg[&deep].4.contains("64 levels"), "{}", by_msg[&deep].4);
    assert!(
        by_msg[&not_a_step].4.contains("not a step result"),
        "{}",
        by_msg[&not_a_step].4
    );
    assert_eq!(by_msg[&not_a_step].3, Some(json!({"hello": "world"})));
    assert_eq!(queue_len(&db.pool, STEP_RESULTS_QUEUE).await, 0);
    // Counted after the dead letters commit: it may trail the database by a moment.
    wait_for("two dead letters counted", WAIT, || async {
        (orchestrator.status().dead_lettered == 2).then_some(())
    })
    .await;
    let ran = runs.lock().clone();
    assert_eq!((ran["first"], ran["second"]), (1, 1));
    worker.shutdown().await.unwrap();
    let mut orchestrator = orchestrator;
    orchestrator.shutdown().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_claimed_step_whose_context_nests_too_deep_fails_as_invalid_input_and_its_task_settles() {
    let db = TestDatabase::migrated().await;
    register(&db, &ONE_STEP.replace("NS", "ctxdeep")).await;
    let config = worker_config(&db, &["ctxdeep"]);
    let task = create_task(&db.pool, &task_request("ctxdeep", "one", json!({"n": 1})))
        .await
        .unwrap();
    // Written behind create_task's back (it refuses such a context), as any other writer of
    // the tables could: 100 levels, which PostgreSQL stores and serde_json would decode.
    sqlx::query("UPDATE tasker.tasks SET context = $2::jsonb WHERE task_uuid = $1")
        .bind(task)
        .bind(format!(r#"{{"n": {}}}"#, nested_text(100)))
        .execute(&db.pool)
        .await
        .unwrap();
    let (registry, runs) = counting_registry();
    let worker = start_worker(config.clone(), registry).await;
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();

    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "blocked_by_failures");
    let rows = steps(&db.pool, task).await;
    let (_, state, results, attempts, _) = &rows[0];
    assert_eq!(state, "error");
    assert_eq!(*attempts, 1);
    let results = results.as_ref().expect("a committed failure result");
    assert_eq!(results["error"]["error_type"], "invalid_input");
    assert_eq!(results["metadata"]["retryable"], false);
    let message = results["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("task context") && message.contains("64 levels"),
        "{message}"
    );
    assert!(runs.lock().is_empty(), "the handler never ran");
    assert_eq!(queue_len(&db.pool, "worker_ctxdeep_queue").await, 0);
    let status = worker.status().await.unwrap();
    assert_eq!((status.counters.failed, status.in_flight), (1, 0));
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

#[tokio::test]
async fn create_task_refuses_a_context_over_the_limits_naming_the_limit() {
    let db = TestDatabase::migrated().await;
    register(&db, &ONE_STEP.replace("NS", "limits")).await;
    let mut at_limit = json!(1);
    for _ in 0..MAX_JSON_DEPTH {
        at_limit = json!([at_limit]);
    }
    create_task(&db.pool, &task_request("limits", "one", at_limit.clone()))
        .await
        .expect("a context at the depth limit is taken");

    let too_deep = json!({ "x": at_limit });
    let err = create_task(&db.pool, &task_request("limits", "one", too_deep))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskerError::InvalidInput(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("task context nests deeper than 64 levels"),
        "{err}"
    );

    let huge = json!({ "blob": "x".repeat(MAX_JSON_BYTES) });
    let err = create_task(&db.pool, &task_request("limits", "one", huge))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskerError::InvalidInput(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("the limit is {MAX_JSON_BYTES} bytes")),
        "{err}"
    );

    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasker.tasks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(tasks, 1, "nothing is written for a refused context");
    db.drop_database().await;
}

#[tokio::test]
async fn a_lapsed_claim_with_no_attempts_left_fails_as_max_attempts_exceeded_and_never_runs() {
    let db = TestDatabase::migrated().await;
    register(&db, &ONE_STEP.replace("NS", "lapse")).await;
    let config = worker_config(&db, &["lapse"]);
    let queue: Arc<str> = Arc::from("worker_lapse_queue");
    let task = create_task(&db.pool, &task_request("lapse", "one", json!({"n": 1})))
        .await
        .unwrap();
    // Two claims by a worker that dies at once, each under a lease of 0 s: both lapse.
    let mut lost = Vec::new();
    for _ in 0..2 {
        let read = step_claim::claim_next(&db.pool, &queue, "worker_ghost", 1, 0)
            .await
            .unwrap();
        match read.into_iter().next() {
            Some(NextMessage::Claimed { claim, .. }) => lost.push(claim.token.to_string()),
            other => panic!("expected a claim, got {other:?}"),
        }
    }
    let (registry, runs) = counting_registry();
    let worker = start_worker(config.clone(), registry).await;
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();

    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "blocked_by_failures");
    let rows = steps(&db.pool, task).await;
    let (_, state, results, attempts, max_attempts) = &rows[0];
    assert_eq!(state, "error");
    assert_eq!(
        (*attempts, *max_attempts),
        (2, 2),
        "attempts never exceed max_attempts"
    );
    let results = results.as_ref().expect("a committed failure result");
    assert_eq!(results["error"]["error_type"], "max_attempts_exceeded");
    assert_eq!(results["metadata"]["retryable"], false);
    assert_eq!(results["error"]["context"]["lost_claims"], json!(lost));
    let message = results["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&lost[0]) && message.contains(&lost[1]),
        "{message}"
    );
    assert!(runs.lock().is_empty(), "the handler never ran");
    assert_eq!(queue_len(&db.pool, "worker_lapse_queue").await, 0);
    let status = worker.status().await.unwrap();
    assert_eq!((status.counters.failed, status.counters.claimed), (1, 0));
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

#[tokio::test]
async fn only_ready_steps_run_and_other_messages_are_archived_as_out_of_order() {
    let db = TestDatabase::migrated().await;
    register(&db, &CHAIN.replace("NS", "ready")).await;
    let config = worker_config(&db, &["ready"]);
    let queue = "worker_ready_queue";
    let task = create_task(&db.pool, &task_request("ready", "chain", json!({"n": 7})))
        .await
        .unwrap();
    let other = create_task(&db.pool, &task_request("ready", "chain", json!({"n": 8})))
        .await
        .unwrap();
    let correlation = correlation_id(&db.pool, task).await;
    let first = step_uuid(&db.pool, task, "first").await;
    let second = step_uuid(&db.pool, task, "second").await;
    let message = |task_uuid, step_uuid| {
        serde_json::to_string(&StepMessage {
            task_uuid,
            step_uuid,
            correlation_id: correlation,
        })
        .unwrap()
    };
    // In the same read as the real message for `first`: `second` while it is pending (its
    // parent not complete), and `first` named as a step of the other task (twice).
    send_raw(&db.pool, queue, &message(task, second)).await;
    send_raw(&db.pool, queue, &message(other, first)).await;
    // The same in uuid forms the claim call leaves to the worker's own parser (the slow path).
    let slow = json!({
        "task_uuid": other.simple().to_string(),
        "step_uuid": first.braced().to_string(),
        "correlation_id": correlation.simple().to_string(),
    });
    send_raw(&db.pool, queue, &slow.to_string()).await;

    let (registry, runs) = counting_registry();
    let worker = start_worker(config.clone(), registry).await;
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "complete");
    assert_eq!(wait_settled(&db.pool, other, WAIT).await, "complete");
    // After the task completed: `first` again.
    send_raw(&db.pool, queue, &message(task, first)).await;
    wait_for("four out-of-order messages", WAIT, || async {
        (worker.status_now().counters.out_of_order == 4).then_some(())
    })
    .await;

    let rows = steps(&db.pool, task).await;
    assert_eq!(
        rows.iter().map(|r| (r.1.as_str(), r.3)).collect::<Vec<_>>(),
        [("complete", 1), ("complete", 1)]
    );
    let second_result = rows.iter().find(|r| r.0 == "second").unwrap().2.clone().unwrap();
    assert_eq!(
        second_result["result"]["parents"],
        json!([{"n": 7, "parents": []}]),
        "second ran after first, and saw its result"
    );
    let ran = runs.lock().clone();
    assert_eq!(
        (ran["first"], ran["second"]),
        (2, 2),
        "one run per step of the two tasks"
    );
    assert_eq!(
        queue_len(&db.pool, queue).await,
        0,
        "out-of-order messages are archived"
    );
    assert!(dead_letters(&db.pool).await.is_empty());
    let status = worker.status().await.unwrap();
    assert_eq!((status.counters.out_of_order, status.counters.claimed), (4, 4));
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_rust_handler_result_over_the_limits_is_an_invalid_result_failure() {
    let db = TestDatabase::migrated().await;
    let (registry, _) = counting_registry();
    let worker = start_worker(worker_config(&db, &["deepresult"]), registry).await;
    let wf = TestWorkflow::create(
        &db.pool,
        "deepresult",
        template("one", &[("only", "Deep", &[])]),
        json!({}),
    )
    .await;
    wf.enqueue("only").await;
    wait_for("the failure to commit", WAIT, || async {
        (wf.state("only").await == "enqueued_as_error_for_orchestration").then_some(())
    })
    .await;
    let results = wf.results("only").await.unwrap();
    assert_eq!(results["error"]["error_type"], "invalid_result");
    assert_eq!(results["metadata"]["retryable"], false);
    let message = results["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("result nests deeper than 64 levels"),
        "{message}"
    );
    worker.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_stored_failure_result_too_deep_to_decode_fails_its_step_and_the_task_settles() {
    let db = TestDatabase::migrated().await;
    register(&db, &ONE_STEP.replace("NS", "deepfail")).await;
    let config = worker_config(&db, &["deepfail"]);
    let task = create_task(&db.pool, &task_request("deepfail", "one", json!({"n": 1})))
        .await
        .unwrap();
    let step = step_uuid(&db.pool, task, "only").await;
    // Another writer stored a retryable failure whose result nests 200 levels, and sent its
    // result message; no worker runs.
    let deep = format!(
        r#"{{"success": false, "metadata": {{"retryable": true}}, "result": {}}}"#,
        nested_text(200)
    );
    sqlx::query(
        "WITH retired AS (UPDATE tasker.workflow_step_transitions SET most_recent = false \
                           WHERE workflow_step_uuid = $1 AND most_recent RETURNING sort_key) \
         INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent) \
         SELECT $2, $1, 'enqueued', 'enqueued_as_error_for_orchestration', sort_key + 1, true FROM retired",
    )
    .bind(step)
    .bind(Uuid::now_v7())
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE tasker.workflow_steps SET results = $2::jsonb, attempts = 1 WHERE workflow_step_uuid = $1",
    )
    .bind(step)
    .bind(&deep)
    .execute(&db.pool)
    .await
    .unwrap();
    let message = StepMessage {
        task_uuid: task,
        step_uuid: step,
        correlation_id: correlation_id(&db.pool, task).await,
    };
    send_raw(
        &db.pool,
        STEP_RESULTS_QUEUE,
        &serde_json::to_string(&message).unwrap(),
    )
    .await;
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();

    assert_eq!(wait_settled(&db.pool, task, WAIT).await, "blocked_by_failures");
    let state: String = sqlx::query_scalar(
        "SELECT to_state FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 AND most_recent",
    )
    .bind(step)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "error", "not retried");
    assert_eq!(queue_len(&db.pool, STEP_RESULTS_QUEUE).await, 0);
    wait_for("the failed step counted", WAIT, || async {
        (orchestrator.status().steps_failed == 1).then_some(())
    })
    .await;
    orchestrator.shutdown().await;
    db.drop_database().await;
}
