//! The baseline: a std thread spawned and joined. `tidewall-bench` reports each runtime's
//! minimal binary over this one, so the standard library's share is not counted as theirs.

fn main() {
    let answer = std::thread::spawn(|| 6 * 7).join().ok();
    std::process::exit(i32::from(answer != Some(42)));
}
