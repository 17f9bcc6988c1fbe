//! `session-harness bench events`: delivery throughput of already-recorded events to a
//! transactional delegate that writes one application record per event.
//!
//! The outbox is filled directly through the store (1,000 sessions by default, each
//! with its tasks completed and their events plus "did finish events" waiting), the
//! store is closed, then `Sessions` opens it, recovers every session and the clock
//! starts when the delegates are attached. It stops when every session is finished.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use session_actor::{Delegate, DelegateError, Delivery, SessionConfig, Sessions};
use session_store::{
    EventBody, EventRecord, Outcome, ResponseSummary, SessionId, SessionRecord, SessionState,
    Store, StoreOptions, TaskId, TaskKind, TaskRecord, TaskState,
};

/// The application table the benchmark's delegate writes.
const TABLE: &str = "bench-deliveries";

/// Options of `bench events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Sessions with events waiting.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Task events per session (each session also has one "did finish events").
    #[arg(long, default_value_t = 50)]
    pub events_per_session: usize,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
}

/// What `bench events` measured.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    /// Sessions delivered.
    pub sessions: usize,
    /// Events delivered in all (task events and "did finish events").
    pub events: u64,
    /// Seconds from attaching the delegates to every session finished.
    pub deliver_s: f64,
    /// Events delivered per second, each with one application record committed.
    pub events_per_s: f64,
}

/// Runs the benchmark in a temporary directory and prints its figures.
///
/// # Errors
/// Setup failures (temp dir, store) or a delivery count that does not add up.
pub fn run(args: &EventsArgs) -> anyhow::Result<EventsReport> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let expected = fill_outbox(dir.path(), args.sessions, args.events_per_session)?;
    let report = actix::System::new().block_on(deliver_all(dir.path(), args, expected))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench events: {} events of {} sessions delivered in {:.3} s: {:.0} events/s",
            report.events, report.sessions, report.deliver_s, report.events_per_s
        );
    }
    Ok(report)
}

fn session_id(index: usize) -> anyhow::Result<SessionId> {
    Ok(SessionId::new(format!("bench-{index:06}"))?)
}

/// Writes sessions whose tasks are all completed and whose events all wait.
fn fill_outbox(dir: &std::path::Path, sessions: usize, per_session: usize) -> anyhow::Result<u64> {
    let store = Store::open(dir, StoreOptions::default().with_app_table(TABLE))?;
    let now_ms = session_actor::unix_ms(std::time::SystemTime::now());
    for first in (0..sessions).step_by(100) {
        let ids: Vec<SessionId> = (first..(first + 100).min(sessions))
            .map(session_id)
            .collect::<anyhow::Result<_>>()?;
        store.write(move |scope| -> session_store::Result<()> {
            for id in &ids {
                for seq in 0..per_session as u64 {
                    let task = TaskId::new(format!("task-{seq}"))?;
                    let outcome = Outcome::Success(ResponseSummary {
                        status: 200,
                        headers: Vec::new(),
                        body: Vec::new(),
                        file: None,
                        bytes: 0,
                    });
                    scope.put_task(&TaskRecord {
                        session: id.clone(),
                        id: task.clone(),
                        generation: 1,
                        kind: TaskKind::Data,
                        request: Vec::new(),
                        created_ms: now_ms,
                        state: TaskState::Completed {
                            outcome: outcome.clone(),
                            event_seq: seq,
                            finished_ms: now_ms,
                        },
                        wait: None,
                        incarnation: 0,
                    })?;
                    scope.put_event(&EventRecord {
                        session: id.clone(),
                        seq,
                        generation: 1,
                        body: EventBody::TaskCompleted {
                            task,
                            kind: TaskKind::Data,
                            outcome,
                        },
                    })?;
                }
                scope.put_event(&EventRecord {
                    session: id.clone(),
                    seq: per_session as u64,
                    generation: 1,
                    body: EventBody::DidFinishEvents,
                })?;
                let mut record = SessionRecord::new(id.clone(), SessionConfig::default(), now_ms);
                record.generation = 1;
                record.next_event_seq = per_session as u64 + 1;
                record.state = SessionState::AwaitingEvents;
                scope.put_session(&record)?;
            }
            Ok(())
        })?;
    }
    Ok(sessions as u64 * (per_session as u64 + 1))
}

async fn deliver_all(
    dir: &std::path::Path,
    args: &EventsArgs,
    expected: u64,
) -> anyhow::Result<EventsReport> {
    let sessions = Sessions::builder(dir).app_table(TABLE).open()?;
    let table = sessions.store().app_table::<u64>(TABLE)?;
    let delegate = Delegate::transactional(
        move |delivery: &Delivery, scope: &mut session_store::WriteScope<'_>| {
            table
                .put(scope, delivery.key.to_string(), &delivery.key.seq)
                .map_err(|error| DelegateError::new(error.to_string()))
        },
    );
    let ids: Vec<SessionId> = (0..args.sessions)
        .map(session_id)
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let attached = futures_util::future::join_all(
        ids.iter()
            .map(|id| sessions.session(id.as_str(), SessionConfig::default(), delegate.clone())),
    )
    .await;
    for session in attached {
        session?;
    }
    loop {
        let snapshot = sessions.store().snapshot()?;
        let finished = snapshot
            .sessions()?
            .iter()
            .filter(|s| s.state == SessionState::Finished)
            .count();
        if finished == args.sessions {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {finished} of {} sessions finished in 600 s",
                args.sessions
            );
        }
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    let deliver_s = start.elapsed().as_secs_f64();
    let written = sessions
        .store()
        .app_table::<u64>(TABLE)?
        .entries(&sessions.store().snapshot()?)?
        .len() as u64;
    if written != expected {
        bail!("the delegate wrote {written} records for {expected} events");
    }
    Ok(EventsReport {
        sessions: args.sessions,
        events: expected,
        deliver_s,
        events_per_s: expected as f64 / deliver_s,
    })
}
