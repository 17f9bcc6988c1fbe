//! How long the full check takes on a store of a few hundred MB (ignored by default:
//! it writes about 300 MB). Run it with
//! `cargo test -p session-store --release --test check_timing -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::*;
use session_store::{CheckAtOpen, Store, StoreOptions, TaskKind, TaskRecord, TaskState, check_dir};

/// Tasks written, and the bytes of each one's request.
const TASKS: u32 = 250_000;
const REQUEST_BYTES: usize = 1000;
const TASKS_PER_UNIT: u32 = 2000;

/// Prints the time `check_dir`, an open with the full check and an open without it take
/// on a store of about 300 MB of task records (proves only that the check completes and
/// counts every record; the figures are for the report).
#[test]
#[ignore = "writes about 300 MB; run by hand for the timing figure"]
fn full_check_timing_on_a_large_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    store
        .write(|scope| scope.put_session(&session("big")))
        .expect("session");
    for chunk in 0..TASKS / TASKS_PER_UNIT {
        store
            .write(move |scope| {
                for n in chunk * TASKS_PER_UNIT..(chunk + 1) * TASKS_PER_UNIT {
                    let record = TaskRecord {
                        request: vec![(n % 251) as u8; REQUEST_BYTES],
                        kind: TaskKind::Download,
                        ..task(
                            "big",
                            &format!("t{n:08}"),
                            TaskState::Pending {
                                attempt: 0,
                                not_before_ms: 0,
                            },
                        )
                    };
                    scope.put_task(&record)?;
                }
                Ok::<_, session_store::Error>(())
            })
            .expect("tasks");
    }
    store.close().expect("close");
    drop(store);

    let started = Instant::now();
    let report = check_dir(dir.path()).expect("check_dir");
    let check_ms = started.elapsed().as_millis();
    assert_eq!(report.tasks, u64::from(TASKS));
    let open = |check_at_open| {
        let started = Instant::now();
        let options = StoreOptions {
            check_at_open,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), options).expect("open");
        let elapsed = started.elapsed().as_millis();
        store.close().expect("close");
        elapsed
    };
    let open_checked_ms = open(CheckAtOpen::Always);
    let open_unchecked_ms = open(CheckAtOpen::Never);
    eprintln!(
        "check timing: data file {} MB, {} pages in use, {} tasks: check_dir {check_ms} ms, \
         open with the full check {open_checked_ms} ms, open without it {open_unchecked_ms} ms",
        report.data_bytes / 1_000_000,
        report.pages_in_use,
        report.tasks
    );
}
