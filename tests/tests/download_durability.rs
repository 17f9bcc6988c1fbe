//! A process that dies between a download's data write and the point that makes the
//! file durable never delivers a short or a missing file: for each step of the end of a
//! download (every byte written, not yet fsynced; fsynced and renamed, the rename not
//! yet flushed; flushed, not yet recorded), a child process aborts there (fail point,
//! `std::process::abort`), and a relaunch delivers every task once, each with its whole
//! file. Real LMDB in a temp dir, the origin on 127.0.0.1; in its own test binary because
//! fail point configuration is global to the process.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;

use session_actor::{
    AppTable, Delegate, DelegateError, Delivery, Event, Outcome, SessionConfig, TransferRequest,
    WriteScope,
};
use session_harness::origin;
use session_tests::ledger::{self, builder};
use sha2::{Digest as _, Sha256};

/// Set in the child: `POINT DIR ORIGIN_BASE_URL`.
const CHILD_ENV: &str = "BGSESSION_DURABILITY_CHILD";
/// The ledger's origin seed (`ledger::origin`).
const SEED: u64 = 11;
const SESSION: &str = "durable";
const TASKS: [&str; 3] = ["f0", "f1", "f2"];
/// Each task's size: two files large enough for several writes and their own fsync, and
/// one small enough for the flush shared with other downloads (at most 1 MiB).
fn size(task: &str) -> u64 {
    if task == "f2" {
        200_003
    } else {
        3 * 1024 * 1024 + 17
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 50,
        ..SessionConfig::default()
    }
}

fn table() -> AppTable<String> {
    AppTable::named(ledger::LEDGER).expect("a valid table name")
}

/// What a file is, compared with the object the task asked for.
fn judge(path: &Path, task: &str) -> String {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) => return format!("missing ({error})"),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut length = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                hasher.update(&buffer[..read]);
                length += read as u64;
            }
            Err(error) => return format!("unreadable ({error})"),
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let expected = size(task);
    if length != expected {
        format!("short: {length} of {expected} bytes")
    } else if digest != origin::sha256(SEED, task, expected) {
        "whole length, wrong bytes".to_owned()
    } else {
        "whole".to_owned()
    }
}

/// The delegate: judges the delivered file inside the delivery's transaction and keeps
/// the verdict, one row per task (a second delivery of a task would be refused, and
/// would show as a missing "did finish").
fn verify(delivery: &Delivery, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let (key, text) = match &delivery.event {
        Event::TaskCompleted {
            task,
            outcome: Outcome::Success(_),
            file,
            ..
        } => {
            let verdict = match file {
                Some(file) => judge(file.path(), task.as_str()),
                None => "missing (no file in the event)".to_owned(),
            };
            (format!("task {task}"), verdict)
        }
        Event::TaskCompleted { task, outcome, .. } => (
            format!("task {task}"),
            format!("outcome {}", outcome.name()),
        ),
        Event::DidFinishEvents => (format!("finish {}", delivery.key), "did finish".to_owned()),
    };
    if let Some(before) = table().get(scope, &key)? {
        return Err(DelegateError::new(format!(
            "{key} delivered twice: {before}, then again"
        )));
    }
    table().put(scope, key, &text)?;
    Ok(())
}

fn rows(sessions: &session_actor::Sessions) -> BTreeMap<String, String> {
    ledger::entries(sessions).into_iter().collect()
}

/// Every file under its final name in the session's download directory is whole: the
/// state a crash left must never hold a short file where the finished one goes.
fn final_files_are_whole(root: &Path, point: &str) {
    let dir = root.join("downloads").join(SESSION);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".part") || name.ends_with(".validator") {
            continue;
        }
        let task = name.split('~').next().unwrap_or_default();
        let verdict = judge(&dir.join(&*name), task);
        assert_eq!(
            verdict, "whole",
            "after an abort at {point}, {name} under its final name"
        );
    }
}

/// What a power cut at `point` may also have lost, on top of the abort: before the
/// file's fsync, any tail of the `.part` (a prefix survives); before the flush, the rename
/// (the fsynced `.part` is back, the final name gone); after it, nothing.
/// Returns how many files it changed.
fn cut_power(root: &Path, point: &str) -> usize {
    let dir = root.join("downloads").join(SESSION);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut changed = 0;
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if point == session_http::FAIL_POINT_DOWNLOAD_BEFORE_FSYNC && name.ends_with(".part") {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open the .part");
            let length = file.metadata().expect("its length").len();
            file.set_len(length / 3).expect("truncate the .part");
            changed += 1;
        }
        if point == session_http::FAIL_POINT_DOWNLOAD_BEFORE_FLUSH && !name.contains('.') {
            // The abort came at the first rename: the one file under a final name is the
            // one whose rename was not flushed yet.
            std::fs::rename(&path, dir.join(format!("{name}.part"))).expect("undo the rename");
            changed += 1;
        }
    }
    changed
}

#[test]
fn an_abort_at_each_durability_step_still_delivers_every_whole_file_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let _scenario = fail::FailScenario::setup();
    let origin = ledger::origin();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let points = [
        session_http::FAIL_POINT_DOWNLOAD_BEFORE_FSYNC,
        session_http::FAIL_POINT_DOWNLOAD_BEFORE_FLUSH,
        session_http::FAIL_POINT_DOWNLOAD_AFTER_FSYNC,
    ];
    for (point, power_cut) in points
        .into_iter()
        .flat_map(|point| [(point, false), (point, true)])
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "durability_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{point} {} {}",
                    dir.path().display(),
                    origin.url("/objects/")
                ),
            )
            .status()
            .expect("run the child");
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "the child was to abort at {point}: {status}"
        );
        final_files_are_whole(dir.path(), point);
        if power_cut {
            let changed = cut_power(dir.path(), point);
            assert!(
                changed > 0 || point == session_http::FAIL_POINT_DOWNLOAD_AFTER_FSYNC,
                "the abort at {point} left the file it was finishing"
            );
        }
        let point = format!("{point}{}", if power_cut { " and a power cut" } else { "" });

        runtime.block_on(async {
            let sessions = builder(dir.path()).open().expect("reopen");
            let session = sessions
                .session(SESSION, config(), Delegate::transactional(verify))
                .await
                .expect("session");
            let started = std::time::Instant::now();
            while rows(&sessions).len() < TASKS.len() + 1 {
                assert!(
                    started.elapsed() < ledger::WAIT_MAX,
                    "after an abort at {point}, not every task and the finish delivered: {:?}, tasks {:?}",
                    rows(&sessions),
                    session.tasks()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let rows = rows(&sessions);
            for task in TASKS {
                assert_eq!(
                    rows.get(&format!("task {task}")).map(String::as_str),
                    Some("whole"),
                    "after an abort at {point}, task {task}: {rows:?}"
                );
            }
            assert_eq!(
                rows.values().filter(|text| *text == "did finish").count(),
                1,
                "{rows:?}"
            );
            drop(session);
            sessions.shutdown().await.expect("shutdown");
            // The relaunch's own downloads went through the same steps.
            final_files_are_whole(dir.path(), &point);
        });
        assert!(
            origin.counters().requests_for("f0") >= 1,
            "the origin served the downloads"
        );
    }
}

/// The child (does nothing unless [`CHILD_ENV`] is set): enqueues the downloads with the
/// fail point armed to abort at its first hit.
#[test]
fn durability_child() {
    let Some(args) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let args = args.to_string_lossy().into_owned();
    let mut parts = args.split(' ');
    let (Some(point), Some(dir), Some(objects)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CHILD_ENV} is `POINT DIR ORIGIN_URL`, not {args:?}");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let _scenario = fail::FailScenario::setup();
        fail::cfg(point, "return(abort)").expect("arm");
        let sessions = builder(Path::new(dir)).open().expect("open");
        let session = sessions
            .session(SESSION, config(), Delegate::transactional(verify))
            .await
            .expect("session");
        // One batch, so the abort cannot come between two enqueues.
        let batch = TASKS
            .iter()
            .map(|task| {
                // No digest or length in the request: the engine's own verification
                // would turn a short file into a failure; the delegate judges the file.
                let request =
                    TransferRequest::download(format!("{objects}{task}?size={}", size(task)));
                ((*task).to_owned(), request)
            })
            .collect();
        session.enqueue_batch(batch, None).await.expect("enqueue");
        tokio::time::sleep(Duration::from_secs(60)).await;
        panic!("the fail point {point} was never hit");
    });
}
