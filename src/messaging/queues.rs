//! Queue and channel names. `extract_namespace` must agree with the SQL function
//! `tasker.extract_queue_namespace`; a test checks both on the same inputs.

use crate::error::{TaskerError, TaskerResult};

/// Queue the worker sends step results to (tasker-core's default name).
pub const STEP_RESULTS_QUEUE: &str = "orchestration_step_results";

/// Namespace of every `orchestration*` queue.
pub const ORCHESTRATION_NAMESPACE: &str = "orchestration";

/// Longest namespace whose queues (`worker_{ns}_queue`, `{ns}_domain_events`) fit PGMQ's
/// 47-character queue names.
const MAX_NAMESPACE_LEN: usize = 33;

/// Checks that a namespace can be used in queue and channel names.
pub fn validate_namespace(namespace: &str) -> TaskerResult<()> {
    let valid_chars = namespace
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN || !valid_chars {
        return Err(TaskerError::Configuration(format!(
            "namespace {namespace:?} must be 1-{MAX_NAMESPACE_LEN} characters of a-z, 0-9 and _"
        )));
    }
    Ok(())
}

/// `worker_{namespace}_queue`, the queue the orchestrator sends a namespace's steps to.
pub fn worker_queue_name(namespace: &str) -> TaskerResult<String> {
    validate_namespace(namespace)?;
    Ok(format!("worker_{namespace}_queue"))
}

/// `{namespace}_domain_events`, the queue durable domain events go to.
pub fn domain_events_queue_name(namespace: &str) -> TaskerResult<String> {
    validate_namespace(namespace)?;
    Ok(format!("{namespace}_domain_events"))
}

/// The channel `tasker.pgmq_send_with_notify` notifies for messages of `namespace`.
pub fn message_ready_channel(namespace: &str) -> String {
    format!("pgmq_message_ready.{namespace}")
}

/// The namespace of a queue: `orchestration*` -> `orchestration`, `worker_X_queue` -> `X`,
/// `X_queue` -> `X`, anything else -> `default`.
pub fn extract_namespace(queue_name: &str) -> &str {
    if queue_name.starts_with(ORCHESTRATION_NAMESPACE) {
        return ORCHESTRATION_NAMESPACE;
    }
    if let Some(inner) = queue_name
        .strip_prefix("worker_")
        .and_then(|rest| rest.strip_suffix("_queue"))
    {
        if !inner.is_empty() {
            return inner;
        }
    }
    // SQL: substring('^(.+?)_queue$') — the shortest prefix followed by one final "_queue".
    match queue_name.strip_suffix("_queue") {
        Some(inner) if !inner.is_empty() => inner,
        _ => "default",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_queues() {
        assert_eq!(extract_namespace("worker_payments_queue"), "payments");
        assert_eq!(
            extract_namespace("worker_linear_workflow_queue"),
            "linear_workflow"
        );
        assert_eq!(extract_namespace("orchestration_step_results"), "orchestration");
        assert_eq!(extract_namespace("billing_queue"), "billing");
        assert_eq!(extract_namespace("something_else"), "default");
        assert_eq!(extract_namespace("_queue"), "default");
    }

    #[test]
    fn namespace_validation_names_the_problem() {
        assert!(validate_namespace("order_fulfillment").is_ok());
        for bad in ["", "Upper", "has-dash", "semi;colon", &"x".repeat(34)] {
            let err = validate_namespace(bad).unwrap_err().to_string();
            assert!(err.contains("namespace"), "{bad}: {err}");
        }
        assert_eq!(worker_queue_name("payments").unwrap(), "worker_payments_queue");
        assert!(worker_queue_name("bad name").is_err());
    }
}
