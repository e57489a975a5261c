//! Timeouts, deadlines, fallback, racing and the join-handle contract on every runtime.

mod common;

use common::ms;

use std::time::Duration;

use tidewall::fallback::{self, Fallback};
use tidewall::race::{RaceError, race_ok};
use tidewall::rt::{JoinError, Runtime, TaskHandle};
use tidewall::testing::Scripted;
use tidewall::time::{DeadlineExceeded, Elapsed};
use tidewall::{Deadline, FutureExt};

async fn timeouts_and_deadlines<R: Runtime>(rt: R) {
    let start = rt.now();
    assert_eq!(
        rt.sleep(ms(500)).timeout_on(&rt, ms(100)).await,
        Err(Elapsed)
    );
    assert_eq!(rt.now() - start, ms(100));
    assert_eq!(
        async { 1 }.timeout_on(&rt, Duration::ZERO).await,
        Ok(1),
        "a ready future wins"
    );

    let deadline = Deadline::after(&rt, ms(300));
    assert_eq!(rt.sleep(ms(200)).deadline_on(&rt, deadline).await, Ok(()));
    assert_eq!(
        rt.sleep(ms(200)).deadline_on(&rt, deadline).await,
        Err(DeadlineExceeded)
    );
    assert_eq!(rt.now() - start, ms(400));
    assert_eq!(
        rt.sleep(ms(10)).deadline_on(&rt, Deadline::none()).await,
        Ok(())
    );
}

#[test]
fn timeouts_and_deadlines_on_every_runtime() {
    on_every_runtime!(timeouts_and_deadlines);
}

async fn timeout_with_fallback<R: Runtime>(rt: R) {
    let slow = Scripted::<_, &str, &str>::with_latency(rt.clone(), [(ms(1000), Ok("fresh"))]);
    let result = slow
        .call()
        .timeout_on(&rt, ms(100))
        .or_fallback(fallback::value(Ok("cached")).when(|e: &Elapsed| *e == Elapsed))
        .await;
    assert_eq!(result, Ok(Ok("cached")));

    let secondary =
        Scripted::<_, &str, Elapsed>::with_latency(rt.clone(), [(ms(20), Ok("replica"))]);
    let result = async { Err(Elapsed) }
        .or_fallback(fallback::with_async(|_| secondary.call()))
        .await;
    assert_eq!(result, Ok("replica"));
    let computed = async { Err::<String, _>(404) }.or_fallback(fallback::with(|code: i32| {
        Ok(format!("default for {code}"))
    }));
    assert_eq!(computed.await, Ok("default for 404".to_string()));
}

#[test]
fn fallback_on_every_runtime() {
    on_every_runtime!(timeout_with_fallback);
}

async fn race_takes_the_first_success<R: Runtime>(rt: R) {
    let start = rt.now();
    let fast_bad = Scripted::<_, &str, &str>::with_latency(rt.clone(), [(ms(10), Err("bad"))]);
    let medium = Scripted::with_latency(rt.clone(), [(ms(50), Ok("medium"))]);
    let slow = Scripted::with_latency(rt.clone(), [(ms(900), Ok("slow"))]);
    let winner = race_ok([fast_bad.call(), medium.call(), slow.call()]).await;
    assert_eq!(winner, Ok("medium"));
    assert_eq!(
        rt.now() - start,
        ms(50),
        "the race ends with the first success"
    );

    let all_bad = race_ok([fast_bad.call(), fast_bad.call()]).await;
    assert_eq!(all_bad, Err(RaceError::AllFailed(vec!["bad", "bad"])));
    let none: Vec<std::future::Ready<Result<(), ()>>> = Vec::new();
    assert_eq!(race_ok(none).await, Err(RaceError::Empty));
}

#[test]
fn race_on_every_runtime() {
    on_every_runtime!(race_takes_the_first_success);
}

async fn join_handles_report_panics_and_aborts_alike<R: Runtime>(rt: R) {
    assert_eq!(rt.spawn(async { 5 }).await.unwrap(), 5);
    match rt.spawn(async { panic!("boom") }).await {
        Err(JoinError::Panicked(panic)) => assert_eq!(panic.message(), Some("boom")),
        other => panic!("expected a panic, got {other:?}"),
    }
    let sleeper = rt.clone();
    let stuck = rt.spawn(async move { sleeper.sleep(Duration::from_secs(3600)).await });
    stuck.abort();
    assert!(matches!(stuck.await, Err(JoinError::Cancelled)));
    assert_eq!(rt.spawn_blocking(|| 6 * 7).await.unwrap(), 42);
    let blocking_panic = rt
        .spawn_blocking(|| -> u8 { panic!("blocking boom") })
        .await;
    assert!(
        matches!(blocking_panic, Err(JoinError::Panicked(p)) if p.message() == Some("blocking boom"))
    );
}

#[test]
fn join_handle_contract_on_every_runtime() {
    on_every_runtime!(join_handles_report_panics_and_aborts_alike);
}

#[test]
fn adapters_without_virtual_time_honour_the_contract_too() {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(join_handles_report_panics_and_aborts_alike(
        tidewall::rt::Tokio,
    ));
    let smol = tidewall::rt::SmolRuntime::multi_threaded(1).unwrap();
    smol.block_on(join_handles_report_panics_and_aborts_alike(smol.handle()));
    async_std::task::block_on(join_handles_report_panics_and_aborts_alike(
        tidewall::rt::AsyncStd,
    ));
}

#[test]
fn smol_rejects_zero_threads() {
    let err = tidewall::rt::SmolRuntime::multi_threaded(0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let config = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<tidewall::ConfigError>());
    assert_eq!(
        config,
        Some(&tidewall::ConfigError::Zero { field: "threads" })
    );
}
