//! Retention: deletes finished tasks older than an age, with their steps, edges and
//! transitions, and PGMQ archive rows older than an age, in batches of `batch_size`, one
//! process at a time (a session advisory lock: a process that finds it taken skips the round).
//! The SQL is in sql/functions/retention.sql. `prune` runs one round (on demand: `Client.prune`,
//! `tasker_worker prune`); `Retention::run` runs one every `interval` in a worker process.
//! A running task (one not in a final state, or with a step still with a worker) is never
//! touched.

use crate::config::RetentionConfig;
use crate::error::TaskerResult;
use crate::worker::task::StopSignal;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Advisory lock key held for a round ("tasker_r" in ASCII).
pub const LOCK_KEY: i64 = 0x7461_736b_6572_5f72;

/// The tables of a task, in the order a batch deletes them.
pub const TASK_TABLES: [&str; 5] = [
    "tasker.workflow_step_transitions",
    "tasker.workflow_step_edges",
    "tasker.workflow_steps",
    "tasker.task_transitions",
    "tasker.tasks",
];

/// What a round does: ages (None: that kind is kept) and the batch size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Completed tasks (`complete`, `resolved_manually`) finished longer ago than this.
    pub completed_after: Option<Duration>,
    /// Failed tasks (`error`, `cancelled`) finished longer ago than this.
    pub failed_after: Option<Duration>,
    /// Archived messages of every queue archived longer ago than this.
    pub archive_after: Option<Duration>,
    /// Most tasks (or archive rows) deleted per transaction.
    pub batch_size: u32,
}

impl From<&RetentionConfig> for RetentionPolicy {
    fn from(config: &RetentionConfig) -> Self {
        let age = |seconds: u64| (seconds > 0).then(|| Duration::from_secs(seconds));
        RetentionPolicy {
            completed_after: age(config.completed_after_seconds),
            failed_after: age(config.failed_after_seconds),
            archive_after: age(config.archive_after_seconds),
            batch_size: config.batch_size,
        }
    }
}

/// What a round deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// False when another process held the lock: nothing was done.
    pub ran: bool,
    pub dry_run: bool,
    /// Rows per table (`tasker.tasks`, ..., `pgmq.a_<queue>`), every table looked at listed.
    pub deleted: Vec<(String, u64)>,
    /// Transactions the round committed (0 in a dry run).
    pub batches: u64,
}

impl PruneReport {
    /// Rows of `table` (0 when not listed).
    pub fn rows(&self, table: &str) -> u64 {
        self.deleted
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, n)| *n)
    }

    /// Rows of every table.
    pub fn total(&self) -> u64 {
        self.deleted.iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, table: &str, rows: u64) {
        match self.deleted.iter_mut().find(|(t, _)| t == table) {
            Some((_, n)) => *n += rows,
            None => self.deleted.push((table.to_string(), rows)),
        }
    }
}

/// Rows deleted by retention in this process, by table (`tasker_retention_deleted_rows`).
pub fn deleted_rows() -> &'static Family<Vec<(String, String)>, Counter> {
    static DELETED: OnceLock<Family<Vec<(String, String)>, Counter>> = OnceLock::new();
    DELETED.get_or_init(Family::default)
}

/// One round: takes the lock on a connection of its own (taken out of the pool and closed at
/// the end, so a round abandoned half way never leaves the lock held by a pooled
/// connection), then deletes batch
/// after batch until a batch comes back short. `dry_run` counts instead and deletes nothing.
pub async fn prune(pool: &PgPool, policy: &RetentionPolicy, dry_run: bool) -> TaskerResult<PruneReport> {
    let mut conn = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    let mut report = PruneReport {
        dry_run,
        ..PruneReport::default()
    };
    if !locked {
        conn.close().await?;
        return Ok(report);
    }
    report.ran = true;
    let mut outcome = prune_locked(&mut conn, policy, &mut report).await;
    if outcome.is_ok() && !dry_run {
        outcome = vacuum(&mut conn, &report).await;
    }
    // Unlocked explicitly: a closed session's locks go only when its backend has exited,
    // which the next round may not wait for. Closing still releases it if this fails.
    if outcome.is_ok() {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut conn)
            .await?;
    }
    let _ = conn.close().await;
    outcome?;
    if !dry_run {
        for (table, rows) in &report.deleted {
            deleted_rows()
                .get_or_create(&vec![("table".to_string(), table.clone())])
                .inc_by(*rows);
        }
    }
    Ok(report)
}

async fn prune_locked(
    conn: &mut PgConnection,
    policy: &RetentionPolicy,
    report: &mut PruneReport,
) -> TaskerResult<()> {
    let batch = policy.batch_size.min(i32::MAX as u32) as i32;
    for (kind, age) in [
        ("completed", policy.completed_after),
        ("failed", policy.failed_after),
    ] {
        let Some(age) = age else { continue };
        let seconds = age.as_secs() as i64;
        if report.dry_run {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT table_name, deleted FROM tasker.retention_count_tasks(tasker.retention_states($1), $2)",
            )
            .bind(kind)
            .bind(seconds)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().for_each(|(t, n)| report.add(t, *n as u64));
            continue;
        }
        loop {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT table_name, deleted FROM tasker.retention_prune_tasks(tasker.retention_states($1), $2, $3)",
            )
            .bind(kind)
            .bind(seconds)
            .bind(batch)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().for_each(|(t, n)| report.add(t, *n as u64));
            report.batches += 1;
            let tasks = rows.iter().find(|(t, _)| t == "tasker.tasks").map_or(0, |r| r.1);
            if tasks < batch as i64 {
                break;
            }
        }
    }
    if let Some(age) = policy.archive_after {
        let queues: Vec<String> = sqlx::query_scalar(
            "SELECT queue_name FROM pgmq.meta WHERE NOT is_partitioned ORDER BY queue_name",
        )
        .fetch_all(&mut *conn)
        .await?;
        for queue in queues {
            let table = format!("pgmq.a_{queue}");
            loop {
                let rows: i64 = sqlx::query_scalar("SELECT tasker.retention_prune_archive($1, $2, $3, $4)")
                    .bind(&queue)
                    .bind(age.as_secs() as i64)
                    .bind(batch)
                    .bind(report.dry_run)
                    .fetch_one(&mut *conn)
                    .await?;
                report.add(&table, rows as u64);
                if report.dry_run {
                    break;
                }
                report.batches += 1;
                if rows < batch as i64 {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// VACUUM (ANALYZE) of every table the round deleted rows from: the deleted rows' index
/// entries would otherwise stay until autovacuum comes (never, where it is off), and a drain's
/// index scans step over them. Outside a transaction, on the round's own connection; it
/// blocks no reads or writes.
async fn vacuum(conn: &mut PgConnection, report: &PruneReport) -> TaskerResult<()> {
    // The names come from our own functions and pgmq.meta; quoted all the same.
    let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
    let statements: Vec<String> = report
        .deleted
        .iter()
        .filter(|(_, rows)| *rows > 0)
        .filter_map(|(table, _)| table.split_once('.'))
        .map(|(schema, name)| format!("VACUUM (ANALYZE) {}.{}", quote(schema), quote(name)))
        .collect();
    for sql in statements {
        sqlx::query(&sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The periodic round of a worker process.
pub struct Retention {
    pub pool: PgPool,
    pub policy: RetentionPolicy,
    pub interval: Duration,
}

impl Retention {
    /// A round every `interval`, the first one `interval` after start (a fleet restarting
    /// at once does not prune at boot). A failed round is logged and tried at the next one.
    pub async fn run(self, mut stop: StopSignal) {
        let start = tokio::time::Instant::now() + self.interval;
        let mut ticker = tokio::time::interval_at(start, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.stopped() => return,
            }
            tokio::select! {
                _ = round(&self.pool, &self.policy) => {}
                _ = stop.stopped() => return,
            }
        }
    }
}

/// One round, logged: `retention_pruned` with the counts, `retention_skipped` when another
/// process held the lock, a warning when it failed.
pub async fn round(pool: &PgPool, policy: &RetentionPolicy) {
    let started = Instant::now();
    match prune(pool, policy, false).await {
        Ok(report) if report.ran => {
            let duration_ms = started.elapsed().as_millis() as u64;
            let archived: u64 = report
                .deleted
                .iter()
                .filter(|(t, _)| t.starts_with("pgmq."))
                .map(|(_, n)| n)
                .sum();
            tracing::info!(
                event = "retention_pruned",
                tasks = report.rows("tasker.tasks"),
                task_transitions = report.rows("tasker.task_transitions"),
                steps = report.rows("tasker.workflow_steps"),
                step_edges = report.rows("tasker.workflow_step_edges"),
                step_transitions = report.rows("tasker.workflow_step_transitions"),
                archived_messages = archived,
                batches = report.batches,
                duration_ms,
                "retention round"
            );
        }
        Ok(_) => tracing::debug!(
            event = "retention_skipped",
            "retention round skipped: another process is pruning"
        ),
        Err(err) => {
            tracing::warn!(event = "retention_failed", error = %err, "retention round failed; trying again at the next one")
        }
    }
}
