//! The store's one error type.

use std::path::PathBuf;
use std::sync::Arc;

use crate::ids::{IdentifierKind, SessionId};

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identifier is not acceptable.
    #[error("invalid {kind} identifier {value:?}: it {reason}")]
    InvalidIdentifier {
        /// Session or task.
        kind: IdentifierKind,
        /// The offending value (cut short if very long).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record was refused before it was written.
    #[error("invalid record for table {table}, key {key}: {reason}")]
    InvalidRecord {
        /// The table.
        table: &'static str,
        /// The key, printable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored record could not be decoded or is inconsistent.
    #[error("corrupt record in table {table}, key {key}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key, printable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another owner holds the root directory.
    #[error(
        "the store directory {dir} is locked by another owner (another process, or another Store in this one)"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A file system operation on the store directory failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The store path exists and is not a directory.
    #[error("the store path {path} exists and is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The options given to `Store::open` are unusable.
    #[error("invalid store options: {reason}")]
    InvalidOptions {
        /// What is wrong with them.
        reason: String,
    },
    /// The storage backend (LMDB, or the PostgreSQL server) refused an operation.
    #[error("{} error while {operation}: {source}", source.backend())]
    Backend {
        /// What the store was doing.
        operation: &'static str,
        /// The backend's own error.
        source: BackendError,
    },
    /// The connection to the store's server was lost while a batch was committing, and
    /// whether it committed could not be learned: the unit's writes may or may not be
    /// durable (a later read tells).
    #[error("the commit of a batch of the store {dir} may or may not have happened: {reason}")]
    CommitUnknown {
        /// The store.
        dir: PathBuf,
        /// The commit's error and the lookup's.
        reason: String,
    },
    /// An invariant of the store did not hold (a bug): the operation was refused.
    #[error("internal error: {reason}")]
    Internal {
        /// What did not hold.
        reason: String,
    },
    /// The operation exists on another backend only (such as
    /// [`WriteScope::postgres`](crate::WriteScope) on LMDB, or a store's page
    /// statistics on PostgreSQL).
    #[error("{what} is not available on a store kept in {backend}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// The store's backend.
        backend: &'static str,
    },
    /// The store was written by a newer build with a schema this one does not know.
    #[error(
        "the store in {dir} has schema version {found}, newer than the supported {supported}; \
         upgrade this program instead of opening the store with an older build"
    )]
    SchemaTooNew {
        /// The directory.
        dir: PathBuf,
        /// The schema version found in the store.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },
    /// The store's records were encoded with a codec this build does not use.
    #[error(
        "the store in {dir} uses codec version {found}; this build reads codec version {supported}"
    )]
    CodecMismatch {
        /// The directory.
        dir: PathBuf,
        /// The codec version found in the store.
        found: u32,
        /// The codec version this build uses.
        supported: u32,
    },
    /// An event with this sequence number already exists; events are never overwritten.
    #[error("event {seq} of session {session} already exists")]
    EventExists {
        /// The session.
        session: SessionId,
        /// The sequence number.
        seq: u64,
    },
    /// A dead letter with this sequence number already exists; a dead letter is never
    /// overwritten (delete it first, as re-delivering it does).
    #[error("dead letter {seq} of session {session} already exists")]
    DeadLetterExists {
        /// The session.
        session: SessionId,
        /// The sequence number of its event.
        seq: u64,
    },
    /// A write to a store opened with `Store::open_read_only`.
    #[error("the store in {dir} is open read-only; writes go through its owner")]
    ReadOnly {
        /// The directory.
        dir: PathBuf,
    },
    /// `Store::open_read_only` of a directory that holds no store: no data file (and no
    /// identity file saying one was there), or a data file whose first commit never
    /// happened.
    #[error("no store in {dir}: {reason}")]
    NoStore {
        /// The directory.
        dir: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// `Store::open_read_only` of a directory this process already has open: LMDB must
    /// not open one environment twice in a process; read through that `Store`.
    #[error(
        "the store in {dir} is already open in this process; read it through that Store's snapshots"
    )]
    OpenInThisProcess {
        /// The directory.
        dir: PathBuf,
    },
    /// An application table name is not acceptable.
    #[error("invalid application table name {name:?}: it {reason}")]
    InvalidTableName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The application asked for a table it did not name in `StoreOptions::app_tables`.
    #[error("unknown application table {name:?}: name it in StoreOptions::app_tables")]
    UnknownTable {
        /// The name asked for.
        name: String,
    },
    /// An application table key is empty or too long for LMDB.
    #[error("invalid key for application table {table}: {reason}")]
    InvalidKey {
        /// The table.
        table: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A unit of work panicked; its nested transaction was aborted and the rest of its
    /// batch committed without it.
    #[error("a write unit panicked: {message}")]
    UnitPanicked {
        /// The panic message, when it was a string.
        message: String,
    },
    /// `Store::write` or `Store::close` was called from inside a unit, on the writer
    /// thread; waiting there for the writer would wait forever.
    #[error(
        "Store::write or Store::close called from inside a write unit (it would wait on itself)"
    )]
    ReentrantWrite,
    /// The writer thread is gone, so the unit was not (or not known to be) committed.
    #[error("the store's writer thread has stopped")]
    WriterStopped,
    /// The map must grow past `StoreOptions::map_size_bytes_max` to hold the batch.
    #[error("the store needs a map larger than the limit of {limit_bytes} bytes")]
    MapSizeLimit {
        /// The configured limit.
        limit_bytes: usize,
    },
    /// A fail point (feature `failpoints`) made the writer fail on purpose.
    #[error("fail point {name} triggered")]
    FailPoint {
        /// The fail point's name.
        name: &'static str,
    },
    /// The directory held a store (its identity file says so), but the data file is
    /// missing or empty: opening it would start a new, empty store and lose every
    /// acknowledged record. Restore the data file from a backup, or remove the identity
    /// file to start afresh on purpose.
    #[error(
        "the store in {dir} is gone: its identity file {identity} is there but its data file \
         {data} is {found}; restore the data file, or remove the identity file to start a new store"
    )]
    StoreMissing {
        /// The directory.
        dir: PathBuf,
        /// The identity file that says a store was created here.
        identity: PathBuf,
        /// The data file.
        data: PathBuf,
        /// `"missing"` or `"empty"`.
        found: &'static str,
    },
    /// The data file is shorter than the pages it must hold (a truncated copy or a
    /// damaged disk); LMDB would fault reading past its end.
    #[error(
        "the data file {path} is truncated: it has {file_bytes} bytes, its own meta page needs {needed_bytes}"
    )]
    Truncated {
        /// The data file.
        path: PathBuf,
        /// Its length.
        file_bytes: u64,
        /// The length its pages need.
        needed_bytes: u64,
    },
    /// A store file is damaged: a page of the data file that LMDB would follow is not
    /// what LMDB expects (LMDB has no checksums and would crash or misread it), or the
    /// identity file cannot be read.
    #[error("the store file {path} is damaged{}: {reason}", page.map(|page| format!(" at page {page}")).unwrap_or_default())]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// The page, when one page is at fault.
        page: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The map had to grow for a batch, but snapshots stayed alive longer than
    /// `StoreOptions::snapshot_age_ms_max` (growing the map needs every read transaction
    /// ended); the batch's units were not committed. Drop the snapshots and retry. In a
    /// store opened read-only, the owner's map grew and this process could not adopt
    /// it for the same reason: the snapshot was not begun.
    #[error(
        "the map must grow but {snapshots} snapshot(s) stayed alive for {waited_ms} ms; \
         the batch was not committed, or in a read-only store the snapshot not begun \
         (a thread may hold a snapshot while waiting for a write)"
    )]
    MapGrowthBlocked {
        /// Snapshots still alive when the writer gave up.
        snapshots: usize,
        /// How long the writer waited for them.
        waited_ms: u64,
    },
    /// A snapshot was read after `StoreOptions::snapshot_age_ms_max`: take a new one.
    #[error(
        "the snapshot is {age_ms} ms old, older than the maximum of {age_ms_max} ms; take a new one"
    )]
    SnapshotTooOld {
        /// Its age.
        age_ms: u64,
        /// The maximum.
        age_ms_max: u64,
    },
    /// The file system holding the store is full: the commit could not be written. Nothing
    /// acknowledged is lost; the same write succeeds once there is room.
    #[error(
        "the file system of the store in {dir} is full ({free_bytes} bytes free); the batch was not committed"
    )]
    StorageFull {
        /// The directory.
        dir: PathBuf,
        /// Free bytes (for unprivileged users) when the commit failed.
        free_bytes: u64,
    },
    /// The store was closed with `Store::close`.
    #[error("the store in {dir} is closed")]
    Closed {
        /// The directory.
        dir: PathBuf,
    },
    /// `Store::close` waited `StoreOptions::snapshot_age_ms_max` for snapshots to end and
    /// some are still alive; the environment stays open until they are dropped (call
    /// `close` again then).
    #[error(
        "the store in {dir} cannot finish closing: {snapshots} snapshot(s) still alive after {waited_ms} ms"
    )]
    CloseBlocked {
        /// The directory.
        dir: PathBuf,
        /// Snapshots still alive.
        snapshots: usize,
        /// How long `close` waited.
        waited_ms: u64,
    },
}

/// What kind of failure an [`Error`] is, for code above the store that must act on it
/// without knowing the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Out of room: the file system or the map size limit. Free space or raise the limit;
    /// the same write then succeeds.
    Full,
    /// Stored data is damaged or missing: a record, a page, the data file. Needs a person
    /// (restore from a backup).
    Corrupt,
    /// Another owner holds the store directory.
    Locked,
    /// The store was closed, or its writer is gone.
    Closed,
    /// A resource of this process was held too long (a snapshot blocking map growth or
    /// close, or read after its maximum age): release it and retry.
    Busy,
    /// The caller's input or use is wrong (identifiers, records, options, keys, a write
    /// from inside a unit).
    InvalidInput,
    /// The store was written by a build this one cannot read.
    Incompatible,
    /// The operating system refused a file operation.
    Io,
    /// A fault inside the store or in a unit (a panic, a fail point, an unexpected LMDB
    /// error).
    Internal,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidIdentifier { .. }
            | Error::InvalidRecord { .. }
            | Error::NotADirectory { .. }
            | Error::InvalidOptions { .. }
            | Error::EventExists { .. }
            | Error::DeadLetterExists { .. }
            | Error::ReadOnly { .. }
            | Error::NoStore { .. }
            | Error::InvalidTableName { .. }
            | Error::UnknownTable { .. }
            | Error::InvalidKey { .. }
            | Error::ReentrantWrite => ErrorKind::InvalidInput,
            Error::Corrupt { .. }
            | Error::StoreMissing { .. }
            | Error::Truncated { .. }
            | Error::CorruptFile { .. } => ErrorKind::Corrupt,
            Error::Locked { .. } | Error::OpenInThisProcess { .. } => ErrorKind::Locked,
            Error::Io { .. } | Error::CommitUnknown { .. } => ErrorKind::Io,
            Error::Backend { source, .. } => source.kind(),
            Error::Unsupported { .. } => ErrorKind::InvalidInput,
            Error::SchemaTooNew { .. } | Error::CodecMismatch { .. } => ErrorKind::Incompatible,
            Error::MapSizeLimit { .. } | Error::StorageFull { .. } => ErrorKind::Full,
            Error::WriterStopped | Error::Closed { .. } => ErrorKind::Closed,
            Error::MapGrowthBlocked { .. }
            | Error::SnapshotTooOld { .. }
            | Error::CloseBlocked { .. } => ErrorKind::Busy,
            Error::UnitPanicked { .. } | Error::FailPoint { .. } | Error::Internal { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// Wraps a heed error with what the store was doing.
    pub(crate) fn lmdb(operation: &'static str, source: heed::Error) -> Error {
        Error::Backend {
            operation,
            source: BackendError::lmdb(source),
        }
    }

    /// Wraps a PostgreSQL client error with what the store was doing.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(operation: &'static str, source: tokio_postgres::Error) -> Error {
        Error::Backend {
            operation,
            source: BackendError {
                inner: Arc::new(BackendInner::Postgres(source)),
            },
        }
    }

    /// Whether this is LMDB's "map full": the writer grows the map and re-runs the batch,
    /// so callers never see it.
    pub fn is_map_full(&self) -> bool {
        matches!(
            self,
            Error::Backend { source, .. }
                if matches!(*source.inner, BackendInner::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull)))
        )
    }
}

/// A storage backend's own error, kept opaque so that no backend crate's types are part
/// of this API: its message (`Display`), its cause (`source`), and a kind through
/// [`Error::kind`]. Cheap to clone: every unit of a failed batch carries the same one.
#[derive(Clone)]
pub struct BackendError {
    inner: Arc<BackendInner>,
}

enum BackendInner {
    Lmdb(heed::Error),
    #[cfg(feature = "postgres")]
    Postgres(tokio_postgres::Error),
}

impl BackendError {
    pub(crate) fn lmdb(error: heed::Error) -> BackendError {
        BackendError {
            inner: Arc::new(BackendInner::Lmdb(error)),
        }
    }

    /// The backend's name: "LMDB" or "PostgreSQL".
    pub fn backend(&self) -> &'static str {
        match &*self.inner {
            BackendInner::Lmdb(_) => "LMDB",
            #[cfg(feature = "postgres")]
            BackendInner::Postgres(_) => "PostgreSQL",
        }
    }

    /// The SQLSTATE code of a PostgreSQL error the server reported (such as `23505`
    /// for a unique violation), if it is one.
    pub fn sql_state(&self) -> Option<&str> {
        match &*self.inner {
            BackendInner::Lmdb(_) => None,
            #[cfg(feature = "postgres")]
            BackendInner::Postgres(error) => error.code().map(|code| code.code()),
        }
    }

    /// The PostgreSQL client's error, if it is one.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_error(&self) -> Option<&tokio_postgres::Error> {
        match &*self.inner {
            BackendInner::Lmdb(_) => None,
            BackendInner::Postgres(error) => Some(error),
        }
    }

    fn kind(&self) -> ErrorKind {
        match &*self.inner {
            BackendInner::Lmdb(error) => lmdb_kind(error),
            #[cfg(feature = "postgres")]
            BackendInner::Postgres(error) => crate::pg::error_kind(error),
        }
    }

    fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match &*self.inner {
            BackendInner::Lmdb(error) => error,
            #[cfg(feature = "postgres")]
            BackendInner::Postgres(error) => error,
        }
    }
}

impl std::fmt::Debug for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.error(), f)
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            BackendInner::Lmdb(error) => std::fmt::Display::fmt(error, f),
            // tokio-postgres says only "db error" for a server's error; its message,
            // detail and SQLSTATE are what a reader needs.
            #[cfg(feature = "postgres")]
            BackendInner::Postgres(error) => match error.as_db_error() {
                Some(db) => write!(f, "{} ({})", db, db.code().code()),
                None => std::fmt::Display::fmt(error, f),
            },
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error().source()
    }
}

/// The kind of an LMDB error: heed turns LMDB's OS errors into `Io`, keeps its own codes.
fn lmdb_kind(error: &heed::Error) -> ErrorKind {
    use heed::MdbError;
    match error {
        heed::Error::Io(error) => match error.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => ErrorKind::Full,
            _ => ErrorKind::Io,
        },
        heed::Error::Mdb(error) => match error {
            MdbError::MapFull | MdbError::DbsFull | MdbError::ReadersFull | MdbError::TxnFull => {
                ErrorKind::Full
            }
            MdbError::PageNotFound | MdbError::Corrupted | MdbError::Invalid | MdbError::Panic => {
                ErrorKind::Corrupt
            }
            MdbError::VersionMismatch => ErrorKind::Incompatible,
            _ => ErrorKind::Internal,
        },
        heed::Error::EnvAlreadyOpened => ErrorKind::Locked,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LMDB's errors get the kind a caller can act on: a full disk is `Full` whatever
    /// heed wraps it in, LMDB's corruption codes are `Corrupt`.
    #[test]
    fn lmdb_errors_have_kinds() {
        let lmdb = |error| Error::lmdb("testing", error);
        let os = |code| heed::Error::Io(std::io::Error::from_raw_os_error(code));
        assert_eq!(lmdb(os(libc::ENOSPC)).kind(), ErrorKind::Full);
        assert_eq!(lmdb(os(libc::EIO)).kind(), ErrorKind::Io);
        let mdb = |error| heed::Error::Mdb(error);
        assert_eq!(
            lmdb(mdb(heed::MdbError::Corrupted)).kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            lmdb(mdb(heed::MdbError::PageNotFound)).kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(lmdb(mdb(heed::MdbError::MapFull)).kind(), ErrorKind::Full);
        assert_eq!(
            lmdb(heed::Error::EnvAlreadyOpened).kind(),
            ErrorKind::Locked
        );
        let dir = PathBuf::from("/d");
        assert_eq!(Error::Closed { dir: dir.clone() }.kind(), ErrorKind::Closed);
        assert_eq!(Error::Locked { dir }.kind(), ErrorKind::Locked);
        assert_eq!(Error::ReentrantWrite.kind(), ErrorKind::InvalidInput);
    }
}
