//! The fan-out streams.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use futures_util::stream::{BufferUnordered, Buffered, Map};

use super::FanOutError;
use super::completion::{Completions, report_to};
use crate::rt::{JoinError, Runtime, TaskHandle};

/// Spawned tasks by slot; aborts whatever still runs when dropped.
struct Tasks<H: TaskHandle<()>> {
    slots: Vec<Slot<H>>,
    free: Vec<usize>,
}

/// A task slot.
enum Slot<H> {
    Free,
    /// The task of input `sequence`, running or reported and not yet absorbed.
    Running(H, u64),
    /// Aborted by a fail-fast cut: its late report is dropped, then the slot is free.
    Cut,
}

impl<H: TaskHandle<()>> Tasks<H> {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A free slot index; grows the slab only when every slot is taken, so a huge limit costs
    /// nothing up front.
    fn free_slot(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::Free);
            self.slots.len() - 1
        })
    }

    fn abort_all(&mut self) {
        for slot in &mut self.slots {
            if let Slot::Running(handle, _) = std::mem::replace(slot, Slot::Free) {
                handle.abort();
            }
        }
    }

    /// Aborts the running tasks of inputs after `sequence` (every one when `None`), whose
    /// results would never be delivered; returns how many.
    fn cut_after(&mut self, sequence: Option<u64>) -> usize {
        let mut cut = 0;
        for slot in &mut self.slots {
            if matches!(slot, Slot::Running(_, s) if sequence.is_none_or(|after| *s > after))
                && let Slot::Running(handle, _) = std::mem::replace(slot, Slot::Cut)
            {
                handle.abort();
                cut += 1;
            }
        }
        cut
    }
}

impl<H: TaskHandle<()>> Drop for Tasks<H> {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// Results that arrived and wait for the consumer.
enum Arrived<O> {
    /// Completion order: a plain queue.
    Unordered(VecDeque<Result<O, JoinError>>),
    /// Input order: slot `i` holds sequence number `next + i`.
    Ordered {
        next: u64,
        slots: VecDeque<Option<Result<O, JoinError>>>,
    },
}

impl<O> Arrived<O> {
    fn insert(&mut self, sequence: u64, outcome: Result<O, JoinError>) {
        match self {
            Self::Unordered(queue) => queue.push_back(outcome),
            Self::Ordered { next, slots } => {
                // The sequence is at most `limit` ahead of `next`, so this fits in usize.
                let index = usize::try_from(sequence - *next).unwrap_or(usize::MAX);
                if slots.len() <= index {
                    slots.resize_with(index + 1, || None);
                }
                slots[index] = Some(outcome);
            }
        }
    }

    /// Results that will never be joined by more: in input order for an ordered fan-out,
    /// closing the gaps of the ones that will not come.
    fn into_unordered(self) -> VecDeque<Result<O, JoinError>> {
        match self {
            Self::Unordered(queue) => queue,
            Self::Ordered { slots, .. } => slots.into_iter().flatten().collect(),
        }
    }

    fn is_ordered(&self) -> bool {
        matches!(self, Self::Ordered { .. })
    }

    fn take_next(&mut self) -> Option<Result<O, JoinError>> {
        match self {
            Self::Unordered(queue) => queue.pop_front(),
            Self::Ordered { next, slots } => {
                let outcome = slots.front_mut()?.take()?;
                slots.pop_front();
                *next += 1;
                Some(outcome)
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The stream of a collect-all fan-out; see [`FanOut::run`](super::FanOut::run).
    #[must_use = "streams do nothing unless polled"]
    pub struct FanOutStream<R: Runtime, S, F, O> {
        #[pin]
        inputs: S,
        inputs_done: bool,
        rt: R,
        f: F,
        limit: usize,
        // Inputs taken and not yet delivered: running, queued or arrived.
        occupied: usize,
        // After `abort`, reports that come in are late (aborted tasks report `Cancelled`).
        aborted: bool,
        // The earliest input (in input order) whose fail-fast outcome arrived: the tasks of
        // later inputs were aborted (every running one, unordered).
        cut: Option<u64>,
        next_sequence: u64,
        completions: Arc<Completions<O>>,
        arrived: Arrived<O>,
        tasks: Tasks<R::JoinHandle<()>>,
    }
}

impl<R: Runtime, S, F, O> FanOutStream<R, S, F, O> {
    /// A fan-out that ends once an outcome that `ends` it has arrived (never, collecting
    /// all): from then on every input taken would be aborted undelivered, so none is.
    pub(super) fn new(
        rt: R,
        limit: usize,
        ordered: bool,
        inputs: S,
        f: F,
        ends: fn(&Result<O, JoinError>) -> bool,
    ) -> Self {
        // Buffers grow on demand up to `limit`; only a modest capacity is reserved up front.
        let capacity = limit.min(1024);
        let arrived = if ordered {
            Arrived::Ordered {
                next: 0,
                slots: VecDeque::with_capacity(capacity),
            }
        } else {
            Arrived::Unordered(VecDeque::with_capacity(capacity))
        };
        Self {
            inputs,
            inputs_done: false,
            rt,
            f,
            limit,
            occupied: 0,
            aborted: false,
            cut: None,
            next_sequence: 0,
            completions: Completions::with_capacity(capacity, ends),
            arrived,
            tasks: Tasks::new(),
        }
    }

    /// Inputs taken and not yet delivered (running, or finished and waiting).
    pub fn in_flight(&self) -> usize {
        self.occupied
    }

    /// Aborts every running task and takes no more input; the stream then ends once the
    /// results that already arrived are delivered.
    ///
    /// A result has arrived when its task finished before this call: it is delivered (in
    /// input order for an [ordered](super::FanOut::ordered) fan-out, skipping the inputs that
    /// were aborted). Tasks still running are aborted and deliver nothing, not even
    /// `Err(Cancelled)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    /// use tidewall::fan_out::FanOut;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let mut results = std::pin::pin!(FanOut::new(4)?.run_iter([1u64, 2, 3, 4], |secs| async move {
    ///     tokio::time::sleep(Duration::from_secs(secs)).await;
    ///     secs
    /// }));
    /// assert_eq!(results.next().await.unwrap().unwrap(), 1);
    /// // Inputs 2 and 3 finish while the consumer is busy; 4 is still running.
    /// tokio::time::sleep(Duration::from_millis(2500)).await;
    /// results.as_mut().abort();
    /// let rest: Vec<u64> = results.map(Result::unwrap).collect().await;
    /// assert_eq!(rest, [2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn abort(self: Pin<&mut Self>) {
        let this = self.project();
        if *this.aborted {
            return;
        }
        // Results reported so far arrived before the abort; whatever comes later is late.
        absorb(this.completions, this.tasks, this.arrived);
        this.tasks.abort_all();
        *this.inputs_done = true;
        *this.aborted = true;
        let waiting =
            std::mem::replace(this.arrived, Arrived::Unordered(VecDeque::new())).into_unordered();
        *this.occupied = waiting.len();
        *this.arrived = Arrived::Unordered(waiting);
    }
}

/// Moves every reported completion into `arrived` and frees its task slot; a cut task's late
/// report only frees its slot. Returns the earliest input (in input order) of the outcomes
/// that end the stream (fail-fast), if one came.
fn absorb<O, H: TaskHandle<()>>(
    completions: &Completions<O>,
    tasks: &mut Tasks<H>,
    arrived: &mut Arrived<O>,
) -> Option<u64> {
    let mut ending = None;
    completions.drain(|done| {
        let Some(slot) = tasks.slots.get_mut(done.slot) else {
            return;
        };
        let was_cut = matches!(slot, Slot::Cut);
        *slot = Slot::Free;
        tasks.free.push(done.slot);
        if was_cut {
            return;
        }
        if completions.ends(&done.outcome) {
            ending = Some(ending.map_or(done.sequence, |e: u64| e.min(done.sequence)));
        }
        arrived.insert(done.sequence, done.outcome);
    });
    ending
}

impl<R, S, F, Fut> Stream for FanOutStream<R, S, F, Fut::Output>
where
    R: Runtime,
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    type Item = Result<Fut::Output, JoinError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.aborted {
                // Late reports of aborted tasks: nothing is owed for them.
                this.completions.drain(drop);
            } else if let Some(failed) = absorb(this.completions, this.tasks, this.arrived) {
                // Fail-fast: the stream ends with this outcome, so a task whose result would
                // come after it (every one still running, or in input order the later inputs)
                // is aborted now rather than when the consumer reaches the failure. In input
                // order, a failure of an earlier input moves the end, and the cut, back.
                let ordered = this.arrived.is_ordered();
                if this.cut.is_none_or(|cut| ordered && failed < cut) {
                    *this.cut = Some(failed);
                    *this.occupied -= this.tasks.cut_after(ordered.then_some(failed));
                }
            }
            let delivered = this.arrived.take_next();
            if delivered.is_some() {
                *this.occupied -= 1;
            }
            // Refill before handing a result out, so the freed slot works while the consumer
            // is busy with this one.
            while !*this.inputs_done && *this.occupied < *this.limit && !this.completions.ending() {
                match this.inputs.as_mut().poll_next(cx) {
                    Poll::Ready(Some(input)) => {
                        let slot = this.tasks.free_slot();
                        let work = report_to(
                            Arc::clone(this.completions),
                            *this.next_sequence,
                            slot,
                            (this.f)(input),
                        );
                        this.tasks.slots[slot] =
                            Slot::Running(this.rt.spawn(work), *this.next_sequence);
                        *this.next_sequence += 1;
                        *this.occupied += 1;
                    }
                    Poll::Ready(None) => *this.inputs_done = true,
                    Poll::Pending => break,
                }
            }
            if delivered.is_some() {
                return Poll::Ready(delivered);
            }
            if *this.inputs_done && *this.occupied == 0 {
                return Poll::Ready(None);
            }
            this.completions.register(cx.waker());
            if !this.completions.is_empty() {
                continue;
            }
            return Poll::Pending;
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = if self.inputs_done {
            (0, Some(0))
        } else {
            self.inputs.size_hint()
        };
        (
            low.saturating_add(self.occupied),
            high.and_then(|h| h.checked_add(self.occupied)),
        )
    }
}

impl<R: Runtime, S, F, O> std::fmt::Debug for FanOutStream<R, S, F, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOutStream")
            .field("limit", &self.limit)
            .field("in_flight", &self.occupied)
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The stream of a fail-fast fan-out; see [`FanOut::try_run`](super::FanOut::try_run).
    #[must_use = "streams do nothing unless polled"]
    pub struct TryFanOutStream<R: Runtime, S, F, T, E> {
        #[pin]
        inner: FanOutStream<R, S, F, Result<T, E>>,
        failed: bool,
    }
}

impl<R: Runtime, S, F, T, E> TryFanOutStream<R, S, F, T, E> {
    pub(super) fn new(inner: FanOutStream<R, S, F, Result<T, E>>) -> Self {
        Self {
            inner,
            failed: false,
        }
    }
}

impl<R, S, F, Fut, T, E> Stream for TryFanOutStream<R, S, F, T, E>
where
    R: Runtime,
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    type Item = Result<T, FanOutError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let error = match std::task::ready!(this.inner.as_mut().poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Ok(Ok(value))) => return Poll::Ready(Some(Ok(value))),
            Some(Ok(Err(error))) => FanOutError::Inner(error),
            Some(Err(join_error)) => FanOutError::Task(join_error),
        };
        *this.failed = true;
        this.inner.abort();
        Poll::Ready(Some(Err(error)))
    }
}

impl<R: Runtime, S, F, T, E> std::fmt::Debug for TryFanOutStream<R, S, F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TryFanOutStream")
            .field("inner", &self.inner)
            .field("failed", &self.failed)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// The in-task fan-out for `!Send` work; see [`FanOut::run_local`](super::FanOut::run_local).
    #[must_use = "streams do nothing unless polled"]
    pub struct LocalFanOut<S, F, Fut> where S: Stream, F: FnMut(S::Item) -> Fut, Fut: Future {
        #[pin]
        inner: Local<S, F, Fut>,
    }
}

pin_project_lite::pin_project! {
    #[project = LocalProj]
    enum Local<S, F, Fut> where S: Stream, F: FnMut(S::Item) -> Fut, Fut: Future {
        Ordered { #[pin] inner: Buffered<Map<S, F>> },
        Unordered { #[pin] inner: BufferUnordered<Map<S, F>> },
    }
}

impl<S, F, Fut> LocalFanOut<S, F, Fut>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    pub(crate) fn new(limit: usize, ordered: bool, inputs: S, f: F) -> Self {
        let mapped = inputs.map(f);
        let inner = if ordered {
            Local::Ordered {
                inner: mapped.buffered(limit),
            }
        } else {
            Local::Unordered {
                inner: mapped.buffer_unordered(limit),
            }
        };
        Self { inner }
    }
}

impl<S, F, Fut> Stream for LocalFanOut<S, F, Fut>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    type Item = Fut::Output;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Fut::Output>> {
        match self.project().inner.project() {
            LocalProj::Ordered { inner } => inner.poll_next(cx),
            LocalProj::Unordered { inner } => inner.poll_next(cx),
        }
    }
}
