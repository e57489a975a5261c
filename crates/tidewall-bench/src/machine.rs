//! The machine the numbers come from, printed with every run.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) logical_cpus: usize,
    pub(crate) kernel: String,
    pub(crate) memory_gib: f64,
    /// The `rustc` on PATH when the suite ran (not necessarily the one that built it).
    pub(crate) rustc: String,
    /// Whether the CPU reports a hypervisor (the `hypervisor` flag in /proc/cpuinfo).
    #[serde(default)]
    pub(crate) virtualized: bool,
    /// The runtime crates this binary was built with (from `Cargo.lock`).
    #[serde(default)]
    pub(crate) runtime_versions: String,
    /// The CPU frequency governor (`scaling_governor` of cpu0), or why it is unknown.
    #[serde(default)]
    pub(crate) governor: String,
}

/// The caveat printed (table) and written (report) when the machine is a VM.
pub(crate) const VM_CAVEAT: &str = "a VM (the CPU reports a hypervisor): idle vCPUs are halted, so cross-vCPU wake-ups are expensive and work-stealing looks worse than on bare metal.";

pub(crate) fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or_else(|| "unknown".to_owned(), |name| name.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| std::env::consts::OS.to_owned(), |k| k.trim().to_owned());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: f64 = info
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kib / (1024.0 * 1024.0))
        })
        .unwrap_or(f64::NAN);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned());
    let virtualized = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "hypervisor"));
    // A VM usually exposes no cpufreq at all: the host decides the frequency.
    let governor = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        .map_or_else(
            |_| "not exposed (no cpufreq; a VM's host sets the frequency)".to_owned(),
            |g| g.trim().to_owned(),
        );
    Machine {
        governor,
        runtime_versions: env!("TIDEWALL_BENCH_RUNTIME_VERSIONS").to_owned(),
        virtualized,
        cpu,
        logical_cpus: std::thread::available_parallelism().map_or(0, usize::from),
        kernel,
        memory_gib,
        rustc,
    }
}

#[cfg(test)]
mod tests {
    use crate::runtimes::RuntimeKind;

    /// Every runtime the suite measures has its crate's version in the report: the one this
    /// binary was built with (monoio only where it is built, on Linux).
    #[test]
    fn every_measured_runtime_has_its_version_recorded() {
        let versions = env!("TIDEWALL_BENCH_RUNTIME_VERSIONS");
        for kind in RuntimeKind::ALL {
            let name = match kind {
                RuntimeKind::TokioMt | RuntimeKind::TokioCt => "tokio",
                RuntimeKind::Smol => "smol",
                RuntimeKind::AsyncStd => "async-std",
                RuntimeKind::Monoio if !cfg!(target_os = "linux") => continue,
                RuntimeKind::Monoio => "monoio",
                RuntimeKind::Embassy => "embassy-executor",
            };
            let recorded = versions
                .split(", ")
                .find_map(|entry| entry.strip_prefix(&format!("{name} ")));
            assert!(
                recorded.is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit())),
                "no {name} version in {versions:?}"
            );
        }
        assert!(versions.contains("embassy-time "), "{versions}");
    }
}
