//! `TaskerWorker::Native::Loopback`: the pull channel without a database, for
//! `bench/ffi_handoff.rb` (see `tasker_worker::worker::loopback`).

use crate::{conversions, errors, worker};
use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby, Value};
use std::mem::ManuallyDrop;
use tasker_worker::worker::loopback::Loopback;

#[magnus::wrap(class = "TaskerWorker::Native::Loopback", free_immediately, size)]
pub struct NativeLoopback {
    pid: u32,
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    loopback: Loopback,
}

impl Drop for NativeLoopback {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            // SAFETY: taken once, here.
            unsafe { ManuallyDrop::take(&mut self.runtime) }.shutdown_background();
        }
    }
}

pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    let class = native.define_class("Loopback", ruby.class_object())?;
    class.define_singleton_method("new", function!(NativeLoopback::new, 1))?;
    class.define_method("next_step", method!(NativeLoopback::next_step, 1))?;
    class.define_method("complete", method!(NativeLoopback::complete, 2))?;
    class.define_method("stats", method!(NativeLoopback::stats, 0))?;
    Ok(())
}

impl NativeLoopback {
    fn new(ruby: &Ruby, capacity: usize) -> Result<Self, Error> {
        let runtime = worker::build_runtime(ruby, 1)?;
        let loopback = {
            let _entered = runtime.enter();
            Loopback::start(capacity)
        };
        Ok(Self {
            pid: std::process::id(),
            runtime: ManuallyDrop::new(runtime),
            loopback,
        })
    }

    /// The same fast path, slicing and conversion as `Native::Worker#next_step`.
    fn next_step(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Option<RHash>, Error> {
        worker::pull_step(ruby, &rb_self.loopback.channel, timeout)
    }

    fn complete(ruby: &Ruby, rb_self: &Self, event_id: String, completion: Value) -> Result<bool, Error> {
        let event_id = uuid::Uuid::parse_str(&event_id).map_err(|err| {
            errors::named(
                ruby,
                "CompletionRejected",
                format!("event id {event_id:?}: {err}"),
            )
        })?;
        let completion = conversions::completion(ruby, event_id, completion)?;
        rb_self
            .loopback
            .channel
            .complete(event_id, completion)
            .map(|()| true)
            .map_err(|rejected| errors::named(ruby, "CompletionRejected", rejected.to_string()))
    }

    fn stats(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("completed"), rb_self.loopback.completed())?;
        Ok(hash)
    }
}
