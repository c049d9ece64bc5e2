//! The migration runner on real PostgreSQL: a fresh database gets every table, index and
//! function; a second run changes nothing; two runs at once both succeed.

use tasker_worker::database::{self, FUNCTION_FILES, MIGRATOR};
use tasker_worker::testing::TestDatabase;

const TABLES: &[&str] = &[
    "task_namespaces",
    "named_tasks",
    "named_steps",
    "named_tasks_named_steps",
    "tasks",
    "workflow_steps",
    "workflow_step_edges",
    "workflow_step_transitions",
    "task_transitions",
    "dead_letters",
];

const INDEXES: &[&str] = &[
    "workflow_step_transitions_most_recent_unique",
    "workflow_step_transitions_sort_key_unique",
    "workflow_step_transitions_current_state_idx",
    "task_transitions_most_recent_unique",
    "task_transitions_sort_key_unique",
    "workflow_step_edges_to_step_idx",
    "workflow_step_edges_from_step_idx",
    "workflow_steps_task_named_step_unique",
    "named_tasks_namespace_name_version_unique",
    "tasks_identity_hash_unique",
];

const FUNCTIONS: &[&str] = &[
    "pgmq_send_with_notify",
    "extract_queue_namespace",
    "pgmq_payload_size_threshold",
];

async fn names(pool: &sqlx::PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(pool).await.expect(sql)
}

#[tokio::test]
async fn a_fresh_database_gets_pgmq_and_the_whole_schema() {
    let db = TestDatabase::empty().await;
    let report = database::migrate(&db.pool).await.expect("migrate");

    assert_eq!(report.pgmq_source, "sql");
    assert!(report.pgmq_installed_now);
    let all_versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(report.applied, all_versions);

    let tables = names(
        &db.pool,
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'tasker'",
    )
    .await;
    for table in TABLES {
        assert!(
            tables.contains(&table.to_string()),
            "missing table tasker.{table}; have {tables:?}"
        );
    }
    let indexes = names(
        &db.pool,
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'tasker'",
    )
    .await;
    for index in INDEXES {
        assert!(indexes.contains(&index.to_string()), "missing index {index}");
    }
    let functions = names(
        &db.pool,
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tasker'",
    )
    .await;
    for function in FUNCTIONS {
        assert!(
            functions.contains(&function.to_string()),
            "missing function tasker.{function}"
        );
    }
    let pgmq_send: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgmq' AND p.proname = 'send'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(pgmq_send > 0, "pgmq.send is not installed");
    db.drop_database().await;
}

#[tokio::test]
async fn the_most_recent_index_allows_one_current_transition_per_step() {
    let db = TestDatabase::migrated().await;
    let pool = &db.pool;
    let setup = r#"
        INSERT INTO tasker.task_namespaces VALUES ('00000000-0000-7000-8000-000000000001', 'ns');
        INSERT INTO tasker.named_tasks (named_task_uuid, task_namespace_uuid, name) VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 't');
        INSERT INTO tasker.named_steps (named_step_uuid, name) VALUES ('00000000-0000-7000-8000-000000000003', 's');
        INSERT INTO tasker.tasks (task_uuid, named_task_uuid, identity_hash, correlation_id) VALUES ('00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000002', 'k', '00000000-0000-7000-8000-000000000009');
        INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid) VALUES ('00000000-0000-7000-8000-000000000005', '00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000003');
        INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, to_state, sort_key, most_recent) VALUES ('00000000-0000-7000-8000-000000000006', '00000000-0000-7000-8000-000000000005', 'pending', 1, true);
    "#;
    sqlx::raw_sql(setup).execute(pool).await.expect("rows");
    let second = sqlx::query(
        "INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, to_state, sort_key, most_recent) \
         VALUES ('00000000-0000-7000-8000-000000000007', '00000000-0000-7000-8000-000000000005', 'enqueued', 2, true)",
    )
    .execute(pool)
    .await;
    let err = second.expect_err("a second most_recent transition must be rejected");
    assert!(
        err.to_string()
            .contains("workflow_step_transitions_most_recent_unique"),
        "{err}"
    );
    let bad_state = sqlx::query(
        "INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, to_state, sort_key) \
         VALUES ('00000000-0000-7000-8000-000000000008', '00000000-0000-7000-8000-000000000005', 'running', 3)",
    )
    .execute(pool)
    .await;
    assert!(bad_state.is_err(), "an unknown state must be rejected");
    db.drop_database().await;
}

#[tokio::test]
async fn a_second_run_is_a_no_op() {
    let db = TestDatabase::migrated().await;
    let schema_before: Vec<String> = names(
        &db.pool,
        "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema IN ('tasker', 'pgmq') ORDER BY 1",
    )
    .await;
    let report = database::migrate(&db.pool).await.expect("second migrate");
    assert!(
        report.applied.is_empty(),
        "second run applied {:?}",
        report.applied
    );
    assert!(!report.pgmq_installed_now);
    assert!(
        report.functions_applied.is_empty(),
        "second run re-applied {:?}",
        report.functions_applied
    );
    let schema_after = names(
        &db.pool,
        "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema IN ('tasker', 'pgmq') ORDER BY 1",
    )
    .await;
    assert_eq!(schema_before, schema_after);
    db.drop_database().await;
}

#[tokio::test]
async fn two_concurrent_runs_both_succeed() {
    let db = TestDatabase::empty().await;
    let other = db.second_pool().await;
    let (a, b) = tokio::join!(database::migrate(&db.pool), database::migrate(&other));
    let (a, b) = (a.expect("first runner"), b.expect("second runner"));
    // Exactly one of them did the work; the other found it done.
    assert_eq!(a.applied.len() + b.applied.len(), MIGRATOR.iter().count());
    assert!(a.pgmq_installed_now ^ b.pgmq_installed_now, "{a:?} {b:?}");
    assert_eq!(
        a.functions_applied.len() + b.functions_applied.len(),
        FUNCTION_FILES.len(),
        "{a:?} {b:?}"
    );
    other.close().await;
    db.drop_database().await;
}

/// The worker's and the orchestrator's functions keep their planner settings (a later `CREATE OR REPLACE` without
/// them would silently drop them, and a worker started on a small database would then keep
/// whole-table scans as its tables grow: see sql/functions/worker_claim.sql).
#[tokio::test]
async fn the_worker_functions_run_with_generic_index_plans() {
    let db = TestDatabase::migrated().await;
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT p.proname::text, coalesce(p.proconfig, '{}') FROM pg_proc p \
           JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname = 'tasker' AND p.proname IN \
                ('worker_read', 'worker_archive', 'worker_claim_next', 'worker_claim_steps', 'worker_commit_results', \
                 'worker_claim_next_lean', 'worker_claim_read', 'worker_claim_steps_lean', \
                 'worker_commit_results_lean', 'worker_held_messages', 'worker_delete_messages', \
                 'worker_send_results_and_ack', 'worker_complete_in_commit', 'worker_lock_completed_tasks', 'worker_finish_commit', \
                 'worker_completed_here', 'orchestrator_settle_task', 'orchestrator_complete_step', \
                 'orchestrator_dynamic_steps') \
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 19, "{rows:?}");
    for (name, config) in &rows {
        for setting in ["plan_cache_mode=force_generic_plan", "enable_seqscan=off"] {
            assert!(
                config.iter().any(|c| c == setting),
                "{name} lacks {setting}: {config:?}"
            );
        }
    }
    db.drop_database().await;
}

/// Claims and the orchestrator's processing of a success commit asynchronously (what they
/// write is re-derived from a durable message if lost in a crash); results commit durably,
/// with the orchestrator's work done in them too.
/// Each function sets this for its own transaction only.
#[tokio::test]
async fn claims_and_orchestration_commit_asynchronously_and_results_durably() {
    let db = TestDatabase::migrated().await;
    let client = tasker_worker::messaging::MessageClient::new(db.pool.clone());
    client.create_queue("worker_sync_queue").await.unwrap();
    client.create_queue("orchestration_step_results").await.unwrap();
    let calls = [
        (
            "SELECT count(*) FROM tasker.worker_claim_next('worker_sync_queue', 'w', 1, 30, ARRAY[gen_random_uuid()])",
            "off",
        ),
        (
            "SELECT count(*) FROM tasker.orchestrator_complete_step(1, gen_random_uuid(), gen_random_uuid(), '{}')",
            "off",
        ),
        (
            "SELECT count(*) FROM tasker.worker_commit_results('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}')",
            "on",
        ),
        // Called by the worker's commit (orchestration.complete_in_commit): the commit stays durable.
        (
            "SELECT count(*) FROM tasker.orchestrator_complete_step(NULL, gen_random_uuid(), gen_random_uuid(), '{}')",
            "on",
        ),
    ];
    for (call, expected) in calls {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query(call).execute(&mut *tx).await.unwrap();
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(setting, expected, "{call}");
        tx.rollback().await.unwrap();
        let after: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(after, "on", "{call} changed the session's setting");
    }
    db.drop_database().await;
}

async fn recorded(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT file_name, checksum FROM tasker.schema_functions ORDER BY file_name")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_function_file_is_applied_and_recorded_with_its_checksum() {
    let db = TestDatabase::empty().await;
    let report = database::migrate(&db.pool).await.expect("migrate");
    let names: Vec<String> = FUNCTION_FILES.iter().map(|(n, _)| n.to_string()).collect();
    assert!(names.len() >= 4, "{names:?}");
    assert_eq!(report.functions_applied, names);
    let rows = recorded(&db.pool).await;
    assert_eq!(rows.len(), FUNCTION_FILES.len(), "{rows:?}");
    for (name, checksum) in &rows {
        assert_eq!(checksum.len(), 64, "{name}: {checksum}");
    }
    database::ensure_schema(&db.pool)
        .await
        .expect("ensure_schema after migrate");
    let second = database::migrate(&db.pool).await.expect("second migrate");
    assert!(second.functions_applied.is_empty(), "{second:?}");
    assert_eq!(recorded(&db.pool).await, rows);
    db.drop_database().await;
}

#[tokio::test]
async fn a_changed_function_file_is_detected_and_re_applied() {
    let db = TestDatabase::migrated().await;
    // As if sql/functions/worker_commit.sql had changed since this database was migrated:
    // its recorded checksum no longer matches, and the function itself is an older one.
    sqlx::raw_sql(
        "UPDATE tasker.schema_functions SET checksum = 'old' WHERE file_name = 'worker_commit.sql'; \
         ALTER FUNCTION tasker.worker_commit_results(uuid[], uuid[], uuid[], text[], jsonb[], jsonb[], jsonb[], text[], bigint[], uuid[], boolean[], uuid[]) RESET ALL;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let err = database::ensure_schema(&db.pool)
        .await
        .expect_err("a stale function file must stop a worker from starting");
    let text = err.to_string();
    assert!(text.contains("sql/functions/worker_commit.sql"), "{text}");
    assert!(!text.contains("queue.sql"), "{text}");
    assert!(text.contains("TaskerWorker::Database.migrate!"), "{text}");

    let report = database::migrate(&db.pool).await.expect("migrate");
    assert_eq!(report.functions_applied, vec!["worker_commit.sql".to_string()]);
    assert!(report.applied.is_empty());
    database::ensure_schema(&db.pool).await.expect("fixed by migrate");
    let config: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(proconfig, '{}') FROM pg_proc WHERE proname = 'worker_commit_results'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(config.iter().any(|c| c == "enable_seqscan=off"), "{config:?}");
    db.drop_database().await;
}

#[tokio::test]
async fn ensure_schema_names_a_database_without_the_schema() {
    let db = TestDatabase::empty().await;
    let err = database::ensure_schema(&db.pool)
        .await
        .expect_err("empty database");
    let text = err.to_string();
    assert!(text.contains("no tasker schema"), "{text}");
    assert!(text.contains("TaskerWorker::Database.migrate!"), "{text}");
    db.drop_database().await;
}

#[tokio::test]
async fn a_database_migrated_by_the_old_migrations_gets_a_clear_error() {
    let db = TestDatabase::migrated().await;
    sqlx::raw_sql(&format!(
        "{SQLX_TABLE}; INSERT INTO public._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20261126000004, 'worker claim next', true, '\\x00', 0)"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let err = database::migrate(&db.pool).await.expect_err("unknown version");
    let text = err.to_string();
    assert!(text.contains("20261126000004"), "{text}");
    assert!(text.contains("Drop and recreate the database"), "{text}");
    assert!(!text.contains("previously applied"), "{text}");
    db.drop_database().await;
}

/// sqlx's bookkeeping table, as an earlier tasker_worker (and tasker-core) left it.
const SQLX_TABLE: &str = "CREATE TABLE public._sqlx_migrations (version bigint PRIMARY KEY, \
     description text NOT NULL, installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, \
     checksum bytea NOT NULL, execution_time bigint NOT NULL)";

#[tokio::test]
async fn a_database_recorded_in_sqlx_migrations_is_adopted_without_running_anything_again() {
    let db = TestDatabase::migrated().await;
    // What a database migrated by the previous runner looks like: our versions in sqlx's table.
    sqlx::raw_sql(SQLX_TABLE).execute(&db.pool).await.unwrap();
    for m in database::MIGRATOR.iter() {
        sqlx::query(
            "INSERT INTO public._sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, true, $3, 0)",
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query("DROP TABLE tasker.tasker_worker_migrations")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = database::migrate(&db.pool).await.expect("adopts the old record");
    assert!(report.applied.is_empty(), "{report:?}");
    let modes: Vec<String> = sqlx::query_scalar("SELECT DISTINCT mode FROM tasker.tasker_worker_migrations")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(modes, vec!["adopted".to_string()]);
    database::ensure_schema(&db.pool)
        .await
        .expect("schema is current");
    db.drop_database().await;
}

#[tokio::test]
async fn a_migration_changed_after_it_was_applied_is_refused_by_name() {
    let db = TestDatabase::migrated().await;
    sqlx::query(
        "UPDATE tasker.tasker_worker_migrations SET checksum = '\\x00' WHERE version = 20261202000001",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let text = database::migrate(&db.pool)
        .await
        .expect_err("changed")
        .to_string();
    assert!(
        text.contains("20261202000001") && text.contains("changed after it was applied"),
        "{text}"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn our_send_with_notify_is_marked_so_a_later_migrate_replaces_it() {
    let db = TestDatabase::migrated().await;
    let marked: Option<String> = sqlx::query_scalar(
        "SELECT obj_description('tasker.pgmq_send_with_notify(text, jsonb, integer)'::regprocedure, 'pg_proc')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(marked.as_deref(), Some("tasker_worker"));
    db.drop_database().await;
}
