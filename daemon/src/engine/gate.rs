//! The engine gate: whether the evaluation loop may start containers now. Nothing is dispatched (miner
//! runs and calibrations alike) while the Docker engine does not answer, nor after it answers again
//! until this instance's leftover containers have been swept; both wait on one capped backoff.
//!
//! Pure book-keeping: the loop pings the engine and runs the sweep, and tells the gate what happened.

use crate::runtime::pull::backoff;
use std::time::{Duration, Instant};

/// What stands between the loop and the next dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The engine does not answer.
    Unreachable,
    /// The engine answers but the sweep of leftover containers failed (the reason).
    SweepFailed(String),
}

/// The gate's state.
#[derive(Debug, Clone)]
pub struct EngineGate {
    /// Failed attempts in a row, the next attempt's time, and why.
    down: Option<(u32, Instant, Blocked)>,
    /// Leftover containers may exist: sweep (successfully) before the next dispatch.
    sweep: bool,
    max_backoff: Duration,
}

impl EngineGate {
    /// An open gate whose waits double from 2 s up to `max_backoff`.
    pub fn new(max_backoff: Duration) -> EngineGate {
        EngineGate {
            down: None,
            sweep: false,
            max_backoff,
        }
    }

    /// `Some(wait)` while the last failure's backoff runs (do not even ping).
    pub fn waiting(&self, now: Instant) -> Option<Duration> {
        match &self.down {
            Some((_, until, _)) if *until > now => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Why the gate is closed, if it is, and after how many attempts.
    pub fn blocked(&self) -> Option<(u32, &Blocked)> {
        self.down.as_ref().map(|(a, _, b)| (*a, b))
    }

    /// A run failed on the host's side: its container may have outlived it.
    pub fn request_sweep(&mut self) {
        self.sweep = true;
    }

    /// The ping failed: the wait before the next attempt.
    pub fn unreachable(&mut self, now: Instant) -> Duration {
        self.fail(now, Blocked::Unreachable)
    }

    /// The ping answered. Returns whether a sweep must succeed before dispatching; an engine that was
    /// unreachable always needs one (the runs it interrupted may have left containers).
    pub fn reachable(&mut self) -> bool {
        if matches!(self.down, Some((_, _, Blocked::Unreachable))) {
            self.sweep = true;
        }
        self.sweep
    }

    /// The sweep's outcome. `None`: the gate is open. `Some(wait)`: it failed; nothing is dispatched
    /// and it is tried again after the wait.
    pub fn swept(&mut self, result: Result<(), String>, now: Instant) -> Option<Duration> {
        match result {
            Ok(()) => {
                self.sweep = false;
                self.down = None;
                None
            }
            Err(reason) => Some(self.fail(now, Blocked::SweepFailed(reason))),
        }
    }

    /// The engine answered and nothing needed sweeping: open.
    pub fn open(&mut self) {
        self.down = None;
    }

    fn fail(&mut self, now: Instant, why: Blocked) -> Duration {
        let attempts = self.down.as_ref().map_or(1, |(a, _, _)| a.saturating_add(1));
        let wait = backoff(attempts, self.max_backoff);
        self.down = Some((attempts, now + wait, why));
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn an_engine_back_from_an_outage_is_not_used_until_a_sweep_succeeded() {
        let mut gate = EngineGate::new(CAP);
        let t0 = Instant::now();
        assert_eq!(gate.unreachable(t0), Duration::from_secs(2));
        assert_eq!(gate.waiting(t0), Some(Duration::from_secs(2)));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(gate.waiting(t1), None, "time to ping again");
        assert!(gate.reachable(), "back from an outage: sweep first");
        // The sweep fails: still closed, on the same backoff, and it says why.
        assert_eq!(
            gate.swept(Err("list_containers: 500".into()), t1),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            gate.blocked(),
            Some((2, &Blocked::SweepFailed("list_containers: 500".into())))
        );
        let t2 = t1 + Duration::from_secs(4);
        assert!(gate.reachable(), "the sweep is still owed");
        assert_eq!(gate.swept(Ok(()), t2), None);
        assert_eq!((gate.waiting(t2), gate.blocked()), (None, None));
        assert!(!gate.reachable(), "nothing left to sweep");
    }

    #[test]
    fn a_sweep_asked_for_by_a_failed_run_gates_too_and_backoff_is_capped() {
        let mut gate = EngineGate::new(CAP);
        let now = Instant::now();
        assert!(!gate.reachable());
        gate.open();
        gate.request_sweep();
        assert!(gate.reachable());
        let waits: Vec<u64> = (0..6)
            .map(|_| gate.swept(Err("x".into()), now).unwrap_or_default().as_secs())
            .collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30]);
        assert_eq!(gate.swept(Ok(()), now), None);
    }
}
