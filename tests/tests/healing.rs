//! Failures that heal, over a real LMDB in a temp dir and the origin on 127.0.0.1: a
//! failing delegate is retried with backoff (visible in the status) and never parks the
//! session; a dead-letter policy moves an event that keeps failing aside and goes on;
//! `retry_now` does not wait for the backoff; a slow delegate slows its own session, not
//! the others; an async delegate that never answers times out and is retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use session_actor::{
    Delegate, DelegateError, Delivery, DeliveryOptions, DeliveryPolicy, SessionConfig,
    TransferRequest, WriteScope,
};
use session_tests::ledger::{self, builder, origin, texts, wait_until};

fn config() -> SessionConfig {
    SessionConfig {
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 100,
        delivery_retry_ms_base: 1,
        delivery_retry_ms_max: 20,
        ..SessionConfig::default()
    }
}

/// A delegate that refuses its first `failures` calls, then records like the ledger's.
fn failing_first(
    failures: u32,
    calls: Arc<AtomicU32>,
) -> impl Fn(&Delivery, &mut WriteScope<'_>) -> Result<(), DelegateError> {
    move |delivery, scope| {
        if calls.fetch_add(1, Ordering::SeqCst) < failures {
            return Err(DelegateError::new("the downstream table is locked"));
        }
        ledger::record(delivery, scope)
    }
}

/// A delegate that fails 20 times then succeeds delivers everything exactly once, in
/// order; meanwhile the status shows the failing delivery (event, attempts, error, next
/// attempt) and the session is never parked or restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_that_fails_20_times_then_succeeds() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let calls = Arc::new(AtomicU32::new(0));
    let session = sessions
        .session(
            "heals",
            config(),
            Delegate::transactional(failing_first(20, Arc::clone(&calls))),
        )
        .await
        .expect("session");
    let tasks = (0..4)
        .map(|i| {
            let url = origin.url(&format!("/objects/h{i}?size=100"));
            (format!("h{i}"), TransferRequest::download(url))
        })
        .collect();
    let batch = session
        .enqueue_batch(tasks, Some((ledger::COMPLETION, b"healed".to_vec())))
        .await
        .expect("enqueue");
    let started = std::time::Instant::now();
    let seen_failure = loop {
        let status = session.status().await.expect("status");
        if status.delivery_failure.is_some() || calls.load(Ordering::SeqCst) > 20 {
            break status.delivery_failure;
        }
        assert!(started.elapsed() < ledger::WAIT_MAX, "no failure showed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    if let Some(failure) = &seen_failure {
        assert_eq!(failure.seq, 0, "the first event is the one that fails");
        assert!(failure.attempts >= 1);
        assert!(failure.last_error.contains("locked"), "{failure:?}");
        assert!(failure.next_attempt_ms >= failure.since_ms);
    }
    batch.finished().await.expect("the generation ends");
    let status = session.status().await.expect("status");
    assert_eq!(status.restarts, 0, "healed without restarts");
    assert_eq!(status.faulted, None);
    assert_eq!(status.delivery_failure, None, "over once delivered");
    assert!(calls.load(Ordering::SeqCst) >= 21);
    let rows = texts(&sessions, "heals");
    assert_eq!(rows.len(), 6, "4 tasks, did finish, completion: {rows:?}");
    assert!(rows[..4].iter().all(|row| row.ends_with("success")));
    assert_eq!(rows[4], "did finish");
    assert_eq!(rows[5], "completion healed");
    sessions.shutdown().await.expect("shutdown");
}

/// Under a dead-letter policy an event that keeps failing moves to the dead-letter list
/// after its attempts (in the transaction that records it) and delivery goes on with the
/// next; the list shows it, its file stays, and a redelivery on request delivers it once
/// with its original key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_policy_moves_aside_and_redelivers_on_request() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let accept_bad = Arc::new(AtomicBool::new(false));
    let accept = Arc::clone(&accept_bad);
    let delegate = move |delivery: &Delivery, scope: &mut WriteScope<'_>| {
        let bad = ledger::describe(delivery).starts_with("task bad ");
        if bad && !accept.load(Ordering::SeqCst) {
            return Err(DelegateError::new("refusing bad"));
        }
        if let session_actor::Event::TaskCompleted {
            file: Some(file), ..
        } = &delivery.event
        {
            assert!(file.path().exists(), "the file is there at delivery");
        }
        ledger::record(delivery, scope)
    };
    let policy = SessionConfig {
        delivery_policy: DeliveryPolicy::DeadLetter { attempts_max: 3 },
        ..config()
    };
    let session = sessions
        .session("dead", policy, Delegate::transactional(delegate))
        .await
        .expect("session");
    let first = session
        .enqueue(
            "bad",
            TransferRequest::download(origin.url("/objects/bad?size=10")),
        )
        .await
        .expect("enqueue");
    first.outcome().await.expect("bad finishes");
    let good = session
        .enqueue(
            "good",
            TransferRequest::download(origin.url("/objects/good?size=10")),
        )
        .await
        .expect("enqueue");
    session
        .finished(good.generation())
        .await
        .expect("the generations end");
    let dead = session.dead_letters(10).expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].last_error.contains("refusing bad"));
    let rows = texts(&sessions, "dead");
    assert!(
        !rows.iter().any(|row| row.starts_with("task bad")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|row| row == "task good success"),
        "{rows:?}"
    );
    let record = session.record().expect("record").expect("exists");
    assert_eq!(record.dead_letters, 1);
    assert!(matches!(
        sessions.remove_session("dead").await,
        Err(session_actor::Error::SessionBusy { .. })
    ));

    accept_bad.store(true, Ordering::SeqCst);
    session
        .redeliver(dead[0].event.seq)
        .await
        .expect("redelivered");
    assert!(session.dead_letters(10).expect("dead letters").is_empty());
    let rows = ledger::entries(&sessions);
    let bad_rows: Vec<_> = rows
        .iter()
        .filter(|(_, t)| t.starts_with("task bad"))
        .collect();
    assert_eq!(bad_rows.len(), 1, "{rows:?}");
    assert_eq!(
        bad_rows[0].0,
        format!("dead/1/{}", dead[0].event.seq),
        "its original key"
    );
    assert!(matches!(
        session.redeliver(dead[0].event.seq).await,
        Err(session_actor::Error::NoDeadLetter { .. })
    ));
    sessions.shutdown().await.expect("shutdown");
}

/// A failing delivery with a long backoff is tried at once by `retry_now`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_does_not_wait_for_the_backoff() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let calls = Arc::new(AtomicU32::new(0));
    let slow_backoff = SessionConfig {
        delivery_retry_ms_base: 3_600_000,
        delivery_retry_ms_max: 3_600_000,
        ..config()
    };
    let session = sessions
        .session(
            "now",
            slow_backoff,
            // The first refusal, in a unit of several events, is retried at once one event
            // per unit; the second is the event's own and waits for its backoff.
            Delegate::transactional(failing_first(2, Arc::clone(&calls))),
        )
        .await
        .expect("session");
    let handle = session
        .enqueue(
            "t",
            TransferRequest::download(origin.url("/objects/now?size=5")),
        )
        .await
        .expect("enqueue");
    wait_until("the failure to be recorded", || async {
        let status = session.status().await.expect("status");
        status.delivery_failure.is_some()
    })
    .await;
    session.retry_now().await.expect("retry now");
    session
        .finished(handle.generation())
        .await
        .expect("delivered without the hour's backoff");
    assert_eq!(texts(&sessions, "now"), ["task t success", "did finish"]);
    sessions.shutdown().await.expect("shutdown");
}

/// A slow transactional delegate (300 ms a call) slows its own session only: another
/// session's whole generation is delivered while the slow one is still at it, and the
/// slow calls are counted in the slow session's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_delegate_slows_its_own_session_only() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path())
        .delivery_options(DeliveryOptions {
            slow_call_ms: 100,
            ..DeliveryOptions::default()
        })
        .open()
        .expect("open");
    let slow_delegate = |delivery: &Delivery, scope: &mut WriteScope<'_>| {
        std::thread::sleep(Duration::from_millis(300));
        ledger::record(delivery, scope)
    };
    let slow = sessions
        .session("slow", config(), Delegate::transactional(slow_delegate))
        .await
        .expect("session");
    let fast = sessions
        .session("fast", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let slow_tasks = (0..10)
        .map(|i| {
            let url = origin.url(&format!("/objects/s{i}?size=10"));
            (format!("s{i}"), TransferRequest::download(url))
        })
        .collect();
    let slow_batch = slow.enqueue_batch(slow_tasks, None).await.expect("enqueue");
    for handle in slow_batch.tasks() {
        handle.outcome().await.expect("slow task done");
    }
    // The slow session now has 11 events to deliver at 300 ms each.
    let fast_tasks = (0..10)
        .map(|i| {
            let url = origin.url(&format!("/objects/f{i}?size=10"));
            (format!("f{i}"), TransferRequest::download(url))
        })
        .collect();
    let fast_batch = fast.enqueue_batch(fast_tasks, None).await.expect("enqueue");
    fast_batch.finished().await.expect("fast ends");
    let slow_rows = texts(&sessions, "slow").len();
    assert!(
        slow_rows < 11,
        "the fast session finished while the slow one had delivered {slow_rows} of 11"
    );
    slow_batch.finished().await.expect("slow ends");
    let status = slow.status().await.expect("status");
    assert!(status.slow_deliveries >= 11, "{status:?}");
    assert!(status.slowest_delivery_ms >= 300, "{status:?}");
    assert_eq!(fast.status().await.expect("status").slow_deliveries, 0);
    sessions.shutdown().await.expect("shutdown");
}

/// An async delegate whose first call never answers times out (a failed delivery), is
/// retried, and the event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_delegate_that_never_answers_times_out_and_is_retried() {
    struct Hangs {
        calls: AtomicU32,
    }
    impl session_actor::AsyncDelegate for Hangs {
        fn deliver(
            &self,
            _: Delivery,
        ) -> futures_util::future::BoxFuture<'static, Result<(), DelegateError>> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Box::pin(std::future::pending())
            } else {
                Box::pin(async { Ok(()) })
            }
        }
    }
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path())
        .delivery_options(DeliveryOptions {
            async_timeout_ms: 200,
            ..DeliveryOptions::default()
        })
        .open()
        .expect("open");
    let delegate = Arc::new(Hangs {
        calls: AtomicU32::new(0),
    });
    struct Shared(Arc<Hangs>);
    impl session_actor::AsyncDelegate for Shared {
        fn deliver(
            &self,
            delivery: Delivery,
        ) -> futures_util::future::BoxFuture<'static, Result<(), DelegateError>> {
            self.0.deliver(delivery)
        }
    }
    let session = sessions
        .session(
            "hangs",
            config(),
            Delegate::at_least_once(Shared(Arc::clone(&delegate))),
        )
        .await
        .expect("session");
    let handle = session
        .enqueue(
            "t",
            TransferRequest::download(origin.url("/objects/hang?size=5")),
        )
        .await
        .expect("enqueue");
    session
        .finished(handle.generation())
        .await
        .expect("delivered after the timeout");
    assert!(
        delegate.calls.load(Ordering::SeqCst) >= 3,
        "timed out, retried, did finish"
    );
    sessions.shutdown().await.expect("shutdown");
}
