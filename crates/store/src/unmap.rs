//! Letting go of the store file's pages this process has mapped.
//!
//! LMDB reads through a read-only shared mapping of the data file, and the kernel maps
//! not only the page a read touches but the pages around it (fault-around, whole large
//! folios). A pass of scattered reads, as a recovery of a few active sessions among a
//! million idle ones is, leaves nearly the whole file mapped into the process, counted
//! in its resident memory, though the process needs none of it afterwards.
//! [`release`] drops the process's mappings of those pages (`MADV_DONTNEED`): the pages
//! stay in the page cache and a later read maps them again (a minor fault, no I/O).

use std::io;
use std::path::Path;

/// Drops this process's page mappings of the file at `data_path` in the mapping that
/// holds the address `inside` (found by device, inode and address in `/proc/self/maps`).
/// Returns the bytes of mapping released (the mapped range's length, resident or not).
/// Elsewhere than Linux, does nothing and returns 0.
///
/// The caller keeps that mapping alive, unchanged, until this returns (the store holds
/// a snapshot, which keeps its map from being grown or closed).
///
/// # Errors
/// The file's metadata or `/proc/self/maps` could not be read, or `madvise` refused the
/// range.
#[cfg(target_os = "linux")]
pub(crate) fn release(data_path: &Path, inside: usize) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(data_path)?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut released = 0u64;
    for line in maps.lines() {
        let Some(range) = mapping_of(line, major, minor, meta.ino()) else {
            continue;
        };
        if !range.contains(&inside) {
            // Another mapping of the same file (a read-only store opened beside this
            // one): not ours to keep alive, so not ours to touch.
            continue;
        }
        let length = range.end - range.start;
        // SAFETY: the range is the whole mapping of the store's data file that holds
        // `inside`, as the kernel lists it, and the caller keeps it mapped (no resize,
        // no close) until we return, so no other mapping can have taken its place.
        // LMDB maps that file read-only and shared (the store
        // never opens it with `WRITEMAP`), so its pages there are never dirty and never
        // private: `MADV_DONTNEED` only removes the page table entries, and any later
        // access, through a pointer taken before or after this call, faults the same
        // bytes back in from the page cache. No memory is freed that anything holds.
        let result = unsafe {
            libc::madvise(
                range.start as *mut libc::c_void,
                length,
                libc::MADV_DONTNEED,
            )
        };
        if result != 0 {
            let error = io::Error::last_os_error();
            return Err(error);
        }
        released += length as u64;
    }
    Ok(released)
}

/// See the Linux version: nothing to do elsewhere.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release(_data_path: &Path, _inside: usize) -> io::Result<u64> {
    Ok(0)
}

/// The address range of a `/proc/self/maps` line, if it is a shared mapping of the file
/// with this device and inode.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn mapping_of(line: &str, major: u32, minor: u32, inode: u64) -> Option<std::ops::Range<usize>> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, _offset, device, line_inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if line_inode.parse::<u64>().ok()? != inode || perms.as_bytes().get(3) != Some(&b's') {
        return None;
    }
    let (line_major, line_minor) = device.split_once(':')?;
    if u32::from_str_radix(line_major, 16).ok()? != major
        || u32::from_str_radix(line_minor, 16).ok()? != minor
    {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (start < end).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maps_line_is_matched_by_device_inode_and_sharing() {
        let line = "7f1c2a000000-7f1c3a000000 r--s 00000000 fe:01 1234567                    /tmp/x/data.mdb";
        assert_eq!(
            mapping_of(line, 0xfe, 1, 1234567),
            Some(0x7f1c2a000000..0x7f1c3a000000)
        );
        assert_eq!(mapping_of(line, 0xfe, 1, 1234568), None, "another inode");
        assert_eq!(mapping_of(line, 0xfe, 2, 1234567), None, "another device");
        let private = line.replace("r--s", "r--p");
        assert_eq!(
            mapping_of(&private, 0xfe, 1, 1234567),
            None,
            "a private mapping"
        );
        assert_eq!(mapping_of("garbage", 0xfe, 1, 1), None);
        assert_eq!(mapping_of("", 0xfe, 1, 1), None);
    }

    /// The pages a read mapped leave the process's resident memory, and the file still
    /// reads the same afterwards.
    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data.mdb");
        let bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let length = bytes.len();
        // SAFETY: a fresh read-only shared mapping of a file this test owns and does not
        // change while it is mapped; unmapped at the end.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: the mapping above, `length` bytes, readable.
        let view = unsafe { std::slice::from_raw_parts(map as *const u8, length) };
        let sum = |view: &[u8]| {
            view.iter()
                .step_by(4096)
                .map(|&b| u64::from(b))
                .sum::<u64>()
        };
        let before = sum(view);
        let mapped = smaps_rss(map as usize);
        assert!(
            mapped >= 4 << 20,
            "the reads mapped the file: {mapped} bytes"
        );
        assert_eq!(
            release(&path, 4096).expect("release elsewhere"),
            0,
            "a mapping that does not hold the address is left alone"
        );
        assert!(smaps_rss(map as usize) >= mapped / 2);
        let released = release(&path, map as usize + 4096).expect("release");
        assert_eq!(released, length as u64);
        let after_release = smaps_rss(map as usize);
        assert!(
            after_release < mapped / 8,
            "{after_release} of {mapped} bytes still mapped"
        );
        assert_eq!(sum(view), before, "the bytes read back the same");
        // SAFETY: unmapping the mapping made above; `view` is not used after this.
        unsafe { libc::munmap(map, length) };
    }

    /// The `Rss:` of the mapping that starts at `start`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn smaps_rss(start: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            // A mapping's first line starts with its range (`start-end perms ...`); the
            // lines of its figures start with a name and a colon.
            if let Some((range, _)) = line.split_once(' ')
                && let Some((first, _)) = range.split_once('-')
                && let Ok(first) = usize::from_str_radix(first, 16)
            {
                inside = first == start;
                continue;
            }
            if inside && let Some(rest) = line.strip_prefix("Rss:") {
                let kib: usize = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .expect("Rss in kB");
                return kib * 1024;
            }
        }
        panic!("no mapping at {start:#x} in /proc/self/smaps");
    }
}
