//! The overload simulation: a dependency of capacity `C` concurrent requests and service time
//! `L` (queueing beyond `C`), offered load stepping 0.5x → 3x capacity → 0.5x, and a client
//! that admits each request by a limit strategy. Deterministic: virtual time in nanoseconds,
//! Poisson arrivals and service jitter from a seeded generator, events in a heap. Nothing
//! sleeps, so a minute of traffic takes milliseconds.
//!
//! The model:
//! * the client admits a request while fewer than its limit are in flight, and sheds it
//!   otherwise (refused at once, never sent);
//! * the dependency serves `C` at a time, FIFO, each in `L` ± 10 %; a request that waits
//!   beyond `C` queues there, so latency grows with load;
//! * the client gives up on a request after `timeout` (a failure, a dropped sample); the
//!   dependency does not know and serves it anyway, as real servers do: work wasted;
//! * each strategy learns from every request that ended: its time since admission, the
//!   requests in flight when it was admitted, whether it timed out;
//! * with a traffic mix of priorities, a [`Prioritized`] strategy admits each priority while
//!   fewer than its share of the limit are in flight, as the adaptive limiter does.

// A simulation of rates and nanosecond times: every cast below converts a value that is in
// range by construction (a rate to a gap, a count to a share), never user input.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use tidewall::adaptive::Priority;
use tidewall_core::adaptive::{LimitAlgorithm, Sample};
use tidewall_core::rng::SplitMix64;
use tower_resilience::adaptive::ConcurrencyAlgorithm;

/// What the dependency and the traffic are.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Requests the dependency serves at once.
    pub capacity: u32,
    /// Each request's service time (± 10 %).
    pub service: Duration,
    /// The client gives up after this.
    pub timeout: Duration,
    /// Offered load as a multiple of capacity (`capacity / service` requests a second), and
    /// for how long.
    pub phases: Vec<(f64, Duration)>,
    /// Seeds arrivals and service times.
    pub seed: u64,
    /// The width of a measurement window.
    pub window: Duration,
    /// The share of the traffic of each priority, in [`Priority::ALL`]'s order (all default
    /// unless [`with_mix`](Self::with_mix) says otherwise).
    pub mix: [f64; 3],
}

impl Scenario {
    /// The issue's scenario: 0.5x → 3x → 0.5x capacity, `each` long.
    pub fn steps(each: Duration, seed: u64) -> Self {
        Self {
            capacity: 32,
            service: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            phases: vec![(0.5, each), (3.0, each), (0.5, each)],
            seed,
            window: Duration::from_millis(100),
            mix: [0.0, 1.0, 0.0],
        }
    }

    /// The same traffic, its requests of each priority in these shares (critical, default,
    /// sheddable; they sum to 1).
    #[must_use]
    pub fn with_mix(mut self, mix: [f64; 3]) -> Self {
        self.mix = mix;
        self
    }

    /// The same traffic against another dependency: `capacity` at once, `service` each, and
    /// a client that gives up after `timeout` (the loopback run's numbers are 8, 80 ms, 2 s).
    #[must_use]
    pub fn with_dependency(mut self, capacity: u32, service: Duration, timeout: Duration) -> Self {
        self.capacity = capacity;
        self.service = service;
        self.timeout = timeout;
        self
    }

    /// Requests a second the dependency completes at full use.
    pub fn throughput(&self) -> f64 {
        f64::from(self.capacity) / self.service.as_secs_f64()
    }
}

/// A client-side limit, as the simulation drives it.
pub trait Strategy {
    /// Requests admitted at once now.
    fn limit(&self) -> u32;
    /// Learns from a request that ended.
    fn ended(&mut self, sample: &Sample);
    /// Whether a request of `priority` is admitted with `in_flight` requests in flight.
    fn admits(&self, in_flight: u32, priority: Priority) -> bool {
        let _ = priority;
        in_flight < self.limit()
    }
}

/// A strategy whose priorities each fill at most a share of its limit (critical, default,
/// sheddable): a request is admitted while fewer than `limit × share` are in flight.
pub struct Prioritized<S> {
    /// The strategy that sets the limit.
    pub inner: S,
    /// Each priority's share of it, in [`Priority::ALL`]'s order.
    pub shares: [f64; 3],
}

impl<S: Strategy> Strategy for Prioritized<S> {
    fn limit(&self) -> u32 {
        self.inner.limit()
    }
    fn ended(&mut self, sample: &Sample) {
        self.inner.ended(sample);
    }
    fn admits(&self, in_flight: u32, priority: Priority) -> bool {
        let share = self.shares[Priority::ALL
            .iter()
            .position(|p| *p == priority)
            .unwrap_or(1)];
        f64::from(in_flight) < (f64::from(self.limit()) * share).ceil()
    }
}

/// No limit at all.
#[derive(Debug)]
pub struct Unlimited;

impl Strategy for Unlimited {
    fn limit(&self) -> u32 {
        u32::MAX
    }
    fn ended(&mut self, _: &Sample) {}
}

/// A fixed limit.
#[derive(Debug)]
pub struct Fixed(pub u32);

impl Strategy for Fixed {
    fn limit(&self) -> u32 {
        self.0
    }
    fn ended(&mut self, _: &Sample) {}
}

/// One of Tidewall's algorithms.
pub struct Tidewall(pub Box<dyn LimitAlgorithm>);

impl Strategy for Tidewall {
    fn limit(&self) -> u32 {
        self.0.limit()
    }
    fn ended(&mut self, sample: &Sample) {
        self.0.update(sample);
    }
}

/// One of tower-resilience's algorithms, driven through its public trait exactly as its
/// service does: a success with its latency, a failure (here: a timeout) without one.
pub struct Tower<A>(pub A);

impl<A: ConcurrencyAlgorithm> Strategy for Tower<A> {
    fn limit(&self) -> u32 {
        u32::try_from(self.0.limit()).unwrap_or(u32::MAX)
    }
    fn ended(&mut self, sample: &Sample) {
        if sample.dropped {
            self.0.record_failure();
        } else {
            self.0.record_success(sample.rtt);
        }
    }
}

/// What one measurement window saw.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests the client shed.
    pub shed: u64,
    /// Requests answered in time (in this window, whenever they arrived).
    pub succeeded: u64,
    /// Requests that arrived in this window and were answered in time (whenever).
    pub served: u64,
    /// Requests the client gave up on.
    pub timed_out: u64,
    /// Latency of each success, in nanoseconds.
    pub latencies: Vec<u64>,
    /// The limit at the window's end.
    pub limit: u32,
    /// Per priority (in [`Priority::ALL`]'s order): arrivals, sheds, and answers in time to
    /// the requests that arrived in this window.
    pub by_priority: [PriorityCounts; 3],
}

/// One priority's requests in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriorityCounts {
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests the client shed.
    pub shed: u64,
    /// Requests that arrived in this window and were answered in time (whenever).
    pub served: u64,
}

/// A whole run, window by window.
#[derive(Debug, Clone)]
pub struct Run {
    /// The scenario it ran.
    pub scenario: Scenario,
    /// Every window, in order.
    pub windows: Vec<Window>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The next request arrives.
    Arrival,
    /// The dependency finishes request `id`.
    Served(usize),
    /// The client gives up on request `id`.
    GiveUp(usize),
}

struct Request {
    admitted_at: u64,
    /// The window it arrived in.
    window: usize,
    /// Its priority's place in [`Priority::ALL`].
    priority: usize,
    inflight: u32,
    /// Ended at the client (answered or given up on).
    ended: bool,
}

/// Runs `scenario` with `strategy`.
pub fn simulate(scenario: &Scenario, strategy: &mut dyn Strategy) -> Run {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let window = nanos(scenario.window);
    let end: u64 = scenario.phases.iter().map(|(_, d)| nanos(*d)).sum();
    let mut windows = vec![Window::default(); usize::try_from(end.div_ceil(window)).unwrap_or(0)];
    let mut rng = SplitMix64::new(scenario.seed);
    // Priorities come from their own generator, so a mix leaves the arrivals as they were.
    let mut priorities = SplitMix64::new(scenario.seed ^ 0x5052_494F);
    let mut events = BinaryHeap::new();
    let mut seq = 0_u64;
    let mut push = |events: &mut BinaryHeap<_>, at: u64, event: Event| {
        seq += 1;
        events.push(Reverse((at, seq, event)));
    };
    let mut requests: Vec<Request> = Vec::new();
    let mut queue = VecDeque::new();
    let (mut busy, mut in_flight) = (0_u32, 0_u32);
    let service = nanos(scenario.service);
    let timeout = nanos(scenario.timeout);
    // Uniform in [0, 1).
    let unit = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
    let rate_at = |t: u64| {
        let mut from = 0;
        for (load, length) in &scenario.phases {
            from += nanos(*length);
            if t < from {
                return load * scenario.throughput();
            }
        }
        0.0
    };
    let next_arrival = |rng: &mut SplitMix64, t: u64| {
        let gap = -(1.0 - unit(rng)).ln() / rate_at(t) * 1e9;
        t + gap as u64
    };
    let serve_time = |rng: &mut SplitMix64| {
        let jitter = 0.9 + 0.2 * unit(rng);
        (service as f64 * jitter) as u64
    };
    let first = next_arrival(&mut rng, 0);
    push(&mut events, first, Event::Arrival);
    while let Some(Reverse((now, _, event))) = events.pop() {
        // After the run, arrivals stop and nothing is counted but the answers to requests
        // that arrived in it (in the window they arrived in), so its last windows are judged
        // as fairly as the others.
        let late = now >= end;
        let at = usize::try_from(now / window)
            .unwrap_or(0)
            .min(windows.len().saturating_sub(1));
        match event {
            Event::Arrival if late => {}
            Event::Arrival => {
                windows[at].arrived += 1;
                let next = next_arrival(&mut rng, now);
                push(&mut events, next, Event::Arrival);
                let priority = if scenario.mix[1] >= 1.0 {
                    1
                } else {
                    let draw = unit(&mut priorities);
                    let critical = scenario.mix[0];
                    usize::from(draw >= critical) + usize::from(draw >= critical + scenario.mix[1])
                };
                windows[at].by_priority[priority].arrived += 1;
                if !strategy.admits(in_flight, Priority::ALL[priority]) {
                    windows[at].shed += 1;
                    windows[at].by_priority[priority].shed += 1;
                    continue;
                }
                in_flight += 1;
                let id = requests.len();
                requests.push(Request {
                    admitted_at: now,
                    window: at,
                    priority,
                    inflight: in_flight,
                    ended: false,
                });
                push(&mut events, now + timeout, Event::GiveUp(id));
                if busy < scenario.capacity {
                    busy += 1;
                    let done = now + serve_time(&mut rng);
                    push(&mut events, done, Event::Served(id));
                } else {
                    queue.push_back(id);
                }
            }
            Event::Served(id) => {
                if let Some(next) = queue.pop_front() {
                    let done = now + serve_time(&mut rng);
                    push(&mut events, done, Event::Served(next));
                } else {
                    busy -= 1;
                }
                let request = &mut requests[id];
                if request.ended {
                    continue; // given up on: the work was wasted
                }
                request.ended = true;
                in_flight -= 1;
                windows[request.window].served += 1;
                windows[request.window].by_priority[request.priority].served += 1;
                if late {
                    continue;
                }
                let rtt = now - request.admitted_at;
                windows[at].succeeded += 1;
                windows[at].latencies.push(rtt);
                strategy.ended(&Sample {
                    rtt: Duration::from_nanos(rtt),
                    inflight: request.inflight,
                    dropped: false,
                    at: Duration::from_nanos(now),
                });
            }
            Event::GiveUp(id) => {
                let request = &mut requests[id];
                if request.ended {
                    continue;
                }
                request.ended = true;
                in_flight -= 1;
                if late {
                    continue;
                }
                windows[at].timed_out += 1;
                strategy.ended(&Sample {
                    rtt: Duration::from_nanos(timeout),
                    inflight: request.inflight,
                    dropped: true,
                    at: Duration::from_nanos(now),
                });
            }
        }
        if !late {
            windows[at].limit = strategy.limit().min(u32::MAX - 1);
        }
    }
    Run {
        scenario: scenario.clone(),
        windows,
    }
}

/// One phase of a run, summed up.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSummary {
    /// Offered load, as a multiple of capacity.
    pub load: f64,
    /// Answers in time per second, as a share of the dependency's throughput.
    pub goodput: f64,
    /// The target goodput's share: the offered load, or all of capacity under overload.
    pub target: f64,
    /// Median and 99th percentile latency of the answers, in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Share of arrivals shed.
    pub shed: f64,
    /// Share of admitted requests given up on.
    pub timed_out: f64,
    /// From the phase's start until every later half second meets its target (answers in
    /// time at least 95 % of what arrived in it, or of the dependency's throughput if less;
    /// p99 at most twice the service time): `None` if never.
    pub settle: Option<Duration>,
}

/// The `q` quantile of `values` (sorted here).
fn quantile(values: &mut [u64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at] as f64
}

/// One priority's requests in one phase, summed up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrioritySummary {
    /// The priority.
    pub priority: Priority,
    /// Its offered load, as a multiple of capacity.
    pub offered: f64,
    /// Share of its arrivals shed.
    pub shed: f64,
    /// Share of its arrivals answered in time.
    pub served: f64,
}

impl Run {
    /// Per phase, each priority's requests summed up (in [`Priority::ALL`]'s order).
    pub fn priorities(&self) -> Vec<[PrioritySummary; 3]> {
        let s = &self.scenario;
        let mut start = 0_usize;
        let mut out = Vec::new();
        for (_, length) in &s.phases {
            let count = (length.as_secs_f64() / s.window.as_secs_f64()).round() as usize;
            let phase = &self.windows[start..(start + count).min(self.windows.len())];
            out.push(std::array::from_fn(|i| {
                let sum = |f: fn(&PriorityCounts) -> u64| {
                    phase.iter().map(|w| f(&w.by_priority[i])).sum::<u64>() as f64
                };
                let arrived = sum(|c| c.arrived);
                PrioritySummary {
                    priority: Priority::ALL[i],
                    offered: arrived / length.as_secs_f64() / s.throughput(),
                    shed: sum(|c| c.shed) / arrived.max(1.0),
                    served: sum(|c| c.served) / arrived.max(1.0),
                }
            }));
            start += count;
        }
        out
    }

    /// Each phase summed up.
    pub fn phases(&self) -> Vec<PhaseSummary> {
        let s = &self.scenario;
        let per_window = s.window.as_secs_f64();
        let mut start = 0_usize;
        let mut out = Vec::new();
        for (load, length) in &s.phases {
            let count = (length.as_secs_f64() / per_window).round() as usize;
            let phase = &self.windows[start..(start + count).min(self.windows.len())];
            let target = load.min(1.0);
            let sum = |f: fn(&Window) -> u64| phase.iter().map(f).sum::<u64>() as f64;
            let mut latencies: Vec<u64> = phase.iter().flat_map(|w| w.latencies.clone()).collect();
            let admitted = sum(|w| w.arrived) - sum(|w| w.shed);
            let settled = |from: usize| {
                // Every half second (five windows) from `from` on answers in time at least
                // 95 % of what arrived in it (or of what the dependency can do, if less), with
                // a p99 of at most twice the service time.
                phase[from..].windows(5).all(|five| {
                    let answered = five.iter().map(|w| w.served).sum::<u64>() as f64;
                    let arrived = five.iter().map(|w| w.arrived).sum::<u64>() as f64;
                    let possible = arrived.min(s.throughput() * 5.0 * per_window);
                    let mut l: Vec<u64> = five.iter().flat_map(|w| w.latencies.clone()).collect();
                    answered >= 0.95 * possible
                        && quantile(&mut l, 0.99) <= 2.0 * s.service.as_nanos() as f64
                })
            };
            let settle = (0..phase.len().saturating_sub(5))
                .find(|&from| settled(from))
                .map(|from| s.window * u32::try_from(from).unwrap_or(u32::MAX));
            out.push(PhaseSummary {
                load: *load,
                goodput: sum(|w| w.succeeded) / length.as_secs_f64() / s.throughput(),
                target,
                p50_ms: quantile(&mut latencies, 0.5) / 1e6,
                p99_ms: quantile(&mut latencies, 0.99) / 1e6,
                shed: sum(|w| w.shed) / sum(|w| w.arrived).max(1.0),
                timed_out: sum(|w| w.timed_out) / admitted.max(1.0),
                settle,
            });
            start += count;
        }
        out
    }
}

/// Every strategy the report compares, by name: no limit, fixed limits set right and wrong,
/// Tidewall's four algorithms (Netflix's defaults for three, bounds 1..=1,000; Envoy's for the
/// windowed gradient) and tower-resilience's two: at its defaults (a limit of at most 100),
/// with Tidewall's bounds (1..=1,000), and its AIMD also with its latency threshold at the
/// goal's p99 bound (twice the service time).
///
/// # Panics
///
/// Never: every builder gets settings it accepts.
pub fn strategies(scenario: &Scenario) -> Vec<(&'static str, Box<dyn Strategy>)> {
    use tidewall_core::adaptive::{Aimd, Gradient2, Vegas, WindowedGradient};
    let c = scenario.capacity;
    vec![
        ("no limit", Box::new(Unlimited)),
        ("fixed, set right (C)", Box::new(Fixed(c))),
        ("fixed, too high (4C)", Box::new(Fixed(4 * c))),
        ("fixed, too low (C/4)", Box::new(Fixed(c / 4))),
        (
            "Tidewall AIMD",
            Box::new(Tidewall(Box::new(
                Aimd::builder()
                    .min_limit(1)
                    .max_limit(1000)
                    .build()
                    .expect("valid"),
            ))),
        ),
        (
            "Tidewall Vegas",
            Box::new(Tidewall(Box::new(Vegas::builder().build().expect("valid")))),
        ),
        (
            "Tidewall Gradient2",
            Box::new(Tidewall(Box::new(
                Gradient2::builder()
                    .min_limit(1)
                    .max_limit(1000)
                    .build()
                    .expect("valid"),
            ))),
        ),
        (
            "Tidewall windowed gradient",
            Box::new(Tidewall(Box::new(
                WindowedGradient::builder().build().expect("valid"),
            ))),
        ),
        (
            "tower-resilience AIMD",
            Box::new(Tower(
                tower_resilience::adaptive::Aimd::builder()
                    .build()
                    .expect("valid"),
            )),
        ),
        (
            "tower-resilience Vegas",
            Box::new(Tower(
                tower_resilience::adaptive::Vegas::builder()
                    .build()
                    .expect("valid"),
            )),
        ),
        (
            "tower-resilience AIMD, max 1,000",
            Box::new(Tower(
                tower_resilience::adaptive::Aimd::builder()
                    .max_limit(1000)
                    .build()
                    .expect("valid"),
            )),
        ),
        (
            "tower-resilience AIMD, max 1,000, threshold 2L",
            Box::new(Tower(
                tower_resilience::adaptive::Aimd::builder()
                    .max_limit(1000)
                    .latency_threshold(scenario.service * 2)
                    .build()
                    .expect("valid"),
            )),
        ),
        (
            "tower-resilience Vegas, max 1,000",
            Box::new(Tower(
                tower_resilience::adaptive::Vegas::builder()
                    .max_limit(1000)
                    .build()
                    .expect("valid"),
            )),
        ),
    ]
}

/// A line chart of one value per window for several runs, as an SVG document: time on the x
/// axis (seconds), the value on the y axis, one polyline per run with its name in the legend.
pub fn svg_chart(
    title: &str,
    unit: &str,
    runs: &[(&str, &Run)],
    value: fn(&Scenario, &Window) -> f64,
) -> String {
    use std::fmt::Write as _;
    const COLORS: [&str; 9] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#17becf",
    ];
    let (width, height, left, top, plot_w, plot_h) = (900.0, 420.0, 60.0, 40.0, 600.0, 320.0);
    let series: Vec<Vec<f64>> = runs
        .iter()
        .map(|(_, run)| {
            run.windows
                .iter()
                .map(|w| value(&run.scenario, w))
                .collect()
        })
        .collect();
    let longest = series.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let top_value = series.iter().flatten().copied().fold(1.0_f64, f64::max) * 1.05;
    let window = runs
        .first()
        .map_or(0.1, |(_, r)| r.scenario.window.as_secs_f64());
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="24" font-size="15">{title}</text>"##
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h
    );
    for tick in 0..=4 {
        let v = top_value * f64::from(tick) / 4.0;
        let y = top + plot_h - plot_h * f64::from(tick) / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{v:.0}</text><line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            left - 6.0,
            y + 4.0,
            left + plot_w
        );
    }
    let seconds = longest as f64 * window;
    for tick in 0..=6 {
        let t = seconds * f64::from(tick) / 6.0;
        let x = left + plot_w * f64::from(tick) / 6.0;
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{}" text-anchor="middle">{t:.0} s</text>"##,
            top + plot_h + 16.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="14" y="{}" transform="rotate(-90 14 {})">{unit}</text>"##,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (i, ((name, _), values)) in runs.iter().zip(&series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(n, v)| {
                let x = left + plot_w * n as f64 / (longest - 1) as f64;
                let y = top + plot_h - plot_h * (v / top_value).min(1.0);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"##,
            points.join(" ")
        );
        let ly = top + 16.0 * i as f64;
        let _ = write!(
            svg,
            r##"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"##,
            left + plot_w + 20.0,
            left + plot_w + 40.0,
            left + plot_w + 46.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Per window: answers in time, as a share of the dependency's throughput (percent).
pub fn goodput_percent(scenario: &Scenario, window: &Window) -> f64 {
    window.succeeded as f64 / scenario.window.as_secs_f64() / scenario.throughput() * 100.0
}

/// Per window: the 99th percentile latency of the answers, in milliseconds.
pub fn p99_ms(_: &Scenario, window: &Window) -> f64 {
    let mut latencies = window.latencies.clone();
    quantile(&mut latencies, 0.99) / 1e6
}

/// Per window: the limit at its end (no limit shows as zero).
pub fn limit(_: &Scenario, window: &Window) -> f64 {
    if window.limit >= u32::MAX - 1 {
        0.0
    } else {
        f64::from(window.limit)
    }
}
