//! `session-harness bench soak`: does the store stay small while a million tasks go
//! through it? It drives `--tasks` small tasks (1,000,000 by default) through
//! `--sessions` sessions (1,000) with a short retention, and measures the store at 10 %,
//! 50 % and 100 % of the run. The store must not grow with the number of tasks run:
//! `store_bytes_last <= 2 * store_bytes_first` (first = after 10 %), else the verdict is
//! `fail` and the command exits 1.
//!
//! # The store path alone, not the network
//!
//! A million HTTP transfers on a two-core machine would take far longer than the store
//! work and measure the network stack, so this drives the **store path alone**: every
//! unit a session actor commits for a task, through the real store (LMDB, group-commit
//! writer) and the real unit code of `session_actor::direct`:
//!
//! - per batch of `--batch` tasks: one enqueue unit (the batch's `Enqueue` inputs);
//! - per task: a start unit (`Start`), a result unit (`Result` with a small successful
//!   data response, in place of the transfer) and a delivery unit (to a transactional
//!   delegate that keeps one counter per session in an application table); the last
//!   result of a batch ends its generation, and its "did finish events" is delivered in
//!   the same delivery unit;
//! - the janitor's own loop, pruning every `--prune-interval-ms`.
//!
//! Delivered events leave the outbox in their delivery unit; finished tasks are pruned
//! by the janitor once `--retention-s` has passed. Time is a virtual clock (the
//! machine's and the janitor's `Clock`): it advances by one millisecond every
//! `--tasks-per-virtual-ms` tasks delivered, so the number of tasks within retention,
//! and so the figures, do not depend on the machine's speed. With the defaults (1 s,
//! 10 tasks per ms) the retention covers the last 10,000 tasks delivered; beside them the
//! store holds the open tasks of every session's current batch (up to `--sessions` x
//! `--batch`) and one record per session.
//!
//! # What `store_bytes` is
//!
//! LMDB's data file never shrinks, and pages freed by deletions are reused, so the file
//! length is a high-water mark. `store_bytes` counts the pages the tables hold (branch,
//! leaf and overflow pages of every table, times the page size), the data the store
//! really keeps; `used_bytes` (pages up to the last one in use, free ones included) and
//! `file_bytes` (the data file's length) are reported beside it, with their own check.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use session_actor::machine::{Action, Context, Input, TransferResult};
use session_actor::{
    Clock, DelegateError, Delivery, SessionConfig, SessionId, SessionState, Store, StoreOptions,
    TaskId, TaskKind, TransferRequest, WriteScope, direct, http::Method,
};
use session_store::{ResponseSummary, StoreSize};

/// The application table of the delegate: one delivery counter per session.
const TABLE: &str = "soak-deliveries";
/// The virtual clock's start, Unix milliseconds.
const CLOCK_START_MS: u64 = 1_800_000_000_000;
/// The fractions of the run (per mille) at which the store is measured.
const CHECKPOINTS_PERMILLE: [u64; 3] = [100, 500, 1000];
/// How much the store may grow from the first checkpoint to the last.
pub const GROWTH_FACTOR_MAX: u64 = 2;
/// The longest the run may take before it counts as stuck.
const RUN_S_MAX: u64 = 3600;

/// Options of `bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Tasks to run in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Sessions the tasks are spread over, each driven by its own async task.
    #[arg(long, default_value_t = 1000)]
    pub sessions: u64,
    /// Tasks per batch (one generation each).
    #[arg(long, default_value_t = 10)]
    pub batch: u64,
    /// The sessions' retention of finished tasks, seconds of the virtual clock.
    #[arg(long, default_value_t = 1)]
    pub retention_s: u64,
    /// Keep finished tasks for a year instead (nothing is pruned during the run): shows
    /// that the growth check fails when the store does grow.
    #[arg(long)]
    pub no_retention: bool,
    /// Tasks delivered per millisecond of the virtual clock.
    #[arg(long, default_value_t = 10)]
    pub tasks_per_virtual_ms: u64,
    /// The janitor's pause between pruning rounds, real milliseconds.
    #[arg(long, default_value_t = 50)]
    pub prune_interval_ms: u64,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
}

/// The store's size at one checkpoint.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Checkpoint {
    /// Tasks delivered when it was taken.
    pub tasks: u64,
    /// Pages the tables hold, times the page size.
    pub store_bytes: u64,
    /// Pages up to the last one in use (free ones included), times the page size.
    pub used_bytes: u64,
    /// The data file's length.
    pub file_bytes: u64,
    /// Task records in the store.
    pub task_records: u64,
    /// Seconds since the run started.
    pub elapsed_s: f64,
}

/// What `bench soak` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Always `store-path`: the units of the actors through the real store, no network.
    pub mode: &'static str,
    /// Tasks run.
    pub tasks: u64,
    /// Sessions.
    pub sessions: u64,
    /// Tasks per batch.
    pub batch: u64,
    /// The retention in force, seconds (of the virtual clock).
    pub retention_s: u64,
    /// Finished tasks within retention at any time, about (from the virtual clock).
    pub tasks_in_retention: u64,
    /// Writer units committed.
    pub units: u64,
    /// Events delivered (task events and "did finish events").
    pub events: u64,
    /// `store_bytes` after 10 %, 50 % and 100 % of the tasks.
    pub store_bytes_10: u64,
    /// See `store_bytes_10`.
    pub store_bytes_50: u64,
    /// See `store_bytes_10`.
    pub store_bytes_100: u64,
    /// `store_bytes` after the first 10 %.
    pub store_bytes_first: u64,
    /// `store_bytes` at the end.
    pub store_bytes_last: u64,
    /// `store_bytes_last / store_bytes_first`.
    pub growth: f64,
    /// The checkpoints in full.
    pub checkpoints: Vec<Checkpoint>,
    /// Whether `used_bytes` (the high-water mark) also stayed within the factor.
    pub used_bytes_within: bool,
    /// Seconds the run took.
    pub elapsed_s: f64,
    /// Tasks per second (each: its share of an enqueue, a start, a result and a
    /// delivery unit).
    pub tasks_per_s: f64,
    /// `pass` when `store_bytes_last <= 2 * store_bytes_first`, else `fail`.
    pub verdict: &'static str,
}

impl SoakReport {
    /// Whether the store stayed within [`GROWTH_FACTOR_MAX`] of its first checkpoint.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }
}

/// The virtual clock: it advances with the tasks delivered.
#[derive(Debug)]
struct TaskClock {
    tasks_done: AtomicU64,
    tasks_per_ms: u64,
}

impl Clock for TaskClock {
    fn now_ms(&self) -> u64 {
        CLOCK_START_MS + self.tasks_done.load(Ordering::Relaxed) / self.tasks_per_ms
    }
}

/// What the session drivers share.
struct Run {
    store: Store,
    clock: Arc<TaskClock>,
    config: SessionConfig,
    tasks: u64,
    units: AtomicU64,
    started: Instant,
    checkpoints: std::sync::Mutex<Vec<Checkpoint>>,
}

impl Run {
    fn context(&self) -> Context {
        Context {
            now_ms: self.clock.now_ms(),
            jitter_permille: 0,
        }
    }

    /// Counts `done` more tasks delivered, and measures the store if that crossed a
    /// checkpoint.
    fn delivered(&self, done: u64) -> anyhow::Result<()> {
        let before = self.clock.tasks_done.fetch_add(done, Ordering::Relaxed);
        let after = before + done;
        for permille in CHECKPOINTS_PERMILLE {
            let at = self.tasks * permille / 1000;
            if before < at && after >= at {
                let checkpoint = self.measure(after)?;
                self.checkpoints
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the checkpoint list was poisoned"))?
                    .push(checkpoint);
            }
        }
        Ok(())
    }

    fn measure(&self, tasks: u64) -> anyhow::Result<Checkpoint> {
        let snapshot = self.store.snapshot()?;
        let size: StoreSize = snapshot.size()?;
        let task_records = size
            .tables
            .iter()
            .filter(|table| table.name == "tasks")
            .map(|table| table.entries)
            .sum();
        Ok(Checkpoint {
            tasks,
            store_bytes: size.pages_in_use * size.page_bytes,
            used_bytes: (size.last_page + 1) * size.page_bytes,
            file_bytes: size.data_bytes,
            task_records,
            elapsed_s: self.started.elapsed().as_secs_f64(),
        })
    }

    /// Commits one unit and counts it.
    async fn unit<T, F>(&self, unit: F) -> anyhow::Result<T>
    where
        F: FnMut(&mut WriteScope<'_>) -> session_actor::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let result = self.store.write_async(unit).await?;
        self.units.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }
}

/// Runs the benchmark in a temporary directory (removed afterwards) and prints its
/// figures and verdict.
///
/// # Errors
/// Setup failures, a unit that fails, a session that does not end finished, or a
/// delivery count that does not add up. A store that grew is not an error: it is the
/// report's `fail` verdict.
pub fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    if args.tasks == 0 || args.sessions == 0 || args.batch == 0 || args.tasks_per_virtual_ms == 0 {
        bail!("--tasks, --sessions, --batch and --tasks-per-virtual-ms must be at least 1");
    }
    if args.sessions > args.tasks || args.tasks < 10 {
        bail!("--tasks must be at least 10 and at least --sessions");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let store = Store::open(dir.path(), StoreOptions::default().with_app_table(TABLE))?;
    let retention_s = if args.no_retention {
        SessionConfig::PERIOD_MS_LIMIT / 1000
    } else {
        args.retention_s
    };
    let config = SessionConfig {
        retention_s,
        ..SessionConfig::default()
    };
    config
        .validate()
        .map_err(|error| anyhow::anyhow!("--retention-s: {error}"))?;
    let run = Arc::new(Run {
        store: store.clone(),
        clock: Arc::new(TaskClock {
            tasks_done: AtomicU64::new(0),
            tasks_per_ms: args.tasks_per_virtual_ms,
        }),
        config,
        tasks: args.tasks,
        units: AtomicU64::new(0),
        started: Instant::now(),
        checkpoints: std::sync::Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .context("building the tokio runtime")?;
    let events = runtime.block_on(drive(&run, args))?;
    let elapsed_s = run.started.elapsed().as_secs_f64();
    let units = run.units.load(Ordering::Relaxed);
    runtime.shutdown_background();
    store.close()?;
    let checkpoints = run
        .checkpoints
        .lock()
        .map_err(|_| anyhow::anyhow!("the checkpoint list was poisoned"))?
        .clone();
    let mut checkpoints = checkpoints;
    // Drivers cross checkpoints concurrently; each measured when it crossed its own.
    checkpoints.sort_by_key(|checkpoint| checkpoint.tasks);
    let report = report(args, retention_s, checkpoints, units, events, elapsed_s)?;
    print(&report, args.json)?;
    Ok(report)
}

/// Drives every session to the end and checks what was delivered; returns the events.
async fn drive(run: &Arc<Run>, args: &SoakArgs) -> anyhow::Result<u64> {
    let clock: Arc<dyn Clock> = run.clock.clone();
    tokio::spawn(direct::janitor(
        run.store.clone(),
        clock,
        Duration::from_millis(args.prune_interval_ms),
    ));
    let drivers: Vec<_> = (0..args.sessions)
        .map(|index| {
            // The first `tasks % sessions` sessions take one task more.
            let share = args.tasks / args.sessions + u64::from(index < args.tasks % args.sessions);
            let (run, batch) = (Arc::clone(run), args.batch);
            tokio::spawn(async move { drive_session(&run, index, share, batch).await })
        })
        .collect();
    let deadline = Duration::from_secs(RUN_S_MAX);
    let mut events = 0;
    for driver in drivers {
        events += tokio::time::timeout(deadline, driver)
            .await
            .context("a session driver took over an hour")?
            .context("a session driver")??;
    }
    check_delivered(&run.store, args.sessions, events)?;
    Ok(events)
}

fn session_id(index: u64) -> anyhow::Result<SessionId> {
    Ok(SessionId::new(format!("soak-{index:04}"))?)
}

/// One session's life: open, then batches of `batch` tasks, each task started, given
/// its result and its event delivered, until `share` tasks ran. Returns the events
/// delivered.
async fn drive_session(run: &Arc<Run>, index: u64, share: u64, batch: u64) -> anyhow::Result<u64> {
    let id = session_id(index)?;
    let request = TransferRequest::data(Method::Get, format!("http://127.0.0.1:9/soak/{index}"));
    let request_bytes = request.to_bytes();
    let (unit_id, config, context) = (id.clone(), run.config.clone(), run.context());
    run.unit(move |scope| {
        let open = Input::Open {
            id: unit_id.clone(),
            config: config.clone(),
        };
        direct::apply_input(scope, &unit_id, open, &context)
    })
    .await?;
    let mut events = 0;
    let mut next = 0_u64;
    while next < share {
        let tasks: Vec<TaskId> = (next..(next + batch).min(share))
            .map(|n| TaskId::new(format!("t{n:07}")))
            .collect::<Result<_, _>>()?;
        next += tasks.len() as u64;
        enqueue(run, &id, &tasks, &request_bytes).await?;
        for task in &tasks {
            events += run_task(run, &id, task).await?;
        }
        run.delivered(tasks.len() as u64)?;
    }
    Ok(events)
}

/// The unit of an enqueued batch: one `Enqueue` per task.
async fn enqueue(
    run: &Run,
    id: &SessionId,
    tasks: &[TaskId],
    request: &[u8],
) -> anyhow::Result<()> {
    let (id, tasks, request, context) =
        (id.clone(), tasks.to_vec(), request.to_vec(), run.context());
    run.unit(move |scope| {
        for task in &tasks {
            let input = Input::Enqueue {
                task: task.clone(),
                kind: TaskKind::Data,
                request: request.clone(),
                replace: false,
            };
            direct::apply_input(scope, &id, input, &context)?;
        }
        Ok(())
    })
    .await
}

/// One task: its start, its result and the delivery of what that appended. Returns the
/// events delivered.
async fn run_task(run: &Run, id: &SessionId, task: &TaskId) -> anyhow::Result<u64> {
    let (unit_id, unit_task, context) = (id.clone(), task.clone(), run.context());
    let started = run
        .unit(move |scope| {
            let input = Input::Start {
                task: unit_task.clone(),
            };
            direct::apply_input(scope, &unit_id, input, &context)
        })
        .await?;
    let Some(attempt) = started.actions.iter().find_map(|action| match action {
        Action::Transfer { attempt, .. } => Some(*attempt),
        _ => None,
    }) else {
        bail!(
            "task {task} of session {id} did not start: {:?}",
            started.actions
        );
    };
    let (unit_id, unit_task, context) = (id.clone(), task.clone(), run.context());
    run.unit(move |scope| {
        let input = Input::Result {
            task: unit_task.clone(),
            attempt,
            result: TransferResult::Success(ResponseSummary {
                status: 200,
                headers: Vec::new(),
                body: b"ok".to_vec(),
                file: None,
                bytes: 2,
            }),
        };
        direct::apply_input(scope, &unit_id, input, &context)
    })
    .await?;
    let (unit_id, context) = (id.clone(), run.context());
    let table = run.store.app_table::<u64>(TABLE)?;
    let downloads = run.store.dir().join("downloads");
    let delivered = run
        .unit(move |scope| {
            let table = table.clone();
            let count = move |delivery: &Delivery, scope: &mut WriteScope<'_>| {
                let key = delivery.key.session.as_str();
                let seen = table
                    .get(scope, key)
                    .map_err(|error| DelegateError::new(error.to_string()))?;
                table
                    .put(scope, key, &(seen.unwrap_or(0) + 1))
                    .map_err(|error| DelegateError::new(error.to_string()))
            };
            direct::deliver_events(
                scope,
                &unit_id,
                &downloads,
                &count,
                &context,
                direct::DELIVERY_EVENTS_PER_UNIT_MAX,
            )
        })
        .await?;
    Ok(delivered as u64)
}

/// Every session finished with nothing waiting, and the delegate's counters add up to
/// the events delivered.
fn check_delivered(store: &Store, sessions: u64, events: u64) -> anyhow::Result<()> {
    let snapshot = store.snapshot()?;
    let records = snapshot.sessions()?;
    if records.len() as u64 != sessions {
        bail!("{} sessions stored for {sessions}", records.len());
    }
    for record in &records {
        if record.state != SessionState::Finished || record.has_undelivered_events() {
            bail!(
                "session {} ended {:?} with events up to {} delivered up to {}",
                record.id,
                record.state,
                record.next_event_seq,
                record.delivered_seq
            );
        }
    }
    let counted: u64 = store
        .app_table::<u64>(TABLE)?
        .entries(&snapshot)?
        .iter()
        .map(|(_, count)| count)
        .sum();
    if counted != events {
        bail!("the delegate counted {counted} deliveries for {events} events delivered");
    }
    Ok(())
}

fn report(
    args: &SoakArgs,
    retention_s: u64,
    checkpoints: Vec<Checkpoint>,
    units: u64,
    events: u64,
    elapsed_s: f64,
) -> anyhow::Result<SoakReport> {
    let [first, middle, last] = checkpoints.as_slice() else {
        bail!("{} checkpoints taken, not 3", checkpoints.len());
    };
    let (first, middle, last) = (*first, *middle, *last);
    let within = |first: u64, last: u64| last <= GROWTH_FACTOR_MAX * first;
    Ok(SoakReport {
        mode: "store-path",
        tasks: args.tasks,
        sessions: args.sessions,
        batch: args.batch,
        retention_s,
        tasks_in_retention: retention_s
            .saturating_mul(1000)
            .saturating_mul(args.tasks_per_virtual_ms)
            .min(args.tasks),
        units,
        events,
        store_bytes_10: first.store_bytes,
        store_bytes_50: middle.store_bytes,
        store_bytes_100: last.store_bytes,
        store_bytes_first: first.store_bytes,
        store_bytes_last: last.store_bytes,
        growth: last.store_bytes as f64 / first.store_bytes.max(1) as f64,
        used_bytes_within: within(first.used_bytes, last.used_bytes),
        elapsed_s,
        tasks_per_s: args.tasks as f64 / elapsed_s,
        verdict: if within(first.store_bytes, last.store_bytes) {
            "pass"
        } else {
            "fail"
        },
        checkpoints,
    })
}

fn print(report: &SoakReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "bench soak ({}: the actors' units through the real store, no network): {} tasks \
         in {} sessions, batches of {}, retention {} s (about {} tasks kept)",
        report.mode,
        report.tasks,
        report.sessions,
        report.batch,
        report.retention_s,
        report.tasks_in_retention
    );
    for checkpoint in &report.checkpoints {
        println!(
            "bench soak: after {:>9} tasks ({:>7.1} s): store {:>10} bytes, used {:>10}, \
             file {:>10}, {} task records",
            checkpoint.tasks,
            checkpoint.elapsed_s,
            checkpoint.store_bytes,
            checkpoint.used_bytes,
            checkpoint.file_bytes,
            checkpoint.task_records
        );
    }
    println!(
        "bench soak: {} units, {} events in {:.1} s: {:.0} tasks/s",
        report.units, report.events, report.elapsed_s, report.tasks_per_s
    );
    println!(
        "bench soak: {}: store_bytes_last {} {} {} x store_bytes_first {} (growth {:.2}; \
         high-water mark {})",
        report.verdict.to_uppercase(),
        report.store_bytes_last,
        if report.passed() { "<=" } else { ">" },
        GROWTH_FACTOR_MAX,
        report.store_bytes_first,
        report.growth,
        if report.used_bytes_within {
            "within too"
        } else {
            "grew past it"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(no_retention: bool) -> SoakArgs {
        SoakArgs {
            tasks: 20_000,
            sessions: 200,
            batch: 10,
            retention_s: 1,
            no_retention,
            // 1,000 tasks within retention: a tenth of the run's first checkpoint is
            // past it already.
            tasks_per_virtual_ms: 1,
            prune_interval_ms: 5,
            json: true,
        }
    }

    /// A short soak reports every figure and passes with a short retention, and the same
    /// run with nothing pruned is caught growing: the check can fail.
    #[test]
    fn a_short_soak_passes_and_growth_is_caught() {
        let report = run(&args(false)).expect("the soak runs");
        assert_eq!(report.mode, "store-path");
        assert_eq!(report.checkpoints.len(), 3);
        assert_eq!(report.store_bytes_first, report.store_bytes_10);
        assert_eq!(report.store_bytes_last, report.store_bytes_100);
        assert!(report.store_bytes_50 > 0 && report.store_bytes_first > 0);
        // Every task event and one "did finish events" per batch of 10.
        assert_eq!(report.events, 20_000 + 2_000);
        assert!(report.tasks_per_s > 0.0 && report.elapsed_s > 0.0);
        assert!(report.passed(), "{report:#?}");

        let grown = run(&args(true)).expect("the soak runs");
        assert!(!grown.passed(), "{grown:#?}");
        assert_eq!(grown.verdict, "fail");
        assert!(grown.growth > GROWTH_FACTOR_MAX as f64, "{grown:#?}");
        assert!(grown.checkpoints[2].task_records >= 20_000, "{grown:#?}");
    }
}
