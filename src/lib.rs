//! The engine of the `tasker_worker` gem: claims steps of Tasker workflows from PostgreSQL
//! PGMQ queues, runs them, and commits their results. Pure Rust; the Ruby binding lives in
//! `ext/tasker_worker` and only converts values.

pub mod config;
pub mod database;
pub mod error;
pub mod limits;
pub mod messaging;
pub mod metrics;
pub mod node;
pub mod operations;
pub mod orchestration;
pub mod retention;
pub mod worker;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use error::{panic_message, TaskerError, TaskerResult};

/// The version of this crate, reported to Ruby as `TaskerWorker::Native.core_version`.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
