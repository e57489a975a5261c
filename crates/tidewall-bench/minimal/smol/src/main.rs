//! Spawns one task on a smol executor and joins it: the minimal program whose binary size
//! `tidewall-bench` compares across runtimes.

fn main() {
    let executor = smol::Executor::new();
    let answer = smol::block_on(executor.run(executor.spawn(async { 6 * 7 })));
    std::process::exit(i32::from(answer != 42));
}
