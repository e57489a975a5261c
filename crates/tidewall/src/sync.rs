//! The synchronization primitives policies use, swapped for loom's under `--cfg loom` so the
//! lock-free parts can be model-checked (see `tests/loom.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks, ignoring poisoning: every critical section in Tidewall leaves its data consistent
/// before anything that can panic, so a poisoned lock still guards valid state.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Nanoseconds from `origin` to `now` on a policy's clock (saturating; 0 before the origin).
pub(crate) fn nanos_since(origin: std::time::Instant, now: std::time::Instant) -> u64 {
    // Seconds and nanoseconds in u64 arithmetic: cheaper than `as_nanos`'s u128 on a path
    // every limiter check takes.
    let elapsed = now.saturating_duration_since(origin);
    elapsed
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(elapsed.subsec_nanos()))
}
