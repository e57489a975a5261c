//! A metrics recorder for tests: every counter, by name and labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

#[derive(Default)]
struct Tally(AtomicU64);

impl CounterFn for Tally {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

/// A counter's name, its labels (`key=value`) and its tally.
type Registered = (String, Vec<String>, Arc<Tally>);

/// Every counter registered so far.
#[derive(Default, Clone)]
pub struct Counters(Arc<Mutex<Vec<Registered>>>);

impl Counters {
    /// The process's recorder, installed on first use (a process has one global recorder, so
    /// a binary's tests share it: filter by a policy name unique to the test).
    pub fn installed() -> &'static Self {
        static COUNTERS: OnceLock<Counters> = OnceLock::new();
        COUNTERS.get_or_init(|| {
            let counters = Self::default();
            metrics::set_global_recorder(counters.clone()).unwrap();
            counters
        })
    }

    /// The sum of the counters named `name` carrying every label in `labels` (`key=value`).
    pub fn total(&self, name: &str, labels: &[&str]) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(key, have, _)| {
                key == name && labels.iter().all(|l| have.iter().any(|h| h == l))
            })
            .map(|(_, _, tally)| tally.0.load(Ordering::SeqCst))
            .sum()
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let tally = Arc::new(Tally::default());
        let labels = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        self.0
            .lock()
            .unwrap()
            .push((key.name().to_owned(), labels, Arc::clone(&tally)));
        Counter::from_arc(tally)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
