//! SIGKILLs at random instants of a service that delivers into its own PostgreSQL (a
//! throwaway cluster on 127.0.0.1, started by the test), in two ways: through
//! `PgDeliveries` (records in LMDB, the delivery key in PostgreSQL), and with the records
//! themselves in PostgreSQL, the delegate writing its row in the batch's own SQL
//! transaction (`WriteScope::postgres`). Aborts at the store's fail points right after
//! the delegate wrote its row (before the batch's commit, and just after it) are tested
//! too. Each
//! launch re-issues all its earlier work, as a service does at launch, and adds a new
//! batch per session (joining a running generation or opening the next), so every kill
//! lands among transfers and deliveries; at the end every application row exists
//! exactly once. The checker is shown failing on doctored counts.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use session_actor::postgres::PgDeliveries;
use session_actor::{SessionConfig, TransferRequest};
use session_harness::postgres::postgres_or_skip;
use session_tests::ledger::{builder, origin};
use session_tests::pg::{backend_delegate, connect, create_received, exact_delegate, row_counts};

const SESSIONS: usize = 3;
/// Tasks per session added by each launch.
const TASKS: usize = 4;
const KILLS: usize = 12;
const SEED: u64 = 0x5eed_0016;
/// The child's arguments: `URL DIR OBJECTS_URL LAUNCH FINAL(0|1) MODE`, MODE one of
/// `deliveries`, `backend`, or `backend:<fail point>` (abort in the first delivery's
/// batch at that point).
const CHILD_ENV: &str = "BGSESSION_PG_KILL_CHILD";

fn config() -> SessionConfig {
    SessionConfig {
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 100,
        delivery_retry_ms_base: 1,
        delivery_retry_ms_max: 20,
        ..SessionConfig::default()
    }
}

/// The task identifiers launch `launch` adds to each session.
fn tasks_of(launch: usize) -> Vec<String> {
    (0..TASKS).map(|t| format!("l{launch}-t{t}")).collect()
}

/// What the rows must be after `launches` launches: every task of every session once,
/// and each generation's "did finish" once (a session has at least one). Returns one
/// sentence per violation.
fn violations(counts: &BTreeMap<(String, String), i64>, launches: usize) -> Vec<String> {
    let mut found = Vec::new();
    for s in 0..SESSIONS {
        let session = format!("kills-{s}");
        for task in (0..launches).flat_map(tasks_of) {
            match counts
                .get(&(session.clone(), task.clone()))
                .copied()
                .unwrap_or(0)
            {
                1 => {}
                0 => found.push(format!("{session} {task} is missing")),
                n => found.push(format!("{session} {task} written {n} times")),
            }
        }
        if !counts
            .keys()
            .any(|(s, what)| *s == session && what.starts_with("did finish "))
        {
            found.push(format!("{session} never finished a generation"));
        }
    }
    for ((session, what), n) in counts {
        let known = what.starts_with("did finish ")
            || (0..launches).flat_map(tasks_of).any(|task| task == *what);
        if !known {
            found.push(format!("{session} {what} was never asked for"));
        } else if what.starts_with("did finish ") && *n != 1 {
            found.push(format!("{session} {what} written {n} times"));
        }
    }
    found
}

#[test]
fn the_checker_catches_a_duplicate_and_a_missing_row() {
    let mut counts = BTreeMap::new();
    for s in 0..SESSIONS {
        for task in (0..2).flat_map(tasks_of) {
            counts.insert((format!("kills-{s}"), task), 1);
        }
        counts.insert((format!("kills-{s}"), "did finish 1".to_owned()), 1);
    }
    assert!(violations(&counts, 2).is_empty());
    counts.insert(("kills-0".to_owned(), "l1-t3".to_owned()), 2);
    counts.remove(&("kills-2".to_owned(), "l0-t0".to_owned()));
    counts.insert(("kills-1".to_owned(), "did finish 1".to_owned()), 2);
    counts.insert(("kills-1".to_owned(), "l9-t0".to_owned()), 1);
    let found = violations(&counts, 2);
    assert_eq!(found.len(), 4, "{found:?}");
}

#[test]
fn sigkills_during_pg_deliveries_keep_every_row_once() {
    campaign(
        "sigkills_during_pg_deliveries_keep_every_row_once",
        "deliveries",
    );
}

#[test]
fn sigkills_with_the_records_in_postgres_keep_every_row_once() {
    campaign(
        "sigkills_with_the_records_in_postgres_keep_every_row_once",
        "backend",
    );
}

/// An abort between the delegate's row and the commit of its batch (the row is rolled
/// back with the cursor, and written again at the relaunch), or right after the commit
/// (both are in; nothing is delivered again): the row exists once either way.
#[test]
fn aborts_between_the_delegate_and_the_commit_keep_the_row_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let test = "aborts_between_the_delegate_and_the_commit_keep_the_row_once";
    let Some(cluster) = postgres_or_skip(test) else {
        return;
    };
    let url = cluster.url();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let origin = origin();
    let objects = origin.url("/objects/");
    for point in ["store-before-commit", "store-after-commit"] {
        runtime.block_on(async {
            let client = connect(&url).await;
            create_received(&client).await;
            client
                .batch_execute("TRUNCATE app.received; DROP SCHEMA IF EXISTS bgsession CASCADE")
                .await
                .expect("a fresh start");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |mode: &str, last: bool| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
                .env(
                    CHILD_ENV,
                    format!(
                        "{url} {} {objects} 0 {} {mode}",
                        dir.path().display(),
                        u8::from(last)
                    ),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run the service")
        };
        let aborted = run(&format!("backend:{point}"), true);
        assert!(
            !aborted.success(),
            "{point}: the service aborts at its first delivery: {aborted}"
        );
        let rows_after_abort: i64 = runtime.block_on(async {
            row_counts(&connect(&url).await, "received")
                .await
                .values()
                .sum()
        });
        // Before the commit, nothing of the batch (the first with a delivery) is in;
        // after it, at least the delivery that armed the point is.
        if point == "store-before-commit" {
            assert_eq!(
                rows_after_abort, 0,
                "{point}: rows committed by the aborted run"
            );
        } else {
            assert!(
                rows_after_abort >= 1,
                "{point}: the batch committed before the abort"
            );
        }
        let finished = run("backend", true);
        assert!(
            finished.success(),
            "{point}: the relaunch finishes: {finished}"
        );
        let counts = runtime.block_on(async { row_counts(&connect(&url).await, "received").await });
        let found = violations(&counts, 1);
        assert!(found.is_empty(), "after an abort at {point}: {found:?}");
    }
    drop(cluster);
}

fn campaign(test: &str, mode: &'static str) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(cluster) = postgres_or_skip(test) else {
        return;
    };
    let url = cluster.url();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async { create_received(&connect(&url).await).await });
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = origin.url("/objects/");
    let child = |launch: usize, last: bool| {
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!(
                    "{url} {} {objects} {launch} {} {mode}",
                    dir.path().display(),
                    u8::from(last)
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the service")
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut killed_with_rows = Vec::new();
    for launch in 0..KILLS {
        let mut service = child(launch, false);
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..600)));
        // SIGKILL: nothing of the service runs after this.
        service.kill().expect("kill the service");
        let status = service.wait().expect("reap the service");
        assert!(!status.success(), "the service was killed: {status}");
        let rows: i64 = runtime.block_on(async {
            row_counts(&connect(&url).await, "received")
                .await
                .values()
                .sum()
        });
        killed_with_rows.push(rows);
    }
    let status = child(KILLS, true).wait().expect("the last run");
    assert!(status.success(), "the last run ends by itself: {status}");
    let counts = runtime.block_on(async { row_counts(&connect(&url).await, "received").await });
    let found = violations(&counts, KILLS + 1);
    assert!(
        found.is_empty(),
        "after {KILLS} kills (rows after each: {killed_with_rows:?}): {found:?}"
    );
    // Most kills landed while work was left: rows kept coming in between them.
    let grew = killed_with_rows.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        grew >= KILLS / 2,
        "the kills did not spread over the deliveries (rows after each: {killed_with_rows:?})"
    );
    drop(cluster);
}

/// The service of [`sigkills_during_pg_deliveries_keep_every_row_once`] (does nothing
/// unless [`CHILD_ENV`] is set): opens its sessions, re-issues its batches, and waits for
/// them (the last run) or for its kill.
#[test]
fn kill_child() {
    let Some(args) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let args = args.to_string_lossy().into_owned();
    let parts: Vec<&str> = args.split(' ').collect();
    let [url, dir, objects, launch, last, mode] = parts[..] else {
        panic!("{CHILD_ENV} is `URL DIR OBJECTS_URL LAUNCH FINAL MODE`, not {args:?}");
    };
    let launch: usize = launch.parse().expect("the launch number");
    let _scenario = fail::FailScenario::setup();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let builder = builder(std::path::Path::new(dir));
        let (sessions, delegate) = if mode == "deliveries" {
            let deliveries = PgDeliveries::install(connect(url).await, "app")
                .await
                .expect("install");
            (builder.open().expect("open"), exact_delegate(&deliveries))
        } else {
            let arm = match mode.strip_prefix("backend:") {
                Some("store-before-commit") => Some("store-before-commit"),
                Some("store-after-commit") => Some("store-after-commit"),
                Some(other) => panic!("unknown fail point {other}"),
                None => None,
            };
            let sessions = builder
                .postgres(session_store::PostgresOptions::new(url, "bgsession"))
                .open()
                .expect("open");
            (sessions, backend_delegate(arm))
        };
        let mut batches = Vec::new();
        for s in 0..SESSIONS {
            let session = sessions
                .session(&format!("kills-{s}"), config(), delegate.clone())
                .await
                .expect("session");
            // Everything issued before, and this launch's new tasks; dripped bodies, so
            // transfers and deliveries overlap the kills.
            let tasks = (0..=launch)
                .flat_map(tasks_of)
                .map(|task| {
                    let url = format!("{objects}{s}-{task}?size=12000&fault=drip:1024:25");
                    (task, TransferRequest::download(url))
                })
                .collect();
            batches.push(session.enqueue_batch(tasks, None).await.expect("enqueue"));
        }
        if last == "1" {
            for batch in &batches {
                batch.finished().await.expect("finished");
            }
            sessions.shutdown().await.expect("shutdown");
        } else {
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
    });
}
