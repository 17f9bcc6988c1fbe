//! The PostgreSQL side of the exactly-once tests: a connection to the test's throwaway
//! cluster, the application's table, and the delegate under test, which writes one row
//! per delivery through `PgDeliveries` (its row and the delivery key commit together).

use std::collections::BTreeMap;

use session_actor::postgres::{PgDeliveries, PgError};
use session_actor::{Delegate, Delivery, Event};
use tokio_postgres::Client;

/// Connects to `url` and drives the connection on the current tokio runtime.
///
/// # Panics
/// When the cluster refuses the connection.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(async move {
        // The connection ends with the test's cluster.
        let _ = connection.await;
    });
    client
}

/// Creates `app.received (session, what)`, the application's table the delegate writes.
/// No unique key: a row written twice shows as a count of 2.
///
/// # Panics
/// When the statement fails.
pub async fn create_received(client: &Client) {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS app;
             CREATE TABLE IF NOT EXISTS app.received (session text NOT NULL, what text NOT NULL);",
        )
        .await
        .expect("the application's table");
}

/// What a delivery writes: (session, task) for a task event, (session, `did finish N`)
/// for generation N's end.
pub fn row(delivery: &Delivery) -> (String, String) {
    let what = match &delivery.event {
        Event::TaskCompleted { task, .. } => task.to_string(),
        Event::DidFinishEvents => format!("did finish {}", delivery.key.generation),
    };
    (delivery.key.session.to_string(), what)
}

/// The delegate under test: one `app.received` row per delivery, in the transaction that
/// records its key.
pub fn exact_delegate(deliveries: &PgDeliveries) -> Delegate {
    let deliveries = deliveries.clone();
    Delegate::at_least_once(move |delivery: Delivery| {
        let deliveries = deliveries.clone();
        async move {
            let Some(tx) = deliveries.begin(&delivery.key).await? else {
                return Ok(());
            };
            let (session, what) = row(&delivery);
            tx.client()
                .execute(
                    "INSERT INTO app.received (session, what) VALUES ($1, $2)",
                    &[&session, &what],
                )
                .await
                .map_err(PgError::from)?;
            tx.commit().await?;
            Ok(())
        }
    })
}

/// The delegate under test on the PostgreSQL backend: one `app.received` row per
/// delivery, written through the batch's own SQL transaction (`WriteScope::postgres`),
/// so it commits with the delivery cursor. With `arm` set, its first delivery arms that
/// fail point (`store-before-commit` or `store-after-commit`, as `return(abort)`) once
/// the row is written, so the process aborts in the same batch, between the row's write
/// and the commit or just after the commit.
pub fn backend_delegate(arm: Option<&'static str>) -> Delegate {
    let armed = std::sync::atomic::AtomicBool::new(false);
    Delegate::transactional(
        move |delivery: &Delivery, scope: &mut session_actor::WriteScope<'_>| {
            let (session, what) = row(delivery);
            scope.postgres()?.execute(
                "INSERT INTO app.received (session, what) VALUES ($1, $2)",
                &[&session, &what],
            )?;
            if let Some(point) = arm
                && !armed.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                fail::cfg(point, "return(abort)").map_err(session_actor::DelegateError::new)?;
            }
            Ok(())
        },
    )
}

/// How many rows of `app.<table>` each (session, what) has.
///
/// # Panics
/// When the query fails.
pub async fn row_counts(client: &Client, table: &str) -> BTreeMap<(String, String), i64> {
    client
        .query(
            &format!("SELECT session, what, count(*) FROM app.{table} GROUP BY session, what"),
            &[],
        )
        .await
        .expect("count rows")
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect()
}
