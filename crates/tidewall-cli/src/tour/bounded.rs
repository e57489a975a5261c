//! Bounds on the tour's waits. A section whose pattern misbehaves (a supervisor that never
//! escalates or stops, a scope, pool or stream that never ends, a signal that never arrives,
//! calls that never reach the server) must end in a failed check, not keep the tour from its
//! report. Every HTTP request gives up after
//! [`REQUEST_LIMIT`](super::client::REQUEST_LIMIT). Every other wait on a pattern that waits
//! by itself (on tasks, timers, a queue, a signal, a reload) goes through here, unless the
//! pattern bounds it (a deadline, a timeout, a bulkhead's `max_wait`, a retry's attempts) and
//! the section checks that bound. The bounds are tens of seconds of the runtime's clock,
//! against the fraction of a second a correct pattern needs.

use std::future::Future;
use std::time::Duration;

use tidewall::FutureExt as _;
use tidewall::rt::{Clock, instant_after};
use tidewall::task::CancellationToken;

use super::report::Section;

/// `future`'s output, or `None` once `limit` has passed on `rt`'s clock (then `future` is
/// dropped).
pub(crate) async fn within<R: Clock, F: Future>(
    rt: &R,
    limit: Duration,
    future: F,
) -> Option<F::Output> {
    future.timeout_on(rt, limit).await.ok()
}

/// Checks `ready` every `every` until it holds or `limit` has passed; whether it held.
pub(crate) async fn until<R: Clock>(
    rt: &R,
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let deadline = instant_after(rt.now(), limit);
    loop {
        if ready() {
            return true;
        }
        if rt.now() >= deadline {
            return false;
        }
        rt.sleep(every).await;
    }
}

/// How a run bounded by [`or_stop`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bounded<T> {
    /// On its own, within the limit.
    Ended(T),
    /// The limit passed; told to stop, it ended with this.
    Stopped(T),
    /// The limit passed, and it did not end within the stop limit either.
    Stuck,
}

/// Runs `run` (which watches `stop`) for at most `limit`; past that, cancels `stop` with
/// `reason` and waits at most `stop_limit` more for it to end.
pub(crate) async fn or_stop<R: Clock, F: Future>(
    rt: &R,
    (limit, stop_limit): (Duration, Duration),
    stop: &CancellationToken,
    reason: &str,
    run: F,
) -> Bounded<F::Output> {
    let mut run = std::pin::pin!(run);
    if let Some(output) = within(rt, limit, run.as_mut()).await {
        return Bounded::Ended(output);
    }
    stop.cancel(reason);
    match within(rt, stop_limit, run).await {
        Some(output) => Bounded::Stopped(output),
        None => Bounded::Stuck,
    }
}

/// `s` with a failed check that `what` happened within `limit`: the section of a wait that
/// ran out, ended there.
pub(crate) fn missed(mut s: Section, what: &str, limit: Duration) -> Section {
    s.check(&format!("{what} within {}", secs(limit)), false);
    s
}

/// "30 s", for check texts.
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tidewall::rt::{Clock, Tokio};
    use tidewall::task::CancellationToken;

    use super::{Bounded, or_stop, until, within};

    /// Virtual time: a 30 s bound costs the test nothing and lands exactly.
    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_future_that_is_never_ready_is_given_up_on_at_the_limit() {
        paused().block_on(async {
            let start = Tokio.now();
            let limit = Duration::from_secs(30);
            assert_eq!(
                within(&Tokio, limit, std::future::pending::<()>()).await,
                None
            );
            assert_eq!(Tokio.now() - start, limit);
            assert_eq!(within(&Tokio, limit, async { 7 }).await, Some(7));
        });
    }

    #[test]
    fn a_condition_that_never_holds_ends_the_wait_at_the_limit() {
        paused().block_on(async {
            let start = Tokio.now();
            let limit = Duration::from_secs(20);
            let never = until(&Tokio, limit, Duration::from_millis(2), || false).await;
            assert!(!never);
            let waited = Tokio.now() - start;
            assert!(
                waited >= limit && waited <= limit + Duration::from_millis(2),
                "{waited:?}"
            );
            let mut checks = 0;
            let soon = until(&Tokio, limit, Duration::from_millis(2), || {
                checks += 1;
                checks == 3
            })
            .await;
            assert!(soon);
            assert_eq!(checks, 3);
        });
    }

    #[test]
    fn a_run_past_its_limit_is_stopped_and_one_that_ignores_the_stop_is_given_up_on() {
        paused().block_on(async {
            let limits = (Duration::from_secs(30), Duration::from_secs(10));
            // Ends on its own.
            let stop = CancellationToken::new();
            let quick = or_stop(&Tokio, limits, &stop, "late", async { 1 }).await;
            assert_eq!(quick, Bounded::Ended(1));
            assert!(!stop.is_cancelled());
            // Never ends on its own, but heeds its token: stopped at 30 s.
            let start = Tokio.now();
            let stop = CancellationToken::new();
            let watcher = stop.clone();
            let heeds = or_stop(&Tokio, limits, &stop, "late", async move {
                watcher.cancelled().await;
                2
            })
            .await;
            assert_eq!(heeds, Bounded::Stopped(2));
            assert_eq!(Tokio.now() - start, limits.0);
            assert_eq!(stop.reason().unwrap().as_str(), "late");
            // Ignores its token too: given up on 10 s later.
            let start = Tokio.now();
            let stop = CancellationToken::new();
            let stuck = or_stop(&Tokio, limits, &stop, "late", std::future::pending::<u8>()).await;
            assert_eq!(stuck, Bounded::Stuck);
            assert_eq!(Tokio.now() - start, limits.0 + limits.1);
        });
    }
}
