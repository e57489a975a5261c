//! What a `metrics_util` debugging recorder holds, as plain data: one [`Series`] per metric
//! and label set, and lookups by name and labels.
//!
//! A snapshot drains the recorder: counters read since the previous one, histograms' samples
//! recorded since the previous one, gauges as last set.

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// A metric's name, its labels (by key) and its value.
pub type Series = (String, BTreeMap<String, String>, DebugValue);

/// Every series `snapshotter`'s recorder holds now; panics on a series carrying a label twice.
pub fn snapshot(snapshotter: &Snapshotter) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels = BTreeMap::new();
            for label in key.labels() {
                let twice = labels.insert(label.key().to_owned(), label.value().to_owned());
                assert!(twice.is_none(), "{key}: label {} twice", label.key());
            }
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

/// Runs `f` with a recorder of its own (what it builds registers there): its result, and the
/// recorder's snapshotter.
pub fn recorded<T>(f: impl FnOnce() -> T) -> (T, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (metrics::with_local_recorder(&recorder, f), snapshotter)
}

/// The gauges `record` sets (a `record_gauges`), on a recorder of its own.
pub fn gauges_during(record: impl FnOnce()) -> Vec<Series> {
    let ((), snapshotter) = recorded(record);
    let mut all = snapshot(&snapshotter);
    all.retain(|(_, _, value)| matches!(value, DebugValue::Gauge(_)));
    all
}

/// The series of `snapshot` named `name` that carry every one of `labels` (and maybe more).
pub fn select<'a>(
    snapshot: &'a [Series],
    name: &str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = &'a Series> + use<'a> {
    let name = name.to_owned();
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    snapshot.iter().filter(move |(have, have_labels, _)| {
        *have == name && labels.iter().all(|(k, v)| have_labels.get(k) == Some(v))
    })
}

/// The sum over [`select`]: counters' counts, histograms' sample counts, gauges' values (whole
/// counts: a gauge holding anything else panics).
pub fn series_total(snapshot: &[Series], name: &str, labels: &[(&str, &str)]) -> u64 {
    select(snapshot, name, labels)
        .map(|(_, _, value)| match value {
            DebugValue::Counter(n) => *n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            // A whole count prints without a fraction: anything else fails to parse.
            DebugValue::Gauge(v) => format!("{v}").parse().expect("a count"),
        })
        .sum()
}

/// The value of the first series [`select`] finds, `None` when there is none; panics when it
/// is not a gauge.
pub fn gauge(snapshot: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    select(snapshot, name, labels)
        .next()
        .map(|(_, _, value)| match value {
            DebugValue::Gauge(v) => v.into_inner(),
            other => panic!("{name} {labels:?}: not a gauge: {other:?}"),
        })
}

/// Every sample of the histograms [`select`] finds (none when there is none); panics on a
/// series that is not a histogram.
pub fn samples(snapshot: &[Series], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    select(snapshot, name, labels)
        .flat_map(|(_, _, value)| match value {
            DebugValue::Histogram(values) => {
                values.iter().map(|v| v.into_inner()).collect::<Vec<_>>()
            }
            other => panic!("{name} {labels:?}: not a histogram: {other:?}"),
        })
        .collect()
}
