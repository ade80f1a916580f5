//! Turning one output video into the per-challenge components the scoring core consumes.
//!
//! The engine sees only [`Analyzer`]: it hands over a collected copy of the video (out of the
//! container's reach, after the container is dead so analysis never competes with a timed miner) and
//! the challenge, and gets components or a `bad_output` reason back.

pub mod decode;

use crate::challenges::Challenge;
use crate::scoring::ChallengeComponents;
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
}

/// Components of one output plus what the operator needs to understand them.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeAnalysis {
    /// Inputs of the quality formula.
    pub components: ChallengeComponents,
    /// Backend names, intermediate values (`sync_c`, `face_detect_ratio`...), for `/metrics` debug.
    pub debug: serde_json::Value,
    /// Seconds the analysis took.
    pub analysis_secs: f64,
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

/// The analyser the daemon uses with this configuration.
pub fn default_analyzer(_settings: &crate::config::Settings) -> std::sync::Arc<dyn Analyzer> {
    std::sync::Arc::new(Unavailable)
}

/// Placeholder until the media pipeline is wired in: every analysis is an infrastructure failure, so
/// no miner is ever scored (or charged) without a real analysis.
struct Unavailable;

impl Analyzer for Unavailable {
    fn analyse<'a>(&'a self, _input: AnalysisInput<'a>) -> AnalysisFuture<'a> {
        Box::pin(async {
            Err(AnalysisFailure::Infra(
                "no analysis backend is built in yet".into(),
            ))
        })
    }

    fn describe(&self) -> String {
        "unavailable".into()
    }
}
