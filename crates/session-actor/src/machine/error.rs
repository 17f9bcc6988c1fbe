//! Why a transition was refused.

use session_store::TaskId;

/// An input that is not valid in the records' state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The session has not been opened.
    #[error("the session does not exist")]
    NoSession,
    /// The input names a task the session does not have.
    #[error("unknown task {task}")]
    UnknownTask {
        /// The task.
        task: TaskId,
    },
    /// A known task identifier was issued with a different description.
    #[error("task {task} exists with a different description{}", differing(fields))]
    TaskConflict {
        /// The task.
        task: TaskId,
        /// The fields of the description that differ (empty when unknown).
        fields: Vec<&'static str>,
    },
    /// The task cannot be forgotten now.
    #[error("task {task} cannot be forgotten: {reason}")]
    NotForgettable {
        /// The task.
        task: TaskId,
        /// Why.
        reason: &'static str,
    },
    /// A failed delivery reported for an event that was delivered meanwhile.
    #[error("the failed delivery of event {seq} is stale")]
    StaleDelivery {
        /// The event.
        seq: u64,
    },
    /// The generation already stores the most completions it may.
    #[error(
        "generation {generation} already stores {} completions, the most it may",
        session_store::COMPLETIONS_PER_GENERATION_MAX
    )]
    TooManyCompletions {
        /// The generation.
        generation: u64,
    },
    /// A value given by the application is unusable; the error names its field.
    #[error("invalid {0}")]
    InvalidField(#[source] session_store::InvalidField),
    /// A completion for a generation that has not been opened.
    #[error("generation {generation} has not been opened (current {current})")]
    UnknownGeneration {
        /// The generation asked for.
        generation: u64,
        /// The session's current generation.
        current: u64,
    },
    /// A completion for a generation that ended without one; it can no longer run.
    #[error("generation {generation} ended without a completion; it is too late to store one")]
    GenerationEnded {
        /// The generation.
        generation: u64,
    },
    /// `Start` for a task that is not pending.
    #[error("task {task} is not pending")]
    NotPending {
        /// The task.
        task: TaskId,
    },
    /// A transfer result for an attempt that is no longer in flight.
    #[error("stale result for task {task} attempt {attempt}")]
    StaleResult {
        /// The task.
        task: TaskId,
        /// The attempt the result was for.
        attempt: u32,
    },
    /// A delivery that is not the next event in sequence.
    #[error("delivery of event {got} out of order: the next is {expected}")]
    OutOfOrderDelivery {
        /// The next undelivered sequence number.
        expected: u64,
        /// The sequence number offered.
        got: u64,
    },
    /// The records contradict each other.
    #[error("invariant violation: {0}")]
    InvalidRecord(String),
}

fn differing(fields: &[&'static str]) -> String {
    if fields.is_empty() {
        String::new()
    } else {
        format!(" ({} differ)", fields.join(", "))
    }
}
