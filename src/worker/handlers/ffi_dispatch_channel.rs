//! `FfiDispatchChannel`: the pull channel through which another language's threads (Ruby)
//! run claimed steps. It owns:
//! 1. `next_step(timeout)`: blocks the calling thread until a step is ready (a condition
//!    variable, no sleep-and-poll), the timeout passes, or the channel stops;
//! 2. `complete(event_id, completion)`: an event completes once; an unknown, late or duplicate
//!    completion is rejected with a reason;
//! 3. enforcing `completion_timeout_ms` (or the step's `timeout_seconds`) itself: an event
//!    polled and not completed in time gets an `ffi_timeout` failure and its slot is freed;
//!    its id is kept for `take_timed_out`, so the embedder can replace the hung thread;
//! 4. starvation warnings: steps queued and not polled, and steps polled and not completed,
//!    past `starvation_warning_threshold_ms` (rate-limited, with the number of threads
//!    waiting in `next_step` and of handlers running).
//!
//! How many steps can be queued here is bounded by the worker's capacity permits: the
//! executor claims at most `max_concurrent_handlers + prefetch` steps that no handler has
//! finished, so nothing is claimed far ahead of the threads that will run it. A step's
//! permit returns when its result is handed to the completion processor.
//!
//! 5. checkpoints (`checkpoint(event_id, data, yielded)`): a running event's handler saves its
//!    progress under its claim's token (`crate::worker::checkpoints`), at most once per
//!    `worker.checkpoints.min_interval_ms` (sooner saves are coalesced), and may yield (return a
//!    checkpoint and be run again at once, same claim) up to `max_yields_per_claim` times; a
//!    yield restarts the event's completion timeout, as a new handler run.
//!
//! The lock is a plain mutex held for queue and map operations only, never across I/O or an
//! await; the callers are OS threads (Ruby threads with the GVL released).

use crate::config::{CheckpointsConfig, FfiDispatchConfig};
use crate::messaging::{ExecutionTiming, StepExecutionResult, StepFailure};
use crate::worker::checkpoints::{self, CheckpointData, CheckpointError};
use crate::worker::handlers::pipeline::{DispatchHandlerMessage, StepCompletion};
use crate::worker::prefetch::StartWaits;
use crate::worker::step_context::StepContext;
use crate::worker::task::StopSignal;
use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
// Timeouts and starvation are measured on tokio's clock, which tests can pause and advance;
// outside a test it is the system's monotonic clock.
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

/// A step handed to a thread: its event id (the key for `complete`) and its context.
#[derive(Debug, Clone)]
pub struct FfiStepEvent {
    pub event_id: Uuid,
    pub context: Arc<StepContext>,
}

/// What the thread reports for an event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FfiCompletion {
    pub success: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub error: Option<FfiError>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FfiError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default = "retryable_by_default")]
    pub retryable: bool,
    #[serde(default)]
    pub error_class: Option<String>,
    #[serde(default)]
    pub backtrace: Option<Vec<String>>,
    #[serde(default)]
    pub retry_after: Option<u32>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub context: Map<String, Value>,
}

fn retryable_by_default() -> bool {
    true
}

/// Why a completion was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompletionRejected {
    #[error("event {0} was already completed")]
    AlreadyCompleted(Uuid),
    #[error("event {0} timed out before it was completed; the step got an ffi_timeout failure")]
    TimedOut(Uuid),
    #[error("event {0} was abandoned when the worker stopped; its step will be run again")]
    Stopped(Uuid),
    #[error("event {0} is not known to this worker")]
    Unknown(Uuid),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FfiDispatchMetrics {
    /// Claimed steps no thread has polled yet.
    pub queued: usize,
    pub oldest_queued_ms: Option<u64>,
    /// Steps polled and not yet completed (handlers running).
    pub running: usize,
    pub oldest_running_ms: Option<u64>,
    /// Threads blocked in `next_step` right now.
    pub waiting_threads: usize,
    pub polled: u64,
    pub completed: u64,
    pub timed_out: u64,
    pub rejected_completions: u64,
    pub starvation_warnings: u64,
}

struct Queued {
    message: DispatchHandlerMessage,
    queued_at: Instant,
}

struct Running {
    message: DispatchHandlerMessage,
    polled_at: Instant,
    started_at: DateTime<Utc>,
    deadline: Instant,
    timeout: Duration,
    /// The checkpoint the handler sees: the hydrated one, then each save's (written or
    /// coalesced).
    checkpoint: Option<Value>,
    /// When this claim last wrote a checkpoint.
    last_saved: Option<Instant>,
    yields: u32,
}

/// Where checkpoints are written: set by the worker core (`enable_checkpoints`).
struct CheckpointStore {
    pool: sqlx::PgPool,
    limits: CheckpointsConfig,
    runtime: tokio::runtime::Handle,
}

/// What `checkpoint` did: `saved` false when it was coalesced (kept in memory only, see
/// `worker.checkpoints.min_interval_ms`); `checkpoint` is the record the handler now sees.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointSaved {
    pub saved: bool,
    pub checkpoint: Value,
}

#[derive(Clone, Copy)]
enum Finished {
    Completed,
    TimedOut,
    Stopped,
}

/// Remembers how recent events ended, to explain a rejected completion. Bounded: the
/// oldest entries are forgotten first (and then reported as unknown).
struct FinishedLog {
    order: VecDeque<Uuid>,
    why: HashMap<Uuid, Finished>,
}

const FINISHED_LOG_SIZE: usize = 10_000;

impl FinishedLog {
    fn record(&mut self, event_id: Uuid, why: Finished) {
        if self.order.len() == FINISHED_LOG_SIZE {
            if let Some(old) = self.order.pop_front() {
                self.why.remove(&old);
            }
        }
        self.order.push_back(event_id);
        self.why.insert(event_id, why);
    }
}

struct State {
    queued: VecDeque<Queued>,
    running: HashMap<Uuid, Running>,
    finished: FinishedLog,
    waiting_threads: usize,
    stopped: bool,
    last_warning: Option<Instant>,
    /// Events failed with `ffi_timeout` that `take_timed_out` has not handed out yet
    /// (bounded like `finished`: the oldest are forgotten first).
    timed_out: VecDeque<Uuid>,
}

#[derive(Default)]
struct Counters {
    polled: AtomicU64,
    completed: AtomicU64,
    timed_out: AtomicU64,
    rejected: AtomicU64,
    starvation_warnings: AtomicU64,
}

pub struct FfiDispatchChannel {
    state: Mutex<State>,
    ready: Condvar,
    /// Taken by `stop`: once every sender is gone, the completion processor drains and ends.
    completion_tx: Mutex<Option<mpsc::Sender<StepCompletion>>>,
    completion_timeout: Duration,
    starvation_threshold: Duration,
    worker_id: Arc<str>,
    counters: Counters,
    checkpoints: OnceLock<CheckpointStore>,
    /// Where each step's wait for a Ruby thread is recorded: the worker's, read by the adaptive
    /// prefetch (`with_start_waits`), else a private one.
    start_waits: Arc<StartWaits>,
}

impl FfiDispatchChannel {
    pub fn new(
        config: &FfiDispatchConfig,
        completion_tx: mpsc::Sender<StepCompletion>,
        worker_id: Arc<str>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                queued: VecDeque::new(),
                running: HashMap::new(),
                finished: FinishedLog {
                    order: VecDeque::new(),
                    why: HashMap::new(),
                },
                waiting_threads: 0,
                stopped: false,
                last_warning: None,
                timed_out: VecDeque::new(),
            }),
            ready: Condvar::new(),
            completion_tx: Mutex::new(Some(completion_tx)),
            completion_timeout: config.completion_timeout(),
            starvation_threshold: config.starvation_warning_threshold(),
            worker_id,
            counters: Counters::default(),
            checkpoints: OnceLock::new(),
            start_waits: Arc::default(),
        }
    }

    /// Records each step's wait for a Ruby thread (claim to `next_step`) in `waits`.
    pub fn with_start_waits(mut self, waits: Arc<StartWaits>) -> Self {
        self.start_waits = waits;
        self
    }

    /// Lets running events save checkpoints (`checkpoint`) through `pool`, blocking their
    /// threads on `runtime`. Without it `checkpoint` refuses. Set once; later calls are ignored.
    pub fn enable_checkpoints(
        &self,
        pool: sqlx::PgPool,
        limits: CheckpointsConfig,
        runtime: tokio::runtime::Handle,
    ) {
        let _ = self.checkpoints.set(CheckpointStore {
            pool,
            limits,
            runtime,
        });
    }

    /// Saves a checkpoint for the running event `event_id` under its claim's token; blocks
    /// the calling thread (not a runtime thread) until it is written. `yielded`: the handler
    /// returned it and will be run again at once, which counts against
    /// `max_yields_per_claim` and restarts the completion timeout. A save sooner than
    /// `min_interval_ms` after this claim's last written one is coalesced (`saved` false).
    pub fn checkpoint(
        &self,
        event_id: Uuid,
        data: CheckpointData,
        yielded: bool,
    ) -> Result<CheckpointSaved, CheckpointError> {
        let store = self.checkpoints.get().ok_or_else(|| {
            CheckpointError::Limit("checkpoints are not enabled on this dispatch channel".into())
        })?;
        checkpoints::check_size(&data, &store.limits)?;
        let claim = {
            let mut state = self.state.lock();
            let finished = state.finished.why.get(&event_id).copied();
            let Some(running) = state.running.get_mut(&event_id) else {
                return Err(CheckpointError::StaleClaim(match finished {
                    Some(Finished::Completed) => format!("event {event_id} was already completed"),
                    Some(Finished::TimedOut) => format!("event {event_id} timed out (ffi_timeout)"),
                    Some(Finished::Stopped) => {
                        format!("event {event_id} was abandoned when the worker stopped")
                    }
                    None => format!("event {event_id} is not known to this worker"),
                }));
            };
            if yielded {
                if running.yields >= store.limits.max_yields_per_claim {
                    return Err(CheckpointError::Limit(format!(
                        "the handler yielded a checkpoint more than {} times in one claim \
                         (worker.checkpoints.max_yields_per_claim)",
                        store.limits.max_yields_per_claim
                    )));
                }
                running.yields += 1;
                running.deadline = Instant::now() + running.timeout;
            }
            let interval = store.limits.min_interval();
            if !interval.is_zero() && running.last_saved.is_some_and(|at| at.elapsed() < interval) {
                let record = checkpoints::unsaved_record(&data, running.checkpoint.as_ref());
                running.checkpoint = Some(record.clone());
                return Ok(CheckpointSaved {
                    saved: false,
                    checkpoint: record,
                });
            }
            running.message.claim.clone()
        };
        let record =
            store
                .runtime
                .block_on(checkpoints::save_for(&store.pool, &claim, &data, &store.limits))?;
        if let Some(running) = self.state.lock().running.get_mut(&event_id) {
            running.checkpoint = Some(record.clone());
            running.last_saved = Some(Instant::now());
        }
        Ok(CheckpointSaved {
            saved: true,
            checkpoint: record,
        })
    }

    /// Moves claimed steps from the dispatch channel into the queue threads poll. Runs until
    /// the dispatch channel closes.
    pub async fn run_forwarder(self: Arc<Self>, mut dispatch_rx: mpsc::Receiver<DispatchHandlerMessage>) {
        while let Some(message) = dispatch_rx.recv().await {
            let mut state = self.state.lock();
            if state.stopped {
                // Dropping the message releases its slot; its lease lapses and it is reclaimed.
                continue;
            }
            state.queued.push_back(Queued {
                message,
                queued_at: Instant::now(),
            });
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Enforces completion timeouts and reports starvation, every `interval`, until stopped.
    pub async fn run_monitor(self: Arc<Self>, mut stop: StopSignal) {
        let interval =
            (self.starvation_threshold / 4).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.stopped() => return,
            }
            self.check_timeouts().await;
            self.check_starvation();
        }
    }

    /// Blocks until a step is ready (returns it), `timeout` passes, or the channel stops
    /// (both return `None`).
    pub fn next_step(&self, timeout: Duration) -> Option<FfiStepEvent> {
        // The thread's own wait is on the system clock (a condition variable).
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.state.lock();
        state.waiting_threads += 1;
        let event = loop {
            if state.stopped {
                break None;
            }
            if let Some(queued) = state.queued.pop_front() {
                break Some(self.start_running(&mut state, queued.message));
            }
            if self.ready.wait_until(&mut state, deadline).timed_out() {
                break state
                    .queued
                    .pop_front()
                    .map(|q| self.start_running(&mut state, q.message));
            }
        };
        state.waiting_threads -= 1;
        event
    }

    /// A step if one is queued right now, without waiting. `None` also when the lock is held
    /// by someone else at this instant: the caller then waits in `next_step`. Lets a Ruby
    /// thread take a ready step without giving up and re-taking the GVL.
    pub fn try_next_step(&self) -> Option<FfiStepEvent> {
        let mut state = self.state.try_lock()?;
        if state.stopped {
            return None;
        }
        let queued = state.queued.pop_front()?;
        Some(self.start_running(&mut state, queued.message))
    }

    fn start_running(&self, state: &mut State, message: DispatchHandlerMessage) -> FfiStepEvent {
        let event = FfiStepEvent {
            event_id: message.event_id,
            context: message.context.clone(),
        };
        let timeout = message
            .context
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(self.completion_timeout);
        let now = Instant::now();
        self.start_waits.record(message.claimed_at);
        let checkpoint = message.context.checkpoint.clone();
        state.running.insert(
            message.event_id,
            Running {
                message,
                polled_at: now,
                started_at: Utc::now(),
                deadline: now + timeout,
                timeout,
                checkpoint,
                last_saved: None,
                yields: 0,
            },
        );
        self.counters.polled.fetch_add(1, Ordering::Relaxed);
        event
    }

    /// Accepts the outcome of a polled event and hands it to the completion processor.
    pub fn complete(&self, event_id: Uuid, completion: FfiCompletion) -> Result<(), CompletionRejected> {
        let running = {
            let mut state = self.state.lock();
            match state.running.remove(&event_id) {
                Some(running) => {
                    state.finished.record(event_id, Finished::Completed);
                    running
                }
                None => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(match state.finished.why.get(&event_id) {
                        Some(Finished::Completed) => CompletionRejected::AlreadyCompleted(event_id),
                        Some(Finished::TimedOut) => CompletionRejected::TimedOut(event_id),
                        Some(Finished::Stopped) => CompletionRejected::Stopped(event_id),
                        None => CompletionRejected::Unknown(event_id),
                    });
                }
            }
        };
        let timing = ExecutionTiming {
            started_at: running.started_at,
            completed_at: Utc::now(),
            worker_id: self.worker_id.to_string(),
        };
        let result = result_from_completion(running.message.context.step_uuid, completion, &timing);
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if let Some((completion, tx)) = self.try_send(running.message, result) {
            // A full channel means the completion processor is behind: wait for it (this is a
            // handler thread, not the runtime) rather than lose the result.
            let _ = tx.blocking_send(completion);
        }
        Ok(())
    }

    /// Hands the result to the completion processor without waiting; returns it with a
    /// sender when the completion channel is full, for the caller to wait in the way its
    /// context allows.
    fn try_send(
        &self,
        message: DispatchHandlerMessage,
        result: StepExecutionResult,
    ) -> Option<(StepCompletion, mpsc::Sender<StepCompletion>)> {
        // The handler is done: its slot is free for the next claim while the result commits.
        drop(message.permit);
        let completion = StepCompletion {
            claim: message.claim,
            context: message.context,
            result,
        };
        // A clone, so the lock is not held across the send.
        let tx = self.completion_tx.lock().clone();
        let unsent = match tx {
            Some(tx) => match tx.try_send(completion) {
                Ok(()) => return None,
                Err(mpsc::error::TrySendError::Full(completion)) => return Some((completion, tx)),
                Err(mpsc::error::TrySendError::Closed(completion)) => completion,
            },
            None => completion,
        };
        tracing::warn!(step_uuid = %unsent.claim.step_uuid, "the worker is stopping; the result is not committed and the step will be reclaimed after its lease");
        None
    }

    async fn check_timeouts(&self) {
        let now = Instant::now();
        let expired: Vec<(Uuid, Running)> = {
            let mut state = self.state.lock();
            let ids: Vec<Uuid> = state
                .running
                .iter()
                .filter(|(_, r)| r.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let running = state.running.remove(&id)?;
                    state.finished.record(id, Finished::TimedOut);
                    if state.timed_out.len() == FINISHED_LOG_SIZE {
                        state.timed_out.pop_front();
                    }
                    state.timed_out.push_back(id);
                    Some((id, running))
                })
                .collect()
        };
        for (event_id, running) in expired {
            let waited = now.duration_since(running.polled_at);
            let context = &running.message.context;
            tracing::warn!(event = "step_timed_out", %event_id, task_uuid = %context.task_uuid, step_uuid = %context.step_uuid, namespace = %context.namespace, step = %context.step_name, attempt = context.attempts, max_attempts = context.max_attempts, handler = %context.handler.callable, waited_ms = waited.as_millis() as u64, "handler did not complete in time; failing the step with ffi_timeout");
            let failure = StepFailure::new(
                "ffi_timeout",
                format!(
                    "handler {:?} did not complete within {} ms",
                    context.handler.callable,
                    running.timeout.as_millis()
                ),
                true,
            )
            .with_context("handler_name", context.handler.callable.as_str())
            .with_context("timeout_ms", running.timeout.as_millis() as u64);
            let timing = ExecutionTiming {
                started_at: running.started_at,
                completed_at: Utc::now(),
                worker_id: self.worker_id.to_string(),
            };
            let result = StepExecutionResult::failure(context.step_uuid, failure, &timing);
            self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            if let Some((completion, tx)) = self.try_send(running.message, result) {
                let _ = tx.send(completion).await;
            }
        }
    }

    fn check_starvation(&self) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let threshold = self.starvation_threshold;
        if state
            .last_warning
            .is_some_and(|at| now.duration_since(at) < threshold)
        {
            return;
        }
        let unpolled = state
            .queued
            .iter()
            .filter(|q| now.duration_since(q.queued_at) >= threshold)
            .count();
        let slow = state
            .running
            .values()
            .filter(|r| now.duration_since(r.polled_at) >= threshold)
            .count();
        if unpolled == 0 && slow == 0 {
            return;
        }
        state.last_warning = Some(now);
        self.counters.starvation_warnings.fetch_add(1, Ordering::Relaxed);
        let (queued, running, waiting) = (state.queued.len(), state.running.len(), state.waiting_threads);
        drop(state);
        if unpolled > 0 {
            tracing::warn!(unpolled, queued, waiting_threads = waiting, running_handlers = running, threshold_ms = threshold.as_millis() as u64,
                "starvation: claimed steps waited longer than the threshold for a thread to poll them; every thread is busy (raise concurrency or speed up handlers)");
        }
        if slow > 0 {
            tracing::warn!(
                slow,
                running_handlers = running,
                waiting_threads = waiting,
                threshold_ms = threshold.as_millis() as u64,
                "starvation: handlers have been running longer than the threshold"
            );
        }
    }

    pub fn metrics(&self) -> FfiDispatchMetrics {
        let state = self.state.lock();
        let now = Instant::now();
        FfiDispatchMetrics {
            queued: state.queued.len(),
            oldest_queued_ms: state
                .queued
                .front()
                .map(|q| now.duration_since(q.queued_at).as_millis() as u64),
            running: state.running.len(),
            oldest_running_ms: state
                .running
                .values()
                .map(|r| now.duration_since(r.polled_at).as_millis() as u64)
                .max(),
            waiting_threads: state.waiting_threads,
            polled: self.counters.polled.load(Ordering::Relaxed),
            completed: self.counters.completed.load(Ordering::Relaxed),
            timed_out: self.counters.timed_out.load(Ordering::Relaxed),
            rejected_completions: self.counters.rejected.load(Ordering::Relaxed),
            starvation_warnings: self.counters.starvation_warnings.load(Ordering::Relaxed),
        }
    }

    /// Stops handing out steps; waiting threads return `None` at once. Steps not yet completed
    /// are abandoned (their slots freed); a later `complete` for them is rejected. Drops the
    /// channel's completion sender, so the completion processor can end.
    pub fn stop(&self) {
        drop(self.completion_tx.lock().take());
        let mut state = self.state.lock();
        state.stopped = true;
        state.queued.clear();
        let abandoned: Vec<Uuid> = state.running.keys().copied().collect();
        for id in abandoned {
            state.running.remove(&id);
            state.finished.record(id, Finished::Stopped);
        }
        drop(state);
        self.ready.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.state.lock().stopped
    }

    /// The events failed with `ffi_timeout` since the last call, oldest first: their threads
    /// are still inside a handler that will never be waited for.
    pub fn take_timed_out(&self) -> Vec<Uuid> {
        self.state.lock().timed_out.drain(..).collect()
    }
}

/// The stored result for what a thread reported.
pub fn result_from_completion(
    step_uuid: Uuid,
    completion: FfiCompletion,
    timing: &ExecutionTiming,
) -> StepExecutionResult {
    if completion.success {
        return StepExecutionResult::success(step_uuid, completion.result, completion.metadata, timing);
    }
    let error = completion.error.unwrap_or(FfiError {
        message: String::new(),
        error_type: None,
        retryable: true,
        error_class: None,
        backtrace: None,
        retry_after: None,
        error_code: None,
        context: Map::new(),
    });
    let mut failure = StepFailure {
        message: if error.message.is_empty() {
            "the handler reported a failure without a message".into()
        } else {
            error.message
        },
        error_type: error
            .error_type
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "handler_error".into()),
        retryable: error.retryable,
        retry_after_seconds: error.retry_after,
        backtrace: error.backtrace,
        context: error.context,
    };
    if let Some(class) = error.error_class {
        failure = failure.with_context("error_class", class);
    }
    let mut result = StepExecutionResult::failure(step_uuid, failure, timing);
    result.metadata.error_code = error.error_code;
    result.metadata.custom = completion.metadata;
    result
}
