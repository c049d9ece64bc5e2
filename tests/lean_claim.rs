//! The lease-only claim (`worker.lean_claim = true`, issue 19) keeps every guarantee of the
//! transition claim: the claim writes only the step row; the result commits durably with the
//! `in_progress` and `enqueued_for_orchestration` transitions the orchestrator reads; the
//! message is archived only with the result; a stale claim's late commit changes nothing; a
//! lapsed lease is reclaimed; a step that crashes its worker every time runs out of attempts.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::{AckMode, TaskerConfig};
use tasker_worker::messaging::StepMessage;
use tasker_worker::testing::{template, wait_for, worker_config, TestDatabase, TestWorkflow};
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

fn lean_config(db: &TestDatabase, ns: &str) -> TaskerConfig {
    let mut config = worker_config(db, &[ns]);
    config.worker.lean_claim = true;
    config
}

async fn start(config: TaskerConfig, registry: Arc<InMemoryHandlerRegistry>) -> WorkerCore {
    WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .expect("worker starts")
}

async fn one_step(db: &TestDatabase, ns: &str) -> TestWorkflow {
    TestWorkflow::create(&db.pool, ns, template("one", &[("only", "Gate", &[])]), json!({})).await
}

fn blocking_registry(
    gate: Arc<Notify>,
    runs: Arc<AtomicUsize>,
    label: &'static str,
) -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Gate",
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            runs.fetch_add(1, Ordering::SeqCst);
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

async fn wait_state(wf: &TestWorkflow, state: &str) {
    wait_for(&format!("step only to reach {state}"), WAIT, || async {
        (wf.state("only").await == state).then_some(())
    })
    .await
}

/// (in_process, attempts, number of transitions) of the step.
async fn step_row(db: &TestDatabase, wf: &TestWorkflow) -> (bool, i32, i64) {
    sqlx::query_as(
        "SELECT s.in_process, coalesce(s.attempts, 0), \
                (SELECT count(*) FROM tasker.workflow_step_transitions t WHERE t.workflow_step_uuid = s.workflow_step_uuid) \
           FROM tasker.workflow_steps s WHERE s.workflow_step_uuid = $1",
    )
    .bind(wf.step("only"))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn wait_running(db: &TestDatabase, wf: &TestWorkflow, attempts: i32) {
    wait_for(&format!("attempt {attempts} to be claimed"), WAIT, || async {
        let (in_process, now, _) = step_row(db, wf).await;
        (in_process && now == attempts).then_some(())
    })
    .await
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

async fn orchestration_messages(db: &TestDatabase) -> Vec<StepMessage> {
    let rows: Vec<Value> =
        sqlx::query_scalar("SELECT message FROM pgmq.q_orchestration_step_results ORDER BY msg_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

#[tokio::test]
async fn the_claim_writes_only_the_step_row_and_the_commit_writes_the_rows_the_orchestrator_reads() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let core = start(
        lean_config(&db, "lean"),
        blocking_registry(gate.clone(), runs.clone(), "w"),
    )
    .await;
    let wf = one_step(&db, "lean").await;
    let msg_id = wf.enqueue("only").await;

    wait_running(&db, &wf, 1).await;
    assert_eq!(wf.state("only").await, "enqueued", "no transition while it runs");
    assert_eq!(
        step_row(&db, &wf).await,
        (true, 1, 2),
        "pending and enqueued only"
    );

    gate.notify_one();
    wait_state(&wf, "enqueued_for_orchestration").await;
    let transitions = wf.transitions("only").await;
    let states: Vec<&str> = transitions.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        states,
        ["pending", "enqueued", "in_progress", "enqueued_for_orchestration"]
    );
    let claim = &transitions[2].1;
    assert_eq!(claim["event"], "start");
    assert_eq!(claim["worker_id"], core.worker_id());
    assert_eq!(claim["queue_name"], "worker_lean_queue");
    assert_eq!(claim["msg_id"], msg_id.to_string());
    assert_eq!(claim["read_ct"], 1);
    assert_eq!(
        claim["correlation_id"],
        wf.message("only").correlation_id.to_string()
    );
    let done = &transitions[3].1;
    assert_eq!(done["claim"].as_str(), Some(claim_uuid(&db, &wf).await.as_str()));
    assert!(
        done["worker_uuid"].is_string() && done["correlation_id"].is_string(),
        "{done}"
    );
    // Sort keys 1..4, the result's transition the only most recent one.
    let keys: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT sort_key, most_recent FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 ORDER BY sort_key",
    )
    .bind(wf.step("only"))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(keys, [(1, false), (2, false), (3, false), (4, true)]);
    assert_eq!(step_row(&db, &wf).await, (false, 1, 4));
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "w");
    assert_eq!(orchestration_messages(&db).await, vec![wf.message("only")]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgmq.q_worker_lean_queue").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgmq.a_worker_lean_queue").await,
        1
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

async fn claim_uuid(db: &TestDatabase, wf: &TestWorkflow) -> String {
    sqlx::query_scalar(
        "SELECT workflow_step_transition_uuid::text FROM tasker.workflow_step_transitions \
          WHERE workflow_step_uuid = $1 AND to_state = 'in_progress'",
    )
    .bind(wf.step("only"))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn two_lean_workers_racing_on_duplicate_messages_run_and_commit_each_step_once() {
    let db = TestDatabase::migrated().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let registry = || {
        let registry = Arc::new(InMemoryHandlerRegistry::new());
        let runs = runs.clone();
        registry.register(
            "Gate",
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
    let a = start(lean_config(&db, "race"), registry()).await;
    let b = start(lean_config(&db, "race"), registry()).await;
    let mut workflows = Vec::new();
    for _ in 0..20 {
        let wf = one_step(&db, "race").await;
        wf.enqueue("only").await;
        wf.send("only").await;
        wf.send("only").await;
        workflows.push(wf);
    }
    for wf in &workflows {
        wait_state(wf, "enqueued_for_orchestration").await;
    }
    wait_for("all messages handled", WAIT, || async {
        (count(&db, "SELECT count(*) FROM pgmq.q_worker_race_queue").await == 0).then_some(())
    })
    .await;
    for wf in &workflows {
        let states: Vec<String> = wf.transitions("only").await.into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            states,
            ["pending", "enqueued", "in_progress", "enqueued_for_orchestration"]
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 20, "each step ran once");
    assert_eq!(orchestration_messages(&db).await.len(), 20);
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

#[tokio::test]
async fn a_lapsed_lease_is_reclaimed_and_the_late_result_of_the_first_claim_changes_nothing() {
    let db = TestDatabase::migrated().await;
    let config = lean_config(&db, "late");
    let gate = Arc::new(Notify::new());
    let slow = start(
        config.clone(),
        blocking_registry(gate.clone(), Arc::new(AtomicUsize::new(0)), "slow"),
    )
    .await;
    let wf = one_step(&db, "late").await;
    wf.enqueue("only").await;
    wait_running(&db, &wf, 1).await;

    // The slow worker stalls past its lease; another worker reads the message again.
    slow.quiet_settled().await;
    sqlx::query("UPDATE pgmq.q_worker_late_queue SET vt = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let other = start(config, quick_registry("other")).await;
    wait_state(&wf, "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "other");
    assert_eq!(wf.attempts("only").await, 2, "the lapsed attempt counts");
    let transitions = wf.transitions("only").await;
    assert_eq!(transitions.len(), 4, "{transitions:?}");
    assert_eq!(transitions[2].1["event"], "reclaim");
    assert_eq!(transitions[2].1["read_ct"], 2);
    assert_eq!(other.status().await.unwrap().counters.reclaimed, 1);

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
    assert_eq!(wf.transitions("only").await.len(), 4);
    assert_eq!(orchestration_messages(&db).await.len(), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgmq.a_worker_late_queue").await,
        1
    );
    slow.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_result_for_a_step_moved_while_it_ran_changes_nothing_and_keeps_the_message() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Notify::new());
    let core = start(
        lean_config(&db, "moved"),
        blocking_registry(gate.clone(), Arc::new(AtomicUsize::new(0)), "w"),
    )
    .await;
    let wf = one_step(&db, "moved").await;
    wf.enqueue("only").await;
    wait_running(&db, &wf, 1).await;
    // As an operator's cancel would: a new transition while the handler runs.
    wf.set_state("only", "cancelled").await;
    gate.notify_one();
    wait_for("the stale completion", WAIT, || async {
        (core.status().await.unwrap().counters.stale_completions == 1).then_some(())
    })
    .await;
    assert_eq!(wf.state("only").await, "cancelled");
    assert!(wf.results("only").await.is_none());
    assert!(orchestration_messages(&db).await.is_empty());
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgmq.a_worker_moved_queue").await,
        0,
        "not acked"
    );
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_step_that_crashes_its_worker_every_time_runs_out_of_attempts() {
    let db = TestDatabase::migrated().await;
    let mut config = lean_config(&db, "crash");
    config.worker.visibility_timeout_seconds = 1;
    let wf = one_step(&db, "crash").await;
    sqlx::query("UPDATE tasker.workflow_steps SET max_attempts = 2 WHERE workflow_step_uuid = $1")
        .bind(wf.step("only"))
        .execute(&db.pool)
        .await
        .unwrap();
    wf.enqueue("only").await;
    for attempt in 1..=2 {
        let runs = Arc::new(AtomicUsize::new(0));
        let dying = start(
            config.clone(),
            blocking_registry(Arc::new(Notify::new()), runs.clone(), "dying"),
        )
        .await;
        wait_running(&db, &wf, attempt).await;
        wait_for("the handler to start", WAIT, || async {
            (runs.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        drop(dying); // no shutdown: tasks aborted, leases not released
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let last = start(
        config,
        blocking_registry(Arc::new(Notify::new()), runs.clone(), "last"),
    )
    .await;
    wait_state(&wf, "enqueued_as_error_for_orchestration").await;
    let results = wf.results("only").await.unwrap();
    assert_eq!(
        results["error"]["error_type"], "max_attempts_exceeded",
        "{results}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "never run again");
    assert_eq!(wf.attempts("only").await, 2);
    assert!(!step_row(&db, &wf).await.0, "in_process cleared");
    last.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn graceful_shutdown_releases_a_lean_claim_and_the_next_worker_reclaims_it() {
    let db = TestDatabase::migrated().await;
    let mut config = lean_config(&db, "release");
    config.worker.shutdown_timeout_ms = 300;
    let gate = Arc::new(Notify::new());
    let first = start(
        config,
        blocking_registry(gate, Arc::new(AtomicUsize::new(0)), "first"),
    )
    .await;
    let wf = one_step(&db, "release").await;
    wf.enqueue("only").await;
    wait_running(&db, &wf, 1).await;
    first.shutdown().await.unwrap();
    let second = start(lean_config(&db, "release"), quick_registry("second")).await;
    wait_state(&wf, "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "second");
    assert_eq!(wf.attempts("only").await, 2);
    second.shutdown().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn with_ack_mode_delete_a_committed_result_deletes_its_message_and_archives_nothing() {
    let db = TestDatabase::migrated().await;
    let mut config = lean_config(&db, "del");
    config.worker.ack_mode = AckMode::Delete;
    let core = start(config, quick_registry("w")).await;
    let wf = one_step(&db, "del").await;
    wf.enqueue("only").await;
    wait_state(&wf, "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "w");
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgmq.q_worker_del_queue").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgmq.a_worker_del_queue").await,
        0
    );
    assert_eq!(orchestration_messages(&db).await, vec![wf.message("only")]);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}

#[test]
fn ack_mode_delete_without_lean_claim_fails_at_load_naming_the_key() {
    let overrides: toml::Table = toml::from_str("[worker]\nack_mode = \"delete\"\n").unwrap();
    let err = TaskerConfig::load_from(None, &|_| None, &overrides)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("worker.ack_mode") && err.contains("lean_claim"),
        "{err}"
    );
    let overrides: toml::Table =
        toml::from_str("[worker]\nack_mode = \"delete\"\nlean_claim = true\n").unwrap();
    let config = TaskerConfig::load_from(None, &|_| None, &overrides).unwrap();
    assert_eq!(config.worker.ack_mode, AckMode::Delete);
}

#[tokio::test]
async fn a_step_moved_and_enqueued_again_after_a_lean_claim_is_claimed_anew_not_taken_for_a_duplicate() {
    let db = TestDatabase::migrated().await;
    let gate = Arc::new(Notify::new());
    let stalled = start(
        lean_config(&db, "again"),
        blocking_registry(gate.clone(), Arc::new(AtomicUsize::new(0)), "stalled"),
    )
    .await;
    let wf = one_step(&db, "again").await;
    wf.enqueue("only").await;
    wait_running(&db, &wf, 1).await;
    stalled.quiet_settled().await;
    // An operator cancels the running step, then sends it again (in_process is still true).
    wf.set_state("only", "cancelled").await;
    wf.set_state("only", "enqueued").await;
    wf.send("only").await;
    let fresh = start(lean_config(&db, "again"), quick_registry("fresh")).await;
    wait_state(&wf, "enqueued_for_orchestration").await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "fresh");
    assert_eq!(fresh.status().await.unwrap().counters.duplicates, 0);
    gate.notify_one();
    wait_for("the stale completion", WAIT, || async {
        (stalled.status().await.unwrap().counters.stale_completions == 1).then_some(())
    })
    .await;
    assert_eq!(wf.results("only").await.unwrap()["result"]["by"], "fresh");
    stalled.shutdown().await.unwrap();
    fresh.shutdown().await.unwrap();
    db.drop_database().await;
}
