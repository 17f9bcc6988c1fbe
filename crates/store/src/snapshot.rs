//! `Snapshot`: a consistent read-only view of the store, usable from any thread.

use std::sync::Arc;
use std::time::Instant;

use heed::{RoTxn, WithoutTls};

use crate::error::{Error, Result};
use crate::ids::{SessionId, TaskId};
use crate::read::{self, View};
use crate::records::{EventRecord, SessionRecord, TaskRecord};
use crate::store::Shared;

/// A read transaction over the last committed state. It is `Send` (the environment is
/// opened without thread-local reader slots), so it can move between threads and across
/// `.await`s.
///
/// Keep it short-lived: a live snapshot pins the pages it reads, and growing the map
/// waits until every snapshot has ended. Never hold one while waiting for a write (it
/// could wait for a map growth that waits for the snapshot). Its life is bounded by
/// [`StoreOptions::snapshot_age_ms_max`](crate::StoreOptions::snapshot_age_ms_max):
/// reads through an older snapshot are [`Error::SnapshotTooOld`], and the writer waits
/// no longer than that for snapshots before it fails a batch that needs a larger map.
pub struct Snapshot {
    // Field order is drop order: the read transaction ends before the ticket leaves the
    // map gate, which is what makes a map resize sound.
    txn: RoTxn<'static, WithoutTls>,
    ticket: GateTicket,
    begun: Instant,
}

/// A snapshot's registration in the map gate (see `gate`).
struct GateTicket {
    shared: Arc<Shared>,
}

impl Drop for GateTicket {
    fn drop(&mut self) {
        self.shared.gate.leave();
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("dir", &self.ticket.shared.dir)
            .field("txn_id", &self.txn.id())
            .finish()
    }
}

impl Snapshot {
    pub(crate) fn begin(shared: &Arc<Shared>) -> Result<Snapshot> {
        shared.check_open()?;
        shared.gate.enter().map_err(|_| shared.closed_error())?;
        let ticket = GateTicket {
            shared: Arc::clone(shared),
        };
        // The gate is open and counts this ticket, so `close` has not taken the
        // environment and will wait for this snapshot before it does.
        let txn = shared
            .env()?
            .static_read_txn()
            .map_err(|e| Error::lmdb("beginning a snapshot", e))?;
        Ok(Snapshot {
            txn,
            ticket,
            begun: Instant::now(),
        })
    }

    /// The view to read through, unless the snapshot is past its maximum age.
    pub(crate) fn view(&self) -> Result<View<'_>> {
        let age = self.begun.elapsed();
        let age_max = self.ticket.shared.snapshot_age_max;
        if age > age_max {
            return Err(Error::SnapshotTooOld {
                age_ms: age.as_millis() as u64,
                age_ms_max: age_max.as_millis() as u64,
            });
        }
        Ok(View {
            txn: &self.txn,
            tables: &self.ticket.shared.tables,
        })
    }

    /// The session record, if the session exists.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        read::session(self.view()?, id)
    }

    /// Every session record, in identifier order.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        read::sessions(self.view()?)
    }

    /// The task record, if the task exists.
    pub fn task(&self, session: &SessionId, task: &TaskId) -> Result<Option<TaskRecord>> {
        read::task(self.view()?, session, task)
    }

    /// Every task of a session, in task identifier order.
    pub fn tasks(&self, session: &SessionId) -> Result<Vec<TaskRecord>> {
        read::tasks(self.view()?, session)
    }

    /// Visits every task of every session, ordered by session then task; stops at the
    /// first error (a corrupt record, or an error returned by `visit`).
    pub fn for_each_task(&self, visit: impl FnMut(TaskRecord) -> Result<()>) -> Result<()> {
        read::for_each_task(self.view()?, visit)
    }

    /// The event `seq` of a session, if it exists.
    pub fn event(&self, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
        read::event(self.view()?, session, seq)
    }

    /// Up to `limit` events of a session from `from_seq` on, in sequence order.
    pub fn events(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        read::events(self.view()?, session, from_seq, limit)
    }
}
