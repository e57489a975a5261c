//! `Retry-After` header parsing: RFC 9110 §10.2.3's two forms, never a panic.

use std::fmt;
use std::time::{Duration, SystemTime};

/// The longest delay either form gives: 2^31 seconds (about 68 years), the value RFC 9111
/// §1.2.2 has a cache take for delta-seconds too large to represent.
const MAX_DELAY_SECONDS: u64 = 1 << 31;

/// Why a `Retry-After` value could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAfterError {
    /// The value was empty (or only whitespace).
    Empty,
    /// The value was neither delay-seconds nor an HTTP-date.
    Malformed,
}

impl fmt::Display for RetryAfterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty retry-after value"),
            Self::Malformed => f.write_str("retry-after is neither delay-seconds nor an http-date"),
        }
    }
}

impl std::error::Error for RetryAfterError {}

/// Parses one `Retry-After` field value into the delay it asks for, measured from `now`.
///
/// Delay-seconds are read as given; an HTTP-date (any of RFC 9110's three formats, any year
/// from 0 to 9999, its day of the week checked) is the time from `now` until it, zero when
/// it has passed. An RFC 850 date's two-digit year is the one with those digits at most 50
/// years after `now`'s (RFC 9110 §5.6.7). Either form is capped at 2^31 seconds
/// (about 68 years), the cap RFC 9111 §1.2.2 gives delta-seconds, so a date thousands of
/// years away asks for no more than a huge number of seconds does. Whitespace around the
/// value is ignored.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tidewall::http::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28 GMT
/// assert_eq!(parse_retry_after(b"120", now), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:30:00 GMT", now), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after(b"Fri, 31 Dec 9999 23:59:59 GMT", now), Ok(Duration::from_secs(1 << 31)));
/// assert_eq!(parse_retry_after(b"99999999999999999999999", now), Ok(Duration::from_secs(1 << 31)));
/// ```
///
/// # Errors
///
/// [`RetryAfterError`] when the value is empty or malformed.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Result<Duration, RetryAfterError> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(RetryAfterError::Empty);
    }
    if value.iter().all(u8::is_ascii_digit) {
        let seconds = value.iter().fold(0u64, |acc, digit| {
            acc.saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
                .min(MAX_DELAY_SECONDS)
        });
        return Ok(Duration::from_secs(seconds));
    }
    let text = std::str::from_utf8(value).map_err(|_| RetryAfterError::Malformed)?;
    let delay = super::date::until(text, now).ok_or(RetryAfterError::Malformed)?;
    Ok(delay.min(Duration::from_secs(MAX_DELAY_SECONDS)))
}

/// Reads the `Retry-After` header of a response, if present.
///
/// # Errors
///
/// [`RetryAfterError`] when the header is present but malformed (including when it is repeated:
/// several values cannot be reconciled).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tidewall::http::retry_after;
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(retry_after(&headers, SystemTime::now()), Ok(None));
/// headers.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
/// assert_eq!(retry_after(&headers, SystemTime::now()), Ok(Some(Duration::from_secs(3))));
/// ```
pub fn retry_after(
    headers: &http::HeaderMap,
    now: SystemTime,
) -> Result<Option<Duration>, RetryAfterError> {
    let mut values = headers.get_all(http::header::RETRY_AFTER).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RetryAfterError::Malformed);
    }
    parse_retry_after(first.as_bytes(), now).map(Some)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use proptest::prelude::*;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn delay_seconds_with_whitespace_and_saturation() {
        assert_eq!(parse_retry_after(b"  0 ", at(0)), Ok(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", at(0)),
            Ok(Duration::from_secs(1 << 31))
        );
        assert_eq!(
            parse_retry_after(b"-1", at(0)),
            Err(RetryAfterError::Malformed)
        );
        assert_eq!(
            parse_retry_after(b"1.5", at(0)),
            Err(RetryAfterError::Malformed)
        );
        assert_eq!(
            parse_retry_after(b"   ", at(0)),
            Err(RetryAfterError::Empty)
        );
    }

    #[test]
    fn all_three_date_forms() {
        let now = at(784_111_777 - 10); // Sun, 06 Nov 1994 08:49:37 GMT minus 10 s
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(form.as_bytes(), now),
                Ok(Duration::from_secs(10)),
                "{form}"
            );
        }
    }

    #[test]
    fn repeated_header_is_malformed() {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::RETRY_AFTER, "1".parse().unwrap());
        headers.append(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            retry_after(&headers, at(0)),
            Err(RetryAfterError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), now in any::<u32>()) {
            let _ = parse_retry_after(&bytes, at(u64::from(now)));
        }

        #[test]
        fn any_number_round_trips(n in 0u64..(1 << 31)) {
            prop_assert_eq!(parse_retry_after(n.to_string().as_bytes(), at(0)), Ok(Duration::from_secs(n)));
        }
    }
}
