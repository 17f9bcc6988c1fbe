//! LMDB persistence for bgsession (DESIGN section 3).
//!
//! - `ids`: validated session and task identifiers.
//! - `records`: the persisted session, task and event records and their validation.
//! - `error`: the crate's one error type.

#![warn(missing_docs)]

mod error;
mod ids;
mod records;

pub use error::{Error, Result};
pub use ids::{IDENTIFIER_BYTES_MAX, IdentifierKind, SessionId, TaskId, validate_identifier};
pub use records::*;
