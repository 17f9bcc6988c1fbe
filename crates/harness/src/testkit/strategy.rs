//! proptest strategies for workloads and fault schedules. A failing case shrinks toward
//! fewer sessions, batches, tasks and faults, smaller objects, no origin faults, earlier
//! kills, fewer hits before a fail point, and no delegate panics.

use std::ops::RangeInclusive;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::workload::{BatchWork, OriginFault, SessionWork, TaskWork, Transfer, Workload};
use crate::crash::plan::Expect;
use crate::crash::schedule::{FAILPOINT_SPAN, FailPoint, Fault, FaultKind, FaultSchedule};

/// The interval between the pieces of a paced download, in milliseconds.
const PACE_INTERVAL_MS: u64 = 10;
/// A fault program with this many `times` applies to every request.
const EVERY_REQUEST: u32 = 1000;

/// The shape of generated workloads.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadShape {
    /// Sessions per workload.
    pub sessions: RangeInclusive<usize>,
    /// Batches per session (each one generation).
    pub batches: RangeInclusive<usize>,
    /// Tasks per batch.
    pub tasks_per_batch: RangeInclusive<usize>,
    /// The largest object, in bytes.
    pub bytes_max: u64,
    /// How long a paced (dripped) download takes uninterrupted at most, in
    /// milliseconds: paced downloads make a run last long enough to be killed mid-way.
    pub paced_ms_max: u64,
    /// The completion handlers a batch may store (one is drawn, or none); empty means
    /// those the crash test registers.
    pub completions: Vec<String>,
    /// The share of batches that store a completion, when there are handlers.
    pub completion_share: f64,
}

impl Default for WorkloadShape {
    /// Small: 1 to 3 sessions of 1 or 2 batches of 1 to 4 tasks up to 256 KiB, paced
    /// downloads up to 600 ms; every batch stores a completion.
    fn default() -> Self {
        WorkloadShape {
            sessions: 1..=3,
            batches: 1..=2,
            tasks_per_batch: 1..=4,
            bytes_max: 256 * 1024,
            paced_ms_max: 600,
            completions: Vec::new(),
            completion_share: 1.0,
        }
    }
}

/// The shape of generated fault schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultShape {
    /// SIGKILLs per run.
    pub kills: RangeInclusive<usize>,
    /// Fail-point faults per run.
    pub fail_points: RangeInclusive<usize>,
    /// The fail points to draw from.
    pub points: Vec<FailPoint>,
    /// The delegate panic rates to draw from (the first is what a case shrinks to).
    pub panic_rates: Vec<f64>,
}

impl Default for FaultShape {
    /// 2 to 8 kills, 0 to 3 fail points (any of them), delegate panics at 0 or 5%.
    fn default() -> Self {
        FaultShape {
            kills: 2..=8,
            fail_points: 0..=3,
            points: FailPoint::ALL.to_vec(),
            panic_rates: vec![0.0, 0.05],
        }
    }
}

/// Workloads of this shape against the built-in origin: downloads (some with resets,
/// 503s, a 404, or paced), uploads (some reset or refused) and data tasks, with the
/// outcome each fault program leads to.
pub fn workloads(shape: &WorkloadShape) -> BoxedStrategy<Workload> {
    let task = task_strategy(shape.bytes_max, shape.paced_ms_max);
    let batch = (
        vec(task, shape.tasks_per_batch.clone()),
        any::<Index>(),
        0.0..1.0f64,
    );
    let session = vec(batch, shape.batches.clone());
    let names = shape.completions.clone();
    let share = shape.completion_share;
    vec(session, shape.sessions.clone())
        .prop_map(move |sessions| {
            let sessions = sessions
                .into_iter()
                .enumerate()
                .map(|(s, batches)| {
                    let id = format!("s{s}");
                    let mut next_task = 0;
                    let batches = batches
                        .into_iter()
                        .enumerate()
                        .map(|(b, (tasks, name, draw))| {
                            let tasks = tasks
                                .into_iter()
                                .map(|(transfer, expect)| {
                                    next_task += 1;
                                    TaskWork::new(format!("t{}", next_task - 1), transfer, expect)
                                })
                                .collect();
                            let mut batch = BatchWork::new(tasks);
                            if !names.is_empty() && draw < share {
                                let name = &names[name.index(names.len())];
                                batch = batch.with_completion(
                                    name.clone(),
                                    format!("{id} batch {}", b + 1).into_bytes(),
                                );
                            }
                            batch
                        })
                        .collect();
                    SessionWork::new(id, batches)
                })
                .collect();
            Workload::new(sessions)
        })
        .boxed()
}

/// One task's transfer and expected outcome. The fault choice shrinks toward 0: none.
fn task_strategy(bytes_max: u64, paced_ms_max: u64) -> BoxedStrategy<(Transfer, Expect)> {
    let download = (0..=bytes_max, 0u8..10, 1u32..=2).prop_map(move |(bytes, choice, times)| {
        let (fault, expect) = match choice {
            0..=3 => (None, Expect::Success),
            4 => (
                Some(fault(format!("reset:{}", bytes / 2), times)),
                Expect::Success,
            ),
            5 => (Some(fault("status:503".into(), times)), Expect::Success),
            6 => (
                Some(fault("status:404".into(), EVERY_REQUEST)),
                Expect::Rejected,
            ),
            _ => (Some(paced(bytes, paced_ms_max)), Expect::Success),
        };
        (Transfer::Download { bytes, fault }, expect)
    });
    let upload = (0..=bytes_max, 0u8..6, 1u32..=2).prop_map(|(bytes, choice, times)| {
        let (fault, expect) = match choice {
            0..=2 => (None, Expect::Success),
            3 => (
                Some(fault(format!("reset:{}", bytes / 2), times)),
                Expect::Success,
            ),
            4 => (Some(fault("status:503".into(), times)), Expect::Success),
            _ => (
                Some(fault("status:404".into(), EVERY_REQUEST)),
                Expect::Rejected,
            ),
        };
        (Transfer::Upload { bytes, fault }, expect)
    });
    let data = (0u64..4096, 0u8..5).prop_map(|(bytes, choice)| {
        let (fault, expect) = match choice {
            0..=2 => (None, Expect::Success),
            3 => (Some(fault("status:503".into(), 1)), Expect::Success),
            _ => (
                Some(fault("status:410".into(), EVERY_REQUEST)),
                Expect::Rejected,
            ),
        };
        (Transfer::Data { bytes, fault }, expect)
    });
    prop_oneof![6 => download, 2 => upload, 2 => data].boxed()
}

fn fault(program: String, times: u32) -> OriginFault {
    OriginFault { program, times }
}

/// A drip of every request that spreads `bytes` over about `paced_ms`.
fn paced(bytes: u64, paced_ms: u64) -> OriginFault {
    let pieces = (paced_ms / PACE_INTERVAL_MS).max(1);
    let piece = bytes.div_ceil(pieces).max(1);
    fault(format!("drip:{piece}:{PACE_INTERVAL_MS}"), EVERY_REQUEST)
}

/// Fault schedules of this shape: kills anywhere over the expected run, fail points
/// over its first [`FAILPOINT_SPAN`], by increasing instant.
pub fn fault_schedules(shape: &FaultShape) -> BoxedStrategy<FaultSchedule> {
    let points = if shape.points.is_empty() {
        FailPoint::ALL.to_vec()
    } else {
        shape.points.clone()
    };
    let rates = if shape.panic_rates.is_empty() {
        vec![0.0]
    } else {
        shape.panic_rates.clone()
    };
    let kills = vec(0.0..1.0f64, shape.kills.clone());
    let fail_points = vec(
        (0.0..FAILPOINT_SPAN, select(points), 0u32..=12),
        shape.fail_points.clone(),
    );
    (kills, fail_points, select(rates))
        .prop_map(|(kills, fail_points, panic_rate)| {
            let mut faults: Vec<Fault> = kills
                .into_iter()
                .map(|at| Fault {
                    at,
                    kind: FaultKind::Kill,
                })
                .collect();
            faults.extend(fail_points.into_iter().map(|(at, point, hits)| Fault {
                at,
                kind: FaultKind::FailPoint {
                    point,
                    hits: hits.min(point.hits_max()),
                },
            }));
            faults.sort_by(|a, b| a.at.total_cmp(&b.at));
            FaultSchedule { faults, panic_rate }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    /// Generated workloads are valid for the handlers they name, and generated
    /// schedules stay in their shape, by increasing instant.
    #[test]
    fn generated_cases_are_valid() {
        let names = vec!["done".to_owned()];
        let shape = WorkloadShape {
            completions: names.clone(),
            ..WorkloadShape::default()
        };
        let mut runner = TestRunner::deterministic();
        for _ in 0..64 {
            let workload = workloads(&shape)
                .new_tree(&mut runner)
                .expect("a workload")
                .current();
            workload.validate(&names).expect("a valid workload");
            let schedule = fault_schedules(&FaultShape::default())
                .new_tree(&mut runner)
                .expect("a schedule")
                .current();
            let (kills, aborts) = schedule.counts();
            assert!(
                (2..=8).contains(&kills) && aborts <= 3,
                "{}",
                schedule.describe()
            );
            assert!(
                schedule
                    .faults
                    .windows(2)
                    .all(|pair| pair[0].at <= pair[1].at)
            );
        }
    }

    /// A schedule shrinks to the fewest faults with no panics.
    #[test]
    fn schedules_shrink_small() {
        let mut runner = TestRunner::deterministic();
        let mut tree = fault_schedules(&FaultShape::default())
            .new_tree(&mut runner)
            .expect("a schedule");
        while tree.simplify() {}
        let smallest = tree.current();
        assert_eq!(smallest.counts(), (2, 0), "{}", smallest.describe());
        assert!(smallest.panic_rate.abs() < f64::EPSILON);
    }
}
