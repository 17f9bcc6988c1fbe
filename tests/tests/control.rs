//! Running for months, over a real LMDB in a temp dir and the origin on 127.0.0.1:
//! waiting for connectivity without spending attempts; a store that stays small
//! (retention, pruning, forget, session removal); a batch with its own completion while
//! another runs; the replace policy and conflicts that name their fields.

use std::time::Duration;

use session_actor::machine::MachineError;
use session_actor::{
    Delegate, EnqueuePolicy, Error, Outcome, SessionConfig, TaskState, TransferRequest, WaitReason,
};
use session_harness::origin::{Origin, OriginConfig};
use session_tests::ledger::{self, builder, origin, texts, wait_until};

fn config() -> SessionConfig {
    SessionConfig {
        attempts_max: 2,
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 50,
        wait_retry_ms_max: 50,
        delivery_retry_ms_base: 1,
        delivery_retry_ms_max: 20,
        ..SessionConfig::default()
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// With the origin down, a task waits for connectivity (visible as a wait that counts its
/// tries) far past its two attempts without spending them; once the origin is up it
/// succeeds. Without `wait_for_connectivity` the same task fails after its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_for_connectivity_without_spending_attempts() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/objects/later?size=100");
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let session = sessions
        .session("offline", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let handle = session
        .enqueue("later", TransferRequest::download(url.as_str()))
        .await
        .expect("enqueue");
    wait_until("five tries while offline", || async {
        let tasks = session.tasks().expect("tasks");
        tasks[0]
            .wait
            .as_ref()
            .is_some_and(|wait| wait.reason == WaitReason::Connectivity && wait.tries >= 5)
    })
    .await;
    let task = &session.tasks().expect("tasks")[0];
    assert!(
        matches!(
            task.state,
            TaskState::Pending { attempt: 0, .. } | TaskState::Running { attempt: 1 }
        ),
        "no attempt spent: {:?}",
        task.state
    );
    let origin = Origin::start_in_thread(OriginConfig { seed: 11, port }).expect("origin up");
    let outcome = handle.outcome().await.expect("outcome");
    assert!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
    assert!(origin.counters().requests_total >= 1);

    // The same without waiting: two attempts, then a failure.
    let dead_port = free_port();
    let strict = SessionConfig {
        wait_for_connectivity: false,
        ..config()
    };
    let session = sessions
        .session("strict", strict, Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let handle = session
        .enqueue(
            "never",
            TransferRequest::download(format!("http://127.0.0.1:{dead_port}/x")),
        )
        .await
        .expect("enqueue");
    let Outcome::Failed(failure) = handle.outcome().await.expect("outcome") else {
        panic!("fails after its attempts");
    };
    assert_eq!(failure.attempts, 2);
    sessions.shutdown().await.expect("shutdown");
}

/// A finished task is kept for its retention (re-issuing it reconnects to its outcome,
/// no second request), then pruned (re-issuing then runs it again); `forget` drops one
/// at once and refuses an open one; `remove_session` refuses while work is open, then
/// removes the session's records and files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_forget_and_removal_keep_the_store_small() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path())
        .prune_interval(Duration::from_millis(50))
        .open()
        .expect("open");
    let short = SessionConfig {
        retention_s: 1,
        ..config()
    };
    let session = sessions
        .session("kept", short, Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let url = origin.url("/objects/kept?size=10");
    let handle = session
        .enqueue("k", TransferRequest::download(url.as_str()))
        .await
        .expect("enqueue");
    session
        .finished(handle.generation())
        .await
        .expect("delivered");
    // Within retention: a reconnect.
    let again = session
        .enqueue("k", TransferRequest::download(url.as_str()))
        .await
        .expect("reconnect");
    assert!(matches!(
        again.outcome().await.expect("outcome"),
        Outcome::Success(_)
    ));
    assert_eq!(
        origin.counters().requests_total,
        1,
        "not run again within retention"
    );
    // After retention: pruned, and the identifier is free.
    wait_until("the task to be pruned", || async {
        session.tasks().expect("tasks").is_empty()
    })
    .await;
    let rerun = session
        .enqueue("k", TransferRequest::download(url.as_str()))
        .await
        .expect("a new task");
    rerun.outcome().await.expect("outcome");
    assert_eq!(
        origin.counters().requests_total,
        2,
        "after pruning it runs again"
    );
    session
        .finished(rerun.generation())
        .await
        .expect("delivered");

    // Forget: at once for a delivered task; refused for an open one.
    session.forget("k").await.expect("forget");
    assert!(session.tasks().expect("tasks").is_empty());
    let stalled = session
        .enqueue(
            "open",
            TransferRequest::download(origin.url("/objects/open?size=10&fault=stall")),
        )
        .await
        .expect("enqueue");
    assert!(matches!(
        session.forget("open").await,
        Err(Error::Refused {
            source: MachineError::NotForgettable { .. },
            ..
        })
    ));
    assert!(matches!(
        sessions.remove_session("kept").await,
        Err(Error::SessionBusy { .. })
    ));
    stalled.cancel().await.expect("cancel");
    session
        .finished(stalled.generation())
        .await
        .expect("delivered");
    sessions.remove_session("kept").await.expect("removed");
    assert_eq!(
        sessions
            .snapshot()
            .expect("snapshot")
            .session(session.id())
            .expect("read"),
        None
    );
    assert!(!dir.path().join("downloads").join("kept").exists());
    sessions.shutdown().await.expect("shutdown");
}

/// A batch that names its own completion while another batch's generation is running
/// joins that generation: no error, both completions run exactly once, each after every
/// task of its batch was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_its_own_completion_joins_a_running_generation() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let session = sessions
        .session("joins", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    // The first batch drips slowly, so the second arrives while it runs.
    let first = session
        .enqueue_batch(
            vec![(
                "slow".into(),
                TransferRequest::download(origin.url("/objects/slow?size=4000&fault=drip:400:50")),
            )],
            Some((ledger::COMPLETION, b"first".to_vec())),
        )
        .await
        .expect("first batch");
    let second = session
        .enqueue_batch(
            vec![(
                "quick".into(),
                TransferRequest::download(origin.url("/objects/quick?size=10")),
            )],
            Some((ledger::COMPLETION, b"second".to_vec())),
        )
        .await
        .expect("a second batch with its own completion is not refused");
    assert_eq!(second.generation(), first.generation(), "it joined");
    second.finished().await.expect("the generation ends");
    let rows = texts(&sessions, "joins");
    let at = |text: &str| rows.iter().position(|row| row == text);
    let first_done = at("completion first").expect("first completion ran");
    let second_done = at("completion second").expect("second completion ran");
    for task in ["task slow success", "task quick success"] {
        let delivered = at(task).expect("task delivered");
        assert!(
            delivered < first_done && delivered < second_done,
            "{rows:?}"
        );
    }
    assert_eq!(
        rows.iter()
            .filter(|row| row.starts_with("completion"))
            .count(),
        2,
        "{rows:?}"
    );
    // Re-issuing both batches after the fact stores nothing twice.
    for (task, url, payload) in [
        ("slow", "/objects/slow?size=4000&fault=drip:400:50", "first"),
        ("quick", "/objects/quick?size=10", "second"),
    ] {
        session
            .enqueue_batch(
                vec![(task.into(), TransferRequest::download(origin.url(url)))],
                Some((ledger::COMPLETION, payload.as_bytes().to_vec())),
            )
            .await
            .expect("re-issued");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(texts(&sessions, "joins"), rows);
    sessions.shutdown().await.expect("shutdown");
}

/// Keep refuses a different description with a conflict naming the fields that differ;
/// replace cancels the open task (its Cancelled event is delivered), removes its partial
/// file and runs the new description under the same identifier; a cancelled task runs
/// again under replace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_conflicts_that_name_their_fields() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let session = sessions
        .session("control", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let stalled = origin.url("/objects/old?size=3000000&fault=stall:1500000");
    session
        .enqueue("t", TransferRequest::download(stalled.as_str()))
        .await
        .expect("enqueue");
    let replacement = origin.url("/objects/new?size=1234");
    let refused = session
        .enqueue("t", TransferRequest::download(replacement.as_str()))
        .await;
    match refused {
        Err(Error::Refused {
            source: MachineError::TaskConflict { fields, .. },
            ..
        }) => assert_eq!(fields, ["url"]),
        other => panic!("a conflict naming the url: {other:?}"),
    }
    let downloads = dir.path().join("downloads").join("control");
    wait_until("the old download's partial file", || async {
        std::fs::read_dir(&downloads)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().ends_with(".part"))
    })
    .await;
    let new = session
        .enqueue_with(
            "t",
            TransferRequest::download(replacement.as_str()),
            EnqueuePolicy::Replace,
        )
        .await
        .expect("replaced");
    let Outcome::Success(response) = new.outcome().await.expect("outcome") else {
        panic!("the new description succeeds");
    };
    assert_eq!(response.bytes, 1234);
    session.finished(new.generation()).await.expect("delivered");
    let rows = texts(&sessions, "control");
    assert!(rows.contains(&"task t cancelled".to_owned()), "{rows:?}");
    assert!(rows.contains(&"task t success".to_owned()), "{rows:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&downloads)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "no partial or delivered file left: {leftovers:?}"
    );

    // A cancelled task runs again under replace, even with the same description.
    let same = origin.url("/objects/c?size=10&fault=stall&times=1");
    let cancelled = session
        .enqueue("c", TransferRequest::download(same.as_str()))
        .await
        .expect("enqueue");
    wait_until("the stalled request", || async {
        origin
            .counters()
            .requests_by_url
            .get("/objects/c?size=10&fault=stall&times=1")
            .is_some_and(|n| *n >= 1)
    })
    .await;
    cancelled.cancel().await.expect("cancel");
    assert!(matches!(
        cancelled.outcome().await.expect("outcome"),
        Outcome::Cancelled
    ));
    let again = session
        .enqueue_with(
            "c",
            TransferRequest::download(same.as_str()),
            EnqueuePolicy::Replace,
        )
        .await
        .expect("runs again");
    assert!(matches!(
        again.outcome().await.expect("outcome"),
        Outcome::Success(_)
    ));
    sessions.shutdown().await.expect("shutdown");
}
