//! Regression tests for a docs-against-code review of the runtime seam and the testing tools:
//! one test per finding, each asserting what the public docs promise (quoted above it), so a
//! test fails while the finding's bug is real. The scenario that may hang runs under a
//! real-time hang detector (a bound on hanging, never a timing assertion).
#![cfg(all(feature = "tokio", feature = "smol", feature = "test-util"))]

#[path = "common/hang.rs"]
mod hang;

use std::time::Duration;

use tidewall::rt::{Clock, SmolRuntime, Spawn, Tokio};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::time::FutureExt as _;

use hang::without_hanging;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

// testing: `Clocked::drive` "advances virtual time to the next timer *only when every task is
// idle*, the same rule as tokio's paused time". A future that yields through tokio (whose
// wake tokio holds until it is about to park) is not idle: time must not jump past it.
#[test]
fn drive_moves_no_time_past_a_tokio_yield() {
    let rt = Clocked::new(Tokio);
    let start = rt.now();
    let out = current_thread().block_on(rt.drive({
        let rt = rt.clone();
        async move {
            async {
                tokio::task::yield_now().await;
                7
            }
            .timeout_on(&rt, Duration::from_secs(60))
            .await
        }
    }));
    assert_eq!(out.ok(), Some(7));
    assert_eq!(rt.now() - start, Duration::ZERO);
}

// The same, with tokio's cooperative budget: a long run of ready `recv`s yields to the
// executor every so often (its wake held the same way); none of it takes virtual time.
#[test]
fn drive_moves_no_time_past_tokios_cooperative_budget() {
    let rt = Clocked::new(Tokio);
    let start = rt.now();
    let received = current_thread().block_on(rt.drive({
        let rt = rt.clone();
        async move {
            let (send, mut receive) = tokio::sync::mpsc::unbounded_channel();
            for i in 0..1_000_u32 {
                send.send(i).unwrap();
            }
            async move {
                let mut n = 0;
                while n < 1_000 {
                    receive.recv().await.unwrap();
                    n += 1;
                }
                n
            }
            .timeout_on(&rt, Duration::from_secs(60))
            .await
        }
    }));
    assert_eq!(received.ok(), Some(1_000));
    assert_eq!(rt.now() - start, Duration::ZERO);
}

// The same rule: once the task woken from outside has set its timer and gone idle, every task
// is idle, so time moves to that timer and the drive ends.
#[test]
fn drive_reaches_a_timer_set_by_a_task_woken_from_outside() {
    let waited = without_hanging("a task woken by a thread, then sleeping", || {
        let rt = Clocked::new(Tokio);
        current_thread().block_on(rt.drive({
            let rt = rt.clone();
            async move {
                let start = rt.now();
                let (send, receive) = futures_channel::oneshot::channel::<()>();
                let child = rt.spawn({
                    let rt = rt.clone();
                    async move {
                        receive.await.unwrap();
                        rt.sleep(Duration::from_secs(1)).await;
                    }
                });
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    send.send(()).unwrap();
                });
                child.await.unwrap();
                rt.now() - start
            }
        }))
    });
    assert_eq!(waited, Duration::from_secs(1));
}

// `FakeClock::advance`: "Moves time forward by `by`": advances from several threads at once
// all count.
#[test]
fn fake_clock_advances_from_several_threads_all_count() {
    let clock = FakeClock::new();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    clock.advance(Duration::from_millis(1));
                }
            });
        }
    });
    assert_eq!(clock.elapsed(), Duration::from_secs(40));
}

// `SmolRuntime::multi_threaded`: errors, never a panic or an abort, for a count it cannot
// start.
#[test]
fn a_huge_smol_thread_count_is_an_error() {
    for threads in [usize::MAX, usize::try_from(u32::MAX).unwrap()] {
        let error = SmolRuntime::multi_threaded(threads).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    }
}
