//! The temporal component: identity consistency and smooth motion over the sampled frames.
//!
//! Owns (docs/reference.md#component-temporal):
//! - id consistency (≥ 3 similarities) `0.7·mean(sims) + 0.3·(1 − clamp01(std / 0.25))`, else 0;
//! - motion `0.6·smoothness(speed of the face-box centre, px per sampled frame) +
//!   0.4·smoothness(mouth signal)`, each 0 when there are too few values to measure;
//! - `temporal = 0.5·id + 0.5·motion`.
//!
//! The mouth-signal smoothness uses the frames where the signal is defined; the reference fed its
//! artificial 0 of the first frame (and of face-less frames) into the second difference.
//!
//! Must not: recompute identity or boxes; it only reads the other components' per-frame outputs.

use serde::Serialize;

use super::FaceBox;
use super::stats::{clamp01, mean, smoothness, std_pop};

/// The temporal component and its terms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemporalDetail {
    /// `0.5·id_consistency + 0.5·motion`.
    pub temporal: f64,
    /// Identity consistency (0 with fewer than 3 similarities).
    pub id_consistency: f64,
    /// `0.6·bbox_smoothness + 0.4·mouth_smoothness`.
    pub motion: f64,
    /// Smoothness of the face-box centre speed (0 with fewer than 4 boxes).
    pub bbox_smoothness: f64,
    /// Smoothness of the mouth signal (0 with fewer than 3 values).
    pub mouth_smoothness: f64,
}

/// The reference's identity consistency; `None` with fewer than 3 similarities.
pub fn id_consistency(sims: &[f64]) -> Option<f64> {
    if sims.len() < 3 {
        return None;
    }
    Some(clamp01(
        0.7 * mean(sims)? + 0.3 * (1.0 - clamp01(std_pop(sims)? / 0.25)),
    ))
}

/// Speeds (px per step) of the centres of consecutive detected boxes.
pub(crate) fn centre_speeds(boxes: &[Option<FaceBox>]) -> Vec<f64> {
    let centres: Vec<(f64, f64)> = boxes
        .iter()
        .flatten()
        .map(|b| (f64::from(b.x1 + b.x2) / 2.0, f64::from(b.y1 + b.y2) / 2.0))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    centres
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).hypot(w[1].1 - w[0].1))
        .collect()
}

/// Computes the component from per-frame identity similarities, boxes and the mouth signal.
pub(crate) fn temporal(sims: &[f64], boxes: &[Option<FaceBox>], mouth: &[Option<f64>]) -> TemporalDetail {
    let id = id_consistency(sims).unwrap_or(0.0);
    let bbox = smoothness(&centre_speeds(boxes)).unwrap_or(0.0);
    let m: Vec<f64> = mouth.iter().flatten().copied().collect();
    let ms = smoothness(&m).unwrap_or(0.0);
    let motion = clamp01(0.6 * bbox + 0.4 * ms);
    TemporalDetail {
        temporal: clamp01(0.5 * id + 0.5 * motion),
        id_consistency: id,
        motion,
        bbox_smoothness: bbox,
        mouth_smoothness: ms,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn b(x: f32, y: f32) -> Option<FaceBox> {
        Some(FaceBox {
            x1: x,
            y1: y,
            x2: x + 10.0,
            y2: y + 10.0,
            score: 1.0,
            landmarks: None,
        })
    }

    #[test]
    fn formulas() {
        // Constant similarity 0.8: 0.7·0.8 + 0.3·1 = 0.86.
        assert!((id_consistency(&[0.8; 5]).unwrap() - 0.86).abs() < 1e-12);
        assert_eq!(id_consistency(&[1.0, 1.0]), None);
        // Constant-speed motion (3 px per frame): perfectly smooth.
        let boxes = [b(0.0, 0.0), b(3.0, 0.0), None, b(6.0, 0.0), b(9.0, 0.0)];
        assert_eq!(centre_speeds(&boxes), vec![3.0, 3.0, 3.0]);
        let t = temporal(&[0.8; 5], &boxes, &[None, Some(1.0), Some(1.0), Some(1.0)]);
        assert_eq!((t.bbox_smoothness, t.mouth_smoothness), (1.0, 1.0));
        assert!((t.temporal - (0.5 * 0.86 + 0.5)).abs() < 1e-12);
        // Nothing measurable: 0, not a free 1.
        let t = temporal(&[], &[None; 4], &[None; 4]);
        assert_eq!(t.temporal, 0.0);
    }
}
