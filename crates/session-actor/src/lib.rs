//! bgsession: durable background transfer sessions for Rust services.
//!
//! A service opens one [`Sessions`] on a root directory, registering its named
//! completion handlers, then asks for downloads, uploads and data tasks inside named
//! background sessions. The process may be killed at any instant: at the next open every
//! unfinished task resumes, and every result, every "did finish events" and every stored
//! completion is delivered **exactly once** to a [`TransactionalDelegate`] (at least
//! once, with a stable [`DeliveryKey`], to an [`AsyncDelegate`]).
//!
//! ```no_run
//! use session_actor::{Delegate, Delivery, SessionConfig, Sessions, TransferRequest, WriteScope};
//!
//! # async fn service() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = Sessions::builder("/var/lib/my-service/transfers")
//!     .app_table("received")
//!     .completion("all-done", |_call: &session_actor::CompletionCall, _scope: &mut WriteScope<'_>| Ok(()))
//!     .open()?;
//! let deliver = |delivery: &Delivery, scope: &mut WriteScope<'_>| {
//!     let received = session_actor::AppTable::<String>::named("received")?;
//!     received.put(scope, delivery.key.to_string(), &format!("{:?}", delivery.event))?;
//!     Ok(())
//! };
//! let session = sessions
//!     .session("photos", SessionConfig::default(), Delegate::transactional(deliver))
//!     .await?;
//! let batch = session
//!     .enqueue_batch(
//!         vec![("p1".into(), TransferRequest::download("https://example.invalid/p1.jpg"))],
//!         Some(("all-done", Vec::new())),
//!     )
//!     .await?;
//! batch.finished().await?;
//! sessions.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Terms
//!
//! - **Session**: a named, persisted set of transfers ([`Sessions::session`]), like
//!   Apple's background `URLSession` with its identifier. The identifier is stable
//!   across launches: after a restart the service asks for the same session again and is
//!   told what happened while it was gone.
//! - **Task**: one transfer (download, upload or data) inside a session, with an
//!   identifier the application chooses. Re-issuing a known identifier *reconnects* to
//!   the task (it never starts a second transfer); a finished task is never run again
//!   while it is kept (see [`SessionConfig::retention_s`]).
//! - **Event**: what the session reports: a task's outcome (`success`, `rejected`,
//!   `failed`, `cancelled`), "did finish events", or a stored completion to run. Events
//!   of a session are numbered (`seq`) and kept in its outbox, written in the same
//!   transaction as the state change that produced them.
//! - **Generation**: one "wake" of the application for a session, in Apple's words: the
//!   work enqueued while the session is running, its events, one "did finish events" and
//!   its completions. Work enqueued while a generation runs (some task not terminal)
//!   joins it; work enqueued after it ended opens the next generation. A
//!   [`Batch`] reports its generation; [`Session::finished`] awaits its end.
//! - **Delivery**: handing one event to the delegate. The delivery cursor of a session
//!   says which events are delivered; with a transactional delegate it advances in the
//!   same transaction as the delegate's own writes.
//! - **Completion**: Apple's "completion handler", which the app must store and call
//!   once after "did finish events". A closure does not survive a crash, so completions
//!   are stored by **name and payload**: the service registers named handlers when it
//!   builds `Sessions`; a batch names the one to run; it runs once per generation it was
//!   stored for, as a transactional function, after that generation's "did finish
//!   events".
//! - **Delegate**: what receives the events: a [`TransactionalDelegate`] (synchronous,
//!   in the delivery's transaction) or an [`AsyncDelegate`] (outside any transaction).
//!
//! # Guarantees
//!
//! These hold across a SIGKILL or abort of the process at any instant, and across a
//! panic of the delegate; `session-harness crash` proves them with thousands of kills
//! (they are not promises about power loss, for which the disk must honour fsync).
//!
//! 1. **One event per result.** Every terminal task result produces exactly one event,
//!    written in the same transaction as the task's terminal state.
//! 2. **Exactly once, in order.** Each event reaches a transactional delegate exactly
//!    once, in sequence order per session: the delegate's writes (through its
//!    [`WriteScope`]) and the advance of the cursor commit together, or neither does and
//!    the event comes again.
//! 3. **"Did finish events" once per generation**, after that generation's last event.
//! 4. **Completions once**: a stored completion runs exactly once, after its
//!    generation's "did finish events", in the transaction that records it ran; an
//!    unknown name after a restart makes the session wait, visibly, never drops it.
//! 5. **No task lost or run twice at once**: every enqueued task reaches a terminal
//!    outcome; re-issuing a known task identifier reconnects to it; a completed task is
//!    never run again.
//! 6. **Files**: the file a download event points to is complete and verified, exists
//!    while the delegate runs, and is removed only after the delivery committed
//!    ([`DownloadedFile::keep_as`] keeps it, idempotently).
//! 7. **Dead letters** (only under a session's dead-letter [`DeliveryPolicy`]): an event
//!    moved to the dead-letter list is moved in the transaction that records it, is
//!    never lost, and is delivered again only when the application asks; this is the one
//!    case where later events are delivered before an earlier one.
//!
//! What is **not** exactly once: an [`AsyncDelegate`]'s effects outside the store (a
//! network call) are at least once, since a crash after it returned and before the
//! cursor committed delivers the same event again; every event carries a stable
//! [`DeliveryKey`] for the receiver to deduplicate. Uploads are at least once on the
//! wire; each carries an `Idempotency-Key` derived from session and task.
//!
//! # What a transactional delegate may do
//!
//! It runs on the store's single writer thread, inside the delivery's transaction: keep
//! it to fast, synchronous writes through its scope (application tables) and idempotent
//! local file operations such as [`DownloadedFile::keep_as`]. Anything slow, or anything
//! with effects outside the store (a network call, a message to a queue), belongs in an
//! [`AsyncDelegate`].
//!
//! # Runtimes, threads and shutdown
//!
//! `Sessions` runs its actors on an actix System of its own, on a thread it owns
//! ([`ACTOR_THREAD_NAME`]), whatever the caller runs: a multi-threaded or current-thread
//! tokio runtime, a plain `main` (with [`block_on`] or any executor), or another actix
//! System. Every handle is `Clone + Send + Sync` and every future it returns is `Send`.
//! [`Sessions::shutdown`] stops it cleanly; dropping the last handle does the same
//! without waiting. Nothing global is installed: no logger (see [`bridge_log`]), no
//! panic hook.
//!
//! # Modules
//!
//! - `sessions`: [`Sessions`], its builder, recovery at open and [`Matching`].
//! - `session`: the [`Session`], [`Batch`], [`TaskHandle`] handles and [`Task`].
//! - `delegate`: what the application implements and receives.
//! - `machine`: the pure session state machine (no I/O), property-tested on its own.
//! - `actor`: the supervised session actor that drives the machine.
//! - `units`: writer units running the machine inside store transactions.
//! - `direct`: those units and the janitor, callable without actors (benchmarks of the
//!   store path).
//! - `runtime`: the actor thread and [`block_on`].
//! - `recovery`, `requests`, `shared`, `clock`, `error`: recovery at open, stored
//!   transfer descriptions, shared state, time, errors.

#![warn(missing_docs)]

mod actor;
mod clock;
mod delegate;
pub mod direct;
mod error;
mod janitor;
pub mod machine;
#[cfg(feature = "postgres")]
pub mod postgres;
mod recovery;
mod registry;
mod requests;
mod runtime;
mod session;
mod sessions;
mod shared;
mod units;

pub use actor::SessionStatus;
pub use clock::{Clock, SystemClock, unix_ms};
pub use delegate::{
    AsyncDelegate, CompletionCall, CompletionHandler, Delegate, DelegateError, Delivery,
    DeliveryKey, DeliveryOptions, DownloadedFile, Event, TransactionalDelegate,
};
pub use error::{Error, Result};
pub use runtime::{ACTOR_THREAD_NAME, block_on};
pub use session::{Batch, EnqueuePolicy, Session, Task, TaskHandle};
pub use sessions::{Matching, RESTART_LIMIT_DEFAULT, Sessions, SessionsBuilder, bridge_log};

// Every type an application touches, so that it names only this crate in its
// Cargo.toml. The two crates underneath are reachable whole as `store` and `http`.
/// The transfer engine crate, for what the re-exports above do not name.
pub use session_http as http;
pub use session_http::{
    Body, EngineConfig, Limits, Method, Progress, SENSITIVE_HEADERS, TransferKind, TransferRequest,
};
/// The store crate (records over LMDB or PostgreSQL, application tables), for what the
/// re-exports above do not name.
pub use session_store as store;
pub use session_store::{
    AppTable, DeliveryFailure, DeliveryPolicy, EventBody, EventRecord, Failure, FailureReason,
    InvalidField, Outcome, ReadScope, ResponseSummary, SessionConfig, SessionId, SessionRecord,
    SessionState, Snapshot, Store, StoreOptions, StoredCompletion, TaskId, TaskKind, TaskRecord,
    TaskState, TaskWait, WaitReason, WriteScope,
};
/// Where and how to keep the records in PostgreSQL ([`SessionsBuilder::postgres`]).
#[cfg(feature = "postgres")]
pub use session_store::{PostgresOptions, SqlTransaction};
