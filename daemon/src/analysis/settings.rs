//! `[analysis]`: the settings the analysis owns (face backend, speech backend). [`crate::config`]
//! validates the file's values into them; nothing here reads configuration itself.

use std::path::PathBuf;
use std::time::Duration;

/// `[analysis]`
#[derive(Debug, Clone)]
pub struct AnalysisSettings {
    /// `[analysis.face]`: face detection and identity.
    pub face: FaceSettings,
    /// `[analysis.asr]`: the speech recogniser behind the WER.
    pub asr: AsrBackend,
    /// `scoring.profile`: which formulas the components are computed with (the hardened terms of
    /// docs/scoring.md or the reference's).
    pub profile: crate::scoring::ScoringProfile,
    /// `analysis.conformance`: an output off the task's picture is `bad_output` (`strict`) or scored
    /// with a penalty (`penalty`).
    pub conformance: super::decode::Conformance,
}

/// `[analysis.face]`
#[derive(Debug, Clone, PartialEq)]
pub struct FaceSettings {
    /// Which backend detects faces and measures identity.
    pub backend: FaceBackend,
    /// The builtin detector's Haar cascade (used by `builtin`).
    pub cascade: PathBuf,
}

/// `analysis.face.backend`
#[derive(Debug, Clone, PartialEq)]
pub enum FaceBackend {
    /// Haar cascade detector, `fallback_histogram` identity.
    Builtin,
    /// InsightFace SCRFD + ArcFace through ONNX Runtime, `insightface` identity.
    Onnx(super::face::OnnxFaceConfig),
}

impl FaceBackend {
    /// The configuration's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            FaceBackend::Builtin => "builtin",
            FaceBackend::Onnx(_) => "onnx",
        }
    }
}

/// `[analysis.asr] backend`: which speech recogniser transcribes the outputs' audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsrBackend {
    /// None: the WER is reported unavailable and the audio-match check is the transcript gate.
    None,
    /// whisper.cpp (cargo feature `whisper`) with this ggml model.
    Whisper {
        /// `[analysis.asr] model`.
        model: PathBuf,
        /// `[analysis.asr] timeout_secs`: the most one transcription may take.
        timeout: Duration,
    },
}

impl AsrBackend {
    /// The configuration's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            AsrBackend::None => "none",
            AsrBackend::Whisper { .. } => "whisper",
        }
    }
}
