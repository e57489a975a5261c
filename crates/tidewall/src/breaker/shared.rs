//! The breaker's shared state and its transitions.
//!
//! Admission in the closed state is one atomic load; recording an outcome touches only the
//! window (see `window.rs`). Transitions are rare and take the `transition` lock, re-check the
//! generation under it, write the timestamps, then publish the new state word with `Release`,
//! so whoever loads the word with `Acquire` sees the timestamps that belong to it.
//!
//! The policy can be replaced while calls run (`reconfigure`): what every call reads lives in
//! atomics (the thresholds in a sequence lock, read whole), the full policy and the break
//! schedule under the transition lock, and the window behind a swappable pointer, replaced
//! by every transition to closed (see `Tally`).

use std::time::{Duration, Instant};

use tidewall_core::breaker::{BreakDurations, BreakerPolicy, Thresholds, TripReason, Window};

use super::events::{Listener, StateChange, emit};
use super::window::Tally;
use super::word::{self, ONE_ADMITTED, ONE_SUCCEEDED};
use super::{Outcome, State};
use crate::rt::Clock;
use crate::sync::{
    AtomicBool, AtomicU32, AtomicU64, Mutex, Ordering::*, Swap, Tuning, lock, nanos_since,
};
use crate::{Name, Rejected};

/// What an admitted call holds: enough to tell, at the end, whether its state still stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    pub(super) generation: u32,
    pub(super) probe: bool,
    /// Start time in breaker nanoseconds, or [`UNTIMED`] when slow calls were not tracked as
    /// it was admitted (a slow-call rule added since cannot judge it).
    pub(super) started: u64,
}

/// A ticket's start when the clock was not read.
const UNTIMED: u64 = u64::MAX;

pub(crate) struct Shared<R> {
    word: AtomicU64,
    /// The closed period's window and run of failures.
    tally: Swap<Tally>,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    /// When a call last ended in failure, in breaker nanoseconds ([`UNTIMED`]: never): a
    /// keyed table keeps a key whose failures are recent, however long ago the call began.
    last_failure: AtomicU64,
    /// Serializes transitions and reconfigurations; holds the policy and the break durations
    /// of the trips since the last close.
    transition: Mutex<Transition>,
    /// The policy's [`Thresholds`] as words.
    thresholds: Tuning<3>,
    /// The policy's half-open probes.
    probes: AtomicU32,
    /// The policy's longest half-open wait in nanoseconds; `u64::MAX` for none.
    half_open_wait: AtomicU64,
    /// The first break in nanoseconds, the hint of a refusal that cannot know more.
    first_break: AtomicU64,
    /// Whether recording needs the time (a time window or slow-call tracking).
    needs_clock: AtomicBool,
    /// Whether a call's start is timed as it is admitted: only when slow calls are tracked
    /// (a time window needs the time at the end alone), so a call admitted before a slow-call
    /// rule was added is never judged by it.
    times_calls: AtomicBool,
    origin: Instant,
    pub(super) rt: R,
    pub(super) name: Name,
    telemetry: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
    /// Whether `telemetry` wants outcomes (metrics or a listener), read beside the state
    /// rather than behind the pointer: the closed path then costs what it did without.
    reports_outcomes: bool,
    listener: Option<Listener>,
    seed: u64,
    /// The longest a failure's hint may hold the breaker open, in nanoseconds.
    max_open_hint: AtomicU64,
    /// The key of a keyed breaker's entry, as its telemetry labels it.
    key_label: Option<Box<str>>,
}

/// How a breaker is made, besides its policy.
pub(super) struct Setup<R> {
    pub(super) rt: R,
    pub(super) name: Name,
    pub(super) listener: Option<Listener>,
    pub(super) seed: u64,
    pub(super) max_open_hint: Duration,
    pub(super) key_label: Option<Box<str>>,
    /// Where refusals are counted: the breaker's own, or one set for all keys of a table.
    pub(super) telemetry: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
}

/// What the transition lock guards.
struct Transition {
    /// Shared by the keys of a keyed breaker until one is reconfigured.
    policy: std::sync::Arc<BreakerPolicy>,
    breaks: BreakDurations,
}

impl Transition {
    /// The break durations after a close: the schedule starts over, with jitter drawn anew
    /// for each closed period.
    fn fresh_breaks(&mut self, seed: u64, generation: u32) {
        self.breaks = self.policy.break_durations(seed ^ u64::from(generation));
    }
}

fn needs_clock(policy: &BreakerPolicy) -> bool {
    matches!(policy.window(), Window::Time { .. }) || policy.tracks_slow_calls()
}

/// How a [`reconfigure`](super::CircuitBreaker::reconfigure) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reconfigured {
    /// The window kept its shape: the state, the window's calls and the run of failures
    /// were kept, and the new thresholds judged them at once (a closed breaker they trip
    /// opened) and judge every outcome after.
    Kept,
    /// The window changed shape (another length or kind): the breaker was reset to closed
    /// with an empty window, with a state-change event, as [`reset`](super::CircuitBreaker::reset)
    /// does.
    Reset,
    /// The window changed shape on a breaker forced open or closed: it stays forced (a
    /// decision taken by hand outlives a reload), in the same generation (so whoever forced
    /// it can still undo that with [`reset_if`](super::CircuitBreaker::reset_if)), on an
    /// empty window of the new shape, with no state-change event. A forced breaker counts
    /// no call, so the window stays empty until it is reset.
    KeptForced,
}

impl<R: Clock> Shared<R> {
    pub(super) fn new(policy: std::sync::Arc<BreakerPolicy>, setup: Setup<R>) -> Self {
        let Setup {
            rt,
            name,
            listener,
            seed,
            max_open_hint,
            key_label,
            telemetry,
        } = setup;
        Self {
            origin: rt.now(),
            word: AtomicU64::new(word::pack(State::Closed, 0)),
            needs_clock: AtomicBool::new(needs_clock(&policy)),
            times_calls: AtomicBool::new(policy.tracks_slow_calls()),
            tally: Swap::new(Tally::new(policy.window(), 0)),
            last_failure: AtomicU64::new(UNTIMED),
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            thresholds: Tuning::new(policy.thresholds().to_words()),
            probes: AtomicU32::new(policy.half_open_probes()),
            half_open_wait: AtomicU64::new(policy.max_half_open_wait().map_or(u64::MAX, as_nanos)),
            first_break: AtomicU64::new(as_nanos(policy.break_duration(0, seed))),
            transition: Mutex::new(Transition {
                breaks: policy.break_durations(seed),
                policy,
            }),
            rt,
            name,
            reports_outcomes: telemetry.reports_outcomes(),
            telemetry,
            listener,
            seed,
            max_open_hint: AtomicU64::new(as_nanos(max_open_hint)),
            key_label,
        }
    }

    /// The policy in force.
    pub(super) fn policy(&self) -> BreakerPolicy {
        BreakerPolicy::clone(&lock(&self.transition).policy)
    }

    /// Replaces the policy (validated) and the hint cap. A window of the same shape is kept
    /// with the state; another shape resets the breaker (see [`Reconfigured`]).
    pub(super) fn reconfigure(
        &self,
        policy: BreakerPolicy,
        max_open_hint: Duration,
    ) -> Reconfigured {
        let reset = {
            let mut transition = lock(&self.transition);
            let reshaped = policy.window() != transition.policy.window();
            self.thresholds.write(policy.thresholds().to_words());
            self.probes.store(policy.half_open_probes(), Relaxed);
            self.half_open_wait.store(
                policy.max_half_open_wait().map_or(u64::MAX, as_nanos),
                Relaxed,
            );
            self.first_break
                .store(as_nanos(policy.break_duration(0, self.seed)), Relaxed);
            self.max_open_hint.store(as_nanos(max_open_hint), Relaxed);
            self.needs_clock.store(needs_clock(&policy), Relaxed);
            self.times_calls.store(policy.tracks_slow_calls(), Relaxed);
            // Another schedule of breaks starts from its first; the same one goes on where
            // it was, so a reload that changes nothing leaves a failing dependency's breaks
            // as long as they had grown.
            if policy.break_backoff() != transition.policy.break_backoff() {
                let generation = word::generation(self.word.load(Acquire));
                transition.breaks = policy.break_durations(self.seed ^ u64::from(generation));
            }
            transition.policy = std::sync::Arc::new(policy);
            // Under the same lock: no outcome is judged by the new thresholds in a window of
            // the old shape. Outcomes of calls admitted before are dropped with the generation
            // they hold.
            if !reshaped {
                None
            } else if self.is_forced() {
                // The same state and generation, on an empty window of the new shape: no
                // transition, so a force can still be undone by the generation it made.
                let generation = word::generation(self.word.load(Acquire));
                self.tally
                    .store(Tally::new(transition.policy.window(), generation));
                return Reconfigured::KeptForced;
            } else {
                self.force_locked(&mut transition, State::Closed, None)
            }
        };
        if let Some(change) = reset {
            self.announce(&change);
            return Reconfigured::Reset;
        }
        self.rejudge();
        Reconfigured::Kept
    }

    /// After a reconfiguration that kept the state: a closed breaker whose window the new
    /// thresholds trip opens now (a later success over a success would change no count and
    /// judge nothing), and a half-open one whose probes have all succeeded under fewer
    /// probes closes (no probe is left to close it).
    fn rejudge(&self) {
        let word = self.word.load(Acquire);
        let generation = word::generation(word);
        match word::state(word) {
            State::Closed => {
                let thresholds = self.thresholds();
                let tally = self.tally.load();
                let consecutive = if thresholds.tracks_consecutive_failures() {
                    tally.consecutive.load(Relaxed)
                } else {
                    0
                };
                let reason = tally
                    .window
                    .counts(self.now())
                    .and_then(|counts| thresholds.evaluate(counts, consecutive));
                if let Some(reason) = reason {
                    self.trip(generation, reason, None);
                }
            }
            State::HalfOpen if word::succeeded(word) >= self.probes.load(Relaxed) => {
                self.close(generation);
            }
            _ => {}
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds::from_words(self.thresholds.read())
    }

    fn first_break(&self) -> Duration {
        nanos(self.first_break.load(Relaxed))
    }

    fn now(&self) -> u64 {
        nanos_since(self.origin, self.rt.now())
    }

    pub(super) fn state(&self) -> State {
        word::state(self.word.load(Acquire))
    }

    /// Admits one call, counting a refusal as a rejection.
    pub(super) fn acquire(&self) -> Result<Ticket, Rejected> {
        let admitted = self.acquire_quiet();
        if let Err(rejected) = &admitted {
            self.telemetry.refused(rejected, self.key_label.as_deref());
        }
        admitted
    }

    /// Counts a refusal that [`acquire_quiet`](Self::acquire_quiet) did not.
    #[cfg(feature = "tower")]
    pub(super) fn record_rejection(&self, rejected: &Rejected) {
        self.telemetry.record(rejected, self.key_label.as_deref());
    }

    /// Admits one call; a refusal is not counted (a caller that waits for the breaker is
    /// counted once, when it gives up).
    pub(super) fn acquire_quiet(&self) -> Result<Ticket, Rejected> {
        loop {
            let word = self.word.load(Acquire);
            let generation = word::generation(word);
            match word::state(word) {
                State::Closed | State::ForcedClosed => {
                    let started = if self.times_calls.load(Relaxed) {
                        self.now()
                    } else {
                        UNTIMED
                    };
                    return Ok(Ticket {
                        generation,
                        probe: false,
                        started,
                    });
                }
                State::ForcedOpen => {
                    return Err(open(self.first_break()));
                }
                State::Open => {
                    let now = self.now();
                    let until = self.open_until.load(Relaxed);
                    if now < until {
                        return Err(open(nanos(until - now)));
                    }
                    self.to_half_open(generation, now);
                }
                State::HalfOpen => {
                    let now = self.now();
                    // Probes still running: admitted and not yet succeeded (a probe that gave
                    // its slot back is no longer admitted).
                    let in_flight = word::admitted(word).saturating_sub(word::succeeded(word));
                    let since = self.half_open_since.load(Relaxed);
                    let limit = match self.half_open_wait.load(Relaxed) {
                        u64::MAX => None,
                        wait => Some(since.saturating_add(wait)),
                    };
                    // Only a probe that hangs reopens the breaker: with none in flight, an
                    // idle gap of any length leaves it half-open, waiting for the next caller.
                    if in_flight > 0 && limit.is_some_and(|limit| now >= limit) {
                        self.trip(generation, TripReason::HalfOpenTimeout, None);
                        continue;
                    }
                    if word::admitted(word) >= self.probes.load(Relaxed) {
                        // The probes decide soon; hint at most one base break (not the whole
                        // remaining half-open wait, which can be a minute).
                        let base = self.first_break();
                        let wait = limit.map_or(base, |l| nanos(l.saturating_sub(now)).min(base));
                        return Err(open(wait));
                    }
                    if in_flight == 0 {
                        // The wait for hung probes runs from the first probe in flight. Stored
                        // before the reservation is published, so whoever sees that probe
                        // (Acquire on the word) also sees this start.
                        self.half_open_since.store(now, Relaxed);
                    }
                    // Reserve a slot atomically: of any number of racing callers exactly the
                    // free slots' worth win this compare-and-swap.
                    if self
                        .word
                        .compare_exchange(word, word + ONE_ADMITTED, AcqRel, Acquire)
                        .is_ok()
                    {
                        return Ok(Ticket {
                            generation,
                            probe: true,
                            started: now,
                        });
                    }
                }
            }
        }
    }

    /// Records how an admitted call ended, with the wait its result asked for (a server's
    /// `Retry-After`): a failure that opens the breaker keeps it open at least that long,
    /// capped at `max_open_hint`. Outcomes of permits from an earlier generation are ignored:
    /// they never move the current state.
    pub(super) fn finish(&self, ticket: Ticket, outcome: Outcome, hint: Option<Duration>) {
        if self.reports_outcomes {
            self.tell_outcome(ticket, outcome);
        }
        let timed = self.needs_clock.load(Relaxed) || ticket.probe;
        let now = if timed { self.now() } else { 0 };
        if outcome == Outcome::Failure {
            // Off the success path: a failure reads the clock if the policy did not.
            let at = if timed { now } else { self.now() };
            self.last_failure.store(at, Relaxed);
        }
        let thresholds = self.thresholds();
        let slow = ticket.started != UNTIMED
            && thresholds.is_slow(Duration::from_nanos(now.saturating_sub(ticket.started)));
        if ticket.probe {
            self.finish_probe(ticket.generation, outcome, slow, hint);
            return;
        }
        if outcome == Outcome::Ignored {
            return;
        }
        let word = self.word.load(Acquire);
        if word::generation(word) != ticket.generation || word::state(word) != State::Closed {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let tally = self.tally.load();
        if tally.generation != ticket.generation {
            // A transition to closed is replacing the tally (or has replaced it) since the
            // check above: this outcome belongs to the closed period it ends.
            return;
        }
        let window = &tally.window;
        let changed = window.record(failed, slow, now);
        let consecutive = if !thresholds.tracks_consecutive_failures() {
            0
        } else if failed {
            // Saturating: a run of failures never wraps back to a short one.
            let previous = tally
                .consecutive
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(1)))
                .unwrap_or(u32::MAX);
            previous.saturating_add(1)
        } else {
            if tally.consecutive.load(Relaxed) != 0 {
                tally.consecutive.store(0, Relaxed);
            }
            0
        };
        // Every recorded outcome is evaluated, successes too: a success can bring the window
        // to its minimum number of calls with the failure rate already over the threshold,
        // and in a time window it can arrive as older successes expire. Only an outcome that
        // left the counts as they were (a success over a success) cannot change the verdict.
        if (changed || failed)
            && let Some(reason) = window
                .counts(now)
                .and_then(|c| thresholds.evaluate(c, consecutive))
        {
            self.trip(ticket.generation, reason, if failed { hint } else { None });
        }
    }

    /// Tells the listener and metrics how a call ended, before it is recorded. A probe's
    /// ticket has left its permit by then: if the listener panics, the probe's slot is given
    /// back as it unwinds, as a permit unwound by a panic gives it back.
    #[inline]
    fn tell_outcome(&self, ticket: Ticket, outcome: Outcome) {
        if ticket.probe {
            crate::telemetry::tell_or_give_back(
                || self.telemetry.outcome(outcome, self.key_label.as_deref()),
                || self.return_probe(ticket.generation),
            );
        } else {
            self.telemetry.outcome(outcome, self.key_label.as_deref());
        }
    }

    fn finish_probe(&self, generation: u32, outcome: Outcome, slow: bool, hint: Option<Duration>) {
        match outcome {
            Outcome::Ignored => self.return_probe(generation),
            Outcome::Failure => self.trip(generation, TripReason::ProbeFailed, hint),
            Outcome::Success if slow => self.trip(generation, TripReason::SlowCallRate, None),
            Outcome::Success => {
                let mut word = self.word.load(Acquire);
                loop {
                    if word::generation(word) != generation || word::state(word) != State::HalfOpen
                    {
                        return;
                    }
                    match self
                        .word
                        .compare_exchange(word, word + ONE_SUCCEEDED, AcqRel, Acquire)
                    {
                        Ok(_) => break,
                        Err(seen) => word = seen,
                    }
                }
                if word::succeeded(word) + 1 >= self.probes.load(Relaxed) {
                    self.close(generation);
                }
            }
        }
    }

    /// A probe that ended without an outcome (dropped, cancelled, panicked, ignored) gives its
    /// slot back, if its half-open state is still the current one.
    pub(super) fn return_probe(&self, generation: u32) {
        let mut word = self.word.load(Acquire);
        while word::generation(word) == generation
            && word::state(word) == State::HalfOpen
            && word::admitted(word) > 0
        {
            match self
                .word
                .compare_exchange(word, word - ONE_ADMITTED, AcqRel, Acquire)
            {
                Ok(_) => return,
                Err(seen) => word = seen,
            }
        }
    }

    /// Opens the breaker if `generation` is still current and closed or half-open, for its
    /// next break or the failure's `hint` (capped), whichever is longer. The break is measured
    /// from the clock read here, under the lock: callers on the closed path do not read the
    /// clock unless their policy needs it, and a break measured from anything but now would
    /// end early on any breaker older than its break.
    fn trip(&self, generation: u32, reason: TripReason, hint: Option<Duration>) {
        let change = {
            let mut transition = lock(&self.transition);
            let word = self.word.load(Acquire);
            let from = word::state(word);
            if word::generation(word) != generation
                || !matches!(from, State::Closed | State::HalfOpen)
            {
                return;
            }
            let next = generation.wrapping_add(1);
            let cap = self.max_open_hint.load(Relaxed);
            let hinted = hint.map_or(0, |hint| as_nanos(hint).min(cap));
            let pause = as_nanos(transition.breaks.next_break()).max(hinted);
            self.open_until
                .store(self.now().saturating_add(pause), Relaxed);
            self.publish(generation, State::Open);
            StateChange {
                name: self.name.as_str(),
                from,
                to: State::Open,
                reason: Some(reason),
                generation: next,
            }
        };
        self.announce(&change);
    }

    fn to_half_open(&self, generation: u32, now: u64) {
        let moved = {
            let _guard = lock(&self.transition);
            let word = self.word.load(Acquire);
            if word::generation(word) != generation || word::state(word) != State::Open {
                false
            } else {
                self.half_open_since.store(now, Relaxed);
                self.publish(generation, State::HalfOpen);
                true
            }
        };
        if moved {
            let change = StateChange {
                name: self.name.as_str(),
                from: State::Open,
                to: State::HalfOpen,
                reason: None,
                generation: generation.wrapping_add(1),
            };
            self.announce(&change);
        }
    }

    fn close(&self, generation: u32) {
        let moved = {
            let mut transition = lock(&self.transition);
            let word = self.word.load(Acquire);
            if word::generation(word) != generation || word::state(word) != State::HalfOpen {
                false
            } else {
                self.fresh_tally(&transition, generation);
                transition.fresh_breaks(self.seed, generation);
                self.publish(generation, State::Closed);
                true
            }
        };
        if moved {
            let change = StateChange {
                name: self.name.as_str(),
                from: State::HalfOpen,
                to: State::Closed,
                reason: None,
                generation: generation.wrapping_add(1),
            };
            self.announce(&change);
        }
    }

    /// Publishes the next generation in state `to`, with the transition lock held (so the
    /// generation cannot change under us; only probes' counters can). A compare-and-swap
    /// rather than a store: a probe's counter update racing with the transition either lands
    /// before it (and is replaced) or fails against the new word — a store could not promise
    /// that the word it overwrites is the one the check saw, and loom (whose model lets a
    /// store slip between the read and write of a racing read-modify-write, loom #254) could
    /// not check it.
    fn publish(&self, generation: u32, to: State) {
        let next = word::pack(to, generation.wrapping_add(1));
        let mut current = self.word.load(Acquire);
        while word::generation(current) == generation {
            match self.word.compare_exchange(current, next, AcqRel, Acquire) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Tells the listeners, tracing and metrics of a state change. Cold: a transition is
    /// rare, and its reporting stays out of the call paths that may make one.
    /// Both are told even if the first panics (the state has changed either way), and the
    /// first panic then goes on.
    #[cold]
    fn announce(&self, change: &StateChange<'_>) {
        let mut listeners = crate::telemetry::ListenerPanics::default();
        listeners.run(|| emit(self.listener.as_ref(), change));
        listeners.run(|| self.telemetry.transition(change, self.key_label.as_deref()));
        listeners.resume(|| ());
    }

    /// Whether it was forced open or closed by hand.
    fn is_forced(&self) -> bool {
        matches!(self.state(), State::ForcedOpen | State::ForcedClosed)
    }

    /// Moves to `to` by hand, whatever the current state (a new generation either way).
    pub(super) fn force(&self, to: State) {
        self.force_if(to, None);
    }

    /// The state and generation in one read.
    pub(super) fn state_and_generation(&self) -> (State, u32) {
        let word = self.word.load(Acquire);
        (word::state(word), word::generation(word))
    }

    /// Moves to `to` by hand, if the breaker is still in generation `seen` (any generation
    /// when `None`); the generation it made, or `None` when it had moved on.
    pub(super) fn force_if(&self, to: State, seen: Option<u32>) -> Option<u32> {
        let change = self.force_locked(&mut lock(&self.transition), to, seen)?;
        self.announce(&change);
        Some(change.generation)
    }

    /// [`force_if`](Self::force_if) with the transition lock held; the change to announce
    /// once it is released.
    fn force_locked(
        &self,
        transition: &mut Transition,
        to: State,
        seen: Option<u32>,
    ) -> Option<StateChange<'_>> {
        let word = self.word.load(Acquire);
        let generation = word::generation(word);
        if seen.is_some_and(|seen| seen != generation) {
            return None;
        }
        if to == State::Closed {
            self.fresh_tally(transition, generation);
            transition.fresh_breaks(self.seed, generation);
        }
        self.publish(generation, to);
        Some(StateChange {
            name: self.name.as_str(),
            from: word::state(word),
            to,
            reason: None,
            generation: generation.wrapping_add(1),
        })
    }

    /// An empty window and run of failures for the closed period that `generation`'s
    /// transition starts: stored before that transition is published, so a call admitted in
    /// the new period finds it.
    fn fresh_tally(&self, transition: &Transition, generation: u32) {
        self.tally.store(Tally::new(
            transition.policy.window(),
            generation.wrapping_add(1),
        ));
    }

    /// Whether forgetting this breaker loses nothing: closed, nothing in its window and no
    /// run of failures (a fresh breaker would be the same).
    pub(super) fn is_pristine(&self) -> bool {
        let tally = self.tally.load();
        self.state() == State::Closed
            && tally.consecutive.load(Relaxed) == 0
            && tally.counts(self.now()).calls == 0
    }

    /// Restarts a ticket's clock at now, if its start was timed (a probe's always is).
    #[cfg(any(feature = "http", feature = "tower"))]
    pub(super) fn restart(&self, ticket: &mut Ticket) {
        if ticket.started != UNTIMED {
            ticket.started = self.now();
        }
    }

    /// How long ago a call last ended in failure, if one has.
    pub(super) fn since_last_failure(&self) -> Option<Duration> {
        match self.last_failure.load(Relaxed) {
            UNTIMED => None,
            at => Some(nanos(self.now().saturating_sub(at))),
        }
    }

    pub(super) fn counts(&self) -> tidewall_core::breaker::Counts {
        self.tally.load().counts(self.now())
    }
}

fn nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn open(retry_after: Duration) -> Rejected {
    Rejected::CircuitOpen { retry_after }
}
