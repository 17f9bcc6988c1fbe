//! The store's one error type.

use std::path::PathBuf;

use crate::ids::IdentifierKind;

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
    #[error("the store directory {dir} is locked by another owner (another process, or another Store in this one)")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
}
