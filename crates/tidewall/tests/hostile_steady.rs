//! Hostile black-box tests of steady samples (`LimitAlgorithm::steady`, `Steady`), written from
//! the rustdoc alone. Contract under attack: an `AdaptiveLimiter` that ends some calls without
//! the algorithm's lock ("a sample that the algorithm says would leave it exactly as it is")
//! must give exactly the limits of feeding the same samples to the algorithm directly. Each
//! scenario drives a limiter on a virtual clock and a mirror algorithm side by side, with the
//! samples the docs define: rtt = time since admission on the limiter's clock, inflight = calls
//! in flight when admitted (itself included), dropped = `failure`; `ignore` and a dropped permit
//! teach nothing. Timeouts sit at sub-microsecond values and near 2^31 microseconds.
#![cfg(all(feature = "tokio", feature = "test-util"))]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tidewall::Deadline;
use tidewall::adaptive::{
    AdaptiveLimiter, AdaptivePermit, Aimd, AnyAlgorithm, FixedLimit, Gradient2, LimitAlgorithm,
    Sample, Steady, Vegas, WindowedGradient,
};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::Outcome;
use tidewall::pipeline::Pipeline;
use tidewall::testing::FakeClock;

const NS: Duration = Duration::from_nanos(1);
const US: Duration = Duration::from_micros(1);

/// A fixed-seed SplitMix64: every run draws the same numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn smp(rtt: Duration, inflight: u32, dropped: bool) -> Sample {
    Sample {
        rtt,
        inflight,
        dropped,
        at: Duration::ZERO,
    }
}

fn aimd(min: u32, initial: u32, max: u32, timeout: Duration) -> Aimd {
    Aimd::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .timeout(timeout)
        .build()
        .unwrap()
}

struct Held<A: LimitAlgorithm> {
    permit: AdaptivePermit<A, FakeClock>,
    inflight: u32,
    start: Duration,
}

/// A limiter on a fake clock and the mirror algorithm fed the documented samples.
struct Rig<A: LimitAlgorithm> {
    clock: FakeClock,
    limiter: AdaptiveLimiter<A, FakeClock>,
    mirror: A,
    held: Vec<Held<A>>,
    log: Vec<String>,
}

impl<A: LimitAlgorithm + Clone> Rig<A> {
    fn new(algorithm: A) -> Self {
        let clock = FakeClock::new();
        let limiter = AdaptiveLimiter::builder(algorithm.clone())
            .runtime(clock.clone())
            .build()
            .unwrap();
        let rig = Self {
            clock,
            limiter,
            mirror: algorithm,
            held: Vec::new(),
            log: Vec::new(),
        };
        rig.check();
        rig
    }

    fn expected(&self) -> u32 {
        self.mirror.limit().max(1)
    }

    fn check(&self) {
        assert_eq!(
            self.limiter.limit(),
            self.expected(),
            "limiter and mirror differ after: {:?}",
            &self.log[self.log.len().saturating_sub(12)..]
        );
    }

    /// Admits a call if the mirror's limit has room (and asserts the limiter agrees).
    fn admit(&mut self) -> bool {
        let room = self.held.len() < usize::try_from(self.expected()).unwrap();
        match self.limiter.try_acquire() {
            Ok(permit) => {
                assert!(
                    room,
                    "admitted beyond the mirror's limit {}",
                    self.expected()
                );
                let inflight = u32::try_from(self.limiter.in_flight()).unwrap();
                assert_eq!(usize::try_from(inflight).unwrap(), self.held.len() + 1);
                let start = self.clock.elapsed();
                self.held.push(Held {
                    permit,
                    inflight,
                    start,
                });
                self.log.push(format!("admit #{inflight}"));
                true
            }
            Err(e) => {
                assert!(
                    !room,
                    "refused ({e:?}) below the mirror's limit {}",
                    self.expected()
                );
                false
            }
        }
    }

    fn fill(&mut self, n: usize) {
        for _ in 0..n {
            assert!(self.admit());
        }
    }

    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.log.push(format!("advance {by:?}"));
    }

    /// Ends held call `i` with `outcome` (`None`: the permit is dropped, a cancelled call).
    fn end(&mut self, i: usize, outcome: Option<Outcome>) {
        let Held {
            permit,
            inflight,
            start,
        } = self.held.remove(i);
        let at = self.clock.elapsed();
        let rtt = at - start;
        let sample = |dropped| Sample {
            rtt,
            inflight,
            dropped,
            at,
        };
        match outcome {
            None => drop(permit),
            Some(Outcome::Success) => {
                permit.success();
                self.mirror.update(&sample(false));
            }
            Some(Outcome::Failure) => {
                permit.failure();
                self.mirror.update(&sample(true));
            }
            Some(Outcome::Ignored) => permit.ignore(),
        }
        self.log
            .push(format!("end {outcome:?} rtt={rtt:?} inflight={inflight}"));
        self.check();
    }

    fn end_last(&mut self, outcome: Outcome) {
        self.end(self.held.len() - 1, Some(outcome));
    }

    /// One call alone: admitted, `rtt` later ended with `outcome`.
    fn call(&mut self, rtt: Duration, outcome: Outcome) {
        assert!(self.admit());
        self.advance(rtt);
        self.end_last(outcome);
    }

    /// Replaces the algorithm in force (and the mirror) while calls may be held.
    fn reconfigure(&mut self, algorithm: A) {
        self.limiter
            .reconfigure(AdaptiveLimiter::builder(algorithm.clone()))
            .unwrap();
        self.mirror = algorithm;
        self.log.push("reconfigure".into());
        self.check();
    }
}

/// Random admits, advances by `rtts` and endings of random held calls.
fn drive<A: LimitAlgorithm + Clone>(
    rig: &mut Rig<A>,
    rng: &mut Rng,
    steps: usize,
    rtts: &[Duration],
) {
    for _ in 0..steps {
        if rng.below(10) < 4 || rig.held.is_empty() {
            rig.admit();
            continue;
        }
        if rng.below(2) == 0 {
            rig.advance(rng.pick(rtts));
        }
        let i = rng.below(rig.held.len());
        let outcome = match rng.below(20) {
            0..=10 => Some(Outcome::Success),
            11..=14 => Some(Outcome::Failure),
            15..=16 => Some(Outcome::Ignored),
            _ => None,
        };
        rig.end(i, outcome);
    }
}

/// Durations at and around `t`: one nanosecond and one microsecond either side, its whole
/// microseconds either side, half and double.
fn around(t: Duration) -> Vec<Duration> {
    let n = u64::try_from(t.as_nanos()).unwrap();
    let f = n / 1_000 * 1_000;
    let near = [
        f,
        f + 999,
        f + 1_000,
        f + 1_001,
        n.saturating_sub(1_000),
        n.saturating_sub(1),
    ];
    [0, 1, n / 2, n * 2, n, n + 1, n + 1_000]
        .into_iter()
        .chain(near)
        .map(Duration::from_nanos)
        .collect()
}

#[rustfmt::skip]
const ODD_TIMEOUTS_NS: [u64; 12] = [
    1,
    2,
    999,
    1_000,
    1_001,
    1_500,
    1_999,
    2_000,
    2_001,
    2_500,
    1_000_001,
    4_999_999_999,
];

// === AIMD through the limiter, step by step ==================================================

/// Every inflight from 1 to the limit, for limits 1..=13: exactly half (odd and even) included.
#[test]
fn aimd_half_the_limit_in_flight_matches_the_mirror_for_every_count() {
    for limit in 1..=13 {
        for k in 1..=limit {
            let mut rig = Rig::new(aimd(1, limit, 50, Duration::from_secs(1)));
            let n = usize::try_from(k.min(rig.expected())).unwrap();
            rig.fill(n);
            rig.advance(Duration::from_millis(3));
            while !rig.held.is_empty() {
                rig.end_last(Outcome::Success); // inflight k, then k-1, ..., 1
            }
        }
    }
}

/// At max_limit every success is steady; after a drop, busy successes must grow it back.
#[test]
fn aimd_at_max_then_a_drop_then_growth_back_to_max() {
    let mut rig = Rig::new(aimd(1, 6, 6, Duration::from_millis(100)));
    for round in 0..6 {
        let n = usize::try_from(rig.expected()).unwrap();
        rig.fill(n);
        rig.advance(Duration::from_millis(1));
        if round % 2 == 1 {
            rig.end(0, Some(Outcome::Failure));
        }
        while !rig.held.is_empty() {
            rig.end_last(Outcome::Success);
        }
    }
    // A slow success (over the timeout) at max is a drop, not steady.
    rig.fill(6);
    rig.advance(Duration::from_millis(100) + NS);
    rig.end(0, Some(Outcome::Success));
    assert!(
        rig.limiter.limit() < 6,
        "a success slower than the timeout backs off at max"
    );
    while !rig.held.is_empty() {
        rig.end_last(Outcome::Success);
    }
}

/// At min_limit drops and slow calls hold it there, and busy successes still grow it.
#[test]
fn aimd_at_min_with_failures_and_slow_successes() {
    let mut rig = Rig::new(aimd(2, 2, 4, Duration::from_micros(1_500)));
    for _ in 0..3 {
        rig.fill(2);
        rig.advance(Duration::from_micros(1_500) + NS);
        rig.end_last(Outcome::Failure);
        rig.end_last(Outcome::Success); // slow: a drop too
        rig.fill(2);
        rig.end_last(Outcome::Success); // busy and fast: grows
        rig.end_last(Outcome::Success);
        rig.fill(1);
        rig.end_last(Outcome::Failure);
    }
}

/// Lone calls (under half in flight) of rtt at and around timeouts that are not whole µs.
#[test]
fn aimd_sub_microsecond_timeouts_at_and_around_the_rtt_boundary() {
    for t in ODD_TIMEOUTS_NS.map(Duration::from_nanos) {
        for rtt in around(t) {
            let mut rig = lone_success(t, rtt);
            rig.call(rtt, Outcome::Failure);
        }
    }
}

/// A fresh AIMD limiter (limit 20, `timeout`) after one lone success of `rtt`: it backed off
/// to 18 only if the call was slower than the timeout.
fn lone_success(timeout: Duration, rtt: Duration) -> Rig<Aimd> {
    let mut rig = Rig::new(aimd(1, 20, 100, timeout));
    rig.call(rtt, Outcome::Success);
    assert_eq!(
        rig.limiter.limit(),
        if rtt > timeout { 18 } else { 20 },
        "timeout {timeout:?} rtt {rtt:?}"
    );
    rig
}

/// Timeouts near 2^31 µs (and its multiples), hours, days: a success just over them backs off.
#[test]
fn aimd_huge_timeouts_near_31_and_32_bit_microsecond_counts() {
    let m31 = 1u64 << 31;
    let mut timeouts: Vec<Duration> = [
        m31 - 2,
        m31 - 1,
        m31,
        m31 + 1,
        2 * m31 - 1,
        3 * m31 - 1,
        4 * m31 - 1,
        5 * m31 - 1,
    ]
    .into_iter()
    .map(Duration::from_micros)
    .collect();
    timeouts.extend([
        Duration::from_micros(m31 - 1) + NS,
        Duration::from_micros(m31 - 1) + Duration::from_nanos(999),
        Duration::from_micros(m31 - 2) + Duration::from_nanos(500),
        Duration::from_secs(3_600),
        Duration::from_secs(86_400),
        Duration::from_secs(365 * 86_400) + Duration::from_nanos(1_500),
    ]);
    for t in timeouts {
        for rtt in [t - NS, t, t + NS, t + US, t + Duration::from_secs(60)] {
            lone_success(t, rtt);
        }
    }
}

/// Timeouts beyond any clock (Duration::MAX, u64::MAX ns): decades-long successes change nothing.
#[test]
fn aimd_unbounded_timeouts_and_decades_long_calls() {
    for t in [
        Duration::MAX,
        Duration::from_nanos(u64::MAX),
        Duration::from_secs(u64::MAX / 2),
    ] {
        let mut rig = Rig::new(aimd(1, 20, 100, t));
        rig.call(Duration::from_secs(29 * 365 * 86_400), Outcome::Success);
        rig.fill(10);
        rig.advance(Duration::from_secs(20 * 365 * 86_400));
        while !rig.held.is_empty() {
            rig.end_last(Outcome::Success);
        }
        assert_eq!(rig.limiter.limit(), 21);
        rig.call(Duration::ZERO, Outcome::Failure);
    }
}

// === reconfigure: the answer in force follows the algorithm in force =========================

/// A lone call steady under a 1 h timeout, ended after a switch to a 1 ms timeout, backs off.
#[test]
fn reconfigure_to_a_shorter_timeout_learns_from_a_held_slow_call() {
    let mut rig = Rig::new(aimd(1, 20, 100, Duration::from_secs(3_600)));
    rig.fill(1);
    rig.advance(Duration::from_millis(10));
    rig.reconfigure(aimd(1, 30, 100, Duration::from_micros(1_500)));
    rig.end_last(Outcome::Success);
    assert_eq!(rig.limiter.limit(), 27);
}

/// Calls held under an algorithm at its max (all steady) grow the new one when they end.
#[test]
fn reconfigure_from_at_max_learns_growth_of_held_calls() {
    let mut rig = Rig::new(aimd(1, 4, 4, Duration::from_secs(1)));
    rig.fill(4);
    rig.reconfigure(aimd(1, 4, 10, Duration::from_secs(1)));
    while !rig.held.is_empty() {
        rig.end_last(Outcome::Success);
    }
    assert!(
        rig.limiter.limit() > 4,
        "busy successes grow an AIMD below its max"
    );
}

/// From a FixedLimit (every sample steady, drops too) to AIMD: held failures back off.
#[test]
fn reconfigure_from_fixed_to_aimd_learns_held_failures() {
    let mut rig: Rig<AnyAlgorithm> = Rig::new(FixedLimit(8).into());
    rig.fill(8);
    rig.end_last(Outcome::Failure);
    assert_eq!(rig.limiter.limit(), 8);
    rig.reconfigure(aimd(1, 10, 10, Duration::from_secs(1)).into());
    rig.end_last(Outcome::Failure);
    assert_eq!(rig.limiter.limit(), 9);
    rig.end_last(Outcome::Success);
    rig.end(0, Some(Outcome::Failure));
    while !rig.held.is_empty() {
        rig.end_last(Outcome::Success);
    }
}

/// Random calls with a reconfiguration among AIMDs, fixed limits and Vegas every few steps.
#[test]
fn random_reconfigurations_keep_limiter_and_mirror_equal() {
    let palette = |rng: &mut Rng| -> AnyAlgorithm {
        let min = u32::try_from(rng.below(4)).unwrap() + 1;
        let max = min + u32::try_from(rng.below(7)).unwrap();
        let initial =
            min + u32::try_from(rng.below(usize::try_from(max - min + 1).unwrap())).unwrap();
        match rng.below(5) {
            0 => FixedLimit(initial).into(),
            1 => Vegas::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .build()
                .unwrap()
                .into(),
            _ => aimd(
                min,
                initial,
                max,
                Duration::from_nanos(rng.pick(&ODD_TIMEOUTS_NS)),
            )
            .into(),
        }
    };
    for seed in 0..8 {
        let mut rng = Rng(seed);
        let mut rig = Rig::new(palette(&mut rng));
        let rtts: Vec<Duration> = ODD_TIMEOUTS_NS
            .iter()
            .flat_map(|&t| around(Duration::from_nanos(t)))
            .collect();
        for _ in 0..60 {
            drive(&mut rig, &mut rng, 40, &rtts);
            rig.reconfigure(palette(&mut rng));
        }
    }
}

// === fixed limits, AnyAlgorithm and the algorithms' own claims ===============================

/// A FixedLimit limiter's limit never moves, whatever the outcomes, durations and counts.
#[test]
fn fixed_limit_never_moves() {
    for limit in [1, 2, 3, 7] {
        let mut rig = Rig::new(FixedLimit(limit));
        let rtts = [
            Duration::ZERO,
            NS,
            Duration::from_secs(3_600),
            Duration::from_secs(10 * 365 * 86_400),
        ];
        drive(&mut rig, &mut Rng(u64::from(limit)), 3_000, &rtts);
        assert_eq!(rig.limiter.limit(), limit);
    }
}

/// `Steady::ALL` (every sample with fewer than `u32::MAX` in flight) and a FixedLimit's answer
/// hold at the extremes, and the strict bound is exactly where the docs put it.
#[test]
fn steady_all_holds_for_every_sample_extremes_included() {
    assert_eq!(FixedLimit(3).steady(), Steady::ALL);
    let extremes = [
        (Duration::MAX, 1),
        (Duration::ZERO, u32::MAX - 1),
        (Duration::MAX, u32::MAX - 1),
    ];
    for (rtt, inflight) in extremes {
        for dropped in [false, true] {
            let s = smp(rtt, inflight, dropped);
            assert!(Steady::ALL.holds(&s), "Steady::ALL does not hold for {s:?}");
        }
    }
    assert!(!Steady::ALL.holds(&smp(Duration::ZERO, u32::MAX, false)));
}

/// The algorithms' own claims: every sample AIMD's (or AnyAlgorithm's) answer holds leaves
/// the limit and the next answer as they were; AnyAlgorithm answers as the algorithm inside.
#[test]
fn aimd_steady_answers_hold_for_every_sample_they_cover() {
    for t in ODD_TIMEOUTS_NS.map(Duration::from_nanos) {
        for initial in 1..=9 {
            let algorithm = aimd(1, initial, 9, t);
            assert_eq!(
                AnyAlgorithm::from(algorithm.clone()).steady(),
                algorithm.steady()
            );
            for rtt in around(t) {
                for inflight in 0..=10 {
                    for dropped in [false, true] {
                        let s = smp(rtt, inflight, dropped);
                        let mut after = algorithm.clone();
                        let limit = after.update(&s);
                        if algorithm.steady().holds(&s) {
                            assert_eq!(limit, initial, "{s:?} steady at {initial}, timeout {t:?}");
                            assert_eq!(after.steady(), algorithm.steady());
                        }
                    }
                }
            }
        }
    }
}

// === a probe algorithm: which samples the limiter may skip ==================================

/// Claims the `CLAIMS` entry picked by how many samples it learnt from; records every update.
#[derive(Clone)]
struct Probe {
    updates: Arc<Mutex<Vec<Sample>>>,
    learnt: usize,
}

const fn claim(below_inflight: u32, rtt_within: Duration, dropped: bool) -> Steady {
    Steady {
        below_inflight,
        rtt_within,
        dropped,
    }
}

const CLAIMS: [Steady; 12] = [
    claim(3, Duration::from_nanos(1_500), false),
    claim(2, Duration::from_nanos(999), true),
    claim(4, Duration::from_nanos(1), false),
    claim(3, Duration::ZERO, true),
    claim(5, Duration::from_nanos(2_001), false),
    claim(0, Duration::MAX, true),
    claim(u32::MAX, Duration::from_micros((1 << 31) - 1), false),
    claim(2, Duration::from_nanos(((1 << 31) - 1) * 1_000 + 1), true),
    claim(3, Duration::from_micros((1 << 32) - 1), false),
    claim(4, Duration::from_micros((3 << 31) - 1), true),
    claim(1, Duration::from_micros(1), false),
    claim(u32::MAX, Duration::MAX, false),
];

impl LimitAlgorithm for Probe {
    fn limit(&self) -> u32 {
        100
    }
    fn update(&mut self, sample: &Sample) -> u32 {
        self.updates.lock().unwrap().push(*sample);
        if !self.steady().holds(sample) {
            self.learnt += 1; // only a sample the answer does not cover changes anything
        }
        100
    }
    fn bounds(&self) -> (u32, u32) {
        (100, 100)
    }
    fn steady(&self) -> Steady {
        CLAIMS[self.learnt % CLAIMS.len()]
    }
}

/// Every sample the answer in force (refreshed after each learnt one) does not cover reaches
/// `update`, for rtt bounds that are not whole µs, near 2^31 µs and unbounded.
#[test]
fn a_sample_the_steady_answer_does_not_cover_always_reaches_update() {
    let updates = Arc::new(Mutex::new(Vec::new()));
    let mut rig = Rig::new(Probe {
        updates: updates.clone(),
        learnt: 0,
    });
    // The rig's mirror must not write to the limiter's log.
    rig.mirror = Probe {
        updates: Arc::new(Mutex::new(Vec::new())),
        learnt: 0,
    };
    let mut rng = Rng(7);
    for _ in 0..4_000 {
        let answer = rig.mirror.steady();
        let base = if answer.rtt_within == Duration::MAX {
            Duration::from_secs(7 * 86_400)
        } else {
            answer.rtt_within
        };
        let rtt = rng.pick(&around(base));
        let inflight =
            answer.below_inflight.saturating_sub(1).min(5) + u32::try_from(rng.below(3)).unwrap();
        let inflight = inflight.clamp(1, 7);
        let dropped = rng.below(2) == 0;
        rig.fill(usize::try_from(inflight).unwrap());
        rig.advance(rtt);
        let before = updates.lock().unwrap().len();
        rig.end_last(if dropped {
            Outcome::Failure
        } else {
            Outcome::Success
        });
        let s = smp(rtt, inflight, dropped);
        let seen = updates.lock().unwrap()[before..].to_vec();
        assert!(seen.len() <= 1);
        if let Some(got) = seen.first() {
            assert_eq!(
                (got.rtt, got.inflight, got.dropped),
                (rtt, inflight, dropped)
            );
        } else {
            assert!(
                answer.holds(&s),
                "skipped a sample {s:?} that {answer:?} does not hold"
            );
        }
        while !rig.held.is_empty() {
            rig.end(0, None); // the others are cancelled: no sample
        }
        assert_eq!(updates.lock().unwrap().len(), before + seen.len());
    }
    let mirror = &rig.mirror;
    assert!(
        mirror.learnt > 500,
        "the answers in force varied: {}",
        mirror.learnt
    );
}

// === many algorithms, random sequences =======================================================

/// Thousands of random calls on AIMDs with narrow bounds: the limit hits both ends often.
#[test]
fn random_aimd_narrow_bounds_limiter_equals_mirror() {
    for seed in 0..24u64 {
        let mut rng = Rng(seed * 7919);
        let min = u32::try_from(rng.below(5)).unwrap() + 1;
        let max = min + u32::try_from(rng.below(7)).unwrap();
        let initial =
            min + u32::try_from(rng.below(usize::try_from(max - min + 1).unwrap())).unwrap();
        let t = Duration::from_nanos(rng.pick(&ODD_TIMEOUTS_NS));
        let ratio = [0.5, 0.75, 0.9, 0.999][rng.below(4)];
        let algorithm = Aimd::builder()
            .min_limit(min)
            .initial_limit(initial)
            .max_limit(max)
            .timeout(t)
            .backoff_ratio(ratio)
            .build()
            .unwrap();
        let mut rig = Rig::new(algorithm);
        let mut rtts = around(t);
        rtts.extend([NS; 8]); // mostly fast: steady samples are common
        drive(&mut rig, &mut rng, 4_000, &rtts);
    }
}

/// `$algorithm::builder()` within 1..=12, from 6.
macro_rules! bounded {
    ($algorithm:ident) => {
        $algorithm::builder()
            .min_limit(1)
            .initial_limit(6)
            .max_limit(12)
            .build()
            .unwrap()
    };
}

/// Vegas, Gradient2 and the windowed gradient (no steady samples) still match a mirror.
#[test]
fn delay_based_algorithms_match_their_mirrors() {
    let rtts: Vec<Duration> = [1u64, 2, 3, 5, 8, 13, 40, 200]
        .map(Duration::from_millis)
        .to_vec();
    for seed in 0..4u64 {
        drive(&mut Rig::new(bounded!(Vegas)), &mut Rng(seed), 3_000, &rtts);
        drive(
            &mut Rig::new(bounded!(Gradient2)),
            &mut Rng(seed),
            3_000,
            &rtts,
        );
        drive(
            &mut Rig::new(bounded!(WindowedGradient)),
            &mut Rng(seed),
            3_000,
            &rtts,
        );
        let any: AnyAlgorithm = aimd(1, 3, 9, Duration::from_nanos(1_500)).into();
        drive(
            &mut Rig::new(any),
            &mut Rng(seed),
            3_000,
            &around(Duration::from_nanos(1_500)),
        );
    }
}

/// Queued callers through growth, backoff and steady calls: each is timed from its grant and
/// counted as it found the limiter then (documented order: the new limit resizes the bulkhead,
/// granting queued callers while the ending call still holds its slot, then the slot goes back).
#[test]
fn queued_callers_granted_slots_match_the_mirror() {
    let clock = FakeClock::new();
    let t = Duration::from_nanos(1_500);
    let limiter = AdaptiveLimiter::builder(aimd(1, 3, 6, t))
        .max_queue(64)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut mirror = aimd(1, 3, 6, t);
    let mut waiting = VecDeque::new();
    let mut held: Vec<(AdaptivePermit<Aimd, FakeClock>, u32, Duration)> = Vec::new();
    let mut rng = Rng(11);
    let rtts = around(t);
    for _ in 0..5_000 {
        // The inflight each waiter the model grants now finds, in FIFO order.
        let mut grants = Vec::new();
        let mut n = u32::try_from(held.len()).unwrap();
        let grant = |n: &mut u32, limit: u32, queued: usize, grants: &mut Vec<u32>| {
            while grants.len() < queued && *n < limit {
                *n += 1;
                grants.push(*n);
            }
        };
        if rng.below(3) == 0 || held.is_empty() {
            let mut w = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
            let polled = w.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            match polled {
                Poll::Ready(Ok(permit)) if waiting.is_empty() && n < mirror.limit() => {
                    held.push((permit, n + 1, clock.elapsed()));
                }
                Poll::Pending if !waiting.is_empty() || n >= mirror.limit() => waiting.push_back(w),
                other => panic!("{n} held of {}: {other:?}", mirror.limit()),
            }
        } else {
            clock.advance(rng.pick(&rtts));
            let (permit, inflight, start) = held.swap_remove(rng.below(held.len()));
            let (dropped, at) = (rng.below(4) == 0, clock.elapsed());
            if dropped {
                permit.failure()
            } else {
                permit.success()
            }
            mirror.update(&smp(at - start, inflight, dropped));
            grant(&mut n, mirror.limit(), waiting.len(), &mut grants); // the resize
            n -= 1; // the ending call's slot goes back
            grant(&mut n, mirror.limit(), waiting.len(), &mut grants);
            assert_eq!(
                limiter.limit(),
                mirror.limit(),
                "rtt {:?}, inflight {inflight}",
                at - start
            );
        }
        for expected in grants {
            let mut w = waiting.pop_front().unwrap();
            match w.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(permit)) => held.push((permit, expected, clock.elapsed())),
                other => panic!("a waiter the model grants is not admitted: {other:?}"),
            }
        }
        if let Some(w) = waiting.front_mut() {
            assert!(
                w.as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
        }
        assert_eq!(
            (limiter.in_flight(), limiter.queued()),
            (held.len(), waiting.len())
        );
    }
}

// === per key =================================================================================

/// Each key's limit follows its own mirror, across random calls on four keys.
#[test]
fn keyed_limits_follow_their_own_mirrors() {
    let clock = FakeClock::new();
    let t = Duration::from_nanos(1_500);
    let keys = AdaptiveLimiter::builder(aimd(1, 3, 7, t))
        .runtime(clock.clone())
        .keyed()
        .build::<u8>()
        .unwrap();
    let mut mirrors: HashMap<u8, Aimd> = HashMap::new();
    let mut held: Vec<(u8, AdaptivePermit<Aimd, FakeClock>, u32, Duration)> = Vec::new();
    let mut rng = Rng(99);
    let rtts = around(t);
    for _ in 0..6_000 {
        let key = u8::try_from(rng.below(4)).unwrap();
        if rng.below(10) < 4 {
            let limit = mirrors
                .entry(key)
                .or_insert_with(|| aimd(1, 3, 7, t))
                .limit();
            let room = held.iter().filter(|h| h.0 == key).count() < usize::try_from(limit).unwrap();
            match keys.try_acquire(&key) {
                Ok(p) => {
                    assert!(room);
                    let inflight = u32::try_from(keys.in_flight(&key)).unwrap();
                    held.push((key, p, inflight, clock.elapsed()));
                }
                Err(_) => assert!(!room),
            }
            continue;
        }
        clock.advance(rng.pick(&rtts));
        if held.is_empty() {
            continue;
        }
        let (key, permit, inflight, start) = held.remove(rng.below(held.len()));
        let rtt = clock.elapsed() - start;
        let dropped = rng.below(4) == 0;
        if dropped {
            permit.failure()
        } else {
            permit.success()
        }
        let mirror = mirrors.get_mut(&key).unwrap();
        mirror.update(&smp(rtt, inflight, dropped));
        assert_eq!(
            keys.limit(&key),
            Some(mirror.limit()),
            "key {key}, rtt {rtt:?}, inflight {inflight}"
        );
    }
}

/// A key made after a switch away from an at-max algorithm learns busy successes; a key
/// forgotten and seen again starts over, with a fresh answer.
#[test]
fn keyed_new_and_returning_keys_answer_for_their_algorithm() {
    let clock = FakeClock::new();
    let at_max = aimd(1, 4, 4, Duration::from_secs(1));
    let keys = AdaptiveLimiter::builder(at_max.clone())
        .runtime(clock.clone())
        .keyed()
        .build::<&str>()
        .unwrap();
    let busy = |key| {
        let held: Vec<_> = (0..4).map(|_| keys.try_acquire(&key).unwrap()).collect();
        held.into_iter().for_each(AdaptivePermit::success);
    };
    busy("old");
    assert_eq!(
        keys.limit(&"old"),
        Some(4),
        "at its max, busy successes do not grow"
    );
    let grows = aimd(1, 4, 10, Duration::from_secs(1));
    keys.reconfigure(AdaptiveLimiter::builder(grows.clone()))
        .unwrap();
    busy("new");
    busy("old");
    let mut grown = grows;
    for inflight in 1..=4 {
        grown.update(&smp(Duration::ZERO, inflight, false));
    }
    assert_eq!(
        (keys.limit(&"new"), keys.limit(&"old")),
        (Some(grown.limit()), Some(grown.limit()))
    );
    // Learnt a lower limit, forgotten, seen again: from the initial limit, at its max again.
    keys.reconfigure(AdaptiveLimiter::builder(at_max)).unwrap();
    keys.try_acquire(&"old").unwrap().failure();
    assert_eq!(keys.limit(&"old"), Some(3));
    assert!(keys.retain_in_use() >= 1);
    busy("old");
    assert_eq!(keys.limit(&"old"), Some(4));
    keys.try_acquire(&"old").unwrap().failure();
    assert_eq!(keys.limit(&"old"), Some(3));
}

// === tokio's paused time and threads ========================================================

/// On tokio's paused clock (limiter built after the pause), AIMD with odd timeouts matches.
#[tokio::test(start_paused = true)]
async fn tokio_paused_time_aimd_matches_the_mirror() {
    for (seed, t) in ODD_TIMEOUTS_NS
        .map(Duration::from_nanos)
        .into_iter()
        .enumerate()
    {
        let limiter = AdaptiveLimiter::builder(aimd(1, 4, 8, t)).build().unwrap();
        let mut mirror = aimd(1, 4, 8, t);
        let mut rng = Rng(u64::try_from(seed).unwrap());
        let mut held = Vec::new();
        let rtts = around(t);
        for _ in 0..400 {
            if rng.below(2) == 0 {
                if let Ok(p) = limiter.try_acquire() {
                    held.push((
                        p,
                        u32::try_from(limiter.in_flight()).unwrap(),
                        tokio::time::Instant::now(),
                    ));
                }
                continue;
            }
            tokio::time::advance(rng.pick(&rtts)).await;
            if held.is_empty() {
                continue;
            }
            let (permit, inflight, start) = held.remove(rng.below(held.len()));
            let rtt = tokio::time::Instant::now() - start;
            let dropped = rng.below(5) == 0;
            if dropped {
                permit.failure()
            } else {
                permit.success()
            }
            mirror.update(&smp(rtt, inflight, dropped));
            assert_eq!(
                limiter.limit(),
                mirror.limit(),
                "timeout {t:?} rtt {rtt:?} inflight {inflight}"
            );
        }
    }
}

/// Concurrent pipeline calls (the `Admission` path) on tokio's paused clock match a mirror.
#[tokio::test(start_paused = true)]
async fn pipeline_calls_teach_as_the_mirror_learns() {
    let t = Duration::from_millis(3) + NS;
    let limiter = AdaptiveLimiter::builder(aimd(1, 4, 8, t)).build().unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .build()
        .unwrap();
    let ended = Arc::new(Mutex::new(Vec::new()));
    let mut mirror = aimd(1, 4, 8, t);
    let mut rng = Rng(5);
    for _ in 0..200 {
        let n = rng.below(usize::try_from(limiter.limit()).unwrap()) + 1;
        let calls = (0..n).map(|_| {
            let (ms, fail) = (u64::try_from(rng.below(5)).unwrap(), rng.below(6) == 0);
            let (limiter, ended) = (&limiter, &ended);
            pipeline.call(move || async move {
                let (start, inflight) = (tokio::time::Instant::now(), limiter.in_flight());
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let rtt = tokio::time::Instant::now() - start;
                let inflight = u32::try_from(inflight).unwrap();
                ended.lock().unwrap().push(smp(rtt, inflight, fail));
                if fail {
                    Err(std::io::Error::other("shed"))
                } else {
                    Ok(())
                }
            })
        });
        futures_util::future::join_all(calls).await;
        for s in ended.lock().unwrap().drain(..) {
            mirror.update(&s);
        }
        assert_eq!(limiter.limit(), mirror.limit());
    }
}

/// Threads ending only steady calls (at max, or under half in flight) leave the limit alone.
#[test]
fn threads_ending_only_steady_calls_leave_the_limit() {
    let clock = FakeClock::new();
    let at_max = AdaptiveLimiter::builder(aimd(1, 8, 8, Duration::from_secs(1)))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let idle = AdaptiveLimiter::builder(aimd(1, 20, 40, Duration::from_secs(1)))
        .runtime(clock.clone())
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5_000 {
                    if let Ok(p) = at_max.try_acquire() {
                        p.success();
                    }
                    idle.try_acquire().unwrap().success(); // at most 4 of 20 in flight
                }
            });
        }
    });
    assert_eq!((at_max.limit(), idle.limit()), (8, 20));
    at_max.try_acquire().unwrap().failure();
    idle.try_acquire().unwrap().failure();
    assert_eq!((at_max.limit(), idle.limit()), (7, 18));
}

/// Threads racing steady successes (under half in flight) against failures lose no failure:
/// the end limit is the mirror's after every failure, in any order (each takes one off).
#[test]
fn threads_racing_failures_and_steady_successes_lose_no_failure() {
    let clock = FakeClock::new();
    let algorithm = Aimd::builder()
        .min_limit(20)
        .initial_limit(200)
        .max_limit(400)
        .backoff_ratio(0.999)
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::builder(algorithm.clone())
        .runtime(clock.clone())
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for thread in 0..4 {
            let limiter = &limiter;
            s.spawn(move || {
                for i in 0..4_000 {
                    let permit = limiter.try_acquire().unwrap(); // at most 4 of 20..=200
                    match (i + thread) % 100 {
                        0 => permit.failure(),
                        1 => permit.ignore(),
                        2 => drop(permit),
                        _ => permit.success(),
                    }
                }
            });
        }
    });
    let mut mirror = algorithm;
    for _ in 0..4 * 40 {
        mirror.update(&smp(Duration::ZERO, 1, true));
    }
    assert_eq!((limiter.limit(), mirror.limit()), (40, 40));
}
