//! `Enqueue`: add a task, reconnect to the known task with that identifier, or replace it.
//!
//! A known identifier with the same description reconnects, whatever the task's state
//! (a completed task is never run again while it is kept). A different description is a
//! conflict error, unless the caller asked to replace: then the old task is cancelled if
//! it is still open (its `Cancelled` event is delivered like any other), and the new
//! description starts under the same identifier with the next incarnation. A cancelled
//! task may be enqueued again under replace, even with the same description.

use session_store::{Outcome, SessionRecord, TaskId, TaskKind, TaskRecord, TaskState};

use super::{Action, Context, MachineError, Transition, step::Step};

/// What the application asks for.
pub(super) struct NewTask {
    pub(super) task: TaskId,
    pub(super) kind: TaskKind,
    pub(super) request: Vec<u8>,
    pub(super) replace: bool,
}

pub(super) fn enqueue(
    session: SessionRecord,
    existing: Option<TaskRecord>,
    new: NewTask,
    context: &Context,
) -> Result<Transition, MachineError> {
    let mut step = Step::new(session, context);
    let incarnation = match existing {
        None => 0,
        Some(existing) => {
            let same = existing.kind == new.kind && existing.request == new.request;
            let cancelled = matches!(
                existing.state,
                TaskState::Completed {
                    outcome: Outcome::Cancelled,
                    ..
                }
            );
            if same && !(new.replace && cancelled) {
                // Reconnect: the task goes on as it is; waiters of a finished one learn
                // its outcome.
                if existing.state.is_terminal() {
                    step.actions.push(Action::TaskTerminal { task: new.task });
                }
                return Ok(step.finish());
            }
            if !new.replace {
                return Err(MachineError::TaskConflict {
                    task: new.task,
                    fields: Vec::new(),
                });
            }
            let incarnation = existing.incarnation.saturating_add(1);
            retire(&mut step, existing);
            incarnation
        }
    };
    if step.session.tasks_open == 0 {
        // The current generation has ended (or there has been none): open the next.
        step.session.generation += 1;
    }
    step.session.tasks_open += 1;
    let now_ms = step.now_ms();
    let record = TaskRecord {
        session: step.session.id.clone(),
        id: new.task.clone(),
        generation: step.session.generation,
        kind: new.kind,
        request: new.request,
        created_ms: now_ms,
        state: TaskState::Pending {
            attempt: 0,
            not_before_ms: now_ms,
        },
        wait: None,
        incarnation,
    };
    // A replaced task's record is overwritten: only the new one is written, and the old
    // one's retention no longer applies.
    step.tasks.retain(|task| task.id != new.task);
    step.expiries.retain(|expiry| expiry.task != new.task);
    step.actions.push(Action::Schedule {
        task: new.task,
        not_before_ms: now_ms,
    });
    step.tasks.push(record);
    Ok(step.finish())
}

/// Ends the task being replaced: an open one is cancelled (its event is appended and its
/// transfer stopped); a finished one keeps its event and its file, under its own
/// incarnation's name, until that event is delivered.
fn retire(step: &mut Step, existing: TaskRecord) {
    match existing.state {
        TaskState::Completed { .. } => {}
        TaskState::Running { .. } => {
            step.actions.push(Action::AbortTransfer {
                task: existing.id.clone(),
            });
            step.complete(existing, Outcome::Cancelled);
        }
        TaskState::Pending { .. } => step.complete(existing, Outcome::Cancelled),
    }
}
