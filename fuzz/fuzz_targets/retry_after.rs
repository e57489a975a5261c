//! Fuzzes the `Retry-After` parser: any bytes, any clock reading, never a panic, and a parsed
//! delay is never more than the RFC's 2^31-second cap for delta-seconds.
//!
//! Run from `fuzz/`: `cargo fuzz run --sanitizer none retry_after -- -max_total_time=60` (works
//! on stable; with a nightly toolchain drop `--sanitizer none` to add AddressSanitizer).
//! CI runs it for 20 s on every change.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, &[u8])| {
    let (now, bytes) = input;
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(now));
    if let Ok(delay) = tidewall::http::parse_retry_after(bytes, now)
        && bytes.trim_ascii().iter().all(u8::is_ascii_digit)
    {
        assert!(delay <= Duration::from_secs(1 << 31));
    }
});
