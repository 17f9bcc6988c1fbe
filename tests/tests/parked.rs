//! A panic inside the session actor itself (planted with the `actor-perform` fail
//! point; its own test binary, since fail points are process-wide) keeps the supervised
//! restart, with backoff; past the restart limit the session is parked, visibly, and
//! `Session::resume` takes it back into service without restarting the process.

use session_actor::{Delegate, Error, Outcome, SessionConfig, TransferRequest};
use session_tests::ledger::{self, builder, origin, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_resumes_without_a_restart_of_the_process() {
    let scenario = fail::FailScenario::setup();
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).restart_limit(3).open().expect("open");
    let session = sessions
        .session(
            "parks",
            SessionConfig::default(),
            Delegate::transactional(ledger::record),
        )
        .await
        .expect("session");
    fail::cfg("actor-perform", "panic").expect("arm the fail point");
    // The unit commits; acting on it panics (the reply may or may not survive that).
    let _ = session
        .enqueue(
            "t",
            TransferRequest::download(origin.url("/objects/parks?size=10")),
        )
        .await;
    wait_until("the session to be parked", || async {
        session
            .status()
            .await
            .is_ok_and(|status| status.faulted.is_some())
    })
    .await;
    let status = session.status().await.expect("status");
    assert!(status.restarts > 3, "{status:?}");
    assert!(matches!(
        session
            .enqueue(
                "u",
                TransferRequest::download(origin.url("/objects/u?size=1"))
            )
            .await,
        Err(Error::Faulted { .. })
    ));
    assert_eq!(sessions.faulted().len(), 1);

    fail::remove("actor-perform");
    session.resume().await.expect("resume");
    let handle = session.task("t").expect("the task was stored");
    assert!(matches!(
        handle.outcome().await.expect("outcome"),
        Outcome::Success(_)
    ));
    session
        .finished(handle.generation())
        .await
        .expect("delivered after the resume");
    assert!(session.status().await.expect("status").faulted.is_none());
    assert!(sessions.faulted().is_empty());
    sessions.shutdown().await.expect("shutdown");
    scenario.teardown();
}

/// Requests sent while the session keeps restarting (acting panics now and then, in
/// the actor itself) all get their answer: a restart drops replies in flight, and the
/// handle asks again; every task is reported exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_survive_supervised_restarts() {
    let scenario = fail::FailScenario::setup();
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path())
        .restart_limit(100_000)
        .open()
        .expect("open");
    let session = sessions
        .session(
            "restarting",
            SessionConfig::default(),
            Delegate::transactional(ledger::record),
        )
        .await
        .expect("session");
    fail::cfg(
        "actor-perform",
        "3*off->1*panic->3*off->1*panic->3*off->1*panic->3*off->1*panic",
    )
    .expect("arm the fail point");
    let handles = futures_util::future::join_all((0..30).map(|i| {
        let session = session.clone();
        let url = origin.url(&format!("/objects/r{i}?size=32"));
        async move {
            session
                .enqueue(&format!("t{i}"), TransferRequest::download(url))
                .await
        }
    }))
    .await;
    let mut generation = 0;
    for handle in handles {
        generation = generation.max(handle.expect("every enqueue is answered").generation());
    }
    fail::remove("actor-perform");
    session
        .finished(generation)
        .await
        .expect("the generations end");
    assert!(session.status().await.expect("status").restarts >= 4);
    let tasks = ledger::texts(&sessions, "restarting")
        .iter()
        .filter(|text| text.starts_with("task "))
        .count();
    assert_eq!(tasks, 30, "every task reported once");
    sessions.shutdown().await.expect("shutdown");
    scenario.teardown();
}
