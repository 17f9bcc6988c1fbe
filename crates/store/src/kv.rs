//! The storage seam: ordered byte tables read and written by key, which every backend
//! provides and on which the records (`read`, `scope`) are built.
//!
//! A backend gives each table of the store (the built-in ones and the application's) as
//! an ordered map from byte keys to byte values, ordered by unsigned byte comparison
//! (shorter first on a common prefix): LMDB's default order and PostgreSQL's `bytea`
//! order alike. Everything above it (encoding and versions, validation, the key layouts,
//! the indexes kept in step with the records) is shared, so the records mean the same on
//! every backend.
//!
//! The traits are `pub` inside this private module only because the sealed `ReadScope`
//! names them; nothing outside the crate can name or implement them.

use std::borrow::Cow;
use std::ops::Bound;

use crate::error::Result;

/// A built-in table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Builtin {
    Sessions,
    Tasks,
    Events,
    DeadLetters,
    TaskExpiry,
    ActiveSessions,
    RemovedSessions,
}

impl Builtin {
    /// Every built-in table.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) const ALL: [Builtin; 7] = [
        Builtin::Sessions,
        Builtin::Tasks,
        Builtin::Events,
        Builtin::DeadLetters,
        Builtin::TaskExpiry,
        Builtin::ActiveSessions,
        Builtin::RemovedSessions,
    ];

    /// The table's name (in LMDB, and in PostgreSQL's schema).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn name(self) -> &'static str {
        use crate::tables::{
            ACTIVE_SESSIONS, DEAD_LETTERS, EVENTS, REMOVED_SESSIONS, SESSIONS, TASK_EXPIRY, TASKS,
        };
        match self {
            Builtin::Sessions => SESSIONS,
            Builtin::Tasks => TASKS,
            Builtin::Events => EVENTS,
            Builtin::DeadLetters => DEAD_LETTERS,
            Builtin::TaskExpiry => TASK_EXPIRY,
            Builtin::ActiveSessions => ACTIVE_SESSIONS,
            Builtin::RemovedSessions => REMOVED_SESSIONS,
        }
    }
}

/// A table of the store: built-in, or one of the application's by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableRef<'n> {
    Builtin(Builtin),
    App(&'n str),
}

/// What a scan calls for each entry, key and value.
pub type Visit<'v> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'v;

/// A range of keys.
pub type KeyRange<'k> = (Bound<&'k [u8]>, Bound<&'k [u8]>);

/// Whether `key` lies in `range`.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn in_range(range: &KeyRange<'_>, key: &[u8]) -> bool {
    let above = match range.0 {
        Bound::Included(start) => key >= start,
        Bound::Excluded(start) => key > start,
        Bound::Unbounded => true,
    };
    let below = match range.1 {
        Bound::Included(end) => key <= end,
        Bound::Excluded(end) => key < end,
        Bound::Unbounded => true,
    };
    above && below
}

/// The read half: what a snapshot or a unit reads through.
pub trait Kv {
    /// Whether the table is there. Only a store opened read-only can lack a built-in
    /// table (one a newer build added and no build with it has opened for writing yet):
    /// reads of it find nothing.
    fn has_table(&self, table: TableRef<'_>) -> bool;

    /// The value under `key`, if any.
    fn get(
        &self,
        table: TableRef<'_>,
        key: &[u8],
        operation: &'static str,
    ) -> Result<Option<Cow<'_, [u8]>>>;

    /// Visits up to `limit` entries within `range`, in key order; stops at the first
    /// error `visit` returns.
    fn scan(
        &self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        limit: usize,
        operation: &'static str,
        visit: &mut Visit<'_>,
    ) -> Result<()>;
}

/// The write half: what a unit writes through, inside its batch's transaction.
pub trait KvWrite: Kv {
    /// Writes `value` under `key`, replacing any value there.
    fn put(
        &mut self,
        table: TableRef<'_>,
        key: &[u8],
        value: &[u8],
        operation: &'static str,
    ) -> Result<()>;

    /// Writes `value` under `key` unless a value is there; `false` (nothing written) if
    /// one is.
    fn insert_new(
        &mut self,
        table: TableRef<'_>,
        key: &[u8],
        value: &[u8],
        operation: &'static str,
    ) -> Result<bool>;

    /// Deletes the value under `key`; `false` if there was none.
    fn delete(&mut self, table: TableRef<'_>, key: &[u8], operation: &'static str) -> Result<bool>;

    /// Deletes every entry within `range`; returns how many.
    fn delete_range(
        &mut self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        operation: &'static str,
    ) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_their_bounds() {
        let range: KeyRange<'_> = (Bound::Included(b"b"), Bound::Excluded(b"d"));
        assert!(!in_range(&range, b"a"));
        assert!(in_range(&range, b"b"));
        assert!(in_range(&range, b"b\x00"));
        assert!(in_range(&range, b"c"));
        assert!(!in_range(&range, b"d"));
        let range: KeyRange<'_> = (Bound::Excluded(b"b"), Bound::Included(b"d"));
        assert!(!in_range(&range, b"b"));
        assert!(in_range(&range, b"d"));
        assert!(in_range(&(Bound::Unbounded, Bound::Unbounded), b""));
    }
}
