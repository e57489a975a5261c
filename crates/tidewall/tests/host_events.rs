//! Which host: a keyed breaker's events carry their key's label (`Event::key`), through an
//! HTTP client built in code and one a registry made; a plain breaker's and the request's own
//! events carry none. And the registry's last-reload gauges.
#![cfg(all(
    feature = "metrics",
    feature = "toml",
    feature = "http",
    feature = "tokio"
))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Key, KeyName, Metadata, SharedString, Unit};

use tidewall::breaker::{CircuitBreaker, KeyedCircuitBreaker};
use tidewall::config::{Config, Registry};
use tidewall::http::{Authority, ClientPolicies, Overrides};
use tidewall::telemetry::{Event, EventKind};

/// What a listener heard: `policy name key kind`, the key `-` when there is none.
type Heard = Arc<Mutex<Vec<String>>>;

fn listener(heard: &Heard) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
    let log = Arc::clone(heard);
    move |event: &Event<'_>| {
        let kind = match event.kind {
            EventKind::Rejected(why) => format!("rejected {}", why.kind()),
            EventKind::StateChanged(change) => format!("{} -> {}", change.from, change.to),
            other => format!("{other:?}"),
        };
        let key = event.key.unwrap_or("-");
        log.lock()
            .unwrap()
            .push(format!("{} {} {key} {kind}", event.policy, event.name));
    }
}

fn heard_from(heard: &Heard, policy: &str) -> Vec<String> {
    let lines = heard.lock().unwrap();
    lines
        .iter()
        .filter(|line| line.starts_with(&format!("{policy} ")))
        .cloned()
        .collect()
}

/// One request to `uri`, answered with `status` by a send that never touches the network.
async fn request(policies: &ClientPolicies, uri: &str, status: u16) {
    let request = http::Request::get(uri).body(()).unwrap();
    let _ = policies
        .run(
            request,
            Overrides::new().no_retry(),
            |_request| async move {
                Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
            },
        )
        .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hosts_breaker_events_name_the_host() {
    let heard = Heard::default();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .on_event(listener(&heard));
    let policies = ClientPolicies::builder()
        .name("payments")
        .breaker(Some(breaker))
        .on_event(listener(&heard))
        .build()
        .unwrap();
    request(&policies, "http://down.example/a", 503).await;
    request(&policies, "http://down.example/b", 503).await;
    request(&policies, "http://down.example/c", 503).await;
    request(&policies, "https://up.example/", 200).await;
    assert_eq!(
        heard_from(&heard, "breaker"),
        [
            "breaker payments http://down.example:80 Failed",
            "breaker payments http://down.example:80 Failed",
            "breaker payments http://down.example:80 closed -> open",
            "breaker payments http://down.example:80 rejected circuit_open",
            "breaker payments https://up.example:443 Succeeded",
        ]
    );
    // The request's own events name its host too.
    assert_eq!(
        heard_from(&heard, "http_client"),
        [
            "http_client payments http://down.example:80 Failed",
            "http_client payments http://down.example:80 Failed",
            "http_client payments http://down.example:80 rejected circuit_open",
            "http_client payments https://up.example:443 Succeeded",
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_registry_clients_host_events_reach_the_registry_listener_with_the_host() {
    let heard = Heard::default();
    let config = Config::from_toml(
        "[instances.outbound]\nhttp = {}\n[instances.outbound.breaker]\nconsecutive_failures = 1\n[instances.plain.breaker]\nconsecutive_failures = 1\n",
    )
    .unwrap();
    let registry = Registry::builder(config)
        .on_event(listener(&heard))
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    request(&outbound, "http://[::1]:8080/", 503).await;
    registry
        .breaker("plain")
        .unwrap()
        .try_acquire()
        .unwrap()
        .failure();
    assert_eq!(
        heard_from(&heard, "breaker"),
        [
            "breaker outbound http://[::1]:8080 Failed",
            "breaker outbound http://[::1]:8080 closed -> open",
            "breaker plain - Failed",
            "breaker plain - closed -> open",
        ]
    );
    // The host as a socket address prints it: the same key.
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8080));
    let host = Authority::new("http", &addr.ip().to_string(), Some(addr.port())).unwrap();
    let breakers = outbound.breakers().unwrap();
    assert_eq!(
        breakers.not_closed(),
        [(host.clone(), tidewall::breaker::State::Open)]
    );
    assert!(breakers.state(&host).is_some());
}

/// Every front files a request under one authority: the default ports are the URL
/// standard's, as the `url` crate (and so reqwest) fills them in.
#[test]
fn default_ports_are_the_url_standards() {
    for (scheme, port) in [
        ("http", 80),
        ("ws", 80),
        ("https", 443),
        ("wss", 443),
        ("ftp", 21),
    ] {
        let made = Authority::new(scheme, "Host.example", None).unwrap();
        assert_eq!(made.as_str(), format!("{scheme}://host.example:{port}"));
        let uri: http::Uri = format!("{scheme}://host.example/x").parse().unwrap();
        assert_eq!(Authority::from_uri(&uri), Some(made));
        let upper = Authority::new(&scheme.to_uppercase(), "host.example", None).unwrap();
        assert_eq!(upper.as_str(), format!("{scheme}://host.example:{port}"));
    }
    assert_eq!(Authority::new("gopher", "host.example", None), None);
    assert!(Authority::new("gopher", "host.example", Some(70)).is_some());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_keyed_breaker_without_a_key_label_tells_no_key() {
    let heard = Heard::default();
    let breakers: KeyedCircuitBreaker<u64> = CircuitBreaker::builder()
        .consecutive_failures(1)
        .on_event(listener(&heard))
        .keyed()
        .build()
        .unwrap();
    breakers.try_acquire(&7).unwrap().failure();
    let labelled: KeyedCircuitBreaker<u64> = CircuitBreaker::builder()
        .name("labelled")
        .consecutive_failures(1)
        .on_event(listener(&heard))
        .keyed()
        .key_label(|key: &u64| format!("tenant-{key}"))
        .build()
        .unwrap();
    labelled.try_acquire(&7).unwrap().failure();
    assert!(labelled.try_acquire(&7).is_err());
    assert_eq!(
        heard_from(&heard, "breaker"),
        [
            "breaker breaker - Failed",
            "breaker breaker - closed -> open",
            "breaker labelled tenant-7 Failed",
            "breaker labelled tenant-7 closed -> open",
            "breaker labelled tenant-7 rejected circuit_open",
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_last_reload_gauges_say_whether_the_file_in_force_is_the_last_one() {
    let good = |n: u32| {
        Config::from_toml(&format!(
            "[instances.a.breaker]\nconsecutive_failures = {n}\n"
        ))
        .unwrap()
    };
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = wall();
    let gauges = Gauges::default();
    let registry = metrics::with_local_recorder(&gauges, || Registry::new(good(1)).unwrap());
    let read = || {
        (
            gauges.value("tidewall_config_last_reload_successful"),
            gauges.value("tidewall_config_last_reload_success_timestamp_seconds"),
        )
    };
    let (successful, built_at) = read();
    assert_eq!(successful, Some(1.0), "the build counts as applied");
    let built_at = built_at.expect("set at build");
    assert!(
        built_at >= before.floor() && built_at <= wall() + 1.0,
        "{built_at}"
    );

    // A refused reload (an unreadable file counts): 0, and the time of the configuration in
    // force unchanged.
    let unreadable = registry.reload_file("/nonexistent/tidewall.toml");
    assert!(unreadable.is_err());
    assert_eq!(read(), (Some(0.0), Some(built_at)));
    let removed = registry.reload(Config::from_toml("[instances.b.breaker]\n").unwrap());
    assert!(removed.is_ok(), "a lenient removal is applied: {removed:?}");
    let (successful, applied_at) = read();
    assert_eq!(successful, Some(1.0));
    assert!(applied_at.unwrap() >= built_at);
    let pipeline = registry.pipeline("b").unwrap();
    let refused = registry.reload(good(1)).unwrap_err();
    assert_eq!(refused.problem(), &tidewall::config::Problem::Removed);
    assert_eq!(read().0, Some(0.0));
    drop(pipeline);

    // Applied again: 1, and a time not before the last one.
    registry
        .reload(Config::from_toml("[instances.b.breaker]\n[instances.a]\n").unwrap())
        .unwrap();
    let (successful, applied_at) = read();
    assert_eq!(successful, Some(1.0));
    assert!(applied_at.unwrap() >= built_at);
}

/// A recorder of gauges that keeps each one's last value (a debugging snapshot resets them
/// as it reads, and "unchanged since" is what this file checks).
#[derive(Default, Clone)]
struct Gauges(Arc<Mutex<Vec<NamedGauge>>>);

/// A gauge's name and its value's bits.
type NamedGauge = (String, Arc<AtomicU64>);

impl Gauges {
    fn value(&self, name: &str) -> Option<f64> {
        let gauges = self.0.lock().unwrap();
        let found = gauges.iter().find(|(n, _)| n == name);
        found.map(|(_, cell)| f64::from_bits(cell.load(Ordering::SeqCst)))
    }
}

impl metrics::Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        let cell = Arc::new(AtomicU64::new(0));
        let named = (key.name().to_owned(), Arc::clone(&cell));
        self.0.lock().unwrap().push(named);
        metrics::Gauge::from_arc(cell)
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
