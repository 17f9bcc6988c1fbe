//! `session-harness inspect --dir DIR`: what a store holds, for a person or (`--json`) a
//! program, read while its owner may be running; and the list of unfinished work the
//! orchestrator quotes when the last worker does not finish.
//!
//! `DIR` is a library root (the directory given to `Sessions::builder`, holding
//! `data.mdb`) or a harness run directory (its store in `DIR/store`, beside `plan.json`).
//! The store is opened read-only ([`Store::open_read_only`]) and read in bounded pieces,
//! each session from one snapshot, so a store of a million sessions is listed in bounded
//! memory while its owner goes on. A harness run also gets the plan-aware details: every
//! task, the ledger's entries per session and the planned sessions never created.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use session_store::{
    CheckReport, DeliveryFailure, ErrorKind, EventBody, EventRecord, IDENTITY_FILE_NAME,
    SNAPSHOT_AGE_MS_MAX, SessionId, SessionRecord, SessionState, Snapshot, Store, StoreSize,
    TaskRecord, TaskState, WaitReason,
};

use super::facts::{Facts, download_files};
use super::ledger::{EntryKind, LEDGER_TABLE, Ledger};
use super::plan::Plan;
use super::worker::STORE_DIR;

/// Sessions read per call (each call through a snapshot young enough).
const SESSIONS_PER_PIECE: usize = 256;
/// Tasks read per call.
const TASKS_PER_PIECE: usize = 1024;
/// Undelivered events, dead letters and waits listed per session (all are counted).
const LISTED_PER_SESSION_MAX: usize = 20;
/// A snapshot older than this is replaced before the next session is read: well under
/// the store's maximum snapshot age.
const SNAPSHOT_RENEW_AGE: Duration = Duration::from_millis(SNAPSHOT_AGE_MS_MAX / 4);
/// LMDB's data file in a store directory.
const DATA_FILE_NAME: &str = "data.mdb";

/// Options of `session-harness inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// A library root (the directory given to `Sessions::builder`, holding `data.mdb`)
    /// or a run directory kept with `crash --dir` (its store is `DIR/store`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Write the listing as one JSON object to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check the store's files first: every page and every record, with
    /// `session_store::check_dir`; a damaged store exits 1 without the listing. The check
    /// needs the store closed: while its owner runs, nothing is listed and the exit is 2.
    #[arg(long)]
    pub check: bool,
}

/// Where the store of an inspected directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// A library root: the store is the directory itself.
    Library {
        /// The directory.
        store: PathBuf,
    },
    /// A harness run directory: the store is `dir/store`.
    HarnessRun {
        /// The run directory.
        dir: PathBuf,
        /// Its store.
        store: PathBuf,
    },
}

impl Root {
    /// Tells a library root from a harness run directory by where the store's files are.
    ///
    /// # Errors
    /// Neither holds a store.
    pub fn locate(dir: &Path) -> anyhow::Result<Root> {
        let holds_store =
            |dir: &Path| dir.join(DATA_FILE_NAME).exists() || dir.join(IDENTITY_FILE_NAME).exists();
        if holds_store(dir) {
            return Ok(Root::Library {
                store: dir.to_path_buf(),
            });
        }
        let store = dir.join(STORE_DIR);
        if holds_store(&store) {
            return Ok(Root::HarnessRun {
                dir: dir.to_path_buf(),
                store,
            });
        }
        anyhow::bail!(
            "{} holds no store: neither {DATA_FILE_NAME} (a library root) nor \
             {STORE_DIR}/{DATA_FILE_NAME} (a harness run directory) is there",
            dir.display()
        )
    }

    /// The store's directory.
    pub fn store_dir(&self) -> &Path {
        match self {
            Root::Library { store } | Root::HarnessRun { store, .. } => store,
        }
    }

    /// `library` or `harness_run`.
    pub fn kind(&self) -> &'static str {
        match self {
            Root::Library { .. } => "library",
            Root::HarnessRun { .. } => "harness_run",
        }
    }
}

/// A session's tasks by state, completed ones by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TaskCounts {
    /// Waiting to start.
    pub pending: u64,
    /// A transfer in flight.
    pub running: u64,
    /// Terminal, by outcome.
    pub completed: OutcomeCounts,
}

/// Completed tasks by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    /// `success`.
    pub success: u64,
    /// `rejected`.
    pub rejected: u64,
    /// `failed`.
    pub failed: u64,
    /// `cancelled`.
    pub cancelled: u64,
}

impl TaskCounts {
    fn count(&mut self, state: &TaskState) {
        use session_store::Outcome;
        let completed = &mut self.completed;
        match state {
            TaskState::Pending { .. } => self.pending += 1,
            TaskState::Running { .. } => self.running += 1,
            TaskState::Completed { outcome, .. } => match outcome {
                Outcome::Success(_) => completed.success += 1,
                Outcome::Rejected(_) => completed.rejected += 1,
                Outcome::Failed(_) => completed.failed += 1,
                Outcome::Cancelled => completed.cancelled += 1,
            },
        }
    }

    fn add(&mut self, other: &TaskCounts) {
        self.pending += other.pending;
        self.running += other.running;
        self.completed.success += other.completed.success;
        self.completed.rejected += other.completed.rejected;
        self.completed.failed += other.completed.failed;
        self.completed.cancelled += other.completed.cancelled;
    }

    /// Every terminal task.
    pub fn completed_total(&self) -> u64 {
        let c = &self.completed;
        c.success + c.rejected + c.failed + c.cancelled
    }

    /// Every task.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.completed_total()
    }
}

/// An undelivered event, listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLine {
    /// Its sequence number.
    pub seq: u64,
    /// Its generation.
    pub generation: u64,
    /// What it reports.
    pub what: String,
}

/// A dead-lettered event, listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterLine {
    /// Its sequence number.
    pub seq: u64,
    /// What it reports.
    pub what: String,
    /// Failed delivery attempts before the move.
    pub attempts: u32,
    /// What the last attempt said.
    pub last_error: String,
    /// When it was moved, Unix milliseconds.
    pub moved_ms: u64,
}

/// A pending task waiting for connectivity or storage, listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitLine {
    /// The task.
    pub task: String,
    /// `connectivity` or `storage`.
    pub reason: &'static str,
    /// When the wait began, Unix milliseconds.
    pub since_ms: u64,
    /// Tries that ended in this wait.
    pub tries: u32,
    /// What the last try said.
    pub message: String,
}

/// A task, listed (harness runs only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskLine {
    /// The task.
    pub id: String,
    /// `download`, `upload` or `data`.
    pub kind: String,
    /// Its generation.
    pub generation: u64,
    /// Its state, for a person.
    pub state: String,
}

/// What a harness run adds to a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HarnessSession {
    /// Ledger entries of the session.
    pub ledger_entries: u64,
    /// Of which completions that ran.
    pub completions_ran: u64,
    /// Every task.
    pub tasks: Vec<TaskLine>,
}

/// One session as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    /// The session.
    pub id: String,
    /// `queued`, `running`, `awaiting_events` or `finished`.
    pub state: &'static str,
    /// Its current generation.
    pub generation: u64,
    /// Its tasks by state.
    pub tasks: TaskCounts,
    /// Events appended and not delivered yet.
    pub events_pending: u64,
    /// The first of them, if any.
    pub first_pending_seq: Option<u64>,
    /// The first undelivered events (at most 20).
    pub pending_events: Vec<EventLine>,
    /// Events on the dead-letter list (the session record's count).
    pub dead_letters: u64,
    /// The first of them (at most 20).
    pub dead_letters_listed: Vec<DeadLetterLine>,
    /// The delivery that keeps failing, if one does.
    pub delivery_failure: Option<DeliveryFailure>,
    /// Pending tasks waiting for connectivity or storage.
    pub waits: u64,
    /// The first of them (at most 20).
    pub waits_listed: Vec<WaitLine>,
    /// Completion handlers stored for the open generation, by name.
    pub completions_stored: Vec<String>,
    /// The plan-aware details of a harness run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessSession>,
}

/// Totals over every session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Sessions.
    pub sessions: u64,
    /// Tasks by state.
    pub tasks: TaskCounts,
    /// Undelivered events.
    pub events_pending: u64,
    /// Dead-lettered events.
    pub dead_letters: u64,
    /// Sessions whose delivery keeps failing.
    pub failing_deliveries: u64,
    /// Tasks waiting for connectivity or storage.
    pub waits: u64,
    /// Complete files under `<root>/downloads`.
    pub files_left: u64,
    /// `.part` and `.validator` files there.
    pub partial_files: u64,
    /// Ledger entries (harness runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_entries: Option<u64>,
    /// Ledger entries of completions (harness runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completions_ran: Option<u64>,
}

impl Totals {
    fn add(&mut self, session: &SessionSummary) {
        self.sessions += 1;
        self.tasks.add(&session.tasks);
        self.events_pending += session.events_pending;
        self.dead_letters += session.dead_letters;
        self.failing_deliveries += u64::from(session.delivery_failure.is_some());
        self.waits += session.waits;
    }
}

fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Queued => "queued",
        SessionState::Running => "running",
        SessionState::AwaitingEvents => "awaiting_events",
        SessionState::Finished => "finished",
    }
}

fn wait_reason(reason: WaitReason) -> &'static str {
    match reason {
        WaitReason::Connectivity => "connectivity",
        WaitReason::Storage => "storage",
    }
}

fn task_state(task: &TaskRecord) -> String {
    match &task.state {
        TaskState::Pending {
            attempt,
            not_before_ms,
        } => format!("pending (attempts {attempt}, not before {not_before_ms} ms)"),
        TaskState::Running { attempt } => format!("running (attempt {attempt})"),
        TaskState::Completed {
            outcome, event_seq, ..
        } => {
            format!("{} (event {event_seq})", outcome.name())
        }
    }
}

fn event_text(body: &EventBody) -> String {
    match body {
        EventBody::TaskCompleted { task, outcome, .. } => {
            format!("task {task} {}", outcome.name())
        }
        EventBody::DidFinishEvents => "did finish events".to_owned(),
        EventBody::Completion(completion) => format!(
            "completion {} ({})",
            completion.name,
            String::from_utf8_lossy(&completion.payload)
        ),
    }
}

fn event_line(event: &EventRecord) -> EventLine {
    EventLine {
        seq: event.seq,
        generation: event.generation,
        what: event_text(&event.body),
    }
}

/// What a harness run directory adds: the plan and the ledger's counts per session.
struct HarnessFacts {
    plan: Option<Plan>,
    /// Ledger entries and completions that ran, per session.
    ledger: BTreeMap<String, (u64, u64)>,
}

impl HarnessFacts {
    fn read(root: &Root, store: &Store) -> anyhow::Result<Option<HarnessFacts>> {
        let Root::HarnessRun { dir, .. } = root else {
            return Ok(None);
        };
        let plan = match Plan::load(dir) {
            Ok(plan) => Some(plan),
            Err(error) => {
                eprintln!("session-harness: inspect goes on without the plan: {error:#}");
                None
            }
        };
        let mut ledger = BTreeMap::new();
        // A run whose worker never delivered anything may have no ledger table yet.
        if let Ok(table) = Ledger::new(store) {
            let snapshot = store.snapshot()?;
            for entry in table.entries(&snapshot)? {
                let counts: &mut (u64, u64) = ledger.entry(entry.session).or_default();
                counts.0 += 1;
                counts.1 += u64::from(matches!(entry.kind, EntryKind::Completion { .. }));
            }
        } else {
            eprintln!("session-harness: the store has no {LEDGER_TABLE} table");
        }
        Ok(Some(HarnessFacts { plan, ledger }))
    }
}

/// A snapshot renewed between sessions once it gets old.
struct Reader<'s> {
    store: &'s Store,
    snapshot: Snapshot,
    begun: Instant,
}

impl<'s> Reader<'s> {
    fn new(store: &'s Store) -> session_store::Result<Reader<'s>> {
        Ok(Reader {
            store,
            snapshot: store.snapshot()?,
            begun: Instant::now(),
        })
    }

    fn renew(&mut self) -> session_store::Result<()> {
        self.snapshot = self.store.snapshot()?;
        self.begun = Instant::now();
        Ok(())
    }

    /// The snapshot, replaced first if it has lived past [`SNAPSHOT_RENEW_AGE`].
    fn young(&mut self) -> session_store::Result<&Snapshot> {
        if self.begun.elapsed() > SNAPSHOT_RENEW_AGE {
            self.renew()?;
        }
        Ok(&self.snapshot)
    }
}

/// The tasks of a session, counted, with the waits and (harness runs) every task listed.
fn summarize_tasks(
    snapshot: &Snapshot,
    session: &SessionId,
    summary: &mut SessionSummary,
) -> session_store::Result<()> {
    let mut after = None;
    loop {
        let piece = snapshot.tasks_from(session, after.as_ref(), TASKS_PER_PIECE)?;
        for task in &piece {
            summary.tasks.count(&task.state);
            if let Some(wait) = &task.wait {
                summary.waits += 1;
                if summary.waits_listed.len() < LISTED_PER_SESSION_MAX {
                    summary.waits_listed.push(WaitLine {
                        task: task.id.to_string(),
                        reason: wait_reason(wait.reason),
                        since_ms: wait.since_ms,
                        tries: wait.tries,
                        message: wait.message.clone(),
                    });
                }
            }
            if let Some(harness) = &mut summary.harness {
                harness.tasks.push(TaskLine {
                    id: task.id.to_string(),
                    kind: format!("{:?}", task.kind).to_lowercase(),
                    generation: task.generation,
                    state: task_state(task),
                });
            }
        }
        match piece.last() {
            Some(last) if piece.len() == TASKS_PER_PIECE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// One session, read through one snapshot.
fn summarize(
    snapshot: &Snapshot,
    record: &SessionRecord,
    harness: Option<&HarnessFacts>,
) -> session_store::Result<SessionSummary> {
    let events_pending = record.next_event_seq - record.delivered_seq;
    let mut summary = SessionSummary {
        id: record.id.to_string(),
        state: state_name(record.state),
        generation: record.generation,
        tasks: TaskCounts::default(),
        events_pending,
        first_pending_seq: record
            .has_undelivered_events()
            .then_some(record.delivered_seq),
        pending_events: Vec::new(),
        dead_letters: record.dead_letters,
        dead_letters_listed: Vec::new(),
        delivery_failure: record.delivery_failure.clone(),
        waits: 0,
        waits_listed: Vec::new(),
        completions_stored: record.completions.iter().map(|c| c.name.clone()).collect(),
        harness: harness.map(|facts| {
            let (ledger_entries, completions_ran) = facts
                .ledger
                .get(record.id.as_str())
                .copied()
                .unwrap_or_default();
            HarnessSession {
                ledger_entries,
                completions_ran,
                tasks: Vec::new(),
            }
        }),
    };
    summarize_tasks(snapshot, &record.id, &mut summary)?;
    summary.pending_events = snapshot
        .events(&record.id, record.delivered_seq, LISTED_PER_SESSION_MAX)?
        .iter()
        .map(event_line)
        .collect();
    summary.dead_letters_listed = snapshot
        .dead_letters(&record.id, 0, LISTED_PER_SESSION_MAX)?
        .into_iter()
        .map(|dead| DeadLetterLine {
            seq: dead.event.seq,
            what: event_text(&dead.event.body),
            attempts: dead.attempts,
            last_error: dead.last_error,
            moved_ms: dead.moved_ms,
        })
        .collect();
    Ok(summary)
}

/// A session summarized through a young snapshot; one taken anew if the first grew too
/// old half way (a session with very many tasks). `None` if the session is gone by then.
fn summarize_young(
    reader: &mut Reader<'_>,
    record: SessionRecord,
    harness: Option<&HarnessFacts>,
) -> session_store::Result<Option<SessionSummary>> {
    match summarize(reader.young()?, &record, harness) {
        Err(error) if error.kind() == ErrorKind::Busy => {
            reader.renew()?;
            match reader.snapshot.session(&record.id)? {
                Some(record) => summarize(&reader.snapshot, &record, harness).map(Some),
                None => Ok(None),
            }
        }
        other => other.map(Some),
    }
}

/// What goes at the top of the listing.
#[derive(Debug, Serialize)]
struct Head<'a> {
    root: &'a Path,
    kind: &'static str,
    store_dir: &'a Path,
    identity: Option<&'a str>,
    store: &'a StoreSize,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<&'a CheckReport>,
}

/// The listing, written as it is read: text for a person, or one JSON object.
struct Printer<W: Write> {
    out: W,
    json: bool,
    sessions_written: u64,
}

impl<W: Write> Printer<W> {
    fn begin(&mut self, head: &Head<'_>) -> anyhow::Result<()> {
        if self.json {
            let text = serde_json::to_string(head)?;
            let open = text
                .strip_suffix('}')
                .context("internal: the head is not a JSON object")?;
            write!(self.out, "{open},\"sessions\":[")?;
            return Ok(());
        }
        if let Some(report) = head.check {
            write!(self.out, "{}", render_check(report))?;
        }
        write!(self.out, "{}", render_head(head))?;
        Ok(())
    }

    fn session(&mut self, session: &SessionSummary) -> anyhow::Result<()> {
        if self.json {
            if self.sessions_written > 0 {
                write!(self.out, ",")?;
            }
            serde_json::to_writer(&mut self.out, session)?;
        } else {
            write!(self.out, "{}", render_session(session))?;
        }
        self.sessions_written += 1;
        Ok(())
    }

    fn end(&mut self, never_created: &[String], totals: &Totals) -> anyhow::Result<()> {
        if self.json {
            let never_created = serde_json::to_string(never_created)?;
            let totals = serde_json::to_string(totals)?;
            writeln!(
                self.out,
                "],\"planned_never_created\":{never_created},\"totals\":{totals}}}"
            )?;
        } else {
            for id in never_created {
                writeln!(self.out, "session {id}: planned, never created")?;
            }
            write!(self.out, "{}", render_totals(totals))?;
        }
        self.out.flush()?;
        Ok(())
    }
}

fn render_head(head: &Head<'_>) -> String {
    let store = head.store;
    let kind = match head.kind {
        "harness_run" => "harness run",
        _ => "library root",
    };
    let mut out = format!(
        "store {} ({kind}{}): data file {} bytes, page {} bytes, {} pages in use of {} up to the last page\n",
        head.store_dir.display(),
        head.identity
            .map(|id| format!(", identity {id}"))
            .unwrap_or_default(),
        store.data_bytes,
        store.page_bytes,
        store.pages_in_use,
        store.last_page + 1,
    );
    for table in &store.tables {
        let _ = writeln!(
            out,
            "  table {}: {} entries, {} pages",
            table.name, table.entries, table.pages
        );
    }
    out
}

fn render_session(session: &SessionSummary) -> String {
    let mut out = render_session_line(session);
    render_delivery_and_waits(session, &mut out);
    if let Some(harness) = &session.harness {
        for task in &harness.tasks {
            let _ = writeln!(
                out,
                "  task {:<8} {:<8} generation {}  {}",
                task.id, task.kind, task.generation, task.state
            );
        }
    }
    render_events(session, &mut out);
    out
}

/// The session's first line: state, generation, tasks, events, dead letters.
fn render_session_line(session: &SessionSummary) -> String {
    let tasks = &session.tasks;
    let done = &tasks.completed;
    let mut out = format!(
        "session {}: {}, generation {}, tasks {} pending, {} running, {} completed \
         ({} success, {} rejected, {} failed, {} cancelled); {} undelivered events{}; {} dead letters",
        session.id,
        session.state,
        session.generation,
        tasks.pending,
        tasks.running,
        tasks.completed_total(),
        done.success,
        done.rejected,
        done.failed,
        done.cancelled,
        session.events_pending,
        session
            .first_pending_seq
            .map(|seq| format!(" from {seq}"))
            .unwrap_or_default(),
        session.dead_letters,
    );
    if let Some(harness) = &session.harness {
        let _ = write!(
            out,
            "; {} ledger entries ({} completions)",
            harness.ledger_entries, harness.completions_ran
        );
    }
    for name in &session.completions_stored {
        let _ = write!(out, "; completion stored: {name}");
    }
    out.push('\n');
    out
}

/// The failing delivery and the waiting tasks.
fn render_delivery_and_waits(session: &SessionSummary, out: &mut String) {
    if let Some(failure) = &session.delivery_failure {
        let _ = writeln!(
            out,
            "  delivery failing: event {}, {} attempts since {} ms, next at {} ms: {}",
            failure.seq,
            failure.attempts,
            failure.since_ms,
            failure.next_attempt_ms,
            failure.last_error
        );
    }
    for wait in &session.waits_listed {
        let _ = writeln!(
            out,
            "  task {} waits for {} since {} ms ({} tries): {}",
            wait.task, wait.reason, wait.since_ms, wait.tries, wait.message
        );
    }
    if session.waits > session.waits_listed.len() as u64 {
        let _ = writeln!(out, "  ... {} waiting tasks in all", session.waits);
    }
}

/// The undelivered and the dead-lettered events.
fn render_events(session: &SessionSummary, out: &mut String) {
    for event in &session.pending_events {
        let _ = writeln!(
            out,
            "  undelivered event {} (generation {}): {}",
            event.seq, event.generation, event.what
        );
    }
    if session.events_pending > session.pending_events.len() as u64 {
        let _ = writeln!(
            out,
            "  ... {} undelivered events in all",
            session.events_pending
        );
    }
    for dead in &session.dead_letters_listed {
        let _ = writeln!(
            out,
            "  dead letter: event {} ({}), {} attempts, moved at {} ms: {}",
            dead.seq, dead.what, dead.attempts, dead.moved_ms, dead.last_error
        );
    }
    if session.dead_letters > session.dead_letters_listed.len() as u64 {
        let _ = writeln!(out, "  ... {} dead letters in all", session.dead_letters);
    }
}

fn render_totals(totals: &Totals) -> String {
    let tasks = &totals.tasks;
    let mut out = format!(
        "{} sessions, {} tasks ({} pending, {} running, {} completed), {} undelivered events, \
         {} dead letters, {} failing deliveries, {} waiting tasks, {} files left in downloads, \
         {} partial files",
        totals.sessions,
        tasks.total(),
        tasks.pending,
        tasks.running,
        tasks.completed_total(),
        totals.events_pending,
        totals.dead_letters,
        totals.failing_deliveries,
        totals.waits,
        totals.files_left,
        totals.partial_files,
    );
    if let (Some(entries), Some(completions)) = (totals.ledger_entries, totals.completions_ran) {
        let _ = write!(
            out,
            ", {entries} ledger entries ({completions} completions)"
        );
    }
    out.push('\n');
    out
}

/// The result of `inspect --check`: the store passed; what it holds.
pub fn render_check(report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store check: ok in {} ms: data file {} bytes, page {} bytes, meta page {} (transaction {}), \
         pages {} in use, {} free, {} unaccounted; {} sessions, {} tasks, {} events, \
         {} dead letters, {} task expiry entries read and valid",
        report.elapsed_ms,
        report.data_bytes,
        report.page_bytes,
        report.meta_page,
        report.txn_id,
        report.pages_in_use,
        report.pages_free,
        report.pages_unaccounted,
        report.sessions,
        report.tasks,
        report.events,
        report.dead_letters,
        report.task_expiries
    );
    for table in &report.tables {
        let _ = writeln!(
            out,
            "  table {}: {} entries, {} pages",
            table.name, table.entries, table.pages
        );
    }
    out
}

/// Runs `--check`: the report, or the exit code that ends the command.
fn check(root: &Root, json: bool) -> Result<CheckReport, ExitCode> {
    let store = root.store_dir();
    match session_store::check_dir(store) {
        Ok(report) => Ok(report),
        Err(error) if error.kind() == ErrorKind::Locked => {
            eprintln!(
                "session-harness: cannot check {}: the store is open in a running process \
                 (its owner); stop it to check every page and record, or inspect without --check",
                store.display()
            );
            Err(ExitCode::from(2))
        }
        Err(error) => {
            if json {
                let failed = serde_json::json!({
                    "root": root_dir(root),
                    "kind": root.kind(),
                    "check": { "passed": false, "error": error.to_string() },
                });
                println!("{failed}");
            } else {
                println!("store check of {}: FAILED: {error}", store.display());
            }
            Err(ExitCode::from(1))
        }
    }
}

fn root_dir(root: &Root) -> &Path {
    match root {
        Root::Library { store } => store,
        Root::HarnessRun { dir, .. } => dir,
    }
}

/// Walks every session in bounded pieces, printing each and adding it to the totals;
/// returns the identifiers seen (harness runs only, to find the planned sessions never
/// created; a library root may have a million).
fn list_sessions<W: Write>(
    reader: &mut Reader<'_>,
    harness: Option<&HarnessFacts>,
    printer: &mut Printer<W>,
    totals: &mut Totals,
) -> anyhow::Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    let mut after: Option<SessionId> = None;
    loop {
        let piece = reader
            .young()?
            .sessions_from(after.as_ref(), SESSIONS_PER_PIECE)?;
        let Some(last) = piece.last() else {
            return Ok(seen);
        };
        after = Some(last.id.clone());
        for record in piece {
            if harness.is_some() {
                seen.insert(record.id.to_string());
            }
            if let Some(summary) = summarize_young(reader, record, harness)? {
                totals.add(&summary);
                printer.session(&summary)?;
            }
        }
    }
}

/// Runs `session-harness inspect`.
///
/// # Errors
/// A directory without a store, or a store that cannot be read (exit 2).
pub fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    if let super::RunStore::Postgres { url, schema } = super::RunStore::load(&args.dir)? {
        anyhow::bail!(
            "inspect reads LMDB stores without disturbing their owner; this run kept its \
             records in PostgreSQL (schema {schema} at {url}): re-check it with verify --dir, \
             or read the tables with psql"
        );
    }
    let root = Root::locate(&args.dir)?;
    let report = if args.check {
        match check(&root, args.json) {
            Ok(report) => Some(report),
            Err(code) => return Ok(code),
        }
    } else {
        None
    };
    let store_dir = root.store_dir();
    let store = Store::open_read_only(store_dir)
        .with_context(|| format!("opening the store in {} read-only", store_dir.display()))?;
    let harness = HarnessFacts::read(&root, &store)?;
    let mut reader = Reader::new(&store)?;
    let size = reader.young()?.size()?;
    let mut printer = Printer {
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        json: args.json,
        sessions_written: 0,
    };
    printer.begin(&Head {
        root: root_dir(&root),
        kind: root.kind(),
        store_dir,
        identity: store.identity().map(|identity| identity.id.as_str()),
        store: &size,
        check: report.as_ref(),
    })?;
    let mut totals = Totals::default();
    let seen = list_sessions(&mut reader, harness.as_ref(), &mut printer, &mut totals)?;
    drop(reader);
    let (files, partial) = download_files(&store_dir.join("downloads"));
    totals.files_left = files.len() as u64;
    totals.partial_files = partial.len() as u64;
    let mut never_created = Vec::new();
    if let Some(facts) = &harness {
        totals.ledger_entries = Some(facts.ledger.values().map(|c| c.0).sum());
        totals.completions_ran = Some(facts.ledger.values().map(|c| c.1).sum());
        if let Some(plan) = &facts.plan {
            never_created.extend(
                plan.sessions
                    .iter()
                    .filter(|planned| !seen.contains(&planned.id))
                    .map(|planned| planned.id.clone()),
            );
        }
    }
    printer.end(&never_created, &totals)?;
    Ok(ExitCode::SUCCESS)
}

/// One line per session of the plan that has not finished all its work: its state, its
/// open tasks and its undelivered events.
///
/// # Errors
/// The store cannot be read.
pub fn unfinished(dir: &Path, plan: &Plan) -> anyhow::Result<Vec<String>> {
    let facts = Facts::collect(dir, None)?;
    let mut lines = Vec::new();
    for planned in &plan.sessions {
        let Some(session) = facts.sessions.iter().find(|s| s.id.as_str() == planned.id) else {
            lines.push(format!("{} never created", planned.id));
            continue;
        };
        let completions = facts
            .ledger
            .iter()
            .filter(|entry| {
                entry.session == planned.id && matches!(entry.kind, EntryKind::Completion { .. })
            })
            .count();
        if session.state == SessionState::Finished && completions >= planned.generations.len() {
            continue;
        }
        let open: Vec<String> = facts
            .tasks
            .iter()
            .filter(|t| t.session == session.id && !t.state.is_terminal())
            .map(|t| format!("{} {}", t.id, task_state(t)))
            .collect();
        let waiting: Vec<String> = facts
            .undelivered
            .iter()
            .filter(|e| e.session == session.id)
            .map(|e| format!("{}: {}", e.seq, event_text(&e.body)))
            .collect();
        lines.push(format!(
            "{} {:?} generation {} ({completions} of {} completions ran; open tasks [{}]; undelivered [{}])",
            session.id,
            session.state,
            session.generation,
            planned.generations.len(),
            open.join(", "),
            waiting.join(", ")
        ));
    }
    Ok(lines)
}
