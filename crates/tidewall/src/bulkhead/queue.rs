//! The wait queue: a slab of waiter slots plus, per priority, the order they arrived in.
//!
//! A waiter is identified by `(slot, ticket)`; tickets are never reused, so an entry left in
//! an order by a cancelled waiter is recognised as stale and skipped. Stale entries are swept
//! once they outnumber live ones, keeping memory bounded by the queue limit.
//!
//! A free permit goes to the most important priority with a live waiter: its longest waiting
//! one, or its newest under [`QueueDiscipline::Lifo`]. A full queue makes room for a caller by
//! shedding the newest waiter of a less important priority.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::admission::{Priority, QueueDiscipline};

#[derive(Debug)]
enum Slot {
    Vacant,
    Waiting {
        ticket: u64,
        waker: Option<Waker>,
        priority: Priority,
    },
    /// Granted a permit, when `held` were held with it.
    Granted {
        ticket: u64,
        held: usize,
    },
    /// Pushed out of a full queue by a more important caller.
    Shed {
        ticket: u64,
    },
}

#[derive(Debug, Default)]
pub(super) struct WaitQueue {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Arrival order, one per priority, the most important first.
    order: [VecDeque<(usize, u64)>; Priority::ALL.len()],
    next_ticket: u64,
    waiting: usize,
    /// Live waiters per priority.
    live: [usize; Priority::ALL.len()],
    /// Since when someone has been waiting without a break: CoDel's standing queue.
    busy_since: Option<Instant>,
    discipline: QueueDiscipline,
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

impl WaitQueue {
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Whether anyone as important as `priority` or more is waiting: a caller of `priority`
    /// must not take a free permit past them.
    pub(super) fn waiting_at_or_above(&self, priority: Priority) -> bool {
        self.live[..=priority.index()].iter().any(|&n| n > 0)
    }

    pub(super) fn set_discipline(&mut self, discipline: QueueDiscipline) {
        self.discipline = discipline;
    }

    /// The longest a caller joining now may wait, if the discipline bounds it: under CoDel,
    /// its `target` once the queue has stood for `interval`.
    pub(super) fn bound(&self, now: Instant) -> Option<Duration> {
        match self.discipline {
            QueueDiscipline::Codel { target, interval } => self
                .busy_since
                .filter(|&since| now.saturating_duration_since(since) >= interval)
                .map(|_| target),
            QueueDiscipline::Fifo | QueueDiscipline::Lifo => None,
        }
    }

    pub(super) fn push(&mut self, waker: Waker, priority: Priority, now: Instant) -> Place {
        if self.waiting == 0 {
            self.busy_since = Some(now);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let entry = Slot::Waiting {
            ticket,
            waker: Some(waker),
            priority,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        self.order[priority.index()].push_back((slot, ticket));
        self.waiting += 1;
        self.live[priority.index()] += 1;
        Place { slot, ticket }
    }

    /// Sheds the newest waiter less important than `priority` to make room for it; returns
    /// its waker (to be woken outside the lock), or `None` if nobody is less important. The
    /// caller takes the place at once, so the queue does not stop standing.
    pub(super) fn shed_for(&mut self, priority: Priority) -> Option<Option<Waker>> {
        let Self {
            slots,
            order,
            waiting,
            live,
            ..
        } = self;
        let less_important = order.iter_mut().zip(live).skip(priority.index() + 1);
        for (tier, live) in less_important.rev() {
            while let Some((slot, ticket)) = tier.pop_back() {
                if let Slot::Waiting {
                    ticket: t, waker, ..
                } = &mut slots[slot]
                    && *t == ticket
                {
                    let waker = waker.take();
                    slots[slot] = Slot::Shed { ticket };
                    *waiting -= 1;
                    *live -= 1;
                    return Some(waker);
                }
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
        let newest_first = self.discipline == QueueDiscipline::Lifo;
        let Self {
            slots,
            order,
            waiting,
            live,
            busy_since,
            ..
        } = self;
        for ((tier, live), priority) in order.iter_mut().zip(live).zip(Priority::ALL) {
            loop {
                let next = if newest_first {
                    tier.back()
                } else {
                    tier.front()
                };
                let Some(&(slot, ticket)) = next else {
                    break;
                };
                let waiter = match &mut slots[slot] {
                    Slot::Waiting {
                        ticket: t, waker, ..
                    } if *t == ticket => Some(waker),
                    _ => None,
                };
                // A live waiter is granted only if a permit is taken for it; a stale entry
                // (its waiter gave up) is dropped.
                let granted = match waiter {
                    Some(waker) => Some((take(priority)?, waker.take())),
                    None => None,
                };
                if newest_first {
                    tier.pop_back();
                } else {
                    tier.pop_front();
                }
                if let Some((held, waker)) = granted {
                    slots[slot] = Slot::Granted { ticket, held };
                    *live -= 1;
                    left(waiting, busy_since);
                    return Some(waker);
                }
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
                self.live[priority.index()] -= 1;
                left(&mut self.waiting, &mut self.busy_since);
                Left::Waiting
            }
            _ => return Left::Shed,
        };
        self.release_slot(place.slot);
        let entries: usize = self.order.iter().map(VecDeque::len).sum();
        if entries > 2 * self.waiting + 16 {
            let slots = &self.slots;
            for tier in &mut self.order {
                tier.retain(|&(slot, ticket)| matches!(slots[slot], Slot::Waiting { ticket: t, .. } if t == ticket));
            }
        }
        left
    }

    fn release_slot(&mut self, slot: usize) {
        self.slots[slot] = Slot::Vacant;
        self.free.push(slot);
    }
}

/// One waiter fewer; the queue's standing time ends with the last.
fn left(waiting: &mut usize, busy_since: &mut Option<Instant>) {
    *waiting -= 1;
    if *waiting == 0 {
        *busy_since = None;
    }
}
