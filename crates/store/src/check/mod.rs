//! Checking a store's data file without trusting it: `check_dir`, and the checks
//! `Store::open` runs before LMDB maps the file.
//!
//! - `layout`: LMDB's on-disk pages, meta pages and nodes, parsed from bytes.
//! - `walk`: the meta choice, the length check and the structural walk, all with plain
//!   reads.
//!
//! The logical walk comes after the structural one, through LMDB (which can then no
//! longer fault): every record of the built-in tables (sessions, tasks, events, dead
//! letters, task expiry entries) is decoded and validated by the same functions every
//! read uses.

mod layout;
mod walk;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use heed::{EnvFlags, EnvOpenOptions};

use crate::error::{Error, Result};
use crate::identity;
use crate::options::round_map_size;
use crate::read::{self, View};
use crate::store::lock_dir;
use crate::tables::{self, EXISTING_TABLES_MAX};

pub(crate) use layout::{DB_RECORD_BYTES, DbRecord};
pub(crate) use walk::Structure;

/// LMDB's data file in the store directory.
pub(crate) const DATA_FILE_NAME: &str = "data.mdb";

/// What a check found: the data file's shape and how many records it read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// The data file's length.
    pub data_bytes: u64,
    /// LMDB's page size.
    pub page_bytes: u64,
    /// The last page number in use, by the newest meta page.
    pub last_page: u64,
    /// The transaction that wrote the newest meta page.
    pub txn_id: u64,
    /// Which meta page (0 or 1) that is: the one LMDB uses.
    pub meta_page: u64,
    /// Pages reached from the roots (branch, leaf and overflow pages of every tree).
    pub pages_in_use: u64,
    /// Pages listed free by LMDB.
    pub pages_free: u64,
    /// Pages up to the last one that are neither in use nor listed free (LMDB leaks
    /// none; a count above zero is worth a look, though it cannot crash LMDB).
    pub pages_unaccounted: u64,
    /// Every table (LMDB named database) with its entries and pages.
    pub tables: Vec<TableReport>,
    /// Session records read and validated.
    pub sessions: u64,
    /// Task records read and validated.
    pub tasks: u64,
    /// Event records read and validated.
    pub events: u64,
    /// Dead-letter records read and validated.
    pub dead_letters: u64,
    /// Task expiry entries read and validated.
    pub task_expiries: u64,
    /// How long the check took, in milliseconds.
    pub elapsed_ms: u64,
}

/// One table in a [`CheckReport`] or a [`StoreSize`](crate::StoreSize).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableReport {
    /// Its LMDB name (application tables have the prefix `app.`).
    pub name: String,
    /// Its entries.
    pub entries: u64,
    /// Its pages (branch, leaf and overflow).
    pub pages: u64,
}

/// This system's memory page size, which LMDB uses as its page size.
pub(crate) fn os_page_bytes() -> u32 {
    // SAFETY: sysconf only reads a system constant.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(bytes).unwrap_or(4096)
}

/// The data file opened for plain reads, with the meta page LMDB will use, checked.
#[derive(Debug)]
pub(crate) struct DataFile {
    pub(crate) path: PathBuf,
    file: File,
    choice: walk::MetaChoice,
}

/// What the store directory's data file is.
#[derive(Debug)]
pub(crate) enum DataFileState {
    Missing,
    Empty,
    Present(Box<DataFile>),
}

impl DataFileState {
    /// `"missing"` or `"empty"` for the errors that need it.
    pub(crate) fn absence(&self) -> Option<&'static str> {
        match self {
            DataFileState::Missing => Some("missing"),
            DataFileState::Empty => Some("empty"),
            DataFileState::Present(_) => None,
        }
    }
}

/// Opens the data file and runs the checks every open runs: both meta pages, the
/// choice LMDB will make, and the file's length against that meta page.
pub(crate) fn open_data_file(dir: &Path) -> Result<DataFileState> {
    let path = dir.join(DATA_FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(DataFileState::Missing);
        }
        Err(source) => return Err(Error::Io { path, source }),
    };
    let bytes = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?
        .len();
    if bytes == 0 {
        return Ok(DataFileState::Empty);
    }
    let choice = walk::read_meta(&file, &path, os_page_bytes())?;
    walk::check_length(&file, &path, choice)?;
    Ok(DataFileState::Present(Box::new(DataFile {
        path,
        file,
        choice,
    })))
}

impl DataFile {
    /// The data file's length.
    pub(crate) fn bytes(&self) -> u64 {
        self.choice.file_bytes
    }

    /// The smallest map that covers every page LMDB may read.
    pub(crate) fn map_bytes_needed(&self) -> u64 {
        let pages = (self.choice.meta.last_pgno + 1).saturating_mul(self.choice.page_bytes);
        pages.max(self.choice.file_bytes)
    }

    /// The full structural walk.
    pub(crate) fn walk(&self) -> Result<Structure> {
        walk::walk(&self.file, &self.path, self.choice)
    }
}

/// How many records of each built-in table were read and validated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordCounts {
    sessions: u64,
    tasks: u64,
    events: u64,
    dead_letters: u64,
    task_expiries: u64,
}

/// The logical walk: reads, decodes and validates every record of the built-in tables.
pub(crate) fn count_records(view: View<'_>) -> Result<RecordCounts> {
    let mut counts = RecordCounts::default();
    let mut active = 0_u64;
    read::for_each_session(&view, |record| {
        counts.sessions += 1;
        if record.is_active() {
            active += 1;
            read::require_indexed_active(&view, &record.id)?;
        }
        Ok(())
    })?;
    read::require_active_index_count(&view, active)?;
    read::for_each_task(&view, |_| {
        counts.tasks += 1;
        Ok(())
    })?;
    read::for_each_event(&view, |_| {
        counts.events += 1;
        Ok(())
    })?;
    read::for_each_dead_letter(&view, |_| {
        counts.dead_letters += 1;
        Ok(())
    })?;
    read::for_each_expiry(&view, |_| {
        counts.task_expiries += 1;
        Ok(())
    })?;
    // A removed session's numbering is dropped when the session is created again.
    read::for_each_removed_session(&view, |(id, _)| match read::session(&view, &id)? {
        None => Ok(()),
        Some(_) => Err(Error::Corrupt {
            table: crate::tables::REMOVED_SESSIONS,
            key: id.to_string(),
            reason: "a session of this identifier exists beside its removed numbering".into(),
        }),
    })?;
    Ok(counts)
}

/// The report of a full check.
pub(crate) fn report(
    structure: &Structure,
    records: RecordCounts,
    started: Instant,
) -> CheckReport {
    CheckReport {
        data_bytes: structure.choice.file_bytes,
        page_bytes: structure.choice.page_bytes,
        last_page: structure.choice.meta.last_pgno,
        txn_id: structure.choice.meta.txnid,
        meta_page: structure.choice.slot,
        pages_in_use: structure.pages_in_use,
        pages_free: structure.pages_free,
        pages_unaccounted: structure.pages_unaccounted,
        tables: structure
            .tables
            .iter()
            .map(|(name, counts)| TableReport {
                name: name.clone(),
                entries: counts.entries,
                pages: counts.pages(),
            })
            .collect(),
        sessions: records.sessions,
        tasks: records.tasks,
        events: records.events,
        dead_letters: records.dead_letters,
        task_expiries: records.task_expiries,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// Checks the store in `dir`, which no process may have open: the meta pages and the
/// length, the structural walk of every page, then every record of the built-in tables
/// (see [`CheckAtOpen`](crate::CheckAtOpen)). Nothing is written.
///
/// # Errors
/// [`Error::Locked`] while the store is open (in this process or another);
/// [`Error::StoreMissing`] for a directory whose data file is gone; an `Io` error
/// (not found) for a directory that never held a store; [`Error::Truncated`],
/// [`Error::CorruptFile`] or [`Error::Corrupt`] for the damage found.
pub fn check_dir(dir: impl AsRef<Path>) -> Result<CheckReport> {
    let started = Instant::now();
    let dir = dir.as_ref();
    if !fs::metadata(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .is_dir()
    {
        return Err(Error::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    // The walk reads the file with plain reads; a writer at the same time would make a
    // consistent file look damaged.
    let _lock = lock_dir(dir)?;
    let identity = identity::read(dir)?;
    let data = match open_data_file(dir)? {
        DataFileState::Present(data) => data,
        absent => {
            let data = dir.join(DATA_FILE_NAME);
            let found = absent.absence().unwrap_or("missing");
            return Err(match identity {
                Some(_) => Error::StoreMissing {
                    dir: dir.to_path_buf(),
                    identity: identity::path(dir),
                    data,
                    found,
                },
                None => Error::Io {
                    path: data,
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no store here: the data file is {found}"),
                    ),
                },
            });
        }
    };
    let structure = data.walk()?;
    let records = count_records_read_only(dir, &data)?;
    Ok(report(&structure, records, started))
}

/// The logical walk of `check_dir`: LMDB opened read-only on a directory this process
/// holds the lock of.
fn count_records_read_only(dir: &Path, data: &DataFile) -> Result<RecordCounts> {
    let map_bytes = usize::try_from(data.map_bytes_needed()).unwrap_or(usize::MAX);
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(round_map_size(map_bytes))
        .max_dbs(EXISTING_TABLES_MAX);
    // SAFETY: READ_ONLY only keeps this environment from writing; it weakens nothing.
    unsafe {
        options.flags(EnvFlags::READ_ONLY);
    }
    // SAFETY: the memory map is undefined behaviour if the file changes behind LMDB's
    // back or LMDB follows a bad page. This process holds the directory's lock, so no
    // owner of this crate writes the file meanwhile, and the structural walk just checked
    // every page LMDB can reach from the meta page it will use.
    let env = unsafe { options.open(dir) }.map_err(|error| match error {
        heed::Error::EnvAlreadyOpened => Error::Locked {
            dir: dir.to_path_buf(),
        },
        error => Error::lmdb("opening the environment to check it", error),
    })?;
    // A store whose first commit never happened has no tables, and nothing to count.
    let Some(tables) = tables::open_existing(&env, dir, &data.path)? else {
        return Ok(RecordCounts::default());
    };
    let rtxn = env
        .read_txn()
        .map_err(|e| Error::lmdb("beginning the check's read transaction", e))?;
    count_records(View {
        txn: &rtxn,
        tables: &tables,
    })
}
