//! `Start`: a pending task's next attempt begins.

use session_store::{Failure, FailureReason, Outcome, SessionRecord, TaskRecord, TaskState};

use super::{Action, Context, MachineError, Transition, step::Step};

/// The task's resource deadline, Unix milliseconds.
pub(super) fn deadline_ms(task: &TaskRecord, session: &SessionRecord) -> u64 {
    task.created_ms
        .saturating_add(session.config.deadline_s.saturating_mul(1000))
}

pub(super) fn deadline_failure(attempts: u32) -> Outcome {
    Outcome::Failed(Failure {
        reason: FailureReason::DeadlineExceeded,
        message: "the resource deadline passed before the task finished".into(),
        attempts,
    })
}

pub(super) fn start(
    session: SessionRecord,
    mut task: TaskRecord,
    context: &Context,
) -> Result<Transition, MachineError> {
    let TaskState::Pending {
        attempt,
        not_before_ms,
    } = task.state
    else {
        return Err(MachineError::NotPending { task: task.id });
    };
    let mut step = Step::new(session, context);
    if context.now_ms >= deadline_ms(&task, &step.session) {
        step.complete(task, deadline_failure(attempt));
        return Ok(step.finish());
    }
    if context.now_ms < not_before_ms {
        // Too early (a timer raced a clock step): schedule again rather than run early,
        // so a server's Retry-After is always honoured.
        step.actions.push(Action::Schedule {
            task: task.id,
            not_before_ms,
        });
        return Ok(step.finish());
    }
    let attempt = attempt + 1;
    task.state = TaskState::Running { attempt };
    step.session.tasks_running += 1;
    step.actions.push(Action::Transfer {
        task: task.id.clone(),
        attempt,
        deadline_ms: deadline_ms(&task, &step.session),
    });
    step.tasks.push(task);
    Ok(step.finish())
}
