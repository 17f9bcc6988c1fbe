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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn median_mb_per_s(size: f64, times: &[f64]) -> f64 {
    let rates: Vec<f64> = times.iter().map(|seconds| size / 1e6 / seconds).collect();
    median(&rates)
}

/// The median of the per-round ratios `other[i] / engine[i]` (times, so the engine's
/// throughput over the other's).
fn median_ratio(engine: &[f64], other: &[f64]) -> f64 {
    let ratios: Vec<f64> = engine.iter().zip(other).map(|(e, o)| o / e).collect();
    median(&ratios)
}

/// The spread of `key` holds its median and brackets it.
fn spread_holds(report: &Value, key: &str) {
    let spread = &report["spread"][key];
    let get = |field: &str| {
        spread[field]
            .as_f64()
            .unwrap_or_else(|| panic!("spread.{key}.{field} in {report}"))
    };
    assert!(
        close(get("median"), number(report, key)),
        "{key} in {report}"
    );
    assert!(get("min") <= get("median") && get("median") <= get("max"));
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Two rounds of a 5 MiB object (not a multiple of a write block): every run is reported,
/// the medians and per-round ratios are derived from them, each has its spread, the
/// bounds are measured, and the engine's process stays far below 32 MiB.
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
        median_mb_per_s(size as f64, &engine)
    ));
    spread_holds(&report, "mb_per_s");
    assert!(number(&report, "bound_disk_mb_per_s") > 0.0);
    spread_holds(&report, "bound_disk_mb_per_s");
    let rss = number(&report, "max_rss_bytes");
    assert!(
        rss > 0.0 && rss < 32.0 * 1024.0 * 1024.0,
        "max_rss_bytes {rss}"
    );

    if report["curl_mb_per_s"].is_null() {
        // No curl on PATH: every curl figure is absent, not invented.
        for key in [
            "ratio",
            "curl_durable_mb_per_s",
            "durable_ratio",
            "bound_loopback_mb_per_s",
        ] {
            assert!(report[key].is_null(), "{key} without curl in {report}");
        }
        return;
    }
    let curl = seconds(&report, "curl_s");
    let fsync = seconds(&report, "curl_fsync_s");
    assert_eq!((curl.len(), fsync.len()), (2, 2));
    let curl_mb_per_s = number(&report, "curl_mb_per_s");
    assert!(close(curl_mb_per_s, median_mb_per_s(size as f64, &curl)));
    let durable: Vec<f64> = curl.iter().zip(&fsync).map(|(c, f)| c + f).collect();
    let curl_durable = number(&report, "curl_durable_mb_per_s");
    assert!(close(curl_durable, median_mb_per_s(size as f64, &durable)));
    assert!(curl_durable <= curl_mb_per_s);
    assert!(close(
        number(&report, "ratio"),
        median_ratio(&engine, &curl)
    ));
    assert!(close(
        number(&report, "durable_ratio"),
        median_ratio(&engine, &durable)
    ));
    for key in [
        "curl_mb_per_s",
        "curl_durable_mb_per_s",
        "ratio",
        "durable_ratio",
        "bound_loopback_mb_per_s",
    ] {
        spread_holds(&report, key);
    }
    assert!(number(&report, "bound_loopback_mb_per_s") > 0.0);
}
