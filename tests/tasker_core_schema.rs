//! Where tasker-core's schema differs from ours in what the worker reads and writes (the
//! project's tasker-core-compat notes): there `workflow_steps.attempts` is nullable with no
//! default, so every step starts with attempts NULL, and `max_attempts` is nullable.

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::database::{ensure_schema, migrate};
use tasker_worker::messaging::StepFailure;
use tasker_worker::orchestration::{
    create_task, register_template, task_summary, Orchestrator, TaskTemplate,
};
use tasker_worker::testing::{task_request, wait_for, wait_settled, worker_config, TestDatabase};
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore};

const FLAKY: &str = r#"
name: flaky
namespace_name: nullattempts
version: 1.0.0
steps:
  - { name: first, handler: { callable: Flaky }, retry: { max_attempts: 3, backoff_base_ms: 10 } }
  - { name: second, handler: { callable: Flaky }, dependencies: [first], retry: { max_attempts: 3, backoff_base_ms: 10 } }
"#;

#[tokio::test]
async fn steps_created_with_null_attempts_are_claimed_counted_from_one_and_retried() {
    let db = TestDatabase::migrated().await;
    // As tasker-core's migrations declare the columns.
    sqlx::query(
        "ALTER TABLE tasker.workflow_steps ALTER COLUMN attempts DROP NOT NULL, ALTER COLUMN attempts DROP DEFAULT, \
         ALTER COLUMN max_attempts DROP NOT NULL",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let template = TaskTemplate::from_yaml(FLAKY, "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    // Each step fails its first attempt (retryable), then succeeds, saying which attempt it was.
    let calls = Arc::new(AtomicUsize::new(0));
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    let seen = calls.clone();
    registry.register(
        "Flaky",
        handler_fn(move |ctx| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempts == 1 {
                    return Err(StepFailure::new("", "first attempt fails", true));
                }
                Ok(StepSuccess::new(json!({"attempt": ctx.attempts})))
            }
        }),
    );
    let config = worker_config(&db, &["nullattempts"]);
    // The task exists before anything can claim its steps: they are counted as created.
    let task = create_task(&db.pool, &task_request("nullattempts", "flaky", json!({})))
        .await
        .unwrap();
    let nulls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasker.workflow_steps WHERE task_uuid = $1 AND attempts IS NULL",
    )
    .bind(task)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(nulls, 2, "the steps start as tasker-core's do");
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let worker = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .unwrap();

    let state = wait_settled(&db.pool, task, Duration::from_secs(30)).await;
    assert_eq!(state, "complete");
    let rows: Vec<(Option<i32>, serde_json::Value)> =
        sqlx::query_as("SELECT attempts, results FROM tasker.workflow_steps WHERE task_uuid = $1")
            .bind(task)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for (attempts, results) in rows {
        assert_eq!(attempts, Some(2), "{results}");
        assert_eq!(results["result"]["attempt"], 2);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

const ONE_STEP: &str = r#"
name: audited
namespace_name: audited
version: 1.0.0
steps:
  - { name: first, handler: { callable: Ok } }
  - { name: second, handler: { callable: Ok }, dependencies: [first] }
"#;

/// tasker-core's audit trigger (as the compat notes describe it, written here): on a step's
/// enqueued_* transition it reads `workflow_steps` and writes `workflow_step_result_audit`,
/// both unqualified, and takes `worker_uuid` and `correlation_id` from the metadata. Connected
/// with a search_path that lacks `tasker`, the worker's commits still resolve them.
#[tokio::test]
async fn an_audit_trigger_naming_tables_unqualified_works_for_a_role_without_tasker_on_its_path() {
    let db = TestDatabase::migrated().await;
    for statement in [
        "CREATE TABLE tasker.workflow_step_result_audit (step_uuid uuid, task_uuid uuid, worker_uuid uuid, correlation_id uuid)",
        "CREATE FUNCTION tasker.audit_step_result() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           INSERT INTO workflow_step_result_audit (step_uuid, task_uuid, worker_uuid, correlation_id) \
           SELECT NEW.workflow_step_uuid, ws.task_uuid, (NEW.metadata ->> 'worker_uuid')::uuid, \
                  (NEW.metadata ->> 'correlation_id')::uuid \
             FROM workflow_steps ws WHERE ws.workflow_step_uuid = NEW.workflow_step_uuid; \
           RETURN NEW; \
         END $$",
        "CREATE TRIGGER audit_step_result AFTER INSERT ON tasker.workflow_step_transitions FOR EACH ROW \
         WHEN (NEW.to_state IN ('enqueued_for_orchestration', 'enqueued_as_error_for_orchestration')) \
         EXECUTE FUNCTION tasker.audit_step_result()",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Every new connection to this database: a search_path without tasker.
    sqlx::query(&format!("ALTER DATABASE \"{name}\" SET search_path = public"))
        .execute(&db.pool)
        .await
        .unwrap();
    let template = TaskTemplate::from_yaml(ONE_STEP, "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Ok",
        handler_fn(|_ctx| async move { Ok(StepSuccess::new(json!({"ok": true}))) }),
    );
    let config = worker_config(&db, &["audited"]);
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let worker = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .unwrap();
    let task = create_task(&db.pool, &task_request("audited", "audited", json!({})))
        .await
        .unwrap();

    let audit: Vec<(uuid::Uuid, Option<uuid::Uuid>, Option<uuid::Uuid>)> =
        wait_for("two audit rows", Duration::from_secs(20), || async {
            let rows: Vec<(uuid::Uuid, Option<uuid::Uuid>, Option<uuid::Uuid>)> = sqlx::query_as(
                "SELECT task_uuid, worker_uuid, correlation_id FROM tasker.workflow_step_result_audit",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    let correlation: uuid::Uuid =
        sqlx::query_scalar("SELECT correlation_id FROM tasker.tasks WHERE task_uuid = $1")
            .bind(task)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let worker_uuid = worker
        .worker_id()
        .strip_prefix("worker_")
        .map(|id| id.parse().unwrap());
    for (task_uuid, audited_worker, audited_correlation) in audit {
        assert_eq!(task_uuid, task);
        assert_eq!(audited_worker, worker_uuid);
        assert_eq!(audited_correlation, Some(correlation));
    }
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

const DIAMOND: &str = r#"
name: diamond
namespace_name: theirtypes
version: 1.0.0
steps:
  - { name: start, handler: { callable: Ok } }
  - { name: left, handler: { callable: Ok }, dependencies: [start] }
  - { name: right, handler: { callable: Flaky }, dependencies: [start], retry: { max_attempts: 2, backoff_base_ms: 10 } }
  - { name: join, handler: { callable: Ok }, dependencies: [left, right] }
"#;

/// tasker-core's timestamp columns are `timestamp without time zone`, NOT NULL, with no
/// default, `tasks.requested_at` likewise, and an edge's `name` has no default: every write
/// the worker, the orchestrator and create_task make must set them, and reads accept them.
#[tokio::test]
async fn a_workflow_runs_on_tables_with_their_timestamp_columns_and_no_defaults() {
    let db = TestDatabase::migrated().await;
    for table in [
        "task_namespaces",
        "named_tasks",
        "named_steps",
        "tasks",
        "workflow_steps",
        "workflow_step_edges",
        "workflow_step_transitions",
        "task_transitions",
    ] {
        sqlx::query(&format!(
            "ALTER TABLE tasker.{table} \
             ALTER COLUMN created_at TYPE timestamp without time zone, ALTER COLUMN created_at DROP DEFAULT, \
             ALTER COLUMN updated_at TYPE timestamp without time zone, ALTER COLUMN updated_at DROP DEFAULT"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for statement in [
        "ALTER TABLE tasker.tasks ALTER COLUMN requested_at TYPE timestamp without time zone, \
         ALTER COLUMN requested_at DROP DEFAULT, ALTER COLUMN completed_at TYPE timestamp without time zone",
        "ALTER TABLE tasker.workflow_step_edges ALTER COLUMN name DROP DEFAULT",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let template = TaskTemplate::from_yaml(DIAMOND, "test").unwrap();
    register_template(&db.pool, &template).await.unwrap();
    let registry = ok_and_flaky();
    let config = worker_config(&db, &["theirtypes"]);
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let worker = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .unwrap();
    let task = create_task(&db.pool, &task_request("theirtypes", "diamond", json!({})))
        .await
        .unwrap();

    assert_eq!(
        wait_settled(&db.pool, task, Duration::from_secs(30)).await,
        "complete"
    );
    let summary = task_summary(&db.pool, task).await.unwrap();
    assert_eq!(summary.state, "complete");
    assert!(summary.completed_at.is_some());
    assert!(
        summary.steps.iter().all(|s| s.state == "complete"),
        "{:?}",
        summary.steps
    );
    let right = summary.steps.iter().find(|s| s.name == "right").unwrap();
    assert_eq!(right.attempts, 2);
    let unnamed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tasker.workflow_step_edges WHERE name <> 'provides'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(unnamed, 0);
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    db.drop_database().await;
}

/// A database as tasker-core's migrations leave it (written here from the compat facts).
const THEIR_SCHEMA: &str = include_str!("fixtures/tasker_core_schema.sql");
const THEIR_TABLES: &[&str] = &[
    "task_namespaces",
    "named_tasks",
    "named_steps",
    "named_tasks_named_steps",
    "tasks",
    "workflow_steps",
    "workflow_step_edges",
    "workflow_step_transitions",
    "task_transitions",
    "workflow_step_result_audit",
];

async fn their_database() -> TestDatabase {
    let db = TestDatabase::empty().await;
    sqlx::raw_sql(THEIR_SCHEMA).execute(&db.pool).await.unwrap();
    db
}

/// Everything the catalog says about their tables and their migration record, one line each.
async fn their_definitions(pool: &sqlx::PgPool) -> Vec<String> {
    let tables: Vec<String> = THEIR_TABLES.iter().map(|t| t.to_string()).collect();
    // The catalog renders names relative to the search_path: read it with one fixed path.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await
        .unwrap();
    let lines = sqlx::query_scalar(
        "SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default) \
           FROM information_schema.columns WHERE table_schema = 'tasker' AND table_name = ANY($1) \
         UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'tasker' AND tablename = ANY($1) \
         UNION ALL SELECT format('constraint %s %s', conname, pg_get_constraintdef(c.oid)) \
           FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid \
           JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = 'tasker' AND r.relname = ANY($1) \
         UNION ALL SELECT format('trigger %s %s', tgname, pg_get_triggerdef(t.oid)) \
           FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid \
           JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = 'tasker' AND r.relname = ANY($1) AND NOT tgisinternal \
         UNION ALL SELECT format('options %s %s', relname, reloptions) FROM pg_class r \
           JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = 'tasker' AND r.relname = ANY($1) \
         UNION ALL SELECT format('function %s', md5(pg_get_functiondef('tasker.create_step_result_audit()'::regprocedure))) \
         UNION ALL SELECT format('function %s %s', p.proname, md5(pg_get_functiondef(p.oid))) FROM pg_proc p \
           JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname = 'tasker' AND p.proname = 'pgmq_send_with_notify' \
         UNION ALL SELECT format('sqlx %s %s', version, checksum) FROM public._sqlx_migrations \
         ORDER BY 1",
    )
    .bind(&tables)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    lines
}

/// Migrating on their schema adds our functions and tables beside theirs, never touches one of
/// theirs or their migration record, and is a no-op the second time; two at once both succeed.
#[tokio::test]
async fn migrating_on_tasker_cores_schema_adds_only_our_objects_and_is_idempotent() {
    let db = their_database().await;
    let before = their_definitions(&db.pool).await;
    assert!(before.len() > 100, "{before:?}");
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("function pgmq_send_with_notify")),
        "their send-with-notify is in the comparison"
    );
    let other = db.second_pool().await;
    let (first, second) = tokio::join!(migrate(&db.pool), migrate(&other));
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert!(
        first.applied.contains(&20261201000001) != second.applied.contains(&20261201000001),
        "exactly one run records the baseline: {first:?} {second:?}"
    );
    let again = migrate(&db.pool).await.unwrap();
    assert!(
        again.applied.is_empty() && again.functions_applied.is_empty(),
        "{again:?}"
    );
    assert_eq!(
        their_definitions(&db.pool).await,
        before,
        "their tables and record are unchanged"
    );

    let modes: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, mode FROM tasker.tasker_worker_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(modes[0], (20261201000001, "tasker_core_schema".to_string()));
    assert!(
        modes.iter().any(|(v, m)| *v == 20261202000001 && m == "applied"),
        "{modes:?}"
    );
    for table in ["dead_letters", "workers", "schema_functions"] {
        let exists: bool = sqlx::query_scalar(&format!("SELECT to_regclass('tasker.{table}') IS NOT NULL"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(exists, "tasker.{table}");
    }
    ensure_schema(&db.pool)
        .await
        .expect("the worker accepts the schema");
    other.close().await;
    db.drop_database().await;
}

const LINEAR: &str = r#"
name: linear
namespace_name: theirs
version: 1.0.0
steps:
  - { name: a, handler: { callable: Ok } }
  - { name: b, handler: { callable: Ok }, dependencies: [a] }
  - { name: c, handler: { callable: Flaky }, dependencies: [b], retry: { max_attempts: 3, backoff_base_ms: 10 } }
"#;

const FAILING: &str = r#"
name: failing
namespace_name: theirs
version: 1.0.0
steps:
  - { name: a, handler: { callable: Ok } }
  - { name: b, handler: { callable: Broken }, dependencies: [a] }
"#;

/// 8 steps, a 4-way join.
const TREE: &str = r#"
name: tree
namespace_name: theirs
version: 1.0.0
steps:
  - { name: root, handler: { callable: Ok } }
  - { name: left, handler: { callable: Ok }, dependencies: [root] }
  - { name: right, handler: { callable: Ok }, dependencies: [root] }
  - { name: leaf_a, handler: { callable: Ok }, dependencies: [left] }
  - { name: leaf_b, handler: { callable: Ok }, dependencies: [left] }
  - { name: leaf_c, handler: { callable: Ok }, dependencies: [right] }
  - { name: leaf_d, handler: { callable: Ok }, dependencies: [right] }
  - { name: join, handler: { callable: Ok }, dependencies: [leaf_a, leaf_b, leaf_c, leaf_d] }
"#;

/// 7 steps, a 3-way join; `hinted` fails once asking to be retried after 1 s.
const MIXED: &str = r#"
name: mixed
namespace_name: theirs
version: 1.0.0
steps:
  - { name: init, handler: { callable: Ok } }
  - { name: left, handler: { callable: Ok }, dependencies: [init] }
  - { name: right, handler: { callable: Ok }, dependencies: [init] }
  - { name: hinted, handler: { callable: Hinted }, dependencies: [left, right], retry: { max_attempts: 2, backoff_base_ms: 10 } }
  - { name: transform, handler: { callable: Ok }, dependencies: [left] }
  - { name: analyze, handler: { callable: Ok }, dependencies: [right] }
  - { name: finalize, handler: { callable: Ok }, dependencies: [hinted, transform, analyze] }
"#;

/// The worker and the embedded orchestrator on their schema (migrated by us on top), connected
/// with a search_path that lacks `tasker`: linear with a retry, diamond, tree, a mixed DAG with
/// a retry the handler asked to delay, a permanent failure;
/// their audit trigger records every result with the worker and correlation ids.
#[tokio::test]
async fn workflows_run_on_tasker_cores_schema_for_a_role_without_tasker_on_its_path() {
    workflows_on_their_schema(false, false).await;
}

/// The same with the lease-only claim (`worker.lean_claim`): the rows written are theirs too.
#[tokio::test]
async fn workflows_run_on_tasker_cores_schema_with_the_lease_only_claim() {
    workflows_on_their_schema(true, false).await;
}

/// The same with the worker completing its successes in its own commits
/// (`orchestration.complete_in_commit`, the orchestrator in its process).
#[tokio::test]
async fn workflows_run_on_tasker_cores_schema_completing_steps_in_the_worker_commit() {
    workflows_on_their_schema(false, true).await;
}

async fn workflows_on_their_schema(lean_claim: bool, in_commit: bool) {
    let db = their_database().await;
    migrate(&db.pool).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{name}\" SET search_path = public"))
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = db.second_pool().await;
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(path, "public");
    // Their send-with-notify is the one in place (ours carries the comment 'tasker_worker'):
    // every step below is enqueued through it.
    let marked: Option<String> = sqlx::query_scalar(
        "SELECT obj_description('tasker.pgmq_send_with_notify(text, jsonb, integer)'::regprocedure, 'pg_proc')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(marked, None);
    for yaml in [
        LINEAR,
        FAILING,
        TREE,
        MIXED,
        DIAMOND.replace("theirtypes", "theirs").as_str(),
    ] {
        register_template(&pool, &TaskTemplate::from_yaml(yaml, "test").unwrap())
            .await
            .unwrap();
    }
    // Their identity_strategy column (their type) holds what the templates say: none here.
    let strategies: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT identity_strategy::text FROM tasker.named_tasks")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(strategies, ["always_unique"]);
    let registry = ok_and_flaky();
    registry.register(
        "Broken",
        handler_fn(|_ctx| async move { Err(StepFailure::new("", "card declined", false)) }),
    );
    registry.register(
        "Hinted",
        handler_fn(|ctx| async move {
            if ctx.attempts == 1 {
                let mut busy = StepFailure::new("", "rate limited", true);
                busy.retry_after_seconds = Some(1);
                return Err(busy);
            }
            Ok(StepSuccess::new(json!({"attempt": ctx.attempts})))
        }),
    );
    let mut config = worker_config(&db, &["theirs"]);
    config.worker.lean_claim = lean_claim;
    let mut orchestrator = Orchestrator::start(&config).await.unwrap();
    let counters = in_commit.then(|| orchestrator.counters().clone());
    let worker = WorkerCore::start_with(config, DispatchMode::Rust(registry), counters)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for (task_name, state) in [
        ("linear", "complete"),
        ("diamond", "complete"),
        ("failing", "blocked_by_failures"),
        ("tree", "complete"),
        ("mixed", "complete"),
    ] {
        let task = create_task(&pool, &task_request("theirs", task_name, json!({"n": task_name})))
            .await
            .unwrap();
        expected.push((task, task_name, state));
    }
    for (task, task_name, state) in &expected {
        assert_eq!(
            wait_settled(&pool, *task, Duration::from_secs(30)).await,
            *state,
            "{task_name}"
        );
        let summary = task_summary(&pool, *task).await.unwrap();
        assert_eq!(summary.state, *state, "{task_name}");
        let detail = tasker_worker::operations::task_detail(&pool, *task)
            .await
            .unwrap();
        assert_eq!(detail.steps.len(), summary.steps.len(), "{task_name}");
    }
    let listed = tasker_worker::operations::tasks(
        &pool,
        &tasker_worker::operations::TaskFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 5);
    // The dashboard's reads, on their timestamp columns.
    let (failing_task, _, _) = expected[2];
    let timeline = tasker_worker::operations::task_transitions(&pool, failing_task)
        .await
        .unwrap();
    assert!(timeline.iter().any(|t| t.to_state == "error"), "{timeline:?}");
    let failed = tasker_worker::operations::failed_steps(&pool, 10).await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let activity = tasker_worker::operations::activity(&pool).await.unwrap();
    assert_eq!(
        (activity.completed_last_hour, activity.failed_last_hour),
        (8 + 8 + 7, 1),
        "{activity:?}"
    );
    // The handler's hint (1 s) outweighed the template's 10 ms backoff.
    let delays: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT (tr.metadata ->> 'delay_seconds')::bigint FROM tasker.workflow_step_transitions tr \
           JOIN tasker.workflow_steps ws USING (workflow_step_uuid) \
           JOIN tasker.named_steps ns USING (named_step_uuid) \
          WHERE ns.name = 'hinted' AND tr.to_state = 'waiting_for_retry'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(delays, [Some(1)]);
    // Their audit: one row per result the worker committed (linear 4: c failed once; diamond 5:
    // right failed once; failing 2; tree 8; mixed 8: hinted failed once), each with the
    // worker's uuid and the task's correlation id.
    let audit: Vec<(Option<uuid::Uuid>, Option<uuid::Uuid>, uuid::Uuid)> = sqlx::query_as(
        "SELECT a.worker_uuid, a.correlation_id, t.correlation_id FROM tasker.workflow_step_result_audit a \
           JOIN tasker.tasks t USING (task_uuid)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 11 + 8 + 8, "{audit:?}");
    // Every committed result came from an in_progress transition written with it (or, by the
    // transition claim, before it), directly before it.
    let unpaired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasker.workflow_step_transitions r \
          WHERE r.to_state IN ('enqueued_for_orchestration', 'enqueued_as_error_for_orchestration') \
            AND (r.from_state <> 'in_progress' OR NOT EXISTS (SELECT 1 FROM tasker.workflow_step_transitions c \
                  WHERE c.workflow_step_uuid = r.workflow_step_uuid AND c.sort_key = r.sort_key - 1 \
                    AND c.to_state = 'in_progress'))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unpaired, 0);
    for (worker_uuid, correlation, task_correlation) in audit {
        assert!(worker_uuid.is_some());
        assert_eq!(correlation, Some(task_correlation));
    }
    // Completed in the commit: every success (8 + 8 + 7, as counted above), with no result
    // message; only the 4 failures went through the queue. (Counted after each commit.)
    let messages: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pgmq.a_orchestration_step_results) \
              + (SELECT count(*) FROM pgmq.q_orchestration_step_results)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let expected_in_commit = if in_commit { 23 } else { 0 };
    assert_eq!(messages, 27 - expected_in_commit as i64);
    let counted = wait_for(
        "the successes completed in the commit to be counted",
        Duration::from_secs(10),
        || async {
            let n = orchestrator.status().completed_in_commit;
            (n >= expected_in_commit).then_some(n)
        },
    )
    .await;
    assert_eq!(counted, expected_in_commit);
    worker.shutdown().await.unwrap();
    orchestrator.shutdown().await;
    pool.close().await;
    db.drop_database().await;
}

/// Handlers `Ok` (succeeds) and `Flaky` (fails its first attempt retryably, then succeeds).
fn ok_and_flaky() -> Arc<InMemoryHandlerRegistry> {
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Ok",
        handler_fn(|_ctx| async move { Ok(StepSuccess::new(json!({"ok": true}))) }),
    );
    registry.register(
        "Flaky",
        handler_fn(|ctx| async move {
            if ctx.attempts == 1 {
                return Err(StepFailure::new("", "first attempt fails", true));
            }
            Ok(StepSuccess::new(json!({"attempt": ctx.attempts})))
        }),
    );
    registry
}
