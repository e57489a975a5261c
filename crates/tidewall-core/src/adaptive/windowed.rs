//! The windowed gradient: a limit from each window's mean RTT against a measured no-load RTT.

use core::time::Duration;

use super::{LimitAlgorithm, Sample, check_bounds, check_ratio, published, rtt_nanos};
use crate::ConfigError;

/// Delay-based adaptive limit over windows of samples, against a no-load RTT it measures by
/// lowering the limit (Envoy's adaptive concurrency filter, its gradient controller).
///
/// It alternates between two modes:
///
/// * **Measuring the no-load RTT.** The limit is `min_limit` until `probe_samples` calls
///   admitted with at most `min_limit` in flight have ended without a drop (a drop says
///   nothing of the latency, so a dependency shedding every call keeps it measuring, at
///   `min_limit`); the mean of their RTTs is the
///   no-load RTT, and the limit goes back to what it was (`initial_limit` the first time). It
///   measures from the first sample on, and again once `probe_interval` has passed since the
///   last measurement (by the samples' [`at`](Sample::at)). A measurement costs throughput: for
///   about `probe_samples × RTT / min_limit`, plus the time the calls in flight take to end,
///   at most `min_limit` calls run at once.
/// * **Following the latency.** Every `window` samples, the window's mean RTT gives
///
///   ```text
///   gradient = clamp(no_load × (1 + buffer) / mean, 0.5, 2)
///   limit    = limit × gradient + ⌊√⌊limit × gradient⌋⌋
///   ```
///
///   clamped to `[min_limit, max_limit]`. Once the limit builds a queue at the dependency, the
///   mean RTT grows with it and the gradient pulls the limit back to about
///   `(1 + buffer) × capacity + √…`: a short queue that keeps the dependency busy. A window
///   with a drop in it halves the limit instead (a dependency that sheds load fast must not
///   read as a fast success), and a window whose calls all found the limit less than half used
///   (fewer calls in flight than half the estimate, not of the published limit) does not grow
///   it.
///
/// Unlike Envoy's, the window is counted in samples (not 100 ms of them), its RTT is the mean
/// (not a percentile, so no samples are stored), the measurement interval is not jittered, and
/// drops back the limit off.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{LimitAlgorithm, Sample, WindowedGradient};
///
/// let mut windowed = WindowedGradient::builder()
///     .initial_limit(10)
///     .min_limit(2)
///     .window(4)
///     .probe_samples(2)
///     .build()?;
/// let at = |ms, inflight| Sample {
///     rtt: Duration::from_millis(ms),
///     inflight,
///     dropped: false,
///     at: Duration::ZERO,
/// };
/// // It starts by measuring the no-load RTT, at min_limit.
/// assert_eq!(windowed.limit(), 2);
/// windowed.update(&at(10, 1));
/// assert_eq!(windowed.update(&at(10, 2)), 10);
/// assert_eq!(windowed.no_load_rtt(), Some(Duration::from_millis(10)));
/// // A window at 20 ms: the gradient is 10 × 1.25 / 20 = 0.625, and 10 × 0.625 + ⌊√6⌋ = 8.25.
/// for _ in 0..4 {
///     windowed.update(&at(20, 10));
/// }
/// assert_eq!(windowed.limit(), 8);
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WindowedGradient {
    estimate: f64,
    min_limit: u32,
    max_limit: u32,
    window: u32,
    buffer: f64,
    probe_samples: u32,
    probe_interval: Duration,
    /// The no-load RTT in nanoseconds, and when it was measured.
    no_load: Option<(f64, Duration)>,
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Measuring the no-load RTT at `min_limit`.
    Probing { samples: u32, sum: f64 },
    /// Following the latency, window by window.
    Following(Window),
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Window {
    samples: u32,
    drops: u32,
    /// The RTTs of the samples not dropped, in nanoseconds.
    sum: f64,
    busiest: u32,
}

/// Configures a [`WindowedGradient`] limit; the defaults are Envoy's where it has them.
#[derive(Debug, Clone)]
#[must_use]
pub struct WindowedGradientBuilder {
    initial_limit: u32,
    min_limit: u32,
    max_limit: u32,
    window: u32,
    buffer: f64,
    probe_samples: u32,
    probe_interval: Duration,
}

impl WindowedGradient {
    /// Starts a windowed gradient limit: initial 20, within 3..=1,000, windows of 50
    /// samples, a buffer of 0.25, the no-load RTT measured over 50 calls every 60 s.
    pub fn builder() -> WindowedGradientBuilder {
        WindowedGradientBuilder {
            initial_limit: 20,
            min_limit: 3,
            max_limit: 1000,
            window: 50,
            buffer: 0.25,
            probe_samples: 50,
            probe_interval: Duration::from_secs(60),
        }
    }

    /// The no-load RTT it measured last, if it has finished a measurement (RTTs count up to
    /// `u64::MAX` nanoseconds, 584 years, as the [module docs](super) say).
    pub fn no_load_rtt(&self) -> Option<Duration> {
        // A mean of RTTs counted up to u64::MAX nanoseconds each: finite, non-negative, in
        // range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.no_load
            .map(|(nanos, _)| Duration::from_nanos(nanos as u64))
    }

    /// Whether it is measuring the no-load RTT now (its limit is `min_limit`).
    pub fn is_probing(&self) -> bool {
        matches!(self.mode, Mode::Probing { .. })
    }

    fn probe(&mut self, sample: &Sample, samples: u32, sum: f64) {
        if sample.dropped || sample.inflight > self.min_limit {
            // Admitted above the probe's limit (before it began), or says nothing of the RTT.
            return;
        }
        let (samples, sum) = (samples + 1, sum + rtt_nanos(sample.rtt));
        self.mode = if samples < self.probe_samples {
            Mode::Probing { samples, sum }
        } else {
            self.no_load = Some((sum / f64::from(samples), sample.at));
            Mode::Following(Window::default())
        };
    }

    fn follow(&mut self, sample: &Sample, mut window: Window) {
        let Some((no_load, measured_at)) = self.no_load else {
            // Following begins only once a measurement ended; were it ever otherwise, measure.
            self.mode = Mode::Probing {
                samples: 0,
                sum: 0.0,
            };
            return;
        };
        if sample.at.saturating_sub(measured_at) >= self.probe_interval {
            self.mode = Mode::Probing {
                samples: 0,
                sum: 0.0,
            };
            return;
        }
        window.samples += 1;
        window.busiest = window.busiest.max(sample.inflight);
        if sample.dropped {
            window.drops += 1;
        } else {
            window.sum += rtt_nanos(sample.rtt);
        }
        if window.samples < self.window {
            self.mode = Mode::Following(window);
            return;
        }
        self.mode = Mode::Following(Window::default());
        let next = if window.drops > 0 {
            self.estimate * 0.5
        } else {
            let mean = window.sum / f64::from(window.samples);
            let gradient = (no_load * (1.0 + self.buffer) / mean).clamp(0.5, 2.0);
            let scaled = self.estimate * gradient;
            // Envoy's headroom: the square root of the new limit, in whole calls.
            let next = scaled + f64::from(published(scaled).isqrt());
            if f64::from(window.busiest) < self.estimate / 2.0 {
                next.min(self.estimate)
            } else {
                next
            }
        };
        self.estimate = next.clamp(f64::from(self.min_limit), f64::from(self.max_limit));
    }
}

impl WindowedGradientBuilder {
    limit_setters!("20", "3", "1,000");

    /// Samples per window: the limit changes once per window (default 50; not zero).
    pub fn window(mut self, samples: u32) -> Self {
        self.window = samples;
        self
    }

    /// How far above the no-load RTT the mean may be while the limit still grows, as a share
    /// of it (default 0.25; finite, not negative).
    pub fn buffer(mut self, buffer: f64) -> Self {
        self.buffer = buffer;
        self
    }

    /// Calls the no-load RTT is the mean of (default 50; not zero).
    pub fn probe_samples(mut self, samples: u32) -> Self {
        self.probe_samples = samples;
        self
    }

    /// The time between measurements of the no-load RTT, by the samples' `at` (default 60 s;
    /// not zero).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `min_limit`, `window`, `probe_samples` or
    /// `probe_interval`; [`ConfigError::Conflict`] unless
    /// `min_limit <= initial_limit <= max_limit`; [`ConfigError::OutOfRange`] (or `NotFinite`)
    /// for a negative or infinite `buffer`.
    pub fn build(self) -> Result<WindowedGradient, ConfigError> {
        check_ratio("buffer", self.buffer, 0.0, f64::MAX, false, ">= 0")?;
        for (field, value) in [
            ("window", self.window),
            ("probe_samples", self.probe_samples),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.probe_interval.is_zero() {
            return Err(ConfigError::Zero {
                field: "probe_interval",
            });
        }
        // Settings that contradict each other last: each value's own error comes first.
        check_bounds(self.min_limit, self.initial_limit, self.max_limit)?;
        Ok(WindowedGradient {
            estimate: f64::from(self.initial_limit),
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            window: self.window,
            buffer: self.buffer,
            probe_samples: self.probe_samples,
            probe_interval: self.probe_interval,
            no_load: None,
            mode: Mode::Probing {
                samples: 0,
                sum: 0.0,
            },
        })
    }
}

impl LimitAlgorithm for WindowedGradient {
    fn limit(&self) -> u32 {
        match self.mode {
            Mode::Probing { .. } => self.min_limit,
            Mode::Following(_) => published(self.estimate),
        }
    }

    fn update(&mut self, sample: &Sample) -> u32 {
        match self.mode {
            Mode::Probing { samples, sum } => self.probe(sample, samples, sum),
            Mode::Following(window) => self.follow(sample, window),
        }
        self.limit()
    }

    fn bounds(&self) -> (u32, u32) {
        (self.min_limit, self.max_limit)
    }
}
