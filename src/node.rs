//! `Node`: the engine of one process as an embedder drives it (the Ruby extension, a Rust
//! binary): its own tokio runtime, the worker core and, when asked, the embedded
//! orchestrator. It decides what the embedder should not: the start order (orchestrator,
//! then worker), the stop order (worker, then orchestrator, so results the worker commits
//! while stopping are still orchestrated), the runtime's size, and what a forked child may
//! do with an inherited node (nothing: it is leaked, never dropped).
//!
//! Every method blocks the calling thread and must be called outside a tokio runtime; an
//! embedder that holds a lock the runtime needs (Ruby's GVL) releases it around the call.

use crate::config::{DeploymentMode, TaskerConfig};
use crate::error::{TaskerError, TaskerResult};
use crate::metrics::{self, Probe};
use crate::orchestration::{Orchestrator, OrchestratorStatus};
use crate::worker::event_systems::domain_event_system::DomainEventSystem;
use crate::worker::{
    DispatchMode, FfiDispatchChannel, FfiDispatchMetrics, ShutdownReport, WorkerCore, WorkerStatus,
};
use parking_lot::Mutex;
use serde::Serialize;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;

pub struct NodeOptions {
    /// Who runs the handlers (`DispatchMode::Ffi`: threads pull through `ffi_channel`).
    pub dispatch: DispatchMode,
    /// Also run the embedded orchestrator's result processor.
    pub orchestrate: bool,
    /// Called on each runtime thread as it starts (the Ruby extension blocks signals there).
    pub on_thread_start: Option<fn()>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    /// `None` once stopped.
    pub worker: Option<WorkerStatus>,
    /// The orchestrator's counters (kept after stopping); `None` when not orchestrating.
    pub orchestrator: Option<OrchestratorStatus>,
    /// The pull channel's metrics, in `DispatchMode::Ffi`.
    pub ffi: Option<FfiDispatchMetrics>,
}

pub struct Node {
    pid: u32,
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    worker: Mutex<Option<WorkerCore>>,
    orchestrator: Mutex<Option<Orchestrator>>,
    ffi: Option<Arc<FfiDispatchChannel>>,
    domain_events: Arc<DomainEventSystem>,
    probe: Arc<Probe>,
    /// The metrics listener and its queue sampler, when `metrics.port` is set.
    listener: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Builds the runtime (`runtime.worker_threads` threads) and starts the orchestrator (if
    /// asked) and the worker. On failure nothing is left running.
    pub fn start(config: TaskerConfig, options: NodeOptions) -> TaskerResult<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(config.runtime.worker_threads)
            .thread_name("tasker-worker")
            .enable_all();
        if let Some(hook) = options.on_thread_start {
            builder.on_thread_start(hook);
        }
        let runtime = builder
            .build()
            .map_err(|err| TaskerError::Configuration(format!("starting the tokio runtime: {err}")))?;
        // Bound first, so a port in use fails the start before anything runs.
        let listener = match config.metrics.listen_addr() {
            Some(addr) => Some(bind_metrics(addr)?),
            None => None,
        };
        let expected_threads = match options.dispatch {
            DispatchMode::Ffi => {
                config
                    .worker
                    .mpsc_channels
                    .handler_dispatch
                    .max_concurrent_handlers
            }
            _ => 0,
        };
        let listener_required = config.worker.deployment_mode != DeploymentMode::Polling;
        let started = runtime.block_on(async {
            let orchestrator = match options.orchestrate {
                true => Some(Orchestrator::start(&config).await?),
                false => None,
            };
            let counters = orchestrator.as_ref().map(|o| o.counters().clone());
            let worker = WorkerCore::start_with(config, options.dispatch, counters).await?;
            Ok::<_, TaskerError>((worker, orchestrator))
        });
        let (worker, orchestrator) = match started {
            Ok(started) => started,
            Err(err) => {
                runtime.shutdown_background();
                return Err(err);
            }
        };
        let probe = Arc::new(Probe::new(
            worker.state().clone(),
            orchestrator.as_ref().map(|o| o.counters().clone()),
            worker.ffi_channel().cloned(),
            expected_threads,
            listener_required,
        ));
        let mut tasks = Vec::new();
        if let Some(listener) = listener {
            let _entered = runtime.enter();
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tasks.push(runtime.spawn(metrics::serve(listener, probe.clone())));
                    tasks.push(runtime.spawn(probe.clone().sample_queues()));
                    tracing::info!(%addr, "metrics listener started: /metrics, /health, /ready");
                }
                Err(err) => tracing::warn!(error = %err, "metrics listener could not start"),
            }
        }
        Ok(Self {
            pid: std::process::id(),
            probe,
            listener: tasks,
            ffi: worker.ffi_channel().cloned(),
            domain_events: worker.domain_events().clone(),
            worker: Mutex::new(Some(worker)),
            orchestrator: Mutex::new(orchestrator),
            runtime: ManuallyDrop::new(runtime),
        })
    }

    /// False in a process forked from the one that started the node: its runtime's threads
    /// do not exist there, so nothing may be called on it.
    pub fn in_starting_process(&self) -> bool {
        std::process::id() == self.pid
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pull channel, in `DispatchMode::Ffi`.
    pub fn ffi_channel(&self) -> Option<&Arc<FfiDispatchChannel>> {
        self.ffi.as_ref()
    }

    /// Fast domain events (what subscriber threads pull) and their counters.
    pub fn domain_events(&self) -> &Arc<DomainEventSystem> {
        &self.domain_events
    }

    /// What the metrics listener reads; the embedder reports its live threads here.
    pub fn probe(&self) -> &Arc<Probe> {
        &self.probe
    }

    /// Stops claiming new steps; steps in flight run to completion.
    pub fn quiet(&self) {
        if let Some(worker) = self.worker.lock().as_ref() {
            worker.quiet();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.worker.lock().is_none()
    }

    /// Graceful stop: the worker (waiting up to `timeout` for steps in flight; `None`: the
    /// configured `shutdown_timeout_ms`), then the orchestrator. `None` when already stopped.
    pub fn stop(&self, timeout: Option<Duration>) -> TaskerResult<Option<ShutdownReport>> {
        let Some(worker) = self.worker.lock().take() else {
            return Ok(None);
        };
        self.probe.set_stopping();
        let mut orchestrator = self.orchestrator.lock().take();
        let report = self.runtime.block_on(async {
            let report = match timeout {
                Some(timeout) => worker.shutdown_within(timeout).await,
                None => worker.shutdown().await,
            };
            if let Some(orchestrator) = orchestrator.as_mut() {
                orchestrator.shutdown().await;
            }
            report
        });
        // Stopped; kept for its counters in `status`.
        *self.orchestrator.lock() = orchestrator;
        for task in &self.listener {
            task.abort();
        }
        report.map(Some)
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            worker: self.worker.lock().as_ref().map(WorkerCore::status_now),
            orchestrator: self.orchestrator.lock().as_ref().map(Orchestrator::status),
            ffi: self.ffi.as_ref().map(|channel| channel.metrics()),
        }
    }
}

/// Binds the metrics listener's socket (not yet accepting).
fn bind_metrics(addr: std::net::SocketAddr) -> TaskerResult<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).and_then(|listener| {
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    listener.map_err(|err| {
        TaskerError::Configuration(format!(
            "metrics.port: cannot listen on {addr} (metrics.bind {}): {err}",
            addr.ip()
        ))
    })
}

impl Drop for Node {
    /// Not stopped first: everything is aborted at once, as in a crash (leases lapse on their
    /// own). In a forked child the node is leaked instead: dropping would wait on threads that
    /// only the parent has.
    fn drop(&mut self) {
        if !self.in_starting_process() {
            std::mem::forget(self.worker.lock().take());
            std::mem::forget(self.orchestrator.lock().take());
            return;
        }
        let entered = self.runtime.enter();
        drop(self.worker.lock().take());
        drop(self.orchestrator.lock().take());
        drop(entered);
        // SAFETY: taken once, here; `runtime` is not used afterwards.
        let runtime = unsafe { ManuallyDrop::take(&mut self.runtime) };
        runtime.shutdown_background();
    }
}
