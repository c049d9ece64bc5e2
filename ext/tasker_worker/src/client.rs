//! `TaskerWorker::Native::Client`: a connection pool for creating and inspecting tasks and
//! registering templates, usable without a running worker (from a Rails request, a script).
//! Fork-aware like `Native::Worker`: it records its pid; the Ruby layer makes a new client
//! in a forked child, and an inherited one is leaked, never dropped.

use crate::{conversions, errors, nogvl, worker};
use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby, Value};
use std::mem::ManuallyDrop;
use tasker_worker::config::TaskerConfig;
use tasker_worker::database::{self, PoolSettings};
use tasker_worker::limits;
use tasker_worker::operations::{self, TaskFilter};
use tasker_worker::orchestration::{self, TaskRequest, TaskTemplate};
use tasker_worker::retention;
use tasker_worker::{TaskerError, TaskerResult};

#[magnus::wrap(class = "TaskerWorker::Native::Client", free_immediately, size)]
pub struct NativeClient {
    pid: u32,
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    pool: ManuallyDrop<database::PgPool>,
}

impl Drop for NativeClient {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            return; // a forked child: leak the parent's runtime and pool
        }
        // SAFETY: each field is taken once, here, and not used afterwards.
        let (pool, runtime) = unsafe {
            (
                ManuallyDrop::take(&mut self.pool),
                ManuallyDrop::take(&mut self.runtime),
            )
        };
        let _entered = runtime.enter();
        drop(pool);
        drop(_entered);
        runtime.shutdown_background();
    }
}

pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    let class = native.define_class("Client", ruby.class_object())?;
    class.define_singleton_method("connect", function!(NativeClient::connect, 2))?;
    class.define_method("register_template", method!(NativeClient::register_template, 2))?;
    class.define_method("create_task", method!(NativeClient::create_task, 5))?;
    class.define_method("task_plan", method!(NativeClient::task_plan, 5))?;
    class.define_method("task", method!(NativeClient::task, 1))?;
    class.define_method("pid", method!(NativeClient::pid, 0))?;
    class.define_method("tasks", method!(NativeClient::tasks, 5))?;
    class.define_method("task_detail", method!(NativeClient::task_detail, 1))?;
    class.define_method("cancel_task", method!(NativeClient::cancel_task, 1))?;
    class.define_method("retry_step", method!(NativeClient::retry_step, 1))?;
    class.define_method("retry_task", method!(NativeClient::retry_task, 1))?;
    class.define_method(
        "resolve_step_manually",
        method!(NativeClient::resolve_step_manually, 2),
    )?;
    class.define_method("dead_letters", method!(NativeClient::dead_letters, 1))?;
    class.define_method("replay_dead_letter", method!(NativeClient::replay_dead_letter, 1))?;
    class.define_method("workers", method!(NativeClient::workers, 0))?;
    class.define_method("status", method!(NativeClient::status, 0))?;
    class.define_method("activity", method!(NativeClient::activity, 0))?;
    class.define_method("failed_steps", method!(NativeClient::failed_steps, 1))?;
    class.define_method("task_transitions", method!(NativeClient::task_transitions, 1))?;
    class.define_method("prune", method!(NativeClient::prune, 5))?;
    Ok(())
}

/// The configuration with `url` as `database.url`.
pub(crate) fn database_config(url: &str) -> TaskerResult<TaskerConfig> {
    let overrides = TaskerConfig::overrides_from_dotted([("database.url".to_string(), url.into())])?;
    TaskerConfig::load(&overrides)
}

impl NativeClient {
    /// The pool's acquire timeout and the runtime's threads come from the configuration
    /// (`database.acquire_timeout_ms`, `runtime.client_threads`, with `TASKER_CONFIG_PATH`
    /// and the environment applied); `url` and `pool_size` are the caller's.
    fn connect(ruby: &Ruby, url: String, pool_size: u32) -> Result<Self, Error> {
        let config = database_config(&url).map_err(|err| errors::to_ruby(ruby, err))?;
        let runtime = worker::build_runtime(ruby, config.runtime.client_threads)?;
        let settings = PoolSettings {
            max_connections: pool_size.max(1),
            acquire_timeout: config.database.acquire_timeout(),
        };
        let pool = nogvl::without_gvl(|| runtime.block_on(database::connect(&url, &settings)))
            .map_err(|panic| errors::internal(ruby, format!("connect panicked: {panic}")))?
            .map_err(|err| errors::to_ruby(ruby, err))?;
        Ok(Self {
            pid: std::process::id(),
            runtime: ManuallyDrop::new(runtime),
            pool: ManuallyDrop::new(pool),
        })
    }

    /// Runs `work` on the client's runtime with the GVL released.
    fn run<T: Send, F>(
        &self,
        ruby: &Ruby,
        work: impl FnOnce(database::PgPool) -> F + Send,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = TaskerResult<T>>,
    {
        if std::process::id() != self.pid {
            return Err(errors::named(
                ruby,
                "ForkError",
                "this client was created in another process",
            ));
        }
        let pool = (*self.pool).clone();
        nogvl::without_gvl(|| self.runtime.block_on(work(pool)))
            .map_err(|panic| errors::internal(ruby, format!("client call panicked: {panic}")))?
            .map_err(|err| errors::to_ruby(ruby, err))
    }

    /// Validates and registers one YAML template; returns its namespace, name and version.
    fn register_template(ruby: &Ruby, rb_self: &Self, yaml: String, origin: String) -> Result<RHash, Error> {
        let template = TaskTemplate::from_yaml(&yaml, &origin).map_err(|err| errors::to_ruby(ruby, err))?;
        let registered = template.clone();
        rb_self.run(ruby, move |pool| async move {
            orchestration::register_template(&pool, &registered).await
        })?;
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("namespace"), template.namespace_name)?;
        hash.aset(ruby.to_symbol("name"), template.name)?;
        hash.aset(ruby.to_symbol("version"), template.version)?;
        Ok(hash)
    }

    fn create_task(
        ruby: &Ruby,
        rb_self: &Self,
        namespace: String,
        name: String,
        version: String,
        context: Value,
        idempotency_key: Option<String>,
    ) -> Result<String, Error> {
        let request = Self::task_request(ruby, namespace, name, version, context, idempotency_key)?;
        let uuid = rb_self.run(ruby, move |pool| async move {
            orchestration::create_task(&pool, &request).await
        })?;
        Ok(uuid.to_string())
    }

    /// The task's plan as JSON, for `SELECT tasker.create_task($1::jsonb)` on a connection of
    /// the caller's (Client#create_task inside an ActiveRecord transaction). Writes nothing.
    fn task_plan(
        ruby: &Ruby,
        rb_self: &Self,
        namespace: String,
        name: String,
        version: String,
        context: Value,
        idempotency_key: Option<String>,
    ) -> Result<String, Error> {
        let request = Self::task_request(ruby, namespace, name, version, context, idempotency_key)?;
        let plan = rb_self.run(ruby, move |pool| async move {
            orchestration::plan_task(&pool, &request).await
        })?;
        serde_json::to_string(&plan).map_err(|err| errors::to_ruby(ruby, TaskerError::Serialization(err)))
    }

    fn task_request(
        ruby: &Ruby,
        namespace: String,
        name: String,
        version: String,
        context: Value,
        idempotency_key: Option<String>,
    ) -> Result<TaskRequest, Error> {
        // Over the limits (or NaN / Infinity): InvalidInputError, an ArgumentError, naming
        // the limit. Checked on the Ruby value first, so conversion never recurses too deep.
        let invalid = |why: String| errors::named(ruby, "InvalidInputError", why);
        conversions::check_ruby_json(context, limits::MAX_JSON_DEPTH, "the task context").map_err(invalid)?;
        let context: serde_json::Value = serde_magnus::deserialize(ruby, context).map_err(|err| {
            errors::named(
                ruby,
                "SerializationError",
                format!("the task context could not be converted to JSON: {err}"),
            )
        })?;
        limits::check_value(&context, "the task context").map_err(|err| invalid(err.to_string()))?;
        Ok(TaskRequest {
            namespace,
            name,
            version,
            context,
            idempotency_key,
        })
    }

    fn task(ruby: &Ruby, rb_self: &Self, task_uuid: String) -> Result<RHash, Error> {
        let uuid = uuid::Uuid::parse_str(&task_uuid).map_err(|err| {
            errors::to_ruby(
                ruby,
                TaskerError::Configuration(format!("task uuid {task_uuid:?}: {err}")),
            )
        })?;
        let summary: orchestration::TaskSummary = rb_self.run(ruby, move |pool| async move {
            orchestration::task_summary(&pool, uuid).await
        })?;
        serde_magnus::serialize(ruby, &summary)
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// Tasks, newest first (`operations::tasks`); `before` is an RFC 3339 time.
    fn tasks(
        ruby: &Ruby,
        rb_self: &Self,
        state: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
        limit: i64,
        before: Option<String>,
    ) -> Result<Value, Error> {
        let before = before
            .map(|text| operations::parse_time(&text, "before"))
            .transpose()
            .map_err(|err| errors::to_ruby(ruby, err))?;
        let filter = TaskFilter {
            state,
            namespace,
            name,
            before,
            limit,
        };
        let rows = rb_self.run(ruby, move |pool| async move {
            operations::tasks(&pool, &filter).await
        })?;
        serde_magnus::serialize(ruby, &rows)
    }

    /// The task with its DAG (`operations::task_detail`).
    fn task_detail(ruby: &Ruby, rb_self: &Self, task_uuid: String) -> Result<Value, Error> {
        let uuid = parse_uuid(ruby, "task uuid", &task_uuid)?;
        let detail = rb_self.run(ruby, move |pool| async move {
            operations::task_detail(&pool, uuid).await
        })?;
        serde_magnus::serialize(ruby, &detail)
    }

    fn cancel_task(ruby: &Ruby, rb_self: &Self, task_uuid: String) -> Result<Value, Error> {
        let uuid = parse_uuid(ruby, "task uuid", &task_uuid)?;
        let outcome = rb_self.run(ruby, move |pool| async move {
            operations::cancel_task(&pool, uuid).await
        })?;
        serde_magnus::serialize(ruby, &outcome)
    }

    fn retry_step(ruby: &Ruby, rb_self: &Self, step_uuid: String) -> Result<Value, Error> {
        let uuid = parse_uuid(ruby, "step uuid", &step_uuid)?;
        let outcome = rb_self.run(ruby, move |pool| async move {
            operations::retry_step(&pool, uuid).await
        })?;
        serde_magnus::serialize(ruby, &outcome)
    }

    fn retry_task(ruby: &Ruby, rb_self: &Self, task_uuid: String) -> Result<Value, Error> {
        let uuid = parse_uuid(ruby, "task uuid", &task_uuid)?;
        let outcome = rb_self.run(ruby, move |pool| async move {
            operations::retry_task(&pool, uuid).await
        })?;
        serde_magnus::serialize(ruby, &outcome)
    }

    /// `result` is checked against the JSON limits as a task context is.
    fn resolve_step_manually(
        ruby: &Ruby,
        rb_self: &Self,
        step_uuid: String,
        result: Value,
    ) -> Result<Value, Error> {
        let uuid = parse_uuid(ruby, "step uuid", &step_uuid)?;
        conversions::check_ruby_json(result, limits::MAX_JSON_DEPTH, "the manual result")
            .map_err(|why| invalid_input(ruby, why))?;
        let result: serde_json::Value = serde_magnus::deserialize(ruby, result).map_err(|err| {
            errors::named(
                ruby,
                "SerializationError",
                format!("the manual result could not be converted to JSON: {err}"),
            )
        })?;
        let outcome = rb_self.run(ruby, move |pool| async move {
            operations::resolve_step_manually(&pool, uuid, &result).await
        })?;
        serde_magnus::serialize(ruby, &outcome)
    }

    fn dead_letters(ruby: &Ruby, rb_self: &Self, limit: i64) -> Result<Value, Error> {
        let rows = rb_self.run(ruby, move |pool| async move {
            operations::dead_letters(&pool, limit).await
        })?;
        serde_magnus::serialize(ruby, &rows)
    }

    /// Returns the replayed message's new msg_id.
    fn replay_dead_letter(ruby: &Ruby, rb_self: &Self, id: String) -> Result<i64, Error> {
        let uuid = parse_uuid(ruby, "dead letter id", &id)?;
        rb_self.run(ruby, move |pool| async move {
            operations::replay_dead_letter(&pool, uuid).await
        })
    }

    fn workers(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        let rows = rb_self.run(ruby, |pool| async move { operations::workers(&pool).await })?;
        serde_magnus::serialize(ruby, &rows)
    }

    fn status(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        let status = rb_self.run(ruby, |pool| async move { operations::status(&pool).await })?;
        serde_magnus::serialize(ruby, &status)
    }

    /// One retention round; ages in seconds (0: that kind kept), as Ruby's configuration has them.
    fn prune(
        ruby: &Ruby,
        rb_self: &Self,
        completed_after_s: u64,
        failed_after_s: u64,
        archive_after_s: u64,
        batch_size: u32,
        dry_run: bool,
    ) -> Result<RHash, Error> {
        let config = tasker_worker::config::RetentionConfig {
            completed_after_seconds: completed_after_s,
            failed_after_seconds: failed_after_s,
            archive_after_seconds: archive_after_s,
            interval_seconds: 0,
            batch_size,
        };
        let policy = retention::RetentionPolicy::from(&config);
        let report = rb_self.run(ruby, move |pool| async move {
            retention::prune(&pool, &policy, dry_run).await
        })?;
        let deleted = ruby.hash_new();
        for (table, rows) in &report.deleted {
            deleted.aset(table.as_str(), *rows)?;
        }
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("ran"), report.ran)?;
        hash.aset(ruby.to_symbol("dry_run"), report.dry_run)?;
        hash.aset(ruby.to_symbol("batches"), report.batches)?;
        hash.aset(ruby.to_symbol("deleted"), deleted)?;
        Ok(hash)
    }
}

impl NativeClient {
    /// The dashboard's views (issue 18): `operations::activity`, `failed_steps`, `task_transitions`.
    fn activity(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        let activity = rb_self.run(ruby, |pool| async move { operations::activity(&pool).await })?;
        serde_magnus::serialize(ruby, &activity)
    }

    fn failed_steps(ruby: &Ruby, rb_self: &Self, limit: i64) -> Result<Value, Error> {
        let rows = rb_self.run(ruby, move |pool| async move {
            operations::failed_steps(&pool, limit).await
        })?;
        serde_magnus::serialize(ruby, &rows)
    }

    fn task_transitions(ruby: &Ruby, rb_self: &Self, task_uuid: String) -> Result<Value, Error> {
        let uuid = parse_uuid(ruby, "task uuid", &task_uuid)?;
        let rows = rb_self.run(ruby, move |pool| async move {
            operations::task_transitions(&pool, uuid).await
        })?;
        serde_magnus::serialize(ruby, &rows)
    }
}

fn invalid_input(ruby: &Ruby, why: impl Into<String>) -> Error {
    errors::named(ruby, "InvalidInputError", why)
}

/// `text` as a uuid, or InvalidInputError naming `what`.
fn parse_uuid(ruby: &Ruby, what: &str, text: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::parse_str(text).map_err(|err| invalid_input(ruby, format!("{what} {text:?}: {err}")))
}
