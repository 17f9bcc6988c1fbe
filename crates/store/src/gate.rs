//! The gate between snapshots and map growth.
//!
//! Growing the map (`mdb_env_set_mapsize`) unmaps and remaps the data file, so LMDB
//! requires that no transaction of this process is active while it runs. The writer
//! thread holds no write transaction between batches, but snapshots are read
//! transactions on other threads. Each snapshot holds a ticket through this gate for as
//! long as its transaction lives; the writer closes the gate (new snapshots wait), waits
//! for the tickets to come back, resizes, and opens it again.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How often the writer logs while it waits for snapshots to end before a resize.
const RESIZE_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct GateState {
    /// Snapshots alive.
    readers: usize,
    /// A resize is waiting or running; new snapshots wait.
    resizing: bool,
}

/// Counts live snapshots and lets the writer exclude them while it resizes.
#[derive(Debug, Default)]
pub(crate) struct MapGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl MapGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is two counters updated in one step each; a panic elsewhere while the
        // lock was held cannot leave them half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a snapshot, waiting while a resize is under way. The snapshot's read
    /// transaction must begin after this returns and end before the matching `leave`.
    pub(crate) fn enter(&self) {
        let mut state = self.lock();
        while state.resizing {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.readers += 1;
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

    /// Runs `resize` with no snapshot alive. With `wait` false, gives up (returns `None`)
    /// if a snapshot is alive; with `wait` true, closes the gate and waits for them.
    pub(crate) fn exclusive<R>(&self, wait: bool, resize: impl FnOnce() -> R) -> Option<R> {
        let mut state = self.lock();
        if state.readers > 0 && !wait {
            return None;
        }
        state.resizing = true;
        while state.readers > 0 {
            let (next, timeout) = self
                .changed
                .wait_timeout(state, RESIZE_WAIT_LOG_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if timeout.timed_out() && state.readers > 0 {
                tracing::warn!(
                    snapshots = state.readers,
                    "the map must grow and is waiting for snapshots to end; \
                     a thread may be holding a snapshot while it waits for a write"
                );
            }
        }
        // New snapshots wait on `resizing`, so holding the lock during the resize is not
        // needed; releasing it keeps `leave` of unrelated tickets from blocking.
        drop(state);
        let result = resize();
        let mut state = self.lock();
        state.resizing = false;
        self.changed.notify_all();
        Some(result)
    }
}
