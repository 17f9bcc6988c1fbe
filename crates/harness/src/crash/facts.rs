//! Reading a run directory into what the verifier checks: the ledger, the session, task
//! and undelivered event records, the files left under the download directory, and the
//! origin's upload counters. Only once no worker runs (the store is one owner's).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use session_store::{EventRecord, SessionRecord, Store, TaskRecord};

use super::ledger::{Ledger, LedgerEntry};
use super::worker::STORE_DIR;
use crate::origin::CountersSnapshot;

/// The origin's counters file in a run directory (written at the end of a run).
pub const ORIGIN_FILE_NAME: &str = "origin.json";

/// What the origin saw that the verifier uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginFacts {
    /// Uploads stored (bytes matched), per object.
    pub uploads_by_object: BTreeMap<String, u64>,
    /// Uploads whose idempotency key was seen before: sent again, not stored again.
    pub duplicate_uploads_suppressed: u64,
    /// Uploads whose bytes did not match the object.
    pub upload_mismatches: u64,
    /// Body bytes served, all objects.
    pub body_bytes: u64,
    /// Requests in total.
    pub requests: u64,
    /// Connections reset on purpose.
    pub resets: u64,
}

impl From<&CountersSnapshot> for OriginFacts {
    fn from(counters: &CountersSnapshot) -> Self {
        OriginFacts {
            uploads_by_object: counters.uploads_by_object.clone(),
            duplicate_uploads_suppressed: counters.duplicate_uploads_suppressed,
            upload_mismatches: counters.upload_mismatches,
            body_bytes: counters.body_bytes_by_object.values().sum(),
            requests: counters.requests_total,
            resets: counters.resets,
        }
    }
}

impl OriginFacts {
    /// Writes `origin.json` into a run directory.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(ORIGIN_FILE_NAME);
        fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads `origin.json` from a run directory, if there is one.
    ///
    /// # Errors
    /// A malformed file.
    pub fn load(dir: &Path) -> anyhow::Result<Option<OriginFacts>> {
        let path = dir.join(ORIGIN_FILE_NAME);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Everything the verifier looks at. Plain data, so tests can doctor it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The ledger entries, in append order.
    pub ledger: Vec<LedgerEntry>,
    /// Every session record.
    pub sessions: Vec<SessionRecord>,
    /// Every task record.
    pub tasks: Vec<TaskRecord>,
    /// Events still in the outbox (undelivered).
    pub undelivered: Vec<EventRecord>,
    /// Complete files under `<root>/downloads` (relative paths).
    pub leftover_files: Vec<String>,
    /// `.part` and `.validator` files under `<root>/downloads` (relative paths).
    pub partial_files: Vec<String>,
    /// The origin's counters, when the origin is the built-in one.
    pub origin: Option<OriginFacts>,
}

impl Facts {
    /// Reads a run directory. No worker may be running.
    ///
    /// # Errors
    /// The store cannot be opened (missing, locked by a running worker, corrupt).
    pub fn collect(dir: &Path, origin: Option<OriginFacts>) -> anyhow::Result<Facts> {
        let store = open_run_store(dir, &[])?;
        let facts = Facts::read(&store, dir, origin)?;
        drop(store);
        Ok(facts)
    }

    /// Reads the facts of a run directory through a store opened on it (see
    /// [`open_run_store`]), in one snapshot.
    ///
    /// # Errors
    /// Store errors (a record or ledger entry that does not decode).
    pub fn read(store: &Store, dir: &Path, origin: Option<OriginFacts>) -> anyhow::Result<Facts> {
        let ledger = Ledger::new(store)?;
        let snapshot = store.snapshot()?;
        let sessions = snapshot.sessions()?;
        let mut tasks = Vec::new();
        snapshot.for_each_task(|task| {
            tasks.push(task);
            Ok(())
        })?;
        let mut undelivered = Vec::new();
        for session in &sessions {
            let count = usize::try_from(session.next_event_seq - session.delivered_seq)
                .unwrap_or(usize::MAX);
            undelivered.extend(snapshot.events(&session.id, session.delivered_seq, count)?);
        }
        let entries = ledger.entries(&snapshot)?;
        drop(snapshot);
        let (leftover_files, partial_files) =
            download_files(&dir.join(STORE_DIR).join("downloads"));
        Ok(Facts {
            ledger: entries,
            sessions,
            tasks,
            undelivered,
            leftover_files,
            partial_files,
            origin,
        })
    }
}

/// Opens the store of a run directory with the ledger and the given application tables
/// declared. No worker may be running.
///
/// # Errors
/// No store in the directory, or one that cannot be opened (locked by a running worker,
/// corrupt).
pub fn open_run_store(dir: &Path, app_tables: &[String]) -> anyhow::Result<Store> {
    let root = dir.join(STORE_DIR);
    if !root.is_dir() {
        anyhow::bail!("{} has no store (no worker ever ran there)", root.display());
    }
    super::run_store::RunStore::load(dir)?
        .open(&root, app_tables)
        .with_context(|| format!("opening the store of {}", root.display()))
}

/// The files under the download directory: complete ones and partial ones.
pub(crate) fn download_files(downloads: &Path) -> (Vec<String>, Vec<String>) {
    let mut complete = Vec::new();
    let mut partial = Vec::new();
    let Ok(sessions) = fs::read_dir(downloads) else {
        return (complete, partial);
    };
    for session in sessions.flatten() {
        let session_name = session.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(session.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let relative = format!("{session_name}/{name}");
            if name.ends_with(".part") || name.ends_with(".validator") {
                partial.push(relative);
            } else {
                complete.push(relative);
            }
        }
    }
    complete.sort();
    partial.sort();
    (complete, partial)
}
