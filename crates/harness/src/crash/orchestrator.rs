//! The crash loop: start the worker, kill it with SIGKILL at its fault's instant or let
//! it abort at an armed fail point, start it again, and so on through the fault
//! schedule; then one last worker without faults runs to the end, and the verifier
//! reads what is left.
//!
//! The loop is shared by the main job (`session-harness crash`, whose worker is the
//! `worker` subcommand of the same binary) and the test kit (whose worker is the test
//! binary re-executed): a `Launch` says how a worker process is started.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead as _, BufReader, IsTerminal as _, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::facts::{Facts, OriginFacts};
use super::inspect;
use super::plan::{self, Plan, PlanShape};
use super::report::{RUN_FILE_NAME, Report, RunStats, events_under_faults};
use super::run_store::RunStore;
use super::schedule::{
    self, FAILPOINT_WAIT_MIN, FailPoint, FailPointChooser, Fault, FaultKind, FaultSchedule,
    MeasuredRun, Pacer, random_fail_point,
};
use super::verifier;
use super::worker::{DelegateMode, PROTOCOL_MARKER, WorkerRun};
use super::{CrashArgs, manifest};
use crate::origin::{Origin, OriginConfig, OriginHandle};

/// The signal number of SIGKILL.
const SIGKILL: i32 = 9;
/// The signal number of SIGABRT.
const SIGABRT: i32 = 6;
/// How often a running worker is looked at.
const POLL: Duration = Duration::from_millis(2);
/// Runs beyond the schedule, to reach the fail-point aborts asked for when armed
/// points did not fire, before the loop gives up on reaching them.
const EXTRA_RUNS_MAX: u64 = 60;
/// The most stderr bytes of a failed worker quoted in a violation.
const STDERR_QUOTE_BYTES_MAX: usize = 600;

/// How a worker process is started: the part of the crash loop that differs between
/// the main job and the test kit.
pub(crate) trait Launch {
    /// The command of one worker run. The loop sets `FAILPOINTS` and the standard
    /// streams.
    ///
    /// # Errors
    /// The executable cannot be located.
    fn command(&self, run: &WorkerRun) -> anyhow::Result<Command>;
}

/// The main job's worker: `session-harness worker --dir .. --run ..`.
struct SubcommandLauncher {
    exe: PathBuf,
}

impl Launch for SubcommandLauncher {
    fn command(&self, run: &WorkerRun) -> anyhow::Result<Command> {
        let mut command = Command::new(&self.exe);
        command
            .arg("worker")
            .arg("--dir")
            .arg(&run.dir)
            .arg("--run")
            .arg(run.run.to_string())
            .arg("--panic-rate")
            .arg(run.panic_rate.to_string())
            .arg("--delegate")
            .arg(run.mode.name());
        Ok(command)
    }
}

/// What the crash loop is asked for.
#[derive(Debug)]
pub(crate) struct LoopConfig<'a> {
    /// The run directory (holds `plan.json`; gets `store/` and `logs/`).
    pub dir: &'a Path,
    /// The plan the workers run.
    pub plan: &'a Plan,
    /// The faults, one worker run each.
    pub schedule: &'a FaultSchedule,
    /// Fail-point aborts to reach with extra runs when armed points did not fire (the
    /// main job promises a number; the test kit runs its schedule as it is: 0).
    pub aborts_wanted: u64,
    /// Which delegate writes the ledger.
    pub mode: DelegateMode,
    /// A fixed expected run, instead of the estimate.
    pub expected_run_s: Option<f64>,
    /// One fault-free worker run of the plan (see [`measure_run`]): the plan's
    /// estimates are scaled to it.
    pub measured: Option<MeasuredRun>,
    /// How long the last clean worker may take.
    pub final_timeout: Duration,
    /// Whether to show the progress line on stderr.
    pub show_progress: bool,
    /// The seed of the loop's own random choices (replacement fail points).
    pub seed: u64,
}

/// What the crash loop did.
#[derive(Debug)]
pub(crate) struct LoopOutcome {
    /// The statistics so far (the verdict adds the rest).
    pub stats: RunStats,
    /// The runs that were killed or aborted.
    pub faulted_runs: BTreeSet<u32>,
}

/// Runs the fault schedule, then the last clean worker.
///
/// # Errors
/// A worker that cannot be started or waited for, a log file that cannot be written.
pub(crate) fn crash_loop(
    config: &LoopConfig<'_>,
    launcher: &dyn Launch,
    mut stats: RunStats,
) -> anyhow::Result<LoopOutcome> {
    let started = Instant::now();
    std::fs::create_dir_all(config.dir.join("logs"))?;
    let mut state = LoopState {
        config,
        launcher,
        pacer: Pacer::new(config.plan, config.expected_run_s, config.measured),
        chooser: FailPointChooser::default(),
        rng: StdRng::seed_from_u64(config.seed ^ 0x0FA1_1B01_7000_0002),
        faulted_runs: BTreeSet::new(),
    };
    state.faulted_runs_through_schedule(&mut stats, started)?;
    stats.expected_run_s = state.pacer.expected_s();
    stats.measured_run_s = config.measured.map(|run| run.work_s);
    stats.fault_work_s = state.pacer.work_s();
    state.clean_run(&mut stats)?;
    Ok(LoopOutcome {
        stats,
        faulted_runs: state.faulted_runs,
    })
}

/// The loop's state between runs.
struct LoopState<'a> {
    config: &'a LoopConfig<'a>,
    launcher: &'a dyn Launch,
    pacer: Pacer,
    chooser: FailPointChooser,
    rng: StdRng,
    faulted_runs: BTreeSet<u32>,
}

impl LoopState<'_> {
    /// One run per fault of the schedule, until the schedule ends or a worker finishes
    /// the plan.
    fn faulted_runs_through_schedule(
        &mut self,
        stats: &mut RunStats,
        started: Instant,
    ) -> anyhow::Result<()> {
        let config = self.config;
        let (kills, aborts) = config.schedule.counts();
        let progress = Progress::new(
            config.show_progress,
            kills,
            aborts.max(config.aborts_wanted as usize),
        );
        let mut faults: VecDeque<Fault> = config.schedule.faults.iter().copied().collect();
        let mut extra_runs = 0;
        while let Some(fault) = faults.pop_front() {
            let ended = self.faulted_run(fault, stats)?;
            progress.show(stats, &self.pacer, started);
            if ended == RunEnd::Finished {
                // Every later worker would find nothing left to do; this run's own
                // fault never came either.
                stats.finished_early += 1;
                stats.faults_unused = faults.len() as u64 + 1;
                progress.finished_early(stats);
                break;
            }
            let missed =
                matches!(fault.kind, FaultKind::FailPoint { .. }) && ended == RunEnd::Killed;
            if missed && extra_runs < EXTRA_RUNS_MAX && self.aborts_short(stats, &faults) {
                // Tried again at once, where the run is now.
                extra_runs += 1;
                let aim_at_delegate = config.mode == DelegateMode::AtLeastOnce;
                faults.push_front(Fault {
                    at: fault.at,
                    kind: random_fail_point(&mut self.rng, aim_at_delegate),
                });
            }
        }
        progress.finish();
        Ok(())
    }

    /// Whether the fail points left in the schedule cannot reach the aborts asked for.
    fn aborts_short(&self, stats: &RunStats, faults: &VecDeque<Fault>) -> bool {
        let aborts_left = self
            .config
            .aborts_wanted
            .saturating_sub(stats.failpoint_aborts);
        let scheduled = faults
            .iter()
            .filter(|fault| matches!(fault.kind, FaultKind::FailPoint { .. }))
            .count() as u64;
        aborts_left > scheduled
    }

    /// One run with a fault; returns how it ended.
    fn faulted_run(&mut self, fault: Fault, stats: &mut RunStats) -> anyhow::Result<RunEnd> {
        let until_instant = self.pacer.limit(fault.at);
        let armed = match fault.kind {
            FaultKind::Kill => None,
            FaultKind::FailPoint { point, hits } => {
                let point = self.chooser.choose(&mut self.rng, point);
                Some((point, hits.min(point.hits_max())))
            }
        };
        // An armed point gets some time after start-up to fire, even when its instant
        // comes sooner; it may fire before the instant.
        let limit = match armed {
            Some(_) => until_instant.max(self.pacer.limit(0.0) + FAILPOINT_WAIT_MIN),
            None => until_instant,
        };
        stats.runs += 1;
        let run = self.worker_run(stats.runs, self.config.schedule.panic_rate)?;
        let process = WorkerProcess {
            launcher: self.launcher,
            run: &run,
            failpoints: armed.map(|(point, hits)| point.spec(hits)),
        };
        let ended = process.run(limit)?;
        stats.delegate_panics += ended.output.panics.load(Ordering::Relaxed);
        stats.delivery_refusals += ended.output.refusals.load(Ordering::Relaxed);
        stats.supervisor_restarts += ended.output.restarts.load(Ordering::Relaxed);
        self.pacer
            .record(ended.startup(), ended.work(), ended.output.progress());
        if let Some((point, _)) = armed {
            self.chooser.record(point, ended.end == RunEnd::Aborted);
        }
        match ended.end {
            RunEnd::Killed => {
                stats.kills += 1;
                self.faulted_runs.insert(run.run);
            }
            RunEnd::Aborted => {
                stats.failpoint_aborts += 1;
                self.faulted_runs.insert(run.run);
                let name = armed.map_or("unarmed", |(point, _)| FailPoint::name(point));
                *stats
                    .aborts_by_failpoint
                    .entry(name.to_owned())
                    .or_default() += 1;
            }
            RunEnd::Finished => {}
            RunEnd::Failed(ref why) => stats
                .run_violations
                .push(format!("worker run {} failed: {why}", stats.runs)),
        }
        Ok(ended.end)
    }

    /// The last run: no kills, no fail points, no panics; it must finish the plan.
    fn clean_run(&mut self, stats: &mut RunStats) -> anyhow::Result<()> {
        stats.runs += 1;
        let run = self.worker_run(stats.runs, 0.0)?;
        let process = WorkerProcess {
            launcher: self.launcher,
            run: &run,
            failpoints: None,
        };
        let ended = process.run(self.config.final_timeout)?;
        stats.final_run_s = ended.elapsed.as_secs_f64();
        stats.delivery_refusals += ended.output.refusals.load(Ordering::Relaxed);
        stats.supervisor_restarts += ended.output.restarts.load(Ordering::Relaxed);
        match ended.end {
            RunEnd::Finished => {}
            RunEnd::Killed => {
                let stuck = inspect::unfinished(self.config.dir, self.config.plan).unwrap_or_else(
                    |error| vec![format!("(the store could not be read: {error:#})")],
                );
                stats.run_violations.push(format!(
                    "did not finish: the last worker, without faults, was still running after {} s; unfinished: {}",
                    self.config.final_timeout.as_secs(),
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
        Ok(())
    }

    fn worker_run(&self, run: u64, panic_rate: f64) -> anyhow::Result<WorkerRun> {
        Ok(WorkerRun {
            dir: self.config.dir.to_path_buf(),
            run: u32::try_from(run).context("too many runs")?,
            panic_rate,
            mode: self.config.mode,
        })
    }
}

/// Runs one worker without faults in `dir` (which holds its own `plan.json`) to the end,
/// and returns how long it took to start and to work (from "ready" to the end), or
/// `None` if it did not finish within `timeout`. A first measured run, for plans whose estimate from the plan
/// alone is poor (small ones, where start-up and commits dominate).
///
/// # Errors
/// The worker cannot be started or waited for.
pub(crate) fn measure_run(
    launcher: &dyn Launch,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<Option<MeasuredRun>> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let run = WorkerRun {
        dir: dir.to_path_buf(),
        run: 1,
        panic_rate: 0.0,
        mode: DelegateMode::Transactional,
    };
    let process = WorkerProcess {
        launcher,
        run: &run,
        failpoints: None,
    };
    let ended = process.run(timeout)?;
    let finished = ended.end == RunEnd::Finished;
    Ok(ended
        .startup()
        .filter(|_| finished)
        .map(|startup| MeasuredRun {
            startup_s: startup.as_secs_f64(),
            work_s: ended.work().as_secs_f64(),
        }))
}

/// Runs `session-harness crash`.
///
/// # Errors
/// Setup failures (exit 2); a failed verification is `Ok(ExitCode::from(1))`.
pub fn run(args: &CrashArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    check_args(args)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("crash: seed {seed} (repeat with --seed {seed})");
    let (_temp, dir) = run_dir(args.dir.as_deref())?;
    // The throwaway cluster (if any) lives until the facts are read.
    let (cluster, run_store) = prepare_store(&args.store, seed)?;
    run_store.save(&dir)?;
    run_store.prepare()?;
    let (plan, server) = prepare_plan(args, seed, &dir)?;
    let flaky = match (&plan.faults.flaky_origin, plan.content_seed()) {
        (Some(flaky), Some(content_seed)) => Some(FlakyServer::start(flaky, content_seed)?),
        _ => None,
    };
    let aborts_wanted = if args.no_failpoints { 0 } else { args.aborts };
    let schedule = FaultSchedule::generate(
        seed,
        args.kills,
        aborts_wanted,
        args.panic_rate,
        args.delegate == DelegateMode::AtLeastOnce,
    );
    let stats = RunStats {
        seed,
        delegate: args.delegate.name().to_owned(),
        store: run_store.name().to_owned(),
        dir: args.dir.as_ref().map(|dir| dir.display().to_string()),
        ..RunStats::default()
    };
    let config = LoopConfig {
        dir: &dir,
        plan: &plan,
        schedule: &schedule,
        aborts_wanted: aborts_wanted as u64,
        mode: args.delegate,
        expected_run_s: args.expected_run_s,
        measured: None,
        final_timeout: Duration::from_secs(args.final_timeout_s),
        show_progress: true,
        seed,
    };
    let launcher = SubcommandLauncher {
        exe: std::env::current_exe().context("locating the session-harness binary")?,
    };
    let outcome = crash_loop(&config, &launcher, stats)?;
    let origin_facts = match &server {
        Some(origin) => {
            let facts = OriginFacts::from(&origin.counters());
            facts.save(&dir)?;
            Some(facts)
        }
        None => None,
    };
    let mut stats = outcome.stats;
    if let Some(flaky) = flaky {
        (stats.flaky_outages, stats.flaky_requests) = flaky.stop();
    }
    stats.bytes_downloaded = origin_facts.as_ref().map_or(0, |facts| facts.body_bytes);
    let facts = Facts::collect(&dir, origin_facts)?;
    stats.wall_s = started.elapsed().as_secs_f64();
    let report = conclude(&dir, &plan, &facts, stats, &outcome.faulted_runs)?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(kept) = &args.dir {
        eprintln!("crash: run directory kept in {}", kept.display());
    }
    drop(server);
    if let Some(cluster) = cluster {
        if args.dir.is_some() {
            eprintln!(
                "crash: the throwaway PostgreSQL cluster is stopped; `verify --dir` needs a \
                 server: run with --store postgres://... to keep the records"
            );
        }
        cluster
            .stop()
            .context("stopping the throwaway PostgreSQL cluster")?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The store of `--store`: LMDB, a throwaway cluster started here (schema
/// `bgsession_crash`), or a server's URL (with a schema of this run's own, named after
/// the seed).
fn prepare_store(
    store: &str,
    seed: u64,
) -> anyhow::Result<(Option<crate::postgres::Cluster>, RunStore)> {
    let Some((cluster, url)) = crate::postgres::server_for(store)? else {
        return Ok((None, RunStore::Lmdb));
    };
    let schema = if cluster.is_some() {
        "bgsession_crash".to_owned()
    } else {
        format!("bgsession_crash_{:08x}", seed as u32)
    };
    eprintln!("crash: records in PostgreSQL at {url}, schema {schema}");
    Ok((cluster, RunStore::Postgres { url, schema }))
}

fn check_args(args: &CrashArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.panic_rate) {
        bail!("--panic-rate must be between 0 and 1");
    }
    if args
        .expected_run_s
        .is_some_and(|seconds| !(seconds.is_finite() && seconds > 0.0))
    {
        bail!("--expected-run-s must be a positive number of seconds");
    }
    Ok(())
}

/// The run directory: the one given (new or empty), else a temporary one (removed when
/// the returned guard drops).
fn run_dir(kept: Option<&Path>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match kept {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty; give a new directory", dir.display());
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok((None, dir.to_path_buf()))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("bgsession-crash-")
                .tempdir()
                .context("creating a temporary directory")?;
            let path = temp.path().to_path_buf();
            Ok((Some(temp), path))
        }
    }
}

/// The plan (generated against a built-in origin, or from a manifest against someone
/// else's server), saved in the run directory with its upload sources.
fn prepare_plan(
    args: &CrashArgs,
    seed: u64,
    dir: &Path,
) -> anyhow::Result<(Plan, Option<OriginHandle>)> {
    let (plan, server) = match (&args.origin, &args.manifest) {
        (Some(origin), Some(manifest_path)) => {
            let plan = manifest::load(manifest_path, origin.trim_end_matches('/'), seed)?;
            (plan, None)
        }
        (None, None) => {
            let content_seed = seed.rotate_left(17) ^ 0x0005_EED0_FC04_7E47;
            let origin = Origin::start_in_thread(OriginConfig {
                seed: content_seed,
                port: 0,
            })
            .context("starting the origin on 127.0.0.1")?;
            let flaky_port = free_port().context("choosing the flaky origin's port")?;
            let plan = plan::generate(&PlanShape {
                seed,
                sessions: args.sessions,
                tasks: args.tasks,
                origin: origin.url(""),
                content_seed,
                dir: dir.to_path_buf(),
                flaky_origin: Some(format!("http://127.0.0.1:{flaky_port}")),
            });
            (plan, Some(origin))
        }
        _ => bail!("--origin and --manifest go together"),
    };
    plan.save(dir)?;
    plan::write_upload_sources(&plan)?;
    Ok((plan, server))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// How often the flaky origin's thread looks at its stop flag.
const FLAKY_POLL: Duration = Duration::from_millis(10);

/// The plan's flaky origin: a thread that keeps its port closed for `down_ms` (from
/// the start), then serves it for `up_ms`, and again, until dropped. Every outage cuts
/// the transfers in flight to it; the tasks waiting for connectivity retry meanwhile.
struct FlakyServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    outages: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl FlakyServer {
    fn start(flaky: &plan::FlakyOrigin, content_seed: u64) -> anyhow::Result<FlakyServer> {
        let port: u16 = flaky
            .url
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("the flaky origin's URL {} has no port", flaky.url))?;
        let (down, up) = (
            Duration::from_millis(flaky.down_ms),
            Duration::from_millis(flaky.up_ms),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let outages = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (outages_counted, requests_counted) = (Arc::clone(&outages), Arc::clone(&requests));
        let thread = thread::Builder::new()
            .name("flaky-origin".to_owned())
            .spawn(move || {
                let sleep = |span: Duration| {
                    let until = Instant::now() + span;
                    while Instant::now() < until && !stopping.load(Ordering::Relaxed) {
                        thread::sleep(FLAKY_POLL);
                    }
                };
                while !stopping.load(Ordering::Relaxed) {
                    outages_counted.fetch_add(1, Ordering::Relaxed);
                    sleep(down);
                    let config = OriginConfig {
                        seed: content_seed,
                        port,
                    };
                    match Origin::start_in_thread(config) {
                        Ok(origin) => {
                            sleep(up);
                            requests_counted
                                .fetch_add(origin.counters().requests_total, Ordering::Relaxed);
                            drop(origin);
                        }
                        // The port is taken for now (by a connection still closing, or
                        // another process): this outage lasts one more down time.
                        Err(error) => tracing::debug!(%error, port, "flaky origin not up"),
                    }
                }
            })
            .context("starting the flaky origin's thread")?;
        Ok(FlakyServer {
            stop,
            thread: Some(thread),
            outages,
            requests,
        })
    }

    /// Stops it; returns its outages and the requests it answered between them.
    fn stop(mut self) -> (u64, u64) {
        self.halt();
        (
            self.outages.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The verdict of a finished loop: the verifier over the facts, and the share of events
/// delivered by runs that were later killed or aborted; writes `run.json`.
///
/// # Errors
/// `run.json` cannot be written.
pub(crate) fn conclude(
    dir: &Path,
    plan: &Plan,
    facts: &Facts,
    mut stats: RunStats,
    faulted_runs: &BTreeSet<u32>,
) -> anyhow::Result<Report> {
    let (under_faults, delivered) = events_under_faults(&facts.ledger, faulted_runs);
    stats.events_under_faults = under_faults;
    stats.events_under_faults_share = if delivered == 0 {
        0.0
    } else {
        under_faults as f64 / delivered as f64
    };
    let findings = verifier::verify(plan, facts);
    let report = Report::new(stats, findings);
    std::fs::write(
        dir.join(RUN_FILE_NAME),
        serde_json::to_string_pretty(&report.run)?,
    )?;
    Ok(report)
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
    refusals: AtomicU64,
    restarts: AtomicU64,
    /// The last `progress` line.
    progress: Mutex<Option<schedule::Progress>>,
    done: AtomicBool,
    ready_at: Mutex<Option<Instant>>,
}

impl WorkerOutput {
    fn progress(&self) -> Option<schedule::Progress> {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ready_at(&self) -> Option<Instant> {
        *self.ready_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One worker process to start.
struct WorkerProcess<'a> {
    launcher: &'a dyn Launch,
    run: &'a WorkerRun,
    failpoints: Option<String>,
}

/// A worker run that ended.
struct Ended {
    end: RunEnd,
    output: Arc<WorkerOutput>,
    started: Instant,
    stopped: Instant,
    elapsed: Duration,
}

impl Ended {
    /// From start to "ready", if the worker got there.
    fn startup(&self) -> Option<Duration> {
        self.output
            .ready_at()
            .map(|ready| ready.saturating_duration_since(self.started))
    }

    /// From "ready" to the end (zero if it never got ready).
    fn work(&self) -> Duration {
        self.output.ready_at().map_or(Duration::ZERO, |ready| {
            self.stopped.saturating_duration_since(ready)
        })
    }
}

impl WorkerProcess<'_> {
    /// Starts the worker and waits until it ends or `limit` passes (then SIGKILL).
    fn run(&self, limit: Duration) -> anyhow::Result<Ended> {
        let log_path = self
            .run
            .dir
            .join("logs")
            .join(format!("run-{:04}.stderr", self.run.run));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = self.launcher.command(self.run)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        match &self.failpoints {
            Some(spec) => command.env("FAILPOINTS", spec),
            None => command.env_remove("FAILPOINTS"),
        };
        let started = Instant::now();
        let mut child = command.spawn().context("starting a worker process")?;
        let output = Arc::new(WorkerOutput::default());
        let reader = child.stdout.take().map(|stdout| {
            let output = Arc::clone(&output);
            thread::spawn(move || read_output(stdout, &output))
        });
        let status = wait_or_kill(&mut child, started + limit)?;
        let stopped = Instant::now();
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
        Ok(Ended {
            end,
            output,
            started,
            stopped,
            elapsed: stopped.saturating_duration_since(started),
        })
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
        let Some((_, line)) = line.rsplit_once(PROTOCOL_MARKER) else {
            continue;
        };
        let line = line.trim();
        if line == "event panic" {
            output.panics.fetch_add(1, Ordering::Relaxed);
        } else if line == "event refused" {
            output.refusals.fetch_add(1, Ordering::Relaxed);
        } else if line == "done" {
            output.done.store(true, Ordering::Relaxed);
        } else if line == "ready" {
            *output
                .ready_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        } else if let Some(count) = line.strip_prefix("restarts ")
            && let Ok(count) = count.parse::<u64>()
        {
            output.restarts.fetch_max(count, Ordering::Relaxed);
        } else if let Some(progress) = line.strip_prefix("progress ")
            && let Some((delivered, remaining_s)) = progress.split_once(' ')
            && let (Ok(delivered), Ok(remaining_s)) = (delivered.parse(), remaining_s.parse())
        {
            *output
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(schedule::Progress {
                delivered,
                remaining_s,
            });
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
/// otherwise; nothing when not shown.
struct Progress {
    shown: bool,
    terminal: bool,
    kills: usize,
    aborts: usize,
}

impl Progress {
    fn new(shown: bool, kills: usize, aborts: usize) -> Progress {
        Progress {
            shown,
            terminal: std::io::stderr().is_terminal(),
            kills,
            aborts,
        }
    }

    fn show(&self, stats: &RunStats, pacer: &Pacer, started: Instant) {
        if !self.shown {
            return;
        }
        let line = format!(
            "crash: run {:>3}  kills {:>3}/{}  aborts {:>2}/{}  panics {:>3}  work {:>5.1} of ~{:.1} s  {:>5.1} s",
            stats.runs,
            stats.kills,
            self.kills,
            stats.failpoint_aborts,
            self.aborts,
            stats.delegate_panics,
            pacer.work_s(),
            pacer.expected_s(),
            started.elapsed().as_secs_f64()
        );
        if self.terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if stats.runs.is_multiple_of(10) {
            eprintln!("{line}");
        }
    }

    fn finished_early(&self, stats: &RunStats) {
        if self.shown {
            eprintln!(
                "\ncrash: the plan finished after {} kills and {} aborts, {} faults of the \
                 schedule unused; a larger plan (--sessions, --tasks) leaves room for more",
                stats.kills, stats.failpoint_aborts, stats.faults_unused
            );
        }
    }

    fn finish(&self) {
        if !self.shown {
            return;
        }
        if self.terminal {
            eprintln!();
        }
        eprintln!("crash: last run, without faults");
    }
}
