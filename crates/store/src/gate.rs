//! The gate between snapshots and map growth (and close).
//!
//! Growing the map (`mdb_env_set_mapsize`) unmaps and remaps the data file, so LMDB
//! requires that no transaction of this process is active while it runs. The writer
//! thread holds no write transaction between batches, but snapshots are read
//! transactions on other threads. Each snapshot holds a ticket through this gate for as
//! long as its transaction lives; the writer closes the gate (new snapshots wait), waits
//! for the tickets to come back, resizes, and opens it again.
//!
//! Every wait for snapshots is bounded (by `StoreOptions::snapshot_age_ms_max`): a
//! snapshot held by a thread that itself waits for a write would otherwise block the
//! writer forever.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often the writer logs while it waits for snapshots to end before a resize.
const RESIZE_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct GateState {
    /// Snapshots alive.
    readers: usize,
    /// A resize is waiting or running; new snapshots wait.
    resizing: bool,
    /// The store is closing or closed; new snapshots are refused.
    closed: bool,
}

/// Snapshots outlived a bounded wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// Snapshots still alive.
    pub(crate) snapshots: usize,
    /// How long the wait lasted.
    pub(crate) waited: Duration,
}

/// What `exclusive` did.
#[derive(Debug)]
pub(crate) enum Exclusive<R> {
    /// The resize ran with no snapshot alive.
    Ran(R),
    /// A snapshot was alive and the caller did not want to wait.
    Skipped,
    /// Snapshots were still alive when the wait ended.
    Blocked(Blocked),
}

/// The gate refuses new snapshots: the store is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GateClosed;

/// Counts live snapshots and lets the writer exclude them while it resizes.
#[derive(Debug, Default)]
pub(crate) struct MapGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl MapGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is counters and flags updated in one step each; a panic elsewhere
        // while the lock was held cannot leave them half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a snapshot, waiting while a resize is under way (a resize waits a
    /// bounded time, so this does too). The snapshot's read transaction must begin after
    /// this returns and end before the matching `leave`.
    pub(crate) fn enter(&self) -> Result<(), GateClosed> {
        let mut state = self.lock();
        while state.resizing && !state.closed {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return Err(GateClosed);
        }
        state.readers += 1;
        Ok(())
    }

    /// Unregisters a snapshot whose read transaction has ended.
    pub(crate) fn leave(&self) {
        let mut state = self.lock();
        debug_assert!(
            state.readers > 0,
            "invariant violation: reader count underflow"
        );
        state.readers = state.readers.saturating_sub(1);
        if state.readers == 0 {
            self.changed.notify_all();
        }
    }

    /// Waits, with the state locked, until no snapshot is alive or `wait_max` passed.
    fn wait_for_readers<'s>(
        &self,
        mut state: MutexGuard<'s, GateState>,
        wait_max: Duration,
    ) -> (MutexGuard<'s, GateState>, Result<(), Blocked>) {
        let started = Instant::now();
        let mut logged = started;
        while state.readers > 0 {
            let waited = started.elapsed();
            if waited >= wait_max {
                let blocked = Blocked {
                    snapshots: state.readers,
                    waited,
                };
                return (state, Err(blocked));
            }
            let slice = (wait_max - waited).min(RESIZE_WAIT_LOG_INTERVAL);
            let (next, _) = self
                .changed
                .wait_timeout(state, slice)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if state.readers > 0 && logged.elapsed() >= RESIZE_WAIT_LOG_INTERVAL {
                logged = Instant::now();
                tracing::warn!(
                    snapshots = state.readers,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "waiting for snapshots to end; a thread may be holding a snapshot while it waits for a write"
                );
            }
        }
        (state, Ok(()))
    }

    /// Runs `resize` with no snapshot alive. Without `wait_max`, skips if a snapshot is
    /// alive; with it, closes the gate and waits at most that long for them to end.
    pub(crate) fn exclusive<R>(
        &self,
        wait_max: Option<Duration>,
        resize: impl FnOnce() -> R,
    ) -> Exclusive<R> {
        let mut state = self.lock();
        let Some(wait_max) = wait_max.filter(|_| state.readers > 0) else {
            if state.readers > 0 {
                return Exclusive::Skipped;
            }
            state.resizing = true;
            drop(state);
            return self.run_resize(resize);
        };
        state.resizing = true;
        let (mut state, waited) = self.wait_for_readers(state, wait_max);
        if let Err(blocked) = waited {
            state.resizing = false;
            self.changed.notify_all();
            return Exclusive::Blocked(blocked);
        }
        // New snapshots wait on `resizing`, so holding the lock during the resize is not
        // needed; releasing it keeps `leave` of unrelated tickets from blocking.
        drop(state);
        self.run_resize(resize)
    }

    fn run_resize<R>(&self, resize: impl FnOnce() -> R) -> Exclusive<R> {
        let result = resize();
        let mut state = self.lock();
        state.resizing = false;
        self.changed.notify_all();
        Exclusive::Ran(result)
    }

    /// Refuses new snapshots from now on and waits at most `wait_max` for the live ones
    /// to end.
    pub(crate) fn close(&self, wait_max: Duration) -> Result<(), Blocked> {
        let mut state = self.lock();
        state.closed = true;
        self.changed.notify_all();
        let (_state, waited) = self.wait_for_readers(state, wait_max);
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resize that must wait for a live ticket gives up after its bound instead of
    /// waiting forever, and runs once the ticket is gone; a closed gate refuses tickets.
    #[test]
    fn bounded_waits() {
        let gate = MapGate::default();
        gate.enter().expect("open gate");
        assert!(matches!(gate.exclusive(None, || ()), Exclusive::Skipped));
        let blocked = gate.exclusive(Some(Duration::from_millis(20)), || ());
        assert!(
            matches!(blocked, Exclusive::Blocked(Blocked { snapshots: 1, .. })),
            "{blocked:?}"
        );
        gate.leave();
        assert!(matches!(
            gate.exclusive(Some(Duration::from_millis(20)), || 7),
            Exclusive::Ran(7)
        ));
        gate.enter().expect("open gate");
        assert!(gate.close(Duration::from_millis(20)).is_err());
        assert_eq!(gate.enter(), Err(GateClosed));
        gate.leave();
        assert_eq!(gate.close(Duration::from_millis(20)), Ok(()));
    }
}
