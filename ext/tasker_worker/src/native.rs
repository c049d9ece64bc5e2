//! `TaskerWorker::Native`: small pure functions of the core, exposed so Ruby and the specs
//! can check that the extension is loaded and speaks the same protocol.

use crate::errors;
use magnus::{function, prelude::*, Error, RModule, Ruby};

pub fn init(ruby: &Ruby, tasker_worker: RModule) -> Result<RModule, Error> {
    let native = tasker_worker.define_module("Native")?;
    native.define_singleton_method("core_version", function!(core_version, 0))?;
    native.define_singleton_method("queue_namespace", function!(queue_namespace, 1))?;
    native.define_singleton_method("worker_queue_name", function!(worker_queue_name, 1))?;
    native.define_singleton_method("parse_template", function!(parse_template, 2))?;
    // The limits of `tasker_worker::limits`, for TaskerWorker::Testing to refuse what the
    // core refuses (the core stays their one owner).
    native.const_set("MAX_JSON_DEPTH", tasker_worker::limits::MAX_JSON_DEPTH)?;
    native.const_set("MAX_JSON_BYTES", tasker_worker::limits::MAX_JSON_BYTES)?;
    let _ = ruby;
    Ok(native)
}

fn core_version() -> &'static str {
    tasker_worker::version()
}

fn queue_namespace(queue_name: String) -> String {
    tasker_worker::messaging::extract_namespace(&queue_name).to_string()
}

fn worker_queue_name(ruby: &Ruby, namespace: String) -> Result<String, Error> {
    tasker_worker::messaging::worker_queue_name(&namespace).map_err(|err| errors::to_ruby(ruby, err))
}

/// A task template parsed and validated as the core registers it, with every default filled
/// in, as JSON (TaskerWorker::Testing.run_task runs it in-process).
fn parse_template(ruby: &Ruby, yaml: String, origin: String) -> Result<String, Error> {
    let template = tasker_worker::orchestration::TaskTemplate::from_yaml(&yaml, &origin)
        .map_err(|err| errors::to_ruby(ruby, err))?;
    serde_json::to_string(&template)
        .map_err(|err| errors::to_ruby(ruby, tasker_worker::TaskerError::Serialization(err)))
}
