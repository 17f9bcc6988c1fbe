//! A small tmpfs mounted by a test, for full-disk cases (tests run as root); one skip
//! rule for where mounting is not allowed. Shared by every test binary that needs it
//! (the store's tests include this file by path).

/// The environment variable that makes a skipped test fail instead (CI sets it to 1).
pub const REQUIRE_ALL_TESTS_VAR: &str = "BGSESSION_REQUIRE_ALL_TESTS";

/// A tmpfs of a fixed size mounted on a fresh temporary directory; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = path_c_string(self.dir.path());
        // SAFETY: a NUL-terminated path that outlives the call. A lazy unmount is the
        // fallback should something still hold a file open there.
        unsafe {
            if libc::umount(target.as_ptr()) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

fn path_c_string(path: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Mounts a tmpfs of `size_bytes` for `test`. Where mounting is not allowed (no
/// privileges, a restricted container) it prints `SKIP <test>: cannot mount a tmpfs:
/// <reason>` and returns `None`, unless `BGSESSION_REQUIRE_ALL_TESTS=1`, which makes it
/// fail with that reason.
pub fn mount_tmpfs(test: &str, size_bytes: u64) -> Option<Tmpfs> {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = path_c_string(dir.path());
    let options = std::ffi::CString::new(format!("size={size_bytes},mode=0700")).expect("options");
    // SAFETY: every pointer is to a NUL-terminated string that outlives the call.
    let status = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if status == 0 {
        return Some(Tmpfs { dir });
    }
    let reason = std::io::Error::last_os_error();
    if std::env::var(REQUIRE_ALL_TESTS_VAR).as_deref() == Ok("1") {
        panic!(
            "{test}: cannot mount a tmpfs: {reason} ({REQUIRE_ALL_TESTS_VAR}=1 forbids skipping)"
        );
    }
    println!("SKIP {test}: cannot mount a tmpfs: {reason}");
    None
}
