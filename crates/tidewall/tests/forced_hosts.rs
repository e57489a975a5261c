//! A breaker forced open or closed by hand stays forced through a reconfiguration that
//! reshapes its window (a reload must not undo an operator), and a keyed table's key can be
//! forced before its first call (`get_or_make`), held until it is reset.
#![cfg(all(feature = "toml", feature = "http", feature = "tokio"))]

mod support;

use support::forced::{
    down_before_its_first_request, force, listened, reload_window, request, take,
};
use tidewall::Rejected;
use tidewall::breaker::{CircuitBreaker, Reconfigured, State, Window};

fn count(calls: u32) -> tidewall::breaker::CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(2)
        .window(Window::Count { calls })
}

/// Two failures on `breaker`, one call each.
fn two_failures(breaker: &CircuitBreaker) {
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
}

#[test]
fn a_reshaped_window_keeps_a_forced_state_and_empties_the_window() {
    for forced in [State::ForcedOpen, State::ForcedClosed] {
        let (breaker, changes) = listened(count(10));
        // A call admitted before the reshape, ended after it: its outcome is dropped.
        let early = breaker.try_acquire().unwrap();
        breaker.try_acquire().unwrap().failure();
        force(&breaker, forced);
        take(&changes);

        let how = breaker.reconfigure(count(20)).unwrap();
        assert_eq!(how, Reconfigured::KeptForced, "{forced:?}");
        assert_eq!(breaker.state(), forced);
        assert_eq!(breaker.policy().window(), Window::Count { calls: 20 });
        assert_eq!(take(&changes), Vec::<String>::new(), "no state change");
        early.failure();
        assert_eq!(breaker.counts().calls, 0, "{forced:?}: the window is empty");

        // A forced breaker counts no call: one admitted while forced closed, ended after a
        // reshape, leaves the window empty.
        if forced == State::ForcedClosed {
            let during = breaker.try_acquire().unwrap();
            assert_eq!(
                breaker.reconfigure(count(30)).unwrap(),
                Reconfigured::KeptForced
            );
            during.failure();
            breaker.try_acquire().unwrap().failure();
            assert_eq!(breaker.counts().calls, 0);
            assert_eq!(breaker.state(), State::ForcedClosed, "nothing trips it");
            assert_eq!(
                breaker.reconfigure(count(20)).unwrap(),
                Reconfigured::KeptForced
            );
        }

        // Unchanged settings change nothing, forced or not.
        assert_eq!(breaker.reconfigure(count(20)).unwrap(), Reconfigured::Kept);
        assert_eq!(breaker.state(), forced);

        // Undone by the generation that forced it, as any change made on one's own behalf.
        let (_, generation) = breaker.state_and_generation();
        assert!(
            breaker.reset_if(generation),
            "no transition since the force"
        );
        assert_eq!(take(&changes), [format!("{forced} -> closed")]);
        two_failures(&breaker);
        assert_eq!(breaker.state(), State::Open);
    }
}

#[test]
fn a_reshaped_window_still_resets_a_breaker_not_forced() {
    for tripped in [false, true] {
        let breaker = count(10).build().unwrap();
        if tripped {
            two_failures(&breaker);
            assert_eq!(breaker.state(), State::Open);
        }
        assert_eq!(breaker.reconfigure(count(20)).unwrap(), Reconfigured::Reset);
        assert_eq!(breaker.state(), State::Closed);
    }
}

#[test]
fn a_keyed_reconfigure_counts_only_the_keys_it_reset() {
    let hosts = count(10).keyed().max_keys(100).build().unwrap();
    hosts.try_acquire(&"plain").unwrap().failure();
    hosts.get_or_make(&"held").unwrap().force_open();
    hosts.get_or_make(&"pinned").unwrap().force_closed();
    assert_eq!(
        hosts.reconfigure(count(20)).unwrap(),
        1,
        "only `plain` was reset"
    );
    assert_eq!(hosts.state(&"plain"), Some(State::Closed));
    assert_eq!(hosts.state(&"held"), Some(State::ForcedOpen));
    assert_eq!(hosts.state(&"pinned"), Some(State::ForcedClosed));
}

#[test]
fn a_key_forced_before_its_first_call_is_refused_and_kept_until_reset() {
    // One shard of two keys: churn would evict any key it may forget.
    let hosts = count(10)
        .keyed::<u32>()
        .max_keys(2)
        .idle_ttl(std::time::Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(hosts.state(&7), None);
    hosts.get_or_make(&7).unwrap().force_open();
    assert_eq!(hosts.state(&7), Some(State::ForcedOpen));
    assert!(matches!(
        hosts.try_acquire(&7),
        Err(Rejected::CircuitOpen { .. })
    ));
    for other in 100..200 {
        hosts.try_acquire(&other).unwrap().success();
    }
    assert_eq!(hosts.state(&7), Some(State::ForcedOpen), "never evicted");
    assert!(hosts.not_closed().contains(&(7, State::ForcedOpen)));

    // A second forced key fills the table: a new key is refused a place.
    hosts.get_or_make(&8).unwrap().force_closed();
    assert_eq!(
        hosts.get_or_make(&9).unwrap_err(),
        Rejected::KeysFull { retry_after: None }
    );
    assert!(matches!(
        hosts.try_acquire(&9),
        Err(Rejected::KeysFull { .. })
    ));

    // Reset, it is an ordinary key again: forgotten to make room.
    hosts.get_or_make(&7).unwrap().reset();
    hosts.try_acquire(&9).unwrap().success();
    assert_eq!(hosts.state(&7), None, "evicted once reset");
    assert_eq!(hosts.state(&8), Some(State::ForcedClosed));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_host_forced_open_before_its_first_request_survives_a_reshaping_reload() {
    let (registry, client, breakers, host) = down_before_its_first_request(false);

    let (sent, result) = request(&client, "https://down.example/x", 200).await;
    assert_eq!(sent, 0, "refused before the send");
    assert!(result.unwrap_err().contains("circuit"), "refused as open");
    assert_eq!(
        request(&client, "https://up.example/", 200).await,
        (1, Ok(200))
    );

    let reload = reload_window(&registry, "window = \"10s\"");
    assert_eq!(reload.reset, ["outbound"], "the seen host was reset");
    assert_eq!(
        breakers.state(&host),
        Some(State::ForcedOpen),
        "kept forced"
    );
    assert_eq!(request(&client, "https://down.example/x", 200).await.0, 0);

    breakers.get_or_make(&host).unwrap().reset();
    assert_eq!(
        request(&client, "https://down.example/x", 200).await,
        (1, Ok(200))
    );
}
