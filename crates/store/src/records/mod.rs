//! The persisted records: sessions, tasks and events.
//!
//! Records are plain data. Each has `validate`, which the store calls before a write and
//! after a read, so a corrupt or impossible record becomes a typed error naming its table
//! and key instead of a panic later. The state machine that moves records from one state
//! to the next lives in `session-actor`; the store only keeps them.
//!
//! **Versions.** Every stored value starts with a marker byte and its format version
//! (`codec`), then the bincode of the record. Nested structures are covered by their
//! record's version (bincode is not self-describing, so a changed nested type is a new
//! record version); nested *encoded* values carry their own version (a task's transfer
//! description is encoded, versioned and decoded by `session-http`; a completion's payload
//! is the application's). Values of schema 1, written before versions existed, have no
//! marker: they are decoded with the frozen types of `v1` and converted.
//!
//! - `codec`: the marker, the versions and the encode/decode of each table's values.
//! - `v1`: the frozen schema-1 records and their conversion to today's.

pub(crate) mod codec;
mod v1;

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TaskId};

/// The schema version this build writes: 2 since records carry versions. A store with a
/// newer one is refused; a schema-1 store is read and converted as it is used.
pub const SCHEMA_VERSION: u32 = 2;

/// The longest completion handler name, in bytes.
pub const COMPLETION_NAME_BYTES_MAX: usize = 128;
/// The largest completion payload, in bytes.
pub const COMPLETION_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// The most completions one generation stores (every batch that joins a running
/// generation may bring one).
pub const COMPLETIONS_PER_GENERATION_MAX: usize = 64;
/// The largest serialized transfer description kept with a task, in bytes.
pub const TASK_REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// The largest response body kept in a record (data tasks), in bytes.
pub const RESPONSE_BODY_BYTES_MAX: usize = 1024 * 1024;
/// The most response headers kept in a record.
pub const RESPONSE_HEADERS_MAX: usize = 128;
/// The longest failure message kept in a record, in bytes.
pub const FAILURE_MESSAGE_BYTES_MAX: usize = 4096;

/// A configuration field with an unusable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field's name, as spelled in the type.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl InvalidField {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

/// What a session does with an event its delegate keeps refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryPolicy {
    /// The event waits, retried with backoff, until the delegate accepts it; nothing
    /// behind it is delivered meanwhile (the default: order and exactly-once hold).
    Wait,
    /// After this many failed attempts the event moves to the session's dead-letter list
    /// (in the transaction that records the move) and delivery goes on with the next one.
    DeadLetter {
        /// Failed attempts before the move, at least 1.
        attempts_max: u32,
    },
}

/// Limits and retry policy of one session, chosen by the application and persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// How many transfer attempts a task gets before it fails with `RetryExhausted`.
    /// Attempts count server answers and transfers cut mid-way; with
    /// `wait_for_connectivity`, failures to reach the server do not count.
    pub attempts_max: u32,
    /// The first retry delay; it doubles per attempt (with jitter) up to the maximum.
    pub retry_delay_ms_base: u64,
    /// The largest retry delay from backoff (a server's Retry-After may ask for more).
    pub retry_delay_ms_max: u64,
    /// The resource deadline: a task not terminal this long after it was enqueued fails.
    pub deadline_s: u64,
    /// Whether a task that cannot reach its server (connection refused, DNS failure,
    /// unreachable) waits for connectivity, with capped backoff, until its resource
    /// deadline, instead of spending `attempts_max` (Apple's `waitsForConnectivity`).
    pub wait_for_connectivity: bool,
    /// The largest delay between two tries of a task that waits (for connectivity, or
    /// for free space for its download); the delay starts at `retry_delay_ms_base` and
    /// doubles per try.
    pub wait_retry_ms_max: u64,
    /// The first delay before a failed delivery (delegate or completion) is retried; it
    /// doubles per failure (with jitter) up to the maximum.
    pub delivery_retry_ms_base: u64,
    /// The largest delay between two delivery attempts.
    pub delivery_retry_ms_max: u64,
    /// What to do with an event the delegate keeps refusing.
    pub delivery_policy: DeliveryPolicy,
    /// How long a finished task is kept after its event was delivered: re-issuing its
    /// identifier within this period reconnects to its outcome; afterwards the record is
    /// pruned and the identifier is free (a new task under it runs again).
    pub retention_s: u64,
}

impl SessionConfig {
    /// The most attempts a configuration may ask for.
    pub const ATTEMPTS_MAX_LIMIT: u32 = 1000;
    /// The longest delay or period a configuration may ask for, in milliseconds (a year).
    pub const PERIOD_MS_LIMIT: u64 = 366 * 24 * 3600 * 1000;

    /// Checks that the configuration is usable; the error names the field.
    ///
    /// # Errors
    /// The first field with an unusable value.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let limit_s = Self::PERIOD_MS_LIMIT / 1000;
        if self.attempts_max == 0 || self.attempts_max > Self::ATTEMPTS_MAX_LIMIT {
            return Err(InvalidField::new(
                "attempts_max",
                format!(
                    "{} is outside 1..={}",
                    self.attempts_max,
                    Self::ATTEMPTS_MAX_LIMIT
                ),
            ));
        }
        for (field, value) in [
            ("retry_delay_ms_max", self.retry_delay_ms_max),
            ("wait_retry_ms_max", self.wait_retry_ms_max),
            ("delivery_retry_ms_max", self.delivery_retry_ms_max),
        ] {
            if value == 0 || value > Self::PERIOD_MS_LIMIT {
                return Err(InvalidField::new(
                    field,
                    format!("{value} ms is outside 1..={}", Self::PERIOD_MS_LIMIT),
                ));
            }
        }
        if self.retry_delay_ms_base > self.retry_delay_ms_max {
            return Err(InvalidField::new(
                "retry_delay_ms_base",
                format!(
                    "{} exceeds retry_delay_ms_max {}",
                    self.retry_delay_ms_base, self.retry_delay_ms_max
                ),
            ));
        }
        if self.delivery_retry_ms_base > self.delivery_retry_ms_max {
            return Err(InvalidField::new(
                "delivery_retry_ms_base",
                format!(
                    "{} exceeds delivery_retry_ms_max {}",
                    self.delivery_retry_ms_base, self.delivery_retry_ms_max
                ),
            ));
        }
        if self.deadline_s == 0 || self.deadline_s > limit_s {
            return Err(InvalidField::new(
                "deadline_s",
                format!("{} is outside 1..={limit_s}", self.deadline_s),
            ));
        }
        if self.retention_s > limit_s {
            return Err(InvalidField::new(
                "retention_s",
                format!("{} is over {limit_s}", self.retention_s),
            ));
        }
        if let DeliveryPolicy::DeadLetter { attempts_max } = self.delivery_policy
            && (attempts_max == 0 || attempts_max > Self::ATTEMPTS_MAX_LIMIT)
        {
            return Err(InvalidField::new(
                "delivery_policy",
                format!(
                    "dead-letter attempts_max {attempts_max} is outside 1..={}",
                    Self::ATTEMPTS_MAX_LIMIT
                ),
            ));
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
            wait_for_connectivity: true,
            wait_retry_ms_max: 60_000,
            delivery_retry_ms_base: 100,
            delivery_retry_ms_max: 60_000,
            delivery_policy: DeliveryPolicy::Wait,
            retention_s: 7 * 24 * 3600,
        }
    }
}

/// Where a session is in its current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Work is waiting and none is in flight.
    Queued,
    /// At least one transfer is in flight.
    Running,
    /// Every task of the generation is terminal; events or the completion are undelivered.
    AwaitingEvents,
    /// Every task terminal, every event delivered, the stored completions ran.
    Finished,
}

/// Checks a completion handler's name: 1 to [`COMPLETION_NAME_BYTES_MAX`] bytes of ASCII
/// letters, digits, `.`, `_`, `-` and `:` (names reach logs and the registry, so no
/// control characters, spaces or quotes).
///
/// # Errors
/// What is wrong with the name.
pub fn validate_completion_name(name: &str) -> Result<(), InvalidField> {
    if name.is_empty() || name.len() > COMPLETION_NAME_BYTES_MAX {
        return Err(InvalidField::new(
            "completion name",
            format!(
                "is {} bytes, not 1..={COMPLETION_NAME_BYTES_MAX}",
                name.len()
            ),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(InvalidField::new(
            "completion name",
            format!(
                "{:?} has a character other than ASCII letters, digits, '.', '_', '-' and ':'",
                name.escape_debug().to_string()
            ),
        ));
    }
    Ok(())
}

/// A completion handler stored by name and payload: closures do not survive a crash,
/// so the application registers named handlers and the session stores which one to run.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCompletion {
    /// The registered handler's name.
    pub name: String,
    /// The application's argument to the handler.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for StoredCompletion {
    // The payload is the application's and may be large or private: its size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCompletion")
            .field("name", &self.name)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

impl StoredCompletion {
    /// Checks the name and payload limits. Stored names are checked for length and for
    /// control characters only, so that names stored by an earlier release stay readable;
    /// new names are checked with [`validate_completion_name`] before they are stored.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > COMPLETION_NAME_BYTES_MAX
            || self.name.chars().any(char::is_control)
        {
            return Err(format!(
                "completion name {:?} is not 1..={COMPLETION_NAME_BYTES_MAX} bytes without control characters",
                self.name.escape_debug().to_string()
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

    /// A stable 64-bit digest of name and payload (FNV-1a, the same in every release),
    /// kept to recognise a completion given again after a relaunch.
    pub fn digest(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = OFFSET;
        let bytes = self
            .name
            .as_bytes()
            .iter()
            .chain(std::iter::once(&0u8))
            .chain(self.payload.iter());
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
        hash
    }
}

/// A delivery that keeps failing: which event, since when, how often, the last error,
/// and when the next attempt is due. Persisted so a restart keeps the count (and a
/// dead-letter policy its budget) and `inspect` can show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailure {
    /// The event that could not be delivered.
    pub seq: u64,
    /// Failed attempts so far, from 1.
    pub attempts: u32,
    /// When the first of them failed, Unix milliseconds.
    pub since_ms: u64,
    /// When the next attempt is due, Unix milliseconds.
    pub next_attempt_ms: u64,
    /// What the last attempt said (the delegate's error or a panic message).
    pub last_error: String,
}

/// One background session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's identifier (also its key).
    pub id: SessionId,
    /// The state of the current generation.
    pub state: SessionState,
    /// The current generation; 0 until the first work arrives, then from 1. New work on
    /// a session whose generation has ended opens the next one; new work while it runs
    /// joins it.
    pub generation: u64,
    /// Tasks not yet terminal (they all belong to the current generation).
    pub tasks_open: u64,
    /// Tasks with a transfer in flight; at most `tasks_open`.
    pub tasks_running: u64,
    /// The sequence number the next appended event gets; events are numbered from 0.
    pub next_event_seq: u64,
    /// Events with a sequence number below this one have been delivered (or moved to the
    /// dead-letter list).
    pub delivered_seq: u64,
    /// The completions stored for the open generation, in the order they were given,
    /// not yet appended to the outbox (they are appended right after the generation's
    /// `DidFinishEvents`).
    pub completions: Vec<StoredCompletion>,
    /// The last generation whose completions were appended to the outbox (0: none yet).
    pub completion_generation: u64,
    /// Digests ([`StoredCompletion::digest`]) of the completions appended for
    /// `completion_generation`, so one given again for it changes nothing.
    pub completion_digests: Vec<u64>,
    /// Limits and retry policy.
    pub config: SessionConfig,
    /// When the session was first created, Unix milliseconds.
    pub created_ms: u64,
    /// The delivery that keeps failing, if one does.
    pub delivery_failure: Option<DeliveryFailure>,
    /// Events moved to the dead-letter list and not re-delivered yet.
    pub dead_letters: u64,
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
            completions: Vec::new(),
            completion_generation: 0,
            completion_digests: Vec::new(),
            config,
            created_ms,
            delivery_failure: None,
            dead_letters: 0,
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
        if self.completions.len() > COMPLETIONS_PER_GENERATION_MAX
            || self.completion_digests.len() > COMPLETIONS_PER_GENERATION_MAX
        {
            return Err(format!(
                "{} completions and {} digests, over {COMPLETIONS_PER_GENERATION_MAX}",
                self.completions.len(),
                self.completion_digests.len()
            ));
        }
        if !self.completions.is_empty()
            && !matches!(self.state, SessionState::Queued | SessionState::Running)
        {
            return Err(format!(
                "completions are stored but the generation has ended ({:?})",
                self.state
            ));
        }
        for completion in &self.completions {
            completion.validate()?;
        }
        if let Some(failure) = &self.delivery_failure {
            if failure.seq != self.delivered_seq || !self.has_undelivered_events() {
                return Err(format!(
                    "a delivery failure is recorded for event {} but the next undelivered is {} of {}",
                    failure.seq, self.delivered_seq, self.next_event_seq
                ));
            }
            if failure.attempts == 0 || failure.last_error.len() > FAILURE_MESSAGE_BYTES_MAX {
                return Err("a delivery failure with 0 attempts or an overlong error".into());
            }
        }
        self.config.validate().map_err(|error| error.to_string())
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
        /// Attempts already made (tries that could not reach the server while waiting
        /// for connectivity do not count).
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
        /// When it ended, Unix milliseconds.
        finished_ms: u64,
    },
}

impl TaskState {
    /// Whether the task has reached its terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TaskState::Completed { .. })
    }

    /// `pending`, `running` or `completed`.
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Pending { .. } => "pending",
            TaskState::Running { .. } => "running",
            TaskState::Completed { .. } => "completed",
        }
    }
}

/// Why a pending task waits beyond its retry delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitReason {
    /// Its server could not be reached (refused, DNS, unreachable).
    Connectivity,
    /// Its download needs more free space than its directory has beyond the reserve.
    Storage,
}

/// A pending task that waits for something outside it, for status and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskWait {
    /// What it waits for.
    pub reason: WaitReason,
    /// When the wait began, Unix milliseconds.
    pub since_ms: u64,
    /// Tries that ended in this wait, from 1 (they set the backoff).
    pub tries: u32,
    /// What the last try said.
    pub message: String,
}

/// One task of a session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The session the task belongs to.
    pub session: SessionId,
    /// The task's identifier, unique within its session.
    pub id: TaskId,
    /// The generation the task was enqueued in.
    pub generation: u64,
    /// Download, upload or data.
    pub kind: TaskKind,
    /// The encoded transfer description; opaque to the store (it may hold credentials, so
    /// `Debug` shows its size only). Re-issuing a task id with the same description
    /// reconnects, with a different one is a conflict.
    pub request: Vec<u8>,
    /// When the task was enqueued, Unix milliseconds; the resource deadline counts from it.
    pub created_ms: u64,
    /// Where the task is.
    pub state: TaskState,
    /// Why a pending task waits, when it waits for connectivity or storage (kept while
    /// the next try runs).
    pub wait: Option<TaskWait>,
    /// How many times the identifier was given a new description (enqueue with the
    /// replace policy); 0 for the first. A download's file name carries it, so the file
    /// of a replaced task never meets its successor's.
    pub incarnation: u32,
}

impl std::fmt::Debug for TaskRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRecord")
            .field("session", &self.session)
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("kind", &self.kind)
            .field("request_bytes", &self.request.len())
            .field("created_ms", &self.created_ms)
            .field("state", &self.state)
            .field("wait", &self.wait)
            .field("incarnation", &self.incarnation)
            .finish()
    }
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
        if let Some(wait) = &self.wait {
            // A running task keeps the wait it comes from (its tries set the backoff if it
            // ends in the same wait again); a completed one has none.
            if self.state.is_terminal() {
                return Err("a completed task cannot wait".into());
            }
            if wait.message.len() > FAILURE_MESSAGE_BYTES_MAX {
                return Err("wait message over the limit".into());
            }
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
    /// For a download: the finished file's name inside the session's download
    /// directory (`<root>/downloads/<session>/`). A name, not a path, so the root may move
    /// between launches; names are ASCII (the engine encodes them).
    pub file: Option<String>,
    /// Bytes transferred: the file's length for a download, the request body's length
    /// for an upload, the response body's length for a data task.
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
        if let Some(file) = &self.file
            && (file.is_empty() || file.contains(['/', '\\', '\0']) || file == "." || file == "..")
        {
            return Err(format!("file {file:?} is not a plain file name"));
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

/// An event its delegate kept refusing, moved out of the outbox under a session's
/// [`DeliveryPolicy::DeadLetter`] in the transaction that recorded the move. Kept under
/// the event's own `(session, seq)` until the application asks for it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The event as it was in the outbox (its session and seq are the record's key).
    pub event: EventRecord,
    /// Failed delivery attempts before the move, from 1.
    pub attempts: u32,
    /// What the last attempt said (the delegate's error or a panic message), at most
    /// [`FAILURE_MESSAGE_BYTES_MAX`] bytes.
    pub last_error: String,
    /// When the event was moved, Unix milliseconds.
    pub moved_ms: u64,
}

impl DeadLetterRecord {
    /// Checks the record's internal consistency (the event's included).
    pub fn validate(&self) -> Result<(), String> {
        self.event.validate()?;
        if self.attempts == 0 {
            return Err("a dead letter with 0 attempts; an event is moved after failing".into());
        }
        if self.last_error.len() > FAILURE_MESSAGE_BYTES_MAX {
            return Err(format!(
                "last error is {} bytes, over {FAILURE_MESSAGE_BYTES_MAX}",
                self.last_error.len()
            ));
        }
        Ok(())
    }
}

/// The value of an `active_sessions` entry: the key (a session identifier) says it all:
/// the session has open tasks or undelivered events. Only the version marker, kept so a
/// later release can put something there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ActiveSessionValue;

impl SessionRecord {
    /// Whether the session has work (open tasks) or events waiting: what the
    /// `active_sessions` index lists, and what needs an actor after a restart.
    pub fn is_active(&self) -> bool {
        self.tasks_open > 0 || self.has_undelivered_events()
    }
}

/// What is left of a removed session: where its numbering stopped, so that a session
/// created again under the same identifier goes on from there and no
/// (session, generation, sequence) delivery key is ever given twice in one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedSession {
    /// The removed session's last generation.
    pub generation: u64,
    /// The sequence number its next event would have had.
    pub next_event_seq: u64,
}

/// The value of a `task_expiry` entry: its key says everything (when, which session,
/// which task), so the value is only the version marker, kept so a later release can put
/// something there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskExpiryValue;
