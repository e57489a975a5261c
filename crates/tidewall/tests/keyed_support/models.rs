//! Models of the keyed breaker and bulkhead for the property tests: each step runs one
//! operation and checks the documented eviction rules against what the model holds.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError};
use tidewall::breaker::{CircuitBreaker, Counts, KeyedCircuitBreaker, Outcome, OwnedPermit, State};
use tidewall::bulkhead::{Bulkhead, KeyedBulkhead};
use tidewall::rt::{Clock, Tokio};
use tidewall::testing::Clocked;
use tidewall::{Deadline, Rejected};

use super::{poll_once, secs};

pub type Rt = Clocked<Tokio>;

/// Opens on `failures` in a row for a 10 s break, one probe; `max_keys` and `ttl` as given.
pub fn breakers(
    rt: &Rt,
    failures: u32,
    max_keys: usize,
    ttl: Duration,
) -> KeyedCircuitBreaker<u64, Rt> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .no_failure_rate()
        .consecutive_failures(failures)
        .break_duration(secs(10))
        .half_open_probes(1)
        .keyed()
        .max_keys(max_keys)
        .idle_ttl(ttl)
        .build()
        .unwrap()
}

pub fn full(retry_after: Option<Duration>) -> Rejected {
    Rejected::KeysFull { retry_after }
}

/// A fixed seed and no regression files: every run explores the same cases.
pub fn fixed(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
pub enum BOp {
    /// Ask for a key; then record success, failure or ignored (0..3), hold (3) or drop (4).
    Ask(u8, u8),
    Release(usize, u8),
    Handle(u8),
    DropHandle(usize),
    /// On a held handle: force open (0), force closed (1) or reset.
    Force(usize, u8),
    Advance(u8),
    Sweep,
}

pub fn b_op() -> impl Strategy<Value = BOp> {
    prop_oneof![
        6 => (0u8..8, 0u8..5).prop_map(|(k, o)| BOp::Ask(k, o)),
        2 => (0usize..8, 0u8..3).prop_map(|(i, o)| BOp::Release(i, o)),
        1 => (0u8..8).prop_map(BOp::Handle),
        1 => (0usize..8).prop_map(BOp::DropHandle),
        1 => (0usize..8, 0u8..3).prop_map(|(i, o)| BOp::Force(i, o)),
        2 => (0u8..5).prop_map(BOp::Advance),
        1 => Just(BOp::Sweep),
    ]
}

fn outcome(o: u8) -> Outcome {
    [Outcome::Success, Outcome::Failure, Outcome::Ignored][usize::from(o % 3)]
}

const STEPS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(11),
    Duration::from_secs(61),
    Duration::from_secs(86_400),
];

/// What a held key looked like after a step.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    state: State,
    counts: Counts,
}

pub struct BreakerModel {
    rt: Rt,
    b: KeyedCircuitBreaker<u64, Rt>,
    max_keys: usize,
    ttl: Duration,
    permits: Vec<(u64, OwnedPermit<Rt>)>,
    handles: Vec<(u64, CircuitBreaker<Rt>)>,
    /// When each key was last asked for, or a call of its last ended in failure.
    asked: BTreeMap<u64, Instant>,
    before: BTreeMap<u64, Seen>,
    gone: u64,
}

impl BreakerModel {
    pub fn new(max_keys: usize, ttl: Duration) -> Self {
        let rt = Clocked::new(Tokio);
        let b = breakers(&rt, 2, max_keys, ttl);
        let (permits, handles, asked, before) =
            (Vec::new(), Vec::new(), BTreeMap::new(), BTreeMap::new());
        Self {
            rt,
            b,
            max_keys,
            ttl,
            permits,
            handles,
            asked,
            before,
            gone: 0,
        }
    }

    fn out(&self, k: u64) -> bool {
        self.permits.iter().any(|(p, _)| *p == k) || self.handles.iter().any(|(h, _)| *h == k)
    }

    /// May `k` go now, by the documented rule?
    fn may_go(&self, k: u64, seen: &Seen) -> bool {
        seen.state == State::Closed
            && !self.out(k)
            && (seen.counts.calls == 0 || self.rt.now() - self.asked[&k] >= self.ttl)
    }

    /// A refusal of new key `k`: every held key is unforgettable, and the hint is a lower
    /// bound of the first one's idle time, None when none waits on time.
    fn refused(&self, k: u64, retry_after: Option<Duration>) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.b.len(), self.max_keys, "refused below the bound");
        // Keys waiting on time alone, and (ambiguous: a handle is not named) on time and a
        // handle.
        let (mut waits, mut handled): (Option<Duration>, Option<Duration>) = (None, None);
        for (key, seen) in &self.before {
            prop_assert!(
                !self.may_go(*key, seen),
                "key {} may go, yet {} was refused: {:?}",
                key,
                k,
                seen
            );
            if seen.state == State::Closed && !self.permits.iter().any(|(p, _)| p == key) {
                let left = (self.asked[key] + self.ttl) - self.rt.now();
                let slot = if self.out(*key) {
                    &mut handled
                } else {
                    &mut waits
                };
                *slot = Some(slot.map_or(left, |w| w.min(left)));
            }
        }
        match (retry_after, waits, handled) {
            (Some(d), Some(w), _) | (Some(d), None, Some(w)) => {
                prop_assert!(
                    d > Duration::ZERO && d <= w,
                    "hint {:?} is no lower bound of {:?}",
                    d,
                    w
                );
            }
            (None, None, _) => {}
            (hint, waits, _) => prop_assert!(false, "hint {:?}, keys wait {:?}", hint, waits),
        }
        Ok(())
    }

    pub fn step(&mut self, op: BOp) -> Result<(), TestCaseError> {
        let (b, now) = (self.b.clone(), self.rt.now());
        let mut swept = None;
        match op {
            BOp::Ask(k, o) => {
                let k = u64::from(k);
                let new = b.state(&k).is_none();
                match b.try_acquire(&k) {
                    Ok(permit) => match o {
                        3 => self.permits.push((k, permit)),
                        4 => drop(permit),
                        o => permit.record(outcome(o)),
                    },
                    Err(Rejected::CircuitOpen { .. }) => prop_assert!(!new),
                    Err(Rejected::KeysFull { retry_after }) => {
                        prop_assert!(new, "a held key refused as KeysFull");
                        return self.refused(k, retry_after);
                    }
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
                self.asked.insert(k, now);
            }
            BOp::Release(i, o) if !self.permits.is_empty() => {
                let (k, permit) = self.permits.swap_remove(i % self.permits.len());
                permit.record(outcome(o));
                // A failure touches its key now, however long ago its call was asked for.
                if outcome(o) == Outcome::Failure {
                    self.asked.insert(k, now);
                }
            }
            BOp::Handle(k) => {
                if let Some(h) = b.get(&u64::from(k)) {
                    self.handles.push((u64::from(k), h));
                }
            }
            BOp::DropHandle(i) if !self.handles.is_empty() => {
                self.handles.swap_remove(i % self.handles.len());
            }
            BOp::Force(i, o) if !self.handles.is_empty() => {
                let h = &self.handles[i % self.handles.len()].1;
                match o {
                    0 => h.force_open(),
                    1 => h.force_closed(),
                    _ => h.reset(),
                }
            }
            BOp::Advance(s) => self.rt.clock().advance(STEPS[usize::from(s)]),
            BOp::Sweep => swept = Some(b.retain_in_use()),
            _ => {}
        }
        prop_assert!(b.len() <= self.max_keys);
        let mut after = BTreeMap::new();
        for k in 0..8u64 {
            if let (Some(state), Some(counts)) = (b.state(&k), b.counts(&k)) {
                after.insert(k, Seen { state, counts });
            } else {
                prop_assert!(!self.out(k), "key {} forgotten with something out", k);
            }
        }
        prop_assert_eq!(after.len(), b.len());
        let left: Vec<u64> = self
            .before
            .keys()
            .filter(|k| !after.contains_key(k))
            .copied()
            .collect();
        for k in &left {
            let seen = self.before[k];
            prop_assert!(
                self.may_go(*k, &seen),
                "key {} forgotten while {:?}",
                k,
                seen
            );
        }
        self.gone += left.len() as u64;
        if let Some(n) = swept {
            prop_assert_eq!(n, left.len());
        }
        prop_assert_eq!(b.evicted(), self.gone);
        self.before = after;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub enum KOp {
    Try(u8),
    Wait(u8),
    Poll(usize),
    DropPermit(usize),
    DropWaiter(usize),
    Handle(u8),
    DropHandle(usize),
    Sweep,
}

pub fn k_op() -> impl Strategy<Value = KOp> {
    prop_oneof![
        3 => (0u8..6).prop_map(KOp::Try),
        3 => (0u8..6).prop_map(KOp::Wait),
        2 => (0usize..8).prop_map(KOp::Poll),
        2 => (0usize..8).prop_map(KOp::DropPermit),
        2 => (0usize..8).prop_map(KOp::DropWaiter),
        1 => (0u8..6).prop_map(KOp::Handle),
        1 => (0usize..8).prop_map(KOp::DropHandle),
        1 => Just(KOp::Sweep),
    ]
}

pub type Waiter =
    Pin<Box<dyn Future<Output = Result<tidewall::bulkhead::OwnedPermit<Rt>, Rejected>> + Send>>;

pub struct BulkheadModel {
    b: KeyedBulkhead<u8, Rt>,
    capacity: usize,
    max_keys: usize,
    permits: Vec<(u8, tidewall::bulkhead::OwnedPermit<Rt>)>,
    waiters: Vec<(u8, Waiter)>,
    handles: Vec<(u8, Bulkhead<Rt>)>,
}

impl BulkheadModel {
    /// `capacity` slots, `queue` waiters (waiting without limit), `max_keys` keys.
    pub fn new(capacity: usize, queue: usize, max_keys: usize) -> Self {
        let b = Bulkhead::builder(capacity)
            .max_queue(queue)
            .max_wait(None::<Duration>)
            .runtime(Clocked::new(Tokio))
            .keyed()
            .max_keys(max_keys)
            .build::<u8>()
            .unwrap();
        let (permits, waiters, handles) = (Vec::new(), Vec::new(), Vec::new());
        Self {
            b,
            capacity,
            max_keys,
            permits,
            waiters,
            handles,
        }
    }

    fn busy(&self) -> BTreeSet<u8> {
        let mut keys: BTreeSet<u8> = self.permits.iter().map(|(k, _)| *k).collect();
        keys.extend(self.waiters.iter().map(|(k, _)| *k));
        keys.extend(self.handles.iter().map(|(k, _)| *k));
        keys
    }

    fn refused(&self, rejected: Rejected) -> Result<(), TestCaseError> {
        prop_assert_eq!(rejected, Rejected::KeysFull { retry_after: None });
        prop_assert!(
            self.busy().len() >= self.max_keys,
            "refused with {} busy keys",
            self.busy().len()
        );
        Ok(())
    }

    /// Polls waiter `i`; a granted one becomes a permit.
    fn poll(&mut self, i: usize) -> Result<(), TestCaseError> {
        if let Poll::Ready(got) = poll_once(self.waiters[i].1.as_mut()) {
            let (k, _) = self.waiters.swap_remove(i);
            prop_assert!(
                got.is_ok(),
                "a queued waiter without deadline failed: {:?}",
                got.err()
            );
            self.permits.push((k, got.unwrap()));
        }
        Ok(())
    }

    pub fn step(&mut self, op: KOp) -> Result<(), TestCaseError> {
        let b = self.b.clone();
        match op {
            KOp::Try(k) => match b.try_acquire(&k) {
                Ok(p) => self.permits.push((k, p)),
                Err(Rejected::BulkheadFull) => {
                    let h = b.get(&k).expect("a full key is held");
                    prop_assert!(h.available() == 0 || h.queued() > 0);
                }
                Err(other) => self.refused(other)?,
            },
            KOp::Wait(k) => {
                let mut w: Waiter = Box::pin(b.acquire_before(&k, Deadline::none()));
                match poll_once(w.as_mut()) {
                    Poll::Pending => self.waiters.push((k, w)),
                    Poll::Ready(Ok(p)) => self.permits.push((k, p)),
                    Poll::Ready(Err(Rejected::BulkheadFull)) => {}
                    Poll::Ready(Err(other)) => self.refused(other)?,
                }
            }
            KOp::Poll(i) if !self.waiters.is_empty() => self.poll(i % self.waiters.len())?,
            KOp::DropPermit(i) if !self.permits.is_empty() => {
                drop(self.permits.swap_remove(i % self.permits.len()));
            }
            KOp::DropWaiter(i) if !self.waiters.is_empty() => {
                drop(self.waiters.swap_remove(i % self.waiters.len()));
            }
            KOp::Handle(k) => {
                if let Some(h) = b.get(&k) {
                    self.handles.push((k, h));
                }
            }
            KOp::DropHandle(i) if !self.handles.is_empty() => {
                drop(self.handles.swap_remove(i % self.handles.len()));
            }
            KOp::Sweep => {
                b.retain_in_use();
            }
            _ => {}
        }
        prop_assert!(b.len() <= self.max_keys);
        for k in self.busy() {
            let h = b.get(&k);
            prop_assert!(h.is_some(), "busy key {} forgotten", k);
            let held = self.permits.iter().filter(|(p, _)| *p == k).count();
            prop_assert!(b.in_flight(&k) >= held && b.in_flight(&k) <= self.capacity);
            prop_assert!(h.unwrap().available() <= self.capacity);
        }
        Ok(())
    }

    /// Drops everything in the order `order` picks, polling a waiter now and then; then every
    /// slot of every key is free and every key may go.
    pub fn drain(mut self, order: Vec<usize>) -> Result<(), TestCaseError> {
        let mut o = order.into_iter().cycle();
        while !(self.permits.is_empty() && self.waiters.is_empty() && self.handles.is_empty()) {
            let pick = o.next().unwrap();
            match pick % 4 {
                0 if !self.permits.is_empty() => {
                    drop(self.permits.swap_remove(pick % self.permits.len()))
                }
                1 if !self.waiters.is_empty() => {
                    drop(self.waiters.swap_remove(pick % self.waiters.len()))
                }
                2 if !self.waiters.is_empty() => self.poll(pick % self.waiters.len())?,
                _ if !self.handles.is_empty() => {
                    drop(self.handles.swap_remove(pick % self.handles.len()))
                }
                _ if !self.permits.is_empty() => drop(self.permits.pop()),
                _ => drop(self.waiters.pop()),
            }
        }
        for k in 0..6u8 {
            if let Some(h) = self.b.get(&k) {
                prop_assert_eq!((h.available(), h.queued()), (self.capacity, 0), "key {}", k);
            }
        }
        self.b.retain_in_use();
        prop_assert_eq!(self.b.len(), 0, "nothing is out: every key may go");
        Ok(())
    }
}
