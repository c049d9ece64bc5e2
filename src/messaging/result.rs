//! `StepExecutionResult`: what the worker stores in `workflow_steps.results` for the
//! orchestrator to read. Field names follow tasker-core; unknown keys are ignored on read.
//! Failures always carry `error.message` and `metadata.retryable`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepExecutionResult {
    pub step_uuid: Uuid,
    pub success: bool,
    pub result: Value,
    /// "completed" on success; "failed" for a retryable failure, "error" for a permanent one.
    pub status: String,
    pub metadata: StepExecutionMetadata,
    pub error: Option<StepExecutionError>,
    pub orchestration_metadata: Option<OrchestrationMetadata>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepExecutionMetadata {
    pub execution_time_ms: i64,
    pub retryable: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    pub worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    pub custom: Map<String, Value>,
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StepExecutionError {
    pub message: String,
    pub error_type: Option<String>,
    pub retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backtrace: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
}

/// What the orchestrator should know beyond the result. tasker-core's orchestrator requires
/// `headers` and `custom` whenever this object is present, applies a `retry-after` header
/// (any case, seconds) as the retry delay, and only logs `backoff_hint`; the embedded
/// orchestrator reads `backoff_hint.delay_seconds`. So a retry hint is written both ways.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestrationMetadata {
    pub headers: BTreeMap<String, String>,
    pub custom: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_hint: Option<BackoffHint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackoffHint {
    pub backoff_type: BackoffType,
    pub delay_seconds: u32,
}

/// tasker-core's spellings (PascalCase). Results stored before this spelling was fixed say
/// `server_requested`; they still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackoffType {
    #[serde(alias = "server_requested")]
    ServerRequested,
    RateLimit,
    ServiceUnavailable,
    Custom,
}

/// The header tasker-core's orchestrator takes a retry delay from.
pub const RETRY_AFTER_HEADER: &str = "retry-after";

impl OrchestrationMetadata {
    /// A handler's request to be retried after `delay_seconds`.
    pub fn retry_after(delay_seconds: u32) -> Self {
        Self {
            headers: BTreeMap::from([(RETRY_AFTER_HEADER.to_string(), delay_seconds.to_string())]),
            custom: Map::new(),
            backoff_hint: Some(BackoffHint {
                backoff_type: BackoffType::ServerRequested,
                delay_seconds,
            }),
        }
    }
}

impl Default for StepExecutionResult {
    fn default() -> Self {
        Self {
            step_uuid: Uuid::nil(),
            success: false,
            result: Value::Null,
            status: String::new(),
            metadata: StepExecutionMetadata::default(),
            error: None,
            orchestration_metadata: None,
        }
    }
}

impl Default for StepExecutionMetadata {
    fn default() -> Self {
        Self {
            execution_time_ms: 0,
            retryable: false,
            started_at: None,
            completed_at: Utc::now(),
            worker_id: None,
            handler_version: None,
            error_code: None,
            error_type: None,
            custom: Map::new(),
            context: Map::new(),
        }
    }
}

/// A failure as a handler (or the worker on its behalf) describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepFailure {
    pub message: String,
    pub error_type: String,
    pub retryable: bool,
    /// The handler's hint for when to retry; the orchestrator may use it instead of its backoff.
    pub retry_after_seconds: Option<u32>,
    pub backtrace: Option<Vec<String>>,
    pub context: Map<String, Value>,
}

impl StepFailure {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            message: message.into(),
            error_type: error_type.into(),
            retryable,
            ..Self::default()
        }
    }

    pub fn with_context(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.context.insert(key.to_string(), value.into());
        self
    }
}

/// When and where a step ran, for the result's metadata.
#[derive(Debug, Clone)]
pub struct ExecutionTiming {
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub worker_id: String,
}

impl ExecutionTiming {
    fn metadata(&self) -> StepExecutionMetadata {
        StepExecutionMetadata {
            execution_time_ms: (self.completed_at - self.started_at).num_milliseconds(),
            started_at: Some(self.started_at),
            completed_at: self.completed_at,
            worker_id: Some(self.worker_id.clone()),
            ..StepExecutionMetadata::default()
        }
    }
}

impl StepExecutionResult {
    pub fn success(
        step_uuid: Uuid,
        result: Value,
        custom: Map<String, Value>,
        timing: &ExecutionTiming,
    ) -> Self {
        let mut metadata = timing.metadata();
        metadata.custom = custom;
        Self {
            step_uuid,
            success: true,
            result,
            status: "completed".into(),
            metadata,
            ..Self::default()
        }
    }

    pub fn failure(step_uuid: Uuid, failure: StepFailure, timing: &ExecutionTiming) -> Self {
        let mut metadata = timing.metadata();
        metadata.retryable = failure.retryable;
        metadata.error_type = Some(failure.error_type.clone());
        metadata.context = failure.context.clone();
        let orchestration_metadata = failure
            .retry_after_seconds
            .map(OrchestrationMetadata::retry_after);
        Self {
            step_uuid,
            success: false,
            result: Value::Null,
            status: if failure.retryable { "failed" } else { "error" }.into(),
            metadata,
            error: Some(StepExecutionError {
                message: failure.message,
                error_type: Some(failure.error_type),
                retryable: failure.retryable,
                backtrace: failure.backtrace,
                context: (!failure.context.is_empty()).then_some(failure.context),
            }),
            orchestration_metadata,
        }
    }

    /// The failure's error type (`handler_error`, `ffi_timeout`, ...), if this is a failure.
    pub fn error_type(&self) -> Option<&str> {
        self.error.as_ref().and_then(|e| e.error_type.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> ExecutionTiming {
        let started_at = Utc::now();
        ExecutionTiming {
            started_at,
            completed_at: started_at + chrono::Duration::milliseconds(12),
            worker_id: "worker_x".into(),
        }
    }

    #[test]
    fn success_has_the_documented_shape() {
        let r = StepExecutionResult::success(Uuid::nil(), serde_json::json!({"n": 1}), Map::new(), &timing());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["success"], true);
        assert_eq!(json["status"], "completed");
        assert_eq!(json["result"]["n"], 1);
        assert_eq!(json["metadata"]["execution_time_ms"], 12);
        assert_eq!(json["metadata"]["retryable"], false);
        assert_eq!(json["metadata"]["worker_id"], "worker_x");
        assert!(json["error"].is_null());
    }

    #[test]
    fn failure_fills_message_type_and_retryable_everywhere() {
        let failure = StepFailure {
            retry_after_seconds: Some(5),
            ..StepFailure::new("handler_error", "boom", true).with_context("handler_name", "h")
        };
        let json =
            serde_json::to_value(StepExecutionResult::failure(Uuid::nil(), failure, &timing())).unwrap();
        assert_eq!(json["success"], false);
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error"]["message"], "boom");
        assert_eq!(json["error"]["error_type"], "handler_error");
        assert_eq!(json["error"]["retryable"], true);
        assert_eq!(json["metadata"]["retryable"], true);
        assert_eq!(json["metadata"]["error_type"], "handler_error");
        assert_eq!(json["error"]["context"]["handler_name"], "h");
        assert_eq!(json["orchestration_metadata"]["backoff_hint"]["delay_seconds"], 5);
        assert_eq!(
            json["orchestration_metadata"]["backoff_hint"]["backoff_type"],
            "ServerRequested"
        );
        assert_eq!(json["orchestration_metadata"]["headers"]["retry-after"], "5");
        assert_eq!(json["orchestration_metadata"]["custom"], serde_json::json!({}));

        let permanent =
            StepExecutionResult::failure(Uuid::nil(), StepFailure::new("x", "y", false), &timing());
        assert_eq!(permanent.status, "error");
        assert!(permanent.orchestration_metadata.is_none());
    }

    #[test]
    fn reading_ignores_unknown_keys_and_fills_defaults() {
        let r: StepExecutionResult =
            serde_json::from_str(r#"{"success": true, "result": 3, "something_new": 1}"#).unwrap();
        assert!(r.success);
        assert_eq!(r.result, 3);
        assert!(r.error.is_none());
    }
}
