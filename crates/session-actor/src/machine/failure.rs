//! `DeliveryFailed`: the delegate (or a completion handler) refused, panicked or timed
//! out on the next event. Nothing is skipped: the failure is recorded with its count and
//! the time of the next attempt (capped exponential backoff with jitter), and delivery
//! tries again then, while the session's transfers go on. Under a dead-letter policy, the
//! attempt that reaches its limit moves the event to the dead-letter list instead, in
//! this same transition, and delivery goes on with the next event.

use session_store::{
    DeliveryFailure, DeliveryPolicy, EventRecord, FAILURE_MESSAGE_BYTES_MAX, SessionRecord,
};

use super::{Action, Context, DeadLetter, MachineError, Transition, delivery_delay_ms, step::Step};

pub(super) fn delivery_failed(
    session: SessionRecord,
    event: EventRecord,
    error: String,
    context: &Context,
) -> Result<Transition, MachineError> {
    if event.session != session.id || event.seq != session.delivered_seq {
        // Delivered (or moved) meanwhile by another unit: the failure is old news.
        return Err(MachineError::StaleDelivery { seq: event.seq });
    }
    if !session.has_undelivered_events() {
        return Err(MachineError::InvalidRecord(format!(
            "a failed delivery of event {} past the outbox's end {}",
            event.seq, session.next_event_seq
        )));
    }
    let error = bounded(error);
    let mut step = Step::new(session, context);
    let now_ms = step.now_ms();
    let (attempts, since_ms) = match &step.session.delivery_failure {
        Some(failure) if failure.seq == event.seq => {
            (failure.attempts.saturating_add(1), failure.since_ms)
        }
        Some(_) | None => (1, now_ms),
    };
    let dead = matches!(
        step.session.config.delivery_policy,
        DeliveryPolicy::DeadLetter { attempts_max } if attempts >= attempts_max
    );
    if dead {
        step.session.delivery_failure = None;
        step.session.delivered_seq += 1;
        step.session.dead_letters += 1;
        step.dead_letters.push(DeadLetter {
            event,
            attempts,
            last_error: error,
            moved_ms: now_ms,
        });
        if step.session.has_undelivered_events() {
            step.actions.push(Action::DeliverEvents);
        }
        return Ok(step.finish());
    }
    let delay_ms = delivery_delay_ms(&step.session.config, attempts, context.jitter_permille);
    let next_attempt_ms = now_ms.saturating_add(delay_ms);
    step.session.delivery_failure = Some(DeliveryFailure {
        seq: event.seq,
        attempts,
        since_ms,
        next_attempt_ms,
        last_error: error,
    });
    step.actions.push(Action::ScheduleDelivery {
        at_ms: next_attempt_ms,
    });
    Ok(step.finish())
}

fn bounded(mut message: String) -> String {
    if message.len() > FAILURE_MESSAGE_BYTES_MAX {
        let mut end = FAILURE_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}
