//! Core errors as Ruby exceptions. The public classes are declared in Ruby
//! (`lib/tasker_worker/errors.rb`) and looked up here by name.

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};
use tasker_worker::worker::checkpoints::CheckpointError;
use tasker_worker::TaskerError;

/// The Ruby exception for a core error, e.g. `TaskerWorker::ConfigurationError`.
pub fn to_ruby(ruby: &Ruby, err: TaskerError) -> Error {
    let class_name = match &err {
        TaskerError::Configuration(_) => "ConfigurationError",
        TaskerError::Database(_) => "DatabaseError",
        TaskerError::Migration(_) => "MigrationError",
        TaskerError::Queue(_) => "QueueError",
        TaskerError::Serialization(_) => "SerializationError",
        TaskerError::InvalidInput(_) => "InvalidInputError",
        TaskerError::NotFound(_) => "NotFoundError",
        TaskerError::InvalidState(_) => "InvalidStateError",
    };
    Error::new(error_class(ruby, class_name), err.to_string())
}

/// A checkpoint that was not saved: `StaleClaimError` (the claim lost its step),
/// `CheckpointLimitError` (over a `worker.checkpoints` limit), or the database's error.
pub fn checkpoint(ruby: &Ruby, err: CheckpointError) -> Error {
    match err {
        CheckpointError::StaleClaim(_) | CheckpointError::Missing(_) => {
            named(ruby, "StaleClaimError", err.to_string())
        }
        CheckpointError::Limit(_) => named(ruby, "CheckpointLimitError", err.to_string()),
        CheckpointError::Database(err) => to_ruby(ruby, err),
    }
}

/// An error raised by the binding itself (a panic caught at the boundary, a bad argument).
pub fn internal(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(error_class(ruby, "InternalError"), message.into())
}

/// An error of the public class `TaskerWorker::<class_name>`.
pub fn named(ruby: &Ruby, class_name: &str, message: impl Into<String>) -> Error {
    Error::new(error_class(ruby, class_name), message.into())
}

/// `TaskerWorker::<name>`, or RuntimeError when the Ruby layer was not loaded (someone
/// required the bare extension).
fn error_class(ruby: &Ruby, name: &str) -> ExceptionClass {
    ruby.class_object()
        .const_get::<_, RModule>("TaskerWorker")
        .and_then(|module| module.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_runtime_error())
}
