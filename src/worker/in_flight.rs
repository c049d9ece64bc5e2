//! Steps claimed by this worker and not yet committed: what the lease keeper renews, what
//! shutdown releases, and what status counts. Keyed by claim token.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct InFlightEntry {
    pub step_uuid: Uuid,
    pub queue_name: Arc<str>,
    pub msg_id: i64,
    pub claimed_at: Instant,
}

/// A short-held mutex: every operation is a map insert, remove or copy, never an await.
#[derive(Debug, Default)]
pub struct InFlight {
    entries: Mutex<HashMap<Uuid, InFlightEntry>>,
}

impl InFlight {
    pub fn insert(&self, token: Uuid, entry: InFlightEntry) {
        self.entries.lock().insert(token, entry);
    }

    pub fn remove(&self, token: &Uuid) -> Option<InFlightEntry> {
        self.entries.lock().remove(token)
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
    }
}
