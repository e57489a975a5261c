//! Key names: a format version, and a Redis Cluster hash tag per limit and partition.

/// The prefix and format version of every key (bump the version when a script changes what a
/// key holds, so old and new replicas never read each other's state).
const PREFIX: &str = "tidewall:v1:";

/// `tidewall:v1:{name:partition}:kind`: everything one limit and partition touches hashes to
/// one Cluster slot.
pub(crate) fn key(name: &str, partition: &str, kind: &str) -> String {
    format!("{PREFIX}{{{name}:{partition}}}:{kind}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_carry_the_version_and_one_hash_tag() {
        assert_eq!(
            super::key("api", "tenant-7", "rate"),
            "tidewall:v1:{api:tenant-7}:rate"
        );
    }
}
