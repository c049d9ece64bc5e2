//! The dashboard's views (src/operations.rs: activity, failed_steps, task_transitions, and
//! `tasks` by a state) on real PostgreSQL, on workflows inserted directly.

use serde_json::json;
use tasker_worker::operations::{self, TaskFilter};
use tasker_worker::testing::{template, TestDatabase, TestWorkflow};

async fn failed_workflow(db: &TestDatabase, ns: &str) -> TestWorkflow {
    let wf = TestWorkflow::create(
        &db.pool,
        ns,
        template(
            "pair",
            &[("first", "First", &[]), ("second", "Second", &["first"])],
        ),
        json!({}),
    )
    .await;
    sqlx::query(
        "INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, to_state, sort_key, most_recent) \
         VALUES (gen_random_uuid(), $1, 'error', 1, true)",
    )
    .bind(wf.task_uuid)
    .execute(&db.pool)
    .await
    .expect("task transition");
    wf.set_state("first", "in_progress").await;
    wf.set_state("first", "error").await;
    sqlx::query(
        "UPDATE tasker.workflow_steps SET attempts = 1, \
           results = '{\"error\": {\"message\": \"<b>boom</b>\", \"error_type\": \"permanent_error\"}}' \
         WHERE workflow_step_uuid = $1",
    )
    .bind(wf.step("first"))
    .execute(&db.pool)
    .await
    .expect("results");
    wf
}

#[tokio::test]
async fn failed_steps_transitions_activity_and_tasks_by_state() {
    let db = TestDatabase::migrated().await;
    let wf = failed_workflow(&db, "dash").await;
    let other = failed_workflow(&db, "dash2").await;
    other.set_state("first", "waiting_for_retry").await;

    let failed = operations::failed_steps(&db.pool, 10)
        .await
        .expect("failed_steps");
    assert_eq!(failed.len(), 2, "{failed:?}");
    let mine = failed
        .iter()
        .find(|f| f.task_uuid == wf.task_uuid)
        .expect("wf's step");
    assert_eq!(mine.step_uuid, wf.step("first"));
    assert_eq!(mine.step_name, "first");
    assert_eq!(mine.namespace, "dash");
    assert_eq!(mine.state, "error");
    assert_eq!(mine.attempts, 1);
    assert_eq!(mine.error_type, "permanent_error");
    assert_eq!(mine.message.as_deref(), Some("<b>boom</b>"));
    let theirs = failed
        .iter()
        .find(|f| f.task_uuid == other.task_uuid)
        .expect("other's step");
    assert_eq!(theirs.state, "waiting_for_retry");
    assert_eq!(
        operations::failed_steps(&db.pool, 1).await.expect("limit").len(),
        1
    );

    let timeline = operations::task_transitions(&db.pool, wf.task_uuid)
        .await
        .expect("transitions");
    let first: Vec<&str> = timeline
        .iter()
        .filter(|t| t.step_name.as_deref() == Some("first"))
        .map(|t| t.to_state.as_str())
        .collect();
    assert_eq!(first, ["pending", "in_progress", "error"]);
    assert!(timeline
        .iter()
        .any(|t| t.step_name.is_none() && t.to_state == "error"));
    assert!(timeline.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    let unknown = operations::task_transitions(&db.pool, uuid::Uuid::now_v7()).await;
    assert!(
        matches!(unknown, Err(tasker_worker::TaskerError::NotFound(_))),
        "{unknown:?}"
    );

    let activity = operations::activity(&db.pool).await.expect("activity");
    assert_eq!(activity.failed_last_hour, 2, "{activity:?}");
    assert_eq!(activity.completed_last_hour, 0);
    wf.set_state("second", "complete").await;
    let activity = operations::activity(&db.pool).await.expect("activity");
    assert_eq!(activity.completed_last_hour, 1);
    assert!((activity.steps_per_second - 1.0 / 3600.0).abs() < 1e-9);
    assert!(activity.queues.is_empty() || activity.queues.iter().all(|q| q.length >= 0));

    let in_error = operations::tasks(
        &db.pool,
        &TaskFilter {
            state: Some("error".into()),
            limit: 10,
            ..TaskFilter::default()
        },
    )
    .await
    .expect("tasks");
    let uuids: Vec<_> = in_error.iter().map(|t| t.task_uuid).collect();
    assert_eq!(uuids, [other.task_uuid, wf.task_uuid], "newest first");
    assert_eq!(in_error[1].steps_in_error, 1);
    let none = operations::tasks(
        &db.pool,
        &TaskFilter {
            state: Some("complete".into()),
            limit: 10,
            ..TaskFilter::default()
        },
    )
    .await
    .expect("tasks");
    assert!(none.is_empty(), "{none:?}");
    db.drop_database().await;
}

/// The activity query reads the step transitions to complete and error through the partial
/// index made for it, and no index over every transition's created_at is left to cost each
/// step's worker transitions their entries (migration 20261205000001).
#[tokio::test]
async fn activity_reads_through_its_partial_index() {
    let db = TestDatabase::migrated().await;
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .expect("set");
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", operations::ACTIVITY_SQL))
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("workflow_step_transitions_activity_idx"),
        "activity does not use its index:\n{plan}"
    );
    let unfiltered: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes \
          WHERE schemaname = 'tasker' AND tablename = 'workflow_step_transitions' \
            AND indexdef LIKE '%(created_at)%' AND indexdef NOT LIKE '% WHERE %'",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("indexes");
    assert!(unfiltered.is_empty(), "{unfiltered:?}");
}
