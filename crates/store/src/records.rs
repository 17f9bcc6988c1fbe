//! The persisted records: sessions, tasks and events (DESIGN section 3).
//!
//! Records are plain data, serialized with heed's `SerdeBincode`. Each has `validate`,
//! which the store calls before a write and after a read, so a corrupt or impossible
//! record becomes a typed error naming its table and key instead of a panic later.
//! The state machine that moves records from one state to the next lives in
//! `session-actor`; the store only keeps them.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TaskId};

/// The schema version this build writes; a store with a newer one is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// The longest completion handler name, in bytes.
pub const COMPLETION_NAME_BYTES_MAX: usize = 128;
/// The largest completion payload, in bytes.
pub const COMPLETION_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// The largest serialized transfer description kept with a task, in bytes.
pub const TASK_REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// The largest response body kept in a record (data tasks), in bytes.
pub const RESPONSE_BODY_BYTES_MAX: usize = 1024 * 1024;
/// The most response headers kept in a record.
pub const RESPONSE_HEADERS_MAX: usize = 128;
/// The longest failure message kept in a record, in bytes.
pub const FAILURE_MESSAGE_BYTES_MAX: usize = 4096;

/// Limits and retry policy of one session, chosen by the application and persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// How many transfer attempts a task gets before it fails with `RetryExhausted`.
    pub attempts_max: u32,
    /// The first retry delay; it doubles per attempt (with jitter) up to the maximum.
    pub retry_delay_ms_base: u64,
    /// The largest retry delay from backoff (a server's Retry-After may ask for more).
    pub retry_delay_ms_max: u64,
    /// The resource deadline: a task not terminal this long after it was enqueued fails.
    pub deadline_s: u64,
}

impl SessionConfig {
    /// The most attempts a configuration may ask for.
    pub const ATTEMPTS_MAX_LIMIT: u32 = 1000;

    /// Checks that the configuration is usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts_max == 0 || self.attempts_max > Self::ATTEMPTS_MAX_LIMIT {
            return Err(format!(
                "attempts_max {} is outside 1..={}",
                self.attempts_max,
                Self::ATTEMPTS_MAX_LIMIT
            ));
        }
        if self.retry_delay_ms_base > self.retry_delay_ms_max {
            return Err(format!(
                "retry_delay_ms_base {} exceeds retry_delay_ms_max {}",
                self.retry_delay_ms_base, self.retry_delay_ms_max
            ));
        }
        if self.deadline_s == 0 {
            return Err("deadline_s is zero".into());
        }
        Ok(())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            attempts_max: 8,
            retry_delay_ms_base: 500,
            retry_delay_ms_max: 60_000,
            deadline_s: 7 * 24 * 3600,
        }
    }
}

/// Where a session is in its current generation (DESIGN section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Work is waiting and none is in flight.
    Queued,
    /// At least one transfer is in flight.
    Running,
    /// Every task of the generation is terminal; events or the completion are undelivered.
    AwaitingEvents,
    /// Every task terminal, every event delivered, the stored completion ran.
    Finished,
}

/// A completion handler stored by name and payload: closures do not survive a crash,
/// so the application registers named handlers and the session stores which one to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCompletion {
    /// The registered handler's name.
    pub name: String,
    /// The application's argument to the handler.
    pub payload: Vec<u8>,
}

impl StoredCompletion {
    /// Checks the name and payload limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > COMPLETION_NAME_BYTES_MAX {
            return Err(format!(
                "completion name is {} bytes, not 1..={COMPLETION_NAME_BYTES_MAX}",
                self.name.len()
            ));
        }
        if self.payload.len() > COMPLETION_PAYLOAD_BYTES_MAX {
            return Err(format!(
                "completion payload is {} bytes, over {COMPLETION_PAYLOAD_BYTES_MAX}",
                self.payload.len()
            ));
        }
        Ok(())
    }
}

/// One background session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's identifier (also its key).
    pub id: SessionId,
    /// The state of the current generation.
    pub state: SessionState,
    /// The current generation; 0 until the first work arrives, then from 1. New work on
    /// a session whose generation has ended opens the next one.
    pub generation: u64,
    /// Tasks not yet terminal (they all belong to the current generation).
    pub tasks_open: u64,
    /// Tasks with a transfer in flight; at most `tasks_open`.
    pub tasks_running: u64,
    /// The sequence number the next appended event gets; events are numbered from 0.
    pub next_event_seq: u64,
    /// Events with a sequence number below this one have been delivered.
    pub delivered_seq: u64,
    /// The completion stored for the open generation, not yet appended to the outbox
    /// (it is appended right after the generation's `DidFinishEvents`).
    pub completion: Option<StoredCompletion>,
    /// The last generation whose completion was appended to the outbox (0: none yet).
    /// Setting a completion for that generation or an older one again is a no-op, which
    /// makes re-issuing everything after a relaunch safe.
    pub completion_generation: u64,
    /// Limits and retry policy.
    pub config: SessionConfig,
    /// When the session was first created, Unix milliseconds.
    pub created_ms: u64,
}

impl SessionRecord {
    /// A session that has had no work yet: generation 0, finished, no events.
    pub fn new(id: SessionId, config: SessionConfig, created_ms: u64) -> Self {
        SessionRecord {
            id,
            state: SessionState::Finished,
            generation: 0,
            tasks_open: 0,
            tasks_running: 0,
            next_event_seq: 0,
            delivered_seq: 0,
            completion: None,
            completion_generation: 0,
            config,
            created_ms,
        }
    }

    /// Checks the record's internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.generation == 0
            && (self.state != SessionState::Finished || self.next_event_seq != 0)
        {
            return Err("generation 0 (no work yet) must be finished with no events".into());
        }
        if self.tasks_running > self.tasks_open {
            return Err(format!(
                "tasks_running {} exceeds tasks_open {}",
                self.tasks_running, self.tasks_open
            ));
        }
        let counts_fit_state = match self.state {
            SessionState::Queued => self.tasks_open > 0 && self.tasks_running == 0,
            SessionState::Running => self.tasks_running > 0,
            SessionState::AwaitingEvents | SessionState::Finished => self.tasks_open == 0,
        };
        if !counts_fit_state {
            return Err(format!(
                "state {:?} does not fit {} open and {} running tasks",
                self.state, self.tasks_open, self.tasks_running
            ));
        }
        if self.delivered_seq > self.next_event_seq {
            return Err(format!(
                "delivered_seq {} is past next_event_seq {}",
                self.delivered_seq, self.next_event_seq
            ));
        }
        if self.state == SessionState::Finished && self.delivered_seq != self.next_event_seq {
            return Err("finished with undelivered events".into());
        }
        if self.completion_generation > self.generation {
            return Err(format!(
                "completion_generation {} is past generation {}",
                self.completion_generation, self.generation
            ));
        }
        if let Some(completion) = &self.completion {
            if !matches!(self.state, SessionState::Queued | SessionState::Running) {
                return Err(format!(
                    "a completion is stored but the generation has ended ({:?})",
                    self.state
                ));
            }
            completion.validate()?;
        }
        self.config.validate()
    }

    /// Whether some event is appended but not yet delivered.
    pub fn has_undelivered_events(&self) -> bool {
        self.delivered_seq < self.next_event_seq
    }
}

/// What a task does with its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Streams the response body to a file.
    Download,
    /// Streams a request body from a file.
    Upload,
    /// A small request whose response body is kept in memory.
    Data,
}

/// The life of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting to be started, not before the given time.
    Pending {
        /// Attempts already made.
        attempt: u32,
        /// Unix milliseconds before which the task must not start (retry time).
        not_before_ms: u64,
    },
    /// A transfer is in flight.
    Running {
        /// The attempt in flight, from 1.
        attempt: u32,
    },
    /// Terminal: the outcome was recorded together with its event.
    Completed {
        /// How the task ended.
        outcome: Outcome,
        /// The sequence number of the event that reports it.
        event_seq: u64,
    },
}

impl TaskState {
    /// Whether the task has reached its terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TaskState::Completed { .. })
    }
}

/// One task of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The session the task belongs to.
    pub session: SessionId,
    /// The task's identifier, unique within its session.
    pub id: TaskId,
    /// The generation the task was enqueued in.
    pub generation: u64,
    /// Download, upload or data.
    pub kind: TaskKind,
    /// The serialized transfer description; opaque to the store. Re-issuing a task id
    /// with the same bytes reconnects, with different bytes is a conflict.
    pub request: Vec<u8>,
    /// When the task was enqueued, Unix milliseconds; the resource deadline counts from it.
    pub created_ms: u64,
    /// Where the task is.
    pub state: TaskState,
}

impl TaskRecord {
    /// Checks the record's internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.generation == 0 {
            return Err("generation is 0; generations start at 1".into());
        }
        if self.request.len() > TASK_REQUEST_BYTES_MAX {
            return Err(format!(
                "request is {} bytes, over {TASK_REQUEST_BYTES_MAX}",
                self.request.len()
            ));
        }
        match &self.state {
            TaskState::Pending { .. } => Ok(()),
            TaskState::Running { attempt } if *attempt == 0 => {
                Err("running with attempt 0; attempts count from 1".into())
            }
            TaskState::Running { .. } => Ok(()),
            TaskState::Completed { outcome, .. } => outcome.validate(),
        }
    }
}

/// What a server answered, as kept in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseSummary {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers worth keeping (never credentials or cookies).
    pub headers: Vec<(String, String)>,
    /// The body of a data task (empty for downloads and uploads).
    pub body: Vec<u8>,
    /// For a download: the finished file's path.
    pub file: Option<String>,
    /// Body bytes transferred in total (the file's length for a download).
    pub bytes: u64,
}

impl ResponseSummary {
    /// Checks the size limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.body.len() > RESPONSE_BODY_BYTES_MAX {
            return Err(format!(
                "response body is {} bytes, over {RESPONSE_BODY_BYTES_MAX}",
                self.body.len()
            ));
        }
        if self.headers.len() > RESPONSE_HEADERS_MAX {
            return Err(format!(
                "{} response headers, over {RESPONSE_HEADERS_MAX}",
                self.headers.len()
            ));
        }
        if !(100..=999).contains(&self.status) {
            return Err(format!("status {} is not an HTTP status", self.status));
        }
        Ok(())
    }
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureReason {
    /// The transfer failed in a way retrying cannot fix (bad URL, TLS, local disk).
    Transfer,
    /// Every allowed attempt ended in a retryable result.
    RetryExhausted,
    /// The resource deadline passed before the task finished.
    DeadlineExceeded,
    /// The stored description could not be used.
    InvalidRequest,
}

/// A failed task's reason and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The kind of failure.
    pub reason: FailureReason,
    /// What went wrong, for a person.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The server accepted the request (2xx) and the transfer completed and verified.
    Success(ResponseSummary),
    /// The server refused the request (a 4xx other than 408 and 429).
    Rejected(ResponseSummary),
    /// The task could not complete.
    Failed(Failure),
    /// The application cancelled the task.
    Cancelled,
}

impl Outcome {
    /// Checks the size limits.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Outcome::Success(response) | Outcome::Rejected(response) => response.validate(),
            Outcome::Failed(failure) if failure.message.len() > FAILURE_MESSAGE_BYTES_MAX => Err(
                format!("failure message over {FAILURE_MESSAGE_BYTES_MAX} bytes"),
            ),
            Outcome::Failed(_) | Outcome::Cancelled => Ok(()),
        }
    }

    /// A short name for the outcome: `success`, `rejected`, `failed` or `cancelled`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Rejected(_) => "rejected",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What an event reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// A task reached its terminal outcome.
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// Download, upload or data.
        kind: TaskKind,
        /// How it ended.
        outcome: Outcome,
    },
    /// Every task of the generation is terminal and every earlier event was delivered
    /// before this one ("did finish events").
    DidFinishEvents,
    /// Run the stored completion handler; always after the generation's `DidFinishEvents`.
    Completion(StoredCompletion),
}

/// One entry of a session's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The session.
    pub session: SessionId,
    /// The event's sequence number, contiguous from 0 per session.
    pub seq: u64,
    /// The generation the event belongs to.
    pub generation: u64,
    /// What happened.
    pub body: EventBody,
}

impl EventRecord {
    /// Checks the record's internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.generation == 0 {
            return Err("generation is 0; generations start at 1".into());
        }
        match &self.body {
            EventBody::TaskCompleted { outcome, .. } => outcome.validate(),
            EventBody::DidFinishEvents => Ok(()),
            EventBody::Completion(completion) => completion.validate(),
        }
    }
}
