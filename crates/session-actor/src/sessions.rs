//! `Sessions`: the one central place an application uses.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use actix::{Addr, Supervisor};
use session_http::{Engine, EngineConfig};
use session_store::{SessionConfig, SessionId, Store, StoreOptions};

use crate::actor::{Poke, SessionActor, SetDelegate};
use crate::clock::{Clock, SystemClock};
use crate::delegate::{CompletionHandler, Delegate};
use crate::error::{Error, Result};
use crate::machine::Input;
use crate::recovery::recover;
use crate::session::Session;
use crate::units::{Completions, run_input};

/// How many supervised restarts a session gets in one process before it is parked.
pub const RESTART_LIMIT_DEFAULT: u32 = 16;

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
    engine: EngineConfig,
    completions: Completions,
    restart_limit: u32,
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
    /// per generation; after a restart the handler must be registered again.
    pub fn completion(mut self, name: impl Into<String>, handler: impl CompletionHandler) -> Self {
        self.completions.insert(name.into(), Arc::new(handler));
        self
    }

    /// Declares an application table (in the same LMDB environment, written by
    /// transactional delegates and completion handlers).
    pub fn app_table(mut self, name: impl Into<String>) -> Self {
        self.store = self.store.with_app_table(name);
        self
    }

    /// Replaces the store options.
    pub fn store_options(mut self, options: StoreOptions) -> Self {
        self.store = options;
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

    /// Replaces the clock (tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Opens the store, recovers every unfinished session and starts its actor.
    ///
    /// Must be called inside a running actix `System` (the actors and the HTTP client
    /// live on its runtime). Transfers of recovered sessions resume at once; their
    /// events wait in the outbox until the application attaches a delegate with
    /// [`Sessions::session`].
    ///
    /// # Errors
    /// The store's errors (another owner, a corrupt record, a newer schema, ...), or
    /// an engine that cannot be built.
    pub fn open(self) -> Result<Sessions> {
        bridge_log();
        let store = Store::open(&self.root, self.store)?;
        let engine = Engine::new(self.engine).map_err(Error::Engine)?;
        let shared = Arc::new(crate::shared::Shared::new(
            store,
            engine,
            self.root.clone(),
            self.clock,
            self.restart_limit,
            self.completions,
        ));
        let recovered = recover(&shared.store, &shared.machine_context())?;
        let mut actors = HashMap::with_capacity(recovered.len());
        let mut waiting = BTreeSet::new();
        for session in recovered {
            let shared_for_actor = shared.clone();
            let id = session.id.clone();
            let actions = session.actions;
            let addr = Supervisor::start(move |_| {
                SessionActor::new(id, shared_for_actor, None, Some(actions))
            });
            waiting.insert(session.id.clone());
            actors.insert(session.id, addr);
        }
        tracing::info!(root = %self.root.display(), recovered = actors.len(), "sessions open");
        Ok(Sessions {
            shared,
            actors: Arc::new(Mutex::new(actors)),
            waiting: Arc::new(Mutex::new(waiting)),
        })
    }
}

/// The central place: the store, the transfer engine and every session's actor.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<crate::shared::Shared>,
    actors: Arc<Mutex<HashMap<SessionId, Addr<SessionActor>>>>,
    waiting: Arc<Mutex<BTreeSet<SessionId>>>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Starts building `Sessions` over a root directory (created if missing).
    pub fn builder(root: impl AsRef<Path>) -> SessionsBuilder {
        SessionsBuilder {
            root: root.as_ref().to_path_buf(),
            store: StoreOptions::default(),
            engine: EngineConfig::default(),
            completions: HashMap::new(),
            restart_limit: RESTART_LIMIT_DEFAULT,
            clock: Arc::new(SystemClock),
        }
    }

    /// Creates the session with this identifier, or reconnects to the persisted one,
    /// and attaches the delegate. The configuration is persisted (it replaces the
    /// stored one). Cached: later calls return a handle to the same actor.
    ///
    /// # Errors
    /// An invalid identifier or configuration, or a store error.
    pub async fn session(
        &self,
        identifier: &str,
        config: SessionConfig,
        delegate: Delegate,
    ) -> Result<Session> {
        let id = SessionId::new(identifier)?;
        let unit_id = id.clone();
        let units = self.shared.unit_context();
        self.shared
            .store
            .write_async(move |scope| {
                let open = Input::Open {
                    id: unit_id.clone(),
                    config: config.clone(),
                };
                run_input(scope, &unit_id, open, &units.machine_context())
            })
            .await
            .map_err(|error| error.into_error(&id, 0))?;
        let addr = {
            let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
            actors
                .entry(id.clone())
                .or_insert_with(|| {
                    let shared = self.shared.clone();
                    let id = id.clone();
                    Supervisor::start(move |_| SessionActor::new(id, shared, None, None))
                })
                .clone()
        };
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        addr.do_send(SetDelegate(delegate));
        Ok(Session::new(id, addr, self.shared.clone()))
    }

    /// The persisted sessions with work or events waiting that match, each returned
    /// once per launch: the application creates (with [`Sessions::session`]) the ones
    /// it handles, in one central place.
    pub fn take_waiting(&self, matching: &Matching) -> Vec<SessionId> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
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
    pub fn register_completion(&self, name: impl Into<String>, handler: impl CompletionHandler) {
        self.shared
            .register_completion(name.into(), Arc::new(handler));
        for addr in self
            .actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            addr.do_send(Poke);
        }
    }

    /// Sessions parked as faulted in this process, with the last failure.
    pub fn faulted(&self) -> Vec<(SessionId, String)> {
        self.shared.faulted()
    }

    /// Supervised restarts of all sessions in this process.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts()
    }

    /// The store (application tables, snapshots).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// How many session actors run in this process.
    pub fn running(&self) -> usize {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many session actors have started at least once (recovery is complete when
    /// this reaches the number recovered at open).
    pub fn actors_started(&self) -> u64 {
        self.shared.actors_started()
    }

    /// Whether every actor of this `Sessions` is alive (not stopped for good).
    pub fn all_connected(&self) -> bool {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .all(Addr::connected)
    }
}

/// Bridges the `log` records of actix (and other dependencies) into `tracing`.
/// Called by [`SessionsBuilder::open`]; harmless if a logger is already installed.
pub fn bridge_log() {
    let _ = tracing_log::LogTracer::init();
}
