//! The PostgreSQL backend (feature `postgres`): the store's tables as SQL tables in a
//! schema the application names, one writer connection with group commit, snapshots on
//! connections of their own.
//!
//! Tables. Every built-in table is a table `<schema>.<name>` of `(k bytea primary key,
//! v bytea not null)`, holding the same keys and the same versioned values as in LMDB
//! (`bytea` sorts by unsigned bytes, shorter first, as LMDB does, so ranges and prefixes
//! mean the same). Application tables are `<schema>.app_<n>`, numbered in
//! `<schema>.app_tables` (their names may be longer than PostgreSQL's identifiers);
//! `<schema>.meta` holds the schema and codec versions. `open` creates and checks them.
//!
//! Ownership. The writer connection holds a session-level advisory lock on the schema's
//! name for as long as it lives: a second owner, in this process or another, gets
//! [`Error::Locked`], as with LMDB's directory lock. A killed owner's connection closes
//! and the server releases its lock. If the writer's connection is lost, the writer
//! connects again and takes the lock again before it writes anything; if another owner
//! has it by then, every write is `Locked`.
//!
//! Group commit. The writer drains up to `batch_units_max` units into one SQL
//! transaction. A unit's writes to the store's records go into an in-memory overlay
//! (reads see them; a read the overlay cannot answer goes to the server inside the
//! transaction). A unit that fails has its overlay dropped; one that succeeds has it
//! merged into the batch's. At the end, the batch's writes go to the server as one
//! multi-row statement per table and kind (range deletes, deletes, upserts), pipelined in
//! one round trip, and then `COMMIT`. Replies go out only after the commit. A unit that
//! writes the application's own SQL through [`WriteScope::postgres`] does so inside the
//! same transaction, behind a savepoint taken at its first statement: if the unit fails
//! (or a statement of it failed, even one whose error it swallowed), the writer rolls
//! back to the savepoint and the rest of the batch goes on.
//!
//! Client. `tokio-postgres` (already the client of `session_actor::postgres`), with its
//! connections driven by a one-thread tokio runtime the store owns. The writer and
//! snapshot reads wait for replies with a plain thread park (`block_on` below), not with
//! the runtime, so they work from any thread: the writer's own, an actor's inside a
//! tokio runtime, a plain thread. Pipelining is tokio-postgres's: statements polled
//! together are sent before their replies are read.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::error::{Error, ErrorKind, Result};
use crate::kv::{Builtin, KeyRange, Kv, KvWrite, TableRef, Visit, in_range};
use crate::options::{
    APP_TABLES_MAX, BATCH_UNITS_MAX, QUEUE_UNITS_MAX, SNAPSHOT_AGE_MS_MAX, validate_app_table_name,
};
use crate::queue::Queue;
use crate::records::SCHEMA_VERSION;
use crate::scope::{UnitBackend, WriteScope};
use crate::tables::CODEC_VERSION;
use crate::writer::{Finish, Job, UnitStatus};

/// How long `open` tries for the ownership lock before it reports `Locked` (a killed
/// owner's server process needs a moment to notice its connection closed).
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// The pause between tries.
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(25);
/// How long a connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sent data may stay unacknowledged before the connection counts as lost.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a statement of the store's connections waits for a lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows fetched per round trip by a scan.
const SCAN_PAGE_ROWS: usize = 512;
/// Idle snapshot connections kept for the next snapshot.
const IDLE_READERS_MAX: usize = 4;
/// Prepared statements kept per connection; past this many (an application that builds
/// its SQL text per call) the cache starts again.
const STATEMENTS_MAX: usize = 512;
/// A multi-row statement of the batch's flush carries at most this many rows...
const FLUSH_ROWS_MAX: usize = 8192;
/// ...and at most about this many bytes of keys and values (a parameter is bounded by
/// the server's 1 GiB, and a batch of large application values can exceed it).
const FLUSH_BYTES_MAX: usize = 32 * 1024 * 1024;
/// The savepoint of a unit's SQL.
const SAVEPOINT: &str = "bgsession_unit";

/// Where and how to keep a store in PostgreSQL ([`Store::open_postgres`](crate::Store::open_postgres)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The server, as a libpq-style URL or key-value string
    /// (`postgres://user@127.0.0.1:5432/db`, `host=... port=...`). No TLS: use a
    /// loopback or Unix socket connection, or a server on a trusted network.
    pub url: String,
    /// The schema holding the store's tables: a plain lower-case SQL identifier
    /// (`[a-z_][a-z0-9_]*`, at most 48 bytes). One store per schema.
    pub schema: String,
    /// Application tables to create or open, as [`StoreOptions::app_tables`](crate::StoreOptions::app_tables).
    pub app_tables: Vec<String>,
    /// Units per SQL transaction at most.
    pub batch_units_max: usize,
    /// Units waiting for the writer at most (submitters wait beyond).
    pub queue_units_max: usize,
    /// How long a snapshot may live, as [`StoreOptions::snapshot_age_ms_max`](crate::StoreOptions::snapshot_age_ms_max).
    pub snapshot_age_ms_max: u64,
}

impl PostgresOptions {
    /// Options for the store in `schema` of the server at `url`, with the defaults of
    /// [`StoreOptions`](crate::StoreOptions) for the rest.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        let defaults = crate::StoreOptions::default();
        PostgresOptions {
            url: url.into(),
            schema: schema.into(),
            app_tables: Vec::new(),
            batch_units_max: defaults.batch_units_max,
            queue_units_max: defaults.queue_units_max,
            snapshot_age_ms_max: defaults.snapshot_age_ms_max,
        }
    }

    /// Adds an application table.
    pub fn app_table(mut self, name: impl Into<String>) -> Self {
        self.app_tables.push(name.into());
        self
    }

    fn validate(&self) -> Result<()> {
        validate_schema(&self.schema)?;
        if self.app_tables.len() > APP_TABLES_MAX {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "{} application tables, at most {APP_TABLES_MAX}",
                    self.app_tables.len()
                ),
            });
        }
        for name in &self.app_tables {
            validate_app_table_name(name)?;
        }
        let in_range = |value: usize, max: usize, what: &str| {
            if value == 0 || value > max {
                Err(Error::InvalidOptions {
                    reason: format!("{what} is {value}, not 1..={max}"),
                })
            } else {
                Ok(())
            }
        };
        in_range(self.batch_units_max, BATCH_UNITS_MAX, "batch_units_max")?;
        in_range(self.queue_units_max, QUEUE_UNITS_MAX, "queue_units_max")?;
        if self.snapshot_age_ms_max == 0 || self.snapshot_age_ms_max > SNAPSHOT_AGE_MS_MAX {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "snapshot_age_ms_max is {}, not 1..={SNAPSHOT_AGE_MS_MAX}",
                    self.snapshot_age_ms_max
                ),
            });
        }
        Ok(())
    }
}

/// PostgreSQL's reserved key words and those reserved as names of functions and types:
/// neither can name a schema unquoted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Schemas the store must not share: the default one and the standard's catalog.
const SHARED_SCHEMAS: &[&str] = &["public", "information_schema"];

/// A schema name the library can put into SQL unquoted and unescaped, and one of the
/// store's own.
pub(crate) fn validate_schema(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if RESERVED.contains(&name) || SHARED_SCHEMAS.contains(&name) {
        return Err(Error::InvalidOptions {
            reason: format!(
                "schema {name:?} is a reserved SQL word or a schema others use; name one of \
                 the store's own"
            ),
        });
    }
    if !first_ok || !rest_ok || name.len() > 48 || name.starts_with("pg_") {
        return Err(Error::InvalidOptions {
            reason: format!(
                "schema {:?} is not a plain SQL identifier ([a-z_][a-z0-9_]*, at most 48 \
                 bytes, not starting with pg_)",
                name.chars().take(64).collect::<String>()
            ),
        });
    }
    Ok(())
}

/// The kind of a PostgreSQL error.
pub(crate) fn error_kind(error: &tokio_postgres::Error) -> ErrorKind {
    use tokio_postgres::error::SqlState;
    match error.code() {
        Some(code) if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY => {
            ErrorKind::Full
        }
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::TOO_MANY_CONNECTIONS =>
        {
            ErrorKind::Busy
        }
        Some(code) if code.code().starts_with("08") || code.code().starts_with("57") => {
            ErrorKind::Io
        }
        Some(code) if code.code().starts_with("28") => ErrorKind::InvalidInput,
        Some(code) if code.code().starts_with("23") || code.code().starts_with("42") => {
            ErrorKind::InvalidInput
        }
        Some(_) => ErrorKind::Internal,
        // No SQLSTATE: the connection (closed, or an I/O error underneath), or the client
        // itself (a parameter of the wrong type or count, a value that does not decode).
        None if error.is_closed() || io_source(error) => ErrorKind::Io,
        None if error.to_string().contains("timed out") => ErrorKind::Io,
        None => ErrorKind::InvalidInput,
    }
}

/// Whether an I/O error is in the error's source chain.
fn io_source(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Waits for `future` by parking the thread: no runtime needed, none entered, so it
/// works on any thread, one inside a tokio runtime included (it blocks that thread, as
/// an LMDB read does). The futures it waits for are tokio-postgres's client calls,
/// whose I/O runs on the store's own runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}

/// A connection with its prepared statements.
pub(crate) struct Conn {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn statement(&self, sql: &str, operation: &'static str) -> Result<Statement> {
        if let Some(statement) = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sql)
        {
            return Ok(statement.clone());
        }
        let statement =
            block_on(self.client.prepare(sql)).map_err(|e| Error::postgres(operation, e))?;
        let mut statements = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if statements.len() >= STATEMENTS_MAX {
            statements.clear();
        }
        statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        operation: &'static str,
    ) -> Result<Vec<Row>> {
        let statement = self.statement(sql, operation)?;
        block_on(self.client.query(&statement, params)).map_err(|e| self.failed(sql, operation, e))
    }

    fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        operation: &'static str,
    ) -> Result<u64> {
        let statement = self.statement(sql, operation)?;
        block_on(self.client.execute(&statement, params))
            .map_err(|e| self.failed(sql, operation, e))
    }

    /// The error of a prepared statement; one the server says is stale (a table it
    /// reads changed shape since it was prepared) leaves the cache, so the next use
    /// prepares it again.
    fn failed(&self, sql: &str, operation: &'static str, error: tokio_postgres::Error) -> Error {
        use tokio_postgres::error::SqlState;
        if error.code().is_some_and(|code| {
            *code == SqlState::FEATURE_NOT_SUPPORTED
                || *code == SqlState::INVALID_SQL_STATEMENT_NAME
        }) {
            self.statements
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(sql);
        }
        Error::postgres(operation, error)
    }

    fn simple(&self, sql: &str, operation: &'static str) -> Result<()> {
        block_on(self.client.batch_execute(sql)).map_err(|e| Error::postgres(operation, e))
    }
}

/// What the store's handles, its writer and its snapshots share.
pub(crate) struct PgShared {
    /// Drives every connection; shut down in the background when the last handle goes
    /// (a runtime must not be dropped, blocking, inside another runtime).
    runtime: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    /// `postgresql://host:port/db#schema`, for errors and `Store::dir`.
    pub(crate) location: PathBuf,
    schema: String,
    /// Table to its SQL name (`schema.table`).
    builtin: HashMap<Builtin, String>,
    app: HashMap<String, String>,
    snapshot_age_max: Duration,
    closed: AtomicBool,
    idle_readers: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PgShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShared")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for PgShared {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgShared {
    /// A new connection, named in `pg_stat_activity` as `bgsession-<role>:<schema>`
    /// (role `w` for the writer, `r` for a reader).
    fn connect(&self, role: char, operation: &'static str) -> Result<Conn> {
        let runtime = self.runtime.as_ref().ok_or_else(|| self.closed_error())?;
        let mut config = self.config.clone();
        config.application_name(format!("bgsession-{role}:{}", self.schema));
        let connected = block_on(runtime.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "a PostgreSQL connection of the store ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        }));
        match connected {
            Ok(Ok(client)) => Ok(Conn {
                client,
                statements: Mutex::new(HashMap::new()),
            }),
            Ok(Err(error)) => Err(Error::postgres(operation, error)),
            Err(_) => Err(self.closed_error()),
        }
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed {
            dir: self.location.clone(),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    pub(crate) fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn has_app_table(&self, name: &str) -> bool {
        self.app.contains_key(name)
    }

    fn sql_table(&self, table: TableRef<'_>) -> Result<&str> {
        match table {
            TableRef::Builtin(builtin) => Ok(self.builtin[&builtin].as_str()),
            TableRef::App(name) => self
                .app
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| Error::UnknownTable { name: name.into() }),
        }
    }

    fn lock_sql(&self) -> String {
        format!(
            "SELECT pg_try_advisory_lock(hashtextextended('bgsession:{}', 0))",
            self.schema
        )
    }

    /// Takes the ownership lock on `conn`, waiting at most `LOCK_WAIT`.
    fn take_lock(&self, conn: &Conn) -> Result<()> {
        let sql = self.lock_sql();
        let started = Instant::now();
        loop {
            let rows = conn.query(&sql, &[], "taking the store's ownership lock")?;
            let taken: bool = rows
                .first()
                .and_then(|row| row.try_get(0).ok())
                .unwrap_or(false);
            if taken {
                return Ok(());
            }
            if started.elapsed() >= LOCK_WAIT {
                return Err(Error::Locked {
                    dir: self.location.clone(),
                });
            }
            thread::sleep(LOCK_RETRY_DELAY);
        }
    }
}

/// Opens the store: connects, takes the lock, creates or checks the tables, starts the
/// writer.
pub(crate) fn open(options: PostgresOptions) -> Result<crate::store::PgParts> {
    options.validate()?;
    let mut config: tokio_postgres::Config =
        options.url.parse().map_err(|error| Error::InvalidOptions {
            reason: format!("the PostgreSQL URL does not parse: {error}"),
        })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A half-open connection (a server or network gone without a word) ends in seconds
    // rather than hours, so the writer connects again instead of waiting forever.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    // A lock the application's SQL waits for (held by a snapshot of this very process,
    // say, which PostgreSQL cannot see as a deadlock) fails the statement instead.
    let server_options = config.get_options().map(str::to_owned).unwrap_or_default();
    config.options(
        format!(
            "{server_options} -c lock_timeout={}",
            LOCK_TIMEOUT.as_millis()
        )
        .trim_start(),
    );
    let location = location(&config, &options.schema);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("session-store-pg")
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: location.clone(),
            source,
        })?;
    let schema = options.schema.clone();
    let builtin = Builtin::ALL
        .into_iter()
        .map(|table| (table, format!("{schema}.{}", table.name())))
        .collect();
    let mut shared = PgShared {
        runtime: Some(runtime),
        config,
        location,
        schema,
        builtin,
        app: HashMap::new(),
        snapshot_age_max: Duration::from_millis(options.snapshot_age_ms_max),
        closed: AtomicBool::new(false),
        idle_readers: Mutex::new(Vec::new()),
    };
    let conn = shared.connect('w', "connecting the writer")?;
    shared.take_lock(&conn)?;
    shared.app = migrate(&shared, &conn, &options.app_tables)?;
    let shared = Arc::new(shared);
    let queue = Arc::new(Queue::new(options.queue_units_max));
    let writer = PgWriter {
        shared: Arc::clone(&shared),
        queue: Arc::clone(&queue),
        conn: Some(conn),
        batch_units_max: options.batch_units_max,
    };
    let handle = thread::Builder::new()
        .name("session-store-pg-writer".into())
        .spawn(move || writer.run())
        .map_err(|source| Error::Io {
            path: shared.location.clone(),
            source,
        })?;
    tracing::debug!(location = %shared.location.display(), "store opened");
    Ok(crate::store::PgParts {
        shared,
        queue,
        writer: handle,
    })
}

fn location(config: &tokio_postgres::Config, schema: &str) -> PathBuf {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    PathBuf::from(format!("postgresql://{host}:{port}/{db}#{schema}"))
}

/// Creates what is missing and checks the versions; returns the application tables'
/// SQL names.
fn migrate(
    shared: &PgShared,
    conn: &Conn,
    app_tables: &[String],
) -> Result<HashMap<String, String>> {
    let schema = &shared.schema;
    let operation = "creating the store's tables";
    let mut ddl = format!(
        "BEGIN; CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.meta (name text PRIMARY KEY, value bigint NOT NULL); \
         CREATE TABLE IF NOT EXISTS {schema}.app_tables (name text PRIMARY KEY, id serial UNIQUE);"
    );
    for table in Builtin::ALL {
        ddl.push_str(&format!(
            " CREATE TABLE IF NOT EXISTS {} (k bytea PRIMARY KEY, v bytea NOT NULL);",
            shared.builtin[&table]
        ));
    }
    conn.simple(&ddl, operation)?;
    let done = (|| {
        let version = |name: &str, ours: u32| -> Result<u32> {
            conn.query(
                &format!(
                    "INSERT INTO {schema}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
                ),
                &[&name, &i64::from(ours)],
                operation,
            )?;
            let rows = conn.query(
                &format!("SELECT value FROM {schema}.meta WHERE name = $1"),
                &[&name],
                operation,
            )?;
            let found: i64 = rows
                .first()
                .and_then(|row| row.try_get(0).ok())
                .unwrap_or(i64::from(ours));
            Ok(u32::try_from(found).unwrap_or(u32::MAX))
        };
        let found = version("schema_version", SCHEMA_VERSION)?;
        if found > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                dir: shared.location.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            conn.query(
                &format!("UPDATE {schema}.meta SET value = $1 WHERE name = 'schema_version'"),
                &[&i64::from(SCHEMA_VERSION)],
                operation,
            )?;
        }
        conn.query(
            &format!(
                "INSERT INTO {schema}.meta (name, value) VALUES ('batch', 0) ON CONFLICT (name) DO NOTHING"
            ),
            &[],
            operation,
        )?;
        let found = version("codec_version", CODEC_VERSION)?;
        if found != CODEC_VERSION {
            return Err(Error::CodecMismatch {
                dir: shared.location.clone(),
                found,
                supported: CODEC_VERSION,
            });
        }
        let mut app = HashMap::new();
        for name in app_tables {
            conn.query(
                &format!(
                    "INSERT INTO {schema}.app_tables (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
                ),
                &[name],
                operation,
            )?;
            let rows = conn.query(
                &format!("SELECT id FROM {schema}.app_tables WHERE name = $1"),
                &[name],
                operation,
            )?;
            let id: i32 = rows
                .first()
                .and_then(|row| row.try_get(0).ok())
                .ok_or_else(|| Error::Corrupt {
                    table: "app_tables",
                    key: name.clone(),
                    reason: "the table has no number".into(),
                })?;
            let sql = format!("{schema}.app_{id}");
            conn.simple(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {sql} (k bytea PRIMARY KEY, v bytea NOT NULL)"
                ),
                operation,
            )?;
            app.insert(name.clone(), sql);
        }
        Ok(app)
    })();
    match done {
        Ok(app) => {
            conn.simple("COMMIT", operation)?;
            Ok(app)
        }
        Err(error) => {
            let _ = conn.simple("ROLLBACK", operation);
            Err(error)
        }
    }
}

/// The SQL of a range condition on `k` with the bounds as `$1` and `$2`, and the
/// parameters (an unbounded side passes NULL and a condition that holds).
fn range_sql(range: &KeyRange<'_>) -> (&'static str, &'static str) {
    let lower = match range.0 {
        Bound::Included(_) => "k >= $1",
        Bound::Excluded(_) => "k > $1",
        Bound::Unbounded => "$1::bytea IS NULL",
    };
    let upper = match range.1 {
        Bound::Included(_) => "k <= $2",
        Bound::Excluded(_) => "k < $2",
        Bound::Unbounded => "$2::bytea IS NULL",
    };
    (lower, upper)
}

fn bound_value(bound: Bound<&[u8]>) -> Option<&[u8]> {
    match bound {
        Bound::Included(key) | Bound::Excluded(key) => Some(key),
        Bound::Unbounded => None,
    }
}

/// Reads of the server through `conn` (a snapshot's, or the writer's inside its batch).
fn server_get(
    shared: &PgShared,
    conn: &Conn,
    table: TableRef<'_>,
    key: &[u8],
    operation: &'static str,
) -> Result<Option<Vec<u8>>> {
    let sql = format!("SELECT v FROM {} WHERE k = $1", shared.sql_table(table)?);
    let rows = conn.query(&sql, &[&key], operation)?;
    match rows.first() {
        Some(row) => Ok(Some(
            row.try_get::<_, Vec<u8>>(0)
                .map_err(|e| Error::postgres(operation, e))?,
        )),
        None => Ok(None),
    }
}

/// What a scan of the server calls for each entry; `false` stops it.
type VisitWhile<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'v;

/// An owned key range.
type OwnedRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Visits the server's entries in `range` in key order, a page per round trip, while
/// `visit` returns `true`. The first page asks for `wanted` rows (what the caller expects
/// to need, at most a page), the later ones for a full page.
fn server_scan(
    shared: &PgShared,
    conn: &Conn,
    table: TableRef<'_>,
    range: KeyRange<'_>,
    wanted: usize,
    operation: &'static str,
    visit: &mut VisitWhile<'_>,
) -> Result<()> {
    let sql_table = shared.sql_table(table)?;
    let mut lower: Bound<Vec<u8>> = range.0.map(<[u8]>::to_vec);
    let mut page_rows = wanted.clamp(1, SCAN_PAGE_ROWS);
    loop {
        let page = (lower.as_ref().map(Vec::as_slice), range.1);
        let (lower_sql, upper_sql) = range_sql(&page);
        let sql = format!(
            "SELECT k, v FROM {sql_table} WHERE {lower_sql} AND {upper_sql} ORDER BY k LIMIT $3"
        );
        let start = bound_value(page.0);
        let end = bound_value(page.1);
        let rows = conn.query(&sql, &[&start, &end, &(page_rows as i64)], operation)?;
        let mut last = None;
        for row in &rows {
            let key: &[u8] = row.try_get(0).map_err(|e| Error::postgres(operation, e))?;
            let value: &[u8] = row.try_get(1).map_err(|e| Error::postgres(operation, e))?;
            if !visit(key, value)? {
                return Ok(());
            }
            last = Some(key);
        }
        match last {
            Some(key) if rows.len() == page_rows => lower = Bound::Excluded(key.to_vec()),
            _ => return Ok(()),
        }
        page_rows = SCAN_PAGE_ROWS;
    }
}

/// Writes not yet sent to the server, for one table.
#[derive(Debug, Default)]
struct TableOverlay {
    /// Ranges deleted, in order (entries written after a range's deletion are in
    /// `entries`; those written before were dropped from it).
    ranges: Vec<OwnedRange>,
    /// Keys written (`Some`) or deleted (`None`).
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl TableOverlay {
    fn hides(&self, key: &[u8]) -> bool {
        self.ranges.iter().any(|(start, end)| {
            in_range(
                &(
                    start.as_ref().map(Vec::as_slice),
                    end.as_ref().map(Vec::as_slice),
                ),
                key,
            )
        })
    }

    fn delete_range(&mut self, range: KeyRange<'_>) {
        self.entries.retain(|key, _| !in_range(&range, key));
        self.ranges
            .push((range.0.map(<[u8]>::to_vec), range.1.map(<[u8]>::to_vec)));
    }

    /// Applies `later` (writes made after this overlay's) onto it.
    fn merge(&mut self, later: TableOverlay) {
        for (start, end) in later.ranges {
            self.delete_range((
                start.as_ref().map(Vec::as_slice),
                end.as_ref().map(Vec::as_slice),
            ));
        }
        self.entries.extend(later.entries);
    }
}

/// Writes not yet sent, by SQL table name.
#[derive(Debug, Default)]
struct Overlay {
    tables: BTreeMap<String, TableOverlay>,
}

impl Overlay {
    fn merge(&mut self, later: Overlay) {
        for (table, overlay) in later.tables {
            self.tables.entry(table).or_default().merge(overlay);
        }
    }
}

/// What the overlays say about a key.
enum Seen<'a> {
    Written(&'a [u8]),
    Deleted,
    Unknown,
}

/// One unit's part of a batch.
struct PgUnit<'b> {
    shared: &'b PgShared,
    conn: &'b Conn,
    batch: &'b Overlay,
    own: Overlay,
    /// Whether the unit's SQL is behind the savepoint.
    savepoint: bool,
    /// The first error of the unit's SQL: PostgreSQL then refuses the rest of the
    /// transaction until the savepoint is rolled back to, so the unit fails whatever it
    /// returns.
    sql_failed: Option<Error>,
}

impl PgUnit<'_> {
    fn seen(&self, sql_table: &str, key: &[u8]) -> Seen<'_> {
        for overlay in [
            self.own.tables.get(sql_table),
            self.batch.tables.get(sql_table),
        ]
        .into_iter()
        .flatten()
        {
            match overlay.entries.get(key) {
                Some(Some(value)) => return Seen::Written(value),
                Some(None) => return Seen::Deleted,
                None if overlay.hides(key) => return Seen::Deleted,
                None => {}
            }
        }
        Seen::Unknown
    }

    fn own_table(&mut self, table: TableRef<'_>) -> Result<&mut TableOverlay> {
        let sql_table = self.shared.sql_table(table)?.to_string();
        Ok(self.own.tables.entry(sql_table).or_default())
    }

    fn check_sql(&self) -> Result<()> {
        match &self.sql_failed {
            // The transaction refuses statements until the savepoint is rolled back to.
            Some(error) => Err(clone_error(error)),
            None => Ok(()),
        }
    }
}

/// A copy of an error for every unit of a failed batch, or for a unit's SQL failure kept
/// to fail it later: the variants the writer meets keep their kind; any other becomes
/// `Internal` with its message.
fn clone_error(error: &Error) -> Error {
    match error {
        Error::Backend { operation, source } => Error::Backend {
            operation,
            source: source.clone(),
        },
        Error::FailPoint { name } => Error::FailPoint { name },
        Error::Locked { dir } => Error::Locked { dir: dir.clone() },
        Error::CommitUnknown { dir, reason } => Error::CommitUnknown {
            dir: dir.clone(),
            reason: reason.clone(),
        },
        Error::Closed { dir } => Error::Closed { dir: dir.clone() },
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Internal {
            reason: other.to_string(),
        },
    }
}

impl Kv for PgUnit<'_> {
    fn has_table(&self, table: TableRef<'_>) -> bool {
        self.shared.sql_table(table).is_ok()
    }

    fn get(
        &self,
        table: TableRef<'_>,
        key: &[u8],
        operation: &'static str,
    ) -> Result<Option<Cow<'_, [u8]>>> {
        let sql_table = self.shared.sql_table(table)?;
        match self.seen(sql_table, key) {
            Seen::Written(value) => Ok(Some(Cow::Borrowed(value))),
            Seen::Deleted => Ok(None),
            Seen::Unknown => {
                self.check_sql()?;
                Ok(server_get(self.shared, self.conn, table, key, operation)?.map(Cow::Owned))
            }
        }
    }

    fn scan(
        &self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        limit: usize,
        operation: &'static str,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        if limit == 0 {
            return Ok(());
        }
        let sql_table = self.shared.sql_table(table)?;
        // What the overlays hold within the range, later writes over earlier ones.
        let mut overlay: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        let levels = [
            self.batch.tables.get(sql_table),
            self.own.tables.get(sql_table),
        ];
        for level in levels.into_iter().flatten() {
            overlay.retain(|key, _| !level.hides(key));
            for (key, value) in &level.entries {
                if in_range(&range, key) {
                    overlay.insert(key.as_slice(), value.as_deref());
                }
            }
        }
        let hidden = |key: &[u8]| {
            levels
                .into_iter()
                .flatten()
                .any(|level| level.hides(key) || level.entries.contains_key(key))
        };
        // Server rows the overlays replace or delete are skipped: ask for that many more.
        let hidden_ranges: usize = levels.into_iter().flatten().map(|l| l.ranges.len()).sum();
        let wanted = if hidden_ranges > 0 {
            SCAN_PAGE_ROWS
        } else {
            limit.saturating_add(overlay.len())
        };
        let mut pending = overlay
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key, value)))
            .peekable();
        let mut visited = 0_usize;
        let mut emit = |key: &[u8], value: &[u8]| -> Result<bool> {
            visit(key, value)?;
            visited += 1;
            Ok(visited < limit)
        };
        self.check_sql()?;
        let mut more = true;
        server_scan(
            self.shared,
            self.conn,
            table,
            range,
            wanted,
            operation,
            &mut |key, value| {
                while let Some((written, written_value)) =
                    pending.next_if(|(written, _)| *written < key)
                {
                    if !emit(written, written_value)? {
                        more = false;
                        return Ok(false);
                    }
                }
                if hidden(key) {
                    return Ok(true);
                }
                if !emit(key, value)? {
                    more = false;
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        if more {
            for (key, value) in pending {
                if !emit(key, value)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl KvWrite for PgUnit<'_> {
    fn put(
        &mut self,
        table: TableRef<'_>,
        key: &[u8],
        value: &[u8],
        _operation: &'static str,
    ) -> Result<()> {
        self.own_table(table)?
            .entries
            .insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn insert_new(
        &mut self,
        table: TableRef<'_>,
        key: &[u8],
        value: &[u8],
        operation: &'static str,
    ) -> Result<bool> {
        if self.get(table, key, operation)?.is_some() {
            return Ok(false);
        }
        self.put(table, key, value, operation)?;
        Ok(true)
    }

    fn delete(&mut self, table: TableRef<'_>, key: &[u8], operation: &'static str) -> Result<bool> {
        let existed = self.get(table, key, operation)?.is_some();
        if existed {
            self.own_table(table)?.entries.insert(key.to_vec(), None);
        }
        Ok(existed)
    }

    fn delete_range(
        &mut self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        operation: &'static str,
    ) -> Result<u64> {
        let mut deleted = 0_u64;
        self.scan(table, range, usize::MAX, operation, &mut |_, _| {
            deleted += 1;
            Ok(())
        })?;
        if deleted > 0 {
            self.own_table(table)?.delete_range(range);
        }
        Ok(deleted)
    }
}

impl UnitBackend for PgUnit<'_> {
    fn location(&self) -> &Path {
        &self.shared.location
    }

    fn postgres(&mut self) -> Result<SqlTransaction<'_>> {
        self.check_sql()?;
        if !self.savepoint {
            self.conn.simple(
                &format!("SAVEPOINT {SAVEPOINT}"),
                "taking a unit's savepoint",
            )?;
            self.savepoint = true;
        }
        Ok(SqlTransaction { unit: self })
    }
}

/// The batch's live SQL transaction, from [`WriteScope::postgres`]: what the application
/// writes through it commits with the unit's records, or not at all.
///
/// Statements are prepared once per text and connection, and run one at a time (the
/// writer waits for each). A failing statement fails the unit: its error is returned,
/// and the unit's writes (SQL and records) are rolled back even if the unit returns
/// `Ok`. The writer owns the transaction: statements that would end or split it
/// (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints, advisory unlocks) are refused with
/// [`Error::InvalidRecord`] (table `sql`).
pub struct SqlTransaction<'u> {
    unit: &'u mut (dyn SqlUnit + 'u),
}

/// The unit behind a `SqlTransaction`.
trait SqlUnit {
    fn conn(&self) -> &Conn;
    fn fail(&mut self, error: &Error);
}

impl SqlUnit for PgUnit<'_> {
    fn conn(&self) -> &Conn {
        self.conn
    }

    fn fail(&mut self, error: &Error) {
        if self.sql_failed.is_none() {
            self.sql_failed = Some(clone_error(error));
        }
    }
}

impl std::fmt::Debug for SqlTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTransaction").finish_non_exhaustive()
    }
}

impl SqlTransaction<'_> {
    fn run<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result {
            self.unit.fail(error);
        }
        result
    }

    /// Runs a statement; returns the number of rows it affected.
    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let result = transaction_control(sql).and_then(|()| {
            self.unit
                .conn()
                .execute(sql, params, "running the application's statement")
        });
        self.run(result)
    }

    /// Runs a query; returns its rows.
    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let result = transaction_control(sql).and_then(|()| {
            self.unit
                .conn()
                .query(sql, params, "running the application's query")
        });
        self.run(result)
    }

    /// Runs a query expected to return at most one row.
    pub fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let mut rows = self.query(sql, params)?;
        if rows.len() > 1 {
            return Err(Error::InvalidRecord {
                table: "sql",
                key: sql.chars().take(80).collect(),
                reason: format!("the query returned {} rows, not at most one", rows.len()),
            });
        }
        Ok(rows.pop())
    }

    /// Runs statements separated by semicolons, without parameters (the simple query
    /// protocol: for DDL such as the application's `CREATE TABLE IF NOT EXISTS`).
    pub fn batch_execute(&mut self, sql: &str) -> Result<()> {
        let result = transaction_control(sql).and_then(|()| {
            self.unit
                .conn()
                .simple(sql, "running the application's statements")
        });
        self.run(result)
    }
}

/// Refuses statements that would end or split the writer's transaction (`BEGIN`,
/// `COMMIT`, `ROLLBACK`, savepoints, two-phase commit, advisory unlocks): the writer owns
/// the transaction, and one of those would commit or drop other units' writes behind its
/// back. Each statement of a `;`-separated text is looked at (a `;` inside a quoted
/// string can make this refuse a harmless text, never pass a harmful one).
fn transaction_control(sql: &str) -> Result<()> {
    const ENDING: &[&str] = &[
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "prepare transaction",
        "set transaction",
        "set session characteristics",
    ];
    for statement in sql.split(';') {
        let words: String = statement
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        let refused = ENDING.iter().any(|keyword| {
            words.strip_prefix(keyword).is_some_and(|rest| {
                rest.is_empty()
                    || rest.starts_with(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            })
        }) || words.contains("advisory_unlock");
        if refused {
            return Err(Error::InvalidRecord {
                table: "sql",
                key: statement.trim().chars().take(80).collect(),
                reason: "the writer owns the transaction: no BEGIN, COMMIT, ROLLBACK, \
                         savepoint or advisory unlock in a unit"
                    .into(),
            });
        }
    }
    Ok(())
}

/// The writer thread of the PostgreSQL backend.
struct PgWriter {
    shared: Arc<PgShared>,
    queue: Arc<Queue>,
    /// `None` after the connection was lost, until the next batch connects again.
    conn: Option<Conn>,
    batch_units_max: usize,
}

/// Why an attempt at a batch did not end with a known commit.
enum NotCommitted {
    /// It did not commit (or it cannot be known): every unit gets the error.
    Failed(Error),
    /// The connection went while `COMMIT` was under way: the batch whose token is
    /// `number` (a random number it wrote into `meta`, name `batch`; random, so that
    /// another owner's batch meanwhile cannot be taken for it) may have committed.
    Unknown { error: Error, number: i64, ran: Ran },
}

impl From<Error> for NotCommitted {
    fn from(error: Error) -> Self {
        NotCommitted::Failed(error)
    }
}

/// Whether `error` says the connection failed (no reply from the server), rather than
/// the server refusing: after a `COMMIT`, only the former leaves the outcome unknown.
fn connection_failed(error: &Error) -> bool {
    match error {
        Error::Backend { source, .. } => source.postgres_error().is_some_and(|error| {
            // No reply at all, or the server process ending the connection (it may have
            // written the commit record first).
            error.is_closed()
                || error.as_db_error().is_none()
                || error.code().is_some_and(|code| {
                    code.code().starts_with("08") || code.code().starts_with("57P0")
                })
        }),
        Error::Io { .. } => true,
        _ => false,
    }
}

/// How a batch's units came out, before the commit.
struct Ran {
    /// Per unit: an error it gets whatever it returned (its SQL failed).
    failed: Vec<Option<Error>>,
}

impl PgWriter {
    fn run(mut self) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(self.batch_units_max);
        while self.queue.pop_batch(self.batch_units_max, &mut batch) {
            self.commit_batch(&mut batch);
        }
        if let Some(conn) = self.conn.take() {
            // Let go of the lock now rather than when the server notices the closed
            // socket, so that the next owner can open at once.
            let _ = conn.query(
                &format!(
                    "SELECT pg_advisory_unlock(hashtextextended('bgsession:{}', 0))",
                    self.shared.schema
                ),
                &[],
                "releasing the store's ownership lock",
            );
        }
    }

    /// The writer's connection, connecting again (and taking the lock again) after a
    /// loss.
    fn conn(&mut self) -> Result<&Conn> {
        if self
            .conn
            .as_ref()
            .is_some_and(|conn| conn.client.is_closed())
        {
            tracing::warn!(location = %self.shared.location.display(), "the store's writer connection was lost; connecting again");
            self.conn = None;
        }
        if self.conn.is_none() {
            let conn = self.shared.connect('w', "connecting the writer again")?;
            self.shared.take_lock(&conn)?;
            self.conn = Some(conn);
        }
        self.conn.as_ref().ok_or_else(|| self.shared.closed_error())
    }

    /// `BEGIN`, on a new connection once if the current one turns out to be gone (a loss
    /// `is_closed` had not seen yet): no unit has run, so nothing is lost by trying again.
    fn begin(&mut self) -> Result<()> {
        let begun = self.conn()?.simple("BEGIN", "beginning a batch");
        match begun {
            Err(error) if connection_failed(&error) => {
                self.conn = None;
                self.conn()?.simple("BEGIN", "beginning a batch")
            }
            other => other,
        }
    }

    /// Whether the batch whose token is `number` committed, asked on a connection of its
    /// own (reading needs no ownership lock, which the lost connection's server process
    /// may still hold). The writer's connection is dropped: the next batch connects again.
    fn committed(&mut self, number: i64) -> Result<bool> {
        self.conn = None;
        let conn = self.shared.connect('w', "connecting to look up a batch")?;
        let rows = conn.query(
            &format!(
                "SELECT value FROM {}.meta WHERE name = 'batch'",
                self.shared.schema
            ),
            &[],
            "looking up a batch whose commit reply was lost",
        )?;
        let found: Option<i64> = rows.first().and_then(|row| row.try_get(0).ok());
        Ok(found == Some(number))
    }

    fn commit_batch(&mut self, batch: &mut Vec<Box<dyn Job>>) {
        let attempt = match self.attempt(batch) {
            Err(NotCommitted::Unknown { error, number, ran }) => match self.committed(number) {
                Ok(true) => {
                    tracing::info!(location = %self.shared.location.display(), batch = number, "a batch whose commit reply was lost had committed");
                    Ok(ran)
                }
                Ok(false) => Err(error),
                Err(lookup) => {
                    tracing::warn!(location = %self.shared.location.display(), %lookup, "cannot learn whether a batch committed");
                    Err(Error::CommitUnknown {
                        dir: self.shared.location.clone(),
                        reason: format!("{error}; looking it up: {lookup}"),
                    })
                }
            },
            Err(NotCommitted::Failed(error)) => Err(error),
            Ok(ran) => Ok(ran),
        };
        match attempt {
            Ok(ran) => {
                for (job, failed) in batch.drain(..).zip(ran.failed) {
                    job.finish(match failed {
                        Some(error) => Finish::Failed(error),
                        None => Finish::Committed,
                    });
                }
            }
            Err(error) => {
                tracing::warn!(location = %self.shared.location.display(), %error, "a batch did not commit");
                if let Some(conn) = &self.conn {
                    let _ = conn.simple("ROLLBACK", "rolling back a failed batch");
                }
                for job in batch.drain(..) {
                    job.finish(Finish::BatchFailed(clone_error(&error)));
                }
            }
        }
    }

    fn attempt(&mut self, batch: &mut [Box<dyn Job>]) -> Result<Ran, NotCommitted> {
        let number: i64 = rand::random();
        let shared = Arc::clone(&self.shared);
        self.begin()?;
        let conn = self.conn()?;
        let mut overlay = Overlay::default();
        let mut failed = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            let mut unit = PgUnit {
                shared: &shared,
                conn,
                batch: &overlay,
                own: Overlay::default(),
                savepoint: false,
                sql_failed: None,
            };
            let status = job.run(&mut WriteScope::new(&mut unit));
            let PgUnit {
                own,
                savepoint,
                sql_failed,
                ..
            } = unit;
            let keep = matches!(status, UnitStatus::Succeeded) && sql_failed.is_none();
            if savepoint {
                let sql = if keep {
                    format!("RELEASE SAVEPOINT {SAVEPOINT}")
                } else {
                    format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
                };
                conn.simple(&sql, "ending a unit's savepoint")?;
            }
            if keep {
                overlay.merge(own);
            }
            failed.push(sql_failed.filter(|_| matches!(status, UnitStatus::Succeeded)));
        }
        crate::writer::commit_fail_point("store-before-commit")?;
        flush(&shared, conn, &overlay, number)?;
        let committed = conn.simple("COMMIT", "committing a batch");
        #[cfg(feature = "failpoints")]
        let committed = committed.and_then(|()| {
            // "The reply was lost": the batch committed, the writer does not know it.
            fail::fail_point!("store-pg-commit-reply-lost", |_| Err(Error::Io {
                path: shared.location.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fail point store-pg-commit-reply-lost"
                ),
            }));
            Ok(())
        });
        if let Err(error) = committed {
            return Err(if connection_failed(&error) {
                NotCommitted::Unknown {
                    error,
                    number,
                    ran: Ran { failed },
                }
            } else {
                NotCommitted::Failed(error)
            });
        }
        if let Err(error) = crate::writer::commit_fail_point("store-after-commit") {
            // Committed: every unit gets the fail point's error, as on LMDB.
            return Ok(Ran {
                failed: failed
                    .into_iter()
                    .map(|_| Some(clone_error(&error)))
                    .collect(),
            });
        }
        Ok(Ran { failed })
    }
}

/// Sends the batch's writes: per table, its range deletes, then one multi-row delete
/// and one multi-row upsert, all pipelined; then checks every reply.
fn flush(shared: &PgShared, conn: &Conn, overlay: &Overlay, number: i64) -> Result<()> {
    let operation = "writing a batch";
    struct Step<'o> {
        statement: Statement,
        params: Vec<Box<dyn ToSql + Sync + 'o>>,
    }
    let mut steps: Vec<Step<'_>> = Vec::new();
    for (table, writes) in &overlay.tables {
        for (start, end) in &writes.ranges {
            let range = (
                start.as_ref().map(Vec::as_slice),
                end.as_ref().map(Vec::as_slice),
            );
            let (lower, upper) = range_sql(&range);
            let statement = conn.statement(
                &format!("DELETE FROM {table} WHERE {lower} AND {upper}"),
                operation,
            )?;
            steps.push(Step {
                statement,
                params: vec![
                    Box::new(bound_value(range.0)),
                    Box::new(bound_value(range.1)),
                ],
            });
        }
        let deleted: Vec<&[u8]> = writes
            .entries
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.as_slice())
            .collect();
        if !deleted.is_empty() {
            let statement =
                conn.statement(&format!("DELETE FROM {table} WHERE k = ANY($1)"), operation)?;
            for chunk in deleted.chunks(FLUSH_ROWS_MAX) {
                steps.push(Step {
                    statement: statement.clone(),
                    params: vec![Box::new(chunk.to_vec())],
                });
            }
        }
        let written: Vec<(&[u8], &[u8])> = writes
            .entries
            .iter()
            .filter_map(|(key, value)| value.as_deref().map(|value| (key.as_slice(), value)))
            .collect();
        if !written.is_empty() {
            let statement = conn.statement(
                &format!(
                    "INSERT INTO {table} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
                ),
                operation,
            )?;
            for chunk in flush_chunks(&written) {
                let (keys, values): (Vec<&[u8]>, Vec<&[u8]>) = chunk.iter().copied().unzip();
                steps.push(Step {
                    statement: statement.clone(),
                    params: vec![Box::new(keys), Box::new(values)],
                });
            }
        }
    }
    steps.push(Step {
        statement: conn.statement(
            &format!(
                "UPDATE {}.meta SET value = $1 WHERE name = 'batch'",
                shared.schema
            ),
            operation,
        )?,
        params: vec![Box::new(number)],
    });
    let client = &conn.client;
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = steps
        .iter()
        .map(|step| step.params.iter().map(|param| &**param as _).collect())
        .collect();
    let futures = steps
        .iter()
        .zip(&params)
        .map(|(step, params)| client.execute(&step.statement, params));
    let results = block_on(futures_util::future::join_all(futures));
    for result in results {
        result.map_err(|e| Error::postgres(operation, e))?;
    }
    Ok(())
}

/// Cuts the rows of one upsert into statements of at most `FLUSH_ROWS_MAX` rows and
/// about `FLUSH_BYTES_MAX` bytes (a single larger row goes alone).
fn flush_chunks<'r, 'b>(rows: &'r [(&'b [u8], &'b [u8])]) -> Vec<&'r [(&'b [u8], &'b [u8])]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, (key, value)) in rows.iter().enumerate() {
        let size = key.len() + value.len();
        if index > start && (index - start >= FLUSH_ROWS_MAX || bytes + size > FLUSH_BYTES_MAX) {
            chunks.push(&rows[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

/// A snapshot: a read-only `REPEATABLE READ` transaction on a connection of its own
/// (taken from the store's idle ones, or new), begun when the snapshot is.
pub(crate) struct PgSnapshot {
    shared: Arc<PgShared>,
    conn: Option<Conn>,
    begun: Instant,
}

impl std::fmt::Debug for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("location", &self.shared.location)
            .finish_non_exhaustive()
    }
}

impl PgSnapshot {
    pub(crate) fn begin(shared: &Arc<PgShared>) -> Result<PgSnapshot> {
        shared.check_open()?;
        let idle = shared
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        // The snapshot is taken at the first statement after BEGIN, so the SELECT pins
        // it to now.
        let begin = |conn: &Conn| {
            conn.simple(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1",
                "beginning a snapshot",
            )
        };
        let conn = match idle {
            // An idle connection the server closed meanwhile is replaced once.
            Some(conn) if !conn.client.is_closed() && begin(&conn).is_ok() => conn,
            _ => {
                let conn = shared.connect('r', "connecting a reader")?;
                begin(&conn)?;
                conn
            }
        };
        Ok(PgSnapshot {
            shared: Arc::clone(shared),
            conn: Some(conn),
            begun: Instant::now(),
        })
    }

    pub(crate) fn check_age(&self) -> Result<()> {
        let age = self.begun.elapsed();
        if age > self.shared.snapshot_age_max {
            return Err(Error::SnapshotTooOld {
                age_ms: age.as_millis() as u64,
                age_ms_max: self.shared.snapshot_age_max.as_millis() as u64,
            });
        }
        Ok(())
    }

    fn conn(&self) -> Result<&Conn> {
        self.conn.as_ref().ok_or_else(|| self.shared.closed_error())
    }

    /// Runs a read-only query of the application's inside the snapshot's transaction.
    pub(crate) fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.check_age()?;
        self.conn()?
            .query(sql, params, "running the application's query in a snapshot")
    }
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if conn.client.is_closed() || conn.simple("ROLLBACK", "ending a snapshot").is_err() {
            return;
        }
        let mut idle = self
            .shared
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_READERS_MAX && !self.shared.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
    }
}

impl Kv for PgSnapshot {
    fn has_table(&self, table: TableRef<'_>) -> bool {
        self.shared.sql_table(table).is_ok()
    }

    fn get(
        &self,
        table: TableRef<'_>,
        key: &[u8],
        operation: &'static str,
    ) -> Result<Option<Cow<'_, [u8]>>> {
        Ok(server_get(&self.shared, self.conn()?, table, key, operation)?.map(Cow::Owned))
    }

    fn scan(
        &self,
        table: TableRef<'_>,
        range: KeyRange<'_>,
        limit: usize,
        operation: &'static str,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        if limit == 0 {
            return Ok(());
        }
        let mut visited = 0_usize;
        server_scan(
            &self.shared,
            self.conn()?,
            table,
            range,
            limit,
            operation,
            &mut |key, value| {
                visit(key, value)?;
                visited += 1;
                Ok(visited < limit)
            },
        )
    }
}

/// Drops the idle reader connections (at close).
pub(crate) fn drop_idle_readers(shared: &PgShared) {
    shared
        .idle_readers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["bgsession", "my_service", "_x1"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "My",
            "1x",
            "a-b",
            "a;drop",
            "pg_catalog",
            &"x".repeat(49),
            "user",
            "order",
            "public",
            "information_schema",
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transaction_control_is_refused() {
        for refused in [
            "COMMIT",
            "commit;",
            "  Rollback",
            "begin transaction",
            "END",
            "SAVEPOINT x",
            "release savepoint bgsession_unit",
            "INSERT INTO t VALUES (1); COMMIT",
            "SELECT pg_advisory_unlock_all()",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(transaction_control(refused).is_err(), "{refused}");
        }
        for allowed in [
            "INSERT INTO t (committed) VALUES (1)",
            "SELECT * FROM ending",
            "UPDATE beginnings SET n = 1",
            "CREATE TABLE IF NOT EXISTS s.t (k text); INSERT INTO s.t VALUES ('a')",
            "PREPARE q AS SELECT 1",
        ] {
            assert!(transaction_control(allowed).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn flushes_are_cut_by_rows_and_bytes() {
        let big = vec![0_u8; FLUSH_BYTES_MAX / 2 + 1];
        let rows: Vec<(&[u8], &[u8])> = vec![(b"a", &big), (b"b", &big), (b"c", b"x")];
        let chunks = flush_chunks(&rows);
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), [1, 2]);
        let small: Vec<(&[u8], &[u8])> = vec![(b"k", b"v"); FLUSH_ROWS_MAX * 2 + 1];
        let chunks = flush_chunks(&small);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [FLUSH_ROWS_MAX, FLUSH_ROWS_MAX, 1]
        );
        assert!(flush_chunks(&[]).is_empty());
    }

    #[test]
    fn later_writes_win_over_earlier_ones() {
        let mut batch = TableOverlay::default();
        batch.entries.insert(b"a1".to_vec(), Some(b"x".to_vec()));
        batch.entries.insert(b"b1".to_vec(), Some(b"y".to_vec()));
        let mut unit = TableOverlay::default();
        unit.delete_range((Bound::Included(b"a"), Bound::Excluded(b"b")));
        unit.entries.insert(b"a2".to_vec(), Some(b"z".to_vec()));
        batch.merge(unit);
        assert_eq!(batch.entries.get(&b"a1"[..]), None);
        assert!(batch.hides(b"a1"));
        assert_eq!(batch.entries.get(&b"a2"[..]), Some(&Some(b"z".to_vec())));
        assert_eq!(batch.entries.get(&b"b1"[..]), Some(&Some(b"y".to_vec())));
    }
}
