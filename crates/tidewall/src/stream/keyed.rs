//! A merge of many keyed streams whose cost per delivered item does not grow with their number.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use futures_util::task::AtomicWaker;

/// What a [`KeyedMerge`] yields: an item from the stream with that key, or the notice that
/// the stream ended (it has then been removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyed<K, T> {
    /// The next item of the stream registered under the key.
    Item(K, T),
    /// That stream ended.
    Ended(K),
}

/// Merges any number of streams, each under a key, polling only the streams that woke.
///
/// Unlike a merge that polls every stream on every wake-up (tokio-stream's `StreamMap` is
/// O(n) per poll), each stream gets its own waker that queues its index; `poll_next` polls
/// only queued streams, so the cost of a ready item does not depend on how many streams are
/// idle. Fairness: ready streams are served round-robin (a stream that yielded goes to the
/// back of the queue). A stream that ends is removed and reported with [`Keyed::Ended`].
/// When no stream is left, the merge yields `None` (insert more and poll again to continue).
///
/// ```
/// use futures_util::{StreamExt, stream};
/// use tidewall::stream::{Keyed, KeyedMerge};
///
/// # futures_util::FutureExt::now_or_never(async {
/// let mut merge = KeyedMerge::new();
/// merge.insert("a", stream::iter(vec![1, 2]));
/// merge.insert("b", stream::iter(vec![10]));
/// let mut seen: Vec<Keyed<&str, i32>> = merge.collect().await;
/// seen.sort_by_key(|k| format!("{k:?}"));
/// assert_eq!(seen.len(), 5, "three items and two end notices");
/// assert!(seen.contains(&Keyed::Ended("a")));
/// # }).unwrap();
/// ```
pub struct KeyedMerge<K, S> {
    entries: Vec<Option<Entry<K, S>>>,
    free: Vec<usize>,
    ready: Arc<ReadyQueue>,
    live: usize,
}

struct Entry<K, S> {
    key: K,
    stream: Pin<Box<S>>,
    signal: Arc<EntryWaker>,
    // Built once from `signal`, so polling a stream clones no `Arc`.
    waker: Waker,
}

#[derive(Default)]
struct ReadyQueue {
    indices: Mutex<VecDeque<usize>>,
    consumer: AtomicWaker,
}

struct EntryWaker {
    index: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl EntryWaker {
    fn enqueue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready
                .indices
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(self.index);
            self.ready.consumer.wake();
        }
    }
}

impl Wake for EntryWaker {
    fn wake(self: Arc<Self>) {
        self.enqueue();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.enqueue();
    }
}

/// Streams polled per `poll_next` call before yielding to the executor, so one merge with
/// many busy-but-pending streams cannot monopolize its task.
const POLL_BUDGET: usize = 64;

impl<K, S> Default for KeyedMerge<K, S> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            ready: Arc::default(),
            live: 0,
        }
    }
}

impl<K, S> KeyedMerge<K, S> {
    /// An empty merge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `stream` under `key` (keys need not be unique; each insert is its own stream).
    pub fn insert(&mut self, key: K, stream: S) {
        let index = self.free.pop().unwrap_or(self.entries.len());
        let waker = Arc::new(EntryWaker {
            index,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        let entry = Some(Entry {
            key,
            stream: Box::pin(stream),
            signal: Arc::clone(&waker),
            waker: Waker::from(Arc::clone(&waker)),
        });
        if index == self.entries.len() {
            self.entries.push(entry);
        } else {
            self.entries[index] = entry;
        }
        self.live += 1;
        waker.enqueue();
    }

    /// Streams still merged.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no stream is merged.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

impl<K, S> std::fmt::Debug for KeyedMerge<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedMerge")
            .field("streams", &self.live)
            .finish_non_exhaustive()
    }
}

impl<K, S> Unpin for KeyedMerge<K, S> {}

impl<K: Clone, S: Stream> Stream for KeyedMerge<K, S> {
    type Item = Keyed<K, S::Item>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.live == 0 {
            return Poll::Ready(None);
        }
        this.ready.consumer.register(cx.waker());
        for _ in 0..POLL_BUDGET {
            let next = this
                .ready
                .indices
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            let Some(index) = next else {
                return Poll::Pending;
            };
            // A wake-up for a stream removed since (its slot possibly reused) is harmless:
            // the slot is polled once more, or skipped if empty.
            let Some(entry) = this.entries.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            entry.signal.queued.store(false, Ordering::Release);
            match entry
                .stream
                .as_mut()
                .poll_next(&mut Context::from_waker(&entry.waker))
            {
                Poll::Ready(Some(item)) => {
                    // It may have more ready: back of the queue, round-robin.
                    entry.signal.enqueue();
                    return Poll::Ready(Some(Keyed::Item(entry.key.clone(), item)));
                }
                Poll::Ready(None) => {
                    let ended = this.entries[index].take().map(|e| e.key);
                    this.free.push(index);
                    this.live -= 1;
                    if let Some(key) = ended {
                        return Poll::Ready(Some(Keyed::Ended(key)));
                    }
                }
                Poll::Pending => {}
            }
        }
        // Budget spent with streams still queued: come back after the executor's other work.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
