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

    /// An input was refused: over the JSON limits (`crate::limits`, which the message names)
    /// or otherwise not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// An operation names a task, step or dead letter that does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// An operation the state machine does not allow (cancelling a complete task, retrying a
    /// step not in error, ...); the message says the state and what is allowed.
    #[error("not allowed: {0}")]
    InvalidState(String),
}

impl From<crate::limits::LimitError> for TaskerError {
    fn from(err: crate::limits::LimitError) -> Self {
        TaskerError::InvalidInput(err.to_string())
    }
}

impl TaskerError {
    /// Whether the error says the database is away (connection refused or dropped, the pool
    /// could not get a connection, the server shutting down or starting), so the same call
    /// may succeed once it is back. Data and logic errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            TaskerError::Database(err) => is_transient_sqlx(err),
            _ => false,
        }
    }
}

fn is_transient_sqlx(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exceptions; 57P01-03: admin/crash shutdown, cannot connect now;
        // 53300: too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Pauses between retries of a call that failed while the database was away: 100 ms,
/// doubling, at most 2 s.
#[derive(Debug, Clone, Default)]
pub struct RetryBackoff {
    failures: u32,
}

impl RetryBackoff {
    pub const FIRST: std::time::Duration = std::time::Duration::from_millis(100);
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(2);

    /// The pause before the next try (and counts this failure).
    pub fn next_delay(&mut self) -> std::time::Duration {
        let delay = Self::FIRST
            .saturating_mul(1u32 << self.failures.min(5))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_backoff_doubles_from_100_ms_to_2_s_and_resets() {
        let mut backoff = RetryBackoff::default();
        let delays: Vec<Duration> = (0..7).map(|_| backoff.next_delay()).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn only_connection_errors_are_transient() {
        assert!(TaskerError::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(TaskerError::Database(sqlx::Error::Io(std::io::Error::other("refused"))).is_transient());
        assert!(!TaskerError::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(!TaskerError::Database(sqlx::Error::PoolClosed).is_transient());
        assert!(!TaskerError::InvalidInput("x".into()).is_transient());
    }
}
