//! Reads shared by `WriteScope` and `Snapshot`: every value is decoded from the raw bytes
//! (so a failure can name its key) with its version (`records::codec`), then validated and
//! checked against its key. A record that fails any of these is `Error::Corrupt`.

use std::ops::Bound;

use heed::types::{Bytes, SerdeBincode};
use heed::{BytesDecode, RoTxn};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::ids::{SessionId, TaskId};
use crate::keys;
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

fn lmdb(operation: &'static str) -> impl FnOnce(heed::Error) -> Error {
    move |error| Error::lmdb(operation, error)
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

pub(crate) fn session(view: View<'_>, id: &SessionId) -> Result<Option<SessionRecord>> {
    match view
        .tables
        .sessions
        .get(view.txn, id.as_str().as_bytes())
        .map_err(lmdb("reading a session"))?
    {
        Some(bytes) => session_from(id.as_str().as_bytes(), bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn sessions(view: View<'_>) -> Result<Vec<SessionRecord>> {
    let mut records = Vec::new();
    for entry in view
        .tables
        .sessions
        .iter(view.txn)
        .map_err(lmdb("listing sessions"))?
    {
        let (key, bytes) = entry.map_err(lmdb("listing sessions"))?;
        records.push(session_from(key, bytes)?);
    }
    Ok(records)
}

/// Up to `limit` session records after `after` (from the first without it), in
/// identifier order.
pub(crate) fn sessions_from(
    view: View<'_>,
    after: Option<&SessionId>,
    limit: usize,
) -> Result<Vec<SessionRecord>> {
    let start = after.map(|id| id.as_str().as_bytes());
    let range = (
        start.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    );
    let mut records = Vec::new();
    for entry in view
        .tables
        .sessions
        .range(view.txn, &range)
        .map_err(lmdb("listing sessions"))?
        .take(limit)
    {
        let (key, bytes) = entry.map_err(lmdb("listing sessions"))?;
        records.push(session_from(key, bytes)?);
    }
    Ok(records)
}

pub(crate) fn task(
    view: View<'_>,
    session: &SessionId,
    task: &TaskId,
) -> Result<Option<TaskRecord>> {
    let key = keys::task_key(session, task);
    match view
        .tables
        .tasks
        .get(view.txn, &key)
        .map_err(lmdb("reading a task"))?
    {
        Some(bytes) => task_from(&key, bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn tasks(view: View<'_>, session: &SessionId) -> Result<Vec<TaskRecord>> {
    let prefix = keys::session_prefix(session);
    let mut records = Vec::new();
    for entry in view
        .tables
        .tasks
        .prefix_iter(view.txn, &prefix)
        .map_err(lmdb("listing a session's tasks"))?
    {
        let (key, bytes) = entry.map_err(lmdb("listing a session's tasks"))?;
        records.push(task_from(key, bytes)?);
    }
    Ok(records)
}

/// Up to `limit` tasks of a session after task `after` (from its first without it), in
/// task identifier order.
pub(crate) fn tasks_from(
    view: View<'_>,
    session: &SessionId,
    after: Option<&TaskId>,
    limit: usize,
) -> Result<Vec<TaskRecord>> {
    let start = match after {
        Some(task) => Bound::Excluded(keys::task_key(session, task)),
        None => Bound::Included(keys::session_prefix(session)),
    };
    let end = keys::session_end(session);
    let range = (
        start.as_ref().map(Vec::as_slice),
        Bound::Excluded(end.as_slice()),
    );
    let mut records = Vec::new();
    for entry in view
        .tables
        .tasks
        .range(view.txn, &range)
        .map_err(lmdb("listing a session's tasks"))?
        .take(limit)
    {
        let (key, bytes) = entry.map_err(lmdb("listing a session's tasks"))?;
        records.push(task_from(key, bytes)?);
    }
    Ok(records)
}

pub(crate) fn for_each_task(
    view: View<'_>,
    mut visit: impl FnMut(TaskRecord) -> Result<()>,
) -> Result<()> {
    for entry in view
        .tables
        .tasks
        .iter(view.txn)
        .map_err(lmdb("listing tasks"))?
    {
        let (key, bytes) = entry.map_err(lmdb("listing tasks"))?;
        visit(task_from(key, bytes)?)?;
    }
    Ok(())
}

pub(crate) fn event(view: View<'_>, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
    let key = keys::event_key(session, seq);
    match view
        .tables
        .events
        .get(view.txn, &key)
        .map_err(lmdb("reading an event"))?
    {
        Some(bytes) => event_from(&key, bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn events(
    view: View<'_>,
    session: &SessionId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<EventRecord>> {
    let start = keys::event_key(session, from_seq);
    let end = keys::session_end(session);
    let range = (
        Bound::Included(start.as_slice()),
        Bound::Excluded(end.as_slice()),
    );
    let mut records = Vec::new();
    for entry in view
        .tables
        .events
        .range(view.txn, &range)
        .map_err(lmdb("listing a session's events"))?
        .take(limit)
    {
        let (key, bytes) = entry.map_err(lmdb("listing a session's events"))?;
        records.push(event_from(key, bytes)?);
    }
    Ok(records)
}

pub(crate) fn dead_letter(
    view: View<'_>,
    session: &SessionId,
    seq: u64,
) -> Result<Option<DeadLetterRecord>> {
    let Some(table) = view.tables.dead_letters else {
        return Ok(None);
    };
    let key = keys::event_key(session, seq);
    match table
        .get(view.txn, &key)
        .map_err(lmdb("reading a dead letter"))?
    {
        Some(bytes) => dead_letter_from(&key, bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn dead_letters(
    view: View<'_>,
    session: &SessionId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<DeadLetterRecord>> {
    let Some(table) = view.tables.dead_letters else {
        return Ok(Vec::new());
    };
    let start = keys::event_key(session, from_seq);
    let end = keys::session_end(session);
    let range = (
        Bound::Included(start.as_slice()),
        Bound::Excluded(end.as_slice()),
    );
    let mut records = Vec::new();
    for entry in table
        .range(view.txn, &range)
        .map_err(lmdb("listing a session's dead letters"))?
        .take(limit)
    {
        let (key, bytes) = entry.map_err(lmdb("listing a session's dead letters"))?;
        records.push(dead_letter_from(key, bytes)?);
    }
    Ok(records)
}

/// An active session must be in the `active_sessions` index (recovery reads only the
/// index: a session missing from it would never resume).
pub(crate) fn require_indexed_active(view: View<'_>, id: &SessionId) -> Result<()> {
    let Some(table) = view.tables.active_sessions else {
        return Ok(());
    };
    match table
        .get(view.txn, id.as_str().as_bytes())
        .map_err(lmdb("reading the active-session index"))?
    {
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
pub(crate) fn require_active_index_count(view: View<'_>, active: u64) -> Result<()> {
    let mut indexed = 0_u64;
    let mut after: Option<SessionId> = None;
    loop {
        let piece = active_sessions_from(view, after.as_ref(), 4096)?;
        let Some(last) = piece.last() else { break };
        indexed += piece.len() as u64;
        after = Some(last.clone());
    }
    if view.tables.active_sessions.is_some() && indexed != active {
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
    view: View<'_>,
    after: Option<&SessionId>,
    limit: usize,
) -> Result<Vec<SessionId>> {
    let Some(table) = view.tables.active_sessions else {
        return Ok(Vec::new());
    };
    let start = after.map(|id| id.as_str().as_bytes());
    let range: (Bound<&[u8]>, Bound<&[u8]>) = (
        start.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    );
    let mut ids = Vec::new();
    for entry in table
        .range(view.txn, &range)
        .map_err(lmdb("listing active sessions"))?
        .take(limit)
    {
        let (key, bytes) = entry.map_err(lmdb("listing active sessions"))?;
        let printable = || keys::printable(key);
        let ActiveSessionValue = decode_record(ACTIVE_SESSIONS, printable, bytes)?;
        ids.push(session_key(ACTIVE_SESSIONS, key)?);
    }
    Ok(ids)
}

/// Up to `limit` task expiry entries with `expires_ms <= now_ms`, oldest first.
pub(crate) fn expired_tasks(
    view: View<'_>,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, SessionId, TaskId)>> {
    let Some(table) = view.tables.task_expiry else {
        return Ok(Vec::new());
    };
    let end = keys::expiry_end(now_ms);
    let range: (Bound<&[u8]>, Bound<&[u8]>) = (
        Bound::Unbounded,
        end.as_ref()
            .map_or(Bound::Unbounded, |end| Bound::Excluded(end.as_slice())),
    );
    let mut entries = Vec::new();
    for entry in table
        .range(view.txn, &range)
        .map_err(lmdb("listing expired tasks"))?
        .take(limit)
    {
        let (key, bytes) = entry.map_err(lmdb("listing expired tasks"))?;
        entries.push(expiry_from(key, bytes)?);
    }
    Ok(entries)
}

/// Reads an application table value.
pub(crate) fn app_get<V: DeserializeOwned>(
    view: View<'_>,
    name: &str,
    key: &[u8],
) -> Result<Option<V>> {
    let database = app_table(view.tables, name)?;
    match database
        .get(view.txn, key)
        .map_err(lmdb("reading an application table"))?
    {
        Some(bytes) => decode_app(name, key, bytes).map(Some),
        None => Ok(None),
    }
}

/// Visits an application table's entries whose key starts with `prefix`, in key order.
pub(crate) fn app_for_each<V: DeserializeOwned>(
    view: View<'_>,
    name: &str,
    prefix: &[u8],
    mut visit: impl FnMut(&[u8], V) -> Result<()>,
) -> Result<()> {
    let database = app_table(view.tables, name)?;
    let operation = "listing an application table";
    let mut visit_entry = |entry: heed::Result<(&[u8], &[u8])>| -> Result<()> {
        let (key, bytes) = entry.map_err(lmdb(operation))?;
        visit(key, decode_app(name, key, bytes)?)
    };
    if prefix.is_empty() {
        // LMDB refuses an empty key as a cursor position, so "everything" is a full scan.
        for entry in database.iter(view.txn).map_err(lmdb(operation))? {
            visit_entry(entry)?;
        }
    } else {
        for entry in database
            .prefix_iter(view.txn, prefix)
            .map_err(lmdb(operation))?
        {
            visit_entry(entry)?;
        }
    }
    Ok(())
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
    view: View<'_>,
    mut visit: impl FnMut(SessionRecord) -> Result<()>,
) -> Result<()> {
    let raw = view.tables.sessions.remap_types::<Bytes, Bytes>();
    for entry in raw.iter(view.txn).map_err(lmdb("listing sessions"))? {
        let (key, bytes) = entry.map_err(lmdb("listing sessions"))?;
        visit(session_from(key, bytes)?)?;
    }
    Ok(())
}

/// Visits every event of every session, ordered by session then sequence number; stops
/// at the first error.
pub(crate) fn for_each_event(
    view: View<'_>,
    mut visit: impl FnMut(EventRecord) -> Result<()>,
) -> Result<()> {
    let raw = view.tables.events.remap_data_type::<Bytes>();
    for entry in raw.iter(view.txn).map_err(lmdb("listing events"))? {
        let (key, bytes) = entry.map_err(lmdb("listing events"))?;
        visit(event_from(key, bytes)?)?;
    }
    Ok(())
}

/// Visits every entry of a later table (absent in a store only read), decoded and
/// checked by `decode`; stops at the first error.
fn for_each_in<T>(
    view: View<'_>,
    table: Option<Table>,
    operation: &'static str,
    decode: impl Fn(&[u8], &[u8]) -> Result<T>,
    mut visit: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let Some(table) = table else {
        return Ok(());
    };
    for entry in table.iter(view.txn).map_err(lmdb(operation))? {
        let (key, bytes) = entry.map_err(lmdb(operation))?;
        visit(decode(key, bytes)?)?;
    }
    Ok(())
}

/// Where a removed session's numbering stopped, if `id` was removed (and not created
/// again since).
pub(crate) fn removed_session(view: View<'_>, id: &SessionId) -> Result<Option<RemovedSession>> {
    let Some(table) = view.tables.removed_sessions else {
        return Ok(None);
    };
    let key = id.as_str().as_bytes();
    match table
        .get(view.txn, key)
        .map_err(lmdb("reading a removed session"))?
    {
        Some(bytes) => removed_from(key, bytes).map(|(_, removed)| Some(removed)),
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
    view: View<'_>,
    visit: impl FnMut((SessionId, RemovedSession)) -> Result<()>,
) -> Result<()> {
    let table = view.tables.removed_sessions;
    for_each_in(view, table, "listing removed sessions", removed_from, visit)
}

/// Visits every dead letter, ordered by session then sequence number.
pub(crate) fn for_each_dead_letter(
    view: View<'_>,
    visit: impl FnMut(DeadLetterRecord) -> Result<()>,
) -> Result<()> {
    let table = view.tables.dead_letters;
    for_each_in(view, table, "listing dead letters", dead_letter_from, visit)
}

/// Visits every task expiry entry, oldest first.
pub(crate) fn for_each_expiry(
    view: View<'_>,
    visit: impl FnMut((u64, SessionId, TaskId)) -> Result<()>,
) -> Result<()> {
    let table = view.tables.task_expiry;
    for_each_in(
        view,
        table,
        "listing task expiry entries",
        expiry_from,
        visit,
    )
}
