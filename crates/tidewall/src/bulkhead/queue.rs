//! The FIFO wait queue: a slab of waiter slots plus the order they arrived in.
//!
//! A waiter is identified by `(slot, ticket)`; tickets are never reused, so an entry left in
//! `order` by a cancelled waiter is recognised as stale and skipped. Stale entries are swept
//! once they outnumber live ones, keeping memory bounded by the queue limit.

use std::collections::VecDeque;
use std::task::Waker;

#[derive(Debug)]
enum Slot {
    Vacant,
    Waiting { ticket: u64, waker: Option<Waker> },
    Granted { ticket: u64 },
}

#[derive(Debug, Default)]
pub(super) struct WaitQueue {
    slots: Vec<Slot>,
    free: Vec<usize>,
    order: VecDeque<(usize, u64)>,
    next_ticket: u64,
    waiting: usize,
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
    Granted,
}

impl WaitQueue {
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    pub(super) fn push(&mut self, waker: Waker) -> Place {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let entry = Slot::Waiting {
            ticket,
            waker: Some(waker),
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
        self.order.push_back((slot, ticket));
        self.waiting += 1;
        Place { slot, ticket }
    }

    /// Grants the permit to the longest-waiting live waiter; returns its waker, or `None` if
    /// nobody is waiting.
    pub(super) fn grant_first(&mut self) -> Option<Option<Waker>> {
        while let Some((slot, ticket)) = self.order.pop_front() {
            if let Slot::Waiting { ticket: t, waker } = &mut self.slots[slot]
                && *t == ticket
            {
                let waker = waker.take();
                self.slots[slot] = Slot::Granted { ticket };
                self.waiting -= 1;
                return Some(waker);
            }
        }
        None
    }

    /// Looks at a place, refreshing the waker if still waiting; a granted place is freed.
    pub(super) fn poll(&mut self, place: Place, waker: &Waker) -> Status {
        match &mut self.slots[place.slot] {
            Slot::Granted { ticket } if *ticket == place.ticket => {
                self.release_slot(place.slot);
                Status::Granted
            }
            Slot::Waiting {
                ticket,
                waker: stored,
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

    /// Removes a waiter that gives up. Returns `true` if it had been granted a permit, which
    /// the caller must pass on.
    pub(super) fn cancel(&mut self, place: Place) -> bool {
        let granted = match &self.slots[place.slot] {
            Slot::Granted { ticket } if *ticket == place.ticket => true,
            Slot::Waiting { ticket, .. } if *ticket == place.ticket => {
                self.waiting -= 1;
                false
            }
            _ => return false,
        };
        self.release_slot(place.slot);
        if self.order.len() > 2 * self.waiting + 16 {
            let slots = &self.slots;
            self.order
                .retain(|&(slot, ticket)| matches!(slots[slot], Slot::Waiting { ticket: t, .. } if t == ticket));
        }
        granted
    }

    fn release_slot(&mut self, slot: usize) {
        self.slots[slot] = Slot::Vacant;
        self.free.push(slot);
    }
}
