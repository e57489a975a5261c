//! A real Redis Cluster for the tests: six `redis-server` processes on free loopback ports
//! (three masters, three replicas, made with `redis-cli --cluster create`), stopped when
//! dropped; and what the tests do to it: find a slot's master, kill it, wait for its replica
//! to take over. A missing `redis-server` fails the test with instructions: never skipped.

#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a master may be silent before its replica is elected in its place.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

pub(crate) struct Cluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
    /// Held for the cluster's life (its nodes are killed first, in `Drop`).
    _alone: Alone,
}

/// One cluster at a time in a test process, from picking its ports to its end. Failovers are
/// timed in real time, so two clusters failing over side by side on two cores would stretch
/// the outages each test measures. nextest runs these binaries alone (`.config/nextest.toml`);
/// under plain `cargo test` their tests run on threads of one process, and this lock does the
/// same for the clusters (and keeps two of them from picking the same free ports).
/// (A flag and a condition variable rather than a `MutexGuard`: a cluster moves between
/// threads, into `spawn_blocking`.)
struct Alone;

static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

impl Alone {
    fn take() -> Self {
        let busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy = FREED
            .wait_while(busy, |busy| *busy)
            .unwrap_or_else(PoisonError::into_inner);
        *busy = true;
        Self
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(PoisonError::into_inner) = false;
        FREED.notify_one();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together so no two are the same; Redis also needs port + 10000 (the bus) free.
    let mut listeners = Vec::new();
    while listeners.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("its address").port())
        .collect()
}

fn connection(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(1))
}

impl Cluster {
    /// Six nodes, three masters with a replica each, every slot served.
    pub(crate) fn start() -> Self {
        // A port free when picked may still be taken before its node binds it (by another
        // test process); that node exits at once, and fresh ports are tried.
        let mut nodes = None;
        for _ in 0..3 {
            nodes = Self::start_nodes();
            if nodes.is_some() {
                break;
            }
        }
        let cluster = nodes.expect("six redis-server nodes listening, in three tries");
        cluster.create()
    }

    /// Six cluster-enabled nodes on free ports, each answering; `None` if one exited.
    fn start_nodes() -> Option<Self> {
        // Taken before the ports are picked: so two tests of one process never pick the same.
        let alone = Alone::take();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ports = free_ports(6);
        let mut children = Vec::new();
        for port in &ports {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir(&node_dir).expect("a node directory");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT.as_millis().to_string()])
                // A replica may take over however long since it last heard from its master
                // (an idle master pings only every 10 s, which the default counts against it).
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "starting redis-server: {e}. Install it (Debian: apt-get install redis-server); ./scripts/test and .ci/run do"
                    )
                });
            children.push(Some(child));
        }
        let mut cluster = Self {
            ports,
            children,
            _dir: dir,
            _alone: alone,
        };
        for index in 0..cluster.ports.len() {
            let port = cluster.ports[index];
            let started = Instant::now();
            while connection(port)
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_err()
            {
                let exited = cluster.children[index]
                    .as_mut()
                    .is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_some()));
                if exited {
                    return None; // its port was taken: dropping the cluster stops the rest
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "waited 30 s for node {port} to answer"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(cluster)
    }

    /// Joins the six answering nodes into a cluster and waits until it is healthy and every
    /// replica is in sync.
    fn create(self) -> Self {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        self.wait_until_healthy();
        // Each master's replica has finished its first sync: a replica promoted before that
        // would take over with no data.
        self.wait("every replica to be in sync", || {
            self.masters().into_iter().all(|port| {
                let info: redis::RedisResult<String> = connection(port)
                    .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c));
                info.is_ok_and(|info| info.contains("slave0:") && info.contains("state=online"))
            })
        });
        self
    }

    /// `redis://` URLs of every node, for the client's first contact.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, child)| child.is_some())
            .map(|(port, _)| *port)
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Until every live node says the cluster is ok and three masters serve every slot.
    pub(crate) fn wait_until_healthy(&self) {
        self.wait("the cluster to be ok on every node", || {
            self.live_ports().all(|port| {
                let info: redis::RedisResult<String> = connection(port)
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c));
                info.is_ok_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
            }) && self.masters().len() == 3
        });
    }

    /// What a failure message needs to tell a failover from a slow answer: the live masters
    /// and each live node's view of the cluster's state and current epoch.
    pub(crate) fn describe(&self) -> String {
        let views: Vec<String> = self
            .live_ports()
            .map(|port| {
                let info: redis::RedisResult<String> = connection(port)
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c));
                let field = |info: &str, name: &str| {
                    info.lines()
                        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                        .unwrap_or("?")
                        .trim()
                        .to_owned()
                };
                match info {
                    Ok(info) => format!(
                        "{port}: {} epoch {}",
                        field(&info, "cluster_state"),
                        field(&info, "cluster_current_epoch")
                    ),
                    Err(e) => format!("{port}: {e}"),
                }
            })
            .collect();
        format!("masters {:?}; {}", self.masters(), views.join(", "))
    }

    /// The live masters' ports, from a live node's `CLUSTER NODES`.
    pub(crate) fn masters(&self) -> Vec<u16> {
        let Some(port) = self.live_ports().next() else {
            return Vec::new();
        };
        let Ok(nodes) = connection(port)
            .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c))
        else {
            return Vec::new();
        };
        nodes
            .lines()
            .filter(|line| line.contains("master") && !line.contains("fail"))
            .filter_map(|line| {
                let address = line.split_whitespace().nth(1)?;
                address.split(['@', ':']).nth(1)?.parse().ok()
            })
            .filter(|port| self.live_ports().any(|live| live == *port))
            .collect()
    }

    /// The port of the master serving `key`'s slot now.
    pub(crate) fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        let mut c = connection(port).expect("a connection");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT");
        let shards: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut c)
            .expect("CLUSTER SLOTS");
        let redis::Value::Array(ranges) = shards else {
            panic!("CLUSTER SLOTS: {shards:?}")
        };
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                continue;
            };
            let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to))) =
                (fields.first(), fields.get(1))
            else {
                continue;
            };
            if (*from..=*to).contains(&i64::from(slot)) {
                let Some(redis::Value::Array(master)) = fields.get(2) else {
                    continue;
                };
                if let Some(redis::Value::Int(port)) = master.get(1) {
                    return u16::try_from(*port).expect("a port");
                }
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// How many keys each live master holds (`DBSIZE`).
    pub(crate) fn keys_per_master(&self) -> Vec<(u16, u64)> {
        self.masters()
            .into_iter()
            .map(|port| {
                let size = connection(port)
                    .and_then(|mut c| redis::cmd("DBSIZE").query(&mut c))
                    .expect("DBSIZE");
                (port, size)
            })
            .collect()
    }

    /// The node id of the node on `port`.
    pub(crate) fn id(&self, port: u16) -> String {
        connection(port)
            .and_then(|mut c| redis::cmd("CLUSTER").arg("MYID").query(&mut c))
            .expect("CLUSTER MYID")
    }

    /// The port of the replica of the master on `port`.
    pub(crate) fn replica_of(&self, port: u16) -> u16 {
        let master = self.id(port);
        let nodes: String = connection(port)
            .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query(&mut c))
            .expect("CLUSTER NODES");
        nodes
            .lines()
            .find(|line| line.contains("slave") && line.contains(&master))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|address| address.split(['@', ':']).nth(1))
            .and_then(|port| port.parse().ok())
            .expect("a replica")
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`: master and replica swap roles with
    /// nothing lost (the replica catches up first); returns once it serves the slots.
    ///
    /// Redis abandons a manual failover, without a word, that has not completed in 5 s (a
    /// replica slow to catch up on a loaded host): after 6 s it is asked for again.
    pub(crate) fn manual_failover(&self, replica: u16) {
        let mut c = connection(replica).expect("a connection");
        let mut ask = || redis::cmd("CLUSTER").arg("FAILOVER").query::<()>(&mut c);
        ask().expect("CLUSTER FAILOVER");
        self.wait("the replica to become a master", || {
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(6) {
                if self.masters().contains(&replica) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Asked again; an error here is a view of the roles that lags: the next round
            // looks again.
            let _ = ask();
            false
        });
        self.wait_until_healthy();
    }

    /// Moves `slot` from the master on `from` to the one on `to` as `redis-cli --cluster
    /// reshard` does: both marked (importing, migrating), its keys moved with `MIGRATE` a
    /// batch at a time (clients are sent `ASK` meanwhile), then every master told the new
    /// owner (clients are sent `MOVED`). `between_batches` runs after each batch.
    pub(crate) fn move_slot(
        &self,
        slot: u16,
        from: u16,
        to: u16,
        mut between_batches: impl FnMut(),
    ) {
        let (from_id, to_id) = (self.id(from), self.id(to));
        let mut source = connection(from).expect("a connection");
        let mut target = connection(to).expect("a connection");
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query(&mut target)
            .expect("SETSLOT IMPORTING");
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query(&mut source)
            .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query(&mut source)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut source)
                .expect("MIGRATE");
            between_batches();
        }
        // The masters; their replicas learn it from them.
        for port in self.masters() {
            let _: () = connection(port)
                .and_then(|mut c| {
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id)
                        .query(&mut c)
                })
                .expect("SETSLOT NODE");
        }
        self.wait_until_healthy();
    }

    /// The slot of `key`.
    pub(crate) fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        connection(port)
            .and_then(|mut c| redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut c))
            .expect("CLUSTER KEYSLOT")
    }

    /// Kills the node on `port` (SIGKILL: nothing flushed, connections reset).
    pub(crate) fn kill(&mut self, port: u16) {
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster");
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
