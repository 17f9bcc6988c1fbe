//! Actors only for the sessions that need one, over a real LMDB in a temp dir and the
//! origin on 127.0.0.1: an idle session's actor retires and a handle held across that
//! keeps working; a reopen starts actors only for sessions with work; a removed session
//! stays removed.

use session_actor::{
    Delegate, DelegateError, Delivery, SessionConfig, TaskState, TransferRequest, WriteScope,
};
use session_tests::ledger::{self, builder, origin, texts, wait_until};

fn config() -> SessionConfig {
    SessionConfig {
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 50,
        ..SessionConfig::default()
    }
}

/// A session whose work is delivered goes idle and its actor retires; the handle the
/// service still holds enqueues again (a new actor starts) and every event is delivered
/// exactly once across the two actors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sessions_actor_retires_and_a_held_handle_still_works() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let session = sessions
        .session("quiet", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let first = session
        .enqueue(
            "a",
            TransferRequest::download(origin.url("/objects/a?size=1000")),
        )
        .await
        .expect("enqueue a");
    session
        .finished(first.generation())
        .await
        .expect("first generation");
    assert_eq!(sessions.actors_started(), 1);

    wait_until("the idle actor to retire", || async {
        sessions.running() == 0
    })
    .await;

    // The handle outlives its actor: a request starts the next one.
    let second = session
        .enqueue(
            "b",
            TransferRequest::download(origin.url("/objects/b?size=2000")),
        )
        .await
        .expect("enqueue b");
    assert_eq!(sessions.running(), 1);
    session
        .finished(second.generation())
        .await
        .expect("second generation");
    assert!(matches!(
        second.state().expect("state"),
        TaskState::Completed { .. }
    ));
    assert!(
        sessions.actors_started() >= 2,
        "a new actor served the handle"
    );
    assert_eq!(
        texts(&sessions, "quiet"),
        vec![
            "task a success".to_owned(),
            "did finish".to_owned(),
            "task b success".to_owned(),
            "did finish".to_owned(),
        ]
    );
    // A status read of an idle session starts an actor for a moment, then it goes again.
    wait_until("the actor to retire again", || async {
        sessions.running() == 0
    })
    .await;
    let status = session.status().await.expect("status");
    assert_eq!(status.record.expect("its record").tasks_open, 0);
    wait_until("the reader's actor to retire", || async {
        sessions.running() == 0
    })
    .await;
    sessions.shutdown().await.expect("shutdown");
}

/// At open, only a session with work gets an actor: of three sessions, two delivered
/// everything before the restart and one has a task still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_starts_actors_only_for_sessions_with_work() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let sessions = builder(dir.path()).open().expect("open");
        for name in ["done-1", "done-2"] {
            let session = sessions
                .session(name, config(), Delegate::transactional(ledger::record))
                .await
                .expect("session");
            let task = session
                .enqueue(
                    "t",
                    TransferRequest::download(origin.url("/objects/t?size=100")),
                )
                .await
                .expect("enqueue");
            session.finished(task.generation()).await.expect("finished");
        }
        // Its delegate refuses for now: its event waits, so the session has work at the
        // next open.
        let refuse = |_: &Delivery, _: &mut WriteScope<'_>| -> Result<(), DelegateError> {
            Err(DelegateError::new("not yet"))
        };
        let waiting = sessions
            .session("waiting", config(), Delegate::transactional(refuse))
            .await
            .expect("session");
        let task = waiting
            .enqueue(
                "t",
                TransferRequest::download(origin.url("/objects/w?size=100")),
            )
            .await
            .expect("enqueue");
        wait_until("the transfer to end", || async {
            matches!(task.state().expect("state"), TaskState::Completed { .. })
        })
        .await;
        sessions.shutdown().await.expect("shutdown");
    }

    let sessions = builder(dir.path()).open().expect("reopen");
    assert_eq!(
        sessions.running(),
        1,
        "one actor, for the session with work"
    );
    let waiting = sessions
        .session("waiting", config(), Delegate::transactional(ledger::record))
        .await
        .expect("attach");
    wait_until("the waiting event's delivery", || async {
        texts(&sessions, "waiting").len() == 2
    })
    .await;
    let record = waiting
        .status()
        .await
        .expect("status")
        .record
        .expect("record");
    assert!(!record.is_active(), "{record:?}");
    sessions.shutdown().await.expect("shutdown");
}

/// A removed session stays removed: a handle still held gets a typed error and does not
/// bring the session back; the same identifier opens as a new session afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_session_is_not_brought_back_by_a_held_handle() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let session = sessions
        .session("gone", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let task = session
        .enqueue(
            "t",
            TransferRequest::download(origin.url("/objects/t?size=100")),
        )
        .await
        .expect("enqueue");
    session.finished(task.generation()).await.expect("finished");
    let first_generation = task.generation();
    let forgotten = session.forget("t").await;
    forgotten.expect("forget the delivered task");
    sessions.remove_session("gone").await.expect("remove");
    assert!(session.record().expect("read").is_none());

    let again = session
        .enqueue(
            "u",
            TransferRequest::download(origin.url("/objects/u?size=100")),
        )
        .await;
    assert!(again.is_err(), "a removed session took work: {again:?}");
    assert!(session.record().expect("read").is_none(), "it came back");

    // Created again under the same identifier, it numbers on: no delivery key repeats
    // (the recorder refuses a key it has seen, so a repeat would never be delivered).
    let again = sessions
        .session("gone", config(), Delegate::transactional(ledger::record))
        .await
        .expect("the same identifier, a new session");
    let task = again
        .enqueue(
            "t",
            TransferRequest::download(origin.url("/objects/t2?size=100")),
        )
        .await
        .expect("enqueue");
    assert_eq!(task.generation(), first_generation + 1);
    again.finished(task.generation()).await.expect("delivered");
    let keys: Vec<String> = ledger::entries(&sessions)
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("gone/"))
        .collect();
    assert_eq!(keys, ["gone/1/0", "gone/1/1", "gone/2/2", "gone/2/3"]);
    sessions.shutdown().await.expect("shutdown");
}
