//! The host's timing record of one challenge, for the whole-system bench
//! (`benches/engine_overhead.rs`) and for operators debugging slow evaluations: how long placing the
//! task took, when it was placed, when its result was detected (wall clock, so it compares with the
//! miner's own clock through the shared kernel), and what the miner reported about its own timing.
//!
//! Miner-reported times are recorded as such, in a debug log line, and never used for scoring: the
//! inference time that scores is the host's (task placement to result detection, monotonic clock).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Log target of the timing lines (`RUST_LOG=talkheadd::timing=debug`).
pub const TARGET: &str = "talkheadd::timing";

/// Wall-clock unix seconds at which the monotonic `at` happened (`at` is in the recent past).
pub fn unix_at(at: Instant) -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(at.elapsed()).as_secs_f64()
}

/// What a miner's result JSON says about its own timing: `(task_seen_unix, written_at_unix)`, each
/// only when present, finite and positive. Anything else is ignored (these are untrusted figures).
pub fn miner_reported(json: &[u8]) -> (Option<f64>, Option<f64>) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(json) else {
        return (None, None);
    };
    let field = |name: &str| {
        map.get(name)
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    (field("task_seen_unix"), field("written_at_unix"))
}

/// One challenge's timing line.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeTiming<'a> {
    /// Challenge id.
    pub challenge_id: &'a str,
    /// Staging face, audio and task.json.
    pub placement: Duration,
    /// When task.json was in place (wall clock).
    pub placed_unix: f64,
    /// When the result was detected (wall clock).
    pub detected_unix: f64,
    /// Host-measured inference time (monotonic).
    pub host_seconds: f64,
    /// Miner-reported: when it read the task.
    pub miner_task_seen_unix: Option<f64>,
    /// Miner-reported: just before it wrote the result.
    pub miner_written_unix: Option<f64>,
}

impl ChallengeTiming<'_> {
    /// Emit the debug line the bench parses.
    pub fn log(&self) {
        tracing::debug!(
            target: TARGET,
            challenge_id = self.challenge_id,
            placement_us = u64::try_from(self.placement.as_micros()).unwrap_or(u64::MAX),
            placed_unix = self.placed_unix,
            detected_unix = self.detected_unix,
            host_seconds = self.host_seconds,
            miner_task_seen_unix = self.miner_task_seen_unix.unwrap_or(0.0),
            miner_written_unix = self.miner_written_unix.unwrap_or(0.0),
            "challenge timing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miner_times_are_read_only_when_sane() {
        let ok = br#"{"success": true, "task_seen_unix": 1700000000.25, "written_at_unix": 1700000000.5}"#;
        assert_eq!(
            miner_reported(ok),
            (Some(1_700_000_000.25), Some(1_700_000_000.5))
        );
        for bad in [
            &br#"{"success": true}"#[..],
            br#"{"task_seen_unix": "soon", "written_at_unix": -1}"#,
            br#"{"task_seen_unix": 0, "written_at_unix": null}"#,
            br#"[1, 2]"#,
            b"{not json",
        ] {
            assert_eq!(
                miner_reported(bad),
                (None, None),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_instant_maps_to_the_wall_clock_just_before_now() {
        let at = Instant::now();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let unix = unix_at(at);
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(unix <= after && unix >= before - 1.0, "{before} {unix} {after}");
    }
}
