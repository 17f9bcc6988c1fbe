//! `WriteScope`: what a unit of work reads and writes through, on the writer thread.

use std::cell::Cell;

use heed::types::Bytes;
use heed::{PutFlags, RwTxn};

use crate::error::{Error, Result};
use crate::ids::{SessionId, TaskId};
use crate::keys;
use crate::read::{self, View};
use crate::records::codec::{self, Versioned};
use crate::records::{
    ActiveSessionValue, DeadLetterRecord, EventRecord, RemovedSession, SessionRecord,
    TaskExpiryValue, TaskRecord,
};
use crate::store::Shared;
use crate::tables::{
    ACTIVE_SESSIONS, DEAD_LETTERS, EVENTS, REMOVED_SESSIONS, SESSIONS, TASK_EXPIRY, TASKS, Table,
};

/// The longest application table key LMDB accepts (its default `MDB_MAXKEYSIZE`).
pub const APP_KEY_BYTES_MAX: usize = 511;
/// The largest application table value, in bytes once encoded.
pub const APP_VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One unit's view of the store: a nested write transaction inside the writer's current
/// batch. Everything written through it commits with the batch if the unit returns
/// `Ok`, and is discarded alone if the unit returns `Err` or panics.
///
/// A unit may run more than once (when the map must grow, the whole batch is re-run), so
/// it must have effects only through its `WriteScope`.
pub struct WriteScope<'t> {
    txn: RwTxn<'t>,
    shared: &'t Shared,
    /// Set when any operation hit LMDB's "map full". LMDB then leaves the whole batch's
    /// transaction unusable, and the unit may have turned the error into its own type or
    /// swallowed it, so the writer checks this flag rather than the unit's result.
    map_full_seen: Cell<bool>,
}

impl std::fmt::Debug for WriteScope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteScope")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl<'t> WriteScope<'t> {
    pub(crate) fn new(txn: RwTxn<'t>, shared: &'t Shared) -> Self {
        WriteScope {
            txn,
            shared,
            map_full_seen: Cell::new(false),
        }
    }

    /// The nested transaction back, and whether the unit hit "map full".
    pub(crate) fn into_parts(self) -> (RwTxn<'t>, bool) {
        (self.txn, self.map_full_seen.get())
    }

    pub(crate) fn view(&self) -> View<'_> {
        View {
            txn: &self.txn,
            tables: &self.shared.tables,
        }
    }

    /// Remembers "map full" before handing any error to the unit.
    fn observe<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result
            && error.is_map_full()
        {
            self.map_full_seen.set(true);
        }
        result
    }

    fn lmdb(&self, operation: &'static str, error: heed::Error) -> Error {
        // LMDB writes pages out during a large transaction (spilling), so a full file
        // system can show here as well as at the commit.
        if let Some(free_bytes) = crate::writer::storage_full(&self.shared.dir, &error) {
            return Error::StorageFull {
                dir: self.shared.dir.clone(),
                free_bytes,
            };
        }
        let error = Error::lmdb(operation, error);
        if error.is_map_full() {
            self.map_full_seen.set(true);
        }
        error
    }

    /// The session record, if the session exists.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.observe(read::session(self.view(), id))
    }

    /// Every session record, in identifier order (all in memory: for a large store,
    /// [`sessions_from`](Self::sessions_from) reads them in bounded pieces).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        self.observe(read::sessions(self.view()))
    }

    /// Up to `limit` session records after `after` (from the first when `None`), in
    /// identifier order: a caller walks every session in bounded pieces by passing the
    /// last identifier of one piece to get the next.
    pub fn sessions_from(
        &self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>> {
        self.observe(read::sessions_from(self.view(), after, limit))
    }

    /// Validates and writes a session record under its id.
    pub fn put_session(&mut self, record: &SessionRecord) -> Result<()> {
        let bytes = checked_encode(
            SESSIONS,
            || record.id.to_string(),
            record,
            record.validate(),
        )?;
        self.shared
            .tables
            .sessions
            .put(&mut self.txn, record.id.as_str().as_bytes(), &bytes)
            .map_err(|e| self.lmdb("writing a session", e))?;
        self.index_active(&record.id, record.is_active())
    }

    /// Keeps `active_sessions` listing exactly the sessions with work or events waiting.
    fn index_active(&mut self, id: &SessionId, active: bool) -> Result<()> {
        let table = self.later_table(self.shared.tables.active_sessions)?;
        let key = id.as_str().as_bytes();
        if active {
            let marker = checked_encode(
                ACTIVE_SESSIONS,
                || id.to_string(),
                &ActiveSessionValue,
                Ok(()),
            )?;
            table
                .put(&mut self.txn, key, &marker)
                .map_err(|e| self.lmdb("indexing an active session", e))
        } else {
            table
                .delete(&mut self.txn, key)
                .map(|_| ())
                .map_err(|e| self.lmdb("unindexing a session", e))
        }
    }

    /// Up to `limit` identifiers of sessions with open tasks or undelivered events, after
    /// `after` (from the first when `None`), in identifier order: what a recovery reads.
    pub fn active_sessions_from(
        &self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<SessionId>> {
        self.observe(read::active_sessions_from(self.view(), after, limit))
    }

    /// Where a removed session's numbering stopped, if `id` was removed and not created
    /// again since.
    pub fn removed_session(&self, id: &SessionId) -> Result<Option<RemovedSession>> {
        self.observe(read::removed_session(self.view(), id))
    }

    /// Records where a removed session's numbering stopped (with its record's deletion),
    /// so that a session created again under its identifier goes on from there.
    pub fn put_removed_session(&mut self, id: &SessionId, removed: &RemovedSession) -> Result<()> {
        let bytes = checked_encode(REMOVED_SESSIONS, || id.to_string(), removed, Ok(()))?;
        let table = self.later_table(self.shared.tables.removed_sessions)?;
        table
            .put(&mut self.txn, id.as_str().as_bytes(), &bytes)
            .map_err(|e| self.lmdb("recording a removed session", e))
    }

    /// Drops a removed session's numbering (the session is created again and carries it
    /// on); `false` if there was none.
    pub fn delete_removed_session(&mut self, id: &SessionId) -> Result<bool> {
        let table = self.later_table(self.shared.tables.removed_sessions)?;
        table
            .delete(&mut self.txn, id.as_str().as_bytes())
            .map_err(|e| self.lmdb("dropping a removed session", e))
    }

    /// Deletes a session's record; `false` if there was none.
    ///
    /// Only the record: the caller first removes the session's tasks
    /// ([`delete_task`](Self::delete_task)), events ([`delete_events`](Self::delete_events)),
    /// dead letters and task expiry entries, in this unit or earlier ones, or they stay
    /// behind without their session.
    pub fn delete_session(&mut self, session: &SessionId) -> Result<bool> {
        let deleted = self
            .shared
            .tables
            .sessions
            .delete(&mut self.txn, session.as_str().as_bytes())
            .map_err(|e| self.lmdb("deleting a session", e))?;
        self.index_active(session, false)?;
        Ok(deleted)
    }

    /// The task record, if the task exists.
    pub fn task(&self, session: &SessionId, task: &TaskId) -> Result<Option<TaskRecord>> {
        self.observe(read::task(self.view(), session, task))
    }

    /// Every task of a session, in task identifier order.
    pub fn tasks(&self, session: &SessionId) -> Result<Vec<TaskRecord>> {
        self.observe(read::tasks(self.view(), session))
    }

    /// Up to `limit` tasks of a session after task `after` (from its first when `None`),
    /// in task identifier order, for walking a large session in bounded pieces.
    pub fn tasks_from(
        &self,
        session: &SessionId,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.observe(read::tasks_from(self.view(), session, after, limit))
    }

    /// Deletes a task record; `false` if there was none. Its expiry entry, if it has one,
    /// is the caller's to delete ([`delete_task_expiry`](Self::delete_task_expiry)).
    pub fn delete_task(&mut self, session: &SessionId, task: &TaskId) -> Result<bool> {
        let key = keys::task_key(session, task);
        self.shared
            .tables
            .tasks
            .delete(&mut self.txn, &key)
            .map_err(|e| self.lmdb("deleting a task", e))
    }

    /// Validates and writes a task record under `(session, id)`.
    pub fn put_task(&mut self, record: &TaskRecord) -> Result<()> {
        let bytes = checked_encode(
            TASKS,
            || format!("{}/{}", record.session, record.id),
            record,
            record.validate(),
        )?;
        let key = keys::task_key(&record.session, &record.id);
        self.shared
            .tables
            .tasks
            .put(&mut self.txn, &key, &bytes)
            .map_err(|e| self.lmdb("writing a task", e))
    }

    /// The event `seq` of a session, if it exists.
    pub fn event(&self, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
        self.observe(read::event(self.view(), session, seq))
    }

    /// Up to `limit` events of a session from `from_seq` on, in sequence order.
    pub fn events(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        self.observe(read::events(self.view(), session, from_seq, limit))
    }

    /// Validates and appends an event under `(session, seq)`. An event is never
    /// overwritten: an existing `seq` is [`Error::EventExists`].
    pub fn put_event(&mut self, record: &EventRecord) -> Result<()> {
        let bytes = checked_encode(
            EVENTS,
            || format!("{}/{}", record.session, record.seq),
            record,
            record.validate(),
        )?;
        let key = keys::event_key(&record.session, record.seq);
        match self.shared.tables.events.put_with_flags(
            &mut self.txn,
            PutFlags::NO_OVERWRITE,
            &key,
            &bytes,
        ) {
            Ok(()) => Ok(()),
            Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => Err(Error::EventExists {
                session: record.session.clone(),
                seq: record.seq,
            }),
            Err(error) => Err(self.lmdb("writing an event", error)),
        }
    }

    /// Deletes the event `seq` of a session; `false` if there was none.
    pub fn delete_event(&mut self, session: &SessionId, seq: u64) -> Result<bool> {
        let key = keys::event_key(session, seq);
        self.shared
            .tables
            .events
            .delete(&mut self.txn, &key)
            .map_err(|e| self.lmdb("deleting an event", e))
    }

    /// Deletes every event of a session (delivered ones are gone already; this removes
    /// the undelivered rest, as when the session itself is removed); returns how many.
    pub fn delete_events(&mut self, session: &SessionId) -> Result<u64> {
        let start = keys::session_prefix(session);
        let end = keys::session_end(session);
        let range = (
            std::ops::Bound::Included(start.as_slice()),
            std::ops::Bound::Excluded(end.as_slice()),
        );
        self.shared
            .tables
            .events
            .delete_range(&mut self.txn, &range)
            .map(|deleted| deleted as u64)
            .map_err(|e| self.lmdb("deleting a session's events", e))
    }

    /// The dead letter of event `seq` of a session, if there is one.
    pub fn dead_letter(&self, session: &SessionId, seq: u64) -> Result<Option<DeadLetterRecord>> {
        self.observe(read::dead_letter(self.view(), session, seq))
    }

    /// Up to `limit` dead letters of a session from `from_seq` on, in sequence order.
    pub fn dead_letters(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        self.observe(read::dead_letters(self.view(), session, from_seq, limit))
    }

    /// Validates and writes a dead letter under its event's `(session, seq)`; the move
    /// out of the outbox (deleting the event, advancing the session) belongs in the same
    /// unit. A dead letter is never overwritten: an existing one is
    /// [`Error::DeadLetterExists`].
    pub fn put_dead_letter(&mut self, record: &DeadLetterRecord) -> Result<()> {
        let event = &record.event;
        let bytes = checked_encode(
            DEAD_LETTERS,
            || format!("{}/{}", event.session, event.seq),
            record,
            record.validate(),
        )?;
        let key = keys::event_key(&event.session, event.seq);
        let table = self.later_table(self.shared.tables.dead_letters)?;
        match table.put_with_flags(&mut self.txn, PutFlags::NO_OVERWRITE, &key, &bytes) {
            Ok(()) => Ok(()),
            Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => Err(Error::DeadLetterExists {
                session: event.session.clone(),
                seq: event.seq,
            }),
            Err(error) => Err(self.lmdb("writing a dead letter", error)),
        }
    }

    /// Deletes the dead letter of event `seq` of a session; `false` if there was none.
    pub fn delete_dead_letter(&mut self, session: &SessionId, seq: u64) -> Result<bool> {
        let key = keys::event_key(session, seq);
        let table = self.later_table(self.shared.tables.dead_letters)?;
        table
            .delete(&mut self.txn, &key)
            .map_err(|e| self.lmdb("deleting a dead letter", e))
    }

    /// Records that task `(session, task)` may be pruned from `expires_ms` (Unix
    /// milliseconds) on. Writing the same entry again changes nothing; a task given a
    /// new time needs its old entry deleted.
    pub fn put_task_expiry(
        &mut self,
        expires_ms: u64,
        session: &SessionId,
        task: &TaskId,
    ) -> Result<()> {
        let key = keys::expiry_key(expires_ms, session, task);
        let bytes = checked_encode(
            TASK_EXPIRY,
            || keys::printable_expiry(&key),
            &TaskExpiryValue,
            Ok(()),
        )?;
        let table = self.later_table(self.shared.tables.task_expiry)?;
        table
            .put(&mut self.txn, &key, &bytes)
            .map_err(|e| self.lmdb("writing a task expiry entry", e))
    }

    /// Deletes a task expiry entry; `false` if there was none.
    pub fn delete_task_expiry(
        &mut self,
        expires_ms: u64,
        session: &SessionId,
        task: &TaskId,
    ) -> Result<bool> {
        let key = keys::expiry_key(expires_ms, session, task);
        let table = self.later_table(self.shared.tables.task_expiry)?;
        table
            .delete(&mut self.txn, &key)
            .map_err(|e| self.lmdb("deleting a task expiry entry", e))
    }

    /// Up to `limit` task expiry entries due at `now_ms` (`expires_ms <= now_ms`), oldest
    /// first, as `(expires_ms, session, task)`: what to prune next, in bounded units.
    pub fn expired_tasks(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SessionId, TaskId)>> {
        self.observe(read::expired_tasks(self.view(), now_ms, limit))
    }

    /// A table added after the first stores of schema 2. `Store::open` creates it, and a
    /// `WriteScope` exists only in a store so opened, so it is always there.
    fn later_table(&self, table: Option<Table>) -> Result<Table> {
        table.ok_or_else(|| {
            debug_assert!(
                false,
                "invariant violation: a write scope without every built-in table"
            );
            Error::ReadOnly {
                dir: self.shared.dir.clone(),
            }
        })
    }

    /// Writes encoded bytes into an application table (see `AppTable::put`).
    pub(crate) fn app_put(&mut self, name: &str, key: &[u8], value: &[u8]) -> Result<()> {
        check_app_key(name, key)?;
        if value.len() > APP_VALUE_BYTES_MAX {
            return Err(Error::InvalidRecord {
                table: "app",
                key: format!("{name}:{}", keys::printable(key)),
                reason: format!("value is {} bytes, over {APP_VALUE_BYTES_MAX}", value.len()),
            });
        }
        let database = self.observe(read::app_table(&self.shared.tables, name))?;
        database
            .put(&mut self.txn, key, value)
            .map_err(|e| self.lmdb("writing an application table", e))
    }

    /// Deletes from an application table (see `AppTable::delete`).
    pub(crate) fn app_delete(&mut self, name: &str, key: &[u8]) -> Result<bool> {
        check_app_key(name, key)?;
        let database = self.observe(read::app_table(&self.shared.tables, name))?;
        database
            .remap_data_type::<Bytes>()
            .delete(&mut self.txn, key)
            .map_err(|e| self.lmdb("deleting from an application table", e))
    }
}

/// A record's versioned bytes, once its own validation passed.
fn checked_encode<T: Versioned>(
    table: &'static str,
    key: impl FnOnce() -> String,
    record: &T,
    validation: std::result::Result<(), String>,
) -> Result<Vec<u8>> {
    validation
        .and_then(|()| codec::encode(record))
        .map_err(|reason| Error::InvalidRecord {
            table,
            key: key(),
            reason,
        })
}

/// LMDB refuses empty keys and keys over its maximum size; say so before it does.
pub(crate) fn check_app_key(name: &str, key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > APP_KEY_BYTES_MAX {
        return Err(Error::InvalidKey {
            table: name.into(),
            reason: format!("key is {} bytes, not 1..={APP_KEY_BYTES_MAX}", key.len()),
        });
    }
    Ok(())
}
