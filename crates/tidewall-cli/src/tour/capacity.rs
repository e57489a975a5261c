//! A dependency with a capacity, behind the service's `/capacity` route: it serves at most
//! `slots` requests at once, each for `service`, and queues the rest in arrival order, so
//! latency grows with load (the overload simulation's model, docs/ADAPTIVE.md).
//!
//! As there, a request whose client gave up is served anyway: the work runs as its own task,
//! so hyper dropping the handler when the client goes away does not take it off the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::Semaphore;

/// One dependency; clones share its slots and queue.
#[derive(Clone, Debug)]
pub(crate) struct Capacity {
    /// Fair: a free slot goes to the request that has waited longest.
    slots: Arc<Semaphore>,
    service: Duration,
    /// Requests taken and not yet served (queued or in service), given up on or not.
    backlog: Arc<AtomicUsize>,
}

impl Capacity {
    /// `None` for no slots (nothing would ever be served) or more than a semaphore holds.
    pub(crate) fn new(slots: usize, service: Duration) -> Option<Self> {
        (1..=Semaphore::MAX_PERMITS).contains(&slots).then(|| Self {
            slots: Arc::new(Semaphore::new(slots)),
            service,
            backlog: Arc::default(),
        })
    }

    /// Serves one request: waits for a slot behind every request taken before it, then holds
    /// the slot for the service time. Runs on the tokio runtime it is called on. Dropping the
    /// future (the client went away) leaves the request queued: it is served all the same.
    pub(crate) async fn serve(&self) {
        let (slots, service, backlog) = (
            Arc::clone(&self.slots),
            self.service,
            Arc::clone(&self.backlog),
        );
        backlog.fetch_add(1, SeqCst);
        let work = tokio::spawn(async move {
            // Never closed: an error cannot happen, and would only skip the wait.
            let _slot = slots.acquire_owned().await;
            tokio::time::sleep(service).await;
            backlog.fetch_sub(1, SeqCst);
        });
        let _ = work.await;
    }

    /// Requests taken and not yet served, abandoned ones included.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::future::join_all;
    use tokio::time::Instant;

    use super::Capacity;

    const SERVICE: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_slots_is_refused() {
        assert!(Capacity::new(0, SERVICE).is_none());
        assert!(Capacity::new(1, SERVICE).is_some());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn serves_slots_at_once_and_queues_the_rest_in_arrival_order() {
        let capacity = Capacity::new(2, SERVICE).unwrap();
        let start = Instant::now();
        let done = join_all((0..5).map(|_| async {
            capacity.serve().await;
            start.elapsed()
        }))
        .await;
        // Two at a time, each 20 ms: the i-th request waits for the i / 2 waves before it.
        assert_eq!(done, [ms(20), ms(20), ms(40), ms(40), ms(60)]);
        assert_eq!(capacity.backlog(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn latency_grows_with_the_queue() {
        let capacity = Capacity::new(4, SERVICE).unwrap();
        let start = Instant::now();
        let done = join_all((0..40).map(|_| async {
            capacity.serve().await;
            start.elapsed()
        }))
        .await;
        // 40 requests at once on 4 slots: the last waits for 9 waves, then is served.
        assert_eq!(done.first(), Some(&ms(20)));
        assert_eq!(done.last(), Some(&ms(200)));
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "FIFO: {done:?}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_request_given_up_on_keeps_its_place_and_is_served_anyway() {
        let capacity = Capacity::new(1, SERVICE).unwrap();
        let start = Instant::now();
        let abandoned = tokio::time::timeout(ms(5), capacity.serve());
        let next = async {
            capacity.serve().await;
            start.elapsed()
        };
        let watch = async {
            tokio::time::sleep(ms(10)).await;
            capacity.backlog()
        };
        let (gave_up, next_done, backlog_after_giving_up) = tokio::join!(abandoned, next, watch);
        assert!(gave_up.is_err(), "the client gave up after 5 ms");
        assert_eq!(
            backlog_after_giving_up, 2,
            "both are still at the dependency"
        );
        // The abandoned request still took its 20 ms of the only slot.
        assert_eq!(next_done, ms(40));
        assert_eq!(capacity.backlog(), 0);
    }
}
