//! Live reload: a new configuration applied while calls run, in virtual time. Nothing in
//! flight is revoked or lost, state survives a change that keeps its shape, and a bad
//! configuration changes nothing.
#![cfg(feature = "toml")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tidewall::Rejected;
use tidewall::breaker::State;
use tidewall::config::{Config, Problem, Registry};

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("a valid configuration")
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn shrinking_a_bulkhead_under_load_revokes_nothing_and_loses_no_call() {
    let registry = Arc::new(
        Registry::new(config(
            "[instances.orders.bulkhead]\nmax_concurrent = 4\nmax_queue = 16\nmax_wait = \"1m\"\n",
        ))
        .unwrap(),
    );
    let running = Arc::new(AtomicUsize::new(0));
    let most_after_drain = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut calls = Vec::new();
    for i in 0..16u64 {
        let (registry, running, most, drained) = (
            Arc::clone(&registry),
            Arc::clone(&running),
            Arc::clone(&most_after_drain),
            Arc::clone(&drained),
        );
        calls.push(tokio::spawn(async move {
            // Each call asks the registry, as a handler would, and waits its turn.
            tokio::time::sleep(Duration::from_millis(i * 50)).await;
            let bulkhead = registry.bulkhead("orders").unwrap();
            let permit = bulkhead.acquire().await.expect("queued long enough");
            let now = running.fetch_add(1, SeqCst) + 1;
            if drained.load(SeqCst) {
                most.fetch_max(now, SeqCst);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            running.fetch_sub(1, SeqCst);
            drop(permit);
        }));
    }
    // Mid-traffic: four calls hold permits, more are queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bulkhead = registry.bulkhead("orders").unwrap();
    assert_eq!(bulkhead.in_flight(), 4);
    let reload = registry
        .reload(config(
            "[instances.orders.bulkhead]\nmax_concurrent = 2\nmax_queue = 16\nmax_wait = \"1m\"\n",
        ))
        .unwrap();
    assert_eq!(reload.retuned, 1);
    assert_eq!(
        (bulkhead.capacity(), bulkhead.in_flight()),
        (2, 4),
        "nothing revoked"
    );
    // Once the four held before the reload are back, at most two run at a time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drained.store(true, SeqCst);
    for call in calls {
        call.await.expect("every call completes");
    }
    assert!(
        most_after_drain.load(SeqCst) <= 2,
        "{}",
        most_after_drain.load(SeqCst)
    );
    assert_eq!((bulkhead.in_flight(), bulkhead.available()), (0, 2));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn growing_a_bulkhead_hands_the_new_permits_to_queued_calls() {
    let registry = Registry::new(config(
        "[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 4\nmax_wait = \"1m\"\n",
    ))
    .unwrap();
    let bulkhead = registry.bulkhead("a").unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let waiter = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move {
            bulkhead
                .acquire_owned(tidewall::Deadline::none())
                .await
                .map(drop)
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(bulkhead.queued(), 1);
    registry
        .reload(config(
            "[instances.a.bulkhead]\nmax_concurrent = 2\nmax_queue = 4\nmax_wait = \"1m\"\n",
        ))
        .unwrap();
    assert_eq!(
        waiter.await.unwrap(),
        Ok(()),
        "the new permit went to the queued call"
    );
    drop(held);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breaker_keeps_its_state_and_window_when_the_shape_stays() {
    let text = |rate: f64, calls: u32| {
        format!(
            "[instances.p.breaker]\nfailure_rate = {rate}\nminimum_calls = 4\nwindow_calls = {calls}\nbreak_duration = \"10s\"\n"
        )
    };
    let registry = Registry::new(config(&text(0.9, 10))).unwrap();
    let breaker = registry.breaker("p").unwrap();
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed, "3 of 4 is under 90 %");
    let reload = registry.reload(config(&text(0.5, 10))).unwrap();
    assert!(reload.reset.is_empty());
    assert_eq!(breaker.counts().calls, 4, "the window's calls were kept");
    assert_eq!(
        breaker.state(),
        State::Open,
        "3 of 4 reaches the new 50 %, judged at the reload"
    );

    // Open: a same-shape reload keeps it open for its break.
    registry.reload(config(&text(0.6, 10))).unwrap();
    assert_eq!(breaker.state(), State::Open);
    assert!(matches!(
        breaker.try_acquire(),
        Err(Rejected::CircuitOpen { .. })
    ));

    // Another window length: reset to closed, named in the report.
    let reload = registry.reload(config(&text(0.6, 20))).unwrap();
    assert_eq!(reload.reset, ["p"]);
    assert_eq!(
        (breaker.state(), breaker.counts().calls),
        (State::Closed, 0)
    );
    assert_eq!(
        breaker.policy().window(),
        tidewall::breaker::Window::Count { calls: 20 }
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_in_flight_across_a_reset_keeps_its_permit_and_is_ignored() {
    let registry = Registry::new(config(
        "[instances.p.breaker]\nconsecutive_failures = 1\nfailure_rate = \"off\"\nwindow_calls = 10\n",
    ))
    .unwrap();
    let breaker = registry.breaker("p").unwrap();
    let permit = breaker.try_acquire_owned().unwrap();
    registry
        .reload(config(
            "[instances.p.breaker]\nconsecutive_failures = 1\nfailure_rate = \"off\"\nwindow_calls = 20\n",
        ))
        .unwrap();
    permit.failure();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "an outcome from before the reset is ignored"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_limit_changes_mid_traffic_without_readmitting_a_burst() {
    let registry = Registry::new(config(
        "[instances.s.rate_limit]\ncount = 10\nperiod = \"1s\"\nburst = 10\n",
    ))
    .unwrap();
    let limiter = registry.rate_limiter("s").unwrap();
    assert_eq!(
        (0..20).filter(|_| limiter.check().is_ok()).count(),
        10,
        "the burst"
    );
    registry
        .reload(config(
            "[instances.s.rate_limit]\ncount = 100\nperiod = \"1s\"\nburst = 10\n",
        ))
        .unwrap();
    assert!(
        limiter.check().is_err(),
        "the cells already admitted still count"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        (0..20).filter(|_| limiter.check().is_ok()).count(),
        10,
        "the new rate pays 10 cells back in 100 ms"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_invalid_configuration_changes_nothing() {
    let before = "[defaults.bulkhead]\nmax_concurrent = 3\n[instances.a.breaker]\nconsecutive_failures = 2\n[instances.a.bulkhead]\nmax_queue = 0\n";
    let registry = Registry::new(config(before)).unwrap();
    let breaker = registry.breaker("a").unwrap();
    let bulkhead = registry.bulkhead("a").unwrap();
    let on_demand = registry.bulkhead("other").unwrap();
    let snapshot = registry.config();

    // A rule broken: refused with its key path.
    let mut bad = config(before);
    bad.instances
        .get_mut("a")
        .unwrap()
        .breaker
        .as_mut()
        .unwrap()
        .consecutive_failures = Some(0);
    let err = registry.reload(bad).unwrap_err();
    assert_eq!(err.path(), "instances.a.breaker.consecutive_failures");

    // Valid on its own, but the bulkhead the registry made for "other" from the defaults
    // would lose its max_concurrent: refused whole, the breaker (planned first) untouched.
    let err = registry
        .reload(config(
            "[instances.a.breaker]\nconsecutive_failures = 9\n[instances.a.bulkhead]\nmax_concurrent = 3\nmax_queue = 0\n",
        ))
        .unwrap_err();
    assert_eq!(err.path(), "defaults.bulkhead.max_concurrent");
    assert_eq!(err.problem(), &Problem::Missing);
    assert_eq!(
        *registry.config(),
        *snapshot,
        "the old configuration is in force"
    );
    assert_eq!((bulkhead.capacity(), on_demand.capacity()), (3, 3));
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open, "still two failures, not nine");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_builds_new_instances_and_keeps_removed_ones_on_the_defaults() {
    let registry = Registry::new(config(
        "[defaults.bulkhead]\nmax_concurrent = 5\n[instances.old.bulkhead]\nmax_concurrent = 1\n",
    ))
    .unwrap();
    let old = registry.bulkhead("old").unwrap();
    let reload = registry
        .reload(config(
            "[defaults.bulkhead]\nmax_concurrent = 5\n[instances.new.bulkhead]\nmax_concurrent = 2\n[instances.new.breaker]\nconsecutive_failures = 1\n",
        ))
        .unwrap();
    assert_eq!((reload.retuned, reload.built), (1, 2));
    assert_eq!(old.capacity(), 5, "no longer declared: the defaults");
    assert_eq!(registry.bulkhead("new").unwrap().capacity(), 2);
    let names: Vec<_> = registry
        .bulkheads()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(names, ["new", "old"]);
}

#[test]
fn a_retry_budget_keeps_its_counts_when_its_window_stays() {
    let text = |ratio: f64, window: &str| {
        format!(
            "[instances.b.budget]\nratio = {ratio}\nmin_per_second = 0\nwindow = \"{window}\"\n"
        )
    };
    let clock = tidewall::testing::FakeClock::new();
    let registry = Registry::builder(config(&text(0.1, "10s")))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let budget = registry.retry_budget("b").unwrap();
    let now = tidewall::rt::Clock::now(&clock);
    (0..100).for_each(|_| budget.deposit(now));
    assert_eq!((0..50).filter(|_| budget.try_withdraw(now)).count(), 10);
    registry.reload(config(&text(0.3, "10s"))).unwrap();
    assert_eq!(
        (0..50).filter(|_| budget.try_withdraw(now)).count(),
        20,
        "30 of 100 in all"
    );
    registry.reload(config(&text(0.3, "20s"))).unwrap();
    assert_eq!(
        (0..50).filter(|_| budget.try_withdraw(now)).count(),
        0,
        "a new window is empty"
    );
}

/// The file is replaced the way editors and deployments do it (a new file renamed over the
/// old): the registry reloads, and a bad edit is reported while the old settings stay.
#[cfg(feature = "watch")]
#[test]
fn a_watched_file_reloads_the_registry_and_a_bad_edit_keeps_the_old_one() {
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    let replace = |text: &str| {
        let next = dir.path().join("tidewall.toml.new");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &path).unwrap();
    };
    replace("[instances.a.bulkhead]\nmax_concurrent = 2\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let text = std::fs::read_to_string(&path).unwrap();
        let registry = Arc::new(Registry::new(config(&text)).unwrap());
        let bulkhead = registry.bulkhead("a").unwrap();
        let mut reloads = tidewall::config::watch_file_on(
            &tidewall::rt::Tokio,
            Arc::clone(&registry),
            &path,
            Duration::from_millis(50),
        )
        .unwrap();

        // The OS may report one replacement in more than one debounced batch, so an edit can
        // bring more than one reload of the same text: read until the edit shows.
        replace("[instances.a.bulkhead]\nmax_concurrent = 7\n");
        for _ in 0..10 {
            let reload = reloads.next().await.unwrap().expect("a valid edit");
            assert_eq!(reload.retuned, 1);
            if bulkhead.capacity() == 7 {
                break;
            }
        }
        assert_eq!(
            bulkhead.capacity(),
            7,
            "the handle got before sees the new limit"
        );

        replace("[instances.a.bulkhead]\nmax_concurrent = 0\n");
        let refused = loop {
            match reloads.next().await.unwrap() {
                Ok(_) => assert_eq!(bulkhead.capacity(), 7, "only the valid edit again"),
                Err(refused) => break refused,
            }
        };
        assert_eq!(refused.path(), "instances.a.bulkhead.max_concurrent");
        assert_eq!(bulkhead.capacity(), 7, "the old settings stay");
    });
}

/// Docs (`watch_file_on`): "a change of what it resolves to is a change of the file: a
/// Kubernetes ConfigMap volume updates its files by swapping the `..data` link beside them".
/// The layout a ConfigMap volume has: `tidewall.toml -> ..data/tidewall.toml`,
/// `..data -> ..v1`; an update writes `..v2` and renames a new `..data` link over the old
/// (audit s35: no event ever named the file, and nothing reloaded).
#[cfg(all(feature = "watch", unix))]
#[test]
fn a_watched_configmap_reloads_when_its_data_link_swaps() {
    use futures_util::StreamExt;
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("tidewall.toml"), text).unwrap();
    };
    version("..v1", "[instances.a.bulkhead]\nmax_concurrent = 2\n");
    symlink("..v1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("tidewall.toml");
    symlink("..data/tidewall.toml", &path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let text = std::fs::read_to_string(&path).unwrap();
        let registry = Arc::new(Registry::new(config(&text)).unwrap());
        let bulkhead = registry.bulkhead("a").unwrap();
        let mut reloads = tidewall::config::watch_file_on(
            &tidewall::rt::Tokio,
            Arc::clone(&registry),
            &path,
            Duration::from_millis(50),
        )
        .unwrap();
        version("..v2", "[instances.a.bulkhead]\nmax_concurrent = 9\n");
        symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(dir.path().join("..v1")).unwrap();
        // A hang guard only: the watcher's events come in real time.
        let reload = tokio::time::timeout(Duration::from_secs(30), reloads.next())
            .await
            .expect("the swap was seen")
            .unwrap()
            .expect("a valid configuration");
        assert_eq!(reload.retuned, 1);
        assert_eq!(bulkhead.capacity(), 9);
    });
}

/// Docs (`Registry::reload`): "A listener that panics as the reload applies (told of a reset
/// it causes, say) leaves no reload half done: every policy still takes its settings and the
/// reload is counted as applied; then the first such panic goes on to the caller." The
/// reshaped window of `a`'s breaker resets it, and the listener panics on that event; the
/// bulkhead and the breaker after it take their settings all the same.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_mid_reload_leaves_it_whole() {
    let old = "[instances.a.breaker]\nwindow_calls = 100\n\
               [instances.z.breaker]\nwindow_calls = 100\n\
               [instances.a.bulkhead]\nmax_concurrent = 4\nmax_queue = 0\n";
    let new = "[instances.a.breaker]\nwindow_calls = 50\n\
               [instances.z.breaker]\nwindow_calls = 30\n\
               [instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n";
    let registry = Registry::builder(config(old))
        .on_event(|event| {
            if matches!(event.kind, tidewall::telemetry::EventKind::StateChanged(_)) {
                panic!("the listener panics (on purpose)");
            }
        })
        .build()
        .unwrap();
    let (a, z) = (
        registry.breaker("a").unwrap(),
        registry.breaker("z").unwrap(),
    );
    let bulkhead = registry.bulkhead("a").unwrap();
    let reloaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        registry.reload(config(new))
    }));
    assert!(reloaded.is_err(), "the listener's panic reaches the caller");
    assert_eq!(bulkhead.capacity(), 1, "the bulkhead took its settings");
    let windows = [a.policy().window(), z.policy().window()];
    assert_eq!(
        windows,
        [
            tidewall_core::breaker::Window::Count { calls: 50 },
            tidewall_core::breaker::Window::Count { calls: 30 },
        ],
        "both breakers took theirs"
    );
    assert_eq!(
        registry.config().instances["a"]
            .bulkhead
            .as_ref()
            .and_then(|b| b.max_concurrent),
        Some(1)
    );
    // The registry is not left locked or marked as reloading: the way back applies too (its
    // resets panic again).
    let back = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        registry.reload(config(old))
    }));
    assert!(back.is_err());
    assert_eq!(bulkhead.capacity(), 4);
    assert_eq!(
        a.policy().window(),
        tidewall_core::breaker::Window::Count { calls: 100 }
    );
}
