//! Runtime adapters for tests of detached blocking steps: `Counting`, tokio counting the jobs
//! it spawned still alive, so a test can wait for a dropped `write_atomic`'s steps instead of
//! a guessed time; `PanicAt`, any runtime whose chosen blocking job panics; `DropsUnpolled`,
//! any runtime that drops chosen tasks before their first poll; `LosesBlocking`, any runtime
//! that cancels chosen blocking jobs before they run.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use tidewall::rt::{Clock, JoinError, Spawn, TaskHandle, Tokio};

/// Tokio, counting the blocking jobs still alive, so a test can wait for detached steps to end
/// before looking at the directory. A job counts as ended only once its result was handed to
/// a handle that still wants it, or dropped (so a temporary file returned by a detached step
/// has been removed by then).
#[derive(Clone, Default)]
pub struct Counting {
    live: Arc<LiveJobs>,
}

#[derive(Default)]
struct LiveJobs {
    count: AtomicUsize,
    ended: tokio::sync::Notify,
}

struct Live(Arc<LiveJobs>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, SeqCst);
        self.0.ended.notify_waiters();
    }
}

/// The handle `Counting` returns: the relayed result of tokio's handle.
pub struct Relay<T>(futures_channel::oneshot::Receiver<Result<T, JoinError>>);

impl<T> Future for Relay<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(JoinError::Cancelled)))
    }
}

impl<T: Send + 'static> TaskHandle<T> for Relay<T> {
    fn abort(&self) {}
}

impl Counting {
    fn relay<T: Send + 'static>(&self, inner: <Tokio as Spawn>::JoinHandle<T>) -> Relay<T> {
        self.live.count.fetch_add(1, SeqCst);
        let live = Live(Arc::clone(&self.live));
        let (tx, rx) = futures_channel::oneshot::channel();
        tokio::spawn(async move {
            let result = inner.await;
            // Nobody wants it: drop it here, before the job counts as ended.
            drop(tx.send(result));
            drop(live);
        });
        Relay(rx)
    }
}

impl Spawn for Counting {
    type JoinHandle<T: Send + 'static> = Relay<T>;

    fn spawn<F>(&self, fut: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.relay(Tokio.spawn(fut))
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.relay(Tokio.spawn_blocking(work))
    }
}

impl Counting {
    /// Waits until every blocking job handed out has ended (ran, or was dropped).
    pub async fn settle(&self) {
        loop {
            let ended = self.live.ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            if self.live.count.load(SeqCst) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// Any runtime whose blocking job number `fail_at` (from 0) panics instead of running.
#[derive(Clone)]
pub struct PanicAt<R> {
    pub inner: R,
    pub calls: Arc<AtomicUsize>,
    pub fail_at: usize,
}

impl<R: Spawn> Spawn for PanicAt<R> {
    type JoinHandle<T: Send + 'static> = R::JoinHandle<T>;

    fn spawn<F>(&self, fut: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.spawn(fut)
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.calls.fetch_add(1, SeqCst) == self.fail_at {
            self.inner.spawn_blocking(move || -> T {
                drop(work);
                panic!("blocking step panics (on purpose)")
            })
        } else {
            self.inner.spawn_blocking(work)
        }
    }
}

/// Any runtime that drops the future of each spawn whose number (from 0) `lose` picks without
/// polling it, as tokio does to a task spawned while it shuts down. The lost task's handle
/// never completes (nothing awaited on it is owed an answer by this adapter).
#[derive(Clone)]
pub struct DropsUnpolled<R> {
    pub inner: R,
    pub spawns: Arc<AtomicUsize>,
    pub lose: fn(usize) -> bool,
}

impl<R: Clock> Clock for DropsUnpolled<R> {
    type Sleep = R::Sleep;

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.inner.sleep_until(deadline)
    }
}

impl<R: Spawn> Spawn for DropsUnpolled<R> {
    type JoinHandle<T: Send + 'static> = R::JoinHandle<T>;

    fn spawn<F>(&self, fut: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if (self.lose)(self.spawns.fetch_add(1, SeqCst)) {
            drop(fut);
            self.inner.spawn(std::future::pending())
        } else {
            self.inner.spawn(fut)
        }
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.spawn_blocking(work)
    }
}

/// Any runtime that loses each blocking job whose number (from 0) `lose` picks: the work is
/// dropped unrun and its handle reports `JoinError::Cancelled`, as tokio's do for jobs not
/// started when it shuts down.
#[derive(Clone)]
pub struct LosesBlocking<R> {
    pub inner: R,
    pub jobs: Arc<AtomicUsize>,
    pub lose: fn(usize) -> bool,
}

/// The handle of a [`LosesBlocking`] job: the runtime's, or a lost job's.
pub enum MaybeLost<H> {
    Kept(H),
    Lost,
}

impl<T, H: Future<Output = Result<T, JoinError>> + Unpin> Future for MaybeLost<H> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            MaybeLost::Kept(handle) => Pin::new(handle).poll(cx),
            MaybeLost::Lost => Poll::Ready(Err(JoinError::Cancelled)),
        }
    }
}

impl<T: Send + 'static, H: TaskHandle<T>> TaskHandle<T> for MaybeLost<H> {
    fn abort(&self) {
        if let MaybeLost::Kept(handle) = self {
            handle.abort();
        }
    }
}

impl<R: Clock> Clock for LosesBlocking<R> {
    type Sleep = R::Sleep;

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.inner.sleep_until(deadline)
    }
}

impl<R: Spawn> Spawn for LosesBlocking<R> {
    type JoinHandle<T: Send + 'static> = MaybeLost<R::JoinHandle<T>>;

    fn spawn<F>(&self, fut: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        MaybeLost::Kept(self.inner.spawn(fut))
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if (self.lose)(self.jobs.fetch_add(1, SeqCst)) {
            drop(work);
            MaybeLost::Lost
        } else {
            MaybeLost::Kept(self.inner.spawn_blocking(work))
        }
    }
}
