//! The outcome of an attempt and the exhaustive status table.
//!
//! # Content codings
//!
//! The engine sends `Accept-Encoding: identity` and never decodes a body (reqwest's
//! `gzip`, `brotli`, `deflate` and `zstd` features stay off, so a `Content-Encoding`
//! header reaches the engine as sent). A server may still answer with an encoded body.
//! For a **download** that is a failure, [`FailReason::UnsupportedContentEncoding`],
//! decided from the headers before a byte is written: a resumed download asks for a
//! `Range` of the file, and the ranges of an encoded representation are offsets into the
//! compressed stream, not into the file; its `Content-Length` and a checksum describe the
//! compressed bytes. Storing it would deliver a file that is not the object, and resuming
//! it would splice two streams. Decoding it on the fly would not help either: a `.part`
//! cut mid-stream cannot be resumed from its decoded length. So the response writes
//! nothing (a `.part` of earlier identity bytes stays as it was), and the task fails with
//! the coding named; retrying would get the same answer from the same server.
//!
//! **Data and upload** responses are kept as received: their body is the server's bytes,
//! still encoded, and the `content-encoding` header in [`Response::headers`] says so; the
//! application decodes it if it wants to.
//!
//! # Secrets
//!
//! Every message of a [`Classified`] built here passes through
//! [`crate::redact_urls_in`]: reqwest's errors quote the whole URL, query included.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::redact::redact_urls_in;
use crate::retry_after::RetryAfter;

/// The longest message kept in an outcome, in bytes (the store keeps at most 4 KiB).
pub const MESSAGE_BYTES_MAX: usize = 4096;

/// What one attempt came to. Every attempt ends in exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Classified {
    /// The server accepted the request (2xx) and, for a download, the file is complete,
    /// verified, fsynced and at its final path.
    Success(Response),
    /// The server answered and refused: other 4xx, 3xx left unfollowed, and the 5xx that
    /// retrying cannot fix (see [`classify_status`]).
    Rejected(Response),
    /// A transient failure; try again, not before `retry_after` if the server said so.
    Retry {
        /// The server's `Retry-After`, when it sent a valid one.
        retry_after: Option<RetryAfter>,
        /// What went wrong.
        reason: RetryReason,
        /// Details for humans (never a credential, never a URL's query).
        message: String,
    },
    /// A failure that another attempt would repeat.
    Failed {
        /// What went wrong.
        reason: FailReason,
        /// Details for humans (never a credential, never a URL's query).
        message: String,
    },
}

impl Classified {
    /// A `Retry` with a message redacted and cut to [`MESSAGE_BYTES_MAX`].
    pub(crate) fn retry(
        reason: RetryReason,
        retry_after: Option<RetryAfter>,
        message: impl Into<String>,
    ) -> Classified {
        Classified::Retry {
            retry_after,
            reason,
            message: bounded(&message.into()),
        }
    }

    /// A `Failed` with a message redacted and cut to [`MESSAGE_BYTES_MAX`].
    pub(crate) fn failed(reason: FailReason, message: impl Into<String>) -> Classified {
        Classified::Failed {
            reason,
            message: bounded(&message.into()),
        }
    }
}

/// A message as kept: URLs redacted, then cut to [`MESSAGE_BYTES_MAX`] (in this order, so
/// a cut cannot leave a URL that no longer parses as a URL).
fn bounded(message: &str) -> String {
    let mut message = redact_urls_in(message);
    if message.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The status code of the final response (after the redirects the engine followed). A download found already
    /// complete on disk reports 200 without a request.
    pub status: u16,
    /// Response headers, lower-case names, at most [`crate::Limits::response_headers_max`];
    /// never a sensitive one ([`crate::SENSITIVE_HEADERS`] such as `Set-Cookie`, or a name
    /// the request marked sensitive, should the server echo it).
    pub headers: Vec<(String, String)>,
    /// The body of a data task, or the first bytes of a rejection or upload answer (capped).
    /// Empty for downloads.
    pub body: Vec<u8>,
    /// For a download, the final path of the complete file.
    pub file: Option<PathBuf>,
    /// Bytes transferred: the file's length for a download, the body's for other kinds.
    pub bytes: u64,
}

/// Why an attempt should be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryReason {
    /// The server answered with a transient status (408, 429, 500, 502, 503, 504).
    Status(u16),
    /// Connecting failed or timed out (including name resolution).
    Connect,
    /// The connection was reset or closed before a response arrived.
    Reset,
    /// Nothing moved on the connection for the idle timeout.
    IdleTimeout,
    /// The body ended before its announced length.
    TruncatedBody,
    /// A `206` started at another offset than asked; the partial file was removed.
    RangeMismatch,
    /// The server could not serve the rest of a partial file (`416`) and the file was not
    /// complete; it was removed so the next attempt starts from zero.
    RangeNotSatisfiable,
    /// The response was malformed (could be a middlebox; bounded by the caller's attempts).
    Protocol,
    /// A transport error the client did not attribute (bounded by the caller's attempts).
    Transport,
}

/// Why an attempt failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// The URL is unusable (unparsable, not http(s), carries credentials, too long).
    InvalidUrl,
    /// The request is unusable (headers, body, kind); see [`crate::Error`].
    InvalidRequest,
    /// More redirects than allowed, or a redirect loop.
    TooManyRedirects,
    /// A redirect to something that cannot be followed (another scheme, a bad location).
    InvalidRedirect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// A local file could not be read or written (full disk, permission, missing file).
    LocalDisk,
    /// The downloaded file is not what was expected; the partial file was removed.
    Verification(Mismatch),
    /// The response is larger than the limit for its kind.
    ResponseTooLarge,
    /// A status that is never a valid final answer (1xx, or outside 100..=599).
    UnexpectedStatus(u16),
    /// The attempt ran past its resource deadline.
    DeadlineExceeded,
    /// A download's response came with a `Content-Encoding` other than `identity` (the
    /// coding named, at most [`CONTENT_CODING_BYTES_MAX`] bytes) although the engine asked
    /// for `identity`. Nothing of it was written: offsets into an encoded body are not
    /// offsets into the file, so it could neither be resumed nor verified (see
    /// [`classify_status`] and the crate docs).
    UnsupportedContentEncoding(String),
}

/// The longest content coding kept in [`FailReason::UnsupportedContentEncoding`], in bytes.
pub const CONTENT_CODING_BYTES_MAX: usize = 64;

/// How a downloaded file differed from what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mismatch {
    /// Its length.
    Length {
        /// The length expected (from the request, `Content-Length` or `Content-Range`).
        expected_bytes: u64,
        /// The length received.
        actual_bytes: u64,
    },
    /// Its SHA-256.
    Sha256 {
        /// Expected, lower-case hexadecimal.
        expected: String,
        /// Computed over the whole file, lower-case hexadecimal.
        actual: String,
    },
}

/// What a status code means for a transfer, before any kind-specific handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// Transient: try again (honouring `Retry-After`).
    Retry,
    /// The server's definitive refusal.
    Rejected,
    /// Not a valid final answer.
    Failed,
}

/// Classifies a final status code. Every code has one explicit answer:
///
/// - 1xx: `Failed`. hyper consumes interim responses itself; a 1xx as the final answer
///   (an unrequested `101`) is a protocol violation that another attempt would repeat.
/// - 2xx: `Success`.
/// - 3xx: `Rejected`. The engine follows 301, 302, 303, 307 and 308 itself before this
///   point, so a 3xx here is one that is not a redirect to follow (`300`, `304`, `305`,
///   `306`, unassigned codes): the server's definitive answer, passed to the application
///   with its headers. A followed redirect that cannot be followed is not a status: a
///   missing or unusable `Location`, or one that is not `http`/`https`, fails as
///   [`FailReason::InvalidRedirect`]; too many redirects or a loop as
///   [`FailReason::TooManyRedirects`].
/// - 408, 429: `Retry`. Every other 4xx: `Rejected`.
/// - 500, 502, 503, 504: `Retry`. Every other 5xx (501, 505, 506, 507, 508, 510, 511,
///   unassigned): `Rejected`, since the server has said it cannot do this request and
///   repeating it would get the same answer; the application sees the status.
/// - Below 100 or above 599: `Failed` (hyper accepts any three digits).
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        0..=99 => StatusClass::Failed,
        100..=199 => StatusClass::Failed,
        200..=299 => StatusClass::Success,
        300..=399 => StatusClass::Rejected,
        408 | 429 => StatusClass::Retry,
        400..=407 | 409..=428 | 430..=499 => StatusClass::Rejected,
        500 | 502 | 503 | 504 => StatusClass::Retry,
        501 | 505..=599 => StatusClass::Rejected,
        600..=u16::MAX => StatusClass::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole status table: every u16 maps as the doc of
    /// `classify_status` say, checked code by code against an independent statement.
    #[test]
    fn status_table() {
        for status in 0..=u16::MAX {
            let expected = if (200..300).contains(&status) {
                StatusClass::Success
            } else if [408, 429, 500, 502, 503, 504].contains(&status) {
                StatusClass::Retry
            } else if (300..600).contains(&status) {
                StatusClass::Rejected
            } else {
                StatusClass::Failed
            };
            assert_eq!(classify_status(status), expected, "status {status}");
        }
    }

    /// Messages lose the queries of the URLs they quote.
    #[test]
    fn messages_are_redacted() {
        let quoted = "error sending request for url (http://127.0.0.1:1/x?token=SECRET)";
        for outcome in [
            Classified::failed(FailReason::Tls, quoted),
            Classified::retry(RetryReason::Connect, None, quoted),
        ] {
            let shown = format!("{outcome:?}");
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("http://127.0.0.1:1/x?<redacted>"), "{shown}");
        }
    }

    /// Messages are cut at a character boundary to the stored limit.
    #[test]
    fn messages_are_bounded() {
        let long = "é".repeat(MESSAGE_BYTES_MAX);
        let Classified::Failed { message, .. } = Classified::failed(FailReason::LocalDisk, long)
        else {
            panic!("failed() builds Failed");
        };
        assert!(message.len() <= MESSAGE_BYTES_MAX);
        assert!(message.len() >= MESSAGE_BYTES_MAX - 1);
    }
}
