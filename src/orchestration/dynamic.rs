//! Dynamic workflows in the embedded orchestrator: what a `decision` or `batchable` step's
//! success result adds to its task. The result processor (`result_processor.rs`) calls
//! `plan_growth` with the template, the step and its stored result, then `apply` writes the
//! plan in the transaction that completes the step (task row lock held), before
//! `tasker.orchestrator_complete_step` completes it and enqueues what is ready.
//!
//! Outcomes (tasker-core's shapes, read from `workflow_steps.results.result`):
//! - `decision_point_outcome`: `{"type":"no_branches"}` or
//!   `{"type":"create_steps","step_names":[...]}`;
//! - `batch_processing_outcome`: `{"type":"no_batches"}` or `{"type":"create_batches",
//!   "worker_template_name":..,"worker_count":..,"total_items":..,"cursor_configs":[{"batch_id":
//!   "001","start_cursor":..,"end_cursor":..,"batch_size":..}, ...]}`.
//!
//! Unlike tasker-core (which logs a warning and carries on), an outcome that cannot be applied
//! is an `Err` naming the problem; the caller fails the deciding step with it.

use crate::config::OrchestrationConfig;
use crate::error::{TaskerError, TaskerResult};
use crate::orchestration::template::{StepType, TaskTemplate};
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use std::collections::{BTreeSet, HashSet};
use uuid::Uuid;

/// The longest step name (`named_steps.name` is varchar(128)).
const MAX_STEP_NAME: usize = 128;

/// Edge names, as tasker-core writes them.
pub(crate) const PROVIDES: &str = "provides";
pub(crate) const BATCH_DEPENDENCY: &str = "batch_dependency";
pub(crate) const WORKER_TO_CONVERGENCE: &str = "worker_to_convergence";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewStep {
    /// The instance's name (`named_steps.name`): the template step's, or `{template}_{batch_id}`.
    pub name: String,
    pub retryable: bool,
    pub max_attempts: i32,
    pub inputs: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NewEdge {
    pub from: String,
    pub to: String,
    pub name: &'static str,
}

/// What an outcome adds: steps (in creation order) and the edges into them, by instance name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Growth {
    pub steps: Vec<NewStep>,
    pub edges: Vec<NewEdge>,
}

/// Why an outcome was refused: an error type for the step's result and a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refused {
    pub error_type: &'static str,
    pub message: String,
}

fn refuse(error_type: &'static str, message: String) -> Refused {
    Refused { error_type, message }
}

/// The plan for `step` (its template step's name) of kind decision or batchable, given its
/// stored `results` (a StepExecutionResult) and the names of the steps its task has.
pub(crate) fn plan_growth(
    template: &TaskTemplate,
    step: &str,
    results: Option<&Value>,
    existing: &HashSet<String>,
    limits: &OrchestrationConfig,
) -> Result<Growth, Refused> {
    let kind = template.step(step).map(|s| s.kind());
    let result = results.map(|r| &r["result"]);
    match kind {
        Some(StepType::Decision) => {
            let outcome = result
                .map(|r| &r["decision_point_outcome"])
                .unwrap_or(&Value::Null);
            plan_decision(template, step, outcome, existing, limits)
                .map_err(|m| refuse("invalid_decision_outcome", format!("decision step {step:?}: {m}")))
        }
        Some(StepType::Batchable) => {
            let outcome = result
                .map(|r| &r["batch_processing_outcome"])
                .unwrap_or(&Value::Null);
            plan_batches(template, step, outcome, existing, limits)
                .map_err(|m| refuse("invalid_batch_outcome", format!("batchable step {step:?}: {m}")))
        }
        _ => Ok(Growth::default()),
    }
}

/// The decision's segment: the steps reachable from its children through dependents,
/// stopping at other decisions (which are in it, their dependents not).
pub(crate) fn segment(template: &TaskTemplate, decision: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = template.children(decision).map(|s| s.name.as_str()).collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.to_string()) {
            continue;
        }
        let Some(step) = template.step(name) else { continue };
        if step.kind() == StepType::Decision {
            continue;
        }
        todo.extend(template.children(name).map(|s| s.name.as_str()));
    }
    seen
}

fn plan_decision(
    template: &TaskTemplate,
    decision: &str,
    outcome: &Value,
    existing: &HashSet<String>,
    limits: &OrchestrationConfig,
) -> Result<Growth, String> {
    const SHAPES: &str = r#"expected result.decision_point_outcome = {"type":"no_branches"} or {"type":"create_steps","step_names":["..."]}"#;
    let kind = outcome.get("type").and_then(Value::as_str);
    let names: Vec<String> = match kind {
        Some("no_branches") => return Ok(Growth::default()),
        Some("create_steps") => {
            let list = outcome
                .get("step_names")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("create_steps has no step_names array; {SHAPES}"))?;
            let mut names = Vec::with_capacity(list.len());
            for (i, name) in list.iter().enumerate() {
                let name = name
                    .as_str()
                    .ok_or_else(|| format!("step_names[{i}] is not a string: {name}"))?;
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
            names
        }
        _ if outcome.is_null() => return Err(format!("the result has no decision_point_outcome; {SHAPES}")),
        _ => return Err(format!("unknown decision_point_outcome {outcome}; {SHAPES}")),
    };
    if names.len() > limits.max_steps_per_decision as usize {
        return Err(format!(
            "asks for {} steps, more than orchestration.max_steps_per_decision ({})",
            names.len(),
            limits.max_steps_per_decision
        ));
    }
    let segment = segment(template, decision);
    let outside: Vec<&String> = names.iter().filter(|n| !segment.contains(*n)).collect();
    if !outside.is_empty() {
        return Err(format!(
            "step_names {outside:?} are not steps this decision may create (its candidates: {:?})",
            segment
        ));
    }
    // The chosen steps, then (to a fixed point) every step of the segment with a dependency
    // among them: plain joins and nested decisions on a chosen path, and deferred
    // convergences with at least one chosen parent (the intersection rule). Batch worker
    // templates are never created here; nested decisions on unchosen paths are not either.
    let mut chosen: Vec<String> = names;
    loop {
        let before = chosen.len();
        for step in template.steps.iter().filter(|s| segment.contains(&s.name)) {
            if step.kind() == StepType::BatchWorker || chosen.contains(&step.name) {
                continue;
            }
            if step.dependencies.iter().any(|d| chosen.contains(d)) {
                chosen.push(step.name.clone());
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    // Template order, so creation order follows the template.
    let created: Vec<&str> = template
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| chosen.iter().any(|c| c == n) && !existing.contains(*n))
        .collect();
    if created.len() > limits.max_steps_per_decision as usize {
        return Err(format!(
            "would create {} steps (the chosen ones and the joins they lead to), more than orchestration.max_steps_per_decision ({})",
            created.len(),
            limits.max_steps_per_decision
        ));
    }
    let mut growth = Growth::default();
    for name in &created {
        let step = template.step(name).expect("a template step");
        growth.steps.push(NewStep {
            name: name.to_string(),
            retryable: step.retry.retryable,
            max_attempts: step.retry.max_attempts as i32,
            inputs: json!({}),
        });
        let mut edges = BTreeSet::new();
        for dep in &step.dependencies {
            let from = if created.contains(&dep.as_str()) || existing.contains(dep) {
                dep.as_str()
            } else if step.kind() == StepType::DeferredConvergence
                || matches!(
                    template.step(dep).map(|s| s.kind()),
                    Some(StepType::DeferredConvergence | StepType::BatchWorker)
                )
            {
                // The intersection rule: a convergence waits only for the parents created.
                continue;
            } else {
                // A plain step's parent on an unchosen path: it waits for the decision instead.
                decision
            };
            edges.insert(NewEdge {
                from: from.to_string(),
                to: name.to_string(),
                name: PROVIDES,
            });
        }
        growth.edges.extend(edges);
    }
    Ok(growth)
}

fn plan_batches(
    template: &TaskTemplate,
    batchable: &str,
    outcome: &Value,
    existing: &HashSet<String>,
    limits: &OrchestrationConfig,
) -> Result<Growth, String> {
    const SHAPES: &str = r#"expected result.batch_processing_outcome = {"type":"no_batches"} or {"type":"create_batches","worker_template_name":"...","worker_count":N,"total_items":N,"cursor_configs":[{"batch_id":"001","start_cursor":..,"end_cursor":..,"batch_size":N}]}"#;
    let kind = outcome.get("type").and_then(Value::as_str);
    // (cursor config, is_no_op) per worker.
    let (worker_template, cursors): (String, Vec<(Value, bool)>) = match kind {
        Some("no_batches") => {
            let named = template
                .step(batchable)
                .and_then(|s| s.handler.initialization.get("worker_template_name"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let name = match named {
                Some(name) => name,
                // tasker-core requires handler.initialization.worker_template_name; the one
                // batch_worker below this step serves as well.
                None => {
                    let below: Vec<&str> = template
                        .steps
                        .iter()
                        .filter(|s| {
                            s.kind() == StepType::BatchWorker && s.dependencies.iter().any(|d| d == batchable)
                        })
                        .map(|s| s.name.as_str())
                        .collect();
                    match below.as_slice() {
                        [one] => one.to_string(),
                        _ => {
                            return Err(format!(
                                "no_batches needs handler.initialization.worker_template_name on the batchable step \
                                 (batch_worker steps depending on it: {below:?})"
                            ))
                        }
                    }
                }
            };
            let cursor = json!({"batch_id": "000", "start_cursor": 0, "end_cursor": 0, "batch_size": 0});
            (name, vec![(cursor, true)])
        }
        Some("create_batches") => {
            let name = outcome
                .get("worker_template_name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("create_batches has no worker_template_name string; {SHAPES}"))?
                .to_string();
            for key in ["worker_count", "total_items"] {
                if !outcome.get(key).is_some_and(Value::is_u64) {
                    return Err(format!(
                        "create_batches needs {key} (a non-negative integer); {SHAPES}"
                    ));
                }
            }
            let configs = outcome
                .get("cursor_configs")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("create_batches has no cursor_configs array; {SHAPES}"))?;
            if configs.is_empty() {
                return Err("create_batches has an empty cursor_configs (return no_batches when there is nothing to do)".into());
            }
            if configs.len() > limits.max_batch_workers as usize {
                return Err(format!(
                    "asks for {} batch workers, more than orchestration.max_batch_workers ({})",
                    configs.len(),
                    limits.max_batch_workers
                ));
            }
            let mut ids = HashSet::new();
            let mut cursors = Vec::with_capacity(configs.len());
            for (i, config) in configs.iter().enumerate() {
                let id = config
                    .get("batch_id")
                    .and_then(Value::as_str)
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| format!("cursor_configs[{i}] has no batch_id (a non-empty string)"))?;
                if !ids.insert(id) {
                    return Err(format!("cursor_configs[{i}]: batch_id {id:?} is given twice"));
                }
                for key in ["start_cursor", "end_cursor"] {
                    if config.get(key).is_none() {
                        return Err(format!("cursor_configs[{i}] (batch {id:?}) has no {key}"));
                    }
                }
                if !config
                    .get("batch_size")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n <= u64::from(u32::MAX))
                {
                    return Err(format!(
                        "cursor_configs[{i}] (batch {id:?}) needs batch_size (a non-negative integer)"
                    ));
                }
                cursors.push((config.clone(), false));
            }
            (name, cursors)
        }
        _ if outcome.is_null() => {
            return Err(format!("the result has no batch_processing_outcome; {SHAPES}"))
        }
        _ => return Err(format!("unknown batch_processing_outcome {outcome}; {SHAPES}")),
    };
    let worker = template
        .step(&worker_template)
        .filter(|s| s.kind() == StepType::BatchWorker)
        .ok_or_else(|| {
            format!("worker_template_name {worker_template:?} is not a batch_worker step of this template")
        })?;
    if !template.ancestors(&worker.name).contains(batchable) {
        return Err(format!(
            "worker_template_name {worker_template:?} is a batch_worker step that does not depend on this step"
        ));
    }
    let batch = worker
        .batch()
        .ok_or_else(|| format!("batch_worker step {worker_template:?} has no valid batch_config"))?;

    let mut growth = Growth::default();
    let mut workers = Vec::with_capacity(cursors.len());
    for (cursor, no_op) in cursors {
        let id = cursor["batch_id"].as_str().unwrap_or_default();
        let name = format!("{worker_template}_{id}");
        if name.len() > MAX_STEP_NAME {
            return Err(format!(
                "batch worker name {name:?} is longer than {MAX_STEP_NAME} bytes"
            ));
        }
        if template.step(&name).is_some() {
            return Err(format!(
                "batch worker name {name:?} is the name of a template step; choose other batch_ids"
            ));
        }
        let mut inputs: Map<String, Value> = worker.handler.initialization.clone();
        inputs.insert("cursor".into(), cursor);
        inputs.insert(
            "batch_metadata".into(),
            json!({"cursor_field": batch.cursor_field, "failure_strategy": batch.failure_strategy}),
        );
        inputs.insert("is_no_op".into(), Value::Bool(no_op));
        inputs.insert(
            "__template_step_name".into(),
            Value::String(worker_template.clone()),
        );
        workers.push(name.clone());
        if existing.contains(&name) {
            continue;
        }
        growth.steps.push(NewStep {
            name: name.clone(),
            retryable: worker.retry.retryable,
            max_attempts: worker.retry.max_attempts as i32,
            inputs: Value::Object(inputs),
        });
        growth.edges.push(NewEdge {
            from: batchable.to_string(),
            to: name,
            name: BATCH_DEPENDENCY,
        });
    }
    // Each convergence over the workers: an edge from every worker (and from its other
    // parents that exist); then the steps below it whose parents then all exist.
    let mut created: Vec<String> = Vec::new();
    for conv in template
        .steps
        .iter()
        .filter(|s| s.kind() == StepType::DeferredConvergence && s.dependencies.contains(&worker_template))
    {
        if existing.contains(&conv.name) {
            continue;
        }
        growth.steps.push(NewStep {
            name: conv.name.clone(),
            retryable: conv.retry.retryable,
            max_attempts: conv.retry.max_attempts as i32,
            inputs: json!({}),
        });
        for w in &workers {
            growth.edges.push(NewEdge {
                from: w.clone(),
                to: conv.name.clone(),
                name: WORKER_TO_CONVERGENCE,
            });
        }
        for dep in conv
            .dependencies
            .iter()
            .filter(|d| **d != worker_template && existing.contains(*d))
        {
            growth.edges.push(NewEdge {
                from: dep.clone(),
                to: conv.name.clone(),
                name: PROVIDES,
            });
        }
        created.push(conv.name.clone());
    }
    loop {
        let before = created.len();
        for step in &template.steps {
            if existing.contains(&step.name)
                || created.contains(&step.name)
                || matches!(step.kind(), StepType::BatchWorker | StepType::DeferredConvergence)
                || !step.dependencies.iter().any(|d| created.contains(d))
                || !step
                    .dependencies
                    .iter()
                    .all(|d| created.contains(d) || existing.contains(d))
            {
                continue;
            }
            growth.steps.push(NewStep {
                name: step.name.clone(),
                retryable: step.retry.retryable,
                max_attempts: step.retry.max_attempts as i32,
                inputs: json!({}),
            });
            for dep in &step.dependencies {
                growth.edges.push(NewEdge {
                    from: dep.clone(),
                    to: step.name.clone(),
                    name: PROVIDES,
                });
            }
            created.push(step.name.clone());
        }
        if created.len() == before {
            break;
        }
    }
    Ok(growth)
}

/// Writes `growth` into task `task_uuid` in the caller's transaction (which holds the task's
/// row lock): the named steps (batch workers have their own), the workflow steps with their
/// `pending` transition, and the edges (UNIQUE, so a replay adds none). Returns the new steps'
/// uuids.
pub(crate) async fn apply(
    tx: &mut PgConnection,
    task_uuid: Uuid,
    growth: &Growth,
) -> TaskerResult<Vec<Uuid>> {
    if growth.steps.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = growth.steps.iter().map(|s| s.name.as_str()).collect();
    let uuids: Vec<Uuid> = growth.steps.iter().map(|_| Uuid::now_v7()).collect();
    let pending: Vec<Uuid> = growth.steps.iter().map(|_| Uuid::now_v7()).collect();
    let retryable: Vec<bool> = growth.steps.iter().map(|s| s.retryable).collect();
    let max_attempts: Vec<i32> = growth.steps.iter().map(|s| s.max_attempts).collect();
    let inputs: Vec<Value> = growth.steps.iter().map(|s| s.inputs.clone()).collect();
    sqlx::query(
        "INSERT INTO tasker.named_steps (named_step_uuid, name, created_at, updated_at) \
         SELECT gen_random_uuid(), n, now(), now() FROM unnest($1::text[]) AS n ON CONFLICT (name) DO NOTHING",
    )
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH s AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::bool[], $5::int[], $6::jsonb[], $7::uuid[]) \
                    WITH ORDINALITY AS s(step_uuid, name, retryable, max_attempts, inputs, pending_uuid, n)), \
              steps AS ( \
         INSERT INTO tasker.workflow_steps \
             (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts, inputs, created_at, updated_at) \
         SELECT s.step_uuid, $1, ns.named_step_uuid, s.retryable, s.max_attempts, s.inputs, now(), now() \
           FROM s JOIN tasker.named_steps ns ON ns.name = s.name ORDER BY s.n \
         RETURNING workflow_step_uuid) \
         INSERT INTO tasker.workflow_step_transitions \
             (workflow_step_transition_uuid, workflow_step_uuid, from_state, to_state, metadata, sort_key, most_recent, \
              created_at, updated_at) \
         SELECT s.pending_uuid, s.step_uuid, NULL, 'pending', '{\"event\": \"initialize\", \"dynamic\": true}'::jsonb, 1, true, \
                now(), now() \
           FROM s JOIN steps ON steps.workflow_step_uuid = s.step_uuid",
    )
    .bind(task_uuid)
    .bind(&uuids)
    .bind(&names)
    .bind(&retryable)
    .bind(&max_attempts)
    .bind(&inputs)
    .bind(&pending)
    .execute(&mut *tx)
    .await?;
    let from: Vec<&str> = growth.edges.iter().map(|e| e.from.as_str()).collect();
    let to: Vec<&str> = growth.edges.iter().map(|e| e.to.as_str()).collect();
    let edge_names: Vec<&str> = growth.edges.iter().map(|e| e.name).collect();
    let edges = sqlx::query(
        "WITH task_steps AS (SELECT ws.workflow_step_uuid, ns.name FROM tasker.workflow_steps ws \
                              JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid \
                             WHERE ws.task_uuid = $1) \
         INSERT INTO tasker.workflow_step_edges \
             (workflow_step_edge_uuid, from_step_uuid, to_step_uuid, name, created_at, updated_at) \
         SELECT gen_random_uuid(), f.workflow_step_uuid, t.workflow_step_uuid, e.name, now(), now() \
           FROM unnest($2::text[], $3::text[], $4::text[]) AS e(from_name, to_name, name) \
           JOIN task_steps f ON f.name = e.from_name \
           JOIN task_steps t ON t.name = e.to_name \
         ON CONFLICT (from_step_uuid, to_step_uuid, name) DO NOTHING",
    )
    .bind(task_uuid)
    .bind(&from)
    .bind(&to)
    .bind(&edge_names)
    .execute(&mut *tx)
    .await?;
    if edges.rows_affected() as usize != growth.edges.len() {
        return Err(TaskerError::InvalidInput(format!(
            "task {task_uuid}: {} of {} new edges were written (a step named by an edge is missing)",
            edges.rows_affected(),
            growth.edges.len()
        )));
    }
    Ok(uuids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPENSE: &str = r#"
name: expense_review
namespace_name: finance
version: 1.0.0
steps:
  - { name: intake, handler: { callable: X } }
  - { name: classify, type: decision, dependencies: [intake], handler: { callable: X } }
  - { name: fast_track, dependencies: [classify], handler: { callable: X } }
  - { name: committee, dependencies: [classify], handler: { callable: X } }
  - { name: vote, dependencies: [committee], handler: { callable: X } }
  - { name: close_out, type: deferred_convergence, dependencies: [fast_track, vote], handler: { callable: X } }
  - { name: archive, dependencies: [close_out], handler: { callable: X } }
"#;

    fn limits() -> OrchestrationConfig {
        OrchestrationConfig {
            max_steps_per_decision: 50,
            max_batch_workers: 1000,
            complete_in_commit: true,
        }
    }

    fn plan(yaml: &str, step: &str, result: Value) -> Result<Growth, Refused> {
        let t = TaskTemplate::from_yaml(yaml, "t").unwrap();
        let existing: HashSet<String> = crate::orchestration::task_initializer::initial_step_names(&t);
        plan_growth(&t, step, Some(&json!({ "result": result })), &existing, &limits())
    }

    fn names(g: &Growth) -> Vec<&str> {
        g.steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_chosen_branch_brings_its_path_and_the_convergence() {
        let g = plan(
            EXPENSE,
            "classify",
            json!({"decision_point_outcome": {"type": "create_steps", "step_names": ["committee"]}}),
        )
        .unwrap();
        assert_eq!(names(&g), ["committee", "vote", "close_out", "archive"]);
        let edge = |f: &str, t: &str| NewEdge {
            from: f.into(),
            to: t.into(),
            name: PROVIDES,
        };
        assert_eq!(
            g.edges,
            [
                edge("classify", "committee"),
                edge("committee", "vote"),
                edge("vote", "close_out"),
                edge("close_out", "archive")
            ]
        );
    }

    #[test]
    fn bad_decision_outcomes_are_refused_with_the_reason() {
        let cases = [
            (json!({}), "no decision_point_outcome"),
            (
                json!({"decision_point_outcome": "no_branches"}),
                "unknown decision_point_outcome",
            ),
            (
                json!({"decision_point_outcome": {"type": "create_steps", "step_names": ["intake"]}}),
                "[\"intake\"] are not steps this decision may create",
            ),
            (
                json!({"decision_point_outcome": {"type": "create_steps", "step_names": [1]}}),
                "step_names[0] is not a string",
            ),
        ];
        for (result, expected) in cases {
            let err = plan(EXPENSE, "classify", result).unwrap_err();
            assert_eq!(err.error_type, "invalid_decision_outcome");
            assert!(err.message.contains(expected), "{expected}: {}", err.message);
        }
    }
}
