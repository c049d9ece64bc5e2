//! `TaskerWorker::Native::Worker`: a running worker core and its pull channel, owned by a
//! Ruby object. Each method converts, calls the core, converts back.
//!
//! Fork safety: the object remembers the pid that started it. In a forked child every method
//! raises `TaskerWorker::ForkError`, and the inherited runtime is leaked, never dropped
//! (its threads do not exist in the child; dropping it would hang).

use crate::{conversions, errors, nogvl};
use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby, Value};
use parking_lot::Mutex;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::orchestration::Orchestrator;
use tasker_worker::worker::{DispatchMode, FfiDispatchChannel, WorkerCore};
use tasker_worker::TaskerError;

struct Inner {
    pid: u32,
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    core: Mutex<Option<WorkerCore>>,
    orchestrator: Mutex<Option<Orchestrator>>,
    channel: Arc<FfiDispatchChannel>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked child: the runtime's threads are the parent's. Leak it all.
            std::mem::forget(self.core.lock().take());
            std::mem::forget(self.orchestrator.lock().take());
            return;
        }
        let _entered = self.runtime.enter();
        drop(self.core.lock().take());
        drop(self.orchestrator.lock().take());
        // SAFETY: taken once, here, and `runtime` is not used afterwards.
        let runtime = unsafe { ManuallyDrop::take(&mut self.runtime) };
        runtime.shutdown_background();
    }
}

#[magnus::wrap(class = "TaskerWorker::Native::Worker", free_immediately, size)]
pub struct NativeWorker {
    inner: Arc<Inner>,
}

pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    let class = native.define_class("Worker", ruby.class_object())?;
    class.define_singleton_method("start", function!(NativeWorker::start, 3))?;
    class.define_method("next_step", method!(NativeWorker::next_step, 1))?;
    class.define_method("complete", method!(NativeWorker::complete, 2))?;
    class.define_method("next_event", method!(NativeWorker::next_event, 1))?;
    class.define_method("status", method!(NativeWorker::status, 0))?;
    class.define_method("quiet", method!(NativeWorker::quiet, 0))?;
    class.define_method("stop", method!(NativeWorker::stop, 1))?;
    class.define_method("stopped?", method!(NativeWorker::is_stopped, 0))?;
    class.define_method("pid", method!(NativeWorker::pid, 0))?;
    Ok(())
}

/// A runtime whose threads never take signals meant for Ruby (see `block_signals`).
pub(crate) fn build_runtime(ruby: &Ruby, threads: usize) -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tasker-worker")
        .on_thread_start(block_signals)
        .enable_all()
        .build()
        .map_err(|err| errors::internal(ruby, format!("starting the tokio runtime: {err}")))
}

/// `next_step` for `Native::Worker` and `Native::Loopback`: a step already queued is taken
/// with the GVL held; otherwise waits without the GVL (`nogvl::wait_in_slices`) until a
/// step, `timeout` seconds, or the channel stops.
pub(crate) fn pull_step(
    ruby: &Ruby,
    channel: &Arc<FfiDispatchChannel>,
    timeout: f64,
) -> Result<Option<RHash>, Error> {
    if let Some(event) = channel.try_next_step() {
        return conversions::event(ruby, &event).map(Some);
    }
    let event = nogvl::wait_in_slices(
        ruby,
        "next_step",
        timeout,
        |slice| channel.next_step(slice),
        || channel.is_stopped(),
    )?;
    event.map(|event| conversions::event(ruby, &event)).transpose()
}

/// Signals sent to the process must reach a Ruby thread: Ruby's handler run on one of our
/// runtime threads only queues the signal, and nothing may wake the main thread to act on it
/// (seen as a worker that ignores SIGTERM now and then). So runtime threads block them all.
pub(crate) fn block_signals() {
    // SAFETY: plain libc calls on a stack-allocated, initialised signal set for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

impl NativeWorker {
    /// `start(overrides, config_path, orchestrate)`: `overrides` maps dotted config keys to
    /// values; `orchestrate` also runs the embedded orchestrator's result processor.
    fn start(
        ruby: &Ruby,
        overrides: RHash,
        config_path: Option<String>,
        orchestrate: bool,
    ) -> Result<Self, Error> {
        let overrides = conversions::overrides(ruby, overrides)?;
        let env = |name: &str| std::env::var(name).ok();
        let config =
            TaskerConfig::load_from(config_path.as_deref().map(std::path::Path::new), &env, &overrides)
                .map_err(|err| errors::to_ruby(ruby, err))?;
        let runtime = build_runtime(ruby, 2)?;
        let started = nogvl::without_gvl(|| {
            runtime.block_on(async {
                let orchestrator = match orchestrate {
                    true => Some(Orchestrator::start(&config).await?),
                    false => None,
                };
                let core = WorkerCore::start(config, DispatchMode::Ffi).await?;
                Ok::<_, TaskerError>((core, orchestrator))
            })
        })
        .map_err(|panic| errors::internal(ruby, format!("starting the worker panicked: {panic}")))?;
        let (core, orchestrator) = match started {
            Ok(started) => started,
            Err(err) => {
                runtime.shutdown_background();
                return Err(errors::to_ruby(ruby, err));
            }
        };
        let channel = core
            .ffi_channel()
            .cloned()
            .ok_or_else(|| errors::internal(ruby, "no pull channel"))?;
        let inner = Inner {
            pid: std::process::id(),
            runtime: ManuallyDrop::new(runtime),
            core: Mutex::new(Some(core)),
            orchestrator: Mutex::new(orchestrator),
            channel,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn check_pid(&self, ruby: &Ruby) -> Result<&Inner, Error> {
        let current = std::process::id();
        if current == self.inner.pid {
            Ok(&self.inner)
        } else {
            Err(errors::named(
                ruby,
                "ForkError",
                format!(
                    "this worker was started in process {} and cannot be used in the forked process {current}; \
                     start a new TaskerWorker::Worker in the child",
                    self.inner.pid
                ),
            ))
        }
    }

    /// Blocks (without the GVL) up to `timeout` seconds for a step; returns its event Hash or
    /// nil. Interrupts are checked every `nogvl::SLICE`.
    fn next_step(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Option<RHash>, Error> {
        let inner = rb_self.check_pid(ruby)?;
        pull_step(ruby, &inner.channel, timeout)
    }

    /// Blocks (without the GVL, in slices) up to `timeout` seconds for the next fast domain
    /// event; returns its envelope Hash or nil.
    fn next_event(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Option<RHash>, Error> {
        let inner = rb_self.check_pid(ruby)?;
        let Some(events) = inner
            .core
            .lock()
            .as_ref()
            .map(|core| core.domain_events().clone())
        else {
            return Ok(None);
        };
        let event = nogvl::wait_in_slices(
            ruby,
            "next_event",
            timeout,
            |slice| events.next_fast_event(slice),
            || rb_self.is_stopped(),
        )?;
        event
            .map(|event| serde_magnus::serialize(ruby, &event))
            .transpose()
    }

    fn complete(ruby: &Ruby, rb_self: &Self, event_id: String, completion: Value) -> Result<bool, Error> {
        let inner = rb_self.check_pid(ruby)?;
        let event_id = uuid::Uuid::parse_str(&event_id).map_err(|err| {
            errors::named(
                ruby,
                "CompletionRejected",
                format!("event id {event_id:?} is not a uuid: {err}"),
            )
        })?;
        let completion = conversions::completion(ruby, event_id, completion)?;
        inner
            .channel
            .complete(event_id, completion)
            .map(|()| true)
            .map_err(|rejected| errors::named(ruby, "CompletionRejected", rejected.to_string()))
    }

    fn status(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let inner = rb_self.check_pid(ruby)?;
        let metrics = inner.channel.metrics();
        let core_status = inner.core.lock().as_ref().map(WorkerCore::status_now);
        let orchestrator = inner.orchestrator.lock().as_ref().map(Orchestrator::status);
        let hash = conversions::status(ruby, core_status.as_ref(), &metrics)?;
        if let Some(orchestrator) = orchestrator {
            hash.aset(
                ruby.to_symbol("orchestrator"),
                serde_magnus::serialize::<_, RHash>(ruby, &orchestrator)?,
            )?;
        }
        Ok(hash)
    }

    fn quiet(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        let inner = rb_self.check_pid(ruby)?;
        if let Some(core) = inner.core.lock().as_ref() {
            core.quiet();
        }
        Ok(())
    }

    /// Graceful stop (see `WorkerCore::shutdown`), waiting up to `timeout` seconds for running
    /// steps (nil: the configured shutdown timeout). The GVL is released so handler threads can
    /// finish their steps meanwhile. Returns the report, or nil when already stopped.
    fn stop(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<RHash>, Error> {
        let inner = rb_self.check_pid(ruby)?;
        let Some(core) = inner.core.lock().take() else {
            return Ok(None);
        };
        // The embedded orchestrator stops after the worker, so results the worker committed
        // while stopping are still processed if it gets to them; whatever it leaves stays on
        // its queue for the next orchestrator.
        let orchestrator = inner.orchestrator.lock().take();
        let shutdown = async move {
            let report = match timeout {
                Some(seconds) => {
                    core.shutdown_within(Duration::from_secs_f64(seconds.max(0.0)))
                        .await
                }
                None => core.shutdown().await,
            };
            let orchestrator = match orchestrator {
                Some(mut orchestrator) => {
                    orchestrator.shutdown().await;
                    Some(orchestrator)
                }
                None => None,
            };
            (report, orchestrator)
        };
        let (report, orchestrator) = nogvl::without_gvl(|| inner.runtime.block_on(shutdown))
            .map_err(|panic| errors::internal(ruby, format!("stop panicked: {panic}")))?;
        // Stopped; kept for its counters in `status`.
        *inner.orchestrator.lock() = orchestrator;
        let report = report.map_err(|err: TaskerError| errors::to_ruby(ruby, err))?;
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("finished"), report.finished)?;
        hash.aset(ruby.to_symbol("released"), report.released)?;
        Ok(Some(hash))
    }

    fn is_stopped(&self) -> bool {
        self.inner.core.lock().is_none()
    }

    fn pid(&self) -> u32 {
        self.inner.pid
    }
}
