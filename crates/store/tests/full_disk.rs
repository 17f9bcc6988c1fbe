//! A full disk, made without privileges: a child process (this test binary, re-executed)
//! lowers its own file size limit (`RLIMIT_FSIZE`) just above the store's data file and
//! ignores `SIGXFSZ`, so the first commit that needs the file to grow fails in the kernel
//! (`EFBIG`) exactly where a full disk fails with `ENOSPC`. The child writes units until
//! one fails and reports each acknowledged unit; the parent checks the failure is a typed
//! error, then reopens the store without the limit and finds every acknowledged unit, not
//! the failed one, and a store that takes new writes.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

use session_store::{Error, Store, StoreOptions};

const CHILD_DIR_VAR: &str = "SESSION_STORE_FULL_DISK_CHILD_DIR";
/// Bytes of value per unit: a few units fill a page or more each.
const VALUE_BYTES: usize = 3000;
/// How far the data file may grow in the child before writes fail.
const HEADROOM_BYTES: u64 = 256 * 1024;
/// The child gives up (and the test fails) if no write has failed after this many units.
const UNITS_MAX: u32 = 10_000;

fn options() -> StoreOptions {
    StoreOptions::default().with_app_table("blobs")
}

fn value(unit: u32) -> Vec<u8> {
    let byte = u8::try_from(unit % 251).unwrap_or(0);
    vec![byte; VALUE_BYTES]
}

fn put(store: &Store, unit: u32) -> Result<(), Error> {
    let blobs = store.app_table::<Vec<u8>>("blobs")?;
    store.write(move |scope| blobs.put(scope, unit.to_be_bytes(), &value(unit)))
}

fn data_file_len(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("the store directory lists")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".mdb"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .max()
        .expect("the store has an .mdb file")
}

/// A write that cannot grow the data file fails with a typed LMDB commit error naming
/// the OS error, earlier acknowledged writes all survive, the failed one is absent, and the
/// store opens and writes again once there is room.
#[test]
fn a_full_disk_fails_the_write_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), options()).expect("the store opens");
        put(&store, 0).expect("the first unit commits");
    }
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "full_disk_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .output()
        .expect("spawn the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let acknowledged: Vec<u32> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("ack "))
        .map(|unit| unit.parse().expect("a unit number"))
        .collect();
    let failed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("failed "))
        .collect();
    assert!(
        acknowledged.len() > 1,
        "the child acknowledged {acknowledged:?}"
    );
    let [failed] = failed[..] else {
        panic!("expected one failed write, got {failed:?}\n{stdout}");
    };
    let (unit, message) = failed.split_once(' ').expect("unit and message");
    let failed_unit: u32 = unit.parse().expect("a unit number");
    // LMDB reports a write the kernel cut short as EIO ("short write, filesystem full?"
    // in its source); a write refused outright keeps its own errno (EFBIG here, ENOSPC on
    // a real full disk).
    assert!(
        message.starts_with("backend ")
            && message.contains("committing")
            && (message.contains("os error 5") || message.contains("os error 27")),
        "the failure is not a typed LMDB commit error naming the OS error: {message}"
    );

    let store = Store::open(dir.path(), options()).expect("the store reopens without the limit");
    let blobs = store.app_table::<Vec<u8>>("blobs").expect("the table");
    let snapshot = store.snapshot().expect("a snapshot");
    for &unit in std::iter::once(&0).chain(&acknowledged) {
        assert_eq!(
            blobs.get(&snapshot, unit.to_be_bytes()).expect("readable"),
            Some(value(unit)),
            "acknowledged unit {unit} is missing or wrong"
        );
    }
    assert_eq!(
        blobs
            .get(&snapshot, failed_unit.to_be_bytes())
            .expect("readable"),
        None,
        "the failed unit {failed_unit} was written"
    );
    drop(snapshot);
    put(&store, failed_unit).expect("with room again, the unit commits");
}

/// Not a test on its own: the child of `a_full_disk_fails_the_write_and_loses_nothing`
/// (does nothing unless the parent set the directory variable).
#[test]
fn full_disk_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let limit = data_file_len(dir) + HEADROOM_BYTES;
    let limit_t = libc::rlim_t::try_from(limit).expect("the limit fits");
    let rlimit = libc::rlimit {
        rlim_cur: limit_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls on values owned here; ignoring SIGXFSZ makes a write
    // past the limit return EFBIG instead of killing the process.
    unsafe {
        assert_eq!(
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN),
            0,
            "SIGXFSZ ignored"
        );
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit), 0, "limit set");
    }
    let store = Store::open(dir, options()).expect("the child opens the store");
    for unit in 1..UNITS_MAX {
        match put(&store, unit) {
            Ok(()) => println!("ack {unit}"),
            Err(error) => {
                let kind = match &error {
                    Error::Backend { .. } => "backend",
                    Error::Io { .. } => "io",
                    _ => "other",
                };
                println!("failed {unit} {kind} {error}");
                // Reads still work on the store whose write failed.
                store.snapshot().expect("a snapshot after the failed write");
                return;
            }
        }
    }
}
