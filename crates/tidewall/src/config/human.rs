//! How durations and switches are written in a configuration: `"250ms"`, `"off"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use tidewall_core::duration::{HumanDuration, parse};

/// A setting that can also be turned off: written as its value, or as the string `"off"`.
///
/// ```
/// use std::time::Duration;
/// use tidewall::config::{Config, Toggle};
///
/// let config: Config = Config::from_toml(r#"
///     [instances.reports]
///     deadline = "off"
///     [instances.search]
///     deadline = "800ms"
/// "#)?;
/// assert_eq!(config.instances["reports"].deadline, Some(Toggle::Off));
/// assert_eq!(config.instances["search"].deadline, Some(Toggle::On(Duration::from_millis(800))));
/// # Ok::<(), tidewall::config::Invalid>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Toggle<T> {
    /// Turned off: the policy does without this check.
    Off,
    /// Set to this value.
    On(T),
}

impl<T> Toggle<T> {
    /// The value, or `None` when off.
    pub fn on(self) -> Option<T> {
        match self {
            Self::Off => None,
            Self::On(value) => Some(value),
        }
    }
}

const OFF: &str = "off";

/// Reads a duration string as the [grammar](tidewall_core::duration) says.
fn duration<E: de::Error>(text: &str) -> Result<Duration, E> {
    parse(text).map_err(|e| E::custom(format_args!("{text:?} is {e}")))
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"250ms\" or \"5s\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        duration(text)
    }
}

/// `#[serde(with = "human::opt_duration")]` for `Option<Duration>` fields.
pub(super) mod opt_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.collect_str(&HumanDuration(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_str(DurationVisitor).map(Some)
    }
}

impl Serialize for Toggle<Duration> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => serializer.serialize_str(OFF),
            Self::On(d) => serializer.collect_str(&HumanDuration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for Toggle<Duration> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Toggle<Duration>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", or \"off\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text == OFF {
                    Ok(Toggle::Off)
                } else {
                    duration(text).map(Toggle::On)
                }
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl Serialize for Toggle<String> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => serializer.serialize_str(OFF),
            Self::On(text) => serializer.serialize_str(text),
        }
    }
}

/// A name, or `"off"` (so `"off"` itself is never a name).
impl<'de> Deserialize<'de> for Toggle<String> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Toggle<String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name, or \"off\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(if text == OFF {
                    Toggle::Off
                } else {
                    Toggle::On(text.to_owned())
                })
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl Serialize for Toggle<f64> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => serializer.serialize_str(OFF),
            Self::On(value) => serializer.serialize_f64(*value),
        }
    }
}

impl<'de> Deserialize<'de> for Toggle<f64> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Toggle<f64>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or \"off\"")
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(Toggle::On(value))
            }

            // Integers are exact in an f64 up to 2^53; beyond, the builder's range check
            // refuses them long before precision matters (rates are at most 1).
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(Toggle::On(value as f64))
            }

            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(Toggle::On(value as f64))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text == OFF {
                    Ok(Toggle::Off)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(text), &self))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}
