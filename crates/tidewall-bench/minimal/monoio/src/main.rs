//! Spawns one task on a monoio (io_uring) runtime and joins it: the minimal program whose
//! binary size `tidewall-bench` compares across runtimes.

#[cfg(target_os = "linux")]
fn main() {
    let answer = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .build()
        .map(|mut runtime| runtime.block_on(async { monoio::spawn(async { 6 * 7 }).await }));
    std::process::exit(i32::from(!matches!(answer, Ok(42))));
}

#[cfg(not(target_os = "linux"))]
fn main() {
    // monoio's io_uring driver is Linux-only.
    std::process::exit(1);
}
