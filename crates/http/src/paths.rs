//! Mapping an application's transfer name to files inside the download directory.
//!
//! The name may be hostile (`../x`, `/etc/passwd`, NUL, thousands of bytes). It is encoded
//! so that the result is always one plain path component: letters, digits, `-` and `_`
//! are kept, every other byte becomes `%XX`, an empty name becomes `%`, and a long result
//! is cut and suffixed with `~` and a hash of the whole name. The encoding is injective
//! (up to the hash), and since `.` is always encoded the `.part` and `.validator` suffixes
//! cannot collide with another name's file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The longest encoded name kept whole; longer ones are cut and hashed.
const ENCODED_NAME_BYTES_MAX: usize = 128;
/// How much of a long encoded name is kept before the hash.
const ENCODED_PREFIX_BYTES: usize = 80;

const _: () = assert!(
    ENCODED_PREFIX_BYTES + 1 + 32 + ".validator".len() < 255,
    "file names must fit in 255 bytes"
);

/// The file name (one path component) a transfer name maps to.
pub fn safe_file_name(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    if encoded.is_empty() {
        encoded.push('%');
    }
    if encoded.len() > ENCODED_NAME_BYTES_MAX {
        let digest = Sha256::digest(name.as_bytes());
        encoded.truncate(ENCODED_PREFIX_BYTES);
        // A `%XX` cut in half is fine: `~` marks the name as hashed, so no collision.
        encoded.push('~');
        for byte in &digest[..16] {
            let _ = write!(encoded, "{byte:02x}");
        }
    }
    debug_assert!(
        !encoded.contains(['/', '\\', '.', '\0']),
        "invariant violation: encoded name {encoded:?} is not one plain component"
    );
    encoded
}

/// The partial and final paths of a download: `(<dir>/<safe name>.part, <dir>/<safe name>)`.
pub fn download_paths(download_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let file_name = safe_file_name(name);
    let part = download_dir.join(format!("{file_name}.part"));
    let complete = download_dir.join(file_name);
    (part, complete)
}

/// The small file next to the `.part` that remembers the validator (`ETag` or
/// `Last-Modified`) its bytes came with, so a new process can resume with `If-Range`.
/// Remove it with the `.part` when a task is abandoned.
pub fn download_validator_path(download_dir: &Path, name: &str) -> PathBuf {
    download_dir.join(format!("{}.validator", safe_file_name(name)))
}

#[cfg(test)]
mod tests {
    use std::path::Component;

    use super::*;

    /// Hostile names map to a single normal component directly inside the directory,
    /// distinct from each other.
    #[test]
    fn hostile_names_stay_inside() {
        let dir = Path::new("/srv/downloads/session");
        let long = "x/".repeat(5000);
        let names = [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "nul\0byte",
            "..",
            ".",
            "",
            "%",
            "%25",
            "C:\\windows",
            "~",
            long.as_str(),
            "ünïcode/..",
        ];
        let mut seen = std::collections::HashSet::new();
        for name in names {
            let (part, complete) = download_paths(dir, name);
            let validator = download_validator_path(dir, name);
            for path in [&part, &complete, &validator] {
                assert_eq!(path.parent(), Some(dir), "{name:?} -> {path:?}");
                let components: Vec<_> = path
                    .strip_prefix(dir)
                    .expect("inside")
                    .components()
                    .collect();
                assert!(
                    matches!(components.as_slice(), [Component::Normal(_)]),
                    "{name:?} -> {path:?}"
                );
                let file_name = path.file_name().map(|n| n.len()).unwrap_or(0);
                assert!(file_name > 0 && file_name < 255, "{name:?} -> {path:?}");
            }
            assert!(seen.insert(complete.clone()), "collision for {name:?}");
            assert!(seen.insert(part), "collision for {name:?}");
        }
    }

    /// Plain identifiers keep their spelling, so files are recognisable on disk.
    #[test]
    fn plain_names_are_kept() {
        assert_eq!(safe_file_name("task-42_b"), "task-42_b");
        assert_eq!(safe_file_name("a.zip"), "a%2Ezip");
        assert_eq!(safe_file_name(""), "%");
    }
}
