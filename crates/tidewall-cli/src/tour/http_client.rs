//! The tour's HTTP client section: the standard outbound stack (`ClientPolicies`, the loop
//! behind tidewall-reqwest's middleware and the tower `ClientLayer`) calling two hosts, one of
//! them down, with a breaker per host and without one; and a host taken out of rotation by
//! hand, its requests heard under its name.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::http::{Authority, ClientPolicies, FailureKind, HttpFailure, Overrides};
use tidewall::telemetry::Event;
use tidewall::{Backoff, Jitter, Rejected};

use super::client::{Client, HttpError, Net, since};
use super::report::{Section, ms};
use super::resilience::valid;
use super::scenarios::{Size, settle};
use super::server::Server;

pub(crate) async fn all<R: Net>(rt: R, server: &Server, size: Size) -> Vec<Section> {
    vec![
        two_hosts_one_down(&rt, server, size).await,
        a_host_out_by_hand(&rt, server, size).await,
        super::http_config::reload_mid_traffic(&rt, server, size).await,
    ]
}

/// How the standard table reads the tour client's errors (a status comes back as a
/// response, so only connection and protocol errors remain).
impl HttpFailure for HttpError {
    fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Connect(error) => error.failure_kind(),
            Self::Protocol(error) if error.is_incomplete_message() || error.is_canceled() => {
                FailureKind::Interrupted
            }
            Self::TimedOut => FailureKind::Timeout,
            Self::Protocol(_) | Self::Status { .. } => FailureKind::Other,
        }
    }
}

/// The failures that open a host's breaker, and the attempts per call.
const TRIP_AFTER: u32 = 5;
const ATTEMPTS: u32 = 3;

/// What one run over both hosts saw.
struct Run {
    up_answered: usize,
    down_attempts: usize,
    down_time: Duration,
    down_state: Option<State>,
    up_state: Option<State>,
}

async fn two_hosts_one_down<R: Net>(rt: &R, server: &Server, size: Size) -> Section {
    let calls = if size == Size::Quick { 10 } else { 20 };
    let mut s = Section::new(
        "http client: two hosts, one down, a breaker per host",
        "ClientPolicies::builder()..build()?.run(request, overrides, send)",
    );
    settle(rt, server).await;
    // A port nobody listens on: connections to it are refused, as to a host that is down.
    let down = closed_port();
    let with = calls_to_both(rt, server.addr, down, calls, true).await;
    let without = calls_to_both(rt, server.addr, down, calls, false).await;
    s.metric("calls to each host, alternating", calls)
        .metric("attempts per call at most", ATTEMPTS)
        .metric(
            "healthy host: answered, with a breaker per host",
            with.up_answered,
        )
        .metric(
            "healthy host: answered, without breakers",
            without.up_answered,
        )
        .metric(
            "down host: connection attempts, with a breaker per host",
            with.down_attempts,
        )
        .metric(
            "down host: connection attempts, without breakers",
            without.down_attempts,
        )
        .metric("down host: time its calls took, with", ms(with.down_time))
        .metric(
            "down host: time its calls took, without",
            ms(without.down_time),
        )
        .metric(
            "breakers afterwards (down, healthy)",
            format!("{}, {}", shown(with.down_state), shown(with.up_state)),
        );
    s.check(
        "the healthy host answered every call in both runs",
        with.up_answered == calls && without.up_answered == calls,
    );
    s.check(
        "the down host's breaker opened after 5 failures and took every later attempt",
        with.down_attempts == TRIP_AFTER as usize && with.down_state == Some(State::Open),
    );
    s.check(
        "without breakers every call made all 3 attempts on the down host",
        without.down_attempts == calls * ATTEMPTS as usize,
    );
    s.check(
        "the healthy host's breaker stayed closed",
        with.up_state == Some(State::Closed),
    );
    s
}

/// An operator takes a host out of rotation before its first request, then puts it back;
/// the client's listener hears every request under its host.
async fn a_host_out_by_hand<R: Net>(rt: &R, server: &Server, size: Size) -> Section {
    let calls = if size == Size::Quick { 5 } else { 20 };
    let mut s = Section::new(
        "http client: a host out of rotation by hand, and each request's host in its events",
        "policies.breakers()?.get_or_make(&host)?.force_open(); on_event(|e| e.key)",
    );
    settle(rt, server).await;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let policies = valid(
        ClientPolicies::builder()
            .runtime(rt.clone())
            .name("tour-http-by-hand")
            .breaker(Some(CircuitBreaker::builder()))
            .on_event(move |event: &Event<'_>| {
                let key = event.key.unwrap_or("-").to_owned();
                log.lock().expect("no panic holds it").push(key);
            })
            .build(),
    );
    let host = Authority::new(
        "http",
        &server.addr.ip().to_string(),
        Some(server.addr.port()),
    )
    .expect("a loopback address is a host");
    let client = Client::new(rt.clone(), server.addr);
    let sent = AtomicUsize::new(0);
    let send = |request: Request<()>| {
        sent.fetch_add(1, Relaxed);
        let client = client.clone();
        async move { answer(client.get(request.uri().path()).await) }
    };
    let Some(breakers) = policies.breakers() else {
        s.check("the stack has per-host breakers", false);
        return s;
    };
    let forced = breakers
        .get_or_make(&host)
        .map(|breaker| breaker.force_open());
    let state_forced = breakers.state(&host);
    let mut refused = 0;
    for _ in 0..calls {
        let result = policies
            .run(get(server.addr, "/delay/0"), Overrides::new(), send)
            .await;
        refused += usize::from(matches!(
            result,
            Err(tidewall::Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
    }
    let sent_forced = sent.swap(0, Relaxed);
    if let Some(breaker) = breakers.get(&host) {
        breaker.reset();
    }
    let mut answered = 0;
    for _ in 0..calls {
        let result = policies
            .run(get(server.addr, "/delay/0"), Overrides::new(), send)
            .await;
        answered += usize::from(result.is_ok_and(|r| r.status().is_success()));
    }
    let keys = std::mem::take(&mut *heard.lock().expect("no panic holds it"));
    let of_host = keys.iter().filter(|key| **key == host.as_str()).count();
    s.metric("host", &host)
        .metric("calls while forced open, then after reset", calls)
        .metric("refused while forced open", refused)
        .metric("sent while forced open", sent_forced)
        .metric("answered after reset", answered)
        .metric(
            "events heard, naming the host",
            format!("{}, {of_host}", keys.len()),
        );
    s.check(
        "the host was forced open before its first request",
        forced.is_ok() && state_forced == Some(State::ForcedOpen),
    );
    s.check(
        "while forced open every call was refused and nothing was sent",
        refused == calls && sent_forced == 0,
    );
    s.check(
        "after reset the host answered every call",
        answered == calls,
    );
    s.check(
        "each request was heard once, under its host",
        keys.len() == 2 * calls && of_host == keys.len(),
    );
    s
}

async fn calls_to_both<R: Net>(
    rt: &R,
    up: SocketAddr,
    down: SocketAddr,
    calls: usize,
    breakers: bool,
) -> Run {
    let breaker = breakers.then(|| {
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(TRIP_AFTER)
            .break_duration(Duration::from_secs(30))
    });
    let policies = valid(
        ClientPolicies::builder()
            .runtime(rt.clone())
            .name("tour-http-client")
            .deadline(Some(Duration::from_secs(2)))
            .attempt_timeout(Some(Duration::from_secs(1)))
            .retry(valid(
                Backoff::constant(Duration::from_millis(20))
                    .jitter(Jitter::None)
                    .max_attempts(ATTEMPTS)
                    .build(),
            ))
            // Off, so the runs differ by the breaker alone.
            .retry_budget(None)
            .breaker(breaker)
            .build(),
    );
    let clients = [Client::new(rt.clone(), up), Client::new(rt.clone(), down)];
    let down_attempts = AtomicUsize::new(0);
    // One attempt: the policies call this only once they admitted it.
    let send = |request: Request<()>| {
        let to_down = request.uri().port_u16() == Some(down.port());
        if to_down {
            down_attempts.fetch_add(1, Relaxed);
        }
        let client = clients[usize::from(to_down)].clone();
        async move { answer(client.get(request.uri().path()).await) }
    };
    let (mut up_answered, mut down_time) = (0, Duration::ZERO);
    for _ in 0..calls {
        let request = get(up, "/delay/1");
        let answered = policies.run(request, Overrides::new(), send).await;
        up_answered += usize::from(answered.is_ok_and(|r| r.status().is_success()));
        let start = rt.now();
        let _refused = policies.run(get(down, "/"), Overrides::new(), send).await;
        down_time += since(rt, start);
    }
    let state = |addr: SocketAddr| {
        let authority = Authority::new("http", &addr.ip().to_string(), Some(addr.port()))?;
        policies.breakers()?.state(&authority)
    };
    Run {
        up_answered,
        down_attempts: down_attempts.into_inner(),
        down_time,
        down_state: state(down),
        up_state: state(up),
    }
}

/// The tour client reports a status as an error; the policies read it as a response.
pub(super) fn answer(result: Result<Bytes, HttpError>) -> Result<Response<Bytes>, HttpError> {
    match result {
        Ok(body) => Ok(Response::new(body)),
        Err(HttpError::Status { code, retry_after }) => {
            let mut response = Response::builder().status(code);
            if let Some(wait) = retry_after {
                response = response.header(http::header::RETRY_AFTER, wait.as_secs());
            }
            response
                .body(Bytes::new())
                .map_err(|_| HttpError::Status { code, retry_after })
        }
        Err(other) => Err(other),
    }
}

pub(super) fn shown(state: Option<State>) -> String {
    state.map_or_else(|| "not tracked".to_owned(), |state| state.to_string())
}

pub(super) fn get(host: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("http://{host}{path}"))
        .body(())
        .expect("a loopback URL is valid")
}

pub(super) fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
