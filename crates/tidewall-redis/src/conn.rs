//! The connection every limiter shares.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, RedisResult};

/// One multiplexed, reconnecting connection to Redis (redis-rs's `ConnectionManager`), with
/// TCP_NODELAY on. Cheap to clone: clones share the connection, and many limiters can use one.
///
/// It connects lazily, so a service starts while Redis is down; its limiters apply their
/// failure policy until Redis answers.
///
/// ```no_run
/// use tidewall_redis::RedisConn;
///
/// let conn = RedisConn::open("redis://127.0.0.1:6379")?;
/// # Ok::<(), redis::RedisError>(())
/// ```
#[derive(Clone)]
pub struct RedisConn {
    pub(crate) manager: ConnectionManager,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn").finish_non_exhaustive()
    }
}

/// TCP_NODELAY (redis-rs's default is off), and a peer that stops acknowledging is declared
/// dead after 2 s (TCP_USER_TIMEOUT), so the manager reconnects instead of waiting out the
/// kernel's retransmissions (minutes) behind each call's deadline.
fn tcp_settings() -> TcpSettings {
    let settings = TcpSettings::default().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(2));
    settings
}

impl RedisConn {
    /// A connection to `url` (`redis://host:port[/db]`), made on first use. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// An unparsable URL.
    pub fn open<T: IntoConnectionInfo>(url: T) -> RedisResult<Self> {
        let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
        let client = Client::open(info)?;
        // Every call is bounded by its limiter's own deadline, so the manager needs no
        // response timeout; reconnection is quick and unending (capped backoff).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(5))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(usize::MAX);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self { manager })
    }
}
