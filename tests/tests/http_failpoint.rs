//! The engine's fail points `http-download-after-fsync` and `http-shared-flush-error`, in
//! their own test binary because fail point configuration is global to the process.
//! session-tests builds with fail points on (session-harness enables them by default).

use std::time::Duration;

use session_harness::origin::{self, Origin, OriginConfig};
use session_http::{Classified, Engine, EngineConfig, RetryReason, Target, TransferRequest};

/// The origin on 127.0.0.1, a download directory, and an engine that talks to loopback
/// only.
async fn setup() -> (Origin, tempfile::TempDir, Engine) {
    let origin = Origin::bind(OriginConfig { seed: 9, port: 0 })
        .await
        .expect("the origin binds");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::new(EngineConfig {
        read_idle_timeout: Duration::from_secs(5),
        proxy_from_environment: false,
        ..EngineConfig::default()
    })
    .expect("engine");
    (origin, dir, engine)
}

/// A result lost right after the fsync and rename (the fail point returns instead of the
/// success, as a crash there would lose it) is recovered by the next attempt from the
/// file on disk, without another request and with the exact bytes.
#[tokio::test]
async fn result_lost_after_rename_is_recovered_without_a_request() {
    let scenario = fail::FailScenario::setup();
    let (origin, dir, engine) = setup().await;
    let size = 200_000;
    let request = TransferRequest::download(origin.url(&format!("/objects/fp?size={size}")))
        .with_sha256(origin::sha256(9, "fp", size));
    let target = Target {
        download_dir: dir.path().to_owned(),
        name: "fp".to_owned(),
        idempotency_key: None,
    };

    fail::cfg(session_http::FAIL_POINT_DOWNLOAD_AFTER_FSYNC, "1*return").expect("configure");
    let lost = engine.run(&request, &target, None).await;
    assert!(
        matches!(
            lost,
            Classified::Retry {
                reason: RetryReason::Transport,
                ..
            }
        ),
        "the fail point must be compiled in and hit: {lost:?}"
    );
    let (part, complete) = session_http::download_paths(dir.path(), "fp");
    assert!(
        complete.exists() && !part.exists(),
        "the rename happened before the fail point"
    );

    let recovered = engine.run(&request, &target, None).await;
    let Classified::Success(response) = recovered else {
        panic!("expected success, got {recovered:?}");
    };
    assert_eq!(response.file.as_deref(), Some(complete.as_path()));
    assert_eq!(origin.counters().requests_for("fp"), 1);
    scenario.teardown();
}

/// The shared flush that makes small files' bytes and every rename durable reports any
/// writeback error on the file system, another program's too. When it fails, a download
/// falls back to its own fsyncs (the file's, through the descriptor it was written with,
/// and the directory's) and succeeds with the exact bytes: a stranger's error does not
/// fail it.
#[tokio::test]
async fn a_failed_shared_flush_falls_back_to_the_downloads_own_fsyncs() {
    let scenario = fail::FailScenario::setup();
    let (origin, dir, engine) = setup().await;
    fail::cfg("http-shared-flush-error", "return").expect("configure");
    // A small file (its bytes take the shared flush) and a large one (its own fsync,
    // the shared flush for its rename only).
    for (name, size) in [("small", 200_003u64), ("large", 2 * 1024 * 1024 + 5)] {
        let request =
            TransferRequest::download(origin.url(&format!("/objects/{name}?size={size}")))
                .with_sha256(origin::sha256(9, name, size));
        let target = Target {
            download_dir: dir.path().to_owned(),
            name: name.to_owned(),
            idempotency_key: None,
        };
        let outcome = engine.run(&request, &target, None).await;
        let Classified::Success(response) = outcome else {
            panic!("{name}: expected success despite the failed shared flush, got {outcome:?}");
        };
        let (_, complete) = session_http::download_paths(dir.path(), name);
        assert_eq!(response.file.as_deref(), Some(complete.as_path()));
        assert_eq!(
            std::fs::metadata(&complete).expect("the file").len(),
            size,
            "{name}"
        );
    }
    fail::remove("http-shared-flush-error");
    scenario.teardown();
}
