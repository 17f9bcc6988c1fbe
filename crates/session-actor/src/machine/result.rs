//! `Result` and `Expire`: an attempt ended, or the resource deadline passed.

use session_store::{Failure, FailureReason, Outcome, SessionRecord, TaskRecord, TaskState};

use super::{
    Action, Context, MachineError, TransferResult, Transition,
    backoff::retry_delay_ms,
    start::{deadline_failure, deadline_ms},
    step::Step,
};

pub(super) fn result(
    session: SessionRecord,
    mut task: TaskRecord,
    attempt: u32,
    result: TransferResult,
    context: &Context,
) -> Result<Transition, MachineError> {
    match task.state {
        TaskState::Running { attempt: running } if running == attempt => {}
        TaskState::Pending { .. } | TaskState::Running { .. } | TaskState::Completed { .. } => {
            return Err(MachineError::StaleResult {
                task: task.id,
                attempt,
            });
        }
    }
    let mut step = Step::new(session, context);
    match result {
        TransferResult::Success(response) => step.complete(task, Outcome::Success(response)),
        TransferResult::Rejected(response) => step.complete(task, Outcome::Rejected(response)),
        TransferResult::Failed(failure) => step.complete(
            task,
            Outcome::Failed(Failure {
                attempts: attempt,
                ..failure
            }),
        ),
        TransferResult::Retry {
            retry_after_ms,
            message,
        } => {
            let config = &step.session.config;
            let backoff_ms = context.now_ms.saturating_add(retry_delay_ms(
                config,
                attempt,
                context.jitter_permille,
            ));
            // The later of the server's Retry-After and our own backoff.
            let not_before_ms = backoff_ms.max(retry_after_ms.unwrap_or(0));
            if attempt >= config.attempts_max {
                let outcome = Outcome::Failed(Failure {
                    reason: FailureReason::RetryExhausted,
                    message: format!("{attempt} attempts; the last: {message}"),
                    attempts: attempt,
                });
                step.complete(task, outcome);
            } else if not_before_ms >= deadline_ms(&task, &step.session) {
                step.complete(task, deadline_failure(attempt));
            } else {
                step.session.tasks_running -= 1;
                task.state = TaskState::Pending {
                    attempt,
                    not_before_ms,
                };
                step.actions.push(Action::Schedule {
                    task: task.id.clone(),
                    not_before_ms,
                });
                step.tasks.push(task);
            }
        }
    }
    Ok(step.finish())
}

pub(super) fn expire(
    session: SessionRecord,
    task: TaskRecord,
    context: &Context,
) -> Result<Transition, MachineError> {
    let mut step = Step::new(session, context);
    let deadline = deadline_ms(&task, &step.session);
    let attempts = match task.state {
        TaskState::Completed { .. } => return Ok(step.finish()),
        TaskState::Pending { attempt, .. } | TaskState::Running { attempt } => attempt,
    };
    if context.now_ms < deadline {
        // The timer fired early (or the deadline moved with the configuration).
        step.actions.push(Action::ArmDeadline {
            task: task.id,
            at_ms: deadline,
        });
        return Ok(step.finish());
    }
    if matches!(task.state, TaskState::Running { .. }) {
        step.actions.push(Action::AbortTransfer {
            task: task.id.clone(),
        });
    }
    step.complete(task, deadline_failure(attempts));
    Ok(step.finish())
}
