//! Property crash tests: random sequences of enqueues (downloads and data tasks against the
//! origin, with fault programs), completions, delegate panics, crashes — plain and at
//! fail points — and restarts, run against the real library in a temp dir, and checked
//! after every step against a reference model of what may and must be there.
//!
//! An in-process crash drops the whole actix `System` with the `Sessions` in it (actors,
//! transfers in flight, the store and its writer thread) and reopens the same directory,
//! after checking that the directory's lock was released. A crash at a fail point arms the
//! point with `return` (the unit or batch fails as if the process had died there, without
//! aborting the test process), lets the system run into it, then crashes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use session_actor::{
    CompletionCall, Delegate, DelegateError, Delivery, Session, SessionConfig, Sessions,
    TransferRequest, WriteScope,
};
use session_harness::crash::ledger::{EntryKind, LEDGER_TABLE, Ledger, LedgerEntry};
use session_harness::crash::plan::Expect;
use session_harness::crash::worker::{INJECTED_PANIC, entry_for, silence_injected_panics};
use session_harness::origin::{Origin, OriginConfig, OriginHandle, sha256};
use session_store::{Store, StoreOptions, TaskState};

/// Sessions in every case.
const SESSIONS: usize = 2;
/// Task slots per session; slot `i` always has the same transfer (see [`spec`]).
const TASK_SLOTS: usize = 8;
/// The origin's content seed.
const CONTENT_SEED: u64 = 11;
/// The completion handler's name.
const COMPLETION: &str = "prop-complete";
/// How long a settle may take before the case fails as "did not finish".
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// The longest a dropped system may take to release the store's directory (its close
/// runs in the background); a lock still held after this is a leaked store.
const RELEASE_WAIT_MAX: Duration = Duration::from_secs(30);
/// The fail points a `CrashAt` arms (never with `abort`: this is one process).
const FAIL_POINTS: [&str; 6] = [
    "store-before-commit",
    "store-after-commit",
    "actor-after-delegate-before-commit",
    "actor-inside-completion",
    "actor-between-transfer-and-result",
    session_http::FAIL_POINT_DOWNLOAD_AFTER_FSYNC,
];

/// What a task slot transfers and must end as.
#[derive(Debug, Clone)]
struct Spec {
    kind: SpecKind,
    bytes: u64,
    fault: Option<&'static str>,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecKind {
    Download,
    /// A download whose request demands one byte more than the server sends.
    WrongLength,
    Data,
}

/// The fixed transfer of task slot `slot` (the same on every re-issue, so re-issuing
/// reconnects).
fn spec(slot: usize) -> Spec {
    let (kind, bytes, fault, expect) = match slot % TASK_SLOTS {
        0 => (SpecKind::Download, 0, None, Expect::Success),
        1 => (
            SpecKind::Download,
            300_000,
            Some("reset%3A40000&times=2"),
            Expect::Success,
        ),
        2 => (
            SpecKind::Download,
            3_000,
            Some("status%3A500&times=1"),
            Expect::Success,
        ),
        3 => (
            SpecKind::Download,
            10,
            Some("status%3A404&times=1000"),
            Expect::Rejected,
        ),
        4 => (SpecKind::WrongLength, 5_000, None, Expect::Failed),
        5 => (SpecKind::Data, 100, None, Expect::Success),
        6 => (
            SpecKind::Data,
            10,
            Some("status%3A410&times=1000"),
            Expect::Rejected,
        ),
        _ => (
            SpecKind::Download,
            1_500_000,
            Some("drip%3A65536%3A5&times=1000"),
            Expect::Success,
        ),
    };
    Spec {
        kind,
        bytes,
        fault,
        expect,
    }
}

fn session_id(session: usize) -> String {
    format!("p{session}")
}

fn task_id(slot: usize) -> String {
    format!("t{slot}")
}

fn object(session: usize, slot: usize) -> String {
    format!("p{session}-t{slot}")
}

fn request(base: &str, session: usize, slot: usize) -> TransferRequest {
    let spec = spec(slot);
    let mut url = format!(
        "{base}/objects/{}?size={}",
        object(session, slot),
        spec.bytes
    );
    if let Some(fault) = spec.fault {
        url.push_str("&fault=");
        url.push_str(fault);
    }
    match spec.kind {
        SpecKind::Download => TransferRequest::download(url),
        SpecKind::WrongLength => TransferRequest::download(url).with_expected_bytes(spec.bytes + 1),
        SpecKind::Data => TransferRequest::data(session_http::Method::Get, url),
    }
}

/// One step of a case.
#[derive(Debug, Clone)]
enum Step {
    /// Enqueue (or re-issue) task slot `slot` of a session.
    Enqueue { session: usize, slot: usize },
    /// Store the completion for the session's current generation.
    SetCompletion { session: usize },
    /// Let the system run.
    Run { ms: u64 },
    /// Make the delegate panic on its next delivery.
    PanicNext,
    /// Drop everything and reopen.
    Crash,
    /// Arm a fail point, run into it, drop everything and reopen.
    CrashAt { point: usize, ms: u64 },
    /// Run without faults until every task is terminal, every event delivered and every
    /// stored completion has run.
    Settle,
}

/// The reference model: which task slots each session was given.
#[derive(Debug, Clone, Default)]
struct Model {
    tasks: Vec<BTreeSet<usize>>,
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            tasks: vec![BTreeSet::new(); SESSIONS],
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        let any_tasks = state.tasks.iter().any(|tasks| !tasks.is_empty());
        let mut choices: Vec<(u32, BoxedStrategy<Step>)> = vec![
            (
                6,
                (0..SESSIONS, 0..TASK_SLOTS)
                    .prop_map(|(session, slot)| Step::Enqueue { session, slot })
                    .boxed(),
            ),
            (3, (0u64..120).prop_map(|ms| Step::Run { ms }).boxed()),
            (1, Just(Step::PanicNext).boxed()),
            (2, Just(Step::Crash).boxed()),
            (
                2,
                (0..FAIL_POINTS.len(), 0u64..80)
                    .prop_map(|(point, ms)| Step::CrashAt { point, ms })
                    .boxed(),
            ),
        ];
        if any_tasks {
            choices.push((
                2,
                (0..SESSIONS)
                    .prop_map(|session| Step::SetCompletion { session })
                    .boxed(),
            ));
            choices.push((1, Just(Step::Settle).boxed()));
        }
        proptest::strategy::Union::new_weighted(choices).boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            Step::SetCompletion { session } => !state.tasks[*session].is_empty(),
            Step::Enqueue { .. }
            | Step::Run { .. }
            | Step::PanicNext
            | Step::Crash
            | Step::CrashAt { .. }
            | Step::Settle => true,
        }
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        if let Step::Enqueue { session, slot } = step {
            state.tasks[*session].insert(*slot);
        }
        state
    }
}

/// One process lifetime of the library.
struct Incarnation {
    // Field order is drop order: handles, then `Sessions`, then the runtime with the
    // actors in it.
    handles: Vec<Session>,
    sessions: Sessions,
    runner: actix::SystemRunner,
}

/// The system under test: a directory, an origin that outlives crashes, and the current
/// incarnation.
struct Sut {
    incarnation: Option<Incarnation>,
    origin: OriginHandle,
    dir: tempfile::TempDir,
    panic_next: Arc<AtomicBool>,
    /// Completions stored: (session, store generation).
    completions: BTreeSet<(usize, u64)>,
    /// Tasks seen terminal, with their outcome: they must stay so.
    terminal: BTreeMap<(usize, usize), String>,
    crashes: u32,
}

impl Sut {
    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn incarnation(&self) -> &Incarnation {
        self.incarnation
            .as_ref()
            .expect("an incarnation is running between steps")
    }

    fn sessions(&self) -> &Sessions {
        &self.incarnation().sessions
    }

    fn handle(&self, session: usize) -> Session {
        self.incarnation().handles[session].clone()
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.incarnation().runner.block_on(future)
    }

    /// Starts the library on the directory and attaches every session's delegate, as an
    /// application does at launch.
    fn open(&mut self) {
        let runner = actix::System::new();
        let root = self.root();
        let panic_next = Arc::clone(&self.panic_next);
        let (sessions, handles) = runner.block_on(async move {
            let sessions = Sessions::builder(&root)
                .app_table(LEDGER_TABLE)
                .completion(COMPLETION, record_completion)
                .restart_limit(10_000)
                .open()
                .expect("the sessions open");
            let mut handles = Vec::with_capacity(SESSIONS);
            for session in 0..SESSIONS {
                let handle = sessions
                    .session(
                        &session_id(session),
                        config(),
                        ledger_delegate(Arc::clone(&panic_next)),
                    )
                    .await
                    .expect("the session opens");
                handles.push(handle);
            }
            (sessions, handles)
        });
        self.incarnation = Some(Incarnation {
            handles,
            sessions,
            runner,
        });
    }

    /// Drops the whole system, checks the directory is free again, and reopens.
    fn crash(&mut self) {
        drop(self.incarnation.take());
        // Dropping `Sessions` without a shutdown closes the store in the background (after
        // its runtime has stopped, which waits for blocking file work in flight, such as
        // an fsync), so the lock is released a moment later: a new owner gets it once
        // that close is done, and must not wait long for it.
        let started = Instant::now();
        let store = loop {
            match Store::open(
                self.root(),
                StoreOptions::default().with_app_table(LEDGER_TABLE),
            ) {
                Ok(store) => break store,
                Err(session_store::Error::Locked { .. })
                    if started.elapsed() < RELEASE_WAIT_MAX =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(error) => {
                    panic!("the store directory is released when the system is dropped: {error:?}")
                }
            }
        };
        drop(store);
        self.crashes += 1;
        self.open();
    }

    fn run_for(&self, ms: u64) {
        self.block_on(async move { tokio::time::sleep(Duration::from_millis(ms)).await });
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        attempts_max: 40,
        retry_delay_ms_base: 20,
        retry_delay_ms_max: 200,
        deadline_s: 3600,
        ..SessionConfig::default()
    }
}

fn ledger() -> Ledger {
    Ledger::named().expect("the ledger table name is valid")
}

fn append(scope: &mut WriteScope<'_>, entry: LedgerEntry) -> Result<(), DelegateError> {
    ledger()
        .append(scope, entry)
        .map(|_| ())
        .map_err(|error| DelegateError::new(error.to_string()))
}

fn record_completion(
    call: &CompletionCall,
    scope: &mut WriteScope<'_>,
) -> Result<(), DelegateError> {
    append(
        scope,
        LedgerEntry {
            index: 0,
            run: 0,
            session: call.key.session.to_string(),
            generation: call.key.generation,
            seq: call.key.seq,
            kind: EntryKind::Completion {
                name: call.name.clone(),
                payload: call.payload.clone(),
            },
        },
    )
}

struct CrashTest;

impl StateMachineTest for CrashTest {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(_: &Model) -> Sut {
        silence_injected_panics();
        let origin = Origin::start_in_thread(OriginConfig {
            seed: CONTENT_SEED,
            port: 0,
        })
        .expect("the origin starts");
        let mut sut = Sut {
            incarnation: None,
            origin,
            dir: tempfile::tempdir().expect("a temporary directory"),
            panic_next: Arc::new(AtomicBool::new(false)),
            completions: BTreeSet::new(),
            terminal: BTreeMap::new(),
            crashes: 0,
        };
        sut.open();
        sut
    }

    fn apply(mut sut: Sut, model: &Model, step: Step) -> Sut {
        match step {
            Step::Enqueue { session, slot } => {
                let request = request(&sut.origin.url(""), session, slot);
                let handle = sut.handle(session);
                let task = task_id(slot);
                sut.block_on(handle.enqueue(&task, request))
                    .expect("enqueue (or reconnect) succeeds");
            }
            Step::SetCompletion { session } => {
                let id = session_store::SessionId::new(session_id(session)).expect("valid id");
                let generation = sut
                    .sessions()
                    .store()
                    .snapshot()
                    .and_then(|snapshot| snapshot.session(&id))
                    .expect("the store reads")
                    .map_or(0, |record| record.generation);
                assert!(generation > 0, "a session with tasks has a generation");
                let payload = format!("{id}/{generation}").into_bytes();
                let handle = sut.handle(session);
                sut.block_on(handle.set_completion(generation, COMPLETION, payload))
                    .expect("storing the completion of the current generation succeeds");
                sut.completions.insert((session, generation));
            }
            Step::Run { ms } => sut.run_for(ms),
            Step::PanicNext => sut.panic_next.store(true, Ordering::SeqCst),
            Step::Crash => sut.crash(),
            Step::CrashAt { point, ms } => {
                fail::cfg(FAIL_POINTS[point], "return").expect("the fail point arms");
                sut.run_for(ms);
                drop(sut.incarnation.take());
                fail::remove(FAIL_POINTS[point]);
                sut.open();
                sut.crashes += 1;
            }
            Step::Settle => settle(&sut, model),
        }
        note_terminal(&mut sut, model);
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        check(sut, model);
    }

    fn teardown(sut: Sut, model: Model) {
        // Every case ends with everything done: liveness after the crashes.
        settle(&sut, &model);
        check(&sut, &model);
        drop(sut);
    }
}

fn ledger_delegate(panic_next: Arc<AtomicBool>) -> Delegate {
    Delegate::transactional(move |delivery: &Delivery, scope: &mut WriteScope<'_>| {
        if panic_next.swap(false, Ordering::SeqCst) {
            std::panic::panic_any(INJECTED_PANIC);
        }
        append(scope, entry_for(delivery, 0))
    })
}

/// Runs without faults until the model's work is all done, or fails the case (a lost
/// delivery wakeup in the library shows up here as "did not finish").
fn settle(sut: &Sut, model: &Model) {
    sut.panic_next.store(false, Ordering::SeqCst);
    let started = Instant::now();
    loop {
        let pending = pending_work(sut, model);
        match pending {
            None => return,
            Some(what) if started.elapsed() > SETTLE_MAX => {
                panic!("did not finish within {SETTLE_MAX:?}: {what}")
            }
            Some(_) => sut.run_for(20),
        }
    }
}

/// What is not done yet, if anything.
fn pending_work(sut: &Sut, model: &Model) -> Option<String> {
    let snapshot = sut.sessions().store().snapshot().expect("a snapshot");
    let entries = ledger().entries(&snapshot).expect("the ledger reads");
    for (session, slots) in model.tasks.iter().enumerate() {
        let id = session_store::SessionId::new(session_id(session)).expect("valid id");
        let Some(record) = snapshot.session(&id).expect("the session reads") else {
            return Some(format!("session {id} has no record"));
        };
        for slot in slots {
            let task = session_store::TaskId::new(task_id(*slot)).expect("valid id");
            match snapshot.task(&id, &task).expect("the task reads") {
                Some(record) if record.state.is_terminal() => {}
                other => return Some(format!("task {id}/{task} is {other:?}")),
            }
        }
        if record.has_undelivered_events() {
            return Some(format!(
                "session {id} has delivered {} of {} events",
                record.delivered_seq, record.next_event_seq
            ));
        }
    }
    for (session, generation) in &sut.completions {
        let payload = format!("{}/{generation}", session_id(*session)).into_bytes();
        let ran = entries.iter().any(|entry| {
            matches!(&entry.kind, EntryKind::Completion { payload: p, .. } if *p == payload)
        });
        if !ran {
            return Some(format!(
                "the completion of {} generation {generation} has not run",
                session_id(*session)
            ));
        }
    }
    None
}

/// Remembers the outcome of every task now terminal.
fn note_terminal(sut: &mut Sut, model: &Model) {
    let snapshot = sut.sessions().store().snapshot().expect("a snapshot");
    for (session, slots) in model.tasks.iter().enumerate() {
        let id = session_store::SessionId::new(session_id(session)).expect("valid id");
        for slot in slots {
            let task = session_store::TaskId::new(task_id(*slot)).expect("valid id");
            if let Some(TaskState::Completed { outcome, .. }) = snapshot
                .task(&id, &task)
                .expect("the task reads")
                .map(|r| r.state)
            {
                sut.terminal
                    .entry((session, *slot))
                    .or_insert_with(|| outcome.name().to_owned());
            }
        }
    }
}

/// The safety properties, true after every step whatever happened before.
fn check(sut: &Sut, model: &Model) {
    let snapshot = sut.sessions().store().snapshot().expect("a snapshot");
    let entries = ledger().entries(&snapshot).expect("the ledger reads");
    for (session, slots) in model.tasks.iter().enumerate() {
        let id = session_store::SessionId::new(session_id(session)).expect("valid id");
        let record = snapshot
            .session(&id)
            .expect("the session reads")
            .expect("every session was opened");
        let mine: Vec<&LedgerEntry> = entries
            .iter()
            .filter(|entry| entry.session == id.as_str())
            .collect();
        // Exactly once and in order: the ledger commits with the cursor, so it holds
        // exactly the events 0..delivered_seq, each once, in sequence order.
        let seqs: Vec<u64> = mine.iter().map(|entry| entry.seq).collect();
        let expected: Vec<u64> = (0..record.delivered_seq).collect();
        assert_eq!(
            seqs, expected,
            "session {id}: delivered events must be 0..{} once each, in order",
            record.delivered_seq
        );
        // Every enqueued task is there, and a task seen terminal stays terminal.
        for slot in slots {
            let task = session_store::TaskId::new(task_id(*slot)).expect("valid id");
            let task_record = snapshot
                .task(&id, &task)
                .expect("the task reads")
                .unwrap_or_else(|| panic!("task {id}/{task} was enqueued and is lost"));
            if let TaskState::Completed {
                outcome, event_seq, ..
            } = &task_record.state
            {
                let expect = spec(*slot).expect;
                assert!(
                    expect.accepts(outcome.name()),
                    "task {id}/{task} ended {}, expected {}",
                    outcome.name(),
                    expect.name()
                );
                assert!(
                    *event_seq < record.next_event_seq,
                    "task {id}/{task}: event past the outbox"
                );
            }
        }
        // Each delivered task event matches its task, and a delivered download's file
        // existed with the origin's bytes when the delegate ran.
        let mut finished_generations = BTreeSet::new();
        let mut completion_generations = BTreeSet::new();
        for entry in &mine {
            match &entry.kind {
                EntryKind::Task {
                    task,
                    outcome,
                    file,
                } => {
                    let slot: usize = task[1..].parse().expect("a slot number");
                    let task_id = session_store::TaskId::new(task.clone()).expect("valid id");
                    let record = snapshot
                        .task(&id, &task_id)
                        .expect("the task reads")
                        .expect("a delivered task exists");
                    match &record.state {
                        TaskState::Completed {
                            outcome: stored,
                            event_seq,
                            ..
                        } => {
                            assert_eq!(*event_seq, entry.seq, "task {id}/{task}: its event");
                            assert_eq!(stored.name(), outcome, "task {id}/{task}: its outcome");
                        }
                        other => panic!("task {id}/{task} delivered but {other:?}"),
                    }
                    if let Some(file) = file {
                        let spec = spec(slot);
                        assert!(file.existed, "task {id}/{task}: file gone at delivery");
                        assert_eq!(
                            file.sha256.as_deref(),
                            Some(sha256(CONTENT_SEED, &object(session, slot), spec.bytes).as_str()),
                            "task {id}/{task}: the file's bytes"
                        );
                    }
                }
                EntryKind::DidFinish => {
                    assert!(
                        finished_generations.insert(entry.generation),
                        "session {id}: did finish events twice for generation {}",
                        entry.generation
                    );
                }
                EntryKind::Completion { payload, .. } => {
                    assert!(
                        finished_generations.contains(&entry.generation),
                        "session {id}: completion of generation {} before its did finish events",
                        entry.generation
                    );
                    assert!(
                        completion_generations.insert(payload.clone()),
                        "session {id}: completion {:?} ran twice",
                        String::from_utf8_lossy(payload)
                    );
                }
            }
        }
    }
    // Outcomes seen terminal never change (a completed task is never re-run).
    for ((session, slot), outcome) in &sut.terminal {
        let id = session_store::SessionId::new(session_id(*session)).expect("valid id");
        let task = session_store::TaskId::new(task_id(*slot)).expect("valid id");
        match snapshot
            .task(&id, &task)
            .expect("the task reads")
            .map(|r| r.state)
        {
            Some(TaskState::Completed { outcome: now, .. }) => {
                assert_eq!(now.name(), outcome, "task {id}/{task} changed its outcome");
            }
            other => panic!("task {id}/{task} was terminal and is now {other:?}"),
        }
    }
}

prop_state_machine! {
    #![proptest_config(Config {
        cases: 16,
        max_shrink_iters: 64,
        // Next to this file, so the regressions are committed with it.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        .. Config::default()
    })]

    /// Random enqueues, runs, delegate panics, crashes and crashes at fail points keep
    /// exactly-once delivery, in order, of results that match their tasks and files that
    /// match the origin after every step; and at the end everything finishes, each stored
    /// completion having run once.
    #[test]
    fn crashes_keep_exactly_once(sequential 1..24 => CrashTest);
}
