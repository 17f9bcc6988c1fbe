//! The identity file: a directory that has held a store remembers it, so a data file
//! that later goes missing or empty is an error and not a new, empty store.
//!
//! It is written once, after the store's first commit made the data file durable, by
//! writing a temporary file, syncing it, renaming it into place and syncing the
//! directory (which also makes the data file's own directory entry durable). A crash
//! before the rename leaves a store without an identity file, which the next open
//! treats like a store of the previous release: it writes the file then.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The identity file's name in the store directory.
pub const IDENTITY_FILE_NAME: &str = "store.id";
/// The temporary name it is written under before the rename.
const IDENTITY_TEMP_FILE_NAME: &str = "store.id.tmp";
/// The first line: what the file is, and its format version.
const FORMAT_LINE: &str = "bgsession-store-identity 1";
/// The file is three short lines; anything longer is not one.
const IDENTITY_FILE_BYTES_MAX: u64 = 1024;

/// Who a store is: a random identifier chosen when it was created, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreIdentity {
    /// 32 lowercase hexadecimal digits (128 random bits).
    pub id: String,
    /// When the identity was written, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The identity file's path in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE_NAME)
}

/// Reads the identity file; `None` if there is none.
pub(crate) fn read(dir: &Path) -> Result<Option<StoreIdentity>> {
    let path = path(dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(&path)(error)),
    };
    let mut text = String::new();
    file.take(IDENTITY_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .map_err(|error| damaged(&path, format!("it is not text: {error}")))?;
    parse(&text)
        .map(Some)
        .map_err(|reason| damaged(&path, reason))
}

fn damaged(path: &Path, reason: String) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        page: None,
        reason: format!(
            "{reason} (the identity file; remove it only if the data file is known good)"
        ),
    }
}

fn parse(text: &str) -> Result<StoreIdentity, String> {
    let mut lines = text.lines();
    if lines.next() != Some(FORMAT_LINE) {
        return Err(format!("its first line is not {FORMAT_LINE:?}"));
    }
    let id = lines
        .next()
        .and_then(|line| line.strip_prefix("id "))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("its second line is not `id` and 32 hexadecimal digits")?;
    let created_ms = lines
        .next()
        .and_then(|line| line.strip_prefix("created_ms "))
        .and_then(|ms| ms.parse().ok())
        .ok_or("its third line is not `created_ms` and a number")?;
    Ok(StoreIdentity {
        id: id.to_ascii_lowercase(),
        created_ms,
    })
}

/// Writes a new identity file durably (see the module comment).
pub(crate) fn create(dir: &Path) -> Result<StoreIdentity> {
    let identity = StoreIdentity {
        id: format!("{:032x}", rand::random::<u128>()),
        created_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or(0),
    };
    let text = format!(
        "{FORMAT_LINE}\nid {}\ncreated_ms {}\n",
        identity.id, identity.created_ms
    );
    let temp = dir.join(IDENTITY_TEMP_FILE_NAME);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(io_error(&temp))?;
    file.write_all(text.as_bytes()).map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    let path = path(dir);
    fs::rename(&temp, &path).map_err(io_error(&path))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(dir))?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A written identity reads back; a damaged one is `CorruptFile` naming the file.
    #[test]
    fn identity_roundtrips_and_damage_is_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("no file yet"), None);
        let written = create(dir.path()).expect("written");
        assert_eq!(read(dir.path()).expect("read"), Some(written));
        fs::write(path(dir.path()), "something else\n").expect("overwrite");
        let result = read(dir.path());
        assert!(
            matches!(&result, Err(Error::CorruptFile { path: p, .. }) if *p == path(dir.path())),
            "{result:?}"
        );
    }
}
