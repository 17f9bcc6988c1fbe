//! `Store::open_read_only` over a real LMDB: reading a store whose owner runs in another
//! process (this test binary, re-executed as the owner), a closed store, the previous
//! release's fixture, and the directories that hold no store.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::*;
use heed::types::Bytes;
use heed::{CommitOrAbort, EnvOpenOptions};
use session_store::{
    DeadLetterRecord, Error, ErrorKind, EventBody, IDENTITY_FILE_NAME, SCHEMA_VERSION, Store,
    StoreOptions, TaskState, check_dir,
};

const OWNER_DIR_VAR: &str = "SESSION_STORE_READ_ONLY_OWNER_DIR";
/// Sessions the owner writes on `grow`; each carries a task with a large request, so the
/// data outgrows the owner's first map many times over.
const GROW_SESSIONS: usize = 64;
const GROW_REQUEST_BYTES: usize = 64 * 1024;
/// The owner's first map: small, so that `grow` makes it grow.
const OWNER_MAP_BYTES_INITIAL: usize = 256 * 1024;

fn dead_letter(session: &str, seq: u64) -> DeadLetterRecord {
    DeadLetterRecord {
        event: event(session, seq, EventBody::DidFinishEvents),
        attempts: 2,
        last_error: "refused".into(),
        moved_ms: 1_700_000_002_000,
    }
}

/// The first records every owner writes.
fn write_first_records(store: &Store) {
    let ledger = store.app_table::<u64>("ledger").expect("ledger");
    store
        .write(move |scope| {
            scope.put_session(&session("s0"))?;
            scope.put_dead_letter(&dead_letter("s0", 1))?;
            scope.put_task_expiry(10, &session_id("s0"), &task_id("t0"))?;
            ledger.put(scope, "n", &42)
        })
        .expect("first records");
}

/// A running owner of a store: this test binary as a child process.
struct Owner {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Owner {
    fn start(dir: &Path) -> Owner {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "owner_child", "--nocapture", "--test-threads=1"])
            .env(OWNER_DIR_VAR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the owner");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut owner = Owner {
            child,
            stdin,
            stdout,
        };
        owner.expect_line("owner: ready");
        owner
    }

    /// Reads the owner's output up to the line that holds `wanted` (libtest may print
    /// the test's name at the start of the first one).
    fn expect_line(&mut self, wanted: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.stdout.read_line(&mut line).expect("read the owner");
            assert!(read > 0, "the owner ended before saying {wanted:?}");
            if line.contains(wanted) {
                return line.trim().to_owned();
            }
        }
    }

    fn command(&mut self, command: &str, reply: &str) -> String {
        writeln!(self.stdin, "{command}").expect("tell the owner");
        self.expect_line(reply)
    }

    fn stop(mut self) {
        self.command("exit", "owner: closed");
        let status = self.child.wait().expect("wait for the owner");
        assert!(status.success(), "the owner failed: {status:?}");
    }
}

/// Not a test on its own: the owner process of `a_running_owners_commits_are_read`
/// (does nothing unless the parent set the directory variable). Opens the store, writes
/// the first records, then follows commands on stdin: `grow` writes enough to grow the
/// map several times, `exit` closes the store.
#[test]
fn owner_child() {
    let Some(dir) = std::env::var_os(OWNER_DIR_VAR) else {
        return;
    };
    let options = StoreOptions {
        map_size_bytes_initial: OWNER_MAP_BYTES_INITIAL,
        ..StoreOptions::default().with_app_table("ledger")
    };
    let store = Store::open(&dir, options).expect("the owner opens");
    write_first_records(&store);
    println!("owner: ready");
    for line in std::io::stdin().lock().lines() {
        match line.expect("read a command").as_str() {
            "grow" => {
                for n in 0..GROW_SESSIONS {
                    store
                        .write(move |scope| {
                            let id = format!("g{n:03}");
                            scope.put_session(&session(&id))?;
                            let mut big = task(&id, "big", TaskState::Running { attempt: 1 });
                            big.request = vec![b'r'; GROW_REQUEST_BYTES];
                            scope.put_task(&big)
                        })
                        .expect("grow");
                }
                println!("owner: grown, map {} bytes", store.map_size_bytes());
            }
            "exit" => {
                store.close().expect("close");
                println!("owner: closed");
                return;
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// While another process owns the store and writes to it, a read-only store in this
/// process reads its commits (records of every table, an application table, the size),
/// refuses writes with `ReadOnly`, keeps `check_dir` and a writer `Store::open` out
/// (`Locked`) and a second read-only open of the same directory in this process out
/// (`OpenInThisProcess`); when the owner's map grows past this reader's, a new snapshot
/// adopts it and sees every new commit; and after the owner closed, reads go on.
#[test]
fn a_running_owners_commits_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = Owner::start(dir.path());
    let store = Store::open_read_only(dir.path()).expect("open read-only beside the owner");
    assert!(store.is_read_only());
    assert!(store.identity().is_some(), "the owner wrote its identity");
    let s0 = session_id("s0");
    {
        let snapshot = store.snapshot().expect("snapshot");
        let ids: Vec<String> = snapshot
            .sessions()
            .expect("sessions")
            .into_iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(ids, ["s0"]);
        assert_eq!(
            snapshot.dead_letters(&s0, 0, 10).expect("dead letters"),
            [dead_letter("s0", 1)]
        );
        assert_eq!(
            snapshot.expired_tasks(10, 10).expect("expiry"),
            [(10, s0.clone(), task_id("t0"))]
        );
        let ledger = store.app_table::<u64>("ledger").expect("ledger is found");
        assert_eq!(ledger.get(&snapshot, "n").expect("ledger"), Some(42));
        let size = snapshot.size().expect("size");
        assert!(size.data_bytes > 0 && size.pages_in_use > 0, "{size:?}");
        assert!(
            size.tables
                .iter()
                .any(|t| t.name == "sessions" && t.entries == 1),
            "{size:?}"
        );
    }

    let refused = store.write(|scope| scope.put_session(&session("s1")));
    assert!(
        matches!(&refused, Err(error @ Error::ReadOnly { dir: d }) if d == dir.path() && error.kind() == ErrorKind::InvalidInput),
        "{refused:?}"
    );
    let refused = block_on(store.write_async(|scope| scope.put_session(&session("s1"))));
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
    let second = Store::open_read_only(dir.path());
    assert!(
        matches!(&second, Err(error @ Error::OpenInThisProcess { .. }) if error.kind() == ErrorKind::Locked),
        "{second:?}"
    );
    let writer = Store::open(dir.path(), StoreOptions::default());
    assert!(matches!(writer, Err(Error::Locked { .. })), "{writer:?}");
    let checked = check_dir(dir.path());
    assert!(matches!(checked, Err(Error::Locked { .. })), "{checked:?}");

    let mut owner = owner;
    let map_before = store.map_size_bytes();
    let grown = owner.command("grow", "owner: grown");
    let snapshot = store
        .snapshot()
        .expect("a snapshot after the owner's map grew");
    assert_eq!(
        snapshot.sessions().expect("sessions").len(),
        1 + GROW_SESSIONS,
        "every commit of the owner is seen ({grown})"
    );
    let big = snapshot
        .task(&session_id("g063"), &task_id("big"))
        .expect("read")
        .expect("the last big task");
    assert_eq!(big.request.len(), GROW_REQUEST_BYTES);
    drop(snapshot);
    assert!(
        store.map_size_bytes() > map_before,
        "the owner's larger map was adopted: {} then {} bytes ({grown})",
        map_before,
        store.map_size_bytes()
    );

    owner.stop();
    let snapshot = store.snapshot().expect("a snapshot after the owner closed");
    assert_eq!(
        snapshot.sessions().expect("sessions").len(),
        1 + GROW_SESSIONS
    );
    drop(snapshot);
    store.close().expect("close the read-only store");
    Store::open(dir.path(), StoreOptions::default()).expect("the directory is free");
}

/// A directory without a store is `NoStore` (missing directory, empty directory, an
/// empty data file), a directory whose identity file outlived its data file is
/// `StoreMissing`, and a file is `NotADirectory`; none of them gets a store created.
#[test]
fn directories_without_a_store_are_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let result = Store::open_read_only(&missing);
    assert!(
        matches!(&result, Err(error @ Error::NoStore { dir: d, .. }) if *d == missing && error.kind() == ErrorKind::InvalidInput),
        "{result:?}"
    );
    assert!(!missing.exists(), "nothing was created");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let result = Store::open_read_only(&empty);
    assert!(matches!(&result, Err(Error::NoStore { .. })), "{result:?}");
    assert!(!empty.join("data.mdb").exists(), "no data file was created");
    std::fs::write(empty.join("data.mdb"), b"").expect("an empty data file");
    let result = Store::open_read_only(&empty);
    assert!(matches!(&result, Err(Error::NoStore { .. })), "{result:?}");

    let gone = dir.path().join("gone");
    drop(Store::open(&gone, StoreOptions::default()).expect("create"));
    std::fs::remove_file(gone.join("data.mdb")).expect("remove the data file");
    let result = Store::open_read_only(&gone);
    assert!(
        matches!(
            &result,
            Err(Error::StoreMissing {
                found: "missing",
                ..
            })
        ),
        "{result:?}"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("a file");
    let result = Store::open_read_only(&file);
    assert!(
        matches!(&result, Err(Error::NotADirectory { .. })),
        "{result:?}"
    );
}

/// A closed store opens read-only and reads back; while it is open read-only, this
/// process cannot also open it for writing (`Locked`); closing the read-only store frees
/// the directory at once.
#[test]
fn a_closed_store_opens_read_only_and_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(dir.path(), StoreOptions::default().with_app_table("ledger")).expect("create");
    write_first_records(&store);
    store.close().expect("close");
    let reader = Store::open_read_only(dir.path()).expect("read-only");
    let snapshot = reader.snapshot().expect("snapshot");
    assert!(snapshot.session(&session_id("s0")).expect("read").is_some());
    drop(snapshot);
    let writer = Store::open(dir.path(), StoreOptions::default());
    assert!(matches!(writer, Err(Error::Locked { .. })), "{writer:?}");
    reader.close().expect("close the reader");
    let refused = reader.snapshot();
    assert!(matches!(refused, Err(Error::Closed { .. })), "{refused:?}");
    Store::open(dir.path(), StoreOptions::default().with_app_table("ledger"))
        .expect("opens for writing once the reader closed");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .join("data.mdb")
}

/// The previous release's stores (schema 1, no identity file, none of the later tables)
/// open read-only and read as they do when opened for writing, and the read-only open
/// leaves the data file byte for byte as it was and writes no identity file.
#[test]
fn schema_1_fixtures_open_read_only_unchanged() {
    for name in ["store-v1", "crash-run-v1"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data.mdb");
        std::fs::copy(fixture(name), &data).expect("copy the fixture");
        let before = std::fs::read(&data).expect("read");
        let store = Store::open_read_only(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(store.identity(), None, "{name}");
        let snapshot = store.snapshot().expect("snapshot");
        let sessions = snapshot.sessions().expect("sessions");
        assert!(!sessions.is_empty(), "{name}");
        let mut tasks = 0;
        snapshot
            .for_each_task(|_| {
                tasks += 1;
                Ok(())
            })
            .expect("tasks");
        assert!(tasks > 0, "{name}");
        for session in &sessions {
            assert!(
                snapshot
                    .dead_letters(&session.id, 0, 10)
                    .expect("no table yet")
                    .is_empty()
            );
        }
        assert!(
            snapshot
                .expired_tasks(u64::MAX, 10)
                .expect("none")
                .is_empty()
        );
        assert!(
            store.app_table::<u64>("ledger").is_ok(),
            "{name}: the application table is found"
        );
        drop(snapshot);
        drop(store);
        assert_eq!(std::fs::read(&data).expect("read"), before, "{name}");
        assert!(!dir.path().join(IDENTITY_FILE_NAME).exists(), "{name}");
    }
}

/// Plants raw bytes in a closed store's table with heed.
fn raw_put(dir: &Path, table: &str, key: &[u8], value: &[u8]) {
    // SAFETY: the store on `dir` is closed (dropped) and nothing else in this test opens
    // the directory while this environment is alive.
    let env = unsafe { EnvOpenOptions::new().max_dbs(16).open(dir) }.expect("raw open");
    let wtxn = env.write_txn().expect("raw txn");
    let created = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<Bytes, Bytes>(wtxn, Some(table))
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .expect("raw table");
    let CommitOrAbort::Commit(database) = created else {
        panic!("raw table creation aborted");
    };
    let mut wtxn = env.write_txn().expect("raw txn");
    database.put(&mut wtxn, key, value).expect("raw put");
    wtxn.commit().expect("raw commit");
}

/// A table this build does not know (as a newer build might add) does not stop a
/// read-only open, while a newer schema version is refused with `SchemaTooNew`.
#[test]
fn unknown_tables_are_ignored_and_newer_schemas_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("create");
    write_records(&store);
    drop(store);
    raw_put(dir.path(), "future_table", b"k", b"v");
    raw_put(dir.path(), "app.", b"k", b"not an application table name");
    let store = Store::open_read_only(dir.path()).expect("opens beside unknown tables");
    let sessions = store
        .snapshot()
        .expect("snapshot")
        .sessions()
        .expect("read");
    assert_eq!(sessions.len(), 1);
    drop(store);

    raw_put(
        dir.path(),
        "meta",
        b"schema_version",
        &bincode::serialize(&(SCHEMA_VERSION + 1)).expect("encode"),
    );
    let result = Store::open_read_only(dir.path());
    assert!(
        matches!(&result, Err(error @ Error::SchemaTooNew { found, .. })
            if *found == SCHEMA_VERSION + 1 && error.kind() == ErrorKind::Incompatible),
        "{result:?}"
    );
}

fn write_records(store: &Store) {
    store
        .write(|scope| scope.put_session(&session("only")))
        .expect("write");
}
