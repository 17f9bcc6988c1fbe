//! A tokio service embedding bgsession, the shape to copy.
//!
//! It opens `Sessions` from `#[tokio::main]`, downloads a batch of files inside one
//! background session with a transactional delegate (each file is kept and recorded in
//! an application table in the transaction that marks it delivered: exactly once), stores
//! a completion handler for the batch, awaits the end of the batch's generation without
//! polling, prints one line per delivered event, shuts down and exits 0.
//!
//! ```sh
//! cargo run --release -p session-actor --example tokio_service
//! cargo run --release -p session-actor --example tokio_service -- --origin http://127.0.0.1:8080 --dir /tmp/demo
//! ```
//!
//! Without `--origin URL` it starts the harness's origin server on 127.0.0.1; without
//! `--dir` it works in a temporary directory. Against your own server the URLs are
//! `<origin>/objects/file-<n>?size=<bytes>`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use session_actor::{
    AppTable, CompletionCall, Delegate, DelegateError, Delivery, EngineConfig, Event,
    SessionConfig, Sessions, TransferRequest, WriteScope,
};

/// The application table: one row per delivered event, keyed by its sequence number.
const RECEIVED: &str = "received";
/// How many files the batch downloads.
const FILES: usize = 5;

/// A row of the application table.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Received {
    /// A task's result; for a download, the kept file's length.
    Task {
        task: String,
        outcome: String,
        bytes: Option<u64>,
    },
    /// Every event of the generation was delivered.
    DidFinish,
    /// The stored completion handler ran.
    Completion { payload: String },
}

fn received() -> AppTable<Received> {
    // A handle by name: the delegate is built before `Sessions` is open.
    AppTable::named(RECEIVED).expect("a valid table name")
}

/// The delegate: keep the file, record the event. Both happen in the delivery's
/// transaction (the file link is idempotent), so a crash before the commit leaves
/// neither and the event simply comes again.
fn deliver(kept: PathBuf) -> impl Fn(&Delivery, &mut WriteScope<'_>) -> Result<(), DelegateError> {
    move |delivery, scope| {
        let row = match &delivery.event {
            Event::TaskCompleted {
                task,
                outcome,
                file,
                ..
            } => {
                let bytes = match file {
                    Some(file) => {
                        let destination = kept.join(task.as_str());
                        file.keep_as(&destination)?;
                        Some(std::fs::metadata(&destination)?.len())
                    }
                    None => None,
                };
                Received::Task {
                    task: task.to_string(),
                    outcome: outcome.name().to_owned(),
                    bytes,
                }
            }
            Event::DidFinishEvents => Received::DidFinish,
        };
        received().put(scope, delivery.key.seq.to_be_bytes(), &row)?;
        Ok(())
    }
}

/// The completion handler, registered by name: it runs once, after "did finish events".
fn all_done(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let row = Received::Completion {
        payload: String::from_utf8_lossy(&call.payload).into_owned(),
    };
    received().put(scope, call.key.seq.to_be_bytes(), &row)?;
    Ok(())
}

/// Runs the service once: returns the lines it printed.
async fn run(dir: &Path, origin: &str) -> anyhow::Result<Vec<String>> {
    let kept = dir.join("kept");
    std::fs::create_dir_all(&kept)?;
    let sessions = Sessions::builder(dir.join("transfers"))
        // The demo talks to 127.0.0.1 only, whatever proxy variables are set.
        .engine_config(EngineConfig {
            proxy_from_environment: false,
            ..EngineConfig::default()
        })
        .app_table(RECEIVED)
        .completion("all-done", all_done)
        .open()?;
    let session = sessions
        .session(
            "downloads",
            SessionConfig::default(),
            Delegate::transactional(deliver(kept)),
        )
        .await?;
    let files = (0..FILES)
        .map(|index| {
            let url = format!("{origin}/objects/file-{index}?size={}", 100_000 + index);
            (format!("file-{index}"), TransferRequest::download(url))
        })
        .collect();
    // Known task identifiers reconnect, so re-running the service re-issues this safely.
    let batch = session
        .enqueue_batch(files, Some(("all-done", b"5 files".to_vec())))
        .await?;
    batch.finished().await?;

    let mut lines = Vec::new();
    let table = sessions.app_table::<Received>(RECEIVED)?;
    for (key, row) in table.entries(&sessions.snapshot()?)? {
        let seq = u64::from_be_bytes(key.as_slice().try_into()?);
        let line = match row {
            Received::Task {
                task,
                outcome,
                bytes: Some(bytes),
            } => format!("event {seq}: {task} {outcome}, kept {bytes} bytes"),
            Received::Task { task, outcome, .. } => format!("event {seq}: {task} {outcome}"),
            Received::DidFinish => format!("event {seq}: did finish events"),
            Received::Completion { payload } => {
                format!("event {seq}: completion all-done ran ({payload})")
            }
        };
        println!("{line}");
        lines.push(line);
    }
    sessions.shutdown().await?;
    Ok(lines)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut dir = None;
    let mut origin = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--origin" => origin = args.next(),
            other => anyhow::bail!("unknown argument {other:?}; use [--dir DIR] [--origin URL]"),
        }
    }
    let temp;
    let dir = match dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let _server;
    let origin = match origin {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let server = session_harness::origin::Origin::start_in_thread(
                session_harness::origin::OriginConfig { seed: 1, port: 0 },
            )?;
            let url = server.url("");
            _server = server;
            url
        }
    };
    run(&dir, &origin).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example runs to completion against the built-in origin and prints one line
    /// per event: five tasks, "did finish events", the completion; a second run on the
    /// same directory reconnects and stores nothing twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_to_completion_and_again() {
        let server = session_harness::origin::Origin::start_in_thread(
            session_harness::origin::OriginConfig { seed: 1, port: 0 },
        )
        .expect("origin");
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = run(dir.path(), &server.url("")).await.expect("first run");
        assert_eq!(lines.len(), FILES + 2, "{lines:#?}");
        assert_eq!(
            lines.iter().filter(|line| line.contains("kept")).count(),
            FILES
        );
        assert!(lines[FILES].ends_with("did finish events"));
        assert!(lines[FILES + 1].contains("completion all-done ran (5 files)"));
        let again = run(dir.path(), &server.url("")).await.expect("second run");
        assert_eq!(
            again, lines,
            "re-running reconnects: nothing delivered twice"
        );
        assert_eq!(server.counters().requests_total, FILES as u64);
    }
}
