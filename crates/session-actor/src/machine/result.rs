//! `Result` and `Expire`: an attempt ended (in success, a refusal, a failure, a retry
//! that spends the attempt, or a wait that gives it back), or the resource deadline
//! passed.

use session_store::{
    FAILURE_MESSAGE_BYTES_MAX, Failure, FailureReason, Outcome, SessionRecord, TaskRecord,
    TaskState, TaskWait, WaitReason,
};

use super::{
    Action, Context, MachineError, TransferResult, Transition,
    backoff::{retry_delay_ms, wait_delay_ms},
    start::{deadline_failure, deadline_ms},
    step::Step,
};

pub(super) fn result(
    session: SessionRecord,
    task: TaskRecord,
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
        } => retry(&mut step, task, attempt, retry_after_ms, message, context),
        TransferResult::Wait {
            reason,
            message,
            retry_after_ms,
        } => {
            let waits = match reason {
                WaitReason::Connectivity => step.session.config.wait_for_connectivity,
                WaitReason::Storage => true,
            };
            if waits {
                wait(&mut step, task, attempt, reason, retry_after_ms, message);
            } else {
                retry(&mut step, task, attempt, retry_after_ms, message, context);
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

/// A transient failure that spent an attempt: try again after the later of the server's
/// Retry-After and the backoff, unless the attempts or the deadline are used up.
fn retry(
    step: &mut Step,
    mut task: TaskRecord,
    attempt: u32,
    retry_after_ms: Option<u64>,
    message: String,
    context: &Context,
) {
    let config = &step.session.config;
    let backoff_ms =
        context
            .now_ms
            .saturating_add(retry_delay_ms(config, attempt, context.jitter_permille));
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
        task.wait = None;
        step.actions.push(Action::Schedule {
            task: task.id.clone(),
            not_before_ms,
        });
        step.tasks.push(task);
    }
}

/// The attempt could not start for a reason outside the server: it is given back (the
/// task keeps its attempts) and the task waits, with capped backoff, until its deadline.
fn wait(
    step: &mut Step,
    mut task: TaskRecord,
    attempt: u32,
    reason: WaitReason,
    retry_after_ms: Option<u64>,
    message: String,
) {
    let now_ms = step.now_ms();
    let (tries, since_ms) = match &task.wait {
        Some(wait) if wait.reason == reason => (wait.tries.saturating_add(1), wait.since_ms),
        Some(_) | None => (1, now_ms),
    };
    let jitter = step.jitter_permille();
    let delay_ms = wait_delay_ms(&step.session.config, tries, jitter);
    let not_before_ms = now_ms
        .saturating_add(delay_ms)
        .max(retry_after_ms.unwrap_or(0));
    let given_back = attempt.saturating_sub(1);
    if not_before_ms >= deadline_ms(&task, &step.session) {
        step.complete(task, deadline_failure(given_back));
        return;
    }
    step.session.tasks_running -= 1;
    task.state = TaskState::Pending {
        attempt: given_back,
        not_before_ms,
    };
    task.wait = Some(TaskWait {
        reason,
        since_ms,
        tries,
        message: bounded(message),
    });
    step.actions.push(Action::Schedule {
        task: task.id.clone(),
        not_before_ms,
    });
    step.tasks.push(task);
}

fn bounded(mut message: String) -> String {
    if message.len() > FAILURE_MESSAGE_BYTES_MAX {
        let mut end = FAILURE_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}
