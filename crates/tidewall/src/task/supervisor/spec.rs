//! Child specifications: what to start, when to restart it, how long it gets to stop.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::task::CancellationToken;

/// The error a supervised child exits with: any error, boxed (children of one supervisor are
/// different futures with different error types; the supervisor only reports it).
pub type ChildError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub(super) type ChildFuture = Pin<Box<dyn Future<Output = Result<(), ChildError>> + Send>>;
type Factory = Box<dyn FnMut(CancellationToken) -> ChildFuture + Send>;

/// When a child that ended is started again (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Restart {
    /// Always restarted, whether it failed or returned `Ok`.
    #[default]
    Permanent,
    /// Restarted after any exit but `Ok`: `Err`, a panic, or aborted from outside.
    Transient,
    /// Never restarted.
    Temporary,
}

/// How long a child gets to stop after its token is cancelled, unless
/// [`ChildSpec::shutdown_timeout`] says otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The shutdown timeout of a [`ChildSpec::supervisor`](ChildSpec::supervisor) child: a year,
/// standing in for OTP's `infinity`, because a supervisor stops its own children one by one
/// within their own timeouts and must not be cut short in the middle.
pub const SUPERVISOR_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

/// One supervised child: a name, a factory that starts it (called again on every restart,
/// with a fresh token that is cancelled when the supervisor wants it to stop), its
/// [`Restart`] kind and its shutdown timeout.
///
/// ```
/// use std::time::Duration;
/// use tidewall::task::supervisor::{ChildSpec, Restart};
///
/// let spec = ChildSpec::new("metrics-flusher", |stop| async move {
///     stop.cancelled().await; // a real child would work until told to stop
///     Ok::<(), std::io::Error>(())
/// })
/// .restart(Restart::Transient)
/// .shutdown_timeout(Duration::from_secs(2));
/// assert_eq!(spec.name(), "metrics-flusher");
/// ```
pub struct ChildSpec {
    pub(super) name: Arc<str>,
    pub(super) factory: Factory,
    pub(super) restart: Restart,
    pub(super) shutdown_timeout: Duration,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A permanent child named `name`, started by `factory(stop_token)`.
    pub fn new<F, Fut, E>(name: impl Into<Arc<str>>, mut factory: F) -> Self
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ChildError>,
    {
        Self {
            name: name.into(),
            factory: Box::new(move |token| {
                let child = factory(token);
                Box::pin(async move { child.await.map_err(Into::into) })
            }),
            restart: Restart::Permanent,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Sets the restart kind ([`Restart::Permanent`] by default).
    #[must_use]
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// How long the child gets to stop once told to before it is aborted
    /// ([`DEFAULT_SHUTDOWN_TIMEOUT`] by default). Zero aborts it at once, without waiting
    /// (OTP's `brutal_kill`): it is aborted before its token is cancelled, so it reads
    /// [`Ending::Aborted`](crate::task::Ending::Aborted) unless it had already ended.
    /// An abort takes effect at the child's next await, and the supervisor waits for it: a
    /// child that never yields holds its supervisor's stop until it returns or yields.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
