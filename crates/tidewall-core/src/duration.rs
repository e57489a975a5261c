//! Human durations, as configuration files write them: `"250ms"`, `"5s"`, `"1h30m"`.
//!
//! The grammar is strict, so a typo is an error and never another duration:
//! * one or more groups of a whole number, an optional fraction and a unit, with optional
//!   whitespace between groups (`"1h 30m"`) and around the value, never between a number and
//!   its unit (`"5 s"` is refused); a lone `"0"` is zero;
//! * units `ns`, `us` (or `µs`), `ms`, `s`, `m` (or `min`), `h`, `d`; no months or years (their
//!   length is not fixed) and no bare numbers (`"5"` could mean anything);
//! * the result is exact in nanoseconds: a fraction finer than a nanosecond (`"0.5ns"`) and a
//!   sum above `u64::MAX` nanoseconds (about 584 years) are errors, never rounded or wrapped.
//!
//! [`HumanDuration`] prints any duration back as one group, a whole number of the largest unit
//! that holds it exactly, so a printed value always parses to itself.
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::duration::{parse, DurationError, HumanDuration};
//!
//! assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
//! assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
//! assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
//! assert_eq!(parse("5"), Err(DurationError::MissingUnit));
//! assert_eq!(parse("0.5ns"), Err(DurationError::SubNanosecond));
//! assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
//! assert_eq!(HumanDuration(Duration::from_secs(5400)).to_string(), "90m");
//! ```

use core::fmt;
use core::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurationError {
    /// The string is empty (or only spaces).
    Empty,
    /// Something other than a number, a unit or a space between groups.
    Malformed,
    /// A number without a unit (only `"0"` may stand alone).
    MissingUnit,
    /// A unit this parser does not know (months and years are refused on purpose).
    UnknownUnit,
    /// The value has a part finer than one nanosecond.
    SubNanosecond,
    /// The value is above `u64::MAX` nanoseconds.
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "an empty duration",
            Self::Malformed => "not a duration (expected e.g. \"250ms\", \"5s\", \"1h 30m\")",
            Self::MissingUnit => "a number without a unit (ns, us, ms, s, m, h, d)",
            Self::UnknownUnit => "an unknown unit (ns, us, ms, s, m, h, d)",
            Self::SubNanosecond => "finer than a nanosecond",
            Self::TooLarge => "larger than u64::MAX nanoseconds (about 584 years)",
        })
    }
}

impl core::error::Error for DurationError {}

const NANOS_PER: [(&str, u64); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("min", 60_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Parses a human duration (see the [module docs](self) for the grammar).
///
/// # Errors
///
/// A [`DurationError`] saying what is wrong; never a panic, whatever the input.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (nanos, after) = group(rest)?;
        total = total.checked_add(nanos).ok_or(DurationError::TooLarge)?;
        rest = after.trim_start();
    }
    Ok(Duration::from_nanos(total))
}

/// One `<whole>[.<fraction>]<unit>` group at the start of `text`: its nanoseconds, and what
/// follows it.
fn group(text: &str) -> Result<(u64, &str), DurationError> {
    let whole_len = text.bytes().take_while(u8::is_ascii_digit).count();
    if whole_len == 0 {
        return Err(DurationError::Malformed);
    }
    let (whole, rest) = text.split_at(whole_len);
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let len = after.bytes().take_while(u8::is_ascii_digit).count();
            if len == 0 {
                return Err(DurationError::Malformed);
            }
            after.split_at(len)
        }
        None => ("", rest),
    };
    let unit_len = rest
        .char_indices()
        .find(|(_, c)| c.is_ascii_digit() || c.is_whitespace() || *c == '.')
        .map_or(rest.len(), |(i, _)| i);
    if unit_len == 0 {
        return Err(DurationError::MissingUnit);
    }
    let (unit, rest) = rest.split_at(unit_len);
    let per = NANOS_PER
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, per)| *per)
        .ok_or_else(|| {
            if unit.chars().all(char::is_alphabetic) {
                DurationError::UnknownUnit
            } else {
                DurationError::Malformed
            }
        })?;
    Ok((nanos(whole, fraction, per)?, rest))
}

/// `whole.fraction` units of `per` nanoseconds each, exactly.
fn nanos(whole: &str, fraction: &str, per: u64) -> Result<u64, DurationError> {
    let mut total: u64 = 0;
    for digit in whole.bytes() {
        total = total
            .checked_mul(10)
            .and_then(|t| t.checked_add(u64::from(digit - b'0')))
            .ok_or(DurationError::TooLarge)?;
    }
    let total = total.checked_mul(per).ok_or(DurationError::TooLarge)?;
    total
        .checked_add(fraction_nanos(fraction, per)?)
        .ok_or(DurationError::TooLarge)
}

/// `0.fraction` units of `per` nanoseconds each, when that is a whole number of nanoseconds
/// (`0.00000000005m` is 3 ns: a minute is not a power of ten of them).
fn fraction_nanos(fraction: &str, per: u64) -> Result<u64, DurationError> {
    // Trailing zeros change nothing. What is left of an exact fraction of any unit here has
    // at most 16 digits (a day is 2^16 × 3^3 × 5^11 ns), so more than 19 is never exact,
    // and 19 digits times any unit fit in a u128.
    let digits = fraction.trim_end_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if digits.len() > 19 {
        return Err(DurationError::SubNanosecond);
    }
    let value = digits
        .bytes()
        .fold(0u128, |value, digit| value * 10 + u128::from(digit - b'0'));
    let scale = digits.bytes().fold(1u128, |scale, _| scale * 10);
    let scaled = value * u128::from(per);
    if !scaled.is_multiple_of(scale) {
        return Err(DurationError::SubNanosecond);
    }
    // Below `per`, since the fraction is below 1.
    u64::try_from(scaled / scale).map_err(|_| DurationError::TooLarge)
}

/// Prints a duration as one group, a whole number of the largest unit that holds it exactly
/// (`"90m"`, `"1500ms"`, `"0s"`; never a fraction),
/// which [`parse`] reads back to the same value. Durations above `u64::MAX` nanoseconds, which
/// [`parse`] refuses, print in whole seconds and nanoseconds (`"…s …ns"`), still exactly.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::duration::{parse, HumanDuration};
///
/// let d = Duration::from_micros(2_500);
/// assert_eq!(HumanDuration(d).to_string(), "2500us");
/// assert_eq!(parse(&HumanDuration(d).to_string()), Ok(d));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(nanos) = u64::try_from(self.0.as_nanos()) else {
            return write!(f, "{}s {}ns", self.0.as_secs(), self.0.subsec_nanos());
        };
        if nanos == 0 {
            return f.write_str("0s");
        }
        let (name, per) = [
            ("d", 86_400_000_000_000),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ]
        .into_iter()
        .find(|(_, per)| nanos.is_multiple_of(*per))
        .unwrap_or(("ns", 1));
        write!(f, "{}{name}", nanos / per)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    use super::*;

    #[test]
    fn the_documented_forms_and_errors() {
        let ok = |s: &str, d: Duration| assert_eq!(parse(s), Ok(d), "{s:?}");
        ok("0", Duration::ZERO);
        ok("0s", Duration::ZERO);
        ok(" 5s ", Duration::from_secs(5));
        ok("1ns", Duration::from_nanos(1));
        ok("1us", Duration::from_micros(1));
        ok("1µs", Duration::from_micros(1));
        ok("2min", Duration::from_secs(120));
        ok("1d2h3m4s5ms6us7ns", Duration::new(93_784, 5_006_007));
        ok("0.000000001s", Duration::from_nanos(1));
        ok("1.50000s", Duration::from_millis(1500));
        ok("18446744073709551615ns", Duration::from_nanos(u64::MAX));
        // Exact, though a minute, an hour or a day is no power of ten of nanoseconds.
        ok("0.00000000005m", Duration::from_nanos(3));
        ok("0.0000000000003125d", Duration::from_nanos(27));
        ok("1.000000000000000000000000000000s", Duration::from_secs(1));
        let err = |s: &str, e: DurationError| assert_eq!(parse(s), Err(e), "{s:?}");
        err("", DurationError::Empty);
        err("   ", DurationError::Empty);
        err("5", DurationError::MissingUnit);
        err("1h30", DurationError::MissingUnit);
        err("00", DurationError::MissingUnit);
        err("5M", DurationError::UnknownUnit);
        err("1y", DurationError::UnknownUnit);
        err("5 s", DurationError::MissingUnit);
        err("-5s", DurationError::Malformed);
        err("1.s", DurationError::Malformed);
        err(".5s", DurationError::Malformed);
        err("5s!", DurationError::Malformed);
        err("0.0000000001s", DurationError::SubNanosecond);
        err("1.5ns", DurationError::SubNanosecond);
        err("0.00000000001m", DurationError::SubNanosecond);
        err("0.00000000000000000001d", DurationError::SubNanosecond);
        err("18446744073709551616ns", DurationError::TooLarge);
        err("584y", DurationError::UnknownUnit);
        err("213504d", DurationError::TooLarge);
        err("99999999999999999999999d", DurationError::TooLarge);
    }

    proptest! {
        /// Every duration `parse` can return prints back to itself.
        #[test]
        fn printing_round_trips(nanos in any::<u64>()) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse(&HumanDuration(d).to_string()), Ok(d));
        }

        /// Groups add up, in any units, with or without spaces between them.
        #[test]
        fn groups_add_up(parts in proptest::collection::vec((0u64..100_000, 0usize..7), 1..5), spaced: bool) {
            let units = ["ns", "us", "ms", "s", "m", "h", "d"];
            let per = [1u64, 1_000, 1_000_000, 1_000_000_000, 60_000_000_000, 3_600_000_000_000, 86_400_000_000_000];
            let text: Vec<String> = parts.iter().map(|(n, u)| std::format!("{n}{}", units[*u])).collect();
            let text = text.join(if spaced { " " } else { "" });
            // Four groups of up to 99,999 days can pass u64::MAX nanoseconds: then TooLarge.
            let expected = parts
                .iter()
                .try_fold(0u64, |sum, (n, u)| sum.checked_add(n * per[*u]))
                .map(Duration::from_nanos)
                .ok_or(DurationError::TooLarge);
            prop_assert_eq!(parse(&text), expected);
        }

        /// Any input gives a value or an error, never a panic.
        #[test]
        fn any_text_is_an_answer(text in ".{0,40}") {
            let _ = parse(&text);
        }
    }
}
