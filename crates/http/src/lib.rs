//! The bgsession transfer engine: one attempt of a download, upload or data transfer over
//! HTTP(S), resumed where a previous attempt (or a killed process) stopped, and classified
//! exhaustively as success, rejection, retry or failure.
//!
//! The engine knows neither the store nor actix: the session actor persists a
//! [`TransferRequest`] ([`TransferRequest::to_bytes`], a versioned encoding that also
//! reads the previous release's), calls [`Engine::run`] once per attempt, and turns the
//! [`Classified`] outcome into a state transition.
//!
//! Secrets stay inside: `Authorization`, `Cookie` and the headers a request marks with
//! [`TransferRequest::with_sensitive_header`] are never logged, shown by `Debug`, returned
//! in a [`Response`], or sent on once a redirect leaves the request's origin; a URL's query
//! (where signed URLs carry their signature) never appears in a log line, span or message
//! ([`redact_url`], [`redact_urls_in`]).
//!
//! Redirects are followed by the engine (at most [`EngineConfig::redirects_max`], `http`
//! and `https` only, browser method rules, bodies sent again on 307 and 308). Bodies are
//! never decoded: a download answered with a `Content-Encoding` fails as
//! [`FailReason::UnsupportedContentEncoding`], since an encoded body's offsets cannot be
//! resumed; data and upload answers keep their encoded body and its header.
//!
//! A download never eats into [`EngineConfig::disk_reserve_bytes`] of its directory's
//! file system, which it shares with the session store (a store that cannot commit
//! wedges every session). A download that does not fit ends as
//! [`RetryReason::InsufficientStorage`], known before the request, before the first
//! byte, or while streaming a body of unknown length; a write the file system refuses
//! anyway (another writer filled it) removes the partial file and ends as
//! [`RetryReason::StorageFull`]. Both are waits for space rather than failures of the
//! transfer; [`free_bytes`] is the measure the engine uses. Likewise
//! [`RetryReason::Unreachable`] says that no server answered at all (a name that does not
//! resolve, a refused connection, an unreachable network, a connect timeout): a wait for
//! connectivity. The `download` module docs give the rules.
//!
//! Modules, one concern each:
//! - `error`: the crate's error type (request validation, decoding, engine construction).
//! - `limits`: [`Limits`] and [`EngineConfig`], every bound with its unit.
//! - `request`: [`TransferRequest`], [`Target`] and their validation.
//! - `encoding`: the versioned stored form of a request, and the frozen legacy layout.
//! - `redact`: URLs and texts as they may be shown.
//! - `paths`: mapping an application's name to a file that cannot leave the directory.
//! - `retry_after`: parsing `Retry-After` in both forms.
//! - `classify`: the outcome types, the exhaustive status table, content codings.
//! - `transport`: one hop's request, the idle timer, bounded bodies, transport errors.
//! - `redirect`: following redirects: limits, targets, methods, stripped headers.
//! - `download`: resumable, verified downloads into `.part` files, kept out of the disk
//!   reserve.
//! - `dirsync`: the flush that makes renames durable, shared by concurrent downloads.
//! - `space`: free space ([`free_bytes`]) and the budget a streaming download stays in.
//! - `upload`: request bodies, a file streamed from disk, and the answer kept in memory.
//! - `engine`: [`Engine`], its client, connection limits and the attempt driver.
//! - `writeback`: [`Writeback`], a file's write-back started while it is still written.

//! ```no_run
//! use session_http::{Classified, Engine, EngineConfig, Target, TransferRequest};
//!
//! # async fn example() -> session_http::Result<()> {
//! let engine = Engine::new(EngineConfig::default())?;
//! let request = TransferRequest::download("https://example.invalid/big.iso")
//!     .with_header("Authorization", "Bearer token")
//!     .with_expected_bytes(1 << 30);
//! let target = Target {
//!     download_dir: "/var/lib/app/downloads/session-1".into(),
//!     name: "task-42".to_owned(),
//!     idempotency_key: None,
//! };
//! match engine.run(&request, &target, None).await {
//!     Classified::Success(response) => println!("file at {:?}", response.file),
//!     Classified::Rejected(response) => println!("refused with {}", response.status),
//!     Classified::Retry { retry_after, reason, .. } => println!("retry {reason:?} {retry_after:?}"),
//!     Classified::Failed { reason, message } => println!("failed {reason:?}: {message}"),
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod classify;
mod dirsync;
mod download;
mod encoding;
mod engine;
mod error;
mod limits;
mod paths;
mod redact;
mod redirect;
mod request;
mod retry_after;
mod space;
mod transport;
mod upload;
mod writeback;

pub use classify::{
    CONTENT_CODING_BYTES_MAX, Classified, FailReason, MESSAGE_BYTES_MAX, Mismatch, Response,
    RetryReason, StatusClass, classify_status,
};
pub use download::{
    FAIL_POINT_DOWNLOAD_AFTER_FSYNC, FAIL_POINT_DOWNLOAD_BEFORE_FLUSH,
    FAIL_POINT_DOWNLOAD_BEFORE_FSYNC,
};
pub use encoding::REQUEST_ENCODING_VERSION;
pub use engine::{Engine, Progress};
pub use error::{Error, Result};
pub use limits::{EngineConfig, Limits};
pub use paths::{download_paths, download_validator_path, safe_file_name};
pub use redact::{redact_url, redact_urls_in};
pub use request::{
    Body, Method, SENSITIVE_HEADERS, Target, TransferKind, TransferRequest, is_sensitive_header,
};
pub use retry_after::RetryAfter;
pub use space::{SPACE_CHECK_INTERVAL_BYTES, free_bytes};
pub use writeback::Writeback;
