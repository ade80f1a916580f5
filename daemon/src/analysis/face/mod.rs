//! Face detection backends and the detector-independent rules around them.
//!
//! Owns: the [`FaceDetector`] seam, the builtin [`HaarDetector`] (OpenCV Haar cascade evaluated
//! natively), the `onnx` backend ([`OnnxFaceBackend`]: InsightFace SCRFD + ArcFace through ONNX
//! Runtime, with its pure pre/post-processing in [`scrfd`] and [`align`]), and the reference's per-frame procedure on top of any detector: pick the *largest* face
//! by real area (fixing docs/reference.md#weakness-12, where the key was `x2·y2`), and retry once on a
//! black-padded copy when nothing is found, shifting the boxes back to the unpadded frame (fixing
//! docs/reference.md#weakness-13, where they stayed in padded coordinates).
//!
//! Must not: score anything, keep state across frames, do I/O after construction, or return boxes
//! in any coordinate system but the frame's own pixels.

pub mod align;
mod cascade;
pub mod haar;
pub mod identity;
pub mod onnx;
pub mod scrfd;

pub use cascade::CascadeError;
pub use haar::{HaarDetector, HaarParams};
pub use onnx::{ArcFaceIdentity, OnnxFaceBackend, OnnxFaceConfig, OnnxLoadError};

use crate::analysis::decode::Frame;
use crate::analysis::image::Grey;
use serde::Serialize;

pub use identity::{IdentityBackend, IdentityError, IdentityInput};

/// A face box in the frame's own pixel coordinates (never padded ones).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FaceBox {
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge (exclusive).
    pub x2: f32,
    /// Bottom edge (exclusive).
    pub y2: f32,
    /// Detector-specific confidence, higher is better (Haar: the group's neighbour count); only
    /// comparable within one detector.
    pub score: f32,
    /// The five face landmarks (eyes, nose, mouth corners, `[x, y]` in the same pixels as the box)
    /// when the detector finds them (SCRFD does, Haar does not); what ArcFace alignment needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<[[f32; 2]; 5]>,
}

/// A face detector over one decoded frame: RGB, or the decoder's grey when it does not read colour
/// ([`FaceDetector::reads_colour`]).
pub trait FaceDetector {
    /// Every face found in `frame`, as boxes in the frame's own pixel coordinates. Must not panic on
    /// any frame (malformed buffers included: those give no face).
    fn detect(&self, frame: &Frame) -> Vec<FaceBox>;

    /// [`Self::detect`] with the frame's grey plane at hand (`grey` is OpenCV's grey of `frame`, which
    /// the per-frame passes compute anyway): a detector that works on grey uses it rather than
    /// converting the frame again. The default ignores it.
    fn detect_grey(&self, frame: &Frame, grey: &Grey) -> Vec<FaceBox> {
        let _ = grey;
        self.detect(frame)
    }

    /// A short stable name for debug output (`"haar"`, `"scrfd"`…).
    fn name(&self) -> &'static str;

    /// Whether the detector reads the frames' colour. When neither it nor the identity backend does,
    /// the analyser has the decoder deliver grey frames (no colour conversion in ffmpeg, a third of
    /// the bytes). Colour unless a detector says otherwise.
    fn reads_colour(&self) -> bool {
        true
    }
}

impl FaceBox {
    /// Width (0 for an inverted or non-finite box).
    pub fn width(&self) -> f32 {
        let w = self.x2 - self.x1;
        if w.is_finite() && w > 0.0 { w } else { 0.0 }
    }

    /// Height (0 for an inverted or non-finite box).
    pub fn height(&self) -> f32 {
        let h = self.y2 - self.y1;
        if h.is_finite() && h > 0.0 { h } else { 0.0 }
    }

    /// Real area `w · h` (the reference sorted on `x2 · y2`, docs/reference.md#weakness-12).
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// True when all coordinates are finite and the box has positive area.
    pub fn is_valid(&self) -> bool {
        [self.x1, self.y1, self.x2, self.y2].iter().all(|v| v.is_finite()) && self.area() > 0.0
    }
}

/// The largest valid box by real area; ties keep the first (the detector's order).
pub fn largest(boxes: &[FaceBox]) -> Option<FaceBox> {
    let mut best: Option<FaceBox> = None;
    for b in boxes.iter().filter(|b| b.is_valid()) {
        if best.is_none_or(|c| b.area() > c.area()) {
            best = Some(*b);
        }
    }
    best
}

/// The reference's padding for the retry: `max(32, 0.1 · max(h, w))` black pixels on every side.
pub fn retry_padding(frame: &Frame) -> u32 {
    let long = f64::from(frame.width.max(frame.height));
    (0.1 * long).max(32.0) as u32
}

/// The largest face in `frame`, retrying once on a copy padded with black by [`retry_padding`] when
/// the first pass finds nothing (as the reference does). Boxes from the retry are shifted back into
/// the unpadded frame; every box is clipped to the frame (a box that ends up empty is discarded) and
/// the largest is chosen by its visible area.
pub fn detect_largest(detector: &dyn FaceDetector, frame: &Frame) -> Option<FaceBox> {
    detect_largest_with(detector, frame, None)
}

/// [`detect_largest`], with the frame's grey plane when the caller has it (see
/// [`FaceDetector::detect_grey`]).
fn detect_largest_with(detector: &dyn FaceDetector, frame: &Frame, grey: Option<&Grey>) -> Option<FaceBox> {
    if !frame.is_well_formed() {
        return None;
    }
    let first = match grey {
        Some(g) => detector.detect_grey(frame, g),
        None => detector.detect(frame),
    };
    if let Some(b) = largest_in(frame, first, 0.0) {
        return Some(b);
    }
    let pad = retry_padding(frame);
    let padded = pad_black(frame, pad)?;
    largest_in(frame, detector.detect(&padded), pad as f32)
}

/// Shifts boxes (and their landmarks) by `-shift` (undoing a padding), clips them to the frame, and picks the largest by the
/// visible area. Clipping keeps every consumer (mouth ROI, face size, off-screen) in the frame's own
/// pixels, whichever detector produced the box.
fn largest_in(frame: &Frame, boxes: Vec<FaceBox>, shift: f32) -> Option<FaceBox> {
    let (w, h) = (frame.width as f32, frame.height as f32);
    let clipped: Vec<FaceBox> = boxes
        .into_iter()
        .map(|b| FaceBox {
            x1: (b.x1 - shift).clamp(0.0, w),
            y1: (b.y1 - shift).clamp(0.0, h),
            x2: (b.x2 - shift).clamp(0.0, w),
            y2: (b.y2 - shift).clamp(0.0, h),
            score: b.score,
            // Shifted but not clipped: a landmark just outside the frame still aligns the face (the
            // warp fills what lies outside with black, as the reference's does).
            landmarks: b.landmarks.map(|l| l.map(|[x, y]| [x - shift, y - shift])),
        })
        .collect();
    largest(&clipped)
}

/// Starts a new analysis on this thread: detector failures recorded here by an earlier analysis (one
/// that ended before its identity step, e.g. on a failed decode) are forgotten, so that they are never
/// charged to the next one. Call it where an analysis's detection begins.
pub fn forget_detection_failures() {
    onnx::forget_failures();
}

/// The largest face of every frame of a sequence (`None` where there is none): [`detect_largest`]
/// on every frame, as the reference detects every sampled frame.
///
/// Frames are never searched only near the previous frame's face: such a search gave boxes that
/// wandered where per-frame detection gives one (bbox smoothness 0.14–0.67 instead of 1.0 on
/// identical frames), and making it agree exactly costs about a full search anyway (docs/scoring.md,
/// "Following the face").
pub fn track_largest(detector: &dyn FaceDetector, frames: &[Frame]) -> Vec<Option<FaceBox>> {
    let tracker = FaceTracker;
    frames.iter().map(|f| tracker.next(detector, f)).collect()
}

/// [`track_largest`] one frame at a time, so that frames can be followed as the decoder delivers
/// them.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaceTracker;

impl FaceTracker {
    /// The largest face of the sequence's next frame.
    pub fn next(&self, detector: &dyn FaceDetector, frame: &Frame) -> Option<FaceBox> {
        self.next_with_grey(detector, frame, None)
    }

    /// [`Self::next`] with the frame's grey plane when the caller has it (`grey` must be OpenCV's grey
    /// of `frame`; see [`FaceDetector::detect_grey`]).
    pub fn next_with_grey(
        &self,
        detector: &dyn FaceDetector,
        frame: &Frame,
        grey: Option<&Grey>,
    ) -> Option<FaceBox> {
        detect_largest_with(detector, frame, grey)
    }
}

/// A copy of `frame` with `pad` black pixels on every side; `None` if the size would overflow.
fn pad_black(frame: &Frame, pad: u32) -> Option<Frame> {
    let w = frame.width.checked_add(pad.checked_mul(2)?)?;
    let h = frame.height.checked_add(pad.checked_mul(2)?)?;
    let row = (w as usize).checked_mul(3)?;
    let mut rgb = vec![0u8; row.checked_mul(h as usize)?];
    let src_row = frame.width as usize * 3;
    for (y, src) in frame.rgb_pixels().chunks_exact(src_row).enumerate() {
        let start = (y + pad as usize) * row + pad as usize * 3;
        rgb.get_mut(start..start + src_row)?.copy_from_slice(src);
    }
    Some(Frame::rgb(w, h, rgb))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests;
