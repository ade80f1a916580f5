//! Run aggregation: the scored challenges of one evaluation → the run's `quality_score`, efficiency
//! block and `final_score` (docs/reference.md#scoring-run).
//!
//! Owns: [`score_challenge`] (the per-challenge entry: quality, informational efficiency and final),
//! [`score_run`] (means over all scored challenges, caps from the worst) and the cohort re-scoring done
//! at round commit. Must not: decide which challenges count (the engine passes every *scored* challenge,
//! a failed one as quality 0), read a clock, log, or allocate except in [`renormalise_cohort`].

use serde::{Deserialize, Serialize};

use super::config::{EfficiencyConfig, Normalisation, ScoringConfig};
use super::efficiency::{
    EfficiencyReport, Measurement, MetricSummary, Norms, challenge_efficiency, cohort_norms_for,
    evaluate_linear, evaluate_with_norms,
};
use super::math::clamp01;
use super::quality::{ChallengeComponents, QualityScore, score_quality};

/// One scored challenge as the run aggregation sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ChallengeOutcome {
    /// The challenge's quality in `[0, 1]`; 0 for a challenge the miner failed. Non-finite counts as 0.
    pub quality: f64,
    /// What the host measured for the challenge (use [`Measurement::default`] when nothing was).
    pub measurement: Measurement,
}

impl ChallengeOutcome {
    /// A challenge that produced an output and was scored.
    pub const fn scored(quality: &QualityScore, measurement: Measurement) -> Self {
        Self {
            quality: quality.quality_score,
            measurement,
        }
    }

    /// A challenge the miner failed (crash, bad output, timeout): quality 0, measurements kept if any.
    pub const fn failed(measurement: Measurement) -> Self {
        Self {
            quality: 0.0,
            measurement,
        }
    }
}

/// The per-challenge entry of the metrics document.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChallengeScore {
    /// Quality verdict of the challenge.
    pub quality: QualityScore,
    /// Efficiency of this challenge alone (linear); informational.
    pub efficiency: EfficiencyReport,
    /// `clamp01(quality × factor × cap_multiplier)` of this challenge alone; informational, never ranked.
    pub final_score: f64,
}

/// The score of one evaluation run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunScore {
    /// Mean quality over all scored challenges (failed ones count 0). In `[0, 1]`.
    pub quality_score: f64,
    /// Efficiency from the mean time/VRAM, caps from the worst.
    pub efficiency: EfficiencyReport,
    /// `clamp01(quality_score × efficiency_factor × cap_multiplier)`; 0 on a reject. In `[0, 1]`.
    pub final_score: f64,
    /// Number of challenges aggregated.
    pub scored_challenges: usize,
}

/// Why a run could not be aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// No challenge was scored: there is nothing to average (the reference would divide by zero).
    #[error("no scored challenges to aggregate")]
    NoChallenges,
}

/// `clamp01(quality × efficiency_factor × cap_multiplier)`; a reject's multiplier 0 gives 0.
#[inline]
pub fn final_score(quality: f64, efficiency: &EfficiencyReport) -> f64 {
    clamp01(clamp01(quality) * efficiency.multiplier())
}

/// Scores one challenge: quality (blend and gates) and its own linear efficiency. Allocation-free.
#[inline]
pub fn score_challenge(
    components: &ChallengeComponents,
    measurement: &Measurement,
    cfg: &ScoringConfig,
) -> ChallengeScore {
    let quality = score_quality(components, cfg);
    let efficiency = challenge_efficiency(measurement, &cfg.efficiency);
    ChallengeScore {
        final_score: final_score(quality.quality_score, &efficiency),
        quality,
        efficiency,
    }
}

/// Mean clamped quality and the metric summary, in one pass.
fn summarise(outcomes: &[ChallengeOutcome]) -> Result<(f64, MetricSummary), AggregateError> {
    if outcomes.is_empty() {
        return Err(AggregateError::NoChallenges);
    }
    let sum: f64 = outcomes.iter().map(|o| clamp01(o.quality)).sum();
    // usize → f64 is exact for any realistic challenge count.
    let mean = clamp01(sum / outcomes.len() as f64);
    let summary = MetricSummary::from_measurements(outcomes.iter().map(|o| &o.measurement));
    Ok((mean, summary))
}

fn build(quality_score: f64, efficiency: EfficiencyReport, n: usize) -> RunScore {
    RunScore {
        quality_score,
        final_score: final_score(quality_score, &efficiency),
        efficiency,
        scored_challenges: n,
    }
}

/// Aggregates a run with linear normalisation (the reference's behaviour). Allocation-free.
///
/// With `efficiency.normalisation = "cohort"` this is the provisional score: the round commit replaces
/// its efficiency with cohort norms through [`renormalise_cohort`] or [`RunScore::with_norms`].
pub fn score_run(outcomes: &[ChallengeOutcome], cfg: &ScoringConfig) -> Result<RunScore, AggregateError> {
    let (quality, summary) = summarise(outcomes)?;
    Ok(build(
        quality,
        evaluate_linear(&summary, &cfg.efficiency),
        outcomes.len(),
    ))
}

/// Aggregates a run with precomputed norms (for example cohort norms). Allocation-free.
pub fn score_run_with_norms(
    outcomes: &[ChallengeOutcome],
    norms: Norms,
    cfg: &ScoringConfig,
) -> Result<RunScore, AggregateError> {
    let (quality, summary) = summarise(outcomes)?;
    Ok(build(
        quality,
        evaluate_with_norms(&summary, norms, &cfg.efficiency),
        outcomes.len(),
    ))
}

impl RunScore {
    /// The same run re-evaluated with other norms (quality, means and worsts unchanged).
    pub fn with_norms(&self, norms: Norms, cfg: &EfficiencyConfig) -> Self {
        build(
            self.quality_score,
            evaluate_with_norms(&self.efficiency.summary(), norms, cfg),
            self.scored_challenges,
        )
    }
}

/// Cohort mode at round commit: recomputes every run's norms from the round's mean times and VRAMs
/// ([`super::efficiency::cohort_norms`]) and re-derives factor and final score in place.
pub fn renormalise_cohort(runs: &mut [RunScore], cfg: &EfficiencyConfig) {
    let summaries: Vec<MetricSummary> = runs.iter().map(|r| r.efficiency.summary()).collect();
    let norms = cohort_norms_for(&summaries, cfg.norm_max);
    for (run, n) in runs.iter_mut().zip(norms) {
        *run = run.with_norms(n, cfg);
    }
}

/// Round commit for either mode: a no-op in `linear` mode (runs are already final), cohort
/// re-normalisation in `cohort` mode. Pass exactly the runs ranked together in the round.
pub fn apply_round_normalisation(runs: &mut [RunScore], cfg: &EfficiencyConfig) {
    match cfg.normalisation {
        Normalisation::Linear => {}
        Normalisation::Cohort => renormalise_cohort(runs, cfg),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::scoring::config::CapMode;
    use crate::scoring::efficiency::RejectReason;
    use crate::scoring::quality::IdentityMode;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn ok(q: f64, t: f64, v: f64) -> ChallengeOutcome {
        ChallengeOutcome {
            quality: q,
            measurement: Measurement::new(t, v),
        }
    }

    #[test]
    fn empty_run_is_a_typed_error_not_nan() {
        let cfg = ScoringConfig::default();
        assert_eq!(score_run(&[], &cfg), Err(AggregateError::NoChallenges));
        let n = Norms {
            time_norm: 1.0,
            vram_norm: 1.0,
        };
        assert_eq!(
            score_run_with_norms(&[], n, &cfg),
            Err(AggregateError::NoChallenges)
        );
    }

    #[test]
    fn mean_over_all_scored_challenges_failed_ones_count_zero() {
        let cfg = ScoringConfig::default();
        let run = [
            ok(0.8, 10.0, 8.0),
            ok(0.6, 10.0, 8.0),
            ChallengeOutcome::failed(Measurement::default()),
            ok(0.7, 10.0, 8.0),
            ok(0.9, 10.0, 8.0),
        ];
        let r = score_run(&run, &cfg).unwrap();
        assert_eq!(r.scored_challenges, 5);
        assert!(close(r.quality_score, 3.0 / 5.0));
        // factor from mean 10 s / 8 GB with the latest constants: exp(−0.0375).
        assert!(close(r.efficiency.efficiency_factor, (-0.0375f64).exp()));
        assert!(close(r.final_score, 0.6 * (-0.0375f64).exp()));
    }

    #[test]
    fn out_of_range_and_nan_qualities_are_clamped() {
        let cfg = ScoringConfig::default();
        let run = [ok(f64::NAN, 1.0, 1.0), ok(2.0, 1.0, 1.0), ok(-1.0, 1.0, 1.0)];
        let r = score_run(&run, &cfg).unwrap();
        assert!(close(r.quality_score, 1.0 / 3.0));
        assert!((0.0..=1.0).contains(&r.final_score));
    }

    #[test]
    fn caps_come_from_the_worst_challenge() {
        let cfg = ScoringConfig::default();
        let run = [ok(1.0, 10.0, 8.0), ok(1.0, 70.0, 8.0)];
        let r = score_run(&run, &cfg).unwrap();
        assert!(r.efficiency.cap_violation);
        assert!(close(r.final_score, 0.01 * r.efficiency.efficiency_factor));

        let mut cfg = ScoringConfig::default();
        cfg.efficiency.cap_mode = CapMode::Reject;
        let r = score_run(&run, &cfg).unwrap();
        assert_eq!(r.final_score, 0.0);
        assert_eq!(r.efficiency.reject_reason, Some(RejectReason::TimeCapExceeded));
        assert_eq!(r.quality_score, 1.0);
    }

    #[test]
    fn per_challenge_entry_and_run_agree_for_one_challenge() {
        let cfg = ScoringConfig::default();
        let c = ChallengeComponents {
            identity: 0.8,
            lipsync: 0.7,
            video: 0.6,
            audio: 0.5,
            temporal: 0.4,
            penalty: 0.1,
            wer: 0.2,
            sync_c: 0.8,
            sync_d: 0.1,
            face_detect_ratio: 0.95,
            identity_mode: IdentityMode::Insightface,
            picture_mismatches: 0,
        };
        let m = Measurement::new(10.0, 8.0);
        let s = score_challenge(&c, &m, &cfg);
        assert!(close(s.quality.quality_score, 0.585));
        assert!(close(s.final_score, 0.585 * (-0.0375f64).exp()));
        let r = score_run(&[ChallengeOutcome::scored(&s.quality, m)], &cfg).unwrap();
        assert_eq!(r.final_score, s.final_score);
        assert_eq!(r.efficiency, s.efficiency);
    }

    #[test]
    fn missing_metrics_factor_reported_is_the_factor_used() {
        let cfg = ScoringConfig::default();
        let run = [ChallengeOutcome {
            quality: 0.5,
            measurement: Measurement::default(),
        }];
        let r = score_run(&run, &cfg).unwrap();
        assert!(r.efficiency.time_missing && r.efficiency.vram_missing);
        assert!(close(r.efficiency.efficiency_factor, (-0.25f64).exp()));
        assert!(close(r.final_score, 0.5 * r.efficiency.efficiency_factor));
    }

    #[test]
    fn with_norms_and_cohort_renormalisation() {
        let cfg = ScoringConfig::default();
        let fast = score_run(&[ok(0.5, 10.0, 8.0)], &cfg).unwrap();
        let mid = score_run(&[ok(0.5, 20.0, 8.0)], &cfg).unwrap();
        let slow = score_run(&[ok(0.5, 30.0, 8.0)], &cfg).unwrap();
        let mut runs = [fast, mid, slow];
        renormalise_cohort(&mut runs, &cfg.efficiency);
        // median 20, MAD 10: norms 1 ∓ 10/14.826; VRAM all equal with median 8 → 1.0.
        assert!(close(runs[1].efficiency.time_norm, 1.0));
        assert!(close(runs[0].efficiency.time_norm, 1.0 - 10.0 / 14.826));
        assert!(runs.iter().all(|r| r.efficiency.vram_norm == 1.0));
        assert!(runs[0].final_score > runs[1].final_score && runs[1].final_score > runs[2].final_score);
        assert!(runs.iter().all(|r| r.quality_score == 0.5));
        // Same as scoring from the outcomes with those norms.
        let n = Norms {
            time_norm: runs[2].efficiency.time_norm,
            vram_norm: 1.0,
        };
        let direct = score_run_with_norms(&[ok(0.5, 30.0, 8.0)], n, &cfg).unwrap();
        assert_eq!(direct, runs[2]);
    }

    #[test]
    fn round_normalisation_follows_the_configured_mode() {
        let mut cfg = ScoringConfig::default();
        let linear = [
            score_run(&[ok(0.5, 10.0, 8.0)], &cfg).unwrap(),
            score_run(&[ok(0.5, 30.0, 8.0)], &cfg).unwrap(),
        ];
        let mut runs = linear;
        apply_round_normalisation(&mut runs, &cfg.efficiency);
        assert_eq!(runs, linear);
        cfg.efficiency.normalisation = Normalisation::Cohort;
        apply_round_normalisation(&mut runs, &cfg.efficiency);
        // Two runs: median 20, MAD 10 → norms 1 ∓ 10/14.826.
        assert!(close(runs[0].efficiency.time_norm, 1.0 - 10.0 / 14.826));
        assert!(close(runs[1].efficiency.time_norm, 1.0 + 10.0 / 14.826));
    }
}
