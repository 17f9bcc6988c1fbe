//! `Sessions`: the one central place an application uses.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::Addr;
use serde::Serialize;
use serde::de::DeserializeOwned;
use session_http::EngineConfig;
use session_store::{AppTable, SessionConfig, SessionId, Snapshot, Store, StoreOptions};
use tokio::sync::oneshot;

use crate::actor::{Poke, SetDelegate};
use crate::clock::{Clock, SystemClock};
use crate::delegate::{CompletionHandler, Delegate, DeliveryOptions};
use crate::error::{Error, Result};
use crate::machine::Input;
use crate::recovery::recover;
use crate::runtime::ActorRuntime;
use crate::session::Session;
use crate::shared::Shared;
use crate::units::{Completions, run_input};

/// How many supervised restarts a session gets in one process before it is parked.
pub const RESTART_LIMIT_DEFAULT: u32 = 16;
/// How often finished tasks past their retention are pruned, by default.
pub const PRUNE_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// Which persisted sessions a [`Sessions::take_waiting`] call handles: the counterpart
/// of `onBackgroundURLSessionEvents(matching:)`.
pub enum Matching {
    /// Exactly this identifier.
    Exact(String),
    /// Every identifier with this prefix.
    Prefix(String),
    /// Every identifier the predicate accepts.
    Predicate(Box<dyn Fn(&SessionId) -> bool + Send + Sync>),
}

impl Matching {
    fn matches(&self, id: &SessionId) -> bool {
        match self {
            Matching::Exact(exact) => id.as_str() == exact,
            Matching::Prefix(prefix) => id.as_str().starts_with(prefix.as_str()),
            Matching::Predicate(predicate) => predicate(id),
        }
    }
}

impl fmt::Debug for Matching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matching::Exact(exact) => write!(f, "Exact({exact:?})"),
            Matching::Prefix(prefix) => write!(f, "Prefix({prefix:?})"),
            Matching::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// Builds a [`Sessions`]: its root directory, options and named completion handlers.
pub struct SessionsBuilder {
    root: PathBuf,
    store: StoreOptions,
    /// Keep the records in PostgreSQL rather than in LMDB under `root`.
    #[cfg(feature = "postgres")]
    postgres: Option<session_store::PostgresOptions>,
    engine: EngineConfig,
    completions: Completions,
    invalid_completion: Option<Error>,
    restart_limit: u32,
    delivery: DeliveryOptions,
    prune_interval: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SessionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionsBuilder")
            .field("root", &self.root)
            .field("completions", &self.completions.keys().collect::<Vec<_>>())
            .field("restart_limit", &self.restart_limit)
            .finish_non_exhaustive()
    }
}

impl SessionsBuilder {
    /// Registers a named completion handler. Sessions store the name (and a payload)
    /// per generation; after a restart the handler must be registered again. An invalid
    /// name (see [`session_store::validate_completion_name`]) makes [`open`](Self::open)
    /// fail with [`Error::InvalidCompletion`].
    pub fn completion(mut self, name: impl Into<String>, handler: impl CompletionHandler) -> Self {
        let name = name.into();
        if let Err(error) = session_store::validate_completion_name(&name) {
            self.invalid_completion
                .get_or_insert(Error::InvalidCompletion {
                    name,
                    reason: error.reason,
                });
            return self;
        }
        self.completions.insert(name, Arc::new(handler));
        self
    }

    /// Declares an application table (in the same store, written by transactional
    /// delegates and completion handlers).
    pub fn app_table(mut self, name: impl Into<String>) -> Self {
        self.store = self.store.with_app_table(name);
        self
    }

    /// Replaces the store options (keeping the application tables declared so far).
    pub fn store_options(mut self, options: StoreOptions) -> Self {
        let tables = std::mem::take(&mut self.store.app_tables);
        self.store = options;
        for table in tables {
            if !self.store.app_tables.contains(&table) {
                self.store.app_tables.push(table);
            }
        }
        self
    }

    /// Keeps the sessions' records in PostgreSQL (feature `postgres`): in the schema and
    /// on the server `options` name, instead of an LMDB store under the root directory.
    /// Downloads still go to files under the root. Transactional delegates and
    /// completion handlers then get the batch's live SQL transaction through
    /// [`WriteScope::postgres`](session_store::WriteScope::postgres), so the
    /// application's own rows commit with the delivery cursor. The application tables
    /// declared with [`app_table`](Self::app_table) are added to `options`.
    ///
    /// ```no_run
    /// use session_actor::{Delegate, Delivery, Event, PostgresOptions, Sessions, WriteScope};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sessions = Sessions::builder("/var/lib/my-service/transfers")
    ///     .postgres(PostgresOptions::new("postgres://me@127.0.0.1/mydb", "transfers"))
    ///     .open()?;
    /// let delegate = Delegate::transactional(|delivery: &Delivery, scope: &mut WriteScope<'_>| {
    ///     if let Event::TaskCompleted { task, .. } = &delivery.event {
    ///         // Commits with "this event was delivered", or not at all.
    ///         scope.postgres()?.execute(
    ///             "INSERT INTO my_service.received (task) VALUES ($1)",
    ///             &[&task.as_str()],
    ///         )?;
    ///     }
    ///     Ok(())
    /// });
    /// # let _ = (sessions, delegate);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, options: session_store::PostgresOptions) -> Self {
        self.postgres = Some(options);
        self
    }

    /// Replaces the transfer engine's configuration.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// How many supervised restarts a session gets before it is parked as faulted.
    pub fn restart_limit(mut self, restarts: u32) -> Self {
        self.restart_limit = restarts;
        self
    }

    /// How deliveries are paced and bounded (see [`DeliveryOptions`]).
    pub fn delivery_options(mut self, options: DeliveryOptions) -> Self {
        self.delivery = options;
        self
    }

    /// How often finished tasks past their retention are pruned (default a minute);
    /// each round runs bounded units until nothing is due.
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.prune_interval = interval;
        self
    }

    /// Replaces the clock (tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The LMDB store under the root, or the PostgreSQL store (with the root made for
    /// downloads).
    fn open_store(&mut self) -> Result<Store> {
        #[cfg(feature = "postgres")]
        if let Some(mut options) = self.postgres.take() {
            std::fs::create_dir_all(&self.root).map_err(|source| {
                Error::Store(session_store::Error::Io {
                    path: self.root.clone(),
                    source,
                })
            })?;
            for table in &self.store.app_tables {
                if !options.app_tables.contains(table) {
                    options.app_tables.push(table.clone());
                }
            }
            return Ok(Store::open_postgres(options)?);
        }
        Ok(Store::open(&self.root, std::mem::take(&mut self.store))?)
    }

    /// Opens the store, starts the actor runtime, recovers every unfinished session and
    /// starts its actor.
    ///
    /// Works from any thread: a `#[tokio::main]` service (multi-threaded or current
    /// thread), a plain synchronous `main`, or inside an actix System. The actors run on
    /// an actix System of this crate's own, on a thread it owns (see
    /// [`Sessions::shutdown`]). It blocks while it opens and recovers the store (one
    /// pass over the unfinished sessions). Transfers of recovered sessions resume at
    /// once; their events wait in the outbox until the application attaches a delegate
    /// with [`Sessions::session`]. It installs no global logger (see [`bridge_log`]).
    ///
    /// # Errors
    /// An invalid completion name, the store's errors (another owner, a corrupt record,
    /// a newer schema, ...), an engine that cannot be built, or a runtime that cannot
    /// start.
    pub fn open(mut self) -> Result<Sessions> {
        if let Some(error) = self.invalid_completion {
            return Err(error);
        }
        self.delivery.validate().map_err(Error::InvalidConfig)?;
        // A `Sessions` of this process on the same root, dropped a moment ago, may still
        // be closing in the background: its lock is about to be released.
        closing::wait_for(&self.root);
        let store = self.open_store()?;
        let (runtime, engine) = match ActorRuntime::start(self.engine) {
            Ok(started) => started,
            Err(error) => {
                let _ = store.close();
                return Err(error);
            }
        };
        let shared = Arc::new(Shared::new(
            store,
            engine,
            self.root.clone(),
            self.clock,
            self.restart_limit,
            self.delivery,
            self.completions,
            runtime.arbiter().clone(),
        ));
        let owner = Owner {
            shared: Arc::clone(&shared),
            runtime: Arc::new(runtime),
            waiting: Mutex::new(BTreeSet::new()),
            open: AtomicBool::new(true),
        };
        let recovered = match recover(&shared.store, &shared.machine_context(), &|| {
            shared.note_storage_full();
        }) {
            Ok(recovered) => recovered,
            Err(error) => {
                // Nothing was started: release the runtime and the store at once.
                owner.open.store(false, Ordering::SeqCst);
                let _ = owner.close();
                return Err(error);
            }
        };
        let recovered_count = recovered.len();
        {
            let mut waiting = owner.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for session in recovered {
                shared.registry.actor(&shared, &session.id, session.actions);
                waiting.insert(session.id);
            }
        }
        let janitor = crate::janitor::run(
            shared.store.clone(),
            Arc::clone(&shared.clock),
            crate::janitor::JanitorOptions {
                interval: self.prune_interval,
            },
        );
        owner.runtime.arbiter().spawn(janitor);
        tracing::info!(
            root = %self.root.display(),
            recovered = recovered_count,
            "sessions open"
        );
        Ok(Sessions {
            owner: Arc::new(owner),
        })
    }
}

/// What every handle of one `Sessions` shares; dropping the last handle shuts down.
struct Owner {
    shared: Arc<Shared>,
    runtime: Arc<ActorRuntime>,
    waiting: Mutex<BTreeSet<SessionId>>,
    /// False once a shutdown began: no more work is taken.
    open: AtomicBool,
}

impl Owner {
    /// Stops the actors and closes the store; blocks until both are done.
    fn close(&self) -> Result<()> {
        self.runtime.stop();
        let joined = self.runtime.join();
        self.shared.registry.clear();
        // The queue drains first: units submitted before the stop still commit.
        let closed = self.shared.store.close().map_err(Error::Store);
        joined.and(closed)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if !self.open.swap(false, Ordering::SeqCst) {
            return;
        }
        // The last handle is gone without a shutdown: do the same, without waiting.
        self.runtime.stop();
        let shared = Arc::clone(&self.shared);
        let runtime = Arc::clone(&self.runtime);
        let mark = closing::begin(&shared.root);
        let closing = std::thread::Builder::new()
            .name("bgsession-close".into())
            .spawn(move || {
                let _ = runtime.join();
                if let Err(error) = shared.store.close() {
                    tracing::warn!(%error, "closing the store after the last handle was dropped");
                }
                drop(shared);
                drop(mark);
            });
        if let Err(error) = closing {
            tracing::warn!(%error, "cannot start the thread that closes the store");
        }
    }
}

/// The central place: the store, the transfer engine and every session's actor.
///
/// Cheap to clone, `Send` and `Sync`; every future it returns is `Send`, so a tokio task
/// or an axum handler can await it. See the [crate documentation](crate) for what it
/// guarantees.
#[derive(Clone)]
pub struct Sessions {
    owner: Arc<Owner>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("root", &self.owner.shared.root)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Starts building `Sessions` over a root directory (created if missing).
    pub fn builder(root: impl AsRef<Path>) -> SessionsBuilder {
        SessionsBuilder {
            root: root.as_ref().to_path_buf(),
            store: StoreOptions::default(),
            #[cfg(feature = "postgres")]
            postgres: None,
            engine: EngineConfig::default(),
            completions: HashMap::new(),
            invalid_completion: None,
            restart_limit: RESTART_LIMIT_DEFAULT,
            delivery: DeliveryOptions::default(),
            prune_interval: PRUNE_INTERVAL_DEFAULT,
            clock: Arc::new(SystemClock),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// Whether work is still taken (no shutdown has begun).
    pub fn is_open(&self) -> bool {
        self.owner.open.load(Ordering::SeqCst)
    }

    /// [`Error::ShutDown`] once a shutdown has begun.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_open() {
            Ok(())
        } else {
            Err(Error::ShutDown)
        }
    }

    /// Creates the session with this identifier, or reconnects to the persisted one,
    /// and attaches the delegate. The configuration is persisted (it replaces the
    /// stored one). Cached: later calls return a handle to the same actor.
    ///
    /// # Errors
    /// An invalid identifier ([`Error::Store`]) or configuration
    /// ([`Error::InvalidConfig`], naming the field), a store error, or
    /// [`Error::ShutDown`].
    pub async fn session(
        &self,
        identifier: &str,
        config: SessionConfig,
        delegate: Delegate,
    ) -> Result<Session> {
        self.check_open()?;
        let id = SessionId::new(identifier)?;
        config.validate().map_err(Error::InvalidConfig)?;
        let unit_id = id.clone();
        let units = self.shared().unit_context();
        self.shared()
            .store
            .write_async(move |scope| {
                let open = Input::Open {
                    id: unit_id.clone(),
                    config: config.clone(),
                };
                run_input(scope, &unit_id, open, &units.machine_context())
            })
            .await
            .map_err(|error| error.into_error(&id))?;
        self.check_open()?;
        let shared = self.shared();
        // The delegate goes to every actor the session has from now on; a live one gets
        // it at once (a new one takes it when it starts).
        shared.registry.set_delegate(&id, delegate.clone());
        if let Some(addr) = shared.registry.live(&id) {
            addr.do_send(SetDelegate(delegate));
        } else {
            shared.registry.actor(shared, &id, None);
        }
        self.owner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        Ok(Session::new(id, self.clone()))
    }

    /// The persisted sessions with work or events waiting that match, each returned
    /// once per launch: the application creates (with [`Sessions::session`]) the ones
    /// it handles, in one central place.
    pub fn take_waiting(&self, matching: &Matching) -> Vec<SessionId> {
        let mut waiting = self
            .owner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let taken: Vec<SessionId> = waiting
            .iter()
            .filter(|id| matching.matches(id))
            .cloned()
            .collect();
        for id in &taken {
            waiting.remove(id);
        }
        taken
    }

    /// Calls `create` for each waiting session that matches (see [`Sessions::take_waiting`]).
    pub fn on_events(&self, matching: &Matching, mut create: impl FnMut(&SessionId)) -> usize {
        let taken = self.take_waiting(matching);
        for id in &taken {
            create(id);
        }
        taken.len()
    }

    /// Registers (or replaces) a completion handler while running; sessions that
    /// were waiting for this name resume delivery.
    ///
    /// # Errors
    /// [`Error::InvalidCompletion`] for a name no completion may have.
    pub fn register_completion(
        &self,
        name: impl Into<String>,
        handler: impl CompletionHandler,
    ) -> Result<()> {
        let name = name.into();
        session_store::validate_completion_name(&name).map_err(|error| {
            Error::InvalidCompletion {
                name: name.clone(),
                reason: error.reason,
            }
        })?;
        self.shared().register_completion(name, Arc::new(handler));
        for addr in self.shared().registry.all() {
            addr.do_send(Poke);
        }
        Ok(())
    }

    /// Removes a session that has nothing left: no open task, no undelivered event, no
    /// dead letter. Its task records go in bounded units, then its record and its
    /// download directory; its actor stops. Removing an unknown session does nothing.
    /// Where its numbering stopped is kept (a few bytes), so a session created again
    /// under the same identifier goes on from the next generation and sequence number and
    /// never repeats a [`DeliveryKey`](crate::DeliveryKey).
    ///
    /// # Errors
    /// [`Error::SessionBusy`] naming what is left, an invalid identifier, a store error,
    /// [`Error::ShutDown`].
    pub async fn remove_session(&self, identifier: &str) -> Result<()> {
        self.check_open()?;
        let id = SessionId::new(identifier)?;
        let Some(record) = self.shared().store.snapshot()?.session(&id)? else {
            return Ok(());
        };
        if let Some(reason) = crate::janitor::removal_refused(&record) {
            return Err(Error::SessionBusy {
                session: id,
                reason,
            });
        }
        let actor = self.shared().registry.remove(&id);
        if let Some(actor) = actor {
            // Awaited, so no unit of the actor starts after the removal began.
            let _ = actor.send(crate::actor::Retire).await;
        }
        loop {
            let unit_id = id.clone();
            let done = self
                .shared()
                .store
                .write_async(move |scope| crate::janitor::remove_unit(scope, &unit_id))
                .await?;
            if done {
                break;
            }
        }
        match std::fs::remove_dir_all(self.shared().download_dir(&id)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(Error::File {
                    operation: "removing the download directory",
                    path: self.shared().download_dir(&id),
                    source: error,
                });
            }
        }
        self.owner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        Ok(())
    }

    /// Since when (Unix milliseconds) the store's writes are refused because its disk is
    /// full, if they are: sessions go on by themselves once there is room again (their
    /// refused writes are tried again with backoff), and `None` comes back with the
    /// first write that commits.
    pub fn storage_full_since_ms(&self) -> Option<u64> {
        self.shared().storage_full_since_ms()
    }

    /// Sessions parked as faulted in this process, with the last failure.
    pub fn faulted(&self) -> Vec<(SessionId, String)> {
        self.shared().faulted()
    }

    /// Supervised restarts of all sessions in this process.
    pub fn restarts(&self) -> u64 {
        self.shared().restarts()
    }

    /// A read-only view of the last commit: the application's tables, the records.
    ///
    /// # Errors
    /// A store error, or [`Error::ShutDown`] after a shutdown.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.shared().store.snapshot()?)
    }

    /// A typed handle to an application table declared with
    /// [`SessionsBuilder::app_table`].
    ///
    /// # Errors
    /// [`session_store::Error::UnknownTable`] for a table not declared at open.
    pub fn app_table<V>(&self, name: &str) -> Result<AppTable<V>>
    where
        V: Serialize + DeserializeOwned,
    {
        Ok(self.shared().store.app_table(name)?)
    }

    /// The store (application tables, snapshots, units of your own).
    pub fn store(&self) -> &Store {
        &self.shared().store
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.shared().root
    }

    /// How many session actors run in this process: one per session with work in
    /// flight, a timer armed, an event waiting or someone waiting on it (an idle session
    /// has none; its actor starts again when it is needed).
    pub fn running(&self) -> usize {
        self.shared().registry.len()
    }

    /// How many session actors have started at least once (recovery is complete when
    /// this reaches the number recovered at open).
    pub fn actors_started(&self) -> u64 {
        self.shared().actors_started()
    }

    /// Whether every actor of this `Sessions` is alive (not stopped for good).
    pub fn all_connected(&self) -> bool {
        self.shared().registry.all().iter().all(Addr::connected)
    }

    /// Stops taking work, lets the units already submitted commit, stops the actors
    /// (transfers in flight stop where they are and resume at the next launch), closes
    /// the store and releases the directory lock; resolves when all of that is done, so
    /// the same directory can be opened again right after. Every handle of this
    /// `Sessions` then answers [`Error::ShutDown`]. Idempotent.
    ///
    /// Dropping the last handle (`Sessions`, `Session` or `TaskHandle`) does the same
    /// without waiting.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when called from a delegate or an actor (the actor thread
    /// cannot wait for itself); the store's error if it could not close cleanly
    /// (snapshots held too long, see [`session_store::Store::close`]).
    pub async fn shutdown(&self) -> Result<()> {
        if self.owner.runtime.is_current_thread() {
            return Err(Error::Unsupported {
                what: "Sessions::shutdown from inside a delegate or an actor (the actor thread would wait for itself)",
            });
        }
        self.owner.open.store(false, Ordering::SeqCst);
        let (sender, receiver) = oneshot::channel();
        let owner = Arc::clone(&self.owner);
        std::thread::Builder::new()
            .name("bgsession-shutdown".into())
            .spawn(move || {
                let _ = sender.send(owner.close());
            })
            .map_err(|error| Error::Runtime {
                reason: format!("cannot start the shutdown thread: {error}"),
            })?;
        receiver.await.map_err(|_| Error::Runtime {
            reason: "the shutdown thread ended without an answer".into(),
        })?
    }
}

/// Bridges the `log` records of actix (and other dependencies that use `log`) into
/// `tracing`, by installing `tracing_log::LogTracer` as the global `log` logger.
///
/// `Sessions` never calls it: which global logger a process has is the application's
/// choice. Call it once at start-up if you want those records in your `tracing`
/// subscriber; it does nothing if a `log` logger is already installed.
pub fn bridge_log() {
    let _ = tracing_log::LogTracer::init();
}

/// Roots whose `Sessions` is closing in the background (its last handle was dropped), so
/// that opening the same root again in this process waits for the lock's release rather
/// than failing with `Locked`.
mod closing {
    use std::path::{Path, PathBuf};
    use std::sync::{Condvar, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    /// The longest an `open` waits for a background close of the same root.
    const WAIT_MAX: Duration = Duration::from_secs(30);

    static CLOSING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static CHANGED: Condvar = Condvar::new();

    fn key(root: &Path) -> PathBuf {
        std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
    }

    /// Marks `root` as closing until the returned mark is dropped.
    pub(super) fn begin(root: &Path) -> Mark {
        let key = key(root);
        CLOSING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key.clone());
        Mark { key }
    }

    /// A root being closed; dropping it ends the close.
    pub(super) struct Mark {
        key: PathBuf,
    }

    impl Drop for Mark {
        fn drop(&mut self) {
            let mut closing = CLOSING.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(index) = closing.iter().position(|key| *key == self.key) {
                closing.swap_remove(index);
            }
            CHANGED.notify_all();
        }
    }

    /// Waits (at most [`WAIT_MAX`]) while `root` is being closed in the background.
    pub(super) fn wait_for(root: &Path) {
        let key = key(root);
        let deadline = Instant::now() + WAIT_MAX;
        let mut closing = CLOSING.lock().unwrap_or_else(PoisonError::into_inner);
        while closing.contains(&key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            closing = CHANGED
                .wait_timeout(closing, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
