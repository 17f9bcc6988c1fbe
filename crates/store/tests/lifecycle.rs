//! Snapshots that block map growth, snapshot age, `Store::close`, and a full file
//! system, over a real LMDB in temporary directories (the full file system on a small
//! tmpfs the test mounts).

#![cfg(target_os = "linux")]

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use session_store::{Error, ErrorKind, Store, StoreOptions};

/// A snapshot's maximum age in these tests: short, so that a bounded wait is short.
const AGE_MS_MAX: u64 = 300;

fn options() -> StoreOptions {
    StoreOptions {
        snapshot_age_ms_max: AGE_MS_MAX,
        ..StoreOptions::default().with_app_table("blobs")
    }
}

fn put(store: &Store, key: &str, bytes: usize) -> Result<(), Error> {
    let blobs = store.app_table::<Vec<u8>>("blobs")?;
    let key = key.to_string();
    store.write(move |scope| blobs.put(scope, &key, &vec![0xab; bytes]))
}

fn get(store: &Store, key: &str) -> Option<usize> {
    let blobs = store.app_table::<Vec<u8>>("blobs").expect("blobs");
    let snapshot = store.snapshot().expect("snapshot");
    blobs
        .get(&snapshot, key)
        .expect("readable")
        .map(|v| v.len())
}

/// With a 64 KiB map and a snapshot held, a write that needs a larger map fails with
/// `MapGrowthBlocked` (kind `Busy`) after the snapshot age bound instead of waiting
/// forever; the old snapshot then refuses reads with `SnapshotTooOld`; once it is
/// dropped the same write succeeds.
#[test]
fn a_held_snapshot_blocks_map_growth_for_a_bounded_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        map_size_bytes_initial: 64 * 1024,
        ..options()
    };
    let store = Store::open(dir.path(), options).expect("open");
    let blobs = store.app_table::<Vec<u8>>("blobs").expect("blobs");
    let snapshot = store.snapshot().expect("snapshot");
    let result = put(&store, "big", 512 * 1024);
    assert!(
        matches!(&result, Err(error @ Error::MapGrowthBlocked { snapshots: 1, waited_ms })
            if *waited_ms >= AGE_MS_MAX && error.kind() == ErrorKind::Busy),
        "{result:?}"
    );
    let old = blobs.get(&snapshot, "big");
    assert!(
        matches!(&old, Err(error @ Error::SnapshotTooOld { age_ms_max: AGE_MS_MAX, .. })
            if error.kind() == ErrorKind::Busy),
        "{old:?}"
    );
    drop(snapshot);
    put(&store, "big", 512 * 1024).expect("with no snapshot alive the map grows");
    assert_eq!(get(&store, "big"), Some(512 * 1024));
    assert!(store.map_size_bytes() > 512 * 1024);
}

/// A snapshot is usable within its maximum age and refuses reads after it (the test
/// sleeps past the bound, so the outcome does not depend on timing).
#[test]
fn a_snapshot_past_its_age_refuses_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    put(&store, "k", 10).expect("write");
    let snapshot = store.snapshot().expect("snapshot");
    let blobs = store.app_table::<Vec<u8>>("blobs").expect("blobs");
    thread::sleep(Duration::from_millis(AGE_MS_MAX + 50));
    let result = snapshot.sessions();
    assert!(
        matches!(result, Err(Error::SnapshotTooOld { .. })),
        "{result:?}"
    );
    assert!(matches!(
        blobs.get(&snapshot, "k"),
        Err(Error::SnapshotTooOld { .. })
    ));
    drop(snapshot);
    assert_eq!(get(&store, "k"), Some(10), "a new snapshot reads");
}

/// Waits until `condition` holds, polling (a condition, not a duration, decides).
fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        thread::sleep(Duration::from_millis(2));
    }
}

/// `close` with a clone alive: a unit queued behind a running one still commits, new
/// writes and snapshots through the clone get `Closed`, and as soon as `close` returns
/// the directory opens again in this process (with both units there) while the closed
/// clones still exist; a second `close` is `Ok`.
#[test]
fn close_drains_the_queue_and_releases_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    let clone = store.clone();
    let blobs = store.app_table::<Vec<u8>>("blobs").expect("blobs");

    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let running = {
        let store = store.clone();
        let blobs = blobs.clone();
        thread::spawn(move || {
            let mut release_rx = Some(release_rx);
            store.write(move |scope| {
                // The batch never re-runs here (the map is large), but stay re-runnable.
                if let Some(release) = release_rx.take() {
                    let _ = started_tx.send(());
                    let _ = release.recv();
                }
                blobs.put(scope, "running", &vec![1; 10])
            })
        })
    };
    started.recv().expect("the first unit runs");
    let queued = {
        let clone = clone.clone();
        thread::spawn(move || put(&clone, "queued", 20))
    };
    wait_until(|| store.queued_units() == 1);
    let closing = {
        let store = store.clone();
        thread::spawn(move || store.close())
    };
    wait_until(|| matches!(clone.snapshot(), Err(Error::Closed { .. })));
    let refused = put(&clone, "late", 5);
    assert!(
        matches!(&refused, Err(error @ Error::Closed { .. }) if error.kind() == ErrorKind::Closed),
        "{refused:?}"
    );
    release.send(()).expect("release the first unit");
    running
        .join()
        .expect("thread")
        .expect("the running unit commits");
    queued
        .join()
        .expect("thread")
        .expect("the queued unit commits");
    closing.join().expect("thread").expect("close succeeds");

    let reopened = Store::open(dir.path(), options()).expect("the directory opens again at once");
    assert_eq!(get(&reopened, "running"), Some(10));
    assert_eq!(get(&reopened, "queued"), Some(20));
    assert_eq!(get(&reopened, "late"), None);
    store.close().expect("a second close is Ok");
    assert!(matches!(put(&clone, "late", 5), Err(Error::Closed { .. })));
    assert_eq!(store.map_size_bytes(), 0);
}

/// `close` with a snapshot alive waits for it at most the snapshot age bound, then is
/// `CloseBlocked` and keeps the directory; once the snapshot is dropped, `close` again
/// finishes and the directory opens.
#[test]
fn close_waits_a_bounded_time_for_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    let snapshot = store.snapshot().expect("snapshot");
    let result = store.close();
    assert!(
        matches!(&result, Err(error @ Error::CloseBlocked { snapshots: 1, .. }) if error.kind() == ErrorKind::Busy),
        "{result:?}"
    );
    let second = Store::open(dir.path(), options());
    assert!(matches!(&second, Err(Error::Locked { .. })), "{second:?}");
    drop(snapshot);
    store
        .close()
        .expect("close finishes once the snapshot is gone");
    Store::open(dir.path(), options()).expect("the directory opens");
}

/// Fills the file system holding `dir` with a file there, then gives back `left_bytes`
/// of it; returns its path.
fn fill(dir: &Path, left_bytes: u64) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = File::create(&path).expect("create the filler");
    let chunk = vec![0x55_u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => panic!("filling the file system: {error}"),
        }
    }
    // A last partial chunk may still fit.
    let small = vec![0x55_u8; 512];
    while file.write(&small).map(|n| n > 0).unwrap_or(false) {}
    let len = file.metadata().expect("filler metadata").len();
    file.set_len(len.saturating_sub(left_bytes))
        .expect("give back room");
    path
}

/// On a full 8 MiB tmpfs a write fails with `StorageFull` (kind `Full`) naming the
/// directory, not an LMDB I/O error: with no room at all (the kernel refuses the write:
/// ENOSPC) and with 64 KiB left (the kernel cuts the write short and LMDB says EIO).
/// Every acknowledged write is still there; after the filler is removed the same write
/// succeeds on the same open store, and everything survives a reopen.
#[test]
fn a_full_file_system_is_storage_full() {
    for left_bytes in [0, 64 * 1024] {
        let Some(tmpfs) = mount_tmpfs("a_full_file_system_is_storage_full", 8 << 20) else {
            return;
        };
        let dir = tmpfs.path().join("store");
        let store = Store::open(&dir, options()).expect("open on the tmpfs");
        let acknowledged: Vec<String> = (0..8).map(|n| format!("ack-{n}")).collect();
        for key in &acknowledged {
            put(&store, key, 64 * 1024).expect("a write with room commits");
        }
        let filler = fill(tmpfs.path(), left_bytes);
        let result = put(&store, "big", 1024 * 1024);
        assert!(
            matches!(&result, Err(error @ Error::StorageFull { dir: full, .. })
                if *full == dir && error.kind() == ErrorKind::Full),
            "{left_bytes} bytes left: {result:?}"
        );
        for key in &acknowledged {
            assert_eq!(
                get(&store, key),
                Some(64 * 1024),
                "{key} survives the failed write"
            );
        }
        assert_eq!(get(&store, "big"), None);
        fs::remove_file(&filler).expect("remove the filler");
        put(&store, "big", 1024 * 1024).expect("with room again the same write commits");
        store.close().expect("close");
        drop(store);
        let store = Store::open(&dir, options()).expect("reopen");
        for key in &acknowledged {
            assert_eq!(get(&store, key), Some(64 * 1024));
        }
        assert_eq!(get(&store, "big"), Some(1024 * 1024));
        store.close().expect("close before unmounting");
    }
}
