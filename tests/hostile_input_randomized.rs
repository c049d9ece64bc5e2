//! A few hundred generated hostile inputs, sent raw into a worker queue and into
//! `orchestration_step_results` while real tasks run (Rust handlers, the embedded
//! orchestrator): deep, wide, huge, wrong types, wrong uuids, not objects, ids of missing
//! steps, a step of another task, copies of real messages. Within a bounded time every input
//! ends dead-lettered or archived, every task completes with one committed result per step,
//! `attempts <= max_attempts` everywhere, and the worker keeps running.
//!
//! Seeded: the seed is printed; `TASKER_HOSTILE_SEED=<n>` runs one again.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::limits::MAX_JSON_BYTES;
use tasker_worker::messaging::{MessageClient, StepMessage, STEP_RESULTS_QUEUE};
use tasker_worker::orchestration::{create_task, register_template, Orchestrator, TaskRequest, TaskTemplate};
use tasker_worker::testing::{wait_for, worker_config, TestDatabase};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use uuid::Uuid;

/// Inputs per run, and real tasks running meanwhile.
const INPUTS: usize = 300;
const TASKS: usize = 12;
/// Everything must have settled within this.
const SETTLE: Duration = Duration::from_secs(60);

/// splitmix64: small, seedable, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            ((u128::from(self.next()) << 64) | u128::from(self.next())).to_be_bytes(),
        )
        .into_uuid()
    }
}

const DIAMOND: &str = r#"
name: diamond
namespace_name: fuzz
version: 1.0.0
steps:
  - { name: start, handler: { callable: Echo } }
  - { name: left, handler: { callable: Echo }, dependencies: [start] }
  - { name: right, handler: { callable: Echo }, dependencies: [start] }
  - { name: join, handler: { callable: Echo }, dependencies: [left, right] }
"#;

/// A real step: its task, its uuid, the task's correlation id.
type RealStep = StepMessage;

/// One hostile input (its kind, its JSON text), chosen by `rng`. The one message over the
/// size limit is sent once per run (it is 16 MiB).
fn hostile(rng: &mut Rng, real: &[RealStep], huge_sent: &mut bool) -> (&'static str, String) {
    let pick = |rng: &mut Rng| real[rng.below(real.len())];
    match rng.below(10) {
        0 => {
            let depth = 65 + rng.below(400);
            let mut open = String::new();
            let mut close = String::new();
            for _ in 0..depth {
                if rng.below(2) == 0 {
                    open.push('[');
                    close.insert(0, ']');
                } else {
                    open.push_str("{\"k\":");
                    close.insert(0, '}');
                }
            }
            ("deep", format!("{open}1{close}"))
        }
        1 => {
            let m = pick(rng);
            let depth = 65 + rng.below(200);
            let text = format!(
                r#"{{"task_uuid":"{}","step_uuid":"{}","correlation_id":"{}","extra":{}{}}}"#,
                m.task_uuid,
                m.step_uuid,
                m.correlation_id,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            ("deep with real ids", text)
        }
        2 => {
            let keys = 500 + rng.below(4000);
            let body: serde_json::Map<String, Value> =
                (0..keys).map(|i| (format!("k{i}"), json!(i))).collect();
            ("wide", Value::Object(body).to_string())
        }
        3 if !*huge_sent => {
            *huge_sent = true;
            (
                "huge",
                json!({ "blob": "x".repeat(MAX_JSON_BYTES + 16) }).to_string(),
            )
        }
        3 => (
            "large",
            json!({ "blob": "y".repeat(50_000 + rng.below(200_000)) }).to_string(),
        ),
        4 => {
            let shapes = [
                json!({"task_uuid": 5, "step_uuid": [], "correlation_id": null}),
                json!({"task_uuid": true, "step_uuid": {"a": 1}, "correlation_id": 1.5}),
                json!({"task_uuid": "x"}),
                json!({}),
            ];
            ("wrong types", shapes[rng.below(shapes.len())].to_string())
        }
        5 => {
            let m = pick(rng);
            let shapes = [
                json!({"task_uuid": "not-a-uuid", "step_uuid": m.step_uuid, "correlation_id": m.correlation_id}),
                json!({"task_uuid": m.task_uuid, "step_uuid": format!("{}0", m.step_uuid), "correlation_id": m.correlation_id}),
                json!({"task_uuid": m.task_uuid, "step_uuid": "", "correlation_id": m.correlation_id}),
            ];
            ("wrong uuids", shapes[rng.below(shapes.len())].to_string())
        }
        6 => {
            let shapes = ["1", "\"a string\"", "[]", "null", "true", "[1,2,3]", "-0.5e10"];
            ("not an object", shapes[rng.below(shapes.len())].to_string())
        }
        7 => {
            let (a, b) = (pick(rng), pick(rng));
            let body = StepMessage {
                task_uuid: if a.task_uuid == b.task_uuid {
                    rng.uuid()
                } else {
                    b.task_uuid
                },
                step_uuid: a.step_uuid,
                correlation_id: a.correlation_id,
            };
            ("another task's step", serde_json::to_string(&body).unwrap())
        }
        8 => {
            let body = StepMessage {
                task_uuid: rng.uuid(),
                step_uuid: rng.uuid(),
                correlation_id: rng.uuid(),
            };
            ("missing step", serde_json::to_string(&body).unwrap())
        }
        _ => (
            "copy of a real message",
            serde_json::to_string(&pick(rng)).unwrap(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_hostile_inputs_end_dead_lettered_or_archived_and_every_real_task_completes() {
    let seed = std::env::var("TASKER_HOSTILE_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("TASKER_HOSTILE_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("hostile input seed: {seed} (rerun with TASKER_HOSTILE_SEED={seed})");
    let mut rng = Rng(seed);

    let db = TestDatabase::migrated().await;
    register_template(&db.pool, &TaskTemplate::from_yaml(DIAMOND, "test").unwrap())
        .await
        .unwrap();
    let runs: Arc<parking_lot::Mutex<HashMap<Uuid, usize>>> = Arc::default();
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let seen = runs.clone();
    registry.register(
        "Echo",
        handler_fn(move |ctx: StepContext| {
            *seen.lock().entry(ctx.step_uuid).or_default() += 1;
            async move { Ok(StepSuccess::new(json!({"step": ctx.step_name}))) }
        }),
    );
    let mut config = worker_config(&db, &["fuzz"]);
    // Messages naming missing steps are retried until dead-lettered: short leases, few reads.
    config.worker.visibility_timeout_seconds = 1;
    config.worker.max_delivery_attempts = 2;
    config.worker.claim_batch_size = 10;
    let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(registry))
        .await
        .unwrap();
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let client = MessageClient::new(db.pool.clone());
    client.create_queue("worker_fuzz_queue").await.unwrap();

    let mut tasks = Vec::new();
    let mut real: Vec<RealStep> = Vec::new();
    let mut sent: Vec<(&'static str, i64, &'static str)> = Vec::new();
    let mut huge_sent = false;
    for i in 0..INPUTS {
        if i % (INPUTS / TASKS) == 0 && tasks.len() < TASKS {
            let task = create_task(
                &db.pool,
                &TaskRequest {
                    namespace: "fuzz".into(),
                    name: "diamond".into(),
                    version: "1.0.0".into(),
                    context: json!({"i": i}),
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
            let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
                "SELECT ws.workflow_step_uuid, t.correlation_id FROM tasker.workflow_steps ws \
                 JOIN tasker.tasks t ON t.task_uuid = ws.task_uuid WHERE ws.task_uuid = $1",
            )
            .bind(task)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            real.extend(rows.into_iter().map(|(step_uuid, correlation_id)| StepMessage {
                task_uuid: task,
                step_uuid,
                correlation_id,
            }));
            tasks.push(task);
        }
        let (kind, text) = hostile(&mut rng, &real, &mut huge_sent);
        let queue = if rng.below(3) == 0 {
            STEP_RESULTS_QUEUE
        } else {
            "worker_fuzz_queue"
        };
        let msg_id: i64 = sqlx::query_scalar("SELECT tasker.pgmq_send_with_notify($1, $2::jsonb, 0)")
            .bind(queue)
            .bind(&text)
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("sending a {kind} input (seed {seed}): {e}"));
        sent.push((queue, msg_id, kind));
    }

    let queued = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM pgmq.q_{table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    wait_for(
        &format!("every task to settle and both queues to empty (seed {seed})"),
        SETTLE,
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tasker.task_transitions WHERE task_uuid = ANY($1) AND most_recent \
                 AND to_state NOT IN ('complete', 'blocked_by_failures')",
            )
            .bind(&tasks)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            let left = queued("worker_fuzz_queue").await + queued("orchestration_step_results").await;
            (open == 0 && left == 0).then_some(())
        },
    )
    .await;

    let states: Vec<String> = sqlx::query_scalar(
        "SELECT to_state FROM tasker.task_transitions WHERE task_uuid = ANY($1) AND most_recent",
    )
    .bind(&tasks)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(states.iter().all(|s| s == "complete"), "seed {seed}: {states:?}");
    let over: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tasker.workflow_steps WHERE attempts > max_attempts")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(over, 0, "seed {seed}: attempts above max_attempts");
    // One committed result per step: one enqueued_for_orchestration transition each, and one run.
    let results: Vec<(Uuid, i64, i32)> = sqlx::query_as(
        "SELECT ws.workflow_step_uuid, count(tr.*) FILTER (WHERE tr.to_state = 'enqueued_for_orchestration'), ws.attempts \
         FROM tasker.workflow_steps ws JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid \
         WHERE ws.task_uuid = ANY($1) GROUP BY ws.workflow_step_uuid, ws.attempts",
    )
    .bind(&tasks)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(results.len(), TASKS * 4);
    let ran = runs.lock().clone();
    for (step, committed, attempts) in results {
        assert_eq!(
            (committed, attempts, ran.get(&step).copied()),
            (1, 1, Some(1)),
            "seed {seed}: step {step}"
        );
    }
    // Every input was archived, dead-lettered ones included.
    for (queue, msg_id, kind) in &sent {
        let archived: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM pgmq.a_{queue} WHERE msg_id = $1)"
        ))
        .bind(msg_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            archived,
            "seed {seed}: the {kind} input {msg_id} on {queue} was not archived"
        );
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM tasker.dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let status = worker.status().await.unwrap();
    println!(
        "seed {seed}: {} inputs, {dead} dead-lettered, {} out of order, {} duplicates; orchestrator {:?}",
        sent.len(),
        status.counters.out_of_order,
        status.counters.duplicates,
        orchestrator.status()
    );
    assert!(status.running, "seed {seed}: the worker stopped");
    assert!(dead > 0);
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}
