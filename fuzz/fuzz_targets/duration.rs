//! Fuzzes the human-duration parser configuration files go through: any text gives a value or
//! an error, never a panic, and a value prints back to itself.
//!
//! Run from `fuzz/`: `cargo fuzz run --sanitizer none duration -- -max_total_time=60`. CI runs
//! it for 10 s on every change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewall_core::duration::{HumanDuration, parse};

fuzz_target!(|text: &str| {
    if let Ok(duration) = parse(text) {
        assert_eq!(parse(&HumanDuration(duration).to_string()), Ok(duration));
    }
});
