//! TLS and ACL users against a real redis-server started here: the documented ACL rule is
//! enough for every limit, and a wrong password, user, certificate or permission is a typed
//! error at start-up (`connect`, `verify`), never a limit that silently fails open.

mod secure;

use std::time::Duration;

use secure::{Certificates, SecureServer, TIDEWALL_USER};
use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;
use tidewall_redis::{
    BreakerQuorum, ConnectError, RedisBulkhead, RedisConn, RedisConnBuilder, RedisRateLimiter,
    WhenUnavailable,
};

fn tidewall_user(server: &SecureServer, certificates: &Certificates) -> RedisConnBuilder {
    RedisConn::builder(server.tls_url())
        .username("tidewall")
        .password("secret")
        .tls_root_certificate(certificates.pem("ca.crt"))
}

/// Every limit of this crate on `conn`, failing closed so that a refused call is never
/// mistaken for an admitted one.
fn limits(conn: &RedisConn) -> (RedisRateLimiter, RedisBulkhead, BreakerQuorum) {
    let rate = RedisRateLimiter::builder(conn, "tls-api", 3, Duration::from_secs(60))
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let bulkhead = RedisBulkhead::builder(conn, "tls-db", 1)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder().runtime(Tokio).build().unwrap();
    let quorum = BreakerQuorum::builder(conn, "tls-dep", breaker)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    (rate, bulkhead, quorum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_user_over_tls_runs_every_limit() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let conn = tidewall_user(&server, &certificates)
        .connect()
        .await
        .unwrap();
    let (rate, bulkhead, quorum) = limits(&conn);
    rate.verify().await.unwrap();
    bulkhead.verify().await.unwrap();
    quorum.verify().await.unwrap();

    // Decided by Redis over TLS: three cells, then a refusal with a hint.
    for _ in 0..3 {
        rate.check().await.unwrap();
    }
    let refused = rate.check().await.unwrap_err();
    assert!(
        matches!(refused, tidewall::Rejected::RateLimited { .. }),
        "{refused:?}"
    );
    let held = bulkhead.try_acquire().await.unwrap();
    assert!(bulkhead.try_acquire().await.is_err(), "a limit of one");
    drop(held);
    let view = quorum.refresh().await.unwrap();
    assert_eq!(view.open, 0);

    // The probes touched only their own keys: the real ones hold what the calls did.
    let mut admin = server.admin().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*%probe*")
        .query(&mut admin)
        .unwrap();
    assert!(
        keys.iter().all(|key| key.contains("{tls-")),
        "probe keys live under their limit's own hash tag: {keys:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_an_authentication_error() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let error = tidewall_user(&server, &certificates)
        .password("not-the-secret")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("not-the-secret"), "{error}");
}

#[tokio::test]
async fn an_unknown_user_is_an_authentication_error() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let error = tidewall_user(&server, &certificates)
        .username("nobody")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_a_tls_error() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let error = RedisConn::builder(server.tls_url())
        .username("tidewall")
        .password("secret")
        .tls_root_certificate(certificates.pem("other-ca.crt"))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
}

/// A plain server reads the TLS greeting as the start of a command and waits for its end: no
/// answer, so the start-up timeout ends it.
#[tokio::test]
async fn tls_to_a_plain_port_is_unreachable_within_the_timeout() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let error = RedisConn::builder(format!("rediss://127.0.0.1:{}", server.plain_port))
        .tls_root_certificate(certificates.pem("ca.crt"))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("300ms"), "{error}");
}

#[tokio::test]
async fn a_server_that_wants_a_client_certificate_gets_one_or_refuses() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], true);
    let conn = tidewall_user(&server, &certificates)
        .tls_client_certificate(
            certificates.pem("client.crt"),
            certificates.pem("client.key"),
        )
        .connect()
        .await
        .unwrap();
    limits(&conn).0.verify().await.unwrap();

    let error = tidewall_user(&server, &certificates)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConnectError::Tls { .. } | ConnectError::Unreachable { .. }
        ),
        "refused without a client certificate: {error:?}"
    );
}

/// Users missing one thing each: every limit that needs it says so in `verify`, naming it;
/// the limits that do not need it verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_a_permission_error_from_the_limit_that_needs_it() {
    let certificates = Certificates::make();
    let without_zadd = TIDEWALL_USER
        .replace("user tidewall", "user no-zadd")
        .replace(" +zadd", "");
    let without_load = TIDEWALL_USER
        .replace("user tidewall", "user no-load")
        .replace(" +script|load", "");
    let other_keys = TIDEWALL_USER
        .replace("user tidewall", "user other-keys")
        .replace("~tidewall:*", "~other:*");
    let without_set = TIDEWALL_USER
        .replace("user tidewall", "user no-set")
        .replace(" +set", "");
    let server = SecureServer::start(
        &certificates,
        &[
            TIDEWALL_USER,
            &without_zadd,
            &without_load,
            &other_keys,
            &without_set,
        ],
        false,
    );
    let connect = |user: &'static str| {
        tidewall_user(&server, &certificates)
            .username(user)
            .connect()
    };

    let conn = connect("no-zadd").await.unwrap();
    let (rate, bulkhead, quorum) = limits(&conn);
    rate.verify().await.unwrap();
    for error in [
        bulkhead.verify().await.unwrap_err(),
        quorum.verify().await.unwrap_err(),
    ] {
        assert!(
            matches!(error, ConnectError::Permission { .. }),
            "{error:?}"
        );
        assert!(error.to_string().to_lowercase().contains("zadd"), "{error}");
    }

    let conn = connect("no-set").await.unwrap();
    let (rate, bulkhead, quorum) = limits(&conn);
    let error = rate.verify().await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Permission { .. }),
        "{error:?}"
    );
    assert!(error.to_string().to_lowercase().contains("set"), "{error}");
    bulkhead.verify().await.unwrap();
    quorum.verify().await.unwrap();

    for user in ["no-load", "other-keys"] {
        let conn = connect(user).await.unwrap();
        let (rate, bulkhead, quorum) = limits(&conn);
        for error in [
            rate.verify().await.unwrap_err(),
            bulkhead.verify().await.unwrap_err(),
            quorum.verify().await.unwrap_err(),
        ] {
            assert!(
                matches!(error, ConnectError::Permission { .. }),
                "{user}: {error:?}"
            );
        }
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens
    let error = RedisConn::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn bad_settings_are_invalid_before_anything_is_sent() {
    let certificates = Certificates::make();
    for builder in [
        RedisConn::builder("not a url"),
        // Certificates for a URL without TLS.
        RedisConn::builder("redis://127.0.0.1:1").tls_root_certificate(certificates.pem("ca.crt")),
        RedisConn::builder("rediss://127.0.0.1:1").tls_root_certificate(b"not a pem".to_vec()),
        RedisConn::builder("rediss://127.0.0.1:1")
            .tls_client_certificate(certificates.pem("client.crt"), b"not a key".to_vec()),
        RedisConn::builder("rediss://127.0.0.1:1").tls_client_certificate(
            certificates.pem("client.key"),
            certificates.pem("client.key"),
        ),
    ] {
        let error = builder.connect().await.unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidSettings { .. }),
            "{error:?}"
        );
    }
}

/// r5 finding 6: certificates with a cluster node that is not `rediss://` are invalid
/// settings, as for one server (redis-rs would turn TLS on for every node). Nothing listens
/// on port 1: anything sent would be `Unreachable`.
#[tokio::test]
async fn certificates_for_a_plain_cluster_node_are_invalid() {
    let certificates = Certificates::make();
    for nodes in [
        vec!["redis://127.0.0.1:1"],
        vec!["rediss://127.0.0.1:1", "redis://127.0.0.1:2"],
    ] {
        let error = RedisConn::cluster_builder(nodes.clone())
            .tls_root_certificate(certificates.pem("ca.crt"))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidSettings { .. }),
            "{nodes:?}: {error:?}"
        );
    }
    let error = RedisConn::cluster_builder(["rediss://127.0.0.1:1"])
        .tls_root_certificate(certificates.pem("ca.crt"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
}
