//! The crash loop: start the worker, kill it with SIGKILL at a random instant or let it
//! abort at an armed fail point, start it again, and so on; then one last worker without
//! faults runs to the end, and the verifier reads what is left.

use std::io::{BufRead as _, BufReader, IsTerminal as _, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::facts::{Facts, OriginFacts};
use super::inspect;
use super::plan::{self, PlanShape};
use super::report::{RUN_FILE_NAME, Report, RunStats};
use super::verifier;
use super::worker::DelegateMode;
use super::{CrashArgs, manifest};
use crate::origin::{Origin, OriginConfig, OriginHandle};

/// The signal number of SIGKILL.
const SIGKILL: i32 = 9;
/// The signal number of SIGABRT.
const SIGABRT: i32 = 6;
/// How often a running worker is looked at.
const POLL: Duration = Duration::from_millis(2);
/// How long a run with an armed fail point may take before it is killed instead.
const FAILPOINT_RUN_MAX: Duration = Duration::from_millis(1000);
/// A fail point that did not fire in this many runs in a row is armed no more (its
/// code path has no work left: every completion ran, every download finished).
const FAILPOINT_MISSES_MAX: u32 = 2;
/// Runs beyond the asked-for kills and aborts before the loop gives up on reaching them.
const EXTRA_RUNS_MAX: u64 = 60;
/// The most stderr bytes of a failed worker quoted in a violation.
const STDERR_QUOTE_BYTES_MAX: usize = 600;

/// The fail points the orchestrator arms, with the most hits it lets pass before the
/// abort (the abort comes at a uniformly random hit up to it). Commits are batched, so
/// even the store's points are hit only some tens of times a second.
const FAIL_POINTS: [(&str, u32); 6] = [
    ("store-before-commit", 12),
    ("store-after-commit", 12),
    ("actor-after-delegate-before-commit", 8),
    ("actor-inside-completion", 1),
    ("actor-between-transfer-and-result", 6),
    (session_http::FAIL_POINT_DOWNLOAD_AFTER_FSYNC, 3),
];
/// The index of `actor-after-delegate-before-commit` in [`FAIL_POINTS`].
const DELEGATE_BEFORE_COMMIT: usize = 2;

/// Where the plan's server is.
enum Server {
    BuiltIn(OriginHandle),
    External,
}

/// How one worker run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunEnd {
    Killed,
    Aborted,
    Finished,
    Failed(String),
}

/// What the worker printed on standard output.
#[derive(Debug, Default)]
struct WorkerOutput {
    panics: AtomicU64,
    restarts: AtomicU64,
    done: AtomicBool,
}

/// Runs `session-harness crash`.
///
/// # Errors
/// Setup failures (exit 2); a failed verification is `Ok(ExitCode::from(1))`.
pub fn run(args: &CrashArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if !(0.0..=1.0).contains(&args.panic_rate) {
        bail!("--panic-rate must be between 0 and 1");
    }
    if args.kill_ms_min > args.kill_ms_max || args.kill_ms_max == 0 {
        bail!("--kill-ms-min must not exceed --kill-ms-max, which must be positive");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("crash: seed {seed} (repeat with --seed {seed})");

    let temp;
    let dir: PathBuf = match &args.dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty; give a new directory", dir.display());
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("bgsession-crash-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(dir.join("logs"))?;

    let (plan, server) = match (&args.origin, &args.manifest) {
        (Some(origin), Some(manifest_path)) => {
            let plan = manifest::load(manifest_path, origin.trim_end_matches('/'), seed)?;
            (plan, Server::External)
        }
        (None, None) => {
            let content_seed = seed.rotate_left(17) ^ 0x0005_EED0_FC04_7E47;
            let origin = Origin::start_in_thread(OriginConfig {
                seed: content_seed,
                port: 0,
            })
            .context("starting the origin on 127.0.0.1")?;
            let plan = plan::generate(&PlanShape {
                seed,
                sessions: args.sessions,
                tasks: args.tasks,
                origin: origin.url(""),
                content_seed,
                dir: dir.clone(),
            });
            (plan, Server::BuiltIn(origin))
        }
        _ => bail!("--origin and --manifest go together"),
    };
    plan.save(&dir)?;
    plan::write_upload_sources(&plan)?;

    let mut stats = RunStats {
        seed,
        delegate: match args.delegate {
            DelegateMode::Transactional => "transactional".into(),
            DelegateMode::AtLeastOnce => "at-least-once".into(),
        },
        dir: args.dir.as_ref().map(|dir| dir.display().to_string()),
        ..RunStats::default()
    };
    let exe = std::env::current_exe().context("locating the session-harness binary")?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0C4A_5800_0000_0001);
    let progress = Progress::new(args);
    let aborts_wanted = if args.no_failpoints { 0 } else { args.aborts };
    let runs_max = (args.kills + aborts_wanted) as u64 + EXTRA_RUNS_MAX;
    let mut chooser = FailPointChooser::default();

    while (stats.kills < args.kills as u64 || stats.failpoint_aborts < aborts_wanted as u64)
        && stats.runs < runs_max
    {
        let abort_run = stats.failpoint_aborts < aborts_wanted as u64
            && (stats.kills >= args.kills as u64 || rng.gen_bool(abort_share(args)));
        let failpoint = abort_run.then(|| chooser.choose(&mut rng, args.delegate));
        let limit = match &failpoint {
            Some(_) => FAILPOINT_RUN_MAX,
            None => Duration::from_millis(rng.gen_range(args.kill_ms_min..=args.kill_ms_max)),
        };
        stats.runs += 1;
        let worker = Worker {
            exe: &exe,
            dir: &dir,
            run: stats.runs,
            delegate: args.delegate,
            panic_rate: args.panic_rate,
            failpoints: failpoint.as_ref().map(|(spec, _)| spec.clone()),
        };
        let (end, output) = worker.run(limit)?;
        stats.delegate_panics += output.panics.load(Ordering::Relaxed);
        stats.supervisor_restarts += output.restarts.load(Ordering::Relaxed);
        if let Some((_, index)) = &failpoint {
            chooser.record(*index, end == RunEnd::Aborted);
        }
        match end {
            RunEnd::Killed => stats.kills += 1,
            RunEnd::Aborted => {
                stats.failpoint_aborts += 1;
                let name = failpoint.map_or("unarmed", |(_, index)| FAIL_POINTS[index].0);
                *stats
                    .aborts_by_failpoint
                    .entry(name.to_owned())
                    .or_default() += 1;
            }
            RunEnd::Finished => {
                // Every later worker would find nothing left to do.
                stats.finished_early += 1;
                progress.show(&stats, started);
                eprintln!(
                    "\ncrash: the plan finished after {} kills and {} aborts; a larger plan \
                     (--sessions, --tasks) leaves room for more",
                    stats.kills, stats.failpoint_aborts
                );
                break;
            }
            RunEnd::Failed(why) => stats
                .run_violations
                .push(format!("worker run {} failed: {why}", stats.runs)),
        }
        progress.show(&stats, started);
    }
    progress.finish();

    // The last run: no kills, no fail points, no panics; it must finish the plan.
    stats.runs += 1;
    let final_started = Instant::now();
    let worker = Worker {
        exe: &exe,
        dir: &dir,
        run: stats.runs,
        delegate: args.delegate,
        panic_rate: 0.0,
        failpoints: None,
    };
    let (end, output) = worker.run(Duration::from_secs(args.final_timeout_s))?;
    stats.final_run_s = final_started.elapsed().as_secs_f64();
    stats.supervisor_restarts += output.restarts.load(Ordering::Relaxed);
    match end {
        RunEnd::Finished => {}
        RunEnd::Killed => {
            let stuck = inspect::unfinished(&dir, &plan)
                .unwrap_or_else(|error| vec![format!("(the store could not be read: {error:#})")]);
            stats.run_violations.push(format!(
                "did not finish: the last worker, without faults, was still running after {} s; unfinished: {}",
                args.final_timeout_s,
                stuck.join("; ")
            ));
        }
        RunEnd::Aborted => stats
            .run_violations
            .push("the last worker aborted without an armed fail point".to_owned()),
        RunEnd::Failed(why) => stats
            .run_violations
            .push(format!("the last worker failed: {why}")),
    }

    let origin_facts = match &server {
        Server::BuiltIn(origin) => {
            let facts = OriginFacts::from(&origin.counters());
            facts.save(&dir)?;
            Some(facts)
        }
        Server::External => None,
    };
    stats.bytes_downloaded = origin_facts.as_ref().map_or(0, |facts| facts.body_bytes);
    let facts = Facts::collect(&dir, origin_facts)?;
    let findings = verifier::verify(&plan, &facts);
    stats.wall_s = started.elapsed().as_secs_f64();
    let report = Report::new(stats, findings);
    std::fs::write(
        dir.join(RUN_FILE_NAME),
        serde_json::to_string_pretty(&report.run)?,
    )?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(kept) = &args.dir {
        eprintln!("crash: run directory kept in {}", kept.display());
    }
    drop(server);
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The share of runs that arm a fail point, so that aborts and kills are spread over
/// the whole loop.
fn abort_share(args: &CrashArgs) -> f64 {
    let total = (args.kills + args.aborts).max(1) as f64;
    (args.aborts as f64 / total).clamp(0.05, 0.95)
}

/// Chooses the fail points to arm, skipping those that stopped firing.
#[derive(Debug, Default)]
struct FailPointChooser {
    /// Runs in a row each fail point was armed and did not fire.
    misses: [u32; FAIL_POINTS.len()],
}

impl FailPointChooser {
    /// A `FAILPOINTS` value that aborts at a random hit of one fail point, and the
    /// point's index. With the at-least-once delegate, most runs aim between the
    /// delegate and the commit of the cursor, where that delegate duplicates.
    fn choose(&self, rng: &mut StdRng, delegate: DelegateMode) -> (String, usize) {
        let live: Vec<usize> = (0..FAIL_POINTS.len())
            .filter(|&index| self.misses[index] < FAILPOINT_MISSES_MAX)
            .collect();
        let index = match delegate {
            DelegateMode::AtLeastOnce
                if live.contains(&DELEGATE_BEFORE_COMMIT) && rng.gen_bool(0.8) =>
            {
                DELEGATE_BEFORE_COMMIT
            }
            DelegateMode::Transactional | DelegateMode::AtLeastOnce => {
                // The store's points always have work (every run commits); when nothing
                // else fires any more, they remain.
                let pool = if live.is_empty() { vec![0, 1] } else { live };
                pool[rng.gen_range(0..pool.len())]
            }
        };
        let (name, hits_max) = FAIL_POINTS[index];
        let hits = rng.gen_range(0..=hits_max);
        let spec = if hits == 0 {
            format!("{name}=return(abort)")
        } else {
            format!("{name}={hits}*off->return(abort)")
        };
        (spec, index)
    }

    fn record(&mut self, index: usize, fired: bool) {
        self.misses[index] = if fired { 0 } else { self.misses[index] + 1 };
    }
}

/// One worker process to start.
struct Worker<'a> {
    exe: &'a Path,
    dir: &'a Path,
    run: u64,
    delegate: DelegateMode,
    panic_rate: f64,
    failpoints: Option<String>,
}

impl Worker<'_> {
    /// Starts the worker and waits until it ends or `limit` passes (then SIGKILL).
    fn run(&self, limit: Duration) -> anyhow::Result<(RunEnd, Arc<WorkerOutput>)> {
        let log_path = self
            .dir
            .join("logs")
            .join(format!("run-{:04}.stderr", self.run));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(self.exe);
        command
            .arg("worker")
            .arg("--dir")
            .arg(self.dir)
            .arg("--run")
            .arg(self.run.to_string())
            .arg("--panic-rate")
            .arg(self.panic_rate.to_string())
            .arg("--delegate")
            .arg(match self.delegate {
                DelegateMode::Transactional => "transactional",
                DelegateMode::AtLeastOnce => "at-least-once",
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        match &self.failpoints {
            Some(spec) => command.env("FAILPOINTS", spec),
            None => command.env_remove("FAILPOINTS"),
        };
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} worker", self.exe.display()))?;
        let output = Arc::new(WorkerOutput::default());
        let reader = child.stdout.take().map(|stdout| {
            let output = Arc::clone(&output);
            thread::spawn(move || read_output(stdout, &output))
        });
        let status = wait_or_kill(&mut child, started + limit)?;
        if let Some(reader) = reader {
            // The pipe closes when the child is gone, so this ends.
            let _ = reader.join();
        }
        let end = match (status.signal(), status.code()) {
            (Some(SIGKILL), _) => RunEnd::Killed,
            (Some(SIGABRT), _) if self.failpoints.is_some() => RunEnd::Aborted,
            (_, Some(0)) if output.done.load(Ordering::Relaxed) => RunEnd::Finished,
            (signal, code) => RunEnd::Failed(format!(
                "it ended with {} after {:.2} s: {}",
                match (signal, code) {
                    (Some(signal), _) => format!("signal {signal}"),
                    (None, Some(code)) => format!("exit code {code}"),
                    (None, None) => "an unknown status".to_owned(),
                },
                started.elapsed().as_secs_f64(),
                stderr_tail(&log_path)
            )),
        };
        Ok((end, output))
    }
}

/// Waits for the child until `deadline`, then kills it with SIGKILL.
fn wait_or_kill(child: &mut Child, deadline: Instant) -> anyhow::Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for the worker")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // `Child::kill` sends SIGKILL; the child may have exited just before.
            let _ = child.kill();
            return child.wait().context("reaping the killed worker");
        }
        thread::sleep(POLL);
    }
}

fn read_output(stdout: std::process::ChildStdout, output: &WorkerOutput) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "event panic" {
            output.panics.fetch_add(1, Ordering::Relaxed);
        } else if line == "done" {
            output.done.store(true, Ordering::Relaxed);
        } else if let Some(count) = line.strip_prefix("restarts ")
            && let Ok(count) = count.parse::<u64>()
        {
            output.restarts.fetch_max(count, Ordering::Relaxed);
        }
    }
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return format!("(nothing on stderr; see {})", path.display());
    }
    let mut start = text.len().saturating_sub(STDERR_QUOTE_BYTES_MAX);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].replace('\n', " | ")
}

/// The progress line on stderr: rewritten in place on a terminal, a line every ten runs
/// otherwise.
struct Progress {
    terminal: bool,
    kills: usize,
    aborts: usize,
}

impl Progress {
    fn new(args: &CrashArgs) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            kills: args.kills,
            aborts: if args.no_failpoints { 0 } else { args.aborts },
        }
    }

    fn show(&self, stats: &RunStats, started: Instant) {
        let line = format!(
            "crash: run {:>3}  kills {:>3}/{}  aborts {:>2}/{}  panics {:>3}  {:>5.1} s",
            stats.runs,
            stats.kills,
            self.kills,
            stats.failpoint_aborts,
            self.aborts,
            stats.delegate_panics,
            started.elapsed().as_secs_f64()
        );
        if self.terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if stats.runs.is_multiple_of(10) {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
        eprintln!("crash: last run, without faults");
    }
}
