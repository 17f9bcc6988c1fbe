//! Recovery at open: every session with open tasks or undelivered events is restarted
//! in bulk, before any actor runs and so before any new event can be delivered.
//!
//! Only the active sessions are read (the store's index lists the sessions with open
//! tasks or undelivered events), so a store of a million idle sessions costs nothing
//! here; they are read in pieces, each through its own short snapshot (snapshots have a
//! maximum age), and only the actions and the few changed records of each piece are
//! kept.

use std::collections::BTreeMap;

use session_store::{ErrorKind, SessionId, SessionRecord, Store, TaskId, TaskRecord};

use crate::error::Error;
use crate::machine::{self, Action, Context, Input, Records, Transition};
use crate::units::write_transition;

/// Sessions read per snapshot and written per recovery unit.
const RECOVERY_SESSIONS_PER_PIECE: usize = 1024;

/// A session recovered at open, with what its actor must do when it starts.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) id: SessionId,
    /// The restart's actions, once its changes are committed; `None` when they could
    /// not be (a full disk): the actor then runs its own restart, and retries it.
    pub(crate) actions: Option<Vec<Action>>,
}

/// Restarts every session that has work or events waiting.
pub(crate) fn recover(
    store: &Store,
    context: &Context,
    storage_full: &dyn Fn(),
) -> Result<Vec<Recovered>, Error> {
    let mut recovered = Vec::new();
    let mut after: Option<SessionId> = None;
    loop {
        let snapshot = store.snapshot()?;
        let ids = snapshot.active_sessions_from(after.as_ref(), RECOVERY_SESSIONS_PER_PIECE)?;
        let Some(last) = ids.last() else {
            break;
        };
        after = Some(last.clone());
        let mut changed: Vec<(SessionRecord, Transition)> = Vec::new();
        let mut piece = Vec::new();
        for id in ids {
            let Some(session) = snapshot.session(&id)? else {
                continue;
            };
            if !session.is_active() {
                continue;
            }
            let id = session.id.clone();
            let tasks: BTreeMap<TaskId, TaskRecord> = snapshot
                .tasks(&id)?
                .into_iter()
                .map(|task| (task.id.clone(), task))
                .collect();
            let records = Records {
                session: Some(session.clone()),
                tasks,
            };
            let transition =
                machine::apply(records, Input::Restart, context).map_err(|source| {
                    Error::Refused {
                        session: id.clone(),
                        source,
                    }
                })?;
            piece.push(Recovered {
                id,
                actions: Some(transition.actions.clone()),
            });
            if !transition.is_noop(&session) {
                changed.push((session, transition));
            }
        }
        drop(snapshot);
        // The piece's scattered reads mapped their neighbours' pages too (the kernel maps
        // around each read): let them go, so the process does not keep most of a large
        // store's file resident for sessions that have no actor.
        if let Err(error) = store.release_mapped_pages() {
            tracing::debug!(%error, "could not release the store's mapped pages");
        }
        if !changed.is_empty() {
            let written = store.write(move |scope| -> session_store::Result<()> {
                for (before, transition) in &changed {
                    write_transition(scope, Some(before), transition)?;
                }
                Ok(())
            });
            match written {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::Full => {
                    // The store's disk is full: open anyway; each actor restarts its
                    // session itself, and tries again until there is room.
                    tracing::warn!(%error, "recovery could not commit: the disk is full");
                    storage_full();
                    for session in &mut piece {
                        session.actions = None;
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        recovered.extend(piece);
    }
    Ok(recovered)
}
