//! Assembling the metrics document of a run (the `/metrics` shape) from scores and measurements.
//! Pure: the caller supplies every value, the clock included.

use crate::domain::Verdict;
use crate::domain::metrics::{ChallengeDebug, ChallengeMetrics, EfficiencyMetrics};
use crate::scoring::{ChallengeScore, EfficiencyReport};

/// The efficiency block from the scoring core's report, as `/metrics` reports it.
pub fn efficiency_metrics(e: &EfficiencyReport) -> EfficiencyMetrics {
    e.reported()
}

/// A successful challenge entry; `debug` is [`crate::analysis::ChallengeAnalysis::metrics_debug`].
pub fn scored_entry(
    challenge_id: &str,
    score: &ChallengeScore,
    wer: Option<f64>,
    debug: ChallengeDebug,
) -> ChallengeMetrics {
    let c = &score.quality.components;
    ChallengeMetrics {
        challenge_id: challenge_id.to_owned(),
        success: true,
        video_url: None,
        verdict: Verdict::Ok,
        identity: Some(c.identity),
        lipsync: Some(c.lipsync),
        audio: Some(c.audio),
        video: Some(c.video),
        temporal: Some(c.temporal),
        penalty: Some(c.penalty),
        // The reference reports wer 1.0 when it has none; null says "unavailable" honestly.
        wer,
        quality_score: Some(score.quality.quality_score),
        final_score: Some(score.final_score),
        efficiency: Some(efficiency_metrics(&score.efficiency)),
        host_time_sec: None,
        peak_vram_gb: None,
        inference_time_sec: None,
        error: None,
        debug: Some(debug),
    }
}

/// A failed challenge entry.
pub fn failed_entry(
    challenge_id: &str,
    verdict: Verdict,
    error: &str,
    host_time_sec: Option<f64>,
    peak_vram_gb: Option<f64>,
) -> ChallengeMetrics {
    ChallengeMetrics {
        challenge_id: challenge_id.to_owned(),
        success: false,
        video_url: None,
        verdict,
        identity: None,
        lipsync: None,
        audio: None,
        video: None,
        temporal: None,
        penalty: None,
        wer: None,
        quality_score: None,
        final_score: None,
        efficiency: None,
        host_time_sec,
        peak_vram_gb,
        inference_time_sec: host_time_sec,
        error: Some(error.to_owned()),
        debug: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scoring::{ChallengeOutcome, Measurement, ScoringConfig, score_run};

    #[test]
    fn a_cap_violation_is_reported_in_the_factor_as_the_reference_does_and_beside_it() {
        let cfg = ScoringConfig::default();
        // 100 s over the 60 s cap: the reference reports factor × 0.01.
        let run = score_run(
            &[ChallengeOutcome {
                quality: 0.8,
                measurement: Measurement::new(100.0, 8.0),
            }],
            &cfg,
        )
        .unwrap();
        assert!(run.efficiency.cap_violation);
        let block = efficiency_metrics(&run.efficiency);
        assert_eq!(block.cap_multiplier, 0.01);
        assert!((block.efficiency_factor - run.efficiency.efficiency_factor * 0.01).abs() < 1e-15);
        // Without a violation the factor is the soft factor alone.
        let fast = score_run(
            &[ChallengeOutcome {
                quality: 0.8,
                measurement: Measurement::new(10.0, 8.0),
            }],
            &cfg,
        )
        .unwrap();
        let block = efficiency_metrics(&fast.efficiency);
        assert_eq!(block.cap_multiplier, 1.0);
        assert_eq!(block.efficiency_factor, fast.efficiency.efficiency_factor);
        // A document written before the field reads 1.
        let old: EfficiencyMetrics = serde_json::from_value(serde_json::json!({
            "peak_vram_gb": null, "inference_time_sec": 1.0, "time_norm": 0.1, "vram_norm": 1.0,
            "efficiency_factor": 0.9, "cap_violation": false
        }))
        .unwrap();
        assert_eq!(old.cap_multiplier, 1.0);
    }
}
