//! The crash harness: `session-harness crash` kills a worker process at random instants
//! and at fail points while it runs a plan through the library, then checks the guarantees
//! of the `session_actor` crate documentation (its "Guarantees", items 1 to 6) from the
//! ledger, the store, the origin's counters and the files.
//!
//! - `plan`: the plan generated from a seed (`plan.json`), what each task must end as.
//! - `manifest`: a plan read from a manifest, against someone else's server.
//! - `ledger`: what the delegate and the completion handler saw, in an application table
//!   (on PostgreSQL, in SQL tables of the application's schema).
//! - `run_store`: which backend the run keeps its records in (`crash --store`).
//! - `worker`: the child process that runs the plan through the real library (its core
//!   shared with [`crate::testkit`]).
//! - `schedule`: the fault schedule over the expected run, and the pacer that places
//!   each kill.
//! - `orchestrator`: the crash loop: runs, kills, fail points, the last clean run
//!   (shared with [`crate::testkit`]).
//! - `facts`: reading a run directory (ledger, records, files) once no worker runs.
//! - `verifier`: the pure check of section 5 over those facts.
//! - `report`: the table for a person and the JSON object.
//! - `inspect`: what the store of a library root or a run directory holds, for a person
//!   or as JSON, read-only while its owner may run.

use std::path::PathBuf;
use std::process::ExitCode;

pub mod facts;
pub mod inspect;
pub mod ledger;
pub mod manifest;
pub mod orchestrator;
pub mod plan;
pub mod report;
pub mod run_store;
pub mod schedule;
pub mod verifier;
pub mod worker;

pub use facts::{Facts, OriginFacts};
pub use inspect::InspectArgs;
pub use ledger::{EntryKind, FileFact, LedgerEntry};
pub use plan::{Expect, Plan, PlannedKind};
pub use report::{Report, RunStats};
pub use run_store::RunStore;
pub use schedule::{FailPoint, Fault, FaultKind, FaultSchedule};
pub use verifier::{Findings, verify};
pub use worker::{DelegateMode, WorkerArgs};

/// Options of `session-harness crash`.
#[derive(Debug, Clone, clap::Args)]
pub struct CrashArgs {
    /// The seed of the plan and of the kill schedule (random and printed by default).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sessions in the plan.
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Tasks per session, over its generations.
    #[arg(long, default_value_t = 12)]
    pub tasks: usize,
    /// SIGKILLs, at random instants over the whole expected run.
    #[arg(long, default_value_t = 40)]
    pub kills: usize,
    /// Aborts at armed fail points.
    #[arg(long, default_value_t = 10)]
    pub aborts: usize,
    /// Arm no fail points (kills only).
    #[arg(long)]
    pub no_failpoints: bool,
    /// The probability that the delegate panics on a delivery (transactional only).
    #[arg(long, default_value_t = 0.02)]
    pub panic_rate: f64,
    /// Which delegate the worker attaches; `at-least-once` shows the checker failing.
    #[arg(long, value_enum, default_value_t = DelegateMode::Transactional)]
    pub delegate: DelegateMode,
    /// Keep the run in this (new or empty) directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Write the report as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where the records go: `lmdb`, `postgres` (a throwaway cluster the harness starts
    /// and stops), or a `postgres://...` URL of a server (a new schema per run).
    #[arg(long, default_value = "lmdb")]
    pub store: String,
    /// Someone else's server (with --manifest) instead of the built-in origin.
    #[arg(long, requires = "manifest")]
    pub origin: Option<String>,
    /// The sessions and tasks to run against --origin.
    #[arg(long, requires = "origin")]
    pub manifest: Option<PathBuf>,
    /// The expected run the faults are placed over, in seconds: how long one worker
    /// would take to finish the plan without faults. By default estimated from the
    /// plan's paced transfers and retry waits, and from the progress measured on the way.
    #[arg(long)]
    pub expected_run_s: Option<f64>,
    /// How long the last worker, without faults, may take to finish the plan.
    #[arg(long, default_value_t = 60)]
    pub final_timeout_s: u64,
}

/// Options of `session-harness verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// A run directory kept with `crash --dir`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Write the report as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `session-harness crash`.
///
/// # Errors
/// Usage and setup errors (exit 2).
pub fn crash(args: &CrashArgs) -> anyhow::Result<ExitCode> {
    orchestrator::run(args)
}

/// Re-checks a kept run directory: the plan in `plan.json`, the origin's counters in
/// `origin.json` (if any), the ledger, the store and the files.
///
/// # Errors
/// A directory that is not a run directory, or a store in use.
pub fn verify_dir(args: &DirArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::load(&args.dir)?;
    let origin = OriginFacts::load(&args.dir)?;
    let facts = Facts::collect(&args.dir, origin)?;
    let findings = verify(&plan, &facts);
    let run_path = args.dir.join(report::RUN_FILE_NAME);
    let run = match std::fs::read_to_string(&run_path) {
        Ok(text) => serde_json::from_str(&text)?,
        Err(_) => RunStats {
            seed: plan.seed,
            ..RunStats::default()
        },
    };
    let report = Report::new(run, findings);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Lists what the store of a library root or a run directory holds (see `inspect`): read
/// only, so its owner may be running.
///
/// # Errors
/// A directory without a store, or a store that cannot be read (exit 2).
pub fn inspect_dir(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    inspect::inspect(args)
}
