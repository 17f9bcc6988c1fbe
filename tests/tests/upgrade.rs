//! A root written by the previous release opens in this one and carries on: its tasks'
//! transfer descriptions (unversioned bincode then) decode, re-issuing a known task with
//! the same description reconnects instead of conflicting, and its undelivered events and
//! stored completion are delivered exactly once. The store is the fixture
//! `tests/fixtures/store-v1/data.mdb`, written by that release.

use std::path::Path;

use session_actor::{
    AppTable, CompletionCall, Delegate, DelegateError, Delivery, EngineConfig, Event, Outcome,
    SessionConfig, Sessions, TaskState, TransferRequest, WriteScope,
};

const LEDGER: &str = "upgrade-ledger";

fn ledger() -> AppTable<String> {
    AppTable::named(LEDGER).expect("a valid name")
}

fn record(delivery: &Delivery, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let text = match &delivery.event {
        Event::TaskCompleted { task, outcome, .. } => format!("{task} {}", outcome.name()),
        Event::DidFinishEvents => "did finish".to_owned(),
    };
    let key = delivery.key.to_string();
    if ledger().get(scope, &key)?.is_some() {
        return Err(DelegateError::new(format!("{key} twice")));
    }
    ledger().put(scope, key, &text)?;
    Ok(())
}

fn complete(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let text = format!("completion {}", String::from_utf8_lossy(&call.payload));
    ledger().put(scope, call.key.to_string(), &text)?;
    Ok(())
}

fn root_with_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1/data.mdb");
    std::fs::copy(fixture, dir.path().join("data.mdb")).expect("copy the fixture");
    dir
}

fn open(dir: &Path) -> Sessions {
    Sessions::builder(dir)
        .engine_config(EngineConfig {
            proxy_from_environment: false,
            ..EngineConfig::default()
        })
        .app_table(LEDGER)
        .completion("done", complete)
        .open()
        .expect("the previous release's store opens")
}

fn entries(sessions: &Sessions) -> Vec<(String, String)> {
    ledger()
        .entries(&sessions.snapshot().expect("snapshot"))
        .expect("entries")
        .into_iter()
        .map(|(key, text)| (String::from_utf8_lossy(&key).into_owned(), text))
        .collect()
}

/// The previous release's tasks decode (credentials stay out of `Debug`), and re-issuing
/// one with the same description reconnects to its outcome.
#[test]
fn old_tasks_decode_and_reconnect() {
    let dir = root_with_fixture();
    let sessions = open(dir.path());
    session_actor::block_on(async {
        let alpha = sessions
            .session(
                "alpha",
                SessionConfig::default(),
                Delegate::transactional(record),
            )
            .await
            .expect("session");
        let tasks = alpha.tasks().expect("every stored description decodes");
        assert_eq!(tasks.len(), 6);
        assert_eq!(tasks[0].request.url, "http://127.0.0.1:9/a1?token=s3cret");
        let shown = format!("{:?}", tasks[0].request);
        assert!(
            !shown.contains("s3cret") && !shown.contains("Bearer tok"),
            "{shown}"
        );

        // The very request the previous release stored for a1, issued again.
        let a1 = TransferRequest::download("http://127.0.0.1:9/a1?token=s3cret")
            .with_header("Authorization", "Bearer tok")
            .with_expected_bytes(4096);
        let handle = alpha
            .enqueue("a1", a1)
            .await
            .expect("a reconnect, not a conflict");
        let Outcome::Success(response) = handle.outcome().await.expect("its outcome") else {
            panic!("a1 ended in success");
        };
        assert_eq!(response.file.as_deref(), Some("a1"));
        assert!(matches!(
            handle.state().expect("state"),
            TaskState::Completed { .. }
        ));
        // A different description under a known identifier is still a conflict.
        let other = TransferRequest::download("http://127.0.0.1:9/other");
        assert!(alpha.enqueue("a1", other).await.is_err());
        sessions.shutdown().await.expect("shutdown");
    });
}

/// The previous release's undelivered events are delivered once, in order, with its
/// stored completion; a session that awaited events finishes.
#[test]
fn old_events_and_completion_are_delivered_once() {
    let dir = root_with_fixture();
    let sessions = open(dir.path());
    session_actor::block_on(async {
        let gamma = sessions
            .session(
                "gamma",
                SessionConfig::default(),
                Delegate::transactional(record),
            )
            .await
            .expect("session");
        gamma.finished(1).await.expect("gamma's generation ends");
        let alpha = sessions
            .session(
                "alpha",
                SessionConfig::default(),
                Delegate::transactional(record),
            )
            .await
            .expect("session");
        // Generation 1 of alpha had only its completion left to deliver.
        alpha
            .finished(1)
            .await
            .expect("alpha's first generation ends");
        let seen = entries(&sessions);
        assert!(
            seen.contains(&("gamma/1/0".into(), "g1 success".into())),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("gamma/1/1".into(), "did finish".into())),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("alpha/1/3".into(), "completion p1".into())),
            "{seen:?}"
        );
        sessions.shutdown().await.expect("shutdown");
    });
    // Again: nothing is delivered twice.
    let sessions = open(dir.path());
    let before = entries(&sessions);
    session_actor::block_on(async {
        let gamma = sessions
            .session(
                "gamma",
                SessionConfig::default(),
                Delegate::transactional(record),
            )
            .await
            .expect("session");
        gamma.finished(1).await.expect("already ended");
        sessions.shutdown().await.expect("shutdown");
    });
    let sessions = open(dir.path());
    assert_eq!(entries(&sessions), before);
    session_actor::block_on(sessions.shutdown()).expect("shutdown");
}
