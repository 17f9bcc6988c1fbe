//! The worker: a child process that runs the plan through the real library, as an
//! application would, until the orchestrator kills it or every generation's completion
//! has run.
//!
//! On every start it re-issues the whole plan: for each session, each generation whose
//! completion the ledger does not show yet is enqueued again (known task identifiers
//! reconnect; nothing is transferred twice), its completion is stored, and the worker
//! waits until the ledger shows that completion ran before it enqueues the next one.
//!
//! Standard output carries one line per event the orchestrator counts: `event panic`
//! (a delegate panic injected on purpose), `restarts N` (supervised restarts so far in
//! this process) and `done`. Standard error stays quiet unless `RUST_LOG` is set.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::{BoxFuture, join_all};
use session_actor::{
    AsyncDelegate, CompletionCall, Delegate, DelegateError, Delivery, Event, Sessions,
    TransactionalDelegate, TransferRequest,
};
use session_http::Method;
use session_store::{Store, WriteScope};

use super::ledger::{EntryKind, FileFact, LEDGER_TABLE, Ledger, LedgerEntry};
use super::plan::{COMPLETION_NAME, Plan, PlannedKind, PlannedSession, PlannedTask};

/// The directory, inside a run directory, that is the library's root.
pub const STORE_DIR: &str = "store";
/// The message of a delegate panic injected on purpose (silenced by the panic hook).
pub const INJECTED_PANIC: &str = "harness: delegate panic injected on purpose";
/// How often a waiting session looks at the ledger.
const LEDGER_POLL: Duration = Duration::from_millis(25);
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

/// Runs the worker; exit 0 once every generation's completion has run.
///
/// # Errors
/// Setup failures and library errors (the orchestrator reports them).
pub fn run(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    // Reads FAILPOINTS (armed by the orchestrator) for the whole life of the process.
    let _scenario = fail::FailScenario::setup();
    install_tracing();
    silence_injected_panics();
    let plan = Plan::load(&args.dir)?;
    let root = args.dir.join(STORE_DIR);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the worker's runtime")?;
    runtime.block_on(work(plan, root, args.clone()))?;
    println!("done");
    Ok(ExitCode::SUCCESS)
}

fn install_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
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

async fn work(plan: Plan, root: PathBuf, args: WorkerArgs) -> anyhow::Result<()> {
    let mut engine = session_actor::EngineConfig::default();
    engine.connections_per_host_max = CONNECTIONS_PER_HOST_MAX;
    engine.connections_max = engine.connections_max.max(CONNECTIONS_PER_HOST_MAX);
    let sessions = Sessions::builder(&root)
        .app_table(LEDGER_TABLE)
        .completion(COMPLETION_NAME, completion_recorder(args.run))
        .engine_config(engine)
        .restart_limit(RESTART_LIMIT)
        .open()
        .context("opening the sessions")?;
    let ledger = Ledger::new(sessions.store())?;

    let delegate = match args.delegate {
        DelegateMode::Transactional => Delegate::transactional(LedgerDelegate {
            ledger: ledger.clone(),
            run: args.run,
            panic_rate: args.panic_rate,
        }),
        DelegateMode::AtLeastOnce => Delegate::at_least_once(AsyncLedgerDelegate {
            store: sessions.store().clone(),
            ledger: ledger.clone(),
            run: args.run,
        }),
    };

    let reporter = tokio::spawn(report_restarts(sessions.clone()));
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
    println!("restarts {}", sessions.restarts());
    sessions.shutdown().await.context("shutting down")?;
    Ok(())
}

/// Prints the supervisor's restart count whenever it changes.
async fn report_restarts(sessions: Sessions) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sessions.restarts();
        if now != last {
            println!("restarts {now}");
            last = now;
        }
    }
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
    for generation in &planned.generations {
        if completion_ran(sessions.store(), ledger, &planned.id, generation.number)? {
            continue;
        }
        // The generation's tasks and its completion go in one unit, so they share one
        // generation of the store; re-issuing them after a relaunch reconnects.
        let batch = generation
            .tasks
            .iter()
            .map(|task| (task.id.clone(), request(task)))
            .collect();
        let payload = Plan::completion_payload(&planned.id, generation.number);
        let batch = session
            .enqueue_batch(batch, Some((COMPLETION_NAME, payload)))
            .await
            .with_context(|| format!("enqueueing generation {}", generation.number))?;
        batch
            .finished()
            .await
            .with_context(|| format!("awaiting generation {}", generation.number))?;
        if !completion_ran(sessions.store(), ledger, &planned.id, generation.number)? {
            anyhow::bail!(
                "generation {} finished before its completion ran",
                generation.number
            );
        }
    }
    Ok(())
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

/// The exactly-once delegate: the ledger entry is written in the delivery's transaction.
struct LedgerDelegate {
    ledger: Ledger,
    run: u32,
    panic_rate: f64,
}

impl TransactionalDelegate for LedgerDelegate {
    fn deliver(
        &self,
        delivery: &Delivery,
        scope: &mut WriteScope<'_>,
    ) -> Result<(), DelegateError> {
        if self.panic_rate > 0.0 && rand::random::<f64>() < self.panic_rate {
            println!("event panic");
            std::panic::panic_any(INJECTED_PANIC);
        }
        self.ledger
            .append(scope, entry_for(delivery, self.run))
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
}

impl AsyncDelegate for AsyncLedgerDelegate {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Result<(), DelegateError>> {
        let store = self.store.clone();
        let ledger = self.ledger.clone();
        let entry = entry_for(&delivery, self.run);
        Box::pin(async move {
            store
                .write_async(move |scope| ledger.append(scope, entry.clone()).map(|_| ()))
                .await
                .map_err(|error: session_store::Error| {
                    DelegateError::new(format!("writing the ledger: {error}"))
                })
        })
    }
}

/// The named completion handler: records its run (entry and marker) in its transaction.
struct CompletionRecorder {
    ledger: Ledger,
    run: u32,
}

fn completion_recorder(run: u32) -> CompletionRecorder {
    CompletionRecorder {
        // A handle by name: handlers are registered before the store is open.
        ledger: Ledger::named().expect("the ledger's table name is valid"),
        run,
    }
}

impl session_actor::CompletionHandler for CompletionRecorder {
    fn run(&self, call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
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
