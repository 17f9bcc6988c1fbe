//! `Store`: opening the directory and submitting work to the writer.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::{Future, poll_fn};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use heed::{Env, EnvOpenOptions, WithoutTls};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app_table::AppTable;
use crate::error::{Error, Result};
use crate::gate::MapGate;
use crate::options::{StoreOptions, round_map_size, validate_app_table_name};
use crate::queue::Queue;
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
    pub(crate) env: Env<WithoutTls>,
    pub(crate) tables: Tables,
    pub(crate) gate: MapGate,
    pub(crate) dir: PathBuf,
    stale_readers_cleared: usize,
    _lock: File,
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
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    writer: Option<JoinHandle<()>>,
    writer_thread: ThreadId,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        // The last handle can be dropped by a unit on the writer thread itself (a unit
        // that captured a `Store`); that thread cannot join itself, and it exits on its own
        // once the closed queue is drained.
        if thread::current().id() == self.writer_thread {
            return;
        }
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.shared.dir.display(), "the store writer thread panicked");
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.shared.dir)
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
    /// or another, gets [`Error::Locked`]. Then opens the LMDB environment, clears reader
    /// slots left by killed processes, creates the tables (including the application
    /// tables named in `options`), checks the schema and codec versions, and starts the
    /// writer thread.
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

        // The lock comes before LMDB: heed refuses a second open of one path in a process
        // (EnvAlreadyOpened) and LMDB itself allows several processes, so only this lock
        // gives every second owner the same clear error.
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
                Ok(()) => break,
                // A child process being spawned by any thread of this process briefly
                // holds a copy of every descriptor (until its exec closes them), and with
                // it the lock of an owner that just closed; a short retry rides that out.
                Err(TryLockError::WouldBlock) if attempt < LOCK_ATTEMPTS => {
                    attempt += 1;
                    thread::sleep(LOCK_RETRY_DELAY);
                }
                Err(TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
                Err(TryLockError::Error(error)) => return Err(io_error(&lock_path)(error)),
            }
        }

        let map_size_bytes = round_map_size(options.map_size_bytes_initial);
        let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
        env_options
            .map_size(map_size_bytes)
            .max_dbs(BUILTIN_TABLES + options.app_tables.len() as u32)
            .max_readers(options.readers_max);
        // No `flags` call: the defaults keep full durability (each commit is synced;
        // NO_SYNC or NO_META_SYNC would lose acknowledged commits) and nested transactions
        // (WRITE_MAP forbids them).
        //
        // SAFETY: `open` is unsafe because the memory map is undefined behaviour if the
        // files are modified behind LMDB's back. This process holds the directory's
        // exclusive lock, so no other owner of this crate opens the files; LMDB's own lock
        // file coordinates any other reader; no code here writes to data.mdb or lock.mdb
        // except through LMDB; and the directory is local (callers are told not to put it
        // on a network file system). heed itself makes a second open of the same path in
        // this process an error rather than unsound.
        let env = unsafe { env_options.open(&dir) }.map_err(|error| match error {
            heed::Error::EnvAlreadyOpened => Error::Locked { dir: dir.clone() },
            error => Error::lmdb("opening the environment", error),
        })?;
        let stale_readers_cleared = env
            .clear_stale_readers()
            .map_err(|e| Error::lmdb("clearing stale readers", e))?;
        if stale_readers_cleared > 0 {
            tracing::info!(dir = %dir.display(), stale_readers_cleared, "cleared reader slots of dead processes");
        }
        let tables = tables::create(&env, &dir, &options.app_tables)?;

        let shared = Arc::new(Shared {
            env,
            tables,
            gate: MapGate::default(),
            dir,
            stale_readers_cleared,
            _lock: lock,
        });
        let queue = Arc::new(Queue::new(options.queue_units_max));
        let writer = Writer::new(Arc::clone(&shared), Arc::clone(&queue), &options);
        let handle = thread::Builder::new()
            .name("session-store-writer".into())
            .spawn(move || writer.run())
            .map_err(io_error(&shared.dir))?;
        tracing::debug!(dir = %shared.dir.display(), map_size_bytes, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                writer_thread: handle.thread().id(),
                writer: Some(handle),
                shared,
                queue,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// How many reader slots of dead processes were cleared when the store was opened.
    pub fn stale_readers_cleared(&self) -> usize {
        self.inner.shared.stale_readers_cleared
    }

    /// How many submitted units are waiting for the writer (not yet in a batch).
    pub fn queued_units(&self) -> usize {
        self.inner.queue.len()
    }

    /// The current size of the memory map, in bytes (it grows as the data grows).
    pub fn map_size_bytes(&self) -> usize {
        self.inner.shared.env.info().map_size
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
    /// Calling it from inside a unit is [`Error::ReentrantWrite`].
    pub fn write<T, E, F>(&self, unit: F) -> Result<T, E>
    where
        F: FnMut(&mut WriteScope<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        if thread::current().id() == self.inner.writer_thread {
            return Err(E::from(Error::ReentrantWrite));
        }
        let (sender, receiver) = reply::channel();
        let job = Box::new(UnitJob::new(unit, sender));
        if self.inner.queue.push_blocking(job).is_err() {
            return Err(E::from(Error::WriterStopped));
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
    ) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        F: FnMut(&mut WriteScope<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let store = self.clone();
        async move {
            if thread::current().id() == store.inner.writer_thread {
                return Err(E::from(Error::ReentrantWrite));
            }
            let (sender, receiver) = reply::channel();
            let mut job: Option<Box<dyn crate::writer::Job>> =
                Some(Box::new(UnitJob::new(unit, sender)));
            let submitted = poll_fn(|cx| store.inner.queue.poll_push(cx, &mut job)).await;
            // The writer's handle is not needed past submission; dropping it here lets the
            // store close while this future waits for its commit.
            drop(store);
            if !submitted {
                return Err(E::from(Error::WriterStopped));
            }
            receiver
                .await
                .unwrap_or_else(|| Err(E::from(Error::WriterStopped)))
        }
    }

    /// A read-only view of the last committed state.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::begin(&self.inner.shared)
    }

    /// A typed handle to an application table named in [`StoreOptions::app_tables`];
    /// [`Error::UnknownTable`] for any other name.
    pub fn app_table<V>(&self, name: &str) -> Result<AppTable<V>>
    where
        V: Serialize + DeserializeOwned,
    {
        validate_app_table_name(name)?;
        if !self.inner.shared.tables.app.contains_key(name) {
            return Err(Error::UnknownTable { name: name.into() });
        }
        Ok(AppTable::new(name))
    }
}
