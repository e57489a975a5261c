//! `FanOutStream::abort` at the stream level, in tokio's paused time.
#![cfg(feature = "tokio")]

use std::pin::pin;
use std::time::Duration;

use futures_util::{FutureExt as _, Stream as _, StreamExt as _};

use super::FanOut;

/// Sleeps `secs` seconds, then answers it.
async fn after(secs: u64) -> u64 {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    secs
}

#[tokio::test(start_paused = true)]
async fn abort_keeps_the_results_that_arrived() {
    let mut results = pin!(FanOut::new(3).unwrap().run_iter([1, 2, 9], after));
    assert!(
        results.next().now_or_never().is_none(),
        "three tasks started"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    results.as_mut().abort();
    assert_eq!(results.in_flight(), 2);
    assert_eq!(results.size_hint(), (2, Some(2)));
    let rest: Vec<u64> = results.map(Result::unwrap).collect().await;
    assert_eq!(rest, [1, 2], "the aborted task reports no `Cancelled`");
}

#[tokio::test(start_paused = true)]
async fn an_ordered_abort_closes_the_gaps_of_aborted_inputs() {
    let mut results = pin!(
        FanOut::new(4)
            .unwrap()
            .ordered()
            .run_iter([9, 3, 1, 9], after)
    );
    assert!(results.next().now_or_never().is_none());
    tokio::time::sleep(Duration::from_secs(5)).await;
    results.as_mut().abort();
    let rest: Vec<u64> = results.map(Result::unwrap).collect().await;
    assert_eq!(rest, [3, 1], "input order, without the aborted head");
}

#[tokio::test(start_paused = true)]
async fn an_abort_with_nothing_arrived_ends_the_stream() {
    let mut results = pin!(FanOut::new(2).unwrap().run_iter([5, 6, 7], after));
    assert!(results.next().now_or_never().is_none());
    results.as_mut().abort();
    assert_eq!(results.in_flight(), 0);
    assert!(results.next().await.is_none());
}
