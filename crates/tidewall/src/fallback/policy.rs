//! Fallback policies.

use std::future::{Future, Ready, ready};

/// Decides what replaces an error. Implemented by [`Value`], [`With`], [`WithAsync`] and
/// [`When`]; implement it for custom strategies.
pub trait Fallback<T, E> {
    /// The future that produces the replacement.
    type Future: Future<Output = Result<T, E>>;

    /// Handles `error` (`Ok(future)`) or declines it (`Err(error)`, returned to the caller).
    ///
    /// # Errors
    ///
    /// Returns the error unchanged when this fallback does not handle it.
    fn on_error(self, error: E) -> Result<Self::Future, E>;

    /// Handles only the errors for which `predicate` returns `true`.
    fn when<P: FnOnce(&E) -> bool>(self, predicate: P) -> When<Self, P>
    where
        Self: Sized,
    {
        When {
            inner: self,
            predicate,
        }
    }
}

/// Replaces the error with a fixed value; see [`value`].
#[derive(Debug, Clone)]
pub struct Value<T>(T);

/// Replaces any error with `Ok(value)`.
pub fn value<T>(value: T) -> Value<T> {
    Value(value)
}

impl<T, E> Fallback<T, E> for Value<T> {
    type Future = Ready<Result<T, E>>;

    fn on_error(self, _error: E) -> Result<Self::Future, E> {
        Ok(ready(Ok(self.0)))
    }
}

/// Computes the replacement from the error; see [`with`].
#[derive(Debug, Clone)]
pub struct With<F>(F);

/// Replaces the error with `f(error)`, which may itself fail.
pub fn with<F>(f: F) -> With<F> {
    With(f)
}

impl<T, E, F: FnOnce(E) -> Result<T, E>> Fallback<T, E> for With<F> {
    type Future = Ready<Result<T, E>>;

    fn on_error(self, error: E) -> Result<Self::Future, E> {
        Ok(ready((self.0)(error)))
    }
}

/// Runs another async operation in place of the failed one; see [`with_async`].
#[derive(Debug, Clone)]
pub struct WithAsync<F>(F);

/// Replaces the error with the result of `f(error).await`.
pub fn with_async<F>(f: F) -> WithAsync<F> {
    WithAsync(f)
}

impl<T, E, F, Fut> Fallback<T, E> for WithAsync<F>
where
    F: FnOnce(E) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Future = Fut;

    fn on_error(self, error: E) -> Result<Fut, E> {
        Ok((self.0)(error))
    }
}

/// A fallback restricted to the errors a predicate accepts; see [`Fallback::when`].
#[derive(Debug, Clone)]
pub struct When<F, P> {
    inner: F,
    predicate: P,
}

impl<T, E, F: Fallback<T, E>, P: FnOnce(&E) -> bool> Fallback<T, E> for When<F, P> {
    type Future = F::Future;

    fn on_error(self, error: E) -> Result<Self::Future, E> {
        if (self.predicate)(&error) {
            self.inner.on_error(error)
        } else {
            Err(error)
        }
    }
}
