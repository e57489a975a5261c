//! Reading the counters a [`metrics_util::debugging::DebuggingRecorder`] holds, for the tests
//! that install one as the global recorder (one test a binary).

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Installs a fresh [`DebuggingRecorder`] as the global recorder (once a binary): what
/// reads its counters.
pub(crate) fn install_recorder() -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    snapshotter
}

/// The metric every refusal counts in.
pub(crate) const REJECTIONS: &str = "tidewall_rejections_total";

/// A series' labels, sorted.
pub(crate) type Labels = Vec<(String, String)>;

/// One refusal series: (policy, name, reason, count).
pub(crate) type Row = (String, String, String, u64);

/// A [`Row`] from borrowed parts.
pub(crate) fn row(policy: &str, name: &str, reason: &str, n: u64) -> Row {
    (policy.to_owned(), name.to_owned(), reason.to_owned(), n)
}

/// One snapshot's counters: (metric, sorted labels, value). Taking it resets them.
pub(crate) struct Counters(pub(crate) Vec<(String, Labels, u64)>);

impl Counters {
    pub(crate) fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter_map(|(key, _, _, value)| {
                    let DebugValue::Counter(n) = value else {
                        return None;
                    };
                    let key = key.key();
                    let mut labels: Vec<_> = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    Some((key.name().to_owned(), labels, n))
                })
                .collect(),
        )
    }

    /// The value of label `key`, or `""` without one.
    pub(crate) fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
        labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every `tidewall_rejections_total` series, whatever its policy and count (zero for
    /// one registered but never counted): (policy, name, reason, count), sorted.
    pub(crate) fn rejections(&self) -> Vec<Row> {
        let mut rows: Vec<_> = self
            .0
            .iter()
            .filter(|(metric, _, _)| metric == REJECTIONS)
            .map(|(_, labels, n)| {
                (
                    Self::label(labels, "policy").to_owned(),
                    Self::label(labels, "name").to_owned(),
                    Self::label(labels, "reason").to_owned(),
                    *n,
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// Every non-zero refusal series of a limit (`policy` not `breaker`, `pipeline`):
    /// (policy, name, reason, count), sorted.
    pub(crate) fn refusals(&self) -> Vec<Row> {
        let mut rows = self.rejections();
        rows.retain(|(policy, _, _, n)| *n > 0 && policy != "breaker");
        rows
    }

    /// Whether a `tidewall_rejections_total` series with these labels exists (registered),
    /// whatever its count.
    pub(crate) fn registered(&self, policy: &str, name: &str, reason: &str) -> bool {
        self.0.iter().any(|(metric, labels, _)| {
            metric == REJECTIONS
                && Self::label(labels, "policy") == policy
                && Self::label(labels, "name") == name
                && Self::label(labels, "reason") == reason
        })
    }

    /// The sum of `metric` over every series whose labels include all of `wanted`.
    pub(crate) fn sum(&self, metric: &str, wanted: &[(&str, &str)]) -> u64 {
        self.0
            .iter()
            .filter(|(name, labels, _)| {
                name == metric
                    && wanted
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Calls of the breaker `name` that ended in `outcome`.
    pub(crate) fn calls(&self, name: &str, outcome: &str) -> u64 {
        self.sum(
            "tidewall_calls_total",
            &[("policy", "breaker"), ("name", name), ("outcome", outcome)],
        )
    }

    /// Refusals of the breaker `name` while open.
    pub(crate) fn circuit_open(&self, name: &str) -> u64 {
        self.sum(
            REJECTIONS,
            &[
                ("policy", "breaker"),
                ("name", name),
                ("reason", "circuit_open"),
            ],
        )
    }

    /// Transitions of the breaker `name` to the state `to`.
    pub(crate) fn transitions(&self, name: &str, to: &str) -> u64 {
        self.sum(
            "tidewall_breaker_transitions_total",
            &[("policy", "breaker"), ("name", name), ("to", to)],
        )
    }

    /// Every `name` label seen on a series with a non-zero count.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .flat_map(|(_, labels, _)| labels.iter())
            .filter(|(k, _)| k == "name")
            .map(|(_, v)| v.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
