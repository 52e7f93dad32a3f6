//! Once per tick between processes: the claim a process makes on a job's tick through the
//! job's lease ([`rbd_wasm::backend::Leases`]).
//!
//! The lease's state is the job's last claimed tick: `{"tick", "holder", "status"}` with
//! status `running` or `done`. A process that wants tick T takes the lease, reads the
//! state, and
//! - finds T (or a later tick) `done`: nothing to do;
//! - finds T `running`: the process that claimed it lost its lease mid-run (it died, or was
//!   stopped and let go); this one takes the tick over;
//! - finds an older tick: claims T.
//!
//! Claiming and finishing are compare-and-swaps from the state that was read, so a
//! process that held the lease past its expiry (stalled, then woken) cannot record over
//! the one that took over. A process that is stopped mid-run releases the lease with the
//! state left `running`, and another takes the tick over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd_wasm::backend::Leases;
use serde::{Deserialize, Serialize};

use super::schedule::Tick;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Running,
    Done,
}

/// The state value of a job's lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickState {
    pub tick: Tick,
    pub holder: String,
    pub status: Status,
    /// How a `done` tick ended (`success` or the last attempt's failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl TickState {
    /// The state in `bytes`; none for an empty value (never claimed) or one that does not
    /// parse (it is then claimed over, as a stale one would be).
    pub fn parse(bytes: &[u8]) -> Option<TickState> {
        if bytes.is_empty() {
            return None;
        }
        match serde_json::from_slice(bytes) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!("a lease's state does not parse ({e}): it will be claimed over");
                None
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether `tick` is dealt with: this tick or a later one is done.
    fn covers(&self, tick: Tick) -> bool {
        self.tick > tick || (self.tick == tick && self.status == Status::Done)
    }
}

/// The lease of one job of one service.
pub fn lease_name(service: &str, job: &str) -> String {
    format!("rbd-wasm-serve.{service}.{job}")
}

/// How a claim went.
pub enum Claim {
    /// This process holds the lease and has claimed the tick.
    Mine(Held),
    /// The tick (or a later one) is done.
    Done,
    /// Another process holds the lease (running this tick, or an earlier one still).
    Busy,
}

/// A claimed tick: the lease is held and the state says `running` by this process.
pub struct Held {
    leases: Arc<dyn Leases>,
    name: String,
    tick: Tick,
    ttl: Duration,
    /// Until when the lease is surely this process's: counted from before the call that
    /// took (or last renewed) it, since the OSD counts from when it got the call.
    valid_until: Instant,
    /// The state as this process wrote it, which finishing swaps from.
    running: Vec<u8>,
    /// The tick had been claimed by a process whose lease ran out.
    took_over: bool,
}

/// Try to claim `tick` (blocking: call it off the async executor).
pub fn claim(leases: &Arc<dyn Leases>, name: &str, tick: Tick, holder: &str, ttl: Duration) -> rbd_wasm::backend::Result<Claim> {
    let asked = Instant::now();
    if !leases.acquire(name, ttl)? {
        let state = TickState::parse(&leases.state(name)?);
        return Ok(if state.is_some_and(|s| s.covers(tick)) { Claim::Done } else { Claim::Busy });
    }
    // From here on the lease is let go on every way out but a claim.
    let claimed = (|| {
        let read = leases.state(name)?;
        let state = TickState::parse(&read);
        if state.as_ref().is_some_and(|s| s.covers(tick)) {
            return Ok(None);
        }
        let took_over = state.as_ref().is_some_and(|s| s.tick == tick && s.status == Status::Running);
        let running = TickState { tick, holder: holder.to_owned(), status: Status::Running, outcome: None }.bytes();
        // Changed between the read and the swap: only a process that took the lease over
        // meanwhile does that, so it is not this one's any more.
        Ok(leases.swap_state(name, &read, &running)?.then_some((running, took_over)))
    })();
    match claimed {
        Ok(Some((running, took_over))) => Ok(Claim::Mine(Held {
            leases: leases.clone(),
            name: name.to_owned(),
            tick,
            ttl,
            valid_until: asked + ttl,
            running,
            took_over,
        })),
        Ok(None) => {
            leases.release(name)?;
            Ok(Claim::Done)
        }
        Err(e) => {
            let _ = leases.release(name);
            Err(e)
        }
    }
}

impl Held {
    pub fn tick(&self) -> Tick {
        self.tick
    }

    pub fn took_over(&self) -> bool {
        self.took_over
    }

    /// Renew the lease every third of its time to live until `lost` is set by this or the
    /// caller goes away. The lease counts as lost, and `on_lost` is called, when a renewal
    /// says another process has it, or when none has succeeded in time: a renewal that
    /// hangs (an OSD out of reach) is not waited for past the lease's end.
    pub async fn keep(leases: Arc<dyn Leases>, name: String, ttl: Duration, mut valid_until: Instant, on_lost: impl FnOnce()) {
        loop {
            tokio::time::sleep(ttl / 3).await;
            let (l, n, asked) = (leases.clone(), name.clone(), Instant::now());
            let renewal = tokio::task::spawn_blocking(move || l.renew(&n, ttl));
            let wait = valid_until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, renewal).await {
                Ok(Ok(Ok(true))) => valid_until = asked + ttl,
                Ok(Ok(Ok(false))) => break,
                Ok(Ok(Err(e))) => tracing::warn!("cannot renew the lease `{name}`: {e}"),
                Ok(Err(_)) => {}
                Err(_) => break,
            }
            if Instant::now() >= valid_until {
                break;
            }
        }
        on_lost();
    }

    /// What [`Held::keep`] needs, taken before the run so the keeper owns its parts.
    pub fn keeper_parts(&self) -> (Arc<dyn Leases>, String, Duration, Instant) {
        (self.leases.clone(), self.name.clone(), self.ttl, self.valid_until)
    }

    /// Record the tick as done (`Ok(false)` when the state changed under this process: its
    /// lease ran out and another took the tick over) and release the lease (also when the
    /// record could not be written).
    pub fn finish(self, holder: &str, outcome: &str) -> rbd_wasm::backend::Result<bool> {
        let done = TickState { tick: self.tick, holder: holder.to_owned(), status: Status::Done, outcome: Some(outcome.to_owned()) };
        let recorded = self.leases.swap_state(&self.name, &self.running, &done.bytes());
        let released = self.leases.release(&self.name);
        let recorded = recorded?;
        released?;
        Ok(recorded)
    }

    /// Let the lease go with the tick still `running`, for another process to take over.
    pub fn abandon(self) -> rbd_wasm::backend::Result<()> {
        self.leases.release(&self.name)
    }
}

/// The state of a job's lease now (blocking).
pub fn current(leases: &Arc<dyn Leases>, name: &str) -> rbd_wasm::backend::Result<Option<TickState>> {
    Ok(TickState::parse(&leases.state(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbd_wasm::backend::embedded::FileLeases;

    #[test]
    fn each_tick_is_claimed_once_and_a_dead_holders_tick_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(5);
        let a: Arc<dyn Leases> = Arc::new(FileLeases::open(dir.path(), "a").unwrap());
        let b: Arc<dyn Leases> = Arc::new(FileLeases::open(dir.path(), "b").unwrap());
        let Claim::Mine(held) = claim(&a, "j", 10, "a", ttl).unwrap() else { panic!("a claims tick 10") };
        assert!(matches!(claim(&b, "j", 10, "b", ttl).unwrap(), Claim::Busy));
        assert!(held.finish("a", "success").unwrap());
        assert!(matches!(claim(&b, "j", 10, "b", ttl).unwrap(), Claim::Done));
        assert!(b.holders("j").unwrap().is_empty(), "a Done claim leaves no lease held");

        // a claims 20 and goes away mid-run (its lease is let go, the state says running).
        let Claim::Mine(held) = claim(&a, "j", 20, "a", ttl).unwrap() else { panic!() };
        held.abandon().unwrap();
        let Claim::Mine(taken) = claim(&b, "j", 20, "b", ttl).unwrap() else { panic!("b takes 20 over") };
        assert!(taken.took_over());
        assert!(taken.finish("b", "success").unwrap());
        assert!(matches!(claim(&a, "j", 20, "a", ttl).unwrap(), Claim::Done));
        let state = current(&a, "j").unwrap().unwrap();
        assert_eq!((state.tick, state.holder.as_str(), state.status), (20, "b", Status::Done));
    }
}
