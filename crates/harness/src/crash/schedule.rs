//! The fault schedule of a crash run, and the pacer that turns it into kill instants.
//!
//! A schedule is a list of faults placed over the *expected run*: the time one worker
//! would take to finish the plan without faults. Fault `i` sits at a fraction `at` of
//! it (0 is the start, 1 the end): the worker that is running when the run's work
//! reaches that instant is SIGKILLed there, or, for a fail-point fault, is started with
//! the point armed and aborts at it. The main job draws the fractions uniformly (sorted,
//! so they are the order statistics of uniform draws); the test kit takes them from a
//! proptest strategy, so that a failing schedule shrinks.
//!
//! The [`Pacer`] keeps the run's *work clock*: the seconds workers have run since they
//! were ready (the library open), summed over the runs. It estimates the expected run
//! from the plan's paced transfers and retry waits ([`Plan::expected_run_s`]), or from
//! the measured progress when that says more, and gives each run the time left until
//! its fault's instant. So the faults cover the whole run, not only its start, and the
//! last clean run has little left to do.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::plan::Plan;

/// How long a run with an armed fail point may run past its instant for the point to
/// fire; then it is killed instead (and counts as a kill).
pub const FAILPOINT_WAIT_MIN: Duration = Duration::from_millis(400);
/// Fail-point faults are placed over this first share of the expected run only: an
/// armed point gets [`FAILPOINT_WAIT_MIN`] to fire, which near the end is enough for the
/// worker to finish the plan, leaving the faults after it nothing to hit.
pub const FAILPOINT_SPAN: f64 = 0.8;
/// A fail point that did not fire in this many runs in a row is armed no more (its
/// code path has no work left: every completion ran, every download finished).
const FAILPOINT_MISSES_MAX: u32 = 2;
/// Below this share of the events delivered, the measured progress says too little to
/// estimate the expected run from.
const PROGRESS_SHARE_MIN: f64 = 0.05;
/// The share of fail-point faults the at-least-once delegate aims between the delegate
/// and the commit of the cursor, where it duplicates.
const AT_LEAST_ONCE_AIM: f64 = 0.8;

/// A fail point of the library that a fault arms (the `failpoints` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPoint {
    /// In the store's writer, before the commit of a batch of units.
    StoreBeforeCommit,
    /// In the store's writer, after the commit, before the replies.
    StoreAfterCommit,
    /// After a transactional delegate returned, before the delivery commits.
    AfterDelegateBeforeCommit,
    /// Inside a stored completion handler's unit.
    InsideCompletion,
    /// Between a transfer's end and the unit that records its result.
    BetweenTransferAndResult,
    /// After a download's fsync, before its record.
    DownloadAfterFsync,
    /// After a download's last write, before its bytes are made durable (nothing durable yet).
    DownloadBeforeFsync,
    /// After a download's rename, before the flush that makes the rename durable.
    DownloadBeforeFlush,
}

impl FailPoint {
    /// Every fail point, in a fixed order.
    pub const ALL: [FailPoint; 8] = [
        FailPoint::StoreBeforeCommit,
        FailPoint::StoreAfterCommit,
        FailPoint::AfterDelegateBeforeCommit,
        FailPoint::InsideCompletion,
        FailPoint::BetweenTransferAndResult,
        FailPoint::DownloadAfterFsync,
        FailPoint::DownloadBeforeFsync,
        FailPoint::DownloadBeforeFlush,
    ];

    /// The point's name in the library (the `FAILPOINTS` syntax of the `fail` crate).
    pub fn name(self) -> &'static str {
        match self {
            FailPoint::StoreBeforeCommit => "store-before-commit",
            FailPoint::StoreAfterCommit => "store-after-commit",
            FailPoint::AfterDelegateBeforeCommit => "actor-after-delegate-before-commit",
            FailPoint::InsideCompletion => "actor-inside-completion",
            FailPoint::BetweenTransferAndResult => "actor-between-transfer-and-result",
            FailPoint::DownloadAfterFsync => session_http::FAIL_POINT_DOWNLOAD_AFTER_FSYNC,
            FailPoint::DownloadBeforeFsync => session_http::FAIL_POINT_DOWNLOAD_BEFORE_FSYNC,
            FailPoint::DownloadBeforeFlush => session_http::FAIL_POINT_DOWNLOAD_BEFORE_FLUSH,
        }
    }

    /// The most hits a fault lets pass before the abort. Commits are batched, so even
    /// the store's points are hit only some tens of times a second; a completion runs
    /// once per generation.
    pub fn hits_max(self) -> u32 {
        match self {
            FailPoint::StoreBeforeCommit | FailPoint::StoreAfterCommit => 12,
            FailPoint::AfterDelegateBeforeCommit => 8,
            FailPoint::InsideCompletion => 1,
            FailPoint::BetweenTransferAndResult => 6,
            FailPoint::DownloadAfterFsync => 3,
            // A run finishes few downloads before its fault: aim at the first ones.
            FailPoint::DownloadBeforeFsync | FailPoint::DownloadBeforeFlush => 1,
        }
    }

    /// The `FAILPOINTS` value that aborts the process at hit `hits + 1` of this point.
    pub fn spec(self, hits: u32) -> String {
        if hits == 0 {
            format!("{}=return(abort)", self.name())
        } else {
            format!("{}={hits}*off->return(abort)", self.name())
        }
    }
}

/// What one fault does to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum FaultKind {
    /// SIGKILL at the fault's instant.
    Kill,
    /// Start the worker with this fail point armed: it aborts at the point's hit
    /// `hits + 1`; if that has not happened some time after the fault's instant
    /// ([`FAILPOINT_WAIT_MIN`]), SIGKILL.
    FailPoint {
        /// The point.
        point: FailPoint,
        /// Hits let pass before the abort.
        hits: u32,
    },
}

/// One fault, placed over the expected run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Where in the expected run it strikes: 0 at the start, 1 at the end.
    pub at: f64,
    /// What it does.
    pub kind: FaultKind,
}

/// The faults of one crash run, in the order the runs meet them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSchedule {
    /// The faults, by increasing `at`; one worker run each.
    pub faults: Vec<Fault>,
    /// The probability that a delivery panics after the delegate ran, in every run but
    /// the last.
    pub panic_rate: f64,
}

impl FaultSchedule {
    /// A schedule of `kills` SIGKILLs and `aborts` fail-point aborts, their instants
    /// drawn uniformly from `seed`: kills over the whole expected run, fail points over
    /// its first [`FAILPOINT_SPAN`]. With `aim_at_delegate` most fail points are the one
    /// between the delegate and the commit.
    pub fn generate(
        seed: u64,
        kills: usize,
        aborts: usize,
        panic_rate: f64,
        aim_at_delegate: bool,
    ) -> FaultSchedule {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0C4A_5800_0000_0001);
        let mut faults: Vec<Fault> = (0..kills)
            .map(|_| Fault {
                at: rng.r#gen::<f64>(),
                kind: FaultKind::Kill,
            })
            .collect();
        for _ in 0..aborts {
            let at = rng.r#gen::<f64>() * FAILPOINT_SPAN;
            let kind = random_fail_point(&mut rng, aim_at_delegate);
            faults.push(Fault { at, kind });
        }
        faults.sort_by(|a, b| a.at.total_cmp(&b.at));
        FaultSchedule { faults, panic_rate }
    }

    /// The same faults, struck earlier: attempt 0 is the schedule itself; each later
    /// attempt halves every instant, and the last makes the first fault a kill right at
    /// the start, so a workload faster than its estimate still meets a fault.
    pub fn earlier(&self, attempt: u32, attempts_max: u32) -> FaultSchedule {
        let mut earlier = self.clone();
        let factor = 0.5_f64.powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        for fault in &mut earlier.faults {
            fault.at *= factor;
        }
        if attempt > 0
            && attempt + 1 >= attempts_max
            && let Some(first) = earlier.faults.first_mut()
        {
            // A kill lands whatever the workload does; an armed fail point may never be
            // reached by a small one.
            *first = Fault {
                at: 0.0,
                kind: FaultKind::Kill,
            };
        }
        earlier
    }

    /// How many faults are kills, and how many arm fail points.
    pub fn counts(&self) -> (usize, usize) {
        let aborts = self
            .faults
            .iter()
            .filter(|fault| matches!(fault.kind, FaultKind::FailPoint { .. }))
            .count();
        (self.faults.len() - aborts, aborts)
    }

    /// One line for a person: `12 faults (9 kills at 0.04, ..., 3 fail points), panics 2%`.
    pub fn describe(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|fault| match fault.kind {
                FaultKind::Kill => format!("kill@{:.2}", fault.at),
                FaultKind::FailPoint { point, hits } => {
                    format!("{}+{hits}@{:.2}", point.name(), fault.at)
                }
            })
            .collect();
        format!(
            "[{}], delegate panics {:.0}%",
            faults.join(", "),
            self.panic_rate * 100.0
        )
    }
}

/// A fail-point fault with a random point and hit count.
pub fn random_fail_point(rng: &mut StdRng, aim_at_delegate: bool) -> FaultKind {
    let point = if aim_at_delegate && rng.gen_bool(AT_LEAST_ONCE_AIM) {
        FailPoint::AfterDelegateBeforeCommit
    } else {
        FailPoint::ALL[rng.gen_range(0..FailPoint::ALL.len())]
    };
    FaultKind::FailPoint {
        point,
        hits: rng.gen_range(0..=point.hits_max()),
    }
}

/// Replaces fail points that stopped firing by ones that still have work.
#[derive(Debug, Default)]
pub struct FailPointChooser {
    /// Runs in a row each fail point was armed and did not fire.
    misses: [u32; FailPoint::ALL.len()],
}

impl FailPointChooser {
    /// The point to arm for a fault that asks for `wanted`: itself while it fires, else
    /// a live one (the store's points always have work: every run commits).
    pub fn choose(&self, rng: &mut StdRng, wanted: FailPoint) -> FailPoint {
        if self.live(wanted) {
            return wanted;
        }
        let live: Vec<FailPoint> = FailPoint::ALL
            .into_iter()
            .filter(|point| self.live(*point))
            .collect();
        let pool = if live.is_empty() {
            vec![FailPoint::StoreBeforeCommit, FailPoint::StoreAfterCommit]
        } else {
            live
        };
        pool[rng.gen_range(0..pool.len())]
    }

    fn live(&self, point: FailPoint) -> bool {
        self.misses[Self::index(point)] < FAILPOINT_MISSES_MAX
    }

    fn index(point: FailPoint) -> usize {
        FailPoint::ALL
            .iter()
            .position(|candidate| *candidate == point)
            .unwrap_or(0)
    }

    /// Records whether an armed point fired.
    pub fn record(&mut self, point: FailPoint, fired: bool) {
        let misses = &mut self.misses[Self::index(point)];
        *misses = if fired { 0 } else { *misses + 1 };
    }
}

/// The run's work clock and its estimate of the expected run.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// The expected run estimated from the plan, in seconds (scaled).
    plan_s: f64,
    /// What the plan's estimates are multiplied by: a measured run over the plan's
    /// estimate, when a run was measured; else 1.
    scale: f64,
    /// A fixed expected run (`--expected-run-s`), which replaces both estimates.
    fixed_s: Option<f64>,
    /// Seconds workers ran since they were ready, all runs.
    work_s: f64,
    /// Ledger entries committed, as the last worker reported.
    delivered: u64,
    /// The expected run left, as the last worker reported, in seconds.
    remaining_s: Option<f64>,
    /// Ledger entries a finished plan has (see [`Plan::expected_events`]).
    expected_events: u64,
    /// Seconds from a worker's start to its "ready", summed, and how many runs.
    startup_s: (f64, u32),
}

impl Pacer {
    /// A pacer for `plan`, or for a fixed expected run; with a measured fault-free run,
    /// the plan's estimates are scaled to it and its start-up is known from the start.
    pub fn new(plan: &Plan, fixed_s: Option<f64>, measured: Option<MeasuredRun>) -> Pacer {
        let estimated_s = plan.expected_run_s();
        let scale = match measured {
            Some(run) if run.work_s > 0.0 && estimated_s > 0.0 => run.work_s / estimated_s,
            _ => 1.0,
        };
        let startup_s = measured.map_or((0.0, 0), |run| (run.startup_s, 1));
        Pacer {
            plan_s: estimated_s * scale,
            scale,
            fixed_s,
            work_s: 0.0,
            delivered: 0,
            remaining_s: None,
            expected_events: plan.expected_events(),
            startup_s,
        }
    }

    /// The expected run in seconds: fixed, or the larger of two estimates. One is the
    /// work clock plus the run left as the worker last reported it from the plan and
    /// the store (the plan's estimate before any report): it follows paced downloads
    /// that lose their last bytes at each kill. The other extrapolates the work clock
    /// over the share of events delivered, for plans whose transfers the plan cannot
    /// estimate (someone else's server); events come faster at the start than at the
    /// end, so that one is a lower bound.
    pub fn expected_s(&self) -> f64 {
        if let Some(fixed) = self.fixed_s {
            return fixed;
        }
        let planned = self.work_s + self.remaining_s.unwrap_or(self.plan_s);
        let share = self.delivered as f64 / self.expected_events.max(1) as f64;
        let measured = if share >= PROGRESS_SHARE_MIN {
            self.work_s / share.min(1.0)
        } else {
            0.0
        };
        planned.max(measured)
    }

    /// The work clock, in seconds.
    pub fn work_s(&self) -> f64 {
        self.work_s
    }

    /// How long the next worker runs, from its start: its start-up, then the work
    /// left until the instant at `at`. Zero work left (the instant has passed) kills
    /// it during or right after its start-up.
    pub fn limit(&self, at: f64) -> Duration {
        let left_s = (at * self.expected_s() - self.work_s).max(0.0);
        Duration::from_secs_f64(self.startup_mean_s() + left_s)
    }

    fn startup_mean_s(&self) -> f64 {
        let (sum, runs) = self.startup_s;
        if runs == 0 {
            0.0
        } else {
            sum / f64::from(runs)
        }
    }

    /// Records a run: how long it took to be ready (if it got there), how long it ran
    /// after that, and the progress it last reported.
    pub fn record(
        &mut self,
        startup: Option<Duration>,
        work: Duration,
        progress: Option<Progress>,
    ) {
        if let Some(startup) = startup {
            self.startup_s.0 += startup.as_secs_f64();
            self.startup_s.1 += 1;
        }
        self.work_s += work.as_secs_f64();
        if let Some(progress) = progress {
            self.delivered = self.delivered.max(progress.delivered);
            self.remaining_s = Some(progress.remaining_s * self.scale);
        }
    }
}

/// A fault-free worker run that finished the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredRun {
    /// Seconds from its start to "ready".
    pub startup_s: f64,
    /// Seconds from "ready" to its end.
    pub work_s: f64,
}

/// What a worker last reported of its progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Ledger entries committed.
    pub delivered: u64,
    /// The expected run left, in seconds.
    pub remaining_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generated schedule has the asked-for kills and aborts, by increasing instant,
    /// spread over the run, and the same seed gives the same schedule.
    #[test]
    fn generated_schedules_spread_and_repeat() {
        let schedule = FaultSchedule::generate(7, 40, 10, 0.02, false);
        assert_eq!(schedule.counts(), (40, 10));
        assert!(
            schedule
                .faults
                .windows(2)
                .all(|pair| pair[0].at <= pair[1].at)
        );
        let late = schedule.faults.iter().filter(|f| f.at > 0.5).count();
        assert!((10..=40).contains(&late), "{}", schedule.describe());
        assert!(schedule.faults.iter().all(|fault| match fault.kind {
            FaultKind::Kill => (0.0..1.0).contains(&fault.at),
            FaultKind::FailPoint { .. } => (0.0..FAILPOINT_SPAN).contains(&fault.at),
        }));
        assert_eq!(schedule, FaultSchedule::generate(7, 40, 10, 0.02, false));
        assert_ne!(schedule, FaultSchedule::generate(8, 40, 10, 0.02, false));
    }

    /// The fail-point specs use the `fail` crate's syntax.
    #[test]
    fn fail_point_specs() {
        assert_eq!(
            FailPoint::InsideCompletion.spec(0),
            "actor-inside-completion=return(abort)"
        );
        assert_eq!(
            FailPoint::StoreBeforeCommit.spec(3),
            "store-before-commit=3*off->return(abort)"
        );
    }

    /// A plan of one download paced over 10 s: its expected run.
    fn paced_plan() -> Plan {
        use crate::testkit::{BatchWork, SessionWork, TaskWork, Workload};
        Workload::new(vec![SessionWork::new(
            "s",
            vec![BatchWork::new(vec![
                TaskWork::download("a", 100_000).with_fault("drip:100:10", 1000),
            ])],
        )])
        .plan(1, "http://127.0.0.1:1", 1, std::path::Path::new("/run"))
    }

    /// Kill instants are fractions of the whole expected run: at first the plan's
    /// estimate (a fault at 0.5 of a 10 s plan kills 5 s in), then the work done plus
    /// the run the worker reports left, plus the start-up measured; a measured
    /// fault-free run rescales the plan's estimates.
    #[test]
    fn the_pacer_spreads_kills_over_the_expected_run() {
        let plan = paced_plan();
        let estimated = plan.expected_run_s();
        assert!((10.0..10.2).contains(&estimated), "{estimated}");
        let mut pacer = Pacer::new(&plan, None, None);
        let first = pacer.limit(0.5).as_secs_f64();
        assert!((first - estimated / 2.0).abs() < 1e-6, "{first}");
        pacer.record(
            Some(Duration::from_millis(100)),
            Duration::from_secs(4),
            Some(Progress {
                delivered: 0,
                remaining_s: 8.0,
            }),
        );
        // Expected run 4 + 8 = 12 s: 0.5 of it is 6 s, 2 s after the 4 s done, plus
        // the 0.1 s start-up.
        assert!((pacer.expected_s() - 12.0).abs() < 1e-6);
        assert!((pacer.limit(0.5).as_secs_f64() - 2.1).abs() < 1e-6);
        // An instant already passed kills right after start-up.
        assert!((pacer.limit(0.2).as_secs_f64() - 0.1).abs() < 1e-6);
        let measured = Pacer::new(
            &plan,
            None,
            Some(MeasuredRun {
                startup_s: 0.2,
                work_s: estimated / 4.0,
            }),
        );
        assert!((measured.expected_s() - estimated / 4.0).abs() < 1e-6);
        assert!((measured.limit(0.0).as_secs_f64() - 0.2).abs() < 1e-6);
        let fixed = Pacer::new(&plan, Some(3.0), None);
        assert!((fixed.limit(1.0).as_secs_f64() - 3.0).abs() < 1e-6);
    }

    /// A point that missed twice in a row is replaced, and comes back once it fires.
    #[test]
    fn dead_fail_points_are_replaced() {
        let mut chooser = FailPointChooser::default();
        let mut rng = StdRng::seed_from_u64(1);
        chooser.record(FailPoint::InsideCompletion, false);
        assert_eq!(
            chooser.choose(&mut rng, FailPoint::InsideCompletion),
            FailPoint::InsideCompletion
        );
        chooser.record(FailPoint::InsideCompletion, false);
        assert_ne!(
            chooser.choose(&mut rng, FailPoint::InsideCompletion),
            FailPoint::InsideCompletion
        );
        chooser.record(FailPoint::InsideCompletion, true);
        assert_eq!(
            chooser.choose(&mut rng, FailPoint::InsideCompletion),
            FailPoint::InsideCompletion
        );
    }
}
