//! The one shape of the worker's long-lived tasks: a `Task` holds the task's `JoinHandle`
//! and, for a task that no channel feeds (a source: the event system, the executor, the
//! lease keeper, ...), the sender of its stop signal. A task ends when its senders drop:
//! its input channel's (a pipeline stage ends when the stage before it has ended and its
//! channel is drained) or its stop signal's (`Task::stop` drops it). Dropping a `Task`
//! without stopping it aborts the task, as a crash would.

use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The receiving side of a stop signal: `stopped` resolves once the sender is dropped.
pub struct StopSignal {
    signal: oneshot::Receiver<()>,
    seen: bool,
}

impl StopSignal {
    /// Resolves when the task is asked to stop, and at once every time after that.
    /// Cancel-safe (use it in `select!`).
    pub async fn stopped(&mut self) {
        if !self.seen {
            let _ = (&mut self.signal).await;
            self.seen = true;
        }
    }
}

pub struct Task {
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl Task {
    /// A pipeline stage: it ends when its input channel closes.
    pub fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            stop: None,
            join: Some(tokio::spawn(future)),
        }
    }

    /// A source: `make` gets the stop signal the task must watch.
    pub fn spawn_source<F>(make: impl FnOnce(StopSignal) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        Self {
            stop: Some(stop),
            join: Some(tokio::spawn(make(StopSignal { signal, seen: false }))),
        }
    }

    /// Signals a source to stop (a no-op for a stage) and waits until the task has ended.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(join) = self.join.take() {
            let _ = join.await;
        }
    }

    /// As `stop`, but waits at most `bound`, then aborts the task. True when it ended on its own.
    pub async fn stop_within(mut self, bound: Duration) -> bool {
        drop(self.stop.take());
        let Some(mut join) = self.join.take() else {
            return true;
        };
        match tokio::time::timeout(bound, &mut join).await {
            Ok(_) => true,
            Err(_) => {
                join.abort();
                let _ = join.await;
                false
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(join) = &self.join {
            join.abort();
        }
    }
}
