//! `WorkerEventSystem`: decides when the step executor looks at the queues.
//! 1. One LISTEN connection for all namespaces (`pgmq_message_ready.{ns}`); each NOTIFY wakes
//!    the executor. It reconnects after the connection drops and wakes the executor then too,
//!    since notifications sent while disconnected are lost.
//! 2. A fallback poller wakes the executor every `poll_interval_ms`: NOTIFY is lossy (nothing
//!    for delayed messages, or messages sent before LISTEN).
//! 3. Optionally (the orchestrator), a notification that carries its message and is due now
//!    is handed over as it is (`direct`) instead of waking the reader: the receiver can
//!    process it without reading the queue first. Any other notification, or one the
//!    receiver has no room for, wakes the reader.
//!
//! The deployment mode picks: `hybrid` (both), `event_driven` (LISTEN only), `polling`.
//! Wake-ups coalesce in a `Notify`: many notifications while the executor is busy cost one
//! extra read.

use crate::config::DeploymentMode;
use crate::messaging::{self, NotifyEvent};
use crate::worker::stats::WorkerCounters;
use crate::worker::task::StopSignal;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

pub struct WorkerEventSystem {
    pub pool: PgPool,
    pub namespaces: Vec<String>,
    pub deployment_mode: DeploymentMode,
    pub poll_interval: Duration,
    pub wake: Arc<Notify>,
    pub counters: Arc<WorkerCounters>,
    /// True while the LISTEN connection is up (status shows it; tests wait on it).
    pub connected: Arc<AtomicBool>,
    /// Where notified messages go as they are (see the module doc); `None`: every
    /// notification wakes the reader.
    pub direct: Option<mpsc::Sender<NotifiedMessage>>,
}

/// A message as its notification carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifiedMessage {
    pub msg_id: i64,
    pub queue_name: String,
    pub message: serde_json::Value,
}

const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl WorkerEventSystem {
    /// Runs until stopped; the LISTEN connection closes with it.
    pub async fn run(self, mut stop: StopSignal) {
        // The first look at the queues: at once when polling; else as soon as LISTEN is up
        // (`listen` wakes the executor on each connection), so no message sent between a
        // first read and the LISTEN goes unseen, and a start costs one read, not two.
        if self.deployment_mode == DeploymentMode::Polling {
            self.wake.notify_one();
        }
        let sources = async {
            match self.deployment_mode {
                DeploymentMode::Hybrid => {
                    tokio::join!(self.listen(), self.poll());
                }
                DeploymentMode::EventDriven => self.listen().await,
                DeploymentMode::Polling => self.poll().await,
            }
        };
        tokio::select! {
            _ = sources => {}
            _ = stop.stopped() => {}
        }
        self.connected.store(false, Ordering::Relaxed);
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
                    // Woken first: whoever sees `connected` knows the read it causes is due.
                    self.wake.notify_one();
                    self.connected.store(true, Ordering::Release);
                    self.receive(&mut listener).await;
                    self.connected.store(false, Ordering::Relaxed);
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

    /// True when the notification's message went to `direct`.
    fn hand_over(&self, payload: &str) -> bool {
        let Some(direct) = &self.direct else {
            return false;
        };
        match serde_json::from_str::<NotifyEvent>(payload) {
            Ok(NotifyEvent::MessageWithPayload {
                msg_id,
                queue_name,
                message,
                delay_seconds: 0,
                ..
            }) => direct
                .try_send(NotifiedMessage {
                    msg_id,
                    queue_name,
                    message,
                })
                .is_ok(),
            _ => false,
        }
    }

    /// Returns when the connection fails in a way sqlx does not repair itself.
    async fn receive(&self, listener: &mut PgListener) {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    WorkerCounters::add(&self.counters.notifications, 1);
                    if !self.hand_over(notification.payload()) {
                        self.wake.notify_one();
                    }
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
