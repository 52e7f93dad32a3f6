//! The command line, parsed by hand (clap would triple the size of the guest for a dozen
//! options).

use crate::policy::{parse_time, Period, Policy, Time, DEFAULT_KEEP, DEFAULT_PREFIX};

pub const USAGE: &str = "\
usage: snap-rotate POOL [IMAGE...] [OPTIONS]
Take and prune Sanoid-style snapshots PREFIX_YYYY-MM-DD_HH:MM:SS_PERIOD (UTC) of the named
images, or of every image in POOL if none is named.
  --prefix NAME    snapshot name prefix (default autosnap)
  --hourly N       hourly snapshots to keep (default 36)
  --daily N        daily snapshots to keep (default 30)
  --weekly N       weekly snapshots to keep, weeks from Monday (default 0)
  --monthly N      monthly snapshots to keep (default 3)
  --yearly N       yearly snapshots to keep (default 0)
                   0 takes none of that period and removes those there are
  --now TIME       the time to rotate at: RFC 3339 (2026-11-25T01:00:00Z) or Unix seconds
                   (default: the clock)
  --dry-run        print what would be created and removed, and change nothing
  --no-take        prune only
  --help           print this
  --               the arguments after it are image names, even if they start with -";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Rotate(Options),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub pool: String,
    /// Empty for every image of the pool.
    pub images: Vec<String>,
    pub policy: Policy,
    /// `None` for the clock.
    pub now: Option<Time>,
    pub dry_run: bool,
}

fn usage_error(problem: String) -> String {
    format!("{problem}\n{USAGE}")
}

/// Parse the job's arguments. Options may come anywhere; `--opt VALUE` and `--opt=VALUE`
/// are the same; after `--` every argument is an image name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut positional: Vec<String> = Vec::new();
    let mut prefix = DEFAULT_PREFIX.to_owned();
    let mut keep = DEFAULT_KEEP;
    let mut now = None;
    let mut dry_run = false;
    let mut take = true;

    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            positional.extend(args.by_ref().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            positional.push(arg.clone());
            continue;
        }
        let (option, inline) = match arg.split_once('=') {
            Some((option, value)) => (option, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = |inline: Option<String>| -> Result<String, String> {
            match inline {
                Some(v) => Ok(v),
                None => args.next().cloned().ok_or_else(|| usage_error(format!("{option} needs a value"))),
            }
        };
        match option {
            "--help" | "-h" => return Ok(Command::Help),
            "--dry-run" | "--no-take" if inline.is_some() => {
                return Err(usage_error(format!("{option} takes no value")));
            }
            "--dry-run" => dry_run = true,
            "--no-take" => take = false,
            "--prefix" => {
                prefix = value(inline)?;
                if prefix.is_empty() {
                    return Err(usage_error("--prefix must not be empty".into()));
                }
            }
            "--now" => now = Some(parse_time(&value(inline)?).map_err(|e| usage_error(format!("--now: {e}")))?),
            _ => {
                let Some(period) = option.strip_prefix("--").and_then(Period::from_name) else {
                    return Err(usage_error(format!("unknown option {option}")));
                };
                let n = value(inline)?;
                keep[period as usize] = n
                    .parse()
                    .ok()
                    .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| usage_error(format!("{option}: `{n}` is not a count (a whole number, 0 or more)")))?;
            }
        }
    }

    let mut positional = positional.into_iter();
    let Some(pool) = positional.next() else {
        return Err(usage_error("no pool given".into()));
    };
    let images: Vec<String> = positional.collect();
    if let Some(empty) = images.iter().find(|i| i.is_empty()) {
        return Err(usage_error(format!("an empty image name ({empty:?})")));
    }
    Ok(Command::Rotate(Options { pool, images, policy: Policy { prefix, keep, take }, now, dry_run }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn options(args: &[&str]) -> Options {
        match parse_strs(args) {
            Ok(Command::Rotate(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_sanoids_production_template() {
        let o = options(&["rbd"]);
        assert_eq!(o.pool, "rbd");
        assert!(o.images.is_empty());
        assert_eq!(o.policy, Policy { prefix: "autosnap".into(), keep: [36, 30, 0, 3, 0], take: true });
        assert_eq!(o.now, None);
        assert!(!o.dry_run);
    }

    #[test]
    fn options_go_anywhere_in_either_form() {
        let o = options(&[
            "--hourly", "5", "rbd", "a", "--daily=7", "b", "--weekly", "0", "--monthly=2", "--yearly", "1", "--prefix", "snap",
            "--now", "2026-11-25T01:00:00Z", "--dry-run", "--no-take", "--", "--c",
        ]);
        assert_eq!(o.images, ["a", "b", "--c"]);
        assert_eq!(o.policy, Policy { prefix: "snap".into(), keep: [5, 7, 0, 2, 1], take: false });
        assert_eq!(o.now, Some(1_795_568_400));
        assert!(o.dry_run);
        assert_eq!(parse_strs(&["rbd", "--help"]), Ok(Command::Help));
    }

    #[test]
    fn mistakes_are_usage_errors_that_say_what_is_wrong() {
        for (args, says) in [
            (&["rbd", "--bogus"][..], "unknown option --bogus"),
            (&["rbd", "--hourly", "x"], "--hourly: `x` is not a count"),
            (&["rbd", "--daily=-1"], "--daily: `-1` is not a count"),
            (&["rbd", "--weekly", "+3"], "--weekly: `+3` is not a count"),
            (&["rbd", "--monthly", "99999999999"], "--monthly: `99999999999` is not a count"),
            (&["rbd", "--yearly"], "--yearly needs a value"),
            (&["rbd", "--now", "yesterday"], "--now: `yesterday` is not a time"),
            (&["rbd", "--prefix="], "--prefix must not be empty"),
            (&["rbd", "--dry-run=yes"], "--dry-run takes no value"),
            (&[], "no pool given"),
            (&["--hourly", "3"], "no pool given"),
            (&["rbd", ""], "an empty image name"),
        ] {
            let err = parse_strs(args).expect_err(&format!("{args:?} parsed"));
            assert!(err.starts_with(says), "{args:?}: {err}");
            assert!(err.contains("usage: snap-rotate POOL"), "{args:?}: {err}");
        }
    }
}
