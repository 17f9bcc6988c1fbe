//! `session-harness bench recovery`: how long `Sessions` takes to open a large store,
//! recover every session and have every actor up with every task scheduled, and how
//! much memory an idle session costs.
//!
//! The store (100,000 sessions with 200,000 unfinished tasks by default) is written
//! first; the measurement runs in a child process (`--child DIR`) so that the memory
//! figure is that of a process which only recovers.

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

use super::rss::{max_rss_bytes, rss_bytes};

/// Options of `bench recovery`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoveryArgs {
    /// Sessions in the store.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Unfinished tasks per session.
    #[arg(long, default_value_t = 2)]
    pub tasks_per_session: usize,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
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
}

/// What `bench recovery` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// Sessions recovered.
    pub sessions: usize,
    /// Unfinished tasks recovered and scheduled.
    pub tasks: usize,
    /// Seconds from `open` to every actor up and every task scheduled.
    pub recover_s: f64,
    /// Peak resident memory of the recovering process.
    pub max_rss_bytes: u64,
    /// (peak - resident before open) / sessions.
    pub bytes_per_session: f64,
}

/// Runs the benchmark (or, with `--child`, its measured half).
///
/// # Errors
/// Setup failures, or a child that did not report.
pub fn run(args: &RecoveryArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.child {
        let figures = measure(dir)?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    fill(dir.path(), args.sessions, args.tasks_per_session)?;
    let output = Command::new(std::env::current_exe()?)
        .args(["bench", "recovery", "--child"])
        .arg(dir.path())
        .output()
        .context("running the measuring child")?;
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
    if figures.actors != args.sessions as u64 {
        bail!(
            "{} actors started for {} sessions",
            figures.actors,
            args.sessions
        );
    }
    let report = RecoveryReport {
        sessions: args.sessions,
        tasks: args.sessions * args.tasks_per_session,
        recover_s: figures.recover_s,
        max_rss_bytes: figures.max_rss_bytes,
        bytes_per_session: figures
            .max_rss_bytes
            .saturating_sub(figures.rss_before_bytes) as f64
            / args.sessions.max(1) as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench recovery: {} sessions, {} tasks up in {:.3} s; peak RSS {:.1} MiB, {:.0} bytes per session",
            report.sessions,
            report.tasks,
            report.recover_s,
            report.max_rss_bytes as f64 / 1048576.0,
            report.bytes_per_session
        );
    }
    Ok(())
}

/// Writes sessions with pending tasks whose retry time is an hour away, so recovery
/// schedules (arms) every one and starts none.
fn fill(dir: &Path, sessions: usize, per_session: usize) -> anyhow::Result<()> {
    let store = Store::open(dir, StoreOptions::default())?;
    let now_ms = session_actor::unix_ms(std::time::SystemTime::now());
    let request = bincode::serialize(&TransferRequest::download("http://127.0.0.1:9/never"))?;
    for first in (0..sessions).step_by(1000) {
        let request = request.clone();
        let range = first..(first + 1000).min(sessions);
        store.write(move |scope| -> session_store::Result<()> {
            for index in range.clone() {
                let id = SessionId::new(format!("recover-{index:07}"))?;
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

fn measure(dir: &Path) -> anyhow::Result<ChildFigures> {
    let rss_before_bytes = rss_bytes()?;
    actix::System::new().block_on(async move {
        let start = Instant::now();
        let sessions = Sessions::builder(dir).open()?;
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
        Ok(ChildFigures {
            actors: recovered,
            recover_s,
            rss_before_bytes,
            max_rss_bytes: max_rss_bytes()?,
        })
    })
}
