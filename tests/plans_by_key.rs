//! The claim's hydration (tasker.worker_step_contexts) and the orchestrator's completion
//! (tasker.orchestrator_complete_step) reach every row by key, whatever the statistics say. The claim functions run with generic plans and sequential scans off; a
//! generic plan made from statistics taken while few steps had results (and with none for the
//! edges) had scanned every step with results, through an index, for every claimed step: a
//! drain on a database whose history retention had just pruned (and ANALYZEd) ran at 0.6x a
//! fresh one (BENCHMARKS.md, "Retention"), and it grew with the table. Measured here as the
//! buffers one call touches (EXPLAIN ANALYZE counts those of the statements the function
//! runs), which stay at a few dozen or hundred however many steps there are.

use tasker_worker::testing::TestDatabase;
use uuid::Uuid;

/// `n` tasks of three steps in a chain a -> b -> c, none with results yet.
const CHAINS_SQL: &str = "
INSERT INTO tasker.task_namespaces (task_namespace_uuid, name) VALUES (gen_random_uuid(), 'plans');
INSERT INTO tasker.named_tasks (named_task_uuid, task_namespace_uuid, name, configuration)
     SELECT gen_random_uuid(), task_namespace_uuid, 'plans',
            '{\"steps\": [{\"name\": \"plan_a\"}, {\"name\": \"plan_b\"}, {\"name\": \"plan_c\"}]}'
       FROM tasker.task_namespaces WHERE name = 'plans';
INSERT INTO tasker.named_steps (named_step_uuid, name)
     VALUES (gen_random_uuid(), 'plan_a'), (gen_random_uuid(), 'plan_b'), (gen_random_uuid(), 'plan_c');
WITH t AS (
    INSERT INTO tasker.tasks (task_uuid, named_task_uuid, identity_hash, correlation_id)
    SELECT u, (SELECT named_task_uuid FROM tasker.named_tasks WHERE name = 'plans'), u::text, u
      FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, 3000)) g
    RETURNING task_uuid),
s AS (
    INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid)
    SELECT gen_random_uuid(), t.task_uuid, n.named_step_uuid FROM t, tasker.named_steps n
     WHERE n.name LIKE 'plan_%'
    RETURNING workflow_step_uuid, task_uuid, named_step_uuid)
INSERT INTO tasker.workflow_step_edges (workflow_step_edge_uuid, from_step_uuid, to_step_uuid)
SELECT gen_random_uuid(), p.workflow_step_uuid, c.workflow_step_uuid
  FROM s p JOIN s c ON p.task_uuid = c.task_uuid
  JOIN tasker.named_steps pn ON pn.named_step_uuid = p.named_step_uuid
  JOIN tasker.named_steps cn ON cn.named_step_uuid = c.named_step_uuid
 WHERE (pn.name, cn.name) IN (('plan_a', 'plan_b'), ('plan_b', 'plan_c'));";

/// Buffers (shared hits and reads) of the top node of an EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON).
fn buffers(plan: &serde_json::Value) -> i64 {
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().expect("hit blocks") + top["Shared Read Blocks"].as_i64().unwrap_or(0)
}

/// Buffers (shared hits and reads) that hydrating `step` touches, with the claim's settings
/// and a generic plan, and what it returned.
async fn hydrate(db: &TestDatabase, step: Uuid) -> (i64, serde_json::Value) {
    let mut conn = db.pool.acquire().await.expect("connection");
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off;
         PREPARE hydrate(uuid) AS SELECT dependency_results FROM tasker.worker_step_contexts(ARRAY[$1]);",
    )
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let results: serde_json::Value = sqlx::query_scalar(&format!("EXECUTE hydrate('{step}')"))
        .fetch_one(&mut *conn)
        .await
        .expect("hydrate");
    let plan: serde_json::Value = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE hydrate('{step}')"
    ))
    .fetch_one(&mut *conn)
    .await
    .expect("explain");
    sqlx::raw_sql("DEALLOCATE hydrate; RESET plan_cache_mode; RESET enable_seqscan")
        .execute(&mut *conn)
        .await
        .expect("reset");
    (buffers(&plan), results)
}

#[tokio::test]
async fn hydration_reaches_ancestors_by_key_whatever_the_statistics() {
    let db = TestDatabase::migrated().await;
    sqlx::raw_sql(CHAINS_SQL).execute(&db.pool).await.expect("chains");
    // Statistics taken while no step had results; none for the edges (never analyzed).
    sqlx::raw_sql("ANALYZE tasker.workflow_steps; ANALYZE tasker.tasks")
        .execute(&db.pool)
        .await
        .expect("analyze");
    // Then every a and b step completes.
    sqlx::raw_sql(
        "UPDATE tasker.workflow_steps ws SET results = jsonb_build_object('by', n.name)
           FROM tasker.named_steps n
          WHERE n.named_step_uuid = ws.named_step_uuid AND n.name IN ('plan_a', 'plan_b')",
    )
    .execute(&db.pool)
    .await
    .expect("results");
    let step: Uuid = sqlx::query_scalar(
        "SELECT ws.workflow_step_uuid FROM tasker.workflow_steps ws
           JOIN tasker.named_steps n ON n.named_step_uuid = ws.named_step_uuid
          WHERE n.name = 'plan_c' LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a c step");

    let (buffers, results) = hydrate(&db, step).await;
    assert_eq!(
        results,
        serde_json::json!({"plan_a": {"by": "plan_a"}, "plan_b": {"by": "plan_b"}}),
        "both ancestors' results"
    );
    // By key: the step, its task and template, two edges hops and two ancestors, each a few
    // index pages. A scan of the 6,000 steps with results or of the 6,000 edges is hundreds.
    assert!(
        buffers < 80,
        "hydrating one step touched {buffers} buffers (expected a few dozen)"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn completing_a_step_reaches_its_children_by_key_whatever_the_statistics() {
    let db = TestDatabase::migrated().await;
    sqlx::raw_sql(CHAINS_SQL).execute(&db.pool).await.expect("chains");
    for queue in ["worker_plans_queue", "orchestration_step_results"] {
        sqlx::query("SELECT pgmq.create($1)")
            .bind(queue)
            .execute(&db.pool)
            .await
            .expect("queue");
    }
    // Statistics taken when every step was complete (a quiet night), none for the edges;
    // then a burst: 3,000 chains pending, one of them with its first step's result in.
    sqlx::raw_sql(
        "INSERT INTO tasker.workflow_step_transitions
             (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent)
         SELECT gen_random_uuid(), workflow_step_uuid, NULL, 'complete', 1, true FROM tasker.workflow_steps;
         ANALYZE tasker.workflow_step_transitions; ANALYZE tasker.workflow_steps; ANALYZE tasker.tasks;
         UPDATE tasker.workflow_step_transitions SET to_state = 'pending';
         INSERT INTO tasker.task_transitions (task_transition_uuid, task_uuid, from_state, to_state, sort_key, most_recent)
         SELECT gen_random_uuid(), task_uuid, NULL, 'steps_in_process', 1, true FROM tasker.tasks;",
    )
    .execute(&db.pool)
    .await
    .expect("states");
    // Two chains have their first step's result in; the first completion warms the session
    // (catalog lookups, the prepared archive), the second one is measured.
    let firsts: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "WITH a AS (SELECT ws.task_uuid, ws.workflow_step_uuid FROM tasker.workflow_steps ws
                      JOIN tasker.named_steps n ON n.named_step_uuid = ws.named_step_uuid
                     WHERE n.name = 'plan_a' ORDER BY ws.workflow_step_uuid LIMIT 2),
              moved AS (UPDATE tasker.workflow_step_transitions tr SET to_state = 'enqueued_for_orchestration'
                          FROM a WHERE tr.workflow_step_uuid = a.workflow_step_uuid)
         SELECT task_uuid, workflow_step_uuid FROM a ORDER BY workflow_step_uuid",
    )
    .fetch_all(&db.pool)
    .await
    .expect("two a steps");
    let mut conn = db.pool.acquire().await.expect("connection");
    let mut plan = serde_json::Value::Null;
    for (task, step) in &firsts {
        plan = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT * FROM tasker.orchestrator_complete_step(1, '{task}', '{step}', ARRAY[gen_random_uuid(), gen_random_uuid()])"
        ))
        .fetch_one(&mut *conn)
        .await
        .expect("complete a");
    }
    let step = firsts[1].1;
    let b_state: String = sqlx::query_scalar(
        "SELECT tr.to_state FROM tasker.workflow_step_edges e
           JOIN tasker.workflow_step_transitions tr ON tr.workflow_step_uuid = e.to_step_uuid AND tr.most_recent
          WHERE e.from_step_uuid = $1",
    )
    .bind(step)
    .fetch_one(&mut *conn)
    .await
    .expect("b");
    assert_eq!(b_state, "enqueued", "the child of the completed step is enqueued");
    let touched = buffers(&plan);
    // By key: the task, the step and its transitions, its one child, the child's parents, the
    // message sent and the settle count. A scan of the 9,000 pending steps is thousands.
    assert!(
        touched < 400,
        "completing one step touched {touched} buffers (expected a few hundred at most)"
    );
    drop(conn);
    db.drop_database().await;
}
