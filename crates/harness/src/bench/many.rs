//! `session-harness bench many`: many small downloads through `Sessions`, each result
//! durable and delivered exactly once to a transactional delegate, against curl fetching
//! the same URLs in parallel, in the same run.
//!
//! By default 5,000 downloads of 64 KiB over 50 sessions, from the in-process origin on
//! 127.0.0.1. Each round runs the following, the first two in turns (curl first every
//! other round), so drifts of the machine hit every side:
//!
//! 1. **The engine**: a fresh `Sessions` in a fresh directory, one session per
//!    `--sessions` with a transactional delegate, every session's share of the tasks
//!    enqueued as one batch; the clock runs from the first enqueue until every batch has
//!    finished (every event delivered). The delegate writes one row per task into an
//!    application table in the delivery's transaction and counts a second delivery of a
//!    task instead of refusing it, so the check after the round ([`check_deliveries`])
//!    sees every task delivered exactly once, successful, with a complete file.
//!    `connections_per_host_max` is `--parallel`, the same bound curl gets.
//! 2. **curl**: `curl --parallel --parallel-max N -K <config>` with one `url`/`output`
//!    pair per task, into a fresh directory; the clock is the process's wall time. Then
//!    every file is fsynced, one after the other, timed apart: `curl_durable_tasks_per_s`
//!    counts both, as the engine's figure does (its files and events are durable when
//!    its clock stops).
//! 3. **The bounds** of this machine, measured here rather than assumed: the same curl
//!    run writing nothing (`output = /dev/null`: loopback, the origin and curl's CPU), and
//!    the latency of one write-and-fsync of a file of `--size` in the directory.
//!
//! Every figure is the median over `--rounds` (7 by default: on a shared machine whose
//! file creation has slow phases, 5 rounds let two slow rounds of one side and one fast
//! round of the other move a median ratio from 1.3 to 0.7), with its spread (min and
//! max).
//!
//! # Delivery latency
//!
//! An event does not carry when its transfer ended, so the delegate takes it from the
//! file: its modification time is the moment the engine wrote the body's last bytes
//! (the fsync and the rename that follow leave it alone). `latency_ms_*` is the time
//! from then to the delegate's call, so it includes the file's fsync, the commit of the
//! task's result and the wait for its delivery unit. File times come from the kernel's
//! coarse clock (one tick, 1 to 4 ms), so a latency can read up to a tick long.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use session_actor::{
    AppTable, Delegate, DelegateError, Delivery, EngineConfig, Event, SessionConfig, Sessions,
    TransferRequest, WriteScope,
};

use crate::bench::stats::{Spread, quantile};
use crate::origin::{Origin, OriginConfig, OriginHandle};

/// The seed of the benchmark's objects.
const SEED: u64 = 0x3A27;
/// The application table the delegate writes.
const TABLE: &str = "bench-many";
/// How long one engine round may take before the benchmark gives up.
const ROUND_S_MAX: u64 = 1800;
/// Write-and-fsync probes per round for `bound_fsync_ms`.
const FSYNC_PROBES: usize = 100;

/// Options of `bench many`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManyArgs {
    /// Downloads in all.
    #[arg(long, default_value_t = 5000)]
    pub tasks: usize,
    /// Sessions the downloads are spread over (evenly).
    #[arg(long, default_value_t = 50)]
    pub sessions: usize,
    /// The size of each download, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub size: u64,
    /// Transfers at once: the engine's `connections_per_host_max` and curl's
    /// `--parallel-max`.
    #[arg(long, default_value_t = 50)]
    pub parallel: usize,
    /// Rounds; each runs the engine and curl in turns; figures are medians over them.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Where the files and the store go (a temporary directory inside it); default: the
    /// system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
}

/// What `bench many` measured. Top-level figures are medians over the rounds; `spread`
/// has each one's median, min and max.
#[derive(Debug, Clone, Serialize)]
pub struct ManyReport {
    /// Downloads per round.
    pub tasks: usize,
    /// Sessions.
    pub sessions: usize,
    /// Bytes per download.
    pub size_bytes: u64,
    /// Transfers at once, for both clients.
    pub parallel: usize,
    /// Rounds.
    pub rounds: usize,
    /// Downloads per second through `Sessions`, each durable and delivered exactly once.
    pub tasks_per_s: f64,
    /// Downloads per second of `curl --parallel`; `None` without curl.
    pub curl_tasks_per_s: Option<f64>,
    /// Downloads per second of the same curl run followed by an fsync of every file.
    pub curl_durable_tasks_per_s: Option<f64>,
    /// `tasks_per_s / curl_tasks_per_s`, per round, median.
    pub ratio: Option<f64>,
    /// `tasks_per_s / curl_durable_tasks_per_s`, per round, median.
    pub durable_ratio: Option<f64>,
    /// Median delivery latency (end of transfer to delegate call), in ms.
    pub latency_ms_p50: f64,
    /// 99th percentile of the delivery latency, in ms.
    pub latency_ms_p99: f64,
    /// The median latency of one write-and-fsync of a `size` file in the directory, ms.
    pub bound_fsync_ms: f64,
    /// Downloads per second of curl writing nothing (loopback, origin and CPU bound).
    pub bound_loopback_tasks_per_s: Option<f64>,
    /// Each figure's median, min and max over the rounds.
    pub spread: BTreeMap<&'static str, Spread>,
    /// Every engine round's time, in seconds.
    pub engine_s: Vec<f64>,
    /// Every engine round's requests to the origin (the tasks, plus one per retried
    /// attempt), so a slow round shows whether retries made it slow.
    pub engine_requests: Vec<u64>,
    /// Every curl round's transfer time, in seconds.
    pub curl_s: Vec<f64>,
    /// Every curl round's fsync of all its files, in seconds.
    pub curl_fsync_s: Vec<f64>,
}

/// The delegate's row for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// How many times the task's event reached the delegate (exactly once: 1).
    pub deliveries: u32,
    /// The outcome's name.
    pub outcome: String,
    /// The delivered file's length (`None`: no file).
    pub bytes: Option<u64>,
    /// From the file's last write to the delegate's call, in microseconds.
    pub latency_us: u64,
}

/// One engine round.
#[derive(Debug, Clone)]
struct EngineRound {
    seconds: f64,
    requests: u64,
    latencies_ms: Vec<f64>,
}

/// One curl round.
#[derive(Debug, Clone, Copy)]
struct CurlRound {
    transfer_s: f64,
    fsync_s: f64,
    loopback_s: f64,
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// Setup failures, a failed download on either side, or a delivery count that is not
/// exactly once per task.
pub fn run(args: &ManyArgs) -> anyhow::Result<ManyReport> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.sessions > 0, "--sessions must be at least 1");
    ensure!(args.parallel > 0, "--parallel must be at least 1");
    ensure!(
        args.tasks >= args.sessions,
        "--tasks must be at least --sessions"
    );
    let origin = Origin::start_in_thread(OriginConfig {
        seed: SEED,
        port: 0,
    })
    .context("starting the origin")?;
    let urls: Vec<String> = (0..args.tasks)
        .map(|index| origin.url(&format!("/objects/many-{index}?size={}", args.size)))
        .collect();
    let parent = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    let curl = super::download::curl_available();
    if !curl {
        eprintln!("bench many: curl is not on PATH; the curl figures are skipped");
    }
    let mut engine = Vec::with_capacity(args.rounds);
    let mut curls = Vec::with_capacity(args.rounds);
    let mut fsync_ms = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        // Every other round curl goes first, so that what one side leaves to the disk
        // (write-back, freed blocks) falls on each side as often.
        let curl_first = curl && round % 2 == 1;
        if curl_first {
            curls.push(curl_round(&urls, args, &parent)?);
        }
        engine.push(engine_round(&urls, args, &parent, &origin)?);
        if curl && !curl_first {
            curls.push(curl_round(&urls, args, &parent)?);
        }
        fsync_ms.push(fsync_probe(&parent, args.size)?);
    }
    let report = summarize(args, &engine, &curls, &fsync_ms)?;
    print(&report, args.json)?;
    Ok(report)
}

fn summarize(
    args: &ManyArgs,
    engine: &[EngineRound],
    curls: &[CurlRound],
    fsync_ms: &[f64],
) -> anyhow::Result<ManyReport> {
    let tasks = args.tasks as f64;
    let mut spread = BTreeMap::new();
    let mut figure = |name: &'static str, values: Vec<f64>| -> Option<f64> {
        let summary = Spread::of(&values)?;
        spread.insert(name, summary);
        Some(summary.median)
    };
    let engine_s: Vec<f64> = engine.iter().map(|round| round.seconds).collect();
    let engine_rate: Vec<f64> = engine_s.iter().map(|s| tasks / s).collect();
    let tasks_per_s = figure("tasks_per_s", engine_rate.clone()).context("no engine round")?;
    let p50: Vec<f64> = engine
        .iter()
        .filter_map(|round| quantile(&round.latencies_ms, 0.5))
        .collect();
    let p99: Vec<f64> = engine
        .iter()
        .filter_map(|round| quantile(&round.latencies_ms, 0.99))
        .collect();
    let latency_ms_p50 = figure("latency_ms_p50", p50).context("no latency")?;
    let latency_ms_p99 = figure("latency_ms_p99", p99).context("no latency")?;
    let bound_fsync_ms = figure("bound_fsync_ms", fsync_ms.to_vec()).context("no fsync")?;
    let curl_rate: Vec<f64> = curls.iter().map(|c| tasks / c.transfer_s).collect();
    let durable_rate: Vec<f64> = curls
        .iter()
        .map(|c| tasks / (c.transfer_s + c.fsync_s))
        .collect();
    let loopback_rate: Vec<f64> = curls.iter().map(|c| tasks / c.loopback_s).collect();
    let per_round = |rates: &[f64]| -> Vec<f64> {
        engine_rate
            .iter()
            .zip(rates)
            .map(|(engine, other)| engine / other)
            .collect()
    };
    let ratio_rounds = per_round(&curl_rate);
    let durable_rounds = per_round(&durable_rate);
    Ok(ManyReport {
        tasks: args.tasks,
        sessions: args.sessions,
        size_bytes: args.size,
        parallel: args.parallel,
        rounds: args.rounds,
        tasks_per_s,
        curl_tasks_per_s: figure("curl_tasks_per_s", curl_rate),
        curl_durable_tasks_per_s: figure("curl_durable_tasks_per_s", durable_rate),
        ratio: figure("ratio", ratio_rounds),
        durable_ratio: figure("durable_ratio", durable_rounds),
        latency_ms_p50,
        latency_ms_p99,
        bound_fsync_ms,
        bound_loopback_tasks_per_s: figure("bound_loopback_tasks_per_s", loopback_rate),
        spread,
        engine_s,
        engine_requests: engine.iter().map(|round| round.requests).collect(),
        curl_s: curls.iter().map(|c| c.transfer_s).collect(),
        curl_fsync_s: curls.iter().map(|c| c.fsync_s).collect(),
    })
}

fn print(report: &ManyReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "bench many: {} downloads of {} bytes over {} sessions, {} at once, {} rounds \
         (median [min..max])",
        report.tasks, report.size_bytes, report.sessions, report.parallel, report.rounds
    );
    for (name, spread) in &report.spread {
        println!("  {name:<28} {}", spread.show(3));
    }
    Ok(())
}

/// One round through `Sessions` in a fresh directory inside `parent`; checks that every
/// task was delivered exactly once.
fn engine_round(
    urls: &[String],
    args: &ManyArgs,
    parent: &Path,
    origin: &OriginHandle,
) -> anyhow::Result<EngineRound> {
    let requests_before = origin.counters().requests_total;
    let dir = tempfile::tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (seconds, rows, expected) = runtime.block_on(engine_downloads(urls, args, dir.path()))?;
    check_deliveries(&expected, &rows, args.size)?;
    let latencies_ms = rows
        .iter()
        .map(|(_, row)| row.latency_us as f64 / 1000.0)
        .collect();
    Ok(EngineRound {
        seconds,
        requests: origin.counters().requests_total - requests_before,
        latencies_ms,
    })
}

/// The key of a task's row: `<session>/<task>`.
fn row_key(session: &str, task: &str) -> String {
    format!("{session}/{task}")
}

type Rows = Vec<(String, Delivered)>;

async fn engine_downloads(
    urls: &[String],
    args: &ManyArgs,
    dir: &Path,
) -> anyhow::Result<(f64, Rows, Vec<String>)> {
    let sessions = Sessions::builder(dir.join("transfers"))
        .engine_config(EngineConfig {
            proxy_from_environment: false,
            connections_per_host_max: args.parallel,
            ..EngineConfig::default()
        })
        .app_table(TABLE)
        .open()?;
    let mut handles = Vec::with_capacity(args.sessions);
    let mut batches = Vec::with_capacity(args.sessions);
    let mut expected = Vec::with_capacity(urls.len());
    for index in 0..args.sessions {
        let name = format!("many-{index:04}");
        let delegate = Delegate::transactional(record(name.clone()));
        handles.push(
            sessions
                .session(&name, SessionConfig::default(), delegate)
                .await?,
        );
        let tasks: Vec<(String, TransferRequest)> = urls
            .iter()
            .enumerate()
            .skip(index)
            .step_by(args.sessions)
            .map(|(task, url)| (format!("t{task}"), TransferRequest::download(url)))
            .collect();
        expected.extend(tasks.iter().map(|(task, _)| row_key(&name, task)));
        batches.push(tasks);
    }
    let started = Instant::now();
    let enqueued = futures_util::future::try_join_all(
        handles
            .iter()
            .zip(batches)
            .map(|(session, tasks)| session.enqueue_batch(tasks, None)),
    )
    .await?;
    let finished = futures_util::future::try_join_all(enqueued.iter().map(|b| b.finished()));
    tokio::time::timeout(Duration::from_secs(ROUND_S_MAX), finished)
        .await
        .with_context(|| format!("the downloads did not finish in {ROUND_S_MAX} s"))??;
    let seconds = started.elapsed().as_secs_f64();
    let rows = AppTable::<Delivered>::named(TABLE)?
        .entries(&sessions.snapshot()?)?
        .into_iter()
        .map(|(key, row)| (String::from_utf8_lossy(&key).into_owned(), row))
        .collect();
    sessions.shutdown().await?;
    Ok((seconds, rows, expected))
}

/// The delegate of session `session`: one row per task, in the delivery's transaction; a
/// second delivery of a task is counted in its row (never refused, so the check sees it).
fn record(
    session: String,
) -> impl Fn(&Delivery, &mut WriteScope<'_>) -> Result<(), DelegateError> + Send + Sync + 'static {
    move |delivery, scope| {
        let Event::TaskCompleted {
            task,
            outcome,
            file,
            ..
        } = &delivery.event
        else {
            return Ok(());
        };
        let now = SystemTime::now();
        let (bytes, latency_us) = match file {
            Some(file) => {
                let metadata = std::fs::metadata(file.path()).map_err(|error| {
                    DelegateError::new(format!("{}: {error}", file.path().display()))
                })?;
                let written = metadata
                    .modified()
                    .map_err(|error| DelegateError::new(error.to_string()))?;
                let latency = now.duration_since(written).unwrap_or(Duration::ZERO);
                (Some(metadata.len()), latency.as_micros() as u64)
            }
            None => (None, 0),
        };
        let table = AppTable::<Delivered>::named(TABLE)?;
        let key = row_key(&session, task.as_str());
        let deliveries = table.get(scope, &key)?.map_or(0, |row| row.deliveries) + 1;
        let row = Delivered {
            deliveries,
            outcome: outcome.name().to_owned(),
            bytes,
            latency_us,
        };
        table.put(scope, &key, &row)?;
        Ok(())
    }
}

/// Checks that every expected task has exactly one row, delivered once, successful, with
/// a file of `size` bytes, and that no row names a task not expected.
///
/// # Errors
/// The first few tasks delivered twice or more, missing, unexpected, failed or short.
pub fn check_deliveries(expected: &[String], rows: &Rows, size: u64) -> anyhow::Result<()> {
    let mut by_key: HashMap<&str, &Delivered> = HashMap::with_capacity(rows.len());
    let mut problems = Vec::new();
    for (key, row) in rows {
        if by_key.insert(key.as_str(), row).is_some() {
            problems.push(format!("{key}: two rows"));
        }
    }
    for key in expected {
        match by_key.remove(key.as_str()) {
            None => problems.push(format!("{key}: never delivered")),
            Some(row) if row.deliveries != 1 => {
                problems.push(format!("{key}: delivered {} times", row.deliveries));
            }
            Some(row) if row.outcome != "success" => {
                problems.push(format!("{key}: outcome {}", row.outcome));
            }
            Some(row) if row.bytes != Some(size) => {
                problems.push(format!("{key}: file of {:?} bytes, not {size}", row.bytes));
            }
            Some(_) => {}
        }
    }
    problems.extend(
        by_key
            .keys()
            .map(|key| format!("{key}: not a task of the run")),
    );
    if problems.is_empty() {
        return Ok(());
    }
    let mut text = format!("{} deliveries are not exactly once:", problems.len());
    for problem in problems.iter().take(5) {
        let _ = write!(text, " {problem};");
    }
    bail!(text)
}

/// One curl round: the download into a fresh directory, the fsync of every file, and
/// the same download writing nothing.
fn curl_round(urls: &[String], args: &ManyArgs, parent: &Path) -> anyhow::Result<CurlRound> {
    let dir = tempfile::tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let outputs: Vec<PathBuf> = (0..urls.len())
        .map(|index| dir.path().join(format!("many-{index}")))
        .collect();
    let config = dir.path().join("curl.config");
    write_curl_config(&config, urls, outputs.iter().map(|path| path.as_path()))?;
    let transfer_s = curl_parallel(&config, args.parallel)?;
    let fsync_started = Instant::now();
    for output in &outputs {
        File::open(output)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("fsyncing {}", output.display()))?;
    }
    let fsync_s = fsync_started.elapsed().as_secs_f64();
    for output in &outputs {
        let bytes = std::fs::metadata(output)?.len();
        ensure!(
            bytes == args.size,
            "curl wrote {bytes} of {} bytes to {}",
            args.size,
            output.display()
        );
    }
    let null = dir.path().join("curl-null.config");
    write_curl_config(&null, urls, urls.iter().map(|_| Path::new("/dev/null")))?;
    let loopback_s = curl_parallel(&null, args.parallel)?;
    Ok(CurlRound {
        transfer_s,
        fsync_s,
        loopback_s,
    })
}

fn write_curl_config<'a>(
    path: &Path,
    urls: &[String],
    outputs: impl Iterator<Item = &'a Path>,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for (url, output) in urls.iter().zip(outputs) {
        let output = output
            .to_str()
            .with_context(|| format!("{} is not UTF-8", output.display()))?;
        ensure!(
            !output.contains(['"', '\\']) && !url.contains(['"', '\\']),
            "a path or URL that a curl config cannot quote simply: {output} {url}"
        );
        let _ = writeln!(text, "url = \"{url}\"\noutput = \"{output}\"");
    }
    File::create(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs curl on a config of url/output pairs; returns its wall time in seconds.
fn curl_parallel(config: &Path, parallel: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new("curl")
        .args(["--parallel", "--parallel-max", &parallel.to_string()])
        .args(["--silent", "--show-error", "--fail", "--noproxy", "*", "-K"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        output.status.success(),
        "curl failed: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(seconds)
}

/// The median latency, in ms, of writing a new file of `size` bytes and fsyncing it, in
/// a fresh directory inside `parent`.
fn fsync_probe(parent: &Path, size: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let block = vec![0x5A_u8; usize::try_from(size).unwrap_or(usize::MAX).min(1 << 20)];
    let mut latencies = Vec::with_capacity(FSYNC_PROBES);
    for probe in 0..FSYNC_PROBES {
        let path = dir.path().join(format!("probe-{probe}"));
        let started = Instant::now();
        let mut file = File::create(&path)?;
        let mut left = size;
        while left > 0 {
            let len = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
            file.write_all(&block[..len])?;
            left -= len as u64;
        }
        file.sync_all()?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    quantile(&latencies, 0.5).context("no probe")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(deliveries: u32, bytes: u64) -> Delivered {
        Delivered {
            deliveries,
            outcome: "success".to_owned(),
            bytes: Some(bytes),
            latency_us: 10,
        }
    }

    /// The exactly-once check passes a clean ledger and rejects a planted duplicate, a
    /// missing task, an extra row, a short file and a failed outcome.
    #[test]
    fn the_delivery_check_can_fail() {
        let expected: Vec<String> = (0..3).map(|i| format!("s/t{i}")).collect();
        let clean: Rows = expected
            .iter()
            .map(|key| (key.clone(), row(1, 8)))
            .collect();
        check_deliveries(&expected, &clean, 8).expect("a clean ledger");

        let mut duplicate = clean.clone();
        duplicate[1].1.deliveries = 2;
        let error = check_deliveries(&expected, &duplicate, 8).expect_err("a duplicate");
        assert!(
            error.to_string().contains("s/t1: delivered 2 times"),
            "{error}"
        );

        let missing: Rows = clean[..2].to_vec();
        let error = check_deliveries(&expected, &missing, 8).expect_err("a missing task");
        assert!(
            error.to_string().contains("s/t2: never delivered"),
            "{error}"
        );

        let mut extra = clean.clone();
        extra.push(("s/t9".to_owned(), row(1, 8)));
        let error = check_deliveries(&expected, &extra, 8).expect_err("an extra row");
        assert!(error.to_string().contains("s/t9: not a task"), "{error}");

        let mut short = clean.clone();
        short[0].1.bytes = Some(7);
        assert!(check_deliveries(&expected, &short, 8).is_err());

        let mut failed = clean;
        failed[2].1.outcome = "failed".to_owned();
        assert!(check_deliveries(&expected, &failed, 8).is_err());
    }

    /// A small run produces every figure: the engine's downloads all delivered once (the
    /// check inside the run), a positive rate and latency, and, with curl on PATH, the
    /// curl figures and ratios.
    #[test]
    fn a_small_run_produces_figures() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let args = ManyArgs {
            tasks: 24,
            sessions: 3,
            size: 4096,
            parallel: 4,
            rounds: 1,
            dir: Some(dir.path().to_owned()),
            json: true,
        };
        let report = run(&args)?;
        assert_eq!(report.engine_s.len(), 1);
        assert!(report.tasks_per_s > 0.0);
        assert!(report.latency_ms_p99 >= report.latency_ms_p50);
        assert!(report.bound_fsync_ms >= 0.0);
        if super::super::download::curl_available() {
            assert!(report.curl_tasks_per_s.is_some_and(|rate| rate > 0.0));
            assert!(report.durable_ratio.is_some());
            assert!(report.bound_loopback_tasks_per_s.is_some());
        }
        Ok(())
    }
}
