//! `Snapshot`: a consistent read-only view of the store, usable from any thread.

use std::sync::Arc;
use std::time::Instant;

use heed::{RoTxn, WithoutTls};

use crate::check::{DB_RECORD_BYTES, DbRecord, TableReport};
use crate::error::{Error, Result};
use crate::gate::Exclusive;
use crate::ids::{SessionId, TaskId};
use crate::kv::Kv;
use crate::read::{self, View};
use crate::records::{DeadLetterRecord, EventRecord, SessionRecord, TaskRecord};
use crate::store::Shared;

/// How many times a snapshot of a store opened read-only begins again after adopting
/// the owner's larger map (the owner may grow it again meanwhile; each growth doubles
/// it, so a second adoption is rare and a third rarer still).
const MAP_ADOPT_ATTEMPTS: u32 = 4;

/// What a store occupies ([`Snapshot::size`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StoreSize {
    /// The data file's length.
    pub data_bytes: u64,
    /// LMDB's page size.
    pub page_bytes: u64,
    /// The last page number LMDB uses (by its newest commit); pages up to it that no
    /// table holds are free for reuse or hold LMDB's list of them.
    pub last_page: u64,
    /// Pages the tables hold (branch, leaf and overflow pages of every table and of
    /// LMDB's table of table names; not LMDB's list of free pages).
    pub pages_in_use: u64,
    /// Every table (LMDB named database; application tables have the prefix `app.`),
    /// in name order, with its entries and pages.
    pub tables: Vec<TableReport>,
}

/// Adopts the larger map of the owner of a store opened read-only, once no snapshot of
/// this process is alive (LMDB remaps the file, which no live transaction may see).
fn adopt_map_size(shared: &Shared) -> Result<()> {
    let env = shared.env()?;
    // SAFETY: `resize` needs that no transaction of this environment is active. The
    // store is read-only, so it has no write transaction, and the gate runs this only
    // once every snapshot (the only read transactions) has ended, keeping new ones out
    // until it returns. A size of 0 makes LMDB take the size the owner's newest commit
    // recorded.
    let resized = shared
        .gate
        .exclusive(Some(shared.snapshot_age_max), || unsafe { env.resize(0) });
    match resized {
        Exclusive::Ran(result) => {
            result.map_err(|e| Error::lmdb("adopting the owner's map size", e))?;
            tracing::debug!(dir = %shared.dir.display(), map_size_bytes = env.info().map_size, "adopted the owner's map size");
            Ok(())
        }
        Exclusive::Blocked(blocked) => Err(Error::MapGrowthBlocked {
            snapshots: blocked.snapshots,
            waited_ms: blocked.waited.as_millis() as u64,
        }),
        // Not with a wait bound; the next attempt at the snapshot tries again.
        Exclusive::Skipped => Ok(()),
    }
}

/// A read transaction over the last committed state. It is `Send` (the environment is
/// opened without thread-local reader slots), so it can move between threads and across
/// `.await`s.
///
/// Keep it short-lived: a live snapshot pins the pages it reads, and growing the map
/// waits until every snapshot has ended. Never hold one while waiting for a write (it
/// could wait for a map growth that waits for the snapshot). Its life is bounded by
/// [`StoreOptions::snapshot_age_ms_max`](crate::StoreOptions::snapshot_age_ms_max):
/// reads through an older snapshot are [`Error::SnapshotTooOld`], and the writer waits
/// no longer than that for snapshots before it fails a batch that needs a larger map.
pub struct Snapshot {
    inner: Inner,
}

enum Inner {
    Lmdb(LmdbSnapshot),
    #[cfg(feature = "postgres")]
    Postgres(crate::pg::PgSnapshot),
}

/// An LMDB read transaction with its ticket of the map gate.
pub(crate) struct LmdbSnapshot {
    // Field order is drop order: the read transaction ends before the ticket leaves the
    // map gate, which is what makes a map resize sound.
    txn: RoTxn<'static, WithoutTls>,
    ticket: GateTicket,
    begun: Instant,
}

/// A snapshot's registration in the map gate (see `gate`).
struct GateTicket {
    shared: Arc<Shared>,
}

impl Drop for GateTicket {
    fn drop(&mut self) {
        self.shared.gate.leave();
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Lmdb(snapshot) => snapshot.fmt(f),
            #[cfg(feature = "postgres")]
            Inner::Postgres(snapshot) => snapshot.fmt(f),
        }
    }
}

impl std::fmt::Debug for LmdbSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("dir", &self.ticket.shared.dir)
            .field("txn_id", &self.txn.id())
            .finish()
    }
}

impl Snapshot {
    pub(crate) fn begin(shared: &Arc<Shared>) -> Result<Snapshot> {
        let mut attempt = 1;
        loop {
            shared.check_open()?;
            shared.gate.enter().map_err(|_| shared.closed_error())?;
            let ticket = GateTicket {
                shared: Arc::clone(shared),
            };
            // The gate is open and counts this ticket, so `close` has not taken the
            // environment and will wait for this snapshot before it does.
            match shared.env()?.static_read_txn() {
                Ok(txn) => {
                    return Ok(Snapshot {
                        inner: Inner::Lmdb(LmdbSnapshot {
                            txn,
                            ticket,
                            begun: Instant::now(),
                        }),
                    });
                }
                // Only in a store opened read-only: the owner's map grew past this one.
                Err(heed::Error::Mdb(heed::MdbError::MapResized))
                    if shared.read_only && attempt < MAP_ADOPT_ATTEMPTS =>
                {
                    drop(ticket);
                    adopt_map_size(shared)?;
                    attempt += 1;
                }
                Err(error) => return Err(Error::lmdb("beginning a snapshot", error)),
            }
        }
    }

    /// What the store occupies, as of this snapshot: the data file's length, the pages
    /// up to the last one LMDB uses, and the entries and pages of every table (those of
    /// the application and of newer builds included).
    ///
    /// LMDB only: on PostgreSQL this is [`Error::Unsupported`] (the server's own
    /// statistics say what its tables occupy).
    pub fn size(&self) -> Result<StoreSize> {
        let snapshot = self.lmdb("the store's size")?;
        let view = snapshot.view()?;
        let shared = &snapshot.ticket.shared;
        let data_path = shared.dir.join(crate::check::DATA_FILE_NAME);
        let data_bytes = std::fs::metadata(&data_path)
            .map_err(|source| Error::Io {
                path: data_path,
                source,
            })?
            .len();
        let env = shared.env()?;
        let operation = "listing the tables";
        let main = match view.tables.names {
            Some(names) => names
                .stat(view.txn)
                .map_err(|e| Error::lmdb(operation, e))?,
            None => env.unnamed_database_stat(),
        };
        let mut tables = Vec::new();
        if let Some(names) = view.tables.names {
            for entry in names
                .iter(view.txn)
                .map_err(|e| Error::lmdb(operation, e))?
            {
                let (name, record) = entry.map_err(|e| Error::lmdb(operation, e))?;
                // Every value of LMDB's main table is its record of a table.
                if record.len() != DB_RECORD_BYTES {
                    continue;
                }
                let record = DbRecord::parse(record);
                tables.push(TableReport {
                    name: String::from_utf8_lossy(name).into_owned(),
                    entries: record.entries,
                    pages: record.branch_pages + record.leaf_pages + record.overflow_pages,
                });
            }
        }
        let main_pages = (main.branch_pages + main.leaf_pages + main.overflow_pages) as u64;
        Ok(StoreSize {
            data_bytes,
            page_bytes: u64::from(main.page_size),
            last_page: env.info().last_page_number as u64,
            pages_in_use: main_pages + tables.iter().map(|table| table.pages).sum::<u64>(),
            tables,
        })
    }

    /// The address of a byte inside this store's memory map, if the store holds any
    /// record: a read transaction's keys are handed out in place, on their pages in the
    /// map. It tells the store's own mapping apart from other mappings of the same file.
    pub(crate) fn map_address(&self) -> Result<Option<usize>> {
        let view = self.lmdb("the store's map")?.view()?;
        let tables = view.tables;
        let candidates = [
            tables.names,
            Some(tables.sessions),
            Some(tables.tasks),
            Some(tables.events),
        ];
        for table in candidates.into_iter().flatten() {
            if let Some((key, _)) = table
                .first(view.txn)
                .map_err(|e| Error::lmdb("finding the store's map", e))?
            {
                return Ok(Some(key.as_ptr() as usize));
            }
        }
        Ok(None)
    }

    /// The LMDB snapshot, or `Unsupported` for `what` on another backend.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn lmdb(&self, what: &'static str) -> Result<&LmdbSnapshot> {
        match &self.inner {
            Inner::Lmdb(snapshot) => Ok(snapshot),
            #[cfg(feature = "postgres")]
            Inner::Postgres(_) => Err(Error::Unsupported {
                what,
                backend: "PostgreSQL",
            }),
        }
    }

    /// Runs a query of the application's own tables inside this snapshot's read-only
    /// `REPEATABLE READ` transaction (PostgreSQL only; on LMDB [`Error::Unsupported`]):
    /// what it reads is consistent with the store's records this snapshot reads.
    #[cfg(feature = "postgres")]
    pub fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        match &self.inner {
            Inner::Postgres(snapshot) => snapshot.query(sql, params),
            Inner::Lmdb(_) => Err(Error::Unsupported {
                what: "an SQL query in a snapshot",
                backend: "LMDB",
            }),
        }
    }

    /// A snapshot of the PostgreSQL backend.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(snapshot: crate::pg::PgSnapshot) -> Snapshot {
        Snapshot {
            inner: Inner::Postgres(snapshot),
        }
    }

    /// Reads through the backend's read half, unless the snapshot is past its maximum
    /// age.
    pub(crate) fn with_kv<T>(&self, f: impl FnOnce(&dyn Kv) -> Result<T>) -> Result<T> {
        match &self.inner {
            Inner::Lmdb(snapshot) => f(&snapshot.view()?),
            #[cfg(feature = "postgres")]
            Inner::Postgres(snapshot) => {
                snapshot.check_age()?;
                f(snapshot)
            }
        }
    }
}

impl LmdbSnapshot {
    /// The view to read through, unless the snapshot is past its maximum age.
    pub(crate) fn view(&self) -> Result<View<'_>> {
        let age = self.begun.elapsed();
        let age_max = self.ticket.shared.snapshot_age_max;
        if age > age_max {
            return Err(Error::SnapshotTooOld {
                age_ms: age.as_millis() as u64,
                age_ms_max: age_max.as_millis() as u64,
            });
        }
        Ok(View {
            txn: &self.txn,
            tables: &self.ticket.shared.tables,
        })
    }
}

impl Snapshot {
    /// The session record, if the session exists.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.with_kv(|kv| read::session(kv, id))
    }

    /// Every session record, in identifier order (all in memory: for a large store,
    /// [`sessions_from`](Self::sessions_from) reads them in bounded pieces).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        self.with_kv(read::sessions)
    }

    /// Up to `limit` session records after `after` (from the first when `None`), in
    /// identifier order. Walking every session of a large store takes several calls,
    /// each on a new snapshot if need be (a snapshot may live only
    /// [`snapshot_age_ms_max`](crate::StoreOptions::snapshot_age_ms_max)): pass the last
    /// identifier of one piece to get the next.
    pub fn sessions_from(
        &self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>> {
        self.with_kv(|kv| read::sessions_from(kv, after, limit))
    }

    /// The task record, if the task exists.
    pub fn task(&self, session: &SessionId, task: &TaskId) -> Result<Option<TaskRecord>> {
        self.with_kv(|kv| read::task(kv, session, task))
    }

    /// Every task of a session, in task identifier order.
    pub fn tasks(&self, session: &SessionId) -> Result<Vec<TaskRecord>> {
        self.with_kv(|kv| read::tasks(kv, session))
    }

    /// Up to `limit` tasks of a session after task `after` (from its first when `None`),
    /// in task identifier order.
    pub fn tasks_from(
        &self,
        session: &SessionId,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.with_kv(|kv| read::tasks_from(kv, session, after, limit))
    }

    /// Visits every task of every session, ordered by session then task; stops at the
    /// first error (a corrupt record, or an error returned by `visit`).
    pub fn for_each_task(&self, visit: impl FnMut(TaskRecord) -> Result<()>) -> Result<()> {
        self.with_kv(|kv| read::for_each_task(kv, visit))
    }

    /// The event `seq` of a session, if it exists.
    pub fn event(&self, session: &SessionId, seq: u64) -> Result<Option<EventRecord>> {
        self.with_kv(|kv| read::event(kv, session, seq))
    }

    /// Up to `limit` events of a session from `from_seq` on, in sequence order.
    pub fn events(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        self.with_kv(|kv| read::events(kv, session, from_seq, limit))
    }

    /// The dead letter of event `seq` of a session, if there is one.
    pub fn dead_letter(&self, session: &SessionId, seq: u64) -> Result<Option<DeadLetterRecord>> {
        self.with_kv(|kv| read::dead_letter(kv, session, seq))
    }

    /// Up to `limit` dead letters of a session from `from_seq` on, in sequence order.
    pub fn dead_letters(
        &self,
        session: &SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        self.with_kv(|kv| read::dead_letters(kv, session, from_seq, limit))
    }

    /// Up to `limit` identifiers of sessions with open tasks or undelivered events, after
    /// `after` (from the first when `None`), in identifier order.
    ///
    /// # Errors
    /// A corrupt index entry, an LMDB error, a snapshot past its age.
    pub fn active_sessions_from(
        &self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<SessionId>> {
        self.with_kv(|kv| read::active_sessions_from(kv, after, limit))
    }

    /// Up to `limit` task expiry entries due at `now_ms` (`expires_ms <= now_ms`), oldest
    /// first, as `(expires_ms, session, task)`.
    pub fn expired_tasks(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SessionId, TaskId)>> {
        self.with_kv(|kv| read::expired_tasks(kv, now_ms, limit))
    }
}
