//! Test support: each test gets its own throw-away database on the server named by
//! `DATABASE_URL` (default: the local test database). A test that needs PostgreSQL and
//! cannot reach it fails with a message saying so; it never skips.

use crate::database::{self, PoolSettings};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::time::Duration;

/// The default when `DATABASE_URL` is unset; `bin/setup` creates it.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tasker_worker_test";

/// Prefix of every database a test creates; `bin/test` drops leftovers of crashed runs.
pub const TEST_DATABASE_PREFIX: &str = "tw_test_";

pub fn test_database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_string())
}

/// A database created for one test and dropped by `drop_database`.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// A fresh, empty database (no PGMQ, no schema).
    pub async fn empty() -> Self {
        let base = test_database_url();
        let admin = database::connect_options(&base)
            .unwrap_or_else(|err| panic!("DATABASE_URL is unusable: {err}"))
            .database("postgres");
        let name = format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|err| {
            panic!(
                "these tests need PostgreSQL at {} and could not connect: {err}. \
                 Run bin/setup or set DATABASE_URL.",
                database::redact(&base)
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("could not create test database {name}: {err}"));
        let url = replace_database(&base, &name);
        let pool = database::connect(&url, &pool_settings())
            .await
            .unwrap_or_else(|err| panic!("could not connect to {name}: {err}"));
        Self {
            name,
            url,
            pool,
            admin,
        }
    }

    /// A fresh database with PGMQ and the `tasker` schema installed.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        database::migrate(&db.pool)
            .await
            .unwrap_or_else(|err| panic!("migrating {}: {err}", db.name));
        db
    }

    /// Another pool on the same database, for tests that play two processes.
    pub async fn second_pool(&self) -> PgPool {
        database::connect(&self.url, &pool_settings())
            .await
            .expect("second pool")
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let mut conn = self.admin.connect().await.expect("admin connection");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("dropping {}: {err}", self.name));
    }
}

fn pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: 5,
        acquire_timeout: Duration::from_secs(10),
    }
}

/// `url` with its database path replaced by `name` (query string kept).
fn replace_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// A task and its steps, inserted directly (the embedded orchestrator comes later): a
/// template in `named_tasks.configuration`, the task, one row per step with a `pending`
/// transition, and the dependency edges.
pub struct TestWorkflow {
    pub namespace: String,
    pub task_uuid: uuid::Uuid,
    pub correlation_id: uuid::Uuid,
    pub steps: std::collections::HashMap<String, uuid::Uuid>,
    pool: PgPool,
}

impl TestWorkflow {
    /// `template` is a task template: `{"name", "version", "steps": [{"name", "handler":
    /// {"callable"}, "dependencies": [...]}, ...]}`. The template is registered once per
    /// (namespace, name, version); later calls reuse it.
    pub async fn create(
        pool: &PgPool,
        namespace: &str,
        template: serde_json::Value,
        context: serde_json::Value,
    ) -> Self {
        let name = template["name"].as_str().expect("template name").to_string();
        let version = template["version"].as_str().unwrap_or("1.0.0").to_string();
        let mut tx = pool.begin().await.expect("begin");
        let namespace_uuid: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO tasker.task_namespaces (task_namespace_uuid, name) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING task_namespace_uuid",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(namespace)
        .fetch_one(&mut *tx)
        .await
        .expect("namespace");
        let named_task_uuid: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO tasker.named_tasks (named_task_uuid, task_namespace_uuid, name, version, configuration) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (task_namespace_uuid, name, version) DO UPDATE SET configuration = EXCLUDED.configuration \
             RETURNING named_task_uuid",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(namespace_uuid)
        .bind(&name)
        .bind(&version)
        .bind(&template)
        .fetch_one(&mut *tx)
        .await
        .expect("named task");
        let task_uuid = uuid::Uuid::now_v7();
        let correlation_id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO tasker.tasks (task_uuid, named_task_uuid, context, identity_hash, correlation_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(task_uuid)
        .bind(named_task_uuid)
        .bind(&context)
        .bind(task_uuid.to_string())
        .bind(correlation_id)
        .execute(&mut *tx)
        .await
        .expect("task");

        let mut steps = std::collections::HashMap::new();
        let definitions = template["steps"].as_array().cloned().unwrap_or_default();
        for step in &definitions {
            let step_name = step["name"].as_str().expect("step name");
            let named_step_uuid: uuid::Uuid = sqlx::query_scalar(
                "INSERT INTO tasker.named_steps (named_step_uuid, name) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING named_step_uuid",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(step_name)
            .fetch_one(&mut *tx)
            .await
            .expect("named step");
            let step_uuid = uuid::Uuid::now_v7();
            let max_attempts = step["retry"]["max_attempts"].as_i64().unwrap_or(3) as i32;
            sqlx::query(
                "INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, max_attempts, inputs) \
                 VALUES ($1, $2, $3, $4, '{}'::jsonb)",
            )
            .bind(step_uuid)
            .bind(task_uuid)
            .bind(named_step_uuid)
            .bind(max_attempts)
            .execute(&mut *tx)
            .await
            .expect("step");
            sqlx::query(
                "INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, to_state, sort_key, most_recent) \
                 VALUES ($1, $2, 'pending', 1, true)",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(step_uuid)
            .execute(&mut *tx)
            .await
            .expect("pending transition");
            steps.insert(step_name.to_string(), step_uuid);
        }
        for step in &definitions {
            let to = steps[step["name"].as_str().unwrap()];
            for parent in step["dependencies"].as_array().cloned().unwrap_or_default() {
                let from = steps[parent.as_str().expect("dependency name")];
                sqlx::query(
                    "INSERT INTO tasker.workflow_step_edges (workflow_step_edge_uuid, from_step_uuid, to_step_uuid) VALUES ($1, $2, $3)",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await
                .expect("edge");
            }
        }
        tx.commit().await.expect("commit");
        Self {
            namespace: namespace.to_string(),
            task_uuid,
            correlation_id,
            steps,
            pool: pool.clone(),
        }
    }

    pub fn step(&self, name: &str) -> uuid::Uuid {
        *self.steps.get(name).unwrap_or_else(|| panic!("no step {name}"))
    }

    /// The step's message, as the orchestrator would send it.
    pub fn message(&self, name: &str) -> crate::messaging::StepMessage {
        crate::messaging::StepMessage {
            task_uuid: self.task_uuid,
            step_uuid: self.step(name),
            correlation_id: self.correlation_id,
        }
    }

    /// Moves the step to `enqueued` and sends its message to `worker_{ns}_queue`, as the
    /// orchestrator does (state first, then the message). Returns the message id.
    pub async fn enqueue(&self, name: &str) -> i64 {
        self.set_state(name, "enqueued").await;
        self.send(name).await
    }

    /// Sends the step's message without touching its state (for duplicates).
    pub async fn send(&self, name: &str) -> i64 {
        let queue = crate::messaging::worker_queue_name(&self.namespace).expect("queue name");
        let client = crate::messaging::MessageClient::new(self.pool.clone());
        client.create_queue(&queue).await.expect("queue");
        client
            .send_with_notify(&queue, &self.message(name), 0)
            .await
            .expect("send")
    }

    /// Appends a transition to `state` (test set-up, not a protocol operation).
    pub async fn set_state(&self, name: &str, state: &str) {
        let step_uuid = self.step(name);
        let mut tx = self.pool.begin().await.expect("begin");
        let (from, sort_key): (Option<String>, Option<i32>) = sqlx::query_as(
            "UPDATE tasker.workflow_step_transitions SET most_recent = false \
             WHERE workflow_step_uuid = $1 AND most_recent RETURNING to_state, sort_key",
        )
        .bind(step_uuid)
        .fetch_optional(&mut *tx)
        .await
        .expect("current")
        .map(|(s, k): (String, i32)| (Some(s), Some(k)))
        .unwrap_or((None, None));
        sqlx::query(
            "INSERT INTO tasker.workflow_step_transitions (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, sort_key, most_recent) \
             VALUES ($1, $2, $3, $4, $5, true)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(step_uuid)
        .bind(from)
        .bind(state)
        .bind(sort_key.unwrap_or(0) + 1)
        .execute(&mut *tx)
        .await
        .expect("transition");
        tx.commit().await.expect("commit");
    }

    pub async fn state(&self, name: &str) -> String {
        sqlx::query_scalar(
            "SELECT to_state FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 AND most_recent",
        )
        .bind(self.step(name))
        .fetch_one(&self.pool)
        .await
        .expect("state")
    }

    /// `workflow_steps.results` of the step, if any.
    pub async fn results(&self, name: &str) -> Option<serde_json::Value> {
        sqlx::query_scalar("SELECT results FROM tasker.workflow_steps WHERE workflow_step_uuid = $1")
            .bind(self.step(name))
            .fetch_one(&self.pool)
            .await
            .expect("results")
    }

    pub async fn attempts(&self, name: &str) -> i32 {
        sqlx::query_scalar("SELECT attempts FROM tasker.workflow_steps WHERE workflow_step_uuid = $1")
            .bind(self.step(name))
            .fetch_one(&self.pool)
            .await
            .expect("attempts")
    }

    /// All transitions of the step, oldest first: (to_state, metadata).
    pub async fn transitions(&self, name: &str) -> Vec<(String, serde_json::Value)> {
        sqlx::query_as(
            "SELECT to_state, metadata FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 ORDER BY sort_key",
        )
        .bind(self.step(name))
        .fetch_all(&self.pool)
        .await
        .expect("transitions")
    }
}

/// Makes every send to `orchestration_step_results` fail (its table is renamed) until
/// `repair_step_results_queue`: a real failure between writing a result and sending its message.
pub async fn break_step_results_queue(pool: &PgPool) {
    sqlx::query("ALTER TABLE pgmq.q_orchestration_step_results RENAME TO q_broken_step_results")
        .execute(pool)
        .await
        .expect("break the results queue");
}

pub async fn repair_step_results_queue(pool: &PgPool) {
    sqlx::query("ALTER TABLE pgmq.q_broken_step_results RENAME TO q_orchestration_step_results")
        .execute(pool)
        .await
        .expect("repair the results queue");
}

/// A template with one step per `(name, callable, dependencies)`.
pub fn template(name: &str, steps: &[(&str, &str, &[&str])]) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "version": "1.0.0",
        "steps": steps.iter().map(|(step, callable, deps)| serde_json::json!({
            "name": step, "handler": {"callable": callable, "initialization": {}}, "dependencies": deps,
        })).collect::<Vec<_>>(),
    })
}

/// A worker configuration for tests: the test database, short timers.
pub fn worker_config(db: &TestDatabase, namespaces: &[&str]) -> crate::config::TaskerConfig {
    let mut config = crate::config::TaskerConfig::default();
    config.database.url = db.url.clone();
    config.database.max_connections = 6;
    config.worker.namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    config.worker.poll_interval_ms = 100;
    config.worker.visibility_timeout_seconds = 30;
    config.worker.shutdown_timeout_ms = 5_000;
    config
}

/// A request for `ns`/`name`@1.0.0 with `context` and no idempotency key.
pub fn task_request(ns: &str, name: &str, context: serde_json::Value) -> crate::orchestration::TaskRequest {
    crate::orchestration::TaskRequest {
        namespace: ns.into(),
        name: name.into(),
        version: "1.0.0".into(),
        context,
        idempotency_key: None,
    }
}

/// The task's current state.
pub async fn task_state(pool: &PgPool, task: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT to_state FROM tasker.task_transitions WHERE task_uuid = $1 AND most_recent")
        .bind(task)
        .fetch_one(pool)
        .await
        .expect("the task's current state")
}

/// Waits until the task is `complete`, `blocked_by_failures` or `error` (panics after
/// `timeout`); returns which.
pub async fn wait_settled(pool: &PgPool, task: uuid::Uuid, timeout: Duration) -> String {
    wait_for("the task to settle", timeout, || async {
        let state = task_state(pool, task).await;
        matches!(state.as_str(), "complete" | "blocked_by_failures" | "error").then_some(state)
    })
    .await
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replace_database_keeps_the_rest() {
        use super::replace_database;
        assert_eq!(replace_database("postgres://u@h:1/a", "b"), "postgres://u@h:1/b");
        assert_eq!(
            replace_database("postgres://u@h:1/a?sslmode=disable", "b"),
            "postgres://u@h:1/b?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://u@h:1", "b"), "postgres://u@h:1/b");
    }
}
