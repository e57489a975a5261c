//! The tour's stream scenarios: a large log aggregated in constant memory, sensor readings
//! batched by size and time, and a rate-limited stream with a burst. No HTTP here: the
//! sources are a file, a generator and an iterator.

use std::io::{self, BufWriter, IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidewall::rate::RateLimiter;
use tidewall::stream::{BlockingReader, LineReader, Overlong, StreamOps, Yielder};
use tidewall_core::rng::SplitMix64;

use super::bounded::{missed, secs, within};
use super::client::{Net, since};
use super::report::{Section, ms};
use super::scenarios::Size;

/// Every run writes the same log and the same sensor timings.
const SEED: u64 = 0x7D3E_11AB_5EED_2026;
const MIB: u64 = 1 << 20;

pub(crate) async fn all<R: Net>(rt: R, size: Size) -> Vec<Section> {
    vec![
        large_log(&rt, size).await,
        sensor_batches(&rt, size).await,
        rate_limited(&rt).await,
    ]
}

/// The status codes the generator writes, with weights out of 100: mostly success, a tail
/// of errors, as an access log looks.
const STATUSES: [u32; 7] = [200, 201, 204, 301, 404, 500, 503];
const WEIGHTS: [u64; 7] = [70, 8, 5, 5, 7, 3, 2];
/// Counts per minute of the day, per status: 1440 × 7 counters (80 KiB), whatever the size.
type Table = Vec<[u64; STATUSES.len()]>;
const MINUTES: usize = 24 * 60;
/// The log starts at 10:00 and the clock moves one minute every this many lines.
const FIRST_MINUTE: usize = 10 * 60;
const LINES_PER_MINUTE: u64 = 100_000;
/// Fixed offsets in `2026-11-25T10:15:03Z GET /api/items/12345 200 512`: the id is padded
/// to 5 digits so the status always starts at byte 42, and parsing needs no split.
const HOUR_AT: usize = 11;
const MINUTE_AT: usize = 14;
const STATUS_AT: usize = 42;
/// Both the reader's chunks and the line buffer: few, large reads.
const CHUNK: usize = 1 << 20;
/// Redraw the progress bar every this many bytes.
const TICK: u64 = 16 * MIB;
/// How long the reader may take to deliver one batch (a 1 MiB read and its split into
/// lines, milliseconds even from a slow disk).
const BATCH_LIMIT: Duration = Duration::from_secs(30);
/// How long the sensor's batched stream and the rate-limited stream may take to end: they
/// need about 2 s (`--quick`) or 5 s, and 0.4 s.
const STREAM_LIMIT: Duration = Duration::from_secs(30);

async fn large_log<R: Net>(rt: &R, size: Size) -> Section {
    let mut s = Section::new(
        "Streams: aggregate a large log in constant memory",
        "LineReader::new(BlockingReader::new(rt, file, 1 MiB)?, ..)?.next_batch()",
    );
    // An I/O failure (a full disk, a read-only temp dir) is a failed check, not a crash.
    if let Err(e) = measure_log(rt, size, &mut s).await {
        s.check(
            &format!(
                "wrote and read the log without an error: {e:#} (this mode writes {} MiB \
                 under the temp dir: TMPDIR moves it; --quick writes {} MiB)",
                log_size(size) / MIB,
                log_size(Size::Quick) / MIB
            ),
            false,
        );
    }
    s
}

/// The log's size: 2 GiB in full mode, 128 MiB with `--quick`.
fn log_size(size: Size) -> u64 {
    if size == Size::Quick {
        128 * MIB
    } else {
        2048 * MIB
    }
}

async fn measure_log<R: Net>(rt: &R, size: Size, s: &mut Section) -> anyhow::Result<()> {
    let target = log_size(size);
    // The temp dir honours TMPDIR; on a tmpfs /tmp the log occupies RAM (not this process's
    // RSS) until the dir is dropped at the end of this function.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("access.log");
    let started = Instant::now();
    let file = path.clone();
    // Formatting and writing gigabytes blocks: keep it off the async workers.
    // `JoinError` is not `Sync` (it may hold a panic payload), hence the `map_err` instead of
    // a bare `?` into `anyhow`.
    let (written_lines, written_table) = rt
        .spawn_blocking(move || write_log(&file, target))
        .await
        .map_err(|e| anyhow::anyhow!("the log writer stopped: {e}"))??;
    let generated = started.elapsed();
    let file_size = std::fs::metadata(&path)?.len();

    // VmHWM is a high-water mark: reset it to the current RSS first, so the peak read after
    // the aggregation is the aggregation's own, not an earlier scenario's that would hide it.
    let baseline = reset_peak_rss();
    let started = Instant::now();
    // Memory is fixed here, whatever the file size: two 1 MiB chunks in the reader (one read
    // ahead on a blocking thread) and the 1 MiB line buffer.
    let reader = BlockingReader::new(rt.clone(), std::fs::File::open(&path)?, CHUNK)?;
    let mut lines = LineReader::new(reader, CHUNK, 64 * 1024, Overlong::Error)?;
    let mut table: Table = vec![[0; STATUSES.len()]; MINUTES];
    let (mut count, mut malformed, mut read, mut tick) = (0u64, 0u64, 0u64, TICK);
    loop {
        let Some(next) = within(rt, BATCH_LIMIT, lines.next_batch()).await else {
            anyhow::bail!(
                "the reader gave no batch within {} ({} MiB of {} read)",
                secs(BATCH_LIMIT),
                read / MIB,
                file_size / MIB
            );
        };
        let Some(batch) = next? else {
            break;
        };
        read += batch.as_bytes().len() as u64;
        for line in batch.lines() {
            count += 1;
            match parse(line) {
                Some((minute, status)) => table[minute][status] += 1,
                None => malformed += 1,
            }
        }
        if (tick..file_size).contains(&read) {
            progress("reading", read, file_size);
            tick += TICK;
        }
    }
    progress("reading", file_size, file_size);
    let aggregated = started.elapsed();
    let peak = rss_kib("VmHWM:").ok_or("no VmHWM in /proc/self/status");

    let totals = status_totals(&table);
    s.metric("file size", format!("{} MiB", file_size / MIB))
        .metric("lines", count)
        .metric("generated in", ms(generated))
        .metric("aggregated in", ms(aggregated))
        .metric(
            "throughput (aggregation)",
            format!("{:.2} GB/s", gb_per_s(read, aggregated)),
        )
        .metric(
            "per status",
            STATUSES
                .iter()
                .zip(totals)
                .map(|(code, n)| format!("{code}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
        .metric(
            "minutes aggregated",
            table
                .iter()
                .filter(|row| row.iter().any(|n| *n > 0))
                .count(),
        )
        .metric("malformed lines", malformed);
    s.check("lines counted = lines written", count == written_lines);
    s.check(
        "per-status totals (and every per-minute count) equal the generator's",
        totals == status_totals(&written_table) && table == written_table,
    );
    let rss = rss_verdict(baseline, peak, read);
    s.metric(
        "RSS before / peak while aggregating (VmHWM, reset before)",
        match &rss {
            Rss::Measured { base, peak, .. } => {
                format!("{} MiB / {} MiB", base / 1024, peak / 1024)
            }
            Rss::Unmeasurable(why) | Rss::Inconsistent(why) => format!("not measured: {why}"),
        },
    )
    .metric(
        "peak RSS growth, aggregation",
        match &rss {
            Rss::Measured { growth, .. } => format!("{growth} KiB"),
            _ => "n/a".into(),
        },
    );
    let what = format!(
        "peak RSS grew ≤ {} MiB while aggregating ≥ {} MiB (measured, not assumed)",
        RSS_BOUND_KIB / 1024,
        MIN_AGGREGATED / MIB
    );
    match rss {
        Rss::Measured { growth, .. } => s.check(&what, growth <= RSS_BOUND_KIB),
        Rss::Unmeasurable(why) => s.not_measurable(&what, why),
        Rss::Inconsistent(_) => s.check(&what, false),
    };
    Ok(())
}

/// What the peak-RSS measurement came to.
#[derive(Debug, PartialEq, Eq)]
enum Rss {
    /// KiB: the RSS before, the peak while aggregating, and how far the peak rose.
    Measured { base: u64, peak: u64, growth: u64 },
    /// This platform has no way to reset and read the peak (no Linux `/proc`, or a sandbox
    /// without `clear_refs`).
    Unmeasurable(&'static str),
    /// Read, but the figures cannot show the bound: a failure, not a platform's limit.
    Inconsistent(&'static str),
}

/// Sorts the measurement's parts: reading the RSS (the `/proc` files) failing means this
/// platform cannot measure it; figures that were read but cannot show the aggregation's
/// memory mean the check failed.
fn rss_verdict(
    baseline: Result<u64, &'static str>,
    peak: Result<u64, &'static str>,
    processed: u64,
) -> Rss {
    match (baseline, peak) {
        (Err(why), _) | (_, Err(why)) => Rss::Unmeasurable(why),
        (Ok(base), Ok(peak)) => match rss_growth(base, peak, processed) {
            Ok(growth) => Rss::Measured { base, peak, growth },
            Err(why) => Rss::Inconsistent(why),
        },
    }
}

/// Writes `target` bytes of log (rounded up to a whole line); returns what it wrote, lines and
/// counts, as the truth the aggregation is checked against.
fn write_log(path: &Path, target: u64) -> io::Result<(u64, Table)> {
    let mut out = BufWriter::with_capacity(CHUNK, std::fs::File::create(path)?);
    let mut rng = SplitMix64::new(SEED);
    let mut table: Table = vec![[0; STATUSES.len()]; MINUTES];
    let (mut lines, mut bytes, mut tick) = (0u64, 0u64, TICK);
    // One reused line buffer: formatting allocates nothing per line.
    let mut line: Vec<u8> = Vec::with_capacity(64);
    while bytes < target {
        let minute =
            (FIRST_MINUTE + usize::try_from(lines / LINES_PER_MINUTE).unwrap_or(0)) % MINUTES;
        let second = lines % LINES_PER_MINUTE * 60 / LINES_PER_MINUTE;
        let status = weighted_status(&mut rng);
        line.clear();
        writeln!(
            line,
            "2026-11-25T{:02}:{:02}:{second:02}Z GET /api/items/{:05} {} {}",
            minute / 60,
            minute % 60,
            rng.next_u64() % 100_000,
            STATUSES[status],
            rng.next_u64() % 20_000,
        )?;
        out.write_all(&line)?;
        table[minute][status] += 1;
        lines += 1;
        bytes += line.len() as u64;
        if (tick..target).contains(&bytes) {
            progress("writing", bytes, target);
            tick += TICK;
        }
    }
    out.flush()?;
    progress("writing", target, target);
    Ok((lines, table))
}

/// An index into `STATUSES`, drawn by `WEIGHTS`.
fn weighted_status(rng: &mut SplitMix64) -> usize {
    let roll = rng.next_u64() % WEIGHTS.iter().sum::<u64>();
    let mut below = 0u64;
    WEIGHTS
        .iter()
        .position(|weight| {
            below += weight;
            roll < below
        })
        .unwrap_or(0)
}

/// (minute of the day, status index) from the fixed offsets, or `None` for a foreign line.
fn parse(line: &[u8]) -> Option<(usize, usize)> {
    let hour = digits(line.get(HOUR_AT..HOUR_AT + 2)?)?;
    let minute = digits(line.get(MINUTE_AT..MINUTE_AT + 2)?)?;
    let code = digits(line.get(STATUS_AT..STATUS_AT + 3)?)?;
    let status = STATUSES.iter().position(|s| *s == code)?;
    let minute = usize::try_from(hour * 60 + minute)
        .ok()
        .filter(|m| *m < MINUTES)?;
    Some((minute, status))
}

fn digits(bytes: &[u8]) -> Option<u32> {
    bytes
        .iter()
        .try_fold(0u32, |n, &b| char::from(b).to_digit(10).map(|d| n * 10 + d))
}

fn status_totals(table: &Table) -> [u64; STATUSES.len()] {
    let mut totals = [0; STATUSES.len()];
    for row in table {
        for (total, n) in totals.iter_mut().zip(row) {
            *total += n;
        }
    }
    totals
}

#[allow(clippy::cast_precision_loss, reason = "a throughput figure")]
fn gb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e9
}

/// The aggregation's memory bound: its two 1 MiB chunks and 1 MiB line buffer, with room for
/// the allocator and the runtime.
const RSS_BOUND_KIB: u64 = 16 * 1024;
/// The least input that makes the bound mean something: a reader that kept what it read would
/// exceed the bound eight times over.
const MIN_AGGREGATED: u64 = 8 * RSS_BOUND_KIB * 1024;

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux's `/proc/self/clear_refs`)
/// and returns that RSS in KiB, or why it could not.
fn reset_peak_rss() -> Result<u64, &'static str> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|_| "could not reset VmHWM (/proc/self/clear_refs)")?;
    rss_kib("VmRSS:").ok_or("no VmRSS in /proc/self/status")
}

/// How far the peak RSS rose over `baseline` (KiB) while `processed` bytes were aggregated, or
/// why that figure would not show the aggregation's memory.
fn rss_growth(baseline: u64, peak: u64, processed: u64) -> Result<u64, &'static str> {
    if baseline == 0 {
        return Err("a zero baseline RSS");
    }
    if processed < MIN_AGGREGATED {
        return Err("too little input aggregated to show a bound");
    }
    peak.checked_sub(baseline)
        .ok_or("the peak RSS is below the baseline")
}

/// A `kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in KiB; Linux only.
fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Redraws `\r[#####.....] 512/1024 MiB` on stderr, ending the line once `done >= total`.
/// Silent unless stderr is a terminal, so CI logs and redirected output get no `\r` noise.
// The report goes to stdout; a progress bar belongs on stderr, which is what this lint flags.
#[allow(
    clippy::print_stderr,
    reason = "an interactive progress bar, kept off the report's stdout"
)]
fn progress(step: &str, done: u64, total: u64) {
    const WIDTH: u64 = 30;
    if !io::stderr().is_terminal() {
        return;
    }
    let total = total.max(1);
    let filled = usize::try_from(done.min(total) * WIDTH / total).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0) - filled;
    eprint!(
        "\r{step} [{}{}] {}/{} MiB",
        "#".repeat(filled),
        ".".repeat(empty),
        done.min(total) / MIB,
        total / MIB
    );
    if done >= total {
        eprintln!();
    }
}

async fn sensor_batches<R: Net>(rt: &R, size: Size) -> Section {
    const MAX: usize = 50;
    let readings: u32 = if size == Size::Quick { 500 } else { 1_000 };
    let max_wait = Duration::from_millis(40);
    let mut s = Section::new(
        "Streams: sensor readings batched by size and time",
        "generator(..)?.batch_on(&rt, 50, 40 ms)?",
    );
    // Readings 1–9 ms apart fill at most ~40 in 40 ms, so gaps alone only ever cut by time.
    // Every 300th reading the sensor reconnects and flushes a backlog of 60–139 readings
    // with no gap between them: those fill batches to 50 and are cut by size.
    let flushes = (0..readings).filter(|seq| seq % 300 == 150).count();
    let clock = rt.clone();
    let sensor = tidewall::stream::generator(64, move |mut out: Yielder<u32>| async move {
        let mut rng = SplitMix64::new(SEED);
        let mut backlog = 0;
        for seq in 0..readings {
            if seq % 300 == 150 {
                backlog = 60 + rng.next_u64() % 80;
            }
            if backlog > 0 {
                backlog -= 1;
            } else {
                clock
                    .sleep(Duration::from_millis(1 + rng.next_u64() % 9))
                    .await;
            }
            if !out.yield_(seq).await {
                return;
            }
        }
    })
    .expect("a non-zero capacity");
    let start = rt.now();
    let batched = sensor
        .batch_on(rt, MAX, max_wait)
        .expect("a valid batch configuration")
        .collect::<Vec<Vec<u32>>>();
    let Some(batches) = within(rt, STREAM_LIMIT, batched).await else {
        return missed(s, "the batched stream ended", STREAM_LIMIT);
    };
    let elapsed = since(rt, start);
    // A full batch was cut by size; a short one by its timer, except perhaps the last, which
    // the end of the stream may have cut.
    let by_size = batches.iter().filter(|b| b.len() == MAX).count();
    let last_short = batches.last().is_some_and(|b| b.len() < MAX);
    let by_time = batches.len() - by_size - usize::from(last_short);
    let delivered: Vec<u32> = batches.iter().flatten().copied().collect();
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    let mean = delivered.len() as f64 / batches.len().max(1) as f64;
    s.metric("readings (1–9 ms apart, plus backlog flushes)", readings)
        .metric("backlog flushes", flushes)
        .metric("batches", batches.len())
        .metric("mean batch size", format!("{mean:.1}"))
        .metric(
            "cut by size (50) / time (40 ms) / end of stream",
            format!("{by_size} / {by_time} / {}", usize::from(last_short)),
        )
        .metric("elapsed", ms(elapsed));
    s.check(
        "every reading delivered once, in order",
        delivered.iter().copied().eq(0..readings),
    );
    s.check(
        "no batch empty or larger than 50",
        batches.iter().all(|b| !b.is_empty() && b.len() <= MAX),
    );
    s.check(
        "every backlog flush filled a batch (cut by size)",
        by_size >= flushes,
    );
    s
}

async fn rate_limited<R: Net>(rt: &R) -> Section {
    const ITEMS: u32 = 60;
    const BURST: u32 = 20;
    let mut s = Section::new(
        "Streams: rate-limited stream with a burst",
        "stream.rate_limit(RateLimiter::builder(100, 1 s).burst(20)..)",
    );
    // Taken before the build: the limiter's origin is no earlier, so the theory is a floor.
    let start = rt.now();
    let limiter = RateLimiter::builder(100, Duration::from_secs(1))
        .burst(BURST)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .expect("a valid configuration");
    let interval = Duration::from_nanos(limiter.gcra().interval_nanos());
    // Pinned on the stack: `RateLimit` holds the runtime's sleep, which may not be `Unpin`.
    let mut paced = std::pin::pin!(futures_util::stream::iter(0..ITEMS).rate_limit(limiter));
    let mut arrivals = Vec::with_capacity(60);
    let drained = within(rt, STREAM_LIMIT, async {
        while let Some(item) = paced.next().await {
            arrivals.push((item, since(rt, start)));
        }
    });
    if drained.await.is_none() {
        let what = format!(
            "the rate-limited stream ended ({} of {ITEMS} delivered)",
            arrivals.len()
        );
        return missed(s, &what, STREAM_LIMIT);
    }
    let elapsed = arrivals.last().map_or(Duration::ZERO, |a| a.1);
    // The 21st item is due one interval after the limiter's origin, which is no earlier than
    // `start`: nothing past the burst can arrive within the first interval, however the
    // machine runs. The burst's 20 need only microseconds of it.
    let burst = arrivals.iter().filter(|a| a.1 < interval).count();
    // The burst at once, then one per interval for the rest: 40 × 10 ms = 400 ms. Never
    // sooner (the limiter is never early); later only by the last wake-up's lateness, since
    // GCRA lets a late consumer catch up within its burst: a stall costs time only at the
    // very end. A limiter pacing at under two thirds of its rate exceeds the slack.
    let theory = interval * (ITEMS - BURST);
    let slack = theory / 2;
    s.metric("items", ITEMS)
        .metric("rate", format!("100 / s (one per {})", ms(interval)))
        .metric("delivered within the first interval (the burst)", burst)
        .metric("elapsed (last item)", ms(elapsed))
        .metric("theory: (60 − 20) × interval", ms(theory));
    s.check(
        "all 60 delivered, in order",
        arrivals.iter().map(|a| a.0).eq(0..ITEMS),
    );
    s.check("the burst was exactly 20", burst == 20);
    s.check(
        &format!("elapsed within [theory, theory + {}]", ms(slack)),
        (theory..=theory + slack).contains(&elapsed),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::{
        MIB, MIN_AGGREGATED, RSS_BOUND_KIB, Rss, reset_peak_rss, rss_growth, rss_kib, rss_verdict,
    };

    /// Only a platform that cannot read the figures makes the check "not measurable"; figures
    /// read but unable to show the bound stay a failure.
    #[test]
    fn only_a_missing_proc_makes_the_rss_check_unmeasurable() {
        let no_proc = "could not reset VmHWM (/proc/self/clear_refs)";
        assert_eq!(
            rss_verdict(Err(no_proc), Ok(9_000), MIN_AGGREGATED),
            Rss::Unmeasurable(no_proc)
        );
        assert_eq!(
            rss_verdict(Ok(8_000), Err("no VmHWM"), MIN_AGGREGATED),
            Rss::Unmeasurable("no VmHWM")
        );
        assert!(matches!(
            rss_verdict(Ok(8_000), Ok(9_000), MIN_AGGREGATED - 1),
            Rss::Inconsistent(_)
        ));
        assert!(matches!(
            rss_verdict(Ok(8_000), Ok(7_000), MIN_AGGREGATED),
            Rss::Inconsistent(_)
        ));
        assert_eq!(
            rss_verdict(Ok(8_000), Ok(9_000), MIN_AGGREGATED),
            Rss::Measured {
                base: 8_000,
                peak: 9_000,
                growth: 1_000
            }
        );
    }

    #[test]
    fn a_growth_is_reported_only_when_it_can_mean_something() {
        assert_eq!(rss_growth(8_000, 11_000, MIN_AGGREGATED), Ok(3_000));
        assert!(
            rss_growth(0, 11_000, MIN_AGGREGATED).is_err(),
            "zero baseline"
        );
        assert!(
            rss_growth(8_000, 11_000, MIN_AGGREGATED - 1).is_err(),
            "too little input"
        );
        assert!(
            rss_growth(8_000, 7_000, MIN_AGGREGATED).is_err(),
            "peak below baseline"
        );
    }

    /// The measurement the check relies on, on this process: memory held after an earlier,
    /// larger peak shows up once the peak is reset, where the difference of two unreset
    /// peaks (the old measurement) reports next to nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_earlier_peak_no_longer_hides_the_memory_held() {
        const EARLIER: usize = 128 * 1024 * 1024;
        // Twice the bound: the check would fail it.
        const HELD: usize = 32 * 1024 * 1024;
        let touched = |bytes: usize| vec![1u8; bytes];
        drop(std::hint::black_box(touched(EARLIER)));
        let unreset_before = rss_kib("VmHWM:").unwrap();
        let baseline = reset_peak_rss().unwrap();
        let held = std::hint::black_box(touched(HELD));
        let peak = rss_kib("VmHWM:").unwrap();
        let growth = rss_growth(baseline, peak, MIN_AGGREGATED).unwrap();
        drop(held);
        assert!(
            growth * 1024 >= HELD as u64,
            "{growth} KiB after holding {} MiB",
            HELD as u64 / MIB
        );
        assert!(growth > RSS_BOUND_KIB, "the check would fail it");
        let unreset_growth = peak.saturating_sub(unreset_before);
        assert!(
            unreset_growth < RSS_BOUND_KIB,
            "without the reset the earlier peak hid it: {unreset_growth} KiB"
        );
    }
}
