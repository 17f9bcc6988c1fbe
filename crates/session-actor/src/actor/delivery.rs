//! Handing events to the delegate: exactly once through a transactional delegate, at
//! least once through an async one. Stored completions always run transactionally.

use actix::prelude::*;
use session_store::EventBody;

use super::SessionActor;
use crate::delegate::{Delegate, Delivery, DeliveryKey};
use crate::error::UnitError;
use crate::units::{Delivered, advance_cursor, deliver_transactional, event_for_delegate};

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

    fn delivered(&mut self, result: Result<Delivered, UnitError>, ctx: &mut Context<Self>) {
        match result {
            Ok(delivered) => {
                tracing::debug!(parent: &self.span, events = delivered.count, "delivered");
                if delivered.count > 0 {
                    self.delivery_events_per_unit = (self.delivery_events_per_unit * 2)
                        .min(crate::units::DELIVERY_EVENTS_PER_UNIT_MAX);
                }
                self.perform_actions(&delivered.actions, &[], ctx);
                self.generations_finished(delivered.finished_through);
                if std::mem::take(&mut self.deliver_again) {
                    self.deliver(ctx);
                }
            }
            Err(UnitError::UnknownCompletion(name)) => {
                tracing::error!(parent: &self.span, %name,
                    "no completion handler with this name is registered; the session waits");
                self.delivery_blocked = Some(format!("unknown completion handler {name:?}"));
            }
            Err(error) => {
                self.delivery_events_per_unit = 1;
                let error = error.into_error(&self.id);
                self.fail(format!("delivery: {error}"), ctx);
            }
        }
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
            let pending = self.shared.store.write_async(move |scope| {
                let completions = units.completions();
                let context = units.machine_context();
                deliver_transactional(scope, &id, &downloads, None, &completions, &context, 1)
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
        let run = async move {
            delegate
                .deliver(delivery)
                .await
                .map_err(|error| UnitError::Delegate {
                    seq,
                    message: error.0,
                })?;
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
