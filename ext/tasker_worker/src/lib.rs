//! Ruby binding of the tasker-worker core. Thin on purpose: each method converts its
//! arguments, calls the core crate, and converts the result back. Decisions about steps,
//! leases and retries live in the core, where `cargo test` covers them.

mod client;
mod config;
mod conversions;
mod database;
mod errors;
mod logging;
#[cfg(feature = "bench")]
mod loopback;
mod native;
mod nogvl;
mod worker;

use magnus::{Error, Ruby};

#[magnus::init(name = "tasker_worker_ext")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let tasker_worker = ruby.define_module("TaskerWorker")?;
    let native = native::init(ruby, tasker_worker)?;
    logging::init(ruby, native)?;
    worker::init(ruby, native)?;
    client::init(ruby, native)?;
    config::init(ruby, native)?;
    #[cfg(feature = "bench")]
    loopback::init(ruby, native)?;
    database::init(ruby, tasker_worker)?;
    Ok(())
}
