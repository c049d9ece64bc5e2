//! One error type for the core. Each variant says which layer failed, so the Ruby side can
//! map it to a public error class without parsing messages.

use thiserror::Error;

pub type TaskerResult<T> = Result<T, TaskerError>;

#[derive(Debug, Error)]
pub enum TaskerError {
    /// A setting or argument is invalid; the message names it.
    #[error("configuration error: {0}")]
    Configuration(String),

    /// PostgreSQL refused or dropped the connection, or a statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Installing PGMQ or running the schema migrations failed.
    #[error("migration error: {0}")]
    Migration(String),

    /// A queue operation was rejected (bad queue name, missing queue, ...).
    #[error("queue error: {0}")]
    Queue(String),

    /// A message or result could not be encoded or decoded.
    #[error("serialization error: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl From<sqlx::migrate::MigrateError> for TaskerError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        TaskerError::Migration(err.to_string())
    }
}

impl From<pgmq::PgmqError> for TaskerError {
    fn from(err: pgmq::PgmqError) -> Self {
        TaskerError::Migration(format!("installing PGMQ: {err}"))
    }
}

/// The message of a caught panic (`catch_unwind` or a panicked task), for failure results.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
