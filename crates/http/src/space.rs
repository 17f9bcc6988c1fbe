//! Free space on the file system of a download directory, and the budget that keeps a
//! download out of [`crate::EngineConfig::disk_reserve_bytes`].
//!
//! Free space is `statvfs`: the blocks an unprivileged writer may still use
//! (`f_bavail`, so the root-only blocks of ext4 never count) times the fragment size.
//! It is a measure, not a promise: another writer may take the space a moment later,
//! which is why a write can still fail with `ENOSPC` ([`crate::RetryReason::StorageFull`]).
//! The blocks a file takes beyond its length (the last partial block, indirect blocks)
//! come out of the reserve, which is why the reserve should be a good deal larger than
//! a block.

use std::io;
use std::path::{Path, PathBuf};

use crate::classify::{Classified, RetryReason};

/// How many bytes a download may write between two measures of the free space, at
/// most (4 MiB). Measuring per chunk would cost a system call per few KiB; this often, a body of
/// unknown length cannot overshoot what was free by more than this.
pub const SPACE_CHECK_INTERVAL_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes available to an unprivileged writer on the file system that holds `dir`
/// (`statvfs`: `f_bavail × f_frsize`). This is the figure the engine compares with a
/// download's needs and [`crate::EngineConfig::disk_reserve_bytes`], so a scheduler
/// waiting on [`crate::RetryReason::InsufficientStorage`] can poll it.
///
/// # Errors
/// What `statvfs` reports (`dir` missing, not searchable). Elsewhere than on Unix,
/// [`io::ErrorKind::Unsupported`]: the engine then skips its free-space checks and only
/// a refused write ends a download ([`crate::RetryReason::StorageFull`]).
#[cfg(unix)]
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;

    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stats` is valid for
    // writes of one `statvfs`, which the call fills entirely when it returns 0 and
    // leaves unread otherwise. Neither pointer is kept after the call.
    let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned 0, so it initialised the whole struct.
    let stats = unsafe { stats.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (available, fragment) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(available.saturating_mul(fragment))
}

/// See the Unix version: no `statvfs` here.
#[cfg(not(unix))]
pub fn free_bytes(_dir: &Path) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "free space is measured on Unix only",
    ))
}

/// Free space as measured for one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Room {
    /// Free now, plus the bytes of a partial file the attempt replaces.
    pub(crate) bytes_free: u64,
    pub(crate) reserve_bytes: u64,
}

impl Room {
    /// What a download may still write.
    pub(crate) fn usable(self) -> u64 {
        self.bytes_free.saturating_sub(self.reserve_bytes)
    }

    /// The retry that says the download does not fit.
    pub(crate) fn insufficient(self, dir: &Path, bytes_needed: Option<u64>) -> Classified {
        let needed = match bytes_needed {
            Some(bytes) => format!("needs {bytes} more bytes"),
            None => "has a body of unknown length that reached the limit".to_owned(),
        };
        Classified::retry(
            RetryReason::InsufficientStorage {
                bytes_needed,
                bytes_free: self.bytes_free,
                reserve_bytes: self.reserve_bytes,
            },
            None,
            format!(
                "the download {needed}; {} bytes are free on the file system of {} and {} \
                 are reserved",
                self.bytes_free,
                dir.display(),
                self.reserve_bytes
            ),
        )
    }
}

/// Measures the room in `dir`, counting `reclaimable_bytes` (a partial file the attempt
/// will truncate) as free. `None` where free space cannot be measured (not Unix).
pub(crate) async fn measure(
    dir: &Path,
    reserve_bytes: u64,
    reclaimable_bytes: u64,
) -> io::Result<Option<Room>> {
    let owned = dir.to_owned();
    let free = tokio::task::spawn_blocking(move || free_bytes(&owned))
        .await
        .map_err(io::Error::other)?;
    match free {
        Ok(free) => Ok(Some(Room {
            bytes_free: free.saturating_add(reclaimable_bytes),
            reserve_bytes,
        })),
        Err(error) if error.kind() == io::ErrorKind::Unsupported => Ok(None),
        Err(error) => Err(error),
    }
}

/// How much of a block may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// All of it.
    All,
    /// Only this many bytes: past them the file would reach the reserve.
    Prefix { bytes: usize, room: Room },
}

/// The limit a streaming download stays under: a file offset known to fit, measured
/// again every [`SPACE_CHECK_INTERVAL_BYTES`] and whenever a block would pass it.
#[derive(Debug)]
pub(crate) struct Budget {
    dir: PathBuf,
    reserve_bytes: u64,
    /// The file's length when announced or expected.
    total: Option<u64>,
    /// Writing up to this file offset fits, as last measured (`u64::MAX`: unmeasured).
    limit_end: u64,
    /// The file offset past which the space is measured again.
    next_check_end: u64,
}

impl Budget {
    /// A budget for a file of `total` bytes (when known) about to be written from
    /// `offset`: measured now, after the `.part` was opened (and truncated when the
    /// attempt starts from zero).
    pub(crate) async fn start(
        dir: &Path,
        reserve_bytes: u64,
        offset: u64,
        total: Option<u64>,
    ) -> io::Result<Budget> {
        let mut budget = Budget {
            dir: dir.to_owned(),
            reserve_bytes,
            total,
            limit_end: u64::MAX,
            next_check_end: 0,
        };
        budget.remeasure(offset, 0).await?;
        Ok(budget)
    }

    /// How much of a block of `block_bytes` may be written when the writer has been
    /// handed bytes up to file offset `submitted_end`, `in_flight_bytes` of which may not
    /// have reached the file yet. The space is measured again when due, when the block
    /// would pass the limit, or when `remeasure` says so.
    pub(crate) async fn admit(
        &mut self,
        submitted_end: u64,
        in_flight_bytes: u64,
        block_bytes: usize,
        remeasure: bool,
    ) -> io::Result<Admit> {
        let end = submitted_end.saturating_add(block_bytes as u64);
        let room = if remeasure || end > self.limit_end || end > self.next_check_end {
            self.remeasure(submitted_end, in_flight_bytes).await?
        } else {
            None
        };
        if end <= self.limit_end {
            return Ok(Admit::All);
        }
        let bytes = usize::try_from(self.limit_end.saturating_sub(submitted_end))
            .unwrap_or(usize::MAX)
            .min(block_bytes);
        // A limit below `u64::MAX` comes from a measure, and passing it measures again.
        debug_assert!(
            room.is_some(),
            "invariant violation: a limit passed unmeasured"
        );
        let room = room.unwrap_or(Room {
            bytes_free: 0,
            reserve_bytes: self.reserve_bytes,
        });
        Ok(Admit::Prefix { bytes, room })
    }

    /// The retry that ends a download stopped at the budget with `kept_end` bytes in its
    /// file.
    pub(crate) fn insufficient(&self, room: Room, kept_end: u64) -> Classified {
        let needed = self
            .total
            .filter(|total| *total > kept_end)
            .map(|total| total - kept_end);
        room.insufficient(&self.dir, needed)
    }

    /// Measures again. The file holds at least `submitted_end - in_flight_bytes` bytes
    /// and at most `submitted_end`; while a write is in flight the free space has either
    /// dropped by it or not yet, so counting only the bytes surely written can place the
    /// limit too early by one block, never too late.
    async fn remeasure(
        &mut self,
        submitted_end: u64,
        in_flight_bytes: u64,
    ) -> io::Result<Option<Room>> {
        let written_end = submitted_end.saturating_sub(in_flight_bytes);
        self.next_check_end = submitted_end.saturating_add(SPACE_CHECK_INTERVAL_BYTES);
        let room = measure(&self.dir, self.reserve_bytes, 0).await?;
        self.limit_end = match room {
            Some(room) => written_end.saturating_add(room.usable()),
            None => u64::MAX,
        };
        Ok(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `statvfs` of a real directory answers, and of a missing one fails.
    #[cfg(unix)]
    #[test]
    fn free_bytes_measures_a_real_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path()).expect("statvfs of a directory");
        assert!(free > 0, "a test directory with no space at all");
        let missing = dir.path().join("missing");
        assert_eq!(
            free_bytes(&missing).map_err(|error| error.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    /// The usable room never underflows, and the retry carries the figures.
    #[test]
    fn room_figures() {
        let room = Room {
            bytes_free: 10,
            reserve_bytes: 20,
        };
        assert_eq!(room.usable(), 0);
        let Classified::Retry {
            reason, message, ..
        } = room.insufficient(Path::new("/d"), Some(7))
        else {
            panic!("insufficient() builds a retry");
        };
        assert_eq!(
            reason,
            RetryReason::InsufficientStorage {
                bytes_needed: Some(7),
                bytes_free: 10,
                reserve_bytes: 20
            }
        );
        assert!(message.contains("needs 7 more bytes"), "{message}");
    }
}
