//! A one-shot reply from the writer to one submitter, waitable from a blocking thread
//! (condition variable) or from any async runtime (waker); no runtime is assumed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

enum State<R> {
    /// No reply yet: the waker of the last poll, if polled, and whether a thread is
    /// blocked in `wait` (only then is the condition variable signalled: a futex wake
    /// per reply is measurable at hundreds of thousands of replies a second).
    Waiting { waker: Option<Waker>, blocked: bool },
    /// The reply, not yet taken.
    Ready(R),
    /// The sender was dropped without a reply (the writer stopped).
    Closed,
    /// The reply was taken.
    Taken,
}

struct Slot<R> {
    state: Mutex<State<R>>,
    ready: Condvar,
}

impl<R> Slot<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // Every update replaces the whole state in one assignment, so a poisoned lock
        // still guards a consistent value.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, next: State<R>) {
        let previous = std::mem::replace(&mut *self.lock(), next);
        if let State::Waiting { waker, blocked } = previous {
            if blocked {
                self.ready.notify_all();
            }
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// Creates a connected sender and receiver.
pub(crate) fn channel<R>() -> (ReplySender<R>, ReplyReceiver<R>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting {
            waker: None,
            blocked: false,
        }),
        ready: Condvar::new(),
    });
    (
        ReplySender {
            slot: Some(Arc::clone(&slot)),
        },
        ReplyReceiver { slot },
    )
}

/// The writer's half: sends once; dropped unsent, it tells the receiver the writer stopped.
pub(crate) struct ReplySender<R> {
    slot: Option<Arc<Slot<R>>>,
}

impl<R> ReplySender<R> {
    /// Delivers the reply (a receiver that is gone simply never reads it).
    pub(crate) fn send(mut self, reply: R) {
        if let Some(slot) = self.slot.take() {
            slot.complete(State::Ready(reply));
        }
    }
}

impl<R> Drop for ReplySender<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.complete(State::Closed);
        }
    }
}

/// The submitter's half.
pub(crate) struct ReplyReceiver<R> {
    slot: Arc<Slot<R>>,
}

impl<R> ReplyReceiver<R> {
    /// Blocks until the reply arrives; `None` if the sender was dropped without one.
    pub(crate) fn wait(self) -> Option<R> {
        let mut state = self.slot.lock();
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Ready(reply) => return Some(reply),
                State::Closed | State::Taken => return None,
                State::Waiting { waker, .. } => {
                    *state = State::Waiting {
                        waker,
                        blocked: true,
                    };
                    state = self
                        .slot
                        .ready
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

impl<R> Future for ReplyReceiver<R> {
    type Output = Option<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<R>> {
        let mut state = self.slot.lock();
        match std::mem::replace(&mut *state, State::Taken) {
            State::Ready(reply) => Poll::Ready(Some(reply)),
            State::Closed | State::Taken => Poll::Ready(None),
            State::Waiting { blocked, .. } => {
                *state = State::Waiting {
                    waker: Some(cx.waker().clone()),
                    blocked,
                };
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply sent from another thread reaches a blocking receiver, and a sender dropped
    /// unsent reads as `None` rather than hanging.
    #[test]
    fn blocking_reply_and_closed_sender() {
        let (sender, receiver) = channel::<u32>();
        let thread = std::thread::spawn(move || sender.send(7));
        assert_eq!(receiver.wait(), Some(7));
        thread.join().expect("sender thread");

        let (sender, receiver) = channel::<u32>();
        drop(sender);
        assert_eq!(receiver.wait(), None);
    }
}
