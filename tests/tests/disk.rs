//! A full disk does not wedge the service, on a small tmpfs mounted by each test (tests
//! run as root; where mounting is not allowed each prints one SKIP line, and CI makes
//! that a failure): a download that does not fit waits, visibly, without spending an
//! attempt, while other sessions go on, and completes once space returns; and
//! `Sessions::open` on a full file system succeeds, shows the state, and the session
//! goes on by itself once space returns.

use std::path::Path;

use session_actor::{
    Delegate, EngineConfig, Outcome, SessionConfig, TaskState, TransferRequest, WaitReason,
};
use session_tests::ledger::{self, builder, origin, wait_until};
use session_tests::tmpfs::mount_tmpfs;

const MIB: u64 = 1024 * 1024;

fn config() -> SessionConfig {
    SessionConfig {
        attempts_max: 2,
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 50,
        wait_retry_ms_max: 50,
        ..SessionConfig::default()
    }
}

fn engine(reserve_bytes: u64) -> EngineConfig {
    EngineConfig {
        proxy_from_environment: false,
        disk_reserve_bytes: reserve_bytes,
        ..EngineConfig::default()
    }
}

/// Writes `bytes` of zeros into `path` (or as much as fits).
fn fill(path: &Path, bytes: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; MIB as usize];
    let mut written = 0;
    while written < bytes {
        match file.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
}

/// A download larger than the free space minus the reserve waits for storage (no
/// attempt spent, no byte written) while another session's downloads complete; once a
/// filler file is removed it completes, byte-exact in length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_does_not_fit_waits_and_others_go_on() {
    let Some(disk) = mount_tmpfs(
        "a_download_that_does_not_fit_waits_and_others_go_on",
        32 * MIB,
    ) else {
        return;
    };
    let origin = origin();
    let root = disk.path().join("root");
    let filler = disk.path().join("filler");
    fill(&filler, 20 * MIB);
    let sessions = builder(&root)
        .engine_config(engine(4 * MIB))
        .open()
        .expect("open");
    let big = sessions
        .session("big", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let size = 10 * MIB;
    let handle = big
        .enqueue(
            "large",
            TransferRequest::download(origin.url(&format!("/objects/large?size={size}")))
                .with_expected_bytes(size),
        )
        .await
        .expect("enqueue");
    wait_until("the download to wait for storage", || async {
        big.tasks().expect("tasks")[0]
            .wait
            .as_ref()
            .is_some_and(|wait| wait.reason == WaitReason::Storage && wait.tries >= 3)
    })
    .await;
    assert!(matches!(
        big.tasks().expect("tasks")[0].state,
        TaskState::Pending { attempt: 0, .. } | TaskState::Running { attempt: 1 }
    ));
    // Another session is unharmed.
    let small = sessions
        .session("small", config(), Delegate::transactional(ledger::record))
        .await
        .expect("session");
    let tasks = (0..5)
        .map(|i| {
            let url = origin.url(&format!("/objects/small{i}?size=100000"));
            (format!("s{i}"), TransferRequest::download(url))
        })
        .collect();
    let batch = small.enqueue_batch(tasks, None).await.expect("enqueue");
    batch.finished().await.expect("the small session finishes");
    assert_eq!(ledger::texts(&sessions, "small").len(), 6);
    assert_eq!(
        origin.counters().requests_by_object.get("large"),
        None,
        "nothing was fetched for the download that does not fit"
    );
    // Space returns.
    std::fs::remove_file(&filler).expect("remove the filler");
    let Outcome::Success(response) = handle.outcome().await.expect("outcome") else {
        panic!("the download completes once it fits");
    };
    assert_eq!(response.bytes, size);
    sessions.shutdown().await.expect("shutdown");
}

/// With the file system full, `Sessions::open` still succeeds; the session shows that
/// its writes are refused for a full disk, and once space returns it goes on by itself:
/// its interrupted transfer resumes and is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_on_a_full_file_system_succeeds_and_goes_on_when_space_returns() {
    let Some(disk) = mount_tmpfs(
        "open_on_a_full_file_system_succeeds_and_goes_on_when_space_returns",
        16 * MIB,
    ) else {
        return;
    };
    let origin = origin();
    let root = disk.path().join("root");
    // The first request stalls, so the task is running when the first launch ends.
    let url = origin.url("/objects/later?size=1000&fault=stall&times=1");
    {
        let sessions = builder(&root)
            .engine_config(engine(0))
            .open()
            .expect("open");
        let session = sessions
            .session("full", config(), Delegate::transactional(ledger::record))
            .await
            .expect("session");
        session
            .enqueue("t", TransferRequest::download(url.as_str()))
            .await
            .expect("enqueue");
        wait_until("the stalled request", || async {
            origin.counters().requests_total >= 1
        })
        .await;
        sessions.shutdown().await.expect("shutdown");
    }
    let filler = disk.path().join("filler");
    fill(&filler, 16 * MIB);

    let sessions = builder(&root)
        .engine_config(engine(0))
        .open()
        .expect("open succeeds on a full file system");
    let waiting = sessions.take_waiting(&session_actor::Matching::Exact("full".into()));
    assert_eq!(waiting.len(), 1, "recovered and waiting");
    wait_until("the full disk to show", || async {
        sessions.storage_full_since_ms().is_some()
    })
    .await;
    let session = sessions
        .session("full", config(), Delegate::transactional(ledger::record))
        .await;
    // Opening the session writes its configuration: refused for a full disk, typed.
    if let Err(error) = &session {
        assert!(
            matches!(error, session_actor::Error::Store(store) if store.kind() == session_actor::store::ErrorKind::Full),
            "{error}"
        );
    }
    std::fs::remove_file(&filler).expect("space returns");
    let session = match session {
        Ok(session) => session,
        Err(_) => sessions
            .session("full", config(), Delegate::transactional(ledger::record))
            .await
            .expect("the session opens once there is room"),
    };
    let handle = session.task("t").expect("the task is stored");
    assert!(matches!(
        handle.outcome().await.expect("outcome"),
        Outcome::Success(_)
    ));
    session.finished(1).await.expect("delivered");
    assert_eq!(
        sessions.storage_full_since_ms(),
        None,
        "the disk has room again"
    );
    assert_eq!(
        ledger::texts(&sessions, "full"),
        ["task t success", "did finish"]
    );
    sessions.shutdown().await.expect("shutdown");
}
