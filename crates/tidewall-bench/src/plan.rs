//! The parent: measure the anchors, then run every (workload, size, runtime) in a fresh child
//! process, and flag results outside their plausible band.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::anchor::{self, Anchors};
use crate::child::ChildResult;
use crate::machine::{self, Machine};
use crate::runtimes::RuntimeKind;
use crate::workloads::{Measurement, Workload};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// Small sizes and few repetitions: the whole suite in well under two minutes.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Runtimes to measure (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) runtimes: Vec<RuntimeKind>,
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) workloads: Vec<Workload>,
    /// Times the whole suite runs, each time in fresh processes with the runtimes in a rotated
    /// order; a row's samples come from every round (at least 1; default: 1 quick, 2 full).
    #[arg(long, value_parser = at_least_one)]
    pub(crate) rounds: Option<usize>,
    /// Worker threads for every multi-threaded runtime (at least 1; equal for all; tokio-ct,
    /// monoio and embassy always run on one).
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    pub(crate) threads: usize,
    /// Also write the raw data (every sample) as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Write a markdown report with an SVG chart per workload, and the raw data, here.
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
    /// Measure nothing: render the table (and `--report`) from raw data a run saved
    /// (`results.json` of a report, or `--json`).
    #[arg(long)]
    pub(crate) from_json: Option<PathBuf>,
}

/// Parses a count of rounds or threads. Zero is refused, not rounded up: it would run
/// something other than what was asked for.
pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// Everything one run found.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) machine: Machine,
    pub(crate) quick: bool,
    pub(crate) threads: usize,
    /// Rounds of fresh processes each row's samples come from.
    #[serde(default = "one")]
    pub(crate) rounds: usize,
    pub(crate) anchors: Anchors,
    pub(crate) rows: Vec<Row>,
    /// What was skipped, and why.
    #[serde(default)]
    pub(crate) notes: Vec<String>,
}

/// One workload at one size on one runtime.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) workload: Workload,
    pub(crate) n: u64,
    pub(crate) runtime: RuntimeKind,
    pub(crate) threads: usize,
    /// Measured in the child: its OS threads once the runtime had started (and run a task),
    /// before the workload; threads a workload starts itself are not counted.
    #[serde(default)]
    pub(crate) os_threads: usize,
    pub(crate) result: Result<Measurement, String>,
    /// Set when the figure is outside the band the anchors make plausible.
    pub(crate) flag: Option<String>,
    /// The fresh processes (rounds) its samples come from.
    #[serde(default = "one")]
    pub(crate) rounds: usize,
}

fn one() -> usize {
    1
}

impl Results {
    pub(crate) fn failures(&self) -> usize {
        self.rows.iter().filter(|row| row.result.is_err()).count()
    }
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<Results> {
    if let Some(path) = &args.from_json {
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_slice(&raw).with_context(|| format!("parsing {}", path.display()));
    }
    let runtimes = if args.runtimes.is_empty() {
        RuntimeKind::ALL.to_vec()
    } else {
        args.runtimes.clone()
    };
    let mut notes = Vec::new();
    let workloads = if args.workloads.is_empty() {
        // Binary sizes need the minimal binaries built first: skipped (and said so) when they
        // are not, unless asked for by name (then their absence is a failure).
        let built = crate::workloads::binsize::all_built();
        if !built {
            notes.push(format!(
                "binary-size skipped: the minimal binaries are not built ({})",
                crate::workloads::binsize::BUILD_HINT
            ));
        }
        Workload::ALL
            .into_iter()
            .filter(|w| built || *w != Workload::BinarySize)
            .collect()
    } else {
        args.workloads.clone()
    };
    let machine = machine::describe();
    let anchors = anchor::measure(args.quick).context("the W0 anchor probe")?;
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 2 });
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..rounds {
        // Each round starts with a different runtime, so none always runs first. A rotation
        // keeps the cyclic order: each runtime follows the same neighbour in every round
        // (bar the wrap), so this varies position, not neighbours.
        let mut order = runtimes.clone();
        order.rotate_left(round % runtimes.len().max(1));
        for &workload in &workloads {
            for n in workload.sizes(args.quick) {
                for &runtime in &order {
                    if let Err(why) = runtime.runs(workload, n) {
                        let note = format!("{}: {why}", runtime.name());
                        if !notes.contains(&note) {
                            notes.push(note);
                        }
                        continue;
                    }
                    let child = run_child(runtime, workload, n, args)?;
                    match rows
                        .iter_mut()
                        .find(|r| (r.workload, r.n, r.runtime) == (workload, n, runtime))
                    {
                        Some(row) => row.absorb(child),
                        None => rows.push(Row {
                            workload,
                            n,
                            runtime,
                            threads: child.threads,
                            os_threads: child.os_threads,
                            result: child.result,
                            flag: None,
                            rounds: 1,
                        }),
                    }
                }
            }
        }
    }
    // Keep the table's order: by workload, size, then runtime as listed.
    rows.sort_by_key(|r| {
        let w = workloads.iter().position(|w| *w == r.workload);
        let k = runtimes.iter().position(|k| *k == r.runtime);
        (w, r.n, k)
    });
    for row in &mut rows {
        if let Ok(m) = &mut row.result {
            crate::workloads::derive_extras(row.workload, m);
        }
        row.flag = row
            .result
            .as_ref()
            .ok()
            .and_then(|m| plausibility(row.workload, m.summary.median, &anchors));
    }
    Ok(Results {
        machine,
        quick: args.quick,
        threads: args.threads,
        rounds,
        anchors,
        rows,
        notes,
    })
}

impl Row {
    /// Adds another round's result: its samples join this row's, each extra figure becomes
    /// the median over the rounds, and a failure in any round fails the row.
    fn absorb(&mut self, child: ChildResult) {
        self.rounds += 1;
        match (&mut self.result, child.result) {
            (Ok(mine), Ok(theirs)) => mine.absorb(theirs),
            (Ok(_), Err(error)) => self.result = Err(error),
            (Err(_), _) => {}
        }
    }
}

/// How long one child may take before it is killed and its row failed (a hang must not
/// hang the suite, or CI).
const CHILD_LIMIT_QUICK: std::time::Duration = std::time::Duration::from_secs(60);
const CHILD_LIMIT_FULL: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `command` to completion, or kills it after `limit` (`None` then).
fn output_within(
    mut command: Command,
    limit: std::time::Duration,
) -> anyhow::Result<Option<std::process::Output>> {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a child process")?;
    // Drained on threads, so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ok(Some(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }))
}

fn run_child(
    runtime: RuntimeKind,
    workload: Workload,
    n: u64,
    args: &RunArgs,
) -> anyhow::Result<ChildResult> {
    let exe = std::env::current_exe().context("locating tidewall-bench")?;
    let mut command = Command::new(exe);
    command
        .arg("child")
        .args(["--runtime", runtime.name()])
        .args(["--workload", workload.name()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--n", &n.to_string()])
        // async-std sizes its global executor from the environment, before first use.
        .env(
            "ASYNC_STD_THREAD_COUNT",
            runtime.threads(args.threads).to_string(),
        );
    if args.quick {
        command.arg("--quick");
    }
    let failed = |why: String| ChildResult {
        runtime,
        workload,
        threads: runtime.threads(args.threads),
        n,
        os_threads: 0,
        result: Err(why),
    };
    let limit = if args.quick {
        CHILD_LIMIT_QUICK
    } else {
        CHILD_LIMIT_FULL
    };
    let output = match output_within(command, limit)? {
        Some(output) => output,
        None => {
            return Ok(failed(format!(
                "killed after {} s: it did not finish",
                limit.as_secs()
            )));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Ok(failed(format!(
            "child exited with {}: {tail}",
            output.status
        )));
    }
    Ok(serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| failed(format!("unreadable result: {error}"))))
}

/// The anchor a workload's figure is also shown as a multiple of, with its name, in the
/// workload's own unit (`None` for bytes, timers and idle, which no anchor measures).
pub(crate) fn anchor_for(workload: Workload, anchors: &Anchors) -> Option<(&'static str, f64)> {
    match workload {
        Workload::SpawnLocal
        | Workload::SpawnRemote
        | Workload::FanOut
        | Workload::TidewallFanOut
        | Workload::TidewallWorkerPool
        | Workload::TidewallPipeline
        | Workload::Yield
        | Workload::ChannelSpscNative
        | Workload::ChannelSpscAsyncChannel
        | Workload::ChannelMpscNative
        | Workload::ChannelMpscAsyncChannel => Some(("futex wakes", anchors.futex_wake_ns.median)),
        Workload::PingPong | Workload::PingPongRemote => {
            Some(("thread ping-pongs", anchors.thread_ping_pong_us.median))
        }
        Workload::TcpEchoThroughput | Workload::TcpEchoLatency => {
            Some(("TCP round trips", anchors.tcp_round_trip_us.median))
        }
        Workload::CpuBound
        | Workload::ParkedMemory
        | Workload::Timer100us
        | Workload::Timer1ms
        | Workload::Timer10ms
        | Workload::Idle
        | Workload::BinarySize => None,
    }
}

/// A figure outside the band the anchors allow means the measurement, not the runtime, went
/// wrong (or the machine is not what it seems): flagged, never hidden.
pub(crate) fn plausibility(workload: Workload, median: f64, anchors: &Anchors) -> Option<String> {
    let atomic = anchors.atomic_ns.median;
    let cross_thread_ns = anchors.thread_ping_pong_us.median * 1e3;
    let tcp_rtt = anchors.tcp_round_trip_us.median;
    // Floors: what the operation cannot beat (a spawn allocates and does several atomics; a
    // hand-off needs at least two). Ceilings: ten cross-thread wake-ups per operation, a timer
    // 100 ms late, 1000 wake-ups a second when idle: beyond them the measurement, or the
    // machine, is suspect.
    let (low, high, what) = match workload {
        Workload::SpawnLocal
        | Workload::SpawnRemote
        | Workload::FanOut
        | Workload::TidewallFanOut
        | Workload::TidewallWorkerPool
        | Workload::TidewallPipeline => (4.0 * atomic, 10.0 * cross_thread_ns, "ns"),
        Workload::Yield
        | Workload::ChannelSpscNative
        | Workload::ChannelSpscAsyncChannel
        | Workload::ChannelMpscNative
        | Workload::ChannelMpscAsyncChannel => (atomic, 10.0 * cross_thread_ns, "ns"),
        Workload::PingPong | Workload::PingPongRemote => {
            (2.0 * atomic / 1e3, 10.0 * cross_thread_ns / 1e3, "µs")
        }
        // Many connections overlap their round trips, so a request can take less than one;
        // a median 100 ms late is not a loopback echo any more.
        Workload::TcpEchoThroughput => (tcp_rtt / 100.0, 100.0 * tcp_rtt, "µs"),
        Workload::TcpEchoLatency => (tcp_rtt / 2.0, 100_000.0, "µs"),
        // Tens of µs of arithmetic per task: below 10 ns a task (even over many threads) the
        // work was optimized away; above 10 ms, something is badly wrong.
        Workload::CpuBound => (10.0, 10_000_000.0, "ns"),
        Workload::ParkedMemory => (16.0, 65_536.0, "B"),
        Workload::Timer100us | Workload::Timer1ms | Workload::Timer10ms => (0.0, 100_000.0, "µs"),
        Workload::Idle => (0.0, 1000.0, "wake-ups/s"),
        // A program that spawns a task cannot load in less than 16 KiB, nor need 1 GiB.
        Workload::BinarySize => (16.0, 1_048_576.0, "KiB"),
    };
    if !median.is_finite() {
        return Some("no finite figure".to_owned());
    }
    if median < low {
        return Some(format!("below the plausible floor ({low:.3} {what})"));
    }
    if median > high {
        return Some(format!("above the plausible ceiling ({high:.1} {what})"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn anchors() -> Anchors {
        let one = |v: f64| Summary::of(vec![v]);
        Anchors {
            atomic_ns: one(4.7),
            clock_ns: one(21.0),
            futex_wake_ns: one(155.0),
            thread_ping_pong_us: one(40.0),
            tcp_round_trip_us: one(12.0),
        }
    }

    #[test]
    fn a_child_that_hangs_is_killed_and_one_that_ends_is_read() {
        let mut hang = Command::new("sleep");
        hang.arg("30");
        assert!(
            output_within(hang, std::time::Duration::from_millis(100))
                .unwrap()
                .is_none()
        );
        let mut ends = Command::new("echo");
        ends.arg("done");
        let output = output_within(ends, std::time::Duration::from_secs(30))
            .unwrap()
            .unwrap();
        assert_eq!(output.stdout, b"done\n");
    }

    #[test]
    fn plausible_figures_pass_and_impossible_ones_are_flagged() {
        let a = anchors();
        assert_eq!(plausibility(Workload::SpawnLocal, 450.0, &a), None);
        assert_eq!(plausibility(Workload::PingPong, 0.9, &a), None);
        assert_eq!(plausibility(Workload::ParkedMemory, 128.0, &a), None);
        // Faster than one atomic per task: the measurement is broken, not the runtime fast.
        let fast = plausibility(Workload::SpawnLocal, 1.0, &a).unwrap();
        assert!(fast.contains("below the plausible floor"), "{fast}");
        // Slower than 100 cross-thread wake-ups per spawn.
        let slow = plausibility(Workload::Yield, 5e6, &a).unwrap();
        assert!(slow.contains("above the plausible ceiling"), "{slow}");
        assert!(plausibility(Workload::ParkedMemory, 8.0, &a).is_some());
        assert!(plausibility(Workload::FanOut, f64::NAN, &a).is_some());
    }
}
