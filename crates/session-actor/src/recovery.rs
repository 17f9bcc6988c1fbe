//! Recovery at open: every session with open tasks or undelivered events is restarted
//! in bulk from one snapshot, before any actor runs and so before any new event can be
//! delivered.

use std::collections::{BTreeMap, HashMap};

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
    let snapshot = store.snapshot()?;
    let sessions: Vec<SessionRecord> = snapshot
        .sessions()?
        .into_iter()
        .filter(|s| s.tasks_open > 0 || s.has_undelivered_events())
        .collect();
    let mut tasks: HashMap<SessionId, BTreeMap<TaskId, TaskRecord>> = sessions
        .iter()
        .map(|s| (s.id.clone(), BTreeMap::new()))
        .collect();
    snapshot.for_each_task(|task| {
        if let Some(map) = tasks.get_mut(&task.session) {
            map.insert(task.id.clone(), task);
        }
        Ok(())
    })?;
    drop(snapshot);

    let mut recovered = Vec::with_capacity(sessions.len());
    let mut changed: Vec<(SessionRecord, Transition)> = Vec::new();
    for session in sessions {
        let id = session.id.clone();
        let records = Records {
            session: Some(session.clone()),
            tasks: tasks.remove(&id).unwrap_or_default(),
        };
        let transition =
            machine::apply(records, Input::Restart, context).map_err(|source| Error::Refused {
                session: id.clone(),
                source,
            })?;
        recovered.push(Recovered {
            id,
            actions: transition.actions.clone(),
        });
        if !transition.is_noop(&session) {
            changed.push((session, transition));
        }
    }
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
