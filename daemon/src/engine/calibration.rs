//! Calibration runs: the reference image (`gpu.calibration_image`) evaluated on each usable GPU once per
//! round, exactly like a miner (same pull by digest, hardened container, host timing), on a GPU slot of
//! its own. Its time is stored with the round per GPU UUID and model ([`crate::store::CalibrationRecord`])
//! so that scores can be compared across hosts and GPU models.
//!
//! Owns the run of one calibration and what is recorded from it. A calibration never stages a result,
//! never records a run in a miner's history and never backs a miner off: its failure is logged and
//! stored as such, nothing more. Which slot calibrates when is the evaluation loop's decision.

use super::run::{RunEnv, RunOutcome, RunRequest, run_evaluation};
use super::verdicts::one_line;
use crate::challenges::ChallengeSet;
use crate::domain::{EvaluationMetrics, Hotkey, ImageRef, Verdict};
use crate::gpu::GpuSlot;
use crate::gpu::vram::VramMeter;
use crate::rounds::EvaluationTicket;
use crate::store::CalibrationRecord;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The `hotkey` a calibration shows where a miner's would be (board, busy slots).
pub const CALIBRATION: &str = "calibration";

/// Prefix of calibration run ids, so that containers, logs and the board tell them from miners' runs.
pub const RUN_ID_PREFIX: &str = "calib-";

/// The ticket a calibration runs under. Its hotkey is the all-zero public key, which no validator can
/// sign for; it is never written to the store.
pub fn ticket(image: &ImageRef, round: u64) -> EvaluationTicket {
    EvaluationTicket {
        hotkey: Hotkey::from_public_key([0; 32]),
        image_ref: image.clone(),
        generation: 0,
        submit_time: 0.0,
        round,
    }
}

/// One calibration on one slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The run id (starts with [`RUN_ID_PREFIX`]).
    pub run_id: String,
    /// The round it belongs to.
    pub round: u64,
    /// The reference image.
    pub image: ImageRef,
    /// The slot it runs on.
    pub slot: GpuSlot,
    /// Unix time it was dispatched.
    pub started_at: f64,
}

/// How a calibration ended, for the loop's book-keeping of the slot.
pub struct Calibrated {
    /// What was stored (`None` when the daemon was shutting down: nothing is recorded then).
    pub record: Option<CalibrationRecord>,
    /// A GPU fault seen during the run.
    pub gpu_fault: Option<crate::gpu::health::Fault>,
    /// Whether the run ended in an infrastructure failure.
    pub infra: bool,
}

/// Run one calibration; the caller stores the record.
pub async fn run(
    env: &RunEnv,
    meter: &dyn VramMeter,
    c: &Calibration,
    challenges: &ChallengeSet,
    shutdown: &CancellationToken,
) -> Calibrated {
    let span = tracing::info_span!(
        "calibration",
        run_id = %c.run_id,
        gpu_uuid = %c.slot.uuid,
        round = c.round
    );
    let ticket = ticket(&c.image, c.round);
    let req = RunRequest {
        run_id: c.run_id.clone(),
        ticket: &ticket,
        challenges,
        slot: &c.slot,
        meter,
        keep_videos: None,
    };
    span.in_scope(|| tracing::info!(image = %c.image, "calibration started"));
    let (outcome, report) = run_evaluation(env, req, shutdown).instrument(span.clone()).await;
    let infra = matches!(outcome, RunOutcome::Infra(_));
    if infra && shutdown.is_cancelled() {
        return Calibrated {
            record: None,
            gpu_fault: report.gpu_fault,
            infra,
        };
    }
    let record = record(c, &outcome, env.clock.now_unix());
    span.in_scope(|| match record.seconds {
        Some(seconds) if record.verdict == Verdict::Ok => {
            tracing::info!(seconds, model = %record.gpu_model, "calibration finished");
        }
        _ => tracing::warn!(
            verdict = %record.verdict,
            reason = record.reason.as_deref().unwrap_or("-"),
            "calibration failed; the miners' results are not affected"
        ),
    });
    Calibrated {
        record: Some(record),
        gpu_fault: report.gpu_fault,
        infra,
    }
}

/// What is stored from a calibration's outcome: the mean of its timed scored challenges when it
/// succeeded, the verdict and reason when it did not.
pub fn record(c: &Calibration, outcome: &RunOutcome, finished_at: f64) -> CalibrationRecord {
    let (verdict, reason, challenge_seconds) = match outcome {
        RunOutcome::Result(m) => (m.verdict, m.error.clone(), timed(m)),
        RunOutcome::Infra(reason) => (Verdict::InfraError, Some(one_line(reason)), Vec::new()),
    };
    let seconds = (verdict == Verdict::Ok && !challenge_seconds.is_empty())
        .then(|| challenge_seconds.iter().sum::<f64>() / challenge_seconds.len() as f64);
    CalibrationRecord {
        round: c.round,
        gpu_uuid: c.slot.uuid.clone(),
        gpu_model: c.slot.name.clone(),
        image_ref: c.image.to_string(),
        run_id: c.run_id.clone(),
        verdict,
        seconds,
        challenge_seconds,
        reason,
        started_at: c.started_at,
        finished_at,
    }
}

/// Host-measured seconds of the scored challenges that succeeded.
fn timed(m: &EvaluationMetrics) -> Vec<f64> {
    m.challenge_metrics
        .iter()
        .filter(|e| e.success)
        .filter_map(|e| e.efficiency.as_ref()?.inference_time_sec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::metrics::{ChallengeMetrics, EfficiencyMetrics};
    use crate::gpu::{GpuInventory, VirtualInventory};

    fn calibration() -> Calibration {
        let image = ImageRef::parse(&format!("127.0.0.1:5000/calib@sha256:{}", "b".repeat(64))).unwrap();
        Calibration {
            run_id: "calib-1".into(),
            round: 7,
            image,
            slot: VirtualInventory::new(1).slots().remove(0),
            started_at: 4.0,
        }
    }

    fn entry(success: bool, seconds: f64) -> ChallengeMetrics {
        let mut e: ChallengeMetrics = serde_json::from_value(serde_json::json!({
            "challenge_id": "c", "success": success, "verdict": if success { "ok" } else { "crashed" },
        }))
        .unwrap();
        if success {
            e.efficiency = Some(EfficiencyMetrics {
                peak_vram_gb: None,
                inference_time_sec: Some(seconds),
                time_norm: 0.0,
                vram_norm: 1.0,
                efficiency_factor: 1.0,
                cap_violation: false,
                cap_multiplier: 1.0,
                time_missing: false,
                vram_missing: true,
            });
        } else {
            e.inference_time_sec = Some(seconds);
        }
        e
    }

    #[test]
    fn a_successful_calibration_stores_the_mean_of_its_timed_scored_challenges() {
        let c = calibration();
        let mut m = EvaluationMetrics::failed(Verdict::Ok, "", c.image.as_str(), 0.0, 1.0, 3);
        m.error = None;
        m.challenge_metrics = vec![entry(true, 1.0), entry(false, 99.0), entry(true, 2.0)];
        let r = record(&c, &RunOutcome::Result(Box::new(m)), 5.0);
        assert_eq!(
            (r.round, r.gpu_uuid.as_str(), r.gpu_model.as_str()),
            (7, "virtual-0", "virtual GPU slot")
        );
        assert_eq!(
            r.challenge_seconds,
            vec![1.0, 2.0],
            "failed challenges are not timings"
        );
        assert_eq!(r.seconds, Some(1.5));
        assert_eq!((r.verdict, r.reason, r.finished_at), (Verdict::Ok, None, 5.0));
    }

    #[test]
    fn a_failed_calibration_stores_why_and_no_time() {
        let c = calibration();
        let m = EvaluationMetrics::failed(
            Verdict::Crashed,
            "exited with code 3",
            c.image.as_str(),
            0.0,
            1.0,
            3,
        );
        let r = record(&c, &RunOutcome::Result(Box::new(m)), 5.0);
        assert_eq!((r.verdict, r.seconds), (Verdict::Crashed, None));
        assert_eq!(r.reason.as_deref(), Some("exited with code 3"));
        let r = record(&c, &RunOutcome::Infra("pull failed:\nregistry down".into()), 5.0);
        assert_eq!((r.verdict, r.seconds), (Verdict::InfraError, None));
        assert_eq!(r.reason.as_deref(), Some("pull failed: registry down"));
        assert_eq!(ticket(&c.image, 7).hotkey, Hotkey::from_public_key([0; 32]));
    }
}
