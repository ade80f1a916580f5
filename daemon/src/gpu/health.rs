//! GPU health as a pure state machine: faults observed before or during runs (XID and ECC events,
//! thermal or power throttling, over-temperature, foreign processes, failed probes) move a GPU from
//! healthy to quarantined after `quarantine_after` consecutive faults; once `quarantine_secs` have
//! passed it is due for a re-probe, and a clean probe returns it. No IO and no clock: the caller passes
//! the time and what NVML said, so every transition is unit- and property-tested.

use serde::Serialize;

/// What went wrong with a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// A critical XID event (driver-reported GPU error).
    Xid {
        /// The XID code.
        code: u64,
    },
    /// New uncorrected ECC errors since the last look.
    Ecc {
        /// How many appeared.
        new_errors: u64,
    },
    /// The GPU throttles for thermal or power reasons (timings are not comparable).
    Throttled {
        /// Which reasons, as NVML names them.
        reasons: String,
    },
    /// The GPU is hotter than `gpu.max_temperature_c`.
    Temperature {
        /// Degrees Celsius.
        celsius: u32,
        /// The configured `gpu.max_temperature_c` it exceeds.
        limit_c: u32,
    },
    /// A process the daemon did not start uses the GPU.
    ForeignProcess {
        /// Its host PID.
        pid: u32,
    },
    /// NVML could not answer about the GPU.
    ProbeFailed {
        /// NVML's error.
        detail: String,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Xid { code } => write!(f, "XID {code}"),
            Fault::Ecc { new_errors } => write!(f, "{new_errors} new uncorrected ECC errors"),
            Fault::Throttled { reasons } => write!(f, "throttled: {reasons}"),
            Fault::Temperature { celsius, limit_c } => {
                write!(
                    f,
                    "temperature {celsius} °C (over gpu.max_temperature_c {limit_c})"
                )
            }
            Fault::ForeignProcess { pid } => write!(f, "foreign process {pid} on the GPU"),
            Fault::ProbeFailed { detail } => write!(f, "probe failed: {detail}"),
        }
    }
}

/// When faults quarantine a GPU and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// Consecutive faults that quarantine the GPU (`gpu.quarantine_after_faults`, >= 1).
    pub quarantine_after: u32,
    /// Seconds in quarantine before the GPU is re-probed (`gpu.quarantine_secs`).
    pub quarantine_secs: f64,
}

impl Default for HealthPolicy {
    fn default() -> HealthPolicy {
        HealthPolicy {
            quarantine_after: 3,
            quarantine_secs: 600.0,
        }
    }
}

/// Where one GPU stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Usable; `faults` consecutive faults so far (reset by a clean run or probe).
    Healthy {
        /// Consecutive faults.
        faults: u32,
    },
    /// Out of service until `until` (unix seconds), then re-probed.
    Quarantined {
        /// Why.
        reason: String,
        /// Unix time of the re-probe.
        until: f64,
    },
}

/// A change worth an event (`GpuStateChanged`) and a log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The GPU was quarantined.
    Quarantined {
        /// Why.
        reason: String,
    },
    /// A quarantined GPU probed clean and is back in service.
    Returned,
}

/// The health of one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuHealth {
    policy: HealthPolicy,
    state: Health,
}

impl GpuHealth {
    /// A healthy GPU.
    pub fn new(policy: HealthPolicy) -> GpuHealth {
        GpuHealth {
            policy,
            state: Health::Healthy { faults: 0 },
        }
    }

    /// The current state.
    pub fn state(&self) -> &Health {
        &self.state
    }

    /// Whether the GPU may take a run at `now`.
    pub fn usable(&self) -> bool {
        matches!(self.state, Health::Healthy { .. })
    }

    /// Whether a quarantined GPU is due for a re-probe at `now`.
    pub fn due_for_probe(&self, now: f64) -> bool {
        matches!(&self.state, Health::Quarantined { until, .. } if now >= *until)
    }

    /// A fault was seen at `now`.
    pub fn fault(&mut self, fault: &Fault, now: f64) -> Option<Transition> {
        match &mut self.state {
            Health::Healthy { faults } => {
                *faults = faults.saturating_add(1);
                if *faults >= self.policy.quarantine_after.max(1) {
                    let reason = format!("{} consecutive faults, last: {fault}", *faults);
                    self.state = Health::Quarantined {
                        reason: reason.clone(),
                        until: now + self.policy.quarantine_secs,
                    };
                    Some(Transition::Quarantined { reason })
                } else {
                    None
                }
            }
            Health::Quarantined { reason, until } => {
                // A failed re-probe (or a late report) extends the quarantine.
                *reason = format!("still faulty: {fault}");
                *until = until.max(now + self.policy.quarantine_secs);
                None
            }
        }
    }

    /// A run or probe went clean at `now`: the fault streak resets; a quarantined GPU whose time is
    /// up returns to service.
    pub fn clean(&mut self, now: f64) -> Option<Transition> {
        match &self.state {
            Health::Healthy { .. } => {
                self.state = Health::Healthy { faults: 0 };
                None
            }
            Health::Quarantined { until, .. } if now >= *until => {
                self.state = Health::Healthy { faults: 0 };
                Some(Transition::Returned)
            }
            Health::Quarantined { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            quarantine_after: 3,
            quarantine_secs: 60.0,
        }
    }

    fn xid() -> Fault {
        Fault::Xid { code: 79 }
    }

    #[test]
    fn repeated_faults_quarantine_then_a_clean_probe_after_the_interval_returns_it() {
        let mut h = GpuHealth::new(policy());
        assert_eq!(h.fault(&xid(), 0.0), None);
        assert_eq!(h.fault(&xid(), 1.0), None);
        assert!(h.usable());
        assert!(matches!(
            h.fault(&xid(), 2.0),
            Some(Transition::Quarantined { .. })
        ));
        assert!(!h.usable());
        assert!(!h.due_for_probe(30.0));
        assert_eq!(h.clean(30.0), None, "no return before the interval");
        assert!(h.due_for_probe(62.0));
        assert_eq!(h.clean(62.0), Some(Transition::Returned));
        assert_eq!(h.state(), &Health::Healthy { faults: 0 });
    }

    #[test]
    fn a_clean_run_resets_the_streak() {
        let mut h = GpuHealth::new(policy());
        h.fault(&xid(), 0.0);
        h.fault(&xid(), 1.0);
        h.clean(2.0);
        assert_eq!(h.fault(&xid(), 3.0), None);
        assert!(h.usable());
    }

    #[test]
    fn a_failed_reprobe_extends_the_quarantine() {
        let mut h = GpuHealth::new(HealthPolicy {
            quarantine_after: 1,
            quarantine_secs: 10.0,
        });
        h.fault(
            &Fault::Temperature {
                celsius: 95,
                limit_c: 90,
            },
            0.0,
        );
        assert!(h.due_for_probe(10.0));
        assert_eq!(
            h.fault(
                &Fault::Temperature {
                    celsius: 94,
                    limit_c: 90
                },
                10.0
            ),
            None
        );
        assert!(!h.due_for_probe(15.0));
        assert!(h.due_for_probe(20.0));
    }

    proptest! {
        /// Whatever the sequence, a GPU is quarantined exactly when its current streak reached the
        /// threshold, and it never returns before its interval.
        #[test]
        fn quarantine_follows_the_streak(events in proptest::collection::vec((any::<bool>(), 0.0f64..5.0), 0..60), after in 1u32..5) {
            let mut h = GpuHealth::new(HealthPolicy { quarantine_after: after, quarantine_secs: 7.0 });
            let mut now = 0.0;
            let mut streak = 0u32;
            let mut until: Option<f64> = None;
            for (is_fault, dt) in events {
                now += dt;
                if is_fault {
                    let t = h.fault(&Fault::ProbeFailed { detail: "x".into() }, now);
                    match until {
                        None => {
                            streak += 1;
                            prop_assert_eq!(t.is_some(), streak >= after);
                            if streak >= after { until = Some(now + 7.0); }
                        }
                        Some(u) => { prop_assert!(t.is_none()); until = Some(u.max(now + 7.0)); }
                    }
                } else {
                    let t = h.clean(now);
                    match until {
                        Some(u) if now >= u => { prop_assert_eq!(t, Some(Transition::Returned)); until = None; streak = 0; }
                        Some(_) => prop_assert!(t.is_none()),
                        None => { prop_assert!(t.is_none()); streak = 0; }
                    }
                }
                prop_assert_eq!(h.usable(), until.is_none());
            }
        }
    }
}
