//! The application's handles: a [`Session`], the [`TaskHandle`]s of its tasks, a
//! [`Batch`] enqueued together, and [`Task`], a task as committed.

use std::fmt;

use actix::Addr;
use session_http::{Progress, TransferKind, TransferRequest};
use session_store::{
    Outcome, SessionId, SessionRecord, StoredCompletion, TaskId, TaskKind, TaskRecord, TaskState,
    TaskWait,
};
use tokio::sync::watch;

use crate::actor::{
    Cancel, Enqueue, EnqueueBatch, Forget, Invalidate, Redeliver, Resume, RetryNow, SessionActor,
    SessionStatus, SetCompletion, Status, Wait, WaitGeneration, Watch,
};
use crate::error::{Error, Result};
use crate::requests;
use crate::sessions::Sessions;

/// How many times a request is sent when supervised restarts keep dropping its reply.
const REQUEST_ATTEMPTS_MAX: usize = 64;

/// A handle to one background session. Cheap to clone, `Send` and `Sync`; every future
/// it returns is `Send`.
#[derive(Clone)]
pub struct Session {
    id: SessionId,
    sessions: Sessions,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(id: SessionId, sessions: Sessions) -> Self {
        Session { id, sessions }
    }

    /// The session's actor, started if it has none (an idle session's actor retires).
    fn addr(&self) -> Addr<SessionActor> {
        let shared = self.sessions.shared();
        shared.registry.actor(shared, &self.id, None)
    }

    /// The session's identifier.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    fn gone(&self) -> Error {
        if self.sessions.is_open() {
            Error::SessionGone {
                session: self.id.clone(),
            }
        } else {
            Error::ShutDown
        }
    }

    /// Sends a request to the session's actor. A supervised restart drops the replies
    /// in flight (actix clears the actor's futures) while the actor lives on, and an
    /// actor that retired (its session went idle) refuses what still reaches it, so the
    /// request is sent again, to the session's actor of the moment: every request is
    /// idempotent (a repeated enqueue reconnects, a repeated completion or cancel changes
    /// nothing).
    async fn ask<T, M>(&self, message: M) -> Result<T>
    where
        M: actix::Message<Result = Result<T, Error>> + Clone + Send + 'static,
        T: Send + 'static,
        SessionActor: actix::Handler<M>,
    {
        self.sessions.check_open()?;
        for _ in 0..REQUEST_ATTEMPTS_MAX {
            let request = self.addr().send(message.clone());
            match request.await {
                Ok(Err(Error::SessionGone { .. })) | Err(_) if self.sessions.is_open() => {
                    tracing::debug!(session = %self.id, "the actor restarted or retired; asking again");
                    yield_once().await;
                }
                Ok(reply) => return reply,
                Err(_) => break,
            }
        }
        Err(self.gone())
    }

    fn describe(
        &self,
        task: &str,
        request: &TransferRequest,
    ) -> Result<(TaskId, TaskKind, Vec<u8>)> {
        let task = TaskId::new(task)?;
        request
            .validate(&self.sessions.shared().engine.config().limits)
            .map_err(|source| Error::InvalidTransfer {
                task: task.clone(),
                source,
            })?;
        let kind = match request.kind {
            TransferKind::Download { .. } => TaskKind::Download,
            TransferKind::Upload => TaskKind::Upload,
            TransferKind::Data => TaskKind::Data,
        };
        let bytes = requests::encode(request).map_err(|reason| {
            Error::Store(session_store::Error::InvalidRecord {
                table: "tasks",
                key: format!("{}/{}", self.id, task),
                reason,
            })
        })?;
        Ok((task, kind, bytes))
    }

    /// A completion to store: its name must be valid and registered in this process
    /// (else it could never run here, and the session would wait for it).
    fn completion(&self, name: &str, payload: Vec<u8>) -> Result<StoredCompletion> {
        let invalid = |reason: String| Error::InvalidCompletion {
            name: name.to_owned(),
            reason,
        };
        session_store::validate_completion_name(name).map_err(|error| invalid(error.reason))?;
        if !self.sessions.shared().has_completion(name) {
            return Err(invalid(
                "no completion handler of this name is registered with these Sessions".into(),
            ));
        }
        let completion = StoredCompletion {
            name: name.to_owned(),
            payload,
        };
        completion.validate().map_err(invalid)?;
        Ok(completion)
    }

    /// Adds several tasks in one transaction, with the completion to run (by name and
    /// payload) once every task of the batch has been delivered, in the same
    /// transaction. Known identifiers reconnect, as with [`Session::enqueue`], so
    /// re-issuing the whole batch after a relaunch is safe and stores nothing twice.
    ///
    /// Which generation the batch belongs to: if the session's current generation is
    /// still running (some task not terminal), the batch joins it and its completion is
    /// added to the generation's completions; otherwise the batch opens the next
    /// generation. Either way its completion runs exactly once, after the generation's
    /// "did finish events", which comes after every event of the batch. A batch whose
    /// tasks are all known already and whose generation has ended stores nothing new:
    /// its completion was stored with those tasks the first time. An empty batch with a
    /// completion joins the running generation, or opens one that ends at once.
    ///
    /// # Errors
    /// As [`Session::enqueue`], and [`Error::InvalidCompletion`] for a completion name
    /// that is invalid or not registered; nothing of the batch is stored if any part is
    /// refused.
    pub async fn enqueue_batch(
        &self,
        tasks: Vec<(String, TransferRequest)>,
        completion: Option<(&str, Vec<u8>)>,
    ) -> Result<Batch> {
        self.enqueue_batch_with(tasks, completion, EnqueuePolicy::Keep)
            .await
    }

    /// [`Session::enqueue_batch`] with a policy for known identifiers (see
    /// [`EnqueuePolicy`]).
    ///
    /// # Errors
    /// As [`Session::enqueue_batch`].
    pub async fn enqueue_batch_with(
        &self,
        tasks: Vec<(String, TransferRequest)>,
        completion: Option<(&str, Vec<u8>)>,
        policy: EnqueuePolicy,
    ) -> Result<Batch> {
        let tasks = tasks
            .iter()
            .map(|(task, request)| self.describe(task, request))
            .collect::<Result<Vec<_>>>()?;
        let completion = completion
            .map(|(name, payload)| self.completion(name, payload))
            .transpose()?;
        let replace = policy == EnqueuePolicy::Replace;
        let (generation, records) = self
            .ask(EnqueueBatch {
                tasks,
                completion,
                replace,
            })
            .await?;
        Ok(Batch {
            generation,
            tasks: records
                .into_iter()
                .map(|record| TaskHandle {
                    session: self.clone(),
                    task: record.id,
                    generation: record.generation,
                })
                .collect(),
            session: self.clone(),
        })
    }

    /// Adds a task with an identifier the application chooses, or reconnects to the
    /// known task with that identifier (never a second transfer). The same identifier
    /// with a different description is a conflict error.
    ///
    /// # Errors
    /// An invalid identifier or transfer description (nothing is stored), a conflict,
    /// a faulted session, a store error, [`Error::ShutDown`].
    pub async fn enqueue(&self, task: &str, request: TransferRequest) -> Result<TaskHandle> {
        self.enqueue_with(task, request, EnqueuePolicy::Keep).await
    }

    /// [`Session::enqueue`] with a policy for a known identifier (see [`EnqueuePolicy`]).
    ///
    /// # Errors
    /// As [`Session::enqueue`]; with [`EnqueuePolicy::Keep`], a known identifier with a
    /// different description is a conflict naming the fields that differ.
    pub async fn enqueue_with(
        &self,
        task: &str,
        request: TransferRequest,
        policy: EnqueuePolicy,
    ) -> Result<TaskHandle> {
        let (task, kind, request) = self.describe(task, &request)?;
        let record = self
            .ask(Enqueue {
                task: task.clone(),
                kind,
                request,
                replace: policy == EnqueuePolicy::Replace,
            })
            .await?;
        Ok(TaskHandle {
            session: self.clone(),
            task,
            generation: record.generation,
        })
    }

    /// Stores a completion handler to run (by name, with a payload) once the given
    /// generation's tasks are all terminal and its events delivered, after "did finish
    /// events". Exactly once per completion; giving the same one again is harmless. Use
    /// the generation a [`TaskHandle`] or [`Batch`] reports.
    ///
    /// # Errors
    /// A name that is invalid or not registered, an unopened generation, a generation
    /// that ended before a later one began, too many completions for one generation.
    pub async fn set_completion(
        &self,
        generation: u64,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<()> {
        let completion = self.completion(name, payload)?;
        self.ask(SetCompletion {
            generation,
            completion,
        })
        .await
    }

    /// Cancels a task; its event reports `Cancelled`. A finished task is left as it is.
    ///
    /// # Errors
    /// An unknown task, a store error.
    pub async fn cancel(&self, task: &str) -> Result<()> {
        let task = TaskId::new(task)?;
        self.ask(Cancel { task }).await
    }

    /// Cancels every task that is not finished.
    ///
    /// # Errors
    /// A store error.
    pub async fn invalidate(&self) -> Result<()> {
        self.ask(Invalidate).await
    }

    /// The session's tasks as committed, with their transfer descriptions decoded, in
    /// task identifier order.
    ///
    /// # Errors
    /// A store error, or a description that does not decode.
    pub fn tasks(&self) -> Result<Vec<Task>> {
        self.sessions.check_open()?;
        let records = self.sessions.shared().store.snapshot()?.tasks(&self.id)?;
        records.into_iter().map(Task::from_record).collect()
    }

    /// The session's persisted record.
    ///
    /// # Errors
    /// A store error.
    pub fn record(&self) -> Result<Option<SessionRecord>> {
        self.sessions.check_open()?;
        Ok(self.sessions.shared().store.snapshot()?.session(&self.id)?)
    }

    /// The persisted record plus this process's view: restarts, faulted, blocked.
    ///
    /// # Errors
    /// A store error, or the actor is gone.
    pub async fn status(&self) -> Result<SessionStatus> {
        self.ask(Status).await
    }

    /// Tries a failed delivery again at once, whatever its backoff said (and a delivery
    /// blocked on an unknown completion name). Delivery also resumes by itself.
    ///
    /// # Errors
    /// The session's actor is gone, [`Error::ShutDown`].
    pub async fn retry_now(&self) -> Result<()> {
        self.ask(RetryNow).await
    }

    /// Takes a session parked after too many supervised restarts back into service,
    /// without restarting the process: it reloads from the store and goes on.
    ///
    /// # Errors
    /// The session's actor is gone, [`Error::ShutDown`].
    pub async fn resume(&self) -> Result<()> {
        self.ask(Resume).await
    }

    /// Forgets a finished task whose event was delivered, before its retention ends;
    /// its identifier is then free (enqueueing it again runs it again).
    ///
    /// # Errors
    /// [`MachineError::NotForgettable`](crate::machine::MachineError::NotForgettable) for
    /// a task that is open or whose event is undelivered; an unknown task; a store error.
    pub async fn forget(&self, task: &str) -> Result<()> {
        let task = TaskId::new(task)?;
        self.ask(Forget { task }).await
    }

    /// The session's dead-lettered events (moved there under a dead-letter
    /// [`DeliveryPolicy`](crate::DeliveryPolicy)), oldest first, up to `limit`.
    ///
    /// # Errors
    /// A store error.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<session_store::DeadLetterRecord>> {
        self.sessions.check_open()?;
        Ok(self
            .sessions
            .shared()
            .store
            .snapshot()?
            .dead_letters(&self.id, 0, limit)?)
    }

    /// Delivers a dead-lettered event again, with its original delivery key: on success
    /// it leaves the dead-letter list in the transaction of the delivery (exactly once
    /// with a transactional delegate, at least once with an async one).
    ///
    /// # Errors
    /// [`Error::NoDeadLetter`], the delegate's refusal ([`Error::Delegate`]; the event
    /// stays a dead letter), no delegate attached, a store error.
    pub async fn redeliver(&self, seq: u64) -> Result<()> {
        self.ask(Redeliver { seq }).await
    }

    /// Resolves once `generation` has ended: every task of it is terminal and every
    /// event of it (its "did finish events" and completions included) has been
    /// delivered. At once for a generation that ended already, so no service polls.
    ///
    /// # Errors
    /// A generation that has not been opened yet, a store error, the session's actor
    /// gone, [`Error::ShutDown`].
    pub async fn finished(&self, generation: u64) -> Result<()> {
        let receiver = self.ask(WaitGeneration { generation }).await?;
        receiver.await.map_err(|_| self.gone())
    }

    /// A handle to a known task (for example after a restart).
    ///
    /// # Errors
    /// An invalid identifier, an unknown task, a store error.
    pub fn task(&self, task: &str) -> Result<TaskHandle> {
        self.sessions.check_open()?;
        let task = TaskId::new(task)?;
        let record = self
            .sessions
            .shared()
            .store
            .snapshot()?
            .task(&self.id, &task)?
            .ok_or_else(|| Error::Refused {
                session: self.id.clone(),
                source: crate::machine::MachineError::UnknownTask { task: task.clone() },
            })?;
        Ok(TaskHandle {
            session: self.clone(),
            task,
            generation: record.generation,
        })
    }
}

/// What enqueueing a task identifier the session already knows means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnqueuePolicy {
    /// The same description reconnects to the known task, whatever its state (a
    /// finished one is not run again while it is kept); a different description is
    /// refused with [`MachineError::TaskConflict`](crate::machine::MachineError::TaskConflict),
    /// which names the fields that differ. Re-issuing everything after a relaunch is safe.
    #[default]
    Keep,
    /// A different description replaces the known task: an open one is cancelled (its
    /// `Cancelled` event is delivered, its partial file removed) and the new description
    /// starts under the same identifier, with its own file. The same description still
    /// reconnects, except to a cancelled task, which runs again. Replacing the generation's
    /// last open task ends that generation; the new task opens the next.
    Replace,
}

/// Tasks enqueued together with [`Session::enqueue_batch`]: the generation they belong
/// to and a handle to each.
#[derive(Debug, Clone)]
pub struct Batch {
    generation: u64,
    tasks: Vec<TaskHandle>,
    session: Session,
}

impl Batch {
    /// The generation the batch belongs to (its completion runs at that generation's end).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A handle to each task of the batch, in the order given.
    pub fn tasks(&self) -> &[TaskHandle] {
        &self.tasks
    }

    /// Resolves once the batch's generation has ended (see [`Session::finished`]).
    ///
    /// # Errors
    /// As [`Session::finished`].
    pub async fn finished(&self) -> Result<()> {
        self.session.finished(self.generation).await
    }
}

/// A handle to one task, for callers that wait in-process. Cheap to clone, `Send` and
/// `Sync`.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    session: Session,
    task: TaskId,
    generation: u64,
}

impl TaskHandle {
    /// The task's identifier.
    pub fn id(&self) -> &TaskId {
        &self.task
    }

    /// The generation the task belongs to (for [`Session::set_completion`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The session the task belongs to.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Waits for the task's classified outcome: success (with the response and, for a
    /// download, the file), rejected, failed (retries exhausted, deadline, ...) or
    /// cancelled. Resolves at once for a task that has finished.
    ///
    /// # Errors
    /// The session's actor is gone, or a store error.
    pub async fn outcome(&self) -> Result<Outcome> {
        let receiver = self
            .session
            .ask(Wait {
                task: self.task.clone(),
            })
            .await?;
        receiver.await.map_err(|_| self.session.gone())
    }

    /// The task's state as committed.
    ///
    /// # Errors
    /// A store error; [`Error::Refused`] if the task no longer exists.
    pub fn state(&self) -> Result<TaskState> {
        self.session.sessions.check_open()?;
        self.session
            .sessions
            .shared()
            .store
            .snapshot()?
            .task(self.session.id(), &self.task)?
            .map(|record| record.state)
            .ok_or_else(|| Error::Refused {
                session: self.session.id().clone(),
                source: crate::machine::MachineError::UnknownTask {
                    task: self.task.clone(),
                },
            })
    }

    /// Cancels the task (see [`Session::cancel`]).
    ///
    /// # Errors
    /// As [`Session::cancel`].
    pub async fn cancel(&self) -> Result<()> {
        self.session.cancel(self.task.as_str()).await
    }

    /// Progress of the running transfer (not durable): bytes done and expected.
    ///
    /// # Errors
    /// The session's actor is gone.
    pub async fn progress(&self) -> Result<watch::Receiver<Progress>> {
        self.session
            .ask(Watch {
                task: self.task.clone(),
            })
            .await
    }
}

/// A task as committed, with its transfer description decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's identifier.
    pub id: TaskId,
    /// The generation it was enqueued in.
    pub generation: u64,
    /// Download, upload or data.
    pub kind: TaskKind,
    /// What it transfers (its `Debug` hides credentials and URL queries).
    pub request: TransferRequest,
    /// When it was enqueued, Unix milliseconds.
    pub created_ms: u64,
    /// Where it is.
    pub state: TaskState,
    /// What a pending task waits for, if it waits for connectivity or storage.
    pub wait: Option<TaskWait>,
}

impl Task {
    pub(crate) fn from_record(record: TaskRecord) -> Result<Task> {
        let request = requests::decode(&record.request).map_err(|reason| {
            Error::Store(session_store::Error::Corrupt {
                table: "tasks",
                key: format!("{}/{}", record.session, record.id),
                reason,
            })
        })?;
        Ok(Task {
            id: record.id,
            generation: record.generation,
            kind: record.kind,
            request,
            created_ms: record.created_ms,
            state: record.state,
            wait: record.wait,
        })
    }
}

// The handles services move across threads and await in tokio tasks (axum handlers):
// checked when this crate compiles, so a change that breaks it cannot land.
const _: () = {
    const fn clone_send_sync<T: Clone + Send + Sync>() {}
    clone_send_sync::<Sessions>();
    clone_send_sync::<Session>();
    clone_send_sync::<TaskHandle>();
    clone_send_sync::<Batch>();
};

/// Every future a handle returns is `Send` (never called; it only has to compile).
#[allow(dead_code)]
fn futures_are_send(
    sessions: &Sessions,
    session: &Session,
    task: &TaskHandle,
    batch: &Batch,
    delegate: crate::Delegate,
) {
    fn send<T: Send>(_: T) {}
    send(sessions.session("s", session_store::SessionConfig::default(), delegate));
    send(sessions.shutdown());
    let request = || TransferRequest::download("http://127.0.0.1/");
    send(session.enqueue("t", request()));
    send(session.enqueue_batch(vec![("t".into(), request())], Some(("c", Vec::new()))));
    send(session.set_completion(1, "c", Vec::new()));
    send(session.cancel("t"));
    send(session.invalidate());
    send(session.status());
    send(session.finished(1));
    send(task.outcome());
    send(task.cancel());
    send(task.progress());
    send(batch.finished());
}

/// Lets other work run once before asking again (no runtime needed: pending once, woken
/// at once).
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}
