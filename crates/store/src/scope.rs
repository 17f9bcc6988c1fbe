//! `WriteScope`: what a unit of work reads and writes through, on the writer thread.

use std::borrow::Cow;
use std::cell::Cell;
use std::path::Path;

use heed::{PutFlags, RwTxn};

use crate::error::{Error, Result};
use crate::ids::{SessionId, TaskId};
use crate::keys;
use crate::kv::{Builtin, KeyRange, Kv, KvWrite, TableRef, Visit};
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

/// One unit's view of the store: its part of the writer's current batch (on LMDB, a
/// nested write transaction; on PostgreSQL, its writes inside the batch's SQL
/// transaction). Everything written through it commits with the batch if the unit
/// returns `Ok`, and is discarded alone if the unit returns `Err` or panics.
///
/// A unit may run more than once (on LMDB, when the map must grow, the whole batch is
/// re-run), so it must have effects only through its `WriteScope`.
pub struct WriteScope<'t> {
    unit: &'t mut (dyn UnitBackend + 't),
}

/// A unit's part of a batch, as a backend provides it.
pub(crate) trait UnitBackend: KvWrite {
    /// Where the store is, for errors.
    fn location(&self) -> &Path;
    /// The batch's live SQL transaction.
    #[cfg(feature = "postgres")]
    fn postgres(&mut self) -> Result<crate::pg::SqlTransaction<'_>> {
        Err(Error::Unsupported {
            what: "the SQL transaction of a unit",
            backend: "LMDB",
        })
    }
}

/// A unit's nested LMDB write transaction.
pub(crate) struct LmdbScope<'t> {
    txn: RwTxn<'t>,
    shared: &'t Shared,
    /// Set when any operation hit LMDB's "map full". LMDB then leaves the whole batch's
    /// transaction unusable, and the unit may have turned the error into its own type or
    /// swallowed it, so the writer checks this flag rather than the unit's result.
    map_full_seen: Cell<bool>,
}

impl<'t> LmdbScope<'t> {
    pub(crate) fn new(txn: RwTxn<'t>, shared: &'t Shared) -> Self {
        LmdbScope {
            txn,
            shared,
            map_full_seen: Cell::new(false),
        }
    }

    /// The nested transaction back, and whether the unit hit "map full".
    pub(crate) fn into_parts(self) -> (RwTxn<'t>, bool) {
        (self.txn, self.map_full_seen.get())
    }
}

impl UnitBackend for LmdbScope<'_> {
    fn location(&self) -> &Path {
        &self.shared.dir
    }
}

impl std::fmt::Debug for WriteScope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteScope")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl<'t> WriteScope<'t> {
    /// A unit's scope over its backend's part of the batch.
    pub(crate) fn new(unit: &'t mut (dyn UnitBackend + 't)) -> Self {
        WriteScope { unit }
    }

    /// Where the store is: its directory (LMDB), or a description of its server and
    /// schema (PostgreSQL).
    pub fn location(&self) -> &Path {
        self.unit.location()
    }

    /// The batch's live SQL transaction, on a store opened with
    /// [`Store::open_postgres`](crate::Store::open_postgres): the application's own
    /// rows written through it commit with this unit's records, or not at all. The
    /// first call puts the unit's SQL behind a savepoint, so that a unit that fails is
    /// rolled back alone. On LMDB this is [`Error::Unsupported`].
    #[cfg(feature = "postgres")]
    pub fn postgres(&mut self) -> Result<crate::pg::SqlTransaction<'_>> {
        self.unit.postgres()
    }

    /// Reads through the backend's read half.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&dyn Kv) -> Result<T>) -> Result<T> {
        f(&*self.unit)
    }

    /// The backend's write half.
    fn kv(&mut self) -> &mut dyn KvWrite {
        &mut *self.unit
    }

    /// The session record, if the session exists.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.read(|kv| read::session(kv, id))
    }

    /// Every session record, in identifier order (all in memory: for a large store,
    /// [`sessions_from`](Self::sessions_from) reads them in bounded pieces).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        self.read(read::sessions)
    }

    /// Up to `limit` session records after `after` (from the first when `None`), in
    /// identifier order: a caller walks every session in bounded pieces by passing the
    /// last identifier of one piece to get the next.
    pub fn sessions_from(
        &self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>> {
        self.read(|kv| read::sessions_from(kv, after, limit))
    }

    /// Validates and writes a session record under its id.
    pub fn put_session(&mut self, record: &SessionRecord) -> Result<()> {
        let bytes = checked_encode(
            SESSIONS,
            || record.id.to_string(),
            record,
            record.validate(),
        )?;
        self.kv().put(
            T_SESSIONS,
            record.id.as_str().as_bytes(),
            &bytes,
            "writing a session",
        )?;
        self.index_active(&record.id, record.is_active())
    }

    /// Keeps `active_sessions` listing exactly the sessions with work or events waiting.
    fn index_active(&mut self, id: &SessionId, active: bool) -> Result<()> {
        let key = id.as_str().as_bytes();
        if active {
            let marker = checked_encode(
                ACTIVE_SESSIONS,
                || id.to_string(),
                &ActiveSessionValue,
                Ok(()),
            )?;
            self.kv()
                .put(T_ACTIVE, key, &marker, "indexing an active session")
        } else {
            self.kv()
                .delete(T_ACTIVE, key, "unindexing a session")
                .map(|_| ())
        }
    }

    /// Up to `limit` identifiers of sessions with open tasks or undelivered events, after
    /// `after` (from the first when `None`), in identifier order: what a recovery reads.
    pub fn active_sessions_from(
        &self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<SessionId>> {
        self.read(|kv| read::active_sessions_from(kv, after, limit))
    }

    /// Where a removed session's numbering stopped, if `id` was removed and not created
    /// again since.
    pub fn removed_session(&self, id: &SessionId) -> Result<Option<RemovedSession>> {
        self.read(|kv| read::removed_session(kv, id))
    }

    /// Records where a removed session's numbering stopped (with its record's deletion),
    /// so that a session created again under its identifier goes on from there.
    pub fn put_removed_session(&mut self, id: &SessionId, removed: &RemovedSession) -> Result<()> {
        let bytes = checked_encode(REMOVED_SESSIONS, || id.to_string(), removed, Ok(()))?;
        self.kv().put(
            T_REMOVED,
            id.as_str().as_bytes(),
            &bytes,
            "recording a removed session",
        )
    }

    /// Drops a removed session's numbering (the session is created again and carries it
    /// on); `false` if there was none.
    pub fn delete_removed_session(&mut self, id: &SessionId) -> Result<bool> {
        self.kv().delete(
            T_REMOVED,
            id.as_str().as_bytes(),
            "dropping a removed session",
        )
    }

    /// Deletes a session's record; `false` if there was none.
    ///
    /// Only the record: the caller first removes the session's tasks
    /// ([`delete_task`](Self::delete_task)), events ([`delete_events`](Self::delete_events)),
    /// dead letters and task expiry entries, in this unit or earlier ones, or they stay
    /// behind without their session.
    pub fn delete_session(&mut self, session: &SessionId) -> Result<bool> {
        let deleted = self.kv().delete(
            T_SESSIONS,
            session.as_str().as_bytes(),
            "deleting a session",
        )?;
        self.index_active(session, false)?;
        Ok(deleted)
    }

    /// The task record, if the task exists.
    pub fn task(&self, session: &SessionId, task: &TaskId) -> Result<Option<TaskRecord>> {
        self.read(|kv| read::task(kv, session, task))
    }

    /// Every task of a session, in task identifier order.
    pub fn tasks(&self, session: &SessionId) -> Result<Vec<TaskRecord>> {
        self.read(|kv| read::tasks(kv, session))
    }

    /// Up to `limit` tasks of a session after task `after` (from its first when `None`),
    /// in task identifier order, for walking a large session in bounded pieces.
    pub fn tasks_from(
        &self,
        session: &SessionId,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.read(|kv| read::tasks_from(kv, session, after, limit))
    }

    /// Deletes a task record; `false` if there was none. Its expiry entry, if it has one,
    /// is the caller's to delete ([`delete_task_expiry`](Self::delete_task_expiry)).
    pub fn delete_task(&mut self, session: &SessionId, task: &TaskId) -> Result<bool> {
        let key = keys::task_key(session, task);
        self.kv().delete(T_TASKS, &key, "deleting a task")
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
        self.kv().put(T_TASKS, &key, &bytes, "writing a task")
    }

    /// The event `seq` of a session, if it exists.
    pub fn event(&self, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
        self.read(|kv| read::event(kv, session, seq))
    }

    /// Up to `limit` events of a session from `from_seq` on, in sequence order.
    pub fn events(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        self.read(|kv| read::events(kv, session, from_seq, limit))
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
        if self
            .kv()
            .insert_new(T_EVENTS, &key, &bytes, "writing an event")?
        {
            Ok(())
        } else {
            Err(Error::EventExists {
                session: record.session.clone(),
                seq: record.seq,
            })
        }
    }

    /// Deletes the event `seq` of a session; `false` if there was none.
    pub fn delete_event(&mut self, session: &SessionId, seq: u64) -> Result<bool> {
        let key = keys::event_key(session, seq);
        self.kv().delete(T_EVENTS, &key, "deleting an event")
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
        self.kv()
            .delete_range(T_EVENTS, range, "deleting a session's events")
    }

    /// The dead letter of event `seq` of a session, if there is one.
    pub fn dead_letter(&self, session: &SessionId, seq: u64) -> Result<Option<DeadLetterRecord>> {
        self.read(|kv| read::dead_letter(kv, session, seq))
    }

    /// Up to `limit` dead letters of a session from `from_seq` on, in sequence order.
    pub fn dead_letters(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        self.read(|kv| read::dead_letters(kv, session, from_seq, limit))
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
        if self
            .kv()
            .insert_new(T_DEAD_LETTERS, &key, &bytes, "writing a dead letter")?
        {
            Ok(())
        } else {
            Err(Error::DeadLetterExists {
                session: event.session.clone(),
                seq: event.seq,
            })
        }
    }

    /// Deletes the dead letter of event `seq` of a session; `false` if there was none.
    pub fn delete_dead_letter(&mut self, session: &SessionId, seq: u64) -> Result<bool> {
        let key = keys::event_key(session, seq);
        self.kv()
            .delete(T_DEAD_LETTERS, &key, "deleting a dead letter")
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
        self.kv()
            .put(T_EXPIRY, &key, &bytes, "writing a task expiry entry")
    }

    /// Deletes a task expiry entry; `false` if there was none.
    pub fn delete_task_expiry(
        &mut self,
        expires_ms: u64,
        session: &SessionId,
        task: &TaskId,
    ) -> Result<bool> {
        let key = keys::expiry_key(expires_ms, session, task);
        self.kv()
            .delete(T_EXPIRY, &key, "deleting a task expiry entry")
    }

    /// Up to `limit` task expiry entries due at `now_ms` (`expires_ms <= now_ms`), oldest
    /// first, as `(expires_ms, session, task)`: what to prune next, in bounded units.
    pub fn expired_tasks(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SessionId, TaskId)>> {
        self.read(|kv| read::expired_tasks(kv, now_ms, limit))
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
        self.kv().put(
            TableRef::App(name),
            key,
            value,
            "writing an application table",
        )
    }

    /// Deletes from an application table (see `AppTable::delete`).
    pub(crate) fn app_delete(&mut self, name: &str, key: &[u8]) -> Result<bool> {
        check_app_key(name, key)?;
        self.kv().delete(
            TableRef::App(name),
            key,
            "deleting from an application table",
        )
    }
}

const T_SESSIONS: TableRef<'static> = TableRef::Builtin(Builtin::Sessions);
const T_TASKS: TableRef<'static> = TableRef::Builtin(Builtin::Tasks);
const T_EVENTS: TableRef<'static> = TableRef::Builtin(Builtin::Events);
const T_DEAD_LETTERS: TableRef<'static> = TableRef::Builtin(Builtin::DeadLetters);
const T_EXPIRY: TableRef<'static> = TableRef::Builtin(Builtin::TaskExpiry);
const T_ACTIVE: TableRef<'static> = TableRef::Builtin(Builtin::ActiveSessions);
const T_REMOVED: TableRef<'static> = TableRef::Builtin(Builtin::RemovedSessions);

impl LmdbScope<'_> {
    fn view(&self) -> View<'_> {
        View {
            txn: &self.txn,
            tables: &self.shared.tables,
        }
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

    /// The table to write, which a store opened for writing always has (`Store::open`
    /// creates every built-in table, and a `WriteScope` exists only in a store so opened).
    fn table(&self, table: TableRef<'_>) -> Result<Table> {
        let found = self.view().table(table)?;
        found.ok_or_else(|| {
            debug_assert!(
                false,
                "invariant violation: a write scope without every built-in table"
            );
            Error::ReadOnly {
                dir: self.shared.dir.clone(),
            }
        })
    }
}

impl Kv for LmdbScope<'_> {
    fn has_table(&self, table: TableRef<'_>) -> bool {
        self.view().has_table(table)
    }

    fn get(
        &self,
        table: TableRef<'_>,
        key: &[u8],
        operation: &'static str,
    ) -> Result<Option<Cow<'_, [u8]>>> {
        let database = self.table(table)?;
        Ok(database
            .get(&self.txn, key)
            .map_err(|e| self.lmdb(operation, e))?
            .map(Cow::Borrowed))
    }

    fn scan(
        &self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        limit: usize,
        operation: &'static str,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        self.view().scan(table, range, limit, operation, visit)
    }
}

impl KvWrite for LmdbScope<'_> {
    fn put(
        &mut self,
        table: TableRef<'_>,
        key: &[u8],
        value: &[u8],
        operation: &'static str,
    ) -> Result<()> {
        let database = self.table(table)?;
        database
            .put(&mut self.txn, key, value)
            .map_err(|e| self.lmdb(operation, e))
    }

    fn insert_new(
        &mut self,
        table: TableRef<'_>,
        key: &[u8],
        value: &[u8],
        operation: &'static str,
    ) -> Result<bool> {
        let database = self.table(table)?;
        match database.put_with_flags(&mut self.txn, PutFlags::NO_OVERWRITE, key, value) {
            Ok(()) => Ok(true),
            Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => Ok(false),
            Err(error) => Err(self.lmdb(operation, error)),
        }
    }

    fn delete(&mut self, table: TableRef<'_>, key: &[u8], operation: &'static str) -> Result<bool> {
        let database = self.table(table)?;
        database
            .delete(&mut self.txn, key)
            .map_err(|e| self.lmdb(operation, e))
    }

    fn delete_range(
        &mut self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        operation: &'static str,
    ) -> Result<u64> {
        let database = self.table(table)?;
        database
            .delete_range(&mut self.txn, &range)
            .map(|deleted| deleted as u64)
            .map_err(|e| self.lmdb(operation, e))
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
