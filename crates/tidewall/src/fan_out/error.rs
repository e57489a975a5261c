//! The fail-fast fan-out error.

use std::fmt;

use crate::rt::JoinError;

/// Why a fail-fast fan-out stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum FanOutError<E> {
    /// The work returned this error.
    Inner(E),
    /// A task panicked (in a poll, or in its future's `Drop` after it returned: then with
    /// that payload) or was cancelled by its runtime.
    Task(JoinError),
}

impl<E: fmt::Display> fmt::Display for FanOutError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inner(e) => write!(f, "{e}"),
            Self::Task(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for FanOutError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Task(e) => Some(e),
        }
    }
}
