//! What the application implements to receive events, and what it receives.
//!
//! Two kinds of delegate:
//! - [`TransactionalDelegate`]: exactly once. It is called on the store's writer thread
//!   with the write scope of the unit that advances the delivery cursor, so whatever it
//!   writes to application tables commits together with "this event was delivered". If
//!   the process dies before the commit, neither happened and the event comes again.
//! - [`AsyncDelegate`]: **at least once**. It runs outside the store (a network call,
//!   say), so a crash after it returned and before the cursor committed delivers the
//!   event again. Every event carries a stable [`DeliveryKey`] so the receiver can drop
//!   duplicates; exactly-once is impossible in general without that.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use session_store::{Outcome, SessionId, TaskId, TaskKind, WriteScope};

/// The stable identity of one delivery: the same event always has the same key, in
/// every process that delivers it, and no two events of one store share a key (a session
/// removed and created again under the same identifier numbers on from where the removed
/// one stopped). A new store (a new root directory) starts again from the first keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey {
    /// The session.
    pub session: SessionId,
    /// The generation the event belongs to.
    pub generation: u64,
    /// The event's sequence number in the session.
    pub seq: u64,
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.session, self.generation, self.seq)
    }
}

/// A downloaded file handed to the delegate. It exists while the delegate runs and is
/// removed after the delivery has committed; [`DownloadedFile::keep_as`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedFile {
    path: PathBuf,
}

impl DownloadedFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        DownloadedFile { path }
    }

    /// Where the file is now (inside the session's download directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the file at `destination`: a hard link (a copy across file systems).
    /// Idempotent, so it is safe when a delivery is repeated after a crash: if
    /// `destination` already is this file (or a complete copy of it), nothing happens.
    ///
    /// # Errors
    /// Any I/O error other than those cases.
    pub fn keep_as(&self, destination: impl AsRef<Path>) -> io::Result<()> {
        keep_as(&self.path, destination.as_ref())
    }
}

fn keep_as(source: &Path, destination: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let source_meta = std::fs::metadata(source)?;
    if let Ok(existing) = std::fs::metadata(destination)
        && existing.dev() == source_meta.dev()
        && existing.ino() == source_meta.ino()
    {
        return Ok(());
    }
    // Build the copy or link beside the destination, then rename over it: a crash
    // leaves either nothing or the whole file at `destination`.
    let mut staging = destination.as_os_str().to_owned();
    staging.push(".keep-partial");
    let staging = PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    match std::fs::hard_link(source, &staging) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(18 /* EXDEV */) => {
            std::fs::copy(source, &staging)?;
            std::fs::File::open(&staging)?.sync_all()?;
        }
        Err(error) => return Err(error),
    }
    std::fs::rename(&staging, destination)?;
    if let Some(parent) = destination.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// What happened, as the delegate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A task reached its outcome.
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// Download, upload or data.
        kind: TaskKind,
        /// How it ended.
        outcome: Outcome,
        /// For a successful download: the file.
        file: Option<DownloadedFile>,
    },
    /// Every task of the generation is terminal and every one of its events has been
    /// delivered ("did finish events").
    DidFinishEvents,
}

/// One event on its way to the delegate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stable key of this delivery.
    pub key: DeliveryKey,
    /// The event.
    pub event: Event,
}

/// A delegate's refusal; the event is not marked delivered and comes again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DelegateError(pub String);

impl DelegateError {
    /// A refusal with a message.
    pub fn new(message: impl Into<String>) -> Self {
        DelegateError(message.into())
    }
}

/// So `?` works on application-table calls inside a delegate or completion handler.
impl From<session_store::Error> for DelegateError {
    fn from(error: session_store::Error) -> Self {
        DelegateError(error.to_string())
    }
}

/// So `?` works on file operations (such as [`DownloadedFile::keep_as`]) inside a delegate.
impl From<io::Error> for DelegateError {
    fn from(error: io::Error) -> Self {
        DelegateError(error.to_string())
    }
}

/// Receives events exactly once, inside the transaction that records the delivery.
///
/// Called on the store's writer thread: keep it short and synchronous, and make every
/// effect through `scope` (application tables) so it commits with the delivery. A panic
/// or an error aborts only this delivery; the session restarts and delivers it again.
pub trait TransactionalDelegate: Send + Sync + 'static {
    /// Handles one event.
    ///
    /// # Errors
    /// A [`DelegateError`] leaves the event undelivered.
    fn deliver(&self, delivery: &Delivery, scope: &mut WriteScope<'_>)
    -> Result<(), DelegateError>;
}

/// Receives events at least once, outside any transaction. Deduplicate by
/// [`Delivery::key`]: after a crash between your return and the commit of the delivery
/// cursor, the same event (same key) is delivered again.
pub trait AsyncDelegate: Send + Sync + 'static {
    /// Handles one event.
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Result<(), DelegateError>>;
}

/// The delegate a session delivers to.
#[derive(Clone)]
pub enum Delegate {
    /// Exactly once, inside the delivery's transaction.
    Transactional(Arc<dyn TransactionalDelegate>),
    /// At least once, with a stable delivery key per event.
    AtLeastOnce(Arc<dyn AsyncDelegate>),
}

impl fmt::Debug for Delegate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delegate::Transactional(_) => f.write_str("Delegate::Transactional"),
            Delegate::AtLeastOnce(_) => f.write_str("Delegate::AtLeastOnce"),
        }
    }
}

impl Delegate {
    /// A transactional (exactly-once) delegate.
    pub fn transactional(delegate: impl TransactionalDelegate) -> Self {
        Delegate::Transactional(Arc::new(delegate))
    }

    /// An at-least-once delegate.
    pub fn at_least_once(delegate: impl AsyncDelegate) -> Self {
        Delegate::AtLeastOnce(Arc::new(delegate))
    }
}

impl<F> TransactionalDelegate for F
where
    F: Fn(&Delivery, &mut WriteScope<'_>) -> Result<(), DelegateError> + Send + Sync + 'static,
{
    fn deliver(
        &self,
        delivery: &Delivery,
        scope: &mut WriteScope<'_>,
    ) -> Result<(), DelegateError> {
        self(delivery, scope)
    }
}

/// An async closure is an at-least-once delegate:
/// `Delegate::at_least_once(|delivery: Delivery| async move { ...; Ok(()) })`.
impl<F, Fut> AsyncDelegate for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), DelegateError>> + Send + 'static,
{
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Result<(), DelegateError>> {
        Box::pin(self(delivery))
    }
}

/// The call of a stored completion handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionCall {
    /// The delivery key of the completion's event (unique per generation).
    pub key: DeliveryKey,
    /// The handler's name.
    pub name: String,
    /// The payload stored with it.
    pub payload: Vec<u8>,
}

/// A named completion handler, registered when `Sessions` is built. It runs exactly
/// once per generation that stored it, after "did finish events", inside the
/// transaction that records that it ran.
pub trait CompletionHandler: Send + Sync + 'static {
    /// Runs the handler.
    ///
    /// # Errors
    /// A [`DelegateError`] leaves it to run again.
    fn run(&self, call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError>;
}

impl<F> CompletionHandler for F
where
    F: Fn(&CompletionCall, &mut WriteScope<'_>) -> Result<(), DelegateError>
        + Send
        + Sync
        + 'static,
{
    fn run(&self, call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
        self(call, scope)
    }
}

/// How deliveries are paced and bounded, for every session of one `Sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// The time one delivery unit may hold the store's writer, milliseconds: a unit takes
    /// no further event once it is spent (it always delivers at least one), and a unit
    /// that ran over makes its session wait as long before the next, so a slow
    /// transactional delegate slows its own session, not every session's writes.
    pub unit_budget_ms: u64,
    /// A delegate or completion call that takes at least this long, milliseconds, is
    /// logged, counted and shown in the session's status ([`crate::SessionStatus`]).
    pub slow_call_ms: u64,
    /// The longest an [`AsyncDelegate`] call may take, milliseconds; past it the
    /// delivery counts as failed and is retried under the session's delivery policy.
    pub async_timeout_ms: u64,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            unit_budget_ms: 50,
            slow_call_ms: 1_000,
            async_timeout_ms: 60_000,
        }
    }
}

impl DeliveryOptions {
    /// The longest `async_timeout_ms` accepted (a day).
    pub const ASYNC_TIMEOUT_MS_LIMIT: u64 = 24 * 3600 * 1000;

    /// Checks the options; the error names the field.
    ///
    /// # Errors
    /// The first field with an unusable value.
    pub fn validate(&self) -> Result<(), session_store::InvalidField> {
        let invalid = |field, reason: String| Err(session_store::InvalidField { field, reason });
        if self.unit_budget_ms == 0 || self.unit_budget_ms > 60_000 {
            return invalid(
                "unit_budget_ms",
                format!("{} is outside 1..=60000", self.unit_budget_ms),
            );
        }
        if self.slow_call_ms == 0 {
            return invalid("slow_call_ms", "is 0".into());
        }
        if self.async_timeout_ms == 0 || self.async_timeout_ms > Self::ASYNC_TIMEOUT_MS_LIMIT {
            return invalid(
                "async_timeout_ms",
                format!(
                    "{} is outside 1..={}",
                    self.async_timeout_ms,
                    Self::ASYNC_TIMEOUT_MS_LIMIT
                ),
            );
        }
        Ok(())
    }
}
