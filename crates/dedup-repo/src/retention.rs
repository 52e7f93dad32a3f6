//! Which backups a retention policy keeps: the newest `last`, and the newest backup of each of
//! the newest `hourly`/`daily`/`weekly`/`monthly`/`yearly` calendar periods that have one
//! (UTC; weeks are ISO weeks, Monday to Sunday), as restic's and Proxmox Backup Server's
//! `forget`/`prune` do. A backup kept by several rules lists each.

/// How many of each to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Policy {
    /// Whether the policy keeps nothing at all (refused by the jobs: a typo must not empty
    /// a repository).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// One backup's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub number: u64,
    pub created: u64,
    /// The rules that keep it (`last`, `hourly 2025-01-31T13`, ...); empty: removed.
    pub kept_by: Vec<String>,
}

/// The verdict on each backup, newest first. `backups` are (number, created seconds since
/// the Unix epoch), in any order; ties in time are broken by number.
pub fn plan(policy: &Policy, backups: &[(u64, u64)]) -> Vec<Verdict> {
    let mut sorted: Vec<(u64, u64)> = backups.to_vec();
    sorted.sort_by(|a, b| (b.1, b.0).cmp(&(a.1, a.0)));
    let mut verdicts: Vec<Verdict> =
        sorted.iter().map(|&(number, created)| Verdict { number, created, kept_by: Vec::new() }).collect();
    for v in verdicts.iter_mut().take(policy.last as usize) {
        v.kept_by.push("last".into());
    }
    let rules: [(u32, &str, fn(u64) -> (i64, String)); 5] =
        [(policy.hourly, "hourly", hour), (policy.daily, "daily", day), (policy.weekly, "weekly", week), (policy.monthly, "monthly", month), (policy.yearly, "yearly", year)];
    for (count, name, period) in rules {
        let mut seen: Option<i64> = None;
        let mut kept = 0;
        for v in verdicts.iter_mut() {
            if kept == count {
                break;
            }
            let (key, label) = period(v.created);
            if seen != Some(key) {
                // The newest backup of a period not seen yet (the list is newest first).
                seen = Some(key);
                kept += 1;
                v.kept_by.push(format!("{name} {label}"));
            }
        }
    }
    verdicts
}

fn days(secs: u64) -> i64 {
    (secs / 86_400) as i64
}

/// (year, month 1-12, day 1-31) of a day since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn hour(secs: u64) -> (i64, String) {
    let (y, m, d) = civil(days(secs));
    ((secs / 3600) as i64, format!("{y:04}-{m:02}-{d:02}T{:02}", (secs / 3600) % 24))
}

fn day(secs: u64) -> (i64, String) {
    let (y, m, d) = civil(days(secs));
    (days(secs), format!("{y:04}-{m:02}-{d:02}"))
}

/// ISO weeks: Monday to Sunday, numbered in the year that holds the week's Thursday.
fn week(secs: u64) -> (i64, String) {
    // 1970-01-01 was a Thursday: day -3 was a Monday.
    let key = (days(secs) + 3).div_euclid(7);
    let thursday = key * 7 - 3 + 3;
    let (y, _, _) = civil(thursday);
    let jan1 = days_from_civil(y, 1, 1);
    let number = (thursday - jan1) / 7 + 1;
    (key, format!("{y:04}-W{number:02}"))
}

fn month(secs: u64) -> (i64, String) {
    let (y, m, _) = civil(days(secs));
    (y * 12 + i64::from(m), format!("{y:04}-{m:02}"))
}

fn year(secs: u64) -> (i64, String) {
    let (y, _, _) = civil(days(secs));
    (y, format!("{y:04}"))
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and hour.
    fn at(y: i64, m: u32, d: u32, h: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * 86_400 + h * 3600
    }

    fn kept(policy: Policy, backups: &[(u64, u64)]) -> Vec<u64> {
        let mut kept: Vec<u64> = plan(&policy, backups).into_iter().filter(|v| !v.kept_by.is_empty()).map(|v| v.number).collect();
        kept.sort_unstable();
        kept
    }

    #[test]
    fn calendar_labels() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        // ISO weeks: 2021-01-03 (a Sunday) is in 2020-W53; 2021-01-04 starts 2021-W01;
        // 2024-12-30 (a Monday) is 2025-W01.
        assert_eq!(week(at(2021, 1, 3, 12)).1, "2020-W53");
        assert_eq!(week(at(2021, 1, 4, 0)).1, "2021-W01");
        assert_eq!(week(at(2024, 12, 30, 0)).1, "2025-W01");
        assert_eq!(week(at(2021, 1, 3, 23)).0 + 1, week(at(2021, 1, 4, 0)).0);
        assert_eq!(hour(at(2025, 1, 31, 13) + 59 * 60).1, "2025-01-31T13");
    }

    #[test]
    fn the_newest_of_each_period() {
        // Four backups a day (0h, 6h, 12h, 18h) for 40 days from 2025-01-20 (a Monday).
        let mut backups = Vec::new();
        for day in 0..40u64 {
            for (k, h) in [0u64, 6, 12, 18].into_iter().enumerate() {
                backups.push((day * 4 + k as u64 + 1, at(2025, 1, 20, 0) + day * 86_400 + h * 3600));
            }
        }
        let newest = 160;
        assert_eq!(kept(Policy { last: 3, ..Policy::default() }, &backups), vec![158, 159, 160]);
        // Daily: the 18h backup of each of the last 7 days.
        assert_eq!(kept(Policy { daily: 7, ..Policy::default() }, &backups), (0..7).map(|d| newest - 4 * d).rev().collect::<Vec<_>>());
        // Weekly: the newest of each ISO week; day 39 is a Friday (2025-02-28), so the
        // newest week is partial; weeks start on days 35, 28, 21.
        assert_eq!(kept(Policy { weekly: 3, ..Policy::default() }, &backups), vec![28 * 4, 35 * 4, 160]);
        // Monthly: the last of January (day 11) and the newest of February.
        assert_eq!(kept(Policy { monthly: 5, ..Policy::default() }, &backups), vec![12 * 4, 160]);
        assert_eq!(kept(Policy { yearly: 1, ..Policy::default() }, &backups), vec![160]);
        let both = plan(&Policy { last: 1, daily: 1, ..Policy::default() }, &backups);
        assert_eq!(both[0].kept_by, vec!["last".to_string(), "daily 2025-02-28".to_string()]);
        assert!(both[1].kept_by.is_empty());
        assert!(Policy::default().is_empty());
    }
}
