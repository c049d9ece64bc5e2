//! `WorkerEventSystem`: decides when the step executor looks at the queues.
//! 1. One LISTEN connection for all namespaces (`pgmq_message_ready.{ns}`); each NOTIFY wakes
//!    the executor. It reconnects after the connection drops and wakes the executor then too,
//!    since notifications sent while disconnected are lost.
//! 2. A fallback poller wakes the executor every `poll_interval_ms`: NOTIFY is lossy (nothing
//!    for delayed messages, or messages sent before LISTEN).
//!
//! The deployment mode picks: `hybrid` (both), `event_driven` (LISTEN only), `polling`.
//! Wake-ups coalesce in a `Notify`: many notifications while the executor is busy cost one
//! extra read.

use crate::config::DeploymentMode;
use crate::messaging;
use crate::worker::stats::WorkerCounters;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub struct WorkerEventSystem {
    pub pool: PgPool,
    pub namespaces: Vec<String>,
    pub deployment_mode: DeploymentMode,
    pub poll_interval: Duration,
    pub wake: Arc<Notify>,
    pub counters: Arc<WorkerCounters>,
}

const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl WorkerEventSystem {
    pub async fn run(self) {
        // The first look at the queues happens at once, whatever the mode.
        self.wake.notify_one();
        match self.deployment_mode {
            DeploymentMode::Hybrid => {
                tokio::join!(self.listen(), self.poll());
            }
            DeploymentMode::EventDriven => self.listen().await,
            DeploymentMode::Polling => self.poll().await,
        }
    }

    async fn poll(&self) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            WorkerCounters::add(&self.counters.polls, 1);
            self.wake.notify_one();
        }
    }

    async fn listen(&self) {
        let channels: Vec<String> = self
            .namespaces
            .iter()
            .map(|ns| messaging::message_ready_channel(ns))
            .collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.connect(&channels).await {
                Ok(mut listener) => {
                    backoff = Duration::from_millis(100);
                    self.wake.notify_one();
                    self.receive(&mut listener).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
    }

    async fn connect(&self, channels: &[String]) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.ignore_pool_close_event(true);
        let names: Vec<&str> = channels.iter().map(String::as_str).collect();
        listener.listen_all(names).await?;
        Ok(listener)
    }

    /// Returns when the connection fails in a way sqlx does not repair itself.
    async fn receive(&self, listener: &mut PgListener) {
        loop {
            match listener.try_recv().await {
                Ok(Some(_notification)) => {
                    WorkerCounters::add(&self.counters.notifications, 1);
                    self.wake.notify_one();
                }
                Ok(None) => {
                    // sqlx reconnected and re-listened; whatever was sent meanwhile is unseen.
                    WorkerCounters::add(&self.counters.listener_reconnects, 1);
                    tracing::info!("LISTEN connection re-established");
                    self.wake.notify_one();
                }
                Err(err) => {
                    WorkerCounters::add(&self.counters.listener_reconnects, 1);
                    tracing::warn!(error = %err, "LISTEN connection lost; reconnecting");
                    return;
                }
            }
        }
    }
}
