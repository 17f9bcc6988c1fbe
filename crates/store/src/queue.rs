//! The bounded submission queue between submitters and the writer thread.
//!
//! A std mutex is right here: the critical sections are a push or a drain of a few
//! pointers, never held across I/O or an `.await`. Blocking submitters wait on a
//! condition variable while the queue is full; async submitters leave a waker and get
//! `Pending`, so no async runtime thread ever blocks on it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::writer::Job;

struct QueueState {
    jobs: VecDeque<Box<dyn Job>>,
    /// No more submissions; the writer drains what is left and stops.
    closed: bool,
    /// Async submitters waiting for room.
    room_wakers: Vec<Waker>,
    /// Whether the writer is blocked waiting for a job, and how many blocking submitters
    /// wait for room: condition variables are signalled only when someone waits (a futex
    /// wake per submission is measurable at hundreds of thousands a second).
    writer_waiting: bool,
    submitters_waiting: usize,
}

/// The queue of units waiting for the writer.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    /// Signalled when a job arrives or the queue closes (the writer waits on it).
    arrived: Condvar,
    /// Signalled when the writer takes jobs out (blocking submitters wait on it).
    room: Condvar,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::with_capacity(capacity),
                closed: false,
                room_wakers: Vec::new(),
                writer_waiting: false,
                submitters_waiting: 0,
            }),
            capacity,
            arrived: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Each operation leaves the state consistent before it can panic (pushes and
        // drains of a VecDeque), so a poisoned lock still guards a usable queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Submits a job, waiting while the queue is full. Gives the job back if the queue is
    /// closed.
    pub(crate) fn push_blocking(&self, job: Box<dyn Job>) -> Result<(), Box<dyn Job>> {
        let mut state = self.lock();
        while state.jobs.len() >= self.capacity && !state.closed {
            state.submitters_waiting += 1;
            state = self
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.submitters_waiting -= 1;
        }
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        if state.writer_waiting {
            self.arrived.notify_one();
        }
        Ok(())
    }

    /// Submits `job` if there is room (taking it out of the option), or registers the
    /// waker and returns `Pending`. `Ready(false)` means the queue is closed.
    pub(crate) fn poll_push(
        &self,
        cx: &mut Context<'_>,
        job: &mut Option<Box<dyn Job>>,
    ) -> Poll<bool> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(false);
        }
        if state.jobs.len() >= self.capacity {
            if !state.room_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                state.room_wakers.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        if let Some(job) = job.take() {
            state.jobs.push_back(job);
            if state.writer_waiting {
                self.arrived.notify_one();
            }
        }
        Poll::Ready(true)
    }

    /// Waits for at least one job and moves up to `max` of them into `batch`. Returns
    /// `false` once the queue is closed and empty: the writer should stop.
    pub(crate) fn pop_batch(&self, max: usize, batch: &mut Vec<Box<dyn Job>>) -> bool {
        let mut state = self.lock();
        while state.jobs.is_empty() && !state.closed {
            state.writer_waiting = true;
            state = self
                .arrived
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.writer_waiting = false;
        }
        if state.jobs.is_empty() {
            return false;
        }
        let take = state.jobs.len().min(max);
        batch.extend(state.jobs.drain(..take));
        let wakers = std::mem::take(&mut state.room_wakers);
        let submitters_waiting = state.submitters_waiting > 0;
        drop(state);
        if submitters_waiting {
            self.room.notify_all();
        }
        for waker in wakers {
            waker.wake();
        }
        true
    }

    /// How many jobs are waiting (not yet taken by the writer).
    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Refuses further submissions and wakes everyone waiting.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let wakers = std::mem::take(&mut state.room_wakers);
        drop(state);
        self.arrived.notify_all();
        self.room.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }
}
