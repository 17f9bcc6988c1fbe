//! The transfer engine (`session-http`) against a small file system: each test mounts an
//! 8 MiB tmpfs of its own (tests run as root), downloads into it from the origin on
//! 127.0.0.1, and checks that downloads stay out of `EngineConfig::disk_reserve_bytes`,
//! resume once space is back, and give their space back when the file system fills.
//!
//! Where mounting is not allowed, every test prints one line
//! `SKIP <test>: cannot mount a tmpfs: <reason>` and passes, unless
//! `BGSESSION_REQUIRE_ALL_TESTS=1` (CI), which makes it fail with that reason.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use session_harness::origin::{self, Origin, OriginConfig, ServedRange};
use session_http::{
    Classified, Engine, EngineConfig, RetryReason, SPACE_CHECK_INTERVAL_BYTES, Target,
    TransferRequest, download_paths, download_validator_path, free_bytes,
};
use sha2::{Digest, Sha256};

const SEED: u64 = 0xd15c;
const MIB: u64 = 1024 * 1024;
/// The size of every test's tmpfs.
const TMPFS_BYTES: u64 = 8 * MIB;
/// The environment variable that turns a skip into a failure (CI sets it to `1`).
const REQUIRE_ALL_TESTS_VAR: &str = "BGSESSION_REQUIRE_ALL_TESTS";

/// A tmpfs mounted on a fresh temporary directory; unmounted on drop, so also when the
/// test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Something still holds a file there: detach it so the directory can go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Mounts a tmpfs of [`TMPFS_BYTES`] for `test`, or returns `None` after printing the
/// one SKIP line (past the test harness's capture) when mounting is not allowed. With
/// `BGSESSION_REQUIRE_ALL_TESTS=1` it fails instead.
fn tmpfs_or_skip(test: &str) -> Option<Tmpfs> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}"), "tmpfs"])
        .arg(dir.path())
        .output();
    let reason = match mounted {
        Ok(output) if output.status.success() => return Some(Tmpfs { dir }),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("mount exited with {}: {stderr}", output.status)
        }
        Err(error) => format!("running mount: {error}"),
    };
    if std::env::var(REQUIRE_ALL_TESTS_VAR).as_deref() == Ok("1") {
        panic!(
            "{test}: cannot mount a tmpfs: {reason} ({REQUIRE_ALL_TESTS_VAR}=1 forbids skipping)"
        );
    }
    let line = format!("SKIP {test}: cannot mount a tmpfs: {reason}\n");
    // Nothing to do when stderr is closed: the skip itself still holds.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    None
}

fn engine(reserve_bytes: u64) -> Engine {
    Engine::new(EngineConfig {
        connect_timeout: Duration::from_secs(5),
        // Far longer than any step of these tests, so no attempt ends idle.
        read_idle_timeout: Duration::from_secs(600),
        proxy_from_environment: false,
        disk_reserve_bytes: reserve_bytes,
        ..EngineConfig::default()
    })
    .expect("the engine builds")
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

/// A file of `bytes` zeros, fsynced, taking that much of the file system.
fn filler(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        file.write_all(&block[..take]).expect("write the filler");
        left -= take as u64;
    }
    file.sync_all().expect("fsync the filler");
    path
}

/// Fills what is left of the file system (as another process would), until it refuses.
fn fill_up(dir: &Path) {
    let mut file = std::fs::File::create(dir.join("fill-up")).expect("create fill-up");
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => panic!("filling the tmpfs: {error}"),
        }
    }
    assert_eq!(
        free_bytes(dir).expect("statvfs"),
        0,
        "the tmpfs is not full"
    );
}

fn free(dir: &Path) -> u64 {
    free_bytes(dir).expect("statvfs of the tmpfs")
}

fn insufficient(outcome: &Classified) -> (Option<u64>, u64, u64) {
    match outcome {
        Classified::Retry {
            reason:
                RetryReason::InsufficientStorage {
                    bytes_needed,
                    bytes_free,
                    reserve_bytes,
                },
            retry_after: None,
            ..
        } => (*bytes_needed, *bytes_free, *reserve_bytes),
        other => panic!("expected Retry(InsufficientStorage), got {other:?}"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A download whose expected length exceeds the free space less the reserve is not
/// requested at all: `Retry(InsufficientStorage)` with the figures, the origin saw no
/// request, and no `.part` or validator exists.
#[tokio::test]
async fn expected_length_over_the_budget_sends_no_request() {
    let Some(tmpfs) = tmpfs_or_skip("expected_length_over_the_budget_sends_no_request") else {
        return;
    };
    let dir = tmpfs.path();
    // The measure the engine uses agrees with the tmpfs's size: nothing else is there.
    assert_eq!(free(dir), TMPFS_BYTES);
    let origin = start_origin().await;
    let reserve = 2 * MIB;
    let size = 7 * MIB;
    let url = origin.url(&format!("/objects/big?size={size}"));
    let request = TransferRequest::download(url).with_expected_bytes(size);
    let outcome = engine(reserve)
        .run(&request, &target(dir, "big"), None)
        .await;

    assert_eq!(insufficient(&outcome), (Some(size), TMPFS_BYTES, reserve));
    assert_eq!(origin.counters().requests_total, 0, "a request was sent");
    let (part, complete) = download_paths(dir, "big");
    assert!(!part.exists() && !complete.exists(), "a file was created");
    assert!(!download_validator_path(dir, "big").exists());
}

/// With no expected length, a `Content-Length` over the free space less the reserve
/// ends the attempt on the response head: `Retry(InsufficientStorage)` naming that
/// length, after one request, with no `.part` or validator written.
#[tokio::test]
async fn announced_length_over_the_budget_writes_nothing() {
    let Some(tmpfs) = tmpfs_or_skip("announced_length_over_the_budget_writes_nothing") else {
        return;
    };
    let dir = tmpfs.path();
    let origin = start_origin().await;
    let reserve = 2 * MIB;
    let size = 7 * MIB;
    let request = TransferRequest::download(origin.url(&format!("/objects/big?size={size}")));
    let free_before = free(dir);
    let outcome = engine(reserve)
        .run(&request, &target(dir, "big"), None)
        .await;

    assert_eq!(insufficient(&outcome), (Some(size), free_before, reserve));
    assert_eq!(origin.counters().requests_for("big"), 1);
    let (part, complete) = download_paths(dir, "big");
    assert!(!part.exists(), "the .part was created");
    assert!(!complete.exists());
    assert!(!download_validator_path(dir, "big").exists());
    assert_eq!(free(dir), free_before, "something was written");
}

/// A chunked body (no length anywhere) that would grow past the budget stops at it:
/// `Retry(InsufficientStorage)` with no `bytes_needed`, a `.part` of the origin's first
/// bytes no longer than the free space less the reserve at the start (and within 64 KiB
/// of it), the reserve left free. Once a filler is removed, the next attempt asks for the rest from the `.part`'s
/// length and the file is the origin's object, byte for byte.
#[tokio::test]
async fn unknown_length_stops_at_the_budget_and_resumes() {
    let Some(tmpfs) = tmpfs_or_skip("unknown_length_stops_at_the_budget_and_resumes") else {
        return;
    };
    let dir = tmpfs.path();
    let origin = start_origin().await;
    let filler = filler(dir, 3 * MIB);
    let reserve = MIB;
    let size = 6 * MIB;
    let url = origin.url(&format!("/objects/grow?size={size}&fault=chunked"));
    let request = TransferRequest::download(url);
    let engine = engine(reserve);
    let budget = free(dir) - reserve;
    assert!(
        budget < size,
        "the test needs a body larger than the budget"
    );

    let outcome = engine.run(&request, &target(dir, "grow"), None).await;
    let (needed, _free, reserve_bytes) = insufficient(&outcome);
    assert_eq!((needed, reserve_bytes), (None, reserve));
    let (part, complete) = download_paths(dir, "grow");
    let kept = std::fs::read(&part).expect("the .part is kept");
    assert!(!kept.is_empty(), "nothing was kept");
    assert!(
        kept.len() as u64 <= budget,
        "the .part ({} bytes) passed the budget ({budget})",
        kept.len()
    );
    // It stops at the budget, not a block early (the validator takes a page of it).
    assert!(
        kept.len() as u64 + 64 * 1024 >= budget,
        "the .part ({} bytes) stopped far before the budget ({budget})",
        kept.len()
    );
    assert!(free(dir) >= reserve, "the reserve was eaten into");
    let mut expected = vec![0u8; kept.len()];
    origin::content(SEED, "grow", 0, &mut expected);
    assert!(kept == expected, "the kept bytes are not the object's");
    assert!(!complete.exists());

    std::fs::remove_file(&filler).expect("remove the filler");
    let outcome = engine.run(&request, &target(dir, "grow"), None).await;
    let Classified::Success(response) = outcome else {
        panic!("expected the resumed download to finish, got {outcome:?}");
    };
    assert_eq!(response.bytes, size);
    let file = std::fs::read(&complete).expect("the final file");
    assert_eq!(sha256_hex(&file), origin::sha256(SEED, "grow", size));
    assert!(!part.exists(), "the .part is left behind");
    let ranges = origin.counters().ranges_for("grow").to_vec();
    assert_eq!(
        ranges,
        vec![
            ServedRange {
                status: 200,
                start: 0,
                end: size
            },
            ServedRange {
                status: 206,
                start: kept.len() as u64,
                end: size
            },
        ]
    );
}

/// A write refused with ENOSPC (reserve 0; the test fills the tmpfs while the origin
/// holds the body's rest back at a gate, as another process would) stops the download
/// as `Retry(StorageFull)`, not a failure, and removes the `.part` and its validator so
/// the space is free again.
#[tokio::test]
async fn enospc_mid_write_removes_the_part() {
    let Some(tmpfs) = tmpfs_or_skip("enospc_mid_write_removes_the_part") else {
        return;
    };
    let dir = tmpfs.path().to_owned();
    let origin = start_origin().await;
    let size = 3 * MIB;
    // Within one measure of the free space, so that only the file system can stop it.
    assert!(size < SPACE_CHECK_INTERVAL_BYTES);
    let gate = size / 2;
    let url = origin.url(&format!("/objects/gated?size={size}&fault=gate:{gate}"));
    let engine = engine(0);
    let running = tokio::spawn({
        let dir = dir.clone();
        async move {
            let request = TransferRequest::download(url);
            engine.run(&request, &target(&dir, "gated"), None).await
        }
    });

    // A first block (most of the bytes before the gate) reaches the .part: the file is
    // open and its validator written.
    let (part, complete) = download_paths(&dir, "gated");
    let mut waited = Duration::ZERO;
    while std::fs::metadata(&part).map_or(0, |metadata| metadata.len()) == 0 {
        assert!(
            waited < Duration::from_secs(120),
            "the download never wrote its first block"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    fill_up(&dir);
    // Nothing arrives while the gate is shut, so the .part stays at this length.
    let part_bytes = std::fs::metadata(&part).expect("the .part").len();
    origin.open_gate("gated");
    let outcome = running.await.expect("the download task");

    let Classified::Retry {
        reason: RetryReason::StorageFull,
        message,
        ..
    } = &outcome
    else {
        panic!("expected Retry(StorageFull), got {outcome:?}");
    };
    assert!(message.contains("removed"), "{message}");
    assert!(!part.exists(), "the .part is left behind");
    assert!(!download_validator_path(&dir, "gated").exists());
    assert!(!complete.exists());
    // The last block's write may still hold the file on a blocking thread for a moment
    // after the outcome: the space comes back when it lets go.
    let mut waited = Duration::ZERO;
    while free(&dir) < part_bytes {
        assert!(
            waited < Duration::from_secs(120),
            "the .part's {part_bytes} bytes were not given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
}

/// The skip rule itself: this test binary run again for one tmpfs test with an empty
/// `PATH` (so `mount` cannot be found) passes after exactly one SKIP line naming the test
/// and the reason, and fails with that reason under `BGSESSION_REQUIRE_ALL_TESTS=1`.
#[test]
fn skip_prints_one_line_unless_required() {
    let test = "expected_length_over_the_budget_sends_no_request";
    let run = |require: bool| {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("PATH", "");
        if require {
            command.env(REQUIRE_ALL_TESTS_VAR, "1");
        } else {
            command.env_remove(REQUIRE_ALL_TESTS_VAR);
        }
        let output = command.output().expect("run the test binary");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let prefix = format!("SKIP {test}: cannot mount a tmpfs: running mount: ");

    let (passed, stdout, stderr) = run(false);
    assert!(passed, "a skip failed: {stdout}{stderr}");
    let skips: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("SKIP"))
        .collect();
    assert_eq!(skips.len(), 1, "{stderr}");
    assert!(skips[0].starts_with(&prefix), "{stderr}");
    assert!(!stdout.contains("SKIP"), "{stdout}");

    let (passed, stdout, stderr) = run(true);
    assert!(!passed, "a required test skipped: {stdout}{stderr}");
    assert!(!stderr.contains("SKIP"), "{stderr}");
    assert!(
        stderr.contains(&format!("{test}: cannot mount a tmpfs: running mount: ")),
        "{stderr}"
    );
}
