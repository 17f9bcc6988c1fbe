//! Handing events to the delegate: exactly once through a transactional delegate, at
//! least once through an async one. Stored completions always run transactionally.
//!
//! A failing delivery heals: the failure is recorded (count, last error, next attempt)
//! and tried again with capped backoff while the session's transfers go on; the session
//! is not restarted. A slow transactional delegate slows its own session only: a unit
//! stops taking events once its time budget is spent, and the next unit waits as long as
//! the last one held the writer, so other sessions' units commit in between.

use std::time::Duration;

use actix::prelude::*;
use session_store::EventBody;

use super::SessionActor;
use crate::delegate::{Delegate, Delivery, DeliveryKey};
use crate::error::UnitError;
use crate::units::{
    Delivered, advance_cursor, deliver_transactional, event_for_delegate, record_delivery_failure,
    redeliver_dead_letter,
};

/// The longest a session waits after a slow delivery unit before its next one.
const PACE_MS_MAX: u64 = 10_000;

impl SessionActor {
    /// Delivers the next events if a delegate is attached and nothing is in flight.
    pub(super) fn deliver(&mut self, ctx: &mut Context<Self>) {
        if self.faulted.is_some() || self.delivery_blocked.is_some() {
            return;
        }
        if self.delivering {
            // An event may have been appended after the unit in flight read the outbox.
            self.deliver_again = true;
            return;
        }
        if let Some(not_before_ms) = self.delivery_not_before_ms
            && self.shared.clock.now_ms() < not_before_ms
        {
            // A failed (or slow) delivery waits for its timer.
            return;
        }
        let Some(delegate) = self.delegate.clone() else {
            // Events wait in the outbox until the application attaches a delegate.
            return;
        };
        self.delivering = true;
        match delegate {
            Delegate::Transactional(delegate) => {
                let id = self.id.clone();
                let units = self.shared.unit_context();
                let events_max = self.delivery_events_per_unit;
                let downloads = self.shared.download_dir(&self.id);
                let budget = self.shared.delivery.clone();
                let pending = self.shared.store.write_async(move |scope| {
                    let completions = units.completions();
                    let context = units.machine_context();
                    deliver_transactional(
                        scope,
                        &id,
                        &downloads,
                        Some(&*delegate),
                        &completions,
                        &context,
                        events_max,
                        &budget,
                    )
                });
                ctx.spawn(pending.into_actor(self).map(|result, act, ctx| {
                    act.delivering = false;
                    act.delivered(result, ctx);
                }));
            }
            Delegate::AtLeastOnce(delegate) => self.deliver_at_least_once(delegate, ctx),
        }
    }

    /// Arms the timer that tries delivery again at `at_ms` (a failed or slow one).
    pub(super) fn schedule_delivery(&mut self, at_ms: u64, ctx: &mut Context<Self>) {
        if let Some(timer) = self.delivery_timer.take() {
            ctx.cancel_future(timer);
        }
        self.delivery_not_before_ms = Some(at_ms);
        let delay = Duration::from_millis(at_ms.saturating_sub(self.shared.clock.now_ms()));
        self.delivery_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.delivery_timer = None;
            act.delivery_not_before_ms = None;
            act.deliver(ctx);
        }));
    }

    /// Tries delivery again now, whatever the backoff said (`Session::retry_now`).
    pub(super) fn retry_delivery_now(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.delivery_timer.take() {
            ctx.cancel_future(timer);
        }
        self.delivery_not_before_ms = None;
        self.delivery_blocked = None;
        self.deliver(ctx);
    }

    fn delivered(&mut self, result: Result<Delivered, UnitError>, ctx: &mut Context<Self>) {
        match result {
            Ok(delivered) => {
                tracing::debug!(parent: &self.span, events = delivered.count, "delivered");
                self.storage_committed();
                if delivered.count > 0 {
                    self.delivery_events_per_unit = (self.delivery_events_per_unit * 2)
                        .min(crate::units::DELIVERY_EVENTS_PER_UNIT_MAX);
                }
                self.note_slow(&delivered);
                if let Some(active) = delivered.active {
                    self.active = active;
                }
                self.perform_actions(&delivered.actions, &[], ctx);
                self.generations_finished(delivered.finished_through);
                if delivered.held_ms > self.shared.delivery.unit_budget_ms {
                    // The unit held the writer past its budget: give other sessions as
                    // long before this one takes it again.
                    let pace_ms = delivered.held_ms.min(PACE_MS_MAX);
                    self.schedule_delivery(self.shared.clock.now_ms() + pace_ms, ctx);
                } else if std::mem::take(&mut self.deliver_again) {
                    self.deliver(ctx);
                }
            }
            Err(UnitError::UnknownCompletion(name)) => {
                tracing::error!(parent: &self.span, %name,
                    "no completion handler with this name is registered; the session waits");
                self.delivery_blocked = Some(format!("unknown completion handler {name:?}"));
            }
            Err(UnitError::Delegate { seq, message }) => {
                self.delivery_failed(Some(seq), message, ctx)
            }
            Err(UnitError::Store(session_store::Error::UnitPanicked { message })) => {
                self.delivery_failed(None, format!("panic: {message}"), ctx);
            }
            Err(UnitError::Store(error)) if error.kind() == session_store::ErrorKind::Full => {
                let now_ms = self.shared.clock.now_ms();
                let since = *self.storage_full_since_ms.get_or_insert(now_ms);
                self.shared.note_storage_full();
                let delay_ms = (250 + now_ms.saturating_sub(since) / 2).min(30_000);
                tracing::warn!(parent: &self.span, delay_ms,
                    "the store's disk is full; delivery tries again later");
                self.schedule_delivery(now_ms + delay_ms, ctx);
            }
            Err(error) => {
                self.delivery_events_per_unit = 1;
                let error = error.into_error(&self.id);
                self.fail(format!("delivery: {error}"), ctx);
            }
        }
    }

    fn note_slow(&mut self, delivered: &Delivered) {
        if delivered.slow_calls > 0 {
            self.slow_deliveries += delivered.slow_calls;
            self.slowest_delivery_ms = self.slowest_delivery_ms.max(delivered.slowest_call_ms);
            tracing::warn!(parent: &self.span, calls = delivered.slow_calls,
                slowest_ms = delivered.slowest_call_ms,
                "delegate calls over the slow-call threshold: a transactional delegate holds the store's writer while it runs");
        }
    }

    /// A delivery failed. Several events per unit are all undone by one failure, so the
    /// good ones before it go again one per unit; a failure of a unit of one event is the
    /// event's own, and is recorded (with its backoff, or its move to the dead letters).
    fn delivery_failed(&mut self, seq: Option<u64>, message: String, ctx: &mut Context<Self>) {
        let many = self.delivery_events_per_unit > 1;
        self.delivery_events_per_unit = 1;
        if many {
            tracing::debug!(parent: &self.span, "a delivery unit failed; one event per unit now");
            self.deliver(ctx);
            return;
        }
        tracing::warn!(parent: &self.span, seq, error = %message, "delivery failed; it is tried again later");
        let id = self.id.clone();
        let units = self.shared.unit_context();
        let pending = self.shared.store.write_async(move |scope| {
            let seq = match seq {
                Some(seq) => seq,
                // A panic carries no sequence: it was the next event's (one per unit).
                None => {
                    scope
                        .session(&id)?
                        .ok_or(crate::machine::MachineError::NoSession)?
                        .delivered_seq
                }
            };
            record_delivery_failure(scope, &id, seq, message.clone(), &units.machine_context())
        });
        ctx.spawn(
            pending
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(transition) => act.perform(&transition, ctx),
                    Err(UnitError::Machine(crate::machine::MachineError::StaleDelivery {
                        ..
                    })) => {
                        act.deliver(ctx);
                    }
                    Err(error) => {
                        let error = error.into_error(&act.id);
                        act.fail(format!("recording a failed delivery: {error}"), ctx);
                    }
                }),
        );
    }

    /// Delivers a dead-lettered event again (see `units::redeliver_dead_letter`). With an
    /// async delegate the call runs first and the removal from the list commits after
    /// it (at least once, like its other deliveries).
    pub(super) fn redeliver(
        &mut self,
        seq: u64,
    ) -> ResponseActFuture<Self, Result<(), crate::error::Error>> {
        let Some(delegate) = self.delegate.clone() else {
            return Box::pin(actix::fut::ready(Err(crate::error::Error::Unsupported {
                what: "redelivering a dead letter before a delegate is attached",
            })));
        };
        let id = self.id.clone();
        let units = self.shared.unit_context();
        let downloads = self.shared.download_dir(&self.id);
        let store = self.shared.store.clone();
        let transactional = match &delegate {
            Delegate::Transactional(delegate) => Some(std::sync::Arc::clone(delegate)),
            Delegate::AtLeastOnce(_) => None,
        };
        let asynchronous = match delegate {
            Delegate::AtLeastOnce(delegate) => Some(delegate),
            Delegate::Transactional(_) => None,
        };
        let timeout = Duration::from_millis(self.shared.delivery.async_timeout_ms);
        let run = async move {
            if let Some(delegate) = asynchronous {
                let dead = store
                    .snapshot()?
                    .dead_letter(&id, seq)?
                    .ok_or(UnitError::NoDeadLetter(seq))?;
                if !matches!(dead.event.body, EventBody::Completion(_)) {
                    let delivery = Delivery {
                        key: DeliveryKey {
                            session: id.clone(),
                            generation: dead.event.generation,
                            seq,
                        },
                        event: event_for_delegate(&dead.event.body, &downloads),
                    };
                    match tokio::time::timeout(timeout, delegate.deliver(delivery)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            return Err(UnitError::Delegate {
                                seq,
                                message: error.0,
                            });
                        }
                        Err(_) => {
                            return Err(UnitError::Delegate {
                                seq,
                                message: format!("no answer within {timeout:?}"),
                            });
                        }
                    }
                }
            }
            store
                .write_async(move |scope| {
                    let completions = units.completions();
                    redeliver_dead_letter(
                        scope,
                        &id,
                        seq,
                        &downloads,
                        transactional.as_deref(),
                        &completions,
                    )
                })
                .await
        };
        Box::pin(run.into_actor(self).map(|result, act, ctx| {
            let actions = result.map_err(|error| error.into_error(&act.id))?;
            act.perform_actions(&actions, &[], ctx);
            Ok(())
        }))
    }

    /// At least once: the delegate runs outside any transaction, then the cursor
    /// advance commits. A crash in between delivers the same key again.
    fn deliver_at_least_once(
        &mut self,
        delegate: std::sync::Arc<dyn crate::delegate::AsyncDelegate>,
        ctx: &mut Context<Self>,
    ) {
        let next = self.shared.store.snapshot().and_then(|snapshot| {
            let Some(session) = snapshot.session(&self.id)? else {
                return Ok(None);
            };
            if !session.has_undelivered_events() {
                return Ok(None);
            }
            snapshot.event(&self.id, session.delivered_seq)
        });
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                self.delivering = false;
                return;
            }
            Err(error) => {
                self.delivering = false;
                return self.fail(format!("reading the outbox: {error}"), ctx);
            }
        };
        if let EventBody::Completion(_) = event.body {
            // Completions are transactional whatever the delegate.
            let id = self.id.clone();
            let units = self.shared.unit_context();
            let downloads = self.shared.download_dir(&self.id);
            let budget = self.shared.delivery.clone();
            let pending = self.shared.store.write_async(move |scope| {
                let completions = units.completions();
                let context = units.machine_context();
                deliver_transactional(
                    scope,
                    &id,
                    &downloads,
                    None,
                    &completions,
                    &context,
                    1,
                    &budget,
                )
            });
            ctx.spawn(pending.into_actor(self).map(|result, act, ctx| {
                act.delivering = false;
                act.delivered(result, ctx);
            }));
            return;
        }
        let seq = event.seq;
        let delivery = Delivery {
            key: DeliveryKey {
                session: self.id.clone(),
                generation: event.generation,
                seq,
            },
            event: event_for_delegate(&event.body, &self.shared.download_dir(&self.id)),
        };
        let id = self.id.clone();
        let store = self.shared.store.clone();
        let units = self.shared.unit_context();
        let timeout = Duration::from_millis(self.shared.delivery.async_timeout_ms);
        let run = async move {
            match tokio::time::timeout(timeout, delegate.deliver(delivery)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(UnitError::Delegate {
                        seq,
                        message: error.0,
                    });
                }
                Err(_elapsed) => {
                    return Err(UnitError::Delegate {
                        seq,
                        message: format!("the async delegate did not answer within {timeout:?}"),
                    });
                }
            }
            fail::fail_point!("actor-after-delegate-before-commit", |arg| {
                Err(crate::units::fail_point_fired(
                    "actor-after-delegate-before-commit",
                    arg,
                    seq,
                ))
            });
            store
                .write_async(move |scope| {
                    let context = units.machine_context();
                    advance_cursor(scope, &id, seq, &context)
                })
                .await
        };
        ctx.spawn(run.into_actor(self).map(|result, act, ctx| {
            act.delivering = false;
            act.delivered(result, ctx);
        }));
    }
}
