//! `Deliver`: the next event in sequence reached the delegate.

use session_store::{EventBody, EventRecord, Outcome, SessionRecord};

use super::{Action, Context, MachineError, Transition, step::Step};

pub(super) fn deliver(
    session: SessionRecord,
    event: EventRecord,
    context: &Context,
) -> Result<Transition, MachineError> {
    if event.session != session.id {
        return Err(MachineError::InvalidRecord(format!(
            "event of session {} delivered to session {}",
            event.session, session.id
        )));
    }
    if event.seq != session.delivered_seq {
        return Err(MachineError::OutOfOrderDelivery {
            expected: session.delivered_seq,
            got: event.seq,
        });
    }
    if !session.has_undelivered_events() {
        return Err(MachineError::InvalidRecord(format!(
            "event {} is past the outbox's end {}",
            event.seq, session.next_event_seq
        )));
    }
    let mut step = Step::new(session, context);
    step.session.delivered_seq += 1;
    // A failure recorded for this event is over: it was delivered after all.
    step.session.delivery_failure = None;
    if let EventBody::TaskCompleted {
        outcome: Outcome::Success(response),
        ..
    } = &event.body
        && let Some(path) = &response.file
    {
        // The delegate has seen the file and its delivery commits with this unit; the
        // file may go once that commit is durable (the delegate kept a link if it wanted).
        step.actions.push(Action::RemoveFile { file: path.clone() });
    }
    if step.session.has_undelivered_events() {
        step.actions.push(Action::DeliverEvents);
    }
    Ok(step.finish())
}
