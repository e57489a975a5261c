//! Shared pieces of the keyed and HTTP-client tests: (from `support`) a seeded generator, a
//! concurrency gauge and a one-shot poll; the keyed models (`models`) and scripted
//! in-process HTTP hosts with the client stack's fronts (`client`, no network).
#![allow(dead_code, unreachable_pub)]

pub mod client;
pub mod models;

// The seeded generator, the concurrency gauge and `ms` are the other hostile tests'; each
// binary that includes this module uses some of them.
#[allow(unused_imports)]
pub use crate::support::{Gauge, Rng, ms};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const HOUR: Duration = Duration::from_secs(3_600);
pub const DAY: Duration = Duration::from_secs(86_400);

/// Polls `fut` once with a waker that does nothing.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}
