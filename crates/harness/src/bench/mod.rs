//! Benchmarks: commands that measure and print figures (one JSON object with `--json`),
//! each against a baseline measured in the same run where one exists.
//!
//! - `events`: delivery throughput to a transactional delegate.
//! - `download`: the engine's download throughput and memory against curl.
//! - `many`: many small downloads through `Sessions`, delivered exactly once, against
//!   `curl --parallel`.
//! - `pg-client`: durable INSERTs per second into PostgreSQL, per statement shape, against
//!   pgbench.
//! - `recovery`: opening a large store and bringing every session back up.
//! - `rss`: memory figures of the running process.
//! - `soak`: a million tasks through the store path with a short retention: the store
//!   must not grow with the tasks run.
//! - `stats`: medians and spreads of repeated figures.
//! - `store`: durable units per second through the store's group-commit writer.

pub mod download;
pub mod events;
pub mod many;
pub mod pg_client;
pub mod recovery;
pub mod rss;
pub mod soak;
pub mod stats;
pub mod store;
