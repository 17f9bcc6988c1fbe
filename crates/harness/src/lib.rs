//! The bgsession harness library: what the `session-harness` binary is made of.
//!
//! - [`crash`]: the crash harness (`session-harness crash`): the fault schedule, the
//!   crash loop, its worker, the verifier and the report.
//! - [`testkit`]: crash-test your own delegate: the same crash loop and verifier over
//!   your delegate, completion handlers and application tables, in your `cargo test`.
//! - [`origin`]: the origin server: deterministic content and fault programs.
//! - [`mod@bench`]: benchmarks that print figures.
//! - [`postgres`]: throwaway PostgreSQL clusters.

#![warn(missing_docs)]

/// Benchmarks that print figures.
pub mod bench;
/// The crash harness: fault-injection runs, their worker, and the verifier of the guarantees.
pub mod crash;
/// The origin server: deterministic content and fault programs on 127.0.0.1.
pub mod origin;
/// Throwaway PostgreSQL clusters for tests, the crash harness and benchmarks.
pub mod postgres;
pub mod stores;
pub mod testkit;
