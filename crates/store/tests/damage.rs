//! A damaged store directory is a typed error, never a signal: the store is built with
//! records in every table (several leaf pages of tasks, an overflow value), closed and
//! damaged on disk (data file gone or emptied, truncated, page header or leaf node bytes
//! flipped, meta pages broken), then opened in a child process (this test binary,
//! re-executed) that reads everything and writes once; the parent checks the child
//! exited normally and reported the expected typed error.

#![cfg(target_os = "linux")]

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use heed::{self, CompactionOption};
use session_store::{
    CheckAtOpen, Error, ErrorKind, EventBody, IDENTITY_FILE_NAME, Store, StoreOptions, TaskState,
    check_dir,
};

const CHILD_DIR_VAR: &str = "SESSION_STORE_DAMAGE_CHILD_DIR";
const CHILD_UNCHECKED_VAR: &str = "SESSION_STORE_DAMAGE_CHILD_UNCHECKED";
const SESSION: &str = "s-damage";
/// Enough tasks for several leaf pages and a branch page in the tasks table.
const TASKS: u32 = 400;
const EVENTS: u64 = 40;
/// An application value larger than a page, so the table has an overflow run.
const BIG_VALUE_BYTES: usize = 20_000;
/// LMDB's page flag of a leaf page, and the offset of the flags in a page header.
const P_LEAF: u16 = 0x02;
const PAGE_FLAGS_AT: usize = 10;

fn options() -> StoreOptions {
    StoreOptions::default().with_app_table("ledger")
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("a page size")
}

fn task_name(n: u32) -> String {
    format!("tk-{n:04}")
}

/// Writes the records every damage test starts from, in several commits.
fn build(dir: &Path) {
    let store = Store::open(dir, options()).expect("open a new store");
    let ledger = store.app_table::<Vec<u8>>("ledger").expect("ledger");
    store
        .write(|scope| scope.put_session(&session(SESSION)))
        .expect("session");
    for chunk in 0..4 {
        store
            .write(move |scope| {
                for n in chunk * TASKS / 4..(chunk + 1) * TASKS / 4 {
                    let state = TaskState::Pending {
                        attempt: 0,
                        not_before_ms: 0,
                    };
                    scope.put_task(&task(SESSION, &task_name(n), state))?;
                }
                Ok::<_, Error>(())
            })
            .expect("tasks");
    }
    store
        .write(move |scope| {
            for seq in 1..=EVENTS {
                scope.put_event(&event(SESSION, seq, EventBody::DidFinishEvents))?;
            }
            ledger.put(scope, "big", &vec![7_u8; BIG_VALUE_BYTES])?;
            ledger.put(scope, "small", &vec![1_u8; 10])
        })
        .expect("events and ledger");
}

/// A store built by `build` and closed, in a directory of its own.
fn built() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    dir
}

/// A compacted copy of a built store (with its identity file): no free pages, so every
/// leaf page found by scanning the file is a live page of its table.
fn compacted() -> tempfile::TempDir {
    let source = built();
    let target = tempfile::tempdir().expect("tempdir");
    // SAFETY: the store on `source` is closed and nothing else opens it meanwhile.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(source.path()) }
        .expect("raw open of the closed store");
    env.copy_to_path(target.path().join("data.mdb"), CompactionOption::Enabled)
        .expect("compacting copy");
    drop(env);
    fs::copy(
        source.path().join(IDENTITY_FILE_NAME),
        target.path().join(IDENTITY_FILE_NAME),
    )
    .expect("identity file copied");
    target
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join("data.mdb")
}

fn read_u64(path: &Path, offset: u64) -> u64 {
    let file = fs::File::open(path).expect("open the data file");
    let mut bytes = [0_u8; 8];
    file.read_exact_at(&mut bytes, offset).expect("read");
    u64::from_ne_bytes(bytes)
}

fn write_bytes(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the data file for writing");
    file.write_all_at(bytes, offset).expect("write");
    file.sync_all().expect("sync");
}

/// The first leaf page of the tasks table: a leaf page holding a task key
/// (`session 0x00 task`; no other table has a NUL after the session id followed by
/// text). Only valid in a compacted file, where every page is live.
fn tasks_leaf_page(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read the data file");
    let page_bytes = page_bytes() as usize;
    let pattern = format!("{SESSION}\0tk-").into_bytes();
    (2..bytes.len() / page_bytes)
        .find(|&pgno| {
            let page = &bytes[pgno * page_bytes..(pgno + 1) * page_bytes];
            let flags = u16::from_ne_bytes([page[PAGE_FLAGS_AT], page[PAGE_FLAGS_AT + 1]]);
            flags == P_LEAF && page.windows(pattern.len()).any(|w| w == pattern)
        })
        .expect("a leaf page of the tasks table") as u64
}

/// What the child reported, and that it exited normally.
fn run_child(dir: &Path, unchecked: bool) -> String {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "damage_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_VAR, dir);
    if unchecked {
        command.env(CHILD_UNCHECKED_VAR, "1");
    }
    let output = command.output().expect("spawn the child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the child did not exit normally: {:?} (signal {:?})\n{stdout}\n{}",
        output.status,
        output.status.signal(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        // libtest prints `test damage_child ... ` on the same line first.
        .find_map(|line| line.split_once("outcome ").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| panic!("the child reported no outcome:\n{stdout}"))
        .to_string()
}

/// Asserts the child's outcome is an error of `kind` whose `Debug` starts with `variant`.
fn assert_typed(outcome: &str, stage: &str, kind: ErrorKind, variant: &str) {
    let expected = format!("{stage}-error {kind:?} {variant}");
    assert!(
        outcome.starts_with(&expected),
        "expected `{expected} ..`, the child reported `{outcome}`"
    );
}

/// Not a test on its own: the child of every damage test (does nothing unless the
/// parent set the directory variable). Opens the store, reads every record and writes
/// once, and prints the first error with its kind, or `ok`.
#[test]
fn damage_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let mut options = options();
    if std::env::var_os(CHILD_UNCHECKED_VAR).is_some() {
        options.check_at_open = CheckAtOpen::Never;
    }
    let report = |stage: &str, error: Error| {
        println!("outcome {stage}-error {:?} {error:?}", error.kind());
    };
    let store = match Store::open(&dir, options) {
        Ok(store) => store,
        Err(error) => return report("open", error),
    };
    let read = || -> Result<(), Error> {
        let snapshot = store.snapshot()?;
        snapshot.sessions()?;
        snapshot.for_each_task(|_| Ok(()))?;
        snapshot.events(&session_id(SESSION), 0, usize::MAX)?;
        store
            .app_table::<Vec<u8>>("ledger")?
            .for_each(&snapshot, |_, _| Ok(()))?;
        Ok(())
    };
    if let Err(error) = read() {
        return report("read", error);
    }
    let write = store.write(|scope| {
        let state = TaskState::Running { attempt: 1 };
        scope.put_task(&task(SESSION, &task_name(0), state))
    });
    if let Err(error) = write {
        return report("write", error);
    }
    println!("outcome ok");
}

/// An undamaged store, and its compacted copy, pass the full check at open and
/// `check_dir`, with every record counted and every page accounted for.
#[test]
fn an_undamaged_store_passes_every_check() {
    for dir in [built(), compacted()] {
        let report = check_dir(dir.path()).expect("check_dir passes");
        assert_eq!(
            (report.sessions, report.tasks, report.events),
            (1, u64::from(TASKS), EVENTS),
            "{report:?}"
        );
        assert_eq!(report.pages_unaccounted, 0, "{report:?}");
        let tasks = report
            .tables
            .iter()
            .find(|table| table.name == "tasks")
            .expect("the tasks table is reported");
        assert!(tasks.pages > 3, "tasks span several pages: {report:?}");
        let store = Store::open(dir.path(), options()).expect("the store opens");
        assert_eq!(
            store.check_report().map(|r| r.tasks),
            Some(u64::from(TASKS))
        );
        drop(store);
        assert_eq!(run_child(dir.path(), false), "ok");
    }
}

/// A directory that held a store and whose data file is now empty is `StoreMissing`
/// naming it as empty, not a new empty store (every acknowledged record gone).
#[test]
fn an_empty_data_file_is_not_a_new_store() {
    let dir = built();
    fs::write(data_file(dir.path()), b"").expect("empty the data file");
    let outcome = run_child(dir.path(), false);
    assert_typed(&outcome, "open", ErrorKind::Corrupt, "StoreMissing");
    assert!(outcome.contains("found: \"empty\""), "{outcome}");
    let result = check_dir(dir.path());
    assert!(
        matches!(result, Err(Error::StoreMissing { found: "empty", .. })),
        "{result:?}"
    );
}

/// A directory that held a store and whose data file is gone is `StoreMissing` naming
/// it as missing.
#[test]
fn a_missing_data_file_is_not_a_new_store() {
    let dir = built();
    fs::remove_file(data_file(dir.path())).expect("remove the data file");
    let outcome = run_child(dir.path(), false);
    assert_typed(&outcome, "open", ErrorKind::Corrupt, "StoreMissing");
    assert!(outcome.contains("found: \"missing\""), "{outcome}");
}

/// A store of the previous release (records, no identity file) opens and gets its
/// identity file; a new store has one from its first open on.
#[test]
fn a_store_without_an_identity_file_gets_one() {
    let dir = built();
    let identity = dir.path().join(IDENTITY_FILE_NAME);
    let first = Store::open(dir.path(), options())
        .expect("open")
        .identity()
        .cloned()
        .expect("a store opened for writing has an identity");
    fs::remove_file(&identity).expect("remove the identity file");
    let store = Store::open(dir.path(), options()).expect("a store without identity opens");
    assert!(identity.exists(), "the identity file is written at open");
    assert_ne!(store.identity(), Some(&first), "a new identity was chosen");
    assert_eq!(store.check_report().map(|r| r.sessions), Some(1));
}

/// A data file cut to half its length is `Truncated`, even with the full check off
/// (the length check always runs); a data file cut to 8,191 bytes (less than its two
/// meta pages) too.
#[test]
fn a_truncated_data_file_is_a_typed_error() {
    for cut in ["half", "8191"] {
        for unchecked in [false, true] {
            let dir = compacted();
            let path = data_file(dir.path());
            let len = fs::metadata(&path).expect("metadata").len();
            let to = if cut == "half" { len / 2 } else { 8191 };
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_len(to))
                .expect("truncate");
            let outcome = run_child(dir.path(), unchecked);
            assert_typed(&outcome, "open", ErrorKind::Corrupt, "Truncated");
            assert!(
                outcome.contains(&format!("file_bytes: {to}")),
                "{cut}: {outcome}"
            );
        }
    }
}

/// Flipped bytes in the header of a leaf page of the tasks table are `CorruptFile`
/// naming that page, at open: its flags, lower and upper bounds (LMDB would report
/// "corrupted" at the first read), or its page number (LMDB would not notice, and its
/// next write of the page would free the page the header names, still in use).
#[test]
fn a_damaged_page_header_is_a_typed_error() {
    for damage in ["kind", "number"] {
        let dir = compacted();
        let path = data_file(dir.path());
        let page = tasks_leaf_page(&path);
        let page_at = page * page_bytes();
        match damage {
            "kind" => {
                let at = page_at + PAGE_FLAGS_AT as u64;
                let mut header = [0_u8; 6];
                fs::File::open(&path)
                    .and_then(|file| file.read_exact_at(&mut header, at))
                    .expect("read the header");
                for byte in &mut header {
                    *byte ^= 0x5a;
                }
                write_bytes(&path, at, &header);
            }
            _ => write_bytes(&path, page_at, &(page + 1).to_ne_bytes()),
        }
        let outcome = run_child(dir.path(), false);
        assert_typed(&outcome, "open", ErrorKind::Corrupt, "CorruptFile");
        assert!(
            outcome.contains(&format!("page: Some({page})")),
            "{damage}: {outcome}"
        );
    }
}

/// Flipped bytes in a node of a leaf page of the tasks table: a node header whose data
/// size runs past the page is `CorruptFile` at open; a flipped byte of a task key is a
/// typed corruption at open (keys out of order, or a record under the wrong key).
#[test]
fn damaged_leaf_node_bytes_are_a_typed_error() {
    for damage in ["size", "key"] {
        let dir = compacted();
        let path = data_file(dir.path());
        let page = tasks_leaf_page(&path);
        let page_at = page * page_bytes();
        // The first node pointer follows the 16-byte header; a node is `lo hi flags
        // ksize` (2 bytes each), then the key.
        let mut pointer = [0_u8; 2];
        fs::File::open(&path)
            .and_then(|file| file.read_exact_at(&mut pointer, page_at + 16))
            .expect("read the node pointer");
        let node_at = page_at + u64::from(u16::from_ne_bytes(pointer));
        match damage {
            "size" => write_bytes(&path, node_at, &[0xff, 0xff, 0xff, 0x7f]),
            _ => {
                let key_byte = node_at + 8 + SESSION.len() as u64 + 4;
                write_bytes(&path, key_byte, b"~");
            }
        }
        let outcome = run_child(dir.path(), false);
        assert!(
            outcome.starts_with("open-error Corrupt "),
            "{damage}: expected a typed corruption at open, got `{outcome}`"
        );
        if damage == "size" {
            assert_typed(&outcome, "open", ErrorKind::Corrupt, "CorruptFile");
        }
    }
}

/// A task record whose value was damaged so that the pages stay sound (its session
/// id changed to another valid one, so it claims to be stored under another key) is a
/// typed `Corrupt` naming the tasks table: at open by the record walk, and, with the
/// full check off, at the first read that decodes it.
#[test]
fn a_damaged_record_is_a_typed_error_at_open_or_first_read() {
    for unchecked in [false, true] {
        let dir = compacted();
        let path = data_file(dir.path());
        let page = tasks_leaf_page(&path);
        let page_at = page * page_bytes();
        let mut pointer = [0_u8; 2];
        fs::File::open(&path)
            .and_then(|file| file.read_exact_at(&mut pointer, page_at + 16))
            .expect("read the node pointer");
        let node_at = page_at + u64::from(u16::from_ne_bytes(pointer));
        let mut key_bytes = [0_u8; 2];
        fs::File::open(&path)
            .and_then(|file| file.read_exact_at(&mut key_bytes, node_at + 6))
            .expect("read the key size");
        // The value is bincode: the session id's length (8 bytes), then its bytes.
        let value_at = node_at + 8 + u64::from(u16::from_ne_bytes(key_bytes));
        let last_session_byte = value_at + 8 + SESSION.len() as u64 - 1;
        write_bytes(&path, last_session_byte, b"X");
        let outcome = run_child(dir.path(), unchecked);
        let stage = if unchecked { "read" } else { "open" };
        assert_typed(&outcome, stage, ErrorKind::Corrupt, "Corrupt");
        assert!(outcome.contains("table: \"tasks\""), "{outcome}");
    }
}

/// The newer meta page damaged (its main root pointing past the last page, its last
/// page far past the file, or its magic), or both meta pages damaged, is `CorruptFile`
/// at open.
#[test]
fn damaged_meta_pages_are_a_typed_error() {
    let page_bytes = page_bytes();
    for damage in ["newer-root", "newer-last-page", "newer-magic", "both"] {
        let dir = built();
        let path = data_file(dir.path());
        let txnids = [read_u64(&path, 144), read_u64(&path, page_bytes + 144)];
        let newer = u64::from(txnids[0] < txnids[1]);
        let meta_at = |slot: u64| slot * page_bytes;
        match damage {
            // `mm_dbs[MAIN_DBI].md_root` is at byte 128 of a meta page.
            "newer-root" => write_bytes(&path, meta_at(newer) + 128, &(1_u64 << 40).to_ne_bytes()),
            // `mm_last_pg` is at byte 136.
            "newer-last-page" => {
                write_bytes(&path, meta_at(newer) + 136, &(1_u64 << 36).to_ne_bytes())
            }
            "newer-magic" => write_bytes(&path, meta_at(newer) + 16, &[0; 4]),
            _ => {
                write_bytes(&path, meta_at(0) + 16, &[0; 4]);
                write_bytes(&path, meta_at(1) + 16, &[0; 4]);
            }
        }
        let outcome = run_child(dir.path(), false);
        assert_typed(&outcome, "open", ErrorKind::Corrupt, "CorruptFile");
        let expected = if damage == "both" {
            "page: None".to_string()
        } else {
            format!("page: Some({newer})")
        };
        assert!(outcome.contains(&expected), "{damage}: {outcome}");
    }
}

/// The stores the previous release wrote (`tests/fixtures`: hand-made records of every
/// shape, and a crash harness run) pass `check_dir` with every page accounted for, and
/// open, getting their identity file.
#[test]
fn stores_of_the_previous_release_pass_the_check() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for fixture in ["store-v1", "crash-run-v1"] {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::copy(
            fixtures.join(fixture).join("data.mdb"),
            data_file(dir.path()),
        )
        .expect("copy the fixture");
        let report = check_dir(dir.path()).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert_eq!(report.pages_unaccounted, 0, "{fixture}: {report:?}");
        assert!(
            report.sessions > 0 && report.tasks > 0,
            "{fixture}: {report:?}"
        );
        let options = StoreOptions::default().with_app_table("ledger");
        let store = Store::open(dir.path(), options).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert!(dir.path().join(IDENTITY_FILE_NAME).exists(), "{fixture}");
        assert_eq!(store.check_report().map(|r| r.tasks), Some(report.tasks));
    }
}

/// LMDB may leave a data file shorter than its last page: pages it allocated and freed
/// in one transaction are listed free but never written (`mdb_page_flush` skips loose
/// pages; `mdb.c` says of `mm_last_pg` "the file may be shorter if the freeDB lists the
/// final pages"). Such a file is sound, and the length check accepts it when every
/// missing page is listed free, but not when a missing page is in use. The test frees
/// pages at the end of the file (a large value, then small writes, then the value's
/// deletion) and cuts pages off while `check_dir` accepts it, until it says `Truncated`.
#[test]
fn a_data_file_shorter_than_its_last_page_is_sound_when_the_tail_is_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), options()).expect("open");
    put_ledger(&store, "big", 64 * 1024);
    for n in 0..8 {
        put_ledger(&store, &format!("small-{n}"), 10);
    }
    let ledger = store.app_table::<Vec<u8>>("ledger").expect("ledger");
    store
        .write(move |scope| ledger.delete(scope, "big"))
        .expect("delete the large value");
    store.close().expect("close");
    drop(store);
    let path = data_file(dir.path());
    let page_bytes = page_bytes();
    let before = check_dir(dir.path()).expect("the store is sound");
    let last_page = before.last_page;
    assert_eq!(
        (last_page + 1) * page_bytes,
        before.data_bytes,
        "{before:?}"
    );
    let original = fs::read(&path).expect("read the data file");
    // Cut pages off the end while the check says they were free.
    let mut cut = 0;
    loop {
        let len = (last_page - cut) * page_bytes;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_len(len))
            .expect("truncate");
        match check_dir(dir.path()) {
            Ok(_) => cut += 1,
            Err(Error::Truncated { file_bytes, .. }) if file_bytes == len => break,
            Err(error) => panic!("after cutting {} pages: {error}", cut + 1),
        }
    }
    assert!(cut > 0, "no page at the end was free");
    // The file now lacks a page in use: open refuses it, even with the full check off
    // (the length check always runs). Cut back to the last sound length, it opens.
    let options = StoreOptions {
        check_at_open: CheckAtOpen::Never,
        ..options()
    };
    let result = Store::open(dir.path(), options.clone());
    assert!(matches!(result, Err(Error::Truncated { .. })), "{result:?}");
    let sound_bytes = ((last_page + 1 - cut) * page_bytes) as usize;
    fs::write(&path, &original[..sound_bytes]).expect("back to the last sound length");
    let store = Store::open(dir.path(), options).expect("a short but sound file opens");
    assert_eq!(get_ledger(&store, "small-7"), Some(10));
    put_ledger(&store, "after", 64 * 1024);
    assert_eq!(get_ledger(&store, "after"), Some(64 * 1024));
    store.close().expect("close");
    check_dir(dir.path()).expect("still sound after writes");
}

fn put_ledger(store: &Store, key: &str, bytes: usize) {
    let ledger = store.app_table::<Vec<u8>>("ledger").expect("ledger");
    let key = key.to_string();
    store
        .write(move |scope| ledger.put(scope, &key, &vec![9_u8; bytes]))
        .expect("put");
}

fn get_ledger(store: &Store, key: &str) -> Option<usize> {
    let ledger = store.app_table::<Vec<u8>>("ledger").expect("ledger");
    let snapshot = store.snapshot().expect("snapshot");
    ledger.get(&snapshot, key).expect("read").map(|v| v.len())
}
