//! The verifier: the guarantees of the `session_actor` crate documentation (items 1 to 6,
//! and that they hold after kills and aborts), checked from the plan and the facts of a
//! finished run. A pure function, so tests feed it doctored ledgers and records.
//!
//! What each check reads:
//! - every planned task has a record, is terminal, and ended as the plan expects (5);
//! - every event of the outbox (`0..next_event_seq` per session) reached the delegate
//!   exactly once (no duplicate, no gap) and in sequence order (2), each task's terminal
//!   record points to the one event that reported it, with the same outcome (1);
//! - each store generation's "did finish events" came once, after its last task event (3);
//! - each planned generation's completion (the one the plan says it stores, by name)
//!   ran once, after "did finish events" of the store generation it was stored for and
//!   after every one of its task events (4); no other completion ran;
//! - each delivered download's file existed when the delegate ran and had the origin's
//!   SHA-256, and no delivered file is left behind (6);
//! - uploads reported as successful were stored by the origin; the origin's suppressed
//!   duplicates are counted, not held against the library (uploads are at least once on
//!   the wire).
//!
//! Item 7 is the run itself: these checks run after kills, aborts and delegate panics.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use session_store::{TaskRecord, TaskState};

use super::facts::Facts;
use super::ledger::{EntryKind, LedgerEntry};
use super::plan::{Plan, PlannedKind, PlannedTask};

/// Example sentences kept per kind of violation; the rest are counted.
const EXAMPLES_PER_KIND: usize = 8;

/// What the verifier found: counts and sentences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Sessions planned.
    pub sessions: usize,
    /// Tasks planned.
    pub tasks: usize,
    /// Planned batches enqueued while the one before them still ran.
    pub batches_joining: usize,
    /// Planned tasks sent to the flaky origin.
    pub tasks_flaky: usize,
    /// Events the library appended (task events, "did finish events", completions).
    pub events_expected: u64,
    /// Distinct events that reached the delegate or ran as completions.
    pub events_delivered: u64,
    /// Extra deliveries of task events and "did finish events".
    pub duplicate_events: u64,
    /// Events appended but never delivered.
    pub lost_events: u64,
    /// First deliveries that came after a later event of their session.
    pub out_of_order_events: u64,
    /// "Did finish events" the store generations call for.
    pub finish_events_expected: u64,
    /// Distinct "did finish events" delivered.
    pub finish_events_delivered: u64,
    /// Completions the plan stores (one per planned generation).
    pub completions_expected: u64,
    /// Planned completions that ran (at least once).
    pub completions_run: u64,
    /// Extra runs of completions.
    pub completions_duplicated: u64,
    /// Completions that ran before their "did finish events" or a task event.
    pub completions_early: u64,
    /// Delivered download files checked.
    pub files_checked: u64,
    /// Delivered download files missing or with the wrong bytes.
    pub files_bad: u64,
    /// Tasks whose outcome is not the planned one.
    pub outcome_mismatches: u64,
    /// Planned tasks without a record, or never terminal.
    pub tasks_lost: u64,
    /// Planned tasks whose record was pruned after their event was delivered (only
    /// under a plan's retention): their outcome is read from that event.
    pub tasks_pruned: u64,
    /// Uploads the origin received again and suppressed by idempotency key.
    pub upload_duplicates_at_origin: u64,
    /// Bytes of the downloads that must succeed.
    pub bytes_needed: u64,
    /// Complete files left under the download directory.
    pub leftover_files: u64,
    /// `.part` and `.validator` files left (a leak to watch, not a violation).
    pub partial_files: u64,
    /// One sentence per violation (the first few of each kind, then a count).
    pub violations: Vec<String>,
}

impl Findings {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Collects violation sentences, a few per kind.
#[derive(Debug, Default)]
struct Violations {
    by_kind: BTreeMap<&'static str, (u64, Vec<String>)>,
    order: Vec<&'static str>,
}

impl Violations {
    fn add(&mut self, kind: &'static str, sentence: String) {
        if !self.by_kind.contains_key(kind) {
            self.order.push(kind);
        }
        let (count, examples) = self.by_kind.entry(kind).or_default();
        *count += 1;
        if examples.len() < EXAMPLES_PER_KIND {
            examples.push(sentence);
        }
    }

    fn into_sentences(mut self) -> Vec<String> {
        let mut sentences = Vec::new();
        for kind in self.order {
            if let Some((count, examples)) = self.by_kind.remove(kind) {
                let shown = examples.len() as u64;
                sentences.extend(examples);
                if count > shown {
                    sentences.push(format!("... and {} more: {kind}", count - shown));
                }
            }
        }
        sentences
    }
}

/// What the store says a task ended as: (outcome name, event seq).
fn terminal(record: &TaskRecord) -> Option<(&'static str, u64)> {
    match &record.state {
        TaskState::Completed {
            outcome, event_seq, ..
        } => Some((outcome.name(), *event_seq)),
        TaskState::Pending { .. } | TaskState::Running { .. } => None,
    }
}

/// What a planned task ended as: from its record, or, once the record was pruned, from
/// the event that reported it (the ledger is the application's and is never pruned).
#[derive(Debug, Clone, Copy)]
struct Ended<'a> {
    outcome: &'a str,
    event_seq: u64,
    generation: u64,
    pruned: bool,
}

type TaskKey<'a> = (&'a str, &'a str);

/// How every planned task ended, where it is known. A record missing is taken as
/// pruned only when the plan shortens the retention and an event reported the task.
fn ended_tasks<'a>(
    plan: &Plan,
    facts: &'a Facts,
    planned: &BTreeMap<TaskKey<'a>, (u64, &PlannedTask)>,
    tasks: &BTreeMap<TaskKey<'a>, &'a TaskRecord>,
) -> BTreeMap<TaskKey<'a>, Ended<'a>> {
    let pruning = plan.config.retention_s > 0;
    let mut reported: BTreeMap<TaskKey<'a>, &'a LedgerEntry> = BTreeMap::new();
    for entry in &facts.ledger {
        if let EntryKind::Task { task, .. } = &entry.kind {
            reported
                .entry((entry.session.as_str(), task.as_str()))
                .or_insert(entry);
        }
    }
    let mut ended = BTreeMap::new();
    for key in planned.keys() {
        let found = match tasks.get(key) {
            Some(record) => terminal(record).map(|(outcome, event_seq)| Ended {
                outcome,
                event_seq,
                generation: record.generation,
                pruned: false,
            }),
            None if pruning => reported.get(key).and_then(|entry| match &entry.kind {
                EntryKind::Task { outcome, .. } => Some(Ended {
                    outcome: outcome.as_str(),
                    event_seq: entry.seq,
                    generation: entry.generation,
                    pruned: true,
                }),
                EntryKind::DidFinish | EntryKind::Completion { .. } => None,
            }),
            None => None,
        };
        if let Some(found) = found {
            ended.insert(*key, found);
        }
    }
    ended
}

/// Checks the guarantees (see the `session_actor` crate documentation) over a finished run.
pub fn verify(plan: &Plan, facts: &Facts) -> Findings {
    let mut findings = Findings {
        sessions: plan.sessions.len(),
        tasks: plan.task_count(),
        batches_joining: plan
            .sessions
            .iter()
            .flat_map(|session| &session.generations)
            .filter(|generation| generation.joins)
            .count(),
        tasks_flaky: plan.faults.flaky_origin.as_ref().map_or(0, |flaky| {
            plan.tasks()
                .filter(|(_, _, task)| task.url.starts_with(&flaky.url))
                .count()
        }),
        completions_expected: plan.completion_count() as u64,
        ..Findings::default()
    };
    let mut violations = Violations::default();

    let records: BTreeMap<&str, _> = facts
        .sessions
        .iter()
        .map(|record| (record.id.as_str(), record))
        .collect();
    let mut tasks: BTreeMap<(&str, &str), &TaskRecord> = BTreeMap::new();
    for task in &facts.tasks {
        tasks.insert((task.session.as_str(), task.id.as_str()), task);
    }
    let planned: BTreeMap<(&str, &str), (u64, &PlannedTask)> = plan
        .tasks()
        .map(|(session, generation, task)| {
            ((session.id.as_str(), task.id.as_str()), (generation, task))
        })
        .collect();
    let ended = ended_tasks(plan, facts, &planned, &tasks);
    let mut entries: BTreeMap<&str, Vec<&LedgerEntry>> = BTreeMap::new();
    for entry in &facts.ledger {
        entries
            .entry(entry.session.as_str())
            .or_default()
            .push(entry);
    }

    for record in &facts.sessions {
        if !plan.sessions.iter().any(|s| s.id == record.id.as_str()) {
            violations.add(
                "unplanned session",
                format!(
                    "the store has a session {} that the plan never asked for",
                    record.id
                ),
            );
        }
    }
    for task in &facts.tasks {
        if !planned.contains_key(&(task.session.as_str(), task.id.as_str())) {
            violations.add(
                "unplanned task",
                format!(
                    "the store has a task {}/{} that the plan never asked for",
                    task.session, task.id
                ),
            );
        }
    }
    for entry in &facts.ledger {
        if !records.contains_key(entry.session.as_str()) {
            violations.add(
                "delivery of an unknown session",
                format!(
                    "the ledger has a delivery (seq {}) for session {}, which the store does not know",
                    entry.seq, entry.session
                ),
            );
        }
    }

    // Tasks: a record, terminal, the planned outcome (item 5).
    for ((session, task_id), (_, task)) in &planned {
        if let PlannedKind::Download { .. } = task.kind
            && task.expect == super::plan::Expect::Success
        {
            findings.bytes_needed += task.bytes.unwrap_or(0);
        }
        let key = (*session, *task_id);
        let (record, ended) = (tasks.get(&key), ended.get(&key));
        if record.is_none() && ended.is_none() {
            findings.tasks_lost += 1;
            violations.add(
                "task lost",
                format!(
                    "task {session}/{task_id} was planned but the store has no record of it{}",
                    if plan.config.retention_s > 0 {
                        " and no event reported it"
                    } else {
                        ""
                    }
                ),
            );
            continue;
        }
        match ended {
            None => {
                findings.tasks_lost += 1;
                violations.add(
                    "task not terminal",
                    format!(
                        "task {session}/{task_id} never reached a terminal outcome (it is {:?})",
                        record.map(|record| &record.state)
                    ),
                );
            }
            Some(Ended { outcome, .. }) if !task.expect.accepts(outcome) => {
                findings.outcome_mismatches += 1;
                violations.add(
                    "outcome mismatch",
                    format!(
                        "task {session}/{task_id} ended {outcome}, the plan expects {}",
                        task.expect.name()
                    ),
                );
            }
            Some(Ended { pruned, .. }) => findings.tasks_pruned += u64::from(*pruned),
        }
    }

    for session in &plan.sessions {
        let id = session.id.as_str();
        let Some(record) = records.get(id) else {
            violations.add(
                "session lost",
                format!("session {id} was planned but the store has no record of it"),
            );
            continue;
        };
        let session_entries = entries.remove(id).unwrap_or_default();
        check_session(
            plan,
            session,
            record,
            &ended,
            &session_entries,
            &mut findings,
            &mut violations,
        );
    }

    // Leftovers (item 6): a complete file after every delivery committed and the
    // sessions restarted is a file the library forgot to remove.
    findings.leftover_files = facts.leftover_files.len() as u64;
    findings.partial_files = facts.partial_files.len() as u64;
    for file in &facts.leftover_files {
        violations.add(
            "leftover file",
            format!("downloads/{file} is still there after its delivery committed"),
        );
    }

    // Uploads at the origin.
    if let Some(origin) = &facts.origin {
        findings.upload_duplicates_at_origin = origin.duplicate_uploads_suppressed;
        if origin.upload_mismatches > 0 {
            violations.add(
                "upload mismatch",
                format!(
                    "the origin received {} uploads whose bytes did not match",
                    origin.upload_mismatches
                ),
            );
        }
        for ((session, task_id), (_, task)) in &planned {
            let (PlannedKind::Upload { .. }, Some(object)) = (&task.kind, &task.object) else {
                continue;
            };
            let succeeded = ended
                .get(&(*session, *task_id))
                .is_some_and(|ended| ended.outcome == "success");
            let stored = origin.uploads_by_object.get(object).copied().unwrap_or(0);
            if succeeded && stored == 0 {
                violations.add(
                    "upload not stored",
                    format!("upload {session}/{task_id} ended success but the origin never stored {object}"),
                );
            }
            if stored > 1 {
                violations.add(
                    "upload stored twice",
                    format!("the origin stored upload {object} {stored} times despite its idempotency key"),
                );
            }
        }
    }

    findings.violations = violations.into_sentences();
    findings
}

/// The per-session checks: items 1 to 4 and the files of item 6.
#[allow(clippy::too_many_arguments)]
fn check_session(
    plan: &Plan,
    session: &super::plan::PlannedSession,
    record: &session_store::SessionRecord,
    ended: &BTreeMap<TaskKey<'_>, Ended<'_>>,
    entries: &[&LedgerEntry],
    findings: &mut Findings,
    violations: &mut Violations,
) {
    let id = session.id.as_str();
    findings.events_expected += record.next_event_seq;
    findings.finish_events_expected += record.generation;

    // Deliveries per seq, in ledger order.
    let mut by_seq: BTreeMap<u64, Vec<&LedgerEntry>> = BTreeMap::new();
    let mut max_first_seq: Option<u64> = None;
    for entry in entries {
        let first = !by_seq.contains_key(&entry.seq);
        by_seq.entry(entry.seq).or_default().push(entry);
        if first {
            if max_first_seq.is_some_and(|max| entry.seq < max) {
                findings.out_of_order_events += 1;
                violations.add(
                    "out of order",
                    format!(
                        "session {id}: event {} reached the delegate after event {}",
                        entry.seq,
                        max_first_seq.unwrap_or(0)
                    ),
                );
            }
            max_first_seq = Some(max_first_seq.map_or(entry.seq, |max| max.max(entry.seq)));
        }
    }
    for (seq, deliveries) in &by_seq {
        if *seq >= record.next_event_seq {
            violations.add(
                "phantom event",
                format!(
                    "session {id}: the ledger has event {seq}, past the outbox's end {}",
                    record.next_event_seq
                ),
            );
            continue;
        }
        findings.events_delivered += 1;
        let extra = deliveries.len() as u64 - 1;
        if extra == 0 {
            continue;
        }
        let completion = matches!(deliveries[0].kind, EntryKind::Completion { .. });
        if completion {
            findings.completions_duplicated += extra;
            violations.add(
                "completion run twice",
                format!(
                    "session {id}: the completion of event {seq} ran {} times",
                    deliveries.len()
                ),
            );
        } else {
            findings.duplicate_events += extra;
            violations.add(
                "duplicate delivery",
                format!(
                    "session {id}: event {seq} ({}) reached the delegate {} times (runs {})",
                    describe(&deliveries[0].kind),
                    deliveries.len(),
                    deliveries
                        .iter()
                        .map(|entry| entry.run.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if deliveries
            .iter()
            .any(|entry| describe(&entry.kind) != describe(&deliveries[0].kind))
        {
            violations.add(
                "inconsistent event",
                format!("session {id}: event {seq} was delivered with different contents"),
            );
        }
    }
    for seq in 0..record.next_event_seq {
        if !by_seq.contains_key(&seq) {
            findings.lost_events += 1;
            violations.add(
                "lost event",
                format!("session {id}: event {seq} was appended but never reached the delegate"),
            );
        }
    }

    // First delivery position of each seq, for "after" checks.
    let first_index: BTreeMap<u64, u64> = by_seq
        .iter()
        .map(|(seq, deliveries)| (*seq, deliveries[0].index))
        .collect();

    // Item 1: each terminal task points to the one event that reported it.
    let mut task_seqs: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (seq, deliveries) in &by_seq {
        if let EntryKind::Task { task, .. } = &deliveries[0].kind {
            task_seqs.entry(task.as_str()).or_default().insert(*seq);
        }
    }
    let mut generation_task_seqs: BTreeMap<u64, Vec<(u64, &str)>> = BTreeMap::new();
    for generation in &session.generations {
        for task in &generation.tasks {
            let Some(task_ended) = ended.get(&(id, task.id.as_str())) else {
                continue;
            };
            let (outcome, event_seq) = (task_ended.outcome, task_ended.event_seq);
            generation_task_seqs
                .entry(task_ended.generation)
                .or_default()
                .push((event_seq, task.id.as_str()));
            let seqs = task_seqs.get(task.id.as_str()).cloned().unwrap_or_default();
            if seqs.len() > 1 {
                violations.add(
                    "two events for one task",
                    format!(
                        "session {id}: task {} was reported by events {seqs:?}",
                        task.id
                    ),
                );
            }
            match by_seq.get(&event_seq).map(|d| &d[0]) {
                Some(LedgerEntry {
                    kind:
                        EntryKind::Task {
                            task: reported,
                            outcome: delivered_outcome,
                            file,
                        },
                    generation: delivered_generation,
                    ..
                }) => {
                    if reported != &task.id
                        || delivered_outcome != outcome
                        || *delivered_generation != task_ended.generation
                    {
                        violations.add(
                            "event does not match its task",
                            format!(
                                "session {id}: event {event_seq} reported task {reported} {delivered_outcome} \
                                 (generation {delivered_generation}); the store says task {} {outcome} (generation {})",
                                task.id, task_ended.generation
                            ),
                        );
                    }
                    check_file(id, task, outcome, file.as_ref(), by_seq[&event_seq].as_slice(), findings, violations);
                }
                Some(other) => violations.add(
                    "event does not match its task",
                    format!(
                        "session {id}: task {} points to event {event_seq}, which was delivered as {}",
                        task.id,
                        describe(&other.kind)
                    ),
                ),
                // Counted as a lost event above.
                None => {}
            }
        }
    }

    // Item 3: one "did finish events" per store generation, after its last task event.
    let mut finish_seqs: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (seq, deliveries) in &by_seq {
        if deliveries[0].kind == EntryKind::DidFinish {
            finish_seqs
                .entry(deliveries[0].generation)
                .or_default()
                .insert(*seq);
        }
    }
    for generation in 1..=record.generation {
        let seqs = finish_seqs.remove(&generation).unwrap_or_default();
        findings.finish_events_delivered += seqs.len() as u64;
        let Some(&finish_seq) = seqs.iter().next() else {
            violations.add(
                "did finish events missing",
                format!(
                    "session {id}: generation {generation} never delivered \"did finish events\""
                ),
            );
            continue;
        };
        if seqs.len() > 1 {
            violations.add(
                "did finish events twice",
                format!("session {id}: generation {generation} delivered \"did finish events\" as events {seqs:?}"),
            );
        }
        let finish_index = first_index.get(&finish_seq).copied().unwrap_or(0);
        for (task_seq, task) in generation_task_seqs.get(&generation).into_iter().flatten() {
            let task_index = first_index.get(task_seq).copied();
            if *task_seq > finish_seq || task_index.is_some_and(|index| index > finish_index) {
                violations.add(
                    "did finish events early",
                    format!(
                        "session {id}: \"did finish events\" of generation {generation} (event {finish_seq}) \
                         came before the event of task {task} (event {task_seq})"
                    ),
                );
            }
        }
    }
    for (generation, seqs) in finish_seqs {
        findings.finish_events_delivered += seqs.len() as u64;
        violations.add(
            "did finish events of an unknown generation",
            format!("session {id}: \"did finish events\" delivered for generation {generation}, past the store's {}", record.generation),
        );
    }

    // Item 4: each planned generation's completion ran once, after "did finish events"
    // of its store generation and after every one of its tasks' events.
    let mut completions: BTreeMap<u64, Vec<&LedgerEntry>> = BTreeMap::new();
    for entry in entries {
        let EntryKind::Completion { name, payload } = &entry.kind else {
            continue;
        };
        match Plan::parse_completion_payload(payload) {
            Some((session_named, generation))
                if session_named == id
                    && session.generations.iter().any(|g| g.number == generation)
                    && plan
                        .completion_for(id, generation)
                        .is_some_and(|(stored, _)| stored == name) =>
            {
                completions.entry(generation).or_default().push(entry);
            }
            _ => violations.add(
                "unplanned completion",
                format!(
                    "session {id}: completion {name:?} ran with payload {:?}, which the plan never stored here",
                    String::from_utf8_lossy(payload)
                ),
            ),
        }
    }
    for generation in &session.generations {
        let runs = completions.remove(&generation.number).unwrap_or_default();
        if plan.completion_for(id, generation.number).is_none() {
            // A test kit batch without a completion: nothing may run (a run would have
            // been reported as unplanned above).
            continue;
        }
        let Some(first) = runs.first() else {
            violations.add(
                "completion missing",
                format!(
                    "session {id}: the completion of generation {} never ran",
                    generation.number
                ),
            );
            continue;
        };
        findings.completions_run += 1;
        // Two runs under one seq are counted with the duplicate deliveries above.
        let distinct: BTreeSet<u64> = runs.iter().map(|entry| entry.seq).collect();
        if distinct.len() > 1 {
            findings.completions_duplicated += distinct.len() as u64 - 1;
            violations.add(
                "completion run twice",
                format!(
                    "session {id}: the completion of generation {} ran as events {distinct:?}",
                    generation.number
                ),
            );
        }
        let finish = by_seq.iter().find(|(_, deliveries)| {
            deliveries[0].kind == EntryKind::DidFinish
                && deliveries[0].generation == first.generation
        });
        let mut early: Vec<String> = match finish {
            None => vec![format!(
                "no \"did finish events\" of store generation {} was delivered",
                first.generation
            )],
            Some((finish_seq, deliveries))
                if *finish_seq > first.seq || deliveries[0].index > first.index =>
            {
                vec![format!(
                    "it ran before \"did finish events\" (event {finish_seq})"
                )]
            }
            Some(_) => Vec::new(),
        };
        // Its own batch's tasks, whichever store generation they ran in: a batch that
        // joined a running generation brings its completion along, and it must still
        // come after every one of them.
        for task in &generation.tasks {
            let Some(task_ended) = ended.get(&(id, task.id.as_str())) else {
                continue;
            };
            let event_seq = task_ended.event_seq;
            let task_index = first_index.get(&event_seq).copied();
            if event_seq > first.seq || task_index.is_none_or(|index| index > first.index) {
                early.push(format!(
                    "it ran before the event of its batch's task {} (event {event_seq})",
                    task.id
                ));
            }
        }
        if !early.is_empty() {
            findings.completions_early += 1;
            violations.add(
                "completion early",
                format!(
                    "session {id}: the completion of generation {} (event {}) ran early: {}",
                    generation.number,
                    first.seq,
                    early.join("; ")
                ),
            );
        }
    }
}

/// Item 6 for one delivered task event: the file existed at delivery with the right bytes.
fn check_file(
    session: &str,
    task: &PlannedTask,
    outcome: &str,
    file: Option<&super::ledger::FileFact>,
    deliveries: &[&LedgerEntry],
    findings: &mut Findings,
    violations: &mut Violations,
) {
    let PlannedKind::Download { sha256, .. } = &task.kind else {
        return;
    };
    if outcome != "success" {
        return;
    }
    let Some(_) = file else {
        findings.files_bad += 1;
        violations.add(
            "download without a file",
            format!(
                "session {session}: task {} succeeded but its event carried no file",
                task.id
            ),
        );
        return;
    };
    // Every delivery of the event (one, when all is well) must have seen the file.
    for delivery in deliveries {
        let EntryKind::Task {
            file: Some(fact), ..
        } = &delivery.kind
        else {
            continue;
        };
        findings.files_checked += 1;
        let problem = if !fact.existed {
            Some("did not exist when the delegate ran".to_owned())
        } else {
            match (sha256, &fact.sha256) {
                (Some(expected), Some(found)) if !expected.eq_ignore_ascii_case(found) => {
                    Some(format!(
                        "had SHA-256 {found} ({} bytes), the origin's is {expected}",
                        fact.bytes.unwrap_or(0)
                    ))
                }
                (Some(_), None) => Some("could not be read".to_owned()),
                _ => None,
            }
        };
        if let Some(problem) = problem {
            findings.files_bad += 1;
            violations.add(
                "bad file",
                format!(
                    "session {session}: the file of task {} ({}) {problem}",
                    task.id, fact.path
                ),
            );
        }
    }
}

fn describe(kind: &EntryKind) -> String {
    match kind {
        EntryKind::Task { task, outcome, .. } => format!("task {task} {outcome}"),
        EntryKind::DidFinish => "\"did finish events\"".to_owned(),
        EntryKind::Completion { name, .. } => format!("completion {name}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use session_store::{
        Outcome, ResponseSummary, SessionConfig, SessionId, SessionRecord, SessionState, TaskId,
        TaskKind,
    };

    use super::*;
    use crate::testkit::{BatchWork, SessionWork, TaskWork, Workload};

    /// A test kit plan: session `s`, batch 1 (task `a`) stores completion `done` with an
    /// application payload, batch 2 (task `b`) stores none.
    fn plan() -> Plan {
        Workload::new(vec![SessionWork::new(
            "s",
            vec![
                BatchWork::new(vec![TaskWork::data("a", 10)])
                    .with_completion("done", b"first".to_vec()),
                BatchWork::new(vec![TaskWork::data("b", 10)]),
            ],
        )])
        .plan(1, "http://127.0.0.1:1", 1, Path::new("/run"))
    }

    fn entry(index: u64, generation: u64, seq: u64, kind: EntryKind) -> LedgerEntry {
        LedgerEntry {
            index,
            run: 1,
            session: "s".to_owned(),
            generation,
            seq,
            kind,
        }
    }

    fn task_entry(index: u64, generation: u64, seq: u64, task: &str) -> LedgerEntry {
        let kind = EntryKind::Task {
            task: task.to_owned(),
            outcome: "success".to_owned(),
            file: None,
        };
        entry(index, generation, seq, kind)
    }

    fn completion(name: &str, generation: u64) -> EntryKind {
        EntryKind::Completion {
            name: name.to_owned(),
            payload: Plan::stored_completion_payload("s", generation, b"first"),
        }
    }

    /// Events 0..5: a, did finish, the completion (generation 1); b, did finish (2).
    fn clean() -> Facts {
        let id = SessionId::new("s").expect("a valid id");
        let session = SessionRecord {
            state: SessionState::Finished,
            generation: 2,
            next_event_seq: 5,
            delivered_seq: 5,
            completion_generation: 1,
            ..SessionRecord::new(id.clone(), SessionConfig::default(), 0)
        };
        let task = |name: &str, generation: u64, event_seq: u64| TaskRecord {
            session: id.clone(),
            id: TaskId::new(name).expect("a valid id"),
            generation,
            kind: TaskKind::Data,
            request: Vec::new(),
            created_ms: 0,
            state: TaskState::Completed {
                outcome: Outcome::Success(ResponseSummary {
                    status: 200,
                    headers: Vec::new(),
                    body: Vec::new(),
                    file: None,
                    bytes: 10,
                }),
                event_seq,
                finished_ms: 0,
            },
            wait: None,
            incarnation: 0,
        };
        Facts {
            ledger: vec![
                task_entry(0, 1, 0, "a"),
                entry(1, 1, 1, EntryKind::DidFinish),
                entry(2, 1, 2, completion("done", 1)),
                task_entry(3, 2, 3, "b"),
                entry(4, 2, 4, EntryKind::DidFinish),
            ],
            sessions: vec![session],
            tasks: vec![task("a", 1, 0), task("b", 2, 3)],
            ..Facts::default()
        }
    }

    /// The completions a test kit plan stores are checked by their own names: the
    /// clean run passes with one completion expected, and no completion is expected of
    /// the batch that stores none.
    #[test]
    fn workload_completions_pass_by_their_names() {
        let findings = verify(&plan(), &clean());
        assert!(findings.passed(), "{:#?}", findings.violations);
        assert_eq!(findings.completions_expected, 1);
        assert_eq!(findings.completions_run, 1);
        assert_eq!(findings.events_delivered, 5);
    }

    /// A completion that ran under another name than the batch stored, or for a batch
    /// that stores none, is caught.
    #[test]
    fn wrong_or_unstored_completions_are_caught() {
        let mut renamed = clean();
        renamed.ledger[2] = entry(2, 1, 2, completion("other", 1));
        let findings = verify(&plan(), &renamed);
        assert!(
            findings
                .violations
                .iter()
                .any(|v| v.contains("\"other\" ran")),
            "{:#?}",
            findings.violations
        );
        assert!(
            findings
                .violations
                .iter()
                .any(|v| v.contains("generation 1 never ran")),
            "{:#?}",
            findings.violations
        );

        let mut unstored = clean();
        unstored.sessions[0].next_event_seq = 6;
        unstored.sessions[0].delivered_seq = 6;
        unstored.ledger.push(entry(5, 2, 5, completion("done", 2)));
        let findings = verify(&plan(), &unstored);
        assert!(
            findings
                .violations
                .iter()
                .any(|v| v.contains("which the plan never stored here")),
            "{:#?}",
            findings.violations
        );
    }
}
