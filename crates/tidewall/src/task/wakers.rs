//! The wakers of the futures waiting on one condition, one slot per waiting future.

use std::task::Waker;

/// One slot per waiting future: it takes a slot when it first waits, refreshes its waker
/// there on every later wait, and frees the slot when it is dropped (or sooner, when it
/// resolves). So the list holds no more entries than there are futures waiting now, however
/// many gave up, and a wake-up never has to be spread over abandoned entries to keep the list
/// small.
///
/// The caller keeps its slot's key (`Option<usize>`, `None` before the first wait) and must
/// [`free`](Self::free) it when it is done, in its future's `Drop` included.
#[derive(Debug, Default)]
pub(in crate::task) struct WakerSlots {
    /// `None` in a free slot, and in a held one whose waker was taken by a wake-up.
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl WakerSlots {
    /// Records `waker` in the slot `key` names, taking a slot first if it names none.
    pub(in crate::task) fn register(&mut self, key: &mut Option<usize>, waker: &Waker) {
        let index = match *key {
            Some(index) => index,
            None => {
                let index = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                *key = Some(index);
                index
            }
        };
        match &mut self.slots[index] {
            Some(held) if held.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Frees the slot `key` names, if any, and clears `key`.
    pub(in crate::task) fn free(&mut self, key: &mut Option<usize>) {
        let Some(index) = key.take() else {
            return;
        };
        self.slots[index] = None;
        self.free.push(index);
        if self.free.len() == self.slots.len() {
            // Nobody waits: start over, so the free list does not keep the old high-water
            // mark's indices.
            self.slots.clear();
            self.free.clear();
        }
    }

    /// Takes every waker (to wake once the lock is released); each future keeps its slot and
    /// registers again if it waits again.
    pub(in crate::task) fn take_all(&mut self) -> Vec<Waker> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }

    /// Slots held by waiting futures.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// A waiting future's key to its slot in a [`WakerSlots`], which gives the slot back when the
/// future is dropped mid-wait. `free` locks the list and frees the key it is given; the future
/// passes [`key`](Self::key) to [`WakerSlots::register`] and [`WakerSlots::free`] meanwhile.
pub(in crate::task) struct HeldSlot<F: FnMut(&mut Option<usize>)> {
    pub(in crate::task) key: Option<usize>,
    free: F,
}

impl<F: FnMut(&mut Option<usize>)> HeldSlot<F> {
    /// A key to no slot yet, freed through `free` if it holds one when dropped.
    pub(in crate::task) fn new(free: F) -> Self {
        Self { key: None, free }
    }
}

impl<F: FnMut(&mut Option<usize>)> Drop for HeldSlot<F> {
    fn drop(&mut self) {
        if self.key.is_some() {
            (self.free)(&mut self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HeldSlot, WakerSlots};
    use std::task::Waker;

    #[test]
    fn a_freed_slot_is_reused_and_an_empty_list_starts_over() {
        let mut slots = WakerSlots::default();
        let (mut a, mut b) = (None, None);
        slots.register(&mut a, Waker::noop());
        slots.register(&mut b, Waker::noop());
        assert_eq!((a, b, slots.held()), (Some(0), Some(1), 2));
        slots.free(&mut a);
        assert_eq!((a, slots.held()), (None, 1));
        let mut c = None;
        slots.register(&mut c, Waker::noop());
        assert_eq!(c, Some(0));
        assert_eq!(slots.take_all().len(), 2);
        assert!(slots.take_all().is_empty());
        slots.free(&mut b);
        slots.free(&mut c);
        assert_eq!((slots.held(), slots.slots.len()), (0, 0));
    }

    #[test]
    fn a_held_slot_is_freed_when_dropped_and_a_free_key_costs_no_lock() {
        let slots = std::cell::RefCell::new(WakerSlots::default());
        let locks = std::cell::Cell::new(0);
        let free = |key: &mut Option<usize>| {
            locks.set(locks.get() + 1);
            slots.borrow_mut().free(key);
        };
        drop(HeldSlot::new(free));
        assert_eq!(locks.get(), 0);
        let mut held = HeldSlot::new(free);
        slots.borrow_mut().register(&mut held.key, Waker::noop());
        assert_eq!(slots.borrow().held(), 1);
        drop(held);
        assert_eq!((locks.get(), slots.borrow().held()), (1, 0));
    }
}
