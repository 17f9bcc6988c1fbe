//! What the application's check sees once a crash run is over, and what its delegate is
//! told when a worker builds it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use session_store::{AppTable, Snapshot, TaskRecord, TaskState};

use super::workload::Workload;

/// What a check returns: one sentence per invariant violation it found (none: the
/// invariants hold), or an error that stopped it (reported as a violation).
pub type CheckResult = Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>;

/// Given to the delegate factory in each worker process.
#[derive(Debug, Clone)]
pub struct AppContext {
    dir: PathBuf,
    run: u32,
    sql_schema: Option<String>,
}

impl AppContext {
    pub(crate) fn new(dir: PathBuf, run: u32, sql_schema: Option<String>) -> AppContext {
        AppContext {
            dir,
            run,
            sql_schema,
        }
    }

    /// With [`CrashTest::postgres`](super::CrashTest::postgres): a PostgreSQL schema of the
    /// application's own, new for each case and the same in every worker run of it and in
    /// the check ([`CheckView::sql_schema`]), for the tables the delegate writes through
    /// [`WriteScope::postgres`](session_store::WriteScope::postgres). It exists when the
    /// first worker starts; the delegate creates its tables in it (`CREATE TABLE IF NOT
    /// EXISTS`, in its unit). `None` on LMDB.
    pub fn sql_schema(&self) -> Option<&str> {
        self.sql_schema.as_deref()
    }

    /// A directory of the application's own, the same in every worker run of a case
    /// and in the check ([`CheckView::dir`]): for files it writes beside its tables.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The worker run's number (1 for the first; the last, clean run has the highest).
    pub fn run(&self) -> u32 {
        self.run
    }
}

/// How a task ended, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// The session.
    pub session: String,
    /// The task.
    pub task: String,
    /// `success`, `rejected`, `failed` or `cancelled`; `None` if it is not terminal.
    pub outcome: Option<&'static str>,
}

/// A read-only view of a finished case: the application's tables (through one snapshot
/// of the store, taken after the last worker ended), the tasks' outcomes, the workload
/// and the application's directory.
#[derive(Debug)]
pub struct CheckView<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) workload: &'a Workload,
    pub(crate) tasks: &'a [TaskRecord],
    pub(crate) dir: &'a Path,
    pub(crate) sql_schema: Option<&'a str>,
}

impl CheckView<'_> {
    /// The snapshot: read any table declared with
    /// [`CrashTest::app_table`](super::CrashTest::app_table) through an
    /// [`AppTable`] and this snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        self.snapshot
    }

    /// Every entry of an application table, in key order.
    ///
    /// # Errors
    /// A table the crash test did not declare, or a value that does not decode as `V`.
    pub fn table<V>(&self, name: &str) -> session_store::Result<Vec<(Vec<u8>, V)>>
    where
        V: Serialize + DeserializeOwned,
    {
        AppTable::<V>::named(name)?.entries(self.snapshot)
    }

    /// The workload the case ran.
    pub fn workload(&self) -> &Workload {
        self.workload
    }

    /// How a task ended (`None` for a task the store does not know or that is not
    /// terminal).
    pub fn outcome(&self, session: &str, task: &str) -> Option<&'static str> {
        self.tasks
            .iter()
            .find(|record| record.session.as_str() == session && record.id.as_str() == task)
            .and_then(|record| terminal(record))
    }

    /// How every task of the store ended.
    pub fn outcomes(&self) -> Vec<TaskOutcome> {
        self.tasks
            .iter()
            .map(|record| TaskOutcome {
                session: record.session.to_string(),
                task: record.id.to_string(),
                outcome: terminal(record),
            })
            .collect()
    }

    /// The application's directory ([`AppContext::dir`]).
    pub fn dir(&self) -> &Path {
        self.dir
    }

    /// The application's PostgreSQL schema ([`AppContext::sql_schema`]); read its tables
    /// with [`Snapshot::query`] on [`snapshot`](Self::snapshot).
    pub fn sql_schema(&self) -> Option<&str> {
        self.sql_schema
    }
}

fn terminal(record: &TaskRecord) -> Option<&'static str> {
    match &record.state {
        TaskState::Completed { outcome, .. } => Some(outcome.name()),
        TaskState::Pending { .. } | TaskState::Running { .. } => None,
    }
}
