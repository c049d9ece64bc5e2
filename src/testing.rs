//! Test support: each test gets its own throw-away database on the server named by
//! `DATABASE_URL` (default: the local test database). A test that needs PostgreSQL and
//! cannot reach it fails with a message saying so; it never skips.

use crate::database::{self, PoolSettings};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::time::Duration;

/// The default when `DATABASE_URL` is unset; `bin/setup` creates it.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tasker_worker_test";

/// Prefix of every database a test creates; `bin/test` drops leftovers of crashed runs.
pub const TEST_DATABASE_PREFIX: &str = "tw_test_";

pub fn test_database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_string())
}

/// A database created for one test and dropped by `drop_database`.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// A fresh, empty database (no PGMQ, no schema).
    pub async fn empty() -> Self {
        let base = test_database_url();
        let admin = database::connect_options(&base)
            .unwrap_or_else(|err| panic!("DATABASE_URL is unusable: {err}"))
            .database("postgres");
        let name = format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|err| {
            panic!(
                "these tests need PostgreSQL at {} and could not connect: {err}. \
                 Run bin/setup or set DATABASE_URL.",
                database::redact(&base)
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("could not create test database {name}: {err}"));
        let url = replace_database(&base, &name);
        let pool = database::connect(&url, &pool_settings())
            .await
            .unwrap_or_else(|err| panic!("could not connect to {name}: {err}"));
        Self {
            name,
            url,
            pool,
            admin,
        }
    }

    /// A fresh database with PGMQ and the `tasker` schema installed.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        database::migrate(&db.pool)
            .await
            .unwrap_or_else(|err| panic!("migrating {}: {err}", db.name));
        db
    }

    /// Another pool on the same database, for tests that play two processes.
    pub async fn second_pool(&self) -> PgPool {
        database::connect(&self.url, &pool_settings())
            .await
            .expect("second pool")
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let mut conn = self.admin.connect().await.expect("admin connection");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("dropping {}: {err}", self.name));
    }
}

fn pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: 5,
        acquire_timeout: Duration::from_secs(10),
    }
}

/// `url` with its database path replaced by `name` (query string kept).
fn replace_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replace_database_keeps_the_rest() {
        use super::replace_database;
        assert_eq!(replace_database("postgres://u@h:1/a", "b"), "postgres://u@h:1/b");
        assert_eq!(
            replace_database("postgres://u@h:1/a?sslmode=disable", "b"),
            "postgres://u@h:1/b?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://u@h:1", "b"), "postgres://u@h:1/b");
    }
}
