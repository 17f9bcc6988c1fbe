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
    /// Bytes transferred, by kind:
    /// - a download: the length of the complete file (a rejected download has no file:
    ///   the length of the rejection's body as kept);
    /// - an upload: the request body bytes sent, that is the file's length once it was
    ///   sent whole (bytes the client took from the file for the last request that
    ///   carried it, whatever the length of the server's answer);
    /// - a data task: the length of the response body.
    pub bytes: u64,
}

/// Why an attempt should be retried.
///
/// Three groups matter to a scheduler, which may wait on the first two without spending
/// the task's attempts:
/// - **No server answered**: [`RetryReason::Unreachable`]. Worth waiting for
///   connectivity (Apple's `waitsForConnectivity`).
/// - **Local storage**: [`RetryReason::InsufficientStorage`] (the download would eat into
///   [`crate::EngineConfig::disk_reserve_bytes`]; nothing past the reserve was written) and
///   [`RetryReason::StorageFull`] (the file system refused a write anyway; the partial
///   file was removed to give the space back). Worth waiting for free space.
/// - **Everything else**: a server was reached and the exchange failed; an ordinary retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryReason {
    /// The server answered with a transient status (408, 429, 500, 502, 503, 504).
    Status(u16),
    /// No server answered at all: the name did not resolve, the connection was refused,
    /// the host or network is unreachable (or the network is down, or no local address
    /// fits), or connecting took longer than [`crate::EngineConfig::connect_timeout`].
    /// reqwest's connect timeout also covers the TLS handshake, so a server that accepts
    /// TCP and then never answers the handshake counts here too.
    Unreachable,
    /// Connecting failed after something answered, or for a local reason: the connection
    /// was reset or closed during the TLS handshake, a proxy refused the tunnel, or the
    /// socket could not be made (out of descriptors).
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
    /// A download does not fit in the free space of its directory's file system less
    /// [`crate::EngineConfig::disk_reserve_bytes`]. Found before the request (the
    /// request's expected length), before the first byte of the body (its announced
    /// length), or while streaming (a body of unknown or wrong length, or space taken by
    /// someone else meanwhile). Nothing was written into the reserve; a partial file stays
    /// for the next attempt to resume. It fits once `bytes_free` is at least
    /// `bytes_needed + reserve_bytes`.
    InsufficientStorage {
        /// The bytes the download still has to write, when known (the expected or
        /// announced length less what the partial file keeps); `None` for a body of
        /// unknown length that reached the limit.
        bytes_needed: Option<u64>,
        /// The bytes free on the file system (those an unprivileged writer may use),
        /// counting a partial file the attempt would have replaced as free.
        bytes_free: u64,
        /// The reserve the download may not use.
        reserve_bytes: u64,
    },
    /// A write, fsync or file creation of a download failed with `ENOSPC` or `EDQUOT`
    /// although the free space allowed it (another writer filled the file system). The
    /// partial file and its validator were removed, so the space is free again for the
    /// store; the next attempt starts from zero.
    StorageFull,
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
    /// A local file could not be read or written (permission, missing file, I/O error).
    /// A full file system is not a failure: [`RetryReason::StorageFull`].
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
