//! Assembling the metrics document of a run (the `/metrics` shape) from scores and measurements.
//! Pure: the caller supplies every value, the clock included.

use crate::domain::Verdict;
use crate::domain::metrics::{ChallengeDebug, ChallengeMetrics};
use crate::scoring::ChallengeScore;

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
        efficiency: Some(score.efficiency.reported()),
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
