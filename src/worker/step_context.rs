//! `StepContext`: everything a handler needs to run one step, read from the database in
//! one query per claim batch (see `hydration.rs`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The `handler` block of a step in its task template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerSpec {
    /// The handler's name: a Ruby constant or a key in a Rust handler registry.
    pub callable: String,
    /// Settings the template passes to the handler (`handler.initialization`).
    #[serde(default)]
    pub initialization: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepContext {
    pub task_uuid: Uuid,
    pub step_uuid: Uuid,
    /// The task's correlation id (`tasks.correlation_id`).
    pub correlation_id: Uuid,
    pub namespace: String,
    pub task_name: String,
    pub task_version: String,
    pub step_name: String,
    /// The task's input (`tasks.context`).
    pub task_context: Value,
    /// The step's own inputs (`workflow_steps.inputs`).
    pub inputs: Value,
    pub handler: HandlerSpec,
    /// Stored results of every ancestor step that has one, keyed by step name.
    pub dependency_results: Map<String, Value>,
    /// This attempt's number (1 for the first run).
    pub attempts: i32,
    pub max_attempts: i32,
    pub retryable: bool,
    /// The template's `timeout_seconds` for this step, when set.
    pub timeout_seconds: Option<u64>,
    /// The step's whole definition from the template (events, retry policy, ...).
    pub step_definition: Value,
    /// The step's saved checkpoint (`workflow_steps.checkpoint`, see
    /// `crate::worker::checkpoints`): where a reclaimed or retried step resumes.
    #[serde(default)]
    pub checkpoint: Option<Value>,
}
