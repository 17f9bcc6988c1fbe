//! The messages a session actor handles.

use actix::prelude::*;
use session_http::Progress;
use session_store::{
    DeliveryFailure, Outcome, SessionRecord, StoredCompletion, TaskId, TaskKind, TaskRecord,
};
use tokio::sync::{oneshot, watch};

use super::SessionActor;
use crate::delegate::Delegate;
use crate::error::{Error, UnitError};
use crate::machine::{Input, Transition};
use crate::units::run_input;

/// Add a task or reconnect to it; replies with its record after the commit.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TaskRecord, Error>")]
pub(crate) struct Enqueue {
    pub(crate) task: TaskId,
    pub(crate) kind: TaskKind,
    pub(crate) request: Vec<u8>,
    pub(crate) replace: bool,
}

/// Add several tasks in one unit (so new ones share one generation), and optionally
/// store the completion of the generation they land in, in the same unit. Replies with
/// that generation and the task records.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(u64, Vec<TaskRecord>), Error>")]
pub(crate) struct EnqueueBatch {
    pub(crate) tasks: Vec<(TaskId, TaskKind, Vec<u8>)>,
    pub(crate) completion: Option<StoredCompletion>,
    pub(crate) replace: bool,
}

/// Store a completion for a generation.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct SetCompletion {
    pub(crate) generation: u64,
    pub(crate) completion: StoredCompletion,
}

/// Cancel one task.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Cancel {
    pub(crate) task: TaskId,
}

/// Cancel every open task.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Invalidate;

/// Ask to be told a task's outcome.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<oneshot::Receiver<Outcome>, Error>")]
pub(crate) struct Wait {
    pub(crate) task: TaskId,
}

/// Ask to be told when a generation has ended (all its events delivered).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<oneshot::Receiver<()>, Error>")]
pub(crate) struct WaitGeneration {
    pub(crate) generation: u64,
}

/// Ask for a task's progress channel.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<watch::Receiver<Progress>, Error>")]
pub(crate) struct Watch {
    pub(crate) task: TaskId,
}

/// Attach (or replace) the delegate; delivery starts or resumes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SetDelegate(pub(crate) Delegate);

/// Try delivering again (a completion handler was registered).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Poke;

/// Where the session is, for a person or a test.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionStatus, Error>")]
pub(crate) struct Status;

/// A session's persisted record and its health in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The persisted record (`None` before the session has been opened).
    pub record: Option<SessionRecord>,
    /// Supervised restarts in this process.
    pub restarts: u32,
    /// Why the session is parked, if it is.
    pub faulted: Option<String>,
    /// Why delivery waits, if it does (an unknown completion name).
    pub delivery_blocked: Option<String>,
    /// Whether a delegate is attached.
    pub has_delegate: bool,
    /// The delivery that keeps failing, if one does: the event, failing since when, how
    /// many attempts, the last error and when the next attempt is due (from the record).
    pub delivery_failure: Option<DeliveryFailure>,
    /// Delegate or completion calls at or over the slow-call threshold in this process.
    pub slow_deliveries: u64,
    /// The slowest of them, milliseconds.
    pub slowest_delivery_ms: u64,
    /// Since when (Unix milliseconds) the session's writes are refused because the
    /// store's disk is full; it tries again by itself.
    pub storage_full_since_ms: Option<u64>,
}

/// Try a failed delivery again now (`Session::retry_now`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct RetryNow;

/// Take a parked session back into service (`Session::resume`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Resume;

/// Take the session out of service for good (`Sessions::remove_session`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct Retire;

/// Deliver a dead-lettered event again (`Session::redeliver`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Redeliver {
    pub(crate) seq: u64,
}

/// Forget a finished task (`Session::forget`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Forget {
    pub(crate) task: TaskId,
}

impl SessionActor {
    /// A retired actor sends every request on (to the session's actor of the moment); a
    /// parked one refuses work.
    fn refuse_if_faulted(&self) -> Result<(), Error> {
        if self.retired {
            return Err(self.gone());
        }
        match &self.faulted {
            Some(reason) => Err(Error::Faulted {
                session: self.id.clone(),
                restarts: self.restarts,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Submits an input for a message and replies once its transition is performed.
    fn reply_with<T: 'static>(
        &mut self,
        input: Input,
        reply: impl FnOnce(&Transition) -> T + 'static,
    ) -> ResponseActFuture<Self, Result<T, Error>> {
        if let Err(error) = self.refuse_if_faulted() {
            return Box::pin(actix::fut::ready(Err(error)));
        }
        Box::pin(self.submit(input).map(move |result, act, ctx| {
            let transition = result?;
            act.perform(&transition, ctx);
            Ok(reply(&transition))
        }))
    }
}

impl Handler<Enqueue> for SessionActor {
    type Result = ResponseActFuture<Self, Result<TaskRecord, Error>>;

    fn handle(&mut self, message: Enqueue, _: &mut Self::Context) -> Self::Result {
        let task = message.task.clone();
        let input = Input::Enqueue {
            task: message.task,
            kind: message.kind,
            request: message.request,
            replace: message.replace,
        };
        let store = self.shared.store.clone();
        let session = self.id.clone();
        let reply = self.reply_with(input, move |transition| {
            transition
                .tasks
                .iter()
                .find(|t| t.id == task)
                .cloned()
                .ok_or(task)
        });
        // A reconnect writes no task record: read the existing one.
        Box::pin(reply.map(move |result, _, _| {
            match result? {
                Ok(record) => Ok(record),
                Err(task) => store
                    .snapshot()?
                    .task(&session, &task)?
                    .ok_or(Error::Refused {
                        session,
                        source: crate::machine::MachineError::UnknownTask { task },
                    }),
            }
        }))
    }
}

impl Handler<EnqueueBatch> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(u64, Vec<TaskRecord>), Error>>;

    fn handle(&mut self, message: EnqueueBatch, _: &mut Self::Context) -> Self::Result {
        if let Err(error) = self.refuse_if_faulted() {
            return Box::pin(actix::fut::ready(Err(error)));
        }
        let id = self.id.clone();
        let units = self.shared.unit_context();
        let pending = self
            .shared
            .store
            .write_async(move |scope| run_batch(scope, &id, &message, &units.machine_context()));
        let session = self.id.clone();
        Box::pin(
            self.busy(async move {
                pending
                    .await
                    .map_err(|error: UnitError| error.into_error(&session))
            })
            .map(|result, act, ctx| {
                let (transitions, generation, records) = result?;
                for transition in &transitions {
                    act.perform(transition, ctx);
                }
                Ok((generation, records))
            }),
        )
    }
}

/// A batch's transitions, its generation and its task records.
type BatchDone = (Vec<Transition>, u64, Vec<TaskRecord>);

/// Runs a batch's inputs in one unit: every enqueue, then its completion for the highest
/// generation the tasks are in (see `Session::enqueue_batch` for the rule).
fn run_batch(
    scope: &mut session_store::WriteScope<'_>,
    session: &session_store::SessionId,
    batch: &EnqueueBatch,
    context: &crate::machine::Context,
) -> Result<BatchDone, UnitError> {
    let mut transitions = Vec::with_capacity(batch.tasks.len() + 1);
    let mut records = Vec::with_capacity(batch.tasks.len());
    let mut new_tasks = 0_usize;
    for (task, kind, request) in &batch.tasks {
        if scope.task(session, task)?.is_none() {
            new_tasks += 1;
        }
        let input = Input::Enqueue {
            task: task.clone(),
            kind: *kind,
            request: request.clone(),
            replace: batch.replace,
        };
        transitions.push(run_input(scope, session, input, context)?);
        let record = scope
            .task(session, task)?
            .ok_or_else(|| crate::machine::MachineError::UnknownTask { task: task.clone() })?;
        records.push(record);
    }
    let current = scope
        .session(session)?
        .ok_or(crate::machine::MachineError::NoSession)?;
    let generation = records.iter().map(|record| record.generation).max();
    let Some(completion) = &batch.completion else {
        return Ok((
            transitions,
            generation.unwrap_or(current.generation),
            records,
        ));
    };
    let input = match generation {
        // Every task known already, in a generation a later one followed: the
        // completion was stored with them when they were first enqueued.
        Some(generation) if new_tasks == 0 && generation < current.generation => {
            return Ok((transitions, generation, records));
        }
        Some(generation) => Input::SetCompletion {
            generation,
            completion: completion.clone(),
        },
        None if current.tasks_open > 0 => Input::SetCompletion {
            generation: current.generation,
            completion: completion.clone(),
        },
        None => Input::EmptyGeneration {
            completion: completion.clone(),
        },
    };
    let transition = run_input(scope, session, input, context)?;
    let generation = generation.unwrap_or(transition.session.generation);
    transitions.push(transition);
    Ok((transitions, generation, records))
}

impl Handler<SetCompletion> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, message: SetCompletion, _: &mut Self::Context) -> Self::Result {
        self.reply_with(
            Input::SetCompletion {
                generation: message.generation,
                completion: message.completion,
            },
            |_| (),
        )
    }
}

impl Handler<Cancel> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, message: Cancel, _: &mut Self::Context) -> Self::Result {
        self.reply_with(Input::Cancel { task: message.task }, |_| ())
    }
}

impl Handler<Invalidate> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, _: Invalidate, _: &mut Self::Context) -> Self::Result {
        self.reply_with(Input::Invalidate, |_| ())
    }
}

impl Handler<Wait> for SessionActor {
    type Result = Result<oneshot::Receiver<Outcome>, Error>;

    fn handle(&mut self, message: Wait, _: &mut Self::Context) -> Self::Result {
        if self.retired {
            return Err(self.gone());
        }
        let (sender, receiver) = oneshot::channel();
        // Committed outcomes are in the store; later ones arrive as TaskTerminal actions,
        // which this actor performs after this handler returns.
        match self.task_outcome(&message.task)? {
            Some(outcome) => {
                let _ = sender.send(outcome);
            }
            None => self.waiters.entry(message.task).or_default().push(sender),
        }
        Ok(receiver)
    }
}

impl Handler<WaitGeneration> for SessionActor {
    type Result = Result<oneshot::Receiver<()>, Error>;

    fn handle(&mut self, message: WaitGeneration, _: &mut Self::Context) -> Self::Result {
        if self.retired {
            return Err(self.gone());
        }
        let (sender, receiver) = oneshot::channel();
        let snapshot = self.shared.store.snapshot()?;
        let current = snapshot
            .session(&self.id)?
            .map_or(0, |record| record.generation);
        if message.generation > current {
            return Err(Error::Refused {
                session: self.id.clone(),
                source: crate::machine::MachineError::UnknownGeneration {
                    generation: message.generation,
                    current,
                },
            });
        }
        let finished = crate::units::read_finished_through(&snapshot, &self.id)?.unwrap_or(0);
        if message.generation <= finished {
            let _ = sender.send(());
        } else {
            self.generation_waiters
                .entry(message.generation)
                .or_default()
                .push(sender);
        }
        Ok(receiver)
    }
}

impl Handler<Watch> for SessionActor {
    type Result = Result<watch::Receiver<Progress>, Error>;

    fn handle(&mut self, message: Watch, _: &mut Self::Context) -> Self::Result {
        if self.retired {
            return Err(self.gone());
        }
        let sender = self.progress.entry(message.task).or_insert_with(|| {
            watch::channel(Progress {
                bytes_done: 0,
                bytes_expected: None,
            })
            .0
        });
        Ok(sender.subscribe())
    }
}

impl Handler<SetDelegate> for SessionActor {
    type Result = ();

    fn handle(&mut self, message: SetDelegate, ctx: &mut Self::Context) {
        if self.retired {
            // The registry has it; the next actor takes it when it starts.
            return;
        }
        self.delegate = Some(message.0);
        self.deliver(ctx);
    }
}

impl Handler<Poke> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Poke, ctx: &mut Self::Context) {
        if self.retired {
            return;
        }
        self.delivery_blocked = None;
        self.deliver(ctx);
    }
}

impl Handler<RetryNow> for SessionActor {
    type Result = Result<(), Error>;

    fn handle(&mut self, _: RetryNow, ctx: &mut Self::Context) -> Self::Result {
        if self.retired {
            return Err(self.gone());
        }
        self.retry_delivery_now(ctx);
        Ok(())
    }
}

impl Handler<Resume> for SessionActor {
    type Result = Result<(), Error>;

    fn handle(&mut self, _: Resume, ctx: &mut Self::Context) -> Self::Result {
        if self.retired {
            return Err(self.gone());
        }
        if self.faulted.take().is_none() {
            return Ok(());
        }
        tracing::info!(parent: &self.span, "a parked session is resumed");
        self.restarts = 0;
        self.restart_streak = 0;
        self.shared.clear_faulted(&self.id);
        self.submit_and_perform(Input::Restart, ctx);
        Ok(())
    }
}

impl Handler<Retire> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        tracing::info!(parent: &self.span, "session removed");
        // Retired for good: every request is refused and nothing runs; the supervisor
        // ends once the last address is gone.
        self.retired = true;
        self.delegate = None;
        for handle in self
            .transfers
            .drain()
            .chain(self.start_timers.drain())
            .chain(self.deadline_timers.drain())
            .map(|(_, handle)| handle)
            .chain(self.delivery_timer.take())
        {
            ctx.cancel_future(handle);
        }
        ctx.stop();
    }
}

impl Handler<Redeliver> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, message: Redeliver, _: &mut Self::Context) -> Self::Result {
        if let Err(error) = self.refuse_if_faulted() {
            return Box::pin(actix::fut::ready(Err(error)));
        }
        self.redeliver(message.seq)
    }
}

impl Handler<Forget> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, message: Forget, _: &mut Self::Context) -> Self::Result {
        self.reply_with(Input::Forget { task: message.task }, |_| ())
    }
}

impl Handler<Status> for SessionActor {
    type Result = Result<SessionStatus, Error>;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        if self.retired {
            return Err(self.gone());
        }
        let record = self.shared.store.snapshot()?.session(&self.id)?;
        Ok(SessionStatus {
            delivery_failure: record
                .as_ref()
                .and_then(|record| record.delivery_failure.clone()),
            record,
            restarts: self.restarts,
            faulted: self.faulted.clone(),
            delivery_blocked: self.delivery_blocked.clone(),
            has_delegate: self.delegate.is_some(),
            slow_deliveries: self.slow_deliveries,
            slowest_delivery_ms: self.slowest_delivery_ms,
            storage_full_since_ms: self.storage_full_since_ms,
        })
    }
}
