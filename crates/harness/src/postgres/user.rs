//! Who runs `initdb` and `pg_ctl`: PostgreSQL refuses to run as root, and tests run as
//! root on CI, so a root process hands the cluster to an unprivileged user.
//!
//! The switch is `std::os::unix::process::CommandExt::uid`/`gid` rather than `runuser`:
//! it needs no extra program (`runuser` is util-linux, absent on macOS and busybox
//! systems), opens no PAM session, passes the arguments without a shell, and std drops
//! root's supplementary groups (`setgroups(0)`) before `setuid`, so the child holds exactly
//! the user's uid and primary gid — which is also what [`RunAs::check_traversable`]
//! assumes.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

use super::{Error, Result};

/// The unprivileged users a root process tries, in order: the distribution's
/// `postgres` account, else `nobody` (which exists almost everywhere).
pub const UNPRIVILEGED_USERS: [&str; 2] = ["postgres", "nobody"];

/// The largest buffer offered to `getpwnam_r` (it asks for more with `ERANGE`).
const PASSWD_BUFFER_BYTES_MAX: usize = 1 << 20;
/// The first buffer offered to `getpwnam_r`.
const PASSWD_BUFFER_BYTES_INITIAL: usize = 4096;

/// The identity the PostgreSQL programs run under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// This process's own user (not root).
    CurrentUser,
    /// An unprivileged user a root process switches to.
    User {
        /// The account name, for messages.
        name: String,
        /// Its user id.
        uid: u32,
        /// Its primary group id.
        gid: u32,
    },
}

impl RunAs {
    /// The current user when not root; otherwise the first of [`UNPRIVILEGED_USERS`]
    /// that exists.
    ///
    /// # Errors
    /// [`Error::NoUnprivilegedUser`] when root and none exists, [`Error::UserLookup`]
    /// when the user database cannot be read.
    pub fn detect() -> Result<RunAs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::CurrentUser);
        }
        for name in UNPRIVILEGED_USERS {
            if let Some((uid, gid)) = lookup_user(name)? {
                return Ok(RunAs::User {
                    name: name.to_string(),
                    uid,
                    gid,
                });
            }
        }
        Err(Error::NoUnprivilegedUser {
            tried: UNPRIVILEGED_USERS.iter().map(ToString::to_string).collect(),
        })
    }

    /// The identity for an existing data directory: its owner when this process is root
    /// (the server refuses a data directory owned by anyone but itself, and the cluster
    /// may have been made as `nobody` on a machine that had no `postgres` account), the
    /// current user otherwise.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory's metadata cannot be read.
    pub fn owner_of(data_dir: &Path) -> Result<RunAs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::CurrentUser);
        }
        let meta = std::fs::metadata(data_dir)
            .map_err(|source| Error::io("reading the metadata of", data_dir, source))?;
        Ok(RunAs::User {
            name: "the data directory's owner".to_string(),
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// A command for `program` that runs under this identity.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let RunAs::User { uid, gid, .. } = self {
            command.uid(*uid).gid(*gid);
        }
        command
    }

    /// The account name, for messages (`"the current user"` for [`RunAs::CurrentUser`]).
    pub fn describe(&self) -> String {
        match self {
            RunAs::CurrentUser => "the current user".to_string(),
            RunAs::User { name, uid, .. } => format!("{name} (uid {uid})"),
        }
    }

    /// Hands `dir` to this identity (nothing to do for the current user).
    ///
    /// # Errors
    /// [`Error::Io`] when the ownership cannot be changed.
    pub fn take_ownership(&self, dir: &Path) -> Result<()> {
        if let RunAs::User { uid, gid, .. } = self {
            std::os::unix::fs::chown(dir, Some(*uid), Some(*gid))
                .map_err(|source| Error::io("changing the owner of", dir, source))?;
        }
        Ok(())
    }

    /// Checks that this identity can reach `dir`: every directory above it must be
    /// searchable by its uid or primary gid (its only groups, see the module doc).
    /// Without this check a cluster under `/root` fails inside `initdb` with a message
    /// that does not name the directory at fault.
    ///
    /// # Errors
    /// [`Error::DirNotReachable`] naming the first directory that blocks the way.
    pub fn check_traversable(&self, dir: &Path) -> Result<()> {
        let RunAs::User { uid, gid, .. } = self else {
            return Ok(());
        };
        for ancestor in dir.ancestors().skip(1) {
            let meta = match std::fs::metadata(ancestor) {
                Ok(meta) => meta,
                // Not created yet: checked again once it exists.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::io("reading the metadata of", ancestor, source));
                }
            };
            let mode = meta.permissions().mode();
            let search_bit = if meta.uid() == *uid {
                0o100
            } else if meta.gid() == *gid {
                0o010
            } else {
                0o001
            };
            if mode & search_bit == 0 {
                return Err(Error::DirNotReachable {
                    dir: dir.to_path_buf(),
                    blocked_at: ancestor.to_path_buf(),
                    user: self.describe(),
                });
            }
        }
        Ok(())
    }
}

/// The uid and gid of the account `name`, or `None` when there is no such account.
fn lookup_user(name: &str) -> Result<Option<(u32, u32)>> {
    let lookup_error = |source| Error::UserLookup {
        user: name.to_string(),
        source,
    };
    let c_name = CString::new(name).map_err(|_| {
        lookup_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a user name with a NUL byte",
        ))
    })?;
    let mut buffer: Vec<libc::c_char> = vec![0; PASSWD_BUFFER_BYTES_INITIAL];
    loop {
        let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is a NUL-terminated
        // CString, `entry` and `result` are writable locals, and `buffer` is writable for
        // the length passed. getpwnam_r (unlike getpwnam) keeps no static state, so
        // concurrent calls from test threads are fine.
        let code = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                entry.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if code == libc::ERANGE && buffer.len() < PASSWD_BUFFER_BYTES_MAX {
            let grown = buffer.len() * 2;
            buffer.resize(grown, 0);
            continue;
        }
        if code != 0 {
            return Err(lookup_error(std::io::Error::from_raw_os_error(code)));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: a zero return with a non-null result means getpwnam_r filled `entry`
        // (result points at it); only its integer fields are read, so the strings it
        // points into `buffer` need not outlive this line.
        let entry = unsafe { entry.assume_init() };
        return Ok(Some((entry.pw_uid, entry.pw_gid)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The account lookup finds root as uid 0 and reports a missing account as `None`,
    /// read through the real user database.
    #[test]
    fn lookup_finds_root_and_misses_unknown() {
        assert_eq!(lookup_user("root").expect("lookup"), Some((0, 0)));
        assert_eq!(lookup_user("bgsession-no-such-user").expect("lookup"), None);
    }

    /// A directory under a mode-0700 directory owned by someone else is reported as not
    /// reachable, naming the blocking directory; a mode-0755 one is reachable.
    #[test]
    fn traversal_check_names_the_blocking_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temp dir");
        let closed = root.path().join("closed");
        let open = root.path().join("open");
        for (dir, mode) in [(&closed, 0o700), (&open, 0o755)] {
            std::fs::create_dir(dir).expect("mkdir");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        // A uid and gid that own nothing here, so only the "other" bits count.
        let stranger = RunAs::User {
            name: "stranger".to_string(),
            uid: 54_321,
            gid: 54_321,
        };
        let error = stranger
            .check_traversable(&closed.join("cluster"))
            .expect_err("0700 of another owner blocks");
        assert!(
            matches!(&error, Error::DirNotReachable { blocked_at, .. } if blocked_at == &closed),
            "{error}"
        );
        stranger
            .check_traversable(&open.join("cluster"))
            .expect("0755 lets anyone through");
    }
}
