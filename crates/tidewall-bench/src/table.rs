//! The terminal table: one line per workload and size, one column per runtime.

use std::fmt::Write as _;

use crate::plan::{Results, Row};
use crate::runtimes::RuntimeKind;
use crate::workloads::Workload;

pub(crate) fn render(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(
        out,
        "machine: {} ({} logical CPUs, {:.1} GiB), Linux {}, {}; CPU governor: {}",
        m.cpu, m.logical_cpus, m.memory_gib, m.kernel, m.rustc, m.governor
    );
    let _ = writeln!(
        out,
        "threads: {} per multi-threaded runtime (tokio-ct, monoio, embassy: 1); {} mode; {} round(s) of fresh processes, runtimes in rotated order; each cell: median over every round's samples (± half the min–max range, % of the median)",
        results.threads,
        if results.quick { "quick" } else { "full" },
        results.rounds
    );
    if !m.runtime_versions.is_empty() {
        let _ = writeln!(out, "runtimes built with: {}", m.runtime_versions);
    }
    let a = &results.anchors;
    let _ = writeln!(
        out,
        "W0 anchors: atomic {:.1} ns · clock {:.1} ns · futex wake {:.0} ns · thread ping-pong {:.1} µs · loopback TCP round trip {:.1} µs",
        a.atomic_ns.median,
        a.clock_ns.median,
        a.futex_wake_ns.median,
        a.thread_ping_pong_us.median,
        a.tcp_round_trip_us.median
    );
    if m.virtualized {
        let _ = writeln!(out, "note: {}", crate::machine::VM_CAVEAT);
    }
    let runtimes: Vec<RuntimeKind> = RuntimeKind::ALL
        .into_iter()
        .filter(|k| results.rows.iter().any(|row| row.runtime == *k))
        .collect();
    let measured: Vec<String> = runtimes
        .iter()
        .filter_map(|k| {
            let row = results
                .rows
                .iter()
                .find(|r| r.runtime == *k && r.os_threads > 0)?;
            Some(format!("{} {}", k.name(), row.os_threads))
        })
        .collect();
    let _ = writeln!(
        out,
        "OS threads measured in each child before its workload (main thread and the runtime's reactor/timer threads started by then; not those a workload starts: monoio's io_uring thread, embassy-time's timer thread, the TCP load generator's): {}\n",
        measured.join(", ")
    );
    let _ = write!(out, "{:<24} {:<16}", "workload (n)", "unit");
    for runtime in &runtimes {
        let _ = write!(out, " {:>26}", runtime.label());
    }
    out.push('\n');
    let mut keys: Vec<(Workload, u64)> = Vec::new();
    for row in &results.rows {
        if !keys.contains(&(row.workload, row.n)) {
            keys.push((row.workload, row.n));
        }
    }
    for (workload, n) in keys {
        let cells: Vec<Option<&Row>> = runtimes
            .iter()
            .map(|k| {
                results
                    .rows
                    .iter()
                    .find(|r| r.workload == workload && r.n == n && r.runtime == *k)
            })
            .collect();
        let unit = cells
            .iter()
            .flatten()
            .find_map(|row| row.result.as_ref().ok().map(|m| m.unit.clone()))
            .unwrap_or_default();
        let _ = write!(
            out,
            "{:<24} {:<16}",
            format!("{} ({n})", workload.name()),
            unit
        );
        for cell in &cells {
            let _ = write!(
                out,
                " {:>26}",
                cell.map_or_else(|| "-".to_owned(), cell_text)
            );
        }
        out.push('\n');
        // The same figure as a multiple of the machine's anchor.
        if let Some((anchor, value)) = crate::plan::anchor_for(workload, &results.anchors) {
            let _ = write!(out, "{:<24} {:<16}", "", format!("= × {anchor}"));
            for cell in &cells {
                let multiple = cell
                    .and_then(|row| row.result.as_ref().ok())
                    .map_or_else(|| "-".to_owned(), |m| figure(m.summary.median / value));
                let _ = write!(out, " {multiple:>26}");
            }
            out.push('\n');
        }
        // Extra figures (e.g. resident bytes), one line each.
        let mut extras: Vec<String> = Vec::new();
        for measurement in cells
            .iter()
            .flatten()
            .filter_map(|row| row.result.as_ref().ok())
        {
            for (name, _) in &measurement.extra {
                if !extras.contains(name) {
                    extras.push(name.clone());
                }
            }
        }
        for name in &extras {
            let _ = write!(out, "{:<24} {:<16}", "", name);
            for cell in &cells {
                let value = cell
                    .and_then(|row| row.result.as_ref().ok())
                    .and_then(|m| m.extra.iter().find(|(n, _)| n == name))
                    .map_or_else(|| "-".to_owned(), |(_, v)| figure(*v));
                let _ = write!(out, " {value:>26}");
            }
            out.push('\n');
        }
    }
    for note in &results.notes {
        let _ = writeln!(out, "note: {note}");
    }
    for row in results
        .rows
        .iter()
        .filter(|r| r.flag.is_some() || r.result.is_err())
    {
        let problem = match (&row.result, &row.flag) {
            (Err(error), _) => format!("FAILED: {error}"),
            (Ok(_), Some(flag)) => format!("flagged: {flag}"),
            (Ok(_), None) => continue,
        };
        let _ = writeln!(
            out,
            "! {} ({}) on {}: {problem}",
            row.workload.name(),
            row.n,
            row.runtime.name()
        );
    }
    out
}

fn cell_text(row: &Row) -> String {
    match &row.result {
        Ok(m) => {
            let s = &m.summary;
            let spread = if s.samples.len() > 1 {
                format!(" (±{:.0}%)", 50.0 * s.spread())
            } else {
                String::new()
            };
            let mark = if row.flag.is_some() { "!" } else { "" };
            format!("{}{}{mark}", figure(s.median), spread)
        }
        Err(_) => "FAILED".to_owned(),
    }
}

fn figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;

    #[test]
    fn the_table_shows_every_runtime_failures_and_flags() {
        let text = render(&fixture());
        assert!(text.contains("machine: Test CPU (2 logical CPUs, 24.0 GiB)"));
        assert!(text.contains("CPU governor: not exposed"), "{text}");
        assert!(text.contains("2 round(s) of fresh processes"), "{text}");
        assert!(text.contains("atomic 4.7 ns"));
        assert!(text.contains("async-std (discontinued)"));
        let header = text
            .lines()
            .find(|l| l.starts_with("workload (n)"))
            .unwrap();
        assert!(
            !header.contains("tokio-ct"),
            "runtimes not run get no column: {header}"
        );
        // Samples at 0.9x, 1x and 1.1x the median: a spread of 20 %, shown as ±10 %.
        assert!(text.contains("600 (±10%)"), "{text}");
        assert!(text.contains("OS threads measured in each child before its workload (main thread and the runtime's reactor/timer threads started by then; not those a workload starts: monoio's io_uring thread, embassy-time's timer thread, the TCP load generator's): tokio-mt 3, smol 3"), "{text}");
        assert!(text.contains("note: a VM"));
        assert!(text.contains("runtimes built with: tokio 1.0, smol 2.0"));
        // 600 ns against a 155 ns futex wake.
        assert!(text.contains("= × futex wakes"), "{text}");
        assert!(text.contains("3.87"), "{text}");
        assert!(
            text.contains("1.00 (±10%)!"),
            "a flagged cell is marked: {text}"
        );
        assert!(text.contains("FAILED"));
        assert!(
            text.contains("! spawn-local (1000) on async-std: FAILED: fan-out: 3 of 10 received")
        );
        assert!(text.contains("! spawn-local (1000) on smol: flagged: below the plausible floor"));
        assert!(text.contains("resident B/task"));
        assert!(text.contains("note: binary-size skipped: not built"));
    }

    #[test]
    fn a_child_result_survives_the_process_boundary() {
        let sent = crate::child::ChildResult {
            runtime: RuntimeKind::Smol,
            workload: Workload::PingPong,
            threads: 2,
            n: 10,
            os_threads: 3,
            result: Err("ping-pong: ended at None".to_owned()),
        };
        let json = serde_json::to_string(&sent).unwrap();
        let back: crate::child::ChildResult = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.runtime, back.workload, back.n),
            (RuntimeKind::Smol, Workload::PingPong, 10)
        );
        assert_eq!(back.result.unwrap_err(), "ping-pong: ended at None");
    }
}
