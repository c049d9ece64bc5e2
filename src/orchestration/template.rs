//! Task templates in tasker-core's YAML shape, validated before they are registered:
//! duplicate steps, unknown dependencies, cycles and bad retry values are errors naming the
//! template and the step. Keys this worker does not use (metadata, input_schema, ...) are
//! kept as they are, so the stored configuration is the whole template.
//!
//! Step types (tasker-core's `type:`, alias `step_type:`): `standard` (the default, not
//! written back), `decision`, `deferred_convergence`, `batchable` and `batch_worker` (with its
//! `batch_config`). Their shape rules are checked here, each error naming the step; what the
//! orchestrator does with them is in `super::dynamic`.

use crate::error::{TaskerError, TaskerResult};
use crate::messaging::validate_namespace;
use crate::worker::event_systems::domain_event_system::EventDeclaration;
use crate::worker::HandlerSpec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTemplate {
    pub name: String,
    pub namespace_name: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// tasker-core's `named_tasks.identity_strategy`: how creating a task twice is told apart
    /// (task_initializer.rs). Not a template key in tasker-core, whose registration always
    /// writes `strict`; here it is, and a template without it is `always_unique`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_strategy: Option<IdentityStrategy>,
    pub steps: Vec<StepTemplate>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStrategy {
    /// The same template and context (keys in any order) is the same task.
    Strict,
    /// Every create_task must carry an idempotency key; the key is the identity.
    CallerProvided,
    /// Every create_task without a key is a new task.
    #[default]
    AlwaysUnique,
}

impl IdentityStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::CallerProvided => "caller_provided",
            Self::AlwaysUnique => "always_unique",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Strict, Self::CallerProvided, Self::AlwaysUnique]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTemplate {
    pub name: String,
    pub handler: HandlerSpec,
    #[serde(default, alias = "depends_on")]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub publishes_events: Vec<Value>,
    /// `standard`, `decision`, `deferred_convergence`, `batchable` or `batch_worker`
    /// (checked by `validate`, so the error names the step).
    #[serde(
        rename = "type",
        alias = "step_type",
        default = "standard_type",
        skip_serializing_if = "is_standard_type"
    )]
    pub step_type: String,
    /// `batch_worker` steps only (`BatchConfig`; checked by `validate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_config: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn standard_type() -> String {
    "standard".into()
}

fn is_standard_type(t: &String) -> bool {
    t == "standard"
}

/// The kinds of step tasker-core knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepType {
    Standard,
    Decision,
    DeferredConvergence,
    Batchable,
    BatchWorker,
}

impl StepType {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "standard" => Self::Standard,
            "decision" => Self::Decision,
            "deferred_convergence" => Self::DeferredConvergence,
            "batchable" => Self::Batchable,
            "batch_worker" => Self::BatchWorker,
            _ => return None,
        })
    }
}

/// A `batch_worker` step's `batch_config`. Only `cursor_field` and `failure_strategy` reach
/// the workers (in `inputs.batch_metadata`); the others are for the handlers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub worker_template: String,
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    #[serde(default = "default_cursor_field")]
    pub cursor_field: String,
    #[serde(default = "default_failure_strategy")]
    pub failure_strategy: String,
}

fn default_batch_size() -> u64 {
    1000
}
fn default_parallelism() -> u32 {
    10
}
fn default_cursor_field() -> String {
    "id".into()
}
fn default_failure_strategy() -> String {
    "continue_on_failure".into()
}

impl StepTemplate {
    /// The step's type; an unknown one (refused by `validate`) reads as standard.
    pub fn kind(&self) -> StepType {
        StepType::parse(&self.step_type).unwrap_or(StepType::Standard)
    }

    /// The parsed `batch_config` (validated at registration).
    pub fn batch(&self) -> Option<BatchConfig> {
        self.batch_config
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub retryable: bool,
    pub max_attempts: u32,
    /// `exponential` (base × 2^(attempt-1)), `linear` (base × attempt) or `fixed` (base).
    pub backoff: String,
    pub backoff_base_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retryable: true,
            max_attempts: 3,
            backoff: "exponential".into(),
            backoff_base_ms: 1000,
            max_backoff_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 for the first retry), in milliseconds.
    pub fn backoff_ms(&self, next_attempt: u32) -> u64 {
        let retries = next_attempt.saturating_sub(1).max(1);
        let ms = match self.backoff.as_str() {
            "linear" => self.backoff_base_ms.saturating_mul(u64::from(retries)),
            "fixed" => self.backoff_base_ms,
            _ => self.backoff_base_ms.saturating_mul(1u64 << (retries - 1).min(32)),
        };
        ms.min(self.max_backoff_ms)
    }
}

fn default_version() -> String {
    "0.1.0".into()
}

impl TaskTemplate {
    /// Parses and validates one YAML template; `origin` names it in errors (e.g. its path).
    pub fn from_yaml(text: &str, origin: &str) -> TaskerResult<Self> {
        let template: Self = serde_yaml::from_str(text)
            .map_err(|err| TaskerError::Configuration(format!("task template {origin}: {err}")))?;
        template
            .validate()
            .map_err(|why| TaskerError::Configuration(format!("task template {origin}: {why}")))?;
        Ok(template)
    }

    /// Every `*.yml` / `*.yaml` file in `dir`, sorted by file name.
    pub fn load_dir(dir: &Path) -> TaskerResult<Vec<Self>> {
        let entries = std::fs::read_dir(dir).map_err(|err| {
            TaskerError::Configuration(format!("task templates directory {}: {err}", dir.display()))
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "yml" || ext == "yaml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    TaskerError::Configuration(format!("task template {}: {err}", path.display()))
                })?;
                Self::from_yaml(&text, &path.display().to_string())
            })
            .collect()
    }

    pub fn step(&self, name: &str) -> Option<&StepTemplate> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn validate(&self) -> Result<(), String> {
        let label = format!("{}/{}@{}", self.namespace_name, self.name, self.version);
        validate_namespace(&self.namespace_name).map_err(|e| format!("{label}: namespace_name: {e}"))?;
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if self.steps.is_empty() {
            return Err(format!("{label}: steps must not be empty"));
        }
        let mut names = HashSet::new();
        for step in &self.steps {
            if !names.insert(step.name.as_str()) {
                return Err(format!("{label}: step {:?} is defined twice", step.name));
            }
        }
        for step in &self.steps {
            let at = format!("{label}: step {:?}", step.name);
            if step.handler.callable.trim().is_empty() {
                return Err(format!("{at}: handler.callable must not be empty"));
            }
            for dep in &step.dependencies {
                if !names.contains(dep.as_str()) {
                    return Err(format!(
                        "{at} depends on {dep:?}, which is not a step of this template"
                    ));
                }
            }
            validate_retry(&step.retry).map_err(|why| format!("{at}: retry.{why}"))?;
            if step.timeout_seconds == Some(0) {
                return Err(format!("{at}: timeout_seconds must be at least 1"));
            }
            for (i, event) in step.publishes_events.iter().enumerate() {
                serde_json::from_value::<EventDeclaration>(event.clone())
                    .map_err(|err| format!("{at}: publishes_events[{i}]: {err}"))?;
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(format!("{label}: dependency cycle through step {cycle:?}"));
        }
        self.validate_types(&label)
    }

    /// The rules of the dynamic step types (a valid DAG is assumed).
    fn validate_types(&self, label: &str) -> Result<(), String> {
        for step in &self.steps {
            let at = format!("{label}: step {:?}", step.name);
            let kind = StepType::parse(&step.step_type).ok_or_else(|| {
                format!(
                    "{at}: unknown type {:?} (standard, decision, deferred_convergence, batchable or batch_worker)",
                    step.step_type
                )
            })?;
            if step.batch_config.is_some() && kind != StepType::BatchWorker {
                return Err(format!(
                    "{at}: batch_config is only for batch_worker steps, not {}",
                    step.step_type
                ));
            }
            match kind {
                StepType::Decision => {
                    if step.dependencies.is_empty() {
                        return Err(format!("{at}: a decision step needs at least one dependency"));
                    }
                    if self.children(&step.name).next().is_none() {
                        return Err(format!(
                            "{at}: a decision step needs candidate steps (steps that depend on it), it has none"
                        ));
                    }
                }
                StepType::BatchWorker => {
                    let raw = step.batch_config.clone().ok_or_else(|| {
                        format!("{at}: a batch_worker step needs batch_config (worker_template, ...)")
                    })?;
                    let config: BatchConfig =
                        serde_json::from_value(raw).map_err(|err| format!("{at}: batch_config: {err}"))?;
                    if config.worker_template.trim().is_empty() {
                        return Err(format!("{at}: batch_config.worker_template must not be empty"));
                    }
                    if config.batch_size == 0 {
                        return Err(format!("{at}: batch_config.batch_size must be at least 1"));
                    }
                    if config.parallelism == 0 {
                        return Err(format!("{at}: batch_config.parallelism must be at least 1"));
                    }
                    if config.cursor_field.trim().is_empty() {
                        return Err(format!("{at}: batch_config.cursor_field must not be empty"));
                    }
                    if !["continue_on_failure", "fail_fast", "isolate"]
                        .contains(&config.failure_strategy.as_str())
                    {
                        return Err(format!(
                            "{at}: batch_config.failure_strategy must be continue_on_failure, fail_fast or isolate, not {:?}",
                            config.failure_strategy
                        ));
                    }
                    if !self
                        .ancestors(&step.name)
                        .iter()
                        .any(|a| self.step(a).is_some_and(|s| s.kind() == StepType::Batchable))
                    {
                        return Err(format!(
                            "{at}: a batch_worker step needs a batchable step before it (among its dependencies), none precedes it"
                        ));
                    }
                }
                StepType::DeferredConvergence => {
                    if !self.ancestors(&step.name).iter().any(|a| {
                        self.step(a)
                            .is_some_and(|s| matches!(s.kind(), StepType::Decision | StepType::Batchable))
                    }) {
                        return Err(format!(
                            "{at}: a deferred_convergence step needs a decision or batchable step before it; no path leads to it from one"
                        ));
                    }
                }
                StepType::Standard | StepType::Batchable => {}
            }
        }
        Ok(())
    }

    /// The steps that list `name` among their dependencies.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a StepTemplate> + 'a {
        self.steps
            .iter()
            .filter(move |s| s.dependencies.iter().any(|d| d == name))
    }

    /// Every transitive dependency of `name` (not itself).
    pub fn ancestors(&self, name: &str) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut todo: Vec<&str> = vec![name];
        while let Some(next) = todo.pop() {
            for dep in self.step(next).map(|s| s.dependencies.as_slice()).unwrap_or(&[]) {
                if seen.insert(dep.clone()) {
                    todo.push(dep);
                }
            }
        }
        seen
    }

    /// Every transitive dependent of `name` (not itself).
    pub fn descendants(&self, name: &str) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut todo: Vec<String> = vec![name.to_string()];
        while let Some(next) = todo.pop() {
            for child in self.children(&next) {
                if seen.insert(child.name.clone()) {
                    todo.push(child.name.clone());
                }
            }
        }
        seen
    }

    /// Kahn's algorithm: a step never freed of its parents is on (or behind) a cycle.
    fn find_cycle(&self) -> Option<String> {
        let mut waiting: HashMap<&str, usize> = self
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.dependencies.len()))
            .collect();
        let mut ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| *s)
            .collect();
        while let Some(done) = ready.pop() {
            for step in self
                .steps
                .iter()
                .filter(|s| s.dependencies.iter().any(|d| d == done))
            {
                let n = waiting.get_mut(step.name.as_str())?;
                *n -= 1;
                if *n == 0 {
                    ready.push(&step.name);
                }
            }
            waiting.remove(done);
        }
        let mut left: Vec<&str> = waiting.keys().copied().collect();
        left.sort();
        left.first().map(|s| s.to_string())
    }
}

fn validate_retry(retry: &RetryPolicy) -> Result<(), String> {
    if retry.max_attempts == 0 {
        return Err("max_attempts must be at least 1".into());
    }
    if !["exponential", "linear", "fixed"].contains(&retry.backoff.as_str()) {
        return Err(format!(
            "backoff must be exponential, linear or fixed, not {:?}",
            retry.backoff
        ));
    }
    if retry.backoff_base_ms > retry.max_backoff_ms {
        return Err(format!(
            "backoff_base_ms ({}) must not exceed max_backoff_ms ({})",
            retry.backoff_base_ms, retry.max_backoff_ms
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIAMOND: &str = r#"
name: parallel_computation
namespace_name: diamond_workflow
version: 1.0.0
metadata: { author: x }
steps:
  - name: start
    handler: { callable: Diamond::Start, initialization: { op: square } }
  - name: b
    handler: { callable: Diamond::B }
    dependencies: [start]
    retry: { retryable: true, max_attempts: 2, backoff: exponential, backoff_base_ms: 500, max_backoff_ms: 5000 }
  - name: c
    handler: { callable: Diamond::C }
    depends_on: [start]
    timeout_seconds: 30
  - name: end
    handler: { callable: Diamond::End }
    dependencies: [b, c]
"#;

    fn with(replace: &str, by: &str) -> TaskerResult<TaskTemplate> {
        TaskTemplate::from_yaml(&DIAMOND.replace(replace, by), "diamond.yaml")
    }

    #[test]
    fn parses_tasker_core_shape_and_keeps_unknown_keys() {
        let t = TaskTemplate::from_yaml(DIAMOND, "diamond.yaml").unwrap();
        assert_eq!(t.steps.len(), 4);
        assert_eq!(
            t.step("c").unwrap().dependencies,
            ["start"],
            "depends_on is an alias"
        );
        assert_eq!(t.step("b").unwrap().retry.max_attempts, 2);
        assert_eq!(t.step("c").unwrap().retry, RetryPolicy::default());
        assert_eq!(t.step("start").unwrap().handler.initialization["op"], "square");
        assert_eq!(serde_json::to_value(&t).unwrap()["metadata"]["author"], "x");
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            (with("  - name: c\n", "  - name: b\n"), "defined twice"),
            (
                with("dependencies: [b, c]", "dependencies: [b, zz]"),
                "\"zz\", which is not a step",
            ),
            (
                with(
                    "dependencies: [start]\n    retry",
                    "dependencies: [end]\n    retry",
                ),
                "dependency cycle",
            ),
            (with("max_attempts: 2", "max_attempts: 0"), "retry.max_attempts"),
            (
                with("backoff: exponential", "backoff: sometimes"),
                "retry.backoff",
            ),
            (
                with("backoff_base_ms: 500", "backoff_base_ms: 50000"),
                "backoff_base_ms (50000)",
            ),
            (
                with("namespace_name: diamond_workflow", "namespace_name: Bad-Name"),
                "namespace_name",
            ),
            (
                with("timeout_seconds: 30", "timeout_seconds: 0"),
                "timeout_seconds",
            ),
            (with("steps:\n", "stepz:\n"), "missing field `steps`"),
            (
                with(
                    "timeout_seconds: 30",
                    "publishes_events: [{ name: x, delivery_mode: pigeon }]",
                ),
                "publishes_events[0]: unknown variant `pigeon`",
            ),
        ];
        for (result, expected) in cases {
            let err = result.expect_err(expected).to_string();
            assert!(
                err.contains(expected) && err.contains("diamond.yaml"),
                "{expected}: {err}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            backoff_base_ms: 1000,
            max_backoff_ms: 5000,
            ..RetryPolicy::default()
        };
        assert_eq!([2, 3, 4, 5].map(|a| p.backoff_ms(a)), [1000, 2000, 4000, 5000]);
        let linear = RetryPolicy {
            backoff: "linear".into(),
            ..p.clone()
        };
        assert_eq!([2, 3, 4].map(|a| linear.backoff_ms(a)), [1000, 2000, 3000]);
        let fixed = RetryPolicy {
            backoff: "fixed".into(),
            ..p
        };
        assert_eq!([2, 5].map(|a| fixed.backoff_ms(a)), [1000, 1000]);
    }
}
