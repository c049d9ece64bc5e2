//! Checkpoints on real PostgreSQL: saved only under the step's current claim, history and size
//! bounded, carried by the claim (and the slow hydration path) to a reclaimed step, and the
//! FFI channel's per-claim rules (coalescing, yield bound, finished events).

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::CheckpointsConfig;
use tasker_worker::messaging::client;
use tasker_worker::testing::{template, wait_for, worker_config, TestDatabase, TestWorkflow};
use tasker_worker::worker::checkpoints::{self, CheckpointData, CheckpointError};
use tasker_worker::worker::hydration;
use tasker_worker::worker::step_claim::{self, Claim, NextMessage};
use tasker_worker::worker::{DispatchMode, FfiCompletion, StepContext, WorkerCore};

const WAIT: Duration = Duration::from_secs(20);

fn limits() -> CheckpointsConfig {
    CheckpointsConfig {
        max_bytes: 1024 * 1024,
        min_interval_ms: 0,
        max_history: 100,
        max_yields_per_claim: 100,
    }
}

fn data(cursor: Value, items: u64, accumulated: Value) -> CheckpointData {
    CheckpointData {
        cursor,
        items_processed: items,
        accumulated_results: Some(accumulated),
    }
}

async fn workflow(db: &TestDatabase, ns: &str) -> TestWorkflow {
    TestWorkflow::create(
        &db.pool,
        ns,
        template("ckpt_task", &[("long", "Long", &[])]),
        json!({}),
    )
    .await
}

/// Claims the first message of `ns`'s queue (a claim or a reclaim).
async fn claim(db: &TestDatabase, ns: &str) -> (Claim, StepContext) {
    let queue: Arc<str> = format!("worker_{ns}_queue").into();
    let rows = step_claim::claim_next(&db.pool, &queue, "test-worker", 1, 30)
        .await
        .expect("claim_next");
    match rows.into_iter().next() {
        Some(NextMessage::Claimed { claim, context }) => (claim, context.expect("hydrated")),
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// As if the lease lapsed: the message is visible again.
async fn lapse(db: &TestDatabase, ns: &str, claim: &Claim) {
    client::set_vt(&db.pool, &format!("worker_{ns}_queue"), &[claim.msg_id], 0)
        .await
        .expect("set_vt");
}

async fn stored(db: &TestDatabase, wf: &TestWorkflow) -> Option<Value> {
    sqlx::query_scalar("SELECT checkpoint FROM tasker.workflow_steps WHERE workflow_step_uuid = $1")
        .bind(wf.step("long"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_save_under_the_current_claim_is_stored_in_tasker_cores_shape() {
    let db = TestDatabase::migrated().await;
    let wf = workflow(&db, "ckpt_a").await;
    wf.enqueue("long").await;
    let (claim, context) = claim(&db, "ckpt_a").await;
    assert_eq!(context.checkpoint, None, "a new step has no checkpoint");

    let saved = checkpoints::save(
        &db.pool,
        claim.step_uuid,
        claim.token,
        &data(json!(25), 25, json!({"total": 300})),
        &limits(),
    )
    .await
    .expect("saved");
    assert_eq!(stored(&db, &wf).await.as_ref(), Some(&saved));
    assert_eq!(saved["cursor"], json!(25));
    assert_eq!(saved["items_processed"], json!(25));
    assert_eq!(saved["accumulated_results"], json!({"total": 300}));
    assert!(saved["timestamp"].as_str().unwrap().ends_with('Z'), "{saved}");
    assert_eq!(saved["history"].as_array().unwrap().len(), 1);
    assert_eq!(saved["history"][0]["cursor"], json!(25));

    let second = checkpoints::save(
        &db.pool,
        claim.step_uuid,
        claim.token,
        &data(json!(50), 50, json!({"total": 900})),
        &limits(),
    )
    .await
    .expect("saved");
    let cursors: Vec<Value> = second["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cursor"].clone())
        .collect();
    assert_eq!(cursors, vec![json!(25), json!(50)]);
    db.drop_database().await;
}

#[tokio::test]
async fn a_stale_claim_is_refused_and_changes_nothing_and_the_reclaim_carries_the_checkpoint() {
    let db = TestDatabase::migrated().await;
    let wf = workflow(&db, "ckpt_b").await;
    wf.enqueue("long").await;
    let (first, _) = claim(&db, "ckpt_b").await;
    let saved = checkpoints::save(
        &db.pool,
        first.step_uuid,
        first.token,
        &data(json!({"offset": 10}), 10, json!([1, 2])),
        &limits(),
    )
    .await
    .expect("saved");

    lapse(&db, "ckpt_b", &first).await;
    let (second, context) = claim(&db, "ckpt_b").await;
    assert_eq!(second.reclaimed_from, Some(first.token), "a reclaim");
    assert_eq!(
        context.checkpoint.as_ref(),
        Some(&saved),
        "the reclaim resumes from the checkpoint"
    );

    let refused = checkpoints::save(
        &db.pool,
        first.step_uuid,
        first.token,
        &data(json!({"offset": 99}), 99, json!([])),
        &limits(),
    )
    .await;
    assert!(
        matches!(refused, Err(CheckpointError::StaleClaim(_))),
        "{refused:?}"
    );
    assert_eq!(stored(&db, &wf).await.as_ref(), Some(&saved), "nothing changed");

    // The new claim saves; the slow hydration path reads the checkpoint too.
    let newer = checkpoints::save(
        &db.pool,
        second.step_uuid,
        second.token,
        &data(json!({"offset": 20}), 20, json!([1, 2, 3])),
        &limits(),
    )
    .await
    .expect("saved by the current claim");
    let hydrated = hydration::hydrate(&db.pool, &[wf.message("long")]).await.unwrap();
    let context = hydrated[&wf.step("long")].as_ref().expect("hydrated");
    assert_eq!(context.checkpoint.as_ref(), Some(&newer));
    db.drop_database().await;
}

#[tokio::test]
async fn a_claim_committed_or_for_another_step_cannot_save() {
    let db = TestDatabase::migrated().await;
    let wf = workflow(&db, "ckpt_c").await;
    wf.enqueue("long").await;
    let (claim, _) = claim(&db, "ckpt_c").await;
    let other = workflow(&db, "ckpt_c").await;
    let wrong_step = checkpoints::save(
        &db.pool,
        other.step("long"),
        claim.token,
        &data(json!(1), 1, json!(1)),
        &limits(),
    )
    .await;
    assert!(
        matches!(wrong_step, Err(CheckpointError::StaleClaim(_))),
        "{wrong_step:?}"
    );
    wf.set_state("long", "enqueued_for_orchestration").await;
    let after = checkpoints::save(
        &db.pool,
        claim.step_uuid,
        claim.token,
        &data(json!(1), 1, json!(1)),
        &limits(),
    )
    .await;
    assert!(matches!(after, Err(CheckpointError::StaleClaim(_))), "{after:?}");
    assert_eq!(stored(&db, &wf).await, None);
    db.drop_database().await;
}

#[tokio::test]
async fn the_history_keeps_the_newest_max_history_entries() {
    let db = TestDatabase::migrated().await;
    let wf = workflow(&db, "ckpt_d").await;
    wf.enqueue("long").await;
    let (claim, _) = claim(&db, "ckpt_d").await;
    let limits = CheckpointsConfig {
        max_history: 3,
        ..limits()
    };
    let mut last = Value::Null;
    for n in 1..=7u64 {
        last = checkpoints::save(
            &db.pool,
            claim.step_uuid,
            claim.token,
            &data(json!(n), n, json!(n)),
            &limits,
        )
        .await
        .expect("saved");
    }
    let cursors: Vec<Value> = last["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cursor"].clone())
        .collect();
    assert_eq!(cursors, vec![json!(5), json!(6), json!(7)]);
    db.drop_database().await;
}

#[tokio::test]
async fn over_max_bytes_is_refused_and_history_is_trimmed_to_fit() {
    let db = TestDatabase::migrated().await;
    let wf = workflow(&db, "ckpt_e").await;
    wf.enqueue("long").await;
    let (claim, _) = claim(&db, "ckpt_e").await;
    let limits = CheckpointsConfig {
        max_bytes: 1024,
        ..limits()
    };
    let big = data(json!(1), 1, json!("x".repeat(2000)));
    let refused = checkpoints::save(&db.pool, claim.step_uuid, claim.token, &big, &limits).await;
    match refused {
        Err(CheckpointError::Limit(message)) => {
            assert!(message.contains("worker.checkpoints.max_bytes"), "{message}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    assert_eq!(stored(&db, &wf).await, None, "nothing saved");

    // A 200-byte cursor fits, but not 100 of them in the history: the oldest are dropped.
    for n in 0..6 {
        let cursor = json!(format!("{n}{}", "c".repeat(200)));
        let saved = checkpoints::save(
            &db.pool,
            claim.step_uuid,
            claim.token,
            &data(cursor.clone(), n, json!(n)),
            &limits,
        )
        .await
        .expect("fits with a shorter history");
        assert!(
            saved.to_string().len() <= 1024,
            "{} bytes",
            saved.to_string().len()
        );
        let history = saved["history"].as_array().unwrap();
        assert_eq!(
            history.last().unwrap()["cursor"],
            cursor,
            "the newest entry is kept"
        );
    }
    let history_len = stored(&db, &wf).await.unwrap()["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(history_len < 6, "history was trimmed to fit: {history_len}");

    // The cursor alone fits the pre-check but not with its history entry: refused in SQL.
    let near = data(json!("y".repeat(700)), 1, json!(null));
    let refused = checkpoints::save(&db.pool, claim.step_uuid, claim.token, &near, &limits).await;
    assert!(matches!(refused, Err(CheckpointError::Limit(_))), "{refused:?}");
    db.drop_database().await;
}

/// The FFI channel of a real worker: per-claim coalescing, the yield bound, finished events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ffi_channel_saves_coalesces_bounds_yields_and_refuses_finished_events() {
    let db = TestDatabase::migrated().await;
    let mut config = worker_config(&db, &["ckpt_f"]);
    config.worker.checkpoints.min_interval_ms = 60_000;
    config.worker.checkpoints.max_yields_per_claim = 2;
    let core = WorkerCore::start(config, DispatchMode::Ffi)
        .await
        .expect("worker starts");
    let channel = core.ffi_channel().expect("ffi channel").clone();
    let wf = workflow(&db, "ckpt_f").await;
    wf.enqueue("long").await;

    let event = {
        let channel = channel.clone();
        tokio::task::spawn_blocking(move || channel.next_step(WAIT))
            .await
            .unwrap()
            .expect("a step")
    };
    let id = event.event_id;
    let call = |d: CheckpointData, yielded: bool| {
        let channel = channel.clone();
        tokio::task::spawn_blocking(move || channel.checkpoint(id, d, yielded))
    };

    let first = call(data(json!(1), 1, json!(1)), false)
        .await
        .unwrap()
        .expect("saved");
    assert!(first.saved);
    assert_eq!(stored(&db, &wf).await.as_ref(), Some(&first.checkpoint));
    // Within min_interval: coalesced, kept in memory, not written.
    let second = call(data(json!(2), 2, json!(2)), false)
        .await
        .unwrap()
        .expect("coalesced");
    assert!(!second.saved);
    assert_eq!(second.checkpoint["cursor"], json!(2));
    assert_eq!(stored(&db, &wf).await.unwrap()["cursor"], json!(1));

    call(data(json!(3), 3, json!(3)), true)
        .await
        .unwrap()
        .expect("yield 1");
    call(data(json!(4), 4, json!(4)), true)
        .await
        .unwrap()
        .expect("yield 2");
    let third = call(data(json!(5), 5, json!(5)), true).await.unwrap();
    match third {
        Err(CheckpointError::Limit(message)) => {
            assert!(
                message.contains("worker.checkpoints.max_yields_per_claim"),
                "{message}"
            )
        }
        other => panic!("expected the yield bound, got {other:?}"),
    }

    let completion = FfiCompletion {
        success: true,
        result: json!({"done": true}),
        metadata: Default::default(),
        error: None,
    };
    channel.complete(id, completion).expect("completed");
    let late = call(data(json!(6), 6, json!(6)), false).await.unwrap();
    assert!(matches!(late, Err(CheckpointError::StaleClaim(_))), "{late:?}");

    wait_for("the step's result", WAIT, || async {
        (wf.state("long").await == "enqueued_for_orchestration").then_some(())
    })
    .await;
    assert_eq!(
        stored(&db, &wf).await.unwrap()["cursor"],
        json!(1),
        "the checkpoint survives completion"
    );
    core.shutdown().await.expect("shutdown");
    db.drop_database().await;
}

#[test]
fn the_limits_default_as_documented_and_a_bad_value_fails_at_load_naming_the_key() {
    use tasker_worker::config::TaskerConfig;
    let defaults = TaskerConfig::default().worker.checkpoints;
    assert_eq!(
        defaults,
        CheckpointsConfig {
            max_bytes: 1024 * 1024,
            min_interval_ms: 100,
            max_history: 100,
            max_yields_per_claim: 10_000,
        }
    );
    for (key, bad) in [
        ("worker.checkpoints.max_bytes", 10),
        ("worker.checkpoints.max_history", 0),
        ("worker.checkpoints.max_yields_per_claim", 0),
        ("worker.checkpoints.min_interval_ms", 3_600_001),
    ] {
        let overrides =
            TaskerConfig::overrides_from_dotted([(key.to_string(), toml::Value::Integer(bad))]).unwrap();
        let err = TaskerConfig::load_from(None, &|_| None, &overrides).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

/// Like the other worker functions (sql/functions/worker_claim.sql explains why).
#[tokio::test]
async fn the_save_function_runs_with_generic_index_plans() {
    let db = TestDatabase::migrated().await;
    let config: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(proconfig) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname = 'tasker' AND p.proname = 'worker_save_checkpoint'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for setting in ["plan_cache_mode=force_generic_plan", "enable_seqscan=off"] {
        assert!(
            config.iter().any(|c| c == setting),
            "{setting} missing from {config:?}"
        );
    }
    db.drop_database().await;
}
