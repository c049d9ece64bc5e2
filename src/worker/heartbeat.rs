//! The worker's heartbeat (issue 17): the process registers its row in `tasker.workers` at
//! start, refreshes it every `INTERVAL` (state `running`, or `quiet` once it stops claiming),
//! and marks it `stopped` when it is stopped, last in the shutdown order. Each beat also
//! deletes the rows of processes silent for `operations::PRUNE_AFTER_SECONDS`
//! (`tasker.worker_heartbeat`, sql/functions/operations.sql). A failed beat is logged and
//! tried again at the next one; it never stops the worker.

use crate::operations::PRUNE_AFTER_SECONDS;
use crate::worker::state::ClaimGate;
use crate::worker::task::StopSignal;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Between beats; well under `operations::GONE_AFTER_SECONDS`, so a live worker is never
/// shown as gone.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The last beat (`stopped`) waits at most this long, so a stop while the database is away
/// is not held up by the pool's acquire timeout; the row then shows `gone` later instead.
const LAST_BEAT_BOUND: Duration = Duration::from_secs(1);

pub struct Heartbeat {
    pub pool: PgPool,
    pub worker_id: Arc<str>,
    pub namespaces: Vec<String>,
    pub concurrency: usize,
    pub claims: Arc<ClaimGate>,
}

impl Heartbeat {
    /// Beats at once (the registration), then every `INTERVAL` until stopped; then records
    /// `stopped`.
    pub async fn run(self, mut stop: StopSignal) {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.stopped() => break,
            }
            let state = if self.claims.is_quiet() {
                "quiet"
            } else {
                "running"
            };
            // A beat stuck on an absent database is given up when asked to stop.
            tokio::select! {
                _ = self.beat(state) => {}
                _ = stop.stopped() => break,
            }
        }
        if tokio::time::timeout(LAST_BEAT_BOUND, self.beat("stopped"))
            .await
            .is_err()
        {
            tracing::warn!("recording the worker as stopped took longer than {LAST_BEAT_BOUND:?}; it is shown as gone once its heartbeat is old");
        }
    }

    async fn beat(&self, state: &str) {
        let done = sqlx::query("SELECT tasker.worker_heartbeat($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&*self.worker_id)
            .bind(hostname())
            .bind(std::process::id() as i32)
            .bind(&self.namespaces)
            .bind(self.concurrency.min(i32::MAX as usize) as i32)
            .bind(crate::version())
            .bind(state)
            .bind(PRUNE_AFTER_SECONDS)
            .execute(&self.pool)
            .await;
        if let Err(err) = done {
            tracing::warn!(error = %err, state, "recording the worker's heartbeat failed; trying again at the next one");
        }
    }
}

/// The host's name (Linux: /proc; elsewhere $HOSTNAME), or "unknown".
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
