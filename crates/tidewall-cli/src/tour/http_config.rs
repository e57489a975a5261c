//! The tour's configured HTTP client: the outbound stack made from a `tidewall.toml`
//! instance by the registry, its requests counted by the registry's listener, and a reload in
//! the middle of the traffic that changes the retries and keeps the down host's breaker open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use http::Request;
use tidewall::breaker::State;
use tidewall::config::{Config, Registry};
use tidewall::http::{Authority, Overrides};
use tidewall::telemetry::{Event, EventKind};

use super::client::{Client, Net};
use super::http_client::{answer, closed_port, get, shown};
use super::report::Section;
use super::scenarios::{Size, settle};
use super::server::Server;

/// The instance before the reload: three attempts, a breaker per host opening on 5 failures
/// in a row; after it, `ATTEMPTS_AFTER` attempts, the breaker's settings unchanged.
const TOML: &str = r#"
[instances.upstream]
deadline = "2s"
attempt_timeout = "1s"
http = {}
[instances.upstream.retry]
backoff = "constant"
initial_delay = "20ms"
jitter = "none"
max_attempts = 3
[instances.upstream.breaker]
consecutive_failures = 5
failure_rate = "off"
break_duration = "30s"
"#;
const ATTEMPTS_AFTER: u32 = 1;

/// What the registry's listener heard of the client's requests.
#[derive(Default)]
struct Heard {
    requests: AtomicUsize,
    succeeded: AtomicUsize,
    refused: AtomicUsize,
    retries: AtomicUsize,
}

impl Heard {
    fn hear(&self, event: &Event<'_>) {
        if event.policy != "http_client" {
            return;
        }
        let count = |n: &AtomicUsize| n.fetch_add(1, Relaxed);
        match event.kind {
            EventKind::RetryScheduled { .. } => drop(count(&self.retries)),
            EventKind::Succeeded => drop((count(&self.requests), count(&self.succeeded))),
            EventKind::Rejected(_) => drop((count(&self.requests), count(&self.refused))),
            _ => drop(count(&self.requests)),
        }
    }
}

pub(super) async fn reload_mid_traffic<R: Net>(rt: &R, server: &Server, size: Size) -> Section {
    let calls = if size == Size::Quick { 6 } else { 12 };
    let mut s = Section::new(
        "http client from tidewall.toml: a reload mid-traffic",
        "Registry::http_client(\"upstream\")?.run(..); registry.reload(edited)?",
    );
    settle(rt, server).await;
    let heard = Arc::new(Heard::default());
    let listener = Arc::clone(&heard);
    let registry = Registry::builder(Config::from_toml(TOML).expect("a valid configuration"))
        .runtime(rt.clone())
        .on_event(move |event| listener.hear(event))
        .build()
        .expect("a valid configuration builds");
    let upstream = registry
        .http_client("upstream")
        .expect("a declared client builds");
    let (up, down) = (server.addr, closed_port());
    let clients = [Client::new(rt.clone(), up), Client::new(rt.clone(), down)];
    let down_attempts = AtomicUsize::new(0);
    let send = |request: Request<()>| {
        let to_down = request.uri().port_u16() == Some(down.port());
        down_attempts.fetch_add(usize::from(to_down), Relaxed);
        let client = clients[usize::from(to_down)].clone();
        async move { answer(client.get(request.uri().path()).await) }
    };
    let mut answered = 0;
    let mut round = async |policies: &tidewall::http::ClientPolicies<R>| {
        let ok = policies
            .run(get(up, "/delay/1"), Overrides::new(), send)
            .await;
        answered += usize::from(ok.is_ok_and(|r| r.status().is_success()));
        let _refused = policies.run(get(down, "/"), Overrides::new(), send).await;
    };
    for _ in 0..calls / 2 {
        round(&upstream).await;
    }
    let before = (down_attempts.load(Relaxed), heard.retries.load(Relaxed));
    let edited = TOML.replace(
        "max_attempts = 3",
        &format!("max_attempts = {ATTEMPTS_AFTER}"),
    );
    let reload = registry.reload(Config::from_toml(&edited).expect("a valid configuration"));
    let kept = reload.as_ref().is_ok_and(|r| r.reset.is_empty());
    // A 503 from the healthy host now makes one attempt: it is retried no more. The key is
    // this run's own (the server counts each key's requests, and serves every runtime).
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let unavailable = format!("/flaky/tour-reload-{}/1000/-", RUNS.fetch_add(1, Relaxed));
    let retries_before = heard.retries.load(Relaxed);
    let one_attempt = upstream
        .run(get(up, &unavailable), Overrides::new(), send)
        .await;
    let retries_after_reload = heard.retries.load(Relaxed) - retries_before;
    for _ in calls / 2..calls {
        round(&upstream).await;
    }
    let state = |addr: SocketAddr| {
        let authority = Authority::new("http", &addr.ip().to_string(), Some(addr.port()))?;
        upstream.breakers()?.state(&authority)
    };
    let requests = heard.requests.load(Relaxed);
    let sent = 2 * calls + 1;
    s.metric(
        "requests: a healthy and a down host, alternating",
        2 * calls,
    )
    .metric("requests the listener heard end, once each", requests)
    .metric(
        "of them answered / refused by a policy",
        format!(
            "{} / {}",
            heard.succeeded.load(Relaxed),
            heard.refused.load(Relaxed)
        ),
    )
    .metric("retries heard before the reload", before.1)
    .metric(
        "down host: connection attempts in all",
        down_attempts.load(Relaxed),
    )
    .metric("down host's breaker after the reload", shown(state(down)));
    s.check("the reload was applied and reset no breaker", kept);
    s.check(
        "the listener heard every request end exactly once",
        requests == sent,
    );
    s.check("the healthy host answered every call", answered == calls);
    s.check(
        "the down host's breaker opened after 5 failures and stayed open through the reload",
        before.0 == 5 && down_attempts.load(Relaxed) == 5 && state(down) == Some(State::Open),
    );
    s.check(
        "after the reload a 503 was answered after one attempt, with no retry",
        one_attempt.is_ok_and(|r| r.status().as_u16() == 503) && retries_after_reload == 0,
    );
    s
}
