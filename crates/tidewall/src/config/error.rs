//! What is wrong with a configuration, and where.

use std::fmt;

use crate::ConfigError;

/// A configuration that cannot be used, with the key path of what is wrong
/// (`instances.payments.breaker.failure_rate`) and why. Nothing is built from a configuration
/// that gives one: a registry keeps its old policies.
///
/// ```
/// use tidewall::config::{Config, Problem};
///
/// let err = Config::from_toml(r#"
///     [instances.payments.breaker]
///     failure_rate = 1.5
/// "#).unwrap_err();
/// assert_eq!(err.path(), "instances.payments.breaker.failure_rate");
/// assert!(matches!(err.problem(), Problem::Rule(_)));
/// assert_eq!(
///     err.to_string(),
///     "instances.payments.breaker.failure_rate: must be in [0.000001, 1] (kept in parts per million), got 1.5"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    path: String,
    problem: Problem,
}

/// Why a configuration was refused (see [`Invalid`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Problem {
    /// The text is not the format (bad syntax, an unknown key, a value of the wrong type); the
    /// parser's message, which says where.
    Syntax(String),
    /// A value breaks a builder's rule.
    Rule(ConfigError),
    /// A key that has no default is set in no layer.
    Missing,
    /// `base` names a config that `configs` does not have.
    UnknownBase(String),
    /// The key is not allowed here (`base` outside an instance; two windows at once).
    NotHere(&'static str),
    /// The value is not of the kind the key takes (an HTTP method, a status code): what it
    /// is instead.
    Malformed(String),
    /// The configuration file could not be read (or watched): the system's message.
    Read(String),
    /// The setting cannot change while the registry holds what it shapes (a key table's
    /// `max_keys`, a fault injector's `seed`): restart to apply it.
    Fixed,
    /// The registry holds this keyed policy with keys of another type (named here).
    KeyType(&'static str),
    /// A [`Registry`](super::Registry) already holds as many policies of this kind as it may.
    Full {
        /// Its [`max_instances`](super::RegistryBuilder::max_instances).
        max: usize,
    },
    /// No instance of this name is declared, and what was asked for is made only for a
    /// declared one: a [pipeline](super::Registry::pipeline) or an
    /// [HTTP client](super::Registry::http_client) (its stages are the sections its instance
    /// has, so a misspelt name would get a stack of none), or any policy of a
    /// [strict](super::RegistryBuilder::strict) registry.
    Undeclared,
    /// A reload's configuration no longer declares an instance whose pipeline or HTTP client
    /// the registry holds (or any of whose policies a [strict](super::RegistryBuilder::strict)
    /// registry holds): the calls running through it would lose every stage. An instance
    /// with `[http]` has its client built with the registry, so it is always held. Keep the
    /// instance declared (with no section, for a stack of none), or restart.
    Removed,
    /// [`Registry::reload`](super::Registry::reload) (or `reload_file`) was called on the
    /// thread already reloading that registry, or reconfiguring one of its HTTP clients: from
    /// a listener, told of that reload's or reconfiguration's own resets. Waiting for the reload in progress would be waiting for itself.
    /// That reload goes on unaffected; reload from another task or thread instead (it waits
    /// for the first to finish).
    Reentrant,
}

impl Invalid {
    pub(super) fn new(path: impl Into<String>, problem: Problem) -> Self {
        Self {
            path: path.into(),
            problem,
        }
    }

    /// The key path of what is wrong (empty for a syntax error, whose message says where, for
    /// [`Problem::Reentrant`], and for a [`Problem::Read`] of the file watcher's own, which
    /// names no file).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// Whether another layer could still make it right: settings that contradict each other
    /// as far as they go ([`ConfigError::Conflict`]).
    pub(super) fn is_contradiction(&self) -> bool {
        matches!(self.problem, Problem::Rule(ConfigError::Conflict { .. }))
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        match &self.problem {
            Problem::Syntax(message) => f.write_str(message.trim_end()),
            Problem::Rule(error) => write!(f, "{}", error.rule()),
            Problem::Missing => f.write_str("must be set (it has no default)"),
            Problem::UnknownBase(base) => write!(f, "no config named {base:?} in `configs`"),
            Problem::NotHere(why) => f.write_str(why),
            Problem::Malformed(what) => f.write_str(what),
            Problem::Read(message) => write!(f, "cannot read the configuration: {message}"),
            Problem::Fixed => f.write_str(
                "cannot change while the registry holds what it shapes; restart to apply it",
            ),
            Problem::KeyType(held) => {
                write!(
                    f,
                    "the registry holds this keyed policy with keys of type {held}"
                )
            }
            Problem::Undeclared => f.write_str(
                "no instance of this name is declared (a pipeline, an HTTP client or a strict \
                 registry's policy is made only for a declared one)",
            ),
            Problem::Removed => f.write_str(
                "the registry holds a pipeline or HTTP client of this instance (or, strict, a \
                 policy): a reload cannot remove it; keep it declared, or restart",
            ),
            Problem::Reentrant => f.write_str(
                "a reload from a listener of a reload or reconfiguration in progress on this \
                 thread; reload from another task or thread",
            ),
            Problem::Full { max } => {
                write!(
                    f,
                    "the registry already holds {max} policies of this kind, its most"
                )
            }
        }
    }
}

impl std::error::Error for Invalid {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Rule(error) => Some(error),
            _ => None,
        }
    }
}
