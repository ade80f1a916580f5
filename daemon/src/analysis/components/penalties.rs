//! The seven penalties and their weighted sum, each measured over time (per sampled frame or per
//! audio window).
//!
//! Owns (docs/reference.md#component-penalties, weights summing to 1):
//! - `freeze` 0.18: fraction of consecutive sampled-frame pairs with mean |Δgrey| < 0.8 (1 when there
//!   is no pair at all); under the hardened profile each pair counts by how much its mouth moved as
//!   the clip's mouth moves ([`CoherentChange::motion`](super::mouth_motion::CoherentChange::motion),
//!   0 to 1: [`freeze_of`]) instead of by the whole frame's |Δgrey|;
//! - `loop` 0.12: ≥ 12 frames; `k = max(3, n / 5)`; correlation `c` of the per-frame mean intensity of
//!   the first k and the last k frames; `(c − 0.85) / 0.15` when `c > 0.85`;
//! - `face_missing` 0.22: `(0.80 − face_detect_ratio) / 0.80` below 0.80;
//! - `offscreen` 0.12: fraction of detected boxes within 2 % of a frame edge; 0 when no face was ever
//!   seen (`face_missing` already charges that; the reference added a full 1.0 on top,
//!   docs/reference.md#weakness-16);
//! - `mouth_occlusion` 0.10: fraction of frames with a face where the envelope is > 0.04 and the
//!   mouth ROI's pixel variance (0–1 scale) is < 0.005;
//! - `silent_mismatch` 0.16: per 0.1 s window where the challenge audio is active, `(0.15 − r) / 0.15`
//!   with `r` the output/challenge energy ratio (the output's best window within ±0.2 s), averaged —
//!   the reference's whole-track ratio let half a clip of silence pass;
//! - `desync_spikes` 0.10: over the per-time local correlation series of the lipsync component (not
//!   the ≤ 17 per-lag values, docs/reference.md#weakness-16; at least 8 values),
//!   `clamp01(frac(z < −1.5) / 0.4)`;
//! - `penalty = clamp01(Σ wᵢ·pᵢ)`.
//!
//! Must not: read pixels or samples beyond what these definitions need, or return anything outside
//! `[0, 1]`.

use serde::Serialize;

use super::FaceBox;
use super::stats::{clamp01, mean, pearson, std_pop};

/// Weights of the penalties (the reference's; they sum to 1).
pub const WEIGHTS: PenaltyWeights = PenaltyWeights {
    freeze: 0.18,
    loop_: 0.12,
    face_missing: 0.22,
    offscreen: 0.12,
    mouth_occlusion: 0.10,
    silent_mismatch: 0.16,
    desync_spikes: 0.10,
};

/// One weight per penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PenaltyWeights {
    /// `freeze`.
    pub freeze: f64,
    /// `loop`.
    pub loop_: f64,
    /// `face_missing`.
    pub face_missing: f64,
    /// `offscreen`.
    pub offscreen: f64,
    /// `mouth_occlusion`.
    pub mouth_occlusion: f64,
    /// `silent_mismatch`.
    pub silent_mismatch: f64,
    /// `desync_spikes`.
    pub desync_spikes: f64,
}

/// Every penalty in `[0, 1]` and the weighted total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PenaltyDetail {
    /// `clamp01(Σ wᵢ·pᵢ)`.
    pub penalty: f64,
    /// Frozen pairs.
    pub freeze: f64,
    /// Loop penalty.
    #[serde(rename = "loop")]
    pub loop_: f64,
    /// Too few faces.
    pub face_missing: f64,
    /// Boxes at the frame edge.
    pub offscreen: f64,
    /// Flat mouth while loud.
    pub mouth_occlusion: f64,
    /// Output much quieter than the challenge audio while it speaks.
    pub silent_mismatch: f64,
    /// Local desync dips.
    pub desync_spikes: f64,
    /// Correlation the loop penalty saw (`None` when not measured).
    pub loop_correlation: Option<f64>,
    /// Defined values of the local correlation series.
    pub desync_values: usize,
}

/// Mean |Δgrey| below which a pair of sampled frames is frozen.
pub const FREEZE_DIFF: f64 = 0.8;

/// `freeze` from the consecutive-pair differences (`None` = a pair with an undecodable frame).
pub fn freeze(diffs: &[Option<f64>]) -> f64 {
    let moved: Vec<Option<f64>> = diffs
        .iter()
        .map(|d| d.map(|v| if v >= FREEZE_DIFF { 1.0 } else { 0.0 }))
        .collect();
    freeze_of(&moved)
}

/// `freeze` from how much each consecutive pair moved, 0 (frozen) to 1 (`None` = a pair with an
/// undecodable frame): one minus the mean over the decodable pairs, 1 without any.
pub fn freeze_of(moved: &[Option<f64>]) -> f64 {
    let d: Vec<f64> = moved.iter().flatten().map(|m| m.clamp(0.0, 1.0)).collect();
    if d.is_empty() {
        return 1.0;
    }
    1.0 - d.iter().sum::<f64>() / d.len() as f64
}

/// `loop` from per-frame mean intensities, with the correlation it saw.
pub fn loop_penalty(means: &[f64]) -> (f64, Option<f64>) {
    let n = means.len();
    if n < 12 {
        return (0.0, None);
    }
    let k = (n / 5).max(3);
    match pearson(&means[..k], &means[n - k..]) {
        Some(c) => (if c > 0.85 { clamp01((c - 0.85) / 0.15) } else { 0.0 }, Some(c)),
        None => (0.0, None),
    }
}

/// `face_missing`.
pub fn face_missing(ratio: f64) -> f64 {
    if ratio < 0.80 {
        clamp01((0.80 - ratio) / 0.80)
    } else {
        0.0
    }
}

/// `offscreen` over detected boxes with their frame sizes.
pub fn offscreen(boxes: &[Option<FaceBox>], sizes: &[Option<(usize, usize)>]) -> f64 {
    let mut seen = 0usize;
    let mut edge = 0usize;
    for (b, sz) in boxes.iter().zip(sizes) {
        let (Some(b), Some((w, h))) = (b, sz) else {
            continue;
        };
        let (w, h) = (*w as f32, *h as f32);
        seen += 1;
        if b.x1 < 0.02 * w || b.y1 < 0.02 * h || b.x2 > 0.98 * w || b.y2 > 0.98 * h {
            edge += 1;
        }
    }
    if seen == 0 { 0.0 } else { edge as f64 / seen as f64 }
}

/// `mouth_occlusion`: among frames with a face, loud (envelope > 0.04) yet flat mouth (var < 0.005).
pub fn mouth_occlusion(boxes: &[Option<FaceBox>], variance: &[Option<f64>], env: &[f64]) -> f64 {
    let mut seen = 0usize;
    let mut hit = 0usize;
    for ((b, v), e) in boxes.iter().zip(variance).zip(env) {
        if b.is_none() {
            continue;
        }
        seen += 1;
        if *e > 0.04 && v.is_some_and(|v| v < 0.005) {
            hit += 1;
        }
    }
    if seen == 0 { 0.0 } else { hit as f64 / seen as f64 }
}

/// Window of the per-time silence check (0.1 s at 16 kHz).
const SILENCE_WINDOW: usize = 1600;
/// How many windows either side the output may be offset (±0.2 s).
const SILENCE_SLACK: usize = 2;

/// `silent_mismatch` over time (see the module docs).
pub fn silent_mismatch(source: &[f32], output: &[f32]) -> f64 {
    let energies = |x: &[f32]| -> Vec<f64> {
        x.chunks(SILENCE_WINDOW)
            .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / c.len() as f64)
            .collect()
    };
    let total = super::audio::energy(source);
    if total.is_nan() || total <= 1e-5 {
        return 0.0; // the reference's own floor: a silent challenge cannot be mismatched
    }
    let src = energies(source);
    let out = energies(output);
    let peak = src.iter().copied().fold(0.0f64, f64::max);
    // Windows within 30 dB of the loudest are speech; quieter ones (pauses, breath) are not judged.
    let active_floor = (peak * 1e-3).max(1e-5);
    let mut p = Vec::new();
    for (i, &es) in src.iter().enumerate() {
        if es <= active_floor {
            continue;
        }
        let lo = i.saturating_sub(SILENCE_SLACK);
        let hi = (i + SILENCE_SLACK + 1).min(out.len());
        let eo = out
            .get(lo..hi)
            .map_or(0.0, |w| w.iter().copied().fold(0.0f64, f64::max));
        let ratio = eo / es;
        p.push(if ratio < 0.15 {
            clamp01((0.15 - ratio) / 0.15)
        } else {
            0.0
        });
    }
    mean(&p).unwrap_or(0.0)
}

/// `desync_spikes` over the local correlation series.
pub fn desync_spikes(local: &[Option<f64>]) -> (f64, usize) {
    let v: Vec<f64> = local.iter().flatten().copied().collect();
    if v.len() < 8 {
        return (0.0, v.len());
    }
    let (Some(m), Some(s)) = (mean(&v), std_pop(&v)) else {
        return (0.0, v.len());
    };
    if s.is_nan() || s <= 1e-12 {
        return (0.0, v.len());
    }
    let low = v.iter().filter(|&&x| (x - m) / s < -1.5).count() as f64 / v.len() as f64;
    (clamp01(low / 0.4), v.len())
}

/// The weighted total of already computed penalties.
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine(
    freeze: f64,
    loop_: (f64, Option<f64>),
    face_missing: f64,
    offscreen: f64,
    mouth_occlusion: f64,
    silent_mismatch: f64,
    desync: (f64, usize),
) -> PenaltyDetail {
    let w = WEIGHTS;
    let c = |x: f64| clamp01(x);
    let total = w.freeze * c(freeze)
        + w.loop_ * c(loop_.0)
        + w.face_missing * c(face_missing)
        + w.offscreen * c(offscreen)
        + w.mouth_occlusion * c(mouth_occlusion)
        + w.silent_mismatch * c(silent_mismatch)
        + w.desync_spikes * c(desync.0);
    PenaltyDetail {
        penalty: clamp01(total),
        freeze: c(freeze),
        loop_: c(loop_.0),
        face_missing: c(face_missing),
        offscreen: c(offscreen),
        mouth_occlusion: c(mouth_occlusion),
        silent_mismatch: c(silent_mismatch),
        desync_spikes: c(desync.0),
        loop_correlation: loop_.1,
        desync_values: desync.1,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        let w = WEIGHTS;
        let s = w.freeze
            + w.loop_
            + w.face_missing
            + w.offscreen
            + w.mouth_occlusion
            + w.silent_mismatch
            + w.desync_spikes;
        assert!((s - 1.0).abs() < 1e-12);
    }

    #[test]
    fn simple_penalties() {
        assert!((freeze(&[Some(0.1), Some(5.0), None, Some(0.5)]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(freeze(&[]), 1.0);
        // How much each pair moved, as the hardened profile measures it: partly moving pairs count
        // in part, out-of-range values are clamped, undecodable pairs do not count.
        assert!((freeze_of(&[Some(1.0), Some(0.5), None, Some(0.0), Some(-3.0)]) - 0.625).abs() < 1e-12);
        assert_eq!(freeze_of(&[Some(2.0), Some(1.0)]), 0.0);
        assert_eq!(freeze_of(&[None, None]), 1.0);
        assert_eq!(face_missing(0.4), 0.5);
        assert_eq!(face_missing(0.9), 0.0);
        let fb = |x1, y1, x2, y2| {
            Some(FaceBox {
                x1,
                y1,
                x2,
                y2,
                score: 1.0,
                landmarks: None,
            })
        };
        let boxes = [fb(100.0, 100.0, 200.0, 200.0), fb(1.0, 100.0, 200.0, 200.0), None];
        let sizes = [Some((512, 512)); 3];
        assert_eq!(offscreen(&boxes, &sizes), 0.5);
        assert_eq!(offscreen(&[None, None], &sizes[..2]), 0.0);
        let occ = mouth_occlusion(&boxes, &[Some(0.001), Some(0.1), None], &[0.1, 0.1, 0.1]);
        assert_eq!(occ, 0.5);
    }

    #[test]
    fn loop_needs_twelve_frames_and_a_match() {
        let base: Vec<f64> = (0..16).map(|i| ((i * 37) % 11) as f64).collect();
        let mut clip: Vec<f64> = (0..80).map(|i| ((i * 53) % 17) as f64).collect();
        let head = clip[..16].to_vec();
        clip[64..].copy_from_slice(&head);
        assert!(loop_penalty(&clip).0 > 1.0 - 1e-9);
        assert_eq!(loop_penalty(&base[..11]).0, 0.0);
        let fresh: Vec<f64> = (0..80).map(|i| ((i * 53) % 17) as f64).collect();
        assert!(loop_penalty(&fresh).0 < 1.0);
    }

    #[test]
    fn silence_over_time() {
        let speech: Vec<f32> = (0..32_000).map(|i| 0.3 * (i as f32 * 0.07).sin()).collect();
        assert_eq!(silent_mismatch(&speech, &speech), 0.0);
        assert_eq!(silent_mismatch(&speech, &vec![0.0; 32_000]), 1.0);
        assert_eq!(silent_mismatch(&speech, &[]), 1.0);
        // The second half of the output muted: of the 20 windows, the last 10 are silent, and the
        // first 2 of those are excused by the ±0.2 s slack → 8 / 20.
        let mut half = speech.clone();
        half[16_000..].iter_mut().for_each(|v| *v = 0.0);
        let p = silent_mismatch(&speech, &half);
        assert!((p - 0.4).abs() < 1e-12, "{p}");
        // A silent challenge cannot be mismatched.
        assert_eq!(silent_mismatch(&[0.0; 1000], &speech), 0.0);
    }

    #[test]
    fn spikes_from_a_time_series() {
        let mut series: Vec<Option<f64>> = vec![Some(0.8); 40];
        assert_eq!(desync_spikes(&series).0, 0.0); // flat: no dip
        for i in [3, 11, 19, 27] {
            series[i] = Some(-0.5);
        }
        // 4 of 40 values are dips (z ≈ −3): 0.1 / 0.4 = 0.25.
        let (p, n) = desync_spikes(&series);
        assert_eq!(n, 40);
        assert!((p - 0.25).abs() < 1e-12, "{p}");
        assert_eq!(desync_spikes(&[Some(1.0); 7]).0, 0.0);
    }
}
