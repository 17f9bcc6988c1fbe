//! `Store`: opening the directory and submitting work to the writer.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::{Future, poll_fn};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use heed::{Env, EnvFlags, EnvOpenOptions, WithoutTls};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app_table::AppTable;
use crate::check::{self, CheckReport, DataFileState};
use crate::error::{Error, Result};
use crate::gate::MapGate;
use crate::identity::{self, StoreIdentity};
use crate::options::{StoreOptions, round_map_size, validate_app_table_name};
use crate::queue::Queue;
use crate::read::View;
use crate::reply;
use crate::scope::WriteScope;
use crate::snapshot::Snapshot;
use crate::tables::{self, BUILTIN_TABLES, Tables};
use crate::writer::{UnitJob, Writer};

/// The file in the store directory that carries the owner's OS lock.
pub const LOCK_FILE_NAME: &str = "store.lock";

/// How many times `open` tries the directory lock before it reports `Locked`.
const LOCK_ATTEMPTS: u32 = 5;
/// The pause between those tries.
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(20);
/// How long `close` waits for LMDB to close the environment once the last handle is
/// dropped (it closes synchronously in that drop, so this is only a safety margin).
const ENV_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How many times `open_read_only` runs the checks before mapping when they find
/// damage: while the owner writes, plain reads of the meta pages and the length can see
/// a commit half way (a new meta page naming pages the file's length, read a moment
/// earlier, did not have yet), so only damage found every time is reported.
const READ_ONLY_CHECK_ATTEMPTS: u32 = 3;
/// The pause between those runs.
const READ_ONLY_CHECK_RETRY_DELAY: Duration = Duration::from_millis(10);

// The handles the rest of bgsession moves across threads and `.await`s.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Store>();
    send::<Snapshot>();
    send_sync::<AppTable<u64>>();
};

/// What the store, its writer thread and its snapshots share.
pub(crate) struct Shared {
    // Field order is drop order: the environment closes before the directory lock is
    // released, so a new owner never finds this process's environment still open.
    // `close` takes both out in the same order. The writer and each snapshot hold their
    // own clone of the environment; it closes when the last one is gone.
    env: RwLock<Option<Env<WithoutTls>>>,
    pub(crate) tables: Tables,
    pub(crate) gate: MapGate,
    pub(crate) dir: PathBuf,
    /// `StoreOptions::snapshot_age_ms_max`.
    pub(crate) snapshot_age_max: Duration,
    /// Set by `close`: new writes and snapshots are refused.
    closed: AtomicBool,
    stale_readers_cleared: usize,
    /// The directory lock; `None` in a store opened read-only, which takes none.
    lock: Mutex<Option<File>>,
    /// Opened with `Store::open_read_only`: no writer; the owner (another process) may
    /// grow the map, which snapshots then adopt.
    pub(crate) read_only: bool,
}

impl Shared {
    /// A handle to the environment, unless `close` took it.
    pub(crate) fn env(&self) -> Result<Env<WithoutTls>> {
        self.env
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| self.closed_error())
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed {
            dir: self.dir.clone(),
        }
    }

    /// `Closed` once `close` has begun.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Drops this handle to the environment and then the directory lock; `false` (and
    /// the lock kept) if another handle keeps the environment open.
    fn release(&self) -> bool {
        let env = self
            .env
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(env) = env
            && !env.prepare_for_closing().wait_timeout(ENV_CLOSE_WAIT)
        {
            return false;
        }
        drop(
            self.lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        true
    }
}

/// An open store: one LMDB environment in one directory, owned by this process.
///
/// Cloning is cheap (the clones share one environment and one writer thread). The
/// writer stops and the directory is released when the last clone, snapshot and pending
/// `write_async` future are gone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    queue: Arc<Queue>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread; `None` in a store opened read-only, which has none.
    writer_thread: Option<ThreadId>,
    /// Held through `close`, so that concurrent calls run one after the other; `true`
    /// once a `close` has finished.
    closed: Mutex<bool>,
}

/// What the store keeps its records in.
enum Backend {
    Lmdb(LmdbParts),
    #[cfg(feature = "postgres")]
    Postgres(Arc<crate::pg::PgShared>),
}

/// An LMDB store's environment and what its open found.
struct LmdbParts {
    shared: Arc<Shared>,
    check_report: Option<CheckReport>,
    /// `None` only in a store opened read-only whose identity file is not written yet
    /// (a store of the previous release, or one whose first open is under way).
    identity: Option<StoreIdentity>,
}

/// What `pg::open` hands over.
#[cfg(feature = "postgres")]
pub(crate) struct PgParts {
    pub(crate) shared: Arc<crate::pg::PgShared>,
    pub(crate) queue: Arc<Queue>,
    pub(crate) writer: JoinHandle<()>,
}

impl Inner {
    fn lmdb(&self) -> Option<&LmdbParts> {
        match &self.backend {
            Backend::Lmdb(parts) => Some(parts),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => None,
        }
    }

    fn location(&self) -> &Path {
        match &self.backend {
            Backend::Lmdb(parts) => &parts.shared.dir,
            #[cfg(feature = "postgres")]
            Backend::Postgres(shared) => &shared.location,
        }
    }

    fn check_open(&self) -> Result<()> {
        match &self.backend {
            Backend::Lmdb(parts) => parts.shared.check_open(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(shared) => shared.check_open(),
        }
    }

    /// Whether the calling thread is the writer thread (which runs the units).
    fn on_writer_thread(&self) -> bool {
        self.writer_thread == Some(thread::current().id())
    }

    /// Stops the queue and waits for the writer to drain it and exit.
    fn stop_writer(&self) {
        self.queue.close();
        // The last handle can be dropped by a unit on the writer thread itself (a unit
        // that captured a `Store`); that thread cannot join itself, and it exits on its own
        // once the closed queue is drained.
        if self.on_writer_thread() {
            return;
        }
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!(location = %self.location().display(), "the store writer thread panicked");
        }
    }

    fn close_state(&self) -> MutexGuard<'_, bool> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.inner.location())
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Takes an exclusive OS lock on the directory first: a second owner, in this process
    /// or another, gets [`Error::Locked`]. Then checks the directory before LMDB maps
    /// anything: a directory whose identity file says it held a store but whose data file
    /// is missing or empty is [`Error::StoreMissing`]; LMDB's meta pages and the file's
    /// length are checked ([`Error::CorruptFile`], [`Error::Truncated`]); and, as
    /// [`StoreOptions::check_at_open`] says, every page is walked. Then opens the LMDB
    /// environment, clears reader slots left by killed processes, creates the tables
    /// (including the application tables named in `options`), checks the schema and
    /// codec versions, reads and validates every record (with the full check), writes
    /// the identity file if there is none yet, and starts the writer thread.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        match fs::metadata(&dir) {
            Ok(metadata) if !metadata.is_dir() => return Err(Error::NotADirectory { path: dir }),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            }
            Err(error) => return Err(io_error(&dir)(error)),
        }
        let lock = lock_dir(&dir)?;
        let started = Instant::now();
        let (identity, structure) = check_before_mapping(&dir, &options)?;

        let (env, stale_readers_cleared) = open_env(&dir, &options)?;
        let tables = tables::create(&env, &dir, &options.app_tables)?;
        let check_report = match structure {
            Some(structure) => Some(check_records(&env, &tables, &structure, started, &dir)?),
            None => None,
        };
        // After the first commit: a crash before this line leaves a store without an
        // identity file, which the next open treats like a store of the last release.
        let identity = match identity {
            Some(identity) => identity,
            None => identity::create(&dir)?,
        };

        let shared = Arc::new(Shared {
            env: RwLock::new(Some(env.clone())),
            tables,
            gate: MapGate::default(),
            dir,
            snapshot_age_max: Duration::from_millis(options.snapshot_age_ms_max),
            closed: AtomicBool::new(false),
            stale_readers_cleared,
            lock: Mutex::new(Some(lock)),
            read_only: false,
        });
        let queue = Arc::new(Queue::new(options.queue_units_max));
        let writer = Writer::new(env, Arc::clone(&shared), Arc::clone(&queue), &options);
        let handle = thread::Builder::new()
            .name("session-store-writer".into())
            .spawn(move || writer.run())
            .map_err(io_error(&shared.dir))?;
        tracing::debug!(dir = %shared.dir.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                writer_thread: Some(handle.thread().id()),
                writer: Mutex::new(Some(handle)),
                backend: Backend::Lmdb(LmdbParts {
                    shared,
                    check_report,
                    identity: Some(identity),
                }),
                queue,
                closed: Mutex::new(false),
            }),
        })
    }

    /// Opens the store in `dir` for reading only, for inspecting a store whose owner
    /// (another process) may be running: its snapshots see the owner's commits as they
    /// become durable.
    ///
    /// Unlike [`Store::open`] it takes no directory lock and starts no writer: writes
    /// are [`Error::ReadOnly`]. LMDB opens the data file read-only; it still records this
    /// process's readers in its lock file `lock.mdb` (creating it if need be), as every
    /// reader does. The checks before mapping still run (identity file, meta pages,
    /// length); the walks of every page and record do not (plain reads would race the
    /// owner's writes: use [`check_dir`](crate::check_dir) while the owner is stopped),
    /// and reader slots of dead processes are left for the owner to clear. Nothing is
    /// created or migrated: a schema-1 store reads as it is, tables of a newer build are
    /// ignored, and tables this build has but the store lacks read as empty. Every
    /// application table in the store can be read through [`Store::app_table`].
    ///
    /// # Errors
    /// [`Error::NoStore`] for a directory without a store; [`Error::StoreMissing`] when
    /// its identity file says a store was there; [`Error::OpenInThisProcess`] when this
    /// process has the directory open already (LMDB must not open an environment twice
    /// in one process: read through that `Store`); [`Error::SchemaTooNew`] and
    /// [`Error::CodecMismatch`] for a store this build cannot read; the errors of the
    /// checks before mapping.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        match fs::metadata(&dir) {
            Ok(metadata) if !metadata.is_dir() => return Err(Error::NotADirectory { path: dir }),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoStore {
                    dir,
                    reason: "the directory does not exist",
                });
            }
            Err(error) => return Err(io_error(&dir)(error)),
        }
        let (identity, data) = check_before_mapping_read_only(&dir)?;
        let options = StoreOptions::default();
        let env = open_env_read_only(&dir, &options)?;
        let tables = tables::open_existing(&env, &dir, &data)?.ok_or_else(|| Error::NoStore {
            dir: dir.clone(),
            reason: "its data file has no tables (the first open never committed)",
        })?;
        let shared = Arc::new(Shared {
            env: RwLock::new(Some(env)),
            tables,
            gate: MapGate::default(),
            dir,
            snapshot_age_max: Duration::from_millis(options.snapshot_age_ms_max),
            closed: AtomicBool::new(false),
            stale_readers_cleared: 0,
            lock: Mutex::new(None),
            read_only: true,
        });
        // No writer drains it: closed, so that no unit can ever wait in it.
        let queue = Arc::new(Queue::new(1));
        queue.close();
        tracing::debug!(dir = %shared.dir.display(), "store opened read-only");
        Ok(Store {
            inner: Arc::new(Inner {
                writer_thread: None,
                writer: Mutex::new(None),
                backend: Backend::Lmdb(LmdbParts {
                    shared,
                    check_report: None,
                    identity,
                }),
                queue,
                closed: Mutex::new(false),
            }),
        })
    }

    /// Opens (creating if needed) the store kept in PostgreSQL, in the schema
    /// `options.schema` of the server at `options.url` (feature `postgres`).
    ///
    /// Connects, takes the ownership lock (a session-level advisory lock held by the
    /// writer's connection: a second owner, in this process or another, gets
    /// [`Error::Locked`] after waiting up to two seconds for a killed owner's lock to be
    /// released), creates the schema and the tables that are missing (the application
    /// tables in `options` included), checks the schema and codec versions, and starts
    /// the writer thread. Downloads and other files stay where the application keeps
    /// them: the store holds records only.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for a bad schema name, URL or limit; [`Error::Locked`];
    /// [`Error::Backend`] when the server cannot be reached or refuses;
    /// [`Error::SchemaTooNew`] and [`Error::CodecMismatch`] for a schema written by a
    /// build this one cannot read.
    #[cfg(feature = "postgres")]
    pub fn open_postgres(options: crate::pg::PostgresOptions) -> Result<Store> {
        let parts = crate::pg::open(options)?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer_thread: Some(parts.writer.thread().id()),
                writer: Mutex::new(Some(parts.writer)),
                backend: Backend::Postgres(parts.shared),
                queue: parts.queue,
                closed: Mutex::new(false),
            }),
        })
    }

    /// Which backend keeps the records: "LMDB" or "PostgreSQL".
    pub fn backend(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Lmdb(_) => "LMDB",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// The PostgreSQL schema holding the store's tables; `None` on LMDB.
    pub fn schema(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Lmdb(_) => None,
            #[cfg(feature = "postgres")]
            Backend::Postgres(shared) => Some(shared.schema()),
        }
    }

    /// Whether the store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner
            .lmdb()
            .is_some_and(|parts| parts.shared.read_only)
    }

    /// Closes the store: new writes and snapshots (through any clone) get
    /// [`Error::Closed`]; units already submitted still commit and get their replies; the
    /// writer thread is joined; live snapshots are waited for, at most
    /// [`StoreOptions::snapshot_age_ms_max`]; then the LMDB environment is closed and the
    /// directory lock released, so the directory can be opened again at once, in this
    /// process or another, even while clones of this `Store` still exist.
    ///
    /// Idempotent: a later call returns `Ok(())`.
    ///
    /// # Errors
    /// [`Error::CloseBlocked`] if snapshots are still alive after the wait: the store
    /// stays closed to new work and keeps the directory until they are dropped and
    /// `close` is called again. [`Error::ReentrantWrite`] from inside a unit.
    pub fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.on_writer_thread() {
            return Err(Error::ReentrantWrite);
        }
        let mut closed = inner.close_state();
        if *closed {
            return Ok(());
        }
        let shared = match &inner.backend {
            Backend::Lmdb(parts) => &parts.shared,
            #[cfg(feature = "postgres")]
            Backend::Postgres(shared) => {
                // The writer releases the ownership lock as it exits; snapshots read on
                // connections of their own and end when dropped.
                shared.set_closed();
                inner.stop_writer();
                crate::pg::drop_idle_readers(shared);
                *closed = true;
                tracing::debug!(location = %shared.location.display(), "store closed");
                return Ok(());
            }
        };
        shared.closed.store(true, Ordering::Release);
        inner.stop_writer();
        let started = Instant::now();
        let blocked = |snapshots: usize| Error::CloseBlocked {
            dir: shared.dir.clone(),
            snapshots,
            waited_ms: started.elapsed().as_millis() as u64,
        };
        if let Err(blocked_by) = shared.gate.close(shared.snapshot_age_max) {
            return Err(blocked(blocked_by.snapshots));
        }
        if !shared.release() {
            // Every other handle is the writer's (joined) or a snapshot's (none alive).
            tracing::error!(dir = %shared.dir.display(), "invariant violation: the environment stayed open after close");
            return Err(blocked(0));
        }
        *closed = true;
        tracing::debug!(dir = %shared.dir.display(), "store closed");
        Ok(())
    }

    /// What the full check at open found, if it ran: `None` for a new store and when
    /// [`CheckAtOpen`](crate::CheckAtOpen) skipped it.
    pub fn check_report(&self) -> Option<&CheckReport> {
        self.inner
            .lmdb()
            .and_then(|parts| parts.check_report.as_ref())
    }

    /// The store's identity (from its identity file, written when it was created).
    /// Always there in a store opened with [`Store::open`] (which writes the file if it
    /// is missing); `None` in a store opened read-only that has no identity file yet.
    pub fn identity(&self) -> Option<&StoreIdentity> {
        self.inner.lmdb().and_then(|parts| parts.identity.as_ref())
    }

    /// Where the store is: its directory (LMDB), or `postgresql://host:port/db#schema`
    /// (PostgreSQL, which has no directory; errors name the store by this).
    pub fn dir(&self) -> &Path {
        self.inner.location()
    }

    /// Drops this process's mapping of the data file's pages (Linux; elsewhere nothing),
    /// returning how many bytes of mapping it let go.
    ///
    /// Reads go through a shared read-only mapping of the file, and the kernel maps the
    /// pages around each page a read touches: a pass of scattered reads (a recovery of a
    /// few active sessions among many idle ones) leaves most of the file mapped and
    /// counted in the process's resident memory, though nothing needs it afterwards.
    /// After this call the pages are still in the page cache; the next read of one maps
    /// it again (a minor fault, no I/O). Safe at any time, snapshots open or not: it
    /// holds a snapshot of its own while it works, so the map cannot be grown (remapped)
    /// or closed under it, and it touches only the mapping this store reads through.
    ///
    /// # Errors
    /// [`Error::Io`] when the data file or the process's mapping list cannot be read;
    /// the errors of [`Store::snapshot`].
    pub fn release_mapped_pages(&self) -> Result<u64> {
        // The snapshot's ticket keeps the writer from resizing (unmapping and mapping
        // again) and the store from closing until the release is done, so the range
        // found below is still this store's mapping when `madvise` runs.
        let Some(parts) = self.inner.lmdb() else {
            return Ok(0);
        };
        let snapshot = self.snapshot()?;
        let Some(inside) = snapshot.map_address()? else {
            return Ok(0);
        };
        let data = parts.shared.dir.join(check::DATA_FILE_NAME);
        let released =
            crate::unmap::release(&data, inside).map_err(|source| Error::Io { path: data, source });
        drop(snapshot);
        released
    }

    /// How many reader slots of dead processes were cleared when the store was opened.
    pub fn stale_readers_cleared(&self) -> usize {
        self.inner
            .lmdb()
            .map_or(0, |parts| parts.shared.stale_readers_cleared)
    }

    /// How many submitted units are waiting for the writer (not yet in a batch).
    pub fn queued_units(&self) -> usize {
        self.inner.queue.len()
    }

    /// The current size of the memory map, in bytes (it grows as the data grows); 0 once
    /// the store is closed.
    pub fn map_size_bytes(&self) -> usize {
        self.inner
            .lmdb()
            .and_then(|parts| parts.shared.env().ok())
            .map_or(0, |env| env.info().map_size)
    }

    /// Runs `unit` on the writer thread inside a nested transaction of the current batch,
    /// and returns its result once the batch's commit is durable. Blocks the calling
    /// thread; async callers use [`Store::write_async`].
    ///
    /// If `unit` returns `Err` or panics, its writes are discarded alone (a panic becomes
    /// [`Error::UnitPanicked`]); the rest of the batch commits. If the commit fails, the
    /// unit gets the commit's error. `unit` may run more than once (the batch is re-run
    /// after the map grows), so its only effects must be through the [`WriteScope`].
    ///
    /// Calling it from inside a unit is [`Error::ReentrantWrite`]; after
    /// [`Store::close`], [`Error::Closed`]; on a store opened read-only,
    /// [`Error::ReadOnly`].
    pub fn write<T, E, F>(&self, unit: F) -> Result<T, E>
    where
        F: FnMut(&mut WriteScope<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        if self.inner.on_writer_thread() {
            return Err(E::from(Error::ReentrantWrite));
        }
        self.check_writable()?;
        let (sender, receiver) = reply::channel();
        let job = Box::new(UnitJob::new(unit, sender));
        if self.inner.queue.push_blocking(job).is_err() {
            return Err(E::from(self.stopped_error()));
        }
        receiver
            .wait()
            .unwrap_or_else(|| Err(E::from(Error::WriterStopped)))
    }

    /// [`Store::write`] for async callers: the future resolves after the durable commit.
    /// It needs no particular runtime and never blocks the thread polling it.
    ///
    /// The unit is submitted when the future is first polled; once submitted, dropping
    /// the future does not withdraw it (it still runs and commits, unobserved).
    pub fn write_async<T, E, F>(
        &self,
        unit: F,
    ) -> impl Future<Output = Result<T, E>> + Send + use<T, E, F>
    where
        F: FnMut(&mut WriteScope<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let store = self.clone();
        async move {
            if store.inner.on_writer_thread() {
                return Err(E::from(Error::ReentrantWrite));
            }
            store.check_writable()?;
            let (sender, receiver) = reply::channel();
            let mut job: Option<Box<dyn crate::writer::Job>> =
                Some(Box::new(UnitJob::new(unit, sender)));
            let submitted = poll_fn(|cx| store.inner.queue.poll_push(cx, &mut job)).await;
            let stopped = store.stopped_error();
            // The writer's handle is not needed past submission; dropping it here lets the
            // store close while this future waits for its commit.
            drop(store);
            if !submitted {
                return Err(E::from(stopped));
            }
            receiver
                .await
                .unwrap_or_else(|| Err(E::from(Error::WriterStopped)))
        }
    }

    /// `ReadOnly` for a store opened read-only, `Closed` after `close`.
    fn check_writable(&self) -> Result<()> {
        if let Some(parts) = self.inner.lmdb()
            && parts.shared.read_only
        {
            return Err(Error::ReadOnly {
                dir: parts.shared.dir.clone(),
            });
        }
        self.inner.check_open()
    }

    /// Why a unit could not be submitted: the store was closed, or the writer is gone.
    fn stopped_error(&self) -> Error {
        match self.inner.check_open() {
            Err(closed) => closed,
            Ok(()) => Error::WriterStopped,
        }
    }

    /// A read-only view of the last committed state; [`Error::Closed`] after
    /// [`Store::close`].
    pub fn snapshot(&self) -> Result<Snapshot> {
        match &self.inner.backend {
            Backend::Lmdb(parts) => Snapshot::begin(&parts.shared),
            #[cfg(feature = "postgres")]
            Backend::Postgres(shared) => {
                crate::pg::PgSnapshot::begin(shared).map(Snapshot::postgres)
            }
        }
    }

    /// A typed handle to an application table named in [`StoreOptions::app_tables`];
    /// [`Error::UnknownTable`] for any other name.
    pub fn app_table<V>(&self, name: &str) -> Result<AppTable<V>>
    where
        V: Serialize + DeserializeOwned,
    {
        validate_app_table_name(name)?;
        let known = match &self.inner.backend {
            Backend::Lmdb(parts) => parts.shared.tables.app.contains_key(name),
            #[cfg(feature = "postgres")]
            Backend::Postgres(shared) => shared.has_app_table(name),
        };
        if !known {
            return Err(Error::UnknownTable { name: name.into() });
        }
        Ok(AppTable::new(name))
    }
}

/// Takes the directory's exclusive OS lock (the file [`LOCK_FILE_NAME`]).
///
/// The lock comes before LMDB: heed refuses a second open of one path in a process
/// (EnvAlreadyOpened) and LMDB itself allows several processes, so only this lock gives
/// every second owner the same clear error.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join(LOCK_FILE_NAME);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    let mut attempt = 1;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            // A child process being spawned by any thread of this process briefly
            // holds a copy of every descriptor (until its exec closes them), and with
            // it the lock of an owner that just closed; a short retry rides that out.
            Err(TryLockError::WouldBlock) if attempt < LOCK_ATTEMPTS => {
                attempt += 1;
                thread::sleep(LOCK_RETRY_DELAY);
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(TryLockError::Error(error)) => return Err(io_error(&lock_path)(error)),
        }
    }
}

/// Everything `open` checks before LMDB maps the data file: the identity file against
/// the data file (a store that is gone is an error, not a new store), LMDB's meta pages
/// and the file's length, and, as the options say, the structural walk. Returns the
/// identity, if the directory has one, and the walk's findings, if it ran.
fn check_before_mapping(
    dir: &Path,
    options: &StoreOptions,
) -> Result<(Option<StoreIdentity>, Option<check::Structure>)> {
    let identity = identity::read(dir)?;
    let data = check::open_data_file(dir)?;
    if identity.is_some()
        && let Some(found) = data.absence()
    {
        return Err(Error::StoreMissing {
            dir: dir.to_path_buf(),
            identity: identity::path(dir),
            data: dir.join(check::DATA_FILE_NAME),
            found,
        });
    }
    let structure = match &data {
        DataFileState::Present(file) if options.check_at_open.walks(file.bytes()) => {
            Some(file.walk()?)
        }
        _ => None,
    };
    Ok((identity, structure))
}

/// The checks before mapping of `open_read_only`: the identity file against the data
/// file, the meta pages and the length, run again when they find damage (see
/// [`READ_ONLY_CHECK_ATTEMPTS`]). Returns the identity, if there is one, and the data
/// file's path.
fn check_before_mapping_read_only(dir: &Path) -> Result<(Option<StoreIdentity>, PathBuf)> {
    let mut attempt = 1;
    loop {
        let identity = identity::read(dir)?;
        let error = match check::open_data_file(dir) {
            Ok(DataFileState::Present(file)) => return Ok((identity, file.path.clone())),
            Ok(absent) => {
                let found = absent.absence().unwrap_or("missing");
                return Err(match identity {
                    Some(_) => Error::StoreMissing {
                        dir: dir.to_path_buf(),
                        identity: identity::path(dir),
                        data: dir.join(check::DATA_FILE_NAME),
                        found,
                    },
                    None if found == "empty" => Error::NoStore {
                        dir: dir.to_path_buf(),
                        reason: "its data file is empty",
                    },
                    None => Error::NoStore {
                        dir: dir.to_path_buf(),
                        reason: "it has no data file",
                    },
                });
            }
            Err(error) => error,
        };
        let transient = matches!(error, Error::Truncated { .. } | Error::CorruptFile { .. });
        if !transient || attempt == READ_ONLY_CHECK_ATTEMPTS {
            return Err(error);
        }
        attempt += 1;
        thread::sleep(READ_ONLY_CHECK_RETRY_DELAY);
    }
}

/// Opens the LMDB environment of `open_read_only`.
fn open_env_read_only(dir: &Path, options: &StoreOptions) -> Result<Env<WithoutTls>> {
    let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
    // No map size: LMDB then takes the one the owner's last commit recorded (at least
    // what its pages need); when the owner grows past it, snapshots adopt the new size.
    env_options
        .max_dbs(tables::EXISTING_TABLES_MAX)
        .max_readers(options.readers_max);
    // SAFETY: READ_ONLY only keeps this environment from writing; it weakens nothing.
    unsafe {
        env_options.flags(EnvFlags::READ_ONLY);
    }
    // SAFETY: `open` is unsafe because the memory map is undefined behaviour if the
    // files are modified behind LMDB's back. Here another process may own the store and
    // write to it while this one reads; that is sound because the owner writes data.mdb
    // only through LMDB (this crate never writes it otherwise), and LMDB's own lock file
    // (lock.mdb) coordinates readers across processes: each read transaction of this
    // process takes a reader slot there, and the owner's LMDB never reuses a page a live
    // reader may still see. This environment itself never writes the data file (opened
    // read-only, mapped read-only). The directory must be local (callers are told not to
    // put it on a network file system, where lock.mdb's shared memory does not work). A
    // damaged file is the other hazard: `check_before_mapping_read_only` has checked the
    // meta page LMDB will use and the file's length (not every page: plain reads of
    // every page would race the owner's writes). heed makes a second open of the same
    // path in this process an error rather than unsound.
    unsafe { env_options.open(dir) }.map_err(|error| match error {
        heed::Error::EnvAlreadyOpened => Error::OpenInThisProcess {
            dir: dir.to_path_buf(),
        },
        error => Error::lmdb("opening the environment read-only", error),
    })
}

/// Opens the LMDB environment (once the checks before mapping passed) and clears the
/// reader slots of dead processes; returns it and how many slots were cleared.
fn open_env(dir: &Path, options: &StoreOptions) -> Result<(Env<WithoutTls>, usize)> {
    let map_size_bytes = round_map_size(options.map_size_bytes_initial);
    let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
    env_options
        .map_size(map_size_bytes)
        .max_dbs(BUILTIN_TABLES + options.app_tables.len() as u32)
        .max_readers(options.readers_max);
    // The only flag is NO_READ_AHEAD; the defaults otherwise keep full durability
    // (each commit is synced; NO_SYNC or NO_META_SYNC would lose acknowledged commits)
    // and nested transactions (WRITE_MAP forbids them).
    //
    // SAFETY: NO_READ_AHEAD only tells the kernel the map is read at random (LMDB's
    // `madvise(MADV_RANDOM)`): no read-ahead and no fault-around, so a recovery that
    // reads a few thousand active sessions scattered over a store of a million maps the
    // pages it reads, not the whole file. It changes no byte LMDB reads or writes.
    unsafe {
        env_options.flags(EnvFlags::NO_READ_AHEAD);
    }
    //
    // SAFETY: `open` is unsafe because the memory map is undefined behaviour if the
    // files are modified behind LMDB's back. The caller holds the directory's exclusive
    // lock, so no other owner of this crate opens the files; LMDB's own lock file
    // coordinates any other reader; no code here writes to data.mdb or lock.mdb except
    // through LMDB; and the directory is local (callers are told not to put it on a
    // network file system). A damaged file is the other hazard (LMDB trusts every page
    // number it reads): `check_before_mapping` has read the meta page LMDB will use and
    // checked the file holds its pages, and, unless the options say otherwise, walked
    // every page reachable from it. heed itself makes a second open of the same path in
    // this process an error rather than unsound.
    let env = unsafe { env_options.open(dir) }.map_err(|error| match error {
        heed::Error::EnvAlreadyOpened => Error::Locked {
            dir: dir.to_path_buf(),
        },
        error => Error::lmdb("opening the environment", error),
    })?;
    let stale_readers_cleared = env
        .clear_stale_readers()
        .map_err(|e| Error::lmdb("clearing stale readers", e))?;
    if stale_readers_cleared > 0 {
        tracing::info!(dir = %dir.display(), stale_readers_cleared, "cleared reader slots of dead processes");
    }
    tracing::debug!(dir = %dir.display(), map_size_bytes, "environment opened");
    Ok((env, stale_readers_cleared))
}

/// The record walk of the full check at open, after the structural walk passed and the
/// tables were opened (and any migration ran): every record of the built-in tables read
/// and validated.
fn check_records(
    env: &Env<WithoutTls>,
    tables: &Tables,
    structure: &check::Structure,
    started: Instant,
    dir: &Path,
) -> Result<CheckReport> {
    let rtxn = env
        .read_txn()
        .map_err(|e| Error::lmdb("beginning the open check's read transaction", e))?;
    let records = check::count_records(View { txn: &rtxn, tables })?;
    let report = check::report(structure, records, started);
    tracing::debug!(dir = %dir.display(), ?report, "store checked");
    Ok(report)
}
