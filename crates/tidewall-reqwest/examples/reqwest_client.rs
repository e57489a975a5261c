//! A reqwest client with Tidewall's standard stack, calling two hosts, one of them down.
//!
//! ```text
//! cargo run -p tidewall-reqwest --example reqwest_client
//! ```
//!
//! The healthy host answers every call. The down host's calls are retried until its breaker
//! has seen five failures in a row; from then on they are refused at once (microseconds, not
//! the hundreds of milliseconds of three refused connections and their backoff), while the
//! healthy host's breaker stays closed.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use reqwest_middleware::ClientBuilder;
use tidewall::breaker::CircuitBreaker;
use tidewall_reqwest::{ClientPolicies, Resilience, authority, rejection};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let up = serve_prices().await?;
    let down = nobody_listening()?;

    // The standard stack, with a breaker that opens after 5 failures in a row (the standard
    // one waits for 20 calls, more than this demo makes).
    let policies = ClientPolicies::builder()
        .breaker(Some(CircuitBreaker::builder().consecutive_failures(5)))
        .build()?;
    let resilience = Resilience::new(policies);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(resilience.clone())
        .build();

    for call in 1..=6 {
        let price = client.get(format!("http://{up}/price/ACME")).send().await?;
        let start = Instant::now();
        let outcome = match client.get(format!("http://{down}/quote/ACME")).send().await {
            Ok(response) => format!("answered {}", response.status()),
            Err(error) => match rejection(&error) {
                Some(refused) => format!("refused by the policies: {refused}"),
                None => "failed after its retries".to_owned(),
            },
        };
        let took = start.elapsed();
        println!(
            "call {call}: prices {}, quotes {outcome} ({took:.0?})",
            price.status()
        );
    }

    let breakers = resilience
        .policies()
        .breakers()
        .expect("the stack has breakers");
    for (name, addr) in [("prices", up), ("quotes", down)] {
        // The key the middleware filed its requests under.
        let host = authority(&reqwest::Url::parse(&format!("http://{addr}/"))?);
        let state = host.and_then(|host| breakers.state(&host));
        let state = state.map_or_else(|| "not tracked".to_owned(), |state| state.to_string());
        println!("{name} breaker: {state}");
    }
    Ok(())
}

/// A host that answers every price at once.
async fn serve_prices() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/price/{symbol}", axum::routing::get(|| async { "42" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A host that is down: a port nobody listens on, so connections are refused.
fn nobody_listening() -> std::io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}
