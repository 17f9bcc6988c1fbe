//! `Snapshot`: a consistent read-only view of the store, usable from any thread.

use std::sync::Arc;

use heed::{RoTxn, WithoutTls};

use crate::error::Result;
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
/// could wait for a map growth that waits for the snapshot).
pub struct Snapshot {
    // Field order is drop order: the read transaction ends before the ticket leaves the
    // map gate, which is what makes a map resize sound.
    txn: RoTxn<'static, WithoutTls>,
    ticket: GateTicket,
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
        shared.gate.enter();
        let ticket = GateTicket {
            shared: Arc::clone(shared),
        };
        let txn = shared
            .env
            .clone()
            .static_read_txn()
            .map_err(|e| crate::Error::lmdb("beginning a snapshot", e))?;
        Ok(Snapshot { txn, ticket })
    }

    pub(crate) fn view(&self) -> View<'_> {
        View {
            txn: &self.txn,
            tables: &self.ticket.shared.tables,
        }
    }

    /// The session record, if the session exists.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        read::session(self.view(), id)
    }

    /// Every session record, in identifier order.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        read::sessions(self.view())
    }

    /// The task record, if the task exists.
    pub fn task(&self, session: &SessionId, task: &TaskId) -> Result<Option<TaskRecord>> {
        read::task(self.view(), session, task)
    }

    /// Every task of a session, in task identifier order.
    pub fn tasks(&self, session: &SessionId) -> Result<Vec<TaskRecord>> {
        read::tasks(self.view(), session)
    }

    /// Visits every task of every session, ordered by session then task; stops at the
    /// first error (a corrupt record, or an error returned by `visit`).
    pub fn for_each_task(&self, visit: impl FnMut(TaskRecord) -> Result<()>) -> Result<()> {
        read::for_each_task(self.view(), visit)
    }

    /// The event `seq` of a session, if it exists.
    pub fn event(&self, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
        read::event(self.view(), session, seq)
    }

    /// Up to `limit` events of a session from `from_seq` on, in sequence order.
    pub fn events(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        read::events(self.view(), session, from_seq, limit)
    }
}
