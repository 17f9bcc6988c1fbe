//! How a store is opened: application tables, map size and writer limits.

use crate::error::{Error, Result};

/// The most units the writer puts into one write transaction (one commit, one fsync pair).
pub const BATCH_UNITS_MAX: usize = 1024;
/// The most units waiting for the writer; submitters wait (or their future is pending)
/// while the queue is full.
pub const QUEUE_UNITS_MAX: usize = 4096;
/// The initial size of the memory map; it grows on demand.
pub const MAP_SIZE_BYTES_INITIAL: usize = 64 * 1024 * 1024;
/// The largest the memory map may grow to.
pub const MAP_SIZE_BYTES_MAX: usize = 1 << 40;
/// The most concurrent read transactions (snapshots) of one process.
pub const READERS_MAX: u32 = 512;
/// The most application tables one store may name.
pub const APP_TABLES_MAX: usize = 64;
/// The longest application table name, in bytes.
pub const APP_TABLE_NAME_BYTES_MAX: usize = 64;
/// The largest data file `StoreOptions::default()` walks in full at open (see
/// [`CheckAtOpen`]); a larger one gets the meta and length checks only. The walk reads
/// the whole file (about 1.4 s per GiB measured on a 2-core machine with a warm page
/// cache), so above this size it would dominate the time to open; `check_dir` (or
/// `session-harness inspect --check`) walks any store on demand, and
/// `CheckAtOpen::Always` walks at every open.
pub const CHECK_DATA_BYTES_MAX: u64 = 256 << 20;
/// How long a snapshot may live by default (see [`StoreOptions::snapshot_age_ms_max`]).
pub const SNAPSHOT_AGE_MS_MAX: u64 = 10_000;
/// Map sizes are rounded up to a multiple of this, which is a multiple of every common
/// OS page size (LMDB requires the map size to be a multiple of the page size).
pub(crate) const MAP_SIZE_GRANULE_BYTES: usize = 64 * 1024;

/// How much of the data file [`Store::open`](crate::Store::open) checks before it uses it.
///
/// Every open reads LMDB's two meta pages with plain reads, picks the one LMDB would use
/// and checks it and the file's length, so a truncated file or a damaged meta page is a
/// typed error instead of a crash. The full check ([`check_dir`](crate::check_dir)) also
/// walks every page reachable from it and then reads and validates every record of the
/// built-in tables: page damage is found at open, not as a crash of the first write
/// that touches the page. It reads the whole file once (about 0.7 s for a 515 MB data
/// file with a warm page cache, in a release build).
///
/// A record that fails to decode or validate therefore fails the open with
/// [`Error::Corrupt`] naming its table and key. To get at the rest of such a store, open
/// it with [`CheckAtOpen::Never`] (reads of that record stay typed errors) and repair or
/// delete the record; never do that for a `CorruptFile` or `Truncated` error, where LMDB
/// itself would follow damaged pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAtOpen {
    /// Walk every page and record, whatever the file's size.
    Always,
    /// Only the meta pages and the length.
    Never,
    /// Walk every page and record when the data file has at most this many bytes.
    UpTo {
        /// The largest data file walked in full.
        data_bytes_max: u64,
    },
}

impl CheckAtOpen {
    /// Whether a data file of `data_bytes` gets the full check.
    pub fn walks(&self, data_bytes: u64) -> bool {
        match self {
            CheckAtOpen::Always => true,
            CheckAtOpen::Never => false,
            CheckAtOpen::UpTo { data_bytes_max } => data_bytes <= *data_bytes_max,
        }
    }
}

impl Default for CheckAtOpen {
    fn default() -> Self {
        CheckAtOpen::UpTo {
            data_bytes_max: CHECK_DATA_BYTES_MAX,
        }
    }
}

/// Options for [`Store::open`](crate::Store::open).
///
/// ```
/// let options = session_store::StoreOptions::default().with_app_table("ledger");
/// assert_eq!(options.app_tables, ["ledger"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The application tables to create (or open) with the store, by name: 1 to
    /// [`APP_TABLE_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `.`, `_` and `-`.
    pub app_tables: Vec<String>,
    /// The map size the environment is opened with (rounded up to 64 KiB); the writer
    /// grows it as the data grows, so this only needs to be a sensible start.
    pub map_size_bytes_initial: usize,
    /// The map never grows past this; a batch that needs more fails with
    /// [`Error::MapSizeLimit`].
    pub map_size_bytes_max: usize,
    /// The most units committed together, see [`BATCH_UNITS_MAX`].
    pub batch_units_max: usize,
    /// The most units waiting for the writer, see [`QUEUE_UNITS_MAX`].
    pub queue_units_max: usize,
    /// The most concurrent snapshots, see [`READERS_MAX`].
    pub readers_max: u32,
    /// How much of the data file is checked at open.
    pub check_at_open: CheckAtOpen,
    /// The longest a snapshot may be used, in milliseconds ([`SNAPSHOT_AGE_MS_MAX`] by
    /// default). Reads through an older one are [`Error::SnapshotTooOld`]. It is also the
    /// bound on every wait for snapshots to end: a batch whose map must grow while
    /// snapshots live fails with [`Error::MapGrowthBlocked`] after about this long, and
    /// [`Store::close`](crate::Store::close) gives up with [`Error::CloseBlocked`].
    pub snapshot_age_ms_max: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            app_tables: Vec::new(),
            map_size_bytes_initial: MAP_SIZE_BYTES_INITIAL,
            map_size_bytes_max: MAP_SIZE_BYTES_MAX,
            batch_units_max: BATCH_UNITS_MAX,
            queue_units_max: QUEUE_UNITS_MAX,
            readers_max: READERS_MAX,
            check_at_open: CheckAtOpen::default(),
            snapshot_age_ms_max: SNAPSHOT_AGE_MS_MAX,
        }
    }
}

impl StoreOptions {
    /// Adds an application table.
    pub fn with_app_table(mut self, name: impl Into<String>) -> Self {
        self.app_tables.push(name.into());
        self
    }

    /// Checks the options before anything is created on disk.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidOptions { reason });
        if self.app_tables.len() > APP_TABLES_MAX {
            return invalid(format!(
                "{} application tables, over {APP_TABLES_MAX}",
                self.app_tables.len()
            ));
        }
        for (index, name) in self.app_tables.iter().enumerate() {
            validate_app_table_name(name)?;
            if self.app_tables[..index].contains(name) {
                return invalid(format!("application table {name:?} is named twice"));
            }
        }
        if self.map_size_bytes_initial == 0 {
            return invalid("map_size_bytes_initial is 0".into());
        }
        if self.map_size_bytes_max < self.map_size_bytes_initial {
            return invalid(format!(
                "map_size_bytes_max {} is below map_size_bytes_initial {}",
                self.map_size_bytes_max, self.map_size_bytes_initial
            ));
        }
        if self.batch_units_max == 0 || self.queue_units_max == 0 {
            return invalid("batch_units_max and queue_units_max must be at least 1".into());
        }
        if self.readers_max == 0 {
            return invalid("readers_max is 0".into());
        }
        if self.snapshot_age_ms_max == 0 {
            return invalid("snapshot_age_ms_max is 0".into());
        }
        Ok(())
    }
}

/// Checks an application table name (same alphabet as identifiers).
pub(crate) fn validate_app_table_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > APP_TABLE_NAME_BYTES_MAX {
        Some("is longer than 64 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("has a character other than ASCII letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidTableName {
            name: name.chars().take(APP_TABLE_NAME_BYTES_MAX + 16).collect(),
            reason,
        }),
    }
}

/// Rounds a map size up to the granule LMDB accepts on every common page size.
pub(crate) fn round_map_size(bytes: usize) -> usize {
    bytes
        .div_ceil(MAP_SIZE_GRANULE_BYTES)
        .saturating_mul(MAP_SIZE_GRANULE_BYTES)
}
