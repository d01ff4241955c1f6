//! Times as people write and read them: ISO-8601 in local time (with its
//! offset) or UTC, and `--since`/`--until` as a duration back from now or
//! an ISO-8601 time.
//!
//! Local time goes through libc (`localtime_r`, `mktime`), which reads the
//! system's zone (`TZ`, `/etc/localtime`) as `date` does; UTC is computed
//! here, so `--utc` and times written with `Z` or an offset do not depend on
//! the zone database.

use sandglass_core::time::{self, days_from_civil};
use sandglass_core::units::HumanDuration;
use std::fmt;

/// How times are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeStyle {
    /// ISO-8601 in the local zone with its offset: `2026-12-02T18:04:05+01:00`.
    Local,
    /// ISO-8601 in UTC: `2026-12-02T17:04:05Z`.
    Utc,
    /// Unix milliseconds, as stored.
    Epoch,
}

impl TimeStyle {
    /// `time_ms` in this style.
    pub fn format(self, time_ms: u64) -> String {
        match self {
            TimeStyle::Local => local(time_ms),
            TimeStyle::Utc => utc(time_ms),
            TimeStyle::Epoch => time_ms.to_string(),
        }
    }
}

/// One end of a range as written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// This long before now (`10m`, `7d`).
    Ago(u64),
    /// This Unix time in ms.
    At(u64),
}

impl TimeArg {
    /// The Unix time in ms this stands for, as of `now_ms`.
    pub fn resolve(self, now_ms: u64) -> u64 {
        match self {
            TimeArg::Ago(ms) => now_ms.saturating_sub(ms),
            TimeArg::At(ms) => ms,
        }
    }
}

impl std::str::FromStr for TimeArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(HumanDuration(d)) = text.parse() {
            return Ok(TimeArg::Ago(d.as_millis().try_into().unwrap_or(u64::MAX)));
        }
        parse_iso(text).map(TimeArg::At).ok_or_else(|| {
            format!(
                "invalid time {text:?}: write a duration back from now (\"10m\", \"2h\", \"7d\", \"2w\") \
                 or an ISO-8601 time (\"2026-12-02T18:04:05+01:00\", \"2026-12-02T17:04Z\", \
                 \"2026-12-02 18:04\" in local time, \"2026-12-02\")"
            )
        })
    }
}

/// Civil date and time of day, the fields ISO-8601 writes.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl fmt::Display for Civil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// `2026-12-02T17:04:05Z` (to the second: the exact ms is in `time_ms`).
pub fn utc(time_ms: u64) -> String {
    time::utc_iso(time_ms)
}

/// `2026-12-02T18:04:05+01:00` in the local zone (UTC if libc cannot say).
pub fn local(time_ms: u64) -> String {
    let secs = (time_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r only writes the struct it is given; an all-zero
    // `tm` is a valid value of it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return utc(time_ms);
    }
    let civil = Civil {
        year: i64::from(tm.tm_year) + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
    };
    let offset = tm.tm_gmtoff;
    let sign = if offset < 0 { '-' } else { '+' };
    let minutes = offset.abs() / 60;
    format!("{civil}{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A fixed number of ASCII digits at the front of `text`, and the rest.
fn digits(text: &str, n: usize) -> Option<(u32, &str)> {
    let head = text.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &text[n..]))
}

/// `Z`, `+01:00`, `+0100`, `-05` as seconds east of UTC; `None` inside for
/// no zone (local time); `Err` for anything else.
fn zone(text: &str) -> Result<Option<i64>, ()> {
    let sign = match text.chars().next() {
        None => return Ok(None),
        Some('Z' | 'z') if text.len() == 1 => return Ok(Some(0)),
        Some('+') => 1,
        Some('-') => -1,
        _ => return Err(()),
    };
    let (hours, rest) = digits(&text[1..], 2).ok_or(())?;
    let rest = rest.strip_prefix(':').unwrap_or(rest);
    let (minutes, rest) = if rest.is_empty() {
        (0, rest)
    } else {
        digits(rest, 2).ok_or(())?
    };
    if !rest.is_empty() || hours > 23 || minutes > 59 {
        return Err(());
    }
    Ok(Some(sign * i64::from(hours * 3600 + minutes * 60)))
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH[:MM]]` as Unix ms. Without a
/// zone the time is local, as a person at this host means it.
pub fn parse_iso(text: &str) -> Option<u64> {
    let text = text.trim();
    let (year, rest) = digits(text, 4)?;
    let (month, rest) = digits(rest.strip_prefix('-')?, 2)?;
    let (day, mut rest) = digits(rest.strip_prefix('-')?, 2)?;
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    if let Some(time) = rest.strip_prefix(['T', 't', ' ']) {
        (hour, rest) = digits(time, 2)?;
        (minute, rest) = digits(rest.strip_prefix(':')?, 2)?;
        if let Some(s) = rest.strip_prefix(':') {
            (second, rest) = digits(s, 2)?;
            if let Some(fraction) = rest.strip_prefix(['.', ',']) {
                let n = fraction
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(fraction.len());
                if n == 0 {
                    return None;
                }
                millis = format!("{:0<3}", &fraction[..n.min(3)]).parse().ok()?;
                rest = &fraction[n..];
            }
        }
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let civil = Civil {
        year,
        month,
        day,
        hour,
        minute,
        second,
    };
    let secs = match zone(rest).ok()? {
        Some(offset) => utc_seconds(&civil) - offset,
        None => local_seconds(&civil)?,
    };
    u64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(millis)
}

fn utc_seconds(c: &Civil) -> i64 {
    days_from_civil(c.year, c.month, c.day) * 86_400
        + i64::from(c.hour * 3600 + c.minute * 60 + c.second)
}

/// The Unix time of a local civil time (`mktime` picks the zone's offset,
/// daylight saving included).
fn local_seconds(c: &Civil) -> Option<i64> {
    // SAFETY: as in `local`; mktime reads and normalises the struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = (c.year - 1900) as libc::c_int;
    tm.tm_mon = c.month as libc::c_int - 1;
    tm.tm_mday = c.day as libc::c_int;
    tm.tm_hour = c.hour as libc::c_int;
    tm.tm_min = c.minute as libc::c_int;
    tm.tm_sec = c.second as libc::c_int;
    tm.tm_isdst = -1;
    let secs = unsafe { libc::mktime(&mut tm) };
    // time_t is i64 here but i32 on some targets: the conversion is not
    // useless everywhere.
    #[allow(clippy::useless_conversion)]
    (secs != -1).then_some(i64::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-02T17:04:05.250Z
    const T: u64 = 1_796_231_045_250;

    #[test]
    fn utc_is_iso_8601_with_z() {
        assert_eq!(utc(T), "2026-12-02T17:04:05Z");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn local_time_carries_its_offset_and_reads_back() {
        let text = local(T);
        assert_eq!(text.len(), "2026-12-02T18:04:05+01:00".len(), "{text}");
        assert!(text[19..].starts_with(['+', '-']), "{text}");
        assert_eq!(parse_iso(&text), Some(T / 1000 * 1000), "{text}");
        assert_eq!(TimeStyle::Epoch.format(T), T.to_string());
    }

    #[test]
    fn iso_times_with_a_zone_parse_exactly() {
        let at = |s| parse_iso(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(at("2026-12-02T17:04:05.25Z"), T);
        assert_eq!(at("2026-12-02T18:04:05.250+01:00"), T);
        assert_eq!(at("2026-12-02t12:04:05,250-0500"), T);
        assert_eq!(at("2026-12-02T19:04:05.250+02"), T);
        assert_eq!(at("2026-12-02T17:04Z"), T - 5_250);
        assert_eq!(at("1970-01-01T00:00:00Z"), 0);
    }

    #[test]
    fn iso_times_without_a_zone_are_local() {
        let midnight = parse_iso("2026-12-02").unwrap();
        assert_eq!(local(midnight)[..19], *"2026-12-02T00:00:00");
        let evening = parse_iso("2026-12-02 18:04:05").unwrap();
        assert_eq!(local(evening)[..19], *"2026-12-02T18:04:05");
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2026-13-01",
            "2026-02-29",
            "2026-12-02T24:00",
            "2026-12-02T18",
            "2026-12-02T18:04:05.",
            "2026-12-02T18:04+1",
            "2026-12-02T18:04 UTC",
            "1969-12-31T23:59:59Z",
            "26-12-02",
            "yesterday",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad:?}");
        }
        assert_eq!(parse_iso("2028-02-29T00:00Z"), Some(1_835_395_200_000));
    }

    #[test]
    fn range_ends_are_durations_back_from_now_or_times() {
        let now = T;
        let arg = |s: &str| s.parse::<TimeArg>().unwrap().resolve(now);
        assert_eq!(arg("7d"), now - 7 * 86_400_000);
        assert_eq!(arg("2w"), now - 14 * 86_400_000);
        assert_eq!(arg("90s"), now - 90_000);
        assert_eq!(arg("2026-12-02T17:04:05Z"), T - 250);
        assert_eq!(arg("100000w"), 0, "before 1970 is 1970");
        let error = "2026-12-32".parse::<TimeArg>().unwrap_err();
        assert!(
            error.contains("\"2026-12-32\"") && error.contains("7d"),
            "{error}"
        );
    }
}
