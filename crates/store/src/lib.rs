//! LMDB persistence for bgsession: records, snapshots and the
//! group-commit writer.
//!
//! A [`Store`] is one LMDB environment in one directory, owned by one process at a time.
//! Writes are units of work run by a single writer thread, many to a commit; reads are
//! [`Snapshot`]s usable from any thread. [`Store::close`] shuts it down cleanly.
//! [`Store::open_read_only`] reads a store whose owner may be running in another process
//! (for inspection), without a lock or a writer.
//!
//! LMDB trusts its file: it has no checksums, and a truncated file or a damaged page
//! makes it fault. So `Store::open` reads the meta pages and checks the file's length
//! with plain reads before LMDB maps it, and (see [`CheckAtOpen`]) walks every page and
//! record; [`check_dir`] runs the same checks on a closed store. Every error has a
//! [`kind`](Error::kind) that code above the store can act on.
//!
//! - `ids`: validated session and task identifiers.
//! - `identity`: the identity file that makes a directory remember it held a store.
//! - `check`: [`check_dir`] and the checks of the data file run before LMDB maps it.
//! - `records`: the persisted session, task, event and dead-letter records and their
//!   validation.
//! - `error`: the crate's one error type.
//! - `options`: [`StoreOptions`] and the limits they default to.
//! - `store`: [`Store`]: opening the directory, submitting units, snapshots.
//! - `tables`: the tables, their creation (or, read-only, their opening) and the schema
//!   and codec versions in `meta`.
//! - `keys`: the key layouts (`session 0x00 task`, `session 0x00 seq`,
//!   `expires_ms session 0x00 task`).
//! - `writer`: the writer thread: group commit, nested transactions, map growth.
//! - `scope`: [`WriteScope`], what a unit reads and writes through.
//! - `snapshot`: [`Snapshot`], a read transaction over the last commit.
//! - `read`: decoding and checking of records read by either.
//! - `app_table`: [`AppTable`], typed access to the application's own tables.
//! - `queue`, `reply`, `gate`: the submission queue, one-shot replies, and the gate that
//!   keeps snapshots out while the map is resized.

#![warn(missing_docs)]

mod app_table;
mod check;
mod error;
mod gate;
mod identity;
mod ids;
mod keys;
mod kv;
mod options;
#[cfg(feature = "postgres")]
mod pg;
mod queue;
mod read;
mod records;
mod reply;
mod scope;
mod snapshot;
mod store;
mod tables;
mod unmap;
mod writer;

pub use app_table::{AppTable, ReadScope};
pub use check::{CheckReport, TableReport, check_dir};
pub use error::{BackendError, Error, ErrorKind, Result};
pub use identity::{IDENTITY_FILE_NAME, StoreIdentity};
pub use ids::{IDENTIFIER_BYTES_MAX, IdentifierKind, SessionId, TaskId, validate_identifier};
pub use options::{
    APP_TABLE_NAME_BYTES_MAX, APP_TABLES_MAX, BATCH_UNITS_MAX, CHECK_DATA_BYTES_MAX, CheckAtOpen,
    MAP_SIZE_BYTES_INITIAL, MAP_SIZE_BYTES_MAX, QUEUE_UNITS_MAX, READERS_MAX, SNAPSHOT_AGE_MS_MAX,
    StoreOptions,
};
#[cfg(feature = "postgres")]
pub use pg::{PostgresOptions, SqlTransaction};
pub use records::*;
pub use scope::{APP_KEY_BYTES_MAX, APP_VALUE_BYTES_MAX, WriteScope};
pub use snapshot::{Snapshot, StoreSize};
pub use store::{LOCK_FILE_NAME, Store};
pub use tables::CODEC_VERSION;
/// The PostgreSQL client crate the backend is built on: [`SqlTransaction`] takes its
/// parameter types and returns its rows.
#[cfg(feature = "postgres")]
pub use tokio_postgres;
