//! The ledger: what the worker's delegate and completion handler saw, appended to the
//! application table `ledger` in the same transaction as the delivery they record.
//!
//! Keys make every duplicate visible: an entry is never overwritten, it is appended under
//! `e` + a big-endian counter that is read and incremented inside the same transaction
//! (key `n`). Completion markers (`c<session>/<generation>`) only let the worker see
//! cheaply that a completion ran; the verifier reads the entries.
//!
//! On PostgreSQL the ledger is SQL tables of the application's own schema
//! (`<store schema>_app`): `ledger (n, entry)`, `ledger_next (n)` and
//! `ledger_completions`, written with statements run in the batch's SQL transaction, the
//! one that advances the delivery cursor; the counter row is read and incremented in it
//! just as the key `n` is.

use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use session_store::{AppTable, Snapshot, Store, WriteScope};
use sha2::{Digest, Sha256};

/// The application table's name.
pub const LEDGER_TABLE: &str = "ledger";
/// Key prefix of the entries.
const ENTRY_PREFIX: u8 = b'e';
/// Key of the next entry number.
const NEXT_KEY: &[u8] = b"n";
/// Key prefix of the completion markers.
const MARKER_PREFIX: u8 = b'c';

/// What a delegate found at a delivered download's path, looked at inside the delegate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFact {
    /// The path the event pointed to.
    pub path: String,
    /// Whether the file existed when the delegate ran.
    pub existed: bool,
    /// Its length, if it existed.
    pub bytes: Option<u64>,
    /// Its SHA-256 (lower-case hexadecimal), if it existed and could be read.
    pub sha256: Option<String>,
}

impl FileFact {
    /// Looks at the file now.
    pub fn observe(path: &Path) -> FileFact {
        let hashed = sha256_file(path);
        FileFact {
            path: path.display().to_string(),
            existed: hashed.is_ok(),
            bytes: hashed.as_ref().ok().map(|(bytes, _)| *bytes),
            sha256: hashed.ok().map(|(_, hex)| hex),
        }
    }
}

/// The length and SHA-256 of a file.
///
/// # Errors
/// The file cannot be opened or read.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// What one ledger entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A task's event reached the delegate.
    Task {
        /// The task.
        task: String,
        /// `success`, `rejected`, `failed` or `cancelled`.
        outcome: String,
        /// For a delivered download: the file as the delegate found it.
        file: Option<FileFact>,
    },
    /// "Did finish events" reached the delegate.
    DidFinish,
    /// The stored completion handler ran.
    Completion {
        /// The handler's name.
        name: String,
        /// Its stored payload (see [`crate::crash::plan::Plan::stored_completion_payload`]).
        payload: Vec<u8>,
    },
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The append number: entries are in the order their transactions committed.
    pub index: u64,
    /// The worker run that wrote it (0 for entries written outside a worker).
    pub run: u32,
    /// The session.
    pub session: String,
    /// The store generation of the event (from its delivery key).
    pub generation: u64,
    /// The event's sequence number in its session.
    pub seq: u64,
    /// What happened.
    pub kind: EntryKind,
}

fn entries_table(store: &Store) -> session_store::Result<AppTable<LedgerEntry>> {
    store.app_table(LEDGER_TABLE)
}

fn counter_table(store: &Store) -> session_store::Result<AppTable<u64>> {
    store.app_table(LEDGER_TABLE)
}

/// Appends to the ledger through a unit's scope; what it needs of the store.
#[derive(Debug, Clone)]
pub struct Ledger {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// The application table `ledger` (either backend).
    Table {
        entries: AppTable<LedgerEntry>,
        counter: AppTable<u64>,
    },
    /// SQL tables in this schema (PostgreSQL).
    Sql { schema: std::sync::Arc<str> },
}

fn sql_error(what: &str, reason: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::InvalidRecord {
        table: "ledger",
        key: what.to_owned(),
        reason: reason.to_string(),
    }
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn marker_key(session: &str, generation: u64) -> Vec<u8> {
    let mut key = vec![MARKER_PREFIX];
    key.extend_from_slice(format!("{session}/{generation}").as_bytes());
    key
}

impl Ledger {
    /// The ledger of a store opened with the `ledger` application table.
    ///
    /// # Errors
    /// The table was not declared.
    pub fn new(store: &Store) -> session_store::Result<Ledger> {
        if let Some(schema) = store.schema() {
            return Ok(Ledger::sql(schema));
        }
        Ok(Ledger {
            kind: Kind::Table {
                entries: entries_table(store)?,
                counter: counter_table(store)?,
            },
        })
    }

    /// The SQL ledger of the store in `store_schema` (PostgreSQL): tables of the
    /// application's schema `<store_schema>_app` (see [`Ledger::create_sql`]).
    pub fn sql(store_schema: &str) -> Ledger {
        Ledger {
            kind: Kind::Sql {
                schema: format!("{store_schema}_app").into(),
            },
        }
    }

    /// The statements that create the SQL ledger's tables (empty for the table ledger).
    pub fn create_sql(&self) -> String {
        let Kind::Sql { schema } = &self.kind else {
            return String::new();
        };
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.ledger (n bigint PRIMARY KEY, entry bytea NOT NULL);
             CREATE TABLE IF NOT EXISTS {schema}.ledger_next (one boolean PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO {schema}.ledger_next (one, n) VALUES (true, 0) ON CONFLICT DO NOTHING;
             CREATE TABLE IF NOT EXISTS {schema}.ledger_completions (session text NOT NULL, generation bigint NOT NULL, n bigint NOT NULL, PRIMARY KEY (session, generation));"
        )
    }

    /// The ledger by its table's name alone, for units that run before a store handle
    /// is at hand (completion handlers are registered before the store is open). Using it
    /// with a store that lacks the table is [`session_store::Error::UnknownTable`].
    ///
    /// # Errors
    /// None in practice: the name is valid.
    pub fn named() -> session_store::Result<Ledger> {
        Ok(Ledger {
            kind: Kind::Table {
                entries: AppTable::named(LEDGER_TABLE)?,
                counter: AppTable::named(LEDGER_TABLE)?,
            },
        })
    }

    /// Appends an entry (its `index` is assigned here) inside the unit's transaction.
    ///
    /// # Errors
    /// Store errors.
    pub fn append(
        &self,
        scope: &mut WriteScope<'_>,
        mut entry: LedgerEntry,
    ) -> session_store::Result<u64> {
        match &self.kind {
            Kind::Table { entries, counter } => {
                let index = counter.get(scope, NEXT_KEY)?.unwrap_or(0);
                counter.put(scope, NEXT_KEY, &(index + 1))?;
                entry.index = index;
                entries.put(scope, entry_key(index), &entry)?;
                Ok(index)
            }
            Kind::Sql { schema } => {
                let mut sql = scope.postgres()?;
                let row = sql
                    .query_opt(
                        &format!(
                            "UPDATE {schema}.ledger_next SET n = n + 1 WHERE one RETURNING n - 1"
                        ),
                        &[],
                    )?
                    .ok_or_else(|| sql_error("next", "the counter row is missing"))?;
                let index: i64 = row.try_get(0).map_err(|e| sql_error("next", e))?;
                entry.index = u64::try_from(index).map_err(|e| sql_error("next", e))?;
                let bytes = bincode::serialize(&entry).map_err(|e| sql_error("entry", e))?;
                sql.execute(
                    &format!("INSERT INTO {schema}.ledger (n, entry) VALUES ($1, $2)"),
                    &[&index, &bytes],
                )?;
                Ok(entry.index)
            }
        }
    }

    /// Marks that the completion of a plan generation ran (in the same transaction as
    /// its entry).
    ///
    /// # Errors
    /// Store errors.
    pub fn mark_completion(
        &self,
        scope: &mut WriteScope<'_>,
        session: &str,
        generation: u64,
        index: u64,
    ) -> session_store::Result<()> {
        match &self.kind {
            Kind::Table { counter, .. } => {
                counter.put(scope, marker_key(session, generation), &index)
            }
            Kind::Sql { schema } => {
                let generation =
                    i64::try_from(generation).map_err(|e| sql_error("generation", e))?;
                let index = i64::try_from(index).map_err(|e| sql_error("index", e))?;
                scope.postgres()?.execute(
                    &format!(
                        "INSERT INTO {schema}.ledger_completions (session, generation, n) \
                         VALUES ($1, $2, $3) ON CONFLICT (session, generation) DO NOTHING"
                    ),
                    &[&session, &generation, &index],
                )?;
                Ok(())
            }
        }
    }

    /// Whether the completion of a plan generation has run.
    ///
    /// # Errors
    /// Store errors.
    pub fn completion_ran(
        &self,
        reader: &Snapshot,
        session: &str,
        generation: u64,
    ) -> session_store::Result<bool> {
        match &self.kind {
            Kind::Table { counter, .. } => Ok(counter
                .get(reader, marker_key(session, generation))?
                .is_some()),
            Kind::Sql { schema } => {
                let generation =
                    i64::try_from(generation).map_err(|e| sql_error("generation", e))?;
                Ok(!reader
                    .query(
                        &format!(
                            "SELECT 1 FROM {schema}.ledger_completions WHERE session = $1 AND generation = $2"
                        ),
                        &[&session, &generation],
                    )?
                    .is_empty())
            }
        }
    }

    /// How many entries were appended (committed, as `reader` sees it).
    ///
    /// # Errors
    /// Store errors.
    pub fn count(&self, reader: &Snapshot) -> session_store::Result<u64> {
        match &self.kind {
            Kind::Table { counter, .. } => Ok(counter.get(reader, NEXT_KEY)?.unwrap_or(0)),
            Kind::Sql { schema } => {
                let rows = reader.query(&format!("SELECT n FROM {schema}.ledger_next"), &[])?;
                let n: i64 = match rows.first() {
                    Some(row) => row.try_get(0).map_err(|e| sql_error("next", e))?,
                    None => 0,
                };
                u64::try_from(n).map_err(|e| sql_error("next", e))
            }
        }
    }

    /// Every entry, in append order.
    ///
    /// # Errors
    /// Store errors (an entry that does not decode).
    pub fn entries(&self, reader: &Snapshot) -> session_store::Result<Vec<LedgerEntry>> {
        let mut found = Vec::new();
        match &self.kind {
            Kind::Table { entries, .. } => {
                entries.for_each_with_prefix(reader, [ENTRY_PREFIX], |_, entry| {
                    found.push(entry);
                    Ok(())
                })?;
            }
            Kind::Sql { schema } => {
                for row in reader.query(
                    &format!("SELECT n, entry FROM {schema}.ledger ORDER BY n"),
                    &[],
                )? {
                    let n: i64 = row.try_get(0).map_err(|e| sql_error("entry", e))?;
                    let bytes: &[u8] = row.try_get(1).map_err(|e| sql_error("entry", e))?;
                    let entry = bincode::deserialize(bytes)
                        .map_err(|e| sql_error(&format!("entry {n}"), e))?;
                    found.push(entry);
                }
            }
        }
        Ok(found)
    }
}
