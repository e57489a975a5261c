//! A stream produced by an async closure through a bounded channel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::mpsc;
use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::ConfigError;

/// The producing side of a [`generator`](super::generator): `yield_(item).await` hands one
/// item over, waiting while the buffer is full (backpressure).
#[derive(Debug)]
pub struct Yielder<T> {
    tx: mpsc::Sender<T>,
}

impl<T> Yielder<T> {
    /// Hands `item` to the stream, waiting for room in the buffer. Returns `false` once the
    /// consumer has dropped the stream (the producer should stop). The producer future
    /// itself lives in the stream and is dropped with it, so only a `Yielder` moved elsewhere
    /// (into a task of its own) can see `false`.
    ///
    /// **Cancel safety:** dropping the future drops `item` unsent.
    pub async fn yield_(&mut self, item: T) -> bool {
        if std::future::poll_fn(|cx| self.tx.poll_ready(cx))
            .await
            .is_err()
        {
            return false;
        }
        self.tx.start_send(item).is_ok()
    }
}

pin_project! {
    /// The stream of a [`generator`](super::generator). The producer runs inside this stream's
    /// `poll_next` (no task is spawned), so it advances only while the stream is polled and
    /// at most `capacity` items wait between the two.
    #[must_use = "streams do nothing unless polled"]
    pub struct Generator<T, F> {
        #[pin]
        producer: Option<F>,
        rx: mpsc::Receiver<T>,
    }
}

/// The most items a generator may run ahead of its consumer.
const MAX_CAPACITY: usize = 1 << 30;

pub(super) fn new<T, F, Fut>(capacity: usize, produce: F) -> Result<Generator<T, Fut>, ConfigError>
where
    F: FnOnce(Yielder<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    if capacity == 0 {
        return Err(ConfigError::Zero { field: "capacity" });
    }
    // futures' channel keeps its capacity in a word it shares with a flag, and panics past
    // this; nobody needs a generator that far ahead of its consumer.
    if capacity > MAX_CAPACITY {
        return Err(ConfigError::OutOfRange {
            field: "capacity",
            // Reported as f64: exact for any capacity that fits the bound.
            #[allow(clippy::cast_precision_loss)]
            value: capacity as f64,
            allowed: "at most 2^30",
        });
    }
    // mpsc's buffer is `capacity` plus one slot per sender; with one sender, `capacity - 1`
    // gives exactly `capacity` queued items.
    let (tx, rx) = mpsc::channel(capacity - 1);
    Ok(Generator {
        producer: Some(produce(Yielder { tx })),
        rx,
    })
}

impl<T, F: Future<Output = ()>> Stream for Generator<T, F> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut this = self.project();
        if let Some(producer) = this.producer.as_mut().as_pin_mut()
            && producer.poll(cx).is_ready()
        {
            // Finished: its `Yielder` is dropped, so the channel ends after what it holds.
            this.producer.set(None);
        }
        Pin::new(this.rx).poll_next(cx)
    }
}
