//! A short crash run of the built binary, as CI runs it: about twenty SIGKILLs and a few
//! fail-point aborts over a small plan, then the verifier's verdict and JSON report.

use std::process::Command;

/// A small seeded `session-harness crash` run passes: the binary kills its worker twenty
/// times and aborts it at fail points, and the verifier finds every event delivered once,
/// every completion run once and every file intact (exit 0, verdict "pass").
#[test]
fn short_crash_run_passes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run_dir = dir.path().join("run");
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_session-harness"))
        .args([
            "crash",
            "--seed",
            "20260101",
            "--sessions",
            "6",
            "--tasks",
            "6",
        ])
        .args(["--kills", "20", "--aborts", "5"])
        .arg("--dir")
        .arg(&run_dir)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("the session-harness binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "crash run failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("the report is JSON");
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

    // The kept directory re-checks the same way.
    let verify = Command::new(env!("CARGO_BIN_EXE_session-harness"))
        .arg("verify")
        .arg("--dir")
        .arg(&run_dir)
        .output()
        .expect("verify runs");
    assert!(
        verify.status.success(),
        "verify --dir failed:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
