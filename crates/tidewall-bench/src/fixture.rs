//! A fixed set of results, for testing what is rendered from them.

use crate::anchor::Anchors;
use crate::machine::Machine;
use crate::plan::{Results, Row};
use crate::runtimes::RuntimeKind;
use crate::stats::Summary;
use crate::workloads::{Measurement, Workload};

/// Three runtimes on one workload: a plain result, a flagged one, a failure.
pub(crate) fn fixture() -> Results {
    let one = |v: f64| Summary::of(vec![v]);
    let row = |runtime, result, flag: Option<&str>| Row {
        workload: Workload::SpawnLocal,
        n: 1000,
        runtime,
        threads: 2,
        os_threads: 3,
        result,
        flag: flag.map(str::to_owned),
        rounds: 2,
    };
    let measured = |median: f64| Measurement {
        unit: "ns/task".to_owned(),
        summary: Summary::of(vec![median * 0.9, median, median * 1.1]),
        extra: vec![("resident B/task".to_owned(), 330.0)],
        extra_rounds: vec![("resident B/task".to_owned(), vec![320.0, 330.0])],
    };
    Results {
        machine: Machine {
            cpu: "Test CPU".to_owned(),
            logical_cpus: 2,
            kernel: "6.0".to_owned(),
            memory_gib: 24.0,
            rustc: "rustc 1.x".to_owned(),
            virtualized: true,
            runtime_versions: "tokio 1.0, smol 2.0".to_owned(),
            governor: "not exposed".to_owned(),
        },
        quick: true,
        threads: 2,
        rounds: 2,
        anchors: Anchors {
            atomic_ns: one(4.7),
            clock_ns: one(21.0),
            futex_wake_ns: one(155.0),
            thread_ping_pong_us: one(40.0),
            tcp_round_trip_us: one(12.0),
        },
        rows: vec![
            row(RuntimeKind::TokioMt, Ok(measured(600.0)), None),
            row(
                RuntimeKind::Smol,
                Ok(measured(1.0)),
                Some("below the plausible floor"),
            ),
            row(
                RuntimeKind::AsyncStd,
                Err("fan-out: 3 of 10 received".to_owned()),
                None,
            ),
        ],
        notes: vec!["binary-size skipped: not built".to_owned()],
    }
}
