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
    /// An LMDB operation failed.
    #[error("LMDB error while {operation}: {source}")]
    Lmdb {
        /// What the store was doing.
        operation: &'static str,
        /// heed's error, shared so that every unit of a failed batch can carry it.
        source: Arc<heed::Error>,
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
    /// `Store::write` was called from inside a unit, on the writer thread; waiting there
    /// for the writer would wait forever.
    #[error("Store::write called from inside a write unit (it would wait on itself)")]
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
}

impl Error {
    /// Wraps a heed error with what the store was doing.
    pub(crate) fn lmdb(operation: &'static str, source: heed::Error) -> Error {
        Error::Lmdb {
            operation,
            source: Arc::new(source),
        }
    }

    /// Whether this is LMDB's "map full": the writer grows the map and re-runs the batch,
    /// so callers never see it.
    pub fn is_map_full(&self) -> bool {
        matches!(
            self,
            Error::Lmdb { source, .. }
                if matches!(**source, heed::Error::Mdb(heed::MdbError::MapFull))
        )
    }
}
