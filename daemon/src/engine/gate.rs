//! The engine gate: whether the evaluation loop may start containers now. Nothing is dispatched (miner
//! runs and calibrations alike) while the Docker engine does not answer, nor after it answers again
//! until this instance's leftover containers have been swept; both wait on one capped backoff.
//!
//! [`EngineGate`] is pure book-keeping; [`check`] is the effect the loop applies when its plan asks
//! for the engine ([`super::plan::Need::Engine`]): ping, sweep, tell the gate what happened. [`final_sweep`]
//! removes this instance's containers at shutdown.

use super::verdicts::one_line;
use crate::runtime::Engine;
use crate::runtime::pull::backoff;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Longest the last sweep of this instance's containers may hold up a stop. With the HTTP drain and the
/// final eviction it stays well inside the unit's `TimeoutStopSec=45s`.
const FINAL_SWEEP: Duration = Duration::from_secs(10);

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

/// Whether containers may be started now. `None`: go on. `Some(wait)`: not before `wait` — the engine
/// does not answer (dockerd stopped or restarting), or it answers again but the containers the
/// interrupted runs left behind (all but those of the runs in `keep`) could not be swept yet; nothing is
/// dispatched (calibrations included) and the next attempt is after a capped backoff, so no miner is
/// charged for the outage. Why is said in the logs and the `systemctl status` line.
pub async fn check(
    gate: &mut EngineGate,
    engine: &Engine,
    keep: &HashSet<String>,
    now: Instant,
) -> Option<Duration> {
    if let Some(wait) = gate.waiting(now) {
        return Some(wait);
    }
    let host = engine.host().to_owned();
    if !engine.ping().await {
        let wait = gate.unreachable(now);
        let attempts = gate.blocked().map_or(1, |(a, _)| a);
        tracing::warn!(%host, attempts, ?wait, "Docker engine not reachable; evaluations wait for it (miners are not charged)");
        crate::systemd::status(&format!(
            "Docker engine not reachable at {host}; nothing is dispatched (attempt {attempts}, next in {}s)",
            wait.as_secs()
        ));
        return Some(wait);
    }
    if let Some((attempts, Blocked::Unreachable)) = gate.blocked() {
        tracing::info!(%host, attempts, "Docker engine reachable again");
    }
    if !gate.reachable() {
        gate.open();
        return None;
    }
    let swept = engine.reconcile_orphans(keep).await;
    if let Ok(runs) = &swept
        && !runs.is_empty()
    {
        tracing::warn!(
            count = runs.len(),
            "removed containers left by runs that failed on the host's side"
        );
    }
    let wait = gate.swept(swept.map(|_| ()).map_err(|e| e.to_string()), now)?;
    let attempts = gate.blocked().map_or(1, |(a, _)| a);
    let reason = match gate.blocked() {
        Some((_, Blocked::SweepFailed(r))) => r.clone(),
        _ => String::new(),
    };
    tracing::warn!(%host, attempts, ?wait, error = %reason, "could not sweep this instance's leftover containers; nothing is dispatched until a sweep succeeds");
    crate::systemd::status(&format!(
        "leftover containers not swept yet ({}): nothing is dispatched (attempt {attempts}, next in {}s)",
        one_line(&reason),
        wait.as_secs()
    ));
    Some(wait)
}

/// Every container this instance created goes before the stop completes. A run removes its own, but its
/// cleanup can be cut short (an engine error after the kill leaves the removal to a background task
/// that the stop would abandon), and a state file no later daemon opens would never have it reconciled.
pub async fn final_sweep(engine: &Engine) {
    match tokio::time::timeout(FINAL_SWEEP, engine.reconcile_orphans(&HashSet::new())).await {
        Ok(Ok(runs)) if !runs.is_empty() => {
            tracing::warn!(count = runs.len(), "removed containers left by runs at shutdown");
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not sweep this instance's containers at shutdown")
        }
        Err(_) => tracing::warn!(?FINAL_SWEEP, "container sweep at shutdown cut short"),
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
