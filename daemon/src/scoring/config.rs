//! The `[scoring]` configuration table: every constant of the blend, the gates, the efficiency factor
//! and the tie-break, with the latest reference values (talkhead-subnet@ddaf736) as defaults.
//!
//! Owns: the typed shape of the table (serde, unknown keys rejected at every level) and its semantic
//! validation ([`ScoringConfig::validate`]), which reports every problem at once with a dotted key
//! relative to the table. Must not: read files or the environment, log, or know about the rest of the
//! daemon's configuration. The scoring functions never panic on an unvalidated config (their outputs
//! stay in `[0, 1]`), but they are only *meaningful* for a config that passed `validate`.

use serde::{Deserialize, Serialize};

pub use crate::domain::metrics::ScoringProfile;

/// Blend weights must sum to 1 within this tolerance.
pub const BLEND_SUM_TOLERANCE: f64 = 1e-9;

/// The whole `[scoring]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Weights of the per-challenge quality blend (docs/reference.md#scoring-quality).
    pub blend: BlendWeights,
    /// Multiplicative gates and the WER hard fail (docs/reference.md#scoring-quality, plus the
    /// sync-correlation fix).
    pub gates: GateConfig,
    /// Efficiency factor, caps and normalisation (docs/reference.md#scoring-efficiency).
    pub efficiency: EfficiencyConfig,
    /// Two final scores closer than this are a tie, settled by the tie-break keys (`TIE_QUALITY_EPSILON`).
    pub tie_epsilon: f64,
    /// Which formulas the analysis scores with: `hardened` (default; docs/scoring.md, "Hardened
    /// profile") or `reference` (every deviation of that section off).
    pub profile: ScoringProfile,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            blend: BlendWeights::default(),
            gates: GateConfig::default(),
            efficiency: EfficiencyConfig::default(),
            tie_epsilon: 1e-4,
            profile: ScoringProfile::default(),
        }
    }
}

/// `[scoring.blend]`: `blended = Σ wᵢ·componentᵢ − penalty·penalty_component`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlendWeights {
    /// Weight of the identity component (0.35).
    pub identity: f64,
    /// Weight of the lipsync component (0.35).
    pub lipsync: f64,
    /// Weight of the video component (0.15).
    pub video: f64,
    /// Weight of the audio component (0.10).
    pub audio: f64,
    /// Weight of the temporal component (0.05).
    pub temporal: f64,
    /// Weight with which the penalty component is subtracted (1.0: the reference subtracts it in full).
    pub penalty: f64,
}

impl Default for BlendWeights {
    fn default() -> Self {
        Self {
            identity: 0.35,
            lipsync: 0.35,
            video: 0.15,
            audio: 0.10,
            temporal: 0.05,
            penalty: 1.0,
        }
    }
}

/// `[scoring.gates]`: multiplicative gates on the blend and the WER hard fail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Face-detect gate fires when `face_detect_ratio` is below this (0.80); InsightFace mode only.
    pub face_detect_threshold: f64,
    /// Multiplier of the face-detect gate (0.2).
    pub face_detect_multiplier: f64,
    /// Identity gate fires when `identity` is below this (0.35).
    pub identity_threshold: f64,
    /// Multiplier of the identity gate (0.1).
    pub identity_multiplier: f64,
    /// Sync gate fires when `sync_c` is below this (0.45, the reference's `SYNC_C_THRESHOLD`).
    pub sync_c_threshold: f64,
    /// Sync gate also fires when the implied correlation `2·sync_c − 1` is below this (0.05). Not in the
    /// reference: it fixes docs/reference.md#weakness-14, where zero correlation (`sync_c` 0.5) passed the
    /// gate.
    pub min_sync_correlation: f64,
    /// Multiplier of the sync gate (0.2).
    pub sync_multiplier: f64,
    /// `wer` strictly above this zeroes the challenge (0.60).
    pub wer_hard_fail: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            face_detect_threshold: 0.80,
            face_detect_multiplier: 0.2,
            identity_threshold: 0.35,
            identity_multiplier: 0.1,
            sync_c_threshold: 0.45,
            min_sync_correlation: 0.05,
            sync_multiplier: 0.2,
            wer_hard_fail: 0.60,
        }
    }
}

/// What a cap violation does to the final score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapMode {
    /// Multiply the final score by `cap_penalty` (the reference's hard-coded behaviour).
    Penalty,
    /// Final score 0 with a reject reason (present but unused in the reference).
    Reject,
}

/// How inference time and VRAM become norms in `[0, norm_max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalisation {
    /// `clamp(value / ref, 0, norm_max)`: every reference version.
    Linear,
    /// Robust median/MAD normalisation across the round's miners. The scoring core implements it;
    /// no round commit applies it yet, so [`ScoringConfig::validate`] refuses it.
    Cohort,
}

/// `[scoring.efficiency]`: the soft efficiency factor and the hard caps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EfficiencyConfig {
    /// Cap on the worst challenge's peak VRAM in GB (`MAX_VRAM_GB`, 16).
    pub max_vram_gb: f64,
    /// Cap on the worst challenge's inference time in seconds (`MAX_INFERENCE_TIME_SEC`, 60).
    pub max_inference_time_sec: f64,
    /// Linear reference for the time norm in seconds (`TIME_REF_SEC`, 120).
    pub time_ref_sec: f64,
    /// Linear reference for the VRAM norm in GB (`VRAM_REF_GB`, 32).
    pub vram_ref_gb: f64,
    /// Multiplier applied on a cap violation in penalty mode (`CAP_PENALTY_SCORE`, 0.01).
    pub cap_penalty: f64,
    /// What a cap violation does (`penalty`).
    pub cap_mode: CapMode,
    /// How norms are computed (`linear`).
    pub normalisation: Normalisation,
    /// Weight of the time norm in the exponent (0.15).
    pub time_weight: f64,
    /// Weight of the VRAM norm in the exponent (0.10).
    pub vram_weight: f64,
    /// Upper clamp of every norm (3.0).
    pub norm_max: f64,
}

impl Default for EfficiencyConfig {
    fn default() -> Self {
        Self {
            max_vram_gb: 16.0,
            max_inference_time_sec: 60.0,
            time_ref_sec: 120.0,
            vram_ref_gb: 32.0,
            cap_penalty: 0.01,
            cap_mode: CapMode::Penalty,
            normalisation: Normalisation::Linear,
            time_weight: 0.15,
            vram_weight: 0.10,
            norm_max: 3.0,
        }
    }
}

/// One semantic problem in the `[scoring]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigProblem {
    /// Dotted key relative to the `[scoring]` table, e.g. `efficiency.cap_penalty`.
    pub key: String,
    /// What is wrong, with the offending value.
    pub problem: String,
}

/// Collects problems; keeps `validate` a flat list of one-line rules.
struct Checker {
    problems: Vec<ConfigProblem>,
}

impl Checker {
    fn push(&mut self, key: &str, problem: String) {
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            problem,
        });
    }

    /// Finite and inside `[lo, hi]`.
    fn in_range(&mut self, key: &str, v: f64, lo: f64, hi: f64) {
        if !v.is_finite() {
            self.push(key, format!("must be a finite number, got {v}"));
        } else if v < lo || v > hi {
            self.push(key, format!("must be in [{lo}, {hi}], got {v}"));
        }
    }

    /// Finite and `>= 0`.
    fn non_negative(&mut self, key: &str, v: f64) {
        if !v.is_finite() {
            self.push(key, format!("must be a finite number, got {v}"));
        } else if v < 0.0 {
            self.push(key, format!("must not be negative, got {v}"));
        }
    }

    /// Finite and `> 0` (references and caps: a zero would divide by zero or cap everything).
    fn positive(&mut self, key: &str, v: f64) {
        if !v.is_finite() {
            self.push(key, format!("must be a finite number, got {v}"));
        } else if v <= 0.0 {
            self.push(key, format!("must be greater than 0, got {v}"));
        }
    }
}

impl ScoringConfig {
    /// Checks every semantic rule and returns all problems found (empty `Err` never happens).
    ///
    /// Rules: every number finite; weights, thresholds and multipliers in `[0, 1]`; blend weights sum
    /// to 1 within [`BLEND_SUM_TOLERANCE`]; penalty weight `>= 0`; `min_sync_correlation` in `[-1, 1]`;
    /// references and caps `> 0`; `cap_penalty` in `[0, 1]`; exponent weights `>= 0`; `norm_max >= 1`
    /// (a value equal to its reference, and a missing metric, must be representable as norm 1);
    /// `tie_epsilon` in `[0, 1]`.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut c = Checker { problems: Vec::new() };

        let b = &self.blend;
        let weights = [
            ("blend.identity", b.identity),
            ("blend.lipsync", b.lipsync),
            ("blend.video", b.video),
            ("blend.audio", b.audio),
            ("blend.temporal", b.temporal),
        ];
        for (key, w) in weights {
            c.in_range(key, w, 0.0, 1.0);
        }
        let sum: f64 = weights.iter().map(|(_, w)| w).sum();
        // Only meaningful once each weight is finite; otherwise the per-key problem says it all.
        if weights.iter().all(|(_, w)| w.is_finite()) && (sum - 1.0).abs() > BLEND_SUM_TOLERANCE {
            c.push(
                "blend",
                format!("the five blend weights must sum to 1 (±{BLEND_SUM_TOLERANCE}), got {sum}"),
            );
        }
        c.non_negative("blend.penalty", b.penalty);

        let g = &self.gates;
        c.in_range("gates.face_detect_threshold", g.face_detect_threshold, 0.0, 1.0);
        c.in_range("gates.face_detect_multiplier", g.face_detect_multiplier, 0.0, 1.0);
        c.in_range("gates.identity_threshold", g.identity_threshold, 0.0, 1.0);
        c.in_range("gates.identity_multiplier", g.identity_multiplier, 0.0, 1.0);
        c.in_range("gates.sync_c_threshold", g.sync_c_threshold, 0.0, 1.0);
        c.in_range("gates.min_sync_correlation", g.min_sync_correlation, -1.0, 1.0);
        c.in_range("gates.sync_multiplier", g.sync_multiplier, 0.0, 1.0);
        c.in_range("gates.wer_hard_fail", g.wer_hard_fail, 0.0, 1.0);

        let e = &self.efficiency;
        c.positive("efficiency.max_vram_gb", e.max_vram_gb);
        c.positive("efficiency.max_inference_time_sec", e.max_inference_time_sec);
        c.positive("efficiency.time_ref_sec", e.time_ref_sec);
        c.positive("efficiency.vram_ref_gb", e.vram_ref_gb);
        c.in_range("efficiency.cap_penalty", e.cap_penalty, 0.0, 1.0);
        c.non_negative("efficiency.time_weight", e.time_weight);
        c.non_negative("efficiency.vram_weight", e.vram_weight);
        if !e.norm_max.is_finite() {
            c.push(
                "efficiency.norm_max",
                format!("must be a finite number, got {}", e.norm_max),
            );
        } else if e.norm_max < 1.0 {
            c.push(
                "efficiency.norm_max",
                format!(
                    "must be at least 1 (norm 1 means 'equal to the reference'), got {}",
                    e.norm_max
                ),
            );
        }

        c.in_range("tie_epsilon", self.tie_epsilon, 0.0, 1.0);

        // The pure cohort re-scoring exists (`aggregate::renormalise_cohort`), but no round commit
        // applies it: a value that would be accepted and do nothing is refused instead.
        if e.normalisation == Normalisation::Cohort {
            c.push(
                "efficiency.normalisation",
                "\"cohort\" is not applied at round commit yet, so it is refused; use \"linear\"".to_owned(),
            );
        }

        if c.problems.is_empty() {
            Ok(())
        } else {
            Err(c.problems)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn keys(cfg: &ScoringConfig) -> Vec<String> {
        match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(p) => p.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn defaults_are_the_latest_reference_values_and_valid() {
        let c = ScoringConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.tie_epsilon, 1e-4);
        let e = c.efficiency;
        assert_eq!(
            (
                e.max_vram_gb,
                e.max_inference_time_sec,
                e.time_ref_sec,
                e.vram_ref_gb
            ),
            (16.0, 60.0, 120.0, 32.0)
        );
        assert_eq!(
            (e.cap_penalty, e.time_weight, e.vram_weight, e.norm_max),
            (0.01, 0.15, 0.10, 3.0)
        );
        assert_eq!(e.cap_mode, CapMode::Penalty);
        assert_eq!(e.normalisation, Normalisation::Linear);
        let b = c.blend;
        assert_eq!(
            (b.identity, b.lipsync, b.video, b.audio, b.temporal, b.penalty),
            (0.35, 0.35, 0.15, 0.10, 0.05, 1.0)
        );
        let g = c.gates;
        assert_eq!((g.face_detect_threshold, g.face_detect_multiplier), (0.80, 0.2));
        assert_eq!((g.identity_threshold, g.identity_multiplier), (0.35, 0.1));
        assert_eq!(
            (g.sync_c_threshold, g.sync_multiplier, g.min_sync_correlation),
            (0.45, 0.2, 0.05)
        );
        assert_eq!(g.wer_hard_fail, 0.60);
    }

    #[test]
    fn empty_table_gives_defaults_and_partial_tables_merge() {
        let c: ScoringConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ScoringConfig::default());
        let c: ScoringConfig = serde_json::from_str(
            r#"{"efficiency": {"cap_mode": "reject", "normalisation": "cohort"},
                "gates": {"min_sync_correlation": 0.1}}"#,
        )
        .unwrap();
        assert_eq!(c.efficiency.cap_mode, CapMode::Reject);
        assert_eq!(c.efficiency.normalisation, Normalisation::Cohort);
        assert_eq!(c.efficiency.time_ref_sec, 120.0);
        assert_eq!(c.gates.min_sync_correlation, 0.1);
        assert_eq!(c.gates.sync_c_threshold, 0.45);
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        for body in [
            r#"{"tie_eps": 1e-4}"#,
            r#"{"blend": {"identiy": 0.35}}"#,
            r#"{"gates": {"wer": 0.6}}"#,
            r#"{"efficiency": {"cap_penalty_score": 0.01}}"#,
        ] {
            assert!(serde_json::from_str::<ScoringConfig>(body).is_err(), "{body}");
        }
        assert!(serde_json::from_str::<ScoringConfig>(r#"{"efficiency": {"cap_mode": "drop"}}"#).is_err());
    }

    #[test]
    fn round_trips_through_serde() {
        let c = ScoringConfig::default();
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains(r#""cap_mode":"penalty""#) && s.contains(r#""normalisation":"linear""#));
        assert_eq!(serde_json::from_str::<ScoringConfig>(&s).unwrap(), c);
    }

    #[test]
    fn rejects_non_finite_negative_zero_and_out_of_range_with_dotted_keys() {
        let mut c = ScoringConfig::default();
        c.efficiency.cap_penalty = 1.5;
        c.efficiency.time_ref_sec = 0.0;
        c.efficiency.vram_ref_gb = f64::NAN;
        c.efficiency.max_vram_gb = -1.0;
        c.efficiency.time_weight = -0.1;
        c.efficiency.vram_weight = f64::INFINITY;
        c.efficiency.norm_max = 0.5;
        c.gates.wer_hard_fail = 1.2;
        c.gates.min_sync_correlation = -2.0;
        c.gates.identity_multiplier = -0.1;
        c.blend.penalty = -1.0;
        c.tie_epsilon = f64::NAN;
        let problems = c.validate().unwrap_err();
        let k: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            k,
            [
                "blend.penalty",
                "gates.identity_multiplier",
                "gates.min_sync_correlation",
                "gates.wer_hard_fail",
                "efficiency.max_vram_gb",
                "efficiency.time_ref_sec",
                "efficiency.vram_ref_gb",
                "efficiency.cap_penalty",
                "efficiency.time_weight",
                "efficiency.vram_weight",
                "efficiency.norm_max",
                "tie_epsilon",
            ]
        );
        assert_eq!(
            problems[7].to_string(),
            "efficiency.cap_penalty: must be in [0, 1], got 1.5"
        );
    }

    #[test]
    fn blend_weights_must_sum_to_one() {
        let mut c = ScoringConfig::default();
        c.blend.identity = 0.36;
        assert_eq!(keys(&c), ["blend"]);
        c.blend.lipsync = 0.34;
        assert_eq!(keys(&c), Vec::<String>::new());
        c.blend.temporal = 0.05 + 1e-8;
        assert_eq!(keys(&c), ["blend"]);
        c.blend.temporal = 0.05 + 1e-12;
        assert_eq!(keys(&c), Vec::<String>::new());
        // A non-finite weight is reported once, under its own key, not again as a bad sum.
        c.blend.temporal = f64::NAN;
        assert_eq!(keys(&c), ["blend.temporal"]);
    }

    #[test]
    fn cohort_normalisation_is_refused_until_a_round_commit_applies_it() {
        let mut c = ScoringConfig::default();
        c.efficiency.normalisation = Normalisation::Cohort;
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "efficiency.normalisation");
        assert!(
            problems[0].to_string().contains("\"cohort\" is not applied"),
            "{}",
            problems[0]
        );
        c.efficiency.normalisation = Normalisation::Linear;
        assert!(c.validate().is_ok());
    }
}
