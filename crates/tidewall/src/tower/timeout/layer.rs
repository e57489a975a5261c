//! The layer: a timeout and the clock it is measured on.

use std::time::Duration;

use tower_layer::Layer;

use super::TimeoutService;
use crate::rt::DefaultRuntime;

/// Bounds each request — waiting for the service to be ready *and* the call — by `timeout`.
///
/// The clock starts when `poll_ready` first has to wait for a request (or at the call, if
/// the service was ready at once). A wait that ended is charged to the next call, and the time
/// the service then sits ready before that call comes is not (a `Steer` or a balancer readies
/// services long before it calls one). If readiness takes too long, the request times out with
/// [`PolicyError::timed_out`](crate::tower::PolicyError::timed_out) (typed:
/// [`Error::TimedOut`](crate::Error::TimedOut)): `poll_ready` reports ready (an error there
/// would tell tower the service is broken for good) and the next call fails at once, the
/// inner service not called. Otherwise the call gets only what is left. A caller that stops
/// polling (a `ready()` given up) does not end the request's wait: the next `poll_ready`,
/// however much later, continues it, and times out at once if the budget has run out
/// meanwhile.
///
/// ```
/// use std::time::Duration;
/// use tidewall::Error;
/// use tidewall::tower::TimeoutLayer;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let slow = tower::service_fn(|(): ()| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, Error<std::convert::Infallible>>("late")
/// });
/// let mut service = TimeoutLayer::new(Duration::from_millis(300)).layer(slow);
/// assert!(matches!(service.call(()).await, Err(Error::TimedOut)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer<R = DefaultRuntime> {
    rt: R,
    timeout: Duration,
}

impl TimeoutLayer {
    /// `timeout` per request, on the default runtime's clock.
    pub fn new(timeout: Duration) -> Self {
        Self {
            rt: DefaultRuntime::default(),
            timeout,
        }
    }
}

impl<R> TimeoutLayer<R> {
    /// Times requests on `rt`'s clock.
    pub fn runtime<R2>(self, rt: R2) -> TimeoutLayer<R2> {
        TimeoutLayer {
            rt,
            timeout: self.timeout,
        }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S, R: Clone> Layer<S> for TimeoutLayer<R> {
    type Service = TimeoutService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService::new(inner, self.rt.clone(), self.timeout)
    }
}
