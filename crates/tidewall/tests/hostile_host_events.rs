//! Hostile black-box tests, written from the public docs only, of three recent contracts:
//! `Event::key` (a keyed breaker's events carry the key's label, an HTTP client's per-host
//! breakers their authority, every other event `None`), the registry's last-reload gauges
//! (`tidewall_config_last_reload_successful` and `..._success_timestamp_seconds`), and
//! `Authority::new` bracketing an IPv6 host.
#![cfg(all(
    feature = "metrics",
    feature = "toml",
    feature = "http",
    feature = "tokio"
))]

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Key, KeyName, Metadata, SharedString, Unit};

use tidewall::adaptive::{AdaptiveLimiter, Aimd};
use tidewall::breaker::{CircuitBreaker, KeyedCircuitBreaker, Outcome, State, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{Config, Problem, Registry};
use tidewall::http::{Authority, ClientPolicies, Overrides};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::telemetry::{Event, EventKind};
use tidewall::{Backoff, Jitter};
use tidewall_core::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One event as heard: its policy, name, key and a short form of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heard {
    policy: String,
    name: String,
    key: Option<String>,
    kind: String,
}

#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<Heard>>>);

impl Log {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = Arc::clone(&self.0);
        move |event: &Event<'_>| {
            let kind = match event.kind {
                EventKind::Rejected(why) => format!("rejected {}", why.kind()),
                EventKind::StateChanged(change) => format!("{} -> {}", change.from, change.to),
                EventKind::RetryScheduled { .. } => "retry".to_owned(),
                EventKind::Waited(_) => "waited".to_owned(),
                EventKind::HedgeLaunched { .. } => "hedge".to_owned(),
                other => format!("{other:?}"),
            };
            log.lock().unwrap().push(Heard {
                policy: event.policy.to_owned(),
                name: event.name.to_owned(),
                key: event.key.map(str::to_owned),
                kind,
            });
        }
    }

    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn lines(heard: &[Heard], policy: &str) -> Vec<String> {
    heard
        .iter()
        .filter(|h| h.policy == policy)
        .map(|h| format!("{} {} {}", h.name, h.key.as_deref().unwrap_or("-"), h.kind))
        .collect()
}

fn status(code: u16) -> std::io::Result<http::Response<()>> {
    Ok(http::Response::builder().status(code).body(()).unwrap())
}

/// One request to `uri` answered with `code`, sent once.
async fn request(policies: &ClientPolicies, uri: &str, code: u16) -> u16 {
    let request = http::Request::get(uri).body(()).unwrap();
    match policies
        .run(
            request,
            Overrides::new().no_retry(),
            |_request| async move { status(code) },
        )
        .await
    {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

fn authority(uri: &str) -> Authority {
    Authority::from_uri(&uri.parse().unwrap()).unwrap()
}

fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A recorder of gauges that keeps each one's last value (one cell per registration).
#[derive(Default, Clone)]
struct Gauges(Arc<Mutex<Vec<Cell>>>);

/// A gauge's name, its labels (`k=v,` in order) and the bits of its value.
type Cell = (String, String, Arc<AtomicU64>);

const OK: &str = "tidewall_config_last_reload_successful";
const AT: &str = "tidewall_config_last_reload_success_timestamp_seconds";

impl Gauges {
    /// The value of the last registration of `name` (a metric registered twice under one
    /// recorder shares one series in any real exporter; here the latest handle is read, and
    /// `values` shows them all).
    fn value(&self, name: &str) -> Option<f64> {
        self.values(name).last().copied()
    }

    fn values(&self, name: &str) -> Vec<f64> {
        self.series(name).into_iter().map(|(_, v)| v).collect()
    }

    /// Each series of `name`: its labels and value.
    fn series(&self, name: &str) -> Vec<(String, f64)> {
        let gauges = self.0.lock().unwrap();
        gauges
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, labels, cell)| (labels.clone(), f64::from_bits(cell.load(Ordering::SeqCst))))
            .collect()
    }

    fn read(&self) -> (Option<f64>, Option<f64>) {
        (self.value(OK), self.value(AT))
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
        let mut gauges = self.0.lock().unwrap();
        // One series per name and labels, as an exporter keeps it.
        let name = key.name().to_owned();
        let labels: String = key
            .labels()
            .map(|l| format!("{}={},", l.key(), l.value()))
            .collect();
        if let Some((_, _, cell)) = gauges.iter().find(|(n, l, _)| *n == name && *l == labels) {
            return metrics::Gauge::from_arc(Arc::clone(cell));
        }
        let cell = Arc::new(AtomicU64::new(0));
        gauges.push((name, labels, Arc::clone(&cell)));
        metrics::Gauge::from_arc(cell)
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn toml(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Event::key: keyed breakers
// ---------------------------------------------------------------------------------------------

/// Every event of one key's breaker, whatever caused it (an outcome, a refusal, a trip, the
/// break ending, a probe closing it, a force or reset through a `get` handle, an ignored
/// outcome), carries that key's label; the label is made once per key.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_event_of_a_labelled_keys_breaker_carries_its_label() {
    let log = Log::default();
    let labelled = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&labelled);
    let table: KeyedCircuitBreaker<u32> = CircuitBreaker::builder()
        .name("tenants")
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .on_event(log.listener())
        .keyed()
        .key_label(move |key: &u32| {
            count.fetch_add(1, Ordering::SeqCst);
            format!("tenant-{key}")
        })
        .build()
        .unwrap();

    table.try_acquire(&7).unwrap().failure();
    assert!(table.try_acquire(&7).is_err());
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = table.try_acquire(&7).expect("the break is over: a probe");
    probe.success();
    assert_eq!(table.state(&7), Some(State::Closed));
    table.try_acquire(&7).unwrap().record(Outcome::Ignored);
    let handle = table.get(&7).expect("held");
    handle.force_open();
    assert!(handle.try_acquire().is_err());
    handle.reset();
    handle.force_closed();
    handle.try_acquire().unwrap().failure();
    handle.reset();
    drop(handle);
    table.try_acquire(&8).unwrap().success();

    let heard = log.take();
    assert!(heard.len() >= 12, "{heard:#?}");
    for event in &heard {
        assert_eq!(event.policy, "breaker", "{event:?}");
        assert_eq!(event.name, "tenants", "{event:?}");
    }
    let of_7: Vec<&Heard> = heard
        .iter()
        .filter(|h| h.kind != "Succeeded" || h.key.as_deref() != Some("tenant-8"))
        .collect();
    assert_eq!(
        of_7.len(),
        heard.len() - 1,
        "one event of key 8: {heard:#?}"
    );
    for event in &of_7 {
        assert_eq!(event.key.as_deref(), Some("tenant-7"), "{event:?}");
    }
    let kinds: Vec<&str> = of_7.iter().map(|h| h.kind.as_str()).collect();
    for expected in [
        "Failed",
        "closed -> open",
        "rejected circuit_open",
        "open -> half_open",
        "Succeeded",
        "half_open -> closed",
        "Ignored",
        "closed -> forced_open",
        "forced_open -> closed",
        "closed -> forced_closed",
        "forced_closed -> closed",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    assert_eq!(
        labelled.load(Ordering::SeqCst),
        2,
        "made once per key's breaker (keys 7 and 8)"
    );
}

/// A hung probe reopens a half-open breaker when `max_half_open_wait` ends: that state
/// change, and the refusals around it, are the key's too.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_timing_out_reopens_with_the_key() {
    let log = Log::default();
    let table: KeyedCircuitBreaker<&'static str> = CircuitBreaker::builder()
        .name("hung")
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .half_open_probes(1)
        .max_half_open_wait(Some(Duration::from_secs(5)))
        .on_event(log.listener())
        .keyed()
        .key_label(|key: &&str| format!("label:{key}"))
        .build()
        .unwrap();
    table.try_acquire(&"h").unwrap().failure();
    tokio::time::advance(Duration::from_secs(2)).await;
    let hung = table.try_acquire(&"h").expect("the probe");
    assert!(table.try_acquire(&"h").is_err(), "one probe at a time");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(table.try_acquire(&"h").is_err());
    assert_eq!(table.state(&"h"), Some(State::Open));
    drop(hung);
    let heard = log.take();
    assert!(
        heard.iter().any(|h| h.kind == "half_open -> open"),
        "{heard:#?}"
    );
    for event in &heard {
        assert_eq!(event.key.as_deref(), Some("label:h"), "{event:?}");
    }
}

/// A keyed table's listener given on the keyed builder (`on_state_change`) and one on the
/// base builder both hear; the base one's events name the key. A table without `key_label`
/// names none.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_keyed_table_without_a_label_tells_no_key_and_a_labelled_one_each_key_apart() {
    let log = Log::default();
    let plain: KeyedCircuitBreaker<String> = CircuitBreaker::builder()
        .name("plain")
        .consecutive_failures(2)
        .on_event(log.listener())
        .keyed()
        .build()
        .unwrap();
    let labelled: KeyedCircuitBreaker<String> = CircuitBreaker::builder()
        .name("labelled")
        .consecutive_failures(2)
        .on_event(log.listener())
        .keyed()
        .key_label(|host: &String| host.to_uppercase())
        .build()
        .unwrap();
    let mut rng = SplitMix64::new(0x5eed);
    let hosts = ["a.example", "b.example", "c.example"];
    let mut expected = Vec::new();
    for _ in 0..60 {
        let host = hosts[usize::try_from(rng.below_or_equal(2)).unwrap()].to_owned();
        let fail = rng.below_or_equal(1) == 0;
        for table in [&plain, &labelled] {
            let _ = table
                .call(
                    &host,
                    || async move { if fail { Err("down") } else { Ok(()) } },
                )
                .await;
        }
        expected.push(host.to_uppercase());
    }
    let heard = log.take();
    let plain_events: Vec<&Heard> = heard.iter().filter(|h| h.name == "plain").collect();
    let labelled_events: Vec<&Heard> = heard.iter().filter(|h| h.name == "labelled").collect();
    assert!(!plain_events.is_empty());
    assert!(
        plain_events.iter().all(|h| h.key.is_none()),
        "{plain_events:#?}"
    );
    assert_eq!(plain_events.len(), labelled_events.len(), "the same calls");
    for (p, l) in plain_events.iter().zip(&labelled_events) {
        assert_eq!(p.kind, l.kind);
        assert!(
            l.key
                .as_deref()
                .is_some_and(|k| hosts.iter().any(|h| h.to_uppercase() == k)),
            "{l:?}"
        );
    }
    // Outcome events come one per call, in order: each names the call's own host.
    let outcome_keys: Vec<String> = labelled_events
        .iter()
        .filter(|h| {
            matches!(
                h.kind.as_str(),
                "Succeeded" | "Failed" | "rejected circuit_open"
            )
        })
        .map(|h| h.key.clone().unwrap())
        .collect();
    assert_eq!(outcome_keys, expected);
}

/// A full table's own refusal is the table's, not one key's breaker's: `keyed_breaker`, and
/// (the docs: "`None` for every other event") no key.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_tables_refusal_names_no_key() {
    let log = Log::default();
    let table: KeyedCircuitBreaker<u32> = CircuitBreaker::builder()
        .name("bounded")
        .consecutive_failures(1)
        .on_event(log.listener())
        .keyed()
        .max_keys(1)
        .key_label(|key: &u32| format!("k{key}"))
        .build()
        .unwrap();
    table.try_acquire(&1).unwrap().failure(); // open: may not be forgotten
    let refused = table.try_acquire(&2).unwrap_err();
    assert_eq!(refused.kind(), "keys_full");
    let heard = log.take();
    let table_refusals: Vec<&Heard> = heard
        .iter()
        .filter(|h| h.policy == "keyed_breaker")
        .collect();
    assert_eq!(table_refusals.len(), 1, "{heard:#?}");
    assert_eq!(table_refusals[0].kind, "rejected keys_full");
    assert_eq!(table_refusals[0].key, None, "{heard:#?}");
    assert_eq!(
        lines(&heard, "breaker"),
        ["bounded k1 Failed", "bounded k1 closed -> open"]
    );
}

// ---------------------------------------------------------------------------------------------
// Event::key: every other policy says None
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_other_policy_names_a_key() {
    let log = Log::default();

    // Plain breaker: outcome, trip, refusal.
    let breaker = CircuitBreaker::builder()
        .name("plain_breaker")
        .consecutive_failures(1)
        .on_event(log.listener())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert!(breaker.try_acquire().is_err());

    // Bulkhead: a refusal, and a wait that ends admitted.
    let bulkhead = Bulkhead::builder(1)
        .name("plain_bulkhead")
        .max_queue(1)
        .max_wait(Duration::from_secs(5))
        .on_event(log.listener())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let waiter = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move { bulkhead.acquire().await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert!(bulkhead.try_acquire().is_err());
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(held);
    waiter.await.unwrap().unwrap();

    // Rate limiter, and a keyed one (its refusals come as keyed_rate).
    let rate = RateLimiter::builder(1, Duration::from_secs(3600))
        .name("plain_rate")
        .on_event(log.listener())
        .build()
        .unwrap();
    rate.check().unwrap();
    assert!(rate.check().is_err());
    let keyed_rate = RateLimiter::builder(1, Duration::from_secs(3600))
        .name("keyed_rate_table")
        .on_event(log.listener())
        .keyed()
        .build::<u32>()
        .unwrap();
    keyed_rate.check_key(&1).unwrap();
    assert!(keyed_rate.check_key(&1).is_err());

    // Keyed bulkhead: its keys' events are the bulkhead's.
    let keyed_bulkhead = Bulkhead::builder(1)
        .name("keyed_bulkhead_table")
        .reject_when_full()
        .on_event(log.listener())
        .keyed()
        .build::<u32>()
        .unwrap();
    let _kept = keyed_bulkhead.try_acquire(&1).unwrap();
    assert!(keyed_bulkhead.try_acquire(&1).is_err());

    // Adaptive limiter, plain and keyed.
    let aimd = || {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(1)
            .max_limit(4)
            .build()
            .unwrap()
    };
    let adaptive = AdaptiveLimiter::builder(aimd())
        .name("plain_adaptive")
        .on_event(log.listener())
        .build()
        .unwrap();
    let _slot = adaptive.try_acquire().unwrap();
    assert!(adaptive.try_acquire().is_err());
    let keyed_adaptive = AdaptiveLimiter::builder(aimd())
        .name("keyed_adaptive_table")
        .on_event(log.listener())
        .keyed()
        .build::<u32>()
        .unwrap();
    let _key_slot = keyed_adaptive.try_acquire(&1).unwrap();
    assert!(keyed_adaptive.try_acquire(&1).is_err());

    // Pipeline over a breaker: retries, its end, and the breaker's events in it.
    let pipeline = Pipeline::builder()
        .name("plain_pipeline")
        .retry(
            Backoff::constant(Duration::from_millis(10))
                .jitter(Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .breaker(
            CircuitBreaker::builder()
                .name("pipeline_breaker")
                .consecutive_failures(5)
                .on_event(log.listener())
                .build()
                .unwrap(),
        )
        .on_event(log.listener())
        .build()
        .unwrap();
    let _: Result<(), _> = pipeline.call(|| async { Err("down") }).await;

    // Hedge.
    let hedge = tidewall::hedge::Hedge::builder()
        .name("plain_hedge")
        .delay(Duration::from_millis(10))
        .max_hedges(1)
        .on_event(log.listener())
        .build()
        .unwrap();
    let _ = hedge
        .call(tidewall::hedge::Idempotent(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(())
        }))
        .await;

    let heard = log.take();
    for (policy, name) in [
        ("breaker", "plain_breaker"),
        ("bulkhead", "plain_bulkhead"),
        ("rate", "plain_rate"),
        ("keyed_rate", "keyed_rate_table"),
        ("bulkhead", "keyed_bulkhead_table"),
        ("adaptive", "plain_adaptive"),
        ("adaptive", "keyed_adaptive_table"),
        ("pipeline", "plain_pipeline"),
        ("breaker", "pipeline_breaker"),
        ("hedge", "plain_hedge"),
    ] {
        assert!(
            heard.iter().any(|h| h.policy == policy && h.name == name),
            "nothing heard of {policy} {name}: {heard:#?}"
        );
    }
    let keyed: Vec<&Heard> = heard.iter().filter(|h| h.key.is_some()).collect();
    assert!(keyed.is_empty(), "events with a key: {keyed:#?}");
}

// ---------------------------------------------------------------------------------------------
// Event::key: an HTTP client built in code
// ---------------------------------------------------------------------------------------------

/// The per-host breaker's events carry the authority exactly as `Authority` writes it
/// (lowercased host, default port, IPv6 in brackets, no userinfo); the per-host bulkhead's
/// refusal and the request's own events carry none.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_clients_host_breaker_names_the_authority_and_nothing_else_does() {
    let log = Log::default();
    let policies = ClientPolicies::builder()
        .name("edge")
        .breaker(Some(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .on_event(log.listener()),
        ))
        .bulkhead(Some(
            Bulkhead::builder(1)
                .reject_when_full()
                .on_event(log.listener()),
        ))
        .on_event(log.listener())
        .build()
        .unwrap();

    let uris = [
        ("http://[::1]:8080/a", "http://[::1]:8080"),
        ("http://[FE80::AbC]/", "http://[fe80::abc]:80"),
        (
            "https://API.Example.COM/v1?q=1",
            "https://api.example.com:443",
        ),
        (
            "http://user:secret@creds.example/x",
            "http://creds.example:80",
        ),
        ("http://127.0.0.1:80/", "http://127.0.0.1:80"),
        ("https://svc.example:8443/", "https://svc.example:8443"),
    ];
    for (uri, _) in uris {
        assert_eq!(request(&policies, uri, 503).await, 503);
    }
    let heard = log.take();
    let breaker = lines(&heard, "breaker");
    let mut expected = Vec::new();
    for (_, key) in uris {
        expected.push(format!("edge {key} Failed"));
        expected.push(format!("edge {key} closed -> open"));
    }
    assert_eq!(breaker, expected);
    for (uri, key) in uris {
        assert_eq!(authority(uri).as_str(), key, "Authority::from_uri agrees");
        assert_eq!(
            policies.breakers().unwrap().state(&authority(uri)),
            Some(State::Open)
        );
    }
    // An open host's refusal names it too.
    assert_eq!(request(&policies, "http://[::1]:8080/again", 200).await, 0);
    assert_eq!(
        lines(&log.take(), "breaker"),
        ["edge http://[::1]:8080 rejected circuit_open"]
    );

    // The bulkhead's refusal: one request holds the only slot of a fresh host.
    let slow = async {
        let request = http::Request::get("http://busy.example/").body(()).unwrap();
        policies
            .run(request, Overrides::new().no_retry(), |_request| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                status(200)
            })
            .await
            .map(|r| r.status().as_u16())
    };
    let second = async {
        tokio::task::yield_now().await;
        request(&policies, "http://busy.example/", 200).await
    };
    let (first, second) = tokio::join!(slow, second);
    assert_eq!((first.unwrap(), second), (200, 0));
    let heard = log.take();
    let bulkhead: Vec<&Heard> = heard.iter().filter(|h| h.policy == "bulkhead").collect();
    assert_eq!(bulkhead.len(), 1, "{heard:#?}");
    assert_eq!(bulkhead[0].kind, "rejected bulkhead_full");
    assert_eq!(bulkhead[0].key, None, "a bulkhead's event names no key");
    let requests: Vec<&Heard> = heard.iter().filter(|h| h.policy == "http_client").collect();
    assert_eq!(requests.len(), 2, "{heard:#?}");
    assert!(
        requests
            .iter()
            .all(|h| h.key.as_deref() == Some("http://busy.example:80") && h.name == "edge"),
        "a request's events name its host: {requests:#?}"
    );
    let breaker: Vec<&Heard> = heard.iter().filter(|h| h.policy == "breaker").collect();
    assert!(!breaker.is_empty(), "{heard:#?}");
    assert!(
        breaker
            .iter()
            .all(|h| h.key.as_deref() == Some("http://busy.example:80")),
        "{breaker:#?}"
    );
}

/// An adaptive limit per host: its refusals name no key; the breaker beside it does.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_clients_adaptive_limit_names_no_key() {
    let log = Log::default();
    let aimd = Aimd::builder()
        .min_limit(1)
        .initial_limit(1)
        .max_limit(2)
        .build()
        .unwrap();
    let policies = ClientPolicies::builder()
        .name("adaptive_edge")
        .bulkhead(None)
        .adaptive(Some(
            AdaptiveLimiter::builder(tidewall::adaptive::AnyAlgorithm::from(aimd))
                .on_event(log.listener()),
        ))
        .breaker(Some(
            CircuitBreaker::builder()
                .consecutive_failures(100)
                .on_event(log.listener()),
        ))
        .build()
        .unwrap();
    let slow = async {
        let request = http::Request::get("http://one.example/").body(()).unwrap();
        policies
            .run(request, Overrides::new().no_retry(), |_request| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                status(200)
            })
            .await
            .map(|r| r.status().as_u16())
    };
    let second = async {
        tokio::task::yield_now().await;
        request(&policies, "http://one.example/", 200).await
    };
    let (first, second) = tokio::join!(slow, second);
    assert_eq!((first.unwrap(), second), (200, 0));
    let heard = log.take();
    let adaptive: Vec<&Heard> = heard.iter().filter(|h| h.policy == "adaptive").collect();
    assert!(!adaptive.is_empty(), "{heard:#?}");
    assert!(adaptive.iter().all(|h| h.key.is_none()), "{adaptive:#?}");
    let breaker: Vec<&Heard> = heard.iter().filter(|h| h.policy == "breaker").collect();
    assert!(!breaker.is_empty(), "{heard:#?}");
    assert!(
        breaker
            .iter()
            .all(|h| h.key.as_deref() == Some("http://one.example:80")),
        "{breaker:#?}"
    );
}

/// A reconfiguration that changes the window's shape resets every host's breaker "with its
/// state-change event": a keyed breaker's state change, so it names the host.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reset_by_reconfigure_names_each_host() {
    let log = Log::default();
    let breaker = |window| {
        CircuitBreaker::builder()
            .window(window)
            .consecutive_failures(1)
            .on_event(log.listener())
    };
    let policies = ClientPolicies::builder()
        .name("retuned")
        .breaker(Some(breaker(Window::Count { calls: 50 })))
        .build()
        .unwrap();
    request(&policies, "http://a.example/", 503).await;
    request(&policies, "http://b.example:81/", 200).await;
    log.take();
    let retuned = policies
        .reconfigure(
            ClientPolicies::builder().breaker(Some(breaker(Window::Time {
                span: Duration::from_secs(10),
                buckets: 10,
            }))),
        )
        .unwrap();
    assert_eq!(retuned.breakers_reset, 2);
    let resets = log.take();
    assert!(!resets.is_empty());
    for event in &resets {
        assert!(
            matches!(
                event.key.as_deref(),
                Some("http://a.example:80" | "http://b.example:81")
            ),
            "every reset event names its host: {event:?}"
        );
    }
    assert!(
        resets
            .iter()
            .any(|h| h.key.as_deref() == Some("http://a.example:80") && h.kind == "open -> closed"),
        "the open host's reset was told: {resets:#?}"
    );
}

/// A stage added by a reconfiguration is an HTTP client's per-host breaker too: its events
/// name the host.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breaker_stage_added_later_names_the_host() {
    let log = Log::default();
    let policies = ClientPolicies::builder()
        .name("late")
        .breaker(None)
        .build()
        .unwrap();
    request(&policies, "http://late.example/", 503).await;
    policies
        .reconfigure(
            ClientPolicies::builder().breaker(Some(
                CircuitBreaker::builder()
                    .consecutive_failures(1)
                    .on_event(log.listener()),
            )),
        )
        .unwrap();
    request(&policies, "http://late.example/", 503).await;
    assert_eq!(
        lines(&log.take(), "breaker"),
        [
            "late http://late.example:80 Failed",
            "late http://late.example:80 closed -> open",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Event::key: a registry's clients
// ---------------------------------------------------------------------------------------------

const REGISTRY: &str = r#"
[instances.outbound]
http = {}
[instances.outbound.breaker]
consecutive_failures = 1
window_calls = 50

[instances.bare]
http = {}

[instances.plain.breaker]
consecutive_failures = 1

[instances.hosts.breaker]
consecutive_failures = 1
[instances.hosts.keys]
max_keys = 100
"#;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_registrys_listener_hears_client_hosts_by_authority_and_nothing_else_keyed() {
    let log = Log::default();
    let registry = Registry::builder(toml(REGISTRY))
        .on_event(log.listener())
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    request(&outbound, "http://[2001:DB8::1]:8080/x", 503).await;
    request(&outbound, "https://Mixed.Case.example/", 503).await;
    // A registry pipeline's breaker, and a registry keyed table (no label): no key.
    registry
        .breaker("plain")
        .unwrap()
        .try_acquire()
        .unwrap()
        .failure();
    let hosts = registry.keyed_breaker::<String>("hosts").unwrap();
    hosts.try_acquire(&"x".to_owned()).unwrap().failure();
    let heard = log.take();
    assert_eq!(
        lines(&heard, "breaker"),
        [
            "outbound http://[2001:db8::1]:8080 Failed",
            "outbound http://[2001:db8::1]:8080 closed -> open",
            "outbound https://mixed.case.example:443 Failed",
            "outbound https://mixed.case.example:443 closed -> open",
            "plain - Failed",
            "plain - closed -> open",
            "hosts - Failed",
            "hosts - closed -> open",
        ]
    );
    let requests: Vec<&Heard> = heard.iter().filter(|h| h.policy == "http_client").collect();
    let hosts: Vec<Option<&str>> = requests.iter().map(|h| h.key.as_deref()).collect();
    assert_eq!(
        hosts,
        [
            Some("http://[2001:db8::1]:8080"),
            Some("https://mixed.case.example:443")
        ],
        "a request's events name its host"
    );

    // A reload that changes the window's shape resets the client's hosts: with their keys.
    let reshaped = REGISTRY.replace("window_calls = 50", "window = \"10s\"");
    let reload = registry.reload(toml(&reshaped)).unwrap();
    assert!(
        reload.reset.iter().any(|name| name == "outbound"),
        "{reload:?}"
    );
    let heard = log.take();
    let resets: Vec<&Heard> = heard
        .iter()
        .filter(|h| h.policy == "breaker" && h.name == "outbound")
        .collect();
    assert_eq!(resets.len(), 2, "{heard:#?}");
    let mut keys: Vec<&str> = resets
        .iter()
        .map(|h| h.key.as_deref().unwrap_or("-"))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "http://[2001:db8::1]:8080",
            "https://mixed.case.example:443"
        ]
    );

    // A client without a breaker, given one by a reload: its hosts are named too.
    let bare = registry.http_client("bare").unwrap();
    request(&bare, "http://bare.example/", 503).await;
    let with_breaker = format!("{reshaped}\n[instances.bare.breaker]\nconsecutive_failures = 1\n");
    registry.reload(toml(&with_breaker)).unwrap();
    log.take();
    request(&bare, "http://bare.example/", 503).await;
    assert_eq!(
        lines(&log.take(), "breaker"),
        [
            "bare http://bare.example:80 Failed",
            "bare http://bare.example:80 closed -> open",
        ]
    );
}

/// A client whose instance a reload adds is built by the reload: its hosts' events reach
/// the registry's listener with the authority. One whose `[http]` a reload removes is kept
/// and still names its hosts.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn clients_a_reload_adds_or_strips_still_name_their_hosts() {
    let log = Log::default();
    let first = "[instances.kept]\nhttp = {}\n[instances.kept.breaker]\nconsecutive_failures = 1\n";
    let registry = Registry::builder(toml(first))
        .on_event(log.listener())
        .build()
        .unwrap();
    let kept = registry.http_client("kept").unwrap();
    let second = "[instances.kept.breaker]\nconsecutive_failures = 1\n\n[instances.fresh]\nhttp = {}\n[instances.fresh.breaker]\nconsecutive_failures = 1\n";
    registry.reload(toml(second)).unwrap();
    log.take();
    let fresh = registry.http_client("fresh").unwrap();
    request(&fresh, "http://Fresh.example:8080/", 503).await;
    request(&kept, "http://[::1]/", 503).await;
    assert_eq!(
        lines(&log.take(), "breaker"),
        [
            "fresh http://fresh.example:8080 Failed",
            "fresh http://fresh.example:8080 closed -> open",
            "kept http://[::1]:80 Failed",
            "kept http://[::1]:80 closed -> open",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The last-reload gauges
// ---------------------------------------------------------------------------------------------

/// The build counts as applied, at the wall-clock time: not the runtime's virtual clock,
/// which may be days ahead.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_timestamp_is_wall_clock_time_even_on_a_paused_clock() {
    tokio::time::advance(Duration::from_secs(3 * 86_400)).await;
    let before = wall();
    let gauges = Gauges::default();
    let registry = metrics::with_local_recorder(&gauges, || {
        Registry::new(toml("[instances.a.breaker]\nconsecutive_failures = 2\n")).unwrap()
    });
    let after = wall();
    let (ok, at) = gauges.read();
    assert_eq!(ok, Some(1.0), "the build counts as applied");
    let at = at.expect("the build sets the time");
    assert!(
        at >= before.floor() && at <= after + 1.0,
        "{before} <= {at} <= {after}"
    );

    // A day of virtual time later, an applied reload: still the wall clock.
    tokio::time::advance(Duration::from_secs(86_400)).await;
    let before = wall();
    registry
        .reload(toml("[instances.a.breaker]\nconsecutive_failures = 3\n"))
        .unwrap();
    let after = wall();
    let (ok, again) = gauges.read();
    assert_eq!(ok, Some(1.0));
    let again = again.unwrap();
    assert!(
        again >= before.floor() && again <= after + 1.0,
        "{before} <= {again} <= {after}: not the virtual clock"
    );
    assert!(again >= at);
}

/// A registry on a virtual clock of its own (`Clocked`, a `FakeClock` that never moves on
/// its own) still stamps wall-clock time, however far that clock is moved.
#[cfg(feature = "test-util")]
#[test]
fn the_timestamp_ignores_a_registrys_virtual_clock() {
    let rt = tidewall::testing::Clocked::new(tidewall::rt::Tokio);
    let gauges = Gauges::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    rt.clock().advance(Duration::from_secs(365 * 86_400));
    let before = wall();
    let registry = metrics::with_local_recorder(&gauges, || {
        Registry::builder(toml("[instances.a.breaker]\n"))
            .runtime(rt.clone())
            .build()
            .unwrap()
    });
    let (ok, at) = gauges.read();
    assert_eq!(ok, Some(1.0));
    let at = at.unwrap();
    assert!(
        at >= before.floor() && at <= wall() + 1.0,
        "{before} <= {at}"
    );
    rt.clock().advance(Duration::from_secs(365 * 86_400));
    let before = wall();
    registry
        .reload(toml("[instances.a.breaker]\nconsecutive_failures = 9\n"))
        .unwrap();
    let (ok, again) = gauges.read();
    assert_eq!(ok, Some(1.0));
    let again = again.unwrap();
    assert!(
        again >= before.floor() && again <= wall() + 1.0,
        "{before} <= {again}"
    );
}

/// Every way a reload can be refused sets 0 and leaves the time of the configuration in force;
/// each applied one after sets 1 and a time not before it. Gauges read for a scrape
/// (`record_gauges`) do not hide a refusal.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_refusal_sets_zero_and_keeps_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    let base = r#"
[instances.client]
http = {}
[instances.client.keys]
max_keys = 50
[instances.client.breaker]
consecutive_failures = 2

[instances.pipe.retry]
max_attempts = 2

[defaults.bulkhead]
max_concurrent = 2

[instances.held]
"#;
    std::fs::write(&path, base).unwrap();
    let gauges = Gauges::default();
    let registry = metrics::with_local_recorder(&gauges, || {
        Registry::builder(toml(base))
            .max_instances(5)
            .build()
            .unwrap()
    });
    let _pipe = registry.pipeline("pipe").unwrap();
    let _adhoc = registry.bulkhead("adhoc").unwrap(); // from the defaults
    let (ok, built_at) = gauges.read();
    assert_eq!(ok, Some(1.0));
    let built_at = built_at.unwrap();

    let mut applied_at = built_at;
    let mut refusals = 0;
    let refuse = |what: &str,
                  outcome: Result<tidewall::config::Reload, tidewall::config::Invalid>,
                  applied_at: f64| {
        let error = outcome.expect_err(what);
        metrics::with_local_recorder(&gauges, || registry.record_gauges());
        assert_eq!(
            gauges.read(),
            (Some(0.0), Some(applied_at)),
            "{what} ({error}): refused, so 0 and the time of the configuration in force"
        );
        error
    };
    let apply = |what: &str,
                 outcome: Result<tidewall::config::Reload, tidewall::config::Invalid>,
                 applied_at: f64|
     -> f64 {
        outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
        metrics::with_local_recorder(&gauges, || registry.record_gauges());
        let (ok, at) = gauges.read();
        assert_eq!(ok, Some(1.0), "{what}: applied");
        let at = at.unwrap();
        assert!(at >= applied_at, "{what}: {at} < {applied_at}");
        at
    };

    // An unparsable file.
    std::fs::write(&path, "[instances.client\nhttp = {}\n").unwrap();
    let e = refuse("unparsable", registry.reload_file(&path), applied_at);
    assert!(matches!(e.problem(), Problem::Syntax(_)), "{e:?}");
    refusals += 1;
    applied_at = apply(
        "the good file again",
        registry.reload(toml(base)),
        applied_at,
    );

    // An unreadable file.
    let e = refuse(
        "unreadable",
        registry.reload_file(dir.path().join("missing.toml")),
        applied_at,
    );
    assert!(matches!(e.problem(), Problem::Read(_)), "{e:?}");
    refusals += 1;
    std::fs::write(&path, base).unwrap();
    applied_at = apply("reload_file", registry.reload_file(&path), applied_at);

    // A held policy that could no longer be built (the defaults' bulkhead size removed).
    let missing = base.replace("max_concurrent = 2", "max_queue = 1");
    let e = refuse("missing", registry.reload(toml(&missing)), applied_at);
    assert_eq!(e.problem(), &Problem::Missing, "{e:?}");
    refusals += 1;

    // A pipeline's instance removed.
    let no_pipe = base.replace("[instances.pipe.retry]\nmax_attempts = 2\n", "");
    let e = refuse(
        "removed pipeline",
        registry.reload(toml(&no_pipe)),
        applied_at,
    );
    assert_eq!(e.problem(), &Problem::Removed);
    refusals += 1;

    // The HTTP client's instance removed.
    let no_client = base.replace("[instances.client]\nhttp = {}\n", "[instances.other]\n");
    let no_client = no_client
        .replace("[instances.client.keys]\nmax_keys = 50\n", "")
        .replace("[instances.client.breaker]\nconsecutive_failures = 2\n", "");
    let e = refuse(
        "removed client",
        registry.reload(toml(&no_client)),
        applied_at,
    );
    assert_eq!(e.problem(), &Problem::Removed);
    refusals += 1;

    // A table bound changed.
    let fixed = base.replace("max_keys = 50", "max_keys = 60");
    let e = refuse("fixed bound", registry.reload(toml(&fixed)), applied_at);
    assert_eq!(e.problem(), &Problem::Fixed);
    refusals += 1;

    // Full: undeclared names took the spare places; a file declaring more has no room.
    registry.breaker("undeclared_1").unwrap();
    registry.breaker("undeclared_2").unwrap();
    let more = format!("{base}\n[instances.new_a.breaker]\n[instances.new_b.breaker]\n");
    let e = refuse("full", registry.reload(toml(&more)), applied_at);
    assert!(matches!(e.problem(), Problem::Full { .. }), "{e:?}");
    refusals += 1;

    // Applied once more: 1, a fresh time; then a scrape changes nothing.
    let same = apply("the same file", registry.reload(toml(base)), applied_at);
    metrics::with_local_recorder(&gauges, || registry.record_gauges());
    assert_eq!(gauges.read(), (Some(1.0), Some(same)));
    assert_eq!(refusals, 7);
}

/// A strict registry's removal is a refusal too.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_strict_removal_sets_zero() {
    let gauges = Gauges::default();
    let registry = metrics::with_local_recorder(&gauges, || {
        Registry::builder(toml("[instances.a.breaker]\n[instances.b.breaker]\n"))
            .strict(true)
            .build()
            .unwrap()
    });
    let (_, built_at) = gauges.read();
    let e = registry
        .reload(toml("[instances.a.breaker]\n"))
        .unwrap_err();
    assert_eq!(e.problem(), &Problem::Removed);
    assert_eq!(gauges.read(), (Some(0.0), built_at));
}

/// "A listener that panics as the reload applies ... the reload is counted as applied": the
/// gauges say applied, with the new time.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panic_during_an_applied_reload_still_reads_applied() {
    let gauges = Gauges::default();
    let panicking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let armed = Arc::clone(&panicking);
    let registry = metrics::with_local_recorder(&gauges, || {
        Registry::builder(toml(
            "[instances.a.breaker]\nwindow_calls = 10\nconsecutive_failures = 1\n",
        ))
        .on_event(move |event: &Event<'_>| {
            if matches!(event.kind, EventKind::StateChanged(_)) && armed.load(Ordering::SeqCst) {
                panic!("listener down");
            }
        })
        .build()
        .unwrap()
    });
    let breaker = registry.breaker("a").unwrap();
    // A refused reload first, so an applied one must move the gauge.
    registry
        .reload_file("/nonexistent/tidewall.toml")
        .unwrap_err();
    let (ok, built_at) = gauges.read();
    assert_eq!(ok, Some(0.0));
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    panicking.store(true, Ordering::SeqCst);
    let before = wall();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        registry.reload(toml(
            "[instances.a.breaker]\nwindow = \"10s\"\nconsecutive_failures = 1\n",
        ))
    }));
    panicking.store(false, Ordering::SeqCst);
    assert!(
        outcome.is_err(),
        "the listener's panic goes on to the caller"
    );
    assert_eq!(breaker.state(), State::Closed, "the reset was applied");
    let (ok, at) = gauges.read();
    assert_eq!(ok, Some(1.0), "counted as applied");
    let at = at.unwrap();
    assert!(at >= built_at.unwrap() && at >= before.floor(), "{at}");
}

/// A reload from a listener of that reload is refused (`Reentrant`) while "that reload goes
/// on unaffected": the outer reload is applied, and ends last.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reentrant_reload_does_not_leave_the_applied_outer_reload_reading_refused() {
    let gauges = Gauges::default();
    let slot: Arc<OnceLock<Arc<Registry>>> = Arc::new(OnceLock::new());
    let inner = Arc::new(Mutex::new(Vec::new()));
    let (slot2, inner2) = (Arc::clone(&slot), Arc::clone(&inner));
    let registry = Arc::new(metrics::with_local_recorder(&gauges, || {
        Registry::builder(toml(
            "[instances.a.breaker]\nwindow_calls = 10\nconsecutive_failures = 1\n",
        ))
        .on_event(move |event: &Event<'_>| {
            if let EventKind::StateChanged(change) = event.kind
                && change.to == State::Closed
                && let Some(registry) = slot2.get()
            {
                let again = registry.reload(toml("[instances.a.breaker]\n"));
                inner2
                    .lock()
                    .unwrap()
                    .push(again.map(|_| ()).map_err(|e| e.problem().clone()));
            }
        })
        .build()
        .unwrap()
    }));
    slot.set(Arc::clone(&registry)).ok().unwrap();
    registry
        .breaker("a")
        .unwrap()
        .try_acquire()
        .unwrap()
        .failure();
    let outer = registry.reload(toml(
        "[instances.a.breaker]\nwindow = \"10s\"\nconsecutive_failures = 1\n",
    ));
    assert!(outer.is_ok(), "{outer:?}");
    assert_eq!(
        *inner.lock().unwrap(),
        [Err(Problem::Reentrant)],
        "the listener's own reload was refused"
    );
    assert_eq!(
        gauges.read().0,
        Some(1.0),
        "the configuration in force is the applied outer reload's"
    );
}

/// Registries each with their own recorder: one's refusal is not the other's.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_registries_under_two_recorders_keep_their_own_gauges() {
    let (ga, gb) = (Gauges::default(), Gauges::default());
    let a = metrics::with_local_recorder(&ga, || {
        Registry::new(toml("[instances.a.breaker]\n")).unwrap()
    });
    let b = metrics::with_local_recorder(&gb, || {
        Registry::new(toml("[instances.b.breaker]\n")).unwrap()
    });
    let (_, b_at) = gb.read();
    a.reload_file("/nonexistent/a.toml").unwrap_err();
    assert_eq!(ga.read().0, Some(0.0));
    assert_eq!(gb.read(), (Some(1.0), b_at), "b's gauges are b's");
    b.reload(toml("[instances.b.breaker]\nconsecutive_failures = 3\n"))
        .unwrap();
    assert_eq!(ga.read().0, Some(0.0), "a is still refused");
}

/// Registries of one name sharing one recorder share one series: a refusal of either must
/// show there at once, so the alert fires.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refusal_shows_in_a_series_two_registries_share() {
    let gauges = Gauges::default();
    let a = metrics::with_local_recorder(&gauges, || {
        Registry::new(toml("[instances.a.breaker]\n")).unwrap()
    });
    let _b = metrics::with_local_recorder(&gauges, || {
        Registry::new(toml("[instances.b.breaker]\n")).unwrap()
    });
    assert_eq!(gauges.values(OK), [1.0], "one series");
    a.reload_file("/nonexistent/a.toml").unwrap_err();
    assert_eq!(gauges.values(OK), [0.0], "the alert sees a's refusal");
}

/// Registries of two names under one recorder each keep their own series: another's build
/// or applied reload does not hide a refusal.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registries_of_two_names_keep_their_own_series() {
    let gauges = Gauges::default();
    let built = |name: &str, text: &str| {
        metrics::with_local_recorder(&gauges, || {
            Registry::builder(toml(text))
                .name(name.to_owned())
                .build()
                .unwrap()
        })
    };
    let a = built("inbound", "[instances.a.breaker]\n");
    a.reload_file("/nonexistent/a.toml").unwrap_err();
    let b = built("outbound", "[instances.b.breaker]\n");
    b.reload(toml("[instances.b.breaker]\nconsecutive_failures = 3\n"))
        .unwrap();
    let mut series = gauges.series(OK);
    series.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        series,
        [
            ("registry=inbound,".to_owned(), 0.0),
            ("registry=outbound,".to_owned(), 1.0)
        ],
        "a's refusal still shows"
    );
    assert_eq!(gauges.series(AT).len(), 2);
    assert_eq!((a.name(), b.name()), ("inbound", "outbound"));
}

/// A registry that fails to build is not a build: it does not count as applied, so it cannot
/// clear a refusal another registry of the process shows.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_build_does_not_clear_a_refusal() {
    let gauges = Gauges::default();
    let a = metrics::with_local_recorder(&gauges, || {
        Registry::new(toml("[instances.a.breaker]\n")).unwrap()
    });
    a.reload_file("/nonexistent/a.toml").unwrap_err();
    let (ok, at) = gauges.read();
    assert_eq!(ok, Some(0.0));
    let failed = metrics::with_local_recorder(&gauges, || {
        Registry::builder(toml("[instances.x.breaker]\n[instances.y.breaker]\n"))
            .max_instances(1)
            .build()
    });
    let Err(error) = failed else {
        panic!("two declared, room for one");
    };
    assert!(matches!(error.problem(), Problem::Full { .. }), "{error:?}");
    assert_eq!(gauges.read(), (Some(0.0), at), "nothing was applied");
}

/// The file watcher's reloads move the gauges as `reload` does: an applied edit 1 and a new
/// time, an unparsable one 0 and the time kept. Real time: the watcher hears the file system.
#[cfg(feature = "watch")]
#[test]
fn the_watchers_reloads_move_the_gauges() {
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tidewall.toml");
        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 2\n").unwrap();
        let gauges = Gauges::default();
        let registry = Arc::new(metrics::with_local_recorder(&gauges, || {
            Registry::new(toml(&std::fs::read_to_string(&path).unwrap())).unwrap()
        }));
        let (_, built_at) = gauges.read();
        let built_at = built_at.unwrap();
        let mut reloads = Box::pin(
            tidewall::config::watch_file_on(
                &tidewall::rt::Tokio,
                Arc::clone(&registry),
                &path,
                Duration::from_millis(20),
            )
            .unwrap(),
        );
        async fn next<S: futures_util::Stream + Unpin>(reloads: &mut S) -> S::Item {
            tokio::time::timeout(Duration::from_secs(1), reloads.next())
                .await
                .expect("the change was seen within a second")
                .expect("the stream goes on")
        }
        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = \"many\"\n").unwrap();
        assert!(next(&mut reloads).await.is_err());
        assert_eq!(gauges.read(), (Some(0.0), Some(built_at)));

        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 5\n").unwrap();
        assert!(next(&mut reloads).await.is_ok());
        let (ok, at) = gauges.read();
        assert_eq!(ok, Some(1.0));
        assert!(at.unwrap() >= built_at);
        assert_eq!(registry.bulkhead("a").unwrap().capacity(), 5);

        std::fs::remove_file(&path).unwrap();
        assert!(next(&mut reloads).await.is_err());
        assert_eq!(gauges.read(), (Some(0.0), at));
    });
}

// ---------------------------------------------------------------------------------------------
// Authority::new
// ---------------------------------------------------------------------------------------------

#[test]
fn an_ipv6_host_without_brackets_is_the_bracketed_uris_authority() {
    let cases: [(&str, &str, Option<u16>, &str); 9] = [
        ("http", "::1", Some(8080), "http://[::1]:8080"),
        ("http", "[::1]", Some(8080), "http://[::1]:8080"),
        ("https", "::1", None, "https://[::1]:443"),
        ("http", "FE80::ABCD", None, "http://[fe80::abcd]:80"),
        ("http", "[FE80::ABCD]", None, "http://[fe80::abcd]:80"),
        (
            "http",
            "::ffff:192.0.2.1",
            Some(1),
            // The URL standard writes no dotted part (as the `url` crate, so reqwest).
            "http://[::ffff:c000:201]:1",
        ),
        (
            "http",
            "2001:db8::",
            Some(65535),
            "http://[2001:db8::]:65535",
        ),
        (
            "https",
            "1:2:3:4:5:6:7:8",
            None,
            "https://[1:2:3:4:5:6:7:8]:443",
        ),
        ("http", "::", Some(0), "http://[::]:0"),
    ];
    for (scheme, host, port, written) in cases {
        let made = Authority::new(scheme, host, port)
            .unwrap_or_else(|| panic!("{scheme} {host} {port:?}"));
        assert_eq!(made.as_str(), written, "{host}");
        assert_eq!(made.to_string(), written, "Display as as_str");
        let from_uri = authority(&format!("{written}/path"));
        assert_eq!(made, from_uri, "{host}");
    }
}

#[test]
fn other_hosts_are_unbracketed_and_lowercased() {
    let cases: [(&str, &str, Option<u16>, &str); 5] = [
        ("http", "127.0.0.1", None, "http://127.0.0.1:80"),
        ("https", "API.Example", None, "https://api.example:443"),
        ("http", "api.example", Some(443), "http://api.example:443"),
        ("https", "localhost", Some(8443), "https://localhost:8443"),
        (
            "http",
            "xn--bcher-kva.example",
            None,
            "http://xn--bcher-kva.example:80",
        ),
    ];
    for (scheme, host, port, written) in cases {
        let made = Authority::new(scheme, host, port).unwrap();
        assert_eq!(made.as_str(), written);
        assert_eq!(made, authority(&format!("{written}/")));
    }
    // An empty host; an unknown scheme without a port.
    assert_eq!(Authority::new("http", "", Some(80)), None);
    assert_eq!(Authority::new("http", "", None), None);
    assert_eq!(Authority::new("gopher", "files.example", None), None);
    assert!(Authority::new("gopher", "files.example", Some(70)).is_some());
    // The port decides: http and https of one host are two authorities.
    assert_ne!(
        Authority::new("http", "a.example", None),
        Authority::new("https", "a.example", None)
    );
    assert_eq!(
        Authority::new("https", "a.example", None),
        Authority::new("https", "A.EXAMPLE", Some(443))
    );
}

/// "`None` ... for an empty host", and an IPv6 host may be "given with them [brackets] or
/// without": empty brackets are an empty host.
// Found by this file: `[]` was `Some(http://[]:80)`.
#[test]
fn empty_brackets_are_an_empty_host() {
    assert_eq!(Authority::new("http", "", Some(80)), None);
    assert_eq!(Authority::new("http", "[]", Some(80)), None);
}

/// Any IPv6 address, as `Ipv6Addr` prints it, with any port: the authority a request to
/// that socket address is filed under, in the URL standard's form.
#[test]
fn any_socket_address_is_the_key_its_requests_are_filed_under() {
    let mut rng = SplitMix64::new(0xA11CE);
    for round in 0..2_000 {
        let mut segments = [0u16; 8];
        for segment in &mut segments {
            // Runs of zeros often, so `::` compression appears in many places.
            *segment = if rng.below_or_equal(2) == 0 {
                0
            } else {
                (rng.next_u64() & 0xffff) as u16
            };
        }
        if round % 7 == 0 {
            segments[..5].fill(0);
            segments[5] = 0xffff; // IPv4-mapped: prints with a dotted tail
        }
        let ip = std::net::Ipv6Addr::from(segments);
        let port = (rng.next_u64() & 0xffff) as u16;
        let scheme = if rng.below_or_equal(1) == 0 {
            "http"
        } else {
            "https"
        };
        let addr = std::net::SocketAddr::from((ip, port));
        let made = Authority::new(scheme, &addr.ip().to_string(), Some(addr.port())).unwrap();
        let uri = format!("{scheme}://{addr}/x");
        assert_eq!(made, authority(&uri), "{uri}");
        // As `Ipv6Addr` prints it, but an IPv4-mapped one's tail in hex, as the URL
        // standard writes it.
        let written = match ip.to_ipv4_mapped() {
            Some(_) => format!("::ffff:{:x}:{:x}", segments[6], segments[7]),
            None => ip.to_string(),
        };
        assert_eq!(made.as_str(), format!("{scheme}://[{written}]:{port}"));
        // Uppercase, as some tools print it: one authority.
        let upper = Authority::new(scheme, &ip.to_string().to_uppercase(), Some(port)).unwrap();
        assert_eq!(made, upper, "{ip}");
    }
}
