//! Exactly once into the application's own PostgreSQL (a throwaway cluster on
//! 127.0.0.1, started by the test): a delegate writing its rows through `PgDeliveries`
//! keeps each row once while every delivery's cursor commit is lost after the SQL
//! commit (the `actor-after-delegate-before-commit` fail point, as a crash between the
//! two would); a naive delegate writing the same rows directly, in the same run, writes
//! some twice, so the check can fail. Its own test binary: fail points are process-wide.

use std::sync::Arc;
use std::time::Duration;

use session_actor::postgres::{DELIVERED_TABLE, PgDeliveries};
use session_actor::{Delegate, DelegateError, Delivery, SessionConfig, TransferRequest};
use session_harness::postgres::postgres_or_skip;
use session_tests::ledger::{builder, origin, wait_until};
use session_tests::pg::{connect, create_received, exact_delegate, row, row_counts};
use tokio_postgres::Client;

const TASKS: usize = 6;

fn config() -> SessionConfig {
    SessionConfig {
        delivery_retry_ms_base: 1,
        delivery_retry_ms_max: 20,
        ..SessionConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_through_pg_deliveries_exist_once_when_cursor_commits_are_lost() {
    let Some(cluster) = postgres_or_skip("postgres_delivery") else {
        return;
    };
    let scenario = fail::FailScenario::setup();
    let url = cluster.url();
    let deliveries = PgDeliveries::install(connect(&url).await, "app")
        .await
        .expect("install");
    let naive = Arc::new(connect(&url).await);
    naive
        .batch_execute(
            "CREATE TABLE app.received (session text NOT NULL, what text NOT NULL);
             CREATE TABLE app.naive (session text NOT NULL, what text NOT NULL);",
        )
        .await
        .expect("the application's tables");

    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let exact = exact_delegate(&deliveries);
    let plain = {
        let naive = Arc::clone(&naive);
        Delegate::at_least_once(move |delivery: Delivery| {
            let naive = Arc::clone(&naive);
            async move {
                let (session, what) = row(&delivery);
                naive
                    .execute(
                        "INSERT INTO app.naive (session, what) VALUES ($1, $2)",
                        &[&session, &what],
                    )
                    .await
                    .map_err(|error| DelegateError::new(error.to_string()))?;
                Ok(())
            }
        })
    };
    let exact_session = sessions
        .session("exact", config(), exact)
        .await
        .expect("session");
    let naive_session = sessions
        .session("naive", config(), plain)
        .await
        .expect("session");

    // Every cursor commit after a delegate returned is lost, as a crash there would lose
    // it: each event is delivered again and again while this holds.
    fail::cfg("actor-after-delegate-before-commit", "return").expect("arm the fail point");
    let mut batches = Vec::new();
    for (session, prefix) in [(&exact_session, "e"), (&naive_session, "n")] {
        let tasks = (0..TASKS)
            .map(|i| {
                let url = origin.url(&format!("/objects/{prefix}{i}?size=100"));
                (format!("t{i}"), TransferRequest::download(url))
            })
            .collect();
        // One batch: one generation, one "did finish".
        batches.push(session.enqueue_batch(tasks, None).await.expect("enqueue"));
    }
    wait_until("deliveries repeated under the fail point", || async {
        let exact_tries = deliveries_tried(&naive, "received").await;
        let naive_rows = deliveries_tried(&naive, "naive").await;
        exact_tries >= 1 && naive_rows >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    fail::cfg("actor-after-delegate-before-commit", "off").expect("disarm");
    for batch in &batches {
        batch.finished().await.expect("finished");
    }

    let received = row_counts(&naive, "received").await;
    assert_eq!(received.len(), TASKS + 1, "{received:?}");
    assert!(
        received.values().all(|&n| n == 1),
        "a row written twice through PgDeliveries: {received:?}"
    );
    let delivered: i64 = naive
        .query_one(
            &format!("SELECT count(*) FROM app.{DELIVERED_TABLE} WHERE session = 'exact'"),
            &[],
        )
        .await
        .expect("delivered keys")
        .get(0);
    assert_eq!(delivered, TASKS as i64 + 1, "one key per event");
    // The same faults, without PgDeliveries: rows written again (the check can fail).
    let naive_counts = row_counts(&naive, "naive").await;
    assert_eq!(naive_counts.len(), TASKS + 1, "{naive_counts:?}");
    assert!(
        naive_counts.values().any(|&n| n > 1),
        "the lost cursor commits did not redeliver: {naive_counts:?}"
    );

    // A key delivered is known; forgetting the session's keys frees them for a new
    // session of the same name.
    assert_eq!(
        deliveries.forget_session("exact").await.expect("forget"),
        TASKS as u64 + 1
    );
    sessions.shutdown().await.expect("shutdown");
    scenario.teardown();
    drop(cluster);
}

/// Rows in `table` (the naive one counts each try; the exact one only committed ones).
async fn deliveries_tried(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM app.{table}"), &[])
        .await
        .map(|row| row.get(0))
        .unwrap_or(0)
}

/// The environment variable that makes [`abort_child`] the child of [`an_abort_between_the_sql_commit_and_the_cursor_commit_keeps_the_row_once`]:
/// `URL DIR ORIGIN_URL`.
const CHILD_ENV: &str = "BGSESSION_PG_ABORT_CHILD";

/// An abort of the process (not a lost reply: the process is gone) right after the first
/// SQL commit and before its cursor commit; the next launch redelivers that event and
/// the row stays single.
#[test]
fn an_abort_between_the_sql_commit_and_the_cursor_commit_keeps_the_row_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(cluster) = postgres_or_skip("postgres_delivery abort") else {
        return;
    };
    // Serialised with the other fail-point test of this binary (its fail point is
    // process-wide).
    let scenario = fail::FailScenario::setup();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = cluster.url();
    runtime.block_on(async {
        create_received(&connect(&url).await).await;
    });
    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "abort_child", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{url} {} {}", dir.path().display(), origin.url("/objects/")),
        )
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child was to abort: {status}");

    runtime.block_on(async {
        let client = connect(&url).await;
        let before = row_counts(&client, "received").await;
        assert_eq!(
            before.values().sum::<i64>(),
            1,
            "exactly the first delivery committed in SQL before the abort: {before:?}"
        );
        let deliveries = PgDeliveries::install(connect(&url).await, "app")
            .await
            .expect("install");
        let sessions = builder(dir.path()).open().expect("reopen");
        let session = sessions
            .session("abort", config(), exact_delegate(&deliveries))
            .await
            .expect("session");
        wait_until("every event delivered after the restart", || async {
            row_counts(&client, "received").await.len() == TASKS + 1
        })
        .await;
        wait_until("the cursor past every event", || async {
            session
                .record()
                .ok()
                .flatten()
                .is_some_and(|record| !record.has_undelivered_events())
        })
        .await;
        let after = row_counts(&client, "received").await;
        assert!(after.values().all(|&n| n == 1), "a row twice: {after:?}");
        sessions.shutdown().await.expect("shutdown");
    });
    scenario.teardown();
    drop(cluster);
}

/// The child of the abort test (does nothing unless [`CHILD_ENV`] is set): enqueues a
/// batch and aborts at the first delivery's cursor commit.
#[test]
fn abort_child() {
    let Some(args) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let args = args.to_string_lossy().into_owned();
    let mut parts = args.split(' ');
    let (Some(url), Some(dir), Some(objects)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CHILD_ENV} is `URL DIR ORIGIN_URL`, not {args:?}");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let _scenario = fail::FailScenario::setup();
        let deliveries = PgDeliveries::install(connect(url).await, "app")
            .await
            .expect("install");
        let sessions = builder(std::path::Path::new(dir)).open().expect("open");
        let session = sessions
            .session("abort", config(), exact_delegate(&deliveries))
            .await
            .expect("session");
        fail::cfg("actor-after-delegate-before-commit", "return(abort)").expect("arm");
        let tasks = (0..TASKS)
            .map(|i| {
                let url = format!("{objects}a{i}?size=100");
                (format!("t{i}"), TransferRequest::download(url))
            })
            .collect();
        let batch = session.enqueue_batch(tasks, None).await.expect("enqueue");
        // Never resolves: the first delivery aborts the process.
        let _ = batch.finished().await;
        panic!("the fail point did not abort the process");
    });
}

/// A connection that breaks (its backend terminated) fails the deliveries through it,
/// visibly and without loss; `reconnect` with a new one delivers them, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_fails_deliveries_until_reconnected() {
    let Some(cluster) = postgres_or_skip("postgres_delivery reconnect") else {
        return;
    };
    // Not while the other tests of this binary have their fail point armed.
    let scenario = fail::FailScenario::setup();
    let url = cluster.url();
    let admin = connect(&url).await;
    create_received(&admin).await;
    let client = connect(&url).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let deliveries = PgDeliveries::install(client, "app").await.expect("install");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate the delegate's backend");
    wait_until("the connection to close", || async {
        deliveries.is_closed().await
    })
    .await;

    let origin = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let session = sessions
        .session("broken", config(), exact_delegate(&deliveries))
        .await
        .expect("session");
    let tasks = (0..TASKS)
        .map(|i| {
            let url = origin.url(&format!("/objects/b{i}?size=100"));
            (format!("t{i}"), TransferRequest::download(url))
        })
        .collect();
    let batch = session.enqueue_batch(tasks, None).await.expect("enqueue");
    wait_until("a failed delivery, visible in the status", || async {
        session
            .status()
            .await
            .is_ok_and(|status| status.delivery_failure.is_some())
    })
    .await;
    assert!(row_counts(&admin, "received").await.is_empty());

    deliveries
        .reconnect(connect(&url).await)
        .await
        .expect("reconnect");
    session.retry_now().await.expect("retry now");
    batch
        .finished()
        .await
        .expect("delivered after the reconnect");
    let received = row_counts(&admin, "received").await;
    assert_eq!(received.len(), TASKS + 1, "{received:?}");
    assert!(received.values().all(|&n| n == 1), "{received:?}");
    sessions.shutdown().await.expect("shutdown");
    scenario.teardown();
    drop(cluster);
}
