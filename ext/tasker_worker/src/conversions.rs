//! Values across the boundary. Events go to Ruby as Hashes with Symbol keys at the top and
//! String keys inside JSON values; completions come back as Hashes. Conversion errors name
//! the field and never consume the event.

use crate::errors;
use magnus::{prelude::*, Error, RArray, RHash, RString, Ruby, Symbol, Value};
use serde::Serialize;
use tasker_worker::limits;
use tasker_worker::worker::checkpoints::CheckpointData;
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
    checkpoint: Option<&'a serde_json::Value>,
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
        checkpoint: c.checkpoint.as_ref(),
    };
    serde_magnus::serialize(ruby, &view)
}

/// A checkpoint a handler saves (`{cursor:, items_processed:, accumulated_results:}`), refused
/// (SerializationError) like a completion when it is not JSON or over the JSON limits.
pub fn checkpoint(ruby: &Ruby, event_id: Uuid, value: Value) -> Result<CheckpointData, Error> {
    let refused = |why: String| {
        errors::named(
            ruby,
            "SerializationError",
            format!("the checkpoint of event {event_id} could not be converted to JSON: {why}"),
        )
    };
    check_ruby_json(value, limits::MAX_JSON_DEPTH + 1, "the checkpoint").map_err(refused)?;
    let data: CheckpointData =
        serde_magnus::deserialize(ruby, value).map_err(|err| refused(err.to_string()))?;
    limits::check_value(&data.cursor, "the cursor").map_err(|e| refused(e.to_string()))?;
    if let Some(accumulated) = &data.accumulated_results {
        limits::check_value(accumulated, "the accumulated results").map_err(|e| refused(e.to_string()))?;
    }
    Ok(data)
}

/// A handler's completion, refused (SerializationError, which the Ruby layer turns into an
/// `invalid_result` failure) when it holds NaN or Infinity, or when its result, metadata or
/// error context is over the limits of `tasker_worker::limits`. The Ruby value is checked
/// before it is converted (`check_ruby_json`), so conversion never recurses deeper than the
/// limit.
pub fn completion(ruby: &Ruby, event_id: Uuid, value: Value) -> Result<FfiCompletion, Error> {
    let refused = |why: String| {
        errors::named(
            ruby,
            "SerializationError",
            format!("the completion of event {event_id} could not be converted to JSON: {why}"),
        )
    };
    // The completion Hash and its `error` Hash add two levels above what the limits measure.
    check_ruby_json(value, limits::MAX_JSON_DEPTH + 2, "the completion").map_err(refused)?;
    let mut completion: FfiCompletion =
        serde_magnus::deserialize(ruby, value).map_err(|err| refused(err.to_string()))?;
    limits::check_value(&completion.result, "the result").map_err(|e| refused(e.to_string()))?;
    check_map(&mut completion.metadata, "the metadata").map_err(refused)?;
    if let Some(error) = completion.error.as_mut() {
        check_map(&mut error.context, "the error context").map_err(refused)?;
    }
    Ok(completion)
}

fn check_map(map: &mut serde_json::Map<String, serde_json::Value>, what: &str) -> Result<(), String> {
    let value = serde_json::Value::Object(std::mem::take(map));
    let checked = limits::check_value(&value, what).map_err(|e| e.to_string());
    if let serde_json::Value::Object(taken) = value {
        *map = taken;
    }
    checked
}

/// Where a value sits inside the value being checked: a Hash key or an Array index under the
/// entry `parent` of the path list (`None`: the top).
struct Step {
    parent: Option<usize>,
    at: Segment,
}

enum Segment {
    Key(Value),
    Index(usize),
}

/// Refuses, before any conversion, a Ruby value that cannot become JSON within the limits:
/// Hashes and Arrays nested deeper than `limit` (`MAX_JSON_DEPTH`, plus the levels of any
/// wrapper the caller puts around the value; a self-referencing Array counts as infinitely
/// deep) or a Float that is NaN or infinite (JSON has neither; converting would store null).
/// Walks with an explicit stack, depth first, so it never recurses and a self-reference is
/// refused after `limit` levels. `what` names the value in the message.
///
/// The Values held in `stack` and `path` are all reachable from `value` (an argument, so
/// marked), and no Ruby code runs during the walk (the GVL is held throughout), so nothing
/// they point to can be freed or changed meanwhile.
pub fn check_ruby_json(value: Value, limit: usize, what: &str) -> Result<(), String> {
    let mut path: Vec<Step> = Vec::new();
    // (value, depth, index of its entry in `path`)
    let mut stack: Vec<(Value, usize, Option<usize>)> = vec![(value, 0, None)];
    while let Some((value, depth, at)) = stack.pop() {
        if let Some(float) = magnus::Float::from_value(value) {
            let f = float.to_f64();
            if !f.is_finite() {
                return Err(format!(
                    "{what} holds {} at {}; JSON has no NaN or Infinity",
                    if f.is_nan() { "NaN" } else { "Infinity" },
                    describe(&path, at)
                ));
            }
            continue;
        }
        let mut children: Vec<(Value, Segment)> = Vec::new();
        if let Some(array) = RArray::from_value(value) {
            // SAFETY: the slice is copied at once, before any Ruby code can run.
            let items = unsafe { array.as_slice() }.to_vec();
            children.extend(items.into_iter().enumerate().map(|(i, v)| (v, Segment::Index(i))));
        } else if let Some(hash) = RHash::from_value(value) {
            hash.foreach(|key: Value, item: Value| {
                children.push((key, Segment::Key(key)));
                children.push((item, Segment::Key(key)));
                Ok(magnus::r_hash::ForEach::Continue)
            })
            .map_err(|err| format!("{what} could not be read: {err}"))?;
        } else {
            continue;
        }
        if depth + 1 > limit {
            return Err(format!(
                "{what} nests deeper than {} levels of Hashes and Arrays (the limit), at {}",
                limits::MAX_JSON_DEPTH,
                describe(&path, at)
            ));
        }
        for (child, segment) in children {
            if RArray::from_value(child).is_none()
                && RHash::from_value(child).is_none()
                && magnus::Float::from_value(child).is_none()
            {
                continue; // a leaf the converter judges on its own
            }
            path.push(Step {
                parent: at,
                at: segment,
            });
            stack.push((child, depth + 1, Some(path.len() - 1)));
        }
    }
    Ok(())
}

/// `top["key"][3]...` for the entry `at` of `path` (only the first 8 levels, then `...`).
fn describe(path: &[Step], mut at: Option<usize>) -> String {
    let mut segments = Vec::new();
    while let Some(index) = at {
        let step = &path[index];
        segments.push(match &step.at {
            Segment::Index(i) => format!("[{i}]"),
            // Only built-in inspects: no handler code runs while the walk holds Values.
            Segment::Key(key)
                if RString::from_value(*key).is_some() || Symbol::from_value(*key).is_some() =>
            {
                format!("[{}]", key.inspect())
            }
            // SAFETY: the class name is copied into the String at once.
            Segment::Key(key) => format!("[a {} key]", unsafe { key.classname() }),
        });
        at = step.parent;
    }
    segments.reverse();
    let shown = segments.len().min(8);
    let mut text = format!("the top{}", segments[..shown].concat());
    if segments.len() > shown {
        text.push_str("...");
    }
    text
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
