//! The bgsession transfer engine: one attempt of a download, upload or data transfer over
//! HTTP(S), resumed where a previous attempt (or a killed process) stopped, and classified
//! exhaustively as success, rejection, retry or failure (DESIGN section 7).
//!
//! The engine knows neither the store nor actix: the session actor persists a
//! [`TransferRequest`] (opaque serde data), calls [`Engine::run`] once per attempt, and
//! turns the [`Classified`] outcome into a state transition.
//!
//! Modules, one concern each:
//! - `error`: the crate's error type (request validation and engine construction).
//! - `limits`: [`Limits`] and [`EngineConfig`], every bound with its unit.
//! - `request`: [`TransferRequest`], [`Target`] and their validation.
//! - `paths`: mapping an application's name to a file that cannot leave the directory.
//! - `retry_after`: parsing `Retry-After` in both forms.
//! - `classify`: the outcome types and the exhaustive status table.
//! - `transport`: sending with an idle timer, reading bodies, classifying transport errors.
//! - `download`: resumable, verified downloads into `.part` files.
//! - `upload`: streaming a file as a request body.
//! - `engine`: [`Engine`], its client, connection limits and the attempt driver.

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
mod download;
mod engine;
mod error;
mod limits;
mod paths;
mod request;
mod retry_after;
mod transport;
mod upload;
mod writeback;

pub use classify::{
    Classified, FailReason, MESSAGE_BYTES_MAX, Mismatch, Response, RetryReason, StatusClass,
    classify_status,
};
pub use download::FAIL_POINT_DOWNLOAD_AFTER_FSYNC;
pub use engine::{Engine, Progress};
pub use error::{Error, Result};
pub use limits::{EngineConfig, Limits};
pub use paths::{download_paths, download_validator_path, safe_file_name};
pub use request::{
    Body, Method, SENSITIVE_HEADERS, Target, TransferKind, TransferRequest, is_sensitive_header,
};
pub use retry_after::RetryAfter;
