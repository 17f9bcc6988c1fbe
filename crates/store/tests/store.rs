//! The store over a real LMDB in a temporary directory and over a real PostgreSQL
//! (a throwaway cluster of the test binary, a schema per test): records, ordering,
//! application tables, the group-commit writer, and bad input. The tests that hold on
//! every backend run on both (`on_every_backend!`); the rest are LMDB's own (its
//! directory, file and map).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use common::*;
use session_harness::stores::Place;
use session_store::{
    CheckAtOpen, Error, ErrorKind, EventBody, SCHEMA_VERSION, SessionState, Store, StoreOptions,
    TaskState,
};

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default().with_app_table("ledger")).expect("open the store")
}

/// Opens without the record walk at open, so that reads meet planted damage.
fn open_unchecked(dir: &Path) -> Store {
    let options = StoreOptions {
        check_at_open: CheckAtOpen::Never,
        ..StoreOptions::default().with_app_table("ledger")
    };
    Store::open(dir, options).expect("open the store without the full check")
}

/// An application error type, to show units may return their own errors.
#[derive(Debug)]
#[allow(dead_code)] // `Other`'s text is read only through `Debug` in failure messages.
enum AppError {
    Store(Error),
    Refused(&'static str),
    Other(String),
}

impl From<Error> for AppError {
    fn from(error: Error) -> Self {
        AppError::Store(error)
    }
}

/// A unit that holds the writer until released: units submitted meanwhile queue behind
/// it and run together, in the next batch.
struct WriterHold {
    release: mpsc::Sender<()>,
    holder: thread::JoinHandle<Result<(), Error>>,
}

impl WriterHold {
    /// Starts the holding unit and waits until it runs on the writer.
    fn start(store: &Store) -> WriterHold {
        let (started, holder_started) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let store = store.clone();
        let holder = thread::spawn(move || {
            store.write(move |_| {
                let _ = started.send(());
                released.lock().expect("lock").recv().expect("released");
                Ok::<_, Error>(())
            })
        });
        holder_started.recv().expect("the holder's unit started");
        WriterHold { release, holder }
    }

    /// Waits until `units` are queued behind the holder, then lets the writer go on.
    fn release_after(self, store: &Store, units: usize) {
        while store.queued_units() < units {
            thread::yield_now();
        }
        self.release.send(()).expect("release the holder");
        self.holder
            .join()
            .expect("holder thread")
            .expect("holder unit");
    }
}

/// Every record type survives a write and a read, both from a snapshot and from a later
/// unit, and survives closing and reopening the store.
fn every_record_roundtrips(place: &Place) {
    let store = place.open();
    let session = session("s1");
    let tasks: Vec<_> = every_task_state()
        .into_iter()
        .enumerate()
        .map(|(n, state)| task("s1", &format!("t{n}"), state))
        .collect();
    let events: Vec<_> = every_event_body()
        .into_iter()
        .enumerate()
        .map(|(seq, body)| event("s1", seq as u64, body))
        .collect();
    {
        let (session, tasks, events) = (session.clone(), tasks.clone(), events.clone());
        store
            .write(move |scope| {
                scope.put_session(&session)?;
                for task in &tasks {
                    scope.put_task(task)?;
                }
                for event in &events {
                    scope.put_event(event)?;
                }
                Ok::<_, Error>(())
            })
            .expect("write the records");
    }
    let check = |store: &Store| {
        let snapshot = store.snapshot().expect("snapshot");
        let id = session_id("s1");
        assert_eq!(snapshot.session(&id).expect("read"), Some(session.clone()));
        assert_eq!(snapshot.sessions().expect("read"), vec![session.clone()]);
        assert_eq!(snapshot.tasks(&id).expect("read"), tasks);
        for task in &tasks {
            assert_eq!(
                snapshot.task(&id, &task.id).expect("read").as_ref(),
                Some(task)
            );
        }
        assert_eq!(snapshot.events(&id, 0, 100).expect("read"), events);
        for event in &events {
            assert_eq!(
                snapshot.event(&id, event.seq).expect("read").as_ref(),
                Some(event)
            );
        }
        let (expected_session, expected_tasks) = (session.clone(), tasks.clone());
        store
            .write(move |scope| {
                assert_eq!(scope.session(&id)?, Some(expected_session.clone()));
                assert_eq!(scope.tasks(&id)?, expected_tasks);
                assert_eq!(
                    scope.event(&id, 1)?.map(|e| e.body),
                    Some(EventBody::DidFinishEvents)
                );
                Ok::<_, Error>(())
            })
            .expect("read in a unit");
    };
    check(&store);
    drop(store);
    check(&place.open());
}

/// Events iterate in numeric sequence order (big-endian keys), from any starting point
/// and with a limit, without mixing in a session whose id extends this one's; an existing
/// sequence number is never overwritten, and deleted events disappear.
fn events_iterate_in_sequence_order(place: &Place) {
    let store = place.open();
    // 0..600 in a scrambled order, crossing the 255/256 byte boundary.
    let mut seqs: Vec<u64> = (0..600).map(|n| (n * 7919) % 600).collect();
    seqs.dedup();
    store
        .write(move |scope| {
            for &seq in &seqs {
                scope.put_event(&event("a", seq, EventBody::DidFinishEvents))?;
            }
            scope.put_event(&event("a-b", 0, EventBody::DidFinishEvents))?;
            scope.put_event(&event("0", 9, EventBody::DidFinishEvents))?;
            Ok::<_, Error>(())
        })
        .expect("write events");
    let a = session_id("a");
    let snapshot = store.snapshot().expect("snapshot");
    let all: Vec<u64> = snapshot
        .events(&a, 0, usize::MAX)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all, (0..600).collect::<Vec<_>>());
    let page: Vec<u64> = snapshot
        .events(&a, 250, 10)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, (250..260).collect::<Vec<_>>());
    assert!(snapshot.events(&a, 600, 10).expect("read").is_empty());
    drop(snapshot);

    let duplicate =
        store.write(|scope| scope.put_event(&event("a", 7, EventBody::DidFinishEvents)));
    assert!(
        matches!(&duplicate, Err(Error::EventExists { session, seq: 7 }) if session.as_str() == "a"),
        "{duplicate:?}"
    );
    let deleted = store
        .write(|scope| {
            Ok::<_, Error>((
                scope.delete_event(&session_id("a"), 3)?,
                scope.delete_event(&session_id("a"), 3)?,
            ))
        })
        .expect("delete");
    assert_eq!(deleted, (true, false));
    let snapshot = store.snapshot().expect("snapshot");
    let first: Vec<u64> = snapshot
        .events(&a, 0, 5)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(first, vec![0, 1, 2, 4, 5]);
}

/// A session's tasks are found by prefix without tasks of another session whose id
/// extends it, and `for_each_task` visits every task of every session.
fn tasks_are_listed_per_session_and_in_full(place: &Place) {
    let store = place.open();
    store
        .write(|scope| {
            for (session, id) in [("s", "t2"), ("s", "t1"), ("s-2", "t1"), ("r", "z")] {
                scope.put_task(&task(session, id, TaskState::Running { attempt: 1 }))?;
            }
            Ok::<_, Error>(())
        })
        .expect("write tasks");
    let snapshot = store.snapshot().expect("snapshot");
    let ids: Vec<String> = snapshot
        .tasks(&session_id("s"))
        .expect("read")
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(ids, ["t1", "t2"]);
    let mut all = Vec::new();
    snapshot
        .for_each_task(|task| {
            all.push(format!("{}/{}", task.session, task.id));
            Ok(())
        })
        .expect("visit tasks");
    assert_eq!(all, ["r/z", "s/t1", "s/t2", "s-2/t1"]);
}

/// Letting go of the mapped pages keeps every read right, with a snapshot open across
/// it and writes (and a map growth) after it, and in a new store too.
#[test]
fn releasing_mapped_pages_keeps_reads_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            map_size_bytes_initial: 1 << 20,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let write = |first: usize| {
        store
            .write(move |scope| {
                for n in first..first + 2000 {
                    scope.put_task(&task(
                        "s",
                        &format!("t{n:05}"),
                        TaskState::Running { attempt: 1 },
                    ))?;
                }
                Ok::<_, Error>(())
            })
            .expect("write tasks")
    };
    let map_before = store.map_size_bytes();
    write(0);
    let held = store.snapshot().expect("snapshot");
    let before = held.tasks(&session_id("s")).expect("read");
    let released = store.release_mapped_pages().expect("release");
    #[cfg(target_os = "linux")]
    assert!(
        released >= 1 << 20,
        "the map was released: {released} bytes"
    );
    let _ = released;
    assert_eq!(held.tasks(&session_id("s")).expect("read again"), before);
    drop(held);
    // Until the map grows: the release left the writer's resize alone.
    let mut written = 2000;
    while store.map_size_bytes() == map_before {
        assert!(written < 200_000, "the map never grew");
        write(written);
        written += 2000;
    }
    store.release_mapped_pages().expect("release after growth");
    let all = store
        .snapshot()
        .expect("snapshot")
        .tasks(&session_id("s"))
        .expect("read");
    assert_eq!(all.len(), written);
    assert_eq!(&all[..2000], &before[..]);

    let empty = tempfile::tempdir().expect("tempdir");
    let store = Store::open(empty.path(), StoreOptions::default()).expect("open");
    store
        .release_mapped_pages()
        .expect("release of an empty store");
}

/// A record that fails validation is refused before it is written, with the table and
/// key, and nothing of the unit is written.
fn invalid_records_are_refused(place: &Place) {
    let store = place.open();
    let mut bad = session("s1");
    bad.delivered_seq = bad.next_event_seq + 1;
    let result = store.write(move |scope| {
        scope.put_task(&task("s1", "t1", TaskState::Running { attempt: 1 }))?;
        scope.put_session(&bad)
    });
    assert!(
        matches!(&result, Err(Error::InvalidRecord { table: "sessions", key, .. }) if key == "s1"),
        "{result:?}"
    );
    let mut bad_task = task("s1", "t1", TaskState::Running { attempt: 1 });
    bad_task.state = TaskState::Running { attempt: 0 };
    let result = store.write(move |scope| scope.put_task(&bad_task));
    assert!(
        matches!(&result, Err(Error::InvalidRecord { table: "tasks", key, .. }) if key == "s1/t1"),
        "{result:?}"
    );
    assert!(
        store
            .snapshot()
            .expect("snapshot")
            .task(&session_id("s1"), &task_id("t1"))
            .expect("read")
            .is_none()
    );
}

/// Application tables: typed put, get (from the unit itself and from a snapshot),
/// delete, ordered iteration and prefix iteration; an unknown name, a bad name and a bad
/// key are typed errors.
fn app_tables_work_and_refuse_bad_names_and_keys(place: &Place) {
    let store = place.open();
    let ledger = store
        .app_table::<(u64, String)>("ledger")
        .expect("ledger table");
    {
        let ledger = ledger.clone();
        store
            .write(move |scope| {
                for (key, n) in [("b/2", 2), ("a/1", 1), ("b/1", 3), ("c", 4)] {
                    ledger.put(scope, key, &(n, format!("value {n}")))?;
                }
                assert_eq!(ledger.get(scope, "a/1")?, Some((1, "value 1".to_string())));
                assert!(ledger.delete(scope, "c")?);
                assert!(!ledger.delete(scope, "c")?);
                Ok::<_, Error>(())
            })
            .expect("write the ledger");
    }
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(
        ledger.get(&snapshot, b"b/2").expect("read"),
        Some((2, "value 2".into()))
    );
    assert_eq!(ledger.get(&snapshot, "c").expect("read"), None);
    let keys: Vec<Vec<u8>> = ledger
        .entries(&snapshot)
        .expect("entries")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, [b"a/1".to_vec(), b"b/1".to_vec(), b"b/2".to_vec()]);
    let mut in_b = Vec::new();
    ledger
        .for_each_with_prefix(&snapshot, "b/", |key, (n, _)| {
            in_b.push((String::from_utf8_lossy(key).into_owned(), n));
            Ok(())
        })
        .expect("prefix");
    assert_eq!(in_b, [("b/1".to_string(), 3), ("b/2".to_string(), 2)]);

    assert!(
        matches!(store.app_table::<u8>("missing"), Err(Error::UnknownTable { name }) if name == "missing")
    );
    assert!(matches!(
        store.app_table::<u8>("no/slash"),
        Err(Error::InvalidTableName { .. })
    ));
    assert!(matches!(
        ledger.get(&snapshot, ""),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        ledger.get(&snapshot, vec![b'k'; 512]),
        Err(Error::InvalidKey { .. })
    ));
    let bad_name = Store::open(
        place.dir().join("other"),
        StoreOptions::default().with_app_table("a b"),
    );
    assert!(
        matches!(bad_name, Err(Error::InvalidTableName { .. })),
        "{bad_name:?}"
    );
}

/// In one batch, a unit that returns an error and a unit that panics are rolled back
/// alone while the others commit: a first unit holds the writer until the four others
/// are queued behind it, so they run together in the next batch.
fn failing_and_panicking_units_are_aborted_alone(place: &Place) {
    let store = place.open();
    let ledger = store.app_table::<u32>("ledger").expect("ledger");
    // The holder's unit is running on the writer: the next four queue up behind it.
    let hold = WriterHold::start(&store);
    let submit = |name: &'static str, behaviour: u8| {
        let (store, ledger) = (store.clone(), ledger.clone());
        thread::spawn(move || {
            store.write(move |scope| {
                ledger.put(scope, name, &1)?;
                match behaviour {
                    0 => Ok(name),
                    1 => Err(AppError::Refused(name)),
                    _ => panic!("unit {name} panics on purpose"),
                }
            })
        })
    };
    let units = [
        submit("ok-1", 0),
        submit("err", 1),
        submit("panic", 2),
        submit("ok-2", 0),
    ];
    hold.release_after(&store, 4);
    let results: Vec<_> = units
        .into_iter()
        .map(|unit| unit.join().expect("submitter"))
        .collect();
    assert!(matches!(results[0], Ok("ok-1")));
    assert!(matches!(results[1], Err(AppError::Refused("err"))));
    assert!(
        matches!(&results[2], Err(AppError::Store(Error::UnitPanicked { message })) if message.contains("panics on purpose")),
        "{:?}",
        results[2]
    );
    assert!(matches!(results[3], Ok("ok-2")));
    let snapshot = store.snapshot().expect("snapshot");
    let keys: BTreeSet<String> = ledger
        .entries(&snapshot)
        .expect("entries")
        .into_iter()
        .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["ok-1".to_string(), "ok-2".to_string()])
    );
}

/// Many threads submitting at once all get `Ok` only for durable writes: after the
/// store is closed and reopened, every acknowledged unit's write is there.
fn concurrent_thread_submitters_all_commit(place: &Place) {
    let store = place.open();
    let ledger = store.app_table::<u64>("ledger").expect("ledger");
    let threads: Vec<_> = (0..16)
        .map(|thread_index| {
            let (store, ledger) = (store.clone(), ledger.clone());
            thread::spawn(move || {
                for n in 0..200_u64 {
                    let ledger = ledger.clone();
                    store
                        .write(move |scope| {
                            ledger.put(scope, format!("{thread_index:02}/{n:04}"), &n)
                        })
                        .expect("write");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("submitter");
    }
    drop(store);
    let store = place.open();
    let ledger = store.app_table::<u64>("ledger").expect("ledger");
    let entries = ledger
        .entries(&store.snapshot().expect("snapshot"))
        .expect("entries");
    assert_eq!(entries.len(), 16 * 200);
}

/// Many async tasks on a multi-threaded tokio runtime submit at once; every future
/// resolves `Ok` and every write is present afterwards.
fn concurrent_async_submitters_all_commit(place: &Place) {
    let store = place.open();
    let ledger = store.app_table::<u64>("ledger").expect("ledger");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tasks: Vec<_> = (0..500_u64)
            .map(|task_index| {
                let (store, ledger) = (store.clone(), ledger.clone());
                tokio::spawn(async move {
                    for n in 0..10_u64 {
                        let ledger = ledger.clone();
                        store
                            .write_async(move |scope| {
                                ledger.put(scope, format!("{task_index:03}/{n}"), &n)
                            })
                            .await
                            .expect("write");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    });
    let entries = ledger
        .entries(&store.snapshot().expect("snapshot"))
        .expect("entries");
    assert_eq!(entries.len(), 5000);
}

/// `write_async` needs no async runtime: a future driven by a std-only `block_on` resolves.
fn write_async_needs_no_runtime(place: &Place) {
    let store = place.open();
    let value = block_on(store.write_async(|scope| {
        scope.put_session(&session("s1"))?;
        Ok::<_, Error>(42)
    }))
    .expect("write");
    assert_eq!(value, 42);
    assert!(
        store
            .snapshot()
            .expect("snapshot")
            .session(&session_id("s1"))
            .expect("read")
            .is_some()
    );
}

/// A unit that calls `Store::write` gets `ReentrantWrite` instead of waiting on itself.
fn write_from_inside_a_unit_is_an_error(place: &Place) {
    let store = place.open();
    let inner = store.clone();
    let result = store.write(move |_| inner.write(|_| Ok::<_, Error>(())));
    assert!(matches!(result, Err(Error::ReentrantWrite)), "{result:?}");
}

/// A path that is a regular file is refused with `NotADirectory` naming it.
#[test]
fn a_file_path_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a store").expect("write file");
    let result = Store::open(&file, StoreOptions::default());
    assert!(
        matches!(&result, Err(Error::NotADirectory { path }) if *path == file),
        "{result:?}"
    );
}

/// A directory the process cannot write to is refused with `Io` naming the file it
/// could not create. As a normal user the test removes write permission from a temp
/// directory; as root (permission bits do not stop root) it uses sysfs' `/sys/kernel`,
/// which refuses new files even to root, and skips with a message if that is missing.
#[test]
fn an_unwritable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().expect("tempdir");
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let dir = if is_root {
        let sysfs = Path::new("/sys/kernel");
        if !sysfs.is_dir() {
            eprintln!("skipped: running as root and /sys/kernel is not available");
            return;
        }
        sysfs.to_path_buf()
    } else {
        let dir = scratch.path().join("read-only");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        dir
    };
    let result = Store::open(&dir, StoreOptions::default());
    assert!(
        matches!(&result, Err(Error::Io { path, .. }) if path.starts_with(&dir)),
        "{result:?}"
    );
}

/// A second owner in the same process gets `Locked` naming the directory (the lock is
/// taken before LMDB, which would otherwise say "already opened"); once the first owner
/// is dropped the directory opens again.
#[test]
fn a_second_owner_in_this_process_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    let second = Store::open(dir.path(), StoreOptions::default());
    assert!(
        matches!(&second, Err(Error::Locked { dir: locked }) if locked == dir.path()),
        "{second:?}"
    );
    let snapshot = first.snapshot().expect("snapshot");
    drop(first);
    // The snapshot still holds the environment, so the directory stays owned.
    assert!(matches!(
        Store::open(dir.path(), StoreOptions::default()),
        Err(Error::Locked { .. })
    ));
    drop(snapshot);
    open(dir.path());
}

/// A second owner gets `Locked` (naming the store) while the first is open, on every
/// backend; once the first is closed, the store opens again at once.
fn a_second_owner_is_refused_while_the_first_is_open(place: &Place) {
    let first = place.open();
    let second = place.open_with(&["ledger"]);
    assert!(
        matches!(&second, Err(Error::Locked { dir }) if dir == first.dir()),
        "{second:?}"
    );
    assert!(matches!(&second, Err(error) if error.kind() == ErrorKind::Locked));
    first.close().expect("close");
    let again = place.open();
    again.close().expect("close again");
}

/// A unit reads its own writes merged in key order with what earlier batches committed,
/// and a later unit of the same batch reads an earlier one's: point writes, deletes and
/// range deletes, through ranges with limits (on PostgreSQL the unit's writes are held
/// by the writer until the batch's end, so this is where its merge of the two shows).
fn a_unit_reads_its_own_writes_in_order(place: &Place) {
    let store = place.open();
    let seqs = |events: Vec<session_store::EventRecord>| -> Vec<u64> {
        events.iter().map(|event| event.seq).collect()
    };
    store
        .write(|scope| {
            for seq in [0, 2, 4, 6] {
                scope.put_event(&event("s", seq, EventBody::DidFinishEvents))?;
            }
            scope.put_event(&event("r", 9, EventBody::DidFinishEvents))?;
            Ok::<_, Error>(())
        })
        .expect("committed events");
    let ledger = store.app_table::<u32>("ledger").expect("ledger");
    // Both units below queue behind the holder and run in one batch.
    let hold = WriterHold::start(&store);
    let first = {
        let store = store.clone();
        let ledger = ledger.clone();
        thread::spawn(move || {
            store.write(move |scope| {
                scope.put_event(&event("s", 1, EventBody::DidFinishEvents))?;
                scope.put_event(&event("s", 5, EventBody::DidFinishEvents))?;
                assert!(scope.delete_event(&session_id("s"), 2)?);
                assert!(!scope.delete_event(&session_id("s"), 3)?);
                assert_eq!(
                    seqs(scope.events(&session_id("s"), 0, 100)?),
                    [0, 1, 4, 5, 6]
                );
                assert_eq!(seqs(scope.events(&session_id("s"), 1, 2)?), [1, 4]);
                assert_eq!(seqs(scope.events(&session_id("s"), 5, 100)?), [5, 6]);
                assert!(matches!(
                    scope.put_event(&event("s", 4, EventBody::DidFinishEvents)),
                    Err(Error::EventExists { seq: 4, .. })
                ));
                for (key, value) in [("b2", 2), ("a1", 1), ("b1", 1)] {
                    ledger.put(scope, key, &value)?;
                }
                Ok::<_, Error>(())
            })
        })
    };
    while store.queued_units() < 1 {
        thread::sleep(std::time::Duration::from_millis(1));
    }
    let second = {
        let store = store.clone();
        let ledger = ledger.clone();
        thread::spawn(move || {
            store.write(move |scope| {
                assert_eq!(
                    seqs(scope.events(&session_id("s"), 0, 100)?),
                    [0, 1, 4, 5, 6]
                );
                assert_eq!(scope.delete_events(&session_id("s"))?, 5);
                assert!(scope.events(&session_id("s"), 0, 100)?.is_empty());
                scope.put_event(&event("s", 7, EventBody::DidFinishEvents))?;
                assert_eq!(seqs(scope.events(&session_id("s"), 0, 100)?), [7]);
                assert_eq!(seqs(scope.events(&session_id("r"), 0, 100)?), [9]);
                let mut keys = Vec::new();
                ledger.for_each_with_prefix(scope, "b", |key, value| {
                    keys.push((String::from_utf8_lossy(key).into_owned(), value));
                    Ok(())
                })?;
                assert_eq!(keys, [("b1".to_string(), 1), ("b2".to_string(), 2)]);
                Ok::<_, Error>(())
            })
        })
    };
    hold.release_after(&store, 2);
    first.join().expect("first").expect("first unit");
    second.join().expect("second").expect("second unit");
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(
        seqs(snapshot.events(&session_id("s"), 0, 100).expect("events")),
        [7]
    );
    assert_eq!(
        seqs(snapshot.events(&session_id("r"), 0, 100).expect("events")),
        [9]
    );
    assert_eq!(ledger.entries(&snapshot).expect("entries").len(), 3);
}

session_harness::on_every_backend!(
    a_unit_reads_its_own_writes_in_order,
    every_record_roundtrips,
    events_iterate_in_sequence_order,
    tasks_are_listed_per_session_and_in_full,
    invalid_records_are_refused,
    app_tables_work_and_refuse_bad_names_and_keys,
    failing_and_panicking_units_are_aborted_alone,
    concurrent_thread_submitters_all_commit,
    concurrent_async_submitters_all_commit,
    write_async_needs_no_runtime,
    write_from_inside_a_unit_is_an_error,
    a_second_owner_is_refused_while_the_first_is_open,
);

/// Runs `sql` on a connection of the test's own to the cluster at `url` (not the store's);
/// returns how many rows it returned.
fn admin_query(url: &str, sql: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, connection) =
            session_store::tokio_postgres::connect(url, session_store::tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client
            .query(sql, &[])
            .await
            .expect("the test's statement")
            .len()
    })
}

/// PostgreSQL: the writer's connection, cut by the server (`pg_terminate_backend`), is
/// made again (with the ownership lock taken again) and writes go on, the committed
/// records intact; and an owner that lost its connection while a new owner took the lock
/// is fenced: its writes are `Locked`, the new owner's commit.
#[test]
fn postgres_writer_reconnects_and_a_new_owner_fences_the_old() {
    let Some(place) = Place::postgres("postgres_writer_reconnects_and_a_new_owner_fences_the_old")
    else {
        return;
    };
    let (url, schema) = place.postgres_target();
    let terminate = |role: char| -> usize {
        admin_query(
            url,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'bgsession-{role}:{schema}'"
            ),
        )
    };
    let terminate_writer = || assert_eq!(terminate('w'), 1, "one writer connection");
    let store = place.open();
    let ledger = store.app_table::<u32>("ledger").expect("ledger");
    let put = |store: &Store, key: &'static str| {
        let ledger = ledger.clone();
        store.write(move |scope| ledger.put(scope, key, &1))
    };
    put(&store, "before").expect("a first write");
    terminate_writer();
    // The batch that finds the connection gone fails; the writer connects again.
    let mut tries = Vec::new();
    while tries.len() < 5 {
        let result = put(&store, "after");
        let done = result.is_ok();
        tries.push(result);
        if done {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(tries.last().is_some_and(Result::is_ok), "{tries:?}");
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(ledger.get(&snapshot, "before").expect("read"), Some(1));
    assert_eq!(ledger.get(&snapshot, "after").expect("read"), Some(1));
    drop(snapshot);
    // The idle reader connection, cut too, is replaced by the next snapshot.
    assert!(terminate('r') >= 1, "an idle reader connection");
    thread::sleep(std::time::Duration::from_millis(100));
    let snapshot = store
        .snapshot()
        .expect("a snapshot after its connection was cut");
    assert_eq!(ledger.get(&snapshot, "before").expect("read"), Some(1));
    drop(snapshot);

    // Cut again, and let a second owner take the lock before the first writes.
    terminate_writer();
    thread::sleep(std::time::Duration::from_millis(200));
    let second = place.open();
    let mut fenced = Vec::new();
    for _ in 0..3 {
        fenced.push(put(&store, "fenced"));
    }
    assert!(
        fenced.iter().all(Result::is_err),
        "the old owner must not commit: {fenced:?}"
    );
    assert!(
        fenced
            .iter()
            .any(|result| matches!(result, Err(Error::Locked { .. }))),
        "{fenced:?}"
    );
    put(&second, "second").expect("the new owner writes");
    let snapshot = second.snapshot().expect("snapshot");
    assert_eq!(ledger.get(&snapshot, "fenced").expect("read"), None);
    assert_eq!(ledger.get(&snapshot, "second").expect("read"), Some(1));
}

/// A unit's own SQL runs in the batch's transaction: its rows commit with its records; a
/// unit whose statement failed is rolled back alone (records and rows) and gets the
/// error even if it swallowed it, while the batch's other units commit. On LMDB there is
/// no SQL transaction: `Unsupported`.
#[test]
fn postgres_unit_sql_commits_with_its_records_or_not_at_all() {
    let lmdb = Place::lmdb().open();
    let refused = lmdb.write(|scope| scope.postgres().map(|_| ()));
    assert!(
        matches!(
            refused,
            Err(Error::Unsupported {
                backend: "LMDB",
                ..
            })
        ),
        "{refused:?}"
    );
    let Some(place) = Place::postgres("postgres_unit_sql_commits_with_its_records_or_not_at_all")
    else {
        return;
    };
    let store = place.open();
    let ledger = store.app_table::<u32>("ledger").expect("ledger");
    store
        .write(|scope| {
            scope.postgres()?.batch_execute(
                "CREATE SCHEMA IF NOT EXISTS unit_sql; \
                 CREATE TABLE unit_sql.rows (name text PRIMARY KEY)",
            )
        })
        .expect("the application's table");
    let hold = WriterHold::start(&store);
    let unit = |name: &'static str, swallow_a_failure: bool| {
        let store = store.clone();
        let ledger = ledger.clone();
        thread::spawn(move || {
            store.write(move |scope| {
                ledger.put(scope, name, &1)?;
                let mut sql = scope.postgres()?;
                sql.execute("INSERT INTO unit_sql.rows (name) VALUES ($1)", &[&name])?;
                if swallow_a_failure {
                    let _ = sql.execute("INSERT INTO unit_sql.rows (name) VALUES ($1)", &[&name]);
                }
                Ok::<_, Error>(())
            })
        })
    };
    let units = [unit("a", false), unit("b", true), unit("c", false)];
    hold.release_after(&store, 3);
    let results: Vec<_> = units
        .into_iter()
        .map(|unit| unit.join().expect("unit"))
        .collect();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(Error::Backend { source, .. }) if source.sql_state() == Some("23505")),
        "the unit whose statement failed gets that error: {results:?}"
    );
    let snapshot = store.snapshot().expect("snapshot");
    let rows: Vec<String> = snapshot
        .query("SELECT name FROM unit_sql.rows ORDER BY name", &[])
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(rows, ["a", "c"]);
    assert_eq!(ledger.get(&snapshot, "a").expect("read"), Some(1));
    assert_eq!(ledger.get(&snapshot, "b").expect("read"), None);
    assert_eq!(ledger.get(&snapshot, "c").expect("read"), Some(1));
    drop(snapshot);
    // The writer owns the transaction: a unit's COMMIT would commit other units' writes.
    let refused = store.write(|scope| scope.postgres()?.batch_execute("COMMIT"));
    assert!(
        matches!(refused, Err(Error::InvalidRecord { table: "sql", .. })),
        "{refused:?}"
    );
}

/// PostgreSQL's bad days are typed errors: a schema name that is not a plain identifier
/// and a URL that does not parse (`InvalidOptions`), a server that is not there
/// (`Backend`, kind `Io`), a schema written by a newer build (`SchemaTooNew`), and a
/// damaged record (`Corrupt`, naming its table).
#[test]
fn postgres_bad_options_servers_and_records_are_typed_errors() {
    let bad_schema = Store::open_postgres(session_store::PostgresOptions::new(
        "postgres://127.0.0.1/x",
        "Bad-Name",
    ));
    assert!(
        matches!(bad_schema, Err(Error::InvalidOptions { .. })),
        "{bad_schema:?}"
    );
    let bad_url = Store::open_postgres(session_store::PostgresOptions::new("postgres://[", "ok"));
    assert!(
        matches!(bad_url, Err(Error::InvalidOptions { .. })),
        "{bad_url:?}"
    );
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a port")
        .port();
    let nobody = Store::open_postgres(session_store::PostgresOptions::new(
        format!("postgres://postgres@127.0.0.1:{closed_port}/postgres"),
        "ok",
    ));
    assert!(
        matches!(&nobody, Err(error @ Error::Backend { .. }) if error.kind() == ErrorKind::Io),
        "{nobody:?}"
    );
    let Some(place) = Place::postgres("postgres_bad_options_servers_and_records_are_typed_errors")
    else {
        return;
    };
    let (url, schema) = place.postgres_target();
    let sql = |statement: String| admin_query(url, &statement);
    let store = place.open();
    store
        .write(|scope| scope.put_session(&session("s1")))
        .expect("a session");
    sql(format!("UPDATE {schema}.sessions SET v = '\\x00ff'"));
    let snapshot = store.snapshot().expect("snapshot");
    let damaged = snapshot.session(&session_id("s1"));
    assert!(
        matches!(
            &damaged,
            Err(Error::Corrupt {
                table: "sessions",
                ..
            })
        ),
        "{damaged:?}"
    );
    drop(snapshot);
    store.close().expect("close");
    sql(format!(
        "UPDATE {schema}.meta SET value = {} WHERE name = 'schema_version'",
        SCHEMA_VERSION + 1
    ));
    let newer = place.open_with(&["ledger"]);
    assert!(
        matches!(newer, Err(Error::SchemaTooNew { .. })),
        "{newer:?}"
    );
}

/// What one unit does in `postgres_unit_reads_match_lmdb_on_random_writes`.
#[derive(Debug, Clone)]
enum EventOp {
    Put(bool, u64),
    Delete(bool, u64),
    DeleteAll(bool),
    Scan(bool, u64, usize),
}

fn event_op() -> impl proptest::strategy::Strategy<Value = EventOp> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (any::<bool>(), 0..24_u64).prop_map(|(s, seq)| EventOp::Put(s, seq)),
        3 => (any::<bool>(), 0..24_u64).prop_map(|(s, seq)| EventOp::Delete(s, seq)),
        1 => any::<bool>().prop_map(EventOp::DeleteAll),
        3 => (any::<bool>(), 0..24_u64, 0..8_usize).prop_map(|(s, from, n)| EventOp::Scan(s, from, n)),
    ]
}

/// Runs `ops` in one unit over `base` (committed first, after clearing both sessions)
/// and returns what the unit observed and what committed.
fn run_event_ops(store: &Store, base: &[(bool, u64)], ops: &[EventOp]) -> Vec<String> {
    let name = |s: bool| if s { "a" } else { "a-b" };
    let base = base.to_vec();
    store
        .write(move |scope| {
            for s in [true, false] {
                scope.delete_events(&session_id(name(s)))?;
            }
            for (s, seq) in &base {
                let _ = scope.put_event(&event(name(*s), *seq, EventBody::DidFinishEvents));
            }
            Ok::<_, Error>(())
        })
        .expect("the base");
    let ops = ops.to_vec();
    let mut seen = store
        .write(move |scope| {
            let mut seen = Vec::new();
            for op in &ops {
                seen.push(match op {
                    EventOp::Put(s, seq) => format!(
                        "put {s} {seq}: {}",
                        scope
                            .put_event(&event(name(*s), *seq, EventBody::DidFinishEvents))
                            .is_ok()
                    ),
                    EventOp::Delete(s, seq) => format!(
                        "delete {s} {seq}: {}",
                        scope.delete_event(&session_id(name(*s)), *seq)?
                    ),
                    EventOp::DeleteAll(s) => format!(
                        "delete all {s}: {}",
                        scope.delete_events(&session_id(name(*s)))?
                    ),
                    EventOp::Scan(s, from, n) => format!(
                        "scan {s} {from} {n}: {:?}",
                        scope
                            .events(&session_id(name(*s)), *from, *n)?
                            .iter()
                            .map(|e| e.seq)
                            .collect::<Vec<_>>()
                    ),
                });
            }
            Ok::<_, Error>(seen)
        })
        .expect("the unit");
    let snapshot = store.snapshot().expect("snapshot");
    for s in [true, false] {
        let committed: Vec<u64> = snapshot
            .events(&session_id(name(s)), 0, 100)
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        seen.push(format!("committed {s}: {committed:?}"));
    }
    seen
}

/// The PostgreSQL writer's overlay (a unit's writes held until the batch's end, merged
/// with the server's rows on every read) against LMDB's nested transaction, on random
/// puts, deletes, range deletes and limited scans over committed events: the unit
/// observes the same, and the same commits.
#[test]
fn postgres_unit_reads_match_lmdb_on_random_writes() {
    use proptest::prelude::*;
    let Some(place) = Place::postgres("postgres_unit_reads_match_lmdb_on_random_writes") else {
        return;
    };
    let postgres = place.open();
    let lmdb_place = Place::lmdb();
    let lmdb = lmdb_place.open();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec((any::<bool>(), 0..24_u64), 0..16),
        proptest::collection::vec(event_op(), 1..24),
    );
    runner
        .run(&strategy, |(base, ops)| {
            let expected = run_event_ops(&lmdb, &base, &ops);
            let found = run_event_ops(&postgres, &base, &ops);
            prop_assert_eq!(found, expected);
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

const CHILD_DIR_VAR: &str = "SESSION_STORE_TEST_LOCK_CHILD_DIR";

/// A second owner in another process gets `Locked`: this test binary runs itself as a
/// child that tries to open the directory the parent holds and reports what it got.
#[test]
fn a_second_owner_in_another_process_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _owner = open(dir.path());
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "second_owner_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("child-open: locked"),
        "child said: {stdout}"
    );
}

/// Not a test on its own: the child side of `a_second_owner_in_another_process_is_refused`
/// (does nothing unless the parent set the directory variable).
#[test]
fn second_owner_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    match Store::open(&dir, StoreOptions::default()) {
        Err(Error::Locked { dir: locked }) if locked == Path::new(&dir) => {
            println!("child-open: locked")
        }
        other => println!("child-open: unexpected {other:?}"),
    }
}

/// Opens a raw heed environment on a closed store's directory, to plant bytes the store
/// would never write.
fn raw_put(dir: &Path, table: &str, key: &[u8], value: &[u8]) {
    use heed::types::Bytes;
    // SAFETY: the store on `dir` is closed (dropped) and nothing else in this test opens
    // the directory while this environment is alive.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir) }.expect("raw open");
    let wtxn = env.write_txn().expect("raw txn");
    let created = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<Bytes, Bytes>(wtxn, Some(table))
                .map(heed::CommitOrAbort::<_, ()>::Commit)
        })
        .expect("raw table");
    let heed::CommitOrAbort::Commit(database) = created else {
        panic!("raw table creation aborted");
    };
    let mut wtxn = env.write_txn().expect("raw txn");
    database.put(&mut wtxn, key, value).expect("raw put");
    wtxn.commit().expect("raw commit");
}

/// Garbage bytes under a key (planted with a raw heed handle) read back as `Corrupt`
/// naming the table and the key, from single reads and from iteration, never a panic;
/// and the record walk of a default open finds the bad session record first.
#[test]
fn a_corrupt_record_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .write(|scope| scope.put_session(&session("good")))
        .expect("write");
    drop(store);
    raw_put(dir.path(), "sessions", b"s1", &[0xff; 7]);
    let mut event_key = b"s1\0".to_vec();
    event_key.extend_from_slice(&3_u64.to_be_bytes());
    raw_put(dir.path(), "events", &event_key, b"\x01\x02");
    raw_put(dir.path(), "app.ledger", b"k", b"");

    let result = Store::open(dir.path(), StoreOptions::default().with_app_table("ledger"));
    assert!(
        matches!(&result, Err(error @ Error::Corrupt { table: "sessions", key, .. })
            if key == "s1" && error.kind() == ErrorKind::Corrupt),
        "{result:?}"
    );
    let store = open_unchecked(dir.path());
    let snapshot = store.snapshot().expect("snapshot");
    let s1 = session_id("s1");
    let corrupt = |result: String, table: &str, key: &str| {
        assert!(
            result.contains(&format!("table {table}, key {key}")),
            "{result}"
        );
    };
    let result = snapshot.session(&s1);
    assert!(
        matches!(&result, Err(Error::Corrupt { table: "sessions", key, .. }) if key == "s1"),
        "{result:?}"
    );
    corrupt(
        format!("{}", snapshot.sessions().expect_err("corrupt")),
        "sessions",
        "s1",
    );
    let result = snapshot.events(&s1, 0, 10);
    assert!(
        matches!(&result, Err(Error::Corrupt { table: "events", key, .. }) if key == "s1/3"),
        "{result:?}"
    );
    let result = snapshot.event(&s1, 3);
    assert!(
        matches!(
            &result,
            Err(Error::Corrupt {
                table: "events",
                ..
            })
        ),
        "{result:?}"
    );
    let ledger = store.app_table::<u64>("ledger").expect("ledger");
    let result = ledger.get(&snapshot, "k");
    assert!(
        matches!(&result, Err(Error::Corrupt { key, .. }) if key == "ledger:k"),
        "{result:?}"
    );
    // Good records stay readable.
    assert!(
        snapshot
            .session(&session_id("good"))
            .expect("read")
            .is_some()
    );
}

/// A well-encoded record stored under the wrong key is also `Corrupt`: reads check the
/// record against its key.
#[test]
fn a_record_under_the_wrong_key_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    let bytes = bincode::serialize(&session("other")).expect("encode");
    raw_put(dir.path(), "sessions", b"s1", &bytes);
    let store = open_unchecked(dir.path());
    let result = store
        .snapshot()
        .expect("snapshot")
        .session(&session_id("s1"));
    assert!(
        matches!(&result, Err(Error::Corrupt { table: "sessions", key, .. }) if key == "s1"),
        "{result:?}"
    );
}

/// A store whose `meta` says a newer schema version is refused with `SchemaTooNew`,
/// and a fresh store records the current schema version.
#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    raw_put(
        dir.path(),
        "meta",
        b"schema_version",
        &bincode::serialize(&(SCHEMA_VERSION + 1)).expect("encode"),
    );
    let result = Store::open(dir.path(), StoreOptions::default());
    assert!(
        matches!(&result, Err(Error::SchemaTooNew { found, supported, .. }) if *found == SCHEMA_VERSION + 1 && *supported == SCHEMA_VERSION),
        "{result:?}"
    );
}

/// A 64 KiB map grows transparently while thousands of units from several threads are
/// written (including one unit larger than the whole initial map): every unit succeeds.
#[test]
fn a_tiny_map_grows_transparently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        map_size_bytes_initial: 64 * 1024,
        ..StoreOptions::default().with_app_table("ledger")
    };
    let store = Store::open(dir.path(), options).expect("open");
    let initial = store.map_size_bytes();
    let ledger = store.app_table::<Vec<u8>>("ledger").expect("ledger");
    {
        let ledger = ledger.clone();
        store
            .write(move |scope| ledger.put(scope, "big", &vec![7_u8; 512 * 1024]))
            .expect("a unit larger than the map");
    }
    let threads: Vec<_> = (0..8)
        .map(|thread_index| {
            let (store, ledger) = (store.clone(), ledger.clone());
            thread::spawn(move || {
                for n in 0..500_u32 {
                    let ledger = ledger.clone();
                    store
                        .write(move |scope| {
                            ledger.put(
                                scope,
                                format!("{thread_index}/{n:04}"),
                                &vec![n as u8; 200],
                            )?;
                            // The unit swallows its own errors into another type: the
                            // writer must still notice "map full" and re-run it.
                            scope
                                .put_session(&session(&format!("s{thread_index}-{n}")))
                                .map_err(|e| AppError::Other(e.to_string()))
                        })
                        .expect("write");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("submitter");
    }
    assert!(store.map_size_bytes() > initial);
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(
        ledger.entries(&snapshot).expect("entries").len(),
        8 * 500 + 1
    );
    assert_eq!(snapshot.sessions().expect("sessions").len(), 8 * 500);
}

/// A unit that needs more than `map_size_bytes_max` fails alone with `MapSizeLimit`
/// instead of growing forever: a small unit queued in the same batch still commits.
#[test]
fn the_map_stops_at_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        map_size_bytes_initial: 256 * 1024,
        map_size_bytes_max: 1024 * 1024,
        ..StoreOptions::default().with_app_table("ledger")
    };
    let store = Store::open(dir.path(), options).expect("open");
    let ledger = store.app_table::<Vec<u8>>("ledger").expect("ledger");
    // Hold the writer so that both units below land in one batch.
    let (started, holder_started) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let holder = {
        let store = store.clone();
        thread::spawn(move || {
            store.write(move |_| {
                started.send(()).expect("signal start");
                released.lock().expect("lock").recv().expect("released");
                Ok::<_, Error>(())
            })
        })
    };
    holder_started.recv().expect("the holder's unit started");
    let submit = |key: &'static str, bytes: usize| {
        let (store, ledger) = (store.clone(), ledger.clone());
        thread::spawn(move || store.write(move |scope| ledger.put(scope, key, &vec![1_u8; bytes])))
    };
    let big = submit("big", 4 * 1024 * 1024);
    let small = submit("small", 10);
    while store.queued_units() < 2 {
        thread::yield_now();
    }
    release.send(()).expect("release");
    holder.join().expect("holder").expect("holder unit");
    let big = big.join().expect("big submitter");
    assert!(matches!(big, Err(Error::MapSizeLimit { .. })), "{big:?}");
    small
        .join()
        .expect("small submitter")
        .expect("the small unit commits");
    let snapshot = store.snapshot().expect("snapshot");
    assert!(ledger.get(&snapshot, "small").expect("read").is_some());
    assert!(ledger.get(&snapshot, "big").expect("read").is_none());
}

/// Bad options are refused before anything is created on disk.
#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("never-created");
    let options = StoreOptions {
        batch_units_max: 0,
        ..StoreOptions::default()
    };
    assert!(matches!(
        Store::open(&target, options),
        Err(Error::InvalidOptions { .. })
    ));
    let twice = StoreOptions::default()
        .with_app_table("a")
        .with_app_table("a");
    assert!(matches!(
        Store::open(&target, twice),
        Err(Error::InvalidOptions { .. })
    ));
    assert!(!target.exists());
    let _ = SessionState::Queued;
}

/// A directory whose `data.mdb` is not an LMDB file is refused before LMDB reads it,
/// with `CorruptFile` naming the file and both meta pages, not a panic.
#[test]
fn a_data_file_that_is_not_lmdb_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.mdb");
    std::fs::write(&data, vec![0x5a_u8; 64 * 1024]).expect("plant garbage");
    let result = Store::open(dir.path(), StoreOptions::default());
    assert!(
        matches!(&result, Err(Error::CorruptFile { path, page: None, reason })
            if *path == data && reason.contains("both meta pages")),
        "{result:?}"
    );
}
