//! `Restart`: transfers in flight were lost with the process (or the actor); every open
//! task is scheduled again (its deadline is armed when its transfer starts), and
//! waiting events are delivered.

use std::collections::BTreeMap;

use session_store::{Outcome, SessionRecord, TaskId, TaskRecord, TaskState};

use super::{Action, Context, MachineError, Transition, step::Step};

pub(super) fn restart(
    session: SessionRecord,
    tasks: BTreeMap<TaskId, TaskRecord>,
    context: &Context,
) -> Result<Transition, MachineError> {
    let open = tasks.values().filter(|t| !t.state.is_terminal()).count() as u64;
    let running = tasks
        .values()
        .filter(|t| matches!(t.state, TaskState::Running { .. }))
        .count() as u64;
    if open != session.tasks_open || running != session.tasks_running {
        return Err(MachineError::InvalidRecord(format!(
            "session {} counts {} open and {} running tasks, its records show {open} and {running}",
            session.id, session.tasks_open, session.tasks_running
        )));
    }
    let mut step = Step::new(session, context);
    step.session.tasks_running = 0;
    for (id, mut task) in tasks {
        let not_before_ms = match task.state {
            TaskState::Completed {
                outcome: Outcome::Success(ref response),
                event_seq,
                ..
            } => {
                // A crash between a delivery's commit and the file's removal leaves the
                // file behind; its delivery committed, so it goes now.
                if event_seq < step.session.delivered_seq
                    && let Some(path) = &response.file
                {
                    step.actions.push(Action::RemoveFile { file: path.clone() });
                }
                continue;
            }
            TaskState::Completed { .. } => continue,
            TaskState::Pending { not_before_ms, .. } => not_before_ms,
            TaskState::Running { attempt } => {
                // The attempt was cut off by the restart, not by the server: it does not
                // count against attempts_max, or a crash loop would exhaust a good task.
                task.state = TaskState::Pending {
                    attempt: attempt - 1,
                    not_before_ms: context.now_ms,
                };
                step.tasks.push(task.clone());
                context.now_ms
            }
        };
        step.actions.push(Action::Schedule {
            task: id,
            not_before_ms,
        });
    }
    match &step.session.delivery_failure {
        // A delivery that kept failing is tried again when its backoff says, not at once
        // (a restart must not turn the backoff into a tight loop).
        Some(failure) => step.actions.push(Action::ScheduleDelivery {
            at_ms: failure.next_attempt_ms,
        }),
        None if step.session.has_undelivered_events() => {
            step.actions.push(Action::DeliverEvents);
        }
        None => {}
    }
    Ok(step.finish())
}
