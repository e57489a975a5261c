//! A real-time hang detector for scenarios that may deadlock: a bound on hanging, never a
//! timing assertion.
#![allow(dead_code, unreachable_pub)]

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Runs `scenario` on its own thread and waits for it at most 60 s of real time: a deadlock
/// fails the test instead of hanging the suite (the stuck thread is left behind), and a panic
/// in the scenario is re-raised here. 60 s, not less: the scenarios include CPU-heavy work
/// (hundreds of thousands of tokens, thousands of waiters) in a debug build on a loaded CI
/// machine, and only a hang may fail here.
pub fn without_hanging<T: Send + 'static>(
    what: &str,
    scenario: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = done.send(scenario());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => {
            let _ = thread.join();
            out
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what}: still blocked after 60 s of real time (deadlock)")
        }
        Err(RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the scenario ended without sending its result"),
        },
    }
}
