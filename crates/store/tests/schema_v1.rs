//! A store written by the previous release (schema 1, records without versions) opens in
//! this one: every record reads, converted, and rewriting one stores it versioned.
//!
//! The fixture `tests/fixtures/store-v1/data.mdb` was written by that release (see the
//! README beside it for what it holds and the program that wrote it).

mod common;

use std::path::{Path, PathBuf};

use common::{session_id, task_id};
use session_store::{
    DeliveryPolicy, EventBody, Outcome, SessionConfig, SessionState, Store, StoreOptions, TaskState,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/store-v1/data.mdb")
}

/// A copy of the fixture in a fresh directory, so the test can write to it.
fn copy_of_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(fixture(), dir.path().join("data.mdb")).expect("copy the fixture");
    dir
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default().with_app_table("ledger")).expect("open")
}

/// Every session of the schema-1 store reads with its fields carried over and the new
/// ones at their defaults; the stored completion becomes a one-entry list.
#[test]
fn schema_1_sessions_read() {
    let dir = copy_of_fixture();
    let store = open(dir.path());
    let snapshot = store.snapshot().expect("snapshot");
    let sessions = snapshot.sessions().expect("sessions");
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "beta", "delta", "gamma"]);

    let alpha = &sessions[0];
    assert_eq!(alpha.state, SessionState::Running);
    assert_eq!(
        (alpha.generation, alpha.tasks_open, alpha.tasks_running),
        (2, 2, 1)
    );
    assert_eq!((alpha.next_event_seq, alpha.delivered_seq), (6, 3));
    assert_eq!(alpha.completions.len(), 1);
    assert_eq!(alpha.completions[0].name, "done");
    assert_eq!(alpha.completions[0].payload, b"p2");
    assert_eq!(alpha.completion_generation, 1);
    assert_eq!(alpha.config.attempts_max, 5);
    assert_eq!(alpha.config.deadline_s, 86_400);
    assert_eq!(alpha.config.delivery_policy, DeliveryPolicy::Wait);
    assert_eq!(
        alpha.config.retention_s,
        SessionConfig::default().retention_s
    );
    assert_eq!(alpha.delivery_failure, None);
    assert!(sessions.iter().all(|s| s.validate().is_ok()));
}

/// Tasks keep their states and outcomes; a download's absolute path of schema 1 becomes
/// the file name alone, and a completed task's finish time is its enqueue time.
#[test]
fn schema_1_tasks_read() {
    let dir = copy_of_fixture();
    let store = open(dir.path());
    let snapshot = store.snapshot().expect("snapshot");
    let tasks = snapshot.tasks(&session_id("alpha")).expect("tasks");
    assert_eq!(tasks.len(), 6);
    let TaskState::Completed {
        outcome: Outcome::Success(response),
        event_seq: 0,
        finished_ms,
    } = &tasks[0].state
    else {
        panic!("a1 is a completed success: {:?}", tasks[0].state);
    };
    assert_eq!(response.file.as_deref(), Some("a1"));
    assert_eq!(*finished_ms, tasks[0].created_ms);
    assert!(matches!(
        &tasks[1].state,
        TaskState::Completed { outcome: Outcome::Rejected(r), .. } if r.status == 404 && r.body == b"not found"
    ));
    assert!(matches!(
        &tasks[2].state,
        TaskState::Completed {
            outcome: Outcome::Failed(f),
            event_seq: 4,
            ..
        } if f.attempts == 5
    ));
    assert!(matches!(
        tasks[3].state,
        TaskState::Completed {
            outcome: Outcome::Cancelled,
            ..
        }
    ));
    assert_eq!(tasks[4].state, TaskState::Running { attempt: 2 });
    assert_eq!(
        tasks[5].state,
        TaskState::Pending {
            attempt: 1,
            not_before_ms: 1_700_000_005_000
        }
    );
    // The nested transfer description is kept byte for byte (session-http reads it).
    assert!(tasks.iter().all(|t| !t.request.is_empty()));
}

/// Undelivered events of every kind read, in order, and the application table too.
#[test]
fn schema_1_events_and_app_tables_read() {
    let dir = copy_of_fixture();
    let store = open(dir.path());
    let snapshot = store.snapshot().expect("snapshot");
    let events = snapshot
        .events(&session_id("alpha"), 0, 100)
        .expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert!(matches!(&events[0].body, EventBody::Completion(c) if c.payload == b"p1"));
    assert!(matches!(
        &events[1].body,
        EventBody::TaskCompleted { task, .. } if *task == task_id("a3")
    ));
    let gamma = snapshot
        .events(&session_id("gamma"), 0, 100)
        .expect("events");
    assert!(matches!(gamma[1].body, EventBody::DidFinishEvents));
    let ledger = store.app_table::<u64>("ledger").expect("table");
    assert_eq!(ledger.get(&snapshot, "n").expect("read"), Some(42));
}

/// A schema-1 record rewritten by this release is stored versioned and reads back the
/// same, beside the untouched schema-1 records; the store's schema number moved to 2,
/// so the previous release refuses it instead of misreading it.
#[test]
fn schema_1_records_are_rewritten_versioned() {
    let dir = copy_of_fixture();
    let store = open(dir.path());
    let before = store
        .snapshot()
        .expect("snapshot")
        .session(&session_id("gamma"))
        .expect("read")
        .expect("gamma exists");
    let mut changed = before.clone();
    changed.delivered_seq = 1;
    let written = changed.clone();
    store
        .write(move |scope| scope.put_session(&written))
        .expect("rewrite");
    drop(store);
    let store = open(dir.path());
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(
        snapshot.session(&session_id("gamma")).expect("read"),
        Some(changed)
    );
    assert_eq!(snapshot.sessions().expect("all").len(), 4);
    drop(snapshot);
    drop(store);
    let schema = raw_get(dir.path(), "meta", b"schema_version");
    assert_eq!(
        schema.map(|bytes| bincode_u32(&bytes)),
        Some(2),
        "schema upgraded"
    );
    let gamma = raw_get(dir.path(), "sessions", b"gamma").expect("gamma");
    let alpha = raw_get(dir.path(), "sessions", b"alpha").expect("alpha");
    assert_eq!(gamma[0], 0xB6, "rewritten: versioned");
    assert_eq!(alpha[0], 5, "untouched: schema 1 (its id's length first)");
}

fn bincode_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("a u32 is 4 bytes"))
}

/// Reads one raw value with heed directly, past the store's decoding.
fn raw_get(dir: &Path, table: &str, key: &[u8]) -> Option<Vec<u8>> {
    use heed::types::Bytes;
    // SAFETY: the store that used this directory was dropped above, so no other
    // environment of this process maps the files, and no other process uses them.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir) }.expect("raw open");
    let rtxn = env.read_txn().expect("raw txn");
    let opened = env
        .open_databases_and_commit(rtxn, |opener, rtxn| {
            opener
                .open_database::<Bytes, Bytes>(rtxn, Some(table))
                .map(heed::CommitOrAbort::<_, ()>::Commit)
        })
        .expect("raw table");
    let heed::CommitOrAbort::Commit(Some(database)) = opened else {
        panic!("table {table} is missing");
    };
    let rtxn = env.read_txn().expect("raw txn");
    database
        .get(&rtxn, key)
        .expect("raw get")
        .map(<[u8]>::to_vec)
}
