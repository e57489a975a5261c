//! A pipeline behind one name: its stages erased, to store it in a struct or a map.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Pipeline;
use super::stages::{Gate, Retries};
use crate::admission::Admission;
use crate::classify::Classify;
use crate::rt::Clock;
use crate::{Deadline, Error};

/// The future of a [`BoxPipeline`] call, and of each attempt it runs.
pub type BoxCall<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

type BoxOp<'a, T, E> = Box<dyn FnMut() -> BoxCall<'a, Result<T, E>> + Send + 'a>;

/// A [`Pipeline`] of any stages, named by what its operations return: `BoxPipeline<T, E>`
/// calls operations that return `Result<T, E>`. Made with [`Pipeline::boxed`]; clones share
/// the pipeline.
///
/// The static `Pipeline` allocates nothing per call (but a retried value it keeps); this one allocates the call's future
/// and each attempt's (the price of not spelling the stages). Behaviour is the pipeline's:
/// the same stages, deadline, retries and classifier.
///
/// ```
/// use std::time::Duration;
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall::pipeline::{BoxPipeline, Pipeline};
/// use tidewall::Backoff;
///
/// /// A client stores its policies without naming the stages they are made of.
/// struct Client {
///     policies: BoxPipeline<u32, std::io::Error>,
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client {
///     policies: Pipeline::builder()
///         .deadline(Duration::from_secs(2))
///         .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
///         .breaker(CircuitBreaker::builder().consecutive_failures(5).build()?)
///         .build()?
///         .boxed(),
/// };
/// let mut attempts = 0;
/// let answer = client
///     .policies
///     .call(|| {
///         attempts += 1;
///         let fail = attempts < 2;
///         async move { if fail { Err(std::io::ErrorKind::Other.into()) } else { Ok(7) } }
///     })
///     .await?;
/// assert_eq!((answer, attempts), (7, 2));
/// # Ok(()) }
/// ```
pub struct BoxPipeline<T, E> {
    pipeline: Arc<dyn Erased<T, E>>,
}

impl<T, E> Clone for BoxPipeline<T, E> {
    fn clone(&self) -> Self {
        Self {
            pipeline: Arc::clone(&self.pipeline),
        }
    }
}

impl<T, E> std::fmt::Debug for BoxPipeline<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxPipeline").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, E: Send + 'static> BoxPipeline<T, E> {
    /// As [`Pipeline::call`].
    ///
    /// **Cancel safety:** as [`Pipeline::call`].
    ///
    /// # Errors
    ///
    /// As [`Pipeline::call`].
    pub fn call<'a, F, Fut>(&'a self, op: F) -> BoxCall<'a, Result<T, Error<E>>>
    where
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, E>> + Send + 'a,
    {
        self.call_before(Deadline::none(), op)
    }

    /// As [`Pipeline::call_before`].
    ///
    /// **Cancel safety:** as [`Pipeline::call`].
    ///
    /// # Errors
    ///
    /// As [`Pipeline::call`].
    pub fn call_before<'a, F, Fut>(
        &'a self,
        deadline: Deadline,
        op: F,
    ) -> BoxCall<'a, Result<T, Error<E>>>
    where
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, E>> + Send + 'a,
    {
        self.pipeline.call_erased(deadline, erase(op))
    }
}

fn erase<'a, T, E, F, Fut>(mut op: F) -> BoxOp<'a, T, E>
where
    F: FnMut() -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
{
    Box::new(move || -> BoxCall<'a, Result<T, E>> { Box::pin(op()) })
}

/// A pipeline's call with its stages' types forgotten.
trait Erased<T, E>: Send + Sync {
    fn call_erased<'a>(
        &'a self,
        deadline: Deadline,
        op: BoxOp<'a, T, E>,
    ) -> BoxCall<'a, Result<T, Error<E>>>
    where
        T: 'a,
        E: 'a;
}

impl<R, L, B, Rt, C, K, T, E> Erased<T, E> for Pipeline<R, L, B, Rt, C, K>
where
    R: Clock,
    L: Admission + 'static,
    B: Admission + 'static,
    Rt: Retries + 'static,
    C: Gate + 'static,
    K: Classify<T, E> + Send + Sync,
    Self: Send + Sync,
    T: Send,
    E: Send,
{
    fn call_erased<'a>(
        &'a self,
        deadline: Deadline,
        op: BoxOp<'a, T, E>,
    ) -> BoxCall<'a, Result<T, Error<E>>>
    where
        T: 'a,
        E: 'a,
    {
        Box::pin(self.judged(&self.config.classify, deadline, op))
    }
}

impl<R, L, B, Rt, C, K> Pipeline<R, L, B, Rt, C, K>
where
    R: Clock,
    L: Admission + 'static,
    B: Admission + 'static,
    Rt: Retries + 'static,
    C: Gate + 'static,
    K: Send + Sync + 'static,
{
    /// This pipeline behind one name, [`BoxPipeline<T, E>`], for operations returning
    /// `Result<T, E>`: to store it without spelling its stages.
    pub fn boxed<T, E>(self) -> BoxPipeline<T, E>
    where
        K: Classify<T, E>,
        T: Send + 'static,
        E: Send + 'static,
    {
        BoxPipeline {
            pipeline: Arc::new(self),
        }
    }
}
