//! The synchronization primitives policies use, swapped for loom's under `--cfg loom` so the
//! lock-free parts can be model-checked (see `tests/loom.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicIsize, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicIsize, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
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

/// A few words that one writer at a time replaces while any number of readers read them
/// whole: a sequence lock over atomics (Boehm's, with fences), so a reader never sees half
/// of a change. Reads cost two loads of the sequence on top of the words and never block;
/// they retry only while a write is under way. For settings changed live (a limiter's rate,
/// a breaker's thresholds), which are read on every call and written rarely.
pub(crate) struct Tuning<const N: usize> {
    sequence: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> Tuning<N> {
    pub(crate) fn new(words: [u64; N]) -> Self {
        Self {
            sequence: AtomicU64::new(0),
            words: words.map(AtomicU64::new),
        }
    }

    /// The words of one write, never a mix of two.
    #[inline]
    pub(crate) fn read(&self) -> [u64; N] {
        self.read_versioned().0
    }

    /// The words of one write and that write's sequence number, to check with
    /// [`unchanged_since`](Self::unchanged_since) that what was read alongside them (state a
    /// write also changes, in [`write_with`](Self::write_with)) belongs to the same write.
    #[inline]
    pub(crate) fn read_versioned(&self) -> ([u64; N], u64) {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before & 1 == 0 {
                let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                if self.sequence.load(Ordering::Relaxed) == before {
                    return (words, before);
                }
            }
            spin();
        }
    }

    /// Whether no write has begun since `sequence` was read: everything loaded before this
    /// call (after [`read_versioned`](Self::read_versioned)) was loaded before any later
    /// write's changes.
    #[inline]
    pub(crate) fn unchanged_since(&self, sequence: u64) -> bool {
        fence(Ordering::Acquire);
        self.sequence.load(Ordering::Relaxed) == sequence
    }

    /// Replaces the words. Callers serialize writes (each policy writes under its own lock).
    pub(crate) fn write(&self, words: [u64; N]) {
        self.write_with(words, || {});
    }

    /// Replaces the words, and runs `during` while the write is under way: readers wait for
    /// it, and a reader that loaded something `during` changed sees the write in
    /// [`unchanged_since`](Self::unchanged_since).
    pub(crate) fn write_with(&self, words: [u64; N], during: impl FnOnce()) {
        let before = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(before.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        during();
        for (slot, word) in self.words.iter().zip(words) {
            slot.store(word, Ordering::Relaxed);
        }
        self.sequence
            .store(before.wrapping_add(2), Ordering::Release);
    }
}

#[cfg(loom)]
use loom::sync::atomic::fence;
#[cfg(not(loom))]
use std::sync::atomic::fence;

/// Waits a moment for a writer to finish (loom: lets the writer run).
pub(crate) fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// A value replaced whole while readers use it (a breaker's window when its shape changes).
/// A read holds the value for as long as the caller needs it without touching a reference
/// count that every reader shares, so readers on many cores do not contend; replacing it
/// waits for no reader, and the old value is freed when its last reader is done.
#[cfg(not(loom))]
pub(crate) struct Swap<T>(arc_swap::ArcSwap<T>);

#[cfg(not(loom))]
impl<T> Swap<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(value))
    }

    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<std::sync::Arc<T>> {
        self.0.load()
    }

    pub(crate) fn store(&self, value: T) {
        self.0.store(std::sync::Arc::new(value));
    }

    /// The value, held for as long as the caller keeps it (across awaits too).
    #[cfg(any(feature = "serde", feature = "http"))]
    pub(crate) fn load_full(&self) -> std::sync::Arc<T> {
        self.0.load_full()
    }
}

/// Under loom, a mutex around the pointer: loom cannot see inside arc-swap, and every access
/// to the swapped value then goes through a primitive it models.
#[cfg(loom)]
pub(crate) struct Swap<T>(Mutex<std::sync::Arc<T>>);

#[cfg(loom)]
impl<T> Swap<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Mutex::new(std::sync::Arc::new(value)))
    }

    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        std::sync::Arc::clone(&lock(&self.0))
    }

    pub(crate) fn store(&self, value: T) {
        *lock(&self.0) = std::sync::Arc::new(value);
    }

    #[cfg(any(feature = "serde", feature = "http"))]
    pub(crate) fn load_full(&self) -> std::sync::Arc<T> {
        self.load()
    }
}
