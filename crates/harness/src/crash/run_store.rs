//! Which backend a run keeps its records in (`crash --store`), saved in the run
//! directory as `store.json` so that every worker, the verifier's reading of the facts
//! and `verify --dir` open the same store. No file means LMDB under `<dir>/store`.
//!
//! On PostgreSQL the ledger is a table of the application's own schema,
//! `<schema>_app.ledger`, written through the batch's SQL transaction
//! ([`session_store::WriteScope::postgres`]); see [`super::ledger`].

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use session_actor::{Sessions, SessionsBuilder};
use session_store::{PostgresOptions, Store, StoreOptions};

use super::ledger::{LEDGER_TABLE, Ledger};

/// The file in the run directory.
pub const STORE_FILE_NAME: &str = "store.json";

/// Where a run keeps its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum RunStore {
    /// LMDB under the run's library root.
    Lmdb,
    /// PostgreSQL: the server and the store's schema (the ledger is in
    /// `<schema>_app`).
    Postgres {
        /// The server's URL.
        url: String,
        /// The store's schema.
        schema: String,
    },
}

impl RunStore {
    /// The run directory's store, LMDB when it says nothing.
    ///
    /// # Errors
    /// A `store.json` that cannot be read or parsed.
    pub fn load(dir: &Path) -> anyhow::Result<RunStore> {
        let path = dir.join(STORE_FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(RunStore::Lmdb),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Saves it in the run directory.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(STORE_FILE_NAME);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// A `SessionsBuilder` on the library root `root` with this store.
    pub fn builder(&self, root: &Path) -> SessionsBuilder {
        let builder = Sessions::builder(root);
        match self {
            RunStore::Lmdb => builder,
            RunStore::Postgres { url, schema } => {
                builder.postgres(PostgresOptions::new(url.clone(), schema.clone()))
            }
        }
    }

    /// Opens the store of the library root `root` with the ledger and `app_tables`.
    ///
    /// # Errors
    /// The store's errors.
    pub fn open(&self, root: &Path, app_tables: &[String]) -> session_store::Result<Store> {
        let mut tables = vec![LEDGER_TABLE.to_owned()];
        tables.extend(app_tables.iter().filter(|t| *t != LEDGER_TABLE).cloned());
        match self {
            RunStore::Lmdb => {
                let options = StoreOptions {
                    app_tables: tables,
                    ..StoreOptions::default()
                };
                Store::open(root, options)
            }
            RunStore::Postgres { url, schema } => {
                let mut options = PostgresOptions::new(url.clone(), schema.clone());
                options.app_tables = tables;
                Store::open_postgres(options)
            }
        }
    }

    /// The ledger of this store.
    pub fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(match self {
            RunStore::Lmdb => Ledger::named()?,
            RunStore::Postgres { schema, .. } => Ledger::sql(schema),
        })
    }

    /// Creates the ledger's SQL tables (PostgreSQL; nothing on LMDB), before the first
    /// worker starts.
    ///
    /// # Errors
    /// The server refuses.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let RunStore::Postgres { url, schema } = self else {
            return Ok(());
        };
        let sql = Ledger::sql(schema).create_sql();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&sql)
                .await
                .context("creating the ledger's tables")?;
            drop(client);
            let _ = driver.await;
            Ok(())
        })
    }

    /// The application's SQL schema beside the store's (`<schema>_app`, which also holds
    /// the ledger); `None` on LMDB.
    pub fn app_schema(&self) -> Option<String> {
        match self {
            RunStore::Lmdb => None,
            RunStore::Postgres { schema, .. } => Some(format!("{schema}_app")),
        }
    }

    /// "lmdb" or "postgres".
    pub fn name(&self) -> &'static str {
        match self {
            RunStore::Lmdb => "lmdb",
            RunStore::Postgres { .. } => "postgres",
        }
    }
}
