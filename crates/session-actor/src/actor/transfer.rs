//! Running one transfer attempt and turning the engine's classification into a machine
//! input.

use std::time::{Duration, SystemTime};

use actix::prelude::*;
use session_http::{
    Classified, FailReason, Progress, Response, RetryReason, Target, TransferRequest,
};
use session_store::{
    FAILURE_MESSAGE_BYTES_MAX, Failure, FailureReason, RESPONSE_HEADERS_MAX, ResponseSummary,
    TaskId, TaskRecord, WaitReason,
};
use tokio::sync::watch;
use tracing::Instrument;

use super::SessionActor;
use crate::clock::unix_ms;
use crate::machine::{Input, TransferResult};

impl SessionActor {
    /// Starts the transfer of a task that just moved to `Running { attempt }`.
    pub(super) fn transfer(&mut self, record: TaskRecord, attempt: u32, ctx: &mut Context<Self>) {
        let task = record.id.clone();
        let request: TransferRequest = match crate::requests::decode(&record.request) {
            Ok(request) => request,
            Err(message) => {
                let result = TransferResult::Failed(Failure {
                    reason: FailureReason::InvalidRequest,
                    message,
                    attempts: attempt,
                });
                return self.submit_and_perform(
                    Input::Result {
                        task,
                        attempt,
                        result,
                    },
                    ctx,
                );
            }
        };
        let target = Target {
            download_dir: self.shared.download_dir(&self.id),
            name: super::download_name(&task, record.incarnation),
            idempotency_key: Some(format!("{}/{}", self.id, task)),
        };
        let progress = self
            .progress
            .entry(task.clone())
            .or_insert_with(|| {
                watch::channel(Progress {
                    bytes_done: 0,
                    bytes_expected: None,
                })
                .0
            })
            .clone();
        let engine = self.shared.engine.clone();
        let epoch = self.epoch;
        let span = tracing::info_span!(parent: &self.span, "task", id = %task, attempt);
        let running = async move { engine.run(&request, &target, Some(&progress)).await }
            .instrument(span)
            .into_actor(self)
            .map(move |classified, act, ctx| {
                let task_done = task.clone();
                act.transfers.remove(&task_done);
                if let Some(handle) = act.deadline_timers.remove(&task_done) {
                    ctx.cancel_future(handle);
                }
                if epoch != act.epoch {
                    return;
                }
                fail::fail_point!("actor-between-transfer-and-result", |arg| {
                    if arg.as_deref() == Some("abort") {
                        std::process::abort();
                    }
                });
                let result = classify(classified, act.shared.clock.now_ms());
                act.submit_and_perform(
                    Input::Result {
                        task: task_done,
                        attempt,
                        result,
                    },
                    ctx,
                );
            });
        let handle = ctx.spawn(running);
        self.transfers.insert(record.id, handle);
    }

    /// Arms the timer that expires a running task at its resource deadline.
    pub(super) fn arm_deadline(&mut self, task: TaskId, at_ms: u64, ctx: &mut Context<Self>) {
        let delay = Duration::from_millis(at_ms.saturating_sub(self.shared.clock.now_ms()));
        let key = task.clone();
        let handle = ctx.run_later(delay, move |act, ctx| {
            act.deadline_timers.remove(&task);
            act.submit_and_perform(Input::Expire { task }, ctx);
        });
        if let Some(old) = self.deadline_timers.insert(key, handle) {
            ctx.cancel_future(old);
        }
    }
}

/// The engine's classification as a machine input. Exhaustive on purpose.
pub(crate) fn classify(classified: Classified, now_ms: u64) -> TransferResult {
    match classified {
        Classified::Success(response) => TransferResult::Success(summary(response)),
        Classified::Rejected(response) => TransferResult::Rejected(summary(response)),
        Classified::Retry {
            retry_after,
            reason,
            message,
        } => {
            let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
            let retry_after_ms = retry_after.map(|after| unix_ms(after.not_before(now)));
            let message = truncate(format!("{reason:?}: {message}"));
            match wait_reason(&reason) {
                Some(reason) => TransferResult::Wait {
                    reason,
                    message,
                    retry_after_ms,
                },
                None => TransferResult::Retry {
                    retry_after_ms,
                    message,
                },
            }
        }
        Classified::Failed { reason, message } => {
            let reason_kind = match reason {
                FailReason::InvalidRequest | FailReason::InvalidUrl => {
                    FailureReason::InvalidRequest
                }
                FailReason::DeadlineExceeded => FailureReason::DeadlineExceeded,
                FailReason::TooManyRedirects
                | FailReason::InvalidRedirect
                | FailReason::Tls
                | FailReason::LocalDisk
                | FailReason::Verification(_)
                | FailReason::ResponseTooLarge
                | FailReason::UnexpectedStatus(_)
                | FailReason::UnsupportedContentEncoding(_) => FailureReason::Transfer,
            };
            TransferResult::Failed(Failure {
                reason: reason_kind,
                message: truncate(format!("{reason:?}: {message}")),
                attempts: 0,
            })
        }
    }
}

/// Which retries are waits that give the attempt back: no server answered at all, or
/// the download does not fit in the free space (the store's reserve stays untouched).
/// Exhaustive on purpose: a new reason must be placed on one side.
fn wait_reason(reason: &RetryReason) -> Option<WaitReason> {
    match reason {
        RetryReason::Unreachable => Some(WaitReason::Connectivity),
        RetryReason::InsufficientStorage { .. } | RetryReason::StorageFull => {
            Some(WaitReason::Storage)
        }
        RetryReason::Connect
        | RetryReason::Status(_)
        | RetryReason::Reset
        | RetryReason::IdleTimeout
        | RetryReason::TruncatedBody
        | RetryReason::RangeMismatch
        | RetryReason::RangeNotSatisfiable
        | RetryReason::Protocol
        | RetryReason::Transport => None,
    }
}

fn summary(response: Response) -> ResponseSummary {
    let mut headers = response.headers;
    headers.truncate(RESPONSE_HEADERS_MAX);
    ResponseSummary {
        status: response.status,
        headers,
        body: response.body,
        // The name only: the directory is the session's, found again from the root
        // (which may move between launches). The engine's names are ASCII.
        file: response.file.as_deref().and_then(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .map(str::to_owned)
        }),
        bytes: response.bytes,
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > FAILURE_MESSAGE_BYTES_MAX {
        let mut end = FAILURE_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}
