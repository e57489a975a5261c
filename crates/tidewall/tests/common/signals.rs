//! Helpers for the tests that send real signals to their own process. Each such test has a
//! test binary to itself: a signal goes to the whole process, so a second test running on
//! another thread of it would receive it too.
#![allow(dead_code, unreachable_pub)]

use tidewall::task::shutdown::ShutdownReport;
use tidewall::task::{Ending, Exit};

/// Each component's name, exit and ending, in the report's order.
pub fn ends_of(report: &ShutdownReport) -> Vec<(String, Exit, Ending)> {
    report
        .components
        .iter()
        .map(|c| (c.name.to_string(), c.exit.clone(), c.ending))
        .collect()
}

/// Sends `signal` (as `kill` spells it, e.g. `-TERM`) to this process.
pub fn send_to_self(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("the kill command runs");
    assert!(status.success());
}
