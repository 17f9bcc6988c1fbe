//! The live session actors, and the delegates attached to sessions.
//!
//! A session needs an actor only while it has work in flight, a timer armed, an event
//! waiting or someone waiting on it; an idle one costs its records on disk and nothing
//! here. An actor is started on demand (recovery, a handle's request) and retires itself
//! once it has been idle for a moment: it leaves the registry under the registry's lock,
//! so from then on every request reaches a new actor, and it refuses whatever still
//! reaches it (the handle asks again). There is never more than one working actor per
//! session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix::{Addr, Supervisor};
use actix_rt::ArbiterHandle;
use session_store::SessionId;

use crate::actor::SessionActor;
use crate::delegate::Delegate;
use crate::machine::Action;
use crate::shared::Shared;

/// One live actor.
#[derive(Clone)]
struct Entry {
    addr: Addr<SessionActor>,
    instance: u64,
}

/// The live actors by session, the attached delegates, and where actors start.
pub(crate) struct Registry {
    arbiter: ArbiterHandle,
    actors: Mutex<HashMap<SessionId, Entry>>,
    delegates: Mutex<HashMap<SessionId, Delegate>>,
    next_instance: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("actors", &self.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(arbiter: ArbiterHandle) -> Self {
        Registry {
            arbiter,
            actors: Mutex::new(HashMap::new()),
            delegates: Mutex::new(HashMap::new()),
            next_instance: AtomicU64::new(1),
        }
    }

    /// The session's actor, started if it has none (with the session's delegate, and
    /// `recovered` actions from the recovery at open, if any).
    pub(crate) fn actor(
        &self,
        shared: &Arc<Shared>,
        id: &SessionId,
        recovered: Option<Vec<Action>>,
    ) -> Addr<SessionActor> {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = actors.get(id) {
            return entry.addr.clone();
        }
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let delegate = self.delegate(id);
        let shared = Arc::clone(shared);
        let actor_id = id.clone();
        let addr = Supervisor::start_in_arbiter(&self.arbiter, move |_| {
            SessionActor::new(actor_id, shared, delegate, recovered, instance)
        });
        actors.insert(
            id.clone(),
            Entry {
                addr: addr.clone(),
                instance,
            },
        );
        addr
    }

    /// The live actor of a session, if it has one (not started for this).
    pub(crate) fn live(&self, id: &SessionId) -> Option<Addr<SessionActor>> {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|entry| entry.addr.clone())
    }

    /// The actor `instance` of `id` leaves the registry, if it is still the session's
    /// actor; `false` if another took its place meanwhile.
    pub(crate) fn retire(&self, id: &SessionId, instance: u64) -> bool {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        match actors.get(id) {
            Some(entry) if entry.instance == instance => {
                actors.remove(id);
                true
            }
            Some(_) | None => false,
        }
    }

    /// Takes a session's actor out for good (the session is being removed).
    pub(crate) fn remove(&self, id: &SessionId) -> Option<Addr<SessionActor>> {
        self.delegates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .map(|entry| entry.addr)
    }

    /// Attaches (or replaces) a session's delegate, for its actors from now on.
    pub(crate) fn set_delegate(&self, id: &SessionId, delegate: Delegate) {
        self.delegates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), delegate);
    }

    /// The session's delegate, if one is attached.
    pub(crate) fn delegate(&self, id: &SessionId) -> Option<Delegate> {
        self.delegates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Every live actor (to poke them all).
    pub(crate) fn all(&self) -> Vec<Addr<SessionActor>> {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|entry| entry.addr.clone())
            .collect()
    }

    /// How many actors are live.
    pub(crate) fn len(&self) -> usize {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Forgets every actor and delegate (the System is stopping).
    pub(crate) fn clear(&self) {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.delegates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
