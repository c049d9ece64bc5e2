//! Installs PGMQ and the `tasker` schema. Idempotent and safe when several processes run it
//! at once: one session-level advisory lock serialises the PGMQ install and the migrations.

use crate::error::{TaskerError, TaskerResult};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

/// The schema migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Advisory lock key held while migrating ("tasker_w" in ASCII); distinct from sqlx's own.
const MIGRATION_LOCK_KEY: i64 = 0x7461_736b_6572_5f77;

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// How PGMQ is present: `"extension"` (CREATE EXTENSION, used as it is) or `"sql"`
    /// (installed from the SQL the `pgmq` crate embeds).
    pub pgmq_source: &'static str,
    /// True when this run installed PGMQ.
    pub pgmq_installed_now: bool,
    /// Versions of the schema migrations this run applied (empty on a second run).
    pub applied: Vec<i64>,
}

/// Brings the database up to date. `pool` needs at least two connections: one holds the
/// lock while the other does the work.
pub async fn migrate(pool: &PgPool) -> TaskerResult<MigrationReport> {
    let mut lock_conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *lock_conn)
        .await?;

    let outcome = migrate_locked(pool).await;

    // Unlock even when migrating failed; the connection goes back to the pool either way.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *lock_conn)
        .await?;
    outcome
}

async fn migrate_locked(pool: &PgPool) -> TaskerResult<MigrationReport> {
    let (pgmq_source, pgmq_installed_now) = ensure_pgmq(pool).await?;

    let before = applied_versions(pool).await?;
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await?;
    let applied = after.into_iter().filter(|v| !before.contains(v)).collect();

    Ok(MigrationReport {
        pgmq_source,
        pgmq_installed_now,
        applied,
    })
}

/// Uses a PGMQ extension when the database has one; otherwise installs (or upgrades) the
/// SQL-only PGMQ that the `pgmq` crate embeds.
async fn ensure_pgmq(pool: &PgPool) -> TaskerResult<(&'static str, bool)> {
    let has_extension: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgmq')")
            .fetch_one(pool)
            .await?;
    if has_extension {
        return Ok(("extension", false));
    }
    let had_sql_install: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'pgmq' AND p.proname = 'send')",
    )
    .fetch_one(pool)
    .await?;
    pgmq::install::install_sql_from_embedded(pool).await?;
    Ok(("sql", !had_sql_install))
}

async fn applied_versions(pool: &PgPool) -> TaskerResult<Vec<i64>> {
    let table_exists: bool = sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !table_exists {
        return Ok(Vec::new());
    }
    let versions =
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(versions)
}

/// Fails with a clear error unless the database has the schema this build needs (its newest
/// functions exist): a worker or orchestrator started on an older schema would otherwise
/// fail on every claim or result.
pub async fn ensure_schema(pool: &PgPool) -> TaskerResult<()> {
    let ready: bool = sqlx::query_scalar(
        "SELECT to_regprocedure('tasker.pgmq_send_with_notify(text, jsonb, integer)') IS NOT NULL \
           AND to_regprocedure('tasker.worker_commit_results(uuid[], uuid[], uuid[], text[], jsonb[], jsonb[], jsonb[], text[], bigint[])') IS NOT NULL \
           AND to_regprocedure('tasker.worker_claim_next(text, text, integer, double precision, uuid[])') IS NOT NULL \
           AND to_regprocedure('tasker.orchestrator_complete_step(bigint, uuid, uuid, uuid[])') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    if ready {
        Ok(())
    } else {
        Err(TaskerError::Migration(
            "the database has no tasker schema, or one older than this worker; run TaskerWorker::Database.migrate! (or bin/setup) first"
                .into(),
        ))
    }
}
