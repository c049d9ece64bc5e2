//! The adaptive prefetch (`worker.prefetch` unset): how many steps the worker claims ahead of
//! its handlers. A claim costs PostgreSQL about as much for one message as for several
//! (BENCHMARKS.md, session 12), so while handlers are quick, reading more per claim is the
//! cheapest throughput there is; but a step claimed ahead waits in this process, where no
//! other worker can take it. So the prefetch starts at `max_concurrent_handlers` (the
//! fixed default before) and grows, up to `CEILING_FACTOR` times that, only while the
//! capacity is what limits the claims (reads come back with as many messages as slots) and
//! claimed steps start within `TARGET_WAIT` of their claim; once one waits longer it shrinks
//! back. With slow handlers, or a worker that keeps up with its queue, it stays at the floor.
//! A leaf: the executor and the handlers record, the adapter reads.

use crate::worker::task::StopSignal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The longest a claimed step may wait for a handler while the prefetch grows.
pub const TARGET_WAIT: Duration = Duration::from_millis(20);
/// How often the prefetch is adjusted.
pub const TICK: Duration = Duration::from_millis(250);
/// The largest adaptive prefetch, in multiples of `max_concurrent_handlers`.
pub const CEILING_FACTOR: usize = 3;

/// The waits of steps for a handler (claim to handler start) since the adapter last looked:
/// how many started and the longest wait, recorded by both dispatch paths; and whether a read
/// meanwhile came back full (as many messages as it had slots: capacity-limited).
#[derive(Debug, Default)]
pub struct StartWaits {
    longest_us: AtomicU64,
    started: AtomicU64,
    limited: AtomicBool,
}

/// What the adapter reads each tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The longest claim-to-start wait; None when no step started.
    pub longest_wait: Option<Duration>,
    /// A read came back full.
    pub limited: bool,
}

impl StartWaits {
    pub fn record(&self, claimed_at: Instant) {
        let waited = u64::try_from(claimed_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.longest_us.fetch_max(waited, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A read came back with as many messages as the claim had slots.
    pub fn record_limited(&self) {
        self.limited.store(true, Ordering::Relaxed);
    }

    /// What was recorded since the last call.
    pub fn take(&self) -> Window {
        let started = self.started.swap(0, Ordering::Relaxed);
        let longest = self.longest_us.swap(0, Ordering::Relaxed);
        Window {
            longest_wait: (started > 0).then(|| Duration::from_micros(longest)),
            limited: self.limited.swap(false, Ordering::Relaxed),
        }
    }
}

/// Grows and shrinks the claim capacity (handlers + prefetch) between its floor and ceiling.
pub struct AdaptivePrefetch {
    capacity: Arc<Semaphore>,
    waits: Arc<StartWaits>,
    /// The capacity now (what status reports), shared with the worker's state.
    current: Arc<AtomicUsize>,
    floor: usize,
    ceiling: usize,
    step: usize,
    /// Permits to take out of the semaphore once steps return them (a shrink larger than
    /// what was free when it was decided).
    owed: usize,
}

impl AdaptivePrefetch {
    /// `capacity` holds `floor` permits and `current` reads `floor`; each adjustment moves the
    /// capacity by `step` (the handler count), between `floor` and `ceiling`.
    pub fn new(
        capacity: Arc<Semaphore>,
        waits: Arc<StartWaits>,
        current: Arc<AtomicUsize>,
        floor: usize,
        ceiling: usize,
        step: usize,
    ) -> Self {
        Self {
            capacity,
            waits,
            current,
            floor,
            ceiling: ceiling.max(floor),
            step: step.max(1),
            owed: 0,
        }
    }

    /// One adjustment for what was seen since the last: up while the capacity limited the
    /// claims and no step waited longer than TARGET_WAIT, down once one did, else no change.
    /// Returns the capacity it aims for.
    pub fn adjust(&mut self, window: Window) -> usize {
        self.settle_owed();
        let current = self.current.load(Ordering::Relaxed);
        let target = match window.longest_wait {
            Some(wait) if wait > TARGET_WAIT => current.saturating_sub(self.step).max(self.floor),
            Some(_) if window.limited => (current + self.step).min(self.ceiling),
            _ => current,
        };
        if target > current {
            let grow = target - current;
            // Permits still owed from a shrink are simply kept instead.
            let kept = grow.min(self.owed);
            self.owed -= kept;
            self.capacity.add_permits(grow - kept);
        } else if target < current {
            self.owed += current - target;
            self.settle_owed();
        }
        self.current.store(target, Ordering::Relaxed);
        target
    }

    /// Takes owed permits out of the semaphore as far as they are free now.
    fn settle_owed(&mut self) {
        if self.owed > 0 {
            self.owed -= self.capacity.forget_permits(self.owed);
        }
    }

    pub async fn run(mut self, mut stop: StopSignal) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let window = self.waits.take();
                    self.adjust(window);
                }
                _ = stop.stopped() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Window {
        Window {
            longest_wait: Some(Duration::from_millis(2)),
            limited: true,
        }
    }

    fn waited() -> Window {
        Window {
            longest_wait: Some(TARGET_WAIT * 2),
            limited: true,
        }
    }

    const IDLE: Window = Window {
        longest_wait: None,
        limited: false,
    };

    fn adapter(handlers: usize) -> (AdaptivePrefetch, Arc<Semaphore>, Arc<AtomicUsize>) {
        let capacity = Arc::new(Semaphore::new(2 * handlers));
        let current = Arc::new(AtomicUsize::new(2 * handlers));
        let adapter = AdaptivePrefetch::new(
            capacity.clone(),
            Arc::new(StartWaits::default()),
            current.clone(),
            2 * handlers,
            (1 + CEILING_FACTOR) * handlers,
            handlers,
        );
        (adapter, capacity, current)
    }

    #[test]
    fn grows_to_the_ceiling_while_steps_start_quickly() {
        let (mut adapter, capacity, current) = adapter(10);
        assert_eq!(adapter.adjust(quick()), 30);
        assert_eq!(adapter.adjust(quick()), 40);
        assert_eq!(adapter.adjust(quick()), 40);
        assert_eq!(capacity.available_permits(), 40);
        assert_eq!(current.load(Ordering::Relaxed), 40);
        // Nothing started: no change either way.
        assert_eq!(adapter.adjust(IDLE), 40);
    }

    #[test]
    fn does_not_grow_while_the_capacity_limits_nothing() {
        let (mut adapter, capacity, _) = adapter(10);
        let keeping_up = Window {
            longest_wait: Some(Duration::from_millis(1)),
            limited: false,
        };
        assert_eq!(adapter.adjust(keeping_up), 20);
        assert_eq!(adapter.adjust(keeping_up), 20);
        assert_eq!(capacity.available_permits(), 20);
    }

    #[test]
    fn shrinks_to_the_floor_when_steps_wait() {
        let (mut adapter, capacity, _) = adapter(10);
        adapter.adjust(quick());
        adapter.adjust(quick());
        assert_eq!(adapter.adjust(waited()), 30);
        assert_eq!(adapter.adjust(waited()), 20);
        assert_eq!(adapter.adjust(waited()), 20);
        assert_eq!(capacity.available_permits(), 20);
    }

    #[test]
    fn a_shrink_waits_for_permits_in_use() {
        let (mut adapter, capacity, _) = adapter(10);
        adapter.adjust(quick());
        adapter.adjust(quick());
        // 35 of the 40 permits are held by claimed steps.
        let held = capacity.clone().try_acquire_many_owned(35).expect("permits");
        assert_eq!(adapter.adjust(waited()), 30);
        assert_eq!(capacity.available_permits(), 0, "the 5 free ones are taken out");
        drop(held);
        // The next look takes out the other 5 owed, whatever it decides.
        assert_eq!(adapter.adjust(IDLE), 30);
        assert_eq!(capacity.available_permits(), 30);
        // Growing again first cancels what is still owed, never adds twice.
        let held = capacity.clone().try_acquire_many_owned(30).expect("permits");
        assert_eq!(adapter.adjust(waited()), 20);
        assert_eq!(adapter.adjust(quick()), 30);
        drop(held);
        assert_eq!(capacity.available_permits(), 30);
    }

    #[test]
    fn records_the_longest_wait_and_resets() {
        let waits = StartWaits::default();
        assert_eq!(waits.take(), IDLE);
        waits.record(Instant::now() - Duration::from_millis(5));
        waits.record(Instant::now() - Duration::from_millis(1));
        waits.record_limited();
        let window = waits.take();
        let longest = window.longest_wait.expect("two started");
        assert!(
            longest >= Duration::from_millis(5) && longest < Duration::from_millis(500),
            "{longest:?}"
        );
        assert!(window.limited);
        assert_eq!(waits.take(), IDLE);
    }
}
