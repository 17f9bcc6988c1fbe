//! The crate's one error type.

use session_store::{SessionId, TaskId};

use crate::machine::MachineError;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (disk, lock, corrupt record, ...).
    #[error(transparent)]
    Store(#[from] session_store::Error),
    /// The transfer description is not valid; nothing was sent or stored.
    #[error("invalid transfer for task {task}: {source}")]
    InvalidTransfer {
        /// The task.
        task: TaskId,
        /// What is wrong.
        #[source]
        source: session_http::Error,
    },
    /// The state machine refused the request.
    #[error("session {session}: {source}")]
    Refused {
        /// The session.
        session: SessionId,
        /// Why.
        #[source]
        source: MachineError,
    },
    /// A stored completion names a handler that is not registered; the session waits.
    #[error(
        "session {session}: no completion handler named {name:?} is registered; the session waits until one is"
    )]
    UnknownCompletion {
        /// The session.
        session: SessionId,
        /// The handler's name.
        name: String,
    },
    /// The delegate or a completion handler returned an error.
    #[error("session {session}: the delegate failed on event {seq}: {message}")]
    Delegate {
        /// The session.
        session: SessionId,
        /// The event's sequence number.
        seq: u64,
        /// What the delegate said.
        message: String,
    },
    /// The session restarted too often and is parked.
    #[error("session {session} is faulted after {restarts} restarts: {reason}")]
    Faulted {
        /// The session.
        session: SessionId,
        /// Restarts counted.
        restarts: u32,
        /// The last failure.
        reason: String,
    },
    /// The session's actor is gone (the system is shutting down).
    #[error("session {session} is not running")]
    SessionGone {
        /// The session.
        session: SessionId,
    },
    /// A file operation on a downloaded file failed.
    #[error("{operation} {path}: {source}")]
    File {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine could not be built.
    #[error("building the transfer engine: {0}")]
    Engine(#[source] session_http::Error),
    /// A configuration value is unusable; nothing was stored.
    #[error("invalid configuration: {0}")]
    InvalidConfig(#[source] session_store::InvalidField),
    /// A completion handler name is unusable or not registered in this process; nothing
    /// was stored.
    #[error("invalid completion {name:?}: {reason}")]
    InvalidCompletion {
        /// The name given (escaped when printed).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The session cannot be removed now.
    #[error("session {session} cannot be removed: {reason}")]
    SessionBusy {
        /// The session.
        session: SessionId,
        /// Why (open tasks, undelivered events, dead letters).
        reason: &'static str,
    },
    /// No dead-lettered event with this sequence number.
    #[error("session {session} has no dead-lettered event {seq}")]
    NoDeadLetter {
        /// The session.
        session: SessionId,
        /// The sequence number asked for.
        seq: u64,
    },
    /// `Sessions` has been shut down (or is shutting down): it takes no more work.
    #[error("the sessions have been shut down")]
    ShutDown,
    /// The call cannot work from where it was made.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What cannot be done, and why.
        what: &'static str,
    },
    /// The actor runtime could not be started or stopped.
    #[error("the actor runtime: {reason}")]
    Runtime {
        /// What went wrong.
        reason: String,
    },
}

/// What a writer unit of a session can fail with: the store's errors and the machine's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnitError {
    #[error(transparent)]
    Store(#[from] session_store::Error),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("no completion handler named {0:?}")]
    UnknownCompletion(String),
    #[error("delegate failed on event {seq}: {message}")]
    Delegate { seq: u64, message: String },
    #[error("no dead-lettered event {0}")]
    NoDeadLetter(u64),
}

impl UnitError {
    pub(crate) fn into_error(self, session: &SessionId) -> Error {
        match self {
            UnitError::Store(error) => Error::Store(error),
            UnitError::Machine(source) => Error::Refused {
                session: session.clone(),
                source,
            },
            UnitError::UnknownCompletion(name) => Error::UnknownCompletion {
                session: session.clone(),
                name,
            },
            UnitError::NoDeadLetter(seq) => Error::NoDeadLetter {
                session: session.clone(),
                seq,
            },
            UnitError::Delegate { seq, message } => Error::Delegate {
                session: session.clone(),
                seq,
                message,
            },
        }
    }
}
