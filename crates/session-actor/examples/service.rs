//! An actix service that embeds `Sessions` (a tokio service works the same, see
//! `tokio_service.rs`): it downloads a set of files from an origin
//! server inside one background session, keeps each file and records it in an
//! application table with a transactional delegate, and stops when the session's
//! stored completion handler has run.
//!
//! Kill it at any moment (Ctrl-C, `kill -9`) and start it again with the same
//! directory: it reconnects to the tasks already under way (no transfer starts twice),
//! and every file is recorded exactly once.
//!
//! ```sh
//! cargo run -p session-actor --example service -- --dir /tmp/bgsession-demo
//! ```
//!
//! Without `--origin URL` it starts the harness's origin server on 127.0.0.1 itself.
//! Run as a test (`cargo test -p session-actor --example service`), it kills itself
//! mid-download with SIGKILL, starts again and checks the outcome.

use std::path::{Path, PathBuf};

use session_actor::{
    AppTable, CompletionCall, Delegate, DelegateError, Delivery, Event, SessionConfig, Sessions,
    TransferRequest, WriteScope,
};

/// The application table: one record per kept file.
const KEPT: &str = "kept-files";
/// The application table the completion handler writes.
const DONE: &str = "sessions-done";
/// Files the demo downloads.
const FILES: usize = 8;

/// The size of file `index`: a little over 2 MiB, so that a kill mid-download leaves a
/// partial file worth resuming (the engine writes in 1 MiB blocks).
fn file_size(index: usize) -> u64 {
    2 * 1024 * 1024 + index as u64 * 1000
}

fn kept_table() -> Result<AppTable<u64>, DelegateError> {
    Ok(AppTable::named(KEPT)?)
}

/// Keeps each downloaded file under `<dir>/kept/` and records it, in the delivery's
/// transaction: a crash before the commit leaves neither, and the (idempotent)
/// `keep_as` simply runs again.
fn delegate(dir: PathBuf) -> impl Fn(&Delivery, &mut WriteScope<'_>) -> Result<(), DelegateError> {
    move |delivery, scope| {
        if let Event::TaskCompleted {
            task,
            file: Some(file),
            ..
        } = &delivery.event
        {
            let kept = dir.join("kept").join(task.as_str());
            file.keep_as(&kept)?;
            let bytes = std::fs::metadata(&kept)?.len();
            let table = kept_table()?;
            if table.get(scope, task.as_str())?.is_some() {
                return Err(DelegateError::new(format!("{task} delivered twice")));
            }
            table.put(scope, task.as_str(), &bytes)?;
            println!("kept {task} ({bytes} bytes) [delivery {}]", delivery.key);
        }
        Ok(())
    }
}

fn all_done(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let table: AppTable<u64> = AppTable::named(DONE)?;
    table.put(scope, call.key.session.as_str(), &call.key.generation)?;
    println!(
        "all events handled for {} (generation {})",
        call.key.session, call.key.generation
    );
    Ok(())
}

/// Runs the service until the session's completion has run.
fn serve(dir: &Path, origin: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("kept"))?;
    let dir = dir.to_path_buf();
    let origin = origin.to_owned();
    actix::System::new().block_on(async move {
        let sessions = Sessions::builder(&dir)
            // The demo talks to 127.0.0.1 only, whatever proxy variables are set.
            .engine_config(session_actor::EngineConfig {
                proxy_from_environment: false,
                ..session_actor::EngineConfig::default()
            })
            .app_table(KEPT)
            .app_table(DONE)
            .completion("all-done", all_done)
            .open()?;
        for waiting in sessions.take_waiting(&session_actor::Matching::Prefix("demo".into())) {
            println!("reconnecting to {waiting}, which has work or events waiting");
        }
        let session = sessions
            .session(
                "demo",
                SessionConfig::default(),
                Delegate::transactional(delegate(dir.clone())),
            )
            .await?;
        let files = (0..FILES)
            .map(|index| {
                // A slow drip, so that a kill lands mid-download.
                let url = format!(
                    "{origin}/objects/file-{index}?size={}&fault=drip:65536:10",
                    file_size(index)
                );
                (format!("file-{index}"), TransferRequest::download(url))
            })
            .collect();
        // One batch with its completion; re-issued after a kill, it reconnects.
        let batch = session
            .enqueue_batch(files, Some(("all-done", Vec::new())))
            .await?;
        batch.finished().await?;
        sessions.shutdown().await?;
        Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let mut dir = PathBuf::from("bgsession-demo");
    let mut origin_url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => {
                dir = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| anyhow::anyhow!("--dir needs a path"))?
            }
            "--origin" => {
                origin_url = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--origin needs a URL"))?,
                )
            }
            other => anyhow::bail!("unknown argument {other:?}; use --dir DIR [--origin URL]"),
        }
    }
    let _origin;
    let origin_url = match origin_url {
        Some(url) => url,
        None => {
            let started = session_harness::origin::Origin::start_in_thread(
                session_harness::origin::OriginConfig { seed: 1, port: 0 },
            )?;
            let url = started.url("");
            _origin = started;
            url
        }
    };
    serve(&dir, &origin_url)
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use super::*;

    /// How many files the application table records, read with the service stopped.
    fn kept_records(dir: &Path) -> usize {
        let options = session_actor::StoreOptions::default()
            .with_app_table(KEPT)
            .with_app_table(DONE);
        let store = session_actor::Store::open(dir, options).expect("store");
        let kept = store.app_table::<u64>(KEPT).expect("table");
        kept.entries(&store.snapshot().expect("snapshot"))
            .expect("entries")
            .len()
    }

    /// The service, SIGKILLed mid-download and started again, reconnects: every file
    /// is kept and recorded exactly once, and downloads resume with range requests (the
    /// origin never serves a file again from the start).
    #[test]
    fn service_survives_a_kill() {
        if let (Ok(dir), Ok(origin)) = (
            std::env::var("DEMO_CHILD_DIR"),
            std::env::var("DEMO_CHILD_ORIGIN"),
        ) {
            // The child: run the service.
            serve(Path::new(&dir), &origin).expect("the service runs");
            return;
        }
        let origin = session_harness::origin::Origin::start_in_thread(
            session_harness::origin::OriginConfig { seed: 1, port: 0 },
        )
        .expect("origin");
        let dir = tempfile::tempdir().expect("tempdir");
        let spawn = || {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "tests::service_survives_a_kill", "--nocapture"])
                .env("DEMO_CHILD_DIR", dir.path())
                .env("DEMO_CHILD_ORIGIN", origin.url(""))
                .spawn()
                .expect("spawn the service")
        };
        let mut first = spawn();
        // Kill once some partial file holds a written block (the engine writes 1 MiB
        // blocks), so there is something to resume however slow the machine is.
        let downloads = dir.path().join("downloads").join("demo");
        let block_written = || {
            std::fs::read_dir(&downloads)
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| {
                    entry.file_name().to_string_lossy().ends_with(".part")
                        && entry.metadata().is_ok_and(|m| m.len() >= 1024 * 1024)
                })
        };
        let mut waited = Duration::ZERO;
        while !block_written() {
            assert!(
                waited < Duration::from_secs(120),
                "no partial download appeared"
            );
            std::thread::sleep(Duration::from_millis(2));
            waited += Duration::from_millis(2);
        }
        first.kill().expect("SIGKILL");
        first.wait().expect("reap");
        let kept_before = kept_records(dir.path());
        assert!(
            kept_before < FILES,
            "the kill must land before every file was kept"
        );
        let status = spawn().wait().expect("second run");
        assert!(
            status.success(),
            "the restarted service must finish: {status}"
        );
        assert_eq!(kept_records(dir.path()), FILES, "every file recorded once");
        let counters = origin.counters();
        let mut resumed = 0;
        for index in 0..FILES {
            let name = format!("file-{index}");
            let size = file_size(index);
            resumed += counters
                .ranges_for(&name)
                .iter()
                .filter(|range| range.status == 206 && range.start > 0)
                .count();
            assert_eq!(
                std::fs::metadata(dir.path().join("kept").join(&name))
                    .expect("kept")
                    .len(),
                size
            );
            // A resume re-sends at most what was received but not yet written (one
            // 1 MiB block) plus what was in flight.
            assert!(
                counters.body_bytes_for(&name) <= size + 1024 * 1024 + 256 * 1024,
                "{name} served too often: {} bytes in {:?}",
                counters.body_bytes_for(&name),
                counters.ranges_for(&name)
            );
        }
        assert!(
            resumed > 0,
            "at least one download resumed with a range request"
        );
    }
}
