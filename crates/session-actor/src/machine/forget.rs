//! `Forget`: the application drops a finished task before its retention ends. Only a
//! task whose outcome was delivered may go (its event must not point at a missing
//! record); afterwards its identifier is free, and enqueueing it again runs it again.

use session_store::{SessionRecord, TaskRecord, TaskState};

use super::{Context, MachineError, Transition, step::Step};

pub(super) fn forget(
    session: SessionRecord,
    task: TaskRecord,
    context: &Context,
) -> Result<Transition, MachineError> {
    match task.state {
        TaskState::Completed { event_seq, .. } if event_seq < session.delivered_seq => {
            let mut step = Step::new(session, context);
            step.forgotten.push(task.id);
            Ok(step.finish())
        }
        TaskState::Completed { .. } => Err(MachineError::NotForgettable {
            task: task.id,
            reason: "its event has not been delivered yet",
        }),
        TaskState::Pending { .. } | TaskState::Running { .. } => {
            Err(MachineError::NotForgettable {
                task: task.id,
                reason: "it has not finished (cancel it first)",
            })
        }
    }
}
