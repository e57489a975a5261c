//! A breaker forced open or closed by hand stays forced through a reconfiguration that
//! reshapes its window (a reload must not undo an operator), and a keyed table's key can be
//! forced before its first call (`get_or_make`), held until it is reset.
#![cfg(all(feature = "toml", feature = "http", feature = "tokio"))]

use std::sync::{Arc, Mutex};

use tidewall::Rejected;
use tidewall::breaker::{CircuitBreaker, Reconfigured, State, Window};
use tidewall::config::{Config, Registry};
use tidewall::http::{Authority, ClientPolicies, Overrides};
use tidewall::telemetry::{Event, EventKind};

fn count(calls: u32) -> tidewall::breaker::CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(2)
        .window(Window::Count { calls })
}

/// The state changes a listener heard, as `from -> to`.
type Changes = Arc<Mutex<Vec<String>>>;

fn changes_of(changes: &Changes) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
    let log = Arc::clone(changes);
    move |event: &Event<'_>| {
        if let EventKind::StateChanged(change) = event.kind {
            log.lock()
                .unwrap()
                .push(format!("{} -> {}", change.from, change.to));
        }
    }
}

fn take(changes: &Changes) -> Vec<String> {
    std::mem::take(&mut *changes.lock().unwrap())
}

#[test]
fn a_reshaped_window_keeps_a_forced_state_and_empties_the_window() {
    for forced in [State::ForcedOpen, State::ForcedClosed] {
        let changes = Changes::default();
        let breaker = count(10).on_event(changes_of(&changes)).build().unwrap();
        // A call admitted before the reshape, ended after it: its outcome is dropped.
        let early = breaker.try_acquire().unwrap();
        breaker.try_acquire().unwrap().failure();
        match forced {
            State::ForcedOpen => breaker.force_open(),
            _ => breaker.force_closed(),
        }
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
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open);
    }
}

#[test]
fn a_reshaped_window_still_resets_a_breaker_not_forced() {
    for tripped in [false, true] {
        let breaker = count(10).build().unwrap();
        if tripped {
            breaker.try_acquire().unwrap().failure();
            breaker.try_acquire().unwrap().failure();
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

const OUTBOUND: &str = r#"
[instances.outbound]
http = {}
[instances.outbound.breaker]
consecutive_failures = 1
window_calls = 50
"#;

/// One request to `uri`; how many times it was sent, and how it ended.
async fn request(policies: &ClientPolicies, uri: &str) -> (u32, Result<u16, String>) {
    let sent = Mutex::new(0);
    let request = http::Request::get(uri).body(()).unwrap();
    let result = policies
        .run(request, Overrides::new(), |_request| {
            *sent.lock().unwrap() += 1;
            async { Ok::<_, std::io::Error>(http::Response::new(())) }
        })
        .await;
    let sent = *sent.lock().unwrap();
    (
        sent,
        result
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string()),
    )
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_host_forced_open_before_its_first_request_survives_a_reshaping_reload() {
    let registry = Registry::builder(Config::from_toml(OUTBOUND).unwrap())
        .build()
        .unwrap();
    let client = registry.http_client("outbound").unwrap();
    let host = Authority::new("https", "down.example", None).unwrap();
    let breakers = client.breakers().unwrap();
    breakers.get_or_make(&host).unwrap().force_open();

    let (sent, result) = request(&client, "https://down.example/x").await;
    assert_eq!(sent, 0, "refused before the send");
    assert!(result.unwrap_err().contains("circuit"), "refused as open");
    assert_eq!(request(&client, "https://up.example/").await, (1, Ok(200)));

    let reshaped = OUTBOUND.replace("window_calls = 50", "window = \"10s\"");
    let reload = registry
        .reload(Config::from_toml(&reshaped).unwrap())
        .unwrap();
    assert_eq!(reload.reset, ["outbound"], "the seen host was reset");
    assert_eq!(
        breakers.state(&host),
        Some(State::ForcedOpen),
        "kept forced"
    );
    assert_eq!(request(&client, "https://down.example/x").await.0, 0);

    breakers.get_or_make(&host).unwrap().reset();
    assert_eq!(
        request(&client, "https://down.example/x").await,
        (1, Ok(200))
    );
}
