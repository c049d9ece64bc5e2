//! Task templates in tasker-core's YAML shape, validated before they are registered:
//! duplicate steps, unknown dependencies, cycles and bad retry values are errors naming the
//! template and the step. Keys this worker does not use (metadata, input_schema, ...) are
//! kept as they are, so the stored configuration is the whole template.

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
    pub steps: Vec<StepTemplate>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
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
    #[serde(flatten)]
    pub other: Map<String, Value>,
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
        Ok(())
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
