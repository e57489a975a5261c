//! Rate-limiter admission cost on the allowed path: Tidewall vs governor (default features:
//! quanta clock, DashMap key store).
//!
//! Every limiter gets a quota that never denies: 10^9 cells per second (a 1 ns interval, the
//! finest both accept) with a burst of 10^9. Tidewall runs twice: `tidewall` on default
//! settings (the tokio clock, which is real time here, so decisions read the CPU timestamp
//! counter through quanta, the clock governor reads by default; under paused tokio time the
//! same limiter would follow the virtual clock), and `tidewall_clock_call` on a user clock
//! that reads `std::time::Instant` (`clock_gettime`) — the path every clock that is not
//! real time takes (virtual clocks in tests, a user's own clock): one clock call per decision.
//!
//! * `rate_direct`: one shared limiter, `check()`.
//! * `rate_keyed_hot`: `check_key` on one key that is always present.
//! * `rate_keyed_new`: a never-seen key every iteration (a counter that keeps running across
//!   samples). Each key rests 1 ns after its cell, so both stores stay bounded by evicting
//!   rested keys, and that eviction is measured, amortized: Tidewall sweeps a shard (of
//!   `max_keys / 64` keys) whenever it fills; governor never evicts by itself, so its variant
//!   calls `retain_recent()` every `MAX_KEYS` new keys, the documented way to bound it.
//!   Every limiter starts from the same state: each first sees the same 2 × `MAX_KEYS` new
//!   keys through the code the timed loop runs, so no table is timed while it first grows.
//!
//! The keyed groups time governor twice: `governor` as it comes (its `keyed` constructor
//! hashes keys with std's SipHash), and `governor_foldhash` on the hasher Tidewall's tables
//! use (hashbrown's default, foldhash), through governor's own `dashmap_with_hasher`: the
//! same work, hashing included.
//!
//! Run: `cargo bench -p tidewall-benches --bench rate`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, criterion_group, criterion_main};
use std::time::Instant;

use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::rt::{Clock, Tokio};

/// 10^9 per second: an interval of exactly 1 ns, the smallest `Gcra::new` accepts.
const PER_SECOND: u32 = 1_000_000_000;
const MAX_KEYS: usize = 1 << 22;
/// governor sweeps every `MAX_KEYS` new keys (a power of two, so a mask test).
const SWEEP_MASK: u64 = (1 << 22) - 1;
/// New keys each keyed limiter sees before `rate_keyed_new` times it.
const WARM_KEYS: u64 = 2 * MAX_KEYS as u64;

/// The machine's clock as a user would write one: it does not claim to be real time, so a
/// limiter calls it for every decision, as it calls a virtual clock.
#[derive(Clone)]
struct ClockCall;

impl Clock for ClockCall {
    type Sleep = <Tokio as Clock>::Sleep;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        Tokio.sleep_until(deadline)
    }
}

fn tidewall_direct<C: Clock>(clock: C) -> RateLimiter<C> {
    RateLimiter::builder(PER_SECOND, Duration::from_secs(1))
        .burst(PER_SECOND)
        .runtime(clock)
        .build()
        .unwrap()
}

fn tidewall_keyed<C: Clock>(clock: C) -> KeyedRateLimiter<u64, C> {
    KeyedRateLimiter::builder(PER_SECOND, Duration::from_secs(1))
        .burst(PER_SECOND)
        .max_keys(MAX_KEYS)
        .runtime(clock)
        .build::<u64>()
        .unwrap()
}

fn governor_quota() -> governor::Quota {
    // `per_second(n)` sets both the 1 ns replenish interval and a burst of n.
    let n = NonZeroU32::new(PER_SECOND).unwrap();
    governor::Quota::per_second(n).allow_burst(n)
}

fn rate_direct(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("rate_direct");
    let tidewall = tidewall_direct(Tokio);
    assert!((0..10_000).all(|_| tidewall.check().is_ok()));
    group.bench_function("tidewall", |b| b.iter(|| tidewall.check()));
    let tidewall = tidewall_direct(ClockCall);
    assert!((0..10_000).all(|_| tidewall.check().is_ok()));
    group.bench_function("tidewall_clock_call", |b| b.iter(|| tidewall.check()));
    let governor: governor::DefaultDirectRateLimiter =
        governor::RateLimiter::direct(governor_quota());
    assert!((0..10_000).all(|_| governor.check().is_ok()));
    group.bench_function("governor", |b| b.iter(|| governor.check().is_ok()));
    group.finish();
}

fn rate_keyed_hot(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("rate_keyed_hot");
    let hot = 42u64;
    let tidewall = tidewall_keyed(Tokio);
    assert!((0..10_000).all(|_| tidewall.check_key(&hot).is_ok()));
    group.bench_function("tidewall", |b| {
        b.iter(|| tidewall.check_key(black_box(&hot)))
    });
    let tidewall = tidewall_keyed(ClockCall);
    assert!((0..10_000).all(|_| tidewall.check_key(&hot).is_ok()));
    group.bench_function("tidewall_clock_call", |b| {
        b.iter(|| tidewall.check_key(black_box(&hot)))
    });
    let governor: governor::DefaultKeyedRateLimiter<u64> =
        governor::RateLimiter::keyed(governor_quota());
    assert!((0..10_000).all(|_| governor.check_key(&hot).is_ok()));
    group.bench_function("governor", |b| {
        b.iter(|| governor.check_key(black_box(&hot)).is_ok())
    });
    let governor = governor_foldhash();
    assert!((0..10_000).all(|_| governor.check_key(&hot).is_ok()));
    group.bench_function("governor_foldhash", |b| {
        b.iter(|| governor.check_key(black_box(&hot)).is_ok())
    });
    group.finish();
}

/// governor's keyed limiter on the hasher Tidewall's tables use.
type GovernorFoldhash = governor::RateLimiter<
    u64,
    governor::state::keyed::DashMapStateStore<u64, hashbrown::DefaultHashBuilder>,
    governor::clock::DefaultClock,
>;

fn governor_foldhash() -> GovernorFoldhash {
    governor::RateLimiter::dashmap_with_hasher(
        governor_quota(),
        hashbrown::DefaultHashBuilder::default(),
    )
}

/// `check_key` on a never-seen key, for a limiter that bounds its keys by itself (Tidewall
/// sweeps a full shard) or through `retain_recent` every `MAX_KEYS` keys (governor).
trait NewKeys {
    fn admit_new(&self, key: u64) -> bool;
    fn keys(&self) -> usize;
}

impl<C: Clock> NewKeys for KeyedRateLimiter<u64, C> {
    fn admit_new(&self, key: u64) -> bool {
        self.check_key(&key).is_ok()
    }
    fn keys(&self) -> usize {
        self.len()
    }
}

/// governor's keyed limiter on any hasher (its default, SipHash, or foldhash).
impl<S: std::hash::BuildHasher + Clone> NewKeys
    for governor::RateLimiter<
        u64,
        governor::state::keyed::DashMapStateStore<u64, S>,
        governor::clock::DefaultClock,
    >
{
    fn admit_new(&self, key: u64) -> bool {
        if key & SWEEP_MASK == 0 {
            self.retain_recent();
        }
        self.check_key(&key).is_ok()
    }
    fn keys(&self) -> usize {
        self.len()
    }
}

/// Every limiter starts from the same state: it has seen the same `WARM_KEYS` new keys,
/// through the same code the timed loop runs, so every table has grown to its working size
/// (and each Tidewall shard has swept at least once) before timing.
fn bench_new_keys(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, limiter: &impl NewKeys) {
    assert!((1..=WARM_KEYS).all(|k| limiter.admit_new(k)), "{name}");
    assert!(
        limiter.keys() <= MAX_KEYS,
        "{name}: {} keys",
        limiter.keys()
    );
    let mut next = WARM_KEYS;
    group.bench_function(name, |b| {
        b.iter(|| {
            next += 1;
            limiter.admit_new(black_box(next))
        });
    });
    assert!(
        limiter.keys() <= MAX_KEYS,
        "{name}: {} keys",
        limiter.keys()
    );
}

fn rate_keyed_new(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("rate_keyed_new");
    bench_new_keys(&mut group, "tidewall", &tidewall_keyed(Tokio));
    bench_new_keys(
        &mut group,
        "tidewall_clock_call",
        &tidewall_keyed(ClockCall),
    );
    let governor: governor::DefaultKeyedRateLimiter<u64> =
        governor::RateLimiter::keyed(governor_quota());
    bench_new_keys(&mut group, "governor", &governor);
    bench_new_keys(&mut group, "governor_foldhash", &governor_foldhash());
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = tidewall_benches::criterion();
        targets = rate_direct, rate_keyed_hot, rate_keyed_new
    }
}
criterion_main!(group::benches);
