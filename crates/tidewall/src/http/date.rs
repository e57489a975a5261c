//! HTTP-dates (RFC 9110 §5.6.7): the IMF-fixdate and the obsolete RFC 850 and asctime forms,
//! read exactly, any year from 0 to 9999 (a date before 1970 is as valid as any other).

use std::time::{Duration, SystemTime};

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const NANOS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// The time from `now` until the HTTP-date `text` (zero once it has passed), or `None` when
/// `text` is no HTTP-date, names no instant (30 February, hour 24) or gives the wrong day of
/// the week. An RFC 850 two-digit year is the year with those digits that is at most 50
/// years after `now`'s, as RFC 9110 asks.
pub(super) fn until(text: &str, now: SystemTime) -> Option<Duration> {
    let now = nanos_since_epoch(now);
    let date = parse(text, year_of(now))?;
    let at = i128::from(date) * NANOS_PER_SECOND;
    let nanos = u64::try_from((at - now).max(0)).unwrap_or(u64::MAX);
    Some(Duration::from_nanos(nanos))
}

/// Seconds from the Unix epoch (negative before it) of the HTTP-date `text`.
fn parse(text: &str, now_year: i64) -> Option<i64> {
    if let Some((day_name, rest)) = text.split_once(", ") {
        if let Some(weekday) = DAY_NAMES.iter().position(|name| *name == day_name) {
            return imf_fixdate(rest, weekday);
        }
        let weekday = LONG_DAY_NAMES.iter().position(|name| *name == day_name)?;
        return rfc850(rest, weekday, now_year);
    }
    asctime(text)
}

/// `DD Mon YYYY HH:MM:SS GMT`, after `Www, `.
fn imf_fixdate(text: &str, weekday: usize) -> Option<i64> {
    let [day, month, year, time, zone] = fields(text, ' ')?;
    (zone == "GMT").then_some(())?;
    let year = i64::from(number(year, 4)?);
    instant(year, month, number(day, 2)?, time, weekday)
}

/// `DD-Mon-YY HH:MM:SS GMT`, after `Weekday, `.
fn rfc850(text: &str, weekday: usize, now_year: i64) -> Option<i64> {
    let (date, rest) = text.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    (zone == "GMT").then_some(())?;
    let [day, month, year] = fields(date, '-')?;
    let year = year_near(i64::from(number(year, 2)?), now_year);
    instant(year, month, number(day, 2)?, time, weekday)
}

/// `Www Mon DD HH:MM:SS YYYY`, the day as two digits or a space and one digit: 24 bytes.
fn asctime(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    (bytes.len() == 24 && [3, 7, 10, 19].iter().all(|&at| bytes[at] == b' ')).then_some(())?;
    let weekday = DAY_NAMES
        .iter()
        .position(|name| Some(*name) == text.get(0..3))?;
    let day = text.get(8..10)?;
    let day = match day.strip_prefix(' ') {
        Some(digit) => number(digit, 1)?,
        None => number(day, 2)?,
    };
    let year = i64::from(number(text.get(20..24)?, 4)?);
    instant(year, text.get(4..7)?, day, text.get(11..19)?, weekday)
}

/// `text` cut at every `separator` into exactly `N` non-empty fields.
fn fields<const N: usize>(text: &str, separator: char) -> Option<[&str; N]> {
    let mut parts = text.split(separator);
    let fields = std::array::from_fn(|_| parts.next().unwrap_or(""));
    (parts.next().is_none() && fields.iter().all(|field| !field.is_empty())).then_some(fields)
}

/// `text` as a number of exactly `digits` ASCII digits.
fn number(text: &str, digits: usize) -> Option<u32> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
    text.parse().ok()
}

/// The instant of a checked date and `HH:MM:SS`, if `weekday` (Monday 0) is its day.
fn instant(year: i64, month: &str, day: u32, time: &str, weekday: usize) -> Option<i64> {
    let month = u32::try_from(MONTHS.iter().position(|name| *name == month)? + 1).ok()?;
    (1..=days_in_month(year, month))
        .contains(&day)
        .then_some(())?;
    let [hour, minute, second] = fields(time, ':')?;
    let (hour, minute, second) = (number(hour, 2)?, number(minute, 2)?, number(second, 2)?);
    // Second 60 is a leap second: it counts as the first of the next minute.
    (hour < 24 && minute < 60 && second <= 60).then_some(())?;
    let days = days_from_epoch(year, month, day);
    // 1970-01-01 was a Thursday (3, counting Monday as 0).
    (usize::try_from((days + 3).rem_euclid(7)).ok()? == weekday).then_some(())?;
    let seconds = i64::from(hour * 3600 + minute * 60 + second);
    // Checked: a two-digit year is read near the caller's `now`, which may be near the end
    // of `SystemTime`'s range, past the seconds an i64 holds.
    days.checked_mul(SECONDS_PER_DAY)?.checked_add(seconds)
}

/// The year ending in `two_digits` that is at most 50 years after `now_year` (RFC 9110
/// §5.6.7: a date that appears more than 50 years ahead is in the past century).
fn year_near(two_digits: i64, now_year: i64) -> i64 {
    let year = now_year - now_year.rem_euclid(100) + two_digits;
    if year > now_year + 50 {
        year - 100
    } else if year <= now_year - 50 {
        year + 100
    } else {
        year
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (negative before it):
/// counted in 400-year eras from a year starting in March, so the leap day comes last.
fn days_from_epoch(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The year of the instant `nanos` after the epoch (negative before it).
fn year_of(nanos: i128) -> i64 {
    let days = nanos.div_euclid(NANOS_PER_SECOND * i128::from(SECONDS_PER_DAY));
    let days = i64::try_from(days).unwrap_or(if days < 0 { i64::MIN } else { i64::MAX });
    // The inverse of `days_from_epoch`, on the same March-based eras.
    let from_march = days.saturating_add(719_468);
    let era = from_march.div_euclid(146_097);
    let day_of_era = from_march - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let year = year_of_era.saturating_add(era.saturating_mul(400));
    // January and February belong to the next calendar year.
    if month_from_march >= 10 {
        year.saturating_add(1)
    } else {
        year
    }
}

/// `now` in nanoseconds from the Unix epoch, negative before it.
fn nanos_since_epoch(now: SystemTime) -> i128 {
    let signed = |nanos: u128| i128::try_from(nanos).unwrap_or(i128::MAX);
    match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => signed(after.as_nanos()),
        Err(before) => -signed(before.duration().as_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-digit year read near the latest `now` a `SystemTime` holds: no overflow, no
    /// panic, whatever the day name and year.
    #[test]
    fn a_two_digit_year_near_the_end_of_time_never_overflows() {
        let Some(last) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(i64::MAX as u64))
        else {
            return; // a platform whose SystemTime ends sooner
        };
        for day in LONG_DAY_NAMES {
            for year in 0..100 {
                let _ = until(&format!("{day}, 31-Dec-{year:02} 23:59:59 GMT"), last);
            }
        }
    }

    #[test]
    fn the_calendar_round_trips_over_ten_thousand_years() {
        for year in [
            0, 1, 4, 100, 400, 1600, 1899, 1900, 1969, 1970, 2000, 2024, 2100, 9999,
        ] {
            let start = days_from_epoch(year, 1, 1);
            let end = days_from_epoch(year, 12, 31);
            assert_eq!(
                end - start + 1,
                if is_leap(year) { 366 } else { 365 },
                "{year}"
            );
            let nanos = i128::from(start) * 86_400 * NANOS_PER_SECOND;
            assert_eq!(year_of(nanos), year);
            assert_eq!(year_of(nanos - 1), year - 1, "the nanosecond before {year}");
            let last = i128::from(end) * 86_400 * NANOS_PER_SECOND;
            assert_eq!(year_of(last), year);
        }
        assert_eq!(days_from_epoch(1970, 1, 1), 0);
        assert_eq!(days_from_epoch(1969, 12, 31), -1);
        assert_eq!(days_from_epoch(2015, 10, 21), 16_729);
    }

    #[test]
    fn the_three_forms_name_the_same_instant() {
        let at = Some(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT", 2015), at);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT", 2015), at);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994", 2015), at);
        assert_eq!(parse("Sun Nov 06 08:49:37 1994", 2015), at);
        assert_eq!(parse("Wed, 31 Dec 1969 23:59:59 GMT", 2015), Some(-1));
        assert_eq!(
            parse("Thu, 31 Dec 1998 23:59:60 GMT", 2015),
            Some(915_148_800)
        );
    }

    #[test]
    fn two_digit_years_are_at_most_fifty_years_ahead() {
        assert_eq!(year_near(45, 2015), 2045);
        assert_eq!(year_near(65, 2015), 2065);
        assert_eq!(year_near(66, 2015), 1966);
        assert_eq!(year_near(80, 2045), 2080);
        assert_eq!(year_near(95, 2045), 2095);
        assert_eq!(year_near(96, 2045), 1996);
        assert_eq!(year_near(5, 2090), 2105);
        assert_eq!(year_near(40, 2090), 2140);
        assert_eq!(year_near(41, 2090), 2041);
    }

    #[test]
    fn near_misses_are_not_dates() {
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT ",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Sun Nov   6 08:49:37 1994",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov  6 08:49:37 1994 GMT",
            "Sun, 29 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov +994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(parse(text, 2015), None, "{text:?}");
        }
    }
}
