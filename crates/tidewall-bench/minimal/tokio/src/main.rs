//! Spawns one task on tokio's multi-thread scheduler and joins it: the minimal program whose
//! binary size `tidewall-bench` compares across runtimes.

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let answer = runtime.block_on(async { tokio::spawn(async { 6 * 7 }).await });
    std::process::exit(i32::from(answer.ok() != Some(42)));
}
