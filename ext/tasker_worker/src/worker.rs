//! `TaskerWorker::Native::Worker`: a running worker core and its pull channel, owned by a
//! Ruby object. Each method converts, calls the core, converts back.
//!
//! Fork safety: the object remembers the pid that started it. In a forked child every method
//! but `pid` raises `TaskerWorker::ForkError`, and the inherited runtime is leaked, never dropped
//! (its threads do not exist in the child; dropping it would hang).

use crate::{conversions, errors, nogvl};
use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby, Value};
use std::sync::Arc;
use std::time::Duration;
use tasker_worker::config::TaskerConfig;
use tasker_worker::node::{Node, NodeOptions};
use tasker_worker::worker::{DispatchMode, FfiDispatchChannel};

/// The node's own `Drop` leaks it in a forked child.
#[magnus::wrap(class = "TaskerWorker::Native::Worker", free_immediately, size)]
pub struct NativeWorker {
    node: Node,
    channel: Arc<FfiDispatchChannel>,
}

pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    let class = native.define_class("Worker", ruby.class_object())?;
    class.define_singleton_method("start", function!(NativeWorker::start, 3))?;
    class.define_method("next_step", method!(NativeWorker::next_step, 1))?;
    class.define_method("complete", method!(NativeWorker::complete, 2))?;
    class.define_method("checkpoint", method!(NativeWorker::checkpoint, 3))?;
    class.define_method("next_event", method!(NativeWorker::next_event, 1))?;
    class.define_method("status", method!(NativeWorker::status, 0))?;
    class.define_method("quiet", method!(NativeWorker::quiet, 0))?;
    class.define_method("report_threads", method!(NativeWorker::report_threads, 1))?;
    class.define_method("stop", method!(NativeWorker::stop, 1))?;
    class.define_method("stopped?", method!(NativeWorker::is_stopped, 0))?;
    class.define_method("take_timed_out", method!(NativeWorker::take_timed_out, 0))?;
    class.define_method("drop_fast_events", method!(NativeWorker::drop_fast_events, 0))?;
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
        let options = NodeOptions {
            dispatch: DispatchMode::Ffi,
            orchestrate,
            on_thread_start: Some(block_signals),
        };
        let node = nogvl::without_gvl(|| Node::start(config, options))
            .map_err(|panic| errors::internal(ruby, format!("starting the worker panicked: {panic}")))?
            .map_err(|err| errors::to_ruby(ruby, err))?;
        let channel = node
            .ffi_channel()
            .cloned()
            .ok_or_else(|| errors::internal(ruby, "no pull channel"))?;
        Ok(Self { node, channel })
    }

    fn check_pid(&self, ruby: &Ruby) -> Result<&Node, Error> {
        if self.node.in_starting_process() {
            return Ok(&self.node);
        }
        Err(errors::named(
            ruby,
            "ForkError",
            format!(
                "this worker was started in process {} and cannot be used in the forked process {}; \
                 start a new TaskerWorker::Worker in the child",
                self.node.pid(),
                std::process::id()
            ),
        ))
    }

    /// Blocks (without the GVL) up to `timeout` seconds for a step; returns its event Hash or
    /// nil. Interrupts are checked every `nogvl::SLICE`.
    fn next_step(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Option<RHash>, Error> {
        rb_self.check_pid(ruby)?;
        pull_step(ruby, &rb_self.channel, timeout)
    }

    /// Blocks (without the GVL, in slices) up to `timeout` seconds for the next fast domain
    /// event; returns its envelope Hash or nil. It waits the same while the worker stops and
    /// after, so the events still queued (or published while in-flight steps finish) can be
    /// delivered; `timeout` 0 takes one only if one is queued.
    fn next_event(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Option<RHash>, Error> {
        let events = rb_self.check_pid(ruby)?.domain_events();
        if let Some(event) = events.try_next_fast_event() {
            return serde_magnus::serialize(ruby, &event).map(Some);
        }
        let event = nogvl::wait_in_slices(
            ruby,
            "next_event",
            timeout,
            |slice| events.next_fast_event(slice),
            || false,
        )?;
        event
            .map(|event| serde_magnus::serialize(ruby, &event))
            .transpose()
    }

    fn complete(ruby: &Ruby, rb_self: &Self, event_id: String, completion: Value) -> Result<bool, Error> {
        rb_self.check_pid(ruby)?;
        let event_id = uuid::Uuid::parse_str(&event_id).map_err(|err| {
            errors::named(
                ruby,
                "CompletionRejected",
                format!("event id {event_id:?} is not a uuid: {err}"),
            )
        })?;
        let completion = conversions::completion(ruby, event_id, completion)?;
        rb_self
            .channel
            .complete(event_id, completion)
            .map(|()| true)
            .map_err(|rejected| errors::named(ruby, "CompletionRejected", rejected.to_string()))
    }

    /// `checkpoint(event_id, data, yielded)`: saves the running event's checkpoint (a Hash
    /// with cursor, items_processed, accumulated_results) without the GVL; returns
    /// `{saved:, checkpoint:}`. Raises StaleClaimError when the claim no longer holds the
    /// step, CheckpointLimitError over a `worker.checkpoints` limit.
    fn checkpoint(
        ruby: &Ruby,
        rb_self: &Self,
        event_id: String,
        data: Value,
        yielded: bool,
    ) -> Result<RHash, Error> {
        rb_self.check_pid(ruby)?;
        let event_id = uuid::Uuid::parse_str(&event_id).map_err(|err| {
            errors::named(
                ruby,
                "StaleClaimError",
                format!("event id {event_id:?} is not a uuid: {err}"),
            )
        })?;
        let data = conversions::checkpoint(ruby, event_id, data)?;
        let channel = rb_self.channel.clone();
        let saved = nogvl::without_gvl(move || channel.checkpoint(event_id, data, yielded))
            .map_err(|panic| errors::internal(ruby, format!("checkpoint panicked: {panic}")))?
            .map_err(|err| errors::checkpoint(ruby, err))?;
        serde_magnus::serialize(ruby, &saved)
    }

    fn status(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let node = rb_self.check_pid(ruby)?;
        let status = node.status();
        let hash = conversions::status(ruby, status.worker.as_ref(), &status.ffi.unwrap_or_default())?;
        if status.worker.is_none() {
            // Kept after a stop: what was delivered or dropped while stopping.
            let events: RHash = serde_magnus::serialize(ruby, &node.domain_events().stats())?;
            hash.aset(ruby.to_symbol("domain_events"), events)?;
        }
        if let Some(orchestrator) = status.orchestrator {
            hash.aset(
                ruby.to_symbol("orchestrator"),
                serde_magnus::serialize::<_, RHash>(ruby, &orchestrator)?,
            )?;
        }
        Ok(hash)
    }

    /// The supervisor's count of live processor threads, for `/ready`.
    fn report_threads(ruby: &Ruby, rb_self: &Self, alive: usize) -> Result<(), Error> {
        rb_self.check_pid(ruby)?.probe().report_threads(alive);
        Ok(())
    }

    fn quiet(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        rb_self.check_pid(ruby)?.quiet();
        Ok(())
    }

    /// Graceful stop (`Node::stop`), waiting up to `timeout` seconds for running steps (nil:
    /// the configured shutdown timeout). The GVL is released so handler threads can finish
    /// their steps meanwhile. Returns the report, or nil when already stopped.
    fn stop(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<RHash>, Error> {
        let node = rb_self.check_pid(ruby)?;
        let timeout = timeout.map(|seconds| Duration::from_secs_f64(seconds.max(0.0)));
        let report = nogvl::without_gvl(|| node.stop(timeout))
            .map_err(|panic| errors::internal(ruby, format!("stop panicked: {panic}")))?
            .map_err(|err| errors::to_ruby(ruby, err))?;
        report
            .map(|report| serde_magnus::serialize::<_, RHash>(ruby, &report))
            .transpose()
    }

    fn is_stopped(ruby: &Ruby, rb_self: &Self) -> Result<bool, Error> {
        Ok(rb_self.check_pid(ruby)?.is_stopped())
    }

    /// The event ids (Strings) failed with `ffi_timeout` since the last call: the threads
    /// running them are hung, for the Ruby layer to replace.
    fn take_timed_out(ruby: &Ruby, rb_self: &Self) -> Result<Vec<String>, Error> {
        rb_self.check_pid(ruby)?;
        Ok(rb_self
            .channel
            .take_timed_out()
            .into_iter()
            .map(|id| id.to_string())
            .collect())
    }

    /// Drops the fast events still queued, counting them as dropped; returns how many.
    fn drop_fast_events(ruby: &Ruby, rb_self: &Self) -> Result<usize, Error> {
        Ok(rb_self.check_pid(ruby)?.domain_events().drop_queued_fast())
    }

    fn pid(&self) -> u32 {
        self.node.pid()
    }
}
