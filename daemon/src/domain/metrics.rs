//! The metrics document of one evaluation, in the reference's `/metrics` shape
//! (docs/reference.md#metrics-shape) with talkheadd's additive fields (`verdict`, `run_id`, `round`,
//! `stage_times`, `gpu`, `measurement`).
//!
//! Field names are a wire contract read by existing validators: add fields, never rename or remove them.

use super::Verdict;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the identity score was obtained; only InsightFace mode arms the face-detect gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMode {
    /// A real face detector + recogniser ran (reference `"insightface"`).
    Insightface,
    /// Whole-image histogram fallback; `face_detect_ratio` is meaningless (reference `"fallback_histogram"`).
    FallbackHistogram,
    /// No identity model, or no face in the reference image (reference `"insightface_no_ref_face"`).
    Unavailable,
}

impl IdentityMode {
    /// The string written to metrics (`debug.identity_mode`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Insightface => "insightface",
            Self::FallbackHistogram => "fallback_histogram",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Which formulas the analysis scored with (`scoring.profile`): the hardened terms of docs/scoring.md
/// ("Hardened profile"), or exactly the reference's, for a validator that must agree with validators
/// running the reference's formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringProfile {
    /// The reference's formulas with the measured deviations that stop cheap transformations (grain,
    /// sharpening, jitter, flicker, loudness) from raising a score. The default.
    #[default]
    Hardened,
    /// The reference's formulas for the terms those deviations change.
    Reference,
}

impl ScoringProfile {
    /// The string written to metrics (`debug.scoring_profile`) and accepted by `scoring.profile`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hardened => "hardened",
            Self::Reference => "reference",
        }
    }

    /// What documents written before the field existed were scored with.
    pub const fn before_profiles() -> Self {
        Self::Reference
    }
}

/// Committed or staged metrics of one evaluation of one miner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationMetrics {
    /// Number of scored challenges the run was configured for.
    pub scoring_count: u32,
    /// Final score in [0, 1]: mean quality × efficiency factor × cap multiplier.
    pub final_score: f64,
    /// Mean per-challenge quality in [0, 1].
    pub quality_score: f64,
    /// One entry per scored challenge.
    pub challenge_metrics: Vec<ChallengeMetrics>,
    /// Run-level efficiency block.
    pub efficiency: EfficiencyMetrics,
    /// Unix time the result was produced.
    pub updated_at: f64,
    /// The image that was evaluated.
    pub image_ref: String,
    /// The submission time of the evaluated submission.
    pub submit_time: f64,
    /// Human-readable failure description; absent on success (the validator skips rows that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Outcome of the whole evaluation.
    pub verdict: Verdict,
    /// Identifier of the run (also the container label `talkhead.run`).
    #[serde(default)]
    pub run_id: String,
    /// Round in which the result was produced.
    #[serde(default)]
    pub round: u64,
    /// Seconds spent per stage (`pull`, `ready`, `challenges`, `analysis`...), and the analysis of each
    /// scored challenge as `analysis:<challenge id>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_times: BTreeMap<String, f64>,
    /// The GPU the run was measured on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuIdentity>,
    /// Where the time and VRAM figures come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<MeasurementProvenance>,
    /// Under `evaluation.duplicates = "share"`: the hotkey whose evaluation of the same image digest
    /// these metrics are a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

/// One scored challenge. Successful entries carry the component scores; failed ones carry `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengeMetrics {
    /// Challenge identifier (the challenge directory name).
    pub challenge_id: String,
    /// Whether the challenge produced a scored video.
    pub success: bool,
    /// Public URL of the output, when uploaded; talkheadd never uploads, so normally null.
    #[serde(default)]
    pub video_url: Option<String>,
    /// Per-challenge verdict.
    pub verdict: Verdict,
    /// Component scores, present on success. Kept as plain fields rather than a flattened struct:
    /// `#[serde(flatten)]` turns the whole entry into a map and doubles the cost of `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<f64>,
    /// Lip-sync score, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lipsync: Option<f64>,
    /// Audio score, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<f64>,
    /// Video score, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<f64>,
    /// Temporal score, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal: Option<f64>,
    /// Weighted penalty, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalty: Option<f64>,
    /// Word error rate, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wer: Option<f64>,
    /// Quality of this challenge, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_score: Option<f64>,
    /// Quality × this challenge's efficiency factor; informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_score: Option<f64>,
    /// This challenge's efficiency block, present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencyMetrics>,
    /// Host wall-clock seconds, present on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_time_sec: Option<f64>,
    /// Peak VRAM in GB, present on failure when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_vram_gb: Option<f64>,
    /// Inference seconds, present on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_time_sec: Option<f64>,
    /// Failure reason, present on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the components were obtained (the `debug` of docs/reference.md#scoring-quality), present on
    /// success. Additive: the reference's readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<ChallengeDebug>,
}

/// The `debug` object of a scored challenge: the reference's intermediate values
/// (docs/reference.md#scoring-quality) plus the backends that produced them and the time the analysis took. A
/// plain struct of scalars and two short strings, so that `/metrics` stays cheap to serialise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengeDebug {
    /// Sync confidence `(corr + 1) / 2` as the gates saw it.
    pub sync_c: f64,
    /// Sync lag distance as the gates saw it.
    pub sync_d: f64,
    /// Fraction of sampled frames with a detected face.
    pub face_detect_ratio: f64,
    /// How identity was computed (`insightface`, `fallback_histogram`, `unavailable`).
    pub identity_mode: IdentityMode,
    /// Whether the face-detect gate (InsightFace mode, ratio under the threshold) fired.
    pub face_detect_gate_applied: bool,
    /// Face detector that produced the boxes (`haar`, `scrfd`...).
    pub face_backend: String,
    /// Speech recogniser behind the WER (`none`, `whisper`).
    pub asr_backend: String,
    /// Host seconds the analysis of this challenge took (decode included); it ran after the miner's
    /// container was gone, so it is never part of the miner's time.
    pub analysis_time_sec: f64,
    /// Which formulas scored this challenge (`hardened`, `reference`: `scoring.profile`). Additive;
    /// documents written before it read `reference`.
    #[serde(default = "ScoringProfile::before_profiles")]
    pub scoring_profile: ScoringProfile,
    /// With `analysis.conformance = "penalty"`: the properties of the task's picture the output missed
    /// (`wrong_resolution`, `wrong_fps`), each halving its quality. Additive; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub picture_mismatches: Vec<String>,
}

/// The efficiency block (docs/reference.md#metrics-shape and docs/reference.md#scoring-efficiency) plus
/// talkheadd's flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyMetrics {
    /// Mean peak VRAM in GB over the scored challenges; null when unavailable.
    pub peak_vram_gb: Option<f64>,
    /// Mean inference seconds over the scored challenges.
    pub inference_time_sec: Option<f64>,
    /// Normalised time in [0, norm_max].
    pub time_norm: f64,
    /// Normalised VRAM in [0, norm_max].
    pub vram_norm: f64,
    /// `exp(-w_t·time_norm - w_v·vram_norm) × cap_multiplier`: with a cap exceeded, already multiplied
    /// by the cap penalty, as the reference reports it (validators read this field).
    pub efficiency_factor: f64,
    /// Whether the worst challenge exceeded a cap.
    pub cap_violation: bool,
    /// What a cap violation multiplies the score by: 1 without one, `efficiency.cap_penalty` (0.01)
    /// or 0 (reject mode) with one. Additive field; documents written before it read 1.
    #[serde(default = "no_cap_penalty")]
    pub cap_multiplier: f64,
    /// True when time was unavailable and the reference value was used instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time_missing: bool,
    /// True when VRAM was unavailable and the reference value was used instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vram_missing: bool,
}

fn no_cap_penalty() -> f64 {
    1.0
}

impl EfficiencyMetrics {
    /// The block as rows of a table for people (`talkheadd analyze`'s calculator, `talkheadd
    /// evaluate`): mean time and VRAM, then the factor with its norms and cap multiplier.
    pub fn table_rows(&self) -> [(&'static str, String); 3] {
        let mean = |v: Option<f64>| v.map_or("unavailable (norm 1)".to_owned(), |v| format!("{v:.3}"));
        [
            ("time_sec (mean)", mean(self.inference_time_sec)),
            ("vram_gb (mean)", mean(self.peak_vram_gb)),
            (
                "efficiency",
                format!(
                    "factor {:.6} (time_norm {:.4}, vram_norm {:.4}; cap multiplier {} included){}",
                    self.efficiency_factor,
                    self.time_norm,
                    self.vram_norm,
                    self.cap_multiplier,
                    if self.cap_violation {
                        " (a cap was exceeded)"
                    } else {
                        ""
                    }
                ),
            ),
        ]
    }
}

/// The GPU a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuIdentity {
    /// NVML UUID, or `virtual-N` on hosts without NVML.
    pub uuid: String,
    /// Marketing name.
    pub name: String,
}

/// Provenance of the efficiency figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct MeasurementProvenance {
    /// How inference time was measured.
    pub time: MeasurementSource,
    /// How peak VRAM was measured.
    pub vram: MeasurementSource,
}

/// How a figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasurementSource {
    /// Host wall clock around the challenge.
    HostClock,
    /// NVML accounting mode: exact per-process maxima.
    Accounting,
    /// NVML sampling.
    Sampled,
    /// Reported by the miner (never trusted for scoring).
    MinerReported,
    /// Not available on this host.
    Unavailable,
}

impl EvaluationMetrics {
    /// Metrics for an evaluation that ended before anything could be scored (pull failure, crash...):
    /// scores are zero and `error` says why, so validators skip the row as the reference's do.
    pub fn failed(
        verdict: Verdict,
        error: impl Into<String>,
        image_ref: &str,
        submit_time: f64,
        updated_at: f64,
        scoring_count: u32,
    ) -> EvaluationMetrics {
        EvaluationMetrics {
            scoring_count,
            final_score: 0.0,
            quality_score: 0.0,
            challenge_metrics: Vec::new(),
            efficiency: EfficiencyMetrics {
                peak_vram_gb: None,
                inference_time_sec: None,
                time_norm: 0.0,
                vram_norm: 0.0,
                efficiency_factor: 0.0,
                cap_violation: false,
                cap_multiplier: 1.0,
                time_missing: true,
                vram_missing: true,
            },
            updated_at,
            image_ref: image_ref.to_owned(),
            submit_time,
            error: Some(error.into()),
            verdict,
            run_id: String::new(),
            round: 0,
            stage_times: BTreeMap::new(),
            gpu: None,
            measurement: None,
            duplicate_of: None,
        }
    }
}
