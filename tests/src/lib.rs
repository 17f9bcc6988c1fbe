//! Support shared by the cross-crate tests in `tests/tests/`.
//!
//! - `tmpfs`: a small tmpfs mounted by a test for full-disk cases, with the one skip rule.
//! - `ledger`: the builder, recording delegate and completion, and the origin that most
//!   session tests use.
//! - `pg`: the PostgreSQL side of the exactly-once tests (connection, table, delegate).

#![warn(missing_docs)]

pub mod ledger;
pub mod pg;
pub mod tmpfs;
