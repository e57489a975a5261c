//! The one error chaos injects, and how it reaches the caller's error type.

use std::fmt;

/// An error [`Chaos`](super::Chaos) injected into a call.
///
/// It reaches the operation's (or the service's) error type `E` through `E:
/// From<InjectedFault>`: `Box<dyn Error + Send + Sync>` (tower's `BoxError`) takes it as it
/// is, and so does [`Error<E>`](crate::Error) when `E` does (as `Error::Inner`); for an error
/// type of your own, implement `From<InjectedFault>` (a variant for it, or your "unavailable"
/// variant if the code under test must not know it is being tested). Find it behind a box with
/// `downcast_ref` or [`tower::cause`](crate::tower::cause).
///
/// ```
/// use tidewall::chaos::InjectedFault;
///
/// let err: Box<dyn std::error::Error + Send + Sync> = InjectedFault::Altered.into();
/// assert_eq!(err.downcast_ref::<InjectedFault>(), Some(&InjectedFault::Altered));
/// assert_eq!(InjectedFault::Error.to_string(), "injected fault: error");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InjectedFault {
    /// The call was failed without running the operation ([`Fault::Error`](super::Fault::Error)).
    Error,
    /// The operation ran and succeeded, and its value was replaced by this error
    /// ([`Fault::Alter`](super::Fault::Alter)).
    Altered,
}

impl InjectedFault {
    /// A stable name: `error` or `altered`.
    ///
    /// ```
    /// use tidewall::chaos::InjectedFault;
    ///
    /// assert_eq!(InjectedFault::Altered.kind(), "altered");
    /// ```
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Altered => "altered",
        }
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error => f.write_str("injected fault: error"),
            Self::Altered => {
                f.write_str("injected fault: altered outcome (the operation succeeded)")
            }
        }
    }
}

impl std::error::Error for InjectedFault {}

/// An injected fault is the inner error of a policy wrapper, so a typed stack
/// (`Error<BoxError>`, `Error<YourError>` with `YourError: From<InjectedFault>`) takes it.
///
/// ```
/// use tidewall::chaos::InjectedFault;
/// use tidewall::Error;
///
/// type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// let err: Error<BoxError> = InjectedFault::Error.into();
/// assert!(matches!(err, Error::Inner(e) if e.is::<InjectedFault>()));
/// ```
impl<E: From<InjectedFault>> From<InjectedFault> for crate::Error<E> {
    fn from(fault: InjectedFault) -> Self {
        Self::Inner(E::from(fault))
    }
}
