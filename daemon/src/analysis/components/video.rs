//! The video component: per-frame image quality (aesthetic) and motion naturalness.
//!
//! Owns (docs/reference.md#component-video), on grey = 0.299R + 0.587G + 0.114B:
//! - blur `clamp01(LaplacianVar / 500)`;
//! - brightness/contrast `0.6·(1 − |mean − 127| / 127) + 0.4·clamp01(std / 64)` (each term clamped);
//! - face size: box area / frame area, 1 in `[0.10, 0.45]`, `ratio / 0.10` below, `(0.70 − ratio) / 0.25`
//!   above, averaged over frames with a face (0 when there is none);
//! - artifacts `1 − clamp01((frac(px/255 < 0.01) + frac(px/255 > 0.99)) / 0.35)`;
//! - `aesthetic = 0.35·blur + 0.25·bc + 0.25·face + 0.15·art` (per-frame terms averaged over frames);
//! - `motion = 0.6·clamp01((mean|Δframe| − 1) / 18) + 0.4·smoothness(|Δframe|)`;
//! - `video = 0.6·aesthetic + 0.4·motion`.
//!
//! Under the hardened profile ([`video_with`]'s arguments), each frame's Laplacian variance is capped
//! at the challenge face's and the motion term reads the face change instead of the whole frame's
//! difference (docs/scoring.md, "Hardened profile").
//!
//! Must not: recompute per-frame statistics (they come precomputed, from one sweep over the frames),
//! or score a frame it could not decode as anything but absent.

use serde::Serialize;

use super::FaceBox;
use super::FrameFacts;
use super::hardened::capped_blur;
use super::stats::{clamp01, mean, smoothness};

/// The video component and its terms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoDetail {
    /// `0.6·aesthetic + 0.4·motion`.
    pub video: f64,
    /// `0.35·blur + 0.25·bc + 0.25·face_size + 0.15·artifacts`.
    pub aesthetic: f64,
    /// Mean `clamp01(LaplacianVar / 500)`.
    pub blur: f64,
    /// Mean brightness/contrast term.
    pub brightness_contrast: f64,
    /// Mean face-size term over frames with a face (0 when none).
    pub face_size: f64,
    /// Mean artifacts term.
    pub artifacts: f64,
    /// Motion naturalness.
    pub motion: f64,
    /// Mean of the differences between consecutive sampled frames that the motion term read: the
    /// whole frame's mean absolute grey difference (reference profile) or the face change (hardened
    /// profile, [`face_change`](super::hardened::face_change)).
    pub mean_abs_frame_diff: f64,
    /// `smoothness` of those differences (0 with fewer than 3).
    pub diff_smoothness: f64,
    /// The Laplacian variance each frame's blur term was capped at: the challenge face's (hardened
    /// profile); `None` with the reference's term.
    pub blur_cap: Option<f64>,
}

/// The reference's face-size score of one area ratio.
pub fn face_size_score(ratio: f64) -> f64 {
    if !ratio.is_finite() {
        0.0
    } else if ratio < 0.10 {
        clamp01(ratio / 0.10)
    } else if ratio <= 0.45 {
        1.0
    } else {
        clamp01((0.70 - ratio) / 0.25)
    }
}

/// The brightness/contrast term of one frame.
pub fn brightness_contrast(mean_grey: f64, std_grey: f64) -> f64 {
    0.6 * clamp01(1.0 - (mean_grey - 127.0).abs() / 127.0) + 0.4 * clamp01(std_grey / 64.0)
}

/// The artifacts term of one frame.
pub fn artifacts(dark_frac: f64, bright_frac: f64) -> f64 {
    1.0 - clamp01((dark_frac + bright_frac) / 0.35)
}

/// Computes the component from per-frame facts and boxes, with each frame's Laplacian variance
/// capped at `blur_cap` (the hardened profile's [`capped_blur`]; `None`: the reference's term) and the
/// motion term read from `diffs` (the whole frame's mean |Δgrey| for the reference, the face change
/// for the hardened profile).
pub(crate) fn video_with(
    facts: &FrameFacts,
    boxes: &[Option<FaceBox>],
    blur_cap: Option<f64>,
    diffs: &[Option<f64>],
) -> VideoDetail {
    let stats: Vec<_> = facts.stats.iter().flatten().collect();
    let blur = mean(
        &facts
            .laplacian_var
            .iter()
            .flatten()
            .map(|&v| capped_blur(v, blur_cap))
            .collect::<Vec<_>>(),
    );
    let bc = mean(
        &stats
            .iter()
            .map(|s| brightness_contrast(s.mean, s.std))
            .collect::<Vec<_>>(),
    );
    let art = mean(
        &stats
            .iter()
            .map(|s| artifacts(s.dark_frac, s.bright_frac))
            .collect::<Vec<_>>(),
    );
    let sizes: Vec<f64> = facts
        .sizes
        .iter()
        .zip(boxes)
        .filter_map(|(sz, b)| {
            let ((w, h), b) = ((*sz)?, b.as_ref()?);
            let area = (w * h) as f64;
            (area > 0.0).then(|| face_size_score(f64::from(b.area()) / area))
        })
        .collect();
    let face = mean(&sizes).unwrap_or(0.0);
    let (blur, bc, art) = (blur.unwrap_or(0.0), bc.unwrap_or(0.0), art.unwrap_or(0.0));
    let aesthetic = 0.35 * blur + 0.25 * bc + 0.25 * face + 0.15 * art;

    let diffs: Vec<f64> = diffs.iter().flatten().copied().collect();
    let mad = mean(&diffs).unwrap_or(0.0);
    let sm = smoothness(&diffs).unwrap_or(0.0);
    let motion = 0.6 * clamp01((mad - 1.0) / 18.0) + 0.4 * sm;
    VideoDetail {
        video: clamp01(0.6 * aesthetic + 0.4 * motion),
        aesthetic: clamp01(aesthetic),
        blur,
        brightness_contrast: bc,
        face_size: face,
        artifacts: art,
        motion: clamp01(motion),
        mean_abs_frame_diff: mad,
        diff_smoothness: sm,
        blur_cap,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn term_formulas() {
        assert_eq!(face_size_score(0.05), 0.5);
        assert_eq!(face_size_score(0.10), 1.0);
        assert_eq!(face_size_score(0.45), 1.0);
        assert!((face_size_score(0.575) - 0.5).abs() < 1e-12);
        assert_eq!(face_size_score(0.9), 0.0);
        assert_eq!(face_size_score(f64::NAN), 0.0);
        assert!((brightness_contrast(127.0, 64.0) - 1.0).abs() < 1e-12);
        assert!((brightness_contrast(0.0, 0.0)).abs() < 1e-12);
        assert!((brightness_contrast(255.0, 0.0)).abs() < 1e-12);
        assert_eq!(artifacts(0.0, 0.0), 1.0);
        assert!((artifacts(0.175, 0.0) - 0.5).abs() < 1e-12);
        assert_eq!(artifacts(1.0, 0.0), 0.0);
    }
}
