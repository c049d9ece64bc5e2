//! `DomainEventSystem`: fire-and-forget domain events, published only after the step result
//! they describe is committed (it is the completion processor's `PostHandlerCallback`). It owns:
//! 1. matching each committed result against its step's `publishes_events` declarations
//!    (`condition`: success | failure | retryable_failure | permanent_failure | always); a
//!    failure is `retryable_failure` only when the orchestrator will run the step again
//!    (`will_retry`), so the last failed attempt is a `permanent_failure`;
//! 2. checking the payload against the declaration's optional `schema` (a small JSON-schema
//!    subset: type, required, properties, items, enum); an invalid payload is counted and
//!    logged, not published;
//! 3. routing by `delivery_mode`: `durable` → PGMQ queue `{namespace}_domain_events` (a
//!    publisher task sends in batches), `fast` → the in-process queue Ruby subscribers pull
//!    from, `broadcast` → both;
//! 4. bounded buffers: when one is full the event is dropped and counted, and the drops are
//!    logged once per burst. Publishing never blocks or fails the worker.
//!
//! The payload is the stored `StepExecutionResult` of the step.

use crate::messaging::{domain_events_queue_name, StepExecutionResult};
use crate::worker::handlers::domain_event_callback::PostHandlerCallback;
use crate::worker::step_context::StepContext;
use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// A `publishes_events` entry of a step template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDeclaration {
    pub name: String,
    #[serde(default)]
    pub condition: EventCondition,
    #[serde(default)]
    pub delivery_mode: DeliveryMode,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
    /// tasker-core names a publisher class here; this worker has one publisher.
    #[serde(default)]
    pub publisher: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventCondition {
    #[default]
    Success,
    Failure,
    RetryableFailure,
    PermanentFailure,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    #[default]
    Durable,
    Fast,
    Broadcast,
}

impl EventCondition {
    /// `final_attempt`: no attempt follows this one (see [`will_retry`]), so a failure is
    /// permanent even when the handler called it retryable.
    pub fn matches(self, result: &StepExecutionResult, final_attempt: bool) -> bool {
        let retried = !result.success && result.metadata.retryable && !final_attempt;
        match self {
            Self::Success => result.success,
            Self::Failure => !result.success,
            Self::RetryableFailure => retried,
            Self::PermanentFailure => !result.success && !retried,
            Self::Always => true,
        }
    }
}

/// Whether the orchestrator will run the step again after this failed attempt: the result
/// and the step's template are retryable and attempts are left (`attempts < max_attempts`,
/// `attempts` counting this one), the same rule as the orchestrator's result processor.
pub fn will_retry(context: &StepContext, result: &StepExecutionResult) -> bool {
    !result.success
        && result.metadata.retryable
        && context.retryable
        && context.attempts < context.max_attempts
}

/// The envelope, on the durable queue and in Ruby.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    pub event_id: Uuid,
    pub name: String,
    pub namespace: String,
    pub task_uuid: Uuid,
    pub step_uuid: Uuid,
    pub step_name: String,
    pub correlation_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
}

#[derive(Debug, Default)]
struct Counters {
    published_durable: AtomicU64,
    published_fast: AtomicU64,
    dropped_durable: AtomicU64,
    dropped_fast: AtomicU64,
    invalid_payload: AtomicU64,
    failed_durable: AtomicU64,
    bad_declarations: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DomainEventStats {
    pub published_durable: u64,
    pub published_fast: u64,
    pub dropped_durable: u64,
    pub dropped_fast: u64,
    pub invalid_payload: u64,
    /// Durable events whose send to PGMQ failed (lost: fire and forget).
    pub failed_durable: u64,
    /// `publishes_events` entries that could not be read (a template error).
    pub bad_declarations: u64,
    pub fast_queued: usize,
}

/// How long to stay quiet after logging a burst of drops.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
const DURABLE_BATCH: usize = 100;

pub struct DomainEventSystem {
    /// Taken by `close`: the publisher then sends what is buffered and ends.
    durable_tx: Mutex<Option<mpsc::Sender<DomainEvent>>>,
    durable_rx: Mutex<Option<mpsc::Receiver<DomainEvent>>>,
    fast: Mutex<VecDeque<DomainEvent>>,
    fast_ready: Condvar,
    fast_capacity: usize,
    counters: Counters,
    last_drop_log: Mutex<Option<Instant>>,
}

impl DomainEventSystem {
    pub fn new(durable_capacity: usize, fast_capacity: usize) -> Self {
        let (durable_tx, durable_rx) = mpsc::channel(durable_capacity.max(1));
        Self {
            durable_tx: Mutex::new(Some(durable_tx)),
            durable_rx: Mutex::new(Some(durable_rx)),
            fast: Mutex::new(VecDeque::new()),
            fast_ready: Condvar::new(),
            fast_capacity: fast_capacity.max(1),
            counters: Counters::default(),
            last_drop_log: Mutex::new(None),
        }
    }

    /// Sends durable events to `{namespace}_domain_events`, a batch per queue per round.
    /// Runs until `close` has been called and every buffered event has been sent.
    pub async fn run_durable_publisher(self: Arc<Self>, pool: PgPool) {
        let Some(mut rx) = self.durable_rx.lock().take() else {
            return;
        };
        let mut batch = Vec::with_capacity(DURABLE_BATCH);
        while rx.recv_many(&mut batch, DURABLE_BATCH).await > 0 {
            let mut by_queue: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for event in batch.drain(..) {
                if let (Ok(queue), Ok(body)) = (
                    domain_events_queue_name(&event.namespace),
                    serde_json::to_value(&event),
                ) {
                    by_queue.entry(queue).or_default().push(body);
                }
            }
            for (queue, bodies) in by_queue {
                let sent = sqlx::query("SELECT pgmq.send_batch($1, $2::jsonb[])")
                    .bind(&queue)
                    .bind(&bodies)
                    .execute(&pool)
                    .await;
                match sent {
                    Ok(_) => self
                        .counters
                        .published_durable
                        .fetch_add(bodies.len() as u64, Ordering::Relaxed),
                    Err(err) => {
                        tracing::warn!(error = %err, %queue, events = bodies.len(), "publishing durable domain events failed; they are lost");
                        self.counters
                            .failed_durable
                            .fetch_add(bodies.len() as u64, Ordering::Relaxed)
                    }
                };
            }
        }
    }

    /// No more durable events are accepted (they are counted as dropped); the publisher
    /// sends those already buffered, then ends.
    pub fn close(&self) {
        drop(self.durable_tx.lock().take());
    }

    /// Blocks the calling thread up to `timeout` for the next fast event.
    pub fn next_fast_event(&self, timeout: Duration) -> Option<DomainEvent> {
        let deadline = Instant::now() + timeout;
        let mut queue = self.fast.lock();
        loop {
            if let Some(event) = queue.pop_front() {
                return Some(event);
            }
            if self.fast_ready.wait_until(&mut queue, deadline).timed_out() {
                return queue.pop_front();
            }
        }
    }

    /// The next fast event if one is queued, without waiting (what a stopping subscriber
    /// thread drains).
    pub fn try_next_fast_event(&self) -> Option<DomainEvent> {
        self.fast.lock().pop_front()
    }

    /// Empties the fast queue, counting its events as dropped (a stop ran out of time to
    /// deliver them). Returns how many were dropped.
    pub fn drop_queued_fast(&self) -> usize {
        let dropped = std::mem::take(&mut *self.fast.lock()).len();
        if dropped > 0 {
            self.counters
                .dropped_fast
                .fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                "the worker stopped before these fast domain events were delivered; dropped (counted in status)"
            );
        }
        dropped
    }

    pub fn stats(&self) -> DomainEventStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DomainEventStats {
            published_durable: get(&self.counters.published_durable),
            published_fast: get(&self.counters.published_fast),
            dropped_durable: get(&self.counters.dropped_durable),
            dropped_fast: get(&self.counters.dropped_fast),
            invalid_payload: get(&self.counters.invalid_payload),
            failed_durable: get(&self.counters.failed_durable),
            bad_declarations: get(&self.counters.bad_declarations),
            fast_queued: self.fast.lock().len(),
        }
    }

    fn publish(&self, declaration: &EventDeclaration, event: DomainEvent) {
        let (durable, fast) = match declaration.delivery_mode {
            DeliveryMode::Durable => (true, false),
            DeliveryMode::Fast => (false, true),
            DeliveryMode::Broadcast => (true, true),
        };
        if fast {
            let mut queue = self.fast.lock();
            if queue.len() >= self.fast_capacity {
                drop(queue);
                self.dropped(&self.counters.dropped_fast, "fast", &event.name);
            } else {
                queue.push_back(event.clone());
                drop(queue);
                self.counters.published_fast.fetch_add(1, Ordering::Relaxed);
                self.fast_ready.notify_one();
            }
        }
        if durable {
            let name = event.name.clone();
            let sent = match self.durable_tx.lock().as_ref() {
                Some(tx) => tx.try_send(event).is_ok(),
                None => false,
            };
            if !sent {
                self.dropped(&self.counters.dropped_durable, "durable", &name);
            }
        }
    }

    fn dropped(&self, counter: &AtomicU64, mode: &str, name: &str) {
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_drop_log.lock();
        if !last.is_some_and(|at| at.elapsed() < DROP_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                mode,
                event = name,
                dropped_so_far = total,
                "domain event buffer full; dropping events (counted in status)"
            );
        }
    }
}

impl PostHandlerCallback for DomainEventSystem {
    fn on_handler_complete(&self, context: &StepContext, result: &StepExecutionResult, _worker_id: &str) {
        let Some(declarations) = context
            .step_definition
            .get("publishes_events")
            .and_then(Value::as_array)
        else {
            return;
        };
        let final_attempt = !result.success && !will_retry(context, result);
        // The payload (the stored result) is built once, and only if some declaration matches.
        let mut payload: Option<Value> = None;
        for raw in declarations {
            let declaration = match EventDeclaration::deserialize(raw) {
                Ok(d) => d,
                Err(err) => {
                    self.counters.bad_declarations.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(step = %context.step_name, error = %err, "unreadable publishes_events entry skipped");
                    continue;
                }
            };
            if !declaration.condition.matches(result, final_attempt) {
                continue;
            }
            if payload.is_none() {
                payload = serde_json::to_value(result).ok();
            }
            let Some(payload) = payload.clone() else { continue };
            if let Some(schema) = &declaration.schema {
                if let Err(why) = check_schema(schema, &payload, "payload") {
                    self.counters.invalid_payload.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event = %declaration.name, step = %context.step_name, %why, "domain event payload does not match its schema; not published");
                    continue;
                }
            }
            let event = DomainEvent {
                event_id: Uuid::now_v7(),
                name: declaration.name.clone(),
                namespace: context.namespace.clone(),
                task_uuid: context.task_uuid,
                step_uuid: context.step_uuid,
                step_name: context.step_name.clone(),
                correlation_id: context.correlation_id,
                occurred_at: Utc::now(),
                payload,
            };
            self.publish(&declaration, event);
        }
    }
}

/// A small JSON-schema subset: `type`, `required`, `properties`, `items`, `enum`. Other
/// keywords are ignored. Returns where and why the value does not match.
pub fn check_schema(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let ok = match expected {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at} should be {expected}, is {value}"));
        }
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
        if !choices.contains(value) {
            return Err(format!("{at} should be one of {}", Value::Array(choices.clone())));
        }
    }
    if let (Some(required), Some(object)) = (
        schema.get("required").and_then(Value::as_array),
        value.as_object(),
    ) {
        for key in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(key) {
                return Err(format!("{at}.{key} is required"));
            }
        }
    }
    if let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (key, sub) in properties {
            if let Some(field) = object.get(key) {
                check_schema(sub, field, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check_schema(items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_route_by_success_and_retryability() {
        let mut ok = StepExecutionResult {
            success: true,
            ..Default::default()
        };
        let mut retryable = StepExecutionResult::default();
        retryable.metadata.retryable = true;
        let permanent = StepExecutionResult::default();
        ok.metadata.retryable = false;
        use EventCondition::*;
        let table = [
            (Success, [true, false, false]),
            (Failure, [false, true, true]),
            (RetryableFailure, [false, true, false]),
            (PermanentFailure, [false, false, true]),
            (Always, [true, true, true]),
        ];
        for (condition, expected) in table {
            let got = [&ok, &retryable, &permanent].map(|r| condition.matches(r, false));
            assert_eq!(got, expected, "{condition:?}");
        }
        // The last attempt of a retryable failure is permanent: nothing will retry it.
        assert!(!RetryableFailure.matches(&retryable, true));
        assert!(PermanentFailure.matches(&retryable, true));
        assert!(Failure.matches(&retryable, true));
        assert!(!PermanentFailure.matches(&ok, true));
    }

    #[test]
    fn schema_subset_names_the_failing_field() {
        let schema = json!({"type": "object", "required": ["result"],
                            "properties": {"result": {"type": "object", "required": ["tracking"],
                                                      "properties": {"tracking": {"type": "string"},
                                                                     "mode": {"enum": ["air", "ground"]}}}}});
        assert!(check_schema(
            &schema,
            &json!({"result": {"tracking": "T1", "mode": "air"}}),
            "payload"
        )
        .is_ok());
        let missing = check_schema(&schema, &json!({"result": {}}), "payload").unwrap_err();
        assert!(
            missing.contains("payload.result.tracking is required"),
            "{missing}"
        );
        let wrong = check_schema(&schema, &json!({"result": {"tracking": 7}}), "payload").unwrap_err();
        assert!(
            wrong.contains("payload.result.tracking should be string"),
            "{wrong}"
        );
        let choice = check_schema(
            &schema,
            &json!({"result": {"tracking": "T", "mode": "sea"}}),
            "payload",
        )
        .unwrap_err();
        assert!(choice.contains("should be one of"), "{choice}");
    }

    #[test]
    fn declarations_default_to_success_and_durable_and_reject_unknown_keys() {
        let d: EventDeclaration = serde_json::from_value(json!({"name": "order.shipped"})).unwrap();
        assert_eq!(
            (d.condition, d.delivery_mode),
            (EventCondition::Success, DeliveryMode::Durable)
        );
        assert!(
            serde_json::from_value::<EventDeclaration>(json!({"name": "x", "conditon": "always"})).is_err()
        );
        assert!(serde_json::from_value::<EventDeclaration>(
            json!({"name": "x", "delivery_mode": "carrier_pigeon"})
        )
        .is_err());
    }

    #[test]
    fn a_full_fast_buffer_drops_and_counts() {
        let system = DomainEventSystem::new(1, 2);
        let declaration: EventDeclaration =
            serde_json::from_value(json!({"name": "e", "delivery_mode": "fast"})).unwrap();
        for _ in 0..5 {
            let event = DomainEvent {
                event_id: Uuid::now_v7(),
                name: "e".into(),
                namespace: "ns".into(),
                task_uuid: Uuid::nil(),
                step_uuid: Uuid::nil(),
                step_name: "s".into(),
                correlation_id: Uuid::nil(),
                occurred_at: Utc::now(),
                payload: json!({}),
            };
            system.publish(&declaration, event);
        }
        let stats = system.stats();
        assert_eq!(
            (stats.published_fast, stats.dropped_fast, stats.fast_queued),
            (2, 3, 2)
        );
        assert!(system.next_fast_event(Duration::from_millis(10)).is_some());
        assert_eq!(system.drop_queued_fast(), 1);
        let stats = system.stats();
        assert_eq!((stats.dropped_fast, stats.fast_queued), (4, 0));
        assert!(system.try_next_fast_event().is_none());
    }
}
