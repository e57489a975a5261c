//! Listening for signals on a runtime built without its I/O driver is an error, not a panic.
//! It sends no signal; the tests that do each have a binary to themselves (see
//! common/signals.rs), so this one has its own too.

use tidewall::rt::Signals;

#[test]
fn a_runtime_without_its_io_driver_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let result = runtime.block_on(async { tidewall::rt::Tokio.shutdown_signals().map(drop) });
    assert!(result.is_err());
}
