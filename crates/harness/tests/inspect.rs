//! `session-harness inspect` of the built binary on any application's root: a library
//! root whose owner (this test process) keeps the store open and writes between runs, a
//! harness run directory (the previous release's crash run, its plan given one session
//! more), and directories it must refuse, in text and as JSON, with and without `--check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use session_store::{
    DeadLetterRecord, DeliveryFailure, EventBody, EventRecord, Failure, FailureReason, Outcome,
    ResponseSummary, SessionConfig, SessionId, SessionRecord, SessionState, Store, StoreOptions,
    TaskId, TaskKind, TaskRecord, TaskState, TaskWait, WaitReason,
};

fn inspect(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_session-harness"))
        .arg("inspect")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("the session-harness binary runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(output: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn session_id(value: &str) -> SessionId {
    SessionId::new(value).expect("valid session id")
}

fn task_id(value: &str) -> TaskId {
    TaskId::new(value).expect("valid task id")
}

fn task(session: &str, id: &str, state: TaskState, wait: Option<TaskWait>) -> TaskRecord {
    TaskRecord {
        session: session_id(session),
        id: task_id(id),
        generation: 1,
        kind: TaskKind::Download,
        request: b"GET /x".to_vec(),
        created_ms: 1_700_000_000_000,
        state,
        wait,
        incarnation: 0,
    }
}

fn completed(outcome: Outcome, event_seq: u64) -> TaskState {
    TaskState::Completed {
        outcome,
        event_seq,
        finished_ms: 1_700_000_000_500,
    }
}

fn event(session: &str, seq: u64, body: EventBody) -> EventRecord {
    EventRecord {
        session: session_id(session),
        seq,
        generation: 1,
        body,
    }
}

/// A running session with a task of every state, one waiting for connectivity, two
/// undelivered events the delegate keeps refusing, and one dead-lettered event; and an
/// idle session.
fn write_busy_store(store: &Store) {
    store
        .write(|scope| {
            let mut busy = SessionRecord::new(
                session_id("s-busy"),
                SessionConfig::default(),
                1_700_000_000_000,
            );
            busy.generation = 1;
            busy.state = SessionState::Running;
            busy.tasks_open = 2;
            busy.tasks_running = 1;
            busy.next_event_seq = 5;
            busy.delivered_seq = 3;
            busy.dead_letters = 1;
            busy.delivery_failure = Some(DeliveryFailure {
                seq: 3,
                attempts: 4,
                since_ms: 1_700_000_001_000,
                next_attempt_ms: 1_700_000_009_000,
                last_error: "the delegate said no".into(),
            });
            scope.put_session(&busy)?;
            let wait = TaskWait {
                reason: WaitReason::Connectivity,
                since_ms: 1_700_000_002_000,
                tries: 3,
                message: "connection refused".into(),
            };
            let pending = TaskState::Pending {
                attempt: 0,
                not_before_ms: 0,
            };
            scope.put_task(&task("s-busy", "t-wait", pending, Some(wait)))?;
            scope.put_task(&task(
                "s-busy",
                "t-run",
                TaskState::Running { attempt: 1 },
                None,
            ))?;
            let response = ResponseSummary {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
                file: Some("t-ok".into()),
                bytes: 3,
            };
            scope.put_task(&task(
                "s-busy",
                "t-ok",
                completed(Outcome::Success(response), 3),
                None,
            ))?;
            let failure = Failure {
                reason: FailureReason::RetryExhausted,
                message: "503".into(),
                attempts: 8,
            };
            scope.put_task(&task(
                "s-busy",
                "t-bad",
                completed(Outcome::Failed(failure), 4),
                None,
            ))?;
            for seq in [3, 4] {
                let body = EventBody::TaskCompleted {
                    task: task_id(if seq == 3 { "t-ok" } else { "t-bad" }),
                    kind: TaskKind::Download,
                    outcome: Outcome::Cancelled,
                };
                scope.put_event(&event("s-busy", seq, body))?;
            }
            scope.put_dead_letter(&DeadLetterRecord {
                event: event("s-busy", 1, EventBody::DidFinishEvents),
                attempts: 5,
                last_error: "poison".into(),
                moved_ms: 1_700_000_000_900,
            })?;
            let idle = SessionRecord::new(
                session_id("s-idle"),
                SessionConfig::default(),
                1_700_000_000_000,
            );
            scope.put_session(&idle)
        })
        .expect("write the records");
}

/// On a library root whose store this process holds open (its owner, writing between
/// runs), `inspect` lists every session with its state, tasks by state and outcome,
/// pending events, the failing delivery, the wait, the dead letter and the store's size,
/// in text and as one JSON object; it sees a commit made after its first run; `--check`
/// says the owner runs and exits 2; once the owner closed, `--check` passes and lists.
#[test]
fn inspect_reads_a_library_root_while_its_owner_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = Store::open(&root, StoreOptions::default()).expect("the owner opens");
    write_busy_store(&store);

    let output = inspect(&root, &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for expected in [
        "(library root",
        "session s-busy: running, generation 1, tasks 1 pending, 1 running, 2 completed \
         (1 success, 0 rejected, 1 failed, 0 cancelled); 2 undelivered events from 3; 1 dead letters",
        "  delivery failing: event 3, 4 attempts since 1700000001000 ms, next at 1700000009000 ms: the delegate said no",
        "  task t-wait waits for connectivity since 1700000002000 ms (3 tries): connection refused",
        "  undelivered event 4 (generation 1): task t-bad cancelled",
        "  dead letter: event 1 (did finish events), 5 attempts, moved at 1700000000900 ms: poison",
        "session s-idle: finished, generation 0, tasks 0 pending",
        "2 sessions, 4 tasks (1 pending, 1 running, 2 completed), 2 undelivered events, 1 dead letters, \
         1 failing deliveries, 1 waiting tasks",
        "  table dead_letters: 1 entries",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let listing = json(&inspect(&root, &["--json"]));
    assert_eq!(listing["kind"], "library", "{listing:#}");
    let busy = &listing["sessions"][0];
    assert_eq!(busy["id"], "s-busy");
    assert_eq!(busy["state"], "running");
    assert_eq!(busy["tasks"]["pending"], 1);
    assert_eq!(busy["tasks"]["running"], 1);
    assert_eq!(busy["tasks"]["completed"]["success"], 1);
    assert_eq!(busy["tasks"]["completed"]["failed"], 1);
    assert_eq!(busy["events_pending"], 2);
    assert_eq!(busy["first_pending_seq"], 3);
    assert_eq!(busy["dead_letters"], 1);
    assert_eq!(busy["dead_letters_listed"][0]["last_error"], "poison");
    assert_eq!(busy["delivery_failure"]["attempts"], 4);
    assert_eq!(busy["waits"], 1);
    assert_eq!(busy["waits_listed"][0]["reason"], "connectivity");
    assert!(busy.get("harness").is_none(), "{busy:#}");
    assert_eq!(listing["sessions"][1]["id"], "s-idle");
    assert_eq!(listing["totals"]["sessions"], 2);
    assert_eq!(listing["totals"]["failing_deliveries"], 1);
    assert!(
        listing["store"]["data_bytes"].as_u64().unwrap_or(0) > 0,
        "{listing:#}"
    );
    assert!(
        listing["store"]["pages_in_use"].as_u64().unwrap_or(0) > 0,
        "{listing:#}"
    );
    assert!(listing["identity"].is_string(), "{listing:#}");

    store
        .write(|scope| {
            let later = SessionRecord::new(session_id("s-later"), SessionConfig::default(), 1);
            scope.put_session(&later)
        })
        .expect("a later commit");
    let listing = json(&inspect(&root, &["--json"]));
    assert_eq!(listing["totals"]["sessions"], 3, "the later commit is seen");

    let checked = inspect(&root, &["--check"]);
    let (stdout, stderr) = text(&checked);
    assert_eq!(checked.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("open in a running process"), "{stderr}");
    assert!(stdout.is_empty(), "nothing listed: {stdout}");

    store.close().expect("the owner closes");
    let checked = inspect(&root, &["--check"]);
    let (stdout, stderr) = text(&checked);
    assert_eq!(checked.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("store check: ok"), "{stdout}");
    assert!(stdout.contains("1 dead letters"), "{stdout}");
    assert!(stdout.contains("session s-later: finished"), "{stdout}");
    let listing = json(&inspect(&root, &["--check", "--json"]));
    assert_eq!(listing["check"]["dead_letters"], 1, "{listing:#}");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/crash-run-v1")
        .join(name)
}

/// On a harness run directory (the previous release's crash run, with one session more
/// in its plan than it ever created), while this process holds its store open as a
/// worker would, `inspect` keeps the plan-aware details: every task, the ledger's
/// entries and completions per session and in all, and the planned session never
/// created, in text and JSON.
#[test]
fn inspect_reads_a_harness_run_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("store")).expect("mkdir");
    std::fs::copy(fixture("data.mdb"), run.join("store/data.mdb")).expect("copy the store");
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("plan.json")).expect("plan"))
            .expect("the fixture's plan is JSON");
    let sessions = plan["sessions"].as_array_mut().expect("planned sessions");
    let mut extra = sessions[0].clone();
    extra["id"] = "s999".into();
    sessions.push(extra);
    std::fs::write(run.join("plan.json"), plan.to_string()).expect("write the plan");

    let worker = Store::open(
        run.join("store"),
        StoreOptions::default().with_app_table("ledger"),
    )
    .expect("a worker holds the store");
    let output = inspect(&run, &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("without the plan"), "{stderr}");
    for expected in [
        "(harness run",
        "session s000: finished, generation 2, tasks 0 pending, 0 running, 4 completed",
        "; 8 ledger entries (2 completions)",
        "  task t001     download generation 1  success (event 2)",
        "  task t004     data     generation 2  success (event 5)",
        "session s999: planned, never created",
        "3 sessions, 12 tasks (0 pending, 0 running, 12 completed)",
        ", 20 ledger entries (4 completions)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let listing = json(&inspect(&run, &["--json"]));
    assert_eq!(listing["kind"], "harness_run");
    assert_eq!(
        listing["planned_never_created"],
        serde_json::json!(["s999"])
    );
    assert_eq!(listing["sessions"][0]["harness"]["ledger_entries"], 8);
    assert_eq!(
        listing["sessions"][0]["harness"]["tasks"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    assert_eq!(listing["totals"]["ledger_entries"], 20);
    assert_eq!(listing["totals"]["completions_ran"], 4);
    drop(worker);
}

/// A directory with no store anywhere exits 2 naming both places it looked; a store cut
/// to half its length exits 1 with `--check` (the damage named) and 2 without it (the
/// read-only open refuses it before mapping).
#[test]
fn inspect_refuses_what_is_not_a_sound_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = inspect(dir.path(), &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("holds no store"), "{stderr}");
    assert!(stderr.contains("store/data.mdb"), "{stderr}");

    let root = dir.path().join("root");
    let store = Store::open(&root, StoreOptions::default()).expect("create");
    write_busy_store(&store);
    store.close().expect("close");
    let data = root.join("data.mdb");
    let bytes = std::fs::metadata(&data).expect("data file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .and_then(|file| file.set_len(bytes / 2))
        .expect("truncate");
    let checked = inspect(&root, &["--check"]);
    let (stdout, stderr) = text(&checked);
    assert_eq!(checked.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAILED") && stdout.contains("truncated"),
        "{stdout}"
    );
    let checked = json_failure(&inspect(&root, &["--check", "--json"]));
    assert_eq!(checked["check"]["passed"], false, "{checked:#}");
    let listed = inspect(&root, &[]);
    let (stdout, stderr) = text(&listed);
    assert_eq!(listed.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
}

fn json_failure(output: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}
