//! With the `metrics` feature, a keyed breaker's transitions carry the key's label when one
//! was chosen (`key_label`), and a full key table's refusals are counted under its own
//! policy name. Its own binary: the metrics recorder is process-wide.

#![cfg(feature = "metrics")]

mod common;

use common::tally::Counters;
use std::time::Duration;

use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;
use tidewall::testing::Clocked;

#[test]
fn keyed_breaker_transitions_carry_the_key_label_and_full_tables_are_counted() {
    let counters = Counters::installed();
    let rt = Clocked::new(Tokio);
    let labelled = CircuitBreaker::builder()
        .name("hosts")
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .keyed()
        .max_keys(2)
        .key_label(|host: &String| format!("host-{host}"))
        .build()
        .unwrap();
    for host in ["a", "b"] {
        labelled.try_acquire(&host.to_owned()).unwrap().failure(); // closed → open
    }
    assert!(
        labelled.try_acquire(&"c".to_owned()).is_err(),
        "both open: c is refused"
    );
    let opened = |key: &str| {
        counters.total(
            "tidewall_breaker_transitions_total",
            &["name=hosts", &format!("key={key}"), "to=open"],
        )
    };
    assert_eq!((opened("host-a"), opened("host-b")), (1, 1));
    assert_eq!(
        counters.total(
            "tidewall_rejections_total",
            &["policy=keyed_breaker", "name=hosts", "reason=keys_full"]
        ),
        1
    );
    // The keys' own refusals are counted once for the table, under the breaker's name.
    for host in ["a", "b"] {
        assert!(
            labelled.try_acquire(&host.to_owned()).is_err(),
            "{host} is open"
        );
    }
    assert_eq!(
        counters.total(
            "tidewall_rejections_total",
            &["policy=breaker", "name=hosts", "reason=circuit_open"]
        ),
        2
    );

    // Without a label, the series carries no key: its cardinality stays one per breaker.
    let unlabelled = CircuitBreaker::builder()
        .name("tenants")
        .runtime(rt)
        .consecutive_failures(1)
        .keyed()
        .build()
        .unwrap();
    for tenant in 0..5u32 {
        unlabelled.try_acquire(&tenant).unwrap().failure();
    }
    assert_eq!(
        counters.total(
            "tidewall_breaker_transitions_total",
            &["name=tenants", "to=open"]
        ),
        5
    );
    assert_eq!(
        counters.total(
            "tidewall_breaker_transitions_total",
            &["name=tenants", "key=0"]
        ),
        0
    );
}
