//! What every Redis-backed limit is configured with, whatever its kind.

use std::time::Duration;

use tidewall::ConfigError;

use crate::conn::RedisConn;
use crate::keys::key;
use crate::policy::FailurePolicy;

/// The connection, the key's name and partition, the deadline per Redis call and the
/// failure policy.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) conn: RedisConn,
    pub(crate) name: String,
    pub(crate) partition: String,
    pub(crate) deadline: Duration,
    pub(crate) policy: FailurePolicy,
}

impl Common {
    /// Partition `"default"`, a 10 ms deadline, fail open.
    pub(crate) fn new(conn: &RedisConn, name: &str) -> Self {
        Self {
            conn: conn.clone(),
            name: name.to_owned(),
            partition: "default".to_owned(),
            deadline: Duration::from_millis(10),
            policy: FailurePolicy::Open,
        }
    }

    /// The key of this limit's `kind` of state, once the options are checked.
    pub(crate) fn validated_key(&self, kind: &str) -> Result<String, ConfigError> {
        if self.deadline.is_zero() {
            return Err(ConfigError::Zero { field: "deadline" });
        }
        if self.name.is_empty() {
            return Err(ConfigError::Zero { field: "name" });
        }
        Ok(key(&self.name, &self.partition, kind))
    }
}

/// The builder methods for [`Common`]'s options, on a builder with a `common` field.
macro_rules! common_options {
    () => {
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

        /// What to do when Redis does not answer in time (default: admit).
        #[must_use]
        pub fn failure_policy(mut self, policy: crate::policy::FailurePolicy) -> Self {
            self.common.policy = policy;
            self
        }
    };
}
pub(crate) use common_options;
