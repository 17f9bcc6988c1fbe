//! The actix System the session actors live on, on a thread this crate owns.
//!
//! Services run on tokio (`#[tokio::main]`, axum, tonic), on a current-thread runtime, on
//! no runtime at all, or inside an actix System of their own. None of those is a place an
//! actix actor can be started from another thread, so `Sessions` always starts its own
//! System: one thread, one current-thread tokio runtime with its `LocalSet`, where every
//! session actor, its supervisor, its timers and its transfers run. What the application
//! holds (`Sessions`, `Session`, `TaskHandle`) only sends messages to it (`Addr` is
//! `Send`), and the futures it awaits are channel waits that need no particular runtime.
//!
//! [`block_on`] drives such a future on the calling thread with nothing but std, for a
//! plain synchronous `main`.

use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread, ThreadId};

use actix_rt::{ArbiterHandle, System};
use session_http::{Engine, EngineConfig};

use crate::error::{Error, Result};

/// The name of the thread the actors run on (it shows in debuggers and `top -H`).
pub const ACTOR_THREAD_NAME: &str = "bgsession-actors";

/// The System's thread and the handles that reach it.
pub(crate) struct ActorRuntime {
    system: System,
    arbiter: ArbiterHandle,
    thread_id: ThreadId,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ActorRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorRuntime")
            .field("thread", &self.thread_id)
            .finish_non_exhaustive()
    }
}

impl ActorRuntime {
    /// Starts the thread, its runtime and System, and builds the transfer engine on it
    /// (reqwest's connection pool belongs to the runtime that drives its requests).
    pub(crate) fn start(engine: EngineConfig) -> Result<(ActorRuntime, Engine)> {
        let (sender, receiver) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(ACTOR_THREAD_NAME.into())
            .spawn(move || run_system(engine, &sender))
            .map_err(|error| Error::Runtime {
                reason: format!("cannot start the actor thread: {error}"),
            })?;
        let thread_id = thread.thread().id();
        let started = receiver.recv().map_err(|_| Error::Runtime {
            reason: "the actor thread ended before its System started".into(),
        });
        let (system, arbiter, engine) = match started.and_then(|started| started) {
            Ok(started) => started,
            Err(error) => {
                let _ = thread.join();
                return Err(error);
            }
        };
        let runtime = ActorRuntime {
            system,
            arbiter,
            thread_id,
            thread: Mutex::new(Some(thread)),
        };
        Ok((runtime, engine))
    }

    /// Where actors are started.
    pub(crate) fn arbiter(&self) -> &ArbiterHandle {
        &self.arbiter
    }

    /// Whether the caller runs on the actor thread (inside an actor, a transfer, an async
    /// delegate): waiting there for the thread to end would wait forever.
    pub(crate) fn is_current_thread(&self) -> bool {
        thread::current().id() == self.thread_id
    }

    /// Asks the System to stop: its actors, timers and transfers are dropped (transfers
    /// resume from the store at the next launch).
    pub(crate) fn stop(&self) {
        self.system.stop();
    }

    /// Waits for the actor thread to end (after [`ActorRuntime::stop`]). Idempotent.
    pub(crate) fn join(&self) -> Result<()> {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread {
            Some(thread) if thread.thread().id() == thread::current().id() => Ok(()),
            Some(thread) => thread.join().map_err(|_| Error::Runtime {
                reason: "the actor thread panicked".into(),
            }),
            None => Ok(()),
        }
    }
}

type Started = Result<(System, ArbiterHandle, Engine)>;

/// The actor thread's body: build the runtime and System, report, run until stopped.
fn run_system(engine: EngineConfig, started: &mpsc::SyncSender<Started>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(Error::Runtime {
                reason: format!("cannot build the actor thread's tokio runtime: {error}"),
            }));
            return;
        }
    };
    let runner = System::with_tokio_rt(move || runtime);
    let engine = match runner.block_on(async move { Engine::new(engine) }) {
        Ok(engine) => engine,
        Err(error) => {
            let _ = started.send(Err(Error::Engine(error)));
            return;
        }
    };
    let system = System::current();
    let arbiter = system.arbiter().clone();
    if started.send(Ok((system, arbiter, engine))).is_err() {
        return;
    }
    if let Err(error) = runner.run() {
        tracing::error!(%error, "the actor System ended with an error");
    }
    tracing::debug!("the actor System stopped");
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the calling thread, with nothing but std: for a plain
/// synchronous `main` that awaits what `Sessions` returns. Any executor works as well
/// (tokio, actix, `futures::executor`); this one needs no dependency.
///
/// Do not call it from inside an async runtime's task (it blocks that thread) or from a
/// delegate.
///
/// ```no_run
/// # fn main() -> session_actor::Result<()> {
/// let sessions = session_actor::Sessions::builder("/tmp/bgsession-sync").open()?;
/// session_actor::block_on(sessions.shutdown())?;
/// # Ok(()) }
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        thread::park();
    }
}
