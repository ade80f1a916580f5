//! Pure scoring: per-challenge quality, efficiency, run aggregation and ranking.
//!
//! Owns the arithmetic that turns analysis components and host measurements into the numbers the
//! validator pays on: [`quality`] (blend, gates, WER hard fail), [`efficiency`] (norms, factor, caps,
//! cohort normalisation), [`aggregate`] (per-challenge entries and the run score) and [`ranking`] (the
//! tie-break and the winner). Its constants live in [`config::ScoringConfig`] (`[scoring]` table).
//!
//! Must not: do I/O, read a clock, use randomness, log, or allocate on the per-challenge path; every
//! function is deterministic in its arguments. Every score it returns is in `[0, 1]` whatever the input
//! (NaN and ±inf included), and nothing here panics. `docs/scoring.md` has the formulas and the list of
//! deliberate deviations from the reference.

pub mod aggregate;
pub mod config;
pub mod efficiency;
pub(crate) mod math;
pub mod quality;
pub mod ranking;

#[cfg(test)]
mod proptests;

pub use aggregate::{
    AggregateError, ChallengeOutcome, ChallengeScore, RunScore, apply_round_normalisation, final_score,
    renormalise_cohort, score_challenge, score_run, score_run_with_norms,
};
pub use config::{
    BlendWeights, CapMode, ConfigProblem, EfficiencyConfig, GateConfig, Normalisation, ScoringConfig,
    ScoringProfile,
};
pub use efficiency::{
    EfficiencyReport, Measurement, MetricSummary, Norms, RejectReason, challenge_efficiency, cohort_norms,
    cohort_norms_for, evaluate_linear, evaluate_with_norms, run_efficiency,
};
pub use quality::{ChallengeComponents, GateFlags, IdentityMode, QualityScore, score_quality};
pub use ranking::{RankCandidate, rank, select_winner, should_prefer};
