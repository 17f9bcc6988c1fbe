//! Crash-test your own delegate: property-based crash tests of the application code
//! around bgsession (your transactional delegate, your completion handlers, the
//! invariants of your application tables), in your own `cargo test`.
//!
//! You describe what `Sessions` is built with (application tables, named completion
//! handlers), the delegate, a workload and a check; [`CrashTest::run`] does the rest:
//!
//! 1. draws a case from the seed: a [`Workload`] (sessions, batches, tasks against the
//!    built-in origin with its fault programs, or against URLs of yours) and a
//!    [`FaultSchedule`] (kill instants as fractions of the expected run, fail points,
//!    a delegate panic rate);
//! 2. re-executes the test binary as a worker child (only this test, `--exact`), which
//!    runs the workload through the real library with your delegate and handlers: once
//!    without faults in a scratch directory, to measure the expected run; then, in the
//!    case's directory, SIGKILLs it at each fault's instant (a fraction of that run),
//!    or arms one of the library's fail points so that it aborts there, or lets a
//!    delivery panic right after your delegate ran, and starts it again, through the
//!    whole schedule;
//! 3. runs one last worker without faults to the end;
//! 4. runs the project's verifier (every event delivered exactly once and in order,
//!    "did finish events" and each completion once and after their events, every task
//!    ended as expected, every downloaded file intact and removed after its delivery)
//!    and then your check over a read snapshot of your tables.
//!
//! A failing case shrinks (fewer sessions, tasks and faults, smaller objects, no origin
//! faults, no panics) and the test panics with the smallest failing case, the seed that
//! generated the original one, a one-line command for each, and the run directory, kept
//! for `session-harness inspect --dir` and `session-harness verify --dir`.
//!
//! ```no_run
//! use session_actor::{AppTable, Delegate, DelegateError, Delivery, Event, WriteScope};
//! use session_harness::testkit::{CheckView, CrashTest};
//!
//! fn record(delivery: &Delivery, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
//!     if let Event::TaskCompleted { task, .. } = &delivery.event {
//!         let seen = AppTable::<u32>::named("seen")?;
//!         let key = format!("{}/{task}", delivery.key.session);
//!         let count = seen.get(scope, &key)?.unwrap_or(0);
//!         seen.put(scope, &key, &(count + 1))?;
//!     }
//!     Ok(())
//! }
//!
//! #[test]
//! fn every_task_recorded_once() {
//!     CrashTest::new()
//!         .app_table("seen")
//!         .delegate(|_| record)
//!         .check(|view: &CheckView<'_>| {
//!             let twice = view
//!                 .table::<u32>("seen")?
//!                 .into_iter()
//!                 .filter(|(_, count)| *count != 1)
//!                 .map(|(key, count)| format!("{} recorded {count} times", String::from_utf8_lossy(&key)))
//!                 .collect();
//!             Ok(twice)
//!         })
//!         .run();
//! }
//! # fn main() {}
//! ```
//!
//! # What is proven, and what is not
//!
//! A passing case shows that your delegate, your completion handlers and the library,
//! together, keep the guarantees and your invariants across a **SIGKILL of the process
//! at the instants drawn**, an **abort at each fail point armed** (before and after the
//! store's commit, after your delegate and before the delivery commits, inside a
//! completion, between a transfer and its result, after a download's fsync), and a
//! **panic right after your delegate ran** (its writes roll back, effects outside the
//! transaction stay). Many cases over many seeds make "any instant" likely; no finite
//! run proves it. It does not prove anything about **power loss** or a kernel crash
//! (which depend on the disk honouring fsync), other processes writing the same store,
//! clocks, or effects your code has outside the store's transaction (a network call, a
//! file: those happen again when a delivery is repeated — which is exactly what a check
//! can catch). Only transactional delegates are supported; an at-least-once delegate is
//! at least once by design.
//!
//! # How it runs
//!
//! The worker child is this same executable, started again with environment variables
//! ([`WORKER_ENV`] and others): under libtest with `<test name> --exact` (libtest
//! names a test's thread after the test; give the name with [`CrashTest::test_name`]
//! when you call `run` from another thread), in a plain `main` with the same
//! arguments. In the parent, [`CrashTest::run`] returns when every case is done; in the
//! child it runs the worker and exits the process. So the code before the crash test in
//! the same function runs in every worker too: keep it free of side effects, or skip it
//! when [`WORKER_ENV`] is set.
//!
//! Fail points are compiled into the library only with its `failpoints` feature, which
//! `session-harness` turns on: depend on `session-harness` as a dev-dependency and your
//! test build of `session-actor` has them (cargo unifies the features), while your
//! release build does not.
//!
//! A download keeps its progress across a kill in steps: the transfer engine writes
//! what it received at least every 250 ms (or every 1 MiB), so a worker killed sooner
//! than that after it resumed a slow (paced) download has not advanced it. With faults
//! denser than that, the expected run grows until runs are long enough; a workload
//! that finishes before the last faults of its schedule reports them as unused.
//!
//! Environment: `BGSESSION_TESTKIT_SEED=S` runs only the case of seed `S` (no
//! shrinking); `BGSESSION_TESTKIT_CASE=path/case.json` runs exactly a kept case (a
//! shrunk one has no seed of its own); `BGSESSION_TESTKIT_CASES=N` overrides the number
//! of cases; `BGSESSION_TESTKIT_KEEP=1` keeps every run directory.
//!
//! - `workload`: [`Workload`] and its parts.
//! - `strategy`: proptest strategies for workloads and fault schedules.
//! - `check`: [`CheckView`], what your check reads, and [`AppContext`].
//! - `child`: re-executing the test binary as the worker.
//! - `case`: running one case and shrinking a failing one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::strategy::{BoxedStrategy, Just, Strategy};
use serde::{Deserialize, Serialize};
use session_actor::{CompletionHandler, TransactionalDelegate};
use session_store::AppTable;

mod case;
mod check;
mod child;
mod strategy;
mod workload;

pub use check::{AppContext, CheckResult, CheckView, TaskOutcome};
pub use child::WORKER_ENV;
pub use strategy::{FaultShape, WorkloadShape, fault_schedules, workloads};
pub use workload::{
    BatchWork, CompletionWork, OriginFault, SessionWork, TaskWork, Transfer, WORKLOAD_SESSIONS_MAX,
    WORKLOAD_TASKS_PER_SESSION_MAX, Workload,
};

pub use crate::crash::plan::Expect;
pub use crate::crash::schedule::{FailPoint, Fault, FaultKind, FaultSchedule};

use crate::crash::ledger::LEDGER_TABLE;

/// Cases a crash test runs by default.
pub const CASES_DEFAULT: u32 = 3;
/// Crash runs a failing case may spend on shrinking, by default.
pub const SHRINK_RUNS_DEFAULT: u32 = 12;
/// How long the last clean worker of a case may take, by default.
pub const FINAL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Environment: run only the case of this seed.
pub const SEED_ENV: &str = "BGSESSION_TESTKIT_SEED";
/// Environment: run exactly the case in this `case.json`.
pub const CASE_ENV: &str = "BGSESSION_TESTKIT_CASE";
/// Environment: the number of cases.
pub const CASES_ENV: &str = "BGSESSION_TESTKIT_CASES";
/// Environment: keep every run directory (`1`).
pub const KEEP_ENV: &str = "BGSESSION_TESTKIT_KEEP";

/// The errors of the test kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A case broke a guarantee or an invariant of your check.
    #[error("{0}")]
    Failed(Box<Failure>),
    /// The workload cannot run (identifiers, sizes, completion names).
    #[error("invalid workload: {reason}")]
    InvalidWorkload {
        /// What is wrong, naming the session, batch or task.
        reason: String,
    },
    /// The crash test is set up wrong (a table name, a reserved name).
    #[error("invalid crash test: {reason}")]
    InvalidSetup {
        /// What is wrong.
        reason: String,
    },
    /// Something the kit needs failed: a temporary directory, the origin, a worker
    /// process that could not start.
    #[error("crash test setup failed: {reason}")]
    Setup {
        /// What failed.
        reason: String,
    },
}

/// One case: the seed, the workload and the fault schedule. `case.json` in a kept run
/// directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The seed it was generated from (a shrunk case keeps its original's), which also
    /// fixes the origin's content and the delegate panics.
    pub seed: u64,
    /// What the workers run.
    pub workload: Workload,
    /// What is done to them.
    pub schedule: FaultSchedule,
}

/// A failed case, smallest first, with what is needed to repeat and inspect it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The crash test's name.
    pub test: String,
    /// The smallest failing case found.
    pub case: Case,
    /// The case first found failing, when shrinking found a smaller one.
    pub original: Option<Case>,
    /// Crash runs spent on shrinking.
    pub shrink_runs: u32,
    /// Violations of bgsession's guarantees, from the project's verifier.
    pub guarantee_violations: Vec<String>,
    /// Violations your check found.
    pub check_violations: Vec<String>,
    /// The verifier's table of the smallest case.
    pub table: String,
    /// The kept run directory of the smallest case.
    pub dir: PathBuf,
    /// A command that runs the smallest case again.
    pub repeat_case: String,
    /// A command that runs the original case (generated from the seed) again.
    pub repeat_seed: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash test {} FAILED (seed {})",
            self.test, self.case.seed
        )?;
        match &self.original {
            Some(original) => writeln!(
                f,
                "  shrunk in {} runs from {} and {} faults to:",
                self.shrink_runs,
                original.workload.counts(),
                original.schedule.faults.len()
            )?,
            None => writeln!(f, "  (not shrunk)")?,
        }
        writeln!(f, "  workload: {}", self.case.workload.describe())?;
        writeln!(f, "  faults:   {}", self.case.schedule.describe())?;
        for (title, violations) in [
            ("your check", &self.check_violations),
            ("bgsession's guarantees", &self.guarantee_violations),
        ] {
            if !violations.is_empty() {
                writeln!(f, "  violations ({title}):")?;
                for violation in violations {
                    writeln!(f, "    - {violation}")?;
                }
            }
        }
        for line in self.table.lines() {
            writeln!(f, "  | {line}")?;
        }
        writeln!(
            f,
            "  run directory kept: {} (session-harness inspect --dir {0}; session-harness verify --dir {0})",
            self.dir.display()
        )?;
        writeln!(f, "  repeat this case: {}", self.repeat_case)?;
        write!(f, "  repeat the seed:  {}", self.repeat_seed)?;
        if self.original.is_some() {
            write!(f, " (the case before shrinking)")?;
        }
        Ok(())
    }
}

/// What the cases of a passing crash test did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// One per case.
    pub cases: Vec<CaseSummary>,
}

/// What one passing case did.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSummary {
    /// Its seed.
    pub seed: u64,
    /// Workers killed with SIGKILL.
    pub kills: u64,
    /// Workers aborted at a fail point.
    pub aborts: u64,
    /// Delegate panics injected.
    pub panics: u64,
    /// The share of events delivered by runs later killed or aborted.
    pub events_under_faults_share: f64,
    /// Seconds the case took.
    pub wall_s: f64,
}

type DelegateFactory = Arc<dyn Fn(&AppContext) -> Arc<dyn TransactionalDelegate> + Send + Sync>;
type Check = Arc<dyn Fn(&CheckView<'_>) -> CheckResult + Send + Sync>;

/// Where a crash test's workloads or schedules come from.
enum Source<Shape, Value> {
    Shape(Shape),
    Strategy(BoxedStrategy<Value>),
}

/// A crash test of your delegate and completion handlers: build it, then [`run`](Self::run).
pub struct CrashTest {
    name: Option<String>,
    tables: Vec<String>,
    completions: Vec<(String, Arc<dyn CompletionHandler>)>,
    delegate: Option<DelegateFactory>,
    check: Option<Check>,
    workloads: Source<WorkloadShape, Workload>,
    schedules: Source<FaultShape, FaultSchedule>,
    seeds: Vec<u64>,
    cases: u32,
    shrink_runs_max: u32,
    final_timeout: Duration,
    /// The server whose schemas keep each case's records, instead of LMDB.
    postgres: Option<String>,
}

impl fmt::Debug for CrashTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashTest")
            .field("name", &self.name)
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
            .field("check", &self.check.is_some())
            .field("seeds", &self.seeds)
            .field("cases", &self.cases)
            .finish_non_exhaustive()
    }
}

impl Default for CrashTest {
    fn default() -> Self {
        CrashTest::new()
    }
}

impl CrashTest {
    /// A crash test with the default workload and fault shapes, no application tables,
    /// handlers, delegate or check of yours yet.
    pub fn new() -> CrashTest {
        CrashTest {
            name: None,
            tables: Vec::new(),
            completions: Vec::new(),
            delegate: None,
            check: None,
            workloads: Source::Shape(WorkloadShape::default()),
            schedules: Source::Shape(FaultShape::default()),
            seeds: Vec::new(),
            cases: CASES_DEFAULT,
            shrink_runs_max: SHRINK_RUNS_DEFAULT,
            final_timeout: FINAL_TIMEOUT_DEFAULT,
            postgres: None,
        }
    }

    /// Keeps each case's records in PostgreSQL, at the server of `url` (a throwaway
    /// cluster: [`crate::postgres::Cluster`]), in schemas of the case's own: the store's,
    /// and one for the application ([`AppContext::sql_schema`]) that also holds the
    /// kit's ledger. The delegate and the completion handlers get the batch's SQL
    /// transaction through [`WriteScope::postgres`](session_store::WriteScope::postgres).
    /// The schemas stay on the server after the case.
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.postgres = Some(url.into());
        self
    }

    /// The libtest name of the test (its full path, as `cargo test` lists it), when
    /// [`run`](Self::run) is not called on the test's own thread.
    pub fn test_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Declares an application table, as [`SessionsBuilder::app_table`](session_actor::SessionsBuilder::app_table).
    pub fn app_table(mut self, name: impl Into<String>) -> Self {
        self.tables.push(name.into());
        self
    }

    /// Registers a named completion handler, as
    /// [`SessionsBuilder::completion`](session_actor::SessionsBuilder::completion).
    pub fn completion(mut self, name: impl Into<String>, handler: impl CompletionHandler) -> Self {
        self.completions.push((name.into(), Arc::new(handler)));
        self
    }

    /// The delegate every session gets, built in each worker process from its
    /// [`AppContext`]. The kit's ledger entry is written after it, in the same
    /// transaction.
    pub fn delegate<D, F>(mut self, factory: F) -> Self
    where
        D: TransactionalDelegate,
        F: Fn(&AppContext) -> D + Send + Sync + 'static,
    {
        self.delegate = Some(Arc::new(move |context| {
            Arc::new(factory(context)) as Arc<dyn TransactionalDelegate>
        }));
        self
    }

    /// Your check, run over a read snapshot once the last worker of a case ended, after
    /// the verifier: the invariant violations it finds, one sentence each.
    pub fn check<F>(mut self, check: F) -> Self
    where
        F: Fn(&CheckView<'_>) -> CheckResult + Send + Sync + 'static,
    {
        self.check = Some(Arc::new(check));
        self
    }

    /// Runs this workload in every case (the faults still vary).
    pub fn workload(mut self, workload: Workload) -> Self {
        self.workloads = Source::Strategy(Just(workload).boxed());
        self
    }

    /// Generates workloads of this shape.
    pub fn workload_shape(mut self, shape: WorkloadShape) -> Self {
        self.workloads = Source::Shape(shape);
        self
    }

    /// Generates workloads with a strategy of yours.
    pub fn workloads(mut self, strategy: BoxedStrategy<Workload>) -> Self {
        self.workloads = Source::Strategy(strategy);
        self
    }

    /// Runs this fault schedule in every case.
    pub fn faults(mut self, schedule: FaultSchedule) -> Self {
        self.schedules = Source::Strategy(Just(schedule).boxed());
        self
    }

    /// Generates fault schedules of this shape.
    pub fn fault_shape(mut self, shape: FaultShape) -> Self {
        self.schedules = Source::Shape(shape);
        self
    }

    /// Generates fault schedules with a strategy of yours.
    pub fn fault_schedules(mut self, strategy: BoxedStrategy<FaultSchedule>) -> Self {
        self.schedules = Source::Strategy(strategy);
        self
    }

    /// Seeds whose cases run first, before the fresh ones: failures found before, kept
    /// as regressions.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = u64>) -> Self {
        self.seeds.extend(seeds);
        self
    }

    /// How many cases of fresh seeds to run ([`CASES_DEFAULT`];
    /// `BGSESSION_TESTKIT_CASES` overrides).
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases;
        self
    }

    /// How many crash runs a failing case may spend on shrinking (0: none).
    pub fn shrink_runs_max(mut self, runs: u32) -> Self {
        self.shrink_runs_max = runs;
        self
    }

    /// How long the last clean worker of a case may take before the case fails as
    /// "did not finish".
    pub fn final_timeout(mut self, timeout: Duration) -> Self {
        self.final_timeout = timeout;
        self
    }

    /// Runs the crash test and panics with the [`Failure`] (or the setup error) if it
    /// fails. In a worker child it runs the worker and exits the process.
    pub fn run(self) {
        if let Err(error) = self.try_run() {
            panic!("{error}");
        }
    }

    /// Runs the crash test. In a worker child it runs the worker and exits the process.
    ///
    /// # Errors
    /// [`Error::Failed`] with the smallest failing case; [`Error::InvalidWorkload`] and
    /// [`Error::InvalidSetup`] before anything runs; [`Error::Setup`] when the kit
    /// cannot do its part.
    pub fn try_run(self) -> Result<Summary, Error> {
        let harness = child::Harness::detect(self.name.as_deref());
        if let Some(orders) = child::worker_orders()? {
            self.work(&harness, orders);
        }
        self.validate()?;
        case::run_cases(&self, &harness)
    }

    /// The worker child's part: run the plan with this test's parts, then exit.
    fn work(&self, harness: &child::Harness, orders: child::WorkerOrders) -> ! {
        if orders.test != harness.name() {
            eprintln!(
                "bgsession testkit: this worker was started for crash test {:?} but reached {:?}",
                orders.test,
                harness.name()
            );
            std::process::exit(2);
        }
        let sql_schema = match crate::crash::RunStore::load(&orders.run.dir) {
            Ok(store) => store.app_schema(),
            Err(error) => {
                eprintln!("bgsession testkit worker: {error:#}");
                std::process::exit(2);
            }
        };
        let context = AppContext::new(case::app_dir(&orders.run.dir), orders.run.run, sql_schema);
        let app = crate::crash::worker::App {
            tables: self.tables.clone(),
            completions: self.completions.clone(),
            delegate: self.delegate.as_ref().map(|factory| factory(&context)),
        };
        match crate::crash::worker::run_plan(orders.run, app) {
            Ok(()) => std::process::exit(0),
            Err(error) => {
                eprintln!("bgsession testkit worker: {error:#}");
                std::process::exit(2);
            }
        }
    }

    fn validate(&self) -> Result<(), Error> {
        for (index, table) in self.tables.iter().enumerate() {
            if table == LEDGER_TABLE {
                return Err(Error::InvalidSetup {
                    reason: format!(
                        "the table name {LEDGER_TABLE:?} is the kit's own ledger; name yours differently"
                    ),
                });
            }
            AppTable::<()>::named(table).map_err(|error| Error::InvalidSetup {
                reason: format!("application table {table:?}: {error}"),
            })?;
            if self.tables[..index].contains(table) {
                return Err(Error::InvalidSetup {
                    reason: format!("application table {table:?} is declared twice"),
                });
            }
        }
        for (index, (name, _)) in self.completions.iter().enumerate() {
            session_store::validate_completion_name(name).map_err(|error| Error::InvalidSetup {
                reason: format!("completion {name:?}: {}", error.reason),
            })?;
            if self.completions[..index]
                .iter()
                .any(|(other, _)| other == name)
            {
                return Err(Error::InvalidSetup {
                    reason: format!("completion {name:?} is registered twice"),
                });
            }
        }
        Ok(())
    }

    fn completion_names(&self) -> Vec<String> {
        self.completions
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The strategy of whole cases: workload and schedule.
    fn case_strategy(&self) -> BoxedStrategy<(Workload, FaultSchedule)> {
        let workloads = match &self.workloads {
            Source::Shape(shape) => {
                let mut shape = shape.clone();
                if shape.completions.is_empty() {
                    shape.completions = self.completion_names();
                }
                strategy::workloads(&shape)
            }
            Source::Strategy(strategy) => strategy.clone(),
        };
        let schedules = match &self.schedules {
            Source::Shape(shape) => strategy::fault_schedules(shape),
            Source::Strategy(strategy) => strategy.clone(),
        };
        (workloads, schedules).boxed()
    }
}
