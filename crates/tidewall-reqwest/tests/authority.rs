//! The reqwest middleware and the tower `ClientLayer` file a request under one authority: for
//! any IPv6 address, however a URL writes it (short or in full, an IPv4-mapped one dotted,
//! upper or lower case) and any port, `authority(&Url)` (the `url` crate's parse) is
//! `Authority::from_uri` (the `http` crate's) and `Authority::new` of the socket address.

use std::net::Ipv6Addr;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use tidewall::http::Authority;

/// A fixed seed and no regression files: every run explores the same cases.
fn fixed(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(20_261_204),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Addresses with runs of zeros in every place, and IPv4-mapped ones.
fn address() -> impl Strategy<Value = Ipv6Addr> {
    let piece = prop_oneof![4 => Just(0u16), 1 => Just(0xffff), 4 => any::<u16>()];
    prop::array::uniform8(piece).prop_map(Ipv6Addr::from)
}

/// `address` in full: eight pieces, each with its leading zeros.
fn in_full(address: Ipv6Addr) -> String {
    let pieces: Vec<String> = address
        .segments()
        .iter()
        .map(|piece| format!("{piece:04x}"))
        .collect();
    pieces.join(":")
}

proptest! {
    #![proptest_config(fixed(4096))]

    #[test]
    fn every_front_files_an_ipv6_host_under_one_authority(
        address in address(),
        port in any::<u16>(),
        full in any::<bool>(),
        upper in any::<bool>(),
        https in any::<bool>(),
    ) {
        let scheme = if https { "https" } else { "http" };
        let mut written = if full { in_full(address) } else { address.to_string() };
        if upper {
            written.make_ascii_uppercase();
        }
        let text = format!("{scheme}://[{written}]:{port}/x");
        let url = reqwest::Url::parse(&text).unwrap();
        let by_reqwest = tidewall_reqwest::authority(&url).unwrap();
        let by_tower = Authority::from_uri(&text.parse().unwrap()).unwrap();
        let by_socket = Authority::new(scheme, &address.to_string(), Some(port)).unwrap();
        prop_assert_eq!(&by_reqwest, &by_tower, "{}", text);
        prop_assert_eq!(&by_socket, &by_tower, "{}", text);
        let host = url.host_str().unwrap();
        let port_text = port.to_string();
        let expected = format!("{scheme}://{host}:{port_text}");
        prop_assert_eq!(by_tower.as_str(), expected.as_str(), "as the url crate writes it");
    }
}
