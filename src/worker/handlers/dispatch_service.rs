//! `HandlerDispatchService`: runs Rust handlers. It owns:
//! 1. taking claimed steps off the dispatch channel and spawning one task each (it never
//!    waits for a handler before taking the next step);
//! 2. the handler timeout, and catching panics (a panicking handler is a failure result);
//!    a result over the JSON limits is an `invalid_result` failure;
//! 3. sending every outcome, success or failure, to the completion channel.
//!
//! The capacity permit each message carries bounds the steps claimed (handlers + prefetch);
//! `max_concurrent_handlers` more narrowly bounds the handlers running at once, so prefetched
//! steps wait here for a handler slot. Both permits return when the result is handed on.

use crate::error::panic_message;
use crate::limits;
use crate::messaging::{ExecutionTiming, StepExecutionResult, StepFailure};
use crate::worker::handlers::pipeline::{DispatchHandlerMessage, StepCompletion};
use crate::worker::handlers::traits::{StepHandlerRegistry, StepResult, StepSuccess};
use crate::worker::prefetch::StartWaits;
use crate::worker::step_context::StepContext;
use chrono::Utc;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

pub struct HandlerDispatchService {
    registry: Arc<dyn StepHandlerRegistry>,
    /// One permit per handler allowed to run at once.
    handlers: Arc<Semaphore>,
    handler_timeout: Duration,
    completion_tx: mpsc::Sender<StepCompletion>,
    worker_id: Arc<str>,
    /// Where each step's wait for a handler slot is recorded: the worker's, read by the adaptive
    /// prefetch (`with_start_waits`), else a private one.
    start_waits: Arc<StartWaits>,
}

impl HandlerDispatchService {
    pub fn new(
        registry: Arc<dyn StepHandlerRegistry>,
        max_concurrent_handlers: usize,
        handler_timeout: Duration,
        completion_tx: mpsc::Sender<StepCompletion>,
        worker_id: Arc<str>,
    ) -> Self {
        Self {
            registry,
            handlers: Arc::new(Semaphore::new(max_concurrent_handlers.max(1))),
            handler_timeout,
            completion_tx,
            worker_id,
            start_waits: Arc::default(),
        }
    }

    /// Records each step's wait for a handler slot in `waits`.
    pub fn with_start_waits(mut self, waits: Arc<StartWaits>) -> Self {
        self.start_waits = waits;
        self
    }

    /// Runs until the dispatch channel closes. Handler tasks live in a `JoinSet`, so they are
    /// aborted if this task is.
    pub async fn run(self, mut dispatch_rx: mpsc::Receiver<DispatchHandlerMessage>) {
        let this = Arc::new(self);
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                message = dispatch_rx.recv() => match message {
                    Some(message) => { running.spawn(this.clone().execute(message)); }
                    None => break,
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    async fn execute(self: Arc<Self>, message: DispatchHandlerMessage) {
        let Ok(slot) = self.handlers.clone().acquire_owned().await else {
            return;
        };
        self.start_waits.record(message.claimed_at);
        let started_at = Utc::now();
        let context = message.context.clone();
        let outcome = self.run_handler(&context).await;
        drop(slot);
        drop(message.permit);
        let timing = ExecutionTiming {
            started_at,
            completed_at: Utc::now(),
            worker_id: self.worker_id.to_string(),
        };
        let result = match outcome.and_then(|success| within_limits(success, &context)) {
            Ok(success) => {
                StepExecutionResult::success(context.step_uuid, success.result, success.metadata, &timing)
            }
            Err(failure) => StepExecutionResult::failure(context.step_uuid, failure, &timing),
        };
        let completion = StepCompletion {
            claim: message.claim,
            context,
            result,
        };
        if let Err(unsent) = self.completion_tx.send(completion).await {
            // Shutting down: the lease lapses and another worker re-runs the step.
            tracing::warn!(step_uuid = %unsent.0.claim.step_uuid, "completion channel closed; result not committed");
        }
    }

    /// Runs the step's handler in its own task so a panic or a timeout is contained.
    async fn run_handler(&self, context: &Arc<StepContext>) -> StepResult {
        let callable = &context.handler.callable;
        let Some(handler) = self.registry.get_handler(callable) else {
            return Err(StepFailure::new(
                "handler_not_found",
                format!("no handler is registered for {callable:?}"),
                false,
            )
            .with_context("handler_name", callable.as_str()));
        };
        let timeout = handler_timeout(context, self.handler_timeout);
        let task_context = context.clone();
        let mut task = tokio::spawn(async move { handler.handle(&task_context).await });
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(Ok(success))) => Ok(success),
            Ok(Ok(Err(mut failure))) => {
                if failure.error_type.is_empty() {
                    failure.error_type = "handler_error".into();
                }
                if failure.message.is_empty() {
                    failure.message = format!("handler {callable:?} failed without a message");
                }
                Err(failure.with_context("handler_name", callable.as_str()))
            }
            Ok(Err(join_error)) => {
                let message = match join_error.try_into_panic() {
                    Ok(payload) => format!(
                        "handler {callable:?} panicked: {}",
                        panic_message(payload.as_ref())
                    ),
                    Err(_) => format!("handler {callable:?} was cancelled"),
                };
                Err(StepFailure::new("handler_panic", message, false)
                    .with_context("handler_name", callable.as_str()))
            }
            Err(_elapsed) => {
                task.abort();
                Err(StepFailure::new(
                    "handler_timeout",
                    format!(
                        "handler {callable:?} did not finish within {} ms",
                        timeout.as_millis()
                    ),
                    true,
                )
                .with_context("handler_name", callable.as_str())
                .with_context("timeout_ms", timeout.as_millis() as u64))
            }
        }
    }
}

/// A success whose result (or custom metadata) is over the JSON limits (`crate::limits`) is
/// an `invalid_result` failure, not retryable: the handler would return the same again.
fn within_limits(success: StepSuccess, context: &StepContext) -> StepResult {
    let checked = limits::check_value(&success.result, "the handler's result").and_then(|()| {
        if success.metadata.is_empty() {
            return Ok(());
        }
        let custom = Value::Object(success.metadata.clone());
        limits::check_value(&custom, "the handler's result metadata")
    });
    match checked {
        Ok(()) => Ok(success),
        Err(err) => Err(StepFailure::new("invalid_result", err.to_string(), false)
            .with_context("handler_name", context.handler.callable.as_str())),
    }
}

/// The step template's `timeout_seconds` when set, else the worker's `handler_timeout_ms`.
pub fn handler_timeout(context: &StepContext, default: Duration) -> Duration {
    context
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(default)
}
