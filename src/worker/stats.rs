//! Counters shared by the actors and reported in `WorkerStatus`. Relaxed atomics: each
//! counter is independent and only read for reporting.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct WorkerCounters { $(#[doc = $doc] pub $name: AtomicU64,)* }

        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct CounterSnapshot { $(#[doc = $doc] pub $name: u64,)* }

        impl WorkerCounters {
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    claimed: "Steps claimed (first claims and reclaims).",
    reclaimed: "Claims of steps whose previous lease lapsed.",
    succeeded: "Successful results committed.",
    failed: "Failure results committed.",
    stale_completions: "Results discarded because the claim was no longer current.",
    duplicates: "Messages for steps already held or waiting for orchestration; archived, not run.",
    out_of_order: "Messages for steps not ready to run (parents not complete, already finished, or of another task); archived, not run.",
    dead_lettered: "Messages moved to tasker.dead_letters.",
    hydration_failures: "Reads of messages whose step could not be hydrated.",
    completion_failures: "Results that could not be committed; their steps are re-run after the lease.",
    messages_read: "Messages read from the worker queues.",
    read_batches: "Reads that returned at least one message.",
    empty_reads: "Reads that found no message.",
    notifications: "NOTIFY wake-ups received.",
    polls: "Fallback poller wake-ups.",
    listener_reconnects: "Times the LISTEN connection was re-established.",
    commit_batches: "Completion transactions committed.",
    commit_failures: "Completion transactions that failed and were retried.",
    leases_renewed: "Message leases extended while their handlers ran.",
    leases_released: "Leases given back at shutdown so other workers take the steps at once.",
}

impl WorkerCounters {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
