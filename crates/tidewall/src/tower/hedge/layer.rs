//! The layer: a hedging policy shared by every service it makes.

use tower_layer::Layer;

use super::HedgeService;
use super::service::Source;
use crate::classify::DefaultClassifier;
use crate::hedge::Hedge;
use crate::rt::{Clock, DefaultRuntime};
use crate::tower::ByClone;

/// Hedges every request with a [`Hedge`] policy. Apply it only to routes whose requests are
/// idempotent: each attempt sends a clone of the request to a clone of the service (or a copy
/// made by [`clone_requests`](Self::clone_requests), which can also keep other requests from
/// being hedged). Responses are
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
pub struct HedgeLayer<R = DefaultRuntime, K = DefaultClassifier, Q = ByClone> {
    hedge: Source<R, K>,
    clones: Q,
}

impl<R, K> HedgeLayer<R, K> {
    /// A layer sharing `hedge` (its latency estimate, budget and classifier).
    pub fn new(hedge: Hedge<R, K>) -> Self {
        Self {
            hedge: Source::Fixed(hedge),
            clones: ByClone,
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
            clones: ByClone,
        }
    }
}

impl<R, K, Q> HedgeLayer<R, K, Q> {
    /// Copies requests for attempts with `clones` instead of `Clone` (see
    /// [`CloneRequest`](crate::tower::CloneRequest)): each attempt sends a copy, and a
    /// request that cannot be copied is sent itself, with no hedge after it. A closure that
    /// copies only idempotent requests hedges those alone. Cloned into each call.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use tidewall::hedge::Hedge;
    /// use tidewall::tower::HedgeLayer;
    /// use tower::{Layer, ServiceExt};
    ///
    /// /// Hedged only when it is a read: not `Clone`.
    /// enum Op {
    ///     Read(u32),
    ///     Write(u32),
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hedge = Hedge::builder().delay(Duration::from_millis(50)).build()?;
    /// let layer = HedgeLayer::new(hedge).clone_requests(|op: &Op| match op {
    ///     Op::Read(key) => Some(Op::Read(*key)),
    ///     Op::Write(_) => None,
    /// });
    /// let sent = Arc::new(AtomicU32::new(0));
    /// let seen = Arc::clone(&sent);
    /// // Answers after 80 ms: a read is hedged at 50 ms, a write is not.
    /// let slow = tower::service_fn(move |op: Op| {
    ///     seen.fetch_add(1, Ordering::SeqCst);
    ///     async move {
    ///         tokio::time::sleep(Duration::from_millis(80)).await;
    ///         Ok::<_, std::convert::Infallible>(match op { Op::Read(k) | Op::Write(k) => k })
    ///     }
    /// });
    /// assert_eq!(layer.layer(slow.clone()).oneshot(Op::Read(1)).await?, 1);
    /// assert_eq!(sent.swap(0, Ordering::SeqCst), 2);
    /// assert_eq!(layer.layer(slow).oneshot(Op::Write(2)).await?, 2);
    /// assert_eq!(sent.load(Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub fn clone_requests<Q2>(self, clones: Q2) -> HedgeLayer<R, K, Q2> {
        HedgeLayer {
            hedge: self.hedge,
            clones,
        }
    }
}

impl<R: Clock, K: Clone, Q> HedgeLayer<R, K, Q> {
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

impl<R: Clock, K: Clone, Q: Clone> Clone for HedgeLayer<R, K, Q> {
    fn clone(&self) -> Self {
        Self {
            hedge: self.hedge.clone(),
            clones: self.clones.clone(),
        }
    }
}

impl<R: Clock, K, Q> std::fmt::Debug for HedgeLayer<R, K, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("hedge", &self.hedge)
            .finish()
    }
}

impl<S, R: Clock, K: Clone, Q: Clone> Layer<S> for HedgeLayer<R, K, Q> {
    type Service = HedgeService<S, R, K, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService::new(inner, self.hedge.clone(), self.clones.clone())
    }
}
