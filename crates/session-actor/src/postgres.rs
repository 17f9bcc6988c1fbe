//! Exactly once into the application's own PostgreSQL database (feature `postgres`).
//!
//! An [`AsyncDelegate`](crate::AsyncDelegate) is delivered each event at least once: a
//! crash after it returned and before the delivery cursor committed delivers the same
//! event again, with the same [`DeliveryKey`]. [`PgDeliveries`] turns that into exactly
//! once for writes into PostgreSQL: [`PgDeliveries::begin`] opens a SQL transaction and
//! records the delivery key in a table of the application's schema *inside* that
//! transaction; the delegate writes its own rows through [`PgDelivery::client`] and
//! [`PgDelivery::commit`]s. The application's rows and "this event was delivered" commit
//! together, in PostgreSQL. A redelivery of a key that committed finds its row and gets
//! `None` (the delegate returns `Ok` and the cursor moves on); a redelivery of a key whose
//! transaction did not commit starts afresh, since nothing of it is in the database.
//!
//! ```no_run
//! # async fn example(client: tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use session_actor::postgres::PgDeliveries;
//! use session_actor::{Delegate, Delivery, Event};
//!
//! let deliveries = PgDeliveries::install(client, "my_service").await?;
//! let delegate = Delegate::at_least_once(move |delivery: Delivery| {
//!     let deliveries = deliveries.clone();
//!     async move {
//!         let Some(tx) = deliveries.begin(&delivery.key).await? else {
//!             return Ok(()); // delivered before, and committed with its rows
//!         };
//!         if let Event::TaskCompleted { task, .. } = &delivery.event {
//!             tx.client()
//!                 .execute("INSERT INTO my_service.received (task) VALUES ($1)", &[&task.as_str()])
//!                 .await
//!                 .map_err(session_actor::postgres::PgError::from)?;
//!         }
//!         tx.commit().await?;
//!         Ok(())
//!     }
//! });
//! # let _ = delegate;
//! # Ok(())
//! # }
//! ```
//!
//! The connection is the application's: connect with `tokio_postgres::connect` (with
//! the TLS the server needs) and drive its `Connection` on a tokio runtime, as
//! tokio-postgres requires. One `PgDeliveries` holds one connection, so its deliveries
//! run one at a time; give busy sessions one each.
//!
//! Keys are unique within one store: a session removed and created again numbers on. A
//! new store (a new root directory) starts again from the first keys, so give it a new
//! schema, or [`PgDeliveries::forget_session`] its sessions first; `forget_session` also
//! keeps the table small after [`Sessions::remove_session`](crate::Sessions::remove_session).

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::{Client, Statement};

use crate::delegate::{DelegateError, DeliveryKey};

/// What can go wrong with [`PgDeliveries`].
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The schema name is not a plain SQL identifier.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchema {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A sequence number past what a PostgreSQL `bigint` holds.
    #[error("delivery key {key}: its {field} does not fit a PostgreSQL bigint")]
    KeyOutOfRange {
        /// The key, as displayed.
        key: String,
        /// Which part.
        field: &'static str,
    },
    /// The server or the connection refused.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// So `?` works on [`PgError`] inside a delegate: a failed delivery, retried.
impl From<PgError> for DelegateError {
    fn from(error: PgError) -> Self {
        DelegateError::new(error.to_string())
    }
}

/// The table of delivered keys in the application's schema, and the connection that
/// writes it. Cheap to clone (one connection, shared).
#[derive(Clone)]
pub struct PgDeliveries {
    inner: Arc<Mutex<Inner>>,
    schema: Arc<str>,
}

impl std::fmt::Debug for PgDeliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDeliveries")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    /// A transaction may be open on the connection (a `PgDelivery` dropped before its
    /// commit finished): the next `begin` rolls it back first.
    dirty: bool,
    record: Statement,
    forget: Statement,
}

/// The name of the table of delivered keys, in the application's schema.
pub const DELIVERED_TABLE: &str = "bgsession_delivered";

impl PgDeliveries {
    /// Creates the schema and the table of delivered keys if they are missing, and keeps
    /// the connection for deliveries.
    ///
    /// # Errors
    /// [`PgError::InvalidSchema`] unless `schema` is a lowercase SQL identifier
    /// (`[a-z_][a-z0-9_]*`, at most 63 bytes); the server's errors.
    pub async fn install(client: Client, schema: &str) -> Result<PgDeliveries, PgError> {
        validate_schema(schema)?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.{DELIVERED_TABLE} (
                     session text NOT NULL,
                     seq bigint NOT NULL,
                     generation bigint NOT NULL,
                     delivered_at timestamptz NOT NULL DEFAULT now(),
                     PRIMARY KEY (session, seq)
                 );"
            ))
            .await?;
        let (record, forget) = prepare(&client, schema).await?;
        Ok(PgDeliveries {
            inner: Arc::new(Mutex::new(Inner {
                client,
                dirty: false,
                record,
                forget,
            })),
            schema: schema.into(),
        })
    }

    /// Replaces the connection (after the old one broke: every delivery through a closed
    /// one fails, and is tried again, until this is called). A delivery holding the old
    /// connection finishes with it first; its transaction ends with that connection.
    ///
    /// # Errors
    /// The server's errors (preparing the statements); the old connection stays.
    pub async fn reconnect(&self, client: Client) -> Result<(), PgError> {
        let (record, forget) = prepare(&client, &self.schema).await?;
        let mut inner = self.inner.lock().await;
        *inner = Inner {
            client,
            dirty: false,
            record,
            forget,
        };
        Ok(())
    }

    /// Whether the connection has closed (see [`reconnect`](Self::reconnect)).
    pub async fn is_closed(&self) -> bool {
        self.inner.lock().await.client.is_closed()
    }

    /// The schema the table of delivered keys lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Opens the transaction of this delivery, with its key recorded in it; `None` when a
    /// delivery of this key committed before (nothing to do). Waits while another
    /// delivery holds the connection.
    ///
    /// # Errors
    /// [`PgError::KeyOutOfRange`]; the server's errors (the delegate's `?` makes them a
    /// failed delivery, tried again).
    pub async fn begin(&self, key: &DeliveryKey) -> Result<Option<PgDelivery>, PgError> {
        let seq = bigint(key, key.seq, "sequence number")?;
        let generation = bigint(key, key.generation, "generation")?;
        let mut inner = Arc::clone(&self.inner).lock_owned().await;
        if inner.dirty {
            // ROLLBACK outside a transaction is only a warning.
            inner.client.batch_execute("ROLLBACK").await?;
            inner.dirty = false;
        }
        inner.dirty = true;
        inner.client.batch_execute("BEGIN").await?;
        let record = inner.record.clone();
        let inserted = inner
            .client
            .execute(&record, &[&key.session.as_str(), &seq, &generation])
            .await?;
        if inserted == 0 {
            inner.client.batch_execute("ROLLBACK").await?;
            inner.dirty = false;
            tracing::debug!(%key, "delivered and committed before: skipped");
            return Ok(None);
        }
        Ok(Some(PgDelivery { inner }))
    }

    /// Whether a delivery of `key` has committed.
    ///
    /// # Errors
    /// [`PgError::KeyOutOfRange`]; the server's errors.
    pub async fn is_delivered(&self, key: &DeliveryKey) -> Result<bool, PgError> {
        let seq = bigint(key, key.seq, "sequence number")?;
        let inner = self.inner.lock().await;
        let row = inner
            .client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {}.{DELIVERED_TABLE} WHERE session = $1 AND seq = $2",
                    self.schema
                ),
                &[&key.session.as_str(), &seq],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Drops the delivered keys of a session (removed with
    /// [`Sessions::remove_session`](crate::Sessions::remove_session), or of a store that
    /// was deleted). Returns how many keys went.
    ///
    /// # Errors
    /// The server's errors.
    pub async fn forget_session(&self, session: &str) -> Result<u64, PgError> {
        let mut inner = self.inner.lock().await;
        if inner.dirty {
            inner.client.batch_execute("ROLLBACK").await?;
            inner.dirty = false;
        }
        let forget = inner.forget.clone();
        Ok(inner.client.execute(&forget, &[&session]).await?)
    }
}

/// One delivery's open SQL transaction, holding the connection: write the application's
/// rows through [`client`](Self::client), then [`commit`](Self::commit). Dropped without
/// a commit, nothing of it is kept (the transaction is rolled back before the next use).
pub struct PgDelivery {
    inner: OwnedMutexGuard<Inner>,
}

impl std::fmt::Debug for PgDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDelivery").finish_non_exhaustive()
    }
}

impl PgDelivery {
    /// The connection, inside the delivery's transaction: statements run here commit
    /// with the delivery or not at all. Do not issue `COMMIT` or `ROLLBACK` yourself.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Commits the application's rows with the delivered key.
    ///
    /// # Errors
    /// The server's errors: the delivery failed and is tried again (if the commit did
    /// reach the server after all, the next try finds the key and skips).
    pub async fn commit(mut self) -> Result<(), PgError> {
        self.inner.client.batch_execute("COMMIT").await?;
        self.inner.dirty = false;
        Ok(())
    }
}

/// The two statements of a connection: record a key, forget a session's keys.
async fn prepare(client: &Client, schema: &str) -> Result<(Statement, Statement), PgError> {
    let record = client
        .prepare(&format!(
            "INSERT INTO {schema}.{DELIVERED_TABLE} (session, seq, generation)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        ))
        .await?;
    let forget = client
        .prepare(&format!(
            "DELETE FROM {schema}.{DELIVERED_TABLE} WHERE session = $1"
        ))
        .await?;
    Ok((record, forget))
}

fn bigint(key: &DeliveryKey, value: u64, field: &'static str) -> Result<i64, PgError> {
    i64::try_from(value).map_err(|_| PgError::KeyOutOfRange {
        key: key.to_string(),
        field,
    })
}

fn validate_schema(name: &str) -> Result<(), PgError> {
    let refuse = |reason| {
        Err(PgError::InvalidSchema {
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return refuse("empty"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return refuse("must start with a lowercase letter or '_'");
        }
        Some(_) => {}
    }
    if name.len() > 63 {
        return refuse("longer than PostgreSQL's 63-byte identifiers");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return refuse("only lowercase letters, digits and '_'");
    }
    if name.starts_with("pg_") {
        return refuse("names starting with pg_ are PostgreSQL's");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["app", "_x", "my_service_2"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "App",
            "1app",
            "a-b",
            "a;drop",
            "a b",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(validate_schema(bad), Err(PgError::InvalidSchema { .. })),
                "{bad}"
            );
        }
    }
}
