//! `session-harness bench download`: the engine's download throughput and memory against
//! curl, on loopback from the in-process origin.
//!
//! The origin runs on its own thread. Each engine run is a child process (this binary,
//! re-executed with the hidden `--engine-only`), so its peak RSS (VmHWM) counts only the
//! engine: not the origin, not this parent. Runs alternate engine and curl (3 each by
//! default) so drifts of the machine hit both; each side's best run is reported, timed by
//! the client itself (the engine's `run` call; curl's `time_total`), so process start-up is
//! left out of both. Files are removed after every run.
//!
//! The engine's time includes what `curl -o` does not do: making the file durable (the
//! fsync before the rename). curl's file is still only in the page cache when curl
//! exits, so where the disk takes new data more slowly than loopback delivers it,
//! `ratio` measures the disk rather than the client. So each curl run is followed by an
//! fsync of its file, timed apart: `curl_durable_mb_per_s` counts curl's transfer plus
//! that fsync, and `durable_ratio` compares the engine with it like for like (both files
//! durable when the clock stops). `ratio` stays the comparison with plain `curl -o`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use session_http::{Classified, Engine, EngineConfig, Target, TransferRequest};

use crate::bench::rss;
use crate::origin::{Origin, OriginConfig};

/// The seed of the benchmark's object.
const SEED: u64 = 0xBE7C;
/// The object's name at the origin.
const OBJECT: &str = "bench-download";

/// Options of `bench download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// The size of the object downloaded, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub size: u64,
    /// Runs of each client; they alternate and the best of each is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the files are written (a temporary directory inside it); default: the
    /// system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
    /// Internal: download `--url` into `--dir` with the engine once and print the run's
    /// figures as JSON (the parent runs this in a child process).
    #[arg(long, hide = true)]
    pub engine_only: bool,
    /// Internal: the URL for `--engine-only`.
    #[arg(long, hide = true)]
    pub url: Option<String>,
}

/// What `bench download` measured.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    /// The object's size, in bytes.
    pub size_bytes: u64,
    /// Runs of each client.
    pub runs: usize,
    /// The engine's best throughput, in megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// curl's best throughput, in megabytes per second; `None` without curl on PATH.
    pub curl_mb_per_s: Option<f64>,
    /// `mb_per_s / curl_mb_per_s`.
    pub ratio: Option<f64>,
    /// curl's best throughput counting the fsync of its file after it exits, in megabytes
    /// per second; `None` without curl.
    pub curl_durable_mb_per_s: Option<f64>,
    /// `mb_per_s / curl_durable_mb_per_s`: both files durable when the clock stops.
    pub durable_ratio: Option<f64>,
    /// The largest peak RSS (VmHWM) of the engine's processes, in bytes.
    pub max_rss_bytes: u64,
    /// Every engine run's transfer time, in seconds.
    pub engine_s: Vec<f64>,
    /// Every curl run's transfer time, in seconds.
    pub curl_s: Vec<f64>,
    /// Every curl run's fsync of its file, in seconds (after the matching `curl_s`).
    pub curl_fsync_s: Vec<f64>,
}

/// One engine run, as the child reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EngineRun {
    bytes: u64,
    seconds: f64,
    max_rss_bytes: u64,
}

/// Runs the benchmark (or, with `--engine-only`, one engine run) and prints its figures.
///
/// # Errors
/// Setup failures, a failed or short download, or a child that does not report.
pub fn run(args: &DownloadArgs) -> anyhow::Result<Option<DownloadReport>> {
    if args.engine_only {
        let url = args.url.as_deref().context("--engine-only needs --url")?;
        let dir = args.dir.as_deref().context("--engine-only needs --dir")?;
        let run = engine_once(url, dir)?;
        println!("{}", serde_json::to_string(&run)?);
        return Ok(None);
    }
    ensure!(args.runs > 0, "--runs must be at least 1");
    let origin = Origin::start_in_thread(OriginConfig {
        seed: SEED,
        port: 0,
    })
    .context("starting the origin")?;
    let url = origin.url(&format!("/objects/{OBJECT}?size={}", args.size));
    let parent = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    let dir = tempfile::tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let curl = curl_available();

    let mut engine_s = Vec::with_capacity(args.runs);
    let mut curl_s = Vec::with_capacity(args.runs);
    let mut curl_fsync_s = Vec::with_capacity(args.runs);
    let mut max_rss_bytes = 0;
    for _ in 0..args.runs {
        let run = engine_in_child(&url, dir.path())?;
        ensure!(
            run.bytes == args.size,
            "the engine downloaded {} of {} bytes",
            run.bytes,
            args.size
        );
        engine_s.push(run.seconds);
        max_rss_bytes = max_rss_bytes.max(run.max_rss_bytes);
        if curl {
            let (transfer, fsync) = curl_once(&url, dir.path(), args.size)?;
            curl_s.push(transfer);
            curl_fsync_s.push(fsync);
        }
    }
    let mb = args.size as f64 / 1e6;
    let best = |times: &[f64]| times.iter().copied().fold(f64::INFINITY, f64::min);
    let mb_per_s = mb / best(&engine_s);
    let curl_mb_per_s = curl.then(|| mb / best(&curl_s));
    let curl_durable: Vec<f64> = curl_s
        .iter()
        .zip(&curl_fsync_s)
        .map(|(transfer, fsync)| transfer + fsync)
        .collect();
    let curl_durable_mb_per_s = curl.then(|| mb / best(&curl_durable));
    let report = DownloadReport {
        size_bytes: args.size,
        runs: args.runs,
        mb_per_s,
        curl_mb_per_s,
        ratio: curl_mb_per_s.map(|curl| mb_per_s / curl),
        curl_durable_mb_per_s,
        durable_ratio: curl_durable_mb_per_s.map(|curl| mb_per_s / curl),
        max_rss_bytes,
        engine_s,
        curl_s,
        curl_fsync_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let figure = |value: Option<f64>, unit: &str| {
            value.map_or("- (curl not on PATH)".to_owned(), |v| {
                format!("{v:.3}{unit}")
            })
        };
        println!(
            "bench download: {} bytes, best of {} runs each",
            report.size_bytes, report.runs
        );
        println!("  engine (durable)     {:>9.0} MB/s", report.mb_per_s);
        println!(
            "  curl -o              {:>14}   ratio {}",
            figure(report.curl_mb_per_s, " MB/s"),
            figure(report.ratio, "")
        );
        println!(
            "  curl -o, then fsync  {:>14}   durable_ratio {}",
            figure(report.curl_durable_mb_per_s, " MB/s"),
            figure(report.durable_ratio, "")
        );
        println!(
            "  engine max RSS       {:>9.1} MiB",
            report.max_rss_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(Some(report))
}

/// One download with the engine in this process, on a current-thread runtime (as an
/// actix arbiter runs it); the file is removed afterwards.
fn engine_once(url: &str, dir: &Path) -> anyhow::Result<EngineRun> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = EngineConfig {
        proxy_from_environment: false,
        ..EngineConfig::default()
    };
    let engine = Engine::new(config)?;
    let target = Target {
        download_dir: dir.to_owned(),
        name: "engine".to_owned(),
        idempotency_key: None,
    };
    let request = TransferRequest::download(url);
    let started = Instant::now();
    let outcome = runtime.block_on(engine.run(&request, &target, None));
    let seconds = started.elapsed().as_secs_f64();
    let Classified::Success(response) = outcome else {
        bail!("the engine's download did not succeed: {outcome:?}");
    };
    let file = response.file.context("a download names its file")?;
    let bytes = std::fs::metadata(&file)?.len();
    std::fs::remove_file(&file)?;
    Ok(EngineRun {
        bytes,
        seconds,
        max_rss_bytes: rss::max_rss_bytes()?,
    })
}

fn engine_in_child(url: &str, dir: &Path) -> anyhow::Result<EngineRun> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let output = Command::new(exe)
        .args(["bench", "download", "--engine-only", "--url", url, "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the engine's child process")?;
    ensure!(
        output.status.success(),
        "the engine's child failed: {}",
        output.status
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .last()
        .context("the engine's child printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("reading the child's report {line:?}"))
}

/// Whether `curl` runs from PATH.
pub(crate) fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// One download with curl; returns curl's own transfer time and the time of the fsync
/// of its file that follows.
fn curl_once(url: &str, dir: &Path, size: u64) -> anyhow::Result<(f64, f64)> {
    let file = dir.join("curl");
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--noproxy", "*"])
        .args(["--write-out", "%{time_total}", "--output"])
        .arg(&file)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "curl failed: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let fsync_started = Instant::now();
    File::open(&file)
        .and_then(|opened| opened.sync_all())
        .with_context(|| format!("fsyncing {}", file.display()))?;
    let fsync = fsync_started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file)?.len();
    std::fs::remove_file(&file)?;
    ensure!(bytes == size, "curl downloaded {bytes} of {size} bytes");
    let text = String::from_utf8_lossy(&output.stdout);
    let transfer = text
        .trim()
        .parse::<f64>()
        .with_context(|| format!("reading curl's time_total {text:?}"))?;
    Ok((transfer, fsync))
}
