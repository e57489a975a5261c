//! An advisory layer over per-instance circuit breakers: when a quorum of instances report
//! their breaker for a dependency open, the rest open theirs too, without waiting to fail on
//! their own. Refreshed on a timer, so Redis is never on a call's path.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tidewall::ConfigError;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::rt::Tokio;

use crate::backend::Backend;
use crate::conn::RedisConn;
use crate::options::{Common, common_options};
use crate::policy::WhenUnavailable;
use crate::start::{ConnectError, fresh_probe_key, probe};

/// The shortest refresh period: a refresh also takes a round trip and a timer tick (tokio's
/// is 1 ms), and each report lives three periods.
const MIN_EVERY: Duration = Duration::from_millis(10);

/// Reports this instance (alive until `ttl`, and open or not), reaps expired reports, and
/// counts: returns `{open instances, live instances}`.
const REPORT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local expires = string.format('%.0f', now + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], expires, ARGV[1])
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[2], expires, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local cutoff = string.format('%.0f', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
local keep = math.ceil(tonumber(ARGV[3]) / 1000) + 1000
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
end
return {redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[1])}
";

/// Shares one breaker's state with the same breaker on other instances. Each
/// [`refresh`](Self::refresh) reports whether this instance's breaker is open (on its own
/// evidence) and reads how many live instances report theirs open. At or above the quorum,
/// the local breaker is forced open; once the quorum is gone, the breaker this layer forced
/// is reset. A breaker forced open by the quorum reports itself closed, so the quorum never
/// feeds on its own decision. If Redis is away, the layer lets go of whatever it forced.
///
/// Only a refresh undoes a force, so the layer lets go when it stops refreshing too: when
/// the last live [`Refreshing`] handle of [`spawn`](Self::spawn) on this layer (or its
/// clones) is dropped, and when the last handle of this layer is dropped. While one
/// `Refreshing` still runs, dropping another lets go of nothing. An instance that calls [`refresh`](Self::refresh) by hand and
/// then stops, keeping the layer, keeps a force made meanwhile until it resets the breaker.
///
/// A breaker forced open or closed by hand is left alone, even one forced open by hand on
/// top of the layer's force: the layer undoes only a force that is still the breaker's latest
/// transition (see [`CircuitBreaker::state_and_generation`]).
///
/// ```no_run
/// use std::time::Duration;
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall_redis::{BreakerQuorum, RedisConn};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConn::open("redis://127.0.0.1:6379")?;
/// let breaker = CircuitBreaker::builder().build()?;
/// let quorum = BreakerQuorum::builder(&conn, "payments-api", breaker.clone())
///     .quorum(0.5)
///     .every(Duration::from_millis(500))
///     .build()?;
/// let _refreshing = quorum.spawn(); // stops when dropped
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BreakerQuorum {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: RedisConn,
    members_key: String,
    open_key: String,
    /// Where [`verify`](BreakerQuorum::verify) runs the script: the members' and the open
    /// reports' keys (each with a suffix of its own).
    probe_keys: [String; 2],
    instance: String,
    breaker: CircuitBreaker<Tokio>,
    quorum: f64,
    every: Duration,
    /// Three periods in whole µs: how long a report lives.
    expiry_us: u64,
    backend: Backend,
    /// The generation of the breaker's force-open this layer made, while it is the breaker's
    /// latest transition (a transition since, by hand or not, makes it no longer ours).
    forced: Mutex<Option<u32>>,
    /// How many [`Refreshing`] handles of this layer are alive: the force is let go when
    /// the last one is dropped.
    refreshers: AtomicUsize,
    script: redis::Script,
}

/// What one refresh saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumView {
    /// Live instances reporting their breaker open (on their own evidence).
    pub open: u64,
    /// Live instances.
    pub live: u64,
    /// Whether the local breaker is held open by the quorum after this refresh.
    pub forced_open: bool,
}

/// Stops the background refresh when dropped. The last one of a layer alive also lets go of
/// a breaker the layer forced open (unless it has moved on since: see [`BreakerQuorum`]), at
/// once and without Redis; while another still refreshes, the force stays its to keep.
#[derive(Debug)]
pub struct Refreshing {
    task: tokio::task::JoinHandle<()>,
    quorum: BreakerQuorum,
    /// Set when dropped: a refresh of this task that is still running forces nothing more.
    stopped: Arc<AtomicBool>,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        self.task.abort();
        let inner = &self.quorum.inner;
        // Counted under the lock a refresh forces under: a force made by another refresher
        // meanwhile is seen, and one of the last is let go.
        let mut forced = inner.forced.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.refreshers.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(ours) = forced.take()
        {
            inner.breaker.reset_if(ours);
        }
    }
}

/// Builds a [`BreakerQuorum`]; see [`BreakerQuorum::builder`].
#[derive(Debug, Clone)]
pub struct BreakerQuorumBuilder {
    common: Common,
    breaker: CircuitBreaker<Tokio>,
    instance: Option<String>,
    quorum: f64,
    every: Duration,
}

impl BreakerQuorum {
    /// Shares `breaker` under `name` (the dependency it guards). Defaults: quorum 0.5 (at
    /// least half the live instances open), a refresh every 500 ms, a random instance id,
    /// a 10 ms deadline per Redis call.
    pub fn builder(
        conn: &RedisConn,
        name: &str,
        breaker: CircuitBreaker<Tokio>,
    ) -> BreakerQuorumBuilder {
        BreakerQuorumBuilder {
            common: Common::new(conn, name),
            breaker,
            instance: None,
            quorum: 0.5,
            every: Duration::from_millis(500),
        }
    }

    /// Checks at start-up that this layer can work: loads its script and runs it twice on
    /// keys of its own (under its own hash tag, so on the Cluster node that holds its state;
    /// their kinds begin `%probe:`, which no real key's does), once
    /// reporting open and once closed, so a user that may not load or run it, run a command
    /// it calls (`TIME`, `ZADD`, `ZREM`, `ZREMRANGEBYSCORE`, `PTTL`, `PEXPIRE`, `ZCARD`) or
    /// touch its keys is reported now, not found by a quorum that never forms. The breaker
    /// and the real reports are not touched.
    ///
    /// **Cancel safety:** dropping it abandons the probe; the probe keys expire on their own.
    ///
    /// ```no_run
    /// use tidewall::breaker::CircuitBreaker;
    /// use tidewall::rt::Tokio;
    /// use tidewall_redis::{BreakerQuorum, RedisConn};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConn::builder("redis://127.0.0.1:6379").connect().await?;
    /// let breaker = CircuitBreaker::builder().runtime(Tokio).build()?;
    /// let quorum = BreakerQuorum::builder(&conn, "payments-api", breaker).build()?;
    /// quorum.verify().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisRateLimiter::verify`](crate::RedisRateLimiter::verify).
    pub async fn verify(&self) -> Result<(), ConnectError> {
        let inner = &*self.inner;
        let mut conn = inner.conn.connection();
        probe(inner.script.prepare_invoke().load_async(&mut conn), None).await?;
        let keys = inner
            .probe_keys
            .each_ref()
            .map(|base| fresh_probe_key(base));
        for open in ["1", "0"] {
            let mut invocation = inner.script.key(&keys[0]);
            invocation
                .key(&keys[1])
                .arg(&inner.instance)
                .arg(open)
                // Reports that expire in a millisecond.
                .arg(1000);
            probe(
                invocation.invoke_async::<(u64, u64)>(&mut conn),
                Some(REPORT),
            )
            .await?;
        }
        Ok(())
    }

    /// Refreshes every period on a task of the current tokio runtime until the returned
    /// handle is dropped; dropping the last such handle of this layer alive also lets go of
    /// a breaker the layer forced open (dropping one while another refreshes does not). A
    /// listener of the breaker that panics as the layer forces or resets it ends that round
    /// only: the refresh goes on, and lets go of the force when the quorum is gone.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns on the current one, as `tokio::spawn` does).
    #[must_use = "the refresh stops when the handle is dropped"]
    pub fn spawn(&self) -> Refreshing {
        let (this, stopped) = (self.clone(), Arc::new(AtomicBool::new(false)));
        let stop = Arc::clone(&stopped);
        let task = tokio::spawn(async move {
            loop {
                // A breaker listener that panics as this layer forces or resets it ends the
                // round, not the refresh: the force is recorded first, so a later round (or
                // dropping the handle) still lets go of it.
                let mut round = std::pin::pin!(this.refresh_unless(&stop));
                std::future::poll_fn(|cx| {
                    std::panic::catch_unwind(AssertUnwindSafe(|| round.as_mut().poll(cx)))
                        .map_or(Poll::Ready(()), |polled| polled.map(drop))
                })
                .await;
                tokio::time::sleep(this.inner.every).await;
            }
        });
        // Counted once spawned (spawning panics outside a runtime), before the handle exists.
        self.inner.refreshers.fetch_add(1, Ordering::AcqRel);
        Refreshing {
            task,
            quorum: self.clone(),
            stopped,
        }
    }

    /// One report and decision (what the timer runs): one round trip.
    ///
    /// **Cancel safety:** dropping it abandons the round trip; the breaker is not touched.
    ///
    /// # Errors
    ///
    /// When Redis did not answer within the deadline; the layer then lets go of a breaker it
    /// had forced open.
    pub async fn refresh(&self) -> Result<QuorumView, QuorumUnavailable> {
        self.refresh_unless(&AtomicBool::new(false)).await
    }

    /// [`refresh`](Self::refresh), forcing nothing once `stopped` is set (its
    /// [`Refreshing`] was dropped while it ran).
    async fn refresh_unless(&self, stopped: &AtomicBool) -> Result<QuorumView, QuorumUnavailable> {
        let inner = &*self.inner;
        // Open (not forced open) is always the breaker's own evidence. Half-open is the
        // breaker testing recovery: not reported, so the quorum never pulls a probing
        // instance back open (nor, on its own, closes it without a probe).
        let open_on_own_evidence = inner.breaker.state() == State::Open;
        let mut conn = inner.conn.connection();
        let mut invocation = inner.script.key(&inner.members_key);
        invocation
            .key(&inner.open_key)
            .arg(&inner.instance)
            .arg(if open_on_own_evidence { "1" } else { "0" })
            .arg(inner.expiry_us);
        let counts = inner
            .backend
            .call(invocation.invoke_async::<(u64, u64)>(&mut conn))
            .await;
        let mut forced = inner.forced.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, generation) = inner.breaker.state_and_generation();
        // Any transition since our force (a force by hand included) makes it not ours.
        if forced.is_some_and(|ours| ours != generation) {
            *forced = None;
        }
        let Ok((open, live)) = counts else {
            // Let go of a force that is still ours; `reset_if` leaves one made since alone.
            if let Some(ours) = forced.take() {
                inner.breaker.reset_if(ours);
            }
            return Err(QuorumUnavailable);
        };
        // open ≤ live; the quorum is a share of the live instances. A refresh that was
        // stopped meanwhile (read under the lock its `Refreshing` lets go under) forces nothing.
        let reached = open > 0
            && (open as f64) >= inner.quorum * (live as f64)
            && !stopped.load(Ordering::Acquire);
        match (reached, *forced) {
            // Only a closed breaker is forced: an open or probing one follows its own
            // evidence. `force_open_if` does nothing if it tripped since it was read.
            (true, None) if state == State::Closed => {
                // Recorded before the force: the breaker tells its listeners before
                // `force_open_if` returns, and one that panics must not leave behind a force
                // nobody knows is this layer's (it would never be let go).
                *forced = Some(generation.wrapping_add(1));
                *forced = inner.breaker.force_open_if(generation);
            }
            (false, Some(ours)) => {
                inner.breaker.reset_if(ours);
                *forced = None;
            }
            _ => {}
        }
        Ok(QuorumView {
            open,
            live,
            forced_open: forced.is_some(),
        })
    }
}

impl Inner {
    /// Resets the breaker if this layer's force is still its latest transition.
    fn let_go(&self) {
        let mut forced = self.forced.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ours) = forced.take() {
            self.breaker.reset_if(ours);
        }
    }
}

impl Drop for Inner {
    /// Nobody refreshes any more: a force still ours is let go.
    fn drop(&mut self) {
        self.let_go();
    }
}

/// Redis did not answer a quorum refresh in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumUnavailable;

impl std::fmt::Display for QuorumUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the breaker quorum could not be read from Redis in time")
    }
}

impl std::error::Error for QuorumUnavailable {}

impl BreakerQuorumBuilder {
    common_options!(no_policy);

    /// Accepted so that settings shared with the limits build here too, and validated as
    /// they are (a [`WhenUnavailable::Local`] share outside (0, 1] is refused), but it
    /// changes nothing: when Redis does not answer in time, the layer always lets go of what
    /// it forced, and the local breaker decides alone.
    #[must_use]
    pub fn when_unavailable(mut self, policy: WhenUnavailable) -> Self {
        self.common.policy = policy;
        self
    }

    /// The share of live instances (0 < quorum ≤ 1) that must report open to force this
    /// one open (default 0.5).
    #[must_use]
    pub fn quorum(mut self, quorum: f64) -> Self {
        self.quorum = quorum;
        self
    }

    /// How often to report and read (default 500 ms). An instance that stops reporting is
    /// forgotten after three periods, counted in whole µs on Redis's clock: `every` must be
    /// at least 10 ms (a refresh takes a round trip and a timer tick besides its period, so
    /// with a shorter one live instances' reports would lapse between refreshes and the
    /// quorum would silently never form), `3 × every` within 0.1 % of whole µs and at most
    /// 2^50 µs.
    #[must_use]
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// This instance's id among the others (default: random).
    #[must_use]
    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.to_owned());
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a quorum outside (0, 1], a period under 10 ms or whose
    /// three-period expiry is more than 0.1 % off whole µs or over 2^50 µs, or a
    /// [`WhenUnavailable::Local`] share outside (0, 1];
    /// [`ConfigError::DurationOverflow`] for a three-period expiry or a deadline beyond
    /// `u64::MAX` nanoseconds; [`ConfigError::Zero`] for a zero period or deadline, an empty
    /// name or instance id.
    pub fn build(self) -> Result<BreakerQuorum, ConfigError> {
        if !(self.quorum > 0.0 && self.quorum <= 1.0) {
            return Err(ConfigError::OutOfRange {
                field: "quorum",
                value: self.quorum,
                allowed: "0 < quorum <= 1",
            });
        }
        if self.every.is_zero() {
            return Err(ConfigError::Zero { field: "every" });
        }
        if self.every < MIN_EVERY {
            return Err(ConfigError::OutOfRange {
                field: "every",
                value: self.every.as_secs_f64(),
                allowed: "at least 10 ms (0.01 s)",
            });
        }
        let expiry = self
            .every
            .checked_mul(3)
            .ok_or(ConfigError::DurationOverflow { field: "every" })?;
        let expiry_us = crate::options::script_micros(
            "every",
            expiry,
            "such that 3 × every is within 0.1 % of whole µs and at most 2^50 µs",
        )?;
        let instance = self
            .instance
            .unwrap_or_else(|| format!("{:016x}", crate::bulkhead::random_id()));
        if instance.is_empty() {
            return Err(ConfigError::Zero { field: "instance" });
        }
        Ok(BreakerQuorum {
            inner: Arc::new(Inner {
                members_key: self.common.validated_key("breaker-live")?,
                open_key: self.common.validated_key("breaker-open")?,
                probe_keys: [
                    self.common.probe_key("breaker-live"),
                    self.common.probe_key("breaker-open"),
                ],
                conn: self.common.conn,
                instance,
                breaker: self.breaker,
                quorum: self.quorum,
                every: self.every,
                expiry_us,
                backend: Backend::new(self.common.deadline, "quorum", &self.common.name)?,
                forced: Mutex::new(None),
                refreshers: AtomicUsize::new(0),
                script: redis::Script::new(REPORT),
            }),
        })
    }
}
