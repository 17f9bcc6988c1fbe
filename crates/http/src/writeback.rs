//! Streaming write-back of a download's `.part` file while it is still being written.
//!
//! A download is made durable by one fsync before its rename. Left alone, the kernel
//! keeps the written bytes dirty in memory and that fsync has the whole file to write,
//! after the network is done: a gigabyte download then takes the network's time *plus*
//! the disk's. [`Writeback`] starts the disk early instead. On Linux, each time another
//! [`WINDOW_BYTES`] is written it asks the kernel to begin writing that window out
//! (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`, which only queues the I/O), and it
//! waits for the window [`WINDOWS_IN_FLIGHT`] back to reach the disk. The disk and the
//! network then work side by side, at most a few windows are dirty at any time, and the
//! final fsync has only the tail and the metadata left.
//!
//! This is a hint for speed, never a durability step: `sync_file_range` flushes neither
//! metadata nor the disk's cache, and nothing relies on it. Durability is still the fsync
//! before the rename. Elsewhere than Linux, [`Writeback::written`] does nothing and the
//! final fsync does all the work.

use std::fs::File;
use std::io;

/// The span of file written out as one unit, in bytes.
pub(crate) const WINDOW_BYTES: u64 = 8 * 1024 * 1024;
/// How many windows may be queued for the disk before the writer waits for the oldest.
pub(crate) const WINDOWS_IN_FLIGHT: u64 = 4;

/// Tracks how far the file is written and how far its write-back has been started.
#[derive(Debug, Clone, Copy)]
pub struct Writeback {
    /// The end of the bytes written so far (the file offset of the next write).
    written_to: u64,
    /// Write-back has been started up to here (windows count from the first offset).
    started_to: u64,
}

impl Writeback {
    /// A writer that starts writing at `offset` (a resumed download starts past zero).
    pub fn new(offset: u64) -> Writeback {
        Writeback {
            written_to: offset,
            started_to: offset,
        }
    }

    /// Records that `len` more bytes were written to `file` and starts or waits for
    /// write-back of whole windows.
    ///
    /// # Errors
    /// An I/O error the kernel reported for the range (the same error the final fsync
    /// would report).
    pub fn written(&mut self, file: &File, len: u64) -> io::Result<()> {
        self.written_to += len;
        while self.written_to - self.started_to >= WINDOW_BYTES {
            let start = self.started_to;
            range(file, start, WINDOW_BYTES, Step::Start)?;
            // Before a resumed offset, the oldest window is an earlier attempt's: waiting
            // for it is as cheap and as right as for this attempt's own.
            if let Some(oldest) = start.checked_sub(WINDOW_BYTES * WINDOWS_IN_FLIGHT) {
                range(file, oldest, WINDOW_BYTES, Step::Wait)?;
            }
            self.started_to += WINDOW_BYTES;
        }
        Ok(())
    }
}

/// What to ask of the kernel for one range.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Queue the range's dirty pages for writing; do not wait.
    Start,
    /// Write whatever is still dirty in the range and wait until all of it is written.
    Wait,
}

#[cfg(target_os = "linux")]
fn range(file: &File, offset: u64, len: u64, step: Step) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    let flags = match step {
        Step::Start => libc::SYNC_FILE_RANGE_WRITE,
        Step::Wait => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        // Past what the kernel can address: nothing to hint.
        return Ok(());
    };
    // SAFETY: `sync_file_range` only reads its integer arguments; the descriptor is open
    // for as long as `file` is borrowed, and the call does not retain it.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // A filesystem or kernel without the call: the final fsync does the work.
        Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE) => Ok(()),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn range(_file: &File, _offset: u64, _len: u64, _step: Step) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Windows are started and waited in order, over a resumed offset that is not a
    /// multiple of the window, and the data written is intact.
    #[test]
    fn windows_follow_the_writes() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("part");
        let mut file = File::create(&path)?;
        let offset = 3 * 1024 + 7;
        file.write_all(&vec![1; offset])?;
        let mut writeback = Writeback::new(offset as u64);
        let block = vec![7u8; 1024 * 1024 + 13];
        let blocks = 60;
        for _ in 0..blocks {
            file.write_all(&block)?;
            writeback.written(&file, block.len() as u64)?;
        }
        let total = offset as u64 + blocks * block.len() as u64;
        assert_eq!(writeback.written_to, total);
        assert!(writeback.started_to <= total);
        assert!(total - writeback.started_to < WINDOW_BYTES);
        assert_eq!((writeback.started_to - offset as u64) % WINDOW_BYTES, 0);
        assert_eq!(std::fs::metadata(&path)?.len(), total);
        Ok(())
    }
}
