//! `session-harness bench download`: the engine's download throughput and memory against
//! curl, on loopback from the in-process origin.
//!
//! The origin runs on its own thread. Each engine run is a child process (this binary,
//! re-executed with the hidden `--engine-only`), so its peak RSS (VmHWM) counts only the
//! engine: not the origin, not this parent. Each round runs the engine and curl in turns
//! (curl first every other round), then the bounds, so drifts of the machine hit every
//! side; 11 rounds by default (with 5, one slow run of either side moved the median
//! ratio by a tenth on two shared cores: 0.70–1.32 within one run), and every
//! figure is the median over them with its min and max (a ratio is taken per round,
//! against the curl run beside it). Each client is timed by itself (the engine's `run`
//! call; curl's `time_total`), so process start-up is left out of both. Files are removed
//! after every run.
//!
//! The engine's download is durable when its clock stops (the fsync before the rename);
//! `curl -o`'s file is still in the page cache when curl exits. So the measure depends on
//! where the file goes:
//! - **on disk** (the default directory): `durable_ratio`, the engine against curl's
//!   transfer plus an fsync of its file started right after curl exits (the two times
//!   summed; the gap between them is not counted, in curl's favour). Target >= 1.0: the
//!   engine writes back while it downloads ([`session_http`]'s write-back), curl cannot.
//! - **on tmpfs** (`--dir /dev/shm`), where durability costs nothing: `ratio`, the engine
//!   against plain `curl -o`. Target >= 0.95.
//! - `max_rss_bytes` <= 16 MiB whatever the size.
//!
//! Two bounds are measured in the same rounds: `bound_loopback_mb_per_s`, curl reading
//! the object into `/dev/null` (loopback, the origin and a client's CPU, no file), and
//! `bound_disk_mb_per_s`, writing as many bytes into a new file of the directory the way
//! the engine writes (its blocks and write-back) and fsyncing it (the disk, no network).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use session_http::{Classified, Engine, EngineConfig, Target, TransferRequest, Writeback};

use crate::bench::rss;
use crate::bench::stats::Spread;
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
    /// Rounds; each runs the engine and curl in turns, then the bounds; figures are
    /// medians.
    #[arg(long, default_value_t = 11)]
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

/// What `bench download` measured. Throughputs and ratios are medians over the rounds
/// (a ratio is taken per round, engine against the curl run beside it); `spread` has
/// each one's median, min and max, and the raw times are kept.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    /// The object's size, in bytes.
    pub size_bytes: u64,
    /// Rounds.
    pub runs: usize,
    /// The engine's throughput, in megabytes (10^6 bytes) per second; its file is
    /// durable when its clock stops.
    pub mb_per_s: f64,
    /// `curl -o`'s throughput, in megabytes per second; `None` without curl on PATH.
    pub curl_mb_per_s: Option<f64>,
    /// `mb_per_s / curl_mb_per_s`: the measure on tmpfs (target >= 0.95).
    pub ratio: Option<f64>,
    /// curl's throughput counting the fsync of its file after it exits, in megabytes
    /// per second; `None` without curl.
    pub curl_durable_mb_per_s: Option<f64>,
    /// `mb_per_s / curl_durable_mb_per_s`: both files durable when the clock stops; the
    /// measure on disk (target >= 1.0).
    pub durable_ratio: Option<f64>,
    /// The largest peak RSS (VmHWM) of the engine's processes, in bytes (target <= 16 MiB).
    pub max_rss_bytes: u64,
    /// Loopback's bound: curl reading the object and writing nothing (`-o /dev/null`),
    /// in megabytes per second; `None` without curl.
    pub bound_loopback_mb_per_s: Option<f64>,
    /// The disk's bound: writing the object's size into a new file in the directory as
    /// the engine writes it and fsyncing it, with no network, in megabytes per second.
    pub bound_disk_mb_per_s: f64,
    /// Each figure's median, min and max over the rounds.
    pub spread: BTreeMap<&'static str, Spread>,
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

/// The times of one round, in seconds (curl's are `None` without curl).
#[derive(Debug, Clone, Copy)]
struct Round {
    engine_s: f64,
    curl: Option<CurlRun>,
    disk_s: f64,
}

/// One curl round: the transfer, the fsync after it, and the transfer writing nothing.
#[derive(Debug, Clone, Copy)]
struct CurlRun {
    transfer_s: f64,
    fsync_s: f64,
    loopback_s: f64,
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
    if !curl {
        eprintln!("bench download: curl is not on PATH; the curl figures are skipped");
    }

    let mut rounds = Vec::with_capacity(args.runs);
    let mut max_rss_bytes = 0;
    for round in 0..args.runs {
        // Every other round curl goes first, so that what one side leaves to the disk
        // (write-back, freed blocks) falls on each side as often.
        let curl_first = curl && round % 2 == 1;
        let early = if curl_first {
            Some(curl_round(&url, dir.path(), args.size)?)
        } else {
            None
        };
        let run = engine_in_child(&url, dir.path())?;
        ensure!(
            run.bytes == args.size,
            "the engine downloaded {} of {} bytes",
            run.bytes,
            args.size
        );
        max_rss_bytes = max_rss_bytes.max(run.max_rss_bytes);
        let curl = match early {
            Some(early) => Some(early),
            None if curl => Some(curl_round(&url, dir.path(), args.size)?),
            None => None,
        };
        rounds.push(Round {
            engine_s: run.seconds,
            curl,
            disk_s: disk_once(dir.path(), args.size)?,
        });
    }
    let report = summarize(args, &rounds, max_rss_bytes)?;
    print(&report, args.json)?;
    Ok(Some(report))
}

fn summarize(
    args: &DownloadArgs,
    rounds: &[Round],
    max_rss_bytes: u64,
) -> anyhow::Result<DownloadReport> {
    let mb = args.size as f64 / 1e6;
    let mut spread = BTreeMap::new();
    let mut figure = |name: &'static str, values: Vec<f64>| -> Option<f64> {
        let summary = Spread::of(&values)?;
        spread.insert(name, summary);
        Some(summary.median)
    };
    let engine_s: Vec<f64> = rounds.iter().map(|round| round.engine_s).collect();
    let curls: Vec<(f64, CurlRun)> = rounds
        .iter()
        .filter_map(|round| round.curl.map(|curl| (round.engine_s, curl)))
        .collect();
    let rate = |seconds: f64| mb / seconds;
    let mb_per_s =
        figure("mb_per_s", engine_s.iter().map(|&s| rate(s)).collect()).context("no engine run")?;
    let curl_mb_per_s = figure(
        "curl_mb_per_s",
        curls.iter().map(|(_, c)| rate(c.transfer_s)).collect(),
    );
    let curl_durable_mb_per_s = figure(
        "curl_durable_mb_per_s",
        curls
            .iter()
            .map(|(_, c)| rate(c.transfer_s + c.fsync_s))
            .collect(),
    );
    // Per round: the engine against the curl run right after it.
    let ratio = figure(
        "ratio",
        curls.iter().map(|(e, c)| c.transfer_s / e).collect(),
    );
    let durable_ratio = figure(
        "durable_ratio",
        curls
            .iter()
            .map(|(e, c)| (c.transfer_s + c.fsync_s) / e)
            .collect(),
    );
    let bound_loopback_mb_per_s = figure(
        "bound_loopback_mb_per_s",
        curls.iter().map(|(_, c)| rate(c.loopback_s)).collect(),
    );
    let bound_disk_mb_per_s = figure(
        "bound_disk_mb_per_s",
        rounds.iter().map(|round| rate(round.disk_s)).collect(),
    )
    .context("no disk run")?;
    Ok(DownloadReport {
        size_bytes: args.size,
        runs: args.runs,
        mb_per_s,
        curl_mb_per_s,
        ratio,
        curl_durable_mb_per_s,
        durable_ratio,
        max_rss_bytes,
        bound_loopback_mb_per_s,
        bound_disk_mb_per_s,
        spread,
        curl_s: curls.iter().map(|(_, c)| c.transfer_s).collect(),
        curl_fsync_s: curls.iter().map(|(_, c)| c.fsync_s).collect(),
        engine_s,
    })
}

fn print(report: &DownloadReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "bench download: {} bytes, {} rounds (median [min..max])",
        report.size_bytes, report.runs
    );
    for (name, spread) in &report.spread {
        println!("  {name:<24} {}", spread.show(3));
    }
    println!(
        "  {:<24} {:.1} MiB",
        "max_rss",
        report.max_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
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

/// One curl round: the download into `dir` and the fsync of its file right after,
/// then the same download writing nothing.
fn curl_round(url: &str, dir: &Path, size: u64) -> anyhow::Result<CurlRun> {
    let file = dir.join("curl");
    let transfer_s = curl_once(url, &file)?;
    let fsync_started = Instant::now();
    File::open(&file)
        .and_then(|opened| opened.sync_all())
        .with_context(|| format!("fsyncing {}", file.display()))?;
    let fsync_s = fsync_started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file)?.len();
    std::fs::remove_file(&file)?;
    ensure!(bytes == size, "curl downloaded {bytes} of {size} bytes");
    let loopback_s = curl_once(url, Path::new("/dev/null"))?;
    Ok(CurlRun {
        transfer_s,
        fsync_s,
        loopback_s,
    })
}

/// One download with curl into `output`; returns curl's own transfer time (its
/// `time_total`, which leaves out the process's start and exit).
fn curl_once(url: &str, output: &Path) -> anyhow::Result<f64> {
    let result = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--noproxy", "*"])
        .args(["--write-out", "%{time_total}", "--output"])
        .arg(output)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    ensure!(
        result.status.success(),
        "curl failed: {} {}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    let text = String::from_utf8_lossy(&result.stdout);
    text.trim()
        .parse::<f64>()
        .with_context(|| format!("reading curl's time_total {text:?}"))
}

/// Writes `size` bytes into a new file in `dir` the way the engine does (1 MiB blocks,
/// write-back started as it goes, [`Writeback`]) and fsyncs it, with no network; returns
/// the seconds it took. The file is removed.
fn disk_once(dir: &Path, size: u64) -> anyhow::Result<f64> {
    let path = dir.join("disk");
    let block = vec![0xA5_u8; 1 << 20];
    let started = Instant::now();
    let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut writeback = Writeback::new(0);
    let mut left = size;
    while left > 0 {
        let len = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
        file.write_all(&block[..len])?;
        writeback.written(&file, len as u64)?;
        left -= len as u64;
    }
    file.sync_all()?;
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(seconds)
}
