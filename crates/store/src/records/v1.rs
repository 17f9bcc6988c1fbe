//! The records of schema 1, frozen: what the release before record versions wrote
//! (plain `SerdeBincode` values, no version marker). They are only ever decoded, then
//! converted to the current records; nothing writes them any more.
//!
//! Never change these types: their field order and types *are* the old encoding.

use serde::Deserialize;

use super::{
    EventBody, EventRecord, Failure, FailureReason, Outcome, ResponseSummary, SessionConfig,
    SessionRecord, SessionState, StoredCompletion, TaskKind, TaskRecord, TaskState,
};
use crate::ids::{SessionId, TaskId};

#[derive(Deserialize)]
pub(crate) struct SessionConfigV1 {
    attempts_max: u32,
    retry_delay_ms_base: u64,
    retry_delay_ms_max: u64,
    deadline_s: u64,
}

#[derive(Deserialize)]
enum SessionStateV1 {
    Queued,
    Running,
    AwaitingEvents,
    Finished,
}

#[derive(Deserialize)]
struct StoredCompletionV1 {
    name: String,
    payload: Vec<u8>,
}

#[derive(Deserialize)]
pub(crate) struct SessionRecordV1 {
    id: SessionId,
    state: SessionStateV1,
    generation: u64,
    tasks_open: u64,
    tasks_running: u64,
    next_event_seq: u64,
    delivered_seq: u64,
    completion: Option<StoredCompletionV1>,
    completion_generation: u64,
    config: SessionConfigV1,
    created_ms: u64,
}

#[derive(Deserialize)]
enum TaskKindV1 {
    Download,
    Upload,
    Data,
}

#[derive(Deserialize)]
enum TaskStateV1 {
    Pending { attempt: u32, not_before_ms: u64 },
    Running { attempt: u32 },
    Completed { outcome: OutcomeV1, event_seq: u64 },
}

#[derive(Deserialize)]
pub(crate) struct TaskRecordV1 {
    session: SessionId,
    id: TaskId,
    generation: u64,
    kind: TaskKindV1,
    request: Vec<u8>,
    created_ms: u64,
    state: TaskStateV1,
}

#[derive(Deserialize)]
struct ResponseSummaryV1 {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// An absolute path in schema 1; schema 2 keeps the file name only.
    file: Option<String>,
    bytes: u64,
}

#[derive(Deserialize)]
enum FailureReasonV1 {
    Transfer,
    RetryExhausted,
    DeadlineExceeded,
    InvalidRequest,
}

#[derive(Deserialize)]
struct FailureV1 {
    reason: FailureReasonV1,
    message: String,
    attempts: u32,
}

#[derive(Deserialize)]
enum OutcomeV1 {
    Success(ResponseSummaryV1),
    Rejected(ResponseSummaryV1),
    Failed(FailureV1),
    Cancelled,
}

#[derive(Deserialize)]
enum EventBodyV1 {
    TaskCompleted {
        task: TaskId,
        kind: TaskKindV1,
        outcome: OutcomeV1,
    },
    DidFinishEvents,
    Completion(StoredCompletionV1),
}

#[derive(Deserialize)]
pub(crate) struct EventRecordV1 {
    session: SessionId,
    seq: u64,
    generation: u64,
    body: EventBodyV1,
}

impl From<SessionConfigV1> for SessionConfig {
    fn from(old: SessionConfigV1) -> Self {
        SessionConfig {
            attempts_max: old.attempts_max,
            retry_delay_ms_base: old.retry_delay_ms_base,
            retry_delay_ms_max: old.retry_delay_ms_max,
            deadline_s: old.deadline_s,
            // Schema 1 had none of these: the defaults of today.
            ..SessionConfig::default()
        }
    }
}

impl From<StoredCompletionV1> for StoredCompletion {
    fn from(old: StoredCompletionV1) -> Self {
        StoredCompletion {
            name: old.name,
            payload: old.payload,
        }
    }
}

impl From<SessionRecordV1> for SessionRecord {
    fn from(old: SessionRecordV1) -> Self {
        SessionRecord {
            id: old.id,
            state: match old.state {
                SessionStateV1::Queued => SessionState::Queued,
                SessionStateV1::Running => SessionState::Running,
                SessionStateV1::AwaitingEvents => SessionState::AwaitingEvents,
                SessionStateV1::Finished => SessionState::Finished,
            },
            generation: old.generation,
            tasks_open: old.tasks_open,
            tasks_running: old.tasks_running,
            next_event_seq: old.next_event_seq,
            delivered_seq: old.delivered_seq,
            completions: old.completion.map(Into::into).into_iter().collect(),
            completion_generation: old.completion_generation,
            // Schema 1 kept no digests; a re-issued completion of that generation is then
            // recognised by the generation alone, as schema 1 did.
            completion_digests: Vec::new(),
            config: old.config.into(),
            created_ms: old.created_ms,
            delivery_failure: None,
            dead_letters: 0,
        }
    }
}

impl From<TaskKindV1> for TaskKind {
    fn from(old: TaskKindV1) -> Self {
        match old {
            TaskKindV1::Download => TaskKind::Download,
            TaskKindV1::Upload => TaskKind::Upload,
            TaskKindV1::Data => TaskKind::Data,
        }
    }
}

impl From<ResponseSummaryV1> for ResponseSummary {
    fn from(old: ResponseSummaryV1) -> Self {
        ResponseSummary {
            status: old.status,
            headers: old.headers,
            body: old.body,
            // Schema 1 recorded `<root>/downloads/<session>/<name>`; only the name is kept,
            // so a root directory moved since still finds its files.
            file: old.file.map(|path| match path.rsplit_once('/') {
                Some((_, name)) => name.to_owned(),
                None => path,
            }),
            bytes: old.bytes,
        }
    }
}

impl From<OutcomeV1> for Outcome {
    fn from(old: OutcomeV1) -> Self {
        match old {
            OutcomeV1::Success(response) => Outcome::Success(response.into()),
            OutcomeV1::Rejected(response) => Outcome::Rejected(response.into()),
            OutcomeV1::Failed(failure) => Outcome::Failed(Failure {
                reason: match failure.reason {
                    FailureReasonV1::Transfer => FailureReason::Transfer,
                    FailureReasonV1::RetryExhausted => FailureReason::RetryExhausted,
                    FailureReasonV1::DeadlineExceeded => FailureReason::DeadlineExceeded,
                    FailureReasonV1::InvalidRequest => FailureReason::InvalidRequest,
                },
                message: failure.message,
                attempts: failure.attempts,
            }),
            OutcomeV1::Cancelled => Outcome::Cancelled,
        }
    }
}

impl From<TaskRecordV1> for TaskRecord {
    fn from(old: TaskRecordV1) -> Self {
        let state = match old.state {
            TaskStateV1::Pending {
                attempt,
                not_before_ms,
            } => TaskState::Pending {
                attempt,
                not_before_ms,
            },
            TaskStateV1::Running { attempt } => TaskState::Running { attempt },
            TaskStateV1::Completed { outcome, event_seq } => TaskState::Completed {
                outcome: outcome.into(),
                event_seq,
                // Schema 1 did not record when; the enqueue time is the safe lower bound
                // (retention counts from it, so old tasks are pruned first).
                finished_ms: old.created_ms,
            },
        };
        TaskRecord {
            session: old.session,
            id: old.id,
            generation: old.generation,
            kind: old.kind.into(),
            request: old.request,
            created_ms: old.created_ms,
            state,
            wait: None,
            incarnation: 0,
        }
    }
}

impl From<EventRecordV1> for EventRecord {
    fn from(old: EventRecordV1) -> Self {
        EventRecord {
            session: old.session,
            seq: old.seq,
            generation: old.generation,
            body: match old.body {
                EventBodyV1::TaskCompleted {
                    task,
                    kind,
                    outcome,
                } => EventBody::TaskCompleted {
                    task,
                    kind: kind.into(),
                    outcome: outcome.into(),
                },
                EventBodyV1::DidFinishEvents => EventBody::DidFinishEvents,
                EventBodyV1::Completion(completion) => EventBody::Completion(completion.into()),
            },
        }
    }
}
