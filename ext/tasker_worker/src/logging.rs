//! The core's `tracing` events, handed to Ruby's Logger. A layer formats each event into a
//! bounded queue; a Ruby thread drains it with `TaskerWorker::Native.drain_logs(timeout)`.
//! When Ruby does not keep up, records are dropped and counted (logging must never slow or
//! block the worker). Each record keeps its fields apart from its message, so Ruby can write
//! them as `key=value` pairs or as JSON; every value is one line (newlines become spaces).

use crate::nogvl;
use magnus::{function, prelude::*, Error, RArray, RModule, Ruby};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const CAPACITY: usize = 10_000;

struct Record {
    level: &'static str,
    target: String,
    message: String,
    fields: Vec<(&'static str, FieldValue)>,
}

/// A field's value, typed so JSON lines keep numbers and booleans.
enum FieldValue {
    Text(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

struct Queue {
    records: Mutex<VecDeque<Record>>,
    ready: Condvar,
    dropped: AtomicU64,
    /// Records ever queued (not dropped): `LogForwarder.flush` waits until Ruby wrote as many.
    queued: AtomicU64,
    /// 0 = off, 1 = error ... 5 = trace.
    max_level: AtomicU8,
}

fn queue() -> &'static Queue {
    static QUEUE: OnceLock<Queue> = OnceLock::new();
    QUEUE.get_or_init(|| Queue {
        records: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
        dropped: AtomicU64::new(0),
        queued: AtomicU64::new(0),
        max_level: AtomicU8::new(3),
    })
}

/// PostgreSQL NOTICEs ("already exists, skipping") are routine; sqlx logs them at INFO.
const NOTICE_TARGET: &str = "sqlx::postgres::notice";
/// sqlx's statement log: every query, with its multi-line SQL, at DEBUG (slow ones at WARN).
/// Every statement is moved to TRACE so `log_level: debug` shows the worker's own lines; a
/// slow-statement warning stays, on one line like every record.
const QUERY_TARGET: &str = "sqlx::query";

fn effective(metadata: &tracing::Metadata<'_>) -> Level {
    let level = *metadata.level();
    match metadata.target() {
        NOTICE_TARGET if level < Level::DEBUG => Level::DEBUG,
        QUERY_TARGET if level >= Level::DEBUG => Level::TRACE,
        _ => level,
    }
}

/// One line: runs of whitespace holding a line break become one space.
fn one_line(text: String) -> String {
    if !text.contains(['\n', '\r']) {
        return text;
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

struct ForwardLayer;

struct Fields {
    message: String,
    rest: Vec<(&'static str, FieldValue)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.rest
                .push((field.name(), FieldValue::Text(one_line(format!("{value:?}")))));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.rest
                .push((field.name(), FieldValue::Text(one_line(value.to_string()))));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.push((field.name(), FieldValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.push((field.name(), FieldValue::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.rest.push((field.name(), FieldValue::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.push((field.name(), FieldValue::Bool(value)));
    }
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        rank(&effective(metadata)) <= queue().max_level.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let q = queue();
        let mut fields = Fields {
            message: String::new(),
            rest: Vec::new(),
        };
        event.record(&mut fields);
        let record = Record {
            level: effective(event.metadata()).as_str(),
            target: event.metadata().target().to_string(),
            message: one_line(fields.message),
            fields: fields.rest,
        };
        let mut records = q.records.lock();
        if records.len() >= CAPACITY {
            q.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        records.push_back(record);
        q.queued.fetch_add(1, Ordering::Relaxed);
        drop(records);
        q.ready.notify_one();
    }
}

pub fn init(_ruby: &Ruby, native: RModule) -> Result<(), Error> {
    // Another library may have installed a global subscriber first; then logs go there.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ForwardLayer));
    native.define_singleton_method("drain_logs", function!(drain_logs, 1))?;
    native.define_singleton_method("log_level=", function!(set_log_level, 1))?;
    native.define_singleton_method("dropped_logs", function!(dropped_logs, 0))?;
    native.define_singleton_method("queued_logs", function!(queued_logs, 0))?;
    Ok(())
}

/// Waits (without the GVL, in slices) up to `timeout` seconds for records; returns
/// `[[level, target, message, [[key, value], ...]], ...]` (possibly empty).
fn drain_logs(ruby: &Ruby, timeout: f64) -> Result<RArray, Error> {
    let batch = nogvl::wait_in_slices(
        ruby,
        "drain_logs",
        timeout,
        |slice| {
            let q = queue();
            let mut records = q.records.lock();
            if records.is_empty() {
                q.ready.wait_for(&mut records, slice);
            }
            let batch: Vec<_> = records.drain(..).collect();
            (!batch.is_empty()).then_some(batch)
        },
        || false,
    )?;
    let out = ruby.ary_new();
    for r in batch.unwrap_or_default() {
        let fields = ruby.ary_new_capa(r.fields.len());
        for (key, value) in &r.fields {
            let value = match value {
                FieldValue::Text(text) => ruby.str_new(text).as_value(),
                FieldValue::I64(n) => ruby.integer_from_i64(*n).as_value(),
                FieldValue::U64(n) => ruby.integer_from_u64(*n).as_value(),
                FieldValue::F64(n) => ruby.float_from_f64(*n).as_value(),
                FieldValue::Bool(b) => match b {
                    true => ruby.qtrue().as_value(),
                    false => ruby.qfalse().as_value(),
                },
            };
            fields.push(ruby.ary_new_from_values(&[ruby.str_new(key).as_value(), value]))?;
        }
        out.push(ruby.ary_new_from_values(&[
            ruby.str_new(r.level).as_value(),
            ruby.str_new(&r.target).as_value(),
            ruby.str_new(&r.message).as_value(),
            fields.as_value(),
        ]))?;
    }
    Ok(out)
}

fn set_log_level(ruby: &Ruby, level: String) -> Result<(), Error> {
    let rank = match level.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        other => {
            return Err(crate::errors::named(
                ruby,
                "ConfigurationError",
                format!("log_level must be one of trace, debug, info, warn, error, off; got {other:?}"),
            ))
        }
    };
    queue().max_level.store(rank, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

fn dropped_logs() -> u64 {
    queue().dropped.load(Ordering::Relaxed)
}

fn queued_logs() -> u64 {
    queue().queued.load(Ordering::Relaxed)
}
