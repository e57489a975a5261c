//! `par_map`: a bounded concurrent map that keeps working while the consumer is busy.
//!
//! These are the [`FanOut`](crate::fan_out::FanOut) engine behind stream-shaped names: each
//! item's future is spawned on the runtime (so it progresses whether or not the output is
//! being polled), at most `limit` items are taken and not yet delivered, and the source is
//! pulled only when a slot is free.

pub use crate::fan_out::{FanOutStream as ParMap, LocalFanOut as ParMapLocal};
