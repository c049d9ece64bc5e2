//! Connections and schema. `connect` builds the pool every component shares; `migrate`
//! installs PGMQ (when absent) and the `tasker` schema.

mod migrate;

pub use migrate::{ensure_schema, migrate, MigrationReport, FUNCTION_FILES, MIGRATOR};
pub use sqlx::PgPool;

use crate::error::{TaskerError, TaskerResult};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::time::Duration;

/// Pool settings; defaults live in the configuration layer, not here.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// Parses `url` and opens a pool. A malformed URL is a configuration error naming it;
/// an unreachable server is a database error.
pub async fn connect(url: &str, settings: &PoolSettings) -> TaskerResult<PgPool> {
    let options = connect_options(url)?;
    // One direct connection first: the pool would retry until its acquire timeout and then
    // report only "pool timed out", hiding "connection refused" or "password failed".
    options.connect().await?.close().await?;
    let pool = PgPoolOptions::new()
        // No ping on every checkout (a round trip per query batch on the hot path). A dead
        // connection fails its statement instead: the worker's loops retry, a Client call
        // raises DatabaseError.
        .test_before_acquire(false)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Parses a PostgreSQL URL without connecting.
pub fn connect_options(url: &str) -> TaskerResult<PgConnectOptions> {
    let invalid = |why: String| {
        TaskerError::Configuration(format!(
            "database.url {:?} is not a PostgreSQL URL: {why}",
            redact(url)
        ))
    };
    // sqlx accepts any scheme; a mysql:// URL should fail here, not at connect time.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid("it must start with postgres:// or postgresql://".into()));
    }
    PgConnectOptions::from_str(url).map_err(|err| invalid(err.to_string()))
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn a_bad_url_is_a_configuration_error_naming_the_key() {
        let err = connect_options("mysql://nope").unwrap_err();
        assert!(matches!(err, TaskerError::Configuration(_)), "{err:?}");
        assert!(err.to_string().contains("database.url"), "{err}");
    }
}
