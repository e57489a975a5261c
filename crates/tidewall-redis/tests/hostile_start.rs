//! Black-box tests of the start-up API (`RedisConn::builder`, `connect`, each limit's
//! `verify`) written from the public docs only: every documented error reachable, no
//! password in any message, credential precedence, ACL rules narrowed or missing one command,
//! probes that never touch the real limit, frozen servers, cancelled futures and mTLS.

mod common;
mod secure;

use std::time::{Duration, Instant};

use common::{RedisServer, closed_port, eventually};
use secure::{Certificates, SecureServer, TIDEWALL_USER, openssl};
use tidewall::Rejected;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::rt::Tokio;
use tidewall_core::rng::SplitMix64;
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

fn rate(conn: &RedisConn, name: &str) -> RedisRateLimiter {
    RedisRateLimiter::builder(conn, name, 1, Duration::from_secs(60))
        .burst(1)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

fn bulkhead(conn: &RedisConn, name: &str) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, 1)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

fn breaker() -> CircuitBreaker<Tokio> {
    CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(60))
        .runtime(Tokio)
        .build()
        .unwrap()
}

fn quorum(conn: &RedisConn, name: &str, breaker: CircuitBreaker<Tokio>) -> BreakerQuorum {
    BreakerQuorum::builder(conn, name, breaker)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn is_permission(error: &ConnectError) -> bool {
    matches!(error, ConnectError::Permission { .. })
}

/// Neither Display nor Debug holds `secret`, and Display does not start with a capital.
fn assert_clean(error: &ConnectError, secrets: &[&str]) {
    let shown = error.to_string();
    let debug = format!("{error:?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "Display leaks {secret:?}: {shown}");
        assert!(!debug.contains(secret), "Debug leaks {secret:?}: {debug}");
    }
    assert!(
        !shown.chars().next().is_some_and(char::is_uppercase),
        "Display starts with a capital: {shown}"
    );
    assert!(!shown.is_empty());
}

fn connected_clients(admin: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(admin).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every key of a probe has an expiry (or is already gone): none is left for good.
fn probe_keys_without_expiry(admin: &mut redis::Connection) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*%probe*").query(admin).unwrap();
    keys.into_iter()
        .filter(|key| {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query(admin).unwrap();
            ttl == -1
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Errors: every variant, and never a password.

#[tokio::test]
async fn builder_debug_never_shows_a_password() {
    let builder = RedisConn::builder("rediss://tidewall:url-secret-1@127.0.0.1:6380")
        .username("tidewall")
        .password("builder-secret-2");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("url-secret-1"), "{debug}");
    assert!(!debug.contains("builder-secret-2"), "{debug}");

    // A URL with a password and no builder password: still not shown.
    let builder = RedisConn::builder("redis://:only-in-url-3@127.0.0.1:6379/0");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("only-in-url-3"), "{debug}");
}

#[tokio::test]
async fn invalid_settings_never_echo_the_password_of_the_url() {
    let certificates = Certificates::make();
    for (url, secret) in [
        (
            "rediss://tidewall:s3cr3t-port@127.0.0.1:notaport",
            "s3cr3t-port",
        ),
        ("redis://tidewall:s3cr3t-host@[::1/0", "s3cr3t-host"),
        (
            "ftp://tidewall:s3cr3t-scheme@127.0.0.1:6379",
            "s3cr3t-scheme",
        ),
    ] {
        let error = RedisConn::builder(url).connect().await.unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidSettings { .. }),
            "{url}: {error:?}"
        );
        assert_clean(&error, &[secret]);
    }
    // A client certificate for a URL without TLS (tls_acl checks only a root certificate).
    let error = RedisConn::builder("redis://tidewall:s3cr3t-plain@127.0.0.1:1")
        .tls_client_certificate(
            certificates.pem("client.crt"),
            certificates.pem("client.key"),
        )
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::InvalidSettings { .. }),
        "{error:?}"
    );
    assert_clean(&error, &["s3cr3t-plain"]);
    // A certificate where a key is expected, over rediss://.
    let error = RedisConn::builder("rediss://127.0.0.1:1")
        .tls_client_certificate(
            certificates.pem("client.crt"),
            certificates.pem("client.crt"),
        )
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::InvalidSettings { .. }),
        "{error:?}"
    );
    // A key where the root certificate is expected.
    let error = RedisConn::builder("rediss://127.0.0.1:1")
        .tls_root_certificate(certificates.pem("ca.key"))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::InvalidSettings { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn unreachable_never_echoes_the_password() {
    let port = closed_port();
    let error = RedisConn::builder(format!("redis://tidewall:pw-unreach-4@127.0.0.1:{port}"))
        .password("pw-builder-5")
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert_clean(&error, &["pw-unreach-4", "pw-builder-5"]);
}

#[tokio::test]
async fn authentication_and_tls_errors_never_echo_the_password() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    // Wrong password in the URL.
    let error = RedisConn::builder(format!(
        "rediss://tidewall:wrong-in-url-6@127.0.0.1:{}",
        server.tls_port
    ))
    .tls_root_certificate(certificates.pem("ca.crt"))
    .connect()
    .await
    .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );
    assert_clean(&error, &["wrong-in-url-6"]);
    // The right password, untrusted server certificate: a TLS error without the password.
    let error = RedisConn::builder(format!(
        "rediss://tidewall:secret@127.0.0.1:{}",
        server.tls_port
    ))
    .tls_root_certificate(certificates.pem("other-ca.crt"))
    .connect()
    .await
    .unwrap_err();
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
    assert_clean(&error, &["secret"]);
    // Wrong password from the builder, a correct one in the URL: the builder's wins.
    let error = RedisConn::builder(format!(
        "rediss://tidewall:secret@127.0.0.1:{}",
        server.tls_port
    ))
    .password("wrong-builder-7")
    .tls_root_certificate(certificates.pem("ca.crt"))
    .connect()
    .await
    .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );
    assert_clean(&error, &["wrong-builder-7", "secret"]);
}

/// `Redis` for another error Redis answers with: a database index out of range.
#[tokio::test]
async fn a_database_that_does_not_exist_is_a_redis_error() {
    let server = RedisServer::start();
    let error = RedisConn::builder(format!("{}/4000", server.url()))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Redis { .. }), "{error:?}");
    assert_clean(&error, &[]);
}

// ---------------------------------------------------------------------------------------
// Credentials: URL, builder, default user.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_credentials_override_the_urls_one_by_one() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let url = |userinfo: &str| format!("rediss://{userinfo}@127.0.0.1:{}", server.tls_port);
    let ca = || certificates.pem("ca.crt");

    // The URL's credentials alone.
    let conn = RedisConn::builder(url("tidewall:secret"))
        .tls_root_certificate(ca())
        .connect()
        .await
        .expect("credentials in the URL");
    rate(&conn, "url-creds").verify().await.unwrap();

    // Both wrong in the URL, both right from the builder.
    let conn = RedisConn::builder(url("nobody:wrong"))
        .username("tidewall")
        .password("secret")
        .tls_root_certificate(ca())
        .connect()
        .await
        .expect("the builder's credentials instead of the URL's");
    rate(&conn, "builder-creds").verify().await.unwrap();

    // The user from the URL, the password from the builder.
    RedisConn::builder(url("tidewall:wrong"))
        .password("secret")
        .tls_root_certificate(ca())
        .connect()
        .await
        .expect("the URL's user with the builder's password");
    RedisConn::builder(url("tidewall"))
        .password("secret")
        .tls_root_certificate(ca())
        .connect()
        .await
        .expect("the URL's user (no password there) with the builder's password");

    // The user from the builder, the password from the URL.
    RedisConn::builder(url("nobody:secret"))
        .username("tidewall")
        .tls_root_certificate(ca())
        .connect()
        .await
        .expect("the builder's user with the URL's password");

    // The builder's user overrides a right one in the URL.
    let error = RedisConn::builder(url("tidewall:secret"))
        .username("nobody")
        .tls_root_certificate(ca())
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );

    // A password with no user anywhere is the default user's: `default` has no password
    // here (nopass), so Redis refuses or accepts, but never as `tidewall`. Its rights are
    // all, so it may connect; what matters is that it is not an error other than auth.
    match RedisConn::builder(server.tls_url())
        .password("secret")
        .tls_root_certificate(ca())
        .connect()
        .await
    {
        Ok(_) | Err(ConnectError::Authentication { .. }) => {}
        Err(other) => panic!("default user with a password: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_user_with_a_password() {
    let server = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("on")
        .arg("resetpass")
        .arg(">default-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut server.admin().unwrap())
        .unwrap();

    // Without a password: Redis says NOAUTH, which connect must report.
    let error = match RedisConn::builder(server.url()).connect().await {
        Err(error) => error,
        Ok(conn) => panic!(
            "connect without a password to a default user that needs one succeeded; \
             its rate limit's verify then gives {:?}",
            rate(&conn, "no-password").verify().await
        ),
    };
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "no password for a default user that needs one: {error:?}"
    );
    // A wrong one.
    let error = RedisConn::builder(server.url())
        .password("not-default-pw")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );
    assert_clean(&error, &["not-default-pw", "default-pw"]);
    // The right one from the builder, or from the URL, with no user: `default`.
    let conn = RedisConn::builder(server.url())
        .password("default-pw")
        .connect()
        .await
        .unwrap();
    rate(&conn, "default-user").verify().await.unwrap();
    bulkhead(&conn, "default-user").verify().await.unwrap();
    quorum(&conn, "default-user", breaker())
        .verify()
        .await
        .unwrap();
    let conn = RedisConn::builder(format!("redis://:default-pw@127.0.0.1:{}", server.port()))
        .connect()
        .await
        .unwrap();
    rate(&conn, "default-user-url").verify().await.unwrap();
    // Named explicitly.
    RedisConn::builder(server.url())
        .username("default")
        .password("default-pw")
        .connect()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_disabled_user_is_an_authentication_error() {
    let certificates = Certificates::make();
    let off = TIDEWALL_USER
        .replace("user tidewall on", "user switched-off off")
        .replace(">secret", ">offsecret");
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER, &off], false);
    let error = tidewall_user(&server, &certificates)
        .username("switched-off")
        .password("offsecret")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Authentication { .. }),
        "{error:?}"
    );
    assert_clean(&error, &["offsecret"]);
}

/// Permissions are per limit: a user that may run nothing still connects, and every
/// limit's `verify` names what it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_any_command_connects_and_every_verify_refuses() {
    let certificates = Certificates::make();
    let server = SecureServer::start(
        &certificates,
        &["user bare on >secret resetkeys ~* resetchannels -@all"],
        false,
    );
    let conn = tidewall_user(&server, &certificates)
        .username("bare")
        .connect()
        .await
        .expect("connect checks credentials, not permissions");
    for error in [
        rate(&conn, "bare").verify().await.unwrap_err(),
        bulkhead(&conn, "bare").verify().await.unwrap_err(),
        quorum(&conn, "bare", breaker()).verify().await.unwrap_err(),
    ] {
        assert!(is_permission(&error), "{error:?}");
        assert_clean(&error, &["secret"]);
    }
}

// ---------------------------------------------------------------------------------------
// The ACL rule: narrowed keys, each command missing.

/// A server with the Tidewall user and a user `narrow` whose keys are only those matching
/// `keys`, and a connection as `narrow` (the certificates and the server live as long as the
/// tuple).
async fn narrowed_to(keys: &str) -> (Certificates, SecureServer, RedisConn) {
    let certificates = Certificates::make();
    let narrow = TIDEWALL_USER
        .replace("user tidewall", "user narrow")
        .replace("~tidewall:*", &format!("~{keys}"));
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER, &narrow], false);
    let conn = tidewall_user(&server, &certificates)
        .username("narrow")
        .connect()
        .await
        .unwrap();
    (certificates, server, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_narrowed_to_one_limits_name_work_for_that_name_only() {
    let (_certificates, _server, conn) = narrowed_to("tidewall:v1:{api:*").await;

    let api = rate(&conn, "api");
    api.verify().await.expect("the rate limit `api`");
    bulkhead(&conn, "api")
        .verify()
        .await
        .expect("the bulkhead `api`");
    quorum(&conn, "api", breaker())
        .verify()
        .await
        .expect("the quorum `api`");
    api.check().await.expect("the limit `api` works too");
    let held = bulkhead(&conn, "api")
        .try_acquire()
        .await
        .expect("the bulkhead `api` works too");
    drop(held);

    for name in ["web", "api2", "ap"] {
        for error in [
            rate(&conn, name).verify().await.unwrap_err(),
            bulkhead(&conn, name).verify().await.unwrap_err(),
            quorum(&conn, name, breaker()).verify().await.unwrap_err(),
        ] {
            assert!(is_permission(&error), "{name}: {error:?}");
        }
    }
}

/// `verify` probes "under its own hash tag (name and partition, so on the Cluster node that
/// holds its state)": a user whose keys are narrowed to one partition's hash tag verifies
/// that partition's limits, and no other partition's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_narrowed_to_one_partition_verify_that_partition() {
    let (_certificates, _server, conn) = narrowed_to("tidewall:v1:{api:tenant-7}*").await;
    let second = Duration::from_secs(1);
    for (partition, allowed) in [("tenant-7", true), ("tenant-8", false)] {
        let verified = [
            RedisRateLimiter::builder(&conn, "api", 1, Duration::from_secs(60))
                .partition(partition)
                .deadline(second)
                .build()
                .unwrap()
                .verify()
                .await,
            RedisBulkhead::builder(&conn, "api", 1)
                .partition(partition)
                .deadline(second)
                .build()
                .unwrap()
                .verify()
                .await,
            BreakerQuorum::builder(&conn, "api", breaker())
                .partition(partition)
                .deadline(second)
                .build()
                .unwrap()
                .verify()
                .await,
        ];
        for result in verified {
            match (allowed, result) {
                (true, Ok(())) => {}
                (false, Err(error)) if is_permission(&error) => {}
                (_, other) => panic!("partition {partition}: {other:?}"),
            }
        }
    }
}

/// Which limit needs which command, from the docs of each `verify`.
fn needed_by(command: &str) -> (bool, bool, bool) {
    const RATE: &[&str] = &["evalsha", "script|load", "time", "get", "set"];
    const BULKHEAD: &[&str] = &[
        "evalsha",
        "script|load",
        "time",
        "zcount",
        "zadd",
        "zremrangebyscore",
        "zscore",
        "pttl",
        "pexpire",
        "zrem",
    ];
    const QUORUM: &[&str] = &[
        "evalsha",
        "script|load",
        "time",
        "zadd",
        "zrem",
        "zremrangebyscore",
        "pttl",
        "pexpire",
        "zcard",
    ];
    (
        RATE.contains(&command),
        BULKHEAD.contains(&command),
        QUORUM.contains(&command),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_of_the_rule_missing_fails_exactly_the_limits_that_need_it() {
    let certificates = Certificates::make();
    let commands: Vec<&str> = TIDEWALL_USER
        .split_whitespace()
        .filter_map(|word| word.strip_prefix('+'))
        .collect();
    assert_eq!(commands.len(), 13, "{commands:?}");
    // Word by word: `+zrem` is a prefix of `+zremrangebyscore`.
    let rules: Vec<String> = commands
        .iter()
        .map(|command| {
            let missing = format!("+{command}");
            TIDEWALL_USER
                .replace(
                    "user tidewall",
                    &format!("user no-{}", command.replace('|', "-")),
                )
                .split_whitespace()
                .filter(|word| *word != missing)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut all: Vec<&str> = vec![TIDEWALL_USER];
    all.extend(rules.iter().map(String::as_str));
    let server = SecureServer::start(&certificates, &all, false);

    // The full user first: every script is then cached on the server, so a user that may
    // not load it must still be told (verify loads, it does not only run).
    let conn = tidewall_user(&server, &certificates)
        .connect()
        .await
        .unwrap();
    rate(&conn, "perm").verify().await.unwrap();
    bulkhead(&conn, "perm").verify().await.unwrap();
    quorum(&conn, "perm", breaker()).verify().await.unwrap();

    let mut wrong = Vec::new();
    for command in &commands {
        let user = format!("no-{}", command.replace('|', "-"));
        let conn = tidewall_user(&server, &certificates)
            .username(user.clone())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{user}: connect: {e:?}"));
        let (needs_rate, needs_bulkhead, needs_quorum) = needed_by(command);
        let results = [
            ("rate", needs_rate, rate(&conn, "perm").verify().await),
            (
                "bulkhead",
                needs_bulkhead,
                bulkhead(&conn, "perm").verify().await,
            ),
            (
                "quorum",
                needs_quorum,
                quorum(&conn, "perm", breaker()).verify().await,
            ),
        ];
        let named = command.split('|').next().unwrap();
        for (limit, needs, result) in results {
            match (needs, result) {
                (false, Ok(())) => {}
                (true, Err(error)) if is_permission(&error) => {
                    if !error.to_string().to_lowercase().contains(named) {
                        wrong.push(format!(
                            "without {command}: {limit} is refused without naming it: {error}"
                        ));
                    }
                }
                (needs, result) => wrong.push(format!(
                    "without {command}: {limit} (needs it: {needs}) gave {result:?}"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A verify that failed after taking its probe lease (no `ZREM` to release it) leaves the
/// lease for up to a second: a bulkhead verify right after, by a user that may not `ZADD`
/// (or `PTTL`, `PEXPIRE`), must still be told, not pass because the probe found its set full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_lease_left_behind_does_not_hide_a_missing_command() {
    let certificates = Certificates::make();
    let without = |command: &str| {
        TIDEWALL_USER
            .replace("user tidewall", &format!("user no-{command}"))
            .split_whitespace()
            .filter(|word| *word != format!("+{command}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (no_zrem, no_zadd, no_pexpire) = (without("zrem"), without("zadd"), without("pexpire"));
    let server = SecureServer::start(
        &certificates,
        &[TIDEWALL_USER, &no_zrem, &no_zadd, &no_pexpire],
        false,
    );
    let as_user = async |user: &str| {
        tidewall_user(&server, &certificates)
            .username(user)
            .connect()
            .await
            .unwrap()
    };
    let (zrem_conn, zadd_conn, pexpire_conn) = (
        as_user("no-zrem").await,
        as_user("no-zadd").await,
        as_user("no-pexpire").await,
    );

    // On a fresh name, without a lease left behind: both told.
    let fresh = bulkhead(&zadd_conn, "fresh").verify().await.unwrap_err();
    assert!(is_permission(&fresh), "{fresh:?}");
    let fresh = bulkhead(&pexpire_conn, "fresh").verify().await.unwrap_err();
    assert!(is_permission(&fresh), "{fresh:?}");

    // After a verify that could take but not release its probe lease.
    let mut wrong = Vec::new();
    for (user, conn) in [("no-zadd", &zadd_conn), ("no-pexpire", &pexpire_conn)] {
        let left = bulkhead(&zrem_conn, "left").verify().await.unwrap_err();
        assert!(is_permission(&left), "{left:?}");
        let result = bulkhead(conn, "left").verify().await;
        if !result.as_ref().is_err_and(is_permission) {
            wrong.push(format!("{user} after a lease left behind: {result:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The probes never touch the real limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_leaves_a_rate_limit_of_one_untouched() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let limiter = rate(&conn, "one");
    limiter.verify().await.unwrap();
    limiter.verify().await.unwrap();
    limiter.check().await.expect("the only cell is still there");
    assert!(
        matches!(limiter.check().await, Err(Rejected::RateLimited { .. })),
        "then the limit"
    );
    // A verify on an exhausted limit passes, and does not refill it.
    limiter.verify().await.unwrap();
    let other = rate(&conn, "one"); // no local memory of the denial
    assert!(
        matches!(other.check().await, Err(Rejected::RateLimited { .. })),
        "still exhausted after verify"
    );
    // The probe expires within a millisecond: none is left behind for good.
    let mut admin = server.admin().unwrap();
    assert_eq!(probe_keys_without_expiry(&mut admin), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_named_like_the_probe_is_refused_or_left_untouched() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let Ok(limiter) = RedisRateLimiter::builder(&conn, "edge", 1, Duration::from_secs(60))
        .burst(1)
        .partition("%probe")
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
    else {
        return; // refused: no real partition is `%probe`
    };
    limiter.verify().await.unwrap();
    limiter
        .check()
        .await
        .expect("a real partition `%probe` is not spent by verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_neither_frees_nor_takes_a_bulkhead_slot() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let bulkhead = bulkhead(&conn, "one-slot");
    // Free: verify, and the slot is still free right away.
    bulkhead.verify().await.unwrap();
    let held = bulkhead.try_acquire().await.expect("verify took no slot");
    // Full: verify passes, and the slot stays taken.
    bulkhead.verify().await.expect("verify on a full bulkhead");
    bulkhead.verify().await.expect("twice");
    assert!(
        bulkhead.try_acquire().await.is_err(),
        "verify freed the held slot"
    );
    drop(held);
    let again = eventually(async || bulkhead.try_acquire().await.ok()).await;
    bulkhead.verify().await.unwrap();
    assert!(bulkhead.try_acquire().await.is_err(), "a limit of one");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_neither_opens_a_breaker_nor_reports_one_open() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let mine = breaker();
    let quorum_layer = BreakerQuorum::builder(&conn, "dep", mine.clone())
        .quorum(0.01)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let peer_breaker = breaker();
    let peer = BreakerQuorum::builder(&conn, "dep", peer_breaker.clone())
        .instance("peer")
        .quorum(0.01)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    quorum_layer.verify().await.unwrap();
    peer.verify().await.unwrap();
    let view = peer.refresh().await.unwrap();
    assert_eq!((view.open, view.forced_open), (0, false), "{view:?}");
    assert_eq!(mine.state(), State::Closed);
    assert_eq!(peer_breaker.state(), State::Closed);
    // A real open report survives a verify that reports open then closed on its probe.
    mine.try_acquire().unwrap().failure();
    quorum_layer.refresh().await.unwrap();
    quorum_layer.verify().await.unwrap();
    let view = peer.refresh().await.unwrap();
    assert_eq!(view.open, 1, "verify erased the real open report: {view:?}");
    assert_eq!(mine.state(), State::Open);
}

// ---------------------------------------------------------------------------------------
// Frozen, killed, timeouts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_frozen_server_is_unreachable_within_seconds() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let limiter = rate(&conn, "frozen");
    let bulk = bulkhead(&conn, "frozen");
    let layer = quorum(&conn, "frozen", breaker());
    limiter.verify().await.unwrap();
    server.freeze();
    for (limit, result) in [
        ("rate", {
            let started = Instant::now();
            let r = limiter.verify().await;
            (r, started.elapsed())
        }),
        ("bulkhead", {
            let started = Instant::now();
            let r = bulk.verify().await;
            (r, started.elapsed())
        }),
        ("quorum", {
            let started = Instant::now();
            let r = layer.verify().await;
            (r, started.elapsed())
        }),
    ] {
        let (result, took) = result;
        let error = result.expect_err(limit);
        assert!(
            matches!(error, ConnectError::Unreachable { .. }),
            "{limit}: {error:?}"
        );
        assert!(took < Duration::from_secs(8), "{limit} took {took:?}");
        assert_clean(&error, &[]);
    }
    server.thaw();
    eventually(async || limiter.verify().await.ok()).await;
    bulk.verify().await.unwrap();
    layer.verify().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_frozen_server_honours_its_timeout() {
    let server = RedisServer::start();
    server.freeze();
    let started = Instant::now();
    let error = RedisConn::builder(server.url())
        .connect_timeout(Duration::from_millis(700))
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        took >= Duration::from_millis(600),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // The default: 2 s.
    let started = Instant::now();
    let error = RedisConn::builder(server.url())
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    server.thaw();
    RedisConn::builder(server.url()).connect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_after_a_kill_is_unreachable_then_works_after_a_restart() {
    let mut server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let limiter = rate(&conn, "killed");
    limiter.verify().await.unwrap();
    server.kill();
    let started = Instant::now();
    let error = limiter.verify().await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    server.restart();
    // A verify waits long enough for a reconnect after start-up.
    eventually(async || limiter.verify().await.ok()).await;
    limiter.check().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Cancel safety.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connects_keep_nothing() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let mut admin = server.admin().unwrap();
    let baseline = connected_clients(&mut admin);
    let mut random = SplitMix64::new(0x71de_3a11_5eed);
    let mut finished = 0;
    for _ in 0..60 {
        let micros = random.below_or_equal(29_999);
        let attempt = tidewall_user(&server, &certificates).connect();
        if let Ok(result) = tokio::time::timeout(Duration::from_micros(micros), attempt).await {
            drop(result.unwrap());
            finished += 1;
        }
    }
    // Seeded drop points from 0 to 30 ms: some connects finish, most are dropped mid-way.
    assert!(finished < 60, "no connect was dropped mid-way");
    // Every connection being made is closed: the server's count returns to the baseline.
    eventually(async || (connected_clients(&mut admin) <= baseline).then_some(())).await;
    // And a fresh start works.
    let conn = tidewall_user(&server, &certificates)
        .connect()
        .await
        .unwrap();
    rate(&conn, "after-drops").verify().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_verifies_never_break_a_limit() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let limiter = rate(&conn, "cancel");
    let bulk = bulkhead(&conn, "cancel");
    let mine = breaker();
    let layer = BreakerQuorum::builder(&conn, "cancel", mine.clone())
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut random = SplitMix64::new(0xdecaf_c0ffee);
    let mut finished = 0;
    for round in 0..90 {
        let micros = random.below_or_equal(2_999);
        let cut = Duration::from_micros(micros);
        let done = match round % 3 {
            0 => tokio::time::timeout(cut, limiter.verify()).await.is_ok(),
            1 => tokio::time::timeout(cut, bulk.verify()).await.is_ok(),
            _ => tokio::time::timeout(cut, layer.verify()).await.is_ok(),
        };
        finished += usize::from(done);
    }
    assert!(finished < 90, "no verify was dropped mid-way");

    // The real limits are whole: the rate limit's only cell, the bulkhead's only slot, no
    // open report and a closed breaker.
    limiter.check().await.expect("the rate limit's only cell");
    let held = bulk.try_acquire().await.expect("the bulkhead's only slot");
    let view = layer.refresh().await.unwrap();
    assert_eq!((view.open, view.forced_open), (0, false), "{view:?}");
    assert_eq!(mine.state(), State::Closed);

    // Nothing left for good.
    let mut admin = server.admin().unwrap();
    assert_eq!(probe_keys_without_expiry(&mut admin), Vec::<String>::new());

    // Fresh verifies pass right away, even with probe leases of the dropped ones left.
    let results = [
        limiter.verify().await,
        bulk.verify().await,
        layer.verify().await,
    ];
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    drop(held);

    // A fresh connection verifies too.
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    rate(&conn, "cancel").verify().await.unwrap();
    bulkhead(&conn, "cancel").verify().await.unwrap();
    quorum(&conn, "cancel", breaker()).verify().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// mTLS and server certificates.

/// A leaf `name` (key and certificate) signed by the authority `ca`, with `san`.
fn make_leaf(certificates: &Certificates, name: &str, ca: &str, san: &str) {
    let dir = certificates.path("ca.crt").parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join(format!("{name}.cnf")),
        format!("basicConstraints=CA:FALSE\nsubjectAltName={san}\n"),
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN=tidewall hostile {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.cnf"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_authority_is_a_tls_error() {
    let certificates = Certificates::make();
    make_leaf(&certificates, "stranger", "other-ca", "DNS:stranger");
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], true);
    let error = tidewall_user(&server, &certificates)
        .tls_client_certificate(
            certificates.pem("stranger.crt"),
            certificates.pem("stranger.key"),
        )
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
    assert_clean(&error, &["secret"]);
    // The right one still works on the same server.
    tidewall_user(&server, &certificates)
        .tls_client_certificate(
            certificates.pem("client.crt"),
            certificates.pem("client.key"),
        )
        .connect()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_client_certificate_with_the_wrong_key_is_refused_at_start() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], true);
    let error = tidewall_user(&server, &certificates)
        .tls_client_certificate(
            certificates.pem("client.crt"),
            certificates.pem("server.key"),
        )
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConnectError::InvalidSettings { .. } | ConnectError::Tls { .. }
        ),
        "{error:?}"
    );
    assert_clean(&error, &["secret"]);
}

#[tokio::test]
async fn a_server_certificate_for_another_host_is_a_tls_error() {
    let certificates = Certificates::make();
    // Replace the server's certificate by one for another name, signed by the trusted CA.
    make_leaf(&certificates, "elsewhere", "ca", "DNS:elsewhere.example");
    std::fs::copy(
        certificates.path("elsewhere.crt"),
        certificates.path("server.crt"),
    )
    .unwrap();
    std::fs::copy(
        certificates.path("elsewhere.key"),
        certificates.path("server.key"),
    )
    .unwrap();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let error = tidewall_user(&server, &certificates)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
    // Trusting the leaf itself (not an authority) for a server it did not sign.
    let error = RedisConn::builder(server.tls_url())
        .tls_root_certificate(certificates.pem("client.crt"))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls { .. }), "{error:?}");
}

/// `redis://` to the TLS port: the server reads a command as a bad handshake and hangs up.
#[tokio::test]
async fn plain_to_a_tls_port_is_not_a_success() {
    let certificates = Certificates::make();
    let server = SecureServer::start(&certificates, &[TIDEWALL_USER], false);
    let started = Instant::now();
    let result = RedisConn::builder(format!("redis://127.0.0.1:{}", server.tls_port))
        .username("tidewall")
        .password("secret")
        .connect_timeout(Duration::from_millis(800))
        .connect()
        .await;
    let error = result.expect_err("a plain connection to a TLS port");
    assert!(
        matches!(
            error,
            ConnectError::Unreachable { .. } | ConnectError::Tls { .. }
        ),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_clean(&error, &["secret"]);
}
