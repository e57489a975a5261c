//! `tidewall tour --redis URL` (or `--redis-cluster URL,...`): three simulated replicas share
//! one rate limit and one bulkhead through Redis or a Redis Cluster (tidewall-redis), each on
//! its own connection, and decide a hot limit exactly and in lease mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidewall::rt::Tokio;
use tidewall::{Deadline, Rejected};
use tidewall_redis::{LeaseMode, RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};

use super::bounded::{secs, within};
use super::report::{Section, ms};
use super::scenarios::Size;

const REPLICAS: usize = 3;
/// How long the first connection may take (refused or unanswered, it is a failed check).
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// How long one section may take: a few seconds in full mode.
const SECTION_LIMIT: Duration = Duration::from_secs(60);

/// Where the replicas' limits live.
#[derive(Debug)]
pub(crate) enum Target {
    /// One server.
    Server(String),
    /// A Redis Cluster, reached first through these nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// A replica's connection, checked at start-up (reachable, credentials accepted).
    async fn connect(&self) -> Result<RedisConn, tidewall_redis::ConnectError> {
        match self {
            Self::Server(url) => RedisConn::builder(url).connect().await,
            Self::Cluster(nodes) => RedisConn::cluster_builder(nodes).connect().await,
        }
    }

    /// `on_server`'s or `on_cluster`'s title, whichever this target is.
    fn title(&self, on_server: &'static str, on_cluster: &'static str) -> &'static str {
        match self {
            Self::Server(_) => on_server,
            Self::Cluster(_) => on_cluster,
        }
    }
}

/// The three sections. Must run inside a tokio runtime (redis-rs's connection runs on tokio,
/// whatever runtime the rest of the tour used). Never fails as a whole: an unreachable Redis
/// is one failed check, and a section that fails keeps what it measured, with the error as a
/// failed check, and leaves the others to run.
pub(crate) async fn all(target: &Target, size: Size) -> Vec<Section> {
    // A name per run, so a second tour against the same Redis starts from rest.
    let run = format!(
        "tour-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    // One connection first: a Redis that is down, or refuses the credentials, is one failed
    // check rather than three.
    let refused = match within(&Tokio, CONNECT_LIMIT, target.connect()).await {
        Some(Ok(_)) => None,
        Some(Err(error)) => Some(error.to_string()),
        None => Some(format!("no answer within {}", secs(CONNECT_LIMIT))),
    };
    if let Some(why) = refused {
        let mut s = Section::new(
            target.title("Redis: the server", "Redis: the cluster"),
            "RedisConn::builder(url).connect() / RedisConn::cluster_builder(nodes).connect()",
        );
        s.check(
            &format!("connected, for the three Redis sections ({why})"),
            false,
        );
        return vec![s];
    }
    let rate = bounded(
        Section::new(
            target.title(
                "Distributed rate limit: 3 replicas, one Redis",
                "Distributed rate limit: 3 replicas, a Redis Cluster",
            ),
            "tidewall_redis::RedisRateLimiter",
        ),
        async |s| shared_rate_limit(target, &run, size, s).await,
    )
    .await;
    let bulkhead = bounded(
        Section::new(
            target.title(
                "Distributed bulkhead: 3 replicas × 4 workers, one Redis",
                "Distributed bulkhead: 3 replicas × 4 workers, a Redis Cluster",
            ),
            "tidewall_redis::RedisBulkhead",
        ),
        async |s| shared_bulkhead(target, &run, size, s).await,
    )
    .await;
    let hot = bounded(
        Section::new(
            target.title(
                "Hot limit: lease mode beside exact mode, 3 replicas, one Redis",
                "Hot limit: lease mode beside exact mode, 3 replicas, a Redis Cluster",
            ),
            "tidewall_redis::{RedisRateLimiter, LeaseMode}",
        ),
        async |s| hot_limit(target, &run, size, s).await,
    )
    .await;
    vec![rate, bulkhead, hot]
}

/// Runs one section for up to [`SECTION_LIMIT`]. Ended not well, it records why (its error,
/// or its time running out) as a failed check, and keeps what it measured before.
async fn bounded(
    mut s: Section,
    run: impl AsyncFnOnce(&mut Section) -> anyhow::Result<()>,
) -> Section {
    match within(&Tokio, SECTION_LIMIT, run(&mut s)).await {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            s.check(&format!("ran without an error ({error:#})"), false);
        }
        None => {
            s.check(&format!("ended within {}", secs(SECTION_LIMIT)), false);
        }
    }
    s
}

/// The one section reported when no tokio runtime could be started for the Redis sections.
pub(crate) fn failed_to_start(target: &Target, error: &std::io::Error) -> Section {
    let mut s = Section::new(
        target.title("Redis: the server", "Redis: the cluster"),
        "tokio::runtime::Builder::new_multi_thread()",
    );
    s.check(
        &format!("started a tokio runtime for the Redis sections ({error})"),
        false,
    );
    s
}

/// Each replica asks as soon as its last denial expires; together they must get the global
/// limit, no more.
async fn shared_rate_limit(
    target: &Target,
    run: &str,
    size: Size,
    s: &mut Section,
) -> anyhow::Result<()> {
    let (per_second, burst) = (500u32, 20u32);
    let span = if size == Size::Quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        // Checked at start-up: reachable, credentials accepted, every command permitted.
        let conn = target.connect().await?;
        // Fail closed: a decision Redis did not make is counted, never passed off as one.
        let limiter = RedisRateLimiter::builder(&conn, run, per_second, Duration::from_secs(1))
            .burst(burst)
            .deadline(Duration::from_millis(200))
            .when_unavailable(WhenUnavailable::Closed)
            .build()?;
        limiter.verify().await?;
        replicas.push(limiter);
    }
    let started = Instant::now();
    let stop = started + span;
    let workers: Vec<_> = replicas
        .into_iter()
        .map(|limiter| {
            tokio::spawn(async move {
                let (mut admitted, mut unavailable) = (0u64, 0u64);
                while Instant::now() < stop {
                    match limiter.check().await {
                        Ok(()) => admitted += 1,
                        Err(Rejected::RateLimited { retry_after }) => {
                            tokio::time::sleep(retry_after).await;
                        }
                        Err(_) => unavailable += 1,
                    }
                }
                (admitted, unavailable)
            })
        })
        .collect();
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await?);
    }
    let elapsed = started.elapsed();
    let total: u64 = counts.iter().map(|(a, _)| a).sum();
    let interval_us = 1_000_000 / u64::from(per_second);
    let span_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    // GCRA over the span, from rest: the burst plus one per interval (+1 for the edges).
    let most = u64::from(burst) + span_us / interval_us + 1;
    s.metric(
        "global limit",
        format!("{per_second}/s, burst {burst}, for {}", ms(elapsed)),
    );
    s.metric(
        "start-up",
        "each replica connected (RedisConnBuilder::connect) and verified its ACL permissions (verify)",
    );
    for (i, (admitted, _)) in counts.iter().enumerate() {
        s.metric(&format!("replica {} admitted", i + 1), admitted);
    }
    s.metric("admitted in all", format!("{total} of at most {most}"));
    s.check(
        "the replicas together never exceed the global limit",
        total <= most,
    );
    // GCRA lets a late replica catch up on the burst, so only a pause of all three for more
    // than the burst (40 ms) costs admissions; 90 % leaves a loaded machine room for a few,
    // and still fails a limiter that admits at a fraction of its rate.
    s.check(
        "together they get at least 90 % of it",
        total * 100 >= most * 90,
    );
    s.check(
        "every decision came from Redis (none fell back)",
        counts.iter().all(|(_, unavailable)| *unavailable == 0),
    );
    Ok(())
}

/// Four workers per replica, each making calls that hold a slot for 20 ms; at most `limit`
/// are ever held at once across the three replicas.
async fn shared_bulkhead(
    target: &Target,
    run: &str,
    size: Size,
    s: &mut Section,
) -> anyhow::Result<()> {
    let limit = 4u32;
    let calls = if size == Size::Quick { 5 } else { 20 };
    let held = Arc::new(AtomicUsize::new(0));
    let most_held = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..REPLICAS {
        let conn = target.connect().await?;
        let bulkhead = RedisBulkhead::builder(&conn, run, limit)
            .lease(Duration::from_secs(5))
            .deadline(Duration::from_millis(200))
            .when_unavailable(WhenUnavailable::Closed)
            .build()?;
        bulkhead.verify().await?;
        for _ in 0..4 {
            let (bulkhead, held, most_held) =
                (bulkhead.clone(), Arc::clone(&held), Arc::clone(&most_held));
            workers.push(tokio::spawn(async move {
                let mut done = 0u32;
                for _ in 0..calls {
                    let deadline = Deadline::at(Instant::now() + Duration::from_secs(10));
                    let Ok(permit) = bulkhead.acquire_before(deadline).await else {
                        continue;
                    };
                    if !permit.is_shared() {
                        continue; // not a Redis lease: not what this section shows
                    }
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most_held.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // Counted down before the release, which happens after the drop.
                    held.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                    done += 1;
                }
                done
            }));
        }
    }
    let mut completed = 0;
    for worker in workers {
        completed += worker.await?;
    }
    let most = most_held.load(Ordering::SeqCst);
    let expected = u32::try_from(REPLICAS * 4).unwrap_or(u32::MAX) * calls;
    s.metric("global limit", format!("{limit} slots, 20 ms calls"));
    s.metric("calls completed", format!("{completed} of {expected}"));
    s.metric("most slots held at once", most);
    s.metric("took", ms(started.elapsed()));
    s.check(
        "never more slots held than the global limit",
        most <= usize::try_from(limit).unwrap_or(usize::MAX),
    );
    s.check(
        "the limit itself was reached: all 4 slots held at once, across replicas",
        limit_reached(most, limit),
    );
    s.check(
        "every call got a Redis lease in the end",
        completed == expected,
    );
    Ok(())
}

/// A hot limit, exact then in lease mode: each replica's one task decides as fast as it can
/// (a refusal is counted and it asks again at once); lease mode spends cells held locally.
async fn hot_limit(target: &Target, run: &str, size: Size, s: &mut Section) -> anyhow::Result<()> {
    const PER_SECOND: u32 = 20_000;
    const BURST: u32 = 200;
    const MAX_BATCH: u32 = 200;
    let span = if size == Size::Quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    s.metric(
        "global limit",
        format!("{PER_SECOND}/s, burst {BURST}; lease batches of at most {MAX_BATCH}"),
    );
    for lease in [false, true] {
        let name = format!("{run}-hot-{}", if lease { "lease" } else { "exact" });
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            let conn = target.connect().await?;
            let builder =
                RedisRateLimiter::builder(&conn, &name, PER_SECOND, Duration::from_secs(1))
                    .burst(BURST)
                    .deadline(Duration::from_millis(200))
                    .when_unavailable(WhenUnavailable::Closed);
            let limiter = if lease {
                builder.lease_mode(LeaseMode::new(MAX_BATCH)?).build()?
            } else {
                builder.build()?
            };
            limiter.verify().await?;
            replicas.push(limiter);
        }
        let started = Instant::now();
        let workers: Vec<_> = replicas
            .into_iter()
            .map(|limiter| {
                tokio::spawn(async move {
                    let (mut decisions, mut admitted, mut unavailable) = (0u64, 0u64, 0u64);
                    while started.elapsed() < span {
                        for _ in 0..256 {
                            match limiter.check().await {
                                Ok(()) => admitted += 1,
                                Err(Rejected::RateLimited { .. }) => {}
                                Err(_) => unavailable += 1,
                            }
                            decisions += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    let _ = limiter.return_unspent().await;
                    (decisions, admitted, unavailable)
                })
            })
            .collect();
        let (mut decisions, mut admitted, mut unavailable) = (0u64, 0u64, 0u64);
        for worker in workers {
            let (d, a, u) = worker.await?;
            decisions += d;
            admitted += a;
            unavailable += u;
        }
        let elapsed = started.elapsed();
        let span_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let exact_most = u64::from(BURST) + span_us * u64::from(PER_SECOND) / 1_000_000 + 1;
        let mode = if lease { "lease" } else { "exact" };
        let per_replica = decisions as f64 / elapsed.as_secs_f64() / REPLICAS as f64;
        s.metric(
            &format!("{mode}: decisions a second per replica"),
            format!("{per_replica:.0}"),
        );
        s.metric(
            &format!("{mode}: admitted in all"),
            format!("{admitted} of at most {exact_most} (exact)"),
        );
        if lease {
            let bound =
                exact_most + u64::try_from(REPLICAS).unwrap_or(u64::MAX) * u64::from(MAX_BATCH);
            s.check(
                "lease mode stays within its bound: the exact limit plus 3 replicas × 200 cells",
                admitted <= bound,
            );
        } else {
            s.check("exact mode never exceeds the limit", admitted <= exact_most);
        }
        s.check(
            &format!("{mode}: every decision came from Redis or held cells (none fell back)"),
            unavailable == 0,
        );
    }
    Ok(())
}

/// Whether every slot was held at once. Half the limit would show only that slots were shared;
/// a bulkhead that grants fewer than its limit (a stale lease, a miscount) would pass that.
/// `most` counts holders between their permit and its drop, so it never exceeds what Redis
/// granted at that moment.
fn limit_reached(most: usize, limit: u32) -> bool {
    usize::try_from(limit).is_ok_and(|limit| limit > 0 && most >= limit)
}

#[cfg(test)]
mod tests {
    use super::{Target, all, limit_reached};
    use crate::tour::report::Status;
    use crate::tour::scenarios::Size;

    /// A Redis that is down is one failed check in a section of its own, not an error that
    /// would discard the report the local sections measured before it.
    #[test]
    fn a_redis_that_refuses_the_connection_is_a_failed_check() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A port just released: nothing listens there, so the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = Target::Server(format!("redis://127.0.0.1:{port}"));
        let sections = runtime.block_on(all(&target, Size::Quick));
        assert_eq!(sections.len(), 1);
        let checks = &sections[0].checks;
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Failed);
        assert!(
            checks[0].what.starts_with("connected"),
            "{}",
            checks[0].what
        );
    }

    #[test]
    fn half_the_limit_is_not_the_limit() {
        // The old check accepted 2 of 4.
        assert!(!limit_reached(2, 4));
        assert!(!limit_reached(3, 4));
        assert!(limit_reached(4, 4));
    }

    #[test]
    fn a_zero_limit_shows_nothing() {
        assert!(!limit_reached(0, 0));
    }
}
