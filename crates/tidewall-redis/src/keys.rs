//! Key names: a format version, and a Redis Cluster hash tag per limit and partition.

/// The prefix and format version of every key (bump the version when a script changes what a
/// key holds, so old and new replicas never read each other's state).
const PREFIX: &str = "tidewall:v1:";

/// `tidewall:v1:{name:partition}:kind`: everything one limit and partition touches hashes to
/// one Cluster slot. The name and partition are escaped (`%`, `:`, `{`, `}`), so
/// `("a", "b:c")` and `("a:b", "c")` never share a key, and a brace cannot end the hash tag.
pub(crate) fn key(name: &str, partition: &str, kind: &str) -> String {
    format!("{PREFIX}{{{}:{}}}:{kind}", escape(name), escape(partition))
}

/// The key of `kind` that a limit of `name` and `partition` probes in `verify`: its own hash
/// tag (so the same Cluster slot, and node, as its real keys), then `%probe:` before the
/// kind, which no real key has (its kinds are plain words).
pub(crate) fn probe_key(name: &str, partition: &str, kind: &str) -> String {
    format!(
        "{PREFIX}{{{}:{}}}:%probe:{kind}",
        escape(name),
        escape(partition)
    )
}

fn escape(part: &str) -> String {
    let mut escaped = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            ':' => escaped.push_str("%3A"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_carry_the_version_and_one_hash_tag() {
        assert_eq!(
            super::key("api", "tenant-7", "rate"),
            "tidewall:v1:{api:tenant-7}:rate"
        );
        assert_ne!(
            super::key("a", "b:c", "rate"),
            super::key("a:b", "c", "rate")
        );
        assert_eq!(
            super::probe_key("api", "tenant-7", "rate"),
            "tidewall:v1:{api:tenant-7}:%probe:rate"
        );
        assert_ne!(
            super::probe_key("a", "b", "rate"),
            super::key("a", "b", "rate")
        );
        assert_eq!(
            super::key("x}", "{y%", "rate"),
            "tidewall:v1:{x%7D:%7By%25}:rate"
        );
    }
}
