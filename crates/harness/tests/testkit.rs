//! The test kit used as a user would, in `cargo test`: a delegate that writes an order
//! per task result into an application table and a completion handler that marks the
//! batch done, crash-tested with short budgets. Each test is re-executed by the kit as
//! its own worker child (`<test> --exact`).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};
use session_actor::{
    AppTable, CompletionCall, DelegateError, Delivery, Event, TransactionalDelegate, WriteScope,
};
use session_harness::testkit::{
    AppContext, BatchWork, CheckResult, CheckView, CrashTest, Error, Expect, FailPoint, Fault,
    FaultKind, FaultSchedule, FaultShape, SessionWork, TaskWork, Workload, WorkloadShape,
};

const ORDERS: &str = "orders";
const BATCHES: &str = "batches";
const BATCH_DONE: &str = "batch-done";
const SIDE_FILE: &str = "orders.log";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    outcome: String,
    deliveries: u32,
}

fn orders() -> AppTable<Order> {
    AppTable::named(ORDERS).expect("a valid table name")
}

fn batches() -> AppTable<u32> {
    AppTable::named(BATCHES).expect("a valid table name")
}

/// Writes an order per task result; with a side file, also appends it there, outside
/// the transaction (the planted bug).
struct OrderDesk {
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
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(file, "{key}")?;
        }
        Ok(())
    }
}

fn batch_done(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let count = batches().get(scope, &call.payload)?.unwrap_or(0);
    batches().put(scope, &call.payload, &(count + 1))?;
    Ok(())
}

/// Every task has exactly one order with its outcome, every batch was marked done
/// once, and (with the side file) no order is counted twice there.
fn check(view: &CheckView<'_>, side_file: bool) -> CheckResult {
    let mut violations = Vec::new();
    let orders: BTreeMap<String, Order> = view
        .table::<Order>(ORDERS)?
        .into_iter()
        .map(|(key, order)| (String::from_utf8_lossy(&key).into_owned(), order))
        .collect();
    for (session, _, task) in view.workload().tasks() {
        let key = format!("{}/{}", session.id, task.id);
        match orders.get(&key) {
            None => violations.push(format!("order {key} is missing")),
            Some(order) if order.deliveries != 1 => {
                violations.push(format!(
                    "order {key} was recorded {} times",
                    order.deliveries
                ));
            }
            Some(order) if Some(order.outcome.as_str()) != view.outcome(&session.id, &task.id) => {
                violations.push(format!(
                    "order {key} has the wrong outcome {}",
                    order.outcome
                ));
            }
            Some(_) => {}
        }
    }
    if orders.len() != view.workload().tasks().count() {
        violations.push(format!(
            "{} orders for {} tasks",
            orders.len(),
            view.workload().tasks().count()
        ));
    }
    for session in &view.workload().sessions {
        for completion in session
            .batches
            .iter()
            .filter_map(|batch| batch.completion.as_ref())
        {
            let runs = batches().get(view.snapshot(), &completion.payload)?;
            if runs != Some(1) {
                violations.push(format!(
                    "batch {:?} marked done {runs:?} times",
                    String::from_utf8_lossy(&completion.payload)
                ));
            }
        }
    }
    if side_file {
        let text = std::fs::read_to_string(view.dir().join(SIDE_FILE)).unwrap_or_default();
        let mut counted: BTreeMap<&str, u32> = BTreeMap::new();
        for line in text.lines() {
            *counted.entry(line).or_default() += 1;
        }
        for (key, times) in counted.into_iter().filter(|(_, times)| *times > 1) {
            violations.push(format!(
                "duplicate: order {key} counted {times} times in {SIDE_FILE}"
            ));
        }
    }
    Ok(violations)
}

fn order_desk(side_file: bool) -> CrashTest {
    CrashTest::new()
        .app_table(ORDERS)
        .app_table(BATCHES)
        .completion(BATCH_DONE, batch_done)
        .delegate(move |app: &AppContext| OrderDesk {
            side_file: side_file.then(|| app.dir().join(SIDE_FILE)),
        })
        .check(move |view| check(view, side_file))
}

/// A small fixed workload: data tasks, a refused one, a download and an upload, over two
/// batches of one session, each storing the completion.
fn small_workload() -> Workload {
    Workload::new(vec![SessionWork::new(
        "desk",
        vec![
            BatchWork::new(vec![
                TaskWork::data("a", 100),
                TaskWork::data("b", 200),
                TaskWork::data("gone", 10)
                    .with_fault("status:404", 1000)
                    .expecting(Expect::Rejected),
                TaskWork::download("c", 20_000).with_fault("reset:5000", 1),
            ])
            .with_completion(BATCH_DONE, b"desk 1".to_vec()),
            BatchWork::new(vec![TaskWork::upload("d", 30_000), TaskWork::data("e", 50)])
                .with_completion(BATCH_DONE, b"desk 2".to_vec()),
        ],
    )])
}

/// The order desk keeps every order exactly once over generated workloads and fault
/// schedules (kills over the expected run, fail points, delegate panics): the kit's
/// verifier and the check both pass, and the kit reports each case.
#[test]
fn order_desk_survives_crashes() {
    let summary = order_desk(false)
        .workload_shape(WorkloadShape {
            sessions: 1..=2,
            tasks_per_batch: 1..=3,
            bytes_max: 64 * 1024,
            paced_ms_max: 300,
            ..WorkloadShape::default()
        })
        .fault_shape(FaultShape {
            kills: 2..=5,
            fail_points: 1..=2,
            ..FaultShape::default()
        })
        .cases(2)
        .try_run()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(summary.cases.len(), 2, "{summary:?}");
    assert!(
        summary
            .cases
            .iter()
            .all(|case| case.kills + case.aborts >= 1),
        "every case was faulted: {summary:?}"
    );
}

/// The planted bug (an order also appended to a side file outside the transaction) is
/// caught: an abort between the delegate and the commit repeats the delivery, the
/// table has the order once, the side file twice; the failure names the duplicate,
/// the seed and a command that repeats the case, and keeps the run directory, which
/// `session-harness verify --dir` and `inspect --dir` read.
#[test]
fn planted_side_effect_is_caught() {
    let after_delegate = |at| Fault {
        at,
        kind: FaultKind::FailPoint {
            point: FailPoint::AfterDelegateBeforeCommit,
            hits: 0,
        },
    };
    let schedule = FaultSchedule {
        faults: vec![
            after_delegate(0.1),
            after_delegate(0.3),
            after_delegate(0.5),
        ],
        panic_rate: 0.0,
    };
    let error = order_desk(true)
        .workload(small_workload())
        .faults(schedule)
        .cases(1)
        .shrink_runs_max(0)
        .try_run()
        .expect_err("the planted side effect is found");
    let Error::Failed(failure) = error else {
        panic!("expected a failed case, got {error}");
    };
    let message = failure.to_string();
    assert!(
        failure
            .check_violations
            .iter()
            .any(|violation| violation.starts_with("duplicate: order desk/")),
        "{message}"
    );
    assert!(failure.guarantee_violations.is_empty(), "{message}");
    assert!(
        message.contains(&format!("seed {}", failure.case.seed)),
        "{message}"
    );
    assert!(
        failure
            .repeat_seed
            .contains(&format!("BGSESSION_TESTKIT_SEED={}", failure.case.seed))
            && failure
                .repeat_seed
                .contains("planted_side_effect_is_caught --exact"),
        "{message}"
    );
    assert!(failure.dir.join("case.json").is_file(), "{message}");
    // The kept directory is a run directory: the harness re-checks the guarantees
    // (they hold: only the check failed) and lists it.
    for command in ["verify", "inspect"] {
        let output = Command::new(env!("CARGO_BIN_EXE_session-harness"))
            .arg(command)
            .arg("--dir")
            .arg(&failure.dir)
            .output()
            .expect("session-harness runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command}: {stdout}\n{message}");
        let expected = if command == "verify" {
            "verdict: PASS"
        } else {
            "session desk:"
        };
        assert!(stdout.contains(expected), "{command}: {stdout}");
    }
    let _ = std::fs::remove_dir_all(&failure.dir);
}

/// The project's verifier runs over the user's workload too: a task whose expected
/// outcome is wrong (a 404 expected to succeed) fails the case as an outcome mismatch
/// of bgsession's guarantees, not of the user's check.
#[test]
fn verifier_runs_over_the_workload() {
    let mut workload = small_workload();
    workload.sessions[0].batches[0].tasks[2].expect = Expect::Success;
    let error = order_desk(false)
        .workload(workload)
        .faults(FaultSchedule {
            faults: vec![Fault {
                at: 0.5,
                kind: FaultKind::Kill,
            }],
            panic_rate: 0.0,
        })
        .cases(1)
        .shrink_runs_max(0)
        .try_run()
        .expect_err("the wrong expectation is found");
    let Error::Failed(failure) = error else {
        panic!("expected a failed case, got {error}");
    };
    assert!(failure.check_violations.is_empty(), "{failure}");
    assert!(
        failure
            .guarantee_violations
            .iter()
            .any(|violation| violation.contains("task desk/gone ended rejected")),
        "{failure}"
    );
    let _ = std::fs::remove_dir_all(&failure.dir);
}

/// A failing case shrinks: a check that always fails, on a case of 2 sessions, 4
/// batches and 8 tasks, ends with the smallest workload the shape allows (one session,
/// one batch, one task; the schedule's shrinking is shown by the strategy's own unit
/// test).
#[test]
fn failing_cases_shrink() {
    let error = CrashTest::new()
        .check(|_| Ok(vec!["always fails".to_owned()]))
        .workload_shape(WorkloadShape {
            sessions: 1..=2,
            batches: 1..=2,
            tasks_per_batch: 1..=3,
            bytes_max: 4096,
            ..WorkloadShape::default()
        })
        .faults(FaultSchedule {
            faults: vec![Fault {
                at: 0.5,
                kind: FaultKind::Kill,
            }],
            panic_rate: 0.0,
        })
        // Seed 1's case has 2 sessions, 4 batches and 8 tasks.
        .seeds([1])
        .cases(0)
        .shrink_runs_max(16)
        .try_run()
        .expect_err("the check always fails");
    let Error::Failed(failure) = error else {
        panic!("expected a failed case, got {error}");
    };
    let workload = &failure.case.workload;
    assert_eq!(workload.sessions.len(), 1, "{failure}");
    assert_eq!(workload.sessions[0].batches.len(), 1, "{failure}");
    assert_eq!(workload.tasks().count(), 1, "{failure}");
    assert!(failure.original.is_some(), "{failure}");
    let _ = std::fs::remove_dir_all(&failure.dir);
}

/// A workload against a server of your own (here the harness origin, started by the
/// test, reached by URL): downloads with your checksums and data tasks run through the
/// same crash loop and checks; a checksum that is not the server's bytes is caught by
/// the verifier as a bad file.
#[test]
fn workloads_against_your_own_urls() {
    use session_harness::origin::{Origin, OriginConfig, sha256};
    use session_harness::testkit::Transfer;

    let server = Origin::start_in_thread(OriginConfig { seed: 42, port: 0 })
        .expect("the origin starts on 127.0.0.1");
    let workload = |checksum: String| {
        Workload::new(vec![SessionWork::new(
            "yours",
            vec![
                BatchWork::new(vec![
                    TaskWork::new(
                        "file",
                        Transfer::DownloadUrl {
                            url: server.url("/objects/file?size=60000&fault=reset%3A9000&times=1"),
                            sha256: Some(checksum),
                        },
                        Expect::Success,
                    ),
                    TaskWork::new(
                        "ping",
                        Transfer::DataUrl {
                            url: server.url("/objects/ping?size=16"),
                        },
                        Expect::Success,
                    ),
                ])
                .with_completion(BATCH_DONE, b"yours 1".to_vec()),
            ],
        )])
    };
    let one_kill = FaultSchedule {
        faults: vec![Fault {
            at: 0.5,
            kind: FaultKind::Kill,
        }],
        panic_rate: 0.0,
    };
    order_desk(false)
        .workload(workload(sha256(42, "file", 60_000)))
        .faults(one_kill.clone())
        .cases(1)
        .try_run()
        .unwrap_or_else(|error| panic!("{error}"));

    let error = order_desk(false)
        .workload(workload("0".repeat(64)))
        .faults(one_kill)
        .cases(1)
        .shrink_runs_max(0)
        .try_run()
        .expect_err("a checksum that is not the server's bytes is caught");
    let Error::Failed(failure) = error else {
        panic!("expected a failed case, got {error}");
    };
    assert!(
        failure
            .guarantee_violations
            .iter()
            .any(|violation| violation.contains("the file of task file")),
        "{failure}"
    );
    let _ = std::fs::remove_dir_all(&failure.dir);
}

/// Orders kept in the application's own PostgreSQL table, written through the batch's SQL
/// transaction (`WriteScope::postgres`), with the records in PostgreSQL too.
struct SqlDesk {
    schema: Option<String>,
    /// The planted bug: task `b`'s row is written twice.
    duplicate: bool,
}

impl TransactionalDelegate for SqlDesk {
    fn deliver(
        &self,
        delivery: &Delivery,
        scope: &mut WriteScope<'_>,
    ) -> Result<(), DelegateError> {
        let Event::TaskCompleted { task, outcome, .. } = &delivery.event else {
            return Ok(());
        };
        let schema = self
            .schema
            .as_deref()
            .ok_or_else(|| DelegateError::new("no SQL schema: the test runs on PostgreSQL"))?;
        let key = format!("{}/{task}", delivery.key.session);
        let mut sql = scope.postgres()?;
        sql.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.orders (key text NOT NULL, outcome text NOT NULL)"
        ))?;
        let times = if self.duplicate && task.as_str() == "b" {
            2
        } else {
            1
        };
        for _ in 0..times {
            sql.execute(
                &format!("INSERT INTO {schema}.orders (key, outcome) VALUES ($1, $2)"),
                &[&key, &outcome.name()],
            )?;
        }
        Ok(())
    }
}

/// Every task has exactly one row, with its outcome.
fn sql_check(view: &CheckView<'_>) -> CheckResult {
    let schema = view.sql_schema().ok_or("no SQL schema")?;
    let mut rows: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for row in view.snapshot().query(
        &format!("SELECT key, min(outcome), count(*) FROM {schema}.orders GROUP BY key"),
        &[],
    )? {
        rows.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
    }
    let mut violations = Vec::new();
    for (session, _, task) in view.workload().tasks() {
        let key = format!("{}/{}", session.id, task.id);
        match rows.remove(&key) {
            None => violations.push(format!("row {key} is missing")),
            Some((_, count)) if count != 1 => {
                violations.push(format!("row {key} was written {count} times"));
            }
            Some((outcome, _)) if Some(outcome.as_str()) != view.outcome(&session.id, &task.id) => {
                violations.push(format!("row {key} has the wrong outcome {outcome}"));
            }
            Some(_) => {}
        }
    }
    violations.extend(
        rows.keys()
            .map(|key| format!("row {key} was never asked for")),
    );
    Ok(violations)
}

/// The test kit on PostgreSQL: the records in the case's schema, the delegate's rows in
/// the application's, written in the batch's SQL transaction; kills and fail points leave
/// every row once. The same desk with a row written twice fails, naming the row.
#[test]
fn sql_desk_on_postgres_survives_crashes_and_a_planted_duplicate_is_caught() {
    let worker = std::env::var_os(session_harness::testkit::WORKER_ENV).is_some();
    let test = "sql_desk_on_postgres_survives_crashes_and_a_planted_duplicate_is_caught";
    // A worker child reads its store from the case's directory; only the parent starts
    // the cluster.
    let cluster = if worker {
        None
    } else {
        match session_harness::postgres::postgres_or_skip(test) {
            Some(cluster) => Some(cluster),
            None => return,
        }
    };
    let url = cluster
        .as_ref()
        .map(|cluster| cluster.url())
        .unwrap_or_default();
    let duplicate = std::env::var_os("BGSESSION_TESTKIT_SQL_DUPLICATE").is_some();
    let desk = |duplicate: bool| {
        CrashTest::new()
            .test_name(test)
            .postgres(url.clone())
            .delegate(move |app: &AppContext| SqlDesk {
                schema: app.sql_schema().map(str::to_owned),
                duplicate,
            })
            .check(sql_check)
            .workload(Workload::new(vec![SessionWork::new(
                "desk",
                vec![BatchWork::new(vec![
                    TaskWork::data("a", 100),
                    TaskWork::data("b", 200),
                    TaskWork::download("c", 20_000).with_fault("reset:5000", 1),
                ])],
            )]))
            .faults(FaultSchedule {
                faults: vec![
                    Fault {
                        at: 0.2,
                        kind: FaultKind::FailPoint {
                            point: FailPoint::AfterDelegateBeforeCommit,
                            hits: 0,
                        },
                    },
                    Fault {
                        at: 0.5,
                        kind: FaultKind::Kill,
                    },
                ],
                panic_rate: 0.0,
            })
            .cases(0)
            .seeds([7])
            .shrink_runs_max(0)
    };
    if worker {
        // The worker of whichever run started it: the same desk as its parent.
        desk(duplicate).run();
        return;
    }
    let summary = desk(false)
        .try_run()
        .unwrap_or_else(|error| panic!("the desk on PostgreSQL: {error}"));
    assert!(
        !summary.cases.is_empty()
            && summary
                .cases
                .iter()
                .all(|case| case.kills + case.aborts >= 1),
        "every case was faulted: {summary:?}"
    );
    // SAFETY: set before the kit starts this run's worker children, which inherit it;
    // the test's own threads do not read the environment meanwhile.
    unsafe { std::env::set_var("BGSESSION_TESTKIT_SQL_DUPLICATE", "1") };
    let failed = desk(true).try_run();
    unsafe { std::env::remove_var("BGSESSION_TESTKIT_SQL_DUPLICATE") };
    let Err(Error::Failed(failure)) = failed else {
        panic!("the planted duplicate must fail the case: {failed:?}");
    };
    assert!(
        failure
            .to_string()
            .contains("row desk/b was written 2 times"),
        "{failure}"
    );
    drop(cluster);
}
