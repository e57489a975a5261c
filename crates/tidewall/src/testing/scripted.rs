//! A scripted operation for retry and fallback tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rt::Runtime;

/// An operation that plays back a script of outcomes, one per call, and records the instant
/// (on its runtime's clock) at which each call started. After the script runs out, the last
/// outcome repeats. Each step may take virtual time before it resolves. Its runtime is a
/// [`Runtime`] (a [`Clocked`](super::Clocked), or an adapter under paused time), not a bare
/// [`FakeClock`](super::FakeClock), which has no tasks to run a step on.
///
/// ```
/// use tidewall::rt::Tokio;
/// use tidewall::testing::Scripted;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let op = Scripted::new(Tokio, [Err("down"), Err("down"), Ok(7)]);
/// assert_eq!(op.call().await, Err("down"));
/// assert_eq!(op.call().await, Err("down"));
/// assert_eq!(op.call().await, Ok(7));
/// assert_eq!(op.call().await, Ok(7)); // the last step repeats
/// assert_eq!(op.calls(), 4);
/// # });
/// ```
#[derive(Debug)]
pub struct Scripted<R, T, E> {
    rt: R,
    script: Arc<Vec<(Duration, Result<T, E>)>>,
    started: Arc<Mutex<Vec<Instant>>>,
    origin: Instant,
}

impl<R: Clone, T, E> Clone for Scripted<R, T, E> {
    fn clone(&self) -> Self {
        Self {
            rt: self.rt.clone(),
            script: Arc::clone(&self.script),
            started: Arc::clone(&self.started),
            origin: self.origin,
        }
    }
}

impl<R: Runtime, T: Clone, E: Clone> Scripted<R, T, E> {
    /// Outcomes that resolve instantly.
    ///
    /// # Panics
    ///
    /// If `script` is empty (a test-authoring mistake).
    pub fn new(rt: R, script: impl IntoIterator<Item = Result<T, E>>) -> Self {
        Self::with_latency(
            rt,
            script.into_iter().map(|outcome| (Duration::ZERO, outcome)),
        )
    }

    /// Outcomes that each take the given time before resolving.
    ///
    /// # Panics
    ///
    /// If `script` is empty (a test-authoring mistake).
    pub fn with_latency(rt: R, script: impl IntoIterator<Item = (Duration, Result<T, E>)>) -> Self {
        let script: Vec<_> = script.into_iter().collect();
        assert!(
            !script.is_empty(),
            "a Scripted operation needs at least one step"
        );
        let origin = rt.now();
        Self {
            rt,
            script: Arc::new(script),
            started: Arc::default(),
            origin,
        }
    }

    /// Runs the next step: records the start instant, waits its latency, returns its outcome.
    ///
    /// # Errors
    ///
    /// The step's scripted error.
    pub async fn call(&self) -> Result<T, E> {
        let index = {
            let mut started = self
                .started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            started.push(self.rt.now());
            started.len() - 1
        };
        let (latency, outcome) = &self.script[index.min(self.script.len() - 1)];
        if !latency.is_zero() {
            self.rt.sleep(*latency).await;
        }
        outcome.clone()
    }

    /// How many calls have started.
    pub fn calls(&self) -> usize {
        self.started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// When each call started, as offsets from the moment the operation was created.
    pub fn start_offsets(&self) -> Vec<Duration> {
        let started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        started
            .iter()
            .map(|at| at.saturating_duration_since(self.origin))
            .collect()
    }
}
