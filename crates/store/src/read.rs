//! Reads shared by `WriteScope` and `Snapshot`: every value is decoded from the raw bytes
//! (so a failure can name its key) with its version (`records::codec`), then validated and
//! checked against its key. A record that fails any of these is `Error::Corrupt`.

use std::borrow::Cow;
use std::ops::Bound;

use heed::types::{Bytes, SerdeBincode};
use heed::{BytesDecode, RoTxn};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::ids::{SessionId, TaskId};
use crate::keys;
use crate::kv::{Builtin, KeyRange, Kv, TableRef, Visit};
use crate::records::codec::{self, Versioned};
use crate::records::{
    ActiveSessionValue, DeadLetterRecord, EventRecord, RemovedSession, SessionRecord,
    TaskExpiryValue, TaskRecord,
};
use crate::tables::{
    ACTIVE_SESSIONS, DEAD_LETTERS, EVENTS, REMOVED_SESSIONS, SESSIONS, TASK_EXPIRY, TASKS, Table,
    Tables,
};

/// A read transaction and the tables: what a `WriteScope` or a `Snapshot` reads through.
/// (Nominally `pub` because the sealed `ReadScope` trait returns it; unreachable outside.)
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub(crate) txn: &'a RoTxn<'a>,
    pub(crate) tables: &'a Tables,
}

impl std::fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("txn_id", &self.txn.id())
            .finish_non_exhaustive()
    }
}

/// Decodes a versioned record; a failure is `Corrupt` naming the key.
fn decode_record<T: Versioned>(
    table: &'static str,
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T> {
    codec::decode(bytes).map_err(|reason| Error::Corrupt {
        table,
        key: key(),
        reason,
    })
}

/// Decodes a value with heed's `SerdeBincode`; a failure is `Corrupt` naming the key.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T> {
    SerdeBincode::<T>::bytes_decode(bytes).map_err(|error| Error::Corrupt {
        table,
        key: key(),
        reason: format!("cannot decode the value: {error}"),
    })
}

/// Turns a record's `validate` (or a key check) into `Corrupt`.
fn checked(
    table: &'static str,
    key: impl FnOnce() -> String,
    result: Result<(), String>,
) -> Result<()> {
    result.map_err(|reason| Error::Corrupt {
        table,
        key: key(),
        reason,
    })
}

/// Decodes and checks a session record stored under `key`.
fn session_from(key: &[u8], bytes: &[u8]) -> Result<SessionRecord> {
    let printable = || keys::printable(key);
    let record: SessionRecord = decode_record(SESSIONS, printable, bytes)?;
    checked(SESSIONS, printable, record.validate())?;
    let expected = record.id.as_str().as_bytes();
    checked(
        SESSIONS,
        printable,
        if expected == key {
            Ok(())
        } else {
            Err(format!(
                "record is for session {} but stored under another key",
                record.id
            ))
        },
    )?;
    Ok(record)
}

/// Decodes and checks a task record stored under `key`.
fn task_from(key: &[u8], bytes: &[u8]) -> Result<TaskRecord> {
    let printable = || keys::printable_task(key);
    let record: TaskRecord = decode_record(TASKS, printable, bytes)?;
    checked(TASKS, printable, record.validate())?;
    checked(
        TASKS,
        printable,
        if keys::task_key(&record.session, &record.id) == key {
            Ok(())
        } else {
            Err(format!(
                "record is for task {}/{} but stored under another key",
                record.session, record.id
            ))
        },
    )?;
    Ok(record)
}

/// Decodes and checks an event record stored under `key`.
fn event_from(key: &[u8], bytes: &[u8]) -> Result<EventRecord> {
    let printable = || keys::printable_event(key);
    let record: EventRecord = decode_record(EVENTS, printable, bytes)?;
    checked(EVENTS, printable, record.validate())?;
    checked(
        EVENTS,
        printable,
        if keys::event_key(&record.session, record.seq) == key {
            Ok(())
        } else {
            Err(format!(
                "record is event {}/{} but stored under another key",
                record.session, record.seq
            ))
        },
    )?;
    Ok(record)
}

/// Decodes and checks a dead-letter record stored under `key`.
fn dead_letter_from(key: &[u8], bytes: &[u8]) -> Result<DeadLetterRecord> {
    let printable = || keys::printable_event(key);
    let record: DeadLetterRecord = decode_record(DEAD_LETTERS, printable, bytes)?;
    checked(DEAD_LETTERS, printable, record.validate())?;
    let event = &record.event;
    checked(
        DEAD_LETTERS,
        printable,
        if keys::event_key(&event.session, event.seq) == key {
            Ok(())
        } else {
            Err(format!(
                "record is event {}/{} but stored under another key",
                event.session, event.seq
            ))
        },
    )?;
    Ok(record)
}

/// Decodes and checks a task expiry entry: its key holds the time and the identifiers,
/// its value only the version marker.
fn expiry_from(key: &[u8], bytes: &[u8]) -> Result<(u64, SessionId, TaskId)> {
    let printable = || keys::printable_expiry(key);
    let TaskExpiryValue = decode_record(TASK_EXPIRY, printable, bytes)?;
    keys::parse_expiry_key(key).map_err(|reason| Error::Corrupt {
        table: TASK_EXPIRY,
        key: printable(),
        reason,
    })
}

/// The LMDB reads of the seam: a read transaction's view of the tables.
impl View<'_> {
    /// The table's handle; `None` for a later table a store opened read-only lacks.
    pub(crate) fn table(&self, table: TableRef<'_>) -> Result<Option<Table>> {
        let tables = self.tables;
        Ok(match table {
            TableRef::Builtin(builtin) => match builtin {
                Builtin::Sessions => Some(tables.sessions),
                Builtin::Tasks => Some(tables.tasks),
                Builtin::Events => Some(tables.events),
                Builtin::DeadLetters => tables.dead_letters,
                Builtin::TaskExpiry => tables.task_expiry,
                Builtin::ActiveSessions => tables.active_sessions,
                Builtin::RemovedSessions => tables.removed_sessions,
            },
            TableRef::App(name) => Some(*app_table(tables, name)?),
        })
    }
}

impl Kv for View<'_> {
    fn has_table(&self, table: TableRef<'_>) -> bool {
        matches!(self.table(table), Ok(Some(_)))
    }

    fn get(
        &self,
        table: TableRef<'_>,
        key: &[u8],
        operation: &'static str,
    ) -> Result<Option<Cow<'_, [u8]>>> {
        let Some(database) = self.table(table)? else {
            return Ok(None);
        };
        Ok(database
            .get(self.txn, key)
            .map_err(lmdb(operation))?
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
        let Some(database) = self.table(table)? else {
            return Ok(());
        };
        if limit == 0 {
            return Ok(());
        }
        let mut visited = 0_usize;
        let mut each = |entry: heed::Result<(&[u8], &[u8])>| -> Result<bool> {
            let (key, value) = entry.map_err(lmdb(operation))?;
            visit(key, value)?;
            visited += 1;
            Ok(visited < limit)
        };
        // LMDB refuses an empty key as a cursor position, so an empty lower bound is a
        // scan from the first key.
        let range = match range.0 {
            Bound::Included([]) => (Bound::Unbounded, range.1),
            _ => range,
        };
        if matches!(range, (Bound::Unbounded, Bound::Unbounded)) {
            for entry in database.iter(self.txn).map_err(lmdb(operation))? {
                if !each(entry)? {
                    break;
                }
            }
        } else {
            for entry in database.range(self.txn, &range).map_err(lmdb(operation))? {
                if !each(entry)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn lmdb(operation: &'static str) -> impl FnOnce(heed::Error) -> Error {
    move |error| Error::lmdb(operation, error)
}

const SESSIONS_T: TableRef<'static> = TableRef::Builtin(Builtin::Sessions);
const TASKS_T: TableRef<'static> = TableRef::Builtin(Builtin::Tasks);
const EVENTS_T: TableRef<'static> = TableRef::Builtin(Builtin::Events);
const DEAD_LETTERS_T: TableRef<'static> = TableRef::Builtin(Builtin::DeadLetters);
const TASK_EXPIRY_T: TableRef<'static> = TableRef::Builtin(Builtin::TaskExpiry);
const ACTIVE_SESSIONS_T: TableRef<'static> = TableRef::Builtin(Builtin::ActiveSessions);
const REMOVED_SESSIONS_T: TableRef<'static> = TableRef::Builtin(Builtin::RemovedSessions);

/// Everything in a table.
const ALL: KeyRange<'static> = (Bound::Unbounded, Bound::Unbounded);

/// Decodes up to `limit` entries of `range`.
fn collect<T>(
    kv: &dyn Kv,
    table: TableRef<'_>,
    range: KeyRange<'_>,
    limit: usize,
    operation: &'static str,
    decode: impl Fn(&[u8], &[u8]) -> Result<T>,
) -> Result<Vec<T>> {
    let mut records = Vec::new();
    kv.scan(table, range, limit, operation, &mut |key, bytes| {
        records.push(decode(key, bytes)?);
        Ok(())
    })?;
    Ok(records)
}

/// Visits every entry of a table, decoded and checked by `decode`; stops at the first
/// error.
fn for_each_in<T>(
    kv: &dyn Kv,
    table: TableRef<'_>,
    operation: &'static str,
    decode: impl Fn(&[u8], &[u8]) -> Result<T>,
    mut visit: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    kv.scan(table, ALL, usize::MAX, operation, &mut |key, bytes| {
        visit(decode(key, bytes)?)
    })
}

/// The range of one session's keys in the tasks, events and dead-letters tables, from
/// `start` on.
fn session_range<'k>(start: Bound<&'k [u8]>, end: &'k [u8]) -> KeyRange<'k> {
    (start, Bound::Excluded(end))
}

pub(crate) fn session(kv: &dyn Kv, id: &SessionId) -> Result<Option<SessionRecord>> {
    let key = id.as_str().as_bytes();
    match kv.get(SESSIONS_T, key, "reading a session")? {
        Some(bytes) => session_from(key, &bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn sessions(kv: &dyn Kv) -> Result<Vec<SessionRecord>> {
    collect(
        kv,
        SESSIONS_T,
        ALL,
        usize::MAX,
        "listing sessions",
        session_from,
    )
}

/// Up to `limit` session records after `after` (from the first without it), in
/// identifier order.
pub(crate) fn sessions_from(
    kv: &dyn Kv,
    after: Option<&SessionId>,
    limit: usize,
) -> Result<Vec<SessionRecord>> {
    let start = after.map(|id| id.as_str().as_bytes());
    let range = (
        start.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    );
    collect(
        kv,
        SESSIONS_T,
        range,
        limit,
        "listing sessions",
        session_from,
    )
}

pub(crate) fn task(kv: &dyn Kv, session: &SessionId, task: &TaskId) -> Result<Option<TaskRecord>> {
    let key = keys::task_key(session, task);
    match kv.get(TASKS_T, &key, "reading a task")? {
        Some(bytes) => task_from(&key, &bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn tasks(kv: &dyn Kv, session: &SessionId) -> Result<Vec<TaskRecord>> {
    tasks_from(kv, session, None, usize::MAX)
}

/// Up to `limit` tasks of a session after task `after` (from its first without it), in
/// task identifier order.
pub(crate) fn tasks_from(
    kv: &dyn Kv,
    session: &SessionId,
    after: Option<&TaskId>,
    limit: usize,
) -> Result<Vec<TaskRecord>> {
    let start = match after {
        Some(task) => Bound::Excluded(keys::task_key(session, task)),
        None => Bound::Included(keys::session_prefix(session)),
    };
    let end = keys::session_end(session);
    let range = session_range(start.as_ref().map(Vec::as_slice), &end);
    collect(
        kv,
        TASKS_T,
        range,
        limit,
        "listing a session's tasks",
        task_from,
    )
}

pub(crate) fn for_each_task(
    kv: &dyn Kv,
    visit: impl FnMut(TaskRecord) -> Result<()>,
) -> Result<()> {
    for_each_in(kv, TASKS_T, "listing tasks", task_from, visit)
}

pub(crate) fn event(kv: &dyn Kv, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
    let key = keys::event_key(session, seq);
    match kv.get(EVENTS_T, &key, "reading an event")? {
        Some(bytes) => event_from(&key, &bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn events(
    kv: &dyn Kv,
    session: &SessionId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<EventRecord>> {
    let start = keys::event_key(session, from_seq);
    let end = keys::session_end(session);
    let range = session_range(Bound::Included(&start), &end);
    collect(
        kv,
        EVENTS_T,
        range,
        limit,
        "listing a session's events",
        event_from,
    )
}

pub(crate) fn dead_letter(
    kv: &dyn Kv,
    session: &SessionId,
    seq: u64,
) -> Result<Option<DeadLetterRecord>> {
    let key = keys::event_key(session, seq);
    match kv.get(DEAD_LETTERS_T, &key, "reading a dead letter")? {
        Some(bytes) => dead_letter_from(&key, &bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn dead_letters(
    kv: &dyn Kv,
    session: &SessionId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<DeadLetterRecord>> {
    let start = keys::event_key(session, from_seq);
    let end = keys::session_end(session);
    let range = session_range(Bound::Included(&start), &end);
    collect(
        kv,
        DEAD_LETTERS_T,
        range,
        limit,
        "listing a session's dead letters",
        dead_letter_from,
    )
}

/// An active session must be in the `active_sessions` index (recovery reads only the
/// index: a session missing from it would never resume).
pub(crate) fn require_indexed_active(kv: &dyn Kv, id: &SessionId) -> Result<()> {
    if !kv.has_table(ACTIVE_SESSIONS_T) {
        return Ok(());
    }
    match kv.get(
        ACTIVE_SESSIONS_T,
        id.as_str().as_bytes(),
        "reading the active-session index",
    )? {
        Some(_) => Ok(()),
        None => Err(Error::Corrupt {
            table: ACTIVE_SESSIONS,
            key: id.to_string(),
            reason: "the session has work or events waiting but is not in the index".into(),
        }),
    }
}

/// The index lists exactly the active sessions: as many entries (each valid) as there
/// are active session records.
pub(crate) fn require_active_index_count(kv: &dyn Kv, active: u64) -> Result<()> {
    let mut indexed = 0_u64;
    let mut after: Option<SessionId> = None;
    loop {
        let piece = active_sessions_from(kv, after.as_ref(), 4096)?;
        let Some(last) = piece.last() else { break };
        indexed += piece.len() as u64;
        after = Some(last.clone());
    }
    if kv.has_table(ACTIVE_SESSIONS_T) && indexed != active {
        return Err(Error::Corrupt {
            table: ACTIVE_SESSIONS,
            key: String::new(),
            reason: format!("{indexed} sessions indexed as active, {active} are"),
        });
    }
    Ok(())
}

/// Up to `limit` identifiers of active sessions after `after`, in identifier order.
pub(crate) fn active_sessions_from(
    kv: &dyn Kv,
    after: Option<&SessionId>,
    limit: usize,
) -> Result<Vec<SessionId>> {
    let start = after.map(|id| id.as_str().as_bytes());
    let range: KeyRange<'_> = (
        start.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    );
    collect(
        kv,
        ACTIVE_SESSIONS_T,
        range,
        limit,
        "listing active sessions",
        |key, bytes| {
            let printable = || keys::printable(key);
            let ActiveSessionValue = decode_record(ACTIVE_SESSIONS, printable, bytes)?;
            session_key(ACTIVE_SESSIONS, key)
        },
    )
}

/// Up to `limit` task expiry entries with `expires_ms <= now_ms`, oldest first.
pub(crate) fn expired_tasks(
    kv: &dyn Kv,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, SessionId, TaskId)>> {
    let end = keys::expiry_end(now_ms);
    let range: KeyRange<'_> = (
        Bound::Unbounded,
        end.as_ref()
            .map_or(Bound::Unbounded, |end| Bound::Excluded(end.as_slice())),
    );
    collect(
        kv,
        TASK_EXPIRY_T,
        range,
        limit,
        "listing expired tasks",
        expiry_from,
    )
}

/// Reads an application table value.
pub(crate) fn app_get<V: DeserializeOwned>(
    kv: &dyn Kv,
    name: &str,
    key: &[u8],
) -> Result<Option<V>> {
    match kv.get(TableRef::App(name), key, "reading an application table")? {
        Some(bytes) => decode_app(name, key, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Visits an application table's entries whose key starts with `prefix`, in key order.
pub(crate) fn app_for_each<V: DeserializeOwned>(
    kv: &dyn Kv,
    name: &str,
    prefix: &[u8],
    mut visit: impl FnMut(&[u8], V) -> Result<()>,
) -> Result<()> {
    let end = keys::prefix_end(prefix);
    let range: KeyRange<'_> = (
        if prefix.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Included(prefix)
        },
        end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
    );
    kv.scan(
        TableRef::App(name),
        range,
        usize::MAX,
        "listing an application table",
        &mut |key, bytes| visit(key, decode_app(name, key, bytes)?),
    )
}

/// The handle of an application table named at open.
pub(crate) fn app_table<'t>(
    tables: &'t Tables,
    name: &str,
) -> Result<&'t heed::Database<'static, Bytes, Bytes>> {
    tables
        .app
        .get(name)
        .ok_or_else(|| Error::UnknownTable { name: name.into() })
}

fn decode_app<V: DeserializeOwned>(name: &str, key: &[u8], bytes: &[u8]) -> Result<V> {
    // Application table names are not `'static`; the error names the family of tables
    // and the key carries the table name so both are reported.
    decode("app", || format!("{name}:{}", keys::printable(key)), bytes)
}

/// Visits every session record, in identifier order; stops at the first error.
pub(crate) fn for_each_session(
    kv: &dyn Kv,
    visit: impl FnMut(SessionRecord) -> Result<()>,
) -> Result<()> {
    for_each_in(kv, SESSIONS_T, "listing sessions", session_from, visit)
}

/// Visits every event of every session, ordered by session then sequence number; stops
/// at the first error.
pub(crate) fn for_each_event(
    kv: &dyn Kv,
    visit: impl FnMut(EventRecord) -> Result<()>,
) -> Result<()> {
    for_each_in(kv, EVENTS_T, "listing events", event_from, visit)
}

/// Where a removed session's numbering stopped, if `id` was removed (and not created
/// again since).
pub(crate) fn removed_session(kv: &dyn Kv, id: &SessionId) -> Result<Option<RemovedSession>> {
    let key = id.as_str().as_bytes();
    match kv.get(REMOVED_SESSIONS_T, key, "reading a removed session")? {
        Some(bytes) => removed_from(key, &bytes).map(|(_, removed)| Some(removed)),
        None => Ok(None),
    }
}

fn removed_from(key: &[u8], bytes: &[u8]) -> Result<(SessionId, RemovedSession)> {
    let printable = || keys::printable(key);
    let removed: RemovedSession = decode_record(REMOVED_SESSIONS, printable, bytes)?;
    Ok((session_key(REMOVED_SESSIONS, key)?, removed))
}

/// A key of a table keyed by session identifier, as one.
fn session_key(table: &'static str, key: &[u8]) -> Result<SessionId> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|text| SessionId::new(text).ok())
        .ok_or_else(|| Error::Corrupt {
            table,
            key: keys::printable(key),
            reason: "the key is not a session identifier".into(),
        })
}

/// Visits every removed session's numbering, in identifier order.
pub(crate) fn for_each_removed_session(
    kv: &dyn Kv,
    visit: impl FnMut((SessionId, RemovedSession)) -> Result<()>,
) -> Result<()> {
    for_each_in(
        kv,
        REMOVED_SESSIONS_T,
        "listing removed sessions",
        removed_from,
        visit,
    )
}

/// Visits every dead letter, ordered by session then sequence number.
pub(crate) fn for_each_dead_letter(
    kv: &dyn Kv,
    visit: impl FnMut(DeadLetterRecord) -> Result<()>,
) -> Result<()> {
    for_each_in(
        kv,
        DEAD_LETTERS_T,
        "listing dead letters",
        dead_letter_from,
        visit,
    )
}

/// Visits every task expiry entry, oldest first.
pub(crate) fn for_each_expiry(
    kv: &dyn Kv,
    visit: impl FnMut((u64, SessionId, TaskId)) -> Result<()>,
) -> Result<()> {
    for_each_in(
        kv,
        TASK_EXPIRY_T,
        "listing task expiry entries",
        expiry_from,
        visit,
    )
}
