#![cfg(all(
    feature = "toml",
    feature = "http",
    feature = "metrics",
    feature = "tokio",
    feature = "test-util",
    feature = "tower"
))]
//! Hostile black-box re-attack, from the rustdoc alone, of the fixes to `reconfigure`, the
//! registry's HTTP clients under racing reloads, their gauges, the `[http]` checks and a
//! count window's reads under lapping writers. Every multi-thread scenario is bounded by a
//! channel watchdog; every random choice is seeded.

mod common;
mod keyed_support;
mod support;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::Duration;

use keyed_support::client::auth;
use support::{HOUR, Rng};
use tidewall::ConfigError;
use tidewall::breaker::{CircuitBreaker, State, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{Config, Problem, Registry};
use tidewall::http::ClientPolicies;
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::FakeClock;

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// Runs each job on its own thread; fails (never hangs) if they are not all done in `limit`.
fn bounded(limit: Duration, what: &str, jobs: Vec<Box<dyn FnOnce() + Send>>) {
    let (done, finished) = mpsc::channel();
    let n = jobs.len();
    for job in jobs {
        let done = done.clone();
        std::thread::spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = done.send(out.err().map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            }));
        });
    }
    for _ in 0..n {
        match finished.recv_timeout(limit) {
            Ok(None) => {}
            Ok(Some(panic)) => panic!("{what}: a thread panicked: {panic}"),
            Err(_) => panic!("{what}: threads still running after {limit:?} (a deadlock?)"),
        }
    }
}

fn count(calls: u32) -> Option<tidewall::breaker::CircuitBreakerBuilder> {
    Some(
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .window(Window::Count { calls }),
    )
}

fn queue0(n: usize) -> Option<tidewall::bulkhead::BulkheadBuilder> {
    Some(Bulkhead::builder(n).max_queue(0))
}

fn window_of<R: tidewall::rt::Clock>(p: &ClientPolicies<R>) -> u32 {
    match p.breakers().unwrap().policy().window() {
        Window::Count { calls } => calls,
        other => panic!("{other:?}"),
    }
}

fn bulkhead_of<R: tidewall::rt::Clock>(p: &ClientPolicies<R>) -> Option<usize> {
    let h = auth("http://probe/");
    p.bulkheads().map(|t| {
        drop(t.try_acquire(&h).unwrap());
        t.get(&h).unwrap().capacity()
    })
}

// ---------------------------------------------------------------------------------------
// 1. Reconfigurations of one stack from many clones run one at a time.
// ---------------------------------------------------------------------------------------

/// "Reconfigurations of one stack [...] run one at a time, each on the stack the one before
/// left", and `breakers_reset` counts "every authority the table held then". With two window
/// shapes, K authorities always held, and each call one shape: serialized calls reset K
/// exactly when the shape flips, so the number of resetting calls is odd iff the final shape
/// differs from the first. Two calls planned on the same stack would both reset (or neither).
#[test]
fn reconfigurations_from_clones_are_serialized_and_count_every_reset() {
    const K: usize = 3;
    let x = || {
        ClientPolicies::builder()
            .name("settings")
            .breaker(count(10))
            .bulkhead(queue0(1))
            .rate_limit(None)
    };
    let y = || {
        ClientPolicies::builder()
            .name("settings")
            .breaker(count(20))
            .bulkhead(None)
            .rate_limit(Some(tidewall::rate::KeyedRateLimiter::builder(1, HOUR)))
    };
    let policies = x().name("race").build().unwrap();
    let hosts: Vec<_> = (0..K).map(|i| auth(&format!("http://h{i}/"))).collect();
    for h in &hosts {
        policies
            .breakers()
            .unwrap()
            .try_acquire(h)
            .unwrap()
            .failure();
    }
    let mut total_flips = 0;
    for round in 0..40u64 {
        let before = window_of(&policies);
        let resets: Arc<Mutex<Vec<usize>>> = Arc::default();
        let jobs: Vec<Box<dyn FnOnce() + Send>> = (0..4u64)
            .map(|t| {
                let (policies, resets) = (policies.clone(), Arc::clone(&resets));
                Box::new(move || {
                    let mut rng = Rng::new(round * 97 + t);
                    for _ in 0..15 {
                        let settings = if rng.chance(2) { x() } else { y() };
                        let retuned = policies.reconfigure(settings).unwrap();
                        resets.lock().unwrap().push(retuned.breakers_reset);
                    }
                }) as Box<dyn FnOnce() + Send>
            })
            .collect();
        bounded(Duration::from_secs(20), "reconfigurations", jobs);
        let resets = resets.lock().unwrap().clone();
        for h in &hosts {
            assert!(
                policies.breakers().unwrap().state(h).is_some(),
                "round {round}: an authority forgotten"
            );
        }
        assert!(
            resets.iter().all(|&n| n == 0 || n == K),
            "round {round}: a reset counts every authority held ({K}): {resets:?}"
        );
        let flips = resets.iter().filter(|&&n| n == K).count();
        total_flips += flips;
        let after = window_of(&policies);
        assert_eq!(
            flips % 2 == 1,
            before != after,
            "round {round}: {flips} resetting calls from window {before} to {after}: two \
             reconfigurations ran on the same stack ({resets:?})"
        );
        let stack = (
            after,
            bulkhead_of(&policies),
            policies.rate_limiters().is_some(),
        );
        assert!(
            matches!(stack, (10, Some(1), false) | (20, None, true)),
            "round {round}: a stack of both settings: {stack:?}"
        );
        assert_eq!(policies.name(), "race");
        if let Some(t) = policies.bulkheads() {
            assert_eq!(t.name(), "race", "an added table carries the stack's name");
        }
        if let Some(t) = policies.rate_limiters() {
            assert_eq!(t.name(), "race", "an added table carries the stack's name");
        }
    }
    assert!(total_flips > 0, "no reconfiguration reset anything");
}

// ---------------------------------------------------------------------------------------
// 1b. A listener's reconfiguration: refused on the reconfiguring thread, served elsewhere.
// ---------------------------------------------------------------------------------------

thread_local! {
    /// How many reconfigurations (or reloads) this thread is inside of, as the test made them.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn inside<T>(f: impl FnOnce() -> T) -> T {
    DEPTH.with(|d| d.set(d.get() + 1));
    let out = f();
    DEPTH.with(|d| d.set(d.get() - 1));
    out
}

/// Listener reconfigurations answered off and on a reconfiguring thread.
static ANSWERS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// A breaker that reconfigures its own stack from its listener whenever it changes state.
fn reflexive(
    slot: &Arc<OnceLock<ClientPolicies>>,
    wrong: &Arc<Mutex<Vec<String>>>,
    calls: u32,
) -> Option<tidewall::breaker::CircuitBreakerBuilder> {
    let (slot2, wrong2) = (Arc::clone(slot), Arc::clone(wrong));
    let listener = move |event: &Event<'_>| {
        let (EventKind::StateChanged(_), Some(policies)) = (event.kind, slot2.get()) else {
            return;
        };
        let nested = DEPTH.with(Cell::get) > 0;
        let settings = ClientPolicies::builder().breaker(reflexive(&slot2, &wrong2, 30));
        let again = inside(|| policies.reconfigure(settings));
        let fine = match &again {
            Err(ConfigError::Conflict { .. }) => nested,
            Ok(_) => !nested,
            Err(_) => false,
        };
        ANSWERS[usize::from(nested)].fetch_add(1, SeqCst);
        if !fine {
            wrong2
                .lock()
                .unwrap()
                .push(format!("nested {nested}: {again:?}"));
        }
    };
    Some(
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .window(Window::Count { calls })
            .on_event(listener),
    )
}

/// "[`ConfigError::Conflict`] [...] when called from a listener told of this stack's
/// reconfiguration, on its thread": refused there, and only there. A listener told of an
/// ordinary trip on a request thread, while another thread reconfigures, waits its turn and
/// is applied; nobody waits for ever.
#[test]
fn a_listeners_reconfiguration_is_refused_only_on_the_reconfiguring_thread() {
    let slot: Arc<OnceLock<ClientPolicies>> = Arc::default();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let policies = ClientPolicies::builder()
        .breaker(reflexive(&slot, &wrong, 10))
        .build()
        .unwrap();
    let _ = slot.set(policies.clone());
    let tripping = {
        let policies = policies.clone();
        Box::new(move || {
            let mut rng = Rng::new(7);
            for _ in 0..600 {
                let host = auth(&format!("http://t{}/", rng.below(16)));
                if let Ok(permit) = policies.breakers().unwrap().try_acquire(&host) {
                    permit.failure();
                }
            }
        }) as Box<dyn FnOnce() + Send>
    };
    let reconfiguring = {
        let (policies, slot, wrong) = (policies.clone(), Arc::clone(&slot), Arc::clone(&wrong));
        Box::new(move || {
            for round in 0..300u32 {
                let settings = ClientPolicies::builder().breaker(reflexive(
                    &slot,
                    &wrong,
                    10 + 10 * (round % 2),
                ));
                inside(|| policies.reconfigure(settings)).unwrap();
            }
        }) as Box<dyn FnOnce() + Send>
    };
    bounded(
        Duration::from_secs(30),
        "a listener's reconfiguration",
        vec![tripping, reconfiguring],
    );
    let wrong = wrong.lock().unwrap().clone();
    let answers = [ANSWERS[0].load(SeqCst), ANSWERS[1].load(SeqCst)];
    assert!(
        answers[0] > 0 && answers[1] > 0,
        "both kinds heard: {answers:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(matches!(window_of(&policies), 10 | 20 | 30));
    policies
        .reconfigure(ClientPolicies::builder().breaker(count(40)))
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// 2. Reloads racing reconfigurations whose listeners look up or reconfigure other clients.
// ---------------------------------------------------------------------------------------

/// Reconfigurations of `b` from a listener of `a`'s resets.
static CROSS: AtomicUsize = AtomicUsize::new(0);

/// Both clients' sections; a bulkhead always (once `[http]` is removed the registry builds
/// the plain policies, and keeps them: a later file without the bulkhead is refused).
fn two_clients(calls: u32, bulkhead: usize, http: bool) -> Config {
    let mut text = String::new();
    for name in ["a", "b"] {
        text.push_str(&format!(
            "[instances.{name}]\n{}[instances.{name}.breaker]\nconsecutive_failures = 1\n\
             failure_rate = \"off\"\nwindow_calls = {calls}\n",
            if http { "http = {}\n" } else { "" }
        ));
        text.push_str(&format!(
            "[instances.{name}.bulkhead]\nmax_concurrent = {bulkhead}\nmax_queue = 0\n"
        ));
    }
    config(&text)
}

/// "Nothing but that turn is held meanwhile (not the registry's maps, nor another client's),
/// so a listener told of either may look the registry up", with "A reload that removes
/// `[http]` keeps the client": a reload (with and without `[http]`), code reconfiguring
/// `a` and `b`, and a listener of `a`'s resets that looks the registry up and reconfigures
/// `b` (one way only: no cycle of the test's own making). Nobody waits for ever, every
/// answer is the documented one, and each client ends on one call's settings, whole.
#[test]
fn reloads_and_cross_client_listeners_never_deadlock_and_leave_whole_stacks() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let slot: Arc<OnceLock<Arc<Registry>>> = Arc::default();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let (inside_slot, told) = (Arc::clone(&slot), Arc::clone(&wrong));
    let registry = {
        let _entered = handle.enter();
        Arc::new(
            Registry::builder(two_clients(10, 2, true))
                .on_event(move |event: &Event<'_>| {
                    let (EventKind::StateChanged(_), Some(registry)) =
                        (event.kind, inside_slot.get())
                    else {
                        return;
                    };
                    let _ = registry.http_clients();
                    let _ = registry.breakers();
                    if event.name == "a" {
                        let b = registry.http_client("b").unwrap();
                        let z = ClientPolicies::builder()
                            .breaker(count(50))
                            .bulkhead(queue0(5));
                        CROSS.fetch_add(1, SeqCst);
                        if let Err(e) = b.reconfigure(z) {
                            told.lock()
                                .unwrap()
                                .push(format!("b from a's listener: {e:?}"));
                        }
                    }
                })
                .build()
                .unwrap(),
        )
    };
    let _ = slot.set(Arc::clone(&registry));
    let a = registry.http_client("a").unwrap();
    let b = registry.http_client("b").unwrap();
    let code = |client: ClientPolicies, windows: [u32; 2], size: usize, tag: u64| {
        let handle = handle.clone();
        Box::new(move || {
            let _entered = handle.enter();
            let mut rng = Rng::new(tag);
            for round in 0..400usize {
                let host = auth(&format!("http://h{}/", rng.below(6)));
                if let Ok(permit) = client.breakers().unwrap().try_acquire(&host) {
                    permit.failure();
                }
                let settings = ClientPolicies::builder()
                    .breaker(count(windows[round % 2]))
                    .bulkhead(if round % 2 == 0 { queue0(size) } else { None });
                client.reconfigure(settings).unwrap();
            }
        }) as Box<dyn FnOnce() + Send>
    };
    let reloading = {
        let (registry, handle, wrong) = (Arc::clone(&registry), handle.clone(), Arc::clone(&wrong));
        Box::new(move || {
            let _entered = handle.enter();
            let mut rng = Rng::new(3);
            for round in 0..400usize {
                let http = !rng.chance(4);
                let next = if round % 2 == 0 {
                    two_clients(20, 6, http)
                } else {
                    two_clients(10, 2, http)
                };
                if let Err(e) = registry.reload(next) {
                    wrong
                        .lock()
                        .unwrap()
                        .push(format!("reload {round} (http {http}): {e}"));
                }
            }
        }) as Box<dyn FnOnce() + Send>
    };
    bounded(
        Duration::from_secs(40),
        "reloads racing reconfigurations",
        vec![
            reloading,
            code(a.clone(), [30, 40], 3, 11),
            code(b.clone(), [60, 70], 4, 12),
        ],
    );
    let wrong = wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(CROSS.load(SeqCst) > 0, "a's listener never reconfigured b");
    let _entered = handle.enter();
    for (name, client) in [("a", &a), ("b", &b)] {
        let stack = (window_of(client), bulkhead_of(client));
        let whole = match stack {
            (10, Some(2)) | (20, Some(6)) => true,
            (30, Some(3)) | (40, None) => name == "a",
            (60, Some(4)) | (70, None) | (50, Some(5)) => name == "b",
            _ => false,
        };
        assert!(whole, "{name}: a stack of mixed settings: {stack:?}");
        assert_eq!(client.breakers().unwrap().name(), name);
        if let Some(t) = client.bulkheads() {
            assert_eq!(t.name(), name, "a stage a reconfiguration added");
        }
    }
    assert_eq!(registry.http_clients().len(), 2, "both clients kept");
    registry.reload(two_clients(20, 7, false)).unwrap();
    assert_eq!(
        (window_of(&a), bulkhead_of(&b)),
        (20, Some(7)),
        "still reconfigured without [http]"
    );
}

// ---------------------------------------------------------------------------------------
// 2b. Reentrant reloads: refused in a client's reconfiguration, and nowhere else after.
// ---------------------------------------------------------------------------------------

const QUIET: u8 = 0;
const RELOAD: u8 = 1;
const PANIC: u8 = 2;

/// `Problem::Reentrant`: "`Registry::reload` [...] was called on the thread already
/// reloading that registry, or reconfiguring one of its HTTP clients: from a listener, told
/// of that reload's or reconfiguration's own resets", and "A listener that panics as a
/// breaker is reset leaves nothing half done [...] then the first such panic goes on to the
/// caller". After a refusal or a panic the thread is no longer reconfiguring: a listener of
/// an ordinary trip there may reload, and the thread may reconfigure and reload again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reentrant_reloads_are_refused_only_inside_and_panics_leave_no_mark() {
    let text = |calls: u32| {
        config(&format!(
            "[instances.a]\nhttp = {{}}\n[instances.a.breaker]\nconsecutive_failures = 1\n\
             failure_rate = \"off\"\nwindow_calls = {calls}\n"
        ))
    };
    let slot: Arc<OnceLock<Arc<Registry>>> = Arc::default();
    let answers: Arc<Mutex<Vec<String>>> = Arc::default();
    let mode = Arc::new(AtomicU8::new(QUIET));
    let (inner, told, armed) = (Arc::clone(&slot), Arc::clone(&answers), Arc::clone(&mode));
    let registry = Arc::new(
        Registry::builder(text(10))
            .on_event(move |event: &Event<'_>| {
                let (EventKind::StateChanged(_), Some(registry)) = (event.kind, inner.get()) else {
                    return;
                };
                // One-shot: the listener's own reload may reset hosts too (then refused).
                match armed.swap(QUIET, SeqCst) {
                    RELOAD => {
                        let again = registry.reload((*registry.config()).clone());
                        told.lock().unwrap().push(match again {
                            Ok(_) => "applied".to_owned(),
                            Err(e) => format!("{:?}", e.problem()),
                        });
                    }
                    PANIC => panic!("a listener panics as a breaker is reset"),
                    _ => {}
                }
            })
            .build()
            .unwrap(),
    );
    let _ = slot.set(Arc::clone(&registry));
    let a = registry.http_client("a").unwrap();
    let trip = |host: &str| {
        if let Ok(permit) = a.breakers().unwrap().try_acquire(&auth(host)) {
            permit.failure();
        }
    };
    let take = || std::mem::take(&mut *answers.lock().unwrap());
    // Inside a reconfiguration from code: refused.
    trip("http://x/");
    mode.store(RELOAD, SeqCst);
    let retuned = a
        .reconfigure(ClientPolicies::builder().breaker(count(20)))
        .unwrap();
    assert_eq!(retuned.breakers_reset, 1);
    assert_eq!(take(), vec!["Reentrant".to_owned()]);
    // An ordinary trip on this same thread: not a reconfiguration, the reload applies.
    mode.store(RELOAD, SeqCst);
    trip("http://y/");
    assert_eq!(
        take(),
        vec!["applied".to_owned()],
        "a trip's listener may reload"
    );
    // A reconfiguration whose listener panics: the panic comes out, the thread is free.
    trip("http://z/");
    mode.store(PANIC, SeqCst);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.reconfigure(ClientPolicies::builder().breaker(count(30)))
    }));
    assert!(
        panicked.is_err(),
        "the listener's panic goes on to the caller"
    );
    assert_eq!(window_of(&a), 30, "the stack was replaced whole");
    mode.store(RELOAD, SeqCst);
    trip("http://w/");
    assert_eq!(
        take(),
        vec!["applied".to_owned()],
        "after a panic in a reconfiguration"
    );
    // A reload whose listener panics: the same.
    trip("http://v/");
    mode.store(PANIC, SeqCst);
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| registry.reload(text(40))));
    assert!(panicked.is_err());
    mode.store(RELOAD, SeqCst);
    trip("http://u/");
    assert_eq!(
        take(),
        vec!["applied".to_owned()],
        "after a panic in a reload"
    );
    mode.store(QUIET, SeqCst);
    a.reconfigure(ClientPolicies::builder().breaker(count(50)))
        .unwrap();
    registry.reload(text(40)).unwrap();
    assert_eq!(window_of(&a), 40);
}

// ---------------------------------------------------------------------------------------
// 3. Gauges of stages the stack does not have read 0.
// ---------------------------------------------------------------------------------------

/// Every `tidewall_keyed_*` gauge named `name` in one scrape, as (name, policy or state, value).
fn scrape(record: impl FnOnce(), name: &str) -> Vec<(String, String, f64)> {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, record);
    let mut out = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |k: &str| {
            key.labels()
                .find(|l| l.key() == k)
                .map(|l| l.value().to_owned())
        };
        if label("name").as_deref() != Some(name) || !key.name().starts_with("tidewall_keyed") {
            continue;
        }
        if let DebugValue::Gauge(v) = value {
            let which = label("policy")
                .or_else(|| label("state"))
                .unwrap_or_default();
            out.push((key.name().to_owned(), which, v.into_inner()));
        }
    }
    out
}

fn gauge(g: &[(String, String, f64)], name: &str, which: &str) -> Option<f64> {
    g.iter()
        .find(|(n, w, _)| n == name && w == which)
        .map(|(_, _, v)| *v)
}

const TABLES: [&str; 4] = [
    "keyed_breaker",
    "keyed_bulkhead",
    "keyed_adaptive",
    "keyed_rate",
];
const STATES: [&str; 3] = ["closed", "open", "half_open"];

fn assert_all_zero(g: &[(String, String, f64)], what: &str, except: &[&str]) {
    for table in TABLES.iter().filter(|t| !except.contains(t)) {
        for metric in ["tidewall_keyed_keys", "tidewall_keyed_max_keys"] {
            assert_eq!(
                gauge(g, metric, table),
                Some(0.0),
                "{what}: {metric}{{{table}}}: {g:?}"
            );
        }
    }
    if !except.contains(&"keyed_breaker") {
        for state in STATES {
            assert_eq!(
                gauge(g, "tidewall_keyed_breaker_keys", state),
                Some(0.0),
                "{what}: breaker keys {state}: {g:?}"
            );
        }
    }
}

/// "0 and 0 for a stage the stack does not have": never had, and just removed (by
/// `reconfigure`, and by a reload that drops the stages or the name).
#[test]
fn gauges_of_absent_or_removed_stages_read_zero() {
    use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let policies = ClientPolicies::builder()
        .name("gz")
        .breaker(count(10))
        .bulkhead(None)
        .build()
        .unwrap();
    let g = scrape(|| policies.record_gauges(), "gz");
    assert_all_zero(&g, "never had", &["keyed_breaker"]);
    // A bulkhead or an adaptive limit, not both: each other round.
    let all = |round: usize| {
        let adaptive =
            AdaptiveLimiter::builder(AnyAlgorithm::from(Aimd::builder().build().unwrap()));
        let (bulkhead, adaptive) = if round.is_multiple_of(2) {
            (queue0(4), None)
        } else {
            (None, Some(adaptive))
        };
        ClientPolicies::builder()
            .name("other")
            .breaker(count(10))
            .bulkhead(bulkhead)
            .adaptive(adaptive)
            .rate_limit(Some(tidewall::rate::KeyedRateLimiter::builder(100, HOUR)))
    };
    let none = || {
        ClientPolicies::builder()
            .breaker(None)
            .bulkhead(None)
            .adaptive(None)
            .rate_limit(None)
            .retry_budget(None)
    };
    for round in 0..20 {
        policies.reconfigure(all(round)).unwrap();
        let h = auth(&format!("http://g{round}/"));
        policies
            .breakers()
            .unwrap()
            .try_acquire(&h)
            .unwrap()
            .failure();
        assert!(policies.rate_limiters().unwrap().check_key(&h).is_ok());
        let g = scrape(|| policies.record_gauges(), "gz");
        assert_eq!(
            gauge(&g, "tidewall_keyed_breaker_keys", "open"),
            Some(1.0),
            "{g:?}"
        );
        policies.reconfigure(none()).unwrap();
        let g = scrape(|| policies.record_gauges(), "gz");
        assert_all_zero(&g, &format!("removed in round {round}"), &[]);
    }
    // Through a registry: a reload that drops every section of the client.
    let full = config(
        "[instances.gr]\nhttp = {}\n[instances.gr.breaker]\nconsecutive_failures = 1\n\
         [instances.gr.bulkhead]\nmax_concurrent = 2\n[instances.gr.rate_limit]\ncount = 5\n\
         period = \"1s\"\n",
    );
    let registry = Registry::new(full.clone()).unwrap();
    let gr = registry.http_client("gr").unwrap();
    let down = auth("http://down/");
    gr.breakers().unwrap().try_acquire(&down).unwrap().failure();
    let g = scrape(|| registry.record_gauges(), "gr");
    assert_eq!(
        gauge(&g, "tidewall_keyed_breaker_keys", "open"),
        Some(1.0),
        "{g:?}"
    );
    registry
        .reload(config("[instances.gr]\nhttp = {}\n"))
        .unwrap();
    assert_all_zero(
        &scrape(|| registry.record_gauges(), "gr"),
        "reload dropped them",
        &[],
    );
    // The name no longer declared: refused, the client (now stageless) unchanged.
    let removed = registry
        .reload(config("[instances.other]\nhttp = {}\n"))
        .unwrap_err();
    assert_eq!(removed.problem(), &Problem::Removed, "{removed}");
    assert_all_zero(&scrape(|| gr.record_gauges(), "gr"), "still dropped", &[]);
    registry.reload(full).unwrap();
    let g = scrape(|| registry.record_gauges(), "gr");
    assert_eq!(
        gauge(&g, "tidewall_keyed_breaker_keys", "open"),
        Some(0.0),
        "re-added empty: {g:?}"
    );
    assert_eq!(
        gauge(&g, "tidewall_keyed_max_keys", "keyed_breaker"),
        Some(10_000.0),
        "{g:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. `[http]` statuses and methods.
// ---------------------------------------------------------------------------------------

/// "an `[http]` status that is not an error status (400 to 999), or a method that is not one
/// or is not spelled in capitals ([`Problem::Malformed`]); a status in both lists
/// ([`Problem::NotHere`])": from the file, unchecked into `Registry::new` and into a reload.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn http_sections_refuse_what_the_docs_refuse_wherever_they_come_from() {
    let with = |rules: &str| format!("[instances.c]\nhttp = {{ {rules} }}\n");
    let registry = Registry::new(config(&with(""))).unwrap();
    // (rules, the key refused, Malformed rather than NotHere)
    let mut cases: Vec<(String, &str, bool)> = Vec::new();
    for status in [0u16, 1, 100, 199, 200, 204, 302, 399, 1000, 4000, 65535] {
        cases.push((
            format!("retry_statuses = [{status}]"),
            "retry_statuses",
            true,
        ));
        cases.push((
            format!("fail_statuses = [503, {status}]"),
            "fail_statuses",
            true,
        ));
    }
    for method in [
        "get", "post", "Post", "pOST", "PoSt", "patch", "", "PO ST", "GET\n",
    ] {
        let rules = format!("replay_methods = [\"PUT\", {method:?}]");
        cases.push((rules, "replay_methods", true));
    }
    for (retry, fail) in [
        ("409", "409"),
        ("400, 999", "998, 999"),
        ("521", "409, 521"),
    ] {
        let rules = format!("retry_statuses = [{retry}], fail_statuses = [{fail}]");
        cases.push((rules, "fail_statuses", false));
    }
    let expected = |malformed: bool, p: &Problem| match p {
        Problem::Malformed(_) => malformed,
        Problem::NotHere(_) => !malformed,
        _ => false,
    };
    for &(ref rules, key, malformed) in &cases {
        let text = with(rules);
        let path = format!("instances.c.http.{key}");
        let refused = Config::from_toml(&text).expect_err(&text);
        assert!(
            expected(malformed, refused.problem()),
            "{text}: {refused:?}"
        );
        assert_eq!(refused.path(), path, "{text}");
        if rules.contains("\"post\"") {
            assert!(refused.to_string().contains("write \"POST\""), "{refused}");
        }
        let unchecked: Config = toml::from_str(&text).unwrap();
        let refused = registry.reload(unchecked.clone()).expect_err(&text);
        assert!(
            expected(malformed, refused.problem()),
            "reload {text}: {refused:?}"
        );
        assert_eq!(refused.path(), path, "reload {text}");
        let refused = Registry::new(unchecked).expect_err(&text);
        assert!(
            expected(malformed, refused.problem()),
            "new {text}: {refused:?}"
        );
    }
    for rules in [
        "retry_statuses = [400, 418, 999]",
        "fail_statuses = [400, 999]",
        "retry_statuses = [], fail_statuses = []",
        "replay_methods = [\"POST\", \"PATCH\", \"PURGE\"]",
    ] {
        let text = with(rules);
        let parsed = Config::from_toml(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        registry
            .reload(parsed)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// 5. Count windows read under lapping writers.
// ---------------------------------------------------------------------------------------

/// Rounds of writers racing on a count window of 2, 3 or 4 calls with exactly one failure
/// per key per round, the window filled with successes between rounds (quiescent, so every
/// slot is overwritten): at no instant can the slots hold more than one failure, so
/// `counts()` must never read more, nor more calls than the window, and `failure_rate(1.0)`
/// must never trip. `read(key)` gives (state closed, counts); `record(key, failed)` records.
fn lapping_rounds(
    what: &str,
    keys: u32,
    read: Arc<dyn Fn(u32) -> (bool, tidewall::breaker::Counts) + Send + Sync>,
    record: Arc<dyn Fn(u32, bool) + Send + Sync>,
    windows: u32,
) {
    const WRITERS: usize = 3;
    const ROUNDS: u64 = 4_000;
    let barrier = Arc::new(Barrier::new(WRITERS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen_failure = Arc::new(AtomicUsize::new(0));
    let mut jobs: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for w in 0..WRITERS {
        let (barrier, record) = (Arc::clone(&barrier), Arc::clone(&record));
        jobs.push(Box::new(move || {
            let mut rng = Rng::new(1_000 + w as u64);
            for round in 0..ROUNDS {
                barrier.wait();
                let mut plan: Vec<(u32, bool)> = Vec::new();
                for key in 0..keys {
                    let failing = (round + u64::from(key)) % WRITERS as u64 == w as u64;
                    let at = if failing {
                        usize::try_from(rng.below(12)).unwrap()
                    } else {
                        usize::MAX
                    };
                    plan.extend((0..12).map(|i| (key, i == at)));
                }
                for (key, failed) in plan {
                    record(key, failed);
                }
                barrier.wait();
            }
        }));
    }
    {
        let (read, stop, bad) = (Arc::clone(&read), Arc::clone(&stop), Arc::clone(&bad));
        let seen_failure = Arc::clone(&seen_failure);
        jobs.push(Box::new(move || {
            while !stop.load(SeqCst) {
                for key in 0..keys {
                    let (closed, c) = read(key);
                    seen_failure.fetch_add(usize::from(c.failures == 1), SeqCst);
                    if !closed || c.failures > 1 || c.calls > windows || c.failures > c.calls {
                        bad.lock()
                            .unwrap()
                            .push(format!("key {key}: closed {closed}, {c:?}"));
                    }
                }
            }
        }));
    }
    {
        let (barrier, record, stop) =
            (Arc::clone(&barrier), Arc::clone(&record), Arc::clone(&stop));
        jobs.push(Box::new(move || {
            for _ in 0..ROUNDS {
                for key in 0..keys {
                    for _ in 0..windows {
                        record(key, false);
                    }
                }
                barrier.wait();
                barrier.wait();
            }
            stop.store(true, SeqCst);
        }));
    }
    bounded(Duration::from_secs(40), what, jobs);
    assert!(
        seen_failure.load(SeqCst) > 0,
        "{what}: no read ever saw a failure"
    );
    let bad = bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "{what}: {} implausible reads, first {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

fn rate_one(calls: u32) -> tidewall::breaker::CircuitBreakerBuilder<FakeClock> {
    CircuitBreaker::builder()
        .runtime(FakeClock::new())
        .window(Window::Count { calls })
        .failure_rate(1.0)
        .minimum_calls(calls)
}

#[test]
fn a_count_window_under_lapping_writers_never_over_reads_its_failures() {
    for calls in [2, 3, 4] {
        let breaker = rate_one(calls).build().unwrap();
        let (b1, b2) = (breaker.clone(), breaker.clone());
        let read = Arc::new(move |_: u32| (b1.state() == State::Closed, b1.counts()));
        let record = Arc::new(move |_: u32, failed: bool| match b2.try_acquire() {
            Ok(p) if failed => p.failure(),
            Ok(p) => p.success(),
            Err(e) => panic!("a breaker at 100 % tripped: {e:?}, {:?}", b2.counts()),
        });
        lapping_rounds(&format!("window of {calls}"), 1, read, record, calls);
        assert_eq!(breaker.state(), State::Closed);
    }
    // The same through a keyed table, two keys at once.

    for calls in [2, 4] {
        let table = rate_one(calls).keyed::<u32>().build().unwrap();
        let (t1, t2) = (table.clone(), table.clone());
        let read = Arc::new(move |key: u32| {
            let counts = t1.counts(&key).unwrap_or_default();
            (t1.state(&key).is_none_or(|s| s == State::Closed), counts)
        });
        let record = Arc::new(move |key: u32, failed: bool| match t2.try_acquire(&key) {
            Ok(p) if failed => p.failure(),
            Ok(p) => p.success(),
            Err(e) => panic!("key {key} at 100 % tripped: {e:?}, {:?}", t2.counts(&key)),
        });
        lapping_rounds(&format!("keyed window of {calls}"), 2, read, record, calls);
        assert!(table.not_closed().is_empty(), "{:?}", table.not_closed());
    }
}
