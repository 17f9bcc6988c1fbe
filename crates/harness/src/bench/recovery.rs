//! `session-harness bench recovery`: how long `Sessions` takes to open a large store,
//! recover every session and have every actor up with every task scheduled, and how
//! much memory an idle session costs.
//!
//! The store (100,000 sessions with 200,000 unfinished tasks by default, all active) is
//! written first; the measurement runs in a child process (`--child DIR`) so that the
//! memory figure is that of a process which only recovers. With `--active M` only M
//! sessions have work; the others are idle (finished, one delivered task kept each), and
//! a second store with the active sessions alone is recovered in the same run, so that
//! what the idle sessions cost is the difference, per idle session.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use session_actor::{SessionConfig, Sessions, TransferRequest};
use session_store::{
    SessionId, SessionRecord, SessionState, Store, StoreOptions, TaskId, TaskKind, TaskRecord,
    TaskState,
};

use super::rss::{anon_rss_bytes, max_rss_bytes, rss_bytes};

/// Options of `bench recovery`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoveryArgs {
    /// Sessions in the store.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Sessions with work (the rest are idle); all of them by default.
    #[arg(long)]
    pub active: Option<usize>,
    /// Unfinished tasks per active session.
    #[arg(long, default_value_t = 2)]
    pub tasks_per_session: usize,
    /// Open without the full page and record walk (`CheckAtOpen::Never`); by default
    /// the store's default applies (a full walk up to 1 GiB of data file).
    #[arg(long)]
    pub no_check: bool,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
    /// Fill this (new) directory with the store and keep it, instead of a temporary one
    /// (for looking at it, or at a child run by hand).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Internal: measure the recovery of this directory and print the child's JSON.
    #[arg(long, hide = true)]
    pub child: Option<PathBuf>,
}

/// What the child process measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildFigures {
    /// Sessions whose actor started.
    pub actors: u64,
    /// Seconds from `open` to every actor started and every task scheduled.
    pub recover_s: f64,
    /// Resident memory before `open`.
    pub rss_before_bytes: u64,
    /// Peak resident memory of the child.
    pub max_rss_bytes: u64,
    /// Anonymous resident memory (what the process allocated) before `open`.
    pub anon_before_bytes: u64,
    /// Anonymous resident memory once every actor is up.
    pub anon_after_bytes: u64,
    /// Seconds of one read pass over what recovery must read (the active index, each
    /// active session's record and tasks, decoded), in the same process after recovery.
    pub read_pass_s: f64,
}

/// What `bench recovery` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// Sessions in the store.
    pub sessions: usize,
    /// Whether the open skipped the full page and record walk.
    pub no_check: bool,
    /// Of which with work (an actor each).
    pub active: usize,
    /// Unfinished tasks recovered and scheduled.
    pub tasks: usize,
    /// Seconds from `open` to every active session's actor up and every task scheduled.
    pub recover_s: f64,
    /// What bounds it: one read pass over the records recovery reads (no actors, no
    /// writes), measured in the same process; `recover_s / bound_read_s` is what the
    /// actors, the scheduling and the recovery unit's writes add.
    pub bound_read_s: f64,
    /// Peak resident memory of the recovering process.
    pub max_rss_bytes: u64,
    /// (peak - resident before open) / sessions.
    pub bytes_per_session: f64,
    /// The same store with only its active sessions: seconds to recover, and peak over
    /// the resident memory before open (what the active sessions cost).
    pub active_only_recover_s: Option<f64>,
    /// See `active_only_recover_s`.
    pub active_only_rss_delta_bytes: Option<u64>,
    /// What an idle session costs: (peak RSS over the RSS before open, minus the same of
    /// the active-only store) / idle sessions. Peak VmRSS counts the store's file pages
    /// mapped in by the reads too (page cache, shared and reclaimable): the kernel maps
    /// the pages around each page read (fault-around, whole large folios), so scattered
    /// reads of the active sessions map their idle neighbours' pages.
    pub bytes_per_idle_session: Option<f64>,
    /// The same in memory the process allocates (anonymous resident memory over its
    /// value before open, minus the active-only store's) / idle sessions: what idle
    /// sessions cost beyond the mapped file.
    pub allocated_bytes_per_idle_session: Option<f64>,
}

/// Runs the benchmark (or, with `--child`, its measured half).
///
/// # Errors
/// Setup failures, or a child that did not report.
pub fn run(args: &RecoveryArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.child {
        let figures = measure(dir, args.no_check)?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    let active = args.active.unwrap_or(args.sessions).min(args.sessions);
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    fill(&dir, args.sessions, active, args.tasks_per_session)?;
    let figures = child(&dir, active, args.no_check)?;
    let delta = |figures: &ChildFigures| {
        figures
            .max_rss_bytes
            .saturating_sub(figures.rss_before_bytes)
    };
    let anon = |figures: &ChildFigures| {
        figures
            .anon_after_bytes
            .saturating_sub(figures.anon_before_bytes)
    };
    let idle = args.sessions - active;
    let active_only = if idle > 0 {
        drop(temp);
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        fill(dir.path(), active, active, args.tasks_per_session)?;
        Some(child(dir.path(), active, args.no_check)?)
    } else {
        None
    };
    let report = RecoveryReport {
        sessions: args.sessions,
        no_check: args.no_check,
        active,
        tasks: active * args.tasks_per_session,
        recover_s: figures.recover_s,
        bound_read_s: figures.read_pass_s,
        max_rss_bytes: figures.max_rss_bytes,
        bytes_per_session: delta(&figures) as f64 / args.sessions.max(1) as f64,
        active_only_recover_s: active_only.as_ref().map(|f| f.recover_s),
        active_only_rss_delta_bytes: active_only.as_ref().map(delta),
        bytes_per_idle_session: active_only
            .as_ref()
            .map(|only| delta(&figures).saturating_sub(delta(only)) as f64 / idle as f64),
        allocated_bytes_per_idle_session: active_only
            .as_ref()
            .map(|only| anon(&figures).saturating_sub(anon(only)) as f64 / idle as f64),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench recovery: {} sessions ({} active), {} tasks up in {:.3} s (one read pass over them: {:.3} s); peak RSS {:.1} MiB, {:.0} bytes per session",
            report.sessions,
            report.active,
            report.tasks,
            report.recover_s,
            report.bound_read_s,
            report.max_rss_bytes as f64 / 1048576.0,
            report.bytes_per_session
        );
        if let (Some(seconds), Some(bytes), Some(allocated)) = (
            report.active_only_recover_s,
            report.bytes_per_idle_session,
            report.allocated_bytes_per_idle_session,
        ) {
            println!(
                "  the active sessions alone: up in {seconds:.3} s; an idle session costs {bytes:.0} bytes of peak RSS ({allocated:.0} bytes allocated; the rest is the store's file pages mapped by the reads)"
            );
        }
    }
    Ok(())
}

/// Runs the measuring child on `dir` and checks it started an actor per active session.
fn child(dir: &Path, active: usize, no_check: bool) -> anyhow::Result<ChildFigures> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["bench", "recovery", "--child"]).arg(dir);
    if no_check {
        command.arg("--no-check");
    }
    let output = command.output().context("running the measuring child")?;
    if !output.status.success() {
        bail!(
            "the measuring child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("the child printed nothing")?;
    let figures: ChildFigures = serde_json::from_str(line).context("the child's figures")?;
    if figures.actors != active as u64 {
        bail!(
            "{} actors started for {active} active sessions",
            figures.actors
        );
    }
    Ok(figures)
}

/// Writes `active` sessions with pending tasks whose retry time is an hour away, so
/// recovery schedules (arms) every one and starts none, and `sessions - active` idle
/// ones: finished, with one delivered task kept (as retention keeps it). Active and idle
/// sessions are interleaved through the key space.
fn fill(dir: &Path, sessions: usize, active: usize, per_session: usize) -> anyhow::Result<()> {
    let store = Store::open(dir, StoreOptions::default())?;
    let now_ms = session_actor::unix_ms(std::time::SystemTime::now());
    let request = TransferRequest::download("http://127.0.0.1:9/never").to_bytes();
    // Every `stride`-th session is active.
    let stride = sessions / active.max(1);
    for first in (0..sessions).step_by(1000) {
        let request = request.clone();
        let range = first..(first + 1000).min(sessions);
        store.write(move |scope| -> session_store::Result<()> {
            for index in range.clone() {
                let id = SessionId::new(format!("recover-{index:07}"))?;
                if stride > 1 && index % stride != 0 || index / stride.max(1) >= active {
                    put_idle(scope, id, &request, now_ms)?;
                    continue;
                }
                for task in 0..per_session {
                    scope.put_task(&TaskRecord {
                        session: id.clone(),
                        id: TaskId::new(format!("task-{task}"))?,
                        generation: 1,
                        kind: TaskKind::Download,
                        request: request.clone(),
                        created_ms: now_ms,
                        state: TaskState::Pending {
                            attempt: 1,
                            not_before_ms: now_ms + 3_600_000,
                        },
                        wait: None,
                        incarnation: 0,
                    })?;
                }
                let mut record = SessionRecord::new(id, SessionConfig::default(), now_ms);
                record.generation = 1;
                record.tasks_open = per_session as u64;
                record.state = SessionState::Queued;
                scope.put_session(&record)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn measure(dir: &Path, no_check: bool) -> anyhow::Result<ChildFigures> {
    let rss_before_bytes = rss_bytes()?;
    let anon_before_bytes = anon_rss_bytes()?;
    actix::System::new().block_on(async move {
        let start = Instant::now();
        let mut options = StoreOptions::default();
        if no_check {
            options.check_at_open = session_store::CheckAtOpen::Never;
        }
        let sessions = Sessions::builder(dir).store_options(options).open()?;
        let recovered = sessions.running() as u64;
        while sessions.actors_started() < recovered {
            if start.elapsed() > Duration::from_secs(600) {
                bail!(
                    "{} of {recovered} actors started",
                    sessions.actors_started()
                );
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        let recover_s = start.elapsed().as_secs_f64();
        let anon_after_bytes = anon_rss_bytes()?;
        let max_rss_bytes = max_rss_bytes()?;
        let read_pass_s = read_pass(sessions.store())?;
        Ok(ChildFigures {
            actors: recovered,
            recover_s,
            rss_before_bytes,
            max_rss_bytes,
            anon_before_bytes,
            anon_after_bytes,
            read_pass_s,
        })
    })
}

/// One pass over what recovery reads, in pieces of short snapshots as recovery reads it:
/// the active index, and each active session's record and tasks, decoded.
fn read_pass(store: &Store) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut after: Option<SessionId> = None;
    let mut tasks = 0usize;
    loop {
        let snapshot = store.snapshot()?;
        let ids = snapshot.active_sessions_from(after.as_ref(), 1024)?;
        let Some(last) = ids.last() else { break };
        after = Some(last.clone());
        for id in &ids {
            if snapshot.session(id)?.is_some() {
                tasks += snapshot.tasks(id)?.len();
            }
        }
    }
    std::hint::black_box(tasks);
    Ok(start.elapsed().as_secs_f64())
}

/// An idle session: one generation finished and delivered, its task kept.
fn put_idle(
    scope: &mut session_store::WriteScope<'_>,
    id: SessionId,
    request: &[u8],
    now_ms: u64,
) -> session_store::Result<()> {
    scope.put_task(&TaskRecord {
        session: id.clone(),
        id: TaskId::new("done")?,
        generation: 1,
        kind: TaskKind::Data,
        request: request.to_vec(),
        created_ms: now_ms,
        state: TaskState::Completed {
            outcome: session_store::Outcome::Cancelled,
            event_seq: 0,
            finished_ms: now_ms,
        },
        wait: None,
        incarnation: 0,
    })?;
    let mut record = SessionRecord::new(id, SessionConfig::default(), now_ms);
    record.generation = 1;
    record.next_event_seq = 2;
    record.delivered_seq = 2;
    scope.put_session(&record)
}
