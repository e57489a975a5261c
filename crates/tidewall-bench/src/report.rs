//! `--report DIR`: a markdown report with one SVG chart per workload (plotters) and the raw
//! data next to it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::plan::{Results, Row};
use crate::workloads::Workload;

mod chart;

/// Writes `report.md`, `results.json` and one `<workload>-<n>.svg` per workload into `dir`.
pub(crate) fn write(results: &Results, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw = std::fs::File::create(dir.join("results.json"))?;
    serde_json::to_writer_pretty(raw, results)?;
    let mut md = String::new();
    let m = &results.machine;
    let a = &results.anchors;
    let _ = writeln!(md, "# Runtime comparison\n");
    let _ = writeln!(
        md,
        "Machine: {} ({} logical CPUs, {:.1} GiB), Linux {}, {}, CPU governor: {}. Threads: \
         {} per multi-threaded runtime (tokio-ct, monoio, embassy: 1). Mode: {}. Each runtime \
         ran each workload in a fresh process, {} round(s) with the runtimes in a rotated \
         order; figures are medians over every round's repetitions, with min and max.\n",
        m.cpu,
        m.logical_cpus,
        m.memory_gib,
        m.kernel,
        m.rustc,
        m.governor,
        results.threads,
        if results.quick { "quick" } else { "full" },
        results.rounds
    );
    if !m.runtime_versions.is_empty() {
        let _ = writeln!(md, "Runtime crates: {}.\n", m.runtime_versions);
    }
    let _ = writeln!(
        md,
        "W0 anchors (this machine's floor): uncontended atomic {:.1} ns, clock read {:.1} ns, \
         futex wake {:.0} ns, thread ping-pong {:.1} µs, loopback TCP round trip {:.1} µs.\n",
        a.atomic_ns.median,
        a.clock_ns.median,
        a.futex_wake_ns.median,
        a.thread_ping_pong_us.median,
        a.tcp_round_trip_us.median
    );
    if m.virtualized {
        let _ = writeln!(md, "This is {}\n", crate::machine::VM_CAVEAT);
    }
    for note in &results.notes {
        let _ = writeln!(md, "Note: {note}.\n");
    }
    for (workload, n) in groups(results) {
        let rows: Vec<&Row> = results
            .rows
            .iter()
            .filter(|r| r.workload == workload && r.n == n)
            .collect();
        let unit = rows
            .iter()
            .find_map(|r| r.result.as_ref().ok().map(|m| m.unit.clone()))
            .unwrap_or_default();
        let chart_file = format!("{}-{n}.svg", workload.name());
        let _ = writeln!(md, "## {} (n = {n}), {unit}\n", workload.name());
        let anchor = crate::plan::anchor_for(workload, &results.anchors);
        let multiple_header =
            anchor.map_or_else(|| "× anchor".to_owned(), |(name, _)| format!("× {name}"));
        let _ = writeln!(
            md,
            "| runtime | median | min | max | {multiple_header} | other figures | flag |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for row in &rows {
            let _ = match &row.result {
                Ok(m) => {
                    let extra: Vec<String> = m
                        .extra
                        .iter()
                        .map(|(name, value)| format!("{name} {value:.1}"))
                        .collect();
                    let multiple = anchor.map_or_else(String::new, |(_, value)| {
                        format!("{:.2}", m.summary.median / value)
                    });
                    writeln!(
                        md,
                        "| {} | {:.2} | {:.2} | {:.2} | {multiple} | {} | {} |",
                        row.runtime.label(),
                        m.summary.median,
                        m.summary.min,
                        m.summary.max,
                        extra.join(", "),
                        row.flag.as_deref().unwrap_or("")
                    )
                }
                Err(error) => writeln!(
                    md,
                    "| {} | failed: {error} | | | | | |",
                    row.runtime.label()
                ),
            };
        }
        let slots: Vec<chart::Slot> = rows.iter().copied().map(chart::Slot::of).collect();
        let title = format!("{} (n = {n})", workload.name());
        chart::write_svg(&dir.join(&chart_file), &title, &unit, &slots)?;
        let _ = writeln!(md, "\n![{} chart]({chart_file})\n", workload.name());
    }
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}

fn groups(results: &Results) -> Vec<(Workload, u64)> {
    let mut keys = Vec::new();
    for row in &results.rows {
        if !keys.contains(&(row.workload, row.n)) {
            keys.push((row.workload, row.n));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use crate::fixture::fixture;

    #[test]
    fn the_report_has_every_row_a_chart_and_the_raw_data() {
        let dir = tempfile::tempdir().unwrap();
        super::write(&fixture(), dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("# Runtime comparison"));
        assert!(md.contains("uncontended atomic 4.7 ns"));
        assert!(md.contains("## spawn-local (n = 1000), ns/task"));
        assert!(
            md.contains(
                "| tokio-mt | 600.00 | 540.00 | 660.00 | 3.87 | resident B/task 330.0 |  |"
            ),
            "{md}"
        );
        assert!(md.contains("below the plausible floor"));
        assert!(md.contains("Note: binary-size skipped: not built."));
        assert!(md.contains("| async-std (discontinued) | failed: fan-out: 3 of 10 received |"));
        assert!(md.contains("![spawn-local chart](spawn-local-1000.svg)"));
        let svg = std::fs::read_to_string(dir.path().join("spawn-local-1000.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("tokio-mt"), "{svg}");
        // The raw data renders the same report again (`--from-json`).
        let again: crate::plan::Results = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        let second = tempfile::tempdir().unwrap();
        super::write(&again, second.path()).unwrap();
        assert_eq!(
            md,
            std::fs::read_to_string(second.path().join("report.md")).unwrap()
        );
        let raw: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(raw["rows"].as_array().unwrap().len(), 3);
        assert_eq!(
            raw["rows"][0]["result"]["Ok"]["summary"]["samples"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
}
