//! A short crash run of the built binary, as CI runs it: about twenty SIGKILLs and a few
//! fail-point aborts over a small plan, then the verifier's verdict and JSON report.

use std::process::Command;

/// A small seeded `session-harness crash` run passes: the binary kills its worker twenty
/// times and aborts it at fail points, and the verifier finds every event delivered once,
/// every completion run once and every file intact (exit 0, verdict "pass"); the report
/// carries the share of events delivered under faults.
#[test]
fn short_crash_run_passes() {
    let (_dir, run_dir, _stdout, report) = short_run("20260101", &[]);
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert!(report["kills"].as_u64().unwrap_or(0) >= 20, "{report:#}");
    assert!(
        report["failpoint_aborts"].as_u64().unwrap_or(0) >= 5,
        "{report:#}"
    );
    assert_eq!(report["duplicate_events"], 0, "{report:#}");
    assert_eq!(report["lost_events"], 0, "{report:#}");
    assert_eq!(
        report["completions_run"], report["completions_expected"],
        "{report:#}"
    );
    // The share of events delivered by runs later killed or aborted is reported (its
    // value depends on the machine's speed, so only its range is checked here).
    let share = report["events_under_faults_share"].as_f64();
    assert!(
        share.is_some_and(|share| (0.0..=1.0).contains(&share)),
        "{report:#}"
    );
    assert!(
        report["expected_run_s"].as_f64().is_some_and(|s| s > 0.0),
        "{report:#}"
    );

    // The kept directory re-checks the same way.
    verify_passes(&run_dir);
}

/// `crash --origin URL --manifest FILE` runs the same loop against a server it did not
/// start (here the built-in origin, started separately) with the manifest's checksums and
/// expectations: a clean manifest passes, and a download whose manifest checksum is not
/// the server's bytes is reported as a bad file (exit 1).
#[test]
fn manifest_run_against_a_separate_server() {
    use session_harness::origin::{Origin, OriginConfig, content, sha256};

    let origin = Origin::start_in_thread(OriginConfig { seed: 42, port: 0 })
        .expect("the origin starts on 127.0.0.1");
    let base = origin.url("");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut upload = vec![0; 50_000];
    content(42, "up", 0, &mut upload);
    std::fs::write(dir.path().join("up.bin"), &upload).expect("upload file");
    let manifest = |bad_sha: &str| {
        serde_json::json!({"sessions": [
            {"id": "alpha", "tasks": [
                {"id": "d1", "kind": "download", "url": format!("{base}/objects/d1?size=300000&fault=reset%3A5000&times=2"),
                 "sha256": sha256(42, "d1", 300_000), "expect": "success"},
                {"id": "u1", "kind": "upload", "url": format!("{base}/uploads/up?size=50000"),
                 "file": "up.bin", "expect": "success"}]},
            {"id": "beta", "tasks": [
                {"id": "gone", "kind": "download", "url": format!("{base}/objects/x?size=9&fault=status%3A404&times=1000"),
                 "expect": "rejected"},
                {"id": "d2", "kind": "download", "url": format!("{base}/objects/d2?size=1000"),
                 "sha256": bad_sha, "expect": "success"}]}
        ]})
        .to_string()
    };
    let run = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("manifest");
        Command::new(env!("CARGO_BIN_EXE_session-harness"))
            .args(["crash", "--seed", "5", "--kills", "4", "--aborts", "2"])
            .args(["--origin", &base])
            .arg("--manifest")
            .arg(&path)
            .output()
            .expect("the session-harness binary runs")
    };

    let good = run("good.json", manifest(&sha256(42, "d2", 1000)));
    assert!(
        good.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );

    let bad = run("bad.json", manifest(&"0".repeat(64)));
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the file of task d2"), "{stdout}");
}

/// The same short run with the records in PostgreSQL (the test's throwaway cluster,
/// given as `--store URL`): the ledger is SQL tables of the application's schema written
/// in the batches' own transactions, and the verdict is the same; `verify --dir` re-reads
/// the kept run from the server.
#[test]
fn short_crash_run_on_postgres_passes() {
    let Some(cluster) =
        session_harness::postgres::postgres_or_skip("short_crash_run_on_postgres_passes")
    else {
        return;
    };
    let url = cluster.url();
    let (_dir, run_dir, stdout, report) = short_run("20261203", &["--store", &url]);
    assert!(stdout.contains("store postgres"), "{stdout}");
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert_eq!(report["store"], "postgres", "{report:#}");
    assert!(report["kills"].as_u64().unwrap_or(0) >= 20, "{report:#}");
    assert_eq!(report["duplicate_events"], 0, "{report:#}");
    assert_eq!(report["lost_events"], 0, "{report:#}");
    verify_passes(&run_dir);
    drop(cluster);
}

/// Runs `session-harness crash` with a small plan (8 sessions of 8 tasks, large enough
/// that it outlasts 20 kills and 5 aborts) and `extra` arguments, keeping the run
/// directory; asserts it exits 0. Returns the temporary directory (keep it alive), the
/// run directory, the standard output and the JSON report.
fn short_run(
    seed: &str,
    extra: &[&str],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    String,
    serde_json::Value,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run_dir = dir.path().join("run");
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_session-harness"))
        .args(["crash", "--seed", seed, "--sessions", "8", "--tasks", "8"])
        .args(["--kills", "20", "--aborts", "5"])
        .args(extra)
        .arg("--dir")
        .arg(&run_dir)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("the session-harness binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "crash run failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("the report is JSON");
    (dir, run_dir, stdout, report)
}

/// `session-harness verify --dir` re-checks a kept run directory and passes.
fn verify_passes(run_dir: &std::path::Path) {
    let verify = Command::new(env!("CARGO_BIN_EXE_session-harness"))
        .arg("verify")
        .arg("--dir")
        .arg(run_dir)
        .output()
        .expect("verify runs");
    assert!(
        verify.status.success(),
        "verify --dir failed:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
