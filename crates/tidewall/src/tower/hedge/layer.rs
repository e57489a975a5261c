//! The layer: a hedging policy shared by every service it makes.

use tower_layer::Layer;

use super::HedgeService;
use crate::classify::DefaultClassifier;
use crate::hedge::Hedge;
use crate::rt::{Clock, DefaultRuntime};

/// Hedges every request with a [`Hedge`] policy. Apply it only to routes whose requests are
/// idempotent: a hedge sends a clone of the request to a clone of the service. Responses are
/// judged by the hedge's [classifier](crate::hedge::HedgeBuilder::classify).
///
/// ```
/// use std::time::Duration;
/// use tidewall::hedge::Hedge;
/// use tidewall::tower::HedgeLayer;
/// use tower::ServiceExt as _;
/// use tower_layer::Layer;
/// use tower_service::Service as _;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hedge = Hedge::builder().delay(Duration::from_millis(50)).build()?;
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) });
/// let mut service = HedgeLayer::new(hedge).layer(echo);
/// assert_eq!(service.ready().await?.call(7).await?, 7);
/// # Ok(()) }
/// ```
pub struct HedgeLayer<R = DefaultRuntime, K = DefaultClassifier> {
    hedge: Hedge<R, K>,
}

impl<R, K> HedgeLayer<R, K> {
    /// A layer sharing `hedge` (its latency estimate, budget and classifier).
    pub fn new(hedge: Hedge<R, K>) -> Self {
        Self { hedge }
    }
}

impl<R: Clock, K: Clone> Clone for HedgeLayer<R, K> {
    fn clone(&self) -> Self {
        Self {
            hedge: self.hedge.clone(),
        }
    }
}

impl<R: Clock, K> std::fmt::Debug for HedgeLayer<R, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("hedge", &self.hedge)
            .finish()
    }
}

impl<S, R: Clock, K: Clone> Layer<S> for HedgeLayer<R, K> {
    type Service = HedgeService<S, R, K>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService::new(inner, self.hedge.clone())
    }
}
