//! `session-harness inspect --dir DIR`: the sessions, tasks and undelivered events of a
//! run directory, for a person; and the list of unfinished work the orchestrator quotes
//! when the last worker does not finish.

use std::fmt::Write as _;
use std::path::Path;

use session_store::{CheckReport, EventBody, SessionState, TaskRecord, TaskState};

use super::facts::Facts;
use super::ledger::EntryKind;
use super::plan::Plan;

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

/// The result of `inspect --check`: the store passed; what it holds.
pub fn render_check(report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store check: ok in {} ms: data file {} bytes, page {} bytes, meta page {} (transaction {}), \
         pages {} in use, {} free, {} unaccounted; {} sessions, {} tasks, {} events read and valid",
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
        report.events
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

/// The whole listing.
pub fn render(facts: &Facts, plan: Option<&Plan>) -> String {
    let mut out = String::new();
    for session in &facts.sessions {
        let deliveries = facts
            .ledger
            .iter()
            .filter(|entry| entry.session == session.id.as_str())
            .count();
        let _ = writeln!(
            out,
            "session {}: {:?}, generation {}, {} open / {} running tasks, events delivered {} of {}, \
             {} ledger entries{}",
            session.id,
            session.state,
            session.generation,
            session.tasks_open,
            session.tasks_running,
            session.delivered_seq,
            session.next_event_seq,
            deliveries,
            session
                .completions
                .iter()
                .map(|completion| format!(
                    ", completion stored: {} ({})",
                    completion.name,
                    String::from_utf8_lossy(&completion.payload)
                ))
                .collect::<String>()
        );
        for task in facts.tasks.iter().filter(|t| t.session == session.id) {
            let _ = writeln!(
                out,
                "  task {:<8} {:<8} generation {}  {}",
                task.id.as_str(),
                format!("{:?}", task.kind).to_lowercase(),
                task.generation,
                task_state(task)
            );
        }
        for event in facts.undelivered.iter().filter(|e| e.session == session.id) {
            let _ = writeln!(
                out,
                "  undelivered event {} (generation {}): {}",
                event.seq,
                event.generation,
                event_text(&event.body)
            );
        }
    }
    if let Some(plan) = plan {
        for session in &plan.sessions {
            if !facts.sessions.iter().any(|s| s.id.as_str() == session.id) {
                let _ = writeln!(out, "session {}: planned, never created", session.id);
            }
        }
    }
    let completions = facts
        .ledger
        .iter()
        .filter(|entry| matches!(entry.kind, EntryKind::Completion { .. }))
        .count();
    let _ = writeln!(
        out,
        "{} sessions, {} tasks, {} undelivered events, {} ledger entries ({completions} completions), \
         {} files left in downloads, {} partial files",
        facts.sessions.len(),
        facts.tasks.len(),
        facts.undelivered.len(),
        facts.ledger.len(),
        facts.leftover_files.len(),
        facts.partial_files.len()
    );
    out
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
