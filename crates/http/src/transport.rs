//! Talking to the server: building the request of one hop (redirects are followed by
//! [`crate::redirect`]), sending it under the idle timer, reading bounded bodies, and
//! classifying every transport error.
//!
//! The idle timer is the engine's own rather than reqwest's `read_timeout`: reqwest's
//! timer for the response head starts when the request starts and is not reset while a
//! request body is being sent, so it would cut a long upload. Here the timer is reset
//! whenever a request body chunk is taken or a response chunk arrives. It leaves the
//! connect its own timeout first, so that a connect that hangs is reported as what it is
//! ([`RetryReason::Unreachable`]).
//!
//! Transport errors split in two: those where no server answered at all (the name did
//! not resolve, the connection was refused, the host or network is unreachable, the
//! connect timed out) are [`RetryReason::Unreachable`], a wait for connectivity; every
//! failure after a connection was made (a reset, an idle timeout, a truncated body, a
//! protocol error) keeps its own reason. `classify_error` states the order of the tests.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT_ENCODING, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use crate::classify::{
    Classified, FailReason, Response, RetryReason, StatusClass, classify_status,
};
use crate::limits::EngineConfig;
use crate::redirect::{Hop, is_body_header};
use crate::request::{Target, TransferRequest};
use crate::retry_after::RetryAfter;

/// The header carrying a target's idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// When the connection last moved, shared with a request body stream.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that the connection moved now.
    pub(crate) fn touch(&self) {
        let elapsed_ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(elapsed_ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A request for one hop of a redirect chain: the caller's headers (less the sensitive
/// ones once the chain left the original origin, less those describing a dropped body),
/// then the engine's own: `Accept-Encoding: identity` (offsets must be offsets into the
/// file), the target's `Idempotency-Key`, and `extra` (a download's range). Sensitive
/// values are marked so (hyper never indexes them in HPACK, reqwest's `Debug` hides them).
pub(crate) fn request_builder(
    client: &reqwest::Client,
    request: &TransferRequest,
    hop: &Hop,
    target: &Target,
    extra: &[(HeaderName, String)],
) -> reqwest::RequestBuilder {
    let mut builder = client.request(hop.method.to_reqwest(), hop.url.clone());
    for (name, value) in &request.headers {
        let sensitive = request.is_sensitive(name);
        let replaced =
            target.idempotency_key.is_some() && name.eq_ignore_ascii_case(IDEMPOTENCY_KEY);
        if replaced
            || (hop.strip_sensitive && sensitive)
            || (!hop.with_body && is_body_header(name))
        {
            continue;
        }
        builder = match HeaderValue::from_str(value) {
            Ok(mut value) => {
                value.set_sensitive(sensitive);
                builder.header(name.as_str(), value)
            }
            // Validation refused such values already; if one got here, reqwest reports it
            // as a builder error (InvalidRequest) without quoting it.
            Err(_) => builder.header(name.as_str(), value.as_str()),
        };
    }
    builder = builder.header(ACCEPT_ENCODING, "identity");
    if let Some(key) = &target.idempotency_key {
        builder = builder.header(IDEMPOTENCY_KEY, key.as_str());
    }
    for (name, value) in extra {
        builder = builder.header(name.clone(), value.as_str());
    }
    builder
}

/// How long past the connect timeout the idle timer waits for the client's own connect
/// error, so that a connect that hangs ends as [`RetryReason::Unreachable`] rather than
/// as an idle timeout.
const CONNECT_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Sends a request and waits for the response head, failing when nothing has moved for
/// `idle` (request body chunks taken count as movement). Connecting is not silence on a
/// connection: the wait lasts at least `connect_timeout` (and a margin), so that a
/// connect that never completes is reported as the client's connect timeout.
pub(crate) async fn send(
    builder: reqwest::RequestBuilder,
    idle: Duration,
    connect_timeout: Duration,
    activity: &Activity,
) -> Result<reqwest::Response, Classified> {
    activity.touch();
    let connecting_until = Instant::now() + connect_timeout + CONNECT_TIMEOUT_MARGIN;
    let send = builder.send();
    tokio::pin!(send);
    loop {
        let deadline = (activity.last() + idle).max(connecting_until);
        tokio::select! {
            biased;
            result = &mut send => return result.map_err(|error| classify_error(&error)),
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if activity.last() + idle <= now && connecting_until <= now {
                    return Err(Classified::retry(
                        RetryReason::IdleTimeout,
                        None,
                        format!("no response within {idle:?} of the last request byte"),
                    ));
                }
            }
        }
    }
}

/// The next response body chunk, failing when none arrives within `idle`.
pub(crate) async fn next_chunk(
    response: &mut reqwest::Response,
    idle: Duration,
) -> Result<Option<Bytes>, Classified> {
    match tokio::time::timeout(idle, response.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(error)) => Err(classify_error(&error)),
        Err(_elapsed) => Err(Classified::retry(
            RetryReason::IdleTimeout,
            None,
            format!("no response bytes for {idle:?}"),
        )),
    }
}

/// Reads a body up to `cap` bytes; the flag says whether more was there.
pub(crate) async fn read_body_capped(
    response: &mut reqwest::Response,
    cap: u64,
    idle: Duration,
) -> Result<(Vec<u8>, bool), Classified> {
    let mut body = Vec::new();
    while let Some(chunk) = next_chunk(response, idle).await? {
        let room = usize::try_from(cap.saturating_sub(body.len() as u64)).unwrap_or(usize::MAX);
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Response headers as kept in a [`Response`]: lower-case names, sensitive ones dropped
/// (built-in, and those `request` marked, should the server echo them), at most `max`.
pub(crate) fn response_headers(
    headers: &HeaderMap,
    max: usize,
    request: &TransferRequest,
) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !request.is_sensitive(name.as_str()))
        .take(max)
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// The outcome of a response by its status alone: the caller has already handled the
/// kind-specific successes, so a `Success` here keeps a capped body like a rejection.
/// `request_body_bytes` is an upload's body sent ([`Response::bytes`]); without it, the
/// bytes are the kept body's.
pub(crate) async fn answer(
    mut response: reqwest::Response,
    config: &EngineConfig,
    request: &TransferRequest,
    request_body_bytes: Option<u64>,
) -> Classified {
    let status = response.status().as_u16();
    match classify_status(status) {
        StatusClass::Retry => {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| RetryAfter::parse(value, SystemTime::now()));
            Classified::retry(
                RetryReason::Status(status),
                retry_after,
                format!("the server answered {status}"),
            )
        }
        StatusClass::Failed => Classified::failed(
            FailReason::UnexpectedStatus(status),
            format!("{status} is not a final HTTP status"),
        ),
        class @ (StatusClass::Rejected | StatusClass::Success) => {
            let headers = response_headers(
                response.headers(),
                config.limits.response_headers_max,
                request,
            );
            let cap = config.limits.error_body_bytes_max;
            let body = match read_body_capped(&mut response, cap, config.read_idle_timeout).await {
                Ok((body, _more)) => body,
                // The status is the answer; a body cut short does not change it.
                Err(_) => Vec::new(),
            };
            let response = Response {
                status,
                headers,
                bytes: request_body_bytes.unwrap_or(body.len() as u64),
                body,
                file: None,
            };
            if class == StatusClass::Success {
                Classified::Success(response)
            } else {
                Classified::Rejected(response)
            }
        }
    }
}

/// Classifies a reqwest error. reqwest exposes its kinds only as `is_*` predicates, so
/// this is an ordered chain of tests; the last case is an explicit, documented decision.
pub(crate) fn classify_error(error: &reqwest::Error) -> Classified {
    // reqwest quotes the URL, query included; Classified's constructors redact it.
    let message = error_chain(error);
    // The client follows no redirect (`Policy::none()`), so this is unreachable; were a
    // redirect error to appear, it is one.
    if error.is_redirect() {
        return Classified::failed(FailReason::InvalidRedirect, message);
    }
    if error.is_builder() {
        return Classified::failed(FailReason::InvalidRequest, message);
    }
    let https = error.url().is_some_and(|url| url.scheme() == "https");
    let io_kinds = io_error_kinds(error);
    if error.is_connect() {
        // rustls errors reach us as io::Error(InvalidData) from the TLS stream.
        if https && io_kinds.contains(&io::ErrorKind::InvalidData) {
            return Classified::failed(FailReason::Tls, message);
        }
        let reason = if nothing_answered(error, &io_kinds) {
            RetryReason::Unreachable
        } else {
            RetryReason::Connect
        };
        return Classified::retry(reason, None, message);
    }
    if error.is_timeout() {
        return Classified::retry(RetryReason::IdleTimeout, None, message);
    }
    if error.is_body() || error.is_decode() {
        let reason = if is_reset(&io_kinds) {
            RetryReason::Reset
        } else {
            RetryReason::TruncatedBody
        };
        return Classified::retry(reason, None, message);
    }
    if error.is_request() {
        // hyper's error kinds are private; the reason is only informative, both retry.
        let closed = message.contains("closed") || message.contains("canceled");
        let reason =
            if is_reset(&io_kinds) || io_kinds.contains(&io::ErrorKind::UnexpectedEof) || closed {
                RetryReason::Reset
            } else {
                RetryReason::Protocol
            };
        return Classified::retry(reason, None, message);
    }
    // Status errors are never produced (no error_for_status) and upgrades are never
    // requested; anything else is a transport failure we cannot attribute: retried,
    // bounded by the caller's attempt limit.
    Classified::retry(RetryReason::Transport, None, message)
}

/// Whether a connect error means that no server answered at all: the name did not
/// resolve (reqwest's resolver marks it, [`reqwest::Error::is_dns`]), connecting timed
/// out (reqwest's connect timeout, which also covers the TLS handshake), or the socket's
/// connect failed with refused, host or network unreachable, network down, or no usable
/// local address. hyper-util reports a name that resolved to no address as
/// `NotConnected`. Anything else in the connect phase (a reset or close during the TLS
/// handshake, a proxy's refusal, no descriptors left) is [`RetryReason::Connect`].
///
/// Name resolution and unreachable networks are not exercised by the tests, which never
/// leave loopback; this rule rests on reqwest 0.13's `DnsError` and connect timeout
/// (`reqwest::error::TimedOut`, seen by `is_timeout`) and on hyper-util's connector,
/// which keeps the OS error of `connect(2)`.
fn nothing_answered(error: &reqwest::Error, kinds: &[io::ErrorKind]) -> bool {
    error.is_dns()
        || error.is_timeout()
        || kinds.iter().any(|kind| {
            matches!(
                kind,
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::NetworkDown
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::TimedOut
            )
        })
}

fn is_reset(kinds: &[io::ErrorKind]) -> bool {
    kinds.iter().any(|kind| {
        matches!(
            kind,
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
    })
}

/// The kinds of every `io::Error` in the chain, including those wrapped inside another
/// `io::Error` (whose `source()` skips the wrapped error itself: hyper-util wraps the TLS
/// stream's `InvalidData` in an `Other`).
fn io_error_kinds(error: &(dyn StdError + 'static)) -> Vec<io::ErrorKind> {
    let mut kinds = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    // Bounded: error chains are short, and this stops a pathological cycle.
    for _ in 0..32 {
        let Some(error) = current else { break };
        let mut inner = error.downcast_ref::<io::Error>();
        while let Some(io_error) = inner {
            kinds.push(io_error.kind());
            inner = io_error
                .get_ref()
                .and_then(|wrapped| wrapped.downcast_ref::<io::Error>());
        }
        current = error.source();
    }
    kinds
}

/// The error and its causes on one line.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        current = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response keeps its headers but the built-in sensitive ones and those the request
    /// marked, which a server might echo.
    #[test]
    fn response_headers_drop_sensitive_ones() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("set-cookie", "session=secret"),
            ("x-api-key", "secret"),
            ("X-Api-Key", "secret-again"),
            ("content-type", "text/plain"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                HeaderValue::from_static(value),
            );
        }
        let request = TransferRequest::download("http://127.0.0.1/x")
            .with_sensitive_header("X-API-KEY", "secret");
        let kept = response_headers(&headers, 10, &request);
        assert_eq!(
            kept,
            vec![("content-type".to_owned(), "text/plain".to_owned())]
        );
    }
}
