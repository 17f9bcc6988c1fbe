//! Writer units: each runs the state machine inside a write transaction, so a state
//! change and the events it produces commit together (the transactional outbox), and
//! deliveries commit together with the delegate's effects.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use session_store::{EventBody, EventRecord, SessionId, SessionRecord, WriteScope};

use crate::delegate::{
    CompletionCall, CompletionHandler, Delivery, DeliveryKey, DeliveryOptions, DownloadedFile,
    Event, TransactionalDelegate,
};
use crate::error::UnitError;
use crate::machine::{self, Action, Context, Input, MachineError, Records, Transition};

/// The most events one delivery unit hands to the delegate. One unit is one nested
/// transaction; if any delivery in it fails, none of them count and all come again, so
/// after a failure the actor goes back to one event per unit (see `SessionActor`).
pub(crate) const DELIVERY_EVENTS_PER_UNIT_MAX: usize = 64;

/// Runs one input for one session against the records in the transaction.
pub(crate) fn run_input(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    input: Input,
    context: &Context,
) -> Result<Transition, UnitError> {
    let stored = scope.session(session)?;
    let mut record = stored.clone();
    if record.is_none()
        && let Input::Open { id, config } = &input
        && let Some(removed) = scope.removed_session(session)?
    {
        // Created again after a removal: its numbering goes on where the removed one's
        // stopped, so no delivery key repeats.
        scope.delete_removed_session(session)?;
        record = Some(SessionRecord {
            generation: removed.generation,
            completion_generation: removed.generation,
            next_event_seq: removed.next_event_seq,
            delivered_seq: removed.next_event_seq,
            ..SessionRecord::new(id.clone(), config.clone(), context.now_ms)
        });
    }
    let mut tasks = BTreeMap::new();
    let mut conflict_with = None;
    match &input {
        Input::Enqueue { task, request, .. } => {
            if let Some(mut found) = scope.task(session, task)? {
                if found.request != *request {
                    if crate::requests::same(&found.request, request) {
                        // Written by an earlier release in its encoding: the same
                        // description, so a reconnect, and the record moves to today's
                        // encoding.
                        found.request = request.clone();
                        scope.put_task(&found)?;
                    } else {
                        conflict_with = Some(found.request.clone());
                    }
                }
                tasks.insert(task.clone(), found);
            }
        }
        Input::Start { task }
        | Input::Result { task, .. }
        | Input::Expire { task }
        | Input::Cancel { task }
        | Input::Forget { task } => {
            if let Some(found) = scope.task(session, task)? {
                tasks.insert(task.clone(), found);
            }
        }
        Input::Restart | Input::Invalidate => {
            for found in scope.tasks(session)? {
                tasks.insert(found.id.clone(), found);
            }
        }
        Input::Open { .. }
        | Input::Deliver { .. }
        | Input::DeliveryFailed { .. }
        | Input::SetCompletion { .. }
        | Input::EmptyGeneration { .. } => {}
    }
    let given = match &input {
        Input::Enqueue { request, .. } => Some(request.clone()),
        _ => None,
    };
    let before = stored;
    let transition = machine::apply(
        Records {
            session: record,
            tasks,
        },
        input,
        context,
    )
    .map_err(|error| match (error, conflict_with, given) {
        // The machine compares bytes; name the fields that differ for the application.
        (MachineError::TaskConflict { task, .. }, Some(stored), Some(given)) => {
            MachineError::TaskConflict {
                task,
                fields: crate::requests::differing_fields(&stored, &given),
            }
        }
        (error, _, _) => error,
    })?;
    write_transition(scope, before.as_ref(), &transition)?;
    Ok(transition)
}

/// Records that the delivery of event `seq` failed (see `machine::failure`).
pub(crate) fn record_delivery_failure(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    seq: u64,
    error: String,
    context: &Context,
) -> Result<Transition, UnitError> {
    let record = scope.session(session)?.ok_or(MachineError::NoSession)?;
    let event = scope
        .event(session, seq)?
        .ok_or(MachineError::StaleDelivery { seq })?;
    let before = record.clone();
    let transition = machine::apply(
        Records {
            session: Some(record),
            tasks: BTreeMap::new(),
        },
        Input::DeliveryFailed { event, error },
        context,
    )?;
    write_transition(scope, Some(&before), &transition)?;
    Ok(transition)
}

/// Writes what a transition changed.
pub(crate) fn write_transition(
    scope: &mut WriteScope<'_>,
    before: Option<&SessionRecord>,
    transition: &Transition,
) -> session_store::Result<()> {
    if before != Some(&transition.session) {
        scope.put_session(&transition.session)?;
    }
    for task in &transition.tasks {
        scope.put_task(task)?;
    }
    for event in &transition.events {
        scope.put_event(event)?;
    }
    let session = &transition.session.id;
    for dead in &transition.dead_letters {
        scope.put_dead_letter(&session_store::DeadLetterRecord {
            event: dead.event.clone(),
            attempts: dead.attempts,
            last_error: dead.last_error.clone(),
            moved_ms: dead.moved_ms,
        })?;
        scope.delete_event(session, dead.event.seq)?;
    }
    for expiry in &transition.expiries {
        scope.put_task_expiry(expiry.at_ms, session, &expiry.task)?;
    }
    for task in &transition.forgotten {
        scope.delete_task(session, task)?;
    }
    Ok(())
}

/// What a delivery unit did.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Events delivered (and their cursor advance committed with this unit).
    pub(crate) count: usize,
    /// Actions for after the commit (files to remove, more to deliver).
    pub(crate) actions: Vec<Action>,
    /// Every generation up to this one has ended with all its events delivered.
    pub(crate) finished_through: u64,
    /// Delegate (or completion) calls over the slow-call threshold, and the slowest.
    pub(crate) slow_calls: u64,
    pub(crate) slowest_call_ms: u64,
    /// How long the unit held the writer, milliseconds.
    pub(crate) held_ms: u64,
    /// Whether the session still has work or events waiting, as committed (`None` when
    /// the unit did not read it).
    pub(crate) active: Option<bool>,
}

impl Delivered {
    fn note_call(&mut self, call_ms: u64, options: &DeliveryOptions) {
        if call_ms >= options.slow_call_ms {
            self.slow_calls += 1;
            self.slowest_call_ms = self.slowest_call_ms.max(call_ms);
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The highest generation whose tasks are all terminal and whose events (its "did finish
/// events" and completions included) are all delivered. Events are appended in
/// generation order, so every generation before the next undelivered event's is done.
pub(crate) fn finished_through(
    record: &SessionRecord,
    next_undelivered: Option<&EventRecord>,
) -> u64 {
    match next_undelivered {
        Some(event) => event.generation.saturating_sub(1),
        None if record.tasks_open > 0 => record.generation.saturating_sub(1),
        None => record.generation,
    }
}

/// What [`read_finished_through`] reads: a unit's scope or a snapshot.
pub(crate) trait RecordReader {
    fn session_record(&self, id: &SessionId) -> session_store::Result<Option<SessionRecord>>;
    fn event_record(&self, id: &SessionId, seq: u64) -> session_store::Result<Option<EventRecord>>;
}

impl RecordReader for WriteScope<'_> {
    fn session_record(&self, id: &SessionId) -> session_store::Result<Option<SessionRecord>> {
        self.session(id)
    }
    fn event_record(&self, id: &SessionId, seq: u64) -> session_store::Result<Option<EventRecord>> {
        self.event(id, seq)
    }
}

impl RecordReader for session_store::Snapshot {
    fn session_record(&self, id: &SessionId) -> session_store::Result<Option<SessionRecord>> {
        self.session(id)
    }
    fn event_record(&self, id: &SessionId, seq: u64) -> session_store::Result<Option<EventRecord>> {
        self.event(id, seq)
    }
}

/// [`finished_through`] as the reader sees it; `None` for a session that does not exist.
pub(crate) fn read_finished_through(
    reader: &impl RecordReader,
    session: &SessionId,
) -> session_store::Result<Option<u64>> {
    let Some(record) = reader.session_record(session)? else {
        return Ok(None);
    };
    let next = if record.has_undelivered_events() {
        reader.event_record(session, record.delivered_seq)?
    } else {
        None
    };
    Ok(Some(finished_through(&record, next.as_ref())))
}

/// The completion handlers registered with `Sessions`, by name.
pub(crate) type Completions = HashMap<String, Arc<dyn CompletionHandler>>;

/// Delivers the next events of a session to a transactional delegate (and runs stored
/// completions), each delivery's effects and cursor advance in this one unit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn deliver_transactional(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    downloads: &Path,
    delegate: Option<&dyn TransactionalDelegate>,
    completions: &Completions,
    context: &Context,
    events_max: usize,
    options: &DeliveryOptions,
) -> Result<Delivered, UnitError> {
    let started = Instant::now();
    let mut delivered = Delivered::default();
    let mut record = scope.session(session)?.ok_or(MachineError::NoSession)?;
    while record.has_undelivered_events() && delivered.count < events_max.max(1) {
        if delivered.count > 0 && elapsed_ms(started) >= options.unit_budget_ms {
            // The unit's time is spent: the rest goes in the next unit, after other
            // sessions' units have had the writer.
            break;
        }
        let seq = record.delivered_seq;
        let event = scope.event(session, seq)?.ok_or_else(|| {
            MachineError::InvalidRecord(format!("event {seq} of session {session} is missing"))
        })?;
        let key = DeliveryKey {
            session: session.clone(),
            generation: event.generation,
            seq,
        };
        match &event.body {
            EventBody::Completion(completion) => {
                let handler = completions
                    .get(&completion.name)
                    .ok_or_else(|| UnitError::UnknownCompletion(completion.name.clone()))?;
                let call = CompletionCall {
                    key,
                    name: completion.name.clone(),
                    payload: completion.payload.clone(),
                };
                let call_started = Instant::now();
                handler
                    .run(&call, scope)
                    .map_err(|error| UnitError::Delegate {
                        seq,
                        message: error.0,
                    })?;
                delivered.note_call(elapsed_ms(call_started), options);
                fail::fail_point!("actor-inside-completion", |arg| Err(fail_point_fired(
                    "actor-inside-completion",
                    arg,
                    seq
                )));
            }
            EventBody::TaskCompleted { .. } | EventBody::DidFinishEvents => {
                // Only a transactional delegate is handed task events here; an
                // at-least-once session delivers them itself and calls this for
                // completions only.
                let Some(delegate) = delegate else { break };
                let delivery = Delivery {
                    key,
                    event: event_for_delegate(&event.body, downloads),
                };
                let call_started = Instant::now();
                delegate
                    .deliver(&delivery, scope)
                    .map_err(|error| UnitError::Delegate {
                        seq,
                        message: error.0,
                    })?;
                delivered.note_call(elapsed_ms(call_started), options);
            }
        }
        fail::fail_point!("actor-after-delegate-before-commit", |arg| Err(
            fail_point_fired("actor-after-delegate-before-commit", arg, seq)
        ));
        let transition = commit_delivery(scope, record, event, context)?;
        record = transition.session;
        delivered.count += 1;
        delivered.actions.extend(
            transition
                .actions
                .into_iter()
                .filter(|a| !matches!(a, Action::DeliverEvents)),
        );
    }
    let next = if record.has_undelivered_events() {
        if delivered.count > 0 {
            delivered.actions.push(Action::DeliverEvents);
        }
        scope.event(session, record.delivered_seq)?
    } else {
        None
    };
    delivered.finished_through = finished_through(&record, next.as_ref());
    delivered.held_ms = elapsed_ms(started);
    delivered.active = Some(record.is_active());
    Ok(delivered)
}

/// Advances the cursor past `seq` after an at-least-once delegate returned for it.
pub(crate) fn advance_cursor(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    seq: u64,
    context: &Context,
) -> Result<Delivered, UnitError> {
    let record = scope.session(session)?.ok_or(MachineError::NoSession)?;
    if record.delivered_seq != seq {
        // Delivered by an earlier attempt that did commit: nothing to do.
        return Ok(Delivered {
            finished_through: read_finished_through(scope, session)?.unwrap_or(0),
            ..Delivered::default()
        });
    }
    let event = scope.event(session, seq)?.ok_or_else(|| {
        MachineError::InvalidRecord(format!("event {seq} of session {session} is missing"))
    })?;
    let transition = commit_delivery(scope, record, event, context)?;
    Ok(Delivered {
        count: 1,
        active: Some(transition.session.is_active()),
        actions: transition.actions,
        finished_through: read_finished_through(scope, session)?.unwrap_or(0),
        ..Delivered::default()
    })
}

/// Advances the cursor past `event` (the next one) and removes it from the outbox, in
/// the unit that also holds the delivery's effects.
fn commit_delivery(
    scope: &mut WriteScope<'_>,
    record: SessionRecord,
    event: EventRecord,
    context: &Context,
) -> Result<Transition, UnitError> {
    let session = record.id.clone();
    let seq = event.seq;
    let before = record.clone();
    let transition = machine::apply(
        Records {
            session: Some(record),
            tasks: BTreeMap::new(),
        },
        Input::Deliver { event },
        context,
    )?;
    write_transition(scope, Some(&before), &transition)?;
    scope.delete_event(&session, seq)?;
    Ok(transition)
}

/// The delegate's view of a stored event body; a download's file is found by its name
/// in the session's download directory `downloads`.
pub(crate) fn event_for_delegate(body: &EventBody, downloads: &Path) -> Event {
    match body {
        EventBody::TaskCompleted {
            task,
            kind,
            outcome,
        } => {
            let file = match outcome {
                session_store::Outcome::Success(response) => response
                    .file
                    .as_ref()
                    .map(|name| DownloadedFile::new(downloads.join(name))),
                session_store::Outcome::Rejected(_)
                | session_store::Outcome::Failed(_)
                | session_store::Outcome::Cancelled => None,
            };
            Event::TaskCompleted {
                task: task.clone(),
                kind: *kind,
                outcome: outcome.clone(),
                file,
            }
        }
        EventBody::DidFinishEvents | EventBody::Completion(_) => Event::DidFinishEvents,
    }
}

/// The `return(abort)` action of the crash harness's fail points: `fail` has no abort
/// action of its own, and an abort (not a panic) is what a crash looks like. Any other
/// argument makes the unit fail with an error instead.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn fail_point_fired(name: &str, arg: Option<String>, seq: u64) -> UnitError {
    if arg.as_deref() == Some("abort") {
        std::process::abort();
    }
    UnitError::Delegate {
        seq,
        message: format!("fail point {name} fired"),
    }
}

/// Delivers a dead-lettered event again, on the application's request: the delegate (or
/// the completion handler) gets it with its original key, and on success it leaves the
/// dead-letter list in the same unit. Returns the actions for after the commit.
pub(crate) fn redeliver_dead_letter(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    seq: u64,
    downloads: &Path,
    delegate: Option<&dyn TransactionalDelegate>,
    completions: &Completions,
) -> Result<Vec<Action>, UnitError> {
    let dead = scope
        .dead_letter(session, seq)?
        .ok_or(UnitError::NoDeadLetter(seq))?;
    let event = dead.event;
    let key = DeliveryKey {
        session: session.clone(),
        generation: event.generation,
        seq,
    };
    match &event.body {
        EventBody::Completion(completion) => {
            let handler = completions
                .get(&completion.name)
                .ok_or_else(|| UnitError::UnknownCompletion(completion.name.clone()))?;
            let call = CompletionCall {
                key,
                name: completion.name.clone(),
                payload: completion.payload.clone(),
            };
            handler
                .run(&call, scope)
                .map_err(|error| UnitError::Delegate {
                    seq,
                    message: error.0,
                })?;
        }
        EventBody::TaskCompleted { .. } | EventBody::DidFinishEvents => {
            if let Some(delegate) = delegate {
                let delivery = Delivery {
                    key,
                    event: event_for_delegate(&event.body, downloads),
                };
                delegate
                    .deliver(&delivery, scope)
                    .map_err(|error| UnitError::Delegate {
                        seq,
                        message: error.0,
                    })?;
            }
        }
    }
    scope.delete_dead_letter(session, seq)?;
    let mut record = scope.session(session)?.ok_or(MachineError::NoSession)?;
    record.dead_letters = record.dead_letters.saturating_sub(1);
    scope.put_session(&record)?;
    let mut actions = Vec::new();
    if let EventBody::TaskCompleted {
        outcome: session_store::Outcome::Success(response),
        ..
    } = &event.body
        && let Some(file) = &response.file
    {
        actions.push(Action::RemoveFile { file: file.clone() });
    }
    Ok(actions)
}
