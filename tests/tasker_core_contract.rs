//! The stored `StepExecutionResult` read the way tasker-core's orchestrator reads it: a strict
//! mirror of their result types, written here from the facts in the project's
//! tasker-core-compat notes (section 3): required fields required, their enum spellings,
//! `null` only where they take an Option, unknown keys ignored (as they ignore them).
//! Every kind of result this worker stores must deserialize into it, and the decision and
//! batch outcomes the Ruby handler bases store into their outcome types.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::limits::MAX_JSON_DEPTH;
use tasker_worker::messaging::{ExecutionTiming, StepExecutionResult, StepFailure};
use tasker_worker::testing::{template, wait_for, worker_config, TestDatabase, TestWorkflow};
use tasker_worker::worker::{handler_fn, DispatchMode, InMemoryHandlerRegistry, StepSuccess, WorkerCore};
use uuid::Uuid;

/// Their types, as their orchestrator deserializes `workflow_steps.results`.
mod theirs {
    // Deserializing into these fields is the test; not every one is read afterwards.
    #![allow(dead_code)]
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(default)]
    pub struct StepExecutionResult {
        pub step_uuid: Uuid,
        pub success: bool,
        pub result: Value,
        pub status: String,
        pub metadata: StepExecutionMetadata,
        pub error: Option<StepExecutionError>,
        pub orchestration_metadata: Option<OrchestrationMetadata>,
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

    /// Absent fields default; `null` is refused for every field that is not an Option.
    #[derive(Debug, Deserialize)]
    #[serde(default)]
    pub struct StepExecutionMetadata {
        pub execution_time_ms: i64,
        pub retryable: bool,
        pub completed_at: DateTime<FixedOffset>,
        pub custom: Map<String, Value>,
        pub context: Map<String, Value>,
        pub started_at: Option<DateTime<FixedOffset>>,
        pub worker_id: Option<String>,
        pub worker_hostname: Option<String>,
        pub handler_version: Option<String>,
        pub error_code: Option<String>,
        pub error_type: Option<String>,
    }

    impl Default for StepExecutionMetadata {
        fn default() -> Self {
            Self {
                execution_time_ms: 0,
                retryable: false,
                completed_at: DateTime::parse_from_rfc3339("1970-01-01T00:00:00Z").unwrap(),
                custom: Map::new(),
                context: Map::new(),
                started_at: None,
                worker_id: None,
                worker_hostname: None,
                handler_version: None,
                error_code: None,
                error_type: None,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    pub struct StepExecutionError {
        pub message: String,
        pub retryable: bool,
        #[serde(default)]
        pub error_type: Option<String>,
        #[serde(default)]
        pub backtrace: Option<Vec<String>>,
        #[serde(default)]
        pub status_code: Option<u16>,
        #[serde(default)]
        pub context: HashMap<String, Value>,
    }

    #[derive(Debug, Deserialize)]
    pub struct OrchestrationMetadata {
        pub headers: HashMap<String, String>,
        pub custom: Map<String, Value>,
        #[serde(default)]
        pub error_context: Option<Value>,
        #[serde(default)]
        pub backoff_hint: Option<BackoffHint>,
    }

    #[derive(Debug, Deserialize)]
    pub struct BackoffHint {
        pub backoff_type: BackoffType,
        pub delay_seconds: u32,
        #[serde(default)]
        pub context: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    pub enum BackoffType {
        ServerRequested,
        RateLimit,
        ServiceUnavailable,
        Custom,
    }

    /// `result.decision_point_outcome`: internally tagged by `type`, snake_case variants.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum DecisionPointOutcome {
        NoBranches,
        CreateSteps { step_names: Vec<String> },
    }

    /// `result.batch_processing_outcome`; every field of create_batches required.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum BatchProcessingOutcome {
        NoBatches,
        CreateBatches {
            worker_template_name: String,
            worker_count: u32,
            total_items: u64,
            cursor_configs: Vec<CursorConfig>,
        },
    }

    #[derive(Debug, Deserialize)]
    pub struct CursorConfig {
        pub batch_id: String,
        pub start_cursor: Value,
        pub end_cursor: Value,
        pub batch_size: u32,
    }
}

fn read_as_theirs(stored: &Value) -> theirs::StepExecutionResult {
    serde_json::from_value(stored.clone())
        .unwrap_or_else(|err| panic!("tasker-core's orchestrator could not read {stored}: {err}"))
}

/// Their retry delay: a `retry-after` header, any case, in seconds.
fn their_retry_after(result: &theirs::StepExecutionResult) -> Option<u32> {
    let headers = &result.orchestration_metadata.as_ref()?.headers;
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .map(|(_, value)| value.parse().expect("integer seconds"))
}

#[test]
fn the_mirror_is_strict_where_theirs_is() {
    // What broke their orchestrator before: the hint's spelling, a missing headers or custom.
    let old = json!({"success": false, "status": "failed",
        "error": {"message": "busy", "retryable": true},
        "orchestration_metadata": {"backoff_hint": {"backoff_type": "server_requested", "delay_seconds": 3}}});
    assert!(serde_json::from_value::<theirs::StepExecutionResult>(old).is_err());
    let no_message = json!({"success": false, "error": {"retryable": true}});
    assert!(serde_json::from_value::<theirs::StepExecutionResult>(no_message).is_err());
    let null_metadata = json!({"success": true, "metadata": null});
    assert!(serde_json::from_value::<theirs::StepExecutionResult>(null_metadata).is_err());
}

/// What the Ruby handler bases store (tests/fixtures/ruby_outcomes.json, kept current by
/// spec/tasker_worker/outcome_contract_spec.rb) reads as their outcome types.
#[test]
fn the_ruby_handlers_outcomes_read_as_theirs() {
    let outcomes: Map<String, Value> =
        serde_json::from_str(include_str!("fixtures/ruby_outcomes.json")).unwrap();
    let mut kinds = BTreeSet::new();
    for (name, result) in &outcomes {
        let stored =
            json!({"step_uuid": Uuid::now_v7(), "success": true, "status": "completed", "result": result});
        let read = read_as_theirs(&stored);
        if let Some(decision) = read.result.get("decision_point_outcome") {
            match serde_json::from_value::<theirs::DecisionPointOutcome>(decision.clone()) {
                Ok(theirs::DecisionPointOutcome::CreateSteps { step_names }) => {
                    assert!(!step_names.is_empty(), "{name}");
                    kinds.insert("create_steps");
                }
                Ok(theirs::DecisionPointOutcome::NoBranches) => {
                    kinds.insert("no_branches");
                }
                Err(err) => panic!("{name}: their orchestrator would ignore {decision}: {err}"),
            }
        } else {
            let batch = read
                .result
                .get("batch_processing_outcome")
                .unwrap_or_else(|| panic!("{name} carries no outcome"));
            match serde_json::from_value::<theirs::BatchProcessingOutcome>(batch.clone()) {
                Ok(theirs::BatchProcessingOutcome::CreateBatches {
                    worker_count,
                    cursor_configs,
                    ..
                }) => {
                    assert_eq!(worker_count as usize, cursor_configs.len(), "{name}");
                    let ids: BTreeSet<&str> = cursor_configs.iter().map(|c| c.batch_id.as_str()).collect();
                    assert_eq!(ids.len(), cursor_configs.len(), "{name}: batch ids are unique");
                    kinds.insert("create_batches");
                }
                Ok(theirs::BatchProcessingOutcome::NoBatches) => {
                    kinds.insert("no_batches");
                }
                Err(err) => panic!("{name}: their orchestrator would ignore {batch}: {err}"),
            }
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["create_batches", "create_steps", "no_batches", "no_branches"]
    );
    // The mirror refuses what theirs refuses: Ruby-style spellings and a missing batch_size.
    for (bad, what) in [
        (json!({"type": "CreateSteps", "step_names": ["a"]}), "decision"),
        (
            json!({"outcome_type": "create_steps", "step_names": ["a"]}),
            "decision",
        ),
    ] {
        assert!(
            serde_json::from_value::<theirs::DecisionPointOutcome>(bad).is_err(),
            "{what}"
        );
    }
    let no_size = json!({"type": "create_batches", "worker_template_name": "w", "worker_count": 1, "total_items": 1,
                         "cursor_configs": [{"batch_id": "001", "start_cursor": 0, "end_cursor": 1}]});
    assert!(serde_json::from_value::<theirs::BatchProcessingOutcome>(no_size).is_err());
}

#[test]
fn every_result_the_worker_builds_reads_as_theirs() {
    let started_at = chrono::Utc::now();
    let timing = ExecutionTiming {
        started_at,
        completed_at: started_at + chrono::Duration::milliseconds(4),
        worker_id: "worker_contract".into(),
    };
    let step = Uuid::now_v7();
    let mut custom = Map::new();
    custom.insert("by".into(), json!("spec"));
    let success = StepExecutionResult::success(step, json!({"value": 8}), custom, &timing);
    let theirs = read_as_theirs(&serde_json::to_value(&success).unwrap());
    assert!(theirs.success);
    assert_eq!((theirs.step_uuid, theirs.status.as_str()), (step, "completed"));
    assert_eq!(theirs.metadata.execution_time_ms, 4);

    // Each failure the worker writes (error types as the worker names them).
    let failures = [
        ("handler_error", true, None),
        ("handler_error", true, Some(5)),
        ("card_declined", false, None),
        ("handler_timeout", true, None),
        ("ffi_timeout", true, None),
        ("handler_panic", false, None),
        ("handler_not_found", false, None),
        ("invalid_result", false, None),
        ("invalid_input", false, None),
        ("max_attempts_exceeded", false, None),
        ("handler_exit", false, None),
    ];
    for (error_type, retryable, retry_after) in failures {
        let failure = StepFailure {
            retry_after_seconds: retry_after,
            backtrace: Some(vec!["handler.rb:1".into()]),
            ..StepFailure::new(error_type, format!("{error_type} happened"), retryable)
                .with_context("error_class", "Boom")
        };
        let stored = serde_json::to_value(StepExecutionResult::failure(step, failure, &timing)).unwrap();
        let theirs = read_as_theirs(&stored);
        let error = theirs.error.as_ref().expect("an error object");
        assert_eq!(error.message, format!("{error_type} happened"));
        assert_eq!(
            (error.retryable, theirs.metadata.retryable),
            (retryable, retryable),
            "{stored}"
        );
        assert_eq!(theirs.status, if retryable { "failed" } else { "error" });
        assert_eq!(their_retry_after(&theirs), retry_after, "{stored}");
        if retry_after.is_some() {
            let hint = theirs
                .orchestration_metadata
                .as_ref()
                .unwrap()
                .backoff_hint
                .as_ref()
                .unwrap();
            assert_eq!(hint.backoff_type, theirs::BackoffType::ServerRequested);
        }
    }
}

/// The results a running worker stores, read back from `workflow_steps.results`.
#[tokio::test]
async fn every_result_a_worker_stores_reads_as_theirs() {
    let db = TestDatabase::migrated().await;
    let registry = Arc::new(InMemoryHandlerRegistry::new());
    registry.register(
        "Ok",
        handler_fn(|_ctx| async move { Ok(StepSuccess::new(json!({"value": 8}))) }),
    );
    registry.register(
        "Busy",
        handler_fn(|_ctx| async move {
            Err(StepFailure {
                retry_after_seconds: Some(7),
                ..StepFailure::new("", "gateway busy", true)
            })
        }),
    );
    registry.register(
        "Flaky",
        handler_fn(|_ctx| async move { Err(StepFailure::new("", "try again", true)) }),
    );
    registry.register(
        "Declines",
        handler_fn(|_ctx| async move { Err(StepFailure::new("card_declined", "card declined", false)) }),
    );
    registry.register(
        "Panics",
        handler_fn(|_ctx| async move { panic!("index out of range") }),
    );
    registry.register(
        "Sleeps",
        handler_fn(|_ctx| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(StepSuccess::default())
        }),
    );
    registry.register(
        "Deep",
        handler_fn(|_ctx| async move {
            let mut deep = json!(1);
            for _ in 0..MAX_JSON_DEPTH + 1 {
                deep = json!([deep]);
            }
            Ok(StepSuccess::new(deep))
        }),
    );
    let steps = [
        ("ok", "Ok"),
        ("busy", "Busy"),
        ("flaky", "Flaky"),
        ("declines", "Declines"),
        ("panics", "Panics"),
        ("sleeps", "Sleeps"),
        ("deep", "Deep"),
        ("unknown", "NoSuchHandler"),
    ];
    let mut config = worker_config(&db, &["contract"]);
    config.worker.mpsc_channels.handler_dispatch.handler_timeout_ms = 200;
    let core = WorkerCore::start(config, DispatchMode::Rust(registry))
        .await
        .expect("worker starts");
    let defs: Vec<(&str, &str, &[&str])> = steps.iter().map(|(n, c)| (*n, *c, &[][..])).collect();
    let wf = TestWorkflow::create(&db.pool, "contract", template("contract", &defs), json!({})).await;
    for (name, _) in steps {
        wf.enqueue(name).await;
    }

    let stored: Vec<Value> = wait_for("every step's result", Duration::from_secs(20), || async {
        let rows: Vec<Value> = sqlx::query_scalar(
            "SELECT results FROM tasker.workflow_steps WHERE task_uuid = $1 AND results IS NOT NULL",
        )
        .bind(wf.task_uuid)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        (rows.len() == steps.len()).then_some(rows)
    })
    .await;
    let mut kinds = BTreeSet::new();
    for result in &stored {
        let theirs = read_as_theirs(result);
        let kind = match &theirs.error {
            None => "success".to_string(),
            Some(e) => e.error_type.clone().unwrap_or_default(),
        };
        if kind == "handler_error" && their_retry_after(&theirs) == Some(7) {
            kinds.insert("handler_error with retry-after".to_string());
        }
        kinds.insert(kind);
    }
    let expected: BTreeSet<String> = [
        "success",
        "handler_error",
        "handler_error with retry-after",
        "card_declined",
        "handler_panic",
        "handler_timeout",
        "invalid_result",
        "handler_not_found",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds, expected);
    core.shutdown().await.unwrap();
    db.drop_database().await;
}
