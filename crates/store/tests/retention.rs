//! What keeps the store small and walkable, over a real LMDB in a temporary directory
//! (and, for the tests in `on_every_backend!`, over PostgreSQL too): deletes of tasks,
//! sessions and events; the dead-letter table; the task expiry index read oldest first in
//! bounded pieces; listing sessions and tasks in bounded pieces; and the record walk (at
//! open and in `check_dir`) over the new tables.

mod common;

use std::path::Path;

use common::*;
use heed::types::Bytes;
use heed::{self, CommitOrAbort, EnvOpenOptions};
use session_harness::stores::Place;
use session_store::{
    CheckAtOpen, DeadLetterRecord, Error, ErrorKind, EventBody, FAILURE_MESSAGE_BYTES_MAX,
    SessionId, Store, StoreOptions, TaskId, TaskState, check_dir,
};

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open the store")
}

fn pending() -> TaskState {
    TaskState::Pending {
        attempt: 0,
        not_before_ms: 0,
    }
}

fn dead_letter(session: &str, seq: u64) -> DeadLetterRecord {
    let record = DeadLetterRecord {
        event: event(session, seq, EventBody::DidFinishEvents),
        attempts: 3,
        last_error: format!("delegate refused {session}/{seq}"),
        moved_ms: 1_700_000_001_000 + seq,
    };
    record.validate().expect("the test dead letter is valid");
    record
}

/// `delete_task`, `delete_session` and `delete_events` remove exactly what they name and
/// say whether there was anything: the other session's records and the neighbouring
/// task stay, a second delete finds nothing, and the deletes commit (a reopened store
/// sees them).
fn deletes_remove_what_they_name(place: &Place) {
    let store = place.open();
    store
        .write(|scope| {
            for id in ["a", "b"] {
                scope.put_session(&session(id))?;
                for task_name in ["t1", "t2"] {
                    scope.put_task(&task(id, task_name, pending()))?;
                }
                for seq in 0..4 {
                    scope.put_event(&event(id, seq, EventBody::DidFinishEvents))?;
                }
            }
            Ok::<_, Error>(())
        })
        .expect("write");
    let (a, b) = (session_id("a"), session_id("b"));
    let found = store
        .write({
            let (a, t1) = (a.clone(), task_id("t1"));
            move |scope| {
                let first = scope.delete_task(&a, &t1)?;
                let again = scope.delete_task(&a, &t1)?;
                let missing = scope.delete_task(&a, &task_id("none"))?;
                let events = scope.delete_events(&a)?;
                let no_events = scope.delete_events(&a)?;
                let session = scope.delete_session(&a)?;
                let no_session = scope.delete_session(&a)?;
                Ok::<_, Error>((
                    first, again, missing, events, no_events, session, no_session,
                ))
            }
        })
        .expect("deletes");
    assert_eq!(found, (true, false, false, 4, 0, true, false));
    drop(store);

    let store = place.open();
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(snapshot.session(&a).expect("read"), None);
    let a_tasks: Vec<String> = snapshot
        .tasks(&a)
        .expect("tasks")
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(a_tasks, ["t2"], "only t1 was deleted");
    assert!(snapshot.events(&a, 0, 10).expect("events").is_empty());
    assert!(snapshot.session(&b).expect("read").is_some());
    assert_eq!(snapshot.tasks(&b).expect("tasks").len(), 2);
    assert_eq!(snapshot.events(&b, 0, 10).expect("events").len(), 4);
}

/// A dead letter roundtrips through `put_dead_letter` and both reads (a unit's scope and
/// a snapshot); range reads give a session's dead letters from a sequence number on, in
/// order, at most `limit`, never another session's; an existing one is never
/// overwritten (`DeadLetterExists`); an invalid one is refused; and a delete removes it.
fn dead_letters_roundtrip_range_and_delete(place: &Place) {
    let store = place.open();
    let seqs = [1_u64, 2, 5, 256, 1000];
    store
        .write(move |scope| {
            for seq in seqs {
                scope.put_dead_letter(&dead_letter("s", seq))?;
            }
            // A session whose id extends the first one's sorts right after it.
            scope.put_dead_letter(&dead_letter("s-x", 0))?;
            let read = scope.dead_letter(&session_id("s"), 5)?;
            assert_eq!(read, Some(dead_letter("s", 5)), "seen inside the unit");
            Ok::<_, Error>(())
        })
        .expect("write");
    let s = session_id("s");
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(
        snapshot.dead_letter(&s, 256).expect("read"),
        Some(dead_letter("s", 256))
    );
    assert_eq!(snapshot.dead_letter(&s, 3).expect("read"), None);
    let range = |from_seq, limit| -> Vec<u64> {
        snapshot
            .dead_letters(&s, from_seq, limit)
            .expect("range")
            .into_iter()
            .map(|d| d.event.seq)
            .collect()
    };
    assert_eq!(range(0, 100), seqs);
    assert_eq!(range(2, 2), [2, 5]);
    assert_eq!(range(6, 100), [256, 1000]);
    assert_eq!(range(1001, 100), [] as [u64; 0]);
    assert_eq!(range(0, 0), [] as [u64; 0]);
    drop(snapshot);

    let duplicate = store.write(|scope| {
        let mut changed = dead_letter("s", 5);
        changed.attempts = 9;
        scope.put_dead_letter(&changed)
    });
    assert!(
        matches!(&duplicate, Err(error @ Error::DeadLetterExists { session, seq: 5 })
            if session.as_str() == "s" && error.kind() == ErrorKind::InvalidInput),
        "{duplicate:?}"
    );
    for invalid in [
        DeadLetterRecord {
            attempts: 0,
            ..dead_letter("s", 7)
        },
        DeadLetterRecord {
            last_error: "x".repeat(FAILURE_MESSAGE_BYTES_MAX + 1),
            ..dead_letter("s", 7)
        },
    ] {
        let refused = store.write(move |scope| scope.put_dead_letter(&invalid));
        assert!(
            matches!(&refused, Err(Error::InvalidRecord { table: "dead_letters", key, .. }) if key == "s/7"),
            "{refused:?}"
        );
    }

    let deleted = store
        .write(|scope| {
            let s = session_id("s");
            Ok::<_, Error>((
                scope.delete_dead_letter(&s, 5)?,
                scope.delete_dead_letter(&s, 5)?,
            ))
        })
        .expect("delete");
    assert_eq!(deleted, (true, false));
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(snapshot.dead_letter(&s, 5).expect("read"), None);
    assert_eq!(snapshot.dead_letters(&s, 0, 100).expect("range").len(), 4);
    assert_eq!(
        snapshot
            .dead_letters(&session_id("s-x"), 0, 100)
            .expect("range")
            .len(),
        1
    );
}

/// Task expiry entries come back oldest first across sessions, only those due
/// (`expires_ms <= now_ms`, the boundary included), at most `limit`; writing an entry
/// twice keeps one; deleting one says whether it was there; `u64::MAX` as now sees
/// everything.
fn expired_tasks_are_oldest_first_bounded_and_limited(place: &Place) {
    let store = place.open();
    let entries: Vec<(u64, &str, &str)> = vec![
        (300, "a", "t3"),
        (100, "b", "t1"),
        (100, "a", "t1"),
        (256, "a", "t2"),
        (u64::MAX, "c", "t9"),
        (200, "b", "t2"),
    ];
    let planted = entries.clone();
    store
        .write(move |scope| {
            for (expires_ms, session, task) in &planted {
                scope.put_task_expiry(*expires_ms, &session_id(session), &task_id(task))?;
            }
            // Written twice: still one entry.
            scope.put_task_expiry(100, &session_id("a"), &task_id("t1"))?;
            let due = scope.expired_tasks(100, 10)?;
            assert_eq!(due.len(), 2, "seen inside the unit: {due:?}");
            Ok::<_, Error>(())
        })
        .expect("write");
    let snapshot = store.snapshot().expect("snapshot");
    let due = |now_ms, limit| -> Vec<(u64, String, String)> {
        snapshot
            .expired_tasks(now_ms, limit)
            .expect("expired")
            .into_iter()
            .map(|(ms, s, t): (u64, SessionId, TaskId)| (ms, s.to_string(), t.to_string()))
            .collect()
    };
    let owned = |list: &[(u64, &str, &str)]| -> Vec<(u64, String, String)> {
        list.iter()
            .map(|(ms, s, t)| (*ms, s.to_string(), t.to_string()))
            .collect()
    };
    assert_eq!(due(99, 10), owned(&[]));
    assert_eq!(due(100, 10), owned(&[(100, "a", "t1"), (100, "b", "t1")]));
    assert_eq!(
        due(256, 10),
        owned(&[
            (100, "a", "t1"),
            (100, "b", "t1"),
            (200, "b", "t2"),
            (256, "a", "t2")
        ])
    );
    assert_eq!(
        due(1000, 3),
        owned(&[(100, "a", "t1"), (100, "b", "t1"), (200, "b", "t2")])
    );
    assert_eq!(due(1000, 0), owned(&[]));
    assert_eq!(due(u64::MAX, 100).len(), entries.len());
    drop(snapshot);

    let deleted = store
        .write(|scope| {
            let (a, t1) = (session_id("a"), task_id("t1"));
            Ok::<_, Error>((
                scope.delete_task_expiry(100, &a, &t1)?,
                scope.delete_task_expiry(100, &a, &t1)?,
                scope.delete_task_expiry(999, &session_id("b"), &t1)?,
            ))
        })
        .expect("delete");
    assert_eq!(deleted, (true, false, false));
    let snapshot = store.snapshot().expect("snapshot");
    let left = snapshot.expired_tasks(100, 10).expect("expired");
    assert_eq!(left, [(100, session_id("b"), task_id("t1"))]);
}

/// 2,500 sessions, walked with `sessions_from` in pieces of 97, each piece on a new
/// snapshot, come back once each in identifier order; the same holds for a session's
/// tasks with `tasks_from`, which never strays into a session whose id extends it.
fn sessions_and_tasks_are_listed_in_bounded_pieces(place: &Place) {
    const SESSIONS: usize = 2500;
    const PIECE: usize = 97;
    let store = place.open();
    store
        .write(|scope| {
            for n in 0..SESSIONS {
                scope.put_session(&session(&format!("s{n}")))?;
            }
            for n in 0..300 {
                scope.put_task(&task("s1", &format!("t{n:03}"), pending()))?;
            }
            // `s1-x` sorts between `s1`'s tasks' keys and later sessions' keys.
            scope.put_task(&task("s1-x", "t000", pending()))?;
            scope.put_task(&task("s10", "t000", pending()))?;
            Ok::<_, Error>(())
        })
        .expect("write");

    let mut expected: Vec<String> = (0..SESSIONS).map(|n| format!("s{n}")).collect();
    expected.sort();
    let mut walked = Vec::new();
    let mut after: Option<SessionId> = None;
    // A walk that does not advance must fail, not spin.
    for _ in 0..=SESSIONS / PIECE + 1 {
        let piece = store
            .snapshot()
            .expect("snapshot")
            .sessions_from(after.as_ref(), PIECE)
            .expect("piece");
        assert!(piece.len() <= PIECE);
        let Some(last) = piece.last() else {
            break;
        };
        after = Some(last.id.clone());
        walked.extend(piece.into_iter().map(|s| s.id.to_string()));
    }
    assert_eq!(
        walked, expected,
        "every session once, in order, and the walk ended"
    );
    let snapshot = store.snapshot().expect("snapshot");
    let from_s10: Vec<String> = snapshot
        .sessions_from(Some(&session_id("s10")), 2)
        .expect("piece")
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(from_s10, ["s100", "s1000"], "strictly after");
    assert!(snapshot.sessions_from(None, 0).expect("empty").is_empty());

    let s1 = session_id("s1");
    let mut tasks = Vec::new();
    let mut after: Option<TaskId> = None;
    for _ in 0..=300 / 41 + 1 {
        let piece = store
            .write({
                let (s1, after) = (s1.clone(), after.clone());
                move |scope| scope.tasks_from(&s1, after.as_ref(), 41)
            })
            .expect("piece");
        let Some(last) = piece.last() else {
            break;
        };
        assert!(piece.iter().all(|t| t.session == s1), "{piece:?}");
        after = Some(last.id.clone());
        tasks.extend(piece.into_iter().map(|t| t.id.to_string()));
    }
    let expected: Vec<String> = (0..300).map(|n| format!("t{n:03}")).collect();
    assert_eq!(tasks, expected);
    let tail = snapshot
        .tasks_from(&s1, Some(&task_id("t298")), 10)
        .expect("tail");
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].id.as_str(), "t299");
}

/// Plants raw bytes in a closed store's table with heed, bypassing every check.
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

fn event_key(session: &str, seq: u64) -> Vec<u8> {
    let mut key = session.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A store with valid records in every table passes the record walk; each kind of bad
/// value planted in the new tables (a dead letter that does not decode, one valid but
/// under another event's key, an expiry entry without its version marker, one whose
/// key holds no valid task identifier) fails the walk at open and in `check_dir` with
/// `Corrupt` naming the table and key, and with the walk off it is a typed error at the
/// first read.
#[test]
fn the_record_walk_covers_dead_letters_and_task_expiry() {
    let build = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|scope| {
                scope.put_session(&session("s"))?;
                scope.put_dead_letter(&dead_letter("s", 1))?;
                scope.put_task_expiry(50, &session_id("s"), &task_id("t"))
            })
            .expect("write");
        drop(store);
        let report = check_dir(dir.path()).expect("a sound store passes");
        assert_eq!((report.dead_letters, report.task_expiries), (1, 1));
        let store = open(dir.path());
        let at_open = store.check_report().expect("the walk ran");
        assert_eq!((at_open.dead_letters, at_open.task_expiries), (1, 1));
        drop(store);
        dir
    };
    let valid_elsewhere = {
        let mut bytes = vec![0xB6, 1];
        bytes.extend(bincode::serialize(&dead_letter("s", 9)).expect("encode"));
        bytes
    };
    let mut expiry_bad_task = 50_u64.to_be_bytes().to_vec();
    expiry_bad_task.extend_from_slice(b"s\0bad task!");
    let plants: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "dead_letters",
            event_key("s", 2),
            vec![0xB6, 1, 0xff],
            "s/2",
        ),
        ("dead_letters", event_key("s", 3), valid_elsewhere, "s/3"),
        (
            "task_expiry",
            [&50_u64.to_be_bytes()[..], b"s\0t2"].concat(),
            vec![],
            "50/s/t2",
        ),
        (
            "task_expiry",
            expiry_bad_task,
            vec![0xB6, 1],
            "50/s/bad task!",
        ),
    ];
    for (table, key, value, printable) in plants {
        let dir = build();
        raw_put(dir.path(), table, &key, &value);
        let corrupt = |result: &Result<(), Error>| {
            matches!(result, Err(error @ Error::Corrupt { table: t, key: k, .. })
                if *t == table && k == printable && error.kind() == ErrorKind::Corrupt)
        };
        let opened = Store::open(dir.path(), StoreOptions::default()).map(drop);
        assert!(
            corrupt(&opened),
            "{table} {printable}: open gave {opened:?}"
        );
        let checked = check_dir(dir.path()).map(drop);
        assert!(
            corrupt(&checked),
            "{table} {printable}: check_dir gave {checked:?}"
        );

        let unchecked = StoreOptions {
            check_at_open: CheckAtOpen::Never,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), unchecked).expect("opens without the walk");
        let snapshot = store.snapshot().expect("snapshot");
        let read = if table == "dead_letters" {
            snapshot.dead_letters(&session_id("s"), 0, 10).map(drop)
        } else {
            snapshot.expired_tasks(u64::MAX, 10).map(drop)
        };
        assert!(corrupt(&read), "{table} {printable}: read gave {read:?}");
    }
}

/// A store created before the dead-letter and task expiry tables existed (simulated by
/// dropping them with heed) passes `check_dir`, and `Store::open` creates them again.
#[test]
fn a_store_without_the_later_tables_opens_and_gets_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .write(|scope| scope.put_session(&session("s")))
        .expect("write");
    drop(store);
    {
        // SAFETY: the store is closed and nothing else opens the directory meanwhile.
        let env = unsafe { EnvOpenOptions::new().max_dbs(16).open(dir.path()) }.expect("raw");
        let rtxn = env.read_txn().expect("txn");
        let opened = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                let open = |name| {
                    opener
                        .open_database::<Bytes, Bytes>(rtxn, Some(name))
                        .map(|table| table.expect("the table exists"))
                };
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit((
                    open("dead_letters")?,
                    open("task_expiry")?,
                )))
            })
            .expect("open the later tables");
        let CommitOrAbort::Commit((dead_letters, task_expiry)) = opened else {
            panic!("opening aborted");
        };
        let mut wtxn = env.write_txn().expect("txn");
        // SAFETY: neither handle is used after its table is removed.
        unsafe {
            dead_letters.remove(&mut wtxn).expect("remove dead_letters");
            task_expiry.remove(&mut wtxn).expect("remove task_expiry");
        }
        wtxn.commit().expect("commit");
    }
    let report = check_dir(dir.path()).expect("passes without the later tables");
    assert_eq!((report.sessions, report.dead_letters), (1, 0));
    assert!(!report.tables.iter().any(|t| t.name == "dead_letters"));
    let store = open(dir.path());
    store
        .write(|scope| scope.put_dead_letter(&dead_letter("s", 0)))
        .expect("the table is back");
}

/// A removed session's numbering roundtrips through `put_removed_session`, survives a
/// reopen, and goes with `delete_removed_session`; the record walk refuses one left
/// beside a session of the same identifier.
#[test]
fn removed_session_numbering_roundtrips_and_is_walked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let removed = session_store::RemovedSession {
        generation: 4,
        next_event_seq: 17,
    };
    let (gone, live) = (session_id("gone"), session_id("live"));
    store
        .write({
            let gone = gone.clone();
            move |scope| {
                assert_eq!(scope.removed_session(&gone)?, None);
                scope.put_removed_session(&gone, &removed)?;
                Ok::<_, Error>(())
            }
        })
        .expect("write");
    drop(store);
    check_dir(dir.path()).expect("a removed session alone passes the walk");

    let store = open(dir.path());
    let found = store
        .write({
            let (gone, live) = (gone.clone(), live.clone());
            move |scope| {
                let found = scope.removed_session(&gone)?;
                // Planted: a numbering beside a live session of the same identifier.
                scope.put_session(&session("live"))?;
                scope.put_removed_session(&live, &removed)?;
                Ok::<_, Error>(found)
            }
        })
        .expect("write");
    assert_eq!(found, Some(removed));
    drop(store);
    match check_dir(dir.path()) {
        Err(Error::Corrupt { table, key, .. }) => {
            assert_eq!((table, key.as_str()), ("removed_sessions", "live"));
        }
        other => panic!("the walk missed a numbering beside its session: {other:?}"),
    }

    let options = StoreOptions {
        check_at_open: CheckAtOpen::Never,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options).expect("open without the walk");
    let deleted = store
        .write(move |scope| {
            let first = scope.delete_removed_session(&live)?;
            let again = scope.delete_removed_session(&live)?;
            Ok::<_, Error>((first, again))
        })
        .expect("delete");
    assert_eq!(deleted, (true, false));
    drop(store);
    check_dir(dir.path()).expect("repaired");
}

session_harness::on_every_backend!(
    deletes_remove_what_they_name,
    dead_letters_roundtrip_range_and_delete,
    expired_tasks_are_oldest_first_bounded_and_limited,
    sessions_and_tasks_are_listed_in_bounded_pieces,
);
