//! Retention (src/retention.rs, sql/functions/retention.sql) on real PostgreSQL: ages
//! honoured per kind, every dependent row of a deleted task gone, running tasks kept, archive
//! rows purged by age, batches of `batch_size`, two processes at once, the lock, dry runs, the
//! queue tables' autovacuum settings and the configuration's checks. Histories are written
//! with SQL (backdated), not run.

use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::messaging::MessageClient;
use tasker_worker::retention::{self, PruneReport, RetentionPolicy, TASK_TABLES};
use tasker_worker::testing::TestDatabase;
use uuid::Uuid;

const HOUR: u64 = 3600;

/// Writes `n` tasks whose last transition (to `state`) is `age_s` seconds old, each with
/// steps `ret_a` -> `ret_b` (one edge) whose last transition is to `step_state`: per task 2
/// task transitions, 2 steps, 1 edge, 4 step transitions. Returns the tasks.
async fn history(db: &TestDatabase, n: i32, state: &str, step_state: &str, age_s: u64) -> Vec<Uuid> {
    sqlx::raw_sql(
        "INSERT INTO tasker.task_namespaces (task_namespace_uuid, name) VALUES (gen_random_uuid(), 'ret') ON CONFLICT DO NOTHING;
         INSERT INTO tasker.named_tasks (named_task_uuid, task_namespace_uuid, name)
              SELECT gen_random_uuid(), task_namespace_uuid, 'ret' FROM tasker.task_namespaces WHERE name = 'ret'
         ON CONFLICT DO NOTHING;
         INSERT INTO tasker.named_steps (named_step_uuid, name) VALUES (gen_random_uuid(), 'ret_a'), (gen_random_uuid(), 'ret_b')
         ON CONFLICT DO NOTHING;",
    )
    .execute(&db.pool)
    .await
    .expect("templates");
    sqlx::query_scalar(HISTORY_SQL)
        .bind(n)
        .bind(state)
        .bind(step_state)
        .bind(age_s as i64)
        .fetch_one(&db.pool)
        .await
        .expect("history")
}

const HISTORY_SQL: &str = "
WITH t AS (
    INSERT INTO tasker.tasks (task_uuid, named_task_uuid, complete, identity_hash, correlation_id, created_at, completed_at)
    SELECT u, (SELECT named_task_uuid FROM tasker.named_tasks WHERE name = 'ret'), $2 = 'complete', u::text, u,
           now() - make_interval(secs => $4), now() - make_interval(secs => $4)
      FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) g
    RETURNING task_uuid),
tt AS (
    INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent, created_at)
    SELECT gen_random_uuid(), t.task_uuid, x.f, x.s, x.k, x.last, now() - make_interval(secs => $4)
      FROM t, (VALUES (NULL, 'pending', 1, false), ('pending', $2, 2, true)) x (f, s, k, last)),
s AS (
    INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid)
    SELECT gen_random_uuid(), t.task_uuid, n.named_step_uuid
      FROM t, tasker.named_steps n WHERE n.name IN ('ret_a', 'ret_b')
    RETURNING workflow_step_uuid, task_uuid, named_step_uuid),
st AS (
    INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent, created_at)
    SELECT gen_random_uuid(), s.workflow_step_uuid, x.f, x.s, x.k, x.last, now() - make_interval(secs => $4)
      FROM s, (VALUES (NULL, 'pending', 1, false), ('pending', $3, 2, true)) x (f, s, k, last)),
e AS (
    INSERT INTO tasker.workflow_step_edges (workflow_step_edge_uuid, from_step_uuid, to_step_uuid)
    SELECT gen_random_uuid(), a.workflow_step_uuid, b.workflow_step_uuid
      FROM s a JOIN s b ON a.task_uuid = b.task_uuid
     WHERE a.named_step_uuid = (SELECT named_step_uuid FROM tasker.named_steps WHERE name = 'ret_a')
       AND b.named_step_uuid = (SELECT named_step_uuid FROM tasker.named_steps WHERE name = 'ret_b'))
SELECT array_agg(task_uuid) FROM t";

/// Rows of `tasks` left in each table of a task, in `TASK_TABLES` order.
async fn rows_of(db: &TestDatabase, tasks: &[Uuid]) -> [i64; 5] {
    let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "WITH s AS (SELECT workflow_step_uuid FROM tasker.workflow_steps WHERE task_uuid = ANY ($1))
         SELECT (SELECT count(*) FROM tasker.workflow_step_transitions WHERE workflow_step_uuid IN (SELECT * FROM s)),
                (SELECT count(*) FROM tasker.workflow_step_edges WHERE from_step_uuid IN (SELECT * FROM s) OR to_step_uuid IN (SELECT * FROM s)),
                (SELECT count(*) FROM s),
                (SELECT count(*) FROM tasker.task_transitions WHERE task_uuid = ANY ($1)),
                (SELECT count(*) FROM tasker.tasks WHERE task_uuid = ANY ($1))",
    )
    .bind(tasks)
    .fetch_one(&db.pool)
    .await
    .expect("rows of tasks");
    [row.0, row.1, row.2, row.3, row.4]
}

/// Rows per task in `TASK_TABLES` order, as `history` writes them.
fn per_task(n: u64) -> [u64; 5] {
    [4 * n, n, 2 * n, 2 * n, n]
}

fn task_counts(report: &PruneReport) -> [u64; 5] {
    TASK_TABLES.map(|t| report.rows(t))
}

fn policy(completed_h: Option<u64>, failed_h: Option<u64>, batch_size: u32) -> RetentionPolicy {
    RetentionPolicy {
        completed_after: completed_h.map(|h| Duration::from_secs(h * HOUR)),
        failed_after: failed_h.map(|h| Duration::from_secs(h * HOUR)),
        archive_after: None,
        batch_size,
    }
}

#[tokio::test]
async fn ages_are_honoured_per_kind_and_running_tasks_are_kept() {
    let db = TestDatabase::migrated().await;
    let old_done = history(&db, 3, "complete", "complete", 48 * HOUR).await;
    let old_resolved = history(&db, 1, "resolved_manually", "resolved_manually", 48 * HOUR).await;
    let new_done = history(&db, 2, "complete", "complete", HOUR / 2).await;
    let old_running = history(&db, 2, "steps_in_process", "in_progress", 48 * HOUR).await;
    // Cancelled, but a worker still runs one of its steps.
    let old_cancelled_busy = history(&db, 1, "cancelled", "in_progress", 48 * HOUR).await;
    let old_failed = history(&db, 2, "error", "error", 48 * HOUR).await;
    let old_cancelled = history(&db, 1, "cancelled", "cancelled", 48 * HOUR).await;

    let report = retention::prune(&db.pool, &policy(Some(24), None, 100), false)
        .await
        .expect("prune");
    assert!(report.ran && !report.dry_run);
    assert_eq!(task_counts(&report), per_task(4), "{report:?}");
    assert_eq!(
        rows_of(&db, &[old_done.clone(), old_resolved].concat()).await,
        [0; 5]
    );
    for (kept, n) in [
        (&new_done, 2),
        (&old_running, 2),
        (&old_failed, 2),
        (&old_cancelled, 1),
        (&old_cancelled_busy, 1),
    ] {
        assert_eq!(rows_of(&db, kept).await, per_task(n).map(|r| r as i64));
    }

    // Failed tasks go once their age is set; the busy cancelled one still stays.
    let report = retention::prune(&db.pool, &policy(Some(24), Some(24), 100), false)
        .await
        .expect("prune failed");
    assert_eq!(task_counts(&report), per_task(3), "{report:?}");
    assert_eq!(rows_of(&db, &[old_failed, old_cancelled].concat()).await, [0; 5]);
    assert_eq!(
        rows_of(&db, &old_cancelled_busy).await,
        per_task(1).map(|r| r as i64)
    );
    assert_eq!(rows_of(&db, &new_done).await, per_task(2).map(|r| r as i64));
    assert_eq!(rows_of(&db, &old_running).await, per_task(2).map(|r| r as i64));
    db.drop_database().await;
}

#[tokio::test]
async fn batches_are_at_most_batch_size() {
    let db = TestDatabase::migrated().await;
    let old = history(&db, 25, "complete", "complete", 48 * HOUR).await;
    let report = retention::prune(&db.pool, &policy(Some(24), None, 10), false)
        .await
        .expect("prune");
    // 10 + 10 + 5: the short batch ends the round.
    assert_eq!(report.batches, 3, "{report:?}");
    assert_eq!(task_counts(&report), per_task(25));
    assert_eq!(rows_of(&db, &old).await, [0; 5]);
    db.drop_database().await;
}

#[tokio::test]
async fn a_dry_run_counts_what_a_round_deletes_and_deletes_nothing() {
    let db = TestDatabase::migrated().await;
    let old = history(&db, 5, "complete", "complete", 48 * HOUR).await;
    history(&db, 2, "complete", "complete", 60).await;
    let dry = retention::prune(&db.pool, &policy(Some(24), None, 2), true)
        .await
        .expect("dry run");
    assert!(dry.ran && dry.dry_run);
    assert_eq!(dry.batches, 0);
    assert_eq!(task_counts(&dry), per_task(5), "{dry:?}");
    assert_eq!(rows_of(&db, &old).await, per_task(5).map(|r| r as i64));
    let real = retention::prune(&db.pool, &policy(Some(24), None, 2), false)
        .await
        .expect("prune");
    assert!(real.ran, "the dry run released the lock: {real:?}");
    assert_eq!(task_counts(&real), task_counts(&dry));
    db.drop_database().await;
}

#[tokio::test]
async fn a_round_is_skipped_while_another_process_holds_the_lock() {
    let db = TestDatabase::migrated().await;
    let old = history(&db, 3, "complete", "complete", 48 * HOUR).await;
    let other = db.second_pool().await;
    let mut holder = other.acquire().await.expect("connection");
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(retention::LOCK_KEY)
        .fetch_one(&mut *holder)
        .await
        .expect("lock");
    assert!(held);
    let report = retention::prune(&db.pool, &policy(Some(24), None, 100), false)
        .await
        .expect("prune");
    assert!(!report.ran, "{report:?}");
    assert_eq!(report.total(), 0);
    assert_eq!(rows_of(&db, &old).await, per_task(3).map(|r| r as i64));
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(retention::LOCK_KEY)
        .execute(&mut *holder)
        .await
        .expect("unlock");
    drop(holder);
    let report = retention::prune(&db.pool, &policy(Some(24), None, 100), false)
        .await
        .expect("prune");
    assert!(report.ran);
    assert_eq!(task_counts(&report), per_task(3));
    other.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn two_processes_at_once_never_delete_a_task_twice_or_fail() {
    let db = TestDatabase::migrated().await;
    let old = history(&db, 400, "complete", "complete", 48 * HOUR).await;
    let other = db.second_pool().await;
    let p = policy(Some(24), None, 20);
    let mut deleted = 0;
    let mut skipped = 0;
    // Rounds from both pools at once until the history is gone.
    for _ in 0..50 {
        let (a, b) = tokio::join!(
            retention::prune(&db.pool, &p, false),
            retention::prune(&other, &p, false)
        );
        for report in [a.expect("first process"), b.expect("second process")] {
            deleted += report.rows("tasker.tasks");
            skipped += u64::from(!report.ran);
        }
        if rows_of(&db, &old).await == [0; 5] {
            break;
        }
    }
    assert_eq!(deleted, 400, "every task deleted exactly once");
    assert_eq!(rows_of(&db, &old).await, [0; 5]);
    eprintln!("rounds skipped for the lock: {skipped}");
    other.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn archive_rows_older_than_the_age_are_purged_in_every_queue() {
    let db = TestDatabase::migrated().await;
    let client = MessageClient::new(db.pool.clone());
    for queue in ["worker_ret_queue", "orchestration_step_results"] {
        client.create_queue(queue).await.expect("queue");
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                client
                    .send_with_notify(queue, &serde_json::json!({ "i": i }), 0)
                    .await
                    .expect("send"),
            );
        }
        client.archive(queue, &ids).await.expect("archive");
        sqlx::query(&format!(
            "UPDATE pgmq.a_{queue} SET archived_at = now() - interval '2 days' WHERE msg_id <= $1"
        ))
        .bind(ids[2])
        .execute(&db.pool)
        .await
        .expect("backdate");
    }
    let p = RetentionPolicy {
        archive_after: Some(Duration::from_secs(24 * HOUR)),
        batch_size: 2,
        ..policy(None, None, 2)
    };
    let dry = retention::prune(&db.pool, &p, true).await.expect("dry run");
    assert_eq!(dry.rows("pgmq.a_worker_ret_queue"), 3, "{dry:?}");
    let report = retention::prune(&db.pool, &p, false).await.expect("prune");
    assert!(report.ran, "{report:?}");
    for queue in ["worker_ret_queue", "orchestration_step_results"] {
        assert_eq!(report.rows(&format!("pgmq.a_{queue}")), 3, "{report:?}");
        let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.a_{queue}"))
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(left, 2, "{queue}: the two new archive rows stay");
    }
    // 2 + 1 per queue
    assert_eq!(report.batches, 4);
    db.drop_database().await;
}

#[tokio::test]
async fn queue_tables_get_their_autovacuum_settings() {
    let db = TestDatabase::migrated().await;
    MessageClient::new(db.pool.clone())
        .create_queue("worker_ret_queue")
        .await
        .expect("queue");
    for table in ["q_worker_ret_queue", "a_worker_ret_queue"] {
        let options: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = ('pgmq.' || $1)::regclass",
        )
        .bind(table)
        .fetch_one(&db.pool)
        .await
        .expect("reloptions");
        assert!(
            options
                .iter()
                .any(|o| o.starts_with("autovacuum_vacuum_threshold=")),
            "{table}: {options:?}"
        );
    }
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'tasker.workflow_step_transitions'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .expect("reloptions");
    assert!(
        options.contains(&"autovacuum_vacuum_scale_factor=0.01".to_string()),
        "{options:?}"
    );
    db.drop_database().await;
}

#[test]
fn bad_retention_values_fail_at_load_naming_the_key() {
    for (key, value) in [
        ("retention.batch_size", toml::Value::Integer(0)),
        ("retention.interval_seconds", toml::Value::Integer(3)),
        ("retention.completed_after_seconds", toml::Value::Integer(-1)),
        ("retention.failed_after_seconds", toml::Value::String("7d".into())),
    ] {
        let overrides = TaskerConfig::overrides_from_dotted([(key.to_string(), value)]).expect("overrides");
        let err = TaskerConfig::load_from(None, &|_| None, &overrides)
            .expect_err(key)
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let defaults = TaskerConfig::default().retention;
    let policy = RetentionPolicy::from(&defaults);
    assert_eq!(policy.failed_after, None, "failed tasks are kept by default");
    assert_eq!(policy.completed_after, Some(Duration::from_secs(14 * 24 * HOUR)));
    assert_eq!(defaults.interval(), Some(Duration::from_secs(300)));
}
