//! `Probe`: what the listener reads to answer `/metrics`, `/health` and `/ready`.

use super::{timings, QUEUE_SAMPLE_INTERVAL};
use crate::messaging;
use crate::orchestration::OrchestratorCounters;
use crate::worker::handlers::ffi_dispatch_channel::FfiDispatchChannel;
use crate::worker::state::WorkerState;
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long `/ready` waits for the database's answer.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One queue's last sample.
#[derive(Debug, Clone, Copy, Default)]
struct QueueSample {
    depth: i64,
    oldest_age_seconds: f64,
}

/// The node's parts the listener reports on. The embedder reports its live handler threads
/// (`report_threads`); `stopping` is set when the node begins to stop.
pub struct Probe {
    worker: Arc<WorkerState>,
    orchestrator: Option<Arc<OrchestratorCounters>>,
    ffi: Option<Arc<FfiDispatchChannel>>,
    /// Threads the embedder should keep alive (0: no threads to check, a Rust-only worker).
    expected_threads: usize,
    /// Reported by the embedder; -1 until its first report.
    live_threads: AtomicI64,
    listener_required: bool,
    stopping: AtomicBool,
    queues: Mutex<BTreeMap<String, QueueSample>>,
}

/// A probe's answer: HTTP 200 when `ok`, else 503, with a small JSON body.
pub struct ProbeAnswer {
    pub ok: bool,
    pub body: serde_json::Value,
}

impl Probe {
    pub fn new(
        worker: Arc<WorkerState>,
        orchestrator: Option<Arc<OrchestratorCounters>>,
        ffi: Option<Arc<FfiDispatchChannel>>,
        expected_threads: usize,
        listener_required: bool,
    ) -> Self {
        Self {
            worker,
            orchestrator,
            ffi,
            expected_threads,
            live_threads: AtomicI64::new(-1),
            listener_required,
            stopping: AtomicBool::new(false),
            queues: Mutex::new(BTreeMap::new()),
        }
    }

    /// The embedder's count of its handler threads that are alive.
    pub fn report_threads(&self, alive: usize) {
        self.live_threads.store(alive as i64, Ordering::Relaxed);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `/health`: the runtime answered (this runs on it) and the worker has not stopped.
    pub fn health(&self) -> ProbeAnswer {
        let running = self.worker.running.load(Ordering::Relaxed) && !self.stopping.load(Ordering::Relaxed);
        ProbeAnswer {
            ok: running,
            body: match running {
                true => json!({"status": "ok"}),
                false => json!({"status": "stopped", "reason": "the worker is stopping or stopped"}),
            },
        }
    }

    /// `/ready`: database reachable, LISTEN connected (unless polling), every handler thread
    /// alive, and neither quiet nor stopping. Each failed check is named in `reasons`.
    pub async fn ready(&self) -> ProbeAnswer {
        let mut reasons = Vec::new();
        if self.stopping.load(Ordering::Relaxed) || !self.worker.running.load(Ordering::Relaxed) {
            reasons.push("stopping".to_string());
        } else if self.worker.claims.is_quiet() {
            reasons.push("quiet: not claiming new steps".to_string());
        }
        let database = tokio::time::timeout(
            DATABASE_CHECK_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.worker.pools.shared),
        )
        .await;
        match database {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => reasons.push(format!("database unreachable: {err}")),
            Err(_) => reasons.push(format!(
                "database did not answer within {DATABASE_CHECK_TIMEOUT:?}"
            )),
        }
        if self.listener_required && !self.worker.listener_connected.load(Ordering::Relaxed) {
            reasons.push("LISTEN connection down".to_string());
        }
        let live = self.live_threads.load(Ordering::Relaxed);
        if self.expected_threads > 0 {
            if live < 0 {
                reasons.push("handler threads not reported yet".to_string());
            } else if (live as usize) < self.expected_threads {
                reasons.push(format!(
                    "{live} of {} handler threads alive",
                    self.expected_threads
                ));
            }
        }
        let ok = reasons.is_empty();
        ProbeAnswer {
            ok,
            body: json!({
                "status": if ok { "ready" } else { "not_ready" },
                "reasons": reasons,
                "threads_alive": (live >= 0).then_some(live),
                "threads_expected": self.expected_threads,
            }),
        }
    }

    /// Samples each worker queue's depth and oldest message, every `QUEUE_SAMPLE_INTERVAL`,
    /// until the worker stops. A failed sample keeps the previous one.
    pub async fn sample_queues(self: Arc<Self>) {
        let mut tick = tokio::time::interval(QUEUE_SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.worker.running.load(Ordering::Relaxed) {
            tick.tick().await;
            self.sample_once().await;
        }
    }

    pub async fn sample_once(&self) {
        for namespace in &self.worker.namespaces {
            let Ok(queue) = messaging::worker_queue_name(namespace) else {
                continue;
            };
            // The queue name is validated (letters, digits, underscores), so it may be quoted in.
            let sql = format!(
                "SELECT count(*)::bigint, COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at)), 0)::float8 FROM pgmq.\"q_{queue}\""
            );
            let sample: Result<(i64, f64), _> =
                sqlx::query_as(&sql).fetch_one(&self.worker.pools.shared).await;
            if let Ok((depth, oldest_age_seconds)) = sample {
                self.queues.lock().insert(
                    namespace.clone(),
                    QueueSample {
                        depth,
                        oldest_age_seconds,
                    },
                );
            }
        }
    }

    /// `/metrics` in Prometheus text format: the counters read now, the last queue samples,
    /// and the process's histograms.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("tasker");
        let status = self.worker.status();
        let c = &status.counters;
        let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let metric: Counter = Counter::default();
            metric.inc_by(value);
            registry.register(name, help, metric);
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
            let metric: Gauge = Gauge::default();
            metric.set(value);
            registry.register(name, help, metric);
        };
        counter(
            &mut registry,
            "steps_claimed",
            "Steps claimed (first claims and reclaims)",
            c.claimed,
        );
        counter(
            &mut registry,
            "steps_succeeded",
            "Successful results committed",
            c.succeeded,
        );
        registry.register(
            "retention_deleted_rows",
            "Rows deleted by retention in this process, by table",
            crate::retention::deleted_rows().clone(),
        );
        registry.register(
            "steps_checkpointed",
            "Step checkpoints saved by this process",
            crate::worker::checkpoints::checkpointed().clone(),
        );
        registry.register(
            "steps_failed",
            "Failure results committed, by error type",
            timings().failed_by_type.clone(),
        );
        counter(
            &mut registry,
            "steps_reclaimed",
            "Steps claimed again after their lease lapsed",
            c.reclaimed,
        );
        counter(
            &mut registry,
            "steps_stale",
            "Results discarded because their step was reclaimed",
            c.stale_completions,
        );
        counter(
            &mut registry,
            "steps_out_of_order",
            "Messages for steps not ready to run, archived unrun",
            c.out_of_order,
        );
        counter(
            &mut registry,
            "steps_duplicate",
            "Messages for steps already held, archived unrun",
            c.duplicates,
        );
        counter(
            &mut registry,
            "messages_dead_lettered",
            "Worker queue messages moved to tasker.dead_letters",
            c.dead_lettered,
        );
        counter(
            &mut registry,
            "commit_failures",
            "Result commits that failed and were retried",
            c.commit_failures,
        );
        counter(
            &mut registry,
            "listener_reconnects",
            "Times the LISTEN connection was re-established",
            c.listener_reconnects,
        );
        gauge(
            &mut registry,
            "steps_in_flight",
            "Steps claimed and not yet committed",
            status.in_flight as i64,
        );
        gauge(
            &mut registry,
            "worker_quiet",
            "1 while the worker claims no new steps",
            i64::from(status.quiet),
        );
        gauge(
            &mut registry,
            "listener_connected",
            "1 while the LISTEN connection is up",
            i64::from(status.listener_connected),
        );
        let events = &status.domain_events;
        counter(
            &mut registry,
            "domain_events_published",
            "Domain events published (durable and fast)",
            events.published_durable + events.published_fast,
        );
        counter(
            &mut registry,
            "domain_events_dropped",
            "Domain events dropped (buffers full, invalid payloads, failed sends)",
            events.dropped_durable + events.dropped_fast + events.invalid_payload + events.failed_durable,
        );
        if let Some(ffi) = &self.ffi {
            let m = ffi.metrics();
            counter(
                &mut registry,
                "steps_timed_out",
                "Handlers that did not complete in time (ffi_timeout)",
                m.timed_out,
            );
            counter(
                &mut registry,
                "starvation_warnings",
                "Warnings about steps waiting unpolled or running too long",
                m.starvation_warnings,
            );
            gauge(
                &mut registry,
                "threads_waiting",
                "Handler threads waiting for a step",
                m.waiting_threads as i64,
            );
            gauge(
                &mut registry,
                "threads_running",
                "Handler threads running a step",
                m.running as i64,
            );
            gauge(
                &mut registry,
                "steps_unpolled",
                "Claimed steps no handler thread has taken yet",
                m.queued as i64,
            );
            gauge(
                &mut registry,
                "oldest_unpolled_milliseconds",
                "Age of the oldest step waiting for a thread (starvation)",
                m.oldest_queued_ms.unwrap_or(0) as i64,
            );
            gauge(
                &mut registry,
                "threads_alive",
                "Handler threads alive, as the embedder reports (-1: not reported yet)",
                self.live_threads.load(Ordering::Relaxed),
            );
        }
        if let Some(orchestrator) = &self.orchestrator {
            let o = orchestrator.snapshot();
            counter(
                &mut registry,
                "steps_completed",
                "Steps the orchestrator marked complete",
                o.steps_completed,
            );
            counter(
                &mut registry,
                "steps_completed_in_commit",
                "Of those, completed in the worker's own result transaction (orchestration.complete_in_commit)",
                o.completed_in_commit,
            );
            counter(
                &mut registry,
                "steps_retried",
                "Failed steps scheduled for another attempt",
                o.steps_retried,
            );
            counter(
                &mut registry,
                "steps_errored",
                "Failed steps with no attempt left (state error)",
                o.steps_failed,
            );
            counter(
                &mut registry,
                "tasks_completed",
                "Tasks settled complete",
                o.tasks_completed,
            );
            counter(
                &mut registry,
                "tasks_failed",
                "Tasks settled in error",
                o.tasks_failed,
            );
            counter(
                &mut registry,
                "results_dead_lettered",
                "Result messages moved to tasker.dead_letters",
                o.dead_lettered,
            );
        }
        let depth: Family<Vec<(String, String)>, Gauge> = Family::default();
        let oldest: Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        for (namespace, sample) in self.queues.lock().iter() {
            let label = vec![("namespace".to_string(), namespace.clone())];
            depth.get_or_create(&label).set(sample.depth);
            oldest.get_or_create(&label).set(sample.oldest_age_seconds);
        }
        registry.register(
            "queue_depth",
            "Messages in the namespace's worker queue (sampled)",
            depth,
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (sampled)",
            oldest,
        );
        let t = timings();
        registry.register(
            "step_queue_wait_seconds",
            "Time from enqueue to claim",
            t.queue_wait.clone(),
        );
        registry.register("claim_seconds", "One claim round trip", t.claim.clone());
        registry.register("handler_seconds", "A handler's run", t.handler.clone());
        registry.register(
            "commit_seconds",
            "One commit transaction of a batch of results",
            t.commit.clone(),
        );
        registry.register(
            "step_seconds",
            "A step in this worker, from claim to committed result",
            t.step.clone(),
        );
        registry.register(
            "step_end_to_end_seconds",
            "A step attempt from its message's enqueue to its committed result",
            t.end_to_end.clone(),
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
