//! Per-challenge quality: clamp the analysis components, blend them, apply the multiplicative gates and
//! the WER hard fail (docs/reference.md#scoring-quality).
//!
//! Owns: [`ChallengeComponents`] → [`QualityScore`]. Must not: compute components (that is analysis),
//! allocate, log, or read anything but its arguments; it runs once per scored challenge on the hot path.
//!
//! Deviations from the reference, on purpose:
//! - the sync gate also fires when the correlation implied by `sync_c` (`2·sync_c − 1`) is below
//!   `gates.min_sync_correlation` (docs/reference.md#weakness-14: zero correlation gave `sync_c` 0.5 and
//!   passed);
//! - a non-finite component is replaced by its *worst* value (0 for the "higher is better" scores, 1 for
//!   `penalty`, `wer` and `sync_d`) and flagged, so a broken measurement never helps a miner.

use serde::{Deserialize, Serialize};

use super::config::ScoringConfig;
use super::math::clamp01;

/// How the identity score was obtained (a [`crate::domain`] type, as the metrics document carries it).
pub use crate::domain::metrics::IdentityMode;

/// Raw component scores of one challenge, as the analysis produced them (not yet clamped).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChallengeComponents {
    /// Identity similarity to the reference face, nominally `[0, 1]`.
    pub identity: f64,
    /// Lip-sync score, nominally `[0, 1]`.
    pub lipsync: f64,
    /// Audio score, nominally `[0, 1]`.
    pub audio: f64,
    /// Video (aesthetic + motion) score, nominally `[0, 1]`.
    pub video: f64,
    /// Temporal consistency score, nominally `[0, 1]`.
    pub temporal: f64,
    /// Combined penalty, nominally `[0, 1]`; subtracted from the blend.
    pub penalty: f64,
    /// Word error rate, nominally `[0, 1]`; above `gates.wer_hard_fail` the challenge scores 0.
    pub wer: f64,
    /// Sync confidence `(corr + 1) / 2`, nominally `[0, 1]`.
    pub sync_c: f64,
    /// Sync lag distance, nominally `[0, 1]`; informational (already inside `lipsync`).
    pub sync_d: f64,
    /// Fraction of sampled frames with a detected face, `[0, 1]`.
    pub face_detect_ratio: f64,
    /// How identity was computed.
    pub identity_mode: IdentityMode,
    /// How many properties of the task's picture (size, frame rate) the output missed, with
    /// `analysis.conformance = "penalty"` (strict conformance refuses such an output as `bad_output`
    /// before it is scored, so this is 0 there). Each one is the conformance gate's multiplier.
    #[serde(default)]
    pub picture_mismatches: u32,
}

/// The conformance gate's multiplier per property of the task's picture the output missed
/// (`analysis.conformance = "penalty"`): half the quality for the wrong size, half again for the wrong
/// frame rate. Steep on purpose: a smaller or slower output is cheaper to make, so the penalty must
/// outweigh what the efficiency factor gives for it.
pub const CONFORMANCE_MULTIPLIER: f64 = 0.5;

/// Which gates fired (a bitflags-like set of bools).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GateFlags {
    /// InsightFace mode and `face_detect_ratio < gates.face_detect_threshold`.
    pub face_detect: bool,
    /// `identity < gates.identity_threshold`.
    pub identity: bool,
    /// `sync_c < gates.sync_c_threshold` or `2·sync_c − 1 < gates.min_sync_correlation`.
    pub sync: bool,
    /// The output missed the task's picture and was scored with `analysis.conformance = "penalty"`.
    #[serde(default)]
    pub conformance: bool,
}

impl GateFlags {
    /// True when at least one gate fired.
    pub const fn any(self) -> bool {
        self.face_detect || self.identity || self.sync || self.conformance
    }

    /// Number of gates that fired.
    pub const fn count(self) -> u32 {
        self.face_detect as u32 + self.identity as u32 + self.sync as u32 + self.conformance as u32
    }
}

/// The quality verdict of one challenge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QualityScore {
    /// `clamp01(gate_multiplier · blended)`, or 0 on a WER hard fail. Always in `[0, 1]`.
    pub quality_score: f64,
    /// Product of the multipliers of the gates that fired (1.0 when none did).
    pub gate_multiplier: f64,
    /// `Σ wᵢ·componentᵢ − w_penalty·penalty` over the clamped components (may be negative).
    pub blended: f64,
    /// Which gates fired.
    pub gates_applied: GateFlags,
    /// `wer > gates.wer_hard_fail`: the challenge scores 0 whatever the rest says.
    pub wer_hard_fail: bool,
    /// Some input was NaN or ±inf and was replaced by its worst value.
    pub non_finite_input: bool,
    /// Some finite input was outside `[0, 1]` and was clamped.
    pub out_of_range_input: bool,
    /// The components actually used: clamped to `[0, 1]`, non-finite ones replaced.
    pub components: ChallengeComponents,
}

/// Clamps one component; `worst` replaces a non-finite value. Returns (value, non_finite, out_of_range).
#[inline]
fn sanitise(v: f64, worst: f64) -> (f64, bool, bool) {
    if !v.is_finite() {
        (worst, true, false)
    } else if (0.0..=1.0).contains(&v) {
        (v, false, false)
    } else {
        (clamp01(v), false, true)
    }
}

impl ChallengeComponents {
    /// Every component clamped to `[0, 1]` (non-finite → worst value), with (non_finite, out_of_range).
    fn sanitised(&self) -> (Self, bool, bool) {
        let mut nf = false;
        let mut oor = false;
        let mut f = |v: f64, worst: f64| {
            let (x, a, b) = sanitise(v, worst);
            nf |= a;
            oor |= b;
            x
        };
        let out = Self {
            identity: f(self.identity, 0.0),
            lipsync: f(self.lipsync, 0.0),
            audio: f(self.audio, 0.0),
            video: f(self.video, 0.0),
            temporal: f(self.temporal, 0.0),
            penalty: f(self.penalty, 1.0),
            wer: f(self.wer, 1.0),
            sync_c: f(self.sync_c, 0.0),
            sync_d: f(self.sync_d, 1.0),
            face_detect_ratio: f(self.face_detect_ratio, 0.0),
            identity_mode: self.identity_mode,
            picture_mismatches: self.picture_mismatches,
        };
        (out, nf, oor)
    }
}

/// Scores one challenge's components with the blend and gates of `cfg` (docs/reference.md#scoring-quality +
/// the sync fix).
///
/// `quality = 0` if `wer > wer_hard_fail`, else `clamp01(gate · (Σ wᵢ·cᵢ − w_p·penalty))`, where
/// `gate` is the product of the multipliers of the gates that fired. Pure and allocation-free.
pub fn score_quality(components: &ChallengeComponents, cfg: &ScoringConfig) -> QualityScore {
    let (c, non_finite_input, out_of_range_input) = components.sanitised();
    let g = &cfg.gates;
    let w = &cfg.blend;

    let mut flags = GateFlags::default();
    let mut gate = 1.0;
    if c.identity_mode == IdentityMode::Insightface && c.face_detect_ratio < g.face_detect_threshold {
        flags.face_detect = true;
        gate *= g.face_detect_multiplier;
    }
    if c.identity < g.identity_threshold {
        flags.identity = true;
        gate *= g.identity_multiplier;
    }
    // sync_c = (corr + 1) / 2, so corr = 2·sync_c − 1; the reference's 0.45 alone lets corr 0 through.
    let implied_correlation = 2.0 * c.sync_c - 1.0;
    if c.sync_c < g.sync_c_threshold || implied_correlation < g.min_sync_correlation {
        flags.sync = true;
        gate *= g.sync_multiplier;
    }
    if c.picture_mismatches > 0 {
        flags.conformance = true;
        gate *= CONFORMANCE_MULTIPLIER.powi(c.picture_mismatches.min(2) as i32);
    }

    let blended = w.identity * c.identity
        + w.lipsync * c.lipsync
        + w.video * c.video
        + w.audio * c.audio
        + w.temporal * c.temporal
        - w.penalty * c.penalty;

    let wer_hard_fail = c.wer > g.wer_hard_fail;
    let quality_score = if wer_hard_fail {
        0.0
    } else {
        clamp01(gate * blended)
    };

    QualityScore {
        quality_score,
        gate_multiplier: gate,
        blended,
        gates_applied: flags,
        wer_hard_fail,
        non_finite_input,
        out_of_range_input,
        components: c,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    /// A clean challenge that passes every gate: blend = 0.35·0.8 + 0.35·0.7 + 0.15·0.6 + 0.10·0.5
    /// + 0.05·0.4 − 0.1 = 0.28 + 0.245 + 0.09 + 0.05 + 0.02 − 0.1 = 0.585.
    fn good() -> ChallengeComponents {
        ChallengeComponents {
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
        }
    }

    fn q(c: ChallengeComponents) -> QualityScore {
        score_quality(&c, &ScoringConfig::default())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < EPS
    }

    #[test]
    fn clean_challenge_is_the_plain_blend() {
        let s = q(good());
        assert!(close(s.blended, 0.585), "{}", s.blended);
        assert!(close(s.quality_score, 0.585));
        assert_eq!(s.gate_multiplier, 1.0);
        assert_eq!(s.gates_applied, GateFlags::default());
        assert!(!s.gates_applied.any());
        assert!(!s.wer_hard_fail && !s.non_finite_input && !s.out_of_range_input);
    }

    #[test]
    fn face_detect_gate_alone_and_only_in_insightface_mode() {
        let mut c = good();
        c.face_detect_ratio = 0.79;
        let s = q(c);
        assert!(s.gates_applied.face_detect && s.gates_applied.count() == 1);
        assert!(close(s.gate_multiplier, 0.2));
        assert!(close(s.quality_score, 0.2 * 0.585));
        // Exactly at the threshold: not below, so no gate.
        c.face_detect_ratio = 0.80;
        assert!(!q(c).gates_applied.face_detect);
        // Other identity modes never arm it, even with no face at all.
        c.face_detect_ratio = 0.0;
        for mode in [IdentityMode::FallbackHistogram, IdentityMode::Unavailable] {
            c.identity_mode = mode;
            let s = q(c);
            assert!(!s.gates_applied.face_detect);
            assert!(close(s.quality_score, 0.585));
        }
    }

    #[test]
    fn identity_gate_alone() {
        let mut c = good();
        c.identity = 0.34;
        // blend = 0.585 − 0.35·(0.8 − 0.34) = 0.585 − 0.161 = 0.424; ×0.1.
        let s = q(c);
        assert!(s.gates_applied.identity && s.gates_applied.count() == 1);
        assert!(close(s.blended, 0.424));
        assert!(close(s.quality_score, 0.0424));
        c.identity = 0.35;
        assert!(!q(c).gates_applied.identity);
    }

    #[test]
    fn sync_gate_on_the_reference_threshold() {
        let mut c = good();
        c.sync_c = 0.44;
        let s = q(c);
        assert!(s.gates_applied.sync && s.gates_applied.count() == 1);
        assert!(close(s.quality_score, 0.2 * 0.585));
    }

    #[test]
    fn sync_gate_fires_on_zero_correlation_bug_14() {
        // sync_c 0.5 is correlation 0: the reference let it pass the 0.45 gate.
        let mut c = good();
        c.sync_c = 0.5;
        let s = q(c);
        assert!(s.gates_applied.sync);
        assert!(close(s.quality_score, 0.2 * 0.585));
        // Correlation 0.04 < 0.05 still fires; 0.06 passes (sync_c 0.52 / 0.53).
        c.sync_c = 0.52;
        assert!(q(c).gates_applied.sync);
        c.sync_c = 0.53;
        assert!(!q(c).gates_applied.sync);
        // With the floor disabled (−1) the reference behaviour comes back: 0.5 passes.
        let mut cfg = ScoringConfig::default();
        cfg.gates.min_sync_correlation = -1.0;
        c.sync_c = 0.5;
        assert!(!score_quality(&c, &cfg).gates_applied.sync);
        c.sync_c = 0.44;
        assert!(score_quality(&c, &cfg).gates_applied.sync);
    }

    #[test]
    fn all_gates_combined_multiply() {
        let mut c = good();
        c.face_detect_ratio = 0.5;
        c.identity = 0.3;
        c.sync_c = 0.3;
        let s = q(c);
        assert_eq!(s.gates_applied.count(), 3);
        assert!(close(s.gate_multiplier, 0.2 * 0.1 * 0.2));
        // blend = 0.585 − 0.35·0.5 = 0.41
        assert!(close(s.blended, 0.41));
        assert!(close(s.quality_score, 0.004 * 0.41));
        // Two gates.
        let mut c = good();
        c.identity = 0.3;
        c.sync_c = 0.3;
        let s = q(c);
        assert_eq!(s.gates_applied.count(), 2);
        assert!(close(s.gate_multiplier, 0.02));
    }

    #[test]
    fn each_missed_property_of_the_tasks_picture_halves_the_quality() {
        let cfg = ScoringConfig::default();
        let base = score_quality(&good(), &cfg);
        assert!(!base.gates_applied.conformance);
        for (n, factor) in [(1, 0.5), (2, 0.25)] {
            let mut c = good();
            c.picture_mismatches = n;
            let s = score_quality(&c, &cfg);
            assert!(s.gates_applied.conformance && s.gates_applied.any());
            assert!((s.gate_multiplier - base.gate_multiplier * factor).abs() < 1e-12);
            assert!((s.quality_score - base.quality_score * factor).abs() < 1e-12);
        }
        // A document written before the field reads 0 (no mismatch).
        let mut old = serde_json::to_value(good()).unwrap();
        old.as_object_mut().unwrap().remove("picture_mismatches");
        let back: ChallengeComponents = serde_json::from_value(old).unwrap();
        assert_eq!(back.picture_mismatches, 0);
    }

    #[test]
    fn wer_exactly_at_threshold_passes_and_above_fails_hard() {
        let mut c = good();
        c.wer = 0.60;
        let s = q(c);
        assert!(!s.wer_hard_fail);
        assert!(close(s.quality_score, 0.585));
        c.wer = 0.600_000_1;
        let s = q(c);
        assert!(s.wer_hard_fail);
        assert_eq!(s.quality_score, 0.0);
        // The blend is still reported for debugging.
        assert!(close(s.blended, 0.585));
    }

    #[test]
    fn penalty_driving_the_blend_below_zero_gives_zero() {
        let mut c = good();
        c.penalty = 0.9;
        let s = q(c);
        assert!(close(s.blended, -0.215));
        assert_eq!(s.quality_score, 0.0);
        // Gated and negative is still 0, never negative.
        c.identity = 0.1;
        assert_eq!(q(c).quality_score, 0.0);
    }

    #[test]
    fn components_above_one_and_below_zero_are_clamped_and_flagged() {
        let mut c = good();
        c.identity = 1.7;
        c.penalty = -0.5;
        let s = q(c);
        assert!(s.out_of_range_input && !s.non_finite_input);
        assert_eq!(s.components.identity, 1.0);
        assert_eq!(s.components.penalty, 0.0);
        // blend = 0.35·1 + 0.245 + 0.09 + 0.05 + 0.02 − 0 = 0.755
        assert!(close(s.quality_score, 0.755));
        // All at max: blend = 1, quality = 1.
        let top = ChallengeComponents {
            identity: 9.0,
            lipsync: 9.0,
            video: 9.0,
            audio: 9.0,
            temporal: 9.0,
            penalty: -9.0,
            wer: -1.0,
            sync_c: 2.0,
            sync_d: -1.0,
            face_detect_ratio: 3.0,
            identity_mode: IdentityMode::Insightface,
            picture_mismatches: 0,
        };
        let s = q(top);
        assert!(close(s.quality_score, 1.0) && s.quality_score <= 1.0);
    }

    #[test]
    fn nan_and_infinite_inputs_take_their_worst_value() {
        let mut c = good();
        c.lipsync = f64::NAN;
        let s = q(c);
        assert!(s.non_finite_input);
        assert_eq!(s.components.lipsync, 0.0);
        assert!(close(s.quality_score, 0.585 - 0.245));

        let mut c = good();
        c.penalty = f64::NAN;
        let s = q(c);
        assert_eq!(s.components.penalty, 1.0);
        assert_eq!(s.quality_score, 0.0);

        let mut c = good();
        c.wer = f64::NAN;
        let s = q(c);
        assert!(s.wer_hard_fail && s.quality_score == 0.0);

        let mut c = good();
        c.sync_c = f64::INFINITY;
        let s = q(c);
        assert_eq!(s.components.sync_c, 0.0);
        assert!(s.gates_applied.sync);

        let mut c = good();
        c.face_detect_ratio = f64::NEG_INFINITY;
        assert!(q(c).gates_applied.face_detect);

        let mut c = good();
        c.identity = f64::NAN;
        c.sync_d = f64::NAN;
        let s = q(c);
        assert!(s.gates_applied.identity);
        assert_eq!(s.components.sync_d, 1.0);
        assert!((0.0..=1.0).contains(&s.quality_score));
    }

    #[test]
    fn identity_mode_strings() {
        assert_eq!(IdentityMode::Insightface.as_str(), "insightface");
        assert_eq!(IdentityMode::FallbackHistogram.as_str(), "fallback_histogram");
        assert_eq!(
            serde_json::to_string(&IdentityMode::FallbackHistogram).unwrap(),
            "\"fallback_histogram\""
        );
    }
}
