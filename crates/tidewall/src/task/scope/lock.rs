//! The cell a scope's state lives in: a `Mutex` when children run as tasks on other threads,
//! a `RefCell` when the owner polls them itself on one thread.

use std::cell::{RefCell, RefMut};
use std::ops::DerefMut;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub(super) trait Lock {
    type Target;
    type Guard<'a>: DerefMut<Target = Self::Target>
    where
        Self: 'a;

    fn lock(&self) -> Self::Guard<'_>;
}

impl<S> Lock for Mutex<S> {
    type Target = S;
    type Guard<'a>
        = MutexGuard<'a, S>
    where
        S: 'a;

    /// A poisoned lock is taken as it is: no child is polled under it, so a panic elsewhere
    /// cannot leave the state half-updated.
    fn lock(&self) -> MutexGuard<'_, S> {
        Mutex::lock(self).unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S> Lock for RefCell<S> {
    type Target = S;
    type Guard<'a>
        = RefMut<'a, S>
    where
        S: 'a;

    fn lock(&self) -> RefMut<'_, S> {
        self.borrow_mut()
    }
}
