//! The session actor: one actix actor per session, under a `Supervisor`.
//!
//! The actor owns nothing durable. Every change goes through a writer unit that runs
//! the state machine against the records in the transaction; the actor performs the
//! machine's actions only after that unit committed. On a restart (`restarting`) it
//! keeps no state but its waiters and counters, and reloads the rest from the store.
//!
//! - `messages`: what the `Session` handle and the actor itself send.
//! - `transfer`: running a transfer attempt on the engine and classifying its result.
//! - `delivery`: handing events to the delegate.

mod delivery;
mod messages;
mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use session_http::Progress;
use session_store::{Outcome, SessionId, TaskId, TaskRecord, TaskState};
use tokio::sync::{oneshot, watch};

use crate::delegate::Delegate;
use crate::error::{Error, UnitError};
use crate::machine::{Action, Input, MachineError, Transition};
use crate::shared::Shared;
use crate::units::run_input;

pub use messages::SessionStatus;
pub(crate) use messages::{
    Cancel, Enqueue, EnqueueBatch, Forget, Invalidate, Poke, Redeliver, Resume, Retire, RetryNow,
    SetCompletion, SetDelegate, Status, Wait, WaitGeneration, Watch,
};

/// One background session.
pub(crate) struct SessionActor {
    id: SessionId,
    shared: Arc<Shared>,
    delegate: Option<Delegate>,
    /// Actions from the recovery at open, performed when the actor first starts.
    recovered: Option<Vec<Action>>,
    /// Bumped at every (re)start: results of transfers begun before are ignored.
    epoch: u64,
    restarts: u32,
    /// Restarts in quick succession (the backoff's exponent), and when the last was.
    restart_streak: u32,
    last_restart_ms: u64,
    faulted: Option<String>,
    last_failure: Option<String>,
    transfers: HashMap<TaskId, SpawnHandle>,
    start_timers: HashMap<TaskId, SpawnHandle>,
    deadline_timers: HashMap<TaskId, SpawnHandle>,
    waiters: HashMap<TaskId, Vec<oneshot::Sender<Outcome>>>,
    /// Who waits for the end of which generation (`Session::finished`).
    generation_waiters: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    progress: HashMap<TaskId, watch::Sender<Progress>>,
    delivering: bool,
    /// Events per delivery unit: the maximum, down to 1 after a failed delivery so that
    /// a delegate failing on one event cannot undo the deliveries before it forever.
    delivery_events_per_unit: usize,
    /// A delivery was asked for while one was in flight: run another when it ends.
    deliver_again: bool,
    /// Why delivery is stopped (an unknown completion name), until poked.
    delivery_blocked: Option<String>,
    /// A failed delivery is not tried again before this time (Unix milliseconds).
    delivery_not_before_ms: Option<u64>,
    /// The timer that tries it again then.
    delivery_timer: Option<SpawnHandle>,
    /// Delegate calls over the slow-call threshold in this process, and the slowest.
    slow_deliveries: u64,
    slowest_delivery_ms: u64,
    /// Since when units of this session are refused for a full disk (in this process).
    storage_full_since_ms: Option<u64>,
    /// Which actor of the session this is (the registry's number).
    instance: u64,
    /// It left the registry: it refuses every request (they go to the next actor).
    retired: bool,
    /// The session has open tasks or undelivered events, as last committed.
    active: bool,
    /// Units and delayed runs of this actor in flight.
    in_flight: u32,
    /// The last idle check found the actor idle (the next one retires it if it still is).
    idle_seen: bool,
    span: tracing::Span,
}

impl SessionActor {
    pub(crate) fn new(
        id: SessionId,
        shared: Arc<Shared>,
        delegate: Option<Delegate>,
        recovered: Option<Vec<Action>>,
        instance: u64,
    ) -> Self {
        let span = tracing::info_span!("session", id = %id);
        SessionActor {
            id,
            shared,
            delegate,
            recovered,
            epoch: 0,
            restarts: 0,
            restart_streak: 0,
            last_restart_ms: 0,
            faulted: None,
            last_failure: None,
            transfers: HashMap::new(),
            start_timers: HashMap::new(),
            deadline_timers: HashMap::new(),
            waiters: HashMap::new(),
            generation_waiters: BTreeMap::new(),
            progress: HashMap::new(),
            delivering: false,
            deliver_again: false,
            delivery_events_per_unit: crate::units::DELIVERY_EVENTS_PER_UNIT_MAX,
            delivery_blocked: None,
            delivery_not_before_ms: None,
            delivery_timer: None,
            slow_deliveries: 0,
            slowest_delivery_ms: 0,
            storage_full_since_ms: None,
            instance,
            retired: false,
            // Until its first transition says otherwise, a new actor assumes work.
            active: true,
            in_flight: 0,
            idle_seen: false,
            span,
        }
    }

    /// Submits one machine input as a writer unit; resolves after the durable commit.
    fn submit(
        &mut self,
        input: Input,
    ) -> impl ActorFuture<Self, Output = Result<Transition, Error>> + 'static {
        let id = self.id.clone();
        let units = self.shared.unit_context();
        let pending = self.shared.store.write_async(move |scope| {
            run_input(scope, &id, input.clone(), &units.machine_context())
        });
        let id = self.id.clone();
        self.busy(async move {
            pending
                .await
                .map_err(|error: UnitError| error.into_error(&id))
        })
    }

    /// A future of this actor that keeps it from retiring while it runs.
    pub(super) fn busy<F>(
        &mut self,
        future: F,
    ) -> impl ActorFuture<Self, Output = F::Output> + 'static
    where
        F: std::future::Future + 'static,
    {
        self.in_flight += 1;
        future.into_actor(self).map(|output, act: &mut Self, _| {
            act.in_flight = act.in_flight.saturating_sub(1);
            output
        })
    }

    /// Runs `f` after `delay`, keeping the actor from retiring until then.
    fn later(
        &mut self,
        delay: Duration,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        self.in_flight += 1;
        ctx.run_later(delay, move |act, ctx| {
            act.in_flight = act.in_flight.saturating_sub(1);
            f(act, ctx);
        });
    }

    /// Whether the session needs no actor now: no work, no event waiting, nothing in
    /// flight, no timer, nobody waiting. A parked session keeps its actor (its status says
    /// why).
    fn is_idle(&self) -> bool {
        !self.retired
            && self.faulted.is_none()
            && !self.active
            && self.in_flight == 0
            && !self.delivering
            && self.transfers.is_empty()
            && self.start_timers.is_empty()
            && self.deadline_timers.is_empty()
            && self.delivery_timer.is_none()
            && self.waiters.is_empty()
            && self.generation_waiters.is_empty()
            && self.delivery_blocked.is_none()
    }

    /// One idle check (every [`IDLE_CHECK`]): an actor found idle by two checks in a row
    /// retires, and the next request for the session starts a new one. Checking on a
    /// clock rather than after each change keeps one rule for every way an actor becomes
    /// idle (a unit, a delivery, a waiter resolved or dropped).
    fn idle_check(&mut self, ctx: &mut Context<Self>) {
        if !self.is_idle() {
            self.idle_seen = false;
        } else if self.idle_seen {
            self.retire(ctx);
        } else {
            self.idle_seen = true;
        }
    }

    /// Leaves the registry (under its lock, so every later request reaches a new actor)
    /// and stops; whatever still reaches this actor is refused and asked again.
    pub(super) fn retire(&mut self, ctx: &mut Context<Self>) {
        self.shared.registry.retire(&self.id, self.instance);
        self.retired = true;
        self.progress.clear();
        tracing::debug!(parent: &self.span, "idle: the actor retires");
        ctx.stop();
    }

    /// What a retired actor answers: ask the session's actor of the moment.
    pub(super) fn gone(&self) -> Error {
        Error::SessionGone {
            session: self.id.clone(),
        }
    }

    /// Submits an input whose transition the actor only needs to act on.
    fn submit_and_perform(&mut self, input: Input, ctx: &mut Context<Self>) {
        // By name only: an input's contents may carry credentials (request headers).
        let what = input.name();
        let again = input.clone();
        ctx.spawn(self.submit(input).map(move |result, act, ctx| match result {
            Ok(transition) => {
                act.storage_committed();
                act.perform(&transition, ctx);
            }
            Err(Error::Store(error)) if error.kind() == session_store::ErrorKind::Full => {
                act.storage_full(again, ctx);
            }
            Err(Error::Refused {
                source:
                    MachineError::StaleResult { .. }
                    | MachineError::NotPending { .. }
                    | MachineError::UnknownTask { .. }
                    | MachineError::StaleDelivery { .. }
                    | MachineError::NoSession,
                ..
            }) => {
                // A timer or result that raced another change: the store says no.
                tracing::debug!(parent: &act.span, input = %what, "input no longer applies");
            }
            Err(error) => act.fail(format!("{what}: {error}"), ctx),
        }));
    }

    /// Performs a committed transition's actions; a panic here restarts the actor.
    fn perform(&mut self, transition: &Transition, ctx: &mut Context<Self>) {
        self.active = transition.session.is_active();
        self.perform_actions(&transition.actions, &transition.tasks, ctx);
        if !self.generation_waiters.is_empty() && !transition.events.is_empty() {
            self.check_generations();
        }
    }

    /// Resolves the waiters of every generation that has ended, as committed.
    pub(super) fn check_generations(&mut self) {
        let finished = self
            .shared
            .store
            .snapshot()
            .and_then(|snapshot| crate::units::read_finished_through(&snapshot, &self.id));
        match finished {
            Ok(Some(finished)) => self.generations_finished(finished),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(parent: &self.span, %error, "reading which generations ended");
            }
        }
    }

    /// Every generation up to `finished` has ended: wake whoever waits on them.
    pub(super) fn generations_finished(&mut self, finished: u64) {
        let later = self.generation_waiters.split_off(&(finished + 1));
        for waiter in std::mem::replace(&mut self.generation_waiters, later)
            .into_values()
            .flatten()
        {
            let _ = waiter.send(());
        }
    }

    /// Performs actions after their commit; `tasks` are the records they refer to
    /// (a transfer needs its task's request). A panic here restarts the actor.
    fn perform_actions(
        &mut self,
        actions: &[Action],
        tasks: &[TaskRecord],
        ctx: &mut Context<Self>,
    ) {
        if tokio::runtime::Handle::try_current().is_err() {
            // actix polls a stopping actor once more while its System is dropped, after
            // the runtime is gone: no timer can be armed then, and the store (not this
            // actor) is what the next launch resumes from.
            return;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // A panic here is a bug in the actor itself (tests plant one with this fail
            // point): the supervisor restarts the session, with backoff.
            fail::fail_point!("actor-perform");
            for action in actions {
                self.perform_one(action, tasks, ctx);
            }
        }));
        if let Err(panic) = outcome {
            self.fail(
                format!("panic while acting: {}", panic_message(&*panic)),
                ctx,
            );
        }
    }

    fn perform_one(&mut self, action: &Action, tasks: &[TaskRecord], ctx: &mut Context<Self>) {
        match action {
            Action::Schedule {
                task,
                not_before_ms,
            } => self.schedule(task.clone(), *not_before_ms, ctx),
            Action::Transfer {
                task,
                attempt,
                deadline_ms,
            } => match tasks.iter().find(|record| &record.id == task) {
                Some(record) => {
                    self.transfer(record.clone(), *attempt, ctx);
                    self.arm_deadline(task.clone(), *deadline_ms, ctx);
                }
                None => self.fail(format!("transfer of {task} without its record"), ctx),
            },
            Action::AbortTransfer { task } => {
                if let Some(handle) = self.transfers.remove(task) {
                    ctx.cancel_future(handle);
                }
            }
            Action::ArmDeadline { task, at_ms } => {
                if self.transfers.contains_key(task) {
                    self.arm_deadline(task.clone(), *at_ms, ctx);
                }
            }
            Action::TaskTerminal { task } => self.task_terminal(task, ctx),
            Action::DiscardPartial { task, incarnation } => {
                self.remove_partial_download(task, *incarnation);
            }
            Action::DeliverEvents => self.deliver(ctx),
            Action::ScheduleDelivery { at_ms } => self.schedule_delivery(*at_ms, ctx),
            Action::RemoveFile { file } => {
                let path = self.shared.download_file(&self.id, file);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        tracing::warn!(parent: &self.span, path = %path.display(), %error,
                            "could not remove a delivered file");
                    }
                }
            }
        }
    }

    fn schedule(&mut self, task: TaskId, not_before_ms: u64, ctx: &mut Context<Self>) {
        if let Some(handle) = self.start_timers.remove(&task) {
            ctx.cancel_future(handle);
        }
        let now_ms = self.shared.clock.now_ms();
        let delay = Duration::from_millis(not_before_ms.saturating_sub(now_ms));
        let key = task.clone();
        let handle = ctx.run_later(delay, move |act, ctx| {
            act.start_timers.remove(&task);
            act.submit_and_perform(Input::Start { task }, ctx);
        });
        self.start_timers.insert(key, handle);
    }

    /// A download that ended without success leaves no partial file behind (a
    /// successful one was renamed to its final name already).
    fn remove_partial_download(&self, task: &TaskId, incarnation: u32) {
        let dir = self.shared.download_dir(&self.id);
        let name = download_name(task, incarnation);
        let (part, _) = session_http::download_paths(&dir, &name);
        let validator = session_http::download_validator_path(&dir, &name);
        for path in [part, validator] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(parent: &self.span, path = %path.display(), %error,
                        "could not remove a partial download");
                }
            }
        }
    }

    fn task_terminal(&mut self, task: &TaskId, ctx: &mut Context<Self>) {
        for map in [&mut self.start_timers, &mut self.deadline_timers] {
            if let Some(handle) = map.remove(task) {
                ctx.cancel_future(handle);
            }
        }
        self.progress.remove(task);
        let Some(waiters) = self.waiters.remove(task) else {
            return;
        };
        match self.task_outcome(task) {
            Ok(Some(outcome)) => {
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            }
            Ok(None) => {
                self.waiters.insert(task.clone(), waiters);
            }
            Err(error) => tracing::warn!(parent: &self.span, %task, %error, "reading an outcome"),
        }
    }

    fn task_outcome(&self, task: &TaskId) -> Result<Option<Outcome>, Error> {
        let record = self.shared.store.snapshot()?.task(&self.id, task)?;
        Ok(record.and_then(|record| match record.state {
            TaskState::Completed { outcome, .. } => Some(outcome),
            TaskState::Pending { .. } | TaskState::Running { .. } => None,
        }))
    }

    /// A unit of this session committed: whatever refused writes for a full disk before
    /// (here or elsewhere), there is room now.
    pub(super) fn storage_committed(&mut self) {
        self.storage_full_since_ms = None;
        if self.shared.storage_full_since_ms().is_some() {
            self.shared.note_storage_ok();
        }
    }

    /// A unit could not commit because the store's disk is full: try the same input
    /// again later (capped backoff), visibly, instead of restarting the session.
    fn storage_full(&mut self, input: Input, ctx: &mut Context<Self>) {
        let now_ms = self.shared.clock.now_ms();
        let since = *self.storage_full_since_ms.get_or_insert(now_ms);
        self.shared.note_storage_full();
        let waited_ms = now_ms.saturating_sub(since);
        let delay_ms = (STORAGE_RETRY_MS_MIN + waited_ms / 2).min(STORAGE_RETRY_MS_MAX);
        tracing::warn!(parent: &self.span, input = input.name(), delay_ms,
            "the store's disk is full; trying again later");
        self.later(Duration::from_millis(delay_ms), ctx, move |act, ctx| {
            act.submit_and_perform(input, ctx);
        });
    }

    /// Stops the actor so its supervisor restarts it; the store is the only truth.
    fn fail(&mut self, reason: String, ctx: &mut Context<Self>) {
        tracing::warn!(parent: &self.span, %reason, "session failed; restarting");
        self.last_failure = Some(reason);
        ctx.stop();
    }

    /// Called from `restarting`: actix has already dropped every future of the old
    /// context and numbers new ones from the start again, so the old handles are only
    /// forgotten. Cancelling them would cancel the new context's first futures (the
    /// restart's own `Restart` unit among them) and leave the session idle.
    fn forget_in_flight(&mut self) {
        self.epoch += 1;
        self.transfers.clear();
        self.start_timers.clear();
        self.deadline_timers.clear();
        self.delivering = false;
        self.deliver_again = false;
        self.delivery_timer = None;
        self.delivery_not_before_ms = None;
        // Every future and timer of the old context is gone with it.
        self.in_flight = 0;
        self.idle_seen = false;
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if self.retired {
            // Restarted by its supervisor after it retired (a request still held its
            // address): it does nothing but refuse, and stops.
            ctx.stop();
            return;
        }
        if self.epoch == 0 {
            self.shared.note_actor_started();
        }
        ctx.run_interval(IDLE_CHECK, |act, ctx| act.idle_check(ctx));
        if self.faulted.is_some() {
            return;
        }
        match self.recovered.take() {
            // The recovery at open already moved lost transfers back to pending.
            Some(actions) => self.perform_actions(&actions, &[], ctx),
            None if self.restarts == 0 => self.submit_and_perform(Input::Restart, ctx),
            // A supervised restart after a panic in the actor: not in a tight loop.
            None => {
                let delay = restart_delay(self.restart_streak);
                self.later(delay, ctx, |act, ctx| {
                    act.submit_and_perform(Input::Restart, ctx);
                });
            }
        }
    }
}

/// The mailbox capacity of a session actor (messages from `Session` handles).
pub(crate) const MAILBOX_CAPACITY: usize = 256;
/// How often an actor checks whether its session went idle; it retires after one to two
/// of these, so a session that goes quiet and busy again does not start an actor each
/// time.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// The first delay before a unit refused for a full disk is tried again.
const STORAGE_RETRY_MS_MIN: u64 = 250;
/// The longest delay between two tries while the disk stays full.
const STORAGE_RETRY_MS_MAX: u64 = 30_000;
/// The first delay before a supervised restart reloads the session; it doubles per
/// restart up to [`RESTART_DELAY_MS_MAX`].
const RESTART_DELAY_MS_BASE: u64 = 50;
/// The longest delay before a supervised restart.
const RESTART_DELAY_MS_MAX: u64 = 10_000;
/// A session that ran this long without a restart starts its restart backoff over.
const RESTART_QUIET_MS: u64 = 60_000;

/// The delay before the `restarts`-th supervised restart reloads the session.
fn restart_delay(restarts: u32) -> Duration {
    let doublings = restarts.saturating_sub(1).min(20);
    Duration::from_millis(
        RESTART_DELAY_MS_BASE
            .saturating_mul(1 << doublings)
            .min(RESTART_DELAY_MS_MAX),
    )
}

/// The name a task's download file goes by: the identifier, and from its second
/// incarnation (after a replace) a suffix, so a replaced task's file never meets its
/// successor's.
pub(crate) fn download_name(task: &TaskId, incarnation: u32) -> String {
    if incarnation == 0 {
        task.to_string()
    } else {
        format!("{task}~{incarnation}")
    }
}

impl Supervised for SessionActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.forget_in_flight();
        self.restarts += 1;
        // The backoff grows with restarts in quick succession and starts over once the
        // session has run quietly for a while.
        let now_ms = self.shared.clock.now_ms();
        if now_ms.saturating_sub(self.last_restart_ms) > RESTART_QUIET_MS {
            self.restart_streak = 0;
        }
        self.restart_streak += 1;
        self.last_restart_ms = now_ms;
        let reason = self
            .last_failure
            .clone()
            .unwrap_or_else(|| "stopped".to_owned());
        tracing::info!(parent: &self.span, restarts = self.restarts, %reason, "session restarting");
        self.shared.note_restart();
        if self.restarts > self.shared.restart_limit {
            tracing::error!(parent: &self.span, restarts = self.restarts, %reason,
                "session parked as faulted: too many restarts");
            self.shared.set_faulted(&self.id, &reason);
            self.faulted = Some(reason);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
