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

/// Connections the shared pool keeps when the claim and commit paths get their own: the
/// migrations hold two at once.
const SHARED_AT_LEAST: u32 = 2;

/// A worker's connections, `database.max_connections` of them in all. The claim path and the
/// commit path each get a pool of their own, sized to the claims and commits they run at once
/// (when `max_connections` leaves the shared pool at least two; else all three are the one
/// pool). sqlx hands out the connection idle the longest, so one pool for everything spreads
/// back-to-back claims over every connection, each time to a backend gone cold (its caches,
/// its CPU); the workflow benchmark's linear p50 was ~10 % lower with 3 connections than with
/// 10 or 20 (BENCHMARKS.md, session 13). The role pools open their connections when first used.
#[derive(Clone)]
pub struct WorkerPools {
    /// Everything but claims and commits: migrations, leases, heartbeats, checkpoints, the
    /// listener's fallback polls, dead letters, retention.
    pub shared: PgPool,
    roles: Option<(PgPool, PgPool)>,
}

impl WorkerPools {
    /// Opens the shared pool (as `connect`) and, room permitting, the claim pool of `claims`
    /// connections and the commit pool of `commits`.
    pub async fn connect(
        url: &str,
        settings: &PoolSettings,
        claims: u32,
        commits: u32,
    ) -> TaskerResult<Self> {
        let carved = claims + commits;
        if settings.max_connections < carved + SHARED_AT_LEAST {
            let shared = connect(url, settings).await?;
            return Ok(Self { shared, roles: None });
        }
        let shared_settings = PoolSettings {
            max_connections: settings.max_connections - carved,
            ..settings.clone()
        };
        let shared = connect(url, &shared_settings).await?;
        let options = connect_options(url)?;
        let role = |max_connections: u32| {
            PgPoolOptions::new()
                .test_before_acquire(false)
                .max_connections(max_connections)
                .acquire_timeout(settings.acquire_timeout)
                .connect_lazy_with(options.clone())
        };
        Ok(Self {
            shared,
            roles: Some((role(claims), role(commits))),
        })
    }

    pub fn claims(&self) -> &PgPool {
        self.roles.as_ref().map_or(&self.shared, |(claims, _)| claims)
    }

    pub fn commits(&self) -> &PgPool {
        self.roles.as_ref().map_or(&self.shared, |(_, commits)| commits)
    }

    fn all(&self) -> impl Iterator<Item = &PgPool> {
        std::iter::once(&self.shared).chain(self.roles.iter().flat_map(|(a, b)| [a, b]))
    }

    /// Connections open now in the claim pool and the commit pool; `None` when the claim and
    /// commit paths share the one pool.
    pub fn role_sizes(&self) -> Option<(u32, u32)> {
        self.roles
            .as_ref()
            .map(|(claims, commits)| (claims.size(), commits.size()))
    }

    /// Connections open now, over every pool.
    pub fn size(&self) -> u32 {
        self.all().map(PgPool::size).sum()
    }

    pub fn num_idle(&self) -> usize {
        self.all().map(PgPool::num_idle).sum()
    }

    pub async fn close(&self) {
        for pool in self.all() {
            pool.close().await;
        }
    }
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
