//! Steps claimed by this worker and not yet committed: what the lease keeper renews, what
//! shutdown releases, and what status counts. Keyed by claim token.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct InFlightEntry {
    pub step_uuid: Uuid,
    pub queue_name: Arc<str>,
    pub msg_id: i64,
    pub claimed_at: Instant,
    /// When the step's message was enqueued, when known (end-to-end latency).
    pub enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A short-held mutex: every operation is a map insert, remove or copy, never an await.
#[derive(Debug, Default)]
pub struct InFlight {
    entries: Mutex<HashMap<Uuid, InFlightEntry>>,
    /// Woken each time the map becomes empty (what a graceful shutdown waits for).
    emptied: Notify,
}

impl InFlight {
    pub fn insert(&self, token: Uuid, entry: InFlightEntry) {
        self.entries.lock().insert(token, entry);
    }

    pub fn remove(&self, token: &Uuid) -> Option<InFlightEntry> {
        let mut entries = self.entries.lock();
        let removed = entries.remove(token);
        if removed.is_some() && entries.is_empty() {
            self.emptied.notify_waiters();
        }
        removed
    }

    /// Waits until no step is in flight, or `deadline`. True when empty.
    pub async fn wait_empty(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check, so an emptying in between is not missed.
            emptied.as_mut().enable();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.is_empty();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Message ids grouped by queue, for batched lease renewal or release.
    pub fn by_queue(&self) -> HashMap<Arc<str>, Vec<i64>> {
        let mut out: HashMap<Arc<str>, Vec<i64>> = HashMap::new();
        for entry in self.entries.lock().values() {
            out.entry(entry.queue_name.clone())
                .or_default()
                .push(entry.msg_id);
        }
        out
    }

    pub fn oldest_age(&self) -> Option<Duration> {
        self.entries.lock().values().map(|e| e.claimed_at.elapsed()).max()
    }

    pub fn clear(&self) {
        self.entries.lock().clear();
        self.emptied.notify_waiters();
    }
}
