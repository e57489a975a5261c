//! Bulkhead: a cap on concurrent calls, with a bounded queue or immediate rejection.
//!
//! A [`Bulkhead`] admits at most `max_concurrent` calls at once. When full, a caller either
//! gets [`Rejected::BulkheadFull`] at once (`max_queue(0)`, or
//! [`try_acquire`](Bulkhead::try_acquire)), or waits in a bounded first-in-first-out queue for
//! at most `max_wait` (and never past the caller's [`Deadline`]). Compared with a bare
//! semaphore it adds the reject-when-full policy, the wait limit, the queue's
//! [discipline](BulkheadBuilder::discipline) for overload (LIFO, or CoDel's delay bound) and
//! the counters.
//!
//! * **Permits are RAII**: dropping a permit frees the slot and hands it straight to the
//!   next waiter in the queue's order (the longest waiter, unless a discipline or priority
//!   says otherwise).
//! * **Cancel safety**: a waiter dropped while queued leaves the queue; a permit granted to it
//!   at that instant is passed on. Nothing leaks.
//! * **Fairness**: FIFO among waiters (unless the discipline says LIFO). An arrival that finds
//!   nobody queued and a free slot takes it directly.
//! * **Boundedness**: the queue holds at most `max_queue` waiters.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::bulkhead::Bulkhead;
//! use tidewall::Rejected;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let bulkhead = Bulkhead::builder(2).max_queue(1).max_wait(Duration::from_millis(100)).build()?;
//! let a = bulkhead.acquire().await.unwrap();
//! let _b = bulkhead.acquire().await.unwrap();
//! assert_eq!(bulkhead.try_acquire().unwrap_err(), Rejected::BulkheadFull);
//! // The queued waiter gets `a`'s slot when `a` is dropped.
//! let waiter = tokio::spawn({
//!     let bulkhead = bulkhead.clone();
//!     async move { bulkhead.acquire().await.map(drop) }
//! });
//! tokio::task::yield_now().await;
//! assert_eq!(bulkhead.queued(), 1);
//! drop(a);
//! assert_eq!(waiter.await.unwrap(), Ok(()));
//! # Ok(()) }
//! ```

mod acquire;
mod keyed;
mod queue;
mod shared;

use std::future::Future;
use std::time::Duration;

pub use acquire::{Acquire, AcquireOwned};
pub use keyed::{KeyedBulkhead, KeyedBulkheadBuilder};

use self::queue::{Left, Place};
use self::shared::{Shared, Shares};
use crate::admission::{Priority, QueueDiscipline, Wait};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, lock};
use crate::{ConfigError, Deadline, Error, Name, Rejected};

/// The refusals a bulkhead gives, as its telemetry registers them.
const REFUSALS: [Rejected; 2] = [Rejected::BulkheadFull, Rejected::DeadlineExceeded];

/// A concurrency limit with a bounded wait queue. Cheap to clone: clones share the limit.
pub struct Bulkhead<R = DefaultRuntime> {
    shared: Arc<Shared<R>>,
}

impl<R: Clock> Clone for Bulkhead<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: Clock> std::fmt::Debug for Bulkhead<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.shared.name)
            .field("capacity", &self.shared.capacity())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Bulkhead`]: by default callers wait in a queue of up to
/// `max_concurrent` waiters for at most 1 s.
#[must_use]
#[derive(Debug, Clone)]
pub struct BulkheadBuilder<R = DefaultRuntime> {
    max_concurrent: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
    rt: R,
    name: Name,
    events: Option<crate::telemetry::Listener>,
    discipline: QueueDiscipline,
    /// Set only by an adaptive limiter: a bulkhead without shares never pays to read them.
    shares: Option<Shares>,
    /// The `policy` its refusals and waits report as: an adaptive limiter's are its own.
    policy: &'static str,
}

impl Bulkhead {
    /// Starts a bulkhead admitting `max_concurrent` calls at once, on the default runtime.
    pub fn builder(max_concurrent: usize) -> BulkheadBuilder {
        BulkheadBuilder {
            max_concurrent,
            max_queue: max_concurrent,
            max_wait: Some(Duration::from_secs(1)),
            rt: DefaultRuntime::default(),
            name: Name::from_static("bulkhead"),
            events: None,
            discipline: QueueDiscipline::Fifo,
            shares: None,
            policy: "bulkhead",
        }
    }
}

impl<R> BulkheadBuilder<R> {
    /// Waiters allowed in the queue; `0` rejects at once when full.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// How long a waiter may stay queued (`None`: until a slot frees or its deadline).
    pub fn max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.max_wait = wait.into();
        self
    }

    /// Never queue: reject at once when full (the same as `max_queue(0)`).
    pub fn reject_when_full(self) -> Self {
        self.max_queue(0)
    }

    /// The order the queue admits waiters in, and how long they may wait once it stands
    /// (default [`QueueDiscipline::Fifo`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::admission::QueueDiscipline;
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// // Under a standing queue, the newest callers first: they still have time to use.
    /// let bulkhead = Bulkhead::builder(8).discipline(QueueDiscipline::Lifo).build()?;
    /// // Or FIFO, but once the queue has stood for 100 ms, a caller waits 5 ms at most.
    /// let codel = QueueDiscipline::Codel {
    ///     target: Duration::from_millis(5),
    ///     interval: Duration::from_millis(100),
    /// };
    /// let bulkhead = Bulkhead::builder(8).discipline(codel).build()?;
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn discipline(mut self, discipline: QueueDiscipline) -> Self {
        self.discipline = discipline;
        self
    }

    /// Per priority, the share of the capacity its calls may fill: an adaptive limiter's
    /// shedding (validated there).
    pub(crate) fn with_shares(mut self, shares: Shares) -> Self {
        self.shares = Some(shares);
        self
    }

    /// Reports its refusals and waits as `policy` (an adaptive limiter's slots).
    pub(crate) fn reported_as(mut self, policy: &'static str) -> Self {
        self.policy = policy;
        self
    }

    /// Calls `listener` with everything the bulkhead does: each refusal with its reason, and each wait that ended admitted with its length. On the caller's
    /// thread, in the call (keep it short). See [`Event`](crate::telemetry::Event).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tidewall::bulkhead::Bulkhead;
    /// use tidewall::telemetry::EventKind;
    ///
    /// let refusals = Arc::new(Mutex::new(Vec::new()));
    /// let seen = Arc::clone(&refusals);
    /// let bulkhead = Bulkhead::builder(1)
    ///     .reject_when_full()
    ///     .on_event(move |event| {
    ///         if let EventKind::Rejected(why) = event.kind {
    ///             seen.lock().unwrap().push(why.kind());
    ///         }
    ///     })
    ///     .build()?;
    /// let _held = bulkhead.try_acquire().unwrap();
    /// assert!(bulkhead.try_acquire().is_err());
    /// assert_eq!(*refusals.lock().unwrap(), ["bulkhead_full"]);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// Tells `listener` as [`on_event`](Self::on_event) does (a front that built it already).
    pub(crate) fn with_listener(mut self, listener: crate::telemetry::Listener) -> Self {
        self.events = Some(listener);
        self
    }

    /// A name for events and metric labels.
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs on another runtime (its clock times the waits).
    pub fn runtime<R2>(self, rt: R2) -> BulkheadBuilder<R2> {
        BulkheadBuilder {
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            rt,
            name: self.name,
            events: self.events,
            discipline: self.discipline,
            shares: self.shares,
            policy: self.policy,
        }
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// * [`ConfigError::Zero`] for `max_concurrent == 0`, and for a zero `max_wait` with a
    ///   non-empty queue (use `max_queue(0)` to reject at once);
    /// * [`ConfigError::OutOfRange`] for a `max_concurrent` above `isize::MAX`;
    /// * [`ConfigError::DurationOverflow`] for a `max_wait` beyond `u64` nanoseconds;
    /// * for a [CoDel discipline](QueueDiscipline::Codel): [`ConfigError::Zero`] for a zero
    ///   `target` or `interval`, [`ConfigError::DurationOverflow`] for one beyond `u64`
    ///   nanoseconds.
    pub fn build(self) -> Result<Bulkhead<R>, ConfigError>
    where
        R: Clock,
    {
        self.validate()?;
        Ok(self.make())
    }

    /// Builds a bulkhead per key instead, each with these settings: see
    /// [`KeyedBulkhead`].
    pub fn keyed(self) -> KeyedBulkheadBuilder<R> {
        KeyedBulkheadBuilder::new(self)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::Zero {
                field: "max_concurrent",
            });
        }
        if isize::try_from(self.max_concurrent).is_err() {
            #[allow(clippy::cast_precision_loss)] // only to print it
            let value = self.max_concurrent as f64;
            return Err(ConfigError::OutOfRange {
                field: "max_concurrent",
                value,
                allowed: "at most isize::MAX",
            });
        }
        if let Some(wait) = self.max_wait {
            if wait.is_zero() && self.max_queue > 0 {
                return Err(ConfigError::Zero { field: "max_wait" });
            }
            if u64::try_from(wait.as_nanos()).is_err() {
                return Err(ConfigError::DurationOverflow { field: "max_wait" });
            }
        }
        self.discipline.validate()
    }

    /// A bulkhead with these (validated) settings.
    fn make(&self) -> Bulkhead<R>
    where
        R: Clock,
    {
        self.make_counted(self.telemetry())
    }

    /// What a bulkhead of these settings counts its refusals and waits in: its own, or one
    /// for every key of a keyed table.
    pub(crate) fn telemetry(&self) -> std::sync::Arc<crate::telemetry::PolicyTelemetry> {
        crate::telemetry::PolicyTelemetry::new(self.policy, &self.name, &REFUSALS)
            .with_waits()
            .with_listener(self.events.clone())
            .shared()
    }

    /// Validates and builds a bulkhead counting in `telemetry` (see
    /// [`telemetry`](Self::telemetry)).
    pub(crate) fn build_counted(
        self,
        telemetry: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
    ) -> Result<Bulkhead<R>, ConfigError>
    where
        R: Clock,
    {
        self.validate()?;
        Ok(self.make_counted(telemetry))
    }

    /// A bulkhead with these (validated) settings, counting its refusals in `telemetry`
    /// (shared by every key of a keyed bulkhead).
    fn make_counted(
        &self,
        telemetry: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
    ) -> Bulkhead<R>
    where
        R: Clock,
    {
        let shared = Shared::new(
            self.max_concurrent,
            self.max_queue,
            self.max_wait,
            self.rt.clone(),
            self.name.clone(),
            telemetry,
            self.shares,
        );
        lock(&shared.queue).set_discipline(self.discipline, || shared.rt.now());
        Bulkhead {
            shared: Arc::new(shared),
        }
    }
}

impl<R: Clock> Bulkhead<R> {
    /// Takes a free slot now, or rejects without queueing.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when every slot is taken (or waiters are queued ahead).
    pub fn try_acquire(&self) -> Result<Permit<'_, R>, Rejected> {
        if self.shared.try_acquire() {
            Ok(Permit { bulkhead: self })
        } else {
            Err(self.shared.reject(Rejected::BulkheadFull))
        }
    }

    /// A free slot now, without counting a refusal as a rejection (the admission fast path
    /// tries this first and then waits, which counts).
    #[inline]
    pub(crate) fn try_acquire_owned_quiet(&self) -> Option<OwnedPermit<R>> {
        // The permit must be built only once the slot is taken: a permit built eagerly and
        // dropped on refusal would release a slot nobody holds.
        if self.shared.try_acquire() {
            Some(OwnedPermit {
                bulkhead: self.clone(),
            })
        } else {
            None
        }
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when every slot is taken (or waiters are queued ahead).
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit<R>, Rejected> {
        self.try_acquire_owned_quiet()
            .ok_or_else(|| self.refuse_full())
    }

    /// Reports a refusal of a full bulkhead: the refusal to return.
    pub(crate) fn refuse_full(&self) -> Rejected {
        self.shared.reject(Rejected::BulkheadFull)
    }

    /// Waits for a slot, in the queue's order, up to the configured `max_wait`.
    ///
    /// **Cancel safety:** see [`Acquire`]; dropping the future leaks nothing.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when every permit is held and the queue is full (at once,
    /// also with `max_queue(0)`), when the wait reaches `max_wait`, when a more important
    /// caller sheds it from a full queue, or when a CoDel queue cuts it (see [`QueueDiscipline`]).
    pub fn acquire(&self) -> Acquire<'_, R> {
        Acquire::new(self, Deadline::none())
    }

    /// Like [`acquire`](Self::acquire), but never waits past `deadline`.
    ///
    /// **Cancel safety:** as [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), and [`Rejected::DeadlineExceeded`] when the deadline
    /// ends the wait, or has passed already when the caller would queue. A bulkhead with
    /// `max_queue(0)` refuses a caller it cannot admit `BulkheadFull` at once, even past its
    /// deadline.
    pub fn acquire_before(&self, deadline: Deadline) -> Acquire<'_, R> {
        Acquire::new(self, deadline)
    }

    /// Like [`acquire_before`](Self::acquire_before), with a permit that owns a handle to the
    /// bulkhead (for `'static` futures such as tower's).
    ///
    /// **Cancel safety:** as [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As [`acquire_before`](Self::acquire_before).
    pub fn acquire_owned(&self, deadline: Deadline) -> AcquireOwned<R> {
        self.acquire_owned_within(Wait::Until(deadline))
    }

    /// The owned waiting future behind [`acquire_owned`](Self::acquire_owned) and the
    /// bulkhead's [`Admission`](crate::admission::Admission).
    /// The runtime whose clock bounds its waits.
    pub(crate) fn runtime(&self) -> &R {
        &self.shared.rt
    }

    /// Sets the capacity alone, keeping the queue and the wait: an adaptive limiter's new
    /// limit. As [`reconfigure`](Self::reconfigure): held permits stay held.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        let shared = &self.shared;
        shared.resize(capacity, shared.max_queue(), shared.max_wait());
    }

    /// Applies an adaptive limiter's new (validated) limits and shares together: see
    /// [`reconfigure`](Self::reconfigure), with the shares.
    pub(crate) fn reconfigure_shared<R2>(&self, settings: BulkheadBuilder<R2>, shares: Shares) {
        let rt = &self.shared.rt;
        lock(&self.shared.queue).set_discipline(settings.discipline, || rt.now());
        self.shared.resize_reshared(
            settings.max_concurrent,
            settings.max_queue,
            settings.max_wait,
            shares,
        );
    }

    pub(crate) fn acquire_owned_within(&self, wait: Wait) -> AcquireOwned<R> {
        AcquireOwned::new(self.clone(), wait, Priority::Default)
    }

    /// As [`acquire_owned_within`](Self::acquire_owned_within), for a call of `priority`.
    pub(crate) fn acquire_owned_as(&self, wait: Wait, priority: Priority) -> AcquireOwned<R> {
        AcquireOwned::new(self.clone(), wait, priority)
    }

    /// Counts a refusal a front decided on (a full limit for a call of some priority).
    pub(crate) fn refused(&self) -> Rejected {
        self.shared.reject(Rejected::BulkheadFull)
    }

    /// Takes a slot for a call of `priority` without a permit, for a front whose own guard
    /// gives it back with [`release_slot`](Self::release_slot) (an adaptive limiter's, which
    /// holds the bulkhead already); returns the slots held once it was taken, its own
    /// included.
    #[inline]
    pub(crate) fn try_take_slot_as(&self, priority: Priority) -> Option<usize> {
        self.shared.try_admit_as(priority)
    }

    /// Gives back a slot taken by [`try_take_slot_as`](Self::try_take_slot_as) or
    /// [`AcquireOwned::poll_slot`].
    #[inline]
    pub(crate) fn release_slot(&self) {
        self.shared.release();
    }

    /// Runs `op` inside the bulkhead: waits for a slot (up to `max_wait`), runs, frees it.
    ///
    /// **Cancel safety:** dropping the future frees the slot or leaves the queue.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when no slot was free in time, [`Error::Inner`] with `op`'s error.
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self.acquire().await?;
        op().await.map_err(Error::Inner)
    }

    /// Calls running now: the permits held, which after a shrink exceed the
    /// [`capacity`](Self::capacity) until enough of them end (zero if more slots were
    /// released than taken, which [`available`](Self::available) shows).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Free slots now, as counted: never more than [`capacity`](Self::capacity) while every
    /// permit is released exactly once, and zero while more are held than a shrunk capacity
    /// allows. Above, it is not clamped: a slot released twice shows as
    /// `available() > capacity()` (and debug builds panic at the release itself). Once nothing is running or queued, it equals the
    /// capacity: tests check that capacity is conserved this way.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// let bulkhead = Bulkhead::builder(2).build()?;
    /// let permit = bulkhead.try_acquire().unwrap();
    /// assert_eq!(bulkhead.available(), 1);
    /// drop(permit);
    /// assert_eq!(bulkhead.available(), bulkhead.capacity());
    /// # Ok(())
    /// # }
    /// ```
    pub fn available(&self) -> usize {
        self.shared.available()
    }

    /// Callers waiting now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// Calls rejected so far (full, waited too long, or past their deadline).
    pub fn rejected(&self) -> u64 {
        self.shared.rejected()
    }

    /// The concurrency limit.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Applies `settings` to this bulkhead in place (its name and runtime are not changed),
    /// validated as [`build`](BulkheadBuilder::build) validates them; on an error nothing
    /// changes.
    ///
    /// No permit is revoked: growing hands the new permits to queued callers first;
    /// shrinking below what is held admits nobody new until enough permits come back, so
    /// [`in_flight`](Self::in_flight) may exceed the capacity for a while. Callers already
    /// queued stay queued when the queue shrinks; until it is back within its bound, a caller
    /// that would queue is refused (and sheds nobody: shedding one waiter would not make room).
    /// A queued caller keeps the wait it started with (its `max_wait`, or a CoDel cut); a new
    /// discipline's order (FIFO or LIFO) picks who gets the next free permit.
    ///
    /// ```
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// let bulkhead = Bulkhead::builder(2).max_queue(0).build()?;
    /// let a = bulkhead.try_acquire().unwrap();
    /// let b = bulkhead.try_acquire().unwrap();
    /// bulkhead.reconfigure(Bulkhead::builder(1).max_queue(0))?;
    /// assert_eq!((bulkhead.capacity(), bulkhead.in_flight()), (1, 2), "nothing revoked");
    /// drop(a);
    /// assert!(bulkhead.try_acquire().is_err(), "one is still out, and 1 is the limit");
    /// drop(b);
    /// assert!(bulkhead.try_acquire().is_ok());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`BulkheadBuilder::build`].
    pub fn reconfigure<R2>(&self, settings: BulkheadBuilder<R2>) -> Result<(), ConfigError> {
        settings.validate()?;
        self.retune(&settings);
        Ok(())
    }

    /// Applies validated `settings`: the queue's discipline, then the sizes.
    pub(crate) fn retune<R2>(&self, settings: &BulkheadBuilder<R2>) {
        let rt = &self.shared.rt;
        lock(&self.shared.queue).set_discipline(settings.discipline, || rt.now());
        self.shared.resize(
            settings.max_concurrent,
            settings.max_queue,
            settings.max_wait,
        );
    }

    /// The name its events and metrics carry (default `bulkhead`).
    ///
    /// ```
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// let bulkhead = Bulkhead::builder(4).name(String::from("orders")).build()?;
    /// assert_eq!(bulkhead.name(), "orders");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Removes a waiter from the queue; if it had already been granted a permit, how many
    /// were held with it.
    fn leave_queue(&self, place: Place) -> Option<usize> {
        match lock(&self.shared.queue).cancel(place) {
            Left::Waiting => {
                self.shared.note_unqueued();
                None
            }
            Left::Granted(held) => Some(held),
            Left::Shed => None,
        }
    }
}

/// A slot in a [`Bulkhead`], freed on drop.
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct Permit<'a, R: Clock> {
    bulkhead: &'a Bulkhead<R>,
}

impl<R: Clock> Drop for Permit<'_, R> {
    fn drop(&mut self) {
        self.bulkhead.shared.release();
    }
}

/// A slot in a [`Bulkhead`] that owns a handle to it, freed on drop.
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct OwnedPermit<R: Clock> {
    bulkhead: Bulkhead<R>,
}

impl<R: Clock> Drop for OwnedPermit<R> {
    #[inline]
    fn drop(&mut self) {
        self.bulkhead.shared.release();
    }
}

impl<R: Clock> std::fmt::Debug for Permit<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("bulkhead", &self.bulkhead.shared.name)
            .finish()
    }
}

impl<R: Clock> std::fmt::Debug for OwnedPermit<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("bulkhead", &self.bulkhead.shared.name)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The pipeline's fast path: refusing on a full bulkhead must not release anything.
    #[test]
    fn a_quiet_refusal_releases_no_slot() {
        let bulkhead = Bulkhead::builder(1).build().unwrap();
        let held = bulkhead.try_acquire_owned_quiet().expect("a free slot");
        for _ in 0..3 {
            assert!(bulkhead.try_acquire_owned_quiet().is_none());
        }
        assert_eq!(bulkhead.available(), 0);
        assert_eq!(bulkhead.rejected(), 0, "quiet refusals are not counted");
        drop(held);
        assert_eq!(bulkhead.available(), 1);
    }

    /// A slot released twice is a bug that must not go unnoticed: debug builds panic.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "released that was never taken")]
    fn an_over_release_panics_in_debug_builds() {
        let bulkhead = Bulkhead::builder(1).build().unwrap();
        bulkhead.shared.release();
    }
}
