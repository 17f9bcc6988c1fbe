//! bgsession: durable background transfer sessions as supervised actix actors.
//!
//! An application builds one [`Sessions`] on a root directory, registering its named
//! completion handlers, then asks for downloads, uploads and data tasks inside named
//! sessions. The process may be killed at any instant: at the next open every
//! unfinished task resumes, and every event, "did finish events" and stored completion
//! is delivered exactly once to a [`TransactionalDelegate`] (at least once, with a
//! stable [`DeliveryKey`], to an [`AsyncDelegate`]).
//!
//! - `sessions`: [`Sessions`], its builder, recovery at open and [`Matching`].
//! - `session`: the [`Session`] and [`TaskHandle`] handles.
//! - `delegate`: what the application implements and receives.
//! - `machine`: the pure session state machine (no I/O), property-tested on its own.
//! - `actor`: the supervised session actor that drives the machine.
//! - `units`: writer units running the machine inside store transactions.
//! - `recovery`, `shared`, `clock`, `error`: recovery at open, shared state, time, errors.

#![warn(missing_docs)]

mod actor;
mod clock;
mod delegate;
mod error;
pub mod machine;
mod recovery;
mod session;
mod sessions;
mod shared;
mod units;

pub use actor::SessionStatus;
pub use clock::{Clock, SystemClock, unix_ms};
pub use delegate::{
    AsyncDelegate, CompletionCall, CompletionHandler, Delegate, DelegateError, Delivery,
    DeliveryKey, DownloadedFile, Event, TransactionalDelegate,
};
pub use error::{Error, Result};
pub use session::{Session, TaskHandle};
pub use sessions::{Matching, RESTART_LIMIT_DEFAULT, Sessions, SessionsBuilder, bridge_log};

/// Re-exported so applications need not name the store and engine crates for the
/// common types.
pub use session_http::{EngineConfig, Progress, TransferRequest};
pub use session_store::{
    Outcome, SessionConfig, SessionId, SessionRecord, Snapshot, StoreOptions, TaskId, TaskKind,
    TaskRecord, WriteScope,
};
