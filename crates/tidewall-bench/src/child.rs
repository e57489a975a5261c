//! The child process: one workload on one runtime, its result as JSON on stdout.

use serde::{Deserialize, Serialize};

use crate::runtimes::{Rt, RuntimeKind};
use crate::workloads::{self, Measurement, Workload};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ChildArgs {
    #[arg(long, value_enum)]
    pub(crate) runtime: RuntimeKind,
    #[arg(long, value_enum)]
    pub(crate) workload: Workload,
    /// Worker threads (tokio-ct always runs on one).
    #[arg(long, value_parser = crate::plan::at_least_one)]
    pub(crate) threads: usize,
    /// Operations per repetition (parked tasks for the memory workload).
    #[arg(long)]
    pub(crate) n: u64,
    #[arg(long)]
    pub(crate) quick: bool,
}

/// What a child reports: its figures, or why its workload failed its own check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildResult {
    pub(crate) runtime: RuntimeKind,
    pub(crate) workload: Workload,
    pub(crate) threads: usize,
    pub(crate) n: u64,
    /// OS threads in the child process once the runtime had started and run a task, before
    /// the workload: the main thread and the reactor or timer threads started by then. Threads
    /// a workload starts are not counted: monoio's runtime thread (each TCP workload starts
    /// it), embassy-time's driver (started by the first timer), the TCP load generator's.
    pub(crate) os_threads: usize,
    pub(crate) result: Result<Measurement, String>,
}

pub(crate) fn run(args: &ChildArgs) -> anyhow::Result<ChildResult> {
    let rt = Rt::start(args.runtime, args.threads)?;
    // One task first: async-std starts its pool, and smol its reactor thread, lazily.
    if rt.general_purpose() {
        rt.run(async {});
    }
    let os_threads = os_threads();
    let result =
        workloads::run(&rt, args.workload, args.n, args.quick).map_err(|e| format!("{e:#}"));
    Ok(ChildResult {
        runtime: rt.kind(),
        workload: args.workload,
        threads: args.runtime.threads(args.threads),
        n: args.n,
        os_threads,
        result,
    })
}

/// Threads of this process (`/proc/self/task`), 0 where that is not available.
fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}
