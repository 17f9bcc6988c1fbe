//! The application's handles: a [`Session`] and the [`TaskHandle`]s of its tasks.

use std::fmt;
use std::sync::Arc;

use actix::Addr;
use session_http::{Progress, TransferKind, TransferRequest};
use session_store::{
    Outcome, SessionId, SessionRecord, StoredCompletion, TaskId, TaskKind, TaskRecord,
};
use tokio::sync::watch;

use crate::actor::{
    Cancel, Enqueue, EnqueueBatch, Invalidate, SessionActor, SessionStatus, SetCompletion, Status,
    Wait, Watch,
};
use crate::error::{Error, Result};
use crate::shared::Shared;

/// How many times a request is sent when supervised restarts keep dropping its reply.
const REQUEST_ATTEMPTS_MAX: usize = 64;

/// A handle to one background session. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    id: SessionId,
    addr: Addr<SessionActor>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(id: SessionId, addr: Addr<SessionActor>, shared: Arc<Shared>) -> Self {
        Session { id, addr, shared }
    }

    /// The session's identifier.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    fn gone(&self) -> Error {
        Error::SessionGone {
            session: self.id.clone(),
        }
    }

    /// Sends a request to the session's actor. A supervised restart drops the replies
    /// in flight (actix clears the actor's futures) while the actor lives on, so the
    /// request is sent again: every request is idempotent (a repeated enqueue
    /// reconnects, a repeated completion or cancel changes nothing).
    async fn ask<M>(&self, message: M) -> Result<M::Result>
    where
        M: actix::Message + Clone + Send + 'static,
        M::Result: Send,
        SessionActor: actix::Handler<M>,
    {
        for _ in 0..REQUEST_ATTEMPTS_MAX {
            match self.addr.send(message.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(_) if self.addr.connected() => {
                    tracing::debug!(session = %self.id, "reply lost to a restart; asking again");
                }
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
            .validate(&self.shared.engine.config().limits)
            .map_err(|source| Error::InvalidTransfer {
                task: task.clone(),
                source,
            })?;
        let kind = match request.kind {
            TransferKind::Download { .. } => TaskKind::Download,
            TransferKind::Upload => TaskKind::Upload,
            TransferKind::Data => TaskKind::Data,
        };
        let bytes = bincode::serialize(request).map_err(|error| {
            Error::Store(session_store::Error::InvalidRecord {
                table: "tasks",
                key: format!("{}/{}", self.id, task),
                reason: format!("the transfer description does not encode: {error}"),
            })
        })?;
        Ok((task, kind, bytes))
    }

    /// Adds several tasks in one transaction, so that the new ones share one
    /// generation, and stores that generation's completion (by name and payload) in the
    /// same transaction. Known identifiers reconnect, as with [`Session::enqueue`], so
    /// re-issuing the whole batch after a relaunch is safe.
    ///
    /// # Errors
    /// As [`Session::enqueue`]; nothing of the batch is stored if any part is refused.
    pub async fn enqueue_batch(
        &self,
        tasks: Vec<(String, TransferRequest)>,
        completion: Option<(&str, Vec<u8>)>,
    ) -> Result<Vec<TaskHandle>> {
        let tasks = tasks
            .iter()
            .map(|(task, request)| self.describe(task, request))
            .collect::<Result<Vec<_>>>()?;
        let completion = completion.map(|(name, payload)| StoredCompletion {
            name: name.to_owned(),
            payload,
        });
        let records = self.ask(EnqueueBatch { tasks, completion }).await??;
        Ok(records
            .into_iter()
            .map(|record| TaskHandle {
                session: self.clone(),
                task: record.id,
                generation: record.generation,
            })
            .collect())
    }

    /// Adds a task with an identifier the application chooses, or reconnects to the
    /// known task with that identifier (never a second transfer). The same identifier
    /// with a different description is a conflict error.
    ///
    /// # Errors
    /// An invalid identifier or transfer description (nothing is stored), a conflict,
    /// a faulted session, a store error.
    pub async fn enqueue(&self, task: &str, request: TransferRequest) -> Result<TaskHandle> {
        let (task, kind, request) = self.describe(task, &request)?;
        let record = self
            .ask(Enqueue {
                task: task.clone(),
                kind,
                request,
            })
            .await??;
        Ok(TaskHandle {
            session: self.clone(),
            task,
            generation: record.generation,
        })
    }

    /// Stores the completion handler to run (by name, with a payload) once the given
    /// generation's tasks are all terminal and its events delivered, after "did finish
    /// events". Exactly once per generation; re-issuing it is harmless. Use the
    /// generation a [`TaskHandle`] reports.
    ///
    /// # Errors
    /// An unopened generation, a different completion already stored for it, a
    /// generation that ended without one.
    pub async fn set_completion(
        &self,
        generation: u64,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<()> {
        self.ask(SetCompletion {
            generation,
            completion: StoredCompletion {
                name: name.to_owned(),
                payload,
            },
        })
        .await?
    }

    /// Cancels a task; its event reports `Cancelled`. A finished task is left as it is.
    ///
    /// # Errors
    /// An unknown task, a store error.
    pub async fn cancel(&self, task: &str) -> Result<()> {
        let task = TaskId::new(task)?;
        self.addr
            .send(Cancel { task })
            .await
            .map_err(|_| self.gone())?
    }

    /// Cancels every task that is not finished.
    ///
    /// # Errors
    /// A store error.
    pub async fn invalidate(&self) -> Result<()> {
        self.ask(Invalidate).await?
    }

    /// The session's tasks, with their states, as committed.
    ///
    /// # Errors
    /// A store error.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>> {
        Ok(self.shared.store.snapshot()?.tasks(&self.id)?)
    }

    /// The session's persisted record.
    ///
    /// # Errors
    /// A store error.
    pub fn record(&self) -> Result<Option<SessionRecord>> {
        Ok(self.shared.store.snapshot()?.session(&self.id)?)
    }

    /// The persisted record plus this process's view: restarts, faulted, blocked.
    ///
    /// # Errors
    /// A store error, or the actor is gone.
    pub async fn status(&self) -> Result<SessionStatus> {
        self.ask(Status).await?
    }

    /// A handle to a known task (for example after a restart).
    ///
    /// # Errors
    /// An invalid identifier, an unknown task, a store error.
    pub fn task(&self, task: &str) -> Result<TaskHandle> {
        let task = TaskId::new(task)?;
        let record = self
            .shared
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

/// A handle to one task, for callers that wait in-process.
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
            .await??;
        receiver.await.map_err(|_| self.session.gone())
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
