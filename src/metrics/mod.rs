//! What an operator scrapes and probes: Prometheus metrics and the `/health` and `/ready`
//! probes, served by a small HTTP listener in the node's runtime (`metrics.port`, off by
//! default; `metrics.bind`, 127.0.0.1 by default).
//!
//! Cheap on the hot path: the counters are the worker's and orchestrator's own atomics, read
//! at scrape time; the histograms (`timings()`) are a few atomic adds per step; queue depths
//! are sampled by a background task every `QUEUE_SAMPLE_INTERVAL`, never per step. The
//! histograms and the failures by error type are per process (every node of the process adds
//! to them); everything else is the node's.

mod http;
mod probe;

pub use http::serve;
pub use probe::{Probe, ProbeAnswer};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::OnceLock;
use std::time::Duration;

/// How often the listener's sampler reads each worker queue's depth and oldest message.
pub const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Latency histograms and failures by error type, shared by every node of the process.
pub struct Timings {
    /// A message's time in its queue until a worker claimed it.
    pub queue_wait: Histogram,
    /// One claim round trip (read + claim of a batch).
    pub claim: Histogram,
    /// A handler's run (the result's `execution_time_ms`).
    pub handler: Histogram,
    /// One commit transaction of a batch of results.
    pub commit: Histogram,
    /// A step in this worker: from its claim to its result's commit.
    pub step: Histogram,
    /// A step attempt end to end: from its message's enqueue to its result's commit.
    pub end_to_end: Histogram,
    /// Failure results committed, by `error_type`.
    pub failed_by_type: Family<Vec<(String, String)>, Counter>,
}

fn seconds_buckets() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The process's histograms.
pub fn timings() -> &'static Timings {
    static TIMINGS: OnceLock<Timings> = OnceLock::new();
    TIMINGS.get_or_init(|| Timings {
        queue_wait: seconds_buckets(),
        claim: seconds_buckets(),
        handler: seconds_buckets(),
        commit: seconds_buckets(),
        step: seconds_buckets(),
        end_to_end: seconds_buckets(),
        failed_by_type: Family::default(),
    })
}

impl Timings {
    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }

    /// Counts one committed failure result of `error_type` (`unknown` when none).
    pub fn failed(&self, error_type: Option<&str>) {
        let label = vec![(
            "error_type".to_string(),
            error_type.unwrap_or("unknown").to_string(),
        )];
        self.failed_by_type.get_or_create(&label).inc();
    }
}
