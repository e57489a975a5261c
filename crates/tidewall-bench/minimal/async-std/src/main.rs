//! Spawns one task on async-std's global executor and joins it: the minimal program whose
//! binary size `tidewall-bench` compares across runtimes.

fn main() {
    let answer = async_std::task::block_on(async_std::task::spawn(async { 6 * 7 }));
    std::process::exit(i32::from(answer != 42));
}
