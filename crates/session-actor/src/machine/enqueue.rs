//! `Enqueue`: add a task, or reconnect to the known task with that identifier.

use session_store::{SessionRecord, TaskId, TaskKind, TaskRecord, TaskState};

use super::{Action, Context, MachineError, Transition, step::Step};

pub(super) fn enqueue(
    mut session: SessionRecord,
    existing: Option<TaskRecord>,
    task: TaskId,
    kind: TaskKind,
    request: Vec<u8>,
    context: &Context,
) -> Result<Transition, MachineError> {
    if let Some(existing) = existing {
        // Reconnect: the task is already known, whatever its state. A completed task is
        // never run again; a pending or running one goes on as it is.
        if existing.kind != kind || existing.request != request {
            return Err(MachineError::TaskConflict { task });
        }
        let mut step = Step::new(session, context);
        if existing.state.is_terminal() {
            step.actions.push(Action::TaskTerminal { task });
        }
        return Ok(step.finish());
    }
    if session.tasks_open == 0 {
        // The current generation has ended (or there has been none): open the next.
        session.generation += 1;
    }
    session.tasks_open += 1;
    let record = TaskRecord {
        session: session.id.clone(),
        id: task.clone(),
        generation: session.generation,
        kind,
        request,
        created_ms: context.now_ms,
        state: TaskState::Pending {
            attempt: 0,
            not_before_ms: context.now_ms,
        },
        wait: None,
    };
    let mut step = Step::new(session, context);
    step.actions.push(Action::Schedule {
        task,
        not_before_ms: context.now_ms,
    });
    step.tasks.push(record);
    Ok(step.finish())
}
