//! What stops a Redis-backed limit from starting, found at start-up rather than as a failure
//! policy applied forever: [`RedisConnBuilder::connect`](crate::RedisConnBuilder::connect)
//! and each limit's `verify`.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

/// Why a connection or a limit cannot start. Messages carry Redis's or the TLS library's own
/// words; none carries a password.
///
/// ```
/// use tidewall_redis::ConnectError;
///
/// let error = ConnectError::Authentication { reason: "WRONGPASS".into() };
/// assert_eq!(error.to_string(), "redis refused the credentials: WRONGPASS");
/// // What to do about it depends on the variant: fix a secret, a certificate, an ACL rule.
/// assert!(matches!(error, ConnectError::Authentication { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL does not parse, a username comes without a password, or the TLS settings do
    /// not fit it (certificates for a URL that is not `rediss://`, on a cluster for any of its
    /// nodes; a PEM that does not parse; `rediss://` without the `tls` feature).
    InvalidSettings {
        /// What is wrong.
        reason: String,
    },
    /// Nothing answered: the connection was refused, or reset, or the timeout passed.
    Unreachable {
        /// What happened.
        reason: String,
    },
    /// The TLS handshake failed: the server's certificate is not trusted (or not for this
    /// host), the server wants a client certificate, or it does not speak TLS.
    Tls {
        /// The TLS library's reason.
        reason: String,
    },
    /// Redis refused the user or the password (`WRONGPASS`, `NOAUTH`).
    Authentication {
        /// Redis's reason.
        reason: String,
    },
    /// The user may not run a command the limit needs, or not on its keys (`NOPERM`): see
    /// the crate docs for the ACL rule Tidewall needs.
    Permission {
        /// Redis's reason, naming the command or key.
        reason: String,
    },
    /// Redis answered with another error.
    Redis {
        /// Redis's reason.
        reason: String,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSettings { reason } => write!(f, "invalid redis settings: {reason}"),
            Self::Unreachable { reason } => write!(f, "redis unreachable: {reason}"),
            Self::Tls { reason } => write!(f, "redis tls handshake failed: {reason}"),
            Self::Authentication { reason } => {
                write!(f, "redis refused the credentials: {reason}")
            }
            Self::Permission { reason } => {
                write!(f, "the redis user lacks a permission: {reason}")
            }
            Self::Redis { reason } => write!(f, "redis error: {reason}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// What a start-up step waits for, to say what did not come in time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Awaited {
    /// A connection: connected, TLS handshake and authentication.
    Connection,
    /// The answer to one of a limit's `verify` probes.
    ProbeAnswer,
}

impl ConnectError {
    /// No `awaited` within `timeout`.
    fn unanswered(awaited: Awaited, timeout: Duration) -> Self {
        let reason = match awaited {
            Awaited::Connection => format!(
                "no connection within {timeout:?} (connected, TLS handshake and authentication)"
            ),
            Awaited::ProbeAnswer => format!("no answer to a verify probe within {timeout:?}"),
        };
        Self::Unreachable { reason }
    }

    /// What `error` says stops the start.
    pub(crate) fn from_redis(error: &RedisError) -> Self {
        let reason = error.to_string();
        let code = error.code().unwrap_or_default();
        if error.kind() == ErrorKind::AuthenticationFailed || matches!(code, "WRONGPASS" | "NOAUTH")
        {
            return Self::Authentication { reason };
        }
        // A script's command refused by ACL comes back as a plain script error.
        if error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
            || code == "NOPERM"
            || reason.contains("NOPERM")
            || reason.contains("The user executing the script can't")
        {
            return Self::Permission { reason };
        }
        match error.kind() {
            ErrorKind::InvalidClientConfig => Self::InvalidSettings { reason },
            ErrorKind::Io if is_tls(error) => Self::Tls { reason },
            ErrorKind::Io => Self::Unreachable { reason },
            _ => Self::Redis { reason },
        }
    }
}

/// Whether `error` is the TLS library's: a handshake that failed.
fn is_tls(error: &RedisError) -> bool {
    let Some(source) = error.source() else {
        return false;
    };
    // redis-rs keeps the I/O error behind an `Arc`; the TLS library's error is inside it.
    let io = source
        .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
        .and_then(|shared| shared.downcast_ref::<std::io::Error>())
        .or_else(|| source.downcast_ref::<std::io::Error>());
    io.and_then(std::io::Error::get_ref)
        .is_some_and(is_tls_library_error)
}

#[cfg(feature = "tls")]
fn is_tls_library_error(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    error.is::<rustls::Error>()
}

#[cfg(not(feature = "tls"))]
fn is_tls_library_error(_: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    false
}

/// `call` (waiting for `awaited`) within `timeout`, what stops it said as a [`ConnectError`].
pub(crate) async fn within<T>(
    awaited: Awaited,
    timeout: Duration,
    call: impl Future<Output = RedisResult<T>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(ConnectError::unanswered(awaited, timeout)),
        Ok(result) => result.map_err(|error| ConnectError::from_redis(&error)),
    }
}

/// Runs one of a limit's `verify` probes, reported as a connection's step is; a refusal
/// inside `script` (its source) is told with the line Redis names.
pub(crate) async fn probe<T>(
    call: impl Future<Output = RedisResult<T>>,
    script: Option<&str>,
) -> Result<T, ConnectError> {
    within(Awaited::ProbeAnswer, PROBE_TIMEOUT, call)
        .await
        .map_err(|error| match (error, script) {
            (ConnectError::Permission { reason }, Some(script)) => ConnectError::Permission {
                reason: with_script_line(reason, script),
            },
            (error, _) => error,
        })
}

/// `reason` with the line of `script` it names (`@user_script:N`), which Redis leaves out:
/// the command the user may not run.
fn with_script_line(reason: String, script: &str) -> String {
    let line = reason
        .split_once("@user_script:")
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        // Redis counts from 1, the sources' leading empty line included.
        .and_then(|n| script.lines().nth(n.checked_sub(1)?));
    match line {
        Some(line) => format!("{reason} (`{}`)", line.trim()),
        None => reason,
    }
}

/// A probe key of its own for one `verify`: `base` (a limit's probe key) and a random suffix.
/// A fresh key makes every command of a script run: on a key another probe touched a moment
/// ago, a script may skip one (`PEXPIRE` when the expiry is already long enough, `SET` when
/// the cell is taken).
pub(crate) fn fresh_probe_key(base: &str) -> String {
    format!("{base}:{:016x}", crate::bulkhead::random_id())
}

/// How long a `verify` waits for each probe: long enough for a reconnect after start-up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
