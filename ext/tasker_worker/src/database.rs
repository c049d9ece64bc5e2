//! `TaskerWorker::Database.migrate(url)`: installs PGMQ and the schema, with the GVL
//! released while PostgreSQL works.

use crate::{errors, nogvl};
use magnus::{function, prelude::*, Error, RHash, RModule, Ruby};
use tasker_worker::database::{self, MigrationReport, PoolSettings};
use tasker_worker::TaskerResult;

pub fn init(_ruby: &Ruby, tasker_worker: RModule) -> Result<(), Error> {
    let database = tasker_worker.define_module("Database")?;
    database.define_singleton_method("native_migrate", function!(migrate, 1))?;
    Ok(())
}

fn migrate(ruby: &Ruby, url: String) -> Result<RHash, Error> {
    let report = nogvl::without_gvl(move || run_migrations(&url))
        .map_err(|panic| errors::internal(ruby, format!("migration panicked: {panic}")))?
        .map_err(|err| errors::to_ruby(ruby, err))?;
    let hash = ruby.hash_new();
    hash.aset(ruby.to_symbol("pgmq_source"), report.pgmq_source)?;
    hash.aset(ruby.to_symbol("pgmq_installed_now"), report.pgmq_installed_now)?;
    hash.aset(ruby.to_symbol("applied"), ruby.ary_from_vec(report.applied))?;
    Ok(hash)
}

/// A short-lived runtime: migrating is a one-off call, and owning no long-lived threads
/// keeps it safe to call before or after `fork`.
fn run_migrations(url: &str) -> TaskerResult<MigrationReport> {
    let config = crate::client::database_config(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .on_thread_start(crate::worker::block_signals)
        .enable_all()
        .build()
        .map_err(|err| tasker_worker::TaskerError::Migration(format!("starting a runtime: {err}")))?;
    runtime.block_on(async {
        let settings = PoolSettings {
            max_connections: 2,
            acquire_timeout: config.database.acquire_timeout(),
        };
        let pool = database::connect(url, &settings).await?;
        let report = database::migrate(&pool).await;
        pool.close().await;
        report
    })
}
