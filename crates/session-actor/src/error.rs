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
    #[error("delegate failed: {0}")]
    Delegate(String),
}

impl UnitError {
    pub(crate) fn into_error(self, session: &SessionId, seq: u64) -> Error {
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
            UnitError::Delegate(message) => Error::Delegate {
                session: session.clone(),
                seq,
                message,
            },
        }
    }
}
