//! Writer units: each runs the state machine inside a write transaction, so a state
//! change and the events it produces commit together (the transactional outbox), and
//! deliveries commit together with the delegate's effects.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use session_store::{EventBody, EventRecord, SessionId, SessionRecord, WriteScope};

use crate::delegate::{
    CompletionCall, CompletionHandler, Delivery, DeliveryKey, DownloadedFile, Event,
    TransactionalDelegate,
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
    let record = scope.session(session)?;
    let mut tasks = BTreeMap::new();
    match &input {
        Input::Enqueue { task, .. }
        | Input::Start { task }
        | Input::Result { task, .. }
        | Input::Expire { task }
        | Input::Cancel { task } => {
            if let Some(found) = scope.task(session, task)? {
                tasks.insert(task.clone(), found);
            }
        }
        Input::Restart | Input::Invalidate => {
            for found in scope.tasks(session)? {
                tasks.insert(found.id.clone(), found);
            }
        }
        Input::Open { .. } | Input::Deliver { .. } | Input::SetCompletion { .. } => {}
    }
    let before = record.clone();
    let transition = machine::apply(
        Records {
            session: record,
            tasks,
        },
        input,
        context,
    )?;
    write_transition(scope, before.as_ref(), &transition)?;
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
    Ok(())
}

/// What a delivery unit did.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Events delivered (and their cursor advance committed with this unit).
    pub(crate) count: usize,
    /// Actions for after the commit (files to remove, more to deliver).
    pub(crate) actions: Vec<Action>,
}

/// The completion handlers registered with `Sessions`, by name.
pub(crate) type Completions = HashMap<String, Arc<dyn CompletionHandler>>;

/// Delivers the next events of a session to a transactional delegate (and runs stored
/// completions), each delivery's effects and cursor advance in this one unit.
pub(crate) fn deliver_transactional(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    delegate: Option<&dyn TransactionalDelegate>,
    completions: &Completions,
    context: &Context,
    events_max: usize,
) -> Result<Delivered, UnitError> {
    let mut delivered = Delivered::default();
    let mut record = scope.session(session)?.ok_or(MachineError::NoSession)?;
    while record.has_undelivered_events() && delivered.count < events_max.max(1) {
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
                handler
                    .run(&call, scope)
                    .map_err(|error| UnitError::Delegate(error.0))?;
                fail::fail_point!("actor-inside-completion", |arg| Err(fail_point_fired(
                    "actor-inside-completion",
                    arg
                )));
            }
            EventBody::TaskCompleted { .. } | EventBody::DidFinishEvents => {
                // Only a transactional delegate is handed task events here; an
                // at-least-once session delivers them itself and calls this for
                // completions only.
                let Some(delegate) = delegate else { break };
                let delivery = Delivery {
                    key,
                    event: event_for_delegate(&event.body),
                };
                delegate
                    .deliver(&delivery, scope)
                    .map_err(|error| UnitError::Delegate(error.0))?;
            }
        }
        fail::fail_point!("actor-after-delegate-before-commit", |arg| Err(
            fail_point_fired("actor-after-delegate-before-commit", arg)
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
    if record.has_undelivered_events() && delivered.count > 0 {
        delivered.actions.push(Action::DeliverEvents);
    }
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
        return Ok(Delivered::default());
    }
    let event = scope.event(session, seq)?.ok_or_else(|| {
        MachineError::InvalidRecord(format!("event {seq} of session {session} is missing"))
    })?;
    let transition = commit_delivery(scope, record, event, context)?;
    Ok(Delivered {
        count: 1,
        actions: transition.actions,
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

/// The delegate's view of a stored event body.
pub(crate) fn event_for_delegate(body: &EventBody) -> Event {
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
                    .map(|path| DownloadedFile::new(PathBuf::from(path))),
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
pub(crate) fn fail_point_fired(name: &str, arg: Option<String>) -> UnitError {
    if arg.as_deref() == Some("abort") {
        std::process::abort();
    }
    UnitError::Delegate(format!("fail point {name} fired"))
}
