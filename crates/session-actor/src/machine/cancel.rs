//! `Cancel` and `Invalidate`: the application stops tasks.

use std::collections::BTreeMap;

use session_store::{Outcome, SessionRecord, TaskId, TaskRecord, TaskState};

use super::{Action, Context, MachineError, Transition, step::Step};

pub(super) fn cancel(
    session: SessionRecord,
    task: TaskRecord,
    context: &Context,
) -> Result<Transition, MachineError> {
    let mut step = Step::new(session, context);
    cancel_one(&mut step, task);
    Ok(step.finish())
}

pub(super) fn invalidate(
    session: SessionRecord,
    tasks: BTreeMap<TaskId, TaskRecord>,
    context: &Context,
) -> Result<Transition, MachineError> {
    let open: Vec<TaskRecord> = tasks
        .into_values()
        .filter(|task| !task.state.is_terminal())
        .collect();
    if open.len() as u64 != session.tasks_open {
        return Err(MachineError::InvalidRecord(format!(
            "invalidate was given {} open tasks, the session counts {}",
            open.len(),
            session.tasks_open
        )));
    }
    let mut step = Step::new(session, context);
    for task in open {
        cancel_one(&mut step, task);
    }
    Ok(step.finish())
}

fn cancel_one(step: &mut Step, task: TaskRecord) {
    match task.state {
        // Cancelling a finished task changes nothing; its waiters learn its outcome.
        TaskState::Completed { .. } => step.actions.push(Action::TaskTerminal { task: task.id }),
        TaskState::Running { .. } => {
            step.actions.push(Action::AbortTransfer {
                task: task.id.clone(),
            });
            step.complete(task, Outcome::Cancelled);
        }
        TaskState::Pending { .. } => step.complete(task, Outcome::Cancelled),
    }
}
