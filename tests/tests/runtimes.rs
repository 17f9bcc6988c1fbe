//! `Sessions` works whatever runs the caller: the same scenario (open, enqueue a batch
//! with a completion, await the generation's end, check the deliveries, shut down,
//! reopen at once) driven from a multi-threaded tokio runtime (inside a spawned task, so
//! its futures must be `Send`), a current-thread tokio runtime, a plain synchronous
//! caller with the crate's `block_on`, and an actix System; over a real LMDB in a temp
//! dir and the origin on 127.0.0.1.

use std::path::Path;

use serde::{Deserialize, Serialize};
use session_actor::{
    AppTable, CompletionCall, Delegate, DelegateError, Delivery, EngineConfig, Error, Event,
    SessionConfig, SessionState, Sessions, SessionsBuilder, TransferRequest, WriteScope,
};
use session_harness::origin::{Origin, OriginConfig, OriginHandle};

const LEDGER: &str = "ledger";
const FILES: usize = 3;

/// What the delegate and the completion record, keyed by delivery key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Entry {
    Task { task: String, bytes: u64 },
    DidFinish,
    Completion { payload: Vec<u8> },
}

fn ledger() -> AppTable<Entry> {
    AppTable::named(LEDGER).expect("a valid table name")
}

fn record(delivery: &Delivery, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let entry = match &delivery.event {
        Event::TaskCompleted { task, file, .. } => {
            let file = file
                .as_ref()
                .ok_or_else(|| DelegateError::new("a download without its file"))?;
            Entry::Task {
                task: task.to_string(),
                bytes: std::fs::metadata(file.path())?.len(),
            }
        }
        Event::DidFinishEvents => Entry::DidFinish,
    };
    let key = delivery.key.to_string();
    if ledger().get(scope, &key)?.is_some() {
        return Err(DelegateError::new(format!("{key} delivered twice")));
    }
    ledger().put(scope, key, &entry)?;
    Ok(())
}

fn complete(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let entry = Entry::Completion {
        payload: call.payload.clone(),
    };
    ledger().put(scope, call.key.to_string(), &entry)?;
    Ok(())
}

fn builder(dir: &Path) -> SessionsBuilder {
    Sessions::builder(dir)
        .engine_config(EngineConfig {
            proxy_from_environment: false,
            ..EngineConfig::default()
        })
        .app_table(LEDGER)
        .completion("all-done", complete)
}

fn origin() -> OriginHandle {
    Origin::start_in_thread(OriginConfig { seed: 3, port: 0 }).expect("origin")
}

/// The scenario every runtime drives.
async fn scenario(dir: std::path::PathBuf, origin: String) {
    let sessions = builder(&dir).open().expect("open");
    let session = sessions
        .session(
            "photos",
            SessionConfig::default(),
            Delegate::transactional(record),
        )
        .await
        .expect("session");
    let batch = (0..FILES)
        .map(|i| {
            let url = format!("{origin}/objects/file{i}?size={}", 1000 + i);
            (format!("file{i}"), TransferRequest::download(url))
        })
        .collect();
    let batch = session
        .enqueue_batch(batch, Some(("all-done", b"photos".to_vec())))
        .await
        .expect("enqueue");
    batch.finished().await.expect("the generation ends");

    let snapshot = sessions.snapshot().expect("snapshot");
    let entries = ledger().entries(&snapshot).expect("ledger");
    drop(snapshot);
    // In delivery order, which is completion order: sort by task.
    let mut tasks: Vec<_> = entries
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Task { .. }))
        .collect();
    tasks.sort_by_key(|(_, e)| format!("{e:?}"));
    assert_eq!(tasks.len(), FILES, "one entry per task: {entries:?}");
    for (index, (_, entry)) in tasks.iter().enumerate() {
        assert_eq!(
            entry,
            &Entry::Task {
                task: format!("file{index}"),
                bytes: 1000 + index as u64
            }
        );
    }
    assert_eq!(
        entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::DidFinish))
            .count(),
        1
    );
    assert_eq!(
        entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Completion { payload } if payload == b"photos"))
            .count(),
        1
    );
    let handle = &batch.tasks()[0];
    assert!(handle.state().expect("state").is_terminal());
    sessions.shutdown().await.expect("shutdown");
    assert!(matches!(session.tasks(), Err(Error::ShutDown)));
    assert!(matches!(
        session
            .enqueue(
                "late",
                TransferRequest::download(format!("{origin}/objects/x"))
            )
            .await,
        Err(Error::ShutDown)
    ));

    // The directory is released: a new open succeeds at once and finds the session done.
    let again = builder(&dir).open().expect("reopen right after shutdown");
    let record = again
        .snapshot()
        .expect("snapshot")
        .session(session.id())
        .expect("read")
        .expect("the session is kept");
    assert_eq!(record.state, SessionState::Finished);
    assert_eq!(record.generation, 1);
    again.shutdown().await.expect("second shutdown");
}

/// From a multi-threaded tokio runtime, inside `tokio::spawn` (the scenario's futures
/// are `Send`, or this would not compile).
#[test]
fn from_a_multi_threaded_tokio_runtime() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let task = runtime.spawn(scenario(dir.path().to_path_buf(), origin.url("")));
    runtime.block_on(task).expect("the scenario task");
}

/// From a current-thread tokio runtime (`#[tokio::main(flavor = "current_thread")]`).
#[test]
fn from_a_current_thread_tokio_runtime() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(scenario(dir.path().to_path_buf(), origin.url("")));
}

/// From a plain synchronous caller, with no runtime at all.
#[test]
fn from_a_synchronous_caller() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    session_actor::block_on(scenario(dir.path().to_path_buf(), origin.url("")));
}

/// From inside an actix System of the caller's own.
#[test]
fn from_an_actix_system() {
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    actix::System::new().block_on(scenario(dir.path().to_path_buf(), origin.url("")));
}

/// Dropping the last handle shuts down without waiting, and opening the same directory
/// right after succeeds (it waits for the background close instead of `Locked`).
#[test]
fn dropping_the_last_handle_releases_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..5 {
        let sessions = builder(dir.path()).open().expect("open");
        let session = session_actor::block_on(sessions.session(
            "s",
            SessionConfig::default(),
            Delegate::transactional(record),
        ))
        .expect("session");
        drop(sessions);
        // A `Session` keeps everything alive until it goes too.
        assert!(session.tasks().is_ok());
        drop(session);
    }
}

/// A delegate cannot shut its own `Sessions` down (the actor thread would wait for
/// itself): a typed error, never a hang.
#[test]
fn shutdown_from_inside_an_async_delegate_is_refused() {
    use std::sync::{Arc, Mutex};

    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let seen: Arc<Mutex<Option<Result<(), Error>>>> = Arc::default();

    struct ShutsDown {
        sessions: Mutex<Option<Sessions>>,
        seen: Arc<Mutex<Option<Result<(), Error>>>>,
    }
    impl session_actor::AsyncDelegate for ShutsDown {
        fn deliver(
            &self,
            _: Delivery,
        ) -> futures_util::future::BoxFuture<'static, Result<(), DelegateError>> {
            // The first event tries; the ones after it (did finish events) just land.
            let sessions = self.sessions.lock().expect("lock").take();
            let seen = Arc::clone(&self.seen);
            Box::pin(async move {
                if let Some(sessions) = sessions {
                    let result = sessions.shutdown().await;
                    *seen.lock().expect("lock") = Some(result);
                }
                Ok(())
            })
        }
    }
    let delegate = ShutsDown {
        sessions: Mutex::new(Some(sessions.clone())),
        seen: Arc::clone(&seen),
    };
    session_actor::block_on(async {
        let session = sessions
            .session(
                "inside",
                SessionConfig::default(),
                Delegate::at_least_once(delegate),
            )
            .await
            .expect("session");
        let handle = session
            .enqueue(
                "t",
                TransferRequest::download(origin.url("/objects/t?size=10")),
            )
            .await
            .expect("enqueue");
        handle.outcome().await.expect("outcome");
        session
            .finished(handle.generation())
            .await
            .expect("generation ends");
    });
    let result = seen.lock().expect("lock").take();
    assert!(
        matches!(result, Some(Err(Error::Unsupported { .. }))),
        "{result:?}"
    );
    assert!(sessions.is_open());
    session_actor::block_on(sessions.shutdown()).expect("shutdown from outside");
}

/// Records keep a download's file name, not its path: a root directory whose name is not
/// UTF-8 works, and a root moved between launches still delivers its waiting downloads
/// from the new place.
#[test]
fn the_root_may_be_non_utf8_and_may_move() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let origin = origin();
    let parent = tempfile::tempdir().expect("tempdir");
    let first = parent.path().join(OsStr::from_bytes(b"root-\xff\xfe"));
    let url = origin.url("/objects/moved?size=4321");
    session_actor::block_on(async {
        // No delegate yet: the result waits in the outbox with its file.
        let sessions = builder(&first).open().expect("a non-UTF-8 root opens");
        let session = sessions
            .session(
                "s",
                SessionConfig::default(),
                Delegate::transactional(|_: &Delivery, _: &mut WriteScope<'_>| {
                    Err(DelegateError::new("not yet"))
                }),
            )
            .await
            .expect("session");
        let handle = session
            .enqueue("moved", TransferRequest::download(url.as_str()))
            .await
            .expect("enqueue");
        let session_actor::Outcome::Success(response) = handle.outcome().await.expect("outcome")
        else {
            panic!("the download succeeds");
        };
        assert_eq!(
            response.file.as_deref(),
            Some("moved"),
            "a name, not a path"
        );
        sessions.shutdown().await.expect("shutdown");
    });
    let second = parent.path().join("moved-root");
    std::fs::rename(&first, &second).expect("move the root");
    session_actor::block_on(async {
        let sessions = builder(&second).open().expect("the moved root opens");
        let session = sessions
            .session(
                "s",
                SessionConfig::default(),
                Delegate::transactional(record),
            )
            .await
            .expect("session");
        session
            .finished(1)
            .await
            .expect("delivered from the new place");
        let entries = ledger()
            .entries(&sessions.snapshot().expect("snapshot"))
            .expect("ledger");
        assert!(
            entries.iter().any(|(_, e)| *e
                == Entry::Task {
                    task: "moved".into(),
                    bytes: 4321
                }),
            "{entries:?}"
        );
        sessions.shutdown().await.expect("shutdown");
    });
}
