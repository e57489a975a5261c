//! The layer: a hedging policy shared by every service it makes.

use tower_layer::Layer;

use super::HedgeService;
use super::service::Source;
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
    hedge: Source<R, K>,
}

impl<R, K> HedgeLayer<R, K> {
    /// A layer sharing `hedge` (its latency estimate, budget and classifier).
    pub fn new(hedge: Hedge<R, K>) -> Self {
        Self {
            hedge: Source::Fixed(hedge),
        }
    }

    /// A layer hedging with the hedge `live` has in force when each call starts (feature
    /// `serde`): it follows every [reload](crate::config::Registry::reload) of the
    /// instance's `[hedge]` section, as calls through the handle do, and judges responses
    /// with the handle's classifier.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::{Config, Registry};
    /// use tidewall::tower::HedgeLayer;
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml("[instances.search.hedge]\ndelay = \"20ms\"\n")?)?;
    /// let layer = HedgeLayer::live(registry.hedge("search")?);
    /// // Every request takes 100 ms: a hedge sent after 20 ms does not answer sooner.
    /// let slow = tower::service_fn(|x: u32| async move {
    ///     tokio::time::sleep(Duration::from_millis(100)).await;
    ///     Ok::<_, std::convert::Infallible>(x)
    /// });
    /// let started = tokio::time::Instant::now();
    /// assert_eq!(layer.layer(slow.clone()).oneshot(1).await?, 1);
    /// assert_eq!(started.elapsed(), Duration::from_millis(100));
    ///
    /// // The layer follows the reload.
    /// registry.reload(Config::from_toml("[instances.search.hedge]\nmax_hedges = 0\n")?)?;
    /// assert_eq!(layer.hedge().max_hedges(), 0);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "serde")]
    pub fn live(hedge: crate::config::LiveHedge<R, K>) -> Self {
        Self {
            hedge: Source::Live(hedge),
        }
    }
}

impl<R: Clock, K: Clone> HedgeLayer<R, K> {
    /// The hedge a call starting now would use.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::hedge::Hedge;
    /// use tidewall::tower::HedgeLayer;
    ///
    /// let layer = HedgeLayer::new(Hedge::builder().delay(Duration::from_millis(30)).build()?);
    /// assert_eq!(layer.hedge().delay(), Duration::from_millis(30));
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn hedge(&self) -> Hedge<R, K> {
        self.hedge.current()
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
