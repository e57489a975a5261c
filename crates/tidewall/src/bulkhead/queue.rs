//! The wait queue: a slab of waiter slots plus, per priority, the order they arrived in.
//!
//! A waiter is identified by `(slot, ticket)`; tickets are never reused, so an entry left in
//! an order by a cancelled waiter is recognised as stale and skipped. Stale entries are swept
//! once they outnumber live ones, keeping memory bounded by the queue limit.
//!
//! A free permit goes to the most important priority with a live waiter: its longest waiting
//! one, or its newest under [`QueueDiscipline::Lifo`]. A full queue makes room for a caller by
//! shedding the newest waiter of a less important priority.
//!
//! A bulkhead per key holds one of these per key, most of them idle: what only other
//! priorities or disciplines need lives in [`More`], allocated on first use, and free slots
//! are a list threaded through the slab.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::admission::{Priority, QueueDiscipline};

/// The end of the free-slot list.
const NONE: usize = usize::MAX;

#[derive(Debug)]
enum Slot {
    /// Free; the next free slot.
    Vacant { next: usize },
    Waiting {
        ticket: u64,
        waker: Option<Waker>,
        priority: Priority,
    },
    /// Granted a permit, when `held` were held with it.
    Granted { ticket: u64, held: usize },
    /// Pushed out of a full queue by a more important caller.
    Shed { ticket: u64 },
}

type Order = VecDeque<(usize, u64)>;

#[derive(Debug)]
pub(super) struct WaitQueue {
    slots: Vec<Slot>,
    /// The first free slot ([`NONE`]: none).
    free: usize,
    /// The default priority's arrival order.
    order: Order,
    next_ticket: u64,
    waiting: usize,
    more: Option<Box<More>>,
}

/// What only the critical and sheddable priorities, or a discipline other than FIFO, need.
#[derive(Debug, Default)]
struct More {
    /// The critical and the sheddable arrival orders.
    orders: [Order; 2],
    /// Live critical and sheddable waiters (the default's are the rest).
    live: [usize; 2],
    discipline: QueueDiscipline,
    /// Since when someone has been waiting without a break: CoDel's standing queue.
    busy_since: Option<Instant>,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: NONE,
            order: Order::new(),
            next_ticket: 0,
            waiting: 0,
            more: None,
        }
    }
}

/// A queued waiter's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    slot: usize,
    ticket: u64,
}

/// What a waiter finds when it looks at its place.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Status {
    Waiting,
    /// Granted, when this many permits were held with its own.
    Granted(usize),
    Shed,
}

/// What a waiter that gave up had become.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Left {
    /// Still waiting: it is gone from the queue now.
    Waiting,
    /// Granted a permit (when this many were held with it) it must take or pass on.
    Granted(usize),
    /// Shed before it gave up: nothing to do.
    Shed,
}

/// A waiter taken off an order: its place, what the picker said, its waker.
struct Taken<T> {
    slot: usize,
    ticket: u64,
    picked: T,
    waker: Option<Waker>,
}

/// What looking at an order found.
enum Next<T> {
    Taken(Taken<T>),
    /// A live waiter the picker did not take.
    Refused,
    /// No live waiter.
    Empty,
}

/// The place of a priority other than the default in [`More`]'s arrays.
fn other(priority: Priority) -> Option<usize> {
    match priority {
        Priority::Critical => Some(0),
        Priority::Default => None,
        Priority::Sheddable => Some(1),
    }
}

impl WaitQueue {
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    /// Live waiters of `priority`.
    fn live(&self, priority: Priority) -> usize {
        let [critical, sheddable] = self.more.as_ref().map_or([0, 0], |more| more.live);
        match priority {
            Priority::Critical => critical,
            Priority::Default => self.waiting - critical - sheddable,
            Priority::Sheddable => sheddable,
        }
    }

    /// Counts a waiter of `priority` more (`true`) or fewer.
    fn count(&mut self, priority: Priority, more_of_them: bool) {
        if more_of_them {
            self.waiting += 1;
        } else {
            self.waiting -= 1;
        }
        if let Some(i) = other(priority) {
            let live = &mut self.more().live[i];
            *live = if more_of_them { *live + 1 } else { *live - 1 };
        }
    }

    /// Whether anyone as important as `priority` or more is waiting: a caller of `priority`
    /// must not take a free permit past them.
    pub(super) fn waiting_at_or_above(&self, priority: Priority) -> bool {
        Priority::ALL[..=priority.index()]
            .iter()
            .any(|&p| self.live(p) > 0)
    }

    /// Switches to `discipline`. A queue that stands keeps the time it began to stand if that
    /// is known (a queue that had CoDel, LIFO or priorities tracks it), else counts as
    /// standing from `now()` (a plain FIFO queue does not track it); the clock is read only
    /// then, so a bulkhead made per key reads none.
    pub(super) fn set_discipline(
        &mut self,
        discipline: QueueDiscipline,
        now: impl FnOnce() -> Instant,
    ) {
        if discipline != QueueDiscipline::Fifo || self.more.is_some() {
            let waiting = self.waiting > 0;
            let more = self.more();
            more.discipline = discipline;
            if waiting && more.busy_since.is_none() {
                more.busy_since = Some(now());
            }
        }
    }

    fn discipline(&self) -> QueueDiscipline {
        self.more
            .as_ref()
            .map_or(QueueDiscipline::Fifo, |more| more.discipline)
    }

    /// The longest a caller joining now may wait, if the discipline bounds it: under CoDel,
    /// its `target` once the queue has stood for `interval`.
    pub(super) fn bound(&self, now: Instant) -> Option<Duration> {
        let more = self.more.as_ref()?;
        match more.discipline {
            QueueDiscipline::Codel { target, interval } => more
                .busy_since
                .filter(|&since| now.saturating_duration_since(since) >= interval)
                .map(|_| target),
            QueueDiscipline::Fifo | QueueDiscipline::Lifo => None,
        }
    }

    /// The arrival order of `priority`.
    fn order(&mut self, priority: Priority) -> &mut Order {
        match other(priority) {
            Some(i) => &mut self.more().orders[i],
            None => &mut self.order,
        }
    }

    pub(super) fn push(&mut self, waker: Waker, priority: Priority, now: Instant) -> Place {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let entry = Slot::Waiting {
            ticket,
            waker: Some(waker),
            priority,
        };
        let slot = if self.free == NONE {
            self.slots.push(entry);
            self.slots.len() - 1
        } else {
            let slot = self.free;
            self.free = match self.slots[slot] {
                Slot::Vacant { next } => next,
                // Only vacant slots are on the list.
                _ => NONE,
            };
            self.slots[slot] = entry;
            slot
        };
        // May make `more`: the first critical or sheddable waiter ever.
        self.order(priority).push_back((slot, ticket));
        self.count(priority, true);
        if let Some(more) = &mut self.more
            && more.busy_since.is_none()
        {
            // The queue stands since now: exactly, if it was empty; at the latest, if it
            // stood untracked (a plain FIFO queue until this first priority waiter).
            more.busy_since = Some(now);
        }
        Place { slot, ticket }
    }

    /// Takes the live waiter at the front (or, `newest`, the back) of `priority`'s order,
    /// dropping stale entries on the way, if `pick` says so for that priority.
    fn take<T>(
        &mut self,
        priority: Priority,
        newest: bool,
        pick: &mut impl FnMut(Priority) -> Option<T>,
    ) -> Next<T> {
        loop {
            let order = match (other(priority), &mut self.more) {
                (Some(i), Some(more)) => &mut more.orders[i],
                (Some(_), None) => return Next::Empty,
                (None, _) => &mut self.order,
            };
            let Some(&(slot, ticket)) = (if newest { order.back() } else { order.front() }) else {
                return Next::Empty;
            };
            let live = matches!(&self.slots[slot], Slot::Waiting { ticket: t, .. } if *t == ticket);
            let picked = if live {
                match pick(priority) {
                    Some(picked) => Some(picked),
                    None => return Next::Refused,
                }
            } else {
                None
            };
            if newest {
                order.pop_back();
            } else {
                order.pop_front();
            }
            if let Some(picked) = picked
                && let Slot::Waiting { waker, .. } = &mut self.slots[slot]
            {
                let waker = waker.take();
                return Next::Taken(Taken {
                    slot,
                    ticket,
                    picked,
                    waker,
                });
            }
        }
    }

    /// Sheds the newest waiter less important than `priority` to make room for it; returns
    /// its waker (to be woken outside the lock), or `None` if nobody is less important. The
    /// caller takes the place at once, so the queue does not stop standing.
    pub(super) fn shed_for(&mut self, priority: Priority) -> Option<Option<Waker>> {
        for &victim in Priority::ALL[priority.index() + 1..].iter().rev() {
            if let Next::Taken(Taken {
                slot,
                ticket,
                waker,
                ..
            }) = self.take(victim, true, &mut |_| Some(()))
            {
                self.slots[slot] = Slot::Shed { ticket };
                // Not `left`: the shedder takes the place, the standing time goes on.
                self.count(victim, false);
                return Some(waker);
            }
        }
        None
    }

    /// Grants a permit to the next live waiter (the most important priority first) if `take`
    /// takes one for its priority (saying how many are held with it); returns the waiter's
    /// waker, or `None` if nobody is waiting or `take` refused.
    pub(super) fn grant_next(
        &mut self,
        mut take: impl FnMut(Priority) -> Option<usize>,
    ) -> Option<Option<Waker>> {
        let newest = self.discipline() == QueueDiscipline::Lifo;
        for priority in Priority::ALL {
            match self.take(priority, newest, &mut take) {
                Next::Taken(Taken {
                    slot,
                    ticket,
                    picked: held,
                    waker,
                }) => {
                    self.slots[slot] = Slot::Granted { ticket, held };
                    self.left(priority);
                    return Some(waker);
                }
                Next::Refused => return None,
                Next::Empty => {}
            }
        }
        None
    }

    /// Looks at a place, refreshing the waker if still waiting; a granted or shed place is
    /// freed.
    pub(super) fn poll(&mut self, place: Place, waker: &Waker) -> Status {
        match &mut self.slots[place.slot] {
            Slot::Granted { ticket, held } if *ticket == place.ticket => {
                let held = *held;
                self.release_slot(place.slot);
                Status::Granted(held)
            }
            Slot::Shed { ticket } if *ticket == place.ticket => {
                self.release_slot(place.slot);
                Status::Shed
            }
            Slot::Waiting {
                ticket,
                waker: stored,
                ..
            } if *ticket == place.ticket => {
                if !stored.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *stored = Some(waker.clone());
                }
                Status::Waiting
            }
            // Places are only removed by their owner, so this is unreachable in practice;
            // treat it as still waiting rather than panic.
            _ => Status::Waiting,
        }
    }

    /// Removes a waiter that gives up, and says what it had become.
    pub(super) fn cancel(&mut self, place: Place) -> Left {
        let left = match &self.slots[place.slot] {
            Slot::Granted { ticket, held } if *ticket == place.ticket => Left::Granted(*held),
            Slot::Shed { ticket } if *ticket == place.ticket => Left::Shed,
            Slot::Waiting {
                ticket, priority, ..
            } if *ticket == place.ticket => {
                let priority = *priority;
                self.left(priority);
                Left::Waiting
            }
            _ => return Left::Shed,
        };
        self.release_slot(place.slot);
        let entries = self.order.len()
            + self
                .more
                .as_ref()
                .map_or(0, |more| more.orders.iter().map(VecDeque::len).sum());
        if entries > 2 * self.waiting + 16 {
            let slots = &self.slots;
            let live = |&(slot, ticket): &(usize, u64)| matches!(slots[slot], Slot::Waiting { ticket: t, .. } if t == ticket);
            self.order.retain(live);
            if let Some(more) = &mut self.more {
                for order in &mut more.orders {
                    order.retain(live);
                }
            }
        }
        left
    }

    /// One waiter of `priority` fewer; the queue's standing time ends with the last.
    fn left(&mut self, priority: Priority) {
        self.count(priority, false);
        if self.waiting == 0
            && let Some(more) = &mut self.more
        {
            more.busy_since = None;
        }
    }

    fn release_slot(&mut self, slot: usize) {
        self.slots[slot] = Slot::Vacant { next: self.free };
        self.free = slot;
    }
}
