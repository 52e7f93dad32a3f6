//! The rotation policy as pure functions of snapshot names and a time: which snapshots to
//! take and which have expired. Nothing here calls RBD, so it is unit-tested natively.
//!
//! Names are `PREFIX_YYYY-MM-DD_HH:MM:SS_PERIOD`, the time in UTC, as Sanoid names them.
//! Each period is rotated on its own:
//!
//! - **Taking**: for each period with a count above 0, a snapshot is taken unless one of that
//!   period already falls in the bucket of `now`: the same hour, UTC day, week (Monday to
//!   Sunday, as ISO 8601 weeks), month or year.
//! - **Expiring**: of each period's snapshots at or before `now` (newly taken ones included),
//!   the newest `keep` by the time in their names stay and the older ones expire. A count of
//!   0 expires every snapshot of that period, as Sanoid does. Sanoid also waits until a
//!   snapshot is `keep` periods old; here the count alone decides, so that a history with
//!   gaps keeps `keep` snapshots rather than fewer.
//! - Snapshots named after `now` are kept and not counted (a clock that went back, or a
//!   `--now` in the past, must not cost real snapshots). Names that do not parse under the
//!   prefix, with a valid date and a known period, are never touched.
//!
//! Whether an expired snapshot is really removed (it is not while it is protected or has
//! clones) is decided by the job, which asks the image.
//!
//! Dates are done by hand with Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (proleptic Gregorian calendar, UTC only): about 40 lines, where chrono would add its
//! formatting and parsing machinery and time zones to the guest for the same few functions.

use std::fmt::Write;

/// Seconds since 1970-01-01T00:00:00Z.
pub type Time = i64;

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// A rotation period. The order is the order of [`Period::ALL`] and of the job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub const ALL: [Period; 5] = [Period::Hourly, Period::Daily, Period::Weekly, Period::Monthly, Period::Yearly];

    /// The suffix of snapshot names, and the option name without `--`.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    pub fn from_name(name: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// A number naming the bucket `t` falls in: two times share it exactly when they fall in
    /// the same UTC hour, day, Monday-to-Sunday week, month or year.
    pub fn bucket(self, t: Time) -> i64 {
        let days = t.div_euclid(DAY);
        match self {
            Period::Hourly => t.div_euclid(HOUR),
            Period::Daily => days,
            // 1970-01-01 was a Thursday: day 4 is the first Monday, and starts week 1.
            Period::Weekly => (days + 3).div_euclid(7),
            Period::Monthly => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + i64::from(m) - 1
            }
            Period::Yearly => civil_from_days(days).0,
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March is 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The date of a day number (Hinnant's `civil_from_days`): (year, month 1..=12, day 1..=31).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A UTC date and time, as written in names and `--now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn of(t: Time) -> Civil {
        let (year, month, day) = civil_from_days(t.div_euclid(DAY));
        let secs = t.rem_euclid(DAY) as u32;
        Civil { year, month, day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60 }
    }

    /// The time, or `None` if a field is out of range (February 30th, 24:00, ...).
    fn time(self) -> Option<Time> {
        let valid = (0..=9999).contains(&self.year)
            && (1..=12).contains(&self.month)
            && (1..=days_in_month(self.year, self.month)).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        valid.then(|| {
            days_from_civil(self.year, self.month, self.day) * DAY
                + i64::from(self.hour) * HOUR
                + i64::from(self.minute) * MINUTE
                + i64::from(self.second)
        })
    }
}

/// `2026-11-25_01:00:00`, the stamp in snapshot names.
pub fn format_stamp(t: Time) -> String {
    let c = Civil::of(t);
    let mut s = String::with_capacity(19);
    let _ = write!(s, "{:04}-{:02}-{:02}_{:02}:{:02}:{:02}", c.year, c.month, c.day, c.hour, c.minute, c.second);
    s
}

/// `2026-11-25T01:00:00Z`.
pub fn format_rfc3339(t: Time) -> String {
    format_stamp(t).replacen('_', "T", 1) + "Z"
}

/// A fixed-width run of ASCII digits, or `None`.
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD?HH:MM:SS` with the given separator between date and time, exactly 19 bytes.
fn parse_stamp(s: &str, separators: &[u8]) -> Option<Time> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !separators.contains(&b[10])
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    Civil {
        year: i64::from(digits(&s[0..4])?),
        month: digits(&s[5..7])?,
        day: digits(&s[8..10])?,
        hour: digits(&s[11..13])?,
        minute: digits(&s[14..16])?,
        second: digits(&s[17..19])?,
    }
    .time()
}

/// A time given on the command line: Unix seconds (`1795568400`) or RFC 3339
/// (`2026-11-25T01:00:00Z`; fractions of a second are dropped, and an offset such as
/// `+02:00` is converted to UTC).
pub fn parse_time(s: &str) -> Result<Time, String> {
    let bad = || {
        format!("`{s}` is not a time: give RFC 3339 (like 2026-11-25T01:00:00Z) or Unix seconds (like 1795568400)")
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let t: Time = s.parse().map_err(|_| bad())?;
        // Names have four-digit years.
        return if t < days_from_civil(10_000, 1, 1) * DAY { Ok(t) } else { Err(bad()) };
    }
    if s.len() < 20 || !s.is_char_boundary(19) {
        return Err(bad());
    }
    let t = parse_stamp(&s[..19], b"Tt ").ok_or_else(bad)?;
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &fraction[n..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(std::str::from_utf8(&[*h1, *h2]).map_err(|_| bad())?).ok_or_else(bad)?;
            let minutes = digits(std::str::from_utf8(&[*m1, *m2]).map_err(|_| bad())?).ok_or_else(bad)?;
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            let offset = i64::from(hours) * HOUR + i64::from(minutes) * MINUTE;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return Err(bad()),
    };
    // Local time minus its offset is UTC.
    Ok(t - offset)
}

/// How many snapshots of each period to keep, and under which prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub prefix: String,
    /// Indexed by [`Period`], in the order of [`Period::ALL`].
    pub keep: [u32; 5],
    /// Take the snapshots that are due (`--no-take` turns it off: prune only).
    pub take: bool,
}

/// The defaults of Sanoid's `production` template: 36 hourly, 30 daily, 3 monthly.
pub const DEFAULT_KEEP: [u32; 5] = [36, 30, 0, 3, 0];
pub const DEFAULT_PREFIX: &str = "autosnap";

impl Default for Policy {
    fn default() -> Self {
        Policy { prefix: DEFAULT_PREFIX.to_owned(), keep: DEFAULT_KEEP, take: true }
    }
}

/// What to do with one image's snapshots. Every list is oldest first within a period, the
/// periods in the order of [`Period::ALL`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Snapshots to take, all named after `now`.
    pub create: Vec<String>,
    /// Snapshots of ours that stay: the newest `keep` of each period, new ones included.
    pub keep: Vec<String>,
    /// Snapshots of ours that have expired: to remove unless protected or cloned.
    pub expire: Vec<String>,
    /// Snapshots of ours named after `now`: kept, and not counted.
    pub future: Vec<String>,
    /// Snapshots whose names are not ours: never touched.
    pub foreign: Vec<String>,
}

impl Policy {
    pub fn keep_of(&self, period: Period) -> u32 {
        self.keep[period.index()]
    }

    /// `PREFIX_YYYY-MM-DD_HH:MM:SS_PERIOD`.
    pub fn snapshot_name(&self, t: Time, period: Period) -> String {
        format!("{}_{}_{}", self.prefix, format_stamp(t), period.name())
    }

    /// The time and period of one of our snapshot names; `None` for any other name.
    pub fn parse_name(&self, name: &str) -> Option<(Time, Period)> {
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix('_')?;
        if rest.len() < 21 || !rest.is_char_boundary(19) || rest.as_bytes()[19] != b'_' {
            return None;
        }
        let t = parse_stamp(&rest[..19], b"_")?;
        Some((t, Period::from_name(&rest[20..])?))
    }

    /// Plan the rotation of an image that has the snapshots `existing`, at time `now`.
    pub fn plan(&self, existing: &[String], now: Time) -> Plan {
        let mut plan = Plan::default();
        let mut ours: Vec<(Time, Period, String)> = Vec::new();
        for name in existing {
            match self.parse_name(name) {
                Some((t, period)) => ours.push((t, period, name.clone())),
                None => plan.foreign.push(name.clone()),
            }
        }
        if self.take {
            for period in Period::ALL {
                let due = self.keep_of(period) > 0
                    && !ours.iter().any(|(t, p, _)| *p == period && period.bucket(*t) == period.bucket(now));
                if due {
                    // Not in `existing`: a snapshot of that name would be in the bucket.
                    let name = self.snapshot_name(now, period);
                    plan.create.push(name.clone());
                    ours.push((now, period, name));
                }
            }
        }
        for period in Period::ALL {
            let mut past: Vec<&(Time, Period, String)> = ours.iter().filter(|(t, p, _)| *p == period && *t <= now).collect();
            // Oldest first; the name breaks ties so that the plan does not depend on the listing order.
            past.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
            let expired = past.len().saturating_sub(self.keep_of(period) as usize);
            plan.expire.extend(past[..expired].iter().map(|s| s.2.clone()));
            plan.keep.extend(past[expired..].iter().map(|s| s.2.clone()));
            let mut future: Vec<&(Time, Period, String)> = ours.iter().filter(|(t, p, _)| *p == period && *t > now).collect();
            future.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
            plan.future.extend(future.into_iter().map(|s| s.2.clone()));
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        parse_time(s).unwrap()
    }

    #[test]
    fn civil_round_trips_over_four_centuries_and_matches_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        let mut expected = (1900, 1, 1);
        for days in days_from_civil(1900, 1, 1)..days_from_civil(2300, 1, 1) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), days);
            // The next date, counted the slow way.
            expected = if expected.2 < days_in_month(expected.0, expected.1) {
                (expected.0, expected.1, expected.2 + 1)
            } else if expected.1 < 12 {
                (expected.0, expected.1 + 1, 1)
            } else {
                (expected.0 + 1, 1, 1)
            };
        }
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(at("1970-01-01T00:00:00Z"), 0);
        assert_eq!(at("2026-11-25T01:00:00Z"), 1_795_568_400);
        assert_eq!(at("1795568400"), 1_795_568_400);
        assert_eq!(at("2026-11-25t01:00:00z"), 1_795_568_400);
        assert_eq!(at("2026-11-25 01:00:00Z"), 1_795_568_400);
        assert_eq!(at("2026-11-25T01:00:00.999Z"), 1_795_568_400);
        assert_eq!(at("2026-11-25T03:30:00+02:30"), 1_795_568_400);
        assert_eq!(at("2026-11-24T23:00:00-02:00"), 1_795_568_400);
        for bad in [
            "", "now", "-5", "2026-11-25", "2026-11-25T01:00:00", "2026-02-29T00:00:00Z", "2026-11-25T24:00:00Z",
            "2026-11-25T01:60:00Z", "2026-13-01T00:00:00Z", "2026-11-25T01:00:00+2:00", "2026-11-25T01:00:00.Z",
            "2026-1-25T01:00:00Z", "99999999999999999999", "253402300800", "2026-11-25T01:00:00Zjunk",
            "2026-11-25T01:00:00é", "+026-11-25T01:00:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(format_rfc3339(1_795_568_400), "2026-11-25T01:00:00Z");
    }

    #[test]
    fn names_parse_only_under_the_prefix_with_a_valid_stamp_and_period() {
        let policy = Policy::default();
        assert_eq!(policy.parse_name("autosnap_2026-11-25_01:00:00_hourly"), Some((1_795_568_400, Period::Hourly)));
        assert_eq!(policy.snapshot_name(1_795_568_400, Period::Monthly), "autosnap_2026-11-25_01:00:00_monthly");
        for foreign in [
            "autosnap", "autosnap_", "manual", "autosnap-2026-11-25_01:00:00_hourly", "autosnapx_2026-11-25_01:00:00_hourly",
            "other_2026-11-25_01:00:00_hourly", "autosnap_2026-11-25_01:00:00_fortnightly", "autosnap_2026-11-25_01:00:00_hourly_",
            "autosnap_2026-11-25T01:00:00_hourly", "autosnap_2026-02-30_01:00:00_daily", "autosnap_2026-11-25_01:00_hourly",
            "autosnap_2026-11-25_01:00:00_", "autosnap_2026-11-25_01:00:00",
        ] {
            assert_eq!(policy.parse_name(foreign), None, "{foreign}");
        }
        let odd = Policy { prefix: "a_b".into(), ..Policy::default() };
        assert_eq!(odd.parse_name("a_b_2026-11-25_01:00:00_yearly"), Some((1_795_568_400, Period::Yearly)));
        assert_eq!(odd.parse_name("a_2026-11-25_01:00:00_yearly"), None);
    }

    #[test]
    fn buckets_are_utc_hours_days_monday_weeks_months_and_years() {
        let same = |p: Period, a: &str, b: &str| p.bucket(at(a)) == p.bucket(at(b));
        assert!(same(Period::Hourly, "2026-11-25T01:00:00Z", "2026-11-25T01:59:59Z"));
        assert!(!same(Period::Hourly, "2026-11-25T01:59:59Z", "2026-11-25T02:00:00Z"));
        assert!(same(Period::Daily, "2026-11-25T00:00:00Z", "2026-11-25T23:59:59Z"));
        assert!(!same(Period::Daily, "2026-11-25T23:59:59Z", "2026-11-26T00:00:00Z"));
        // 2026-11-23 is a Monday; 2026-12-28 to 2027-01-03 is one week across the new year.
        assert!(same(Period::Weekly, "2026-11-23T00:00:00Z", "2026-11-29T23:59:59Z"));
        assert!(!same(Period::Weekly, "2026-11-22T23:59:59Z", "2026-11-23T00:00:00Z"));
        assert!(same(Period::Weekly, "2026-12-28T00:00:00Z", "2027-01-03T23:59:59Z"));
        assert!(!same(Period::Weekly, "2027-01-03T23:59:59Z", "2027-01-04T00:00:00Z"));
        assert!(same(Period::Weekly, "1970-01-01T00:00:00Z", "1969-12-29T00:00:00Z"));
        assert!(same(Period::Monthly, "2024-02-01T00:00:00Z", "2024-02-29T23:59:59Z"));
        assert!(!same(Period::Monthly, "2024-02-29T23:59:59Z", "2024-03-01T00:00:00Z"));
        assert!(!same(Period::Monthly, "2025-12-31T23:59:59Z", "2026-01-01T00:00:00Z"));
        assert!(same(Period::Yearly, "2026-01-01T00:00:00Z", "2026-12-31T23:59:59Z"));
        assert!(!same(Period::Yearly, "2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"));
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_empty_image_gets_one_snapshot_per_counted_period() {
        let policy = Policy { keep: [2, 1, 0, 1, 0], ..Policy::default() };
        let plan = policy.plan(&[], at("2026-11-25T01:00:00Z"));
        let expected = names(&[
            "autosnap_2026-11-25_01:00:00_hourly",
            "autosnap_2026-11-25_01:00:00_daily",
            "autosnap_2026-11-25_01:00:00_monthly",
        ]);
        assert_eq!(plan.create, expected);
        assert_eq!(plan.keep, expected);
        assert!(plan.expire.is_empty() && plan.future.is_empty() && plan.foreign.is_empty());
    }

    #[test]
    fn a_snapshot_in_the_current_bucket_is_not_taken_again() {
        let policy = Policy { keep: [2, 2, 2, 2, 2], ..Policy::default() };
        let existing = names(&[
            "autosnap_2026-11-25_01:10:00_hourly",  // same hour
            "autosnap_2026-11-25_00:00:00_daily",   // same day
            "autosnap_2026-11-23_00:00:00_weekly",  // Monday of the same week
            "autosnap_2026-10-31_23:59:59_monthly", // the month before
            "autosnap_2026-01-01_00:00:00_yearly",  // same year
        ]);
        let plan = policy.plan(&existing, at("2026-11-25T01:30:00Z"));
        assert_eq!(plan.create, names(&["autosnap_2026-11-25_01:30:00_monthly"]));
        assert!(plan.expire.is_empty());
    }

    #[test]
    fn the_newest_keep_of_each_period_stay_and_the_older_expire() {
        let policy = Policy { keep: [2, 1, 0, 0, 0], take: false, ..Policy::default() };
        let existing = names(&[
            "autosnap_2026-11-25_00:00:00_hourly",
            "autosnap_2026-11-24_22:00:00_hourly",
            "autosnap_2026-11-24_23:00:00_hourly",
            "autosnap_2026-11-23_00:00:00_daily",
            "autosnap_2026-11-24_00:00:00_daily",
            "autosnap_2026-11-23_00:00:00_weekly",
            "manual-1",
        ]);
        let plan = policy.plan(&existing, at("2026-11-25T01:00:00Z"));
        assert!(plan.create.is_empty());
        assert_eq!(
            plan.keep,
            names(&["autosnap_2026-11-24_23:00:00_hourly", "autosnap_2026-11-25_00:00:00_hourly", "autosnap_2026-11-24_00:00:00_daily"])
        );
        // Keep 0 expires the whole period.
        assert_eq!(
            plan.expire,
            names(&["autosnap_2026-11-24_22:00:00_hourly", "autosnap_2026-11-23_00:00:00_daily", "autosnap_2026-11-23_00:00:00_weekly"])
        );
        assert_eq!(plan.foreign, names(&["manual-1"]));
    }

    #[test]
    fn a_new_snapshot_counts_and_pushes_the_oldest_out() {
        let policy = Policy { keep: [2, 0, 0, 0, 0], ..Policy::default() };
        let existing = names(&["autosnap_2026-11-24_23:00:00_hourly", "autosnap_2026-11-25_00:00:00_hourly"]);
        let plan = policy.plan(&existing, at("2026-11-25T01:00:00Z"));
        assert_eq!(plan.create, names(&["autosnap_2026-11-25_01:00:00_hourly"]));
        assert_eq!(plan.expire, names(&["autosnap_2026-11-24_23:00:00_hourly"]));
    }

    #[test]
    fn snapshots_in_the_future_are_kept_and_not_counted() {
        let policy = Policy { keep: [1, 0, 0, 0, 0], take: false, ..Policy::default() };
        let existing = names(&[
            "autosnap_2026-11-25_05:00:00_hourly",
            "autosnap_2026-11-25_00:00:00_hourly",
            "autosnap_2026-11-24_23:00:00_hourly",
            "autosnap_2027-01-01_00:00:00_daily",
        ]);
        let plan = policy.plan(&existing, at("2026-11-25T01:00:00Z"));
        assert_eq!(plan.keep, names(&["autosnap_2026-11-25_00:00:00_hourly"]));
        assert_eq!(plan.expire, names(&["autosnap_2026-11-24_23:00:00_hourly"]));
        assert_eq!(plan.future, names(&["autosnap_2026-11-25_05:00:00_hourly", "autosnap_2027-01-01_00:00:00_daily"]));
    }

    #[test]
    fn a_future_snapshot_in_the_current_bucket_still_counts_as_taken() {
        let policy = Policy { keep: [3, 0, 0, 0, 0], ..Policy::default() };
        let plan = policy.plan(&names(&["autosnap_2026-11-25_01:30:00_hourly"]), at("2026-11-25T01:00:00Z"));
        assert!(plan.create.is_empty());
        assert_eq!(plan.future, names(&["autosnap_2026-11-25_01:30:00_hourly"]));
    }

    #[test]
    fn no_take_only_prunes() {
        let policy = Policy { keep: [1, 1, 1, 1, 1], take: false, ..Policy::default() };
        let plan = policy.plan(&[], at("2026-11-25T01:00:00Z"));
        assert_eq!(plan, Plan::default());
    }
}
