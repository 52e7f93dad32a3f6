//! Which tick a job's task goes for: the latest whose time (with its jitter) has come, and
//! at start, which of the ticks before it count as missed.

use super::claim::{Status, TickState};
use super::config::{JobSpec, Missed};
use super::schedule::{jitter_of, Tick};

/// The latest tick of `spec` whose time, with its jitter, has come by `now`.
pub fn latest_fired(service: &str, spec: &JobSpec, now: f64) -> Option<Tick> {
    let t = spec.schedule.at_or_before(now.floor() as i64)?;
    if fire_time(service, spec, t) <= now {
        Some(t)
    } else {
        // Jitter is shorter than the gap between ticks: the one before has fired.
        spec.schedule.at_or_before(t.checked_sub(1)?)
    }
}

/// When `tick` of `spec` fires (Unix seconds).
pub fn fire_time(service: &str, spec: &JobSpec, tick: Tick) -> f64 {
    tick as f64 + jitter_of(service, &spec.name, tick, spec.jitter).as_secs_f64()
}

/// The tick a job's task counts as dealt with when it starts: it goes on with the ticks
/// after it. `state` is the job's lease state (the last tick any process claimed), `due`
/// the latest tick that has fired.
///
/// - Never claimed anywhere: a new job misses nothing; it starts with the next tick.
/// - A tick left `running` may be its holder's that died: it stays open to take over.
/// - `run-once`: a due tick later than the last claimed one runs at start (once, however
///   many came meanwhile); `skip`: it does not.
pub fn start_tick(state: Option<&TickState>, missed: Missed, due: Option<Tick>) -> Tick {
    let due = due.unwrap_or(i64::MIN);
    let Some(state) = state else { return due };
    if state.status == Status::Running {
        let open = state.tick.saturating_sub(1);
        return match missed {
            Missed::RunOnce => open,
            // The running tick stays open to take over; the ticks after it were missed.
            Missed::Skip if state.tick >= due => open,
            Missed::Skip => due,
        };
    }
    match missed {
        Missed::RunOnce => state.tick,
        Missed::Skip => state.tick.max(due),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tick: Tick, status: Status) -> TickState {
        TickState { tick, holder: "h".into(), status, outcome: None }
    }

    #[test]
    fn where_a_task_starts() {
        use Missed::*;
        // Nothing ever claimed: only ticks from now on.
        assert_eq!(start_tick(None, RunOnce, Some(100)), 100);
        assert_eq!(start_tick(None, Skip, None), i64::MIN);
        // The last claimed tick done, two ticks missed since.
        let done = state(90, Status::Done);
        assert_eq!(start_tick(Some(&done), RunOnce, Some(100)), 90, "run-once runs 100");
        assert_eq!(start_tick(Some(&done), Skip, Some(100)), 100, "skip waits for 105");
        // Up to date.
        assert_eq!(start_tick(Some(&state(100, Status::Done)), RunOnce, Some(100)), 100);
        // Left running (its holder may be dead): open to take over, for both.
        let running = state(100, Status::Running);
        assert_eq!(start_tick(Some(&running), RunOnce, Some(100)), 99);
        assert_eq!(start_tick(Some(&running), Skip, Some(100)), 99);
        // Left running long ago: skip moves on to the next tick.
        assert_eq!(start_tick(Some(&state(90, Status::Running)), Skip, Some(100)), 100);
        assert_eq!(start_tick(Some(&state(90, Status::Running)), RunOnce, Some(100)), 89);
    }
}
