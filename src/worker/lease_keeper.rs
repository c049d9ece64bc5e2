//! The lease keeper: while a handler runs, its message's visibility timeout is pushed
//! forward (one UPDATE per queue per round), so a long handler keeps its step as long as
//! its process lives. If the process dies, renewals stop and the message reappears.

use crate::messaging::client;
use crate::worker::in_flight::InFlight;
use crate::worker::stats::WorkerCounters;
use crate::worker::task::StopSignal;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub struct LeaseKeeper {
    pub pool: PgPool,
    pub in_flight: Arc<InFlight>,
    pub counters: Arc<WorkerCounters>,
    pub visibility_timeout_seconds: u32,
}

impl LeaseKeeper {
    /// Renews three times per lease, so one slow or failed round does not lose a lease.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.visibility_timeout_seconds) * 1000 / 3)
            .max(Duration::from_millis(100))
    }

    /// Renews until stopped (after the completion processor, whose commits need the leases).
    pub async fn run(self, mut stop: StopSignal) {
        let mut ticker = tokio::time::interval(self.interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => self.renew().await,
                _ = stop.stopped() => return,
            }
        }
    }

    pub async fn renew(&self) {
        let vt = self.visibility_timeout_seconds as i32;
        for (queue_name, msg_ids) in self.in_flight.by_queue() {
            match client::set_vt(&self.pool, &queue_name, &msg_ids, vt).await {
                Ok(renewed) => WorkerCounters::add(&self.counters.leases_renewed, renewed.len()),
                Err(err) => {
                    tracing::warn!(error = %err, queue = %queue_name, "renewing leases failed; retrying next round")
                }
            }
        }
    }
}
