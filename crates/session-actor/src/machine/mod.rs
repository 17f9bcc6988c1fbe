//! The pure session state machine: session states per generation (queued, running,
//! awaiting events, finished) and task states (pending, running, completed).
//!
//! [`apply`] takes the records an input concerns and returns the new records, the events
//! to append and the actions to perform after the commit. It does no I/O and reads no
//! clock (the time and the jitter come in a [`Context`]), so it is property-tested on its
//! own; the actor runs it inside a writer unit so that a state change and the events it
//! produces commit in one transaction. Invalid transitions are [`MachineError`]s.
//!
//! One file per transition: `open`, `enqueue`, `start`, `result` (transfer results,
//! waits and deadlines), `cancel`, `deliver`, `failure` (failed deliveries, dead
//! letters), `forget`, `completion`, `restart`; `step` holds the bookkeeping they share
//! and `backoff` the delays.

mod backoff;
mod cancel;
mod completion;
mod deliver;
mod enqueue;
mod error;
mod failure;
mod forget;
mod open;
mod restart;
mod result;
mod start;
mod step;

use std::collections::BTreeMap;

use session_store::{
    EventRecord, Failure, ResponseSummary, SessionConfig, SessionId, SessionRecord,
    StoredCompletion, TaskId, TaskKind, TaskRecord, WaitReason,
};

pub use backoff::{delivery_delay_ms, retry_delay_ms, wait_delay_ms};
pub use error::MachineError;

/// What the machine needs to know besides the records: the time and a random number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The current time, Unix milliseconds.
    pub now_ms: u64,
    /// A uniformly random number in `0..1000`, used to jitter retry delays.
    pub jitter_permille: u16,
}

/// The records an input concerns: the session (absent before it is first opened) and
/// the tasks the input names. `Restart` and `Invalidate` need every task of the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// The session record, if it exists.
    pub session: Option<SessionRecord>,
    /// The relevant task records, by task identifier.
    pub tasks: BTreeMap<TaskId, TaskRecord>,
}

/// What one attempt of a transfer came to, as the machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferResult {
    /// The server accepted it and the transfer verified.
    Success(ResponseSummary),
    /// The server refused it (a 4xx other than 408 and 429).
    Rejected(ResponseSummary),
    /// Transient: try again, not before `retry_after_ms` if the server said so.
    Retry {
        /// The server's Retry-After as an absolute time, Unix milliseconds.
        retry_after_ms: Option<u64>,
        /// What happened, for a person.
        message: String,
    },
    /// Permanent failure.
    Failed(Failure),
    /// The attempt could not start for a reason outside the server: it was unreachable
    /// (refused, DNS, unreachable, connect timeout) or the download would not fit in the
    /// free space. The task waits, with capped backoff, until its resource deadline,
    /// without spending an attempt (for connectivity only while the session's
    /// `wait_for_connectivity` is on; otherwise it is an ordinary `Retry`).
    Wait {
        /// What the task waits for.
        reason: WaitReason,
        /// What happened, for a person.
        message: String,
        /// Not before this time, Unix milliseconds, if the cause said so.
        retry_after_ms: Option<u64>,
    },
}

/// An event that left the outbox for the session's dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event, as it was in the outbox.
    pub event: EventRecord,
    /// Failed delivery attempts.
    pub attempts: u32,
    /// What the last one said.
    pub last_error: String,
    /// When it was moved, Unix milliseconds.
    pub moved_ms: u64,
}

/// A finished task to forget once its retention ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExpiry {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The task.
    pub task: TaskId,
}

/// An input to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Create the session if it does not exist, or update its configuration.
    Open {
        /// The session's identifier.
        id: SessionId,
        /// The configuration to persist.
        config: SessionConfig,
    },
    /// Add a task; re-issuing a known identifier with the same request reconnects.
    Enqueue {
        /// The application's task identifier.
        task: TaskId,
        /// Download, upload or data.
        kind: TaskKind,
        /// The serialized transfer description.
        request: Vec<u8>,
        /// What a known identifier with a different description (or a cancelled one)
        /// means: `false` is a conflict error, `true` replaces the old task (cancelled if
        /// still open) with the new description.
        replace: bool,
    },
    /// Start a pending task's next attempt.
    Start {
        /// The task.
        task: TaskId,
    },
    /// A transfer attempt ended.
    Result {
        /// The task.
        task: TaskId,
        /// The attempt that ended; a result for any other attempt is stale.
        attempt: u32,
        /// What it came to.
        result: TransferResult,
    },
    /// The task's resource deadline timer fired.
    Expire {
        /// The task.
        task: TaskId,
    },
    /// The application cancelled a task.
    Cancel {
        /// The task.
        task: TaskId,
    },
    /// Cancel every task that is not terminal (the session is being invalidated).
    Invalidate,
    /// The next event in sequence was delivered (its effects commit in the same unit).
    Deliver {
        /// The event, as read from the outbox.
        event: EventRecord,
    },
    /// Delivering the next event failed (the delegate or completion handler returned an
    /// error, panicked or timed out): record it and when to try again, or move it to the
    /// dead-letter list under that policy.
    DeliveryFailed {
        /// The event, as read from the outbox.
        event: EventRecord,
        /// What the failure said.
        error: String,
    },
    /// The application forgets a finished task whose event was delivered.
    Forget {
        /// The task.
        task: TaskId,
    },
    /// Store the completion handler for a generation.
    SetCompletion {
        /// The generation it is for (a task handle reports its generation).
        generation: u64,
        /// The handler's name and payload.
        completion: StoredCompletion,
    },
    /// Store a completion with no task of its own while no generation runs: a
    /// generation opens and ends at once ("did finish events", then the completion).
    EmptyGeneration {
        /// The handler's name and payload.
        completion: StoredCompletion,
    },
    /// The process (or the actor) restarted: transfers in flight were lost.
    Restart,
}

impl Input {
    /// The input's name, for logs (never its contents: requests may carry credentials).
    pub fn name(&self) -> &'static str {
        match self {
            Input::Open { .. } => "open",
            Input::Enqueue { .. } => "enqueue",
            Input::Start { .. } => "start",
            Input::Result { .. } => "result",
            Input::Expire { .. } => "expire",
            Input::Cancel { .. } => "cancel",
            Input::Invalidate => "invalidate",
            Input::Deliver { .. } => "deliver",
            Input::DeliveryFailed { .. } => "delivery-failed",
            Input::Forget { .. } => "forget",
            Input::SetCompletion { .. } => "set-completion",
            Input::EmptyGeneration { .. } => "empty-generation",
            Input::Restart => "restart",
        }
    }
}

/// The result of a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The session record to write.
    pub session: SessionRecord,
    /// The task records that changed, to write.
    pub tasks: Vec<TaskRecord>,
    /// The events to append, in sequence order.
    pub events: Vec<EventRecord>,
    /// What to do once the unit has committed.
    pub actions: Vec<Action>,
    /// Events that leave the outbox for the dead-letter list, in this unit.
    pub dead_letters: Vec<DeadLetter>,
    /// Finished tasks, with when to forget them.
    pub expiries: Vec<TaskExpiry>,
    /// Task records to delete (the application forgot them).
    pub forgotten: Vec<TaskId>,
}

impl Transition {
    /// Whether the transition changes nothing (a reconnect or a repeated request).
    pub fn is_noop(&self, before: &SessionRecord) -> bool {
        self.tasks.is_empty()
            && self.events.is_empty()
            && self.dead_letters.is_empty()
            && self.expiries.is_empty()
            && self.forgotten.is_empty()
            && &self.session == before
    }
}

/// Work for the actor after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the task when its time comes (now, or arm a timer for `not_before_ms`).
    Schedule {
        /// The task.
        task: TaskId,
        /// Not before this time, Unix milliseconds.
        not_before_ms: u64,
    },
    /// The task is now running this attempt: perform the transfer, and stop it at the
    /// resource deadline.
    Transfer {
        /// The task.
        task: TaskId,
        /// The attempt number.
        attempt: u32,
        /// The task's resource deadline, Unix milliseconds.
        deadline_ms: u64,
    },
    /// Stop the task's transfer in flight, if any (it was cancelled or expired).
    AbortTransfer {
        /// The task.
        task: TaskId,
    },
    /// Arm the running task's resource deadline timer again (it fired early).
    ArmDeadline {
        /// The task.
        task: TaskId,
        /// The deadline, Unix milliseconds.
        at_ms: u64,
    },
    /// The task reached its outcome: wake whoever waits on it in this process.
    TaskTerminal {
        /// The task.
        task: TaskId,
    },
    /// Events wait in the outbox: deliver the next one.
    DeliverEvents,
    /// Remove the partial file (and its validator) of a download that ended without
    /// success.
    DiscardPartial {
        /// The task.
        task: TaskId,
        /// Its incarnation (part of the file's name).
        incarnation: u32,
    },
    /// A delivery failed: try the next one again at this time (not before).
    ScheduleDelivery {
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// Remove a downloaded file whose delivery has committed.
    RemoveFile {
        /// The file's name in the session's download directory.
        file: String,
    },
}

/// Applies one input to the records.
///
/// # Errors
/// A [`MachineError`] when the input is not valid in the records' state; nothing is
/// then to be written.
pub fn apply(
    records: Records,
    input: Input,
    context: &Context,
) -> Result<Transition, MachineError> {
    let Records { session, tasks } = records;
    if let Some(session) = &session {
        session.validate().map_err(MachineError::InvalidRecord)?;
    }
    match input {
        Input::Open { id, config } => open::open(session, id, config, context),
        Input::Enqueue {
            task,
            kind,
            request,
            replace,
        } => {
            let existing = tasks.get(&task).cloned();
            let new = enqueue::NewTask {
                task,
                kind,
                request,
                replace,
            };
            enqueue::enqueue(require(session)?, existing, new, context)
        }
        Input::Start { task } => {
            let record = require_task(&tasks, &task)?;
            start::start(require(session)?, record, context)
        }
        Input::Result {
            task,
            attempt,
            result,
        } => {
            let record = require_task(&tasks, &task)?;
            result::result(require(session)?, record, attempt, result, context)
        }
        Input::Expire { task } => {
            let record = require_task(&tasks, &task)?;
            result::expire(require(session)?, record, context)
        }
        Input::Cancel { task } => {
            let record = require_task(&tasks, &task)?;
            cancel::cancel(require(session)?, record, context)
        }
        Input::Invalidate => cancel::invalidate(require(session)?, tasks, context),
        Input::Deliver { event } => deliver::deliver(require(session)?, event, context),
        Input::DeliveryFailed { event, error } => {
            failure::delivery_failed(require(session)?, event, error, context)
        }
        Input::Forget { task } => {
            let record = require_task(&tasks, &task)?;
            forget::forget(require(session)?, record, context)
        }
        Input::SetCompletion {
            generation,
            completion,
        } => completion::set_completion(require(session)?, generation, completion, context),
        Input::EmptyGeneration { completion } => {
            completion::empty_generation(require(session)?, completion, context)
        }
        Input::Restart => restart::restart(require(session)?, tasks, context),
    }
}

fn require(session: Option<SessionRecord>) -> Result<SessionRecord, MachineError> {
    session.ok_or(MachineError::NoSession)
}

fn require_task(
    tasks: &BTreeMap<TaskId, TaskRecord>,
    task: &TaskId,
) -> Result<TaskRecord, MachineError> {
    tasks
        .get(task)
        .cloned()
        .ok_or_else(|| MachineError::UnknownTask { task: task.clone() })
}

#[cfg(test)]
mod tests;
