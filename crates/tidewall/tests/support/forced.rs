//! What the tests of breakers forced open or closed by hand share: a listener's log of state
//! changes, a force by the state it makes, and a registry's HTTP client with a host forced
//! open before its first request.

use std::sync::{Arc, Mutex};

use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, KeyedCircuitBreaker, State};
use tidewall::config::{Config, Registry, Reload};
use tidewall::http::{Authority, ClientPolicies, Overrides};
use tidewall::rt::Clock;
use tidewall::telemetry::{Event, EventKind};

/// The state changes a listener heard, as `from -> to`.
pub type Changes = Arc<Mutex<Vec<String>>>;

pub fn changes_of(changes: &Changes) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
    let log = Arc::clone(changes);
    move |event: &Event<'_>| {
        if let EventKind::StateChanged(change) = event.kind {
            log.lock()
                .unwrap()
                .push(format!("{} -> {}", change.from, change.to));
        }
    }
}

pub fn take(changes: &Changes) -> Vec<String> {
    std::mem::take(&mut *changes.lock().unwrap())
}

/// `settings` built with a listener of its state changes: the breaker, and what it heard.
pub fn listened<R: Clock>(settings: CircuitBreakerBuilder<R>) -> (CircuitBreaker<R>, Changes) {
    let changes = Changes::default();
    let breaker = settings.on_event(changes_of(&changes)).build().unwrap();
    (breaker, changes)
}

/// Forces `breaker` open by hand for `State::ForcedOpen`, closed for any other state.
pub fn force<R: Clock>(breaker: &CircuitBreaker<R>, forced: State) {
    match forced {
        State::ForcedOpen => breaker.force_open(),
        _ => breaker.force_closed(),
    }
}

/// An `[http]` client whose hosts' breakers open on one failure, in a window of 50 calls.
pub const OUTBOUND: &str = r#"
[instances.outbound]
http = {}
[instances.outbound.breaker]
consecutive_failures = 1
window_calls = 50
"#;

/// A registry of `OUTBOUND` (strict or lenient), its client `outbound`, that client's
/// breakers, and the host `https://down.example` forced open in them before its first request.
pub fn down_before_its_first_request(
    strict: bool,
) -> (
    Registry,
    ClientPolicies,
    KeyedCircuitBreaker<Authority>,
    Authority,
) {
    let registry = Registry::builder(Config::from_toml(OUTBOUND).unwrap())
        .strict(strict)
        .build()
        .unwrap();
    let client = registry.http_client("outbound").unwrap();
    let breakers = client.breakers().unwrap();
    let down = Authority::new("https", "down.example", None).unwrap();
    breakers.get_or_make(&down).unwrap().force_open();
    (registry, client, breakers, down)
}

/// Reloads `registry` with `OUTBOUND` whose window (`window_calls = 50`) is `window` instead.
pub fn reload_window(registry: &Registry, window: &str) -> Reload {
    let reshaped = OUTBOUND.replace("window_calls = 50", window);
    registry
        .reload(Config::from_toml(&reshaped).unwrap())
        .unwrap()
}

/// One request to `uri` answered with `status`; how many times it was sent, and how it ended.
pub async fn request(
    policies: &ClientPolicies,
    uri: &str,
    status: u16,
) -> (u32, Result<u16, String>) {
    let sent = Mutex::new(0);
    let request = http::Request::get(uri).body(()).unwrap();
    let result = policies
        .run(request, Overrides::new(), |_request| {
            *sent.lock().unwrap() += 1;
            let mut response = http::Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            async { Ok::<_, std::io::Error>(response) }
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
