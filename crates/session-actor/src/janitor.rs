//! Keeping the store small: finished tasks are forgotten once their retention has passed
//! and their event was delivered, oldest first, in bounded writer units; and a session
//! with nothing left is removed on request in bounded units as well.
//!
//! Delivered events need no janitor: the unit that delivers an event deletes it.

use std::time::Duration;

use session_store::{SessionId, TaskState, WriteScope};

use crate::clock::Clock;

/// The most expiry entries one pruning unit handles (one nested transaction each).
pub(crate) const PRUNE_ENTRIES_PER_UNIT: usize = 512;
/// The most task records one removal unit deletes.
pub(crate) const REMOVE_TASKS_PER_UNIT: usize = 1024;
/// How long a task whose event is not yet delivered is looked at again after, when its
/// retention has passed.
const UNDELIVERED_RECHECK_MS: u64 = 60_000;

/// What a pruning unit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruned {
    /// Expiry entries handled.
    pub(crate) entries: usize,
    /// Task records deleted.
    pub(crate) tasks: usize,
}

/// One pruning unit: forgets up to [`PRUNE_ENTRIES_PER_UNIT`] finished tasks whose
/// retention ended by `now_ms`. An entry whose task was forgotten or replaced is dropped;
/// one whose task's event is undelivered, or whose session's retention grew, moves on.
pub(crate) fn prune_unit(scope: &mut WriteScope<'_>, now_ms: u64) -> session_store::Result<Pruned> {
    let mut pruned = Pruned::default();
    for (at_ms, session, task) in scope.expired_tasks(now_ms, PRUNE_ENTRIES_PER_UNIT)? {
        pruned.entries += 1;
        scope.delete_task_expiry(at_ms, &session, &task)?;
        let Some(record) = scope.task(&session, &task)? else {
            continue;
        };
        let TaskState::Completed {
            event_seq,
            finished_ms,
            ..
        } = record.state
        else {
            // Replaced by a new incarnation that is still open: it gets its own entry
            // when it ends.
            continue;
        };
        let Some(owner) = scope.session(&session)? else {
            scope.delete_task(&session, &task)?;
            pruned.tasks += 1;
            continue;
        };
        let due_ms = finished_ms.saturating_add(owner.config.retention_s.saturating_mul(1000));
        if due_ms > now_ms {
            scope.put_task_expiry(due_ms, &session, &task)?;
        } else if event_seq >= owner.delivered_seq {
            // Its outcome has not reached the application yet: the record stays.
            scope.put_task_expiry(now_ms + UNDELIVERED_RECHECK_MS, &session, &task)?;
        } else {
            scope.delete_task(&session, &task)?;
            pruned.tasks += 1;
        }
    }
    Ok(pruned)
}

/// How the janitor runs.
#[derive(Debug, Clone)]
pub(crate) struct JanitorOptions {
    /// The pause between two pruning rounds.
    pub(crate) interval: Duration,
}

/// The janitor's loop, spawned on the actor runtime: a round of pruning units (until one
/// handles fewer than its limit) every `interval`.
pub(crate) async fn run(
    store: session_store::Store,
    clock: std::sync::Arc<dyn Clock>,
    options: JanitorOptions,
) {
    loop {
        tokio::time::sleep(options.interval).await;
        loop {
            let now_ms = clock.now_ms();
            let unit = store.write_async(move |scope| prune_unit(scope, now_ms));
            match unit.await {
                Ok(pruned) => {
                    if pruned.tasks > 0 {
                        tracing::debug!(tasks = pruned.tasks, "pruned finished tasks");
                    }
                    if pruned.entries < PRUNE_ENTRIES_PER_UNIT {
                        break;
                    }
                }
                Err(error) if error.kind() == session_store::ErrorKind::Closed => return,
                Err(error) => {
                    tracing::warn!(%error, "pruning finished tasks failed; trying next round");
                    break;
                }
            }
        }
    }
}

/// Why a session cannot be removed now, if it cannot.
pub(crate) fn removal_refused(record: &session_store::SessionRecord) -> Option<&'static str> {
    if record.tasks_open > 0 {
        Some("it has tasks that are not finished")
    } else if record.has_undelivered_events() {
        Some("it has events not yet delivered")
    } else if record.dead_letters > 0 {
        Some("it has dead-lettered events")
    } else {
        None
    }
}

/// One removal unit: deletes up to [`REMOVE_TASKS_PER_UNIT`] of the session's task
/// records, and the session record with the last of them. `Ok(true)` once it is gone.
pub(crate) fn remove_unit(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
) -> Result<bool, crate::error::Error> {
    let Some(record) = scope.session(session)? else {
        return Ok(true);
    };
    if let Some(reason) = removal_refused(&record) {
        return Err(crate::error::Error::SessionBusy {
            session: session.clone(),
            reason,
        });
    }
    let tasks = scope.tasks_from(session, None, REMOVE_TASKS_PER_UNIT)?;
    let last_piece = tasks.len() < REMOVE_TASKS_PER_UNIT;
    for task in tasks {
        scope.delete_task(session, &task.id)?;
    }
    if last_piece {
        scope.delete_session(session)?;
        if record.generation > 0 {
            // A session created again under this identifier numbers on from here, so no
            // delivery key is given twice.
            scope.put_removed_session(
                session,
                &session_store::RemovedSession {
                    generation: record.generation,
                    next_event_seq: record.next_event_seq,
                },
            )?;
        }
    }
    Ok(last_piece)
}
