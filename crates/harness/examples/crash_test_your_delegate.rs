//! Crash-test your own delegate: an order desk whose delegate turns every task result
//! into an order row, and whose completion handler marks each batch done, run through
//! SIGKILLs, fail-point aborts and delegate panics by `session_harness::testkit`; the
//! check says every task has exactly one order, with its outcome, and every batch was
//! marked done once.
//!
//! ```sh
//! cargo run --release -p session-harness --example crash_test_your_delegate
//! cargo run --release -p session-harness --example crash_test_your_delegate -- --planted-bug
//! ```
//!
//! The first passes (exit 0). With `--planted-bug` the delegate also appends each order
//! to a side file, outside the delivery's transaction, and the check compares the two:
//! a delivery cut short after the delegate ran (a kill, a fail point, a panic) comes
//! again, the table still has the order once, the side file has it twice. The example
//! exits 1 naming the duplicate, the seed and the command that repeat it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use session_actor::{
    AppTable, CompletionCall, DelegateError, Delivery, Event, TransactionalDelegate, WriteScope,
};
use session_harness::testkit::{
    AppContext, CheckResult, CheckView, CrashTest, Error, FaultShape, WorkloadShape,
};

/// One row per task result, keyed by `session/task`.
const ORDERS: &str = "orders";
/// One row per batch whose completion ran, keyed by its payload.
const BATCHES: &str = "batches";
/// The completion handler every batch stores.
const BATCH_DONE: &str = "batch-done";
/// The planted bug's side file, in the application's directory.
const SIDE_FILE: &str = "orders.log";

/// An order: what the delegate recorded for one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    outcome: String,
    /// How many deliveries wrote this row: 1, always, since the row commits with the
    /// delivery.
    deliveries: u32,
}

fn orders() -> AppTable<Order> {
    AppTable::named(ORDERS).expect("a valid table name")
}

fn batches() -> AppTable<u32> {
    AppTable::named(BATCHES).expect("a valid table name")
}

/// The application's delegate.
struct OrderDesk {
    /// With the planted bug: the side file each order is also appended to.
    side_file: Option<PathBuf>,
}

impl TransactionalDelegate for OrderDesk {
    fn deliver(
        &self,
        delivery: &Delivery,
        scope: &mut WriteScope<'_>,
    ) -> Result<(), DelegateError> {
        let Event::TaskCompleted { task, outcome, .. } = &delivery.event else {
            return Ok(());
        };
        let key = format!("{}/{task}", delivery.key.session);
        let deliveries = orders()
            .get(scope, &key)?
            .map_or(0, |order| order.deliveries)
            + 1;
        let order = Order {
            outcome: outcome.name().to_owned(),
            deliveries,
        };
        orders().put(scope, &key, &order)?;
        if let Some(path) = &self.side_file {
            // The planted bug: an effect outside the transaction, repeated whenever the
            // delivery is.
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(file, "{key}")?;
        }
        Ok(())
    }
}

/// The completion handler: marks the batch done, in the transaction that records it ran.
fn batch_done(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let count = batches().get(scope, &call.payload)?.unwrap_or(0);
    batches().put(scope, &call.payload, &(count + 1))?;
    Ok(())
}

/// The invariants of the application's tables (and of the side file, when planted).
fn check(view: &CheckView<'_>, planted: bool) -> CheckResult {
    let mut violations = Vec::new();
    let orders: BTreeMap<String, Order> = view
        .table::<Order>(ORDERS)?
        .into_iter()
        .map(|(key, order)| (String::from_utf8_lossy(&key).into_owned(), order))
        .collect();
    let mut expected = BTreeMap::new();
    for (session, _, task) in view.workload().tasks() {
        let key = format!("{}/{}", session.id, task.id);
        match (orders.get(&key), view.outcome(&session.id, &task.id)) {
            (None, _) => violations.push(format!("order {key} is missing")),
            (Some(order), _) if order.deliveries != 1 => violations.push(format!(
                "order {key} was recorded {} times",
                order.deliveries
            )),
            (Some(order), outcome) if Some(order.outcome.as_str()) != outcome => {
                violations.push(format!(
                    "order {key} says {}, the task ended {outcome:?}",
                    order.outcome
                ))
            }
            (Some(_), _) => {}
        }
        expected.insert(key, ());
    }
    for key in orders.keys().filter(|key| !expected.contains_key(*key)) {
        violations.push(format!("order {key} has no task"));
    }
    for session in &view.workload().sessions {
        for batch in &session.batches {
            let Some(completion) = &batch.completion else {
                continue;
            };
            let runs = batches().get(view.snapshot(), &completion.payload)?;
            if runs != Some(1) {
                violations.push(format!(
                    "batch {:?} was marked done {} times",
                    String::from_utf8_lossy(&completion.payload),
                    runs.unwrap_or(0)
                ));
            }
        }
    }
    if planted {
        let text = std::fs::read_to_string(view.dir().join(SIDE_FILE)).unwrap_or_default();
        let mut counted: BTreeMap<&str, u32> = BTreeMap::new();
        for line in text.lines() {
            *counted.entry(line).or_default() += 1;
        }
        for (key, times) in counted.into_iter().filter(|(_, times)| *times != 1) {
            violations.push(format!(
                "duplicate: order {key} is counted {times} times in {SIDE_FILE} (outside the transaction); the orders table has it once"
            ));
        }
    }
    Ok(violations)
}

fn main() -> ExitCode {
    let planted = std::env::args().skip(1).any(|arg| arg == "--planted-bug");
    let test = CrashTest::new()
        .app_table(ORDERS)
        .app_table(BATCHES)
        .completion(BATCH_DONE, batch_done)
        .delegate(move |app: &AppContext| OrderDesk {
            side_file: planted.then(|| app.dir().join(SIDE_FILE)),
        })
        .check(move |view| check(view, planted))
        .workload_shape(WorkloadShape {
            sessions: 2..=3,
            tasks_per_batch: 2..=5,
            ..WorkloadShape::default()
        })
        .fault_shape(FaultShape {
            kills: 8..=16,
            fail_points: 2..=5,
            panic_rates: vec![0.05, 0.1],
            ..FaultShape::default()
        })
        .cases(2)
        .shrink_runs_max(6);
    match test.try_run() {
        Ok(summary) => {
            for case in &summary.cases {
                println!(
                    "case seed {}: pass: {} kills, {} aborts, {} panics, {:.0}% of events under faults",
                    case.seed,
                    case.kills,
                    case.aborts,
                    case.panics,
                    case.events_under_faults_share * 100.0
                );
            }
            println!("every order present exactly once, every batch marked done once");
            ExitCode::SUCCESS
        }
        Err(Error::Failed(failure)) => {
            println!("{failure}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}
