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
    Cancel, Enqueue, Invalidate, SessionActor, SessionStatus, SetCompletion, Status, Wait, Watch,
};
use crate::error::{Error, Result};
use crate::shared::Shared;

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

    /// Adds a task with an identifier the application chooses, or reconnects to the
    /// known task with that identifier (never a second transfer). The same identifier
    /// with a different description is a conflict error.
    ///
    /// # Errors
    /// An invalid identifier or transfer description (nothing is stored), a conflict,
    /// a faulted session, a store error.
    pub async fn enqueue(&self, task: &str, request: TransferRequest) -> Result<TaskHandle> {
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
        let bytes = bincode::serialize(&request).map_err(|error| {
            Error::Store(session_store::Error::InvalidRecord {
                table: "tasks",
                key: format!("{}/{}", self.id, task),
                reason: format!("the transfer description does not encode: {error}"),
            })
        })?;
        let record = self
            .addr
            .send(Enqueue {
                task: task.clone(),
                kind,
                request: bytes,
            })
            .await
            .map_err(|_| self.gone())??;
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
        self.addr
            .send(SetCompletion {
                generation,
                completion: StoredCompletion {
                    name: name.to_owned(),
                    payload,
                },
            })
            .await
            .map_err(|_| self.gone())?
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
        self.addr.send(Invalidate).await.map_err(|_| self.gone())?
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
        self.addr.send(Status).await.map_err(|_| self.gone())?
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
            .addr
            .send(Wait {
                task: self.task.clone(),
            })
            .await
            .map_err(|_| self.session.gone())??;
        receiver.await.map_err(|_| self.session.gone())
    }

    /// Progress of the running transfer (not durable): bytes done and expected.
    ///
    /// # Errors
    /// The session's actor is gone.
    pub async fn progress(&self) -> Result<watch::Receiver<Progress>> {
        self.session
            .addr
            .send(Watch {
                task: self.task.clone(),
            })
            .await
            .map_err(|_| self.session.gone())
    }
}
