//! A redis-server with TLS and ACL users for the tests: certificates made at test time with
//! `openssl` (a certificate authority, a server certificate for 127.0.0.1 signed by it, a
//! client certificate, and a second authority nobody trusts), a TLS port, a plain port for
//! set-up, and users from an ACL rule list. Missing `redis-server` or `openssl` fails the
//! test with instructions: these tests never skip.

#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The rule the crate docs give for the user Tidewall needs, with the password `secret`.
pub(crate) const TIDEWALL_USER: &str = "user tidewall on >secret resetkeys ~tidewall:* resetchannels -@all +evalsha +script|load +zrem +time +get +set +zremrangebyscore +zcount +zcard +zadd +zscore +pttl +pexpire";

/// Certificates in a temporary directory.
pub(crate) struct Certificates {
    dir: tempfile::TempDir,
}

/// Runs `openssl` with `args` in `dir`.
pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("running openssl: {e}. Install it (Debian: apt-get install openssl)")
        });
    assert!(status.success(), "openssl {args:?} failed");
}

impl Certificates {
    /// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate (both
    /// signed by the CA), and another CA that signed nothing here.
    pub(crate) fn make() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=tidewall test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        std::fs::write(
            d.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("writing ext.cnf");
        for leaf in ["server", "client"] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN=tidewall test {leaf}"),
                    "-keyout",
                    &format!("{leaf}.key"),
                    "-out",
                    &format!("{leaf}.csr"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{leaf}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                    "-out",
                    &format!("{leaf}.crt"),
                ],
            );
        }
        Self { dir }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A file's bytes (PEM).
    pub(crate) fn pem(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).expect("reading a certificate")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A redis-server with a TLS port and a plain one, and the given ACL rules.
pub(crate) struct SecureServer {
    pub(crate) plain_port: u16,
    pub(crate) tls_port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SecureServer {
    /// Starts it with `certificates`, the `users` rules (the `default` user stays open on
    /// the plain port's connections too, for set-up), and clients required to present a
    /// certificate if `client_certificates`.
    pub(crate) fn start(
        certificates: &Certificates,
        users: &[&str],
        client_certificates: bool,
    ) -> Self {
        // The ports are free when asked for, but another test's server may take one before
        // ours binds it (then ours exits at once): a few fresh pairs are tried.
        for _ in 0..4 {
            if let Ok(server) = Self::try_start(certificates, users, client_certificates) {
                return server;
            }
        }
        match Self::try_start(certificates, users, client_certificates) {
            Ok(server) => server,
            Err(status) => {
                panic!("redis-server exited: {status} (TLS built in? redis-server --version)")
            }
        }
    }

    fn try_start(
        certificates: &Certificates,
        users: &[&str],
        client_certificates: bool,
    ) -> Result<Self, std::process::ExitStatus> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plain_port = free_port();
        let tls_port = free_port();
        let mut config = format!(
            "bind 127.0.0.1\nport {plain_port}\ntls-port {tls_port}\nsave \"\"\nappendonly no\n\
             dir {}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients {}\n",
            dir.path().display(),
            certificates.path("server.crt").display(),
            certificates.path("server.key").display(),
            certificates.path("ca.crt").display(),
            if client_certificates { "yes" } else { "no" },
        );
        for user in users {
            config.push_str(user);
            config.push('\n');
        }
        let file = dir.path().join("redis.conf");
        std::fs::write(&file, config).expect("writing redis.conf");
        let child = Command::new("redis-server")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting redis-server: {e}. Install it (Debian: apt-get install redis-server); ./scripts/test and .ci/run do"
                )
            });
        let mut server = Self {
            plain_port,
            tls_port,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(status);
            }
            let pong: redis::RedisResult<String> = server
                .admin()
                .and_then(|mut c| redis::cmd("PING").query(&mut c));
            if pong.is_ok() {
                return Ok(server);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `rediss://` to the TLS port, as `user`.
    pub(crate) fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// A synchronous connection on the plain port as `default`, for set-up and checks.
    pub(crate) fn admin(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.plain_port))?
            .get_connection_with_timeout(Duration::from_secs(1))
    }
}

impl Drop for SecureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
