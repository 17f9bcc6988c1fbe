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
/// How many built-in tables there are (LMDB's `max_dbs` adds the application tables).
pub(crate) const BUILTIN_TABLES: u32 = 4;
/// Application tables live under this prefix in LMDB, so no application name can
/// collide with a built-in table.
const APP_TABLE_PREFIX: &str = "app.";

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
    /// Application tables by name; values are `SerdeBincode<V>` bytes of the caller's `V`.
    pub(crate) app: HashMap<String, Database<'static, Bytes, Bytes>>,
}

/// The handles while the creating transaction is open.
struct OpenedTables<'e> {
    /// Names to versions; only read and written while opening.
    meta: Database<'e, Str, SerdeBincode<u32>>,
    sessions: Database<'e, Bytes, Bytes>,
    tasks: Database<'e, Bytes, Bytes>,
    events: Database<'e, Bytes, Bytes>,
    app: Vec<(String, Database<'e, Bytes, Bytes>)>,
}

impl OnCommit for OpenedTables<'_> {
    type Committed = Tables;

    fn on_commit(self, token: &CommitToken) -> Tables {
        Tables {
            sessions: self.sessions.on_commit(token),
            tasks: self.tasks.on_commit(token),
            events: self.events.on_commit(token),
            app: self
                .app
                .into_iter()
                .map(|(name, database)| (name, database.on_commit(token)))
                .collect(),
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
        app,
    })
}

/// Refuses a store this build cannot read; records the versions in a new store.
fn check_versions(tables: &OpenedTables<'_>, wtxn: &mut RwTxn<'_>, dir: &Path) -> Result<()> {
    let raw_meta = tables.meta.remap_data_type::<Bytes>();
    let read_version = |name: &str, wtxn: &RwTxn<'_>| -> Result<Option<u32>> {
        match raw_meta.get(wtxn, name) {
            Ok(Some(bytes)) => {
                read::decode::<u32>(META, || keys::printable(name.as_bytes()), bytes).map(Some)
            }
            Ok(None) => Ok(None),
            Err(error) => Err(Error::lmdb("reading the store's versions", error)),
        }
    };
    match read_version(META_SCHEMA_VERSION, wtxn)? {
        Some(found) if found > SCHEMA_VERSION => {
            return Err(Error::SchemaTooNew {
                dir: dir.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Some(found) if found < 1 => {
            return Err(Error::Corrupt {
                table: META,
                key: META_SCHEMA_VERSION.into(),
                reason: format!("schema version {found} does not exist"),
            });
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
                        && empty(tables.events.len(wtxn))?,
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
