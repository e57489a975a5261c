//! The queue discipline keys `[adaptive]` and `[bulkhead]` share: `discipline`,
//! `codel_target` and `codel_interval`.

use std::time::Duration;

use super::sections::DisciplineKind;
use super::{Invalid, Problem};
use crate::admission::QueueDiscipline;

/// The builder's fields whose key in a file is another.
pub(super) const CODEL_KEYS: &[(&str, &str)] =
    &[("target", "codel_target"), ("interval", "codel_interval")];

/// CoDel's defaults: Facebook's 5 ms target over a 100 ms interval.
const CODEL_TARGET: Duration = Duration::from_millis(5);
const CODEL_INTERVAL: Duration = Duration::from_millis(100);

/// The discipline the merged keys name (fifo when none does; CoDel's durations defaulted).
pub(super) fn discipline(
    kind: Option<DisciplineKind>,
    codel_target: Option<Duration>,
    codel_interval: Option<Duration>,
) -> QueueDiscipline {
    match kind.unwrap_or(DisciplineKind::Fifo) {
        DisciplineKind::Fifo => QueueDiscipline::Fifo,
        DisciplineKind::Lifo => QueueDiscipline::Lifo,
        DisciplineKind::Codel => QueueDiscipline::Codel {
            target: codel_target.unwrap_or(CODEL_TARGET),
            interval: codel_interval.unwrap_or(CODEL_INTERVAL),
        },
    }
}

/// One layer's section may set CoDel's durations only next to `discipline = "codel"`, when
/// it names a discipline (a layer naming none may fill in a base's CoDel).
pub(super) fn codel_keys_fit(
    at: &str,
    sets: impl Fn(&str) -> bool,
    kind: Option<DisciplineKind>,
) -> Result<(), Invalid> {
    let codel_key = ["codel_target", "codel_interval"]
        .into_iter()
        .find(|key| sets(key));
    match codel_key {
        Some(key) if kind.is_some_and(|d| d != DisciplineKind::Codel) => Err(Invalid::new(
            format!("{at}.{key}"),
            Problem::NotHere("CoDel's durations are for `discipline = \"codel\"`"),
        )),
        _ => Ok(()),
    }
}
