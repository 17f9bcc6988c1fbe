//! Integration tests of the session actors, on each backend (LMDB in a temp dir, PostgreSQL
//! in a schema of a throwaway cluster: `on_every_backend!`), and the real
//! origin server on 127.0.0.1: exactly-once delivery across in-process restarts,
//! supervised restarts after a delegate panic, reconnects, conflicts, cancel,
//! generations, completion handlers and faulted sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use session_actor::{
    CompletionCall, Delegate, DelegateError, Delivery, Error, Event, Outcome, SessionConfig,
    Sessions, SessionsBuilder, TransferRequest, WriteScope, machine::MachineError,
};
use session_harness::origin::{Origin, OriginConfig, OriginHandle};
use session_harness::stores::Place;
use session_store::AppTable;

const SEED: u64 = 7;
const LEDGER: &str = "ledger";
const LEDGER_NEXT: &str = "ledger-next";

/// One line of the test's ledger, written inside the delivery's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Entry {
    Event {
        session: String,
        generation: u64,
        seq: u64,
        task: Option<String>,
        outcome: Option<String>,
        file_ok: Option<bool>,
    },
    Completion {
        session: String,
        generation: u64,
        payload: Vec<u8>,
    },
}

fn append(scope: &mut WriteScope<'_>, entry: &Entry) -> Result<(), DelegateError> {
    let fail = |e: session_store::Error| DelegateError::new(e.to_string());
    let next: AppTable<u64> = AppTable::named(LEDGER_NEXT).map_err(fail)?;
    let ledger: AppTable<Entry> = AppTable::named(LEDGER).map_err(fail)?;
    let n = next.get(scope, "n").map_err(fail)?.unwrap_or(0);
    ledger.put(scope, n.to_be_bytes(), entry).map_err(fail)?;
    next.put(scope, "n", &(n + 1)).map_err(fail)?;
    Ok(())
}

fn record(delivery: &Delivery, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let (task, outcome, file_ok) = match &delivery.event {
        Event::TaskCompleted {
            task,
            outcome,
            file,
            ..
        } => (
            Some(task.to_string()),
            Some(outcome.name().to_owned()),
            file.as_ref().map(|f| f.path().exists()),
        ),
        Event::DidFinishEvents => (None, None, None),
    };
    append(
        scope,
        &Entry::Event {
            session: delivery.key.session.to_string(),
            generation: delivery.key.generation,
            seq: delivery.key.seq,
            task,
            outcome,
            file_ok,
        },
    )
}

fn complete(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    append(
        scope,
        &Entry::Completion {
            session: call.key.session.to_string(),
            generation: call.key.generation,
            payload: call.payload.clone(),
        },
    )
}

fn builder(place: &Place) -> SessionsBuilder {
    place
        .sessions_builder()
        // Loopback only, whatever proxy variables the environment has.
        .engine_config(session_actor::EngineConfig {
            proxy_from_environment: false,
            ..session_actor::EngineConfig::default()
        })
        .app_table(LEDGER)
        .app_table(LEDGER_NEXT)
        .completion("done", complete)
}

/// Opens `Sessions` on `dir` and the named session with the recording delegate, as an
/// application does at launch.
async fn open(place: &Place, session: &str) -> (Sessions, session_actor::Session) {
    let sessions = builder(place).open().expect("open");
    let session = sessions
        .session(session, config(), Delegate::transactional(record))
        .await
        .expect("session");
    (sessions, session)
}

fn config() -> SessionConfig {
    SessionConfig {
        attempts_max: 20,
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 200,
        deadline_s: 3600,
        ..SessionConfig::default()
    }
}

fn ledger(place: &Place) -> Vec<Entry> {
    let store = place.open_with(&[LEDGER, LEDGER_NEXT]).expect("open store");
    let table = store.app_table::<Entry>(LEDGER).expect("ledger");
    let snapshot = store.snapshot().expect("snapshot");
    table
        .entries(&snapshot)
        .expect("entries")
        .into_iter()
        .map(|(_, entry)| entry)
        .collect()
}

fn completions_in(sessions: &Sessions) -> usize {
    let table = sessions.store().app_table::<Entry>(LEDGER).expect("ledger");
    let snapshot = sessions.store().snapshot().expect("snapshot");
    table
        .entries(&snapshot)
        .expect("entries")
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Completion { .. }))
        .count()
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn origin() -> OriginHandle {
    Origin::start_in_thread(OriginConfig {
        seed: SEED,
        port: 0,
    })
    .expect("origin")
}

/// Checks the ledger of one session: every event once, in order, contiguous; one
/// "did finish events" per generation after its task events; each completion once,
/// after its generation's "did finish events"; every file existed at delivery.
fn check_exactly_once(entries: &[Entry], session: &str, tasks: usize, generations: u64) {
    let mut next_seq = 0;
    let mut finished = std::collections::BTreeSet::new();
    let mut completed = std::collections::BTreeSet::new();
    let mut task_events = 0;
    for entry in entries {
        match entry {
            Entry::Event {
                session: s,
                generation,
                seq,
                task,
                file_ok,
                ..
            } if s == session => {
                assert_eq!(
                    *seq, next_seq,
                    "event out of order or duplicated: {entry:?}"
                );
                next_seq += 1;
                assert_ne!(*file_ok, Some(false), "file missing at delivery: {entry:?}");
                match task {
                    Some(_) => {
                        assert!(
                            !finished.contains(generation),
                            "task event after did-finish"
                        );
                        task_events += 1;
                    }
                    None => assert!(finished.insert(*generation), "did-finish twice"),
                }
            }
            Entry::Completion {
                session: s,
                generation,
                ..
            } if s == session => {
                assert!(
                    finished.contains(generation),
                    "completion before did-finish"
                );
                assert!(completed.insert(*generation), "completion ran twice");
                // The completion's own event takes a sequence number too.
                next_seq += 1;
            }
            Entry::Event { .. } | Entry::Completion { .. } => {}
        }
    }
    assert_eq!(task_events, tasks, "task events lost or duplicated");
    assert_eq!(finished.len() as u64, generations);
    assert_eq!(completed.len() as u64, generations);
}

/// Many in-process restarts (the whole actix system and `Sessions` dropped at a random
/// moment, then reopened and the plan re-issued) still deliver every event exactly
/// once and run the completion once, with downloads resumed through resets.
fn exactly_once_across_in_process_restarts(place: &Place) {
    let origin = origin();
    let dir = place;
    let tasks = 12;
    let urls: Vec<String> = (0..tasks)
        .map(|i| match i % 3 {
            0 => origin.url(&format!(
                "/objects/o{i}?size={}&fault=reset:5000&times=2",
                40_000 + i
            )),
            1 => origin.url(&format!(
                "/objects/o{i}?size={}&fault=drip:4096:5",
                30_000 + i
            )),
            _ => origin.url(&format!("/objects/o{i}?size={}", 20_000 + i)),
        })
        .collect();
    for launch in 0..10u64 {
        let dir = dir.clone();
        let urls = urls.clone();
        let last = launch == 9;
        actix::System::new().block_on(async move {
            let (sessions, session) = open(&dir, "restarts").await;
            let mut generation = 0;
            for (i, url) in urls.iter().enumerate() {
                let handle = session
                    .enqueue(&format!("t{i}"), TransferRequest::download(url.as_str()))
                    .await
                    .expect("enqueue");
                generation = handle.generation();
            }
            session
                .set_completion(generation, "done", b"g1".to_vec())
                .await
                .expect("completion");
            if last {
                wait_for(|| completions_in(&sessions) == 1, "the completion").await;
            } else {
                actix_rt::time::sleep(Duration::from_millis(20 + launch * 37 % 150)).await;
            }
        });
    }
    check_exactly_once(&ledger(dir), "restarts", tasks, 1);
}

/// A delegate that panics once is a failed delivery like any other: the event is
/// delivered again, exactly once, nothing is lost, and the session is not restarted.
fn delegate_panic_is_retried_without_duplicate_or_loss(place: &Place) {
    let origin = origin();
    let dir = place;
    let panicked = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..4)
        .map(|i| origin.url(&format!("/objects/p{i}?size=1000")))
        .collect();
    let flag = panicked.clone();
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let sessions = builder(&path).open().expect("open");
        let delegate = move |delivery: &Delivery, scope: &mut WriteScope<'_>| {
            if delivery.key.seq == 2 && !flag.swap(true, Ordering::SeqCst) {
                panic!("the delegate panics once on event 2");
            }
            record(delivery, scope)
        };
        let session = sessions
            .session("panics", config(), Delegate::transactional(delegate))
            .await
            .expect("session");
        let mut generation = 0;
        for (i, url) in urls.iter().enumerate() {
            generation = session
                .enqueue(&format!("t{i}"), TransferRequest::download(url.as_str()))
                .await
                .expect("enqueue")
                .generation();
        }
        session
            .set_completion(generation, "done", vec![])
            .await
            .expect("completion");
        wait_for(|| completions_in(&sessions) == 1, "the completion").await;
        let status = session.status().await.expect("status");
        assert_eq!(
            status.restarts, 0,
            "a delegate panic does not restart the actor"
        );
        assert!(status.faulted.is_none());
    });
    assert!(panicked.load(Ordering::SeqCst));
    check_exactly_once(&ledger(dir), "panics", 4, 1);
}

/// Re-issuing a task identifier reconnects: the origin sees one transfer, in the same
/// launch and after a restart once the task finished; a different description for the
/// same identifier is a conflict.
fn reconnect_starts_no_second_transfer_and_conflicts(place: &Place) {
    let origin = origin();
    let dir = place;
    let url = origin.url("/objects/once?size=50000&fault=drip:10000:20");
    let other = origin.url("/objects/other?size=10");
    for launch in 0..2 {
        let url = url.clone();
        let other = other.clone();
        let dir = dir.clone();
        actix::System::new().block_on(async move {
            let (_sessions, session) = open(&dir, "reconnect").await;
            let first = session
                .enqueue("t", TransferRequest::download(url.as_str()))
                .await
                .expect("enqueue");
            let again = session
                .enqueue("t", TransferRequest::download(url.as_str()))
                .await
                .expect("re-enqueue");
            assert_eq!(first.generation(), again.generation());
            let conflict = session
                .enqueue("t", TransferRequest::download(other.as_str()))
                .await;
            assert!(
                matches!(
                    conflict,
                    Err(Error::Refused {
                        source: MachineError::TaskConflict { .. },
                        ..
                    })
                ),
                "launch {launch}: {conflict:?}"
            );
            let outcome = again.outcome().await.expect("outcome");
            assert!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
        });
    }
    let counters = origin.counters();
    assert_eq!(
        counters.requests_for("once"),
        1,
        "one transfer, never a second"
    );
    assert_eq!(counters.body_bytes_for("once"), 50_000);
    assert_eq!(counters.requests_for("other"), 0);
}

/// Cancelling a running task ends it `Cancelled`, reported by exactly one event.
fn cancel_reports_cancelled_once(place: &Place) {
    let origin = origin();
    let dir = place;
    let url = origin.url("/objects/slow?size=1000000&fault=drip:1000:50");
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let (sessions, session) = open(&path, "cancel").await;
        let handle = session
            .enqueue("t", TransferRequest::download(url.as_str()))
            .await
            .expect("enqueue");
        session
            .set_completion(handle.generation(), "done", vec![])
            .await
            .expect("completion");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        session.cancel("t").await.expect("cancel");
        assert_eq!(handle.outcome().await.expect("outcome"), Outcome::Cancelled);
        // Cancelling again changes nothing.
        session.cancel("t").await.expect("cancel again");
        wait_for(|| completions_in(&sessions) == 1, "the completion").await;
    });
    let entries = ledger(dir);
    check_exactly_once(&entries, "cancel", 1, 1);
    let left: Vec<_> = std::fs::read_dir(dir.dir().join("downloads").join("cancel"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a cancelled download leaves no partial file: {left:?}"
    );
    assert!(entries.iter().any(|e| matches!(e,
        Entry::Event { outcome: Some(o), .. } if o == "cancelled")));
}

/// New work after a generation finished opens the next generation; each generation's
/// completion runs once, after its own "did finish events".
fn second_generation_after_finished(place: &Place) {
    let origin = origin();
    let dir = place;
    let a = origin.url("/objects/gen-a?size=100");
    let b = origin.url("/objects/gen-b?size=200");
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let (sessions, session) = open(&path, "generations").await;
        let first = session
            .enqueue("a", TransferRequest::download(a.as_str()))
            .await
            .expect("enqueue");
        assert_eq!(first.generation(), 1);
        session
            .set_completion(1, "done", b"1".to_vec())
            .await
            .expect("c1");
        wait_for(|| completions_in(&sessions) == 1, "the first completion").await;
        let second = session
            .enqueue("b", TransferRequest::download(b.as_str()))
            .await
            .expect("enqueue");
        assert_eq!(second.generation(), 2);
        // Re-issuing generation 1's completion is harmless; a generation that ended
        // without one cannot get one.
        session
            .set_completion(1, "done", b"1".to_vec())
            .await
            .expect("again");
        session
            .set_completion(2, "done", b"2".to_vec())
            .await
            .expect("c2");
        wait_for(|| completions_in(&sessions) == 2, "the second completion").await;
        let record = session.record().expect("record").expect("exists");
        assert_eq!(record.generation, 2);
        assert_eq!(record.state, session_store::SessionState::Finished);
    });
    check_exactly_once(&ledger(dir), "generations", 2, 2);
}

/// A stored completion whose handler is not registered in a later launch makes the
/// session wait, visibly; once a launch registers it, it runs exactly once. A name not
/// registered in this process is refused at enqueue (it could never run here).
fn unknown_completion_waits_then_runs_once(place: &Place) {
    let origin = origin();
    let dir = place;
    // The first request stalls, so the task is still open when the first launch ends.
    let url = origin.url("/objects/later?size=10&fault=stall&times=1");
    let path = dir.clone();
    let origin_counters = &origin;
    actix::System::new().block_on(async move {
        let sessions = builder(&path)
            .completion("later", complete)
            .open()
            .expect("open");
        let session = sessions
            .session("waits", config(), Delegate::transactional(record))
            .await
            .expect("session");
        let refused = session
            .enqueue_batch(
                vec![("u".into(), TransferRequest::download(url.as_str()))],
                Some(("never-registered", vec![])),
            )
            .await;
        assert!(
            matches!(&refused, Err(Error::InvalidCompletion { name, .. }) if name == "never-registered"),
            "{refused:?}"
        );
        let handle = session
            .enqueue("t", TransferRequest::download(url.as_str()))
            .await
            .expect("enqueue");
        session
            .set_completion(handle.generation(), "later", vec![9])
            .await
            .expect("completion");
        wait_for(|| origin_counters.counters().requests_total == 1, "the stalled request").await;
        sessions.shutdown().await.expect("shutdown");
    });
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let (sessions, session) = open(&path, "waits").await;
        let mut blocked = None;
        for _ in 0..500 {
            blocked = session.status().await.expect("status").delivery_blocked;
            if blocked.is_some() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(blocked.is_some_and(|b| b.contains("later")));
        assert_eq!(completions_in(&sessions), 0);
        sessions.shutdown().await.expect("shutdown");
    });
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let sessions = builder(&path)
            .completion("later", complete)
            .open()
            .expect("open");
        let waiting = sessions.take_waiting(&session_actor::Matching::Prefix("wa".into()));
        assert_eq!(waiting.len(), 1, "the session is waiting with events");
        sessions
            .session("waits", config(), Delegate::transactional(record))
            .await
            .expect("session");
        wait_for(|| completions_in(&sessions) == 1, "the completion").await;
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(completions_in(&sessions), 1);
    });
    check_exactly_once(&ledger(dir), "waits", 1, 1);
}

/// A delegate that always fails on an event is retried with backoff, visibly: the status
/// names the event (its real sequence number), the attempts and the error; nothing is
/// marked delivered past it, and the session is never parked.
fn failing_delegate_is_retried_and_visible(place: &Place) {
    let origin = origin();
    let dir = place;
    let url = origin.url("/objects/bad?size=10");
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let sessions = builder(&path).restart_limit(3).open().expect("open");
        let delegate = move |delivery: &Delivery, scope: &mut WriteScope<'_>| {
            if delivery.key.seq < 1 {
                return record(delivery, scope);
            }
            counted.fetch_add(1, Ordering::SeqCst);
            Err(DelegateError::new("the application is broken"))
        };
        let session = sessions
            .session("broken", config(), Delegate::transactional(delegate))
            .await
            .expect("session");
        session
            .enqueue("t", TransferRequest::download(url.as_str()))
            .await
            .expect("enqueue");
        let mut status = session.status().await.expect("status");
        for _ in 0..5000 {
            if status
                .delivery_failure
                .as_ref()
                .is_some_and(|failure| failure.attempts >= 4)
            {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
            status = session.status().await.expect("status");
        }
        let failure = status.delivery_failure.clone().expect("the failure shows");
        assert_eq!(
            failure.seq, 1,
            "the event that fails, by its real sequence number"
        );
        assert!(failure.attempts >= 4, "{failure:?}");
        assert!(failure.last_error.contains("broken"), "{failure:?}");
        assert!(status.faulted.is_none(), "never parked");
        assert!(sessions.faulted().is_empty());
        assert_eq!(status.restarts, 0);
        assert_eq!(status.record.expect("record").delivered_seq, 1);
        session
            .enqueue("u", TransferRequest::download(url.as_str()))
            .await
            .expect("the session still takes work");
    });
    assert!(calls.load(Ordering::SeqCst) >= 4);
}

/// An at-least-once delegate receives every event with its stable delivery key, in
/// order; the stored completion still runs (transactionally) once.
fn at_least_once_delegate_gets_every_key(place: &Place) {
    use std::sync::Mutex;

    struct Collect(Arc<Mutex<Vec<session_actor::DeliveryKey>>>);
    impl session_actor::AsyncDelegate for Collect {
        fn deliver(
            &self,
            delivery: Delivery,
        ) -> futures_util::future::BoxFuture<'static, Result<(), DelegateError>> {
            let keys = self.0.clone();
            Box::pin(async move {
                keys.lock().expect("keys").push(delivery.key);
                Ok(())
            })
        }
    }

    let origin = origin();
    let dir = place;
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let urls: Vec<String> = (0..3)
        .map(|i| origin.url(&format!("/objects/alo{i}?size=500")))
        .collect();
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let sessions = builder(&path).open().expect("open");
        let session = sessions
            .session("alo", config(), Delegate::at_least_once(Collect(seen)))
            .await
            .expect("session");
        let mut generation = 0;
        for (i, url) in urls.iter().enumerate() {
            generation = session
                .enqueue(&format!("t{i}"), TransferRequest::download(url.as_str()))
                .await
                .expect("enqueue")
                .generation();
        }
        session
            .set_completion(generation, "done", vec![])
            .await
            .expect("completion");
        wait_for(|| completions_in(&sessions) == 1, "the completion").await;
    });
    let keys = keys.lock().expect("keys").clone();
    let seqs: Vec<u64> = keys.iter().map(|k| k.seq).collect();
    // Three task events and "did finish events"; the completion (seq 4) ran on its own.
    assert_eq!(seqs, vec![0, 1, 2, 3]);
    assert!(
        keys.iter()
            .all(|k| k.session.as_str() == "alo" && k.generation == 1)
    );
    let completions = ledger(dir)
        .into_iter()
        .filter(|e| matches!(e, Entry::Completion { .. }))
        .count();
    assert_eq!(completions, 1);
}

/// Invalidating a session cancels every unfinished task (each reported once), and the
/// task list shows every task with its state.
fn invalidate_cancels_open_tasks_and_lists_them(place: &Place) {
    let origin = origin();
    let dir = place;
    let quick = origin.url("/objects/quick?size=10");
    let slow = origin.url("/objects/stuck?size=100000&fault=stall");
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let (sessions, session) = open(&path, "invalidate").await;
        let stuck = session
            .enqueue("stuck", TransferRequest::download(slow.as_str()))
            .await
            .expect("enqueue");
        let first = session
            .enqueue("quick", TransferRequest::download(quick.as_str()))
            .await
            .expect("enqueue");
        assert!(matches!(
            first.outcome().await.expect("outcome"),
            Outcome::Success(_)
        ));
        session
            .set_completion(stuck.generation(), "done", vec![])
            .await
            .expect("completion");
        session.invalidate().await.expect("invalidate");
        assert_eq!(stuck.outcome().await.expect("outcome"), Outcome::Cancelled);
        let tasks = session.tasks().expect("tasks");
        assert_eq!(tasks.len(), 2);
        assert!(tasks.iter().all(|t| t.state.is_terminal()));
        wait_for(|| completions_in(&sessions) == 1, "the completion").await;
    });
    check_exactly_once(&ledger(dir), "invalidate", 2, 1);
}

/// A server's Retry-After becomes the task's persisted not-before time: after a
/// restart the task is not started again before it, and then it succeeds.
fn retry_after_is_persisted_and_rearmed_after_restart(place: &Place) {
    let origin = origin();
    let dir = place;
    let url = origin.url("/objects/busy?size=100&fault=status:503:2");
    let path = dir.clone();
    let request_url = url.clone();
    let not_before_ms = actix::System::new().block_on(async move {
        let (_sessions, session) = open(&path, "retry").await;
        session
            .enqueue("t", TransferRequest::download(request_url.as_str()))
            .await
            .expect("enqueue");
        let mut not_before_ms = 0;
        wait_for(
            || match session.tasks().expect("tasks")[0].state {
                session_store::TaskState::Pending {
                    attempt: 1,
                    not_before_ms: at,
                } => {
                    not_before_ms = at;
                    true
                }
                _ => false,
            },
            "the retry to be recorded",
        )
        .await;
        not_before_ms
    });
    let now_ms = session_actor::unix_ms(std::time::SystemTime::now());
    assert!(
        not_before_ms >= now_ms + 1000,
        "Retry-After: 2 honoured ({not_before_ms} vs {now_ms})"
    );
    assert_eq!(origin.counters().requests_for("busy"), 1);
    let path = dir.clone();
    let origin_ref = &origin;
    actix::System::new().block_on(async move {
        let sessions = builder(&path).open().expect("open");
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            origin_ref.counters().requests_for("busy"),
            1,
            "re-armed, not restarted at once"
        );
        let session = sessions
            .session("retry", config(), Delegate::transactional(record))
            .await
            .expect("session");
        let outcome = session
            .task("t")
            .expect("task")
            .outcome()
            .await
            .expect("outcome");
        assert!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
        assert!(session_actor::unix_ms(std::time::SystemTime::now()) >= not_before_ms);
    });
    assert_eq!(origin.counters().requests_for("busy"), 2);
}

/// A transfer still running at the task's resource deadline is stopped and the task
/// fails with `DeadlineExceeded`, reported once.
fn resource_deadline_stops_a_running_transfer(place: &Place) {
    let origin = origin();
    let dir = place;
    let url = origin.url("/objects/never?size=100000&fault=stall");
    let path = dir.clone();
    actix::System::new().block_on(async move {
        let sessions = builder(&path).open().expect("open");
        let session = sessions
            .session(
                "deadline",
                SessionConfig {
                    deadline_s: 1,
                    ..config()
                },
                Delegate::transactional(record),
            )
            .await
            .expect("session");
        let handle = session
            .enqueue("t", TransferRequest::download(url.as_str()))
            .await
            .expect("enqueue");
        match handle.outcome().await.expect("outcome") {
            Outcome::Failed(failure) => assert_eq!(
                failure.reason,
                session_store::FailureReason::DeadlineExceeded
            ),
            other => panic!("expected the deadline to fail the task, got {other:?}"),
        }
    });
}

/// A batch enqueued with its completion lands in one generation even when its tasks
/// finish at once; re-issuing the batch after a restart reconnects and runs nothing
/// again.
fn batch_shares_one_generation_and_reissues_safely(place: &Place) {
    let origin = origin();
    let dir = place;
    let batch: Vec<(String, TransferRequest)> = (0..5)
        .map(|i| {
            (
                format!("b{i}"),
                TransferRequest::download(origin.url(&format!("/objects/batch{i}?size=64"))),
            )
        })
        .collect();
    for launch in 0..2 {
        let path = dir.clone();
        let batch = batch.clone();
        actix::System::new().block_on(async move {
            let (sessions, session) = open(&path, "batch").await;
            let handles = session
                .enqueue_batch(batch, Some(("done", b"batch".to_vec())))
                .await
                .expect("batch");
            assert!(
                handles.generation() == 1 && handles.tasks().iter().all(|h| h.generation() == 1),
                "launch {launch}"
            );
            wait_for(|| completions_in(&sessions) == 1, "the completion").await;
        });
    }
    check_exactly_once(&ledger(dir), "batch", 5, 1);
    assert_eq!(origin.counters().requests_total, 5, "no task ran twice");
}

session_harness::on_every_backend!(
    exactly_once_across_in_process_restarts,
    delegate_panic_is_retried_without_duplicate_or_loss,
    reconnect_starts_no_second_transfer_and_conflicts,
    cancel_reports_cancelled_once,
    second_generation_after_finished,
    unknown_completion_waits_then_runs_once,
    failing_delegate_is_retried_and_visible,
    at_least_once_delegate_gets_every_key,
    invalidate_cancels_open_tasks_and_lists_them,
    retry_after_is_persisted_and_rearmed_after_restart,
    resource_deadline_stops_a_running_transfer,
    batch_shares_one_generation_and_reissues_safely,
);
