//! The worker: a child process that runs the plan through the real library, as an
//! application would, until the orchestrator kills it or every generation has ended.
//!
//! The core is shared by the main job (`session-harness worker`, the ledger alone) and
//! the test kit (the test binary re-executed, with the application's tables, delegate
//! and completion handlers): an `App` is what varies. The ledger entry of every
//! delivery and completion is appended in the same transaction as the application's
//! own writes, so the verifier checks the application's delegate unchanged.
//!
//! On every start it re-issues the plan: for each session, each generation whose
//! completion the ledger does not show yet is enqueued again with its completion, minus
//! the tasks the ledger shows delivered (known task identifiers reconnect and nothing is
//! transferred twice; a delivered task may have been pruned since, and re-issuing it
//! would run it again, so the worker, like an application that keeps its results,
//! leaves those out). It waits until the generation ended (and its completion ran)
//! before it enqueues the next one, except that a generation planned to join is
//! enqueued right after the one before it, while that one still runs.
//!
//! The delegate refuses some deliveries a few times on purpose (the plan's
//! [`Refusals`]), returning an error before it writes anything: the library retries
//! them, and each must still reach the ledger exactly once.
//!
//! Standard output carries one line per event the orchestrator counts, each after
//! [`PROTOCOL_MARKER`]: `ready` (the
//! library is open), `progress N S` (ledger entries committed so far, and the expected
//! run left in seconds), `event panic` (a
//! delegate panic injected on purpose), `event refused` (a delivery refused on purpose),
//! `restarts N` (supervised restarts so far in this
//! process) and `done`. They are written to the process's standard output directly, not
//! through `println!`, so a test harness's output capture cannot swallow them.
//! Standard error stays quiet unless `RUST_LOG` is set.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::{BoxFuture, join_all};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use session_actor::{
    AsyncDelegate, CompletionCall, CompletionHandler, Delegate, DelegateError, Delivery, Event,
    Sessions, TransactionalDelegate, TransferRequest,
};
use session_http::Method;
use session_store::{Store, WriteScope};

use super::ledger::{EntryKind, FileFact, LEDGER_TABLE, Ledger, LedgerEntry};
use super::plan::{
    COMPLETION_NAME, Plan, PlannedGeneration, PlannedKind, PlannedSession, PlannedTask, Refusals,
    TaskProgress,
};

/// The directory, inside a run directory, that is the library's root.
pub const STORE_DIR: &str = "store";
/// The message of a delegate panic injected on purpose (silenced by the panic hook).
pub const INJECTED_PANIC: &str = "harness: delegate panic injected on purpose";
/// How often a waiting session looks at the ledger.
const LEDGER_POLL: Duration = Duration::from_millis(25);
/// How often the worker reports its progress and restarts, at least and at most: a
/// small plan often (a run may last only some tens of milliseconds, and the pacer
/// needs a report from it), a large one less (each report reads every task record).
const REPORT_INTERVAL_MIN: Duration = Duration::from_millis(10);
const REPORT_INTERVAL_MAX: Duration = Duration::from_millis(100);
/// Tasks per millisecond of report interval.
const REPORT_TASKS_PER_MS: usize = 16;
/// How long the worker waits, at the end, for delivered files to be removed.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);
/// Supervised restarts a session gets per process: panics are injected on purpose, and a
/// parked session would stall the run rather than show anything.
const RESTART_LIMIT: u32 = 10_000;
/// Transfers at once against the origin (all on 127.0.0.1).
const CONNECTIONS_PER_HOST_MAX: usize = 32;

/// Which delegate the worker attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DelegateMode {
    /// Exactly once: the ledger entry commits with the delivery.
    Transactional,
    /// At least once: the ledger entry is its own write, before the cursor's commit.
    AtLeastOnce,
}

impl DelegateMode {
    /// `transactional` or `at-least-once`.
    pub fn name(self) -> &'static str {
        match self {
            DelegateMode::Transactional => "transactional",
            DelegateMode::AtLeastOnce => "at-least-once",
        }
    }
}

/// Options of the hidden `worker` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The run directory (holds `plan.json` and the library's root `store/`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The probability that the delegate panics on a delivery.
    #[arg(long, default_value_t = 0.0)]
    pub panic_rate: f64,
    /// Which delegate to attach.
    #[arg(long, value_enum, default_value_t = DelegateMode::Transactional)]
    pub delegate: DelegateMode,
    /// The run's number, written into ledger entries.
    #[arg(long, default_value_t = 0)]
    pub run: u32,
}

/// What the application brings to a worker: its tables, its named completion handlers
/// and its transactional delegate. The main job brings none (the ledger alone).
#[derive(Clone, Default)]
pub(crate) struct App {
    /// Application tables, beside the ledger.
    pub tables: Vec<String>,
    /// Named completion handlers.
    pub completions: Vec<(String, Arc<dyn CompletionHandler>)>,
    /// The delegate the ledger's delegate calls first, in the same transaction.
    pub delegate: Option<Arc<dyn TransactionalDelegate>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("tables", &self.tables)
            .field(
                "completions",
                &self
                    .completions
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("delegate", &self.delegate.is_some())
            .finish()
    }
}

impl App {
    /// The main job's application: the harness's completion handler, no delegate of
    /// its own.
    fn harness() -> App {
        App {
            tables: Vec::new(),
            completions: vec![(COMPLETION_NAME.to_owned(), Arc::new(NoCompletion))],
            delegate: None,
        }
    }
}

/// The main job's completion handler: the ledger entry is all it writes.
struct NoCompletion;

impl CompletionHandler for NoCompletion {
    fn run(&self, _: &CompletionCall, _: &mut WriteScope<'_>) -> Result<(), DelegateError> {
        Ok(())
    }
}

/// One worker run: where, which run, and what is injected.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRun {
    /// The run directory.
    pub dir: PathBuf,
    /// The run's number.
    pub run: u32,
    /// The probability that a delivery panics after the delegate ran.
    pub panic_rate: f64,
    /// Which delegate the ledger is written by.
    pub mode: DelegateMode,
}

/// Runs the worker; exit 0 once every generation's completion has run.
///
/// # Errors
/// Setup failures and library errors (the orchestrator reports them).
pub fn run(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let run = WorkerRun {
        dir: args.dir.clone(),
        run: args.run,
        panic_rate: args.panic_rate,
        mode: args.delegate,
    };
    run_plan(run, App::harness())?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the plan of `run.dir` to its end with the application's parts, then says `done`.
/// The library runs on a thread of its own with its own runtime, so the caller may be
/// anything (a plain `main`, a `#[test]`, a `#[tokio::test]`).
///
/// # Errors
/// Setup failures and library errors.
pub(crate) fn run_plan(run: WorkerRun, app: App) -> anyhow::Result<()> {
    // Reads FAILPOINTS (armed by the orchestrator) for the whole life of the process.
    let _scenario = fail::FailScenario::setup();
    install_tracing();
    silence_injected_panics();
    let plan = Plan::load(&run.dir)?;
    let worker = std::thread::Builder::new()
        .name("bgsession-worker".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the worker's runtime")?;
            runtime.block_on(work(plan, run, app))
        })
        .context("starting the worker thread")?;
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the worker thread panicked"))??;
    say("done");
    Ok(())
}

/// What every protocol line starts with: a test harness may print on the same line
/// before it (libtest's `test name ... `), so the reader looks for it anywhere.
pub const PROTOCOL_MARKER: &str = "@bgsession-worker ";

/// Writes one protocol line to the process's standard output.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{PROTOCOL_MARKER}{line}");
    let _ = stdout.flush();
}

fn install_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

/// Keeps the default panic message for every panic but the injected ones
/// ([`INJECTED_PANIC`]). Installs the hook once per process, however often it is called.
pub fn silence_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|message| *message == INJECTED_PANIC);
            if !injected {
                default(info);
            }
        }));
    });
}

async fn work(plan: Plan, run: WorkerRun, app: App) -> anyhow::Result<()> {
    let root = run.dir.join(STORE_DIR);
    let mut engine = session_actor::EngineConfig::default();
    engine.connections_per_host_max = CONNECTIONS_PER_HOST_MAX;
    engine.connections_max = engine.connections_max.max(CONNECTIONS_PER_HOST_MAX);
    let run_store = super::run_store::RunStore::load(&run.dir)?;
    let ledger = run_store.ledger()?;
    let mut builder = run_store
        .builder(&root)
        .app_table(LEDGER_TABLE)
        .engine_config(engine)
        .restart_limit(RESTART_LIMIT);
    if plan.config.prune_interval_ms > 0 {
        builder = builder.prune_interval(Duration::from_millis(plan.config.prune_interval_ms));
    }
    for table in app.tables.iter().filter(|table| *table != LEDGER_TABLE) {
        builder = builder.app_table(table.clone());
    }
    for (name, handler) in &app.completions {
        builder = builder.completion(
            name.clone(),
            LedgerCompletion {
                ledger: ledger.clone(),
                run: run.run,
                inner: Arc::clone(handler),
            },
        );
    }
    let sessions = builder.open().context("opening the sessions")?;
    say("ready");
    let delegate = match run.mode {
        DelegateMode::Transactional => Delegate::transactional(LedgerDelegate {
            ledger: ledger.clone(),
            run: run.run,
            panics: PanicDraw::new(run.panic_rate, plan.seed, run.run),
            refusals: RefusalDraw::new(plan.faults.refusals, plan.seed),
            inner: app.delegate.clone(),
        }),
        DelegateMode::AtLeastOnce => Delegate::at_least_once(AsyncLedgerDelegate {
            store: sessions.store().clone(),
            ledger: ledger.clone(),
            run: run.run,
            refusals: Arc::new(RefusalDraw::new(plan.faults.refusals, plan.seed)),
        }),
    };

    let reporter = tokio::spawn(report(
        sessions.clone(),
        ledger.clone(),
        Arc::new(plan.clone()),
    ));
    let drives = plan
        .sessions
        .iter()
        .map(|session| drive_session(&sessions, &plan, session, delegate.clone(), &ledger));
    let results = join_all(drives).await;
    reporter.abort();
    let mut failures = Vec::new();
    for (session, result) in plan.sessions.iter().zip(results) {
        if let Err(error) = result {
            failures.push(format!("session {}: {error:#}", session.id));
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    wait_for_cleanup(&root).await;
    say(&format!("restarts {}", sessions.restarts()));
    sessions.shutdown().await.context("shutting down")?;
    Ok(())
}

/// Reports the ledger entries committed with the expected run left, and the
/// supervisor's restart count, whenever they change.
async fn report(sessions: Sessions, ledger: Ledger, plan: Arc<Plan>) {
    let mut restarts = 0;
    let mut last = String::new();
    let interval = Duration::from_millis((plan.task_count() / REPORT_TASKS_PER_MS) as u64)
        .clamp(REPORT_INTERVAL_MIN, REPORT_INTERVAL_MAX);
    loop {
        let now = sessions.restarts();
        if now != restarts {
            say(&format!("restarts {now}"));
            restarts = now;
        }
        let Some((count, remaining_s)) = progress(&sessions, &ledger, &plan) else {
            continue;
        };
        let line = format!("progress {count} {remaining_s:.3}");
        if line != last {
            say(&line);
            last = line;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Ledger entries committed, and the expected run left (see [`Plan::remaining_run_s`]):
/// terminal tasks from the store and the ledger, downloaded bytes from the `.part` files.
fn progress(sessions: &Sessions, ledger: &Ledger, plan: &Plan) -> Option<(u64, f64)> {
    let snapshot = sessions.store().snapshot().ok()?;
    let count = ledger.count(&snapshot).ok()?;
    let mut terminal = std::collections::BTreeSet::new();
    snapshot
        .for_each_task(|task| {
            if task.state.is_terminal() {
                terminal.insert((task.session.to_string(), task.id.to_string()));
            }
            Ok(())
        })
        .ok()?;
    // A delivered task may have been pruned from the store: the ledger still has it.
    for entry in ledger.entries(&snapshot).ok()? {
        if let EntryKind::Task { task, .. } = entry.kind {
            terminal.insert((entry.session, task));
        }
    }
    drop(snapshot);
    let downloads = sessions.root().join("downloads");
    let remaining_s = plan.remaining_run_s(|session, task| {
        if terminal.contains(&(session.to_owned(), task.id.clone())) {
            return TaskProgress::Done;
        }
        let (part, _) = session_http::download_paths(&downloads.join(session), &task.id);
        let bytes_done = std::fs::metadata(part).map_or(0, |meta| meta.len());
        TaskProgress::Open { bytes_done }
    });
    Some((count, remaining_s))
}

/// Delivered files are removed after their delivery commits (or at the session's next
/// start, if the process died in between): give the last removals time to happen.
async fn wait_for_cleanup(root: &Path) {
    let deadline = tokio::time::Instant::now() + CLEANUP_WAIT;
    while tokio::time::Instant::now() < deadline {
        if complete_download_files(root).is_empty() {
            return;
        }
        tokio::time::sleep(LEDGER_POLL).await;
    }
}

/// Files under `<root>/downloads` that are neither `.part` nor `.validator` files.
pub fn complete_download_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(sessions) = std::fs::read_dir(root.join("downloads")) else {
        return found;
    };
    for session in sessions.flatten() {
        let Ok(files) = std::fs::read_dir(session.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".part") && !name.ends_with(".validator") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

async fn drive_session(
    sessions: &Sessions,
    plan: &Plan,
    planned: &PlannedSession,
    delegate: Delegate,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    let session = sessions
        .session(&planned.id, plan.config.session_config(), delegate)
        .await?;
    let mut rest = planned.generations.as_slice();
    while let Some((first, after)) = rest.split_first() {
        // A generation and those planned to join it go in one after the other, before
        // any of them is awaited.
        let joining = after
            .iter()
            .take_while(|generation| generation.joins)
            .count();
        let (joined, later) = after.split_at(joining);
        rest = later;
        let mut issued = Vec::new();
        for generation in std::iter::once(first).chain(joined) {
            let batch = issue(sessions, &session, plan, planned, generation, ledger).await?;
            issued.push((generation, batch));
        }
        for (generation, batch) in issued {
            await_generation(sessions, plan, planned, generation, batch, ledger).await?;
        }
    }
    Ok(())
}

/// What re-issuing a generation came to.
enum Issued {
    /// Its completion ran already (or it stores none and every task was delivered).
    Done,
    /// Every task was delivered; its completion, stored with them, is still to run.
    Delivered,
    /// Enqueued (again) with its completion.
    Enqueued(session_actor::Batch),
}

/// Enqueues a generation's tasks not delivered yet, with its completion, in one unit
/// (so they share one generation of the store, or join the running one).
async fn issue(
    sessions: &Sessions,
    session: &session_actor::Session,
    plan: &Plan,
    planned: &PlannedSession,
    generation: &PlannedGeneration,
    ledger: &Ledger,
) -> anyhow::Result<Issued> {
    let completion = plan.completion_for(&planned.id, generation.number);
    if completion.is_some()
        && completion_ran(sessions.store(), ledger, &planned.id, generation.number)?
    {
        return Ok(Issued::Done);
    }
    let delivered = delivered_tasks(sessions.store(), ledger, &planned.id)?;
    let batch: Vec<_> = generation
        .tasks
        .iter()
        .filter(|task| !delivered.contains(task.id.as_str()))
        .map(|task| (task.id.clone(), request(task)))
        .collect();
    if batch.is_empty() {
        return Ok(match completion {
            Some(_) => Issued::Delivered,
            None => Issued::Done,
        });
    }
    let stored = completion.map(|(name, payload)| {
        let payload = Plan::stored_completion_payload(&planned.id, generation.number, payload);
        (name, payload)
    });
    let batch = session
        .enqueue_batch(batch, stored)
        .await
        .with_context(|| format!("enqueueing generation {}", generation.number))?;
    Ok(Issued::Enqueued(batch))
}

/// Waits until a generation ended and its completion ran.
async fn await_generation(
    sessions: &Sessions,
    plan: &Plan,
    planned: &PlannedSession,
    generation: &PlannedGeneration,
    issued: Issued,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    let ran = || completion_ran(sessions.store(), ledger, &planned.id, generation.number);
    match issued {
        Issued::Done => Ok(()),
        Issued::Delivered => {
            while !ran()? {
                tokio::time::sleep(LEDGER_POLL).await;
            }
            Ok(())
        }
        Issued::Enqueued(batch) => {
            batch
                .finished()
                .await
                .with_context(|| format!("awaiting generation {}", generation.number))?;
            if plan
                .completion_for(&planned.id, generation.number)
                .is_some()
                && !ran()?
            {
                anyhow::bail!(
                    "generation {} finished before its completion ran",
                    generation.number
                );
            }
            Ok(())
        }
    }
}

fn completion_ran(
    store: &Store,
    ledger: &Ledger,
    session: &str,
    generation: u64,
) -> anyhow::Result<bool> {
    let snapshot = store.snapshot()?;
    Ok(ledger.completion_ran(&snapshot, session, generation)?)
}

/// The tasks of a session whose event the ledger holds.
fn delivered_tasks(
    store: &Store,
    ledger: &Ledger,
    session: &str,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let snapshot = store.snapshot()?;
    Ok(ledger
        .entries(&snapshot)?
        .into_iter()
        .filter(|entry| entry.session == session)
        .filter_map(|entry| match entry.kind {
            EntryKind::Task { task, .. } => Some(task),
            EntryKind::DidFinish | EntryKind::Completion { .. } => None,
        })
        .collect())
}

/// The transfer a planned task asks for (the same bytes on every start, so re-issuing
/// reconnects).
pub fn request(task: &PlannedTask) -> TransferRequest {
    match &task.kind {
        PlannedKind::Download { expected_bytes, .. } => {
            let request = TransferRequest::download(&task.url);
            match expected_bytes {
                Some(bytes) => request.with_expected_bytes(*bytes),
                None => request,
            }
        }
        PlannedKind::Upload { file } => TransferRequest::upload(&task.url, file),
        PlannedKind::Data => TransferRequest::data(Method::Get, &task.url),
    }
}

/// The ledger entry for a delivery; looks at a downloaded file right now.
pub fn entry_for(delivery: &Delivery, run: u32) -> LedgerEntry {
    let kind = match &delivery.event {
        Event::TaskCompleted {
            task,
            outcome,
            file,
            ..
        } => EntryKind::Task {
            task: task.to_string(),
            outcome: outcome.name().to_owned(),
            file: file.as_ref().map(|file| FileFact::observe(file.path())),
        },
        Event::DidFinishEvents => EntryKind::DidFinish,
    };
    LedgerEntry {
        index: 0,
        run,
        session: delivery.key.session.to_string(),
        generation: delivery.key.generation,
        seq: delivery.key.seq,
        kind,
    }
}

/// Whether a delivery panics on purpose: a fixed sequence of draws per run (from the
/// plan's seed and the run's number).
struct PanicDraw {
    rate: f64,
    rng: Mutex<StdRng>,
}

impl PanicDraw {
    fn new(rate: f64, seed: u64, run: u32) -> PanicDraw {
        let stream = seed ^ 0x9A41_C000_0000_0000 ^ u64::from(run).rotate_left(24);
        PanicDraw {
            rate,
            rng: Mutex::new(StdRng::seed_from_u64(stream)),
        }
    }

    fn draw(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.gen_bool(self.rate.min(1.0))
    }
}

/// Whether a delivery is refused on purpose: the plan's [`Refusals`], counted per event
/// in this process.
struct RefusalDraw {
    refusals: Option<Refusals>,
    seed: u64,
    refused: Mutex<std::collections::HashMap<(String, u64), u64>>,
}

/// The error of a delivery refused on purpose.
const REFUSED: &str = "harness: delivery refused on purpose";

impl RefusalDraw {
    fn new(refusals: Option<Refusals>, seed: u64) -> RefusalDraw {
        RefusalDraw {
            refusals,
            seed,
            refused: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// `Err` while the event has been refused fewer times than drawn.
    fn check(&self, delivery: &Delivery) -> Result<(), DelegateError> {
        let Some(refusals) = self.refusals else {
            return Ok(());
        };
        let session = delivery.key.session.as_str();
        let times = refusals.times(self.seed, session, delivery.key.seq);
        if times == 0 {
            return Ok(());
        }
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let count = refused
            .entry((session.to_owned(), delivery.key.seq))
            .or_default();
        if *count >= times {
            return Ok(());
        }
        *count += 1;
        say("event refused");
        Err(DelegateError::new(REFUSED))
    }
}

/// The exactly-once delegate: the application's delegate (if any), then the ledger
/// entry, in the delivery's transaction. An injected panic comes after the
/// application's delegate ran and before the commit, the place where effects outside
/// the transaction show up twice.
struct LedgerDelegate {
    ledger: Ledger,
    run: u32,
    panics: PanicDraw,
    refusals: RefusalDraw,
    inner: Option<Arc<dyn TransactionalDelegate>>,
}

impl TransactionalDelegate for LedgerDelegate {
    fn deliver(
        &self,
        delivery: &Delivery,
        scope: &mut WriteScope<'_>,
    ) -> Result<(), DelegateError> {
        // Refused before anything is written: the unit rolls back and comes again.
        self.refusals.check(delivery)?;
        // The file as the library hands it over, before the application moves it.
        let entry = entry_for(delivery, self.run);
        if let Some(inner) = &self.inner {
            inner.deliver(delivery, scope)?;
        }
        if self.panics.draw() {
            say("event panic");
            std::panic::panic_any(INJECTED_PANIC);
        }
        self.ledger
            .append(scope, entry)
            .map(|_| ())
            .map_err(|error| DelegateError::new(format!("writing the ledger: {error}")))
    }
}

/// The at-least-once delegate: the ledger entry is its own write unit, committed before
/// the library's cursor advance; a crash between the two delivers the event again.
struct AsyncLedgerDelegate {
    store: Store,
    ledger: Ledger,
    run: u32,
    refusals: Arc<RefusalDraw>,
}

impl AsyncDelegate for AsyncLedgerDelegate {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Result<(), DelegateError>> {
        let store = self.store.clone();
        let ledger = self.ledger.clone();
        let entry = entry_for(&delivery, self.run);
        let refused = self.refusals.check(&delivery);
        Box::pin(async move {
            refused?;
            store
                .write_async(move |scope| ledger.append(scope, entry.clone()).map(|_| ()))
                .await
                .map_err(|error: session_store::Error| {
                    DelegateError::new(format!("writing the ledger: {error}"))
                })
        })
    }
}

/// A named completion handler of the application, wrapped: it runs with the
/// application's payload, then its run is recorded (entry and marker) in the same
/// transaction.
struct LedgerCompletion {
    ledger: Ledger,
    run: u32,
    inner: Arc<dyn CompletionHandler>,
}

impl CompletionHandler for LedgerCompletion {
    fn run(&self, call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
        let application_call = CompletionCall {
            key: call.key.clone(),
            name: call.name.clone(),
            payload: Plan::application_payload(&call.payload).to_vec(),
        };
        self.inner.run(&application_call, scope)?;
        let entry = LedgerEntry {
            index: 0,
            run: self.run,
            session: call.key.session.to_string(),
            generation: call.key.generation,
            seq: call.key.seq,
            kind: EntryKind::Completion {
                name: call.name.clone(),
                payload: call.payload.clone(),
            },
        };
        let failed = |error: session_store::Error| DelegateError::new(format!("ledger: {error}"));
        let index = self.ledger.append(scope, entry).map_err(failed)?;
        if let Some((session, generation)) = Plan::parse_completion_payload(&call.payload) {
            self.ledger
                .mark_completion(scope, &session, generation, index)
                .map_err(failed)?;
        }
        Ok(())
    }
}
