//! The identity backend seam: what a backend that measures per-frame similarity to the challenge face
//! gets ([`IdentityInput`]) and gives ([`IdentityBackend`], [`IdentityError`]). Defined beside the
//! face detectors, below the components that call it, so that the components depend on the face
//! backends and never the other way round.

use super::FaceBox;
use crate::analysis::decode::Frame;
use crate::domain::metrics::IdentityMode;

/// Why an identity backend could not produce similarities.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    /// The challenge face image is unusable (malformed buffer, or no face in it for a face backend).
    #[error("reference face unusable: {0}")]
    ReferenceUnusable(String),
    /// The backend itself failed (model not loaded, inference error…).
    #[error("identity backend failed: {0}")]
    Backend(String),
}

/// What an identity backend gets: the decoded reference face, the sampled frames, the detector's
/// largest face per frame, and per-frame data the analysis already computed (so that a cheap backend
/// does not decode the frames a second time).
#[derive(Debug, Clone, Copy)]
pub struct IdentityInput<'a> {
    /// The challenge face, RGB.
    pub reference: &'a Frame,
    /// The sampled output frames: RGB, or the decoder's grey when neither this backend nor the face
    /// detector reads colour ([`IdentityBackend::reads_colour`]).
    pub frames: &'a [Frame],
    /// Largest face per frame in frame coordinates (`None`: no face); same length as `frames`.
    pub faces: &'a [Option<FaceBox>],
    /// 64-bin grey histogram (bin width 4) per frame (`None`: malformed frame); same length.
    pub frame_histograms: &'a [Option<[u32; 64]>],
}

/// A source of per-frame identity similarities (the seam for the future ONNX InsightFace backend).
pub trait IdentityBackend {
    /// Short stable name for debug output.
    fn name(&self) -> &'static str;

    /// The mode reported when this backend produced the similarities.
    fn mode(&self) -> IdentityMode;

    /// One similarity in `[0, 1]` per frame (same order and length as `input.frames`) between the
    /// frame and the reference face. A face backend crops and aligns from `input.faces` and reports 0
    /// for a frame without a face; a failure is an error, never a made-up similarity.
    fn similarities(&self, input: &IdentityInput<'_>) -> Result<Vec<f64>, IdentityError>;

    /// Whether the backend reads the frames' colour (see [`crate::analysis::face::FaceDetector::reads_colour`]).
    /// Colour unless a backend says otherwise.
    fn reads_colour(&self) -> bool {
        true
    }
}
