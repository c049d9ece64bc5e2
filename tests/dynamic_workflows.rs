//! Dynamic workflows through the embedded orchestrator, with Rust handlers on real
//! PostgreSQL: decision points (each branch, no branch, nested, the convergence's
//! intersection rule), batch fan-out (1,000 rows in 5 workers, zero rows, a worker retried),
//! outcomes that cannot be applied (each fails its deciding step), replays and two
//! orchestrators on one result, template validation and the initial step set.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::messaging::{MessageClient, StepFailure, StepMessage, STEP_RESULTS_QUEUE};
use tasker_worker::orchestration::{create_task, register_template, Orchestrator, TaskTemplate};
use tasker_worker::testing::{task_request, wait_for, wait_settled, worker_config, TestDatabase};
use tasker_worker::worker::{
    handler_fn, DispatchMode, InMemoryHandlerRegistry, StepContext, StepSuccess, WorkerCore,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

const ROUTE: &str = r#"
name: route
namespace_name: NS
version: 1.0.0
steps:
  - { name: intake, handler: { callable: Leaf } }
  - { name: classify, type: decision, dependencies: [intake], handler: { callable: Decide } }
  - { name: fast_track, dependencies: [classify], handler: { callable: Leaf } }
  - { name: committee, dependencies: [classify], handler: { callable: Leaf } }
  - { name: close_out, type: deferred_convergence, dependencies: [fast_track, committee], handler: { callable: Close } }
"#;

const NESTED: &str = r#"
name: nested
namespace_name: NS
version: 1.0.0
steps:
  - { name: start, handler: { callable: Leaf } }
  - { name: outer, type: decision, dependencies: [start], handler: { callable: Decide } }
  - { name: a, dependencies: [outer], handler: { callable: Leaf } }
  - { name: inner, step_type: decision, dependencies: [outer], handler: { callable: Decide } }
  - { name: b1, dependencies: [inner], handler: { callable: Leaf } }
  - { name: b2, dependencies: [inner], handler: { callable: Leaf } }
  - { name: merge, type: deferred_convergence, dependencies: [a, b1, b2], handler: { callable: Close } }
"#;

const BATCH: &str = r#"
name: batch
namespace_name: NS
version: 1.0.0
steps:
  - { name: scan, type: batchable, handler: { callable: Scan, initialization: { worker_template_name: slice } } }
  - name: slice
    type: batch_worker
    dependencies: [scan]
    handler: { callable: Slice, initialization: { table: rows } }
    retry: { max_attempts: 3, backoff_base_ms: 0, max_backoff_ms: 0 }
    batch_config: { worker_template: slice, batch_size: 200, cursor_field: row_id, failure_strategy: fail_fast }
  - { name: total, type: deferred_convergence, dependencies: [slice], handler: { callable: Total } }
  - { name: report, dependencies: [total], handler: { callable: Leaf } }
"#;

/// Handlers. Leaf: its own name. Decide: the task context's entry under its step name: an
/// array of names (create_steps), "none" (no_branches), or `{"result": ...}` returned as the
/// whole result. Close: the sorted names of its dependency results. Scan: `rows` rows in
/// `workers` batches (or the context's `scan_result` verbatim). Slice: the sum of its rows'
/// values (row i has value i + 1); fails once when its batch_id is the context's
/// `flaky_batch`. Total: the sum of every `slice_*` result.
fn registry() -> (Arc<InMemoryHandlerRegistry>, Arc<Mutex<HashMap<String, usize>>>) {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = |runs: &Arc<Mutex<HashMap<String, usize>>>, ctx: &StepContext| -> usize {
        let mut runs = runs.lock().unwrap();
        let n = runs
            .entry(format!("{}/{}", ctx.task_uuid, ctx.step_name))
            .or_default();
        *n += 1;
        *n
    };
    let r = runs.clone();
    registry.register(
        "Leaf",
        handler_fn(move |ctx: StepContext| {
            counted(&r, &ctx);
            async move { Ok(StepSuccess::new(json!(ctx.step_name))) }
        }),
    );
    let r = runs.clone();
    registry.register(
        "Decide",
        handler_fn(move |ctx: StepContext| {
            counted(&r, &ctx);
            async move {
                let choice = ctx.task_context[ctx.step_name.as_str()].clone();
                let result = match choice {
                    Value::String(s) if s == "none" => json!({"decision_point_outcome": {"type": "no_branches"}}),
                    Value::Array(names) => {
                        json!({"decision_point_outcome": {"type": "create_steps", "step_names": names}, "why": "test"})
                    }
                    other => other["result"].clone(),
                };
                Ok(StepSuccess::new(result))
            }
        }),
    );
    let r = runs.clone();
    registry.register(
        "Close",
        handler_fn(move |ctx: StepContext| {
            counted(&r, &ctx);
            async move {
                let mut names: Vec<String> = ctx.dependency_results.keys().cloned().collect();
                names.sort();
                Ok(StepSuccess::new(json!(names)))
            }
        }),
    );
    let r = runs.clone();
    registry.register(
        "Scan",
        handler_fn(move |ctx: StepContext| {
            counted(&r, &ctx);
            async move {
                if !ctx.task_context["scan_result"].is_null() {
                    return Ok(StepSuccess::new(ctx.task_context["scan_result"].clone()));
                }
                let rows = ctx.task_context["rows"].as_u64().unwrap();
                let workers = ctx.task_context["workers"].as_u64().unwrap();
                if rows == 0 {
                    return Ok(StepSuccess::new(json!({"batch_processing_outcome": {"type": "no_batches"}, "reason": "empty"})));
                }
                let per = rows.div_ceil(workers);
                let configs: Vec<Value> = (0..workers)
                    .map(|i| {
                        let start = i * per;
                        let end = (start + per).min(rows);
                        json!({"batch_id": format!("{:03}", i + 1), "start_cursor": start, "end_cursor": end, "batch_size": end - start})
                    })
                    .collect();
                Ok(StepSuccess::new(json!({"batch_processing_outcome": {
                    "type": "create_batches", "worker_template_name": "slice", "worker_count": workers,
                    "total_items": rows, "cursor_configs": configs}})))
            }
        }),
    );
    let r = runs.clone();
    registry.register(
        "Slice",
        handler_fn(move |ctx: StepContext| {
            let run = counted(&r, &ctx);
            async move {
                let cursor = &ctx.inputs["cursor"];
                if ctx.task_context["flaky_batch"] == cursor["batch_id"] && run == 1 {
                    return Err(StepFailure::new("flaky", "first try fails", true));
                }
                let (start, end) = (cursor["start_cursor"].as_u64().unwrap(), cursor["end_cursor"].as_u64().unwrap());
                let sum: u64 = (start..end).map(|i| i + 1).sum();
                Ok(StepSuccess::new(json!({"sum": sum, "no_op": ctx.inputs["is_no_op"], "table": ctx.handler.initialization["table"]})))
            }
        }),
    );
    let r = runs.clone();
    registry.register(
        "Total",
        handler_fn(move |ctx: StepContext| {
            counted(&r, &ctx);
            async move {
                let workers: Vec<&Value> = ctx
                    .dependency_results
                    .iter()
                    .filter(|(name, _)| name.starts_with("slice_"))
                    .map(|(_, r)| &r["result"])
                    .collect();
                let total: u64 = workers.iter().map(|r| r["sum"].as_u64().unwrap()).sum();
                Ok(StepSuccess::new(
                    json!({"total": total, "workers": workers.len()}),
                ))
            }
        }),
    );
    (registry, runs)
}

struct Env {
    db: TestDatabase,
    worker: Option<WorkerCore>,
    orchestrators: Vec<Orchestrator>,
    runs: Arc<Mutex<HashMap<String, usize>>>,
    ns: String,
}

impl Env {
    async fn start(ns: &str, yamls: &[&str], tune: impl Fn(&mut TaskerConfig)) -> Env {
        let db = TestDatabase::migrated().await;
        for yaml in yamls {
            let template = TaskTemplate::from_yaml(&yaml.replace("NS", ns), "test").unwrap();
            register_template(&db.pool, &template).await.unwrap();
        }
        let mut config = worker_config(&db, &[ns]);
        tune(&mut config);
        let (registry, runs) = registry();
        let worker = WorkerCore::start(config.clone(), DispatchMode::Rust(registry))
            .await
            .unwrap();
        let orchestrator = Orchestrator::start(&config).await.unwrap();
        Env {
            db,
            worker: Some(worker),
            orchestrators: vec![orchestrator],
            runs,
            ns: ns.into(),
        }
    }

    async fn run(&self, template: &str, context: Value) -> (Uuid, String) {
        let task = create_task(&self.db.pool, &task_request(&self.ns, template, context))
            .await
            .unwrap();
        (task, wait_settled(&self.db.pool, task, WAIT).await)
    }

    fn runs(&self, task: Uuid, step: &str) -> usize {
        self.runs
            .lock()
            .unwrap()
            .get(&format!("{task}/{step}"))
            .copied()
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.unwrap();
        }
        for mut o in self.orchestrators.drain(..) {
            o.shutdown().await;
        }
        self.db.drop_database().await;
    }
}

/// (step name, state) of every step of the task, by name.
async fn steps(pool: &sqlx::PgPool, task: Uuid) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT ns.name::text, tr.to_state::text FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = ws.workflow_step_uuid AND tr.most_recent \
         WHERE ws.task_uuid = $1 ORDER BY ns.name",
    )
    .bind(task)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn names(steps: &[(String, String)]) -> Vec<&str> {
    steps.iter().map(|s| s.0.as_str()).collect()
}

/// (from, to, edge name) of every edge of the task, sorted.
async fn edges(pool: &sqlx::PgPool, task: Uuid) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT fs.name::text, ts.name::text, e.name::text FROM tasker.workflow_step_edges e \
         JOIN tasker.workflow_steps f ON f.workflow_step_uuid = e.from_step_uuid \
         JOIN tasker.named_steps fs ON fs.named_step_uuid = f.named_step_uuid \
         JOIN tasker.workflow_steps t ON t.workflow_step_uuid = e.to_step_uuid \
         JOIN tasker.named_steps ts ON ts.named_step_uuid = t.named_step_uuid \
         WHERE f.task_uuid = $1 ORDER BY 1, 2, 3",
    )
    .bind(task)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn step_field(pool: &sqlx::PgPool, task: Uuid, step: &str, column: &str) -> Value {
    sqlx::query_scalar::<_, Option<Value>>(&format!(
        "SELECT ws.{column} FROM tasker.workflow_steps ws \
         JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
         WHERE ws.task_uuid = $1 AND ns.name = $2"
    ))
    .bind(task)
    .bind(step)
    .fetch_one(pool)
    .await
    .unwrap()
    .unwrap_or(Value::Null)
}

fn edge(from: &str, to: &str, name: &str) -> (String, String, String) {
    (from.into(), to.into(), name.into())
}

#[tokio::test]
async fn a_decision_takes_each_branch_and_the_convergence_runs_once_on_the_chosen_ones() {
    let env = Env::start("dyn_route", &[ROUTE], |_| {}).await;
    let pool = env.db.pool.clone();

    let (fast, state) = env.run("route", json!({"classify": ["fast_track"]})).await;
    assert_eq!(state, "complete");
    assert_eq!(
        names(&steps(&pool, fast).await),
        ["classify", "close_out", "fast_track", "intake"]
    );
    assert_eq!(
        step_field(&pool, fast, "close_out", "results").await["result"],
        json!(["classify", "fast_track", "intake"])
    );
    assert_eq!(
        edges(&pool, fast).await,
        [
            edge("classify", "fast_track", "provides"),
            edge("fast_track", "close_out", "provides"),
            edge("intake", "classify", "provides")
        ]
    );

    let (committee, state) = env.run("route", json!({"classify": ["committee"]})).await;
    assert_eq!(state, "complete");
    assert_eq!(
        names(&steps(&pool, committee).await),
        ["classify", "close_out", "committee", "intake"]
    );
    assert_eq!(
        step_field(&pool, committee, "close_out", "results").await["result"],
        json!(["classify", "committee", "intake"])
    );

    let (both, state) = env
        .run(
            "route",
            json!({"classify": ["committee", "fast_track", "committee"]}),
        )
        .await;
    assert_eq!(state, "complete");
    let all = steps(&pool, both).await;
    assert_eq!(
        names(&all),
        ["classify", "close_out", "committee", "fast_track", "intake"]
    );
    assert!(all.iter().all(|(_, s)| s == "complete"), "{all:?}");
    assert_eq!(
        step_field(&pool, both, "close_out", "results").await["result"],
        json!(["classify", "committee", "fast_track", "intake"])
    );
    // The convergence ran once, after both branches.
    for task in [fast, committee, both] {
        assert_eq!(env.runs(task, "close_out"), 1, "{task}");
        assert_eq!(env.runs(task, "classify"), 1, "{task}");
    }
    wait_for("the created steps to be counted", WAIT, || async {
        (env.orchestrators[0].status().dynamic_steps_created == 2 + 2 + 3).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn a_decision_with_no_branches_creates_nothing_and_the_task_completes() {
    let env = Env::start("dyn_none", &[ROUTE], |_| {}).await;
    let (task, state) = env.run("route", json!({"classify": "none"})).await;
    assert_eq!(state, "complete");
    let all = steps(&env.db.pool, task).await;
    assert_eq!(
        all,
        [
            ("classify".into(), "complete".into()),
            ("intake".into(), "complete".into())
        ]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_nested_decision_creates_its_own_branch_and_the_merge_waits_for_it() {
    let env = Env::start("dyn_nested", &[NESTED], |_| {}).await;
    let pool = env.db.pool.clone();
    let (task, state) = env
        .run("nested", json!({"outer": ["inner"], "inner": ["b2"]}))
        .await;
    assert_eq!(state, "complete");
    assert_eq!(
        names(&steps(&pool, task).await),
        ["b2", "inner", "merge", "outer", "start"]
    );
    // merge: b2 chosen; a and b1 not created, so merge converges on b2 alone.
    assert_eq!(
        edges(&pool, task).await,
        [
            edge("b2", "merge", "provides"),
            edge("inner", "b2", "provides"),
            edge("outer", "inner", "provides"),
            edge("start", "outer", "provides")
        ]
    );
    assert_eq!(
        step_field(&pool, task, "merge", "results").await["result"],
        json!(["b2", "inner", "outer", "start"])
    );

    // The outer decision choosing `a` only: the inner decision (an unchosen path) is not
    // created, and merge converges on `a` alone.
    let (task, state) = env.run("nested", json!({"outer": ["a"], "inner": ["b1"]})).await;
    assert_eq!(state, "complete");
    assert_eq!(names(&steps(&pool, task).await), ["a", "merge", "outer", "start"]);
    assert_eq!(env.runs(task, "inner"), 0);
    env.stop().await;
}

#[tokio::test]
async fn a_batch_of_1000_rows_in_5_workers_converges_to_the_total() {
    let env = Env::start("dyn_batch", &[BATCH], |_| {}).await;
    let pool = env.db.pool.clone();
    let (task, state) = env.run("batch", json!({"rows": 1000, "workers": 5})).await;
    assert_eq!(state, "complete");
    let all = steps(&pool, task).await;
    assert_eq!(
        names(&all),
        [
            "report",
            "scan",
            "slice_001",
            "slice_002",
            "slice_003",
            "slice_004",
            "slice_005",
            "total"
        ]
    );
    assert_eq!(
        step_field(&pool, task, "total", "results").await["result"],
        json!({"total": 500_500, "workers": 5})
    );
    assert_eq!(env.runs(task, "total"), 1);
    let inputs = step_field(&pool, task, "slice_002", "inputs").await;
    assert_eq!(
        inputs,
        json!({
            "table": "rows",
            "cursor": {"batch_id": "002", "start_cursor": 200, "end_cursor": 400, "batch_size": 200},
            "batch_metadata": {"cursor_field": "row_id", "failure_strategy": "fail_fast"},
            "is_no_op": false,
            "__template_step_name": "slice"
        })
    );
    let all_edges = edges(&pool, task).await;
    let count = |name: &str| all_edges.iter().filter(|e| e.2 == name).count();
    assert_eq!(
        (
            count("batch_dependency"),
            count("worker_to_convergence"),
            count("provides")
        ),
        (5, 5, 1)
    );
    assert!(all_edges.contains(&edge("scan", "slice_004", "batch_dependency")));
    assert!(all_edges.contains(&edge("slice_004", "total", "worker_to_convergence")));
    assert!(all_edges.contains(&edge("total", "report", "provides")));
    // The template's retry settings reach the workers.
    let max_attempts: i32 = sqlx::query_scalar(
        "SELECT max(ws.max_attempts) FROM tasker.workflow_steps ws JOIN tasker.named_steps ns USING (named_step_uuid) \
         WHERE ws.task_uuid = $1 AND ns.name LIKE 'slice_%'",
    )
    .bind(task)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(max_attempts, 3);
    env.stop().await;
}

#[tokio::test]
async fn a_batch_of_zero_rows_runs_one_no_op_placeholder() {
    let env = Env::start("dyn_zero", &[BATCH], |_| {}).await;
    let pool = env.db.pool.clone();
    let (task, state) = env.run("batch", json!({"rows": 0, "workers": 5})).await;
    assert_eq!(state, "complete");
    assert_eq!(
        names(&steps(&pool, task).await),
        ["report", "scan", "slice_000", "total"]
    );
    let inputs = step_field(&pool, task, "slice_000", "inputs").await;
    assert_eq!(inputs["is_no_op"], true);
    assert_eq!(
        inputs["cursor"],
        json!({"batch_id": "000", "start_cursor": 0, "end_cursor": 0, "batch_size": 0})
    );
    assert_eq!(
        step_field(&pool, task, "total", "results").await["result"],
        json!({"total": 0, "workers": 1})
    );
    env.stop().await;
}

#[tokio::test]
async fn a_batch_worker_failing_once_is_retried_and_the_total_is_right() {
    let env = Env::start("dyn_flaky", &[BATCH], |_| {}).await;
    let pool = env.db.pool.clone();
    let (task, state) = env
        .run("batch", json!({"rows": 1000, "workers": 5, "flaky_batch": "003"}))
        .await;
    assert_eq!(state, "complete");
    assert_eq!(env.runs(task, "slice_003"), 2);
    assert_eq!(env.runs(task, "slice_001"), 1);
    assert_eq!(
        step_field(&pool, task, "total", "results").await["result"]["total"],
        500_500
    );
    let attempts: i32 = sqlx::query_scalar(
        "SELECT ws.attempts FROM tasker.workflow_steps ws JOIN tasker.named_steps ns USING (named_step_uuid) \
         WHERE ws.task_uuid = $1 AND ns.name = 'slice_003'",
    )
    .bind(task)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 2);
    env.stop().await;
}

#[tokio::test]
async fn outcomes_that_cannot_be_applied_fail_the_deciding_step_with_the_reason() {
    let env = Env::start("dyn_bad", &[ROUTE, BATCH], |c| {
        c.orchestration.max_steps_per_decision = 2;
        c.orchestration.max_batch_workers = 3;
    })
    .await;
    let pool = env.db.pool.clone();
    let decisions = [
        (
            json!(["intake"]),
            "[\"intake\"] are not steps this decision may create",
        ),
        (
            json!(["nope"]),
            "[\"nope\"] are not steps this decision may create",
        ),
        (
            json!({"result": {"other": 1}}),
            "the result has no decision_point_outcome",
        ),
        (
            json!({"result": {"decision_point_outcome": "no_branches"}}),
            "unknown decision_point_outcome",
        ),
        (
            json!({"result": {"decision_point_outcome": {"type": "create_steps"}}}),
            "create_steps has no step_names array",
        ),
        (
            json!(["fast_track", "committee"]),
            "more than orchestration.max_steps_per_decision (2)",
        ),
    ];
    for (choice, expected) in decisions {
        let (task, state) = env.run("route", json!({ "classify": choice })).await;
        assert_eq!(state, "blocked_by_failures", "{expected}");
        let all = steps(&pool, task).await;
        assert_eq!(
            all,
            [
                ("classify".into(), "error".into()),
                ("intake".into(), "complete".into())
            ],
            "{expected}"
        );
        let results = step_field(&pool, task, "classify", "results").await;
        let message = results["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(expected) && message.contains("decision step \"classify\""),
            "{expected}: {message}"
        );
        assert_eq!(
            (results["success"].clone(), results["error"]["error_type"].clone()),
            (json!(false), json!("invalid_decision_outcome"))
        );
        assert_eq!(results["metadata"]["retryable"], false);
    }
    let configs = |n: usize| {
        (1..=n).map(|i| json!({"batch_id": format!("{i:03}"), "start_cursor": 0, "end_cursor": 1, "batch_size": 1})).collect::<Vec<_>>()
    };
    let batches = [
        (
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "ghost", "worker_count": 1, "total_items": 1, "cursor_configs": configs(1)}}),
            "\"ghost\" is not a batch_worker step",
        ),
        (
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "total", "worker_count": 1, "total_items": 1, "cursor_configs": configs(1)}}),
            "\"total\" is not a batch_worker step",
        ),
        (
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "slice", "worker_count": 0, "total_items": 0, "cursor_configs": []}}),
            "empty cursor_configs",
        ),
        (
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "slice", "worker_count": 5, "total_items": 5, "cursor_configs": configs(5)}}),
            "more than orchestration.max_batch_workers (3)",
        ),
        (
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "slice", "total_items": 1, "cursor_configs": configs(1)}}),
            "needs worker_count",
        ),
        (
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "slice", "worker_count": 1, "total_items": 1, "cursor_configs": [{"batch_id": "001", "start_cursor": 0, "end_cursor": 1}]}}),
            "needs batch_size",
        ),
        (
            json!({"batch_processing_outcome": "no_batches"}),
            "unknown batch_processing_outcome",
        ),
    ];
    for (result, expected) in batches {
        let (task, state) = env.run("batch", json!({ "scan_result": result })).await;
        assert_eq!(state, "blocked_by_failures", "{expected}");
        assert_eq!(
            steps(&pool, task).await,
            [("scan".into(), "error".into())],
            "{expected}"
        );
        let results = step_field(&pool, task, "scan", "results").await;
        let message = results["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected) && message.contains("batchable step \"scan\""),
            "{expected}: {message}"
        );
        assert_eq!(results["error"]["error_type"], "invalid_batch_outcome");
        // The handler's result is kept beside the error.
        assert_eq!(results["result"], result);
    }
    wait_for("the refused outcomes to be counted", WAIT, || async {
        (env.orchestrators[0].status().outcomes_refused == 13).then_some(())
    })
    .await;
    env.stop().await;
}

/// Forces a step's state and result, as if its worker had just committed it.
async fn force(pool: &sqlx::PgPool, task: Uuid, step: &str, state: &str, result: Option<Value>) -> Uuid {
    let step_uuid: Uuid = sqlx::query_scalar(
        "SELECT ws.workflow_step_uuid FROM tasker.workflow_steps ws JOIN tasker.named_steps ns USING (named_step_uuid) \
         WHERE ws.task_uuid = $1 AND ns.name = $2",
    )
    .bind(task)
    .bind(step)
    .fetch_one(pool)
    .await
    .unwrap();
    let sort: i32 = sqlx::query_scalar(
        "UPDATE tasker.workflow_step_transitions SET most_recent = false WHERE workflow_step_uuid = $1 AND most_recent RETURNING sort_key",
    )
    .bind(step_uuid)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent) \
         VALUES ($1, $2, NULL, $3, $4, true)",
    )
    .bind(Uuid::now_v7())
    .bind(step_uuid)
    .bind(state)
    .bind(sort + 1)
    .execute(pool)
    .await
    .unwrap();
    if let Some(result) = result {
        sqlx::query("UPDATE tasker.workflow_steps SET results = $2, attempts = 1 WHERE workflow_step_uuid = $1")
            .bind(step_uuid)
            .bind(json!({"step_uuid": step_uuid, "success": true, "status": "completed", "result": result, "metadata": {}}))
            .execute(pool)
            .await
            .unwrap();
    }
    step_uuid
}

/// Two orchestrators started at once on three copies of a decision's result and three of a
/// batchable step's: each outcome is applied once (no step or edge twice, one message per new
/// root), and replaying the result afterwards changes nothing.
#[tokio::test]
async fn two_orchestrators_and_replays_never_create_steps_twice() {
    let db = TestDatabase::migrated().await;
    let ns = "dyn_race";
    for yaml in [ROUTE, BATCH] {
        register_template(
            &db.pool,
            &TaskTemplate::from_yaml(&yaml.replace("NS", ns), "t").unwrap(),
        )
        .await
        .unwrap();
    }
    let pool = db.pool.clone();
    let route = create_task(&pool, &task_request(ns, "route", json!({})))
        .await
        .unwrap();
    let batch = create_task(&pool, &task_request(ns, "batch", json!({})))
        .await
        .unwrap();
    force(&pool, route, "intake", "complete", None).await;
    let classify = force(
        &pool,
        route,
        "classify",
        "enqueued_for_orchestration",
        Some(json!({"decision_point_outcome": {"type": "create_steps", "step_names": ["fast_track", "committee"]}})),
    )
    .await;
    let configs: Vec<Value> = (1..=5)
        .map(|i| json!({"batch_id": format!("{i:03}"), "start_cursor": (i - 1) * 10, "end_cursor": i * 10, "batch_size": 10}))
        .collect();
    let scan = force(
        &pool,
        batch,
        "scan",
        "enqueued_for_orchestration",
        Some(
            json!({"batch_processing_outcome": {"type": "create_batches", "worker_template_name": "slice",
            "worker_count": 5, "total_items": 50, "cursor_configs": configs}}),
        ),
    )
    .await;
    let client = MessageClient::new(pool.clone());
    client.create_queue(STEP_RESULTS_QUEUE).await.unwrap();
    let correlation = |task: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT correlation_id FROM tasker.tasks WHERE task_uuid = $1")
                .bind(task)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let messages = [
        StepMessage {
            task_uuid: route,
            step_uuid: classify,
            correlation_id: correlation(route).await,
        },
        StepMessage {
            task_uuid: batch,
            step_uuid: scan,
            correlation_id: correlation(batch).await,
        },
    ];
    for _ in 0..3 {
        for m in &messages {
            client.send_with_notify(STEP_RESULTS_QUEUE, m, 0).await.unwrap();
        }
    }
    let config = worker_config(&db, &[ns]);
    let (a, b) = tokio::join!(Orchestrator::start(&config), Orchestrator::start(&config));
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let drained = || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_orchestration_step_results")
            .fetch_one(&pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    };
    wait_for("the six result messages to be archived", WAIT, drained).await;

    let check = || async {
        assert_eq!(
            steps(&pool, route).await,
            [
                ("classify".into(), "complete".into()),
                ("close_out".into(), "pending".into()),
                ("committee".into(), "enqueued".into()),
                ("fast_track".into(), "enqueued".into()),
                ("intake".into(), "complete".into())
            ]
        );
        assert_eq!(edges(&pool, route).await.len(), 5);
        let batch_steps = steps(&pool, batch).await;
        assert_eq!(
            names(&batch_steps),
            [
                "report",
                "scan",
                "slice_001",
                "slice_002",
                "slice_003",
                "slice_004",
                "slice_005",
                "total"
            ]
        );
        assert_eq!(edges(&pool, batch).await.len(), 11);
        let sent: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.q_worker_{ns}_queue"))
            .fetch_one(&pool)
            .await
            .unwrap();
        // The roots of each task at creation (intake, scan) and each new ready step once.
        assert_eq!(sent, 2 + 2 + 5);
    };
    check().await;
    // Counted after each commit: it may trail the database by a moment.
    wait_for("the created steps to be counted", WAIT, || async {
        (a.status().dynamic_steps_created + b.status().dynamic_steps_created == 3 + 7).then_some(())
    })
    .await;
    // A replay later: archived as a duplicate, nothing created.
    for m in &messages {
        client.send_with_notify(STEP_RESULTS_QUEUE, m, 0).await.unwrap();
    }
    wait_for("the replayed messages to be archived", WAIT, drained).await;
    check().await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_database().await;
}

#[tokio::test]
async fn the_initial_step_set_leaves_out_what_outcomes_create() {
    let db = TestDatabase::migrated().await;
    let ns = "dyn_init";
    for yaml in [ROUTE, BATCH, NESTED] {
        register_template(
            &db.pool,
            &TaskTemplate::from_yaml(&yaml.replace("NS", ns), "t").unwrap(),
        )
        .await
        .unwrap();
    }
    let pool = db.pool.clone();
    let initial = |name: &'static str| {
        let pool = pool.clone();
        async move {
            let task = create_task(&pool, &task_request(ns, name, json!({})))
                .await
                .unwrap();
            (steps(&pool, task).await, edges(&pool, task).await)
        }
    };
    let (route, route_edges) = initial("route").await;
    assert_eq!(
        route,
        [
            ("classify".into(), "pending".into()),
            ("intake".into(), "enqueued".into())
        ]
    );
    assert_eq!(route_edges, [edge("intake", "classify", "provides")]);
    let (batch, batch_edges) = initial("batch").await;
    assert_eq!(batch, [("scan".into(), "enqueued".into())]);
    assert!(batch_edges.is_empty());
    let (nested, _) = initial("nested").await;
    assert_eq!(names(&nested), ["outer", "start"]);
    db.drop_database().await;
}

#[test]
fn template_validation_names_the_step_for_each_mistake() {
    let check = |yaml: &str, expected: &str| {
        let err = TaskTemplate::from_yaml(yaml, "dyn.yaml")
            .expect_err(expected)
            .to_string();
        assert!(
            err.contains(expected) && err.contains("dyn.yaml"),
            "{expected}: {err}"
        );
    };
    let route = ROUTE.replace("NS", "ns");
    let batch = BATCH.replace("NS", "ns");
    check(
        &route.replace(
            "{ name: classify, type: decision, dependencies: [intake],",
            "{ name: classify, type: decision,",
        ),
        "step \"classify\": a decision step needs at least one dependency",
    );
    check(
        &route
            .replace(
                "dependencies: [classify], handler: { callable: Leaf } }",
                "dependencies: [intake], handler: { callable: Leaf } }",
            )
            .replace(
                "type: deferred_convergence, dependencies: [fast_track, committee]",
                "dependencies: [fast_track, committee]",
            ),
        "step \"classify\": a decision step needs candidate steps",
    );
    check(
        &route.replace("type: decision", "type: decision_point"),
        "step \"classify\": unknown type \"decision_point\"",
    );
    check(
        &batch.replace("    batch_config: { worker_template: slice, batch_size: 200, cursor_field: row_id, failure_strategy: fail_fast }\n", ""),
        "step \"slice\": a batch_worker step needs batch_config",
    );
    check(
        &batch.replace("failure_strategy: fail_fast", "failure_strategy: panic"),
        "step \"slice\": batch_config.failure_strategy",
    );
    check(
        &batch.replace("worker_template: slice, ", ""),
        "step \"slice\": batch_config: missing field `worker_template`",
    );
    check(
        &batch.replace("{ name: scan, type: batchable,", "{ name: scan,"),
        "step \"slice\": a batch_worker step needs a batchable step before it",
    );
    check(
        &route.replace("{ name: classify, type: decision,", "{ name: classify,"),
        "step \"close_out\": a deferred_convergence step needs a decision or batchable step before it",
    );
    check(
        &route.replace(
            "{ name: intake, handler: { callable: Leaf } }",
            "{ name: intake, handler: { callable: Leaf }, batch_config: { worker_template: x } }",
        ),
        "step \"intake\": batch_config is only for batch_worker steps",
    );
    // Round trip: the stored configuration is the whole template; `step_type` reads as `type`
    // and a standard step writes no type.
    let t = TaskTemplate::from_yaml(&NESTED.replace("NS", "ns"), "n").unwrap();
    let stored = serde_json::to_value(&t).unwrap();
    assert_eq!(stored["steps"][3]["type"], "decision");
    assert!(stored["steps"][0].get("type").is_none());
    let again: TaskTemplate = serde_json::from_value(stored).unwrap();
    assert_eq!(again, t);
    let b = TaskTemplate::from_yaml(&batch, "b").unwrap();
    let round: TaskTemplate = serde_json::from_value(serde_json::to_value(&b).unwrap()).unwrap();
    assert_eq!(round, b);
    assert_eq!(b.step("slice").unwrap().batch().unwrap().batch_size, 200);
}

/// On a database made by tasker-core's migrations (the fixture), for a role without `tasker`
/// on its search_path: a decision and a batch run there too.
#[tokio::test]
async fn decisions_and_batches_run_on_tasker_cores_schema() {
    let db = TestDatabase::empty().await;
    sqlx::raw_sql(include_str!("fixtures/tasker_core_schema.sql"))
        .execute(&db.pool)
        .await
        .unwrap();
    tasker_worker::database::migrate(&db.pool).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{name}\" SET search_path = public"))
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = db.second_pool().await;
    let ns = "dyn_theirs";
    for yaml in [ROUTE, BATCH] {
        register_template(
            &pool,
            &TaskTemplate::from_yaml(&yaml.replace("NS", ns), "t").unwrap(),
        )
        .await
        .unwrap();
    }
    let config = worker_config(&db, &[ns]);
    let (registry, _runs) = registry();
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let worker = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .unwrap();
    let route = create_task(
        &pool,
        &task_request(ns, "route", json!({"classify": ["committee"]})),
    )
    .await
    .unwrap();
    let batch = create_task(
        &pool,
        &task_request(ns, "batch", json!({"rows": 100, "workers": 3})),
    )
    .await
    .unwrap();
    assert_eq!(wait_settled(&pool, route, WAIT).await, "complete");
    assert_eq!(wait_settled(&pool, batch, WAIT).await, "complete");
    assert_eq!(
        names(&steps(&pool, route).await),
        ["classify", "close_out", "committee", "intake"]
    );
    assert_eq!(
        step_field(&pool, route, "close_out", "results").await["result"],
        json!(["classify", "committee", "intake"])
    );
    assert_eq!(
        step_field(&pool, batch, "total", "results").await["result"],
        json!({"total": 5050, "workers": 3})
    );
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    pool.close().await;
    db.drop_database().await;
}

#[test]
fn the_limits_are_configuration_keys_and_a_bad_value_names_its_key() {
    let defaults = TaskerConfig::default();
    assert_eq!(
        (
            defaults.orchestration.max_steps_per_decision,
            defaults.orchestration.max_batch_workers
        ),
        (50, 1000)
    );
    for (key, value) in [
        ("orchestration.max_steps_per_decision", 0),
        ("orchestration.max_batch_workers", 0),
        ("orchestration.max_batch_workers", 100_001),
    ] {
        let overrides =
            TaskerConfig::overrides_from_dotted([(key.to_string(), toml::Value::Integer(value))]).unwrap();
        let err = TaskerConfig::load_from(None, &|_| None, &overrides)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(&format!("got {value}")),
            "{key}: {err}"
        );
    }
}

const BLOCKABLE: &str = r#"
name: blockable
namespace_name: NS
version: 1.0.0
steps:
  - { name: intake, handler: { callable: Leaf } }
  - { name: broken, dependencies: [intake], handler: { callable: Leaf } }
  - { name: classify, type: decision, dependencies: [intake], handler: { callable: Decide } }
  - { name: fast_track, dependencies: [classify], handler: { callable: Leaf } }
  - { name: committee, dependencies: [classify], handler: { callable: Leaf } }
"#;

/// A decision completing while its task is blocked by another failed step: its outcome is
/// applied, the new step waits (pending) and runs once the operator retries the failed step.
#[tokio::test]
async fn a_decision_completing_in_a_blocked_task_creates_steps_that_run_after_the_retry() {
    let db = TestDatabase::migrated().await;
    let ns = "dyn_blocked";
    register_template(
        &db.pool,
        &TaskTemplate::from_yaml(&BLOCKABLE.replace("NS", ns), "t").unwrap(),
    )
    .await
    .unwrap();
    let pool = db.pool.clone();
    let task = create_task(&pool, &task_request(ns, "blockable", json!({})))
        .await
        .unwrap();
    force(&pool, task, "intake", "complete", None).await;
    let broken = force(&pool, task, "broken", "error", None).await;
    sqlx::query(
        "WITH retired AS (UPDATE tasker.task_transitions SET most_recent = false WHERE task_uuid = $1 AND most_recent RETURNING sort_key) \
         INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent, created_at, updated_at) \
         SELECT $2, $1, 'steps_in_process', 'blocked_by_failures', max(sort_key) + 1, true, now(), now() FROM retired",
    )
    .bind(task)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    let classify = force(
        &pool,
        task,
        "classify",
        "enqueued_for_orchestration",
        Some(json!({"decision_point_outcome": {"type": "create_steps", "step_names": ["committee"]}})),
    )
    .await;
    let correlation_id: Uuid =
        sqlx::query_scalar("SELECT correlation_id FROM tasker.tasks WHERE task_uuid = $1")
            .bind(task)
            .fetch_one(&pool)
            .await
            .unwrap();
    let client = MessageClient::new(pool.clone());
    client.create_queue(STEP_RESULTS_QUEUE).await.unwrap();
    let message = StepMessage {
        task_uuid: task,
        step_uuid: classify,
        correlation_id,
    };
    client
        .send_with_notify(STEP_RESULTS_QUEUE, &message, 0)
        .await
        .unwrap();
    let config = worker_config(&db, &[ns]);
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    wait_for("the decision to complete", WAIT, || async {
        let all = steps(&pool, task).await;
        all.iter()
            .any(|(n, s)| n == "classify" && s == "complete")
            .then_some(())
    })
    .await;
    assert_eq!(
        steps(&pool, task).await,
        [
            ("broken".into(), "error".into()),
            ("classify".into(), "complete".into()),
            ("committee".into(), "pending".into()),
            ("intake".into(), "complete".into())
        ]
    );
    tasker_worker::operations::retry_step(&pool, broken)
        .await
        .unwrap();
    let (registry, _runs) = registry();
    let worker = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .unwrap();
    assert_eq!(wait_settled(&pool, task, WAIT).await, "complete");
    assert_eq!(
        names(&steps(&pool, task).await),
        ["broken", "classify", "committee", "intake"]
    );
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}
