//! When a job's ticks are: a calendar expression (cron, through croner, in UTC) or a fixed
//! interval from a start time. A tick is named by its scheduled time in Unix seconds, the
//! same on every host; its jitter too is derived from the service, the job and the tick,
//! so every host waits the same and they all reach for the same tick at once.

use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A tick: its scheduled time, Unix seconds (UTC).
pub type Tick = i64;

#[derive(Debug, Clone)]
pub enum Schedule {
    Calendar { expr: String, cron: Box<croner::Cron> },
    Every { interval: i64, start: i64 },
}

impl Schedule {
    /// A cron expression: five fields (minute to weekday), or six with seconds first.
    pub fn calendar(expr: &str) -> Result<Schedule, String> {
        let cron: croner::Cron = expr.parse().map_err(|e| format!("schedule `{expr}`: {e}"))?;
        let schedule = Schedule::Calendar { expr: expr.to_owned(), cron: Box::new(cron) };
        // An expression that never matches (the 31st of February) is refused now rather
        // than found out at run time.
        if schedule.next_after(Utc::now().timestamp()).is_none() {
            return Err(format!("schedule `{expr}` never comes"));
        }
        Ok(schedule)
    }

    /// Every `interval` (whole seconds, at least one) from `start` (Unix seconds; the ticks
    /// before it do not count).
    pub fn every(interval: Duration, start: i64) -> Result<Schedule, String> {
        if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 || interval > Duration::from_secs(366 * 86400) {
            return Err("every: whole seconds, from 1 to a year".into());
        }
        let interval = i64::try_from(interval.as_secs()).map_err(|_| "every: too long".to_string())?;
        Ok(Schedule::Every { interval, start })
    }

    /// What the operator wrote, for `/status`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Calendar { expr, .. } => expr.clone(),
            Schedule::Every { interval, start } => {
                if *start == 0 {
                    format!("every {interval}s")
                } else {
                    format!("every {interval}s from {}", rfc3339(*start))
                }
            }
        }
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Tick) -> Option<Tick> {
        match self {
            Schedule::Calendar { cron, .. } => occurrence(cron, t, croner::Cron::find_next_occurrence, false),
            Schedule::Every { interval, start } => {
                if t < *start {
                    return Some(*start);
                }
                let k = t.checked_sub(*start)? / interval + 1;
                start.checked_add(k.checked_mul(*interval)?)
            }
        }
    }

    /// The last tick at or before `t`.
    pub fn at_or_before(&self, t: Tick) -> Option<Tick> {
        match self {
            Schedule::Calendar { cron, .. } => occurrence(cron, t, croner::Cron::find_previous_occurrence, true),
            Schedule::Every { interval, start } => {
                if t < *start {
                    return None;
                }
                start.checked_add(t.checked_sub(*start)? / interval * interval)
            }
        }
    }

    /// The least time between two ticks, where it is fixed (jitter must stay below it).
    pub fn shortest_gap(&self) -> Option<Duration> {
        match self {
            Schedule::Every { interval, .. } => Some(Duration::from_secs(*interval as u64)),
            // Two ticks a little apart (a calendar's gaps vary): the first few gaps.
            Schedule::Calendar { .. } => {
                let mut t = self.next_after(Utc::now().timestamp())?;
                let mut least = i64::MAX;
                for _ in 0..16 {
                    let next = self.next_after(t)?;
                    least = least.min(next - t);
                    t = next;
                }
                Some(Duration::from_secs(least as u64))
            }
        }
    }
}

/// The calendar's occurrence `find` finds from `t` (UTC seconds).
fn occurrence(
    cron: &croner::Cron,
    t: Tick,
    find: fn(&croner::Cron, &DateTime<Utc>, bool) -> Result<DateTime<Utc>, croner::errors::CronError>,
    inclusive: bool,
) -> Option<Tick> {
    let from = Utc.timestamp_opt(t, 0).single()?;
    find(cron, &from, inclusive).ok().map(|d| d.timestamp())
}

/// The jitter of `tick` of `job`: a fraction of `jitter` that every host computes alike.
pub fn jitter_of(service: &str, job: &str, tick: Tick, jitter: Duration) -> Duration {
    let ms = jitter.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(format!("{service}\0{job}\0{tick}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_le_bytes(first) % ms)
}

/// RFC 3339 in UTC (`2026-12-01T02:00:00Z`).
pub fn rfc3339(t: Tick) -> String {
    Utc.timestamp_opt(t, 0).single().map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_else(|| t.to_string())
}

/// RFC 3339 (any offset) or Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.timestamp())
        .map_err(|e| format!("`{text}` is neither RFC 3339 (2026-12-01T02:00:00Z) nor Unix seconds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_count_from_their_start() {
        let s = Schedule::every(Duration::from_secs(10), 100).unwrap();
        assert_eq!(s.next_after(50), Some(100));
        assert_eq!(s.next_after(100), Some(110));
        assert_eq!(s.next_after(109), Some(110));
        assert_eq!(s.at_or_before(99), None);
        assert_eq!(s.at_or_before(100), Some(100));
        assert_eq!(s.at_or_before(119), Some(110));
        assert!(Schedule::every(Duration::from_millis(1500), 0).is_err());
    }

    #[test]
    fn calendars_in_utc_with_optional_seconds() {
        let s = Schedule::calendar("0 2 * * *").unwrap();
        let t = parse_time("2026-12-01T01:00:00Z").unwrap();
        assert_eq!(rfc3339(s.next_after(t).unwrap()), "2026-12-01T02:00:00Z");
        assert_eq!(rfc3339(s.at_or_before(t).unwrap()), "2026-11-30T02:00:00Z");
        let every3 = Schedule::calendar("*/3 * * * * *").unwrap();
        assert_eq!(every3.next_after(t), Some(t + 3));
        assert_eq!(every3.at_or_before(t + 2), Some(t));
        assert_eq!(every3.shortest_gap(), Some(Duration::from_secs(3)));
        assert!(Schedule::calendar("0 0 31 2 *").is_err());
        assert!(Schedule::calendar("every day").is_err());
    }

    #[test]
    fn jitter_is_the_same_everywhere_and_below_its_bound() {
        let j = Duration::from_secs(60);
        let a = jitter_of("svc", "backup", 1_000_000, j);
        assert_eq!(a, jitter_of("svc", "backup", 1_000_000, j));
        assert!(a < j);
        assert_ne!(a, jitter_of("svc", "backup", 1_000_060, j));
        assert_eq!(jitter_of("svc", "backup", 5, Duration::ZERO), Duration::ZERO);
    }
}
