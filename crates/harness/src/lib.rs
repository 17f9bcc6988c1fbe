//! The bgsession harness library: what the `session-harness` binary is made of.
//!
//! Modules are added as the pieces land: the origin server, the benchmarks, the crash
//! orchestrator, its worker and its verifier.

#![warn(missing_docs)]

/// Benchmarks that print figures.
pub mod bench;
/// The crash harness: fault-injection runs, their worker, and the verifier of the guarantees.
pub mod crash;
/// The origin server: deterministic content and fault programs on 127.0.0.1.
pub mod origin;
/// Throwaway PostgreSQL clusters for tests, the crash harness and benchmarks.
pub mod postgres;
