//! What every session actor of one `Sessions` shares.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use session_http::Engine;
use session_store::{SessionId, Store};

use crate::clock::Clock;
use crate::delegate::{CompletionHandler, DeliveryOptions};
use crate::machine::Context as MachineContext;
use crate::units::Completions;

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) engine: Engine,
    pub(crate) root: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) restart_limit: u32,
    pub(crate) delivery: DeliveryOptions,
    /// The live session actors and the attached delegates.
    pub(crate) registry: crate::registry::Registry,
    units: UnitContext,
    faulted: Mutex<HashMap<SessionId, String>>,
    restarts: AtomicU64,
    actors_started: AtomicU64,
    /// Since when (Unix milliseconds) writes are refused for a full disk; 0 when not.
    storage_full_since_ms: AtomicU64,
}

impl Shared {
    /// Everything one `Sessions` shares with its actors, from the parts `open` made.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, in open; each part is distinct"
    )]
    pub(crate) fn new(
        store: Store,
        engine: Engine,
        root: PathBuf,
        clock: Arc<dyn Clock>,
        restart_limit: u32,
        delivery: DeliveryOptions,
        completions: Completions,
        arbiter: actix_rt::ArbiterHandle,
    ) -> Self {
        Shared {
            store,
            engine,
            root,
            units: UnitContext {
                clock: clock.clone(),
                completions: Arc::new(RwLock::new(completions)),
            },
            clock,
            restart_limit,
            delivery,
            registry: crate::registry::Registry::new(arbiter),
            faulted: Mutex::new(HashMap::new()),
            restarts: AtomicU64::new(0),
            actors_started: AtomicU64::new(0),
            storage_full_since_ms: AtomicU64::new(0),
        }
    }

    /// Where a session's downloads live: `<root>/downloads/<session>`. Session
    /// identifiers are validated to a path-safe alphabet, so this stays under the root.
    pub(crate) fn download_dir(&self, session: &SessionId) -> PathBuf {
        self.root.join("downloads").join(session.as_str())
    }

    /// A downloaded file, by the name its record keeps (records keep names, not paths,
    /// so the root directory may move between launches).
    pub(crate) fn download_file(&self, session: &SessionId, name: &str) -> PathBuf {
        self.download_dir(session).join(name)
    }

    /// Whether a completion handler of this name is registered in this process.
    pub(crate) fn has_completion(&self, name: &str) -> bool {
        self.units
            .completions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    pub(crate) fn machine_context(&self) -> MachineContext {
        self.units.machine_context()
    }

    /// What writer units may capture. Never the `Store` itself: a unit still queued
    /// when the application drops `Sessions` would otherwise keep the store (and its
    /// directory lock) alive on the writer thread after the drop returned.
    pub(crate) fn unit_context(&self) -> UnitContext {
        self.units.clone()
    }

    pub(crate) fn register_completion(&self, name: String, handler: Arc<dyn CompletionHandler>) {
        self.units
            .completions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, handler);
    }

    pub(crate) fn set_faulted(&self, session: &SessionId, reason: &str) {
        self.faulted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session.clone(), reason.to_owned());
    }

    pub(crate) fn clear_faulted(&self, session: &SessionId) {
        self.faulted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(session);
    }

    pub(crate) fn faulted(&self) -> Vec<(SessionId, String)> {
        let mut faulted: Vec<_> = self
            .faulted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, reason)| (id.clone(), reason.clone()))
            .collect();
        faulted.sort();
        faulted
    }

    pub(crate) fn note_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_actor_started(&self) {
        self.actors_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn actors_started(&self) -> u64 {
        self.actors_started.load(Ordering::Relaxed)
    }

    /// A write was refused because the store's disk is full (kept from the first).
    pub(crate) fn note_storage_full(&self) {
        let now_ms = self.clock.now_ms().max(1);
        let _ = self.storage_full_since_ms.compare_exchange(
            0,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A write committed: the disk has room again.
    pub(crate) fn note_storage_ok(&self) {
        self.storage_full_since_ms.store(0, Ordering::Relaxed);
    }

    pub(crate) fn storage_full_since_ms(&self) -> Option<u64> {
        match self.storage_full_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since),
        }
    }

    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// The time and the completion handlers, for writer units.
#[derive(Clone)]
pub(crate) struct UnitContext {
    clock: Arc<dyn Clock>,
    completions: Arc<RwLock<Completions>>,
}

impl UnitContext {
    pub(crate) fn machine_context(&self) -> MachineContext {
        MachineContext {
            now_ms: self.clock.now_ms(),
            jitter_permille: rand::random::<u16>() % 1000,
        }
    }

    /// A copy of the registered completion handlers (cheap: `Arc`s).
    pub(crate) fn completions(&self) -> Completions {
        self.completions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
