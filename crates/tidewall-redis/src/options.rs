//! What every Redis-backed limit is configured with, whatever its kind.

use std::time::Duration;

use tidewall::ConfigError;
use tidewall_core::gcra::{Resolution, emission_interval};

use crate::conn::RedisConn;
use crate::keys::{key, probe_key};
use crate::policy::WhenUnavailable;

/// The connection, the key's name and partition, the deadline per Redis call and the
/// failure policy.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) conn: RedisConn,
    pub(crate) name: String,
    pub(crate) partition: String,
    pub(crate) deadline: Duration,
    pub(crate) policy: WhenUnavailable,
}

impl Common {
    /// Partition `"default"`, a 10 ms deadline, fail open.
    pub(crate) fn new(conn: &RedisConn, name: &str) -> Self {
        Self {
            conn: conn.clone(),
            name: name.to_owned(),
            partition: "default".to_owned(),
            deadline: Duration::from_millis(10),
            policy: WhenUnavailable::Open,
        }
    }

    /// The key of this limit's `kind` of state, once the options are checked.
    pub(crate) fn validated_key(&self, kind: &str) -> Result<String, ConfigError> {
        if self.deadline.is_zero() {
            return Err(ConfigError::Zero { field: "deadline" });
        }
        if u64::try_from(self.deadline.as_nanos()).is_err() {
            return Err(ConfigError::DurationOverflow { field: "deadline" });
        }
        if self.name.is_empty() {
            return Err(ConfigError::Zero { field: "name" });
        }
        if let WhenUnavailable::Local { share } = self.policy {
            crate::rate::share_of(1, share)?;
        }
        Ok(key(&self.name, &self.partition, kind))
    }

    /// The key of this limit's `kind` of state that `verify` probes.
    pub(crate) fn probe_key(&self, kind: &str) -> String {
        probe_key(&self.name, &self.partition, kind)
    }
}

/// `d` in whole microseconds, as a script adds it to Redis's clock: rounded down by the
/// emission interval's rule (at least 1 µs, at most 0.1 % shorter than asked), and at most
/// [`MAX_LUA_MICROS`](crate::rate::MAX_LUA_MICROS) so the sum stays exact in a Lua double.
/// `allowed` says so in the builder's words.
pub(crate) fn script_micros(
    field: &'static str,
    d: Duration,
    allowed: &'static str,
) -> Result<u64, ConfigError> {
    let out_of_range = ConfigError::OutOfRange {
        field,
        value: d.as_secs_f64(),
        allowed,
    };
    let micros = emission_interval(1, d, Resolution::Micros).map_err(|error| match error {
        ConfigError::Zero { .. } => ConfigError::Zero { field },
        ConfigError::DurationOverflow { .. } => ConfigError::DurationOverflow { field },
        _ => out_of_range,
    })?;
    if micros > crate::rate::MAX_LUA_MICROS {
        return Err(out_of_range);
    }
    Ok(micros)
}

/// The builder methods for [`Common`]'s options, on a builder with a `common` field; with
/// `no_policy`, all but `when_unavailable` (the builder documents its own).
macro_rules! common_options {
    () => {
        crate::options::common_options!(no_policy);

        /// What to do when Redis does not answer in time or answers with an error (default:
        /// admit).
        #[must_use]
        pub fn when_unavailable(mut self, policy: crate::policy::WhenUnavailable) -> Self {
            self.common.policy = policy;
            self
        }
    };
    (no_policy) => {
        /// A separate limit under the same name (a tenant, a route): its own key.
        #[must_use]
        pub fn partition(mut self, partition: &str) -> Self {
            partition.clone_into(&mut self.common.partition);
            self
        }

        /// How long one Redis call may take before the failure policy decides
        /// (default 10 ms).
        #[must_use]
        pub fn deadline(mut self, deadline: std::time::Duration) -> Self {
            self.common.deadline = deadline;
            self
        }
    };
}
pub(crate) use common_options;
