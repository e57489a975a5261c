//! Runs one task on embassy's std executor until it is done: the minimal program whose
//! binary size `tidewall-bench` compares across runtimes.

use std::sync::atomic::{AtomicU32, Ordering};

static ANSWER: AtomicU32 = AtomicU32::new(0);

#[embassy_executor::task]
async fn answer() {
    ANSWER.store(6 * 7, Ordering::Release);
}

fn main() {
    let executor: &'static mut embassy_executor::Executor =
        Box::leak(Box::new(embassy_executor::Executor::new()));
    let mut spawned = true;
    executor.run_until(
        |spawner| match answer() {
            Ok(token) => spawner.spawn(token),
            Err(_) => spawned = false,
        },
        || ANSWER.load(Ordering::Acquire) == 42,
    );
    std::process::exit(i32::from(!spawned));
}
