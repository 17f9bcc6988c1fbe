//! Application tables: tables the application names at open and writes from its own
//! units (transactional delegates, completion handlers), in the same transactions as the
//! store's records.

use std::marker::PhantomData;
use std::sync::Arc;

use heed::BytesEncode;
use heed::types::SerdeBincode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::keys;
use crate::kv::Kv;
use crate::read;
use crate::scope::WriteScope;
use crate::snapshot::Snapshot;

mod sealed {
    /// Keeps [`ReadScope`](super::ReadScope) implemented by this crate's types only.
    pub trait Sealed {
        /// Reads through the backend's read half.
        fn with_kv<T>(
            &self,
            f: impl FnOnce(&dyn crate::kv::Kv) -> crate::error::Result<T>,
        ) -> crate::error::Result<T>;
    }
}

/// Something application table reads can go through: a [`WriteScope`] (sees the unit's
/// own uncommitted writes) or a [`Snapshot`] (sees the last commit).
pub trait ReadScope: sealed::Sealed {}

impl sealed::Sealed for WriteScope<'_> {
    fn with_kv<T>(&self, f: impl FnOnce(&dyn Kv) -> Result<T>) -> Result<T> {
        self.read(f)
    }
}
impl ReadScope for WriteScope<'_> {}

impl sealed::Sealed for Snapshot {
    fn with_kv<T>(&self, f: impl FnOnce(&dyn Kv) -> Result<T>) -> Result<T> {
        Snapshot::with_kv(self, f)
    }
}
impl ReadScope for Snapshot {}

/// A typed handle to an application table, from [`Store::app_table`](crate::Store::app_table).
/// Keys are byte strings (1 to [`APP_KEY_BYTES_MAX`](crate::APP_KEY_BYTES_MAX) bytes; `&str`
/// works too) and values are `V`, encoded with heed's `SerdeBincode`.
///
/// The handle holds only the table's name: it is cheap to clone and is looked up in the
/// store it is used with, so a handle used with a store that lacks the table gets
/// [`Error::UnknownTable`] rather than touching another table.
pub struct AppTable<V> {
    name: Arc<str>,
    value: PhantomData<fn(V) -> V>,
}

impl<V> Clone for AppTable<V> {
    fn clone(&self) -> Self {
        AppTable {
            name: Arc::clone(&self.name),
            value: PhantomData,
        }
    }
}

impl<V> std::fmt::Debug for AppTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTable")
            .field("name", &self.name)
            .field("value", &std::any::type_name::<V>())
            .finish()
    }
}

impl<V: Serialize + DeserializeOwned> AppTable<V> {
    pub(crate) fn new(name: &str) -> Self {
        AppTable {
            name: Arc::from(name),
            value: PhantomData,
        }
    }

    /// A handle by name alone, for code that has no `Store` at hand (a completion
    /// handler registered before the store is opened). The name is checked at each use:
    /// a table not declared at open gives [`Error::UnknownTable`].
    ///
    /// # Errors
    /// A name that no application table can have.
    pub fn named(name: &str) -> Result<Self> {
        crate::options::validate_app_table_name(name)?;
        Ok(AppTable::new(name))
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `value` under `key` (replacing any value there).
    pub fn put(&self, scope: &mut WriteScope<'_>, key: impl AsRef<[u8]>, value: &V) -> Result<()> {
        let key = key.as_ref();
        let bytes =
            SerdeBincode::<V>::bytes_encode(value).map_err(|error| Error::InvalidRecord {
                table: "app",
                key: format!("{}:{}", self.name, keys::printable(key)),
                reason: format!("cannot encode the value: {error}"),
            })?;
        scope.app_put(&self.name, key, &bytes)
    }

    /// The value under `key`, if any.
    pub fn get(&self, reader: &impl ReadScope, key: impl AsRef<[u8]>) -> Result<Option<V>> {
        let key = key.as_ref();
        crate::scope::check_app_key(&self.name, key)?;
        sealed::Sealed::with_kv(reader, |kv| read::app_get(kv, &self.name, key))
    }

    /// Deletes the value under `key`; `false` if there was none.
    pub fn delete(&self, scope: &mut WriteScope<'_>, key: impl AsRef<[u8]>) -> Result<bool> {
        scope.app_delete(&self.name, key.as_ref())
    }

    /// Visits every entry in key order; stops at the first error (a value that cannot be
    /// decoded as `V`, or an error returned by `visit`).
    pub fn for_each(
        &self,
        reader: &impl ReadScope,
        visit: impl FnMut(&[u8], V) -> Result<()>,
    ) -> Result<()> {
        sealed::Sealed::with_kv(reader, |kv| read::app_for_each(kv, &self.name, &[], visit))
    }

    /// Visits, in key order, every entry whose key starts with `prefix`.
    pub fn for_each_with_prefix(
        &self,
        reader: &impl ReadScope,
        prefix: impl AsRef<[u8]>,
        visit: impl FnMut(&[u8], V) -> Result<()>,
    ) -> Result<()> {
        sealed::Sealed::with_kv(reader, |kv| {
            read::app_for_each(kv, &self.name, prefix.as_ref(), visit)
        })
    }

    /// Every entry, in key order.
    pub fn entries(&self, reader: &impl ReadScope) -> Result<Vec<(Vec<u8>, V)>> {
        let mut entries = Vec::new();
        self.for_each(reader, |key, value| {
            entries.push((key.to_vec(), value));
            Ok(())
        })?;
        Ok(entries)
    }
}
