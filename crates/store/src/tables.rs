//! The tables of the environment, created or opened at `Store::open`, and the `meta`
//! table's versions.

use std::collections::HashMap;
use std::path::Path;

use heed::types::{Bytes, SerdeBincode, Str};
use heed::{
    CommitOrAbort, CommitToken, Database, DatabaseOpener, Env, OnCommit, RwTxn, WithoutTls,
};

use crate::error::{Error, Result};
use crate::keys;
use crate::options::{APP_TABLES_MAX, validate_app_table_name};
use crate::read;
use crate::records::SCHEMA_VERSION;

/// The `meta` table's name.
pub(crate) const META: &str = "meta";
/// The `sessions` table's name.
pub(crate) const SESSIONS: &str = "sessions";
/// The `tasks` table's name.
pub(crate) const TASKS: &str = "tasks";
/// The `events` table's name.
pub(crate) const EVENTS: &str = "events";
/// The `dead_letters` table's name.
pub(crate) const DEAD_LETTERS: &str = "dead_letters";
/// The `task_expiry` table's name.
pub(crate) const TASK_EXPIRY: &str = "task_expiry";
/// The `active_sessions` table's name.
pub(crate) const ACTIVE_SESSIONS: &str = "active_sessions";
/// The `removed_sessions` table's name.
pub(crate) const REMOVED_SESSIONS: &str = "removed_sessions";
/// The `meta` key that says the `active_sessions` index lists every active session
/// (built once for a store written before the index existed).
pub(crate) const META_ACTIVE_INDEX: &str = "active_index";
/// How many built-in tables there are (LMDB's `max_dbs` adds the application tables).
pub(crate) const BUILTIN_TABLES: u32 = 8;
/// Application tables live under this prefix in LMDB, so no application name can
/// collide with a built-in table.
pub(crate) const APP_TABLE_PREFIX: &str = "app.";

/// The `meta` key holding the schema version.
pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
/// The `meta` key holding the codec version.
pub(crate) const META_CODEC_VERSION: &str = "codec_version";
/// The codec this build writes: bincode 1.3 with its default (legacy) options,
/// little-endian and fixed-width integers, inside the versioned layout of
/// `records::codec`. A different encoding gets a new number.
pub const CODEC_VERSION: u32 = 1;

/// A built-in table: keys and values are bytes; values are versioned records
/// (`records::codec`), decoded in `read`.
pub(crate) type Table = Database<'static, Bytes, Bytes>;

/// Handles to every table; plain copyable handles, valid for the environment's life.
#[derive(Debug)]
pub(crate) struct Tables {
    /// Session id to session record.
    pub(crate) sessions: Table,
    /// `session 0x00 task` to task record.
    pub(crate) tasks: Table,
    /// `session 0x00 seq(BE)` to event record.
    pub(crate) events: Table,
    /// `session 0x00 seq(BE)` to dead-letter record. `None` only in a store opened
    /// read-only that no build with this table has opened for writing yet (it is created
    /// at the next `Store::open`); reads then find nothing.
    pub(crate) dead_letters: Option<Table>,
    /// `expires_ms(BE) session 0x00 task` to an empty versioned value; `None` as for
    /// `dead_letters`.
    pub(crate) task_expiry: Option<Table>,
    /// Session id to an empty versioned value, for every session with open tasks or
    /// undelivered events (kept by `WriteScope::put_session`), so that recovery reads the
    /// active sessions only; `None` as for `dead_letters`.
    pub(crate) active_sessions: Option<Table>,
    /// Session id to a versioned [`RemovedSession`](crate::RemovedSession): where a
    /// removed session's numbering stopped; `None` as for `dead_letters`.
    pub(crate) removed_sessions: Option<Table>,
    /// Application tables by name; values are `SerdeBincode<V>` bytes of the caller's `V`.
    pub(crate) app: HashMap<String, Database<'static, Bytes, Bytes>>,
    /// LMDB's main (unnamed) table: the name of every table to LMDB's record of it
    /// (its entries and pages), read for `Snapshot::size`. LMDB always has it.
    pub(crate) names: Option<Table>,
}

/// The handles while the creating transaction is open.
struct OpenedTables<'e> {
    /// Names to versions; only read and written while opening.
    meta: Database<'e, Str, SerdeBincode<u32>>,
    sessions: Database<'e, Bytes, Bytes>,
    tasks: Database<'e, Bytes, Bytes>,
    events: Database<'e, Bytes, Bytes>,
    dead_letters: Database<'e, Bytes, Bytes>,
    task_expiry: Database<'e, Bytes, Bytes>,
    active_sessions: Database<'e, Bytes, Bytes>,
    removed_sessions: Database<'e, Bytes, Bytes>,
    app: Vec<(String, Database<'e, Bytes, Bytes>)>,
    names: Option<Database<'e, Bytes, Bytes>>,
}

impl OnCommit for OpenedTables<'_> {
    type Committed = Tables;

    fn on_commit(self, token: &CommitToken) -> Tables {
        Tables {
            sessions: self.sessions.on_commit(token),
            tasks: self.tasks.on_commit(token),
            events: self.events.on_commit(token),
            dead_letters: Some(self.dead_letters.on_commit(token)),
            task_expiry: Some(self.task_expiry.on_commit(token)),
            active_sessions: Some(self.active_sessions.on_commit(token)),
            removed_sessions: Some(self.removed_sessions.on_commit(token)),
            app: self
                .app
                .into_iter()
                .map(|(name, database)| (name, database.on_commit(token)))
                .collect(),
            names: self.names.map(|table| table.on_commit(token)),
        }
    }
}

/// What can stop table creation: heed's error (needed by `create_databases_and_commit`)
/// or one of ours.
enum CreateError {
    Heed(heed::Error),
    Store(Error),
}

impl From<heed::Error> for CreateError {
    fn from(error: heed::Error) -> Self {
        CreateError::Heed(error)
    }
}

impl From<Error> for CreateError {
    fn from(error: Error) -> Self {
        CreateError::Store(error)
    }
}

/// Creates (or opens) every table and checks or records the versions in `meta`, in one
/// write transaction that commits only if the store is usable by this build.
pub(crate) fn create(env: &Env<WithoutTls>, dir: &Path, app_tables: &[String]) -> Result<Tables> {
    let wtxn = env
        .write_txn()
        .map_err(|e| Error::lmdb("beginning the table creation transaction", e))?;
    let created = env.create_databases_and_commit(wtxn, |opener, wtxn| {
        let tables = create_all(opener, wtxn, app_tables)?;
        check_versions(&tables, wtxn, dir)?;
        build_active_index(&tables, wtxn, dir)?;
        Ok::<_, CreateError>(CommitOrAbort::<_, ()>::Commit(tables))
    });
    match created {
        Ok(CommitOrAbort::Commit(tables)) => Ok(tables),
        Ok(CommitOrAbort::Abort(())) => Err(Error::InvalidOptions {
            reason: "internal: table creation was aborted".into(),
        }),
        Err(CreateError::Heed(error)) => Err(Error::lmdb("creating the tables", error)),
        Err(CreateError::Store(error)) => Err(error),
    }
}

fn create_all<'e>(
    opener: &DatabaseOpener<'e, WithoutTls>,
    wtxn: &mut RwTxn<'e>,
    app_tables: &[String],
) -> heed::Result<OpenedTables<'e>> {
    let mut app = Vec::with_capacity(app_tables.len());
    for name in app_tables {
        let lmdb_name = format!("{APP_TABLE_PREFIX}{name}");
        app.push((
            name.clone(),
            opener.create_database(wtxn, Some(&lmdb_name))?,
        ));
    }
    Ok(OpenedTables {
        meta: opener.create_database(wtxn, Some(META))?,
        sessions: opener.create_database(wtxn, Some(SESSIONS))?,
        tasks: opener.create_database(wtxn, Some(TASKS))?,
        events: opener.create_database(wtxn, Some(EVENTS))?,
        // Added after the first stores of schema 2 were written: created here for
        // those too, and optional wherever a store is read without being opened.
        dead_letters: opener.create_database(wtxn, Some(DEAD_LETTERS))?,
        task_expiry: opener.create_database(wtxn, Some(TASK_EXPIRY))?,
        active_sessions: opener.create_database(wtxn, Some(ACTIVE_SESSIONS))?,
        removed_sessions: opener.create_database(wtxn, Some(REMOVED_SESSIONS))?,
        app,
        names: opener.open_database(wtxn, None)?,
    })
}

/// Lists every active session in `active_sessions`, once per store: a store written
/// before the index existed (schema 1, or early schema 2) gets it at its first open by
/// this build, in the opening transaction; later writes keep it (see `put_session`).
fn build_active_index(tables: &OpenedTables<'_>, wtxn: &mut RwTxn<'_>, dir: &Path) -> Result<()> {
    let raw_meta = tables.meta.remap_data_type::<Bytes>();
    if read_version(raw_meta, wtxn, META_ACTIVE_INDEX)?.is_some() {
        return Ok(());
    }
    let marker =
        crate::records::codec::encode(&crate::records::ActiveSessionValue).map_err(|reason| {
            Error::InvalidRecord {
                table: ACTIVE_SESSIONS,
                key: String::new(),
                reason,
            }
        })?;
    let mut active = Vec::new();
    for entry in tables
        .sessions
        .iter(wtxn)
        .map_err(|e| Error::lmdb("listing sessions to index them", e))?
    {
        let (key, bytes) = entry.map_err(|e| Error::lmdb("listing sessions to index them", e))?;
        let record: crate::records::SessionRecord =
            crate::records::codec::decode(bytes).map_err(|reason| Error::Corrupt {
                table: SESSIONS,
                key: keys::printable(key),
                reason,
            })?;
        if record.is_active() {
            active.push(key.to_vec());
        }
    }
    for key in &active {
        tables
            .active_sessions
            .put(wtxn, key, &marker)
            .map_err(|e| Error::lmdb("indexing the active sessions", e))?;
    }
    tables
        .meta
        .put(wtxn, META_ACTIVE_INDEX, &1)
        .map_err(|e| Error::lmdb("recording the active-session index", e))?;
    if !active.is_empty() {
        tracing::info!(dir = %dir.display(), active = active.len(), "active sessions indexed");
    }
    Ok(())
}

/// A version kept in `meta`, if it is there.
fn read_version(
    meta: Database<'_, Str, Bytes>,
    txn: &heed::RoTxn<'_>,
    name: &str,
) -> Result<Option<u32>> {
    match meta.get(txn, name) {
        Ok(Some(bytes)) => {
            read::decode::<u32>(META, || keys::printable(name.as_bytes()), bytes).map(Some)
        }
        Ok(None) => Ok(None),
        Err(error) => Err(Error::lmdb("reading the store's versions", error)),
    }
}

/// Refuses a schema version this build cannot read (newer, or one that never existed).
fn check_schema_version(found: u32, dir: &Path) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            dir: dir.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        return Err(Error::Corrupt {
            table: META,
            key: META_SCHEMA_VERSION.into(),
            reason: format!("schema version {found} does not exist"),
        });
    }
    Ok(())
}

/// Refuses a store this build cannot read; records the versions in a new store.
fn check_versions(tables: &OpenedTables<'_>, wtxn: &mut RwTxn<'_>, dir: &Path) -> Result<()> {
    let raw_meta = tables.meta.remap_data_type::<Bytes>();
    let read_version = |name: &str, wtxn: &RwTxn<'_>| read_version(raw_meta, wtxn, name);
    match read_version(META_SCHEMA_VERSION, wtxn)? {
        Some(found) if !(1..=SCHEMA_VERSION).contains(&found) => {
            return check_schema_version(found, dir);
        }
        // Schema 1 values carry no version; `records::codec` reads them beside current
        // ones, so the store is usable at once and records are rewritten as they change.
        // The schema number moves on so that a release that cannot read versioned values
        // refuses this store instead of misreading it.
        Some(found) if found < SCHEMA_VERSION => {
            tracing::info!(dir = %dir.display(), from = found, to = SCHEMA_VERSION, "store schema upgraded");
            tables
                .meta
                .put(wtxn, META_SCHEMA_VERSION, &SCHEMA_VERSION)
                .map_err(|e| Error::lmdb("recording the schema version", e))?;
        }
        Some(_) => {}
        None => {
            let empty = |len: heed::Result<u64>| len.map(|n| n == 0);
            let is_new = (|| {
                Ok::<_, heed::Error>(
                    empty(tables.sessions.len(wtxn))?
                        && empty(tables.tasks.len(wtxn))?
                        && empty(tables.events.len(wtxn))?
                        && empty(tables.dead_letters.len(wtxn))?
                        && empty(tables.task_expiry.len(wtxn))?,
                )
            })()
            .map_err(|e| Error::lmdb("checking whether the store is new", e))?;
            if !is_new {
                return Err(Error::Corrupt {
                    table: META,
                    key: META_SCHEMA_VERSION.into(),
                    reason: "missing in a store that holds records".into(),
                });
            }
            tables
                .meta
                .put(wtxn, META_SCHEMA_VERSION, &SCHEMA_VERSION)
                .map_err(|e| Error::lmdb("recording the schema version", e))?;
        }
    }
    match read_version(META_CODEC_VERSION, wtxn)? {
        Some(found) if found != CODEC_VERSION => Err(Error::CodecMismatch {
            dir: dir.to_path_buf(),
            found,
            supported: CODEC_VERSION,
        }),
        Some(_) => Ok(()),
        None => tables
            .meta
            .put(wtxn, META_CODEC_VERSION, &CODEC_VERSION)
            .map_err(|e| Error::lmdb("recording the codec version", e)),
    }
}

/// The tables of a store opened without writing to it (read-only, or for `check_dir`),
/// before the opening transaction ends.
struct ExistingTables<'e> {
    sessions: Database<'e, Bytes, Bytes>,
    tasks: Database<'e, Bytes, Bytes>,
    events: Database<'e, Bytes, Bytes>,
    dead_letters: Option<Database<'e, Bytes, Bytes>>,
    task_expiry: Option<Database<'e, Bytes, Bytes>>,
    active_sessions: Option<Database<'e, Bytes, Bytes>>,
    removed_sessions: Option<Database<'e, Bytes, Bytes>>,
    app: Vec<(String, Database<'e, Bytes, Bytes>)>,
    names: Option<Database<'e, Bytes, Bytes>>,
}

impl OnCommit for ExistingTables<'_> {
    type Committed = Tables;

    fn on_commit(self, token: &CommitToken) -> Tables {
        Tables {
            sessions: self.sessions.on_commit(token),
            tasks: self.tasks.on_commit(token),
            events: self.events.on_commit(token),
            dead_letters: self.dead_letters.map(|table| table.on_commit(token)),
            task_expiry: self.task_expiry.map(|table| table.on_commit(token)),
            active_sessions: self.active_sessions.map(|table| table.on_commit(token)),
            removed_sessions: self.removed_sessions.map(|table| table.on_commit(token)),
            app: self
                .app
                .into_iter()
                .map(|(name, database)| (name, database.on_commit(token)))
                .collect(),
            names: self.names.map(|table| table.on_commit(token)),
        }
    }
}

/// How many tables an environment opened by [`open_existing`] needs room for: every
/// built-in table and at most [`APP_TABLES_MAX`] application tables (tables of a newer
/// build are never opened, so they take no room).
pub(crate) const EXISTING_TABLES_MAX: u32 = BUILTIN_TABLES + APP_TABLES_MAX as u32;

/// Opens the tables of an existing store without writing anything: checks the versions
/// in `meta` (refusing a store this build cannot read), opens the built-in tables (the
/// later ones only if they are there) and every application table present (at most
/// [`APP_TABLES_MAX`], in name order). Tables this build does not know are left alone.
/// `None` for a store whose first commit never happened (no tables at all). The
/// environment needs room for [`EXISTING_TABLES_MAX`] tables.
pub(crate) fn open_existing(
    env: &Env<WithoutTls>,
    dir: &Path,
    data: &Path,
) -> Result<Option<Tables>> {
    let rtxn = env
        .read_txn()
        .map_err(|e| Error::lmdb("beginning the transaction that opens the tables", e))?;
    let opened = env.open_databases_and_commit(rtxn, |opener, rtxn| {
        let open = |name: &str| opener.open_database::<Bytes, Bytes>(rtxn, Some(name));
        let meta = opener.open_database::<Str, Bytes>(rtxn, Some(META))?;
        let found = (meta, open(SESSIONS)?, open(TASKS)?, open(EVENTS)?);
        let (sessions, tasks, events) = match found {
            (Some(meta), Some(sessions), Some(tasks), Some(events)) => {
                check_versions_read_only(meta, rtxn, dir)?;
                (sessions, tasks, events)
            }
            (None, None, None, None) => return Ok(CommitOrAbort::Abort(())),
            (meta, sessions, tasks, events) => {
                let missing: Vec<&str> = [
                    (meta.is_none(), META),
                    (sessions.is_none(), SESSIONS),
                    (tasks.is_none(), TASKS),
                    (events.is_none(), EVENTS),
                ]
                .into_iter()
                .filter_map(|(missing, name)| missing.then_some(name))
                .collect();
                return Err(CreateError::Store(Error::CorruptFile {
                    path: data.to_path_buf(),
                    page: None,
                    reason: format!(
                        "table(s) {} missing while others exist (the store creates them together)",
                        missing.join(", ")
                    ),
                }));
            }
        };
        let mut app = Vec::new();
        for name in app_table_names(opener, rtxn)? {
            let lmdb_name = format!("{APP_TABLE_PREFIX}{name}");
            if let Some(database) = open(&lmdb_name)? {
                app.push((name, database));
            }
        }
        Ok(CommitOrAbort::Commit(ExistingTables {
            sessions,
            tasks,
            events,
            dead_letters: open(DEAD_LETTERS)?,
            task_expiry: open(TASK_EXPIRY)?,
            active_sessions: open(ACTIVE_SESSIONS)?,
            removed_sessions: open(REMOVED_SESSIONS)?,
            app,
            names: opener.open_database(rtxn, None)?,
        }))
    });
    match opened {
        Ok(CommitOrAbort::Commit(tables)) => Ok(Some(tables)),
        Ok(CommitOrAbort::Abort(())) => Ok(None),
        Err(CreateError::Heed(error)) => Err(Error::lmdb("opening the tables", error)),
        Err(CreateError::Store(error)) => Err(error),
    }
}

/// The versions of a store that is only read: refused as `create` refuses them, nothing
/// recorded. A schema-1 store reads as it is (its values are converted as they are read).
fn check_versions_read_only(
    meta: Database<'_, Str, Bytes>,
    rtxn: &heed::RoTxn<'_>,
    dir: &Path,
) -> Result<()> {
    match read_version(meta, rtxn, META_SCHEMA_VERSION)? {
        Some(found) => check_schema_version(found, dir)?,
        None => {
            return Err(Error::Corrupt {
                table: META,
                key: META_SCHEMA_VERSION.into(),
                reason: "missing in a store that has its tables".into(),
            });
        }
    }
    match read_version(meta, rtxn, META_CODEC_VERSION)? {
        Some(found) if found != CODEC_VERSION => Err(Error::CodecMismatch {
            dir: dir.to_path_buf(),
            found,
            supported: CODEC_VERSION,
        }),
        // Schema-1 stores recorded no codec version; they use this one.
        Some(_) | None => Ok(()),
    }
}

/// The application tables present in the environment, by the names the application gave
/// them, in name order; at most [`APP_TABLES_MAX`] (the rest are left unopened).
fn app_table_names<'e>(
    opener: &DatabaseOpener<'e, WithoutTls>,
    rtxn: &heed::RoTxn<'e>,
) -> heed::Result<Vec<String>> {
    // LMDB keeps the name of every named table as a key of its main (unnamed) table.
    let Some(main) = opener.open_database::<Bytes, Bytes>(rtxn, None)? else {
        return Ok(Vec::new());
    };
    let prefix = APP_TABLE_PREFIX.as_bytes();
    let mut names = Vec::new();
    for entry in main.prefix_iter(rtxn, prefix)? {
        let (key, _) = entry?;
        let name = std::str::from_utf8(&key[prefix.len()..])
            .ok()
            .filter(|name| validate_app_table_name(name).is_ok());
        match name {
            Some(_) if names.len() == APP_TABLES_MAX => {
                tracing::warn!(
                    opened = APP_TABLES_MAX,
                    "more application tables than can be opened at once; the rest are not readable here"
                );
                break;
            }
            Some(name) => names.push(name.to_owned()),
            None => {}
        }
    }
    Ok(names)
}
