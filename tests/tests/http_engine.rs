//! The transfer engine (`session-http`) against the fault-injecting origin on 127.0.0.1:
//! every fault program ends in the right classification, resumes fetch only what is
//! missing, and finished files are exactly the origin's bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use session_harness::origin::{self, Origin, OriginConfig, SeenRequest};
use session_http::{
    Body, Classified, Engine, EngineConfig, FailReason, Method, Mismatch, Progress, Response,
    RetryAfter, RetryReason, Target, TransferRequest, download_paths, download_validator_path,
};
use sha2::{Digest, Sha256};

const SEED: u64 = 0x5eed;

/// Short timeouts keep the idle-timeout tests fast; loopback needs no more.
fn config() -> EngineConfig {
    EngineConfig {
        connect_timeout: Duration::from_secs(5),
        read_idle_timeout: Duration::from_millis(300),
        // Never let an environment proxy see test traffic.
        proxy_from_environment: false,
        ..EngineConfig::default()
    }
}

fn engine() -> Engine {
    Engine::new(config()).expect("the engine builds")
}

async fn start_origin() -> Origin {
    Origin::bind(OriginConfig {
        seed: SEED,
        port: 0,
    })
    .await
    .expect("the origin binds 127.0.0.1")
}

fn target(dir: &Path, name: &str) -> Target {
    Target {
        download_dir: dir.to_owned(),
        name: name.to_owned(),
        idempotency_key: None,
    }
}

fn file_sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("the file is readable");
    Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn success(outcome: Classified) -> Response {
    match outcome {
        Classified::Success(response) => response,
        other => panic!("expected success, got {other:?}"),
    }
}

fn retry_reason(outcome: &Classified) -> (RetryReason, Option<RetryAfter>) {
    match outcome {
        Classified::Retry {
            reason,
            retry_after,
            ..
        } => (*reason, *retry_after),
        other => panic!("expected retry, got {other:?}"),
    }
}

fn fail_reason(outcome: &Classified) -> FailReason {
    match outcome {
        Classified::Failed { reason, .. } => reason.clone(),
        other => panic!("expected failure, got {other:?}"),
    }
}

/// Checks that the download of `name` finished at its final path with exactly the
/// origin's bytes, and that no partial file or validator is left.
fn assert_exact(response: &Response, dir: &Path, name: &str, object: &str, size: u64) -> PathBuf {
    let (part, complete) = download_paths(dir, name);
    assert_eq!(response.file.as_deref(), Some(complete.as_path()));
    assert_eq!(response.bytes, size);
    assert_eq!(
        file_sha256(&complete),
        origin::sha256(SEED, object, size),
        "the file differs from the origin's object"
    );
    assert!(!part.exists(), "the .part is left behind");
    assert!(
        !download_validator_path(dir, name).exists(),
        "the validator is left behind"
    );
    complete
}

/// A plain download streams to the final path with the origin's exact bytes, reports
/// progress to the end, sends `Accept-Encoding: identity`, and verifies a given SHA-256.
#[tokio::test]
async fn download_is_exact_and_verified() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 3 * 1024 * 1024 + 17;
    let url = origin.url(&format!("/objects/plain?size={size}"));
    let request = TransferRequest::download(&url)
        .with_sha256(origin::sha256(SEED, "plain", size))
        .with_expected_bytes(size);
    let (progress, watch) = tokio::sync::watch::channel(Progress::default());
    let outcome = engine()
        .run(&request, &target(dir.path(), "plain"), Some(&progress))
        .await;
    let response = success(outcome);
    assert_eq!(response.status, 200);
    assert_exact(&response, dir.path(), "plain", "plain", size);
    assert_eq!(
        *watch.borrow(),
        Progress {
            bytes_done: size,
            bytes_expected: Some(size)
        }
    );

    let echo = TransferRequest::data(Method::Get, origin.url("/echo"));
    let echoed = success(engine().run(&echo, &target(dir.path(), "echo"), None).await);
    let text = String::from_utf8_lossy(&echoed.body).into_owned();
    assert!(text.contains("accept-encoding: identity"), "{text}");
}

/// After a reset mid-body, the next attempt asks only for the missing bytes (Range from
/// the .part length, checked against the ranges and byte counts the origin served) and
/// the final file is exact.
#[tokio::test]
async fn reset_resumes_with_only_the_missing_bytes() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 4 * 1024 * 1024;
    let reset_after: u64 = 1_500_000;
    let url = origin.url(&format!(
        "/objects/resumed?size={size}&fault=reset:{reset_after}"
    ));
    let request = TransferRequest::download(&url);
    let target = target(dir.path(), "resumed");
    let engine = engine();

    let first = engine.run(&request, &target, None).await;
    assert_eq!(retry_reason(&first).0, RetryReason::Reset, "{first:?}");
    let (part, _) = download_paths(dir.path(), "resumed");
    let kept = std::fs::metadata(&part).expect("the .part is kept").len();
    assert!(kept > 0 && kept <= reset_after, "kept {kept} bytes");

    let second = success(engine.run(&request, &target, None).await);
    assert_eq!(second.status, 206);
    assert_exact(&second, dir.path(), "resumed", "resumed", size);

    let counters = origin.counters();
    let ranges = counters.ranges_for("resumed");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!((ranges[0].status, ranges[0].start), (200, 0));
    assert_eq!(
        (ranges[1].status, ranges[1].start, ranges[1].end),
        (206, kept, size)
    );
    let served = counters.body_bytes_for("resumed");
    assert_eq!(served, reset_after + (size - kept));
    assert!(served <= size + reset_after);
}

/// A download far larger than the write-back windows (8 MiB, four queued before the
/// writer waits), reset at an offset that is no multiple of anything and resumed, ends
/// exact and verified by SHA-256: streaming write-back from a resumed offset neither
/// skips nor rewrites bytes.
#[tokio::test]
async fn large_resumed_download_is_exact() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 72 * 1024 * 1024 + 4093;
    let reset_after: u64 = 21 * 1024 * 1024 + 333;
    let url = origin.url(&format!(
        "/objects/large?size={size}&fault=reset:{reset_after}"
    ));
    let request = TransferRequest::download(&url).with_sha256(origin::sha256(SEED, "large", size));
    let target = target(dir.path(), "large");
    let engine = engine();

    let first = engine.run(&request, &target, None).await;
    assert_eq!(retry_reason(&first).0, RetryReason::Reset, "{first:?}");
    let (part, _) = download_paths(dir.path(), "large");
    let kept = std::fs::metadata(&part).expect("the .part is kept").len();
    assert!(
        kept > 8 * 1024 * 1024 && kept <= reset_after,
        "kept {kept} bytes"
    );

    let second = success(engine.run(&request, &target, None).await);
    assert_eq!(second.status, 206);
    assert_exact(&second, dir.path(), "large", "large", size);
    assert_eq!(
        origin.counters().body_bytes_for("large"),
        reset_after + (size - kept)
    );
}

/// A slow download abandoned mid-body (the process dies; here the attempt's future is
/// dropped) keeps what it received in its `.part`, not only whole 1 MiB blocks: blocks
/// are also written once they are 250 ms old, so the next attempt resumes from there.
#[tokio::test]
async fn slow_download_cut_off_keeps_its_bytes() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 400_000;
    // 16 KiB every 40 ms: about 1 s for the whole object, far less than one block.
    let url = origin.url(&format!("/objects/slow?size={size}&fault=drip:16384:40"));
    let request = TransferRequest::download(&url);
    let target = target(dir.path(), "slow");
    let engine = engine();
    let (part, _) = download_paths(dir.path(), "slow");
    let cut = tokio::time::timeout(Duration::from_secs(30), async {
        // Give up on the attempt once some bytes are on disk (the first block is written
        // 250 ms after its first byte), well before the body ends.
        let attempt = engine.run(&request, &target, None);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                outcome = &mut attempt => return Some(outcome),
                () = tokio::time::sleep(Duration::from_millis(10)) => {
                    if std::fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
                        return None;
                    }
                }
            }
        }
    })
    .await
    .expect("bytes reach the disk in time");
    assert!(
        cut.is_none(),
        "the attempt was cut before it ended: {cut:?}"
    );
    let kept = std::fs::metadata(&part).expect("the .part exists").len();
    assert!(kept > 0 && kept < size, "kept {kept} bytes");

    let second = success(engine.run(&request, &target, None).await);
    assert_eq!(second.status, 206);
    assert_exact(&second, dir.path(), "slow", "slow", size);
    let ranges = origin.counters().ranges_for("slow").to_vec();
    assert_eq!(
        (ranges[1].status, ranges[1].start),
        (206, kept),
        "{ranges:?}"
    );
}

/// When the object's ETag changes between attempts, the origin ignores the stale
/// If-Range and sends 200, and the engine restarts from zero and still ends exact.
#[tokio::test]
async fn changed_etag_restarts_from_zero() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 2 * 1024 * 1024;
    let url = origin.url(&format!(
        "/objects/changing?size={size}&fault=reset:700000&etag=per-request"
    ));
    let request = TransferRequest::download(&url);
    let target = target(dir.path(), "changing");
    let engine = engine();

    let first = engine.run(&request, &target, None).await;
    assert_eq!(retry_reason(&first).0, RetryReason::Reset, "{first:?}");
    let second = success(engine.run(&request, &target, None).await);
    assert_eq!(second.status, 200);
    assert_exact(&second, dir.path(), "changing", "changing", size);
    let counters = origin.counters();
    let ranges = counters.ranges_for("changing");
    assert_eq!(ranges.len(), 2);
    assert_eq!((ranges[1].status, ranges[1].start), (200, 0), "{ranges:?}");
}

/// A server that ignores ranges (200 instead of 206) makes the engine truncate and
/// restart, still ending exact.
#[tokio::test]
async fn ignored_range_restarts_from_zero() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 1024 * 1024 + 3;
    let url = origin.url(&format!(
        "/objects/norange?size={size}&fault=reset:300000&ranges=ignore"
    ));
    let request = TransferRequest::download(&url);
    let target = target(dir.path(), "norange");
    let engine = engine();
    let first = engine.run(&request, &target, None).await;
    assert_eq!(retry_reason(&first).0, RetryReason::Reset);
    let second = success(engine.run(&request, &target, None).await);
    assert_eq!(second.status, 200);
    assert_exact(&second, dir.path(), "norange", "norange", size);
}

/// A Content-Length that claims more than is sent is a truncated body (retry, bytes
/// kept), and the next attempt resumes and ends exact.
#[tokio::test]
async fn lying_length_is_a_truncated_body() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 100_000;
    let url = origin.url(&format!("/objects/liar?size={size}&fault=lie:40000"));
    let request = TransferRequest::download(&url);
    let target = target(dir.path(), "liar");
    let engine = engine();
    let first = engine.run(&request, &target, None).await;
    assert_eq!(
        retry_reason(&first).0,
        RetryReason::TruncatedBody,
        "{first:?}"
    );
    let (part, _) = download_paths(dir.path(), "liar");
    assert_eq!(std::fs::metadata(&part).expect("kept").len(), 40_000);
    let second = success(engine.run(&request, &target, None).await);
    assert_exact(&second, dir.path(), "liar", "liar", size);
    assert_eq!(origin.counters().body_bytes_for("liar"), size);
}

/// 503 and 429 are retries carrying Retry-After in the seconds form and in the HTTP-date
/// form; a garbage Retry-After is a retry without one.
#[tokio::test]
async fn retry_after_in_both_forms_and_garbage() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let target = target(dir.path(), "busy");

    let seconds = TransferRequest::download(origin.url("/objects/busy?size=10&fault=status:503:7"));
    let (reason, retry_after) = retry_reason(&engine.run(&seconds, &target, None).await);
    assert_eq!(reason, RetryReason::Status(503));
    assert_eq!(retry_after, Some(RetryAfter::Delay(Duration::from_secs(7))));

    let before = SystemTime::now();
    let date =
        TransferRequest::download(origin.url("/objects/busy?size=10&fault=status:429:date%2B30"));
    let (reason, retry_after) = retry_reason(&engine.run(&date, &target, None).await);
    let after = SystemTime::now();
    assert_eq!(reason, RetryReason::Status(429));
    let Some(RetryAfter::At(at)) = retry_after else {
        panic!("expected an HTTP date, got {retry_after:?}");
    };
    // HTTP dates have one-second resolution.
    assert!(at + Duration::from_secs(1) >= before + Duration::from_secs(30));
    assert!(at <= after + Duration::from_secs(30));

    let garbage =
        TransferRequest::download(origin.url("/objects/busy?size=10&fault=status:503:soon"));
    let (reason, retry_after) = retry_reason(&engine.run(&garbage, &target, None).await);
    assert_eq!((reason, retry_after), (RetryReason::Status(503), None));

    // After the fault window the same URL is served.
    let served = success(engine.run(&seconds, &target, None).await);
    assert_eq!(served.bytes, 10);
}

/// Status faults land in their class: 404 and 501 are rejections carrying the status,
/// 500 and 408 are retries, and a missing object is a 404 rejection.
#[tokio::test]
async fn statuses_are_classified() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    for (fault, expected) in [
        ("status:404", "rejected 404"),
        ("status:501", "rejected 501"),
        ("status:500", "retry 500"),
        ("status:408", "retry 408"),
    ] {
        let request =
            TransferRequest::download(origin.url(&format!("/objects/s?size=5&fault={fault}")));
        let outcome = engine.run(&request, &target(dir.path(), "s"), None).await;
        let found = match &outcome {
            Classified::Rejected(response) => format!("rejected {}", response.status),
            Classified::Retry {
                reason: RetryReason::Status(status),
                ..
            } => format!("retry {status}"),
            other => format!("{other:?}"),
        };
        assert_eq!(found, expected);
    }
    let missing = TransferRequest::download(origin.url("/objects/none"));
    match engine
        .run(&missing, &target(dir.path(), "none"), None)
        .await
    {
        Classified::Rejected(response) => {
            assert_eq!(response.status, 404);
            assert!(
                !response.body.is_empty(),
                "a rejection keeps the start of its body"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let (part, complete) = download_paths(dir.path(), "none");
    assert!(!part.exists() && !complete.exists());
}

/// A body that stalls (after the headers, or mid-body) ends in an idle timeout, while a
/// slow body whose every gap is shorter than the idle timeout, but whose total is
/// longer, is not cut.
#[tokio::test]
async fn idle_timeout_cuts_stalls_but_not_slow_bodies() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();

    for fault in ["stall", "stall:1000"] {
        let request = TransferRequest::download(
            origin.url(&format!("/objects/stalled?size=5000&fault={fault}")),
        );
        let outcome = engine
            .run(&request, &target(dir.path(), "stalled"), None)
            .await;
        assert_eq!(
            retry_reason(&outcome).0,
            RetryReason::IdleTimeout,
            "{fault}: {outcome:?}"
        );
    }

    // 10 pieces 50 ms apart: 450 ms in total against a 300 ms idle timeout.
    let size = 10_000;
    let slow = TransferRequest::download(
        origin.url(&format!("/objects/slow?size={size}&fault=drip:1000:50")),
    );
    let response = success(engine.run(&slow, &target(dir.path(), "slow"), None).await);
    assert_exact(&response, dir.path(), "slow", "slow", size);
}

/// A second upload with the same Idempotency-Key gets the first answer and is counted by
/// the origin as a suppressed duplicate; bytes that differ from the object are rejected;
/// a reset mid-upload is a retry.
#[tokio::test]
async fn uploads_are_deduplicated_by_key() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 700_000;
    let mut bytes = vec![0; size];
    origin::content(SEED, "up", 0, &mut bytes);
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &bytes).expect("write the upload file");
    let engine = engine();
    let keyed = Target {
        idempotency_key: Some("session-1/task-7".to_owned()),
        ..target(dir.path(), "up")
    };
    let request = TransferRequest::upload(origin.url(&format!("/uploads/up?size={size}")), &file);

    let first = success(engine.run(&request, &keyed, None).await);
    let second = success(engine.run(&request, &keyed, None).await);
    assert_eq!((first.status, second.status), (201, 201));
    assert_eq!(first.body, second.body);
    let counters = origin.counters();
    assert_eq!(counters.uploads_received, 1);
    assert_eq!(counters.duplicate_uploads_suppressed, 1);
    assert_eq!(counters.uploads_by_object.get("up"), Some(&1));

    let wrong = dir.path().join("wrong.bin");
    std::fs::write(&wrong, b"not the object").expect("write");
    let mismatched =
        TransferRequest::upload(origin.url(&format!("/uploads/up?size={size}")), &wrong)
            .with_method(Method::Post);
    match engine
        .run(&mismatched, &target(dir.path(), "up"), None)
        .await
    {
        Classified::Rejected(response) => assert_eq!(response.status, 422),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(origin.counters().upload_mismatches, 1);

    let reset = TransferRequest::upload(
        origin.url(&format!("/uploads/up?size={size}&fault=reset:100000")),
        &file,
    );
    let outcome = engine.run(&reset, &target(dir.path(), "up"), None).await;
    assert!(
        matches!(
            retry_reason(&outcome).0,
            RetryReason::Reset | RetryReason::Protocol
        ),
        "{outcome:?}"
    );

    let missing =
        TransferRequest::upload(origin.url("/uploads/up?size=1"), dir.path().join("absent"));
    assert_eq!(
        fail_reason(&engine.run(&missing, &target(dir.path(), "up"), None).await),
        FailReason::LocalDisk
    );
}

/// An upload's `bytes` is the request body sent, the file's length, whatever the length
/// of the answer (a short `201` body, a short `422` body); a data task's `bytes` stays
/// the length of its response body.
#[tokio::test]
async fn upload_bytes_are_the_body_sent() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 700_000;
    let mut bytes = vec![0; size as usize];
    origin::content(SEED, "sent", 0, &mut bytes);
    let file = dir.path().join("sent.bin");
    std::fs::write(&file, &bytes).expect("write the upload file");
    let engine = engine();

    let url = origin.url(&format!("/uploads/sent?size={size}"));
    let stored = success(
        engine
            .run(
                &TransferRequest::upload(&url, &file),
                &target(dir.path(), "sent"),
                None,
            )
            .await,
    );
    assert_eq!(stored.status, 201);
    assert!((stored.body.len() as u64) < size, "the answer is short");
    assert_eq!(stored.bytes, size);

    // The origin refuses a body of another length than `size`: a rejection after the
    // whole file was sent.
    let refused_url = origin.url(&format!("/uploads/sent?size={}", size + 1));
    match engine
        .run(
            &TransferRequest::upload(&refused_url, &file),
            &target(dir.path(), "sent"),
            None,
        )
        .await
    {
        Classified::Rejected(response) => {
            assert_eq!(response.status, 422);
            assert!((response.body.len() as u64) < size);
            assert_eq!(response.bytes, size);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    let data = success(
        engine
            .run(
                &TransferRequest::data(Method::Get, origin.url("/objects/d?size=1234")),
                &target(dir.path(), "d"),
                None,
            )
            .await,
    );
    assert_eq!((data.body.len(), data.bytes), (1234, 1234));
}

/// Hostile names (`../x`, absolute paths, `a/../../b`, NUL, very long) produce files only
/// inside the download directory, each its own.
#[tokio::test]
async fn hostile_names_stay_inside_the_directory() {
    let origin = start_origin().await;
    let outer = tempfile::tempdir().expect("tempdir");
    let dir = outer.path().join("downloads");
    let engine = engine();
    let long = "../".repeat(400);
    let names = [
        "../escaped",
        "/etc/passwd",
        "a/../../b",
        "nul\0byte",
        long.as_str(),
        "..",
        "",
    ];
    for (index, name) in names.iter().enumerate() {
        let request = TransferRequest::download(origin.url(&format!("/objects/h{index}?size=64")));
        let response = success(engine.run(&request, &target(&dir, name), None).await);
        let file = response.file.expect("a download has a file");
        assert_eq!(file.parent(), Some(dir.as_path()), "{name:?}");
        assert_eq!(
            file_sha256(&file),
            origin::sha256(SEED, &format!("h{index}"), 64)
        );
    }
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("downloads")]);
    assert_eq!(std::fs::read_dir(&dir).expect("list").count(), names.len());
}

/// The headers whose values are secrets in the redirect tests, and their values.
const SECRET_HEADERS: [(&str, &str); 4] = [
    ("authorization", "Bearer secret-token"),
    ("cookie", "session=secret-cookie"),
    ("proxy-authorization", "Basic secret-proxy"),
    ("x-api-key", "secret-api-key"),
];

fn with_secret_headers(request: TransferRequest) -> TransferRequest {
    request
        .with_header("Authorization", SECRET_HEADERS[0].1)
        .with_header("Cookie", SECRET_HEADERS[1].1)
        .with_header("Proxy-Authorization", SECRET_HEADERS[2].1)
        .with_sensitive_header("X-Api-Key", SECRET_HEADERS[3].1)
        .with_header("X-Visible", "kept")
}

/// The only request the origin saw for `object`.
fn only_request(origin: &Origin, object: &str) -> SeenRequest {
    let seen = origin.requests_seen(object);
    assert_eq!(seen.len(), 1, "{object}: {seen:?}");
    seen.into_iter().next().expect("one request")
}

/// A download redirected to another origin (another port of 127.0.0.1) arrives there
/// without Authorization, Cookie, Proxy-Authorization and the marked X-Api-Key, but with
/// the other headers and the target's Idempotency-Key; one redirected on its own origin
/// keeps them all, and one that leaves and comes back has lost them for good. The origin
/// records each request head, so the check sees what arrived.
#[tokio::test]
async fn sensitive_headers_do_not_follow_a_redirect_to_another_origin() {
    let first = start_origin().await;
    let second = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let keyed = |name: &str| Target {
        idempotency_key: Some(format!("session-1/{name}")),
        ..target(dir.path(), name)
    };
    let size = 20_000;

    let elsewhere = second.url(&format!("/objects/cross?size={size}"));
    let request = with_secret_headers(TransferRequest::download(
        first.url(&format!("/redirect?to={}", percent(&elsewhere))),
    ));
    let response = success(engine.run(&request, &keyed("cross"), None).await);
    assert_exact(&response, dir.path(), "cross", "cross", size);
    let arrived = only_request(&second, "cross");
    for (name, _) in SECRET_HEADERS {
        assert_eq!(
            arrived.header(name),
            None,
            "{name} crossed origins: {arrived:?}"
        );
    }
    assert_eq!(arrived.header("x-visible"), Some("kept"));
    assert_eq!(arrived.header("idempotency-key"), Some("session-1/cross"));
    assert_eq!(arrived.header("accept-encoding"), Some("identity"));

    let same = with_secret_headers(TransferRequest::download(first.url(&format!(
        "/redirect?to={}&hops=2",
        percent(&format!("/objects/same?size={size}"))
    ))));
    success(engine.run(&same, &keyed("same"), None).await);
    let arrived = only_request(&first, "same");
    for (name, value) in SECRET_HEADERS {
        assert_eq!(arrived.header(name), Some(value), "{name}: {arrived:?}");
    }

    let home = first.url(&format!("/objects/back?size={size}"));
    let away = second.url(&format!("/redirect?to={}", percent(&home)));
    let round_trip = with_secret_headers(TransferRequest::download(
        first.url(&format!("/redirect?to={}", percent(&away))),
    ));
    success(engine.run(&round_trip, &keyed("back"), None).await);
    let arrived = only_request(&first, "back");
    for (name, _) in SECRET_HEADERS {
        assert_eq!(arrived.header(name), None, "{name} came back: {arrived:?}");
    }
}

/// A download resumed through a redirect sends its Range and If-Range to the final
/// origin, which answers 206 from the kept length, and the file ends exact.
#[tokio::test]
async fn a_redirected_download_resumes_at_its_target() {
    let first = start_origin().await;
    let second = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let size: u64 = 900_000;
    let object = second.url(&format!("/objects/moved?size={size}&fault=reset:300000"));
    let request = TransferRequest::download(
        first.url(&format!("/redirect?to={}&status=307", percent(&object))),
    );
    let target = target(dir.path(), "moved");
    let first_attempt = engine.run(&request, &target, None).await;
    assert_eq!(
        retry_reason(&first_attempt).0,
        RetryReason::Reset,
        "{first_attempt:?}"
    );
    let (part, _) = download_paths(dir.path(), "moved");
    let kept = std::fs::metadata(&part).expect("the .part is kept").len();
    let response = success(engine.run(&request, &target, None).await);
    assert_eq!(response.status, 206);
    assert_exact(&response, dir.path(), "moved", "moved", size);
    let seen = second.requests_seen("moved");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].header("range"),
        Some(format!("bytes={kept}-").as_str())
    );
    assert!(seen[1].header("if-range").is_some(), "{:?}", seen[1]);
}

/// Redirects to `file:`, `ftp:`, `data:` and `mailto:` URLs, to a Location that is not a
/// URL (a bad port, bytes that are not ASCII) and a redirect without Location all fail
/// with the same typed reason, for downloads and data tasks, and leave no file.
#[tokio::test]
async fn unusable_redirects_fail_as_invalid_redirect() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let mut urls: Vec<String> = [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "data:text/plain,hello",
        "mailto:someone@example.invalid",
        "http://127.0.0.1:99999/x",
    ]
    .iter()
    .map(|to| format!("/redirect?to={}", percent(to)))
    .collect();
    // Decoded by the origin into U+FFFD, sent as raw UTF-8: not a visible-ASCII value.
    urls.push("/redirect?to=%FF".to_owned());
    urls.push("/redirect?location=omit&status=301".to_owned());
    urls.push("/redirect?location=omit&status=307".to_owned());
    for (index, url) in urls.iter().enumerate() {
        let name = format!("bad-{index}");
        let download = TransferRequest::download(origin.url(url));
        let outcome = engine
            .run(&download, &target(dir.path(), &name), None)
            .await;
        assert_eq!(
            fail_reason(&outcome),
            FailReason::InvalidRedirect,
            "{url}: {outcome:?}"
        );
        let (part, complete) = download_paths(dir.path(), &name);
        assert!(!part.exists() && !complete.exists(), "{url}");
        let data = TransferRequest::data(Method::Get, origin.url(url));
        let outcome = engine.run(&data, &target(dir.path(), &name), None).await;
        assert_eq!(
            fail_reason(&outcome),
            FailReason::InvalidRedirect,
            "{url}: {outcome:?}"
        );
    }
}

/// More redirects than allowed, a redirect to itself, and a chain that comes back to a URL
/// it already asked for fail as too many redirects; exactly the limit is followed, and a
/// limit of zero follows none.
#[tokio::test]
async fn redirect_limits() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let within = TransferRequest::data(Method::Get, origin.url("/redirect?to=/echo&hops=10"));
    success(engine.run(&within, &target(dir.path(), "r"), None).await);
    for url in ["/redirect?to=/echo&hops=11", "/loop", "/redirect?to=/loop"] {
        let request = TransferRequest::data(Method::Get, origin.url(url));
        let outcome = engine.run(&request, &target(dir.path(), "r"), None).await;
        assert_eq!(fail_reason(&outcome), FailReason::TooManyRedirects, "{url}");
    }
    let none = Engine::new(EngineConfig {
        redirects_max: 0,
        ..config()
    })
    .expect("engine");
    let once = TransferRequest::data(Method::Get, origin.url("/redirect?to=/echo"));
    let outcome = none.run(&once, &target(dir.path(), "r"), None).await;
    assert_eq!(fail_reason(&outcome), FailReason::TooManyRedirects);
}

/// 303 after a POST, and 302 after a POST, arrive as a GET without body or the headers
/// describing it; 303 after a HEAD stays a HEAD. The origin's record of each request shows
/// the method and that no body was framed.
#[tokio::test]
async fn redirects_turn_a_post_into_a_get_without_body() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    for (status, method, arrived_method, object) in [
        (303, Method::Post, "GET", "m303"),
        (302, Method::Post, "GET", "m302"),
        (303, Method::Head, "HEAD", "mhead"),
    ] {
        let to = percent(&format!("/objects/{object}?size=5"));
        let mut request = TransferRequest::data(
            method,
            origin.url(&format!("/redirect?to={to}&status={status}")),
        )
        .with_header("Content-Type", "application/json");
        if method == Method::Post {
            request = request.with_body(Body::Bytes(b"{\"form\":1}".to_vec()));
        }
        let response = success(
            engine
                .run(&request, &target(dir.path(), object), None)
                .await,
        );
        assert_eq!(response.status, 200, "{object}");
        let arrived = only_request(&origin, object);
        assert_eq!(arrived.method, arrived_method, "{object}");
        for body_header in ["content-length", "transfer-encoding", "content-type"] {
            assert_eq!(arrived.header(body_header), None, "{object}: {arrived:?}");
        }
    }
}

/// 307 re-sends an upload's file from its start and 308 a POST's bytes, byte-exact: the
/// origin checks every byte against the object and counts the upload as a match; the
/// method and the Idempotency-Key arrive unchanged, and upload progress ends at the
/// file's length.
#[tokio::test]
async fn redirects_307_and_308_send_the_body_again() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let size: usize = 700_000;
    let mut bytes = vec![0; size];
    origin::content(SEED, "u307", 0, &mut bytes);
    let file = dir.path().join("u307.bin");
    std::fs::write(&file, &bytes).expect("write the upload file");
    let to = percent(&format!("/uploads/u307?size={size}"));
    let upload =
        TransferRequest::upload(origin.url(&format!("/redirect?to={to}&status=307")), &file);
    let keyed = Target {
        idempotency_key: Some("session-1/u307".to_owned()),
        ..target(dir.path(), "u307")
    };
    let (progress, watch) = tokio::sync::watch::channel(Progress::default());
    let response = success(engine.run(&upload, &keyed, Some(&progress)).await);
    assert_eq!(response.status, 201);
    assert_eq!(
        *watch.borrow(),
        Progress {
            bytes_done: size as u64,
            bytes_expected: Some(size as u64)
        }
    );
    let arrived = only_request(&origin, "u307");
    assert_eq!(arrived.method, "PUT");
    assert_eq!(arrived.header("idempotency-key"), Some("session-1/u307"));

    let small = 3_000;
    let mut body = vec![0; small];
    origin::content(SEED, "b308", 0, &mut body);
    let to = percent(&format!("/uploads/b308?size={small}"));
    let post = TransferRequest::data(
        Method::Post,
        origin.url(&format!("/redirect?to={to}&status=308")),
    )
    .with_body(Body::Bytes(body));
    assert_eq!(
        success(engine.run(&post, &target(dir.path(), "b308"), None).await).status,
        201
    );
    assert_eq!(only_request(&origin, "b308").method, "POST");

    let counters = origin.counters();
    assert_eq!(counters.upload_mismatches, 0);
    assert_eq!(counters.uploads_by_object.get("u307"), Some(&1));
    assert_eq!(counters.uploads_by_object.get("b308"), Some(&1));
}

/// A download answered with `Content-Encoding: gzip` (though identity was asked for) fails
/// with the typed reason naming the coding, and leaves no `.part`, validator or file; the
/// same answer to a data task is delivered as received, its header saying so.
#[tokio::test]
async fn an_encoded_download_fails_and_leaves_no_file() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let request =
        TransferRequest::download(origin.url("/objects/gz?size=100000&fault=encoding:gzip"));
    let outcome = engine.run(&request, &target(dir.path(), "gz"), None).await;
    assert_eq!(
        fail_reason(&outcome),
        FailReason::UnsupportedContentEncoding("gzip".to_owned()),
        "{outcome:?}"
    );
    let (part, complete) = download_paths(dir.path(), "gz");
    assert!(!part.exists(), "the .part of an encoded response is left");
    assert!(
        !complete.exists(),
        "an encoded response was delivered as the file"
    );
    assert!(!download_validator_path(dir.path(), "gz").exists());

    let data = TransferRequest::data(
        Method::Get,
        origin.url("/objects/gz?size=1000&fault=encoding:gzip"),
    );
    let response = success(
        engine
            .run(&data, &target(dir.path(), "gz-data"), None)
            .await,
    );
    assert_eq!(response.body.len(), 1000);
    assert!(
        response
            .headers
            .iter()
            .any(|(name, value)| name == "content-encoding" && value == "gzip"),
        "{:?}",
        response.headers
    );
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Transport failures are classified: a refused connection is unreachable (no server
/// answered), a reset mid-body is a reset (a server answered, so not unreachable), and a
/// TLS handshake with a plain-HTTP server fails as TLS. DNS failures and unreachable
/// networks are not tested: either would need traffic off loopback.
#[tokio::test]
async fn transport_failures_are_classified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let refused = TransferRequest::download(format!("http://127.0.0.1:{closed_port}/x"));
    let outcome = engine.run(&refused, &target(dir.path(), "x"), None).await;
    assert_eq!(
        retry_reason(&outcome).0,
        RetryReason::Unreachable,
        "{outcome:?}"
    );

    let origin = start_origin().await;
    let reset = TransferRequest::download(origin.url("/objects/r?size=100000&fault=reset:5000"));
    let outcome = engine.run(&reset, &target(dir.path(), "r"), None).await;
    assert_eq!(retry_reason(&outcome).0, RetryReason::Reset, "{outcome:?}");

    let tls = TransferRequest::download(format!("https://{}/objects/t?size=5", origin.addr()));
    let outcome = engine.run(&tls, &target(dir.path(), "t"), None).await;
    assert_eq!(fail_reason(&outcome), FailReason::Tls, "{outcome:?}");
}

/// A download whose final file is already there and verifies (a crash after the rename,
/// before the caller recorded it) succeeds again without a request.
#[tokio::test]
async fn finished_download_is_idempotent() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 10_000;
    let request = TransferRequest::download(origin.url(&format!("/objects/again?size={size}")))
        .with_sha256(origin::sha256(SEED, "again", size));
    let engine = engine();
    let target = target(dir.path(), "again");
    let first = success(engine.run(&request, &target, None).await);
    let second = success(engine.run(&request, &target, None).await);
    assert_eq!(first.file, second.file);
    assert_eq!(origin.counters().requests_for("again"), 1);
    assert_exact(&second, dir.path(), "again", "again", size);
}

/// A .part that already holds the whole object (the rest arrived before a crash) is
/// finished through the server's 416 without downloading anything again.
#[tokio::test]
async fn complete_part_finishes_on_416() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size: u64 = 300_000;
    let url = origin.url(&format!("/objects/whole?size={size}&fault=reset:100000"));
    let request = TransferRequest::download(&url);
    let target = target(dir.path(), "whole");
    let engine = engine();
    let first = engine.run(&request, &target, None).await;
    assert_eq!(retry_reason(&first).0, RetryReason::Reset);
    let mut bytes = vec![0; size as usize];
    origin::content(SEED, "whole", 0, &mut bytes);
    let (part, _) = download_paths(dir.path(), "whole");
    std::fs::write(&part, &bytes).expect("complete the part");
    let served_before = origin.counters().body_bytes_for("whole");

    let second = success(engine.run(&request, &target, None).await);
    assert_exact(&second, dir.path(), "whole", "whole", size);
    let counters = origin.counters();
    assert_eq!(counters.body_bytes_for("whole"), served_before);
    assert_eq!(
        counters
            .ranges_for("whole")
            .last()
            .map(|range| range.status),
        Some(416)
    );
}

/// A file that does not verify (wrong SHA-256, wrong length) fails, and its .part is
/// removed so the next attempt starts from zero; nothing reaches the final path.
#[tokio::test]
async fn verification_failures_remove_the_part() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let url = origin.url("/objects/checked?size=5000");
    let wrong_hash = TransferRequest::download(&url).with_sha256("00".repeat(32));
    let outcome = engine
        .run(&wrong_hash, &target(dir.path(), "h"), None)
        .await;
    assert!(matches!(
        fail_reason(&outcome),
        FailReason::Verification(Mismatch::Sha256 { .. })
    ));
    let wrong_length = TransferRequest::download(&url).with_expected_bytes(4999);
    let outcome = engine
        .run(&wrong_length, &target(dir.path(), "l"), None)
        .await;
    assert_eq!(
        fail_reason(&outcome),
        FailReason::Verification(Mismatch::Length {
            expected_bytes: 4999,
            actual_bytes: 5000
        })
    );
    for name in ["h", "l"] {
        let (part, complete) = download_paths(dir.path(), name);
        assert!(!part.exists() && !complete.exists(), "{name}");
    }
}

/// Requests that cannot be valid fail before anything is sent, and local disk problems
/// (the download directory is a file) fail as local disk errors.
#[tokio::test]
async fn invalid_requests_and_disk_errors_fail() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let outcome = engine
        .run(
            &TransferRequest::download("ftp://127.0.0.1/x"),
            &target(dir.path(), "x"),
            None,
        )
        .await;
    assert_eq!(fail_reason(&outcome), FailReason::InvalidUrl);
    let bad_header =
        TransferRequest::download(origin.url("/objects/x?size=1")).with_header("Range", "bytes=0-");
    let outcome = engine
        .run(&bad_header, &target(dir.path(), "x"), None)
        .await;
    assert_eq!(fail_reason(&outcome), FailReason::InvalidRequest);
    assert_eq!(origin.counters().requests_total, 0);

    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let request = TransferRequest::download(origin.url("/objects/x?size=1"));
    let outcome = engine.run(&request, &target(&not_a_dir, "x"), None).await;
    assert_eq!(fail_reason(&outcome), FailReason::LocalDisk, "{outcome:?}");
}

/// A full disk: the `.part` is a symbolic link to `/dev/full`, where every write fails
/// with ENOSPC whoever runs the test. The download stops as `StorageFull` (a wait for
/// space, not a failure) naming the cause, the partial file (here the link, never
/// `/dev/full` itself) is removed, and nothing is renamed into place.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn full_disk_is_a_storage_full_retry() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (part, complete) = download_paths(dir.path(), "full");
    std::os::unix::fs::symlink("/dev/full", &part).expect("a symbolic link to /dev/full");
    let request = TransferRequest::download(origin.url("/objects/full?size=3000000"));
    let outcome = engine()
        .run(&request, &target(dir.path(), "full"), None)
        .await;
    let Classified::Retry {
        reason, message, ..
    } = &outcome
    else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert_eq!(*reason, RetryReason::StorageFull, "{outcome:?}");
    assert!(message.contains("StorageFull"), "{message}");
    assert!(
        !complete.exists(),
        "a file that was never written is in place"
    );
    assert!(
        std::fs::symlink_metadata(&part).is_err(),
        "the partial file is left behind"
    );
    assert!(
        !download_validator_path(dir.path(), "full").exists(),
        "the validator is left behind"
    );
    assert!(
        Path::new("/dev/full").exists(),
        "/dev/full itself was touched"
    );
}

/// A data task's response over its limit fails rather than being silently cut.
#[tokio::test]
async fn data_response_over_the_limit_fails() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config();
    config.limits.data_response_bytes_max = 1000;
    let engine = Engine::new(config).expect("engine");
    let small = TransferRequest::data(Method::Get, origin.url("/objects/d?size=1000"));
    assert_eq!(
        success(engine.run(&small, &target(dir.path(), "d"), None).await)
            .body
            .len(),
        1000
    );
    let large = TransferRequest::data(Method::Get, origin.url("/objects/d?size=1001"));
    let outcome = engine.run(&large, &target(dir.path(), "d"), None).await;
    assert_eq!(fail_reason(&outcome), FailReason::ResponseTooLarge);
}

/// The per-host and global limits hold: of five concurrent slow downloads, the origin
/// never has more responses in flight at once than the limit allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_hold() {
    for (per_host, global, allowed) in [(2, 64, 2), (6, 1, 1)] {
        let origin = start_origin().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::new(EngineConfig {
            connections_per_host_max: per_host,
            connections_max: global,
            ..config()
        })
        .expect("engine");
        let mut tasks = Vec::new();
        for index in 0..5 {
            let engine = engine.clone();
            let url = origin.url(&format!("/objects/c{index}?size=3000&fault=drip:1000:20"));
            let target = target(dir.path(), &format!("c{index}"));
            tasks.push(tokio::spawn(async move {
                engine
                    .run(&TransferRequest::download(url), &target, None)
                    .await
            }));
        }
        for task in tasks {
            success(task.await.expect("the task runs"));
        }
        let peak = origin.counters().responses_in_flight_peak;
        assert!(peak >= 1 && peak <= allowed, "peak {peak} over {allowed}");
    }
}

/// An attempt past its resource deadline fails as such and keeps its partial file.
#[tokio::test]
async fn deadline_ends_an_attempt() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let request =
        TransferRequest::download(origin.url("/objects/late?size=100000&fault=drip:1000:100"));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(250);
    let outcome = engine()
        .run_until(&request, &target(dir.path(), "late"), None, deadline)
        .await;
    assert_eq!(fail_reason(&outcome), FailReason::DeadlineExceeded);
}

/// Resume uses the best validator available: Last-Modified alone works, a weak ETag is
/// not used for If-Range (Last-Modified is), and with no validator at all the engine
/// cannot trust the .part and starts again from zero; every file ends exact.
#[tokio::test]
async fn resume_follows_the_available_validators() {
    let origin = start_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let size: u64 = 600_000;
    for (validators, resumed_status) in [("last-modified", 206), ("weak", 206), ("none", 200)] {
        let name = format!("v-{validators}");
        let url = origin.url(&format!(
            "/objects/{name}?size={size}&fault=reset:200000&validators={validators}"
        ));
        let request = TransferRequest::download(&url);
        let target = target(dir.path(), &name);
        let first = engine.run(&request, &target, None).await;
        assert_eq!(retry_reason(&first).0, RetryReason::Reset, "{validators}");
        let second = success(engine.run(&request, &target, None).await);
        assert_exact(&second, dir.path(), &name, &name, size);
        let counters = origin.counters();
        let ranges = counters.ranges_for(&name);
        assert_eq!(ranges.len(), 2, "{validators}: {ranges:?}");
        assert_eq!(ranges[1].status, resumed_status, "{validators}: {ranges:?}");
    }
}

/// The origin on its own thread serves callers on other runtimes and releases its port
/// when its handle is dropped.
#[test]
fn threaded_origin_serves_and_stops() {
    let origin = Origin::start_in_thread(OriginConfig {
        seed: SEED,
        port: 0,
    })
    .expect("the origin starts");
    let addr = origin.addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = TransferRequest::download(origin.url("/objects/threaded?size=1000"));
    let response =
        success(runtime.block_on(engine().run(&request, &target(dir.path(), "t"), None)));
    assert_exact(&response, dir.path(), "t", "threaded", 1000);
    assert_eq!(origin.counters().requests_for("threaded"), 1);
    drop(origin);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the origin still accepts"
    );
}

/// `disk_reserve_bytes` defaults to 128 MiB, accepts 0 and its maximum, refuses more, and
/// a configuration serialized (JSON) before the field existed reads it as the default.
#[test]
fn disk_reserve_is_validated_and_defaulted() {
    let default = EngineConfig::default();
    assert_eq!(default.disk_reserve_bytes, 128 * 1024 * 1024);
    for accepted in [0, EngineConfig::DISK_RESERVE_BYTES_MAX] {
        let config = EngineConfig {
            disk_reserve_bytes: accepted,
            ..config()
        };
        assert_eq!(config.validate(), Ok(()), "{accepted}");
    }
    let over = EngineConfig {
        disk_reserve_bytes: EngineConfig::DISK_RESERVE_BYTES_MAX + 1,
        ..config()
    };
    assert!(
        matches!(Engine::new(over), Err(session_http::Error::InvalidConfig { ref reason }) if reason.contains("disk_reserve_bytes")),
        "a reserve over the maximum is accepted"
    );

    let mut json = serde_json::to_value(&default).expect("serialize");
    json.as_object_mut()
        .expect("an object")
        .remove("disk_reserve_bytes");
    let read: EngineConfig = serde_json::from_value(json).expect("deserialize");
    assert_eq!(read, default);
}

/// A connect that never completes is unreachable, even with an idle timeout shorter than
/// the connect timeout: the listener's accept queue on 127.0.0.1 is full (it is never
/// accepted from), so the kernel drops further SYNs and the engine's connect hangs until
/// reqwest's connect timeout, which the idle timer leaves its turn.
#[tokio::test]
async fn hung_connect_is_unreachable_not_idle() {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Connect until one hangs: the queue is then full.
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(error)) => panic!("connecting to fill the queue: {error}"),
            Err(_hung) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    let engine = Engine::new(EngineConfig {
        connect_timeout: Duration::from_secs(1),
        read_idle_timeout: Duration::from_millis(100),
        ..config()
    })
    .expect("engine");
    let dir = tempfile::tempdir().expect("tempdir");
    let request = TransferRequest::download(format!("http://{addr}/x"));
    let outcome = engine.run(&request, &target(dir.path(), "x"), None).await;
    assert_eq!(
        retry_reason(&outcome).0,
        RetryReason::Unreachable,
        "{outcome:?}"
    );
    drop((queued, listener));
}
