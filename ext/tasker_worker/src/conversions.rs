//! Values across the boundary. Events go to Ruby as Hashes with Symbol keys at the top and
//! String keys inside JSON values; completions come back as Hashes. Conversion errors name
//! the field and never consume the event.

use crate::errors;
use magnus::{Error, RHash, Ruby, Value};
use serde::Serialize;
use tasker_worker::worker::{FfiCompletion, FfiDispatchMetrics, FfiStepEvent, HandlerSpec, WorkerStatus};
use uuid::Uuid;

/// What a Ruby handler sees of a step (the template's full step definition stays in Rust).
#[derive(Serialize)]
struct EventView<'a> {
    event_id: Uuid,
    task_uuid: Uuid,
    step_uuid: Uuid,
    correlation_id: Uuid,
    namespace: &'a str,
    task_name: &'a str,
    task_version: &'a str,
    step_name: &'a str,
    task_context: &'a serde_json::Value,
    inputs: &'a serde_json::Value,
    handler: &'a HandlerSpec,
    dependency_results: &'a serde_json::Map<String, serde_json::Value>,
    attempts: i32,
    max_attempts: i32,
    retryable: bool,
    timeout_seconds: Option<u64>,
}

pub fn event(ruby: &Ruby, event: &FfiStepEvent) -> Result<RHash, Error> {
    let c = &event.context;
    let view = EventView {
        event_id: event.event_id,
        task_uuid: c.task_uuid,
        step_uuid: c.step_uuid,
        correlation_id: c.correlation_id,
        namespace: &c.namespace,
        task_name: &c.task_name,
        task_version: &c.task_version,
        step_name: &c.step_name,
        task_context: &c.task_context,
        inputs: &c.inputs,
        handler: &c.handler,
        dependency_results: &c.dependency_results,
        attempts: c.attempts,
        max_attempts: c.max_attempts,
        retryable: c.retryable,
        timeout_seconds: c.timeout_seconds,
    };
    serde_magnus::serialize(ruby, &view)
}

pub fn completion(ruby: &Ruby, event_id: Uuid, value: Value) -> Result<FfiCompletion, Error> {
    serde_magnus::deserialize(ruby, value).map_err(|err| {
        errors::named(
            ruby,
            "SerializationError",
            format!("the completion of event {event_id} could not be converted to JSON: {err}"),
        )
    })
}

/// Dotted config keys => values, as a TOML table for the core's loader.
pub fn overrides(ruby: &Ruby, hash: RHash) -> Result<toml::Table, Error> {
    let json: serde_json::Map<String, serde_json::Value> =
        serde_magnus::deserialize(ruby, hash).map_err(|err| {
            errors::named(
                ruby,
                "ConfigurationError",
                format!("configuration overrides: {err}"),
            )
        })?;
    let mut pairs = Vec::with_capacity(json.len());
    for (key, value) in json {
        let value = to_toml(&value).ok_or_else(|| {
            errors::named(
                ruby,
                "ConfigurationError",
                format!("{key}: {value} cannot be a configuration value"),
            )
        })?;
        pairs.push((key, value));
    }
    tasker_worker::config::TaskerConfig::overrides_from_dotted(pairs)
        .map_err(|err| errors::to_ruby(ruby, err))
}

fn to_toml(value: &serde_json::Value) -> Option<toml::Value> {
    Some(match value {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(items) => {
            toml::Value::Array(items.iter().map(to_toml).collect::<Option<_>>()?)
        }
        serde_json::Value::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// The core's status (Symbol keys) with the pull channel's metrics under `:ffi`.
pub fn status(ruby: &Ruby, worker: Option<&WorkerStatus>, ffi: &FfiDispatchMetrics) -> Result<RHash, Error> {
    let hash: RHash = match worker {
        Some(worker) => serde_magnus::serialize(ruby, worker)?,
        None => {
            let hash = ruby.hash_new();
            hash.aset(ruby.to_symbol("running"), false)?;
            hash
        }
    };
    let ffi: RHash = serde_magnus::serialize(ruby, ffi)?;
    hash.aset(ruby.to_symbol("ffi"), ffi)?;
    Ok(hash)
}
