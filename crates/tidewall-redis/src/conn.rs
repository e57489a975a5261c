//! The connection every limiter shares, and how it is made: at once with every problem
//! reported ([`RedisConnBuilder::connect`]), or lazily ([`RedisConn::open`]); to one server or
//! to a Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Client, Cmd, ConnectionInfo, IntoConnectionInfo, RedisFuture, RedisResult, Value};

use crate::start::{Awaited, ConnectError, within};

/// One multiplexed, reconnecting connection to Redis (redis-rs's `ConnectionManager`), or to
/// a Redis Cluster (redis-rs's cluster client: a connection per node, commands sent to the
/// master of their keys' slot, `MOVED`/`ASK` followed and the slot map refreshed after a
/// failover), with TCP_NODELAY on. Cheap to clone: clones share the connections, and many
/// limiters can use one.
///
/// Make it at start-up with [`RedisConn::builder`] and
/// [`connect`](RedisConnBuilder::connect), which reports an unreachable server, a failed TLS
/// handshake or wrong credentials as a [`ConnectError`]; then check each limit's permissions
/// with its `verify`. Once made, it reconnects on its own, and while Redis does not answer
/// its limiters apply their failure policy.
///
/// ```no_run
/// use tidewall_redis::RedisConn;
///
/// # #[tokio::main] async fn main() -> Result<(), tidewall_redis::ConnectError> {
/// let conn = RedisConn::builder("redis://127.0.0.1:6379")
///     .username("tidewall")
///     .password("from-a-secret-store")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConn {
    connection: Connection,
}

/// A server's connection or a cluster's: what every Redis call of a limit goes through.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
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
    /// A connection to `url` (`redis://[user:password@]host:port[/db]`, or `rediss://` with
    /// the `tls` feature), made on first use. Must be called inside a tokio runtime.
    ///
    /// Nothing is checked until the first call: an unreachable server or wrong credentials
    /// then look like a Redis that does not answer, and every limit applies its failure
    /// policy; a user without a password in the URL is not even sent (the connection runs as
    /// `default`). Prefer [`builder`](Self::builder) and
    /// [`connect`](RedisConnBuilder::connect) at start-up, which refuse that.
    ///
    /// ```no_run
    /// use tidewall_redis::RedisConn;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), redis::RedisError> {
    /// let conn = RedisConn::open("redis://127.0.0.1:6379")?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// An unparsable URL.
    pub fn open<T: IntoConnectionInfo>(url: T) -> RedisResult<Self> {
        let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
        Self::managed(Client::open(info)?)
    }

    /// Starts a connection to `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` with the `tls` feature) with options: credentials, TLS certificates, the
    /// start-up timeout.
    pub fn builder(url: impl Into<String>) -> RedisConnBuilder {
        RedisConnBuilder {
            nodes: vec![url.into()],
            cluster: false,
            username: None,
            password: None,
            #[cfg(feature = "tls")]
            tls: redis::TlsCertificates {
                client_tls: None,
                root_cert: None,
            },
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Starts a connection to a Redis Cluster reached first through `nodes` (URLs as for
    /// [`builder`](Self::builder); one is enough, more survive one being down at start-up),
    /// with the same options.
    ///
    /// Every limit keeps all its keys in one slot (a hash tag of its name and partition), so
    /// each decision is one round trip to that slot's master; different names spread across
    /// slots, so across masters.
    ///
    /// ```no_run
    /// use tidewall_redis::RedisConn;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), tidewall_redis::ConnectError> {
    /// let conn = RedisConn::cluster_builder(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_builder<I>(nodes: I) -> RedisConnBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisConnBuilder {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..Self::builder(String::new())
        }
    }

    /// The connection a limit's call goes through (a clone: they share the sockets).
    pub(crate) fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// The reconnecting connection over `client`, made lazily.
    fn managed(client: Client) -> RedisResult<Self> {
        // Every call is bounded by its limiter's own deadline, so the manager needs no
        // response timeout; reconnection is quick and unending (capped backoff).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(5))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(usize::MAX);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection: Connection::Single(manager),
        })
    }
}

/// Configures a [`RedisConn`]: credentials, TLS certificates and how long the start-up check
/// may take.
#[must_use]
#[derive(Clone)]
pub struct RedisConnBuilder {
    /// One server's URL, or a cluster's first nodes.
    nodes: Vec<String>,
    cluster: bool,
    username: Option<String>,
    password: Option<String>,
    #[cfg(feature = "tls")]
    tls: redis::TlsCertificates,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisConnBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, nor the URL (it may hold one).
        f.debug_struct("RedisConnBuilder")
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConnBuilder {
    /// The ACL user to authenticate as (instead of the URL's; without one, `default`). It
    /// needs a password, from [`password`](Self::password) or the URL:
    /// [`connect`](Self::connect) refuses a user without one as
    /// [`InvalidSettings`](ConnectError::InvalidSettings) (Redis would not be told the user,
    /// and the connection would run as `default`). A `nopass` user accepts any password.
    ///
    /// ```
    /// use tidewall_redis::RedisConn;
    ///
    /// // Credentials from a secret store rather than the URL; `Debug` never shows them.
    /// let builder = RedisConn::builder("redis://127.0.0.1:6379")
    ///     .username("tidewall")
    ///     .password("s3cret");
    /// assert!(!format!("{builder:?}").contains("s3cret"));
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password to authenticate with (instead of the URL's).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Trusts the certificate authority in `pem` (PEM) for a `rediss://` server, instead of
    /// the system's roots: a server whose certificate it did not sign fails the handshake.
    ///
    /// ```no_run
    /// use tidewall_redis::RedisConn;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConn::builder("rediss://redis.internal:6380")
    ///     .username("tidewall")
    ///     .password(std::env::var("REDIS_PASSWORD")?)
    ///     .tls_root_certificate(std::fs::read("/etc/ssl/internal-ca.pem")?)
    ///     .connect()
    ///     .await?; // ConnectError::Tls if the server's certificate is not the CA's
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_cert = Some(pem.into());
        self
    }

    /// Presents the client certificate `cert_pem` with its key `key_pem` (both PEM), for a
    /// server that requires one (`tls-auth-clients yes`).
    ///
    /// ```no_run
    /// use tidewall_redis::RedisConn;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConn::builder("rediss://redis.internal:6380")
    ///     .tls_root_certificate(std::fs::read("/etc/ssl/internal-ca.pem")?)
    ///     .tls_client_certificate(
    ///         std::fs::read("/etc/ssl/tidewall.pem")?,
    ///         std::fs::read("/etc/ssl/tidewall.key")?,
    ///     )
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_tls = Some(redis::ClientTlsConfig {
            client_cert: cert_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    /// How long [`connect`](Self::connect) may take to reach Redis, finish the TLS
    /// handshake and authenticate (default 2 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall_redis::{ConnectError, RedisConn};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Nothing listens on port 1: refused at once, well within the timeout.
    /// let error = RedisConn::builder("redis://127.0.0.1:1")
    ///     .connect_timeout(Duration::from_millis(200))
    ///     .connect()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(error, ConnectError::Unreachable { .. }));
    /// # }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects now, and reports what stops it: the server unreachable, the TLS handshake
    /// failed (a certificate not trusted, or not TLS at all), the user or password wrong.
    /// The connection it returns is the reconnecting one of [`RedisConn::open`]; the one made
    /// here to check is closed. Permissions are per limit: call each limit's `verify` next.
    /// Must be called inside a tokio runtime.
    ///
    /// **Cancel safety:** dropping the future closes the connection being made; nothing is
    /// kept.
    ///
    /// ```no_run
    /// use tidewall_redis::{ConnectError, RedisConn};
    ///
    /// # #[tokio::main] async fn main() {
    /// match RedisConn::builder("redis://127.0.0.1:6379").password("wrong").connect().await {
    ///     Ok(_conn) => {}
    ///     Err(ConnectError::Authentication { reason }) => eprintln!("check the secret: {reason}"),
    ///     Err(other) => eprintln!("redis: {other}"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConnectError::InvalidSettings`] (the URL, a username without a password,
    /// certificates for a URL that is not `rediss://`, on a cluster for any of its nodes, or
    /// certificates that do not parse), [`Unreachable`](ConnectError::Unreachable) (refused,
    /// or no answer within the timeout), [`Tls`](ConnectError::Tls),
    /// [`Authentication`](ConnectError::Authentication), or
    /// [`Redis`](ConnectError::Redis) for any other error Redis answers with.
    pub async fn connect(self) -> Result<RedisConn, ConnectError> {
        if self.cluster {
            return self.connect_cluster().await;
        }
        let timeout = self.connect_timeout;
        let client = self.client()?;
        // One timeout for the whole start: TCP, the TLS handshake and authentication.
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(None);
        let check = client.get_multiplexed_async_connection_with_config(&config);
        within(Awaited::Connection, timeout, async {
            hello(check.await?).await
        })
        .await?;
        RedisConn::managed(client).map_err(|error| ConnectError::from_redis(&error))
    }

    /// [`connect`](Self::connect) to a cluster: its client reaches a first node, reads the
    /// slot map and connects to every master now.
    async fn connect_cluster(self) -> Result<RedisConn, ConnectError> {
        let timeout = self.connect_timeout;
        let nodes = self
            .nodes
            .iter()
            .map(|node| node_info(node))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ConnectError::InvalidSettings {
                reason: "a cluster needs at least one node".to_owned(),
            });
        }
        // Retries after a failed node wait 5 ms doubling to 500 ms, as the single server's
        // reconnects do: redis-rs's default (from 1.28 s up to 11 minutes) left decisions on a
        // promoted replica's slots failing for up to a second after the failover.
        let mut builder = ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(Duration::from_millis(500))
            .min_retry_wait(5)
            .max_retry_wait(500)
            .retry_wait_formula(5, 2)
            .tcp_settings(tcp_settings());
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if let Some(first) = nodes.first() {
            let settings = first.redis_settings();
            credentials_fit(
                self.username.as_deref().or(settings.username()),
                self.password.as_deref().or(settings.password()),
            )?;
        }
        #[cfg(feature = "tls")]
        if certificates_given(&self.tls)? {
            // redis-rs would turn TLS on for every node whatever its scheme.
            if nodes
                .iter()
                .any(|node| !matches!(node.addr(), redis::ConnectionAddr::TcpTls { .. }))
            {
                return Err(ConnectError::InvalidSettings {
                    reason: "TLS certificates were given for a cluster node whose URL is not \
                             rediss://"
                        .to_owned(),
                });
            }
            builder = builder.certs(self.tls);
        }
        let client = builder
            .build()
            .map_err(|error| ConnectError::from_redis(&error))?;
        let connection = within(Awaited::Connection, timeout, async {
            hello(client.get_async_connection().await?).await
        })
        .await?;
        Ok(RedisConn {
            connection: Connection::Cluster(connection),
        })
    }

    /// The client for these settings, not yet connected.
    fn client(self) -> Result<Client, ConnectError> {
        let info = node_info(self.nodes.first().map_or("", String::as_str))?;
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        credentials_fit(redis.username(), redis.password())?;
        let info = info
            .set_redis_settings(redis)
            .set_tcp_settings(tcp_settings());
        #[cfg(feature = "tls")]
        let client = if certificates_given(&self.tls)? {
            Client::build_with_tls(info, self.tls)
        } else {
            Client::open(info)
        };
        #[cfg(not(feature = "tls"))]
        let client = Client::open(info);
        client.map_err(|error| ConnectError::from_redis(&error))
    }
}

/// Refuses a user without a password: redis-rs authenticates only with a password, so the
/// connection would silently run as `default`.
fn credentials_fit(username: Option<&str>, password: Option<&str>) -> Result<(), ConnectError> {
    if username.is_some() && password.is_none() {
        return Err(ConnectError::InvalidSettings {
            reason: "a username without a password: the connection would run as `default`, \
                     not as that user (for a `nopass` user, give any password)"
                .to_owned(),
        });
    }
    Ok(())
}

/// Whether certificates were given, once every PEM given is checked to hold what it is for:
/// redis-rs would skip a PEM without a certificate, and the handshake would then fail for a
/// reason far from the mistake.
#[cfg(feature = "tls")]
fn certificates_given(tls: &redis::TlsCertificates) -> Result<bool, ConnectError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn certificates(pem: &[u8], what: &str) -> Result<(), ConnectError> {
        let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
        match parsed {
            Ok(certificates) if !certificates.is_empty() => Ok(()),
            Ok(_) => Err(ConnectError::InvalidSettings {
                reason: format!("the {what} PEM holds no certificate"),
            }),
            Err(error) => Err(ConnectError::InvalidSettings {
                reason: format!("the {what} PEM does not parse: {error}"),
            }),
        }
    }
    if let Some(root) = &tls.root_cert {
        certificates(root, "root certificate")?;
    }
    if let Some(client) = &tls.client_tls {
        certificates(&client.client_cert, "client certificate")?;
        PrivateKeyDer::from_pem_slice(&client.client_key).map_err(|error| {
            ConnectError::InvalidSettings {
                reason: format!("the client key PEM holds no usable key: {error}"),
            }
        })?;
    }
    Ok(tls.root_cert.is_some() || tls.client_tls.is_some())
}

/// `connection` once `HELLO` has answered: without credentials nothing was checked while
/// connecting, and `HELLO` answers `NOAUTH` when the server wants a password (it needs no ACL
/// permission when it does not).
async fn hello<C: ConnectionLike>(mut connection: C) -> RedisResult<C> {
    redis::cmd("HELLO")
        .arg(2)
        .query_async::<Value>(&mut connection)
        .await?;
    Ok(connection)
}

/// A node's URL, parsed.
fn node_info(url: &str) -> Result<ConnectionInfo, ConnectError> {
    url.into_connection_info()
        .map_err(|error| ConnectError::InvalidSettings {
            reason: error.to_string(),
        })
}
