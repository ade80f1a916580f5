//! Turning one output video into the per-challenge components the scoring core consumes.
//!
//! The engine sees only [`Analyzer`]: it hands over a collected copy of the video (out of the
//! container's reach, after the container is dead so analysis never competes with a timed miner) and
//! the challenge, and gets components or a `bad_output` reason back.

pub mod asr;
pub mod components;
pub mod decode;
pub mod face;
pub mod frame_buffers;
pub mod image;
pub mod mp4;
pub mod offline;
pub mod pipeline;
pub mod settings;
pub mod y4m;

/// Test media made with ffmpeg, shared with the integration tests and the decode bench.
#[cfg(test)]
#[path = "../../../tests/common/media.rs"]
pub(crate) mod test_media;

use crate::challenges::Challenge;
use crate::domain::metrics::ChallengeDebug;
use crate::scoring::{ChallengeComponents, QualityScore};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

/// What one challenge's output is analysed against.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisInput<'a> {
    /// The collected copy of `{id}.mp4`.
    pub video: &'a Path,
    /// The challenge (reference face, source audio, transcript).
    pub challenge: &'a Challenge,
    /// `task.json`'s `max_seconds`.
    pub max_seconds: f64,
    /// `task.json`'s `resolution` and `fps`, which the output must match (`None`: not checked).
    pub frame: Option<decode::FrameSpec>,
}

/// Components of one output plus what the operator needs to understand them.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeAnalysis {
    /// Inputs of the quality formula.
    pub components: ChallengeComponents,
    /// Backend names, intermediate values (`sync_c`, `face_detect_ratio`...), every detail.
    pub debug: components::AnalysisDebug,
    /// Speech recogniser behind the WER (`none` when WER is unavailable by configuration).
    pub asr_backend: &'static str,
    /// Seconds the analysis took (decode included).
    pub analysis_secs: f64,
    /// Which formulas the components were computed with (`scoring.profile`).
    pub profile: crate::scoring::ScoringProfile,
    /// How the output missed the task's picture, scored as a penalty under
    /// `analysis.conformance = "penalty"` (`components.picture_mismatches` counts them); empty when it
    /// matched (a strict mismatch is `bad_output` and never gets here).
    pub picture_mismatches: Vec<PictureMismatch>,
}

/// One property of the task's picture an output missed, scored rather than refused
/// (`analysis.conformance = "penalty"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PictureMismatch {
    /// `wrong_resolution` or `wrong_fps`: the `bad_output` reason strict conformance would give.
    pub reason: String,
    /// What was found and what the task asked for.
    pub detail: String,
}

impl ChallengeAnalysis {
    /// The WER to report: `None` when it could not be measured (never the audio-match stand-in that
    /// `components.wer` carries for the scoring core).
    pub fn reported_wer(&self) -> Option<f64> {
        self.debug.wer
    }

    /// The `/metrics` entry's `debug` object, given how the components were scored. Values are the
    /// ones the gates saw (clamped, finite), so the object explains the score.
    pub fn metrics_debug(&self, quality: &QualityScore) -> ChallengeDebug {
        let c = &quality.components;
        ChallengeDebug {
            sync_c: c.sync_c,
            sync_d: c.sync_d,
            face_detect_ratio: c.face_detect_ratio,
            identity_mode: c.identity_mode,
            face_detect_gate_applied: quality.gates_applied.face_detect,
            face_backend: self.debug.detector.to_owned(),
            asr_backend: self.asr_backend.to_owned(),
            analysis_time_sec: self.analysis_secs,
            scoring_profile: self.profile,
            picture_mismatches: self.picture_mismatches.iter().map(|m| m.reason.clone()).collect(),
        }
    }
}

/// Why an output could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisFailure {
    /// The output is unusable: the miner's fault (`bad_output`) with a specific reason code.
    #[error("bad output ({reason}): {detail}")]
    BadOutput {
        /// Stable reason code (`no_video_stream`, `wrong_duration`...).
        reason: String,
        /// Details.
        detail: String,
    },
    /// The host failed (tool missing, out of disk): never the miner's fault.
    #[error("analysis infrastructure failed: {0}")]
    Infra(String),
}

/// A boxed future, so analyzers can be used as trait objects.
pub type AnalysisFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ChallengeAnalysis, AnalysisFailure>> + Send + 'a>>;

/// Analyses output videos.
pub trait Analyzer: Send + Sync {
    /// Analyse one output.
    fn analyse<'a>(&'a self, input: AnalysisInput<'a>) -> AnalysisFuture<'a>;
    /// Backend description for logs and status.
    fn describe(&self) -> String;
}

/// The analyser the daemon uses with this configuration: sandboxed decode, the face backend of
/// `[analysis.face]` (the builtin Haar detector with the histogram identity, or SCRFD + ArcFace through
/// ONNX Runtime) and the speech backend of `[analysis.asr]`. A backend that cannot load is an error
/// naming its key (exit 78).
pub async fn default_analyzer(
    settings: &settings::AnalysisSettings,
) -> Result<std::sync::Arc<dyn Analyzer>, String> {
    use settings::FaceBackend;
    use std::sync::Arc;
    let face = &settings.face;
    let limits = decode::DecodeLimits::default();
    let analyzer = match &face.backend {
        FaceBackend::Builtin => {
            let detector = face::HaarDetector::from_opencv_xml(&face.cascade).map_err(|e| {
                format!(
                    "analysis.face.cascade {}: {e} (install Debian's opencv-data)",
                    face.cascade.display()
                )
            })?;
            pipeline::MediaAnalyzer::new(limits.clone(), Arc::new(detector), "haar")
        }
        FaceBackend::Onnx(config) => {
            let config = config.clone();
            let backend = tokio::task::spawn_blocking(move || face::OnnxFaceBackend::load(&config))
                .await
                .map_err(|e| format!("loading the onnx face backend: {e}"))?
                .map_err(|e| e.to_string())?;
            let backend = Arc::new(backend);
            pipeline::MediaAnalyzer::new(limits.clone(), backend.clone(), "scrfd")
                .with_identity(Arc::new(face::ArcFaceIdentity::new(backend)))
        }
    };
    let analyzer = analyzer
        .with_profile(settings.profile)
        .with_conformance(settings.conformance);
    decode::check_tools(&limits)
        .await
        .map_err(|e| format!("media tools: {e} (install Debian's ffmpeg)"))?;
    let asr = asr::from_settings(&settings.asr)?;
    Ok(Arc::new(analyzer.with_asr(asr)))
}
