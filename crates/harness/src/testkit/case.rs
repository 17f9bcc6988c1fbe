//! Running one case in the parent (origin, plan, the shared crash loop, the verifier,
//! the application's check), and shrinking a failing one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use proptest::strategy::{BoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use session_store::TaskRecord;

use super::child::{ChildLauncher, Harness, repeat_command};
use super::{
    CASE_ENV, CASES_ENV, Case, CaseSummary, CheckView, CrashTest, Error, Failure, FaultSchedule,
    KEEP_ENV, SEED_ENV, Summary, Workload,
};
use crate::crash::facts::{Facts, OriginFacts, open_run_store};
use crate::crash::orchestrator::{LoopConfig, conclude, crash_loop, measure_run};
use crate::crash::plan::write_upload_sources;
use crate::crash::report::{Report, RunStats};
use crate::crash::schedule::MeasuredRun;
use crate::crash::worker::DelegateMode;
use crate::origin::{Origin, OriginConfig};

/// The application's directory inside a run directory.
const APP_DIR: &str = "app";
/// The case's file in a run directory.
const CASE_FILE_NAME: &str = "case.json";
/// Your check's violations in a run directory.
const CHECK_FILE_NAME: &str = "check.json";
/// How many times a case whose faults all came too late is run with them earlier.
const EARLIER_ATTEMPTS_MAX: u32 = 3;

/// The measured run's directory inside a run directory.
const CALIBRATION_DIR: &str = "calibration";

/// The application's directory of a run directory.
pub(crate) fn app_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(APP_DIR)
}

/// One finished case: its verdicts and its run directory.
struct CaseRun {
    case: Case,
    report: Report,
    check_violations: Vec<String>,
    dir: tempfile::TempDir,
}

impl CaseRun {
    fn passed(&self) -> bool {
        self.report.passed() && self.check_violations.is_empty()
    }

    fn summary(&self) -> CaseSummary {
        let run = &self.report.run;
        CaseSummary {
            seed: self.case.seed,
            kills: run.kills,
            aborts: run.failpoint_aborts,
            panics: run.delegate_panics,
            events_under_faults_share: run.events_under_faults_share,
            wall_s: run.wall_s,
        }
    }

    fn line(&self) -> String {
        let summary = self.summary();
        let unused = match self.report.run.faults_unused {
            0 => String::new(),
            unused => format!(" ({unused} faults unused: the workload finished first)"),
        };
        format!(
            "{}: {} kills, {} aborts, {} panics{unused}, {:.0}% of events under faults, {:.1} s",
            if self.passed() { "pass" } else { "FAIL" },
            summary.kills,
            summary.aborts,
            summary.panics,
            summary.events_under_faults_share * 100.0,
            summary.wall_s
        )
    }
}

/// Runs the crash test's cases: the one of `BGSESSION_TESTKIT_CASE` or of
/// `BGSESSION_TESTKIT_SEED`, else the pinned seeds and the configured number of fresh
/// ones.
pub(crate) fn run_cases(test: &CrashTest, harness: &Harness) -> Result<Summary, Error> {
    let launcher = ChildLauncher::new(harness)?;
    let runner = Runner {
        test,
        harness,
        launcher,
    };
    if let Some(path) = std::env::var_os(CASE_ENV) {
        let case = load_case(Path::new(&path))?;
        return runner.run_fixed(case);
    }
    let strategy = test.case_strategy();
    let (seeds, shrink) = match std::env::var(SEED_ENV) {
        Ok(seed) => {
            let seed = seed.trim().parse::<u64>().map_err(|_| Error::Setup {
                reason: format!("{SEED_ENV}={seed:?} is not a seed (an unsigned integer)"),
            })?;
            (vec![seed], false)
        }
        Err(_) => {
            let cases = std::env::var(CASES_ENV)
                .ok()
                .and_then(|cases| cases.trim().parse().ok())
                .unwrap_or(test.cases);
            let fresh = (0..cases).map(|_| rand::random::<u64>());
            (test.seeds.iter().copied().chain(fresh).collect(), true)
        }
    };
    let mut summary = Summary::default();
    for (number, seed) in seeds.iter().copied().enumerate() {
        let mut tree = tree_for(&strategy, seed)?;
        let (workload, schedule) = tree.current();
        let case = Case {
            seed,
            workload,
            schedule,
        };
        let run = runner.run_case(case)?;
        eprintln!(
            "crash test {}: case {}/{} seed {seed}: {}",
            harness.display_name(),
            number + 1,
            seeds.len(),
            run.line()
        );
        if run.passed() {
            summary.cases.push(run.summary());
            runner.finish(run);
            continue;
        }
        let original = run.case.clone();
        let (smallest, runs) = if shrink {
            runner.shrink(&mut tree, run)?
        } else {
            (run, 0)
        };
        return Err(runner.failure(smallest, Some(original), runs));
    }
    Ok(summary)
}

/// The value tree of the case of `seed`: the same seed gives the same case.
fn tree_for(
    strategy: &BoxedStrategy<(Workload, FaultSchedule)>,
    seed: u64,
) -> Result<Box<dyn ValueTree<Value = (Workload, FaultSchedule)>>, Error> {
    let mut bytes = [0u8; 32];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    strategy
        .new_tree(&mut runner)
        .map_err(|reason| Error::Setup {
            reason: format!("generating the case of seed {seed}: {reason}"),
        })
}

fn load_case(path: &Path) -> Result<Case, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Setup {
        reason: format!("reading {}: {error}", path.display()),
    })?;
    serde_json::from_str(&text).map_err(|error| Error::Setup {
        reason: format!("parsing {}: {error}", path.display()),
    })
}

fn setup(what: &str) -> impl Fn(anyhow::Error) -> Error + '_ {
    move |error| Error::Setup {
        reason: format!("{what}: {error:#}"),
    }
}

/// What running cases needs.
struct Runner<'a> {
    test: &'a CrashTest,
    harness: &'a Harness,
    launcher: ChildLauncher,
}

impl Runner<'_> {
    /// Runs one given case, without shrinking.
    fn run_fixed(&self, case: Case) -> Result<Summary, Error> {
        let run = self.run_case(case)?;
        eprintln!(
            "crash test {}: the given case: {}",
            self.harness.display_name(),
            run.line()
        );
        if run.passed() {
            let summary = Summary {
                cases: vec![run.summary()],
            };
            self.finish(run);
            Ok(summary)
        } else {
            Err(self.failure(run, None, 0))
        }
    }

    /// Shrinks a failing case: simpler values while they fail, back when one passes,
    /// as proptest's runner does, for at most the configured number of crash runs.
    fn shrink(
        &self,
        tree: &mut Box<dyn ValueTree<Value = (Workload, FaultSchedule)>>,
        failing: CaseRun,
    ) -> Result<(CaseRun, u32), Error> {
        let seed = failing.case.seed;
        let mut smallest = failing;
        let mut last_passed = false;
        let mut runs = 0;
        while runs < self.test.shrink_runs_max {
            let moved = if last_passed {
                tree.complicate()
            } else {
                tree.simplify()
            };
            if !moved {
                break;
            }
            runs += 1;
            let (workload, schedule) = tree.current();
            let run = self.run_case(Case {
                seed,
                workload,
                schedule,
            })?;
            eprintln!(
                "crash test {}: shrinking, run {runs}: {} ({}, {} faults)",
                self.harness.display_name(),
                run.line(),
                run.case.workload.counts(),
                run.case.schedule.faults.len()
            );
            last_passed = run.passed();
            if !last_passed {
                smallest = run;
            }
        }
        Ok((smallest, runs))
    }

    /// Drops a passing case's run directory, or keeps it when asked to.
    fn finish(&self, run: CaseRun) {
        if std::env::var_os(KEEP_ENV).is_some_and(|keep| keep == "1") {
            let dir = run.dir.keep();
            eprintln!(
                "crash test {}: run directory kept: {}",
                self.harness.display_name(),
                dir.display()
            );
        }
    }

    fn failure(&self, run: CaseRun, original: Option<Case>, shrink_runs: u32) -> Error {
        let original = original.filter(|original| *original != run.case);
        let dir = run.dir.keep();
        let case_file = dir.join(CASE_FILE_NAME);
        Error::Failed(Box::new(Failure {
            test: self.harness.display_name(),
            repeat_case: repeat_command(
                self.harness,
                &format!("{CASE_ENV}={}", case_file.display()),
            ),
            repeat_seed: repeat_command(self.harness, &format!("{SEED_ENV}={}", run.case.seed)),
            case: run.case,
            original,
            shrink_runs,
            guarantee_violations: run.report.findings.violations.clone(),
            check_violations: run.check_violations,
            table: run.report.table(),
            dir,
        }))
    }

    /// One whole case. A case whose workload finished before any of its faults struck
    /// proves nothing about crashes, so it runs again, from a fresh directory, with its
    /// faults drawn earlier ([`EARLIER_ATTEMPTS_MAX`] times, the last with its first
    /// fault right at the start), rather than pass on the machine's speed.
    fn run_case(&self, case: Case) -> Result<CaseRun, Error> {
        let mut attempt = 0;
        loop {
            let mut tried = case.clone();
            tried.schedule = case.schedule.earlier(attempt, EARLIER_ATTEMPTS_MAX);
            let run = self.run_case_once(tried)?;
            let struck = run.report.run.kills + run.report.run.failpoint_aborts > 0;
            attempt += 1;
            if struck || case.schedule.faults.is_empty() || attempt >= EARLIER_ATTEMPTS_MAX {
                return Ok(CaseRun { case, ..run });
            }
        }
    }

    /// One whole case: a run directory, an origin, the plan, the crash loop through the
    /// schedule and the last clean run, then the verifier and the check.
    fn run_case_once(&self, case: Case) -> Result<CaseRun, Error> {
        let started = Instant::now();
        case.workload.validate(&self.test.completion_names())?;
        let dir = tempfile::Builder::new()
            .prefix("bgsession-testkit-")
            .tempdir()
            .map_err(|error| Error::Setup {
                reason: format!("creating a run directory: {error}"),
            })?;
        let content_seed = case.seed.rotate_left(29) ^ 0x7E57_C0DE_0000_0003;
        let origin = Origin::start_in_thread(OriginConfig {
            seed: content_seed,
            port: 0,
        })
        .map_err(|error| Error::Setup {
            reason: format!("starting the origin on 127.0.0.1: {error}"),
        })?;
        let plan = case
            .workload
            .plan(case.seed, &origin.url(""), content_seed, dir.path());
        prepare_dir(dir.path(), &case, &plan).map_err(setup("preparing the run directory"))?;
        self.prepare_store(dir.path())
            .map_err(setup("preparing the case's PostgreSQL schemas"))?;
        let measured = self
            .measure(dir.path(), &case, content_seed)
            .map_err(setup("the measured run"))?;
        let config = LoopConfig {
            dir: dir.path(),
            plan: &plan,
            schedule: &case.schedule,
            aborts_wanted: 0,
            mode: DelegateMode::Transactional,
            expected_run_s: None,
            measured,
            final_timeout: self.test.final_timeout,
            show_progress: false,
            seed: case.seed,
        };
        let stats = RunStats {
            seed: case.seed,
            delegate: "transactional (yours)".to_owned(),
            dir: Some(dir.path().display().to_string()),
            ..RunStats::default()
        };
        let outcome =
            crash_loop(&config, &self.launcher, stats).map_err(setup("the crash loop"))?;
        let origin_facts = OriginFacts::from(&origin.counters());
        drop(origin);
        let (report, check_violations) = self
            .verdict(dir.path(), &case, &plan, origin_facts, outcome, started)
            .map_err(setup("reading the run directory"))?;
        Ok(CaseRun {
            case,
            report,
            check_violations,
            dir,
        })
    }

    /// The measured run: the workload once without faults, in a directory of its own
    /// (`calibration/` in the run directory) against an origin of its own, so that
    /// nothing it does counts in the case.
    fn measure(
        &self,
        dir: &Path,
        case: &Case,
        content_seed: u64,
    ) -> anyhow::Result<Option<MeasuredRun>> {
        let scratch = dir.join(CALIBRATION_DIR);
        let origin = Origin::start_in_thread(OriginConfig {
            seed: content_seed,
            port: 0,
        })?;
        let plan = case
            .workload
            .plan(case.seed, &origin.url(""), content_seed, &scratch);
        std::fs::create_dir_all(&scratch)?;
        prepare_dir(&scratch, case, &plan)?;
        self.prepare_store(&scratch)?;
        measure_run(&self.launcher, &scratch, self.test.final_timeout)
    }

    /// With [`CrashTest::postgres`](super::CrashTest::postgres), new schemas for the run
    /// directory `dir` (named in its `store.json`); nothing for LMDB.
    fn prepare_store(&self, dir: &Path) -> anyhow::Result<()> {
        static STORES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let Some(url) = &self.test.postgres else {
            return Ok(());
        };
        let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = crate::crash::RunStore::Postgres {
            url: url.clone(),
            schema: format!("testkit_{}_{n}", std::process::id()),
        };
        store.save(dir)?;
        store.prepare()
    }

    /// The verifier, then the check, over one snapshot of the store.
    fn verdict(
        &self,
        dir: &Path,
        case: &Case,
        plan: &crate::crash::plan::Plan,
        origin_facts: OriginFacts,
        outcome: crate::crash::orchestrator::LoopOutcome,
        started: Instant,
    ) -> anyhow::Result<(Report, Vec<String>)> {
        origin_facts.save(dir)?;
        let mut stats = outcome.stats;
        stats.bytes_downloaded = origin_facts.body_bytes;
        let store = open_run_store(dir, &self.test.tables)?;
        let facts = Facts::read(&store, dir, Some(origin_facts))?;
        let check_violations = self.check(&store, case, &facts.tasks, dir)?;
        drop(store);
        std::fs::write(
            dir.join(CHECK_FILE_NAME),
            serde_json::to_string_pretty(&check_violations)?,
        )?;
        stats.wall_s = started.elapsed().as_secs_f64();
        let report = conclude(dir, plan, &facts, stats, &outcome.faulted_runs)?;
        Ok((report, check_violations))
    }

    /// The application's check; an error or a panic in it is a violation too.
    fn check(
        &self,
        store: &session_store::Store,
        case: &Case,
        tasks: &[TaskRecord],
        dir: &Path,
    ) -> anyhow::Result<Vec<String>> {
        let Some(check) = &self.test.check else {
            return Ok(Vec::new());
        };
        let snapshot = store.snapshot()?;
        let sql_schema = crate::crash::RunStore::load(dir)?.app_schema();
        let view = CheckView {
            snapshot: &snapshot,
            workload: &case.workload,
            tasks,
            dir: &app_dir(dir),
            sql_schema: sql_schema.as_deref(),
        };
        let violations = match catch_unwind(AssertUnwindSafe(|| check(&view))) {
            Ok(Ok(violations)) => violations,
            Ok(Err(error)) => vec![format!("the check failed: {error}")],
            Err(panic) => vec![format!(
                "the check panicked: {}",
                crate::crash::worker::panic_message(panic.as_ref())
            )],
        };
        Ok(violations)
    }
}

/// Writes the plan, the case, the upload sources and the application's directory.
fn prepare_dir(dir: &Path, case: &Case, plan: &crate::crash::plan::Plan) -> anyhow::Result<()> {
    plan.save(dir)?;
    write_upload_sources(plan)?;
    std::fs::create_dir_all(app_dir(dir))?;
    std::fs::write(
        dir.join(CASE_FILE_NAME),
        serde_json::to_string_pretty(case)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{FaultShape, WorkloadShape, fault_schedules, workloads};

    /// The same seed gives the same case, another seed another one.
    #[test]
    fn seeds_fix_cases() {
        let shape = WorkloadShape {
            completions: vec!["done".into()],
            ..WorkloadShape::default()
        };
        let strategy = (workloads(&shape), fault_schedules(&FaultShape::default())).boxed();
        let case = |seed| tree_for(&strategy, seed).expect("a case").current();
        assert_eq!(case(7), case(7));
        assert_ne!(case(7), case(8));
    }
}
