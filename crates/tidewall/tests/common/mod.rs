//! Runs one scenario on every runtime adapter, each with virtual time.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;

pub mod rng;
#[cfg(feature = "metrics")]
pub mod tally;

use tidewall::rt::{AsyncStd, SmolRuntime, Tokio};
use tidewall::testing::Clocked;

/// `n` milliseconds: the unit every scenario is written in.
pub fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

pub fn on_tokio_multi_thread<F: Future>(scenario: impl FnOnce(Clocked<Tokio>) -> F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt = Clocked::new(Tokio);
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

pub fn on_tokio_current_thread<F: Future>(scenario: impl FnOnce(Clocked<Tokio>) -> F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Clocked::new(Tokio);
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

pub fn on_smol_multi_thread<F: Future>(
    scenario: impl FnOnce(Clocked<tidewall::rt::Smol>) -> F,
) -> F::Output {
    let runtime = SmolRuntime::multi_threaded(2).unwrap();
    let rt = Clocked::new(runtime.handle());
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

pub fn on_smol_single_thread<F: Future>(
    scenario: impl FnOnce(Clocked<tidewall::rt::Smol>) -> F,
) -> F::Output {
    let runtime = SmolRuntime::single_threaded();
    let rt = Clocked::new(runtime.handle());
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

pub fn on_async_std<F: Future>(scenario: impl FnOnce(Clocked<AsyncStd>) -> F) -> F::Output {
    let rt = Clocked::new(AsyncStd);
    async_std::task::block_on(rt.drive(scenario(rt.clone())))
}

/// Runs `$scenario` (a generic `async fn(rt: impl Runtime)`) on every adapter.
#[macro_export]
macro_rules! on_every_runtime {
    ($scenario:expr) => {{
        common::on_tokio_multi_thread(|rt| $scenario(rt));
        common::on_tokio_current_thread(|rt| $scenario(rt));
        common::on_smol_multi_thread(|rt| $scenario(rt));
        common::on_smol_single_thread(|rt| $scenario(rt));
        common::on_async_std(|rt| $scenario(rt));
    }};
}
