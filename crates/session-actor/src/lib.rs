//! bgsession: durable background transfer sessions as supervised actix actors.
//!
//! - `machine`: the pure session state machine (no I/O), property-tested on its own.

#![warn(missing_docs)]

pub mod machine;
