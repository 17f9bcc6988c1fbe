//! `session-harness bench download --json` on a small object: one JSON object whose
//! figures agree with one another. No figure is compared with a speed: the machine may be
//! slow, and the benchmark's point is the printed ratio, not a pass mark.

use std::process::Command;

use serde_json::Value;

fn number(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is a number in {report}"))
}

fn seconds(report: &Value, key: &str) -> Vec<f64> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is an array in {report}"))
        .iter()
        .map(|value| value.as_f64().expect("a number of seconds"))
        .collect()
}

fn best_mb_per_s(size: f64, times: &[f64]) -> f64 {
    size / 1e6 / times.iter().copied().fold(f64::INFINITY, f64::min)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Two alternating runs of a 5 MiB object (not a multiple of a write block): every run is
/// reported, the best-of figures and ratios are derived from them, and the engine's
/// process stays far below the 32 MiB the benchmark is held to.
#[test]
fn bench_download_reports_consistent_figures() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let size: u64 = 5 * 1024 * 1024 + 7;
    let output = Command::new(env!("CARGO_BIN_EXE_session-harness"))
        .args(["bench", "download", "--json", "--runs", "2", "--size"])
        .arg(size.to_string())
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("the session-harness binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench download failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().expect("one line of JSON");
    let report: Value = serde_json::from_str(line).expect("the report is JSON");

    assert_eq!(report["size_bytes"].as_u64(), Some(size));
    assert_eq!(report["runs"].as_u64(), Some(2));
    let engine = seconds(&report, "engine_s");
    assert_eq!(engine.len(), 2);
    assert!(engine.iter().all(|&s| s > 0.0), "{engine:?}");
    assert!(close(
        number(&report, "mb_per_s"),
        best_mb_per_s(size as f64, &engine)
    ));
    let rss = number(&report, "max_rss_bytes");
    assert!(
        rss > 0.0 && rss < 32.0 * 1024.0 * 1024.0,
        "max_rss_bytes {rss}"
    );

    if report["curl_mb_per_s"].is_null() {
        // No curl on PATH: every curl figure is absent, not invented.
        for key in ["ratio", "curl_durable_mb_per_s", "durable_ratio"] {
            assert!(report[key].is_null(), "{key} without curl in {report}");
        }
        return;
    }
    let curl = seconds(&report, "curl_s");
    let fsync = seconds(&report, "curl_fsync_s");
    assert_eq!((curl.len(), fsync.len()), (2, 2));
    let curl_mb_per_s = number(&report, "curl_mb_per_s");
    assert!(close(curl_mb_per_s, best_mb_per_s(size as f64, &curl)));
    let durable: Vec<f64> = curl.iter().zip(&fsync).map(|(c, f)| c + f).collect();
    let curl_durable = number(&report, "curl_durable_mb_per_s");
    assert!(close(curl_durable, best_mb_per_s(size as f64, &durable)));
    assert!(curl_durable <= curl_mb_per_s);
    let mb_per_s = number(&report, "mb_per_s");
    assert!(close(number(&report, "ratio"), mb_per_s / curl_mb_per_s));
    assert!(close(
        number(&report, "durable_ratio"),
        mb_per_s / curl_durable
    ));
}
