//! Recovery at open: every session with open tasks or undelivered events is restarted
//! in bulk from one snapshot, before any actor runs and so before any new event can be
//! delivered.

use std::collections::BTreeMap;

use session_store::{SessionId, SessionRecord, Store, TaskId, TaskRecord};

use crate::error::Error;
use crate::machine::{self, Action, Context, Input, Records, Transition};
use crate::units::write_transition;

/// Sessions written per recovery unit (one nested transaction each).
const RECOVERY_SESSIONS_PER_UNIT: usize = 1024;

/// A session recovered at open, with what its actor must do when it starts.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) id: SessionId,
    pub(crate) actions: Vec<Action>,
}

/// Restarts every session that has work or events waiting.
pub(crate) fn recover(store: &Store, context: &Context) -> Result<Vec<Recovered>, Error> {
    // One session at a time from one snapshot: only the actions (and the few changed
    // records) are kept, so a large store is recovered without holding all its tasks.
    let snapshot = store.snapshot()?;
    let mut recovered = Vec::new();
    let mut changed: Vec<(SessionRecord, Transition)> = Vec::new();
    for session in snapshot.sessions()? {
        if session.tasks_open == 0 && !session.has_undelivered_events() {
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
            machine::apply(records, Input::Restart, context).map_err(|source| Error::Refused {
                session: id.clone(),
                source,
            })?;
        if transition.is_noop(&session) {
            recovered.push(Recovered {
                id,
                actions: transition.actions,
            });
        } else {
            recovered.push(Recovered {
                id,
                actions: transition.actions.clone(),
            });
            changed.push((session, transition));
        }
    }
    drop(snapshot);
    for chunk in changed.chunks(RECOVERY_SESSIONS_PER_UNIT) {
        let chunk = chunk.to_vec();
        store.write(move |scope| -> session_store::Result<()> {
            for (before, transition) in &chunk {
                write_transition(scope, Some(before), transition)?;
            }
            Ok(())
        })?;
    }
    Ok(recovered)
}
