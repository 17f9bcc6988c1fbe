//! The crash verifier must be able to fail: each test doctors the facts of a clean run
//! (a duplicate, a missing event, a reordering, an early or repeated completion, a bad
//! file, ...) and checks the verifier names the violation.

use session_harness::crash::plan::{
    COMPLETION_NAME, Expect, Plan, PlanFaults, PlanSource, PlannedConfig, PlannedGeneration,
    PlannedKind, PlannedSession, PlannedTask,
};
use session_harness::crash::{EntryKind, Facts, FileFact, LedgerEntry, OriginFacts, verify};
use session_store::{
    Outcome, ResponseSummary, SessionConfig, SessionId, SessionRecord, SessionState, TaskId,
    TaskKind, TaskRecord, TaskState,
};

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// One session, one generation: a download `a` (seq 0), an upload `b` (seq 1), then
/// "did finish events" (seq 2) and the completion (seq 3).
fn plan() -> Plan {
    let task = |id: &str, kind: PlannedKind| PlannedTask {
        id: id.to_owned(),
        url: format!("http://127.0.0.1:1/objects/{id}"),
        kind,
        expect: Expect::Success,
        object: Some(format!("s000-{id}")),
        bytes: Some(10),
        fault: None,
    };
    Plan {
        seed: 1,
        source: PlanSource::Generated { content_seed: 1 },
        origin: "http://127.0.0.1:1".to_owned(),
        config: PlannedConfig::default(),
        sessions: vec![PlannedSession {
            id: "s000".to_owned(),
            generations: vec![PlannedGeneration {
                number: 1,
                tasks: vec![
                    task(
                        "a",
                        PlannedKind::Download {
                            sha256: Some(SHA_A.to_owned()),
                            expected_bytes: None,
                        },
                    ),
                    task(
                        "b",
                        PlannedKind::Upload {
                            file: "/tmp/b".into(),
                        },
                    ),
                ],
                joins: false,
            }],
        }],
        faults: PlanFaults::default(),
    }
}

fn id(text: &str) -> SessionId {
    SessionId::new(text).expect("valid session id")
}

fn success(file: Option<&str>) -> Outcome {
    Outcome::Success(ResponseSummary {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
        file: file.map(str::to_owned),
        bytes: 10,
    })
}

fn entry(index: u64, seq: u64, kind: EntryKind) -> LedgerEntry {
    LedgerEntry {
        index,
        run: 1,
        session: "s000".to_owned(),
        generation: 1,
        seq,
        kind,
    }
}

fn file_fact(existed: bool, sha256: &str) -> FileFact {
    FileFact {
        path: "/run/store/downloads/s000/a".to_owned(),
        existed,
        bytes: existed.then_some(10),
        sha256: existed.then(|| sha256.to_owned()),
    }
}

fn task_entry(index: u64, seq: u64, task: &str, file: Option<FileFact>) -> LedgerEntry {
    entry(
        index,
        seq,
        EntryKind::Task {
            task: task.to_owned(),
            outcome: "success".to_owned(),
            file,
        },
    )
}

fn completion_entry(index: u64, seq: u64) -> LedgerEntry {
    entry(
        index,
        seq,
        EntryKind::Completion {
            name: COMPLETION_NAME.to_owned(),
            payload: Plan::completion_payload("s000", 1),
        },
    )
}

/// The facts of a clean run of [`plan`].
fn clean() -> Facts {
    let session = SessionRecord {
        state: SessionState::Finished,
        generation: 1,
        next_event_seq: 4,
        delivered_seq: 4,
        completion_generation: 1,
        ..SessionRecord::new(id("s000"), SessionConfig::default(), 0)
    };
    let task = |name: &str, kind: TaskKind, outcome: Outcome, event_seq: u64| TaskRecord {
        session: id("s000"),
        id: TaskId::new(name).expect("valid task id"),
        generation: 1,
        kind,
        request: Vec::new(),
        created_ms: 0,
        state: TaskState::Completed {
            outcome,
            event_seq,
            finished_ms: 0,
        },
        wait: None,
        incarnation: 0,
    };
    Facts {
        ledger: vec![
            task_entry(0, 0, "a", Some(file_fact(true, SHA_A))),
            task_entry(1, 1, "b", None),
            entry(2, 2, EntryKind::DidFinish),
            completion_entry(3, 3),
        ],
        sessions: vec![session],
        tasks: vec![
            task(
                "a",
                TaskKind::Download,
                success(Some("/run/store/downloads/s000/a")),
                0,
            ),
            task("b", TaskKind::Upload, success(None), 1),
        ],
        undelivered: Vec::new(),
        leftover_files: Vec::new(),
        partial_files: Vec::new(),
        origin: Some(OriginFacts {
            uploads_by_object: [("s000-b".to_owned(), 1)].into_iter().collect(),
            ..OriginFacts::default()
        }),
    }
}

/// Renumbers the ledger's append indexes in their current order.
fn reindex(facts: &mut Facts) {
    for (index, entry) in facts.ledger.iter_mut().enumerate() {
        entry.index = index as u64;
    }
}

fn assert_caught(facts: &Facts, needle: &str) -> session_harness::crash::Findings {
    let findings = verify(&plan(), facts);
    assert!(
        !findings.passed(),
        "the doctored facts passed: {findings:#?}"
    );
    assert!(
        findings.violations.iter().any(|v| v.contains(needle)),
        "no violation mentions {needle:?}: {:#?}",
        findings.violations
    );
    findings
}

/// The undoctored facts pass, with every count where it should be, so each failure
/// below is caused by its doctoring alone.
#[test]
fn clean_run_passes() {
    let findings = verify(&plan(), &clean());
    assert!(findings.passed(), "{:#?}", findings.violations);
    assert_eq!(findings.events_expected, 4);
    assert_eq!(findings.events_delivered, 4);
    assert_eq!(findings.finish_events_delivered, 1);
    assert_eq!(findings.completions_run, 1);
    assert_eq!(findings.files_checked, 1);
}

/// A task event delivered a second time (appended again to the ledger, as an
/// at-least-once delegate does after a crash) is counted as a duplicate.
#[test]
fn duplicate_delivery_is_caught() {
    let mut facts = clean();
    let again = facts.ledger[1].clone();
    facts.ledger.insert(2, again);
    reindex(&mut facts);
    let findings = assert_caught(&facts, "reached the delegate 2 times");
    assert_eq!(findings.duplicate_events, 1);
}

/// An event the outbox had but the delegate never saw (its ledger entry removed) is
/// counted as lost.
#[test]
fn missing_event_is_caught() {
    let mut facts = clean();
    facts.ledger.remove(1);
    reindex(&mut facts);
    let findings = assert_caught(
        &facts,
        "event 1 was appended but never reached the delegate",
    );
    assert_eq!(findings.lost_events, 1);
}

/// Two task events delivered in the wrong order (seq 1 before seq 0) are counted as out
/// of order.
#[test]
fn reordering_is_caught() {
    let mut facts = clean();
    facts.ledger.swap(0, 1);
    reindex(&mut facts);
    let findings = assert_caught(&facts, "event 0 reached the delegate after event 1");
    assert_eq!(findings.out_of_order_events, 1);
}

/// A completion that ran before the generation's last task event (moved to the front of
/// the ledger) is counted as early.
#[test]
fn completion_before_last_event_is_caught() {
    let mut facts = clean();
    let completion = facts.ledger.remove(3);
    facts.ledger.insert(0, completion);
    reindex(&mut facts);
    let findings = assert_caught(&facts, "ran early");
    assert_eq!(findings.completions_early, 1);
}

/// A completion that ran twice, under the same event and under a second event, is
/// counted as duplicated both ways.
#[test]
fn completion_run_twice_is_caught() {
    let mut facts = clean();
    facts.ledger.push(completion_entry(4, 3));
    let findings = assert_caught(&facts, "ran 2 times");
    assert_eq!(findings.completions_duplicated, 1);

    let mut facts = clean();
    facts.sessions[0].next_event_seq = 5;
    facts.sessions[0].delivered_seq = 5;
    facts.ledger.push(completion_entry(4, 4));
    let findings = assert_caught(&facts, "ran as events {3, 4}");
    assert_eq!(findings.completions_duplicated, 1);
}

/// A delivered file whose bytes differ from the origin's, or that was already gone
/// when the delegate ran, is counted as bad.
#[test]
fn corrupted_or_missing_file_is_caught() {
    let mut facts = clean();
    let corrupted = "b".repeat(64);
    facts.ledger[0] = task_entry(0, 0, "a", Some(file_fact(true, &corrupted)));
    let findings = assert_caught(&facts, "had SHA-256");
    assert_eq!(findings.files_bad, 1);

    let mut facts = clean();
    facts.ledger[0] = task_entry(0, 0, "a", Some(file_fact(false, SHA_A)));
    let findings = assert_caught(&facts, "did not exist when the delegate ran");
    assert_eq!(findings.files_bad, 1);
}

/// "Did finish events" delivered before a task event of its generation, and a
/// generation without one, are both caught.
#[test]
fn early_or_missing_did_finish_is_caught() {
    let mut facts = clean();
    facts.ledger.swap(1, 2);
    reindex(&mut facts);
    assert_caught(&facts, "came before the event of task b");

    let mut facts = clean();
    facts.ledger.remove(2);
    reindex(&mut facts);
    assert_caught(&facts, "never delivered \"did finish events\"");
}

/// A task the plan expects to succeed that ended otherwise, and a task that never ended,
/// are caught.
#[test]
fn wrong_or_missing_outcome_is_caught() {
    let mut facts = clean();
    facts.tasks[1].state = TaskState::Completed {
        outcome: Outcome::Cancelled,
        event_seq: 1,
        finished_ms: 0,
    };
    let findings = assert_caught(&facts, "ended cancelled, the plan expects success");
    assert_eq!(findings.outcome_mismatches, 1);

    let mut facts = clean();
    facts.tasks[1].state = TaskState::Running { attempt: 1 };
    let findings = assert_caught(&facts, "never reached a terminal outcome");
    assert_eq!(findings.tasks_lost, 1);
}

/// A delivered file still on disk at the end, and a successful upload the origin never
/// stored, are caught; an upload the origin suppressed as a duplicate is only counted.
#[test]
fn leftovers_and_uploads_are_checked() {
    let mut facts = clean();
    facts.leftover_files.push("s000/a".to_owned());
    assert_caught(&facts, "downloads/s000/a is still there");

    let mut facts = clean();
    if let Some(origin) = &mut facts.origin {
        origin.uploads_by_object.clear();
    }
    assert_caught(&facts, "the origin never stored s000-b");

    let mut facts = clean();
    if let Some(origin) = &mut facts.origin {
        origin.duplicate_uploads_suppressed = 2;
    }
    let findings = verify(&plan(), &facts);
    assert!(findings.passed(), "{:#?}", findings.violations);
    assert_eq!(findings.upload_duplicates_at_origin, 2);
}

/// Two batches of one session, the second enqueued while the first ran: it joined store
/// generation 1 with its own completion. Data tasks `a` (batch 1) and `b` (batch 2).
fn joined_plan() -> Plan {
    let task = |id: &str| PlannedTask {
        id: id.to_owned(),
        url: format!("http://127.0.0.1:1/objects/s000-{id}"),
        kind: PlannedKind::Data,
        expect: Expect::Success,
        object: Some(format!("s000-{id}")),
        bytes: Some(10),
        fault: None,
    };
    let mut plan = plan();
    plan.sessions[0].generations = vec![
        PlannedGeneration {
            number: 1,
            tasks: vec![task("a")],
            joins: false,
        },
        PlannedGeneration {
            number: 2,
            tasks: vec![task("b")],
            joins: true,
        },
    ];
    plan
}

/// Events of [`joined_plan`] in store generation 1: a (0), b (1), "did finish events"
/// (2), the completion of batch 1 (3), the completion of batch 2 (4).
fn joined_clean() -> Facts {
    let mut facts = clean();
    facts.sessions[0].next_event_seq = 5;
    facts.sessions[0].delivered_seq = 5;
    facts.tasks[0].kind = TaskKind::Data;
    facts.tasks[0].state = TaskState::Completed {
        outcome: success(None),
        event_seq: 0,
        finished_ms: 0,
    };
    facts.tasks[1].kind = TaskKind::Data;
    let completion = |index: u64, seq: u64, batch: u64| {
        entry(
            index,
            seq,
            EntryKind::Completion {
                name: COMPLETION_NAME.to_owned(),
                payload: Plan::completion_payload("s000", batch),
            },
        )
    };
    facts.ledger = vec![
        task_entry(0, 0, "a", None),
        task_entry(1, 1, "b", None),
        entry(2, 2, EntryKind::DidFinish),
        completion(3, 3, 1),
        completion(4, 4, 2),
    ];
    facts.origin = None;
    facts
}

/// A batch that joined a running generation passes with both completions after every
/// task; its completion recorded before its own task's event is caught as early, and
/// the first batch's completion is not blamed.
#[test]
fn joined_batch_completion_before_its_task_is_caught() {
    let plan = joined_plan();
    let findings = verify(&plan, &joined_clean());
    assert!(findings.passed(), "{:#?}", findings.violations);
    assert_eq!(findings.completions_run, 2);
    assert_eq!(findings.batches_joining, 1);

    let mut facts = joined_clean();
    let completion = facts.ledger.remove(4);
    facts.ledger.insert(1, completion);
    reindex(&mut facts);
    let findings = verify(&plan, &facts);
    assert!(
        findings
            .violations
            .iter()
            .any(|v| v.contains("generation 2 (event 4) ran early")
                && v.contains("before the event of its batch's task b")),
        "{:#?}",
        findings.violations
    );
    assert_eq!(findings.completions_early, 1, "{:#?}", findings.violations);
}

/// Under a plan's short retention a task record pruned after its delivery is read from
/// its event and counted as pruned; a record missing with no event is still lost, and
/// without a retention in the plan a missing record is lost as before.
#[test]
fn pruned_records_are_read_from_the_ledger_and_lost_ones_are_caught() {
    let mut plan = joined_plan();
    plan.config.retention_s = 3;
    let mut facts = joined_clean();
    facts.tasks.clear();
    let findings = verify(&plan, &facts);
    assert!(findings.passed(), "{:#?}", findings.violations);
    assert_eq!(findings.tasks_pruned, 2);

    facts.ledger.remove(1);
    reindex(&mut facts);
    let findings = verify(&plan, &facts);
    assert!(
        findings.violations.iter().any(|v| v.contains(
            "s000/b was planned but the store has no record of it and no event reported it"
        )),
        "{:#?}",
        findings.violations
    );
    assert_eq!(findings.tasks_lost, 1);

    let mut facts = joined_clean();
    facts.tasks.remove(1);
    let findings = verify(&joined_plan(), &facts);
    assert!(
        findings
            .violations
            .iter()
            .any(|v| v.contains("s000/b was planned but the store has no record of it")),
        "{:#?}",
        findings.violations
    );
}
