//! Testing your own code through the stack (feature `test-util`): a middleware that answers
//! requests from a script instead of the network.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Extensions;
use reqwest_middleware::{Middleware, Next};

/// A script's answer to one attempt: a response, or an I/O error, which the stack classifies
/// as it would the network's (`ConnectionRefused` a connection failure, `TimedOut` a
/// timeout). Your code receives that error as `reqwest_middleware::Error::Middleware`, not as
/// a `reqwest::Error`: code that maps `is_connect()` sees it only over the network.
pub type Answer = std::io::Result<http::Response<Vec<u8>>>;

type Script =
    dyn Fn(&reqwest::Request) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync;

/// The last middleware of a client under test: each request that reaches it (each attempt
/// [`Resilience`](crate::Resilience) makes) is answered by the script, and no socket is
/// opened. So the client your code holds runs whole, retries, breakers and timeouts
/// included, on tokio's paused clock: backoffs and `Retry-After` waits pass in virtual time,
/// and an answer that sleeps is a slow host. Build the policies after the clock is paused
/// (a stack built before times its calls in real time).
///
/// A response's [`url`](reqwest::Response::url) is the request's, as over the network,
/// unless the script set another (`reqwest::ResponseBuilderExt::url`). Clones share the
/// script and the count of attempts.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use reqwest_middleware::ClientBuilder;
/// use tidewall_reqwest::Resilience;
/// use tidewall_reqwest::testing::Scripted;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let failures = AtomicUsize::new(2);
/// let server = Scripted::new(move |request| {
///     assert_eq!(request.url().path(), "/items");
///     // Two 503s asking for a second's pause, then the answer.
///     let failing = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
///     async move {
///         let response = match failing {
///             Ok(_) => http::Response::builder().status(503).header("retry-after", "1"),
///             Err(_) => http::Response::builder().status(200),
///         };
///         Ok(response.body(b"[]".to_vec()).unwrap())
///     }
/// });
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(Resilience::standard())
///     .with(server.clone())
///     .build();
///
/// let started = tokio::time::Instant::now();
/// let response = client.get("http://api.test/items").send().await?;
/// assert_eq!((response.status().as_u16(), server.attempts()), (200, 3));
/// assert_eq!(started.elapsed(), Duration::from_secs(2), "two Retry-After waits, in virtual time");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Scripted {
    script: Arc<Script>,
    attempts: Arc<AtomicUsize>,
}

impl Scripted {
    /// Answers each request with what `script` returns for it. The script is called once
    /// per attempt, when the attempt reaches it, and the future it returns is the exchange:
    /// a future that sleeps is a host that is slow to answer (a deadline or attempt timeout
    /// above may cut it).
    pub fn new<F, Fut>(script: F) -> Self
    where
        F: Fn(&reqwest::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let script: Arc<Script> = Arc::new(move |request: &reqwest::Request| {
            Box::pin(script(request)) as Pin<Box<dyn Future<Output = Answer> + Send>>
        });
        Self {
            script,
            attempts: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many requests reached it: every attempt the policies above let through.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripted")
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Middleware for Scripted {
    async fn handle(
        &self,
        request: reqwest::Request,
        _extensions: &mut Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let answer = (self.script)(&request).await;
        match answer {
            Ok(response) => Ok(with_url(response, request.url())),
            Err(error) => Err(reqwest_middleware::Error::middleware(error)),
        }
    }
}

/// `response` as reqwest's, its URL the request's (as over the network) unless the script
/// set one (with `reqwest::ResponseBuilderExt::url`, a redirect's target, say).
fn with_url(response: http::Response<Vec<u8>>, url: &reqwest::Url) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    // reqwest keeps the URL in an extension of a private type: set it on an empty head, then
    // lay the script's extensions over it, so that a URL the script set wins.
    let mut url_only = reqwest::ResponseBuilderExt::url(http::Response::builder(), url.clone());
    if let Some(extensions) = url_only.extensions_mut() {
        let mut extensions = std::mem::take(extensions);
        extensions.extend(std::mem::take(&mut parts.extensions));
        parts.extensions = extensions;
    }
    reqwest::Response::from(http::Response::from_parts(parts, body))
}
