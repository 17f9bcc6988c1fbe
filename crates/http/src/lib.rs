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

pub use classify::{
    Classified, FailReason, Mismatch, Response, RetryReason, StatusClass, classify_status,
};
pub use engine::{Engine, Progress};
pub use error::{Error, Result};
pub use limits::{EngineConfig, Limits};
pub use paths::{download_paths, download_validator_path, safe_file_name};
pub use request::{Body, Method, Target, TransferKind, TransferRequest};
pub use retry_after::RetryAfter;

/// Header names whose values never leave the engine: not logged, not in `Debug`, not in a
/// [`Response`].
pub const SENSITIVE_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "set-cookie2",
];

/// Whether a header's value must never be logged or returned.
pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS
        .iter()
        .any(|sensitive| sensitive.eq_ignore_ascii_case(name))
}

/// The fail point hit right after a download's fsync and rename, before the caller records
/// it. With the `failpoints` feature, configuring it to `return(abort)` aborts the process.
pub const FAIL_POINT_DOWNLOAD_AFTER_FSYNC: &str = "http-download-after-fsync";
