//! Where a test keeps its store, on either backend: the LMDB store directory or a schema
//! of the test binary's throwaway PostgreSQL cluster (started on first use, stopped when
//! the binary exits). [`on_every_backend!`](crate::on_every_backend) runs a test body on
//! both; the store's and the sessions' test suites use it.

/// A backend the store tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An LMDB store in a temporary directory.
    Lmdb,
    /// A PostgreSQL store in a schema of the binary's throwaway cluster.
    Postgres,
}

/// Where a test keeps its store: a temporary directory (LMDB), or a schema of its own
/// in the test binary's throwaway PostgreSQL cluster. `open` may be called again after
/// the store is closed or dropped: it opens the same store.
#[derive(Debug, Clone)]
pub struct Place {
    /// Which backend.
    pub backend: Backend,
    /// Shared by the clones (a test hands them to its threads); removed with the last.
    dir: std::sync::Arc<tempfile::TempDir>,
    url: String,
    schema: String,
}

static CLUSTER: std::sync::Mutex<Option<crate::postgres::Cluster>> = std::sync::Mutex::new(None);
static CLUSTER_URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
static SCHEMAS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Stops the binary's cluster when the test binary exits (the harness of `cargo test`
/// leaves through `exit`, which runs this).
extern "C" fn stop_cluster() {
    let cluster = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(cluster);
}

/// The URL of the test binary's cluster, started on first use; `None` (after one skip
/// line) where PostgreSQL is not installed and `BGSESSION_REQUIRE_POSTGRES` is not `1`.
pub fn cluster_url(test: &str) -> Option<String> {
    CLUSTER_URL
        .get_or_init(|| {
            let cluster = crate::postgres::postgres_or_skip(test)?;
            let url = cluster.url();
            *CLUSTER
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cluster);
            // SAFETY: `stop_cluster` is an `extern "C" fn()` that neither unwinds (it
            // only takes the cluster out of its mutex and drops it) nor calls `exit`.
            unsafe { libc::atexit(stop_cluster) };
            Some(url)
        })
        .clone()
}

impl Place {
    /// A new LMDB store directory.
    pub fn lmdb() -> Place {
        Place {
            backend: Backend::Lmdb,
            dir: std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            url: String::new(),
            schema: String::new(),
        }
    }

    /// A new schema in the binary's cluster, or `None` when the test is skipped.
    pub fn postgres(test: &str) -> Option<Place> {
        let url = cluster_url(test)?;
        let n = SCHEMAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Place {
            backend: Backend::Postgres,
            dir: std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            url,
            schema: format!("t{}_{n}", std::process::id()),
        })
    }

    /// The local directory of the test (LMDB's store directory).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Opens the store with these application tables.
    pub fn open_with(&self, app_tables: &[&str]) -> session_store::Result<session_store::Store> {
        match self.backend {
            Backend::Lmdb => {
                let mut options = session_store::StoreOptions::default();
                for table in app_tables {
                    options = options.with_app_table(*table);
                }
                session_store::Store::open(self.dir.path(), options)
            }
            Backend::Postgres => {
                let mut options = session_store::PostgresOptions::new(&self.url, &self.schema);
                for table in app_tables {
                    options = options.app_table(*table);
                }
                session_store::Store::open_postgres(options)
            }
        }
    }

    /// A [`SessionsBuilder`](session_actor::SessionsBuilder) on this place: LMDB under
    /// the directory, or PostgreSQL in the schema with downloads under the directory.
    pub fn sessions_builder(&self) -> session_actor::SessionsBuilder {
        let builder = session_actor::Sessions::builder(self.dir.path());
        match self.backend {
            Backend::Lmdb => builder,
            Backend::Postgres => {
                builder.postgres(session_store::PostgresOptions::new(&self.url, &self.schema))
            }
        }
    }

    /// The server's URL and the schema (PostgreSQL); empty strings for LMDB.
    pub fn postgres_target(&self) -> (&str, &str) {
        (&self.url, &self.schema)
    }

    /// Opens the store with the application table `ledger`.
    pub fn open(&self) -> session_store::Store {
        self.open_with(&["ledger"]).expect("open the store")
    }
}

/// Runs each named test, a function taking a `&Place`, on every backend: as
/// `lmdb::<name>` and `postgres::<name>` (the latter skipped, with one line, where
/// PostgreSQL is not installed).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod lmdb {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::stores::Place::lmdb());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(place) = $crate::stores::Place::postgres(stringify!($name)) {
                        super::$name(&place);
                    }
                }
            )*
        }
    };
}
