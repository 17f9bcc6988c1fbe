//! The writer thread: group commit of queued units.
//!
//! LMDB write transactions must end on the thread that began them, so one thread owns
//! them all. It drains up to `batch_units_max` queued units into one write transaction;
//! each unit runs in its own nested transaction, aborted alone if the unit fails or
//! panics; one commit (one fsync pair) then makes the whole batch durable, and only then
//! are the replies sent.
//!
//! "Map full" leaves LMDB's whole transaction unusable, so the batch is dropped, the map
//! grows (with no transaction open) and the batch runs again; units are `FnMut` with
//! effects only through their transaction, so a re-run is invisible to them. Between
//! batches the map also grows ahead of time once it is half full and no snapshot is
//! alive, so that a batch rarely has to wait for snapshots; when it must, it waits at
//! most `StoreOptions::snapshot_age_ms_max` and then fails with `MapGrowthBlocked`.
//!
//! A commit that fails because the file system is full is reported as `StorageFull`
//! (LMDB says EIO for a write the kernel cut short, ENOSPC for one it refused).

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heed::{Env, WithoutTls};

use crate::error::{BackendError, Error};
use crate::gate::Exclusive;
use crate::options::{StoreOptions, round_map_size};
use crate::queue::Queue;
use crate::reply::ReplySender;
use crate::scope::{LmdbScope, WriteScope};
use crate::store::Shared;

/// How many times one batch may be re-run after growing the map before its units get the
/// error; each growth doubles the map, so this is never reached below the size limit.
const BATCH_RERUNS_MAX: u32 = 48;
/// Below this many free bytes, an EIO from a commit is taken for a full file system: a
/// write the kernel cut short for lack of room has used up what was left.
pub(crate) const STORAGE_FULL_FREE_BYTES_MAX: u64 = 1024 * 1024;
/// The map grows ahead of time once the data uses this fraction of it (numerator and
/// denominator).
const GROW_AHEAD_FILL: (usize, usize) = (1, 2);

/// Whether a unit's writes should be kept.
pub(crate) enum UnitStatus {
    /// The unit returned `Ok`: commit its nested transaction.
    Succeeded,
    /// The unit returned `Err` or panicked: abort its nested transaction.
    Failed,
}

/// A submitted unit with its reply, type-erased for the queue.
pub(crate) trait Job: Send {
    /// Runs the unit (possibly again, after a map growth), keeping its latest result.
    fn run(&mut self, scope: &mut WriteScope<'_>) -> UnitStatus;
    /// Sends the reply.
    fn finish(self: Box<Self>, outcome: Finish);
}

/// How a unit's batch ended, for its reply.
pub(crate) enum Finish {
    /// The batch committed: the unit gets its own result.
    Committed,
    /// The batch did not commit: a unit that failed on its own keeps its error, the
    /// others get this one.
    BatchFailed(Error),
    /// The unit gets this error whatever it returned (its own error may be a symptom,
    /// such as "map full" from a map that could not grow).
    Failed(Error),
}

/// A unit of work as submitted by `Store::write` and `Store::write_async`.
pub(crate) struct UnitJob<F, T, E> {
    unit: F,
    result: Option<Result<T, E>>,
    reply: ReplySender<Result<T, E>>,
}

impl<F, T, E> UnitJob<F, T, E> {
    pub(crate) fn new(unit: F, reply: ReplySender<Result<T, E>>) -> Self {
        UnitJob {
            unit,
            result: None,
            reply,
        }
    }
}

impl<F, T, E> Job for UnitJob<F, T, E>
where
    F: FnMut(&mut WriteScope<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn run(&mut self, scope: &mut WriteScope<'_>) -> UnitStatus {
        // AssertUnwindSafe: after a panic the unit's nested transaction is aborted, so no
        // half-written state of the store survives; the unit's own captured state is the
        // caller's, who gets the panic as an error.
        let result = match catch_unwind(AssertUnwindSafe(|| (self.unit)(scope))) {
            Ok(result) => result,
            Err(payload) => Err(E::from(Error::UnitPanicked {
                message: panic_message(payload.as_ref()),
            })),
        };
        let status = if result.is_ok() {
            UnitStatus::Succeeded
        } else {
            UnitStatus::Failed
        };
        self.result = Some(result);
        status
    }

    fn finish(self: Box<Self>, outcome: Finish) {
        let UnitJob { result, reply, .. } = *self;
        let reply_value = match (result, outcome) {
            (_, Finish::Failed(error)) => Err(E::from(error)),
            (Some(Err(error)), Finish::Committed | Finish::BatchFailed(_)) => Err(error),
            (Some(Ok(value)), Finish::Committed) => Ok(value),
            (Some(Ok(_)) | None, Finish::BatchFailed(error)) => Err(E::from(error)),
            (None, Finish::Committed) => {
                debug_assert!(
                    false,
                    "invariant violation: a unit finished without running"
                );
                Err(E::from(Error::WriterStopped))
            }
        };
        reply.send(reply_value);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}

/// A fail point around a backend's batch commit (`store-before-commit` before it,
/// `store-after-commit` after it, for a backend other than LMDB's writer): `return` fails
/// the batch with `FailPoint`, `return(abort)` aborts the process.
#[cfg(feature = "postgres")]
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub(crate) fn commit_fail_point(name: &'static str) -> crate::error::Result<()> {
    fail::fail_point!(name, |arg| {
        if arg.as_deref() == Some("abort") {
            std::process::abort();
        }
        Err(Error::FailPoint { name })
    });
    Ok(())
}

/// Why one attempt at a batch did not commit.
enum Retry {
    /// LMDB ran out of map (in the unit at this index, or at the batch commit): grow
    /// and re-run the whole batch.
    MapFull { unit: Option<usize> },
    /// One unit's nested commit failed: it gets `error`, the others re-run without it.
    Exclude { index: usize, error: Error },
    /// The batch cannot commit: every unit gets the error.
    Fatal(BatchError),
}

/// An error that every unit of a batch receives (so it must be copyable).
#[derive(Clone)]
enum BatchError {
    Lmdb {
        operation: &'static str,
        source: BackendError,
    },
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    FailPoint(&'static str),
    MapSizeLimit(usize),
    MapGrowthBlocked {
        snapshots: usize,
        waited_ms: u64,
    },
    StorageFull {
        dir: Arc<Path>,
        free_bytes: u64,
    },
}

impl BatchError {
    fn to_error(&self) -> Error {
        match self {
            BatchError::Lmdb { operation, source } => Error::Backend {
                operation,
                source: source.clone(),
            },
            BatchError::FailPoint(name) => Error::FailPoint { name },
            BatchError::MapSizeLimit(limit_bytes) => Error::MapSizeLimit {
                limit_bytes: *limit_bytes,
            },
            BatchError::MapGrowthBlocked {
                snapshots,
                waited_ms,
            } => Error::MapGrowthBlocked {
                snapshots: *snapshots,
                waited_ms: *waited_ms,
            },
            BatchError::StorageFull { dir, free_bytes } => Error::StorageFull {
                dir: dir.to_path_buf(),
                free_bytes: *free_bytes,
            },
        }
    }
}

/// The bytes of the file system holding `dir` that an unprivileged writer may still use.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` points
    // to writable memory of the struct's size, which statvfs fills on success.
    let status = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialized the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types are u64 on 64-bit Linux but not on every target.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_bytes) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Some(blocks.saturating_mul(block_bytes))
}

/// The free bytes, if `error` is what LMDB reports for a write that found the file
/// system full: ENOSPC or EDQUOT whatever the free space, EIO (a short write) only when
/// (almost) nothing is left.
pub(crate) fn storage_full(dir: &Path, error: &heed::Error) -> Option<u64> {
    let heed::Error::Io(error) = error else {
        return None;
    };
    match error.raw_os_error()? {
        libc::ENOSPC | libc::EDQUOT => Some(free_bytes(dir).unwrap_or(0)),
        libc::EIO => free_bytes(dir).filter(|free| *free < STORAGE_FULL_FREE_BYTES_MAX),
        _ => None,
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    /// The writer's own handle to the environment: it stays open while the writer runs,
    /// and `close` joins the writer before it closes the environment.
    env: Env<WithoutTls>,
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    batch_units_max: usize,
    map_size_bytes_max: usize,
    page_size_bytes: usize,
    dir: Arc<Path>,
}

impl Writer {
    pub(crate) fn new(
        env: Env<WithoutTls>,
        shared: Arc<Shared>,
        queue: Arc<Queue>,
        options: &StoreOptions,
    ) -> Writer {
        let page_size_bytes = env.unnamed_database_stat().page_size as usize;
        let dir = Arc::from(shared.dir.as_path());
        Writer {
            env,
            shared,
            queue,
            batch_units_max: options.batch_units_max,
            map_size_bytes_max: round_map_size(options.map_size_bytes_max),
            page_size_bytes,
            dir,
        }
    }

    /// Classifies a heed error at batch level: "map full" means grow and re-run; a full
    /// file system is `StorageFull`.
    fn batch_failure(&self, operation: &'static str, error: heed::Error) -> Retry {
        if matches!(error, heed::Error::Mdb(heed::MdbError::MapFull)) {
            return Retry::MapFull { unit: None };
        }
        if let Some(free_bytes) = storage_full(&self.dir, &error) {
            tracing::warn!(dir = %self.dir.display(), free_bytes, %error, "the file system is full");
            return Retry::Fatal(BatchError::StorageFull {
                dir: Arc::clone(&self.dir),
                free_bytes,
            });
        }
        Retry::Fatal(BatchError::Lmdb {
            operation,
            source: BackendError::lmdb(error),
        })
    }

    /// Commits batches until the queue is closed and drained.
    pub(crate) fn run(self) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(self.batch_units_max);
        while self.queue.pop_batch(self.batch_units_max, &mut batch) {
            self.grow_ahead();
            self.commit_batch(&mut batch);
            debug_assert!(
                batch.is_empty(),
                "invariant violation: units left unanswered"
            );
        }
        tracing::debug!(dir = %self.shared.dir.display(), "store writer stopped");
    }

    /// Commits `batch` (re-running it as needed) and answers every unit; leaves it empty.
    fn commit_batch(&self, batch: &mut Vec<Box<dyn Job>>) {
        let started = Instant::now();
        let units = batch.len();
        let mut reruns = 0_u32;
        while !batch.is_empty() {
            match self.attempt(batch) {
                Ok(()) => {
                    for job in batch.drain(..) {
                        job.finish(Finish::Committed);
                    }
                    tracing::trace!(
                        units,
                        reruns,
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "batch committed"
                    );
                }
                Err(Retry::MapFull { unit }) => {
                    reruns += 1;
                    let grown = if reruns > BATCH_RERUNS_MAX {
                        Err(BatchError::MapSizeLimit(self.map_size_bytes_max))
                    } else {
                        self.grow(true)
                    };
                    let Err(error) = grown else {
                        continue;
                    };
                    let blocked = matches!(error, BatchError::MapGrowthBlocked { .. });
                    match unit {
                        // The map cannot hold this unit on top of the ones before it: it
                        // fails alone and the others are tried again without it.
                        Some(index) if batch.len() > 1 && !blocked => {
                            tracing::warn!(
                                units,
                                reruns,
                                "a unit does not fit in the map; re-running its batch without it"
                            );
                            batch.remove(index).finish(Finish::Failed(error.to_error()));
                            reruns = 0;
                        }
                        _ => {
                            tracing::error!(
                                units,
                                reruns,
                                error = %error.to_error(),
                                "the map cannot grow enough for a batch"
                            );
                            for job in batch.drain(..) {
                                job.finish(Finish::Failed(error.to_error()));
                            }
                        }
                    }
                }
                Err(Retry::Exclude { index, error }) => {
                    tracing::warn!(%error, "a unit's nested commit failed; re-running its batch without it");
                    batch.remove(index).finish(Finish::Failed(error));
                }
                Err(Retry::Fatal(error)) => {
                    tracing::error!(units, error = %error.to_error(), "a batch failed to commit");
                    for job in batch.drain(..) {
                        job.finish(Finish::BatchFailed(error.to_error()));
                    }
                }
            }
        }
    }

    /// Runs every unit in its nested transaction and commits the batch once.
    fn attempt(&self, batch: &mut [Box<dyn Job>]) -> Result<(), Retry> {
        let env = &self.env;
        let mut parent = env
            .write_txn()
            .map_err(|e| self.batch_failure("beginning a batch", e))?;
        for (index, job) in batch.iter_mut().enumerate() {
            let nested = env
                .nested_write_txn(&mut parent)
                .map_err(|e| self.batch_failure("beginning a unit's nested transaction", e))?;
            let mut unit = LmdbScope::new(nested, &self.shared);
            let status = job.run(&mut WriteScope::new(&mut unit));
            let (nested, map_full_seen) = unit.into_parts();
            if map_full_seen {
                // Dropping `parent` on return aborts the whole batch.
                nested.abort();
                return Err(Retry::MapFull { unit: Some(index) });
            }
            match status {
                UnitStatus::Failed => nested.abort(),
                UnitStatus::Succeeded => match nested.commit() {
                    Ok(()) => {}
                    Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                        return Err(Retry::MapFull { unit: Some(index) });
                    }
                    Err(error) => {
                        let error = match storage_full(&self.dir, &error) {
                            Some(free_bytes) => Error::StorageFull {
                                dir: self.dir.to_path_buf(),
                                free_bytes,
                            },
                            None => Error::lmdb("committing a unit's nested transaction", error),
                        };
                        return Err(Retry::Exclude { index, error });
                    }
                },
            }
        }
        fail::fail_point!("store-before-commit", |arg| {
            if arg.as_deref() == Some("abort") {
                std::process::abort();
            }
            Err(Retry::Fatal(BatchError::FailPoint("store-before-commit")))
        });
        parent
            .commit()
            .map_err(|e| self.batch_failure("committing a batch", e))?;
        fail::fail_point!("store-after-commit", |arg| {
            if arg.as_deref() == Some("abort") {
                std::process::abort();
            }
            Err(Retry::Fatal(BatchError::FailPoint("store-after-commit")))
        });
        Ok(())
    }

    /// Grows the map once it is half full, unless a snapshot is alive (then a later
    /// batch grows it, or "map full" does, waiting a bounded time for snapshots).
    fn grow_ahead(&self) {
        let info = self.env.info();
        let used_bytes = (info.last_page_number + 1).saturating_mul(self.page_size_bytes);
        let (numerator, denominator) = GROW_AHEAD_FILL;
        if used_bytes.saturating_mul(denominator) < info.map_size.saturating_mul(numerator) {
            return;
        }
        if let Err(error) = self.grow(false) {
            tracing::debug!(error = %error.to_error(), "cannot grow the map ahead of time");
        }
    }

    /// Doubles the map (up to the limit). With `wait`, waits for live snapshots to end,
    /// at most `snapshot_age_ms_max`; without, returns `Ok` without growing if any is
    /// alive.
    fn grow(&self, wait: bool) -> Result<(), BatchError> {
        let env = &self.env;
        let current = env.info().map_size;
        if current >= self.map_size_bytes_max {
            return Err(BatchError::MapSizeLimit(self.map_size_bytes_max));
        }
        let next = round_map_size(current.saturating_mul(2)).min(self.map_size_bytes_max);
        let wait_max: Option<Duration> = wait.then_some(self.shared.snapshot_age_max);
        let resized = self.shared.gate.exclusive(wait_max, || {
            // SAFETY: LMDB allows changing the map size of an open environment when no
            // transaction of this process is active. This runs on the writer thread
            // between attempts: its batch transaction was committed or dropped, and no
            // other thread can hold a write transaction (every write runs here). The gate
            // has waited until no snapshot (the only read transactions) is alive and holds
            // new ones back until this returns. No other process has the environment
            // open: the directory lock makes this process its only owner.
            unsafe { env.resize(next) }
        });
        match resized {
            Exclusive::Skipped => Ok(()),
            Exclusive::Ran(Ok(())) => {
                tracing::debug!(from_bytes = current, to_bytes = next, "map grown");
                Ok(())
            }
            Exclusive::Ran(Err(error)) => Err(BatchError::Lmdb {
                operation: "growing the map",
                source: BackendError::lmdb(error),
            }),
            Exclusive::Blocked(blocked) => {
                tracing::warn!(
                    snapshots = blocked.snapshots,
                    waited_ms = blocked.waited.as_millis() as u64,
                    "the map must grow but snapshots stay alive; failing the batch"
                );
                Err(BatchError::MapGrowthBlocked {
                    snapshots: blocked.snapshots,
                    waited_ms: blocked.waited.as_millis() as u64,
                })
            }
        }
    }
}
