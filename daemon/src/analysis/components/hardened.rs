//! The terms of the hardened scoring profile (`scoring.profile = "hardened"`, the default): the
//! reference's terms that a cheap transformation of an output could raise without the output getting
//! any better, measured so that they say what they claim (docs/scoring.md, "Hardened profile").
//!
//! Owns, as pure functions of planes and numbers:
//! - [`face_change`]: how much a face changed between two frames beyond a rigid shift of the image
//!   (jitter, head translation), a global brightness/contrast change (flicker) and the pair's own noise
//!   floor (grain, codec noise). The motion term of the video component reads it instead of the whole
//!   frame's mean |Δgrey|, which grain, jitter and flicker all raise; the freeze penalty reads the
//!   mouth's share of it, projected onto the clip's own mouth motion
//!   ([`coherent_changes`](super::mouth_motion::coherent_changes)), since faint change scattered over
//!   a minority of the face's blocks passes for motion here.
//! - [`reference_sharpness`] and [`capped_blur`]: the blur term's Laplacian variance capped at the
//!   challenge face's own (at the frame's size): added grain and sharpening raise the Laplacian
//!   variance, but an output cannot be sharper than the face it was made from.
//! - [`capped_loudness`]: the loudness part of `audio_quality` judged on the output's RMS capped at the
//!   challenge audio's: turning the gain up does not make the speech better.
//!
//! Must not: allocate more than a few planes of the face's size per call, panic on any size (empty,
//! 1×1, mismatched planes), or return NaN (an unmeasurable change is `None`).

use super::FaceBox;
use super::audio::AudioDetail;
use super::image::{Grey, clip_box, laplacian_variance, resample_region};
use super::mouth_motion::{self, MouthField};
use super::stats::clamp01;
use crate::analysis::decode::Frame;

/// The longest side (in cells) the face region is box-downscaled to before it is compared: bounds
/// the work per pair and averages grain away (a 256-pixel face is compared at 2×2-pixel cells).
pub const CHANGE_GRID: usize = 128;
/// The residual is averaged over blocks of this many cells (a side) before it is judged: a
/// difference as large as a mouth survives, grain and sharpening halos average out.
const RESIDUAL_BLOCK: usize = 4;
/// A block's residual counts as change only beyond this many times the pair's median block residual
/// (the pair's noise floor: a talking face changes in a minority of its blocks).
const NOISE_FLOOR_FACTOR: f64 = 3.0;
/// Most a translation between two sampled frames is searched for, in cells of the half-resolution
/// grid the shift is estimated on (8 cells of a 128-cell face: about 1/8 of the face).
const MAX_SHIFT: f64 = 8.0;

/// Mean of each `k × k` block of `src` (`w × h`, row-major), as `(values, w / k, h / k)`.
fn box_down(src: &[f32], w: usize, h: usize, k: usize) -> (Vec<f32>, usize, usize) {
    let k = k.max(1);
    let (ow, oh) = (w / k, h / k);
    let mut out = vec![0f32; ow * oh];
    let inv = 1.0 / (k * k) as f32;
    for oy in 0..oh {
        for y in oy * k..oy * k + k {
            let row = &src[y * w..y * w + w];
            for (ox, o) in out[oy * ow..oy * ow + ow].iter_mut().enumerate() {
                *o += row[ox * k..ox * k + k].iter().sum::<f32>();
            }
        }
        out[oy * ow..oy * ow + ow].iter_mut().for_each(|o| *o *= inv);
    }
    (out, ow, oh)
}

/// `b` sampled at `(x + dx, y + dy)` (bilinear, coordinates clamped to the plane).
fn shifted(b: &[f32], w: usize, h: usize, dx: f64, dy: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(w * h);
    let (maxx, maxy) = ((w - 1) as f64, (h - 1) as f64);
    // The same fractional weights for every pixel away from the clamped border.
    for y in 0..h {
        let sy = (y as f64 + dy).clamp(0.0, maxy);
        let y0 = sy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let fy = (sy - y0 as f64) as f32;
        for x in 0..w {
            let sx = (x as f64 + dx).clamp(0.0, maxx);
            let x0 = sx.floor() as usize;
            let x1 = (x0 + 1).min(w - 1);
            let fx = (sx - x0 as f64) as f32;
            let top = b[y0 * w + x0] * (1.0 - fx) + b[y0 * w + x1] * fx;
            let bottom = b[y1 * w + x0] * (1.0 - fx) + b[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The `(gain, offset)` with `b ≈ gain·a + offset` over the interior (`margin` cells from every
/// edge): the least-squares gain (1 when `a` is flat there, and kept within `[0.25, 4]`) and the
/// median offset, so that a change confined to part of the face (the mouth) is not spread over the
/// rest of it as a global brightness change.
fn photometric_fit(a: &[f32], b: &[f32], w: usize, h: usize, margin: usize) -> (f64, f64) {
    let (mut n, mut sa, mut sb, mut saa, mut sab) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let interior = || {
        (margin..h.saturating_sub(margin))
            .flat_map(move |y| (margin..w.saturating_sub(margin)).map(move |x| y * w + x))
    };
    for i in interior() {
        let (p, q) = (f64::from(a[i]), f64::from(b[i]));
        n += 1.0;
        sa += p;
        sb += q;
        saa += p * p;
        sab += p * q;
    }
    if n < 1.0 {
        return (1.0, 0.0);
    }
    let (ma, mb) = (sa / n, sb / n);
    let var = saa / n - ma * ma;
    let gain = if var > 1e-6 {
        ((sab / n - ma * mb) / var).clamp(0.25, 4.0)
    } else {
        1.0
    };
    let mut offsets: Vec<f32> = interior().map(|i| b[i] - gain as f32 * a[i]).collect();
    let mid = offsets.len() / 2;
    let (_, median, _) = offsets.select_nth_unstable_by(mid, f32::total_cmp);
    (gain, f64::from(*median))
}

/// The translation `(dx, dy)` (in cells) that best maps `b` onto `a` up to a gain and an offset:
/// Lucas–Kanade on the whole region, a few Gauss–Newton steps from no shift.
fn global_shift(a: &[f32], b: &[f32], w: usize, h: usize) -> (f64, f64) {
    let (mut dx, mut dy) = (0.0f64, 0.0f64);
    let m = 2usize;
    if w < 2 * m + 3 || h < 2 * m + 3 {
        return (0.0, 0.0);
    }
    for _ in 0..5 {
        let bw = shifted(b, w, h, dx, dy);
        let (gain, offset) = photometric_fit(a, &bw, w, h, m);
        let (mut sxx, mut sxy, mut syy, mut sxt, mut syt) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for y in m..h - m {
            for x in m..w - m {
                let i = y * w + x;
                let gx = 0.5 * f64::from(bw[i + 1] - bw[i - 1]);
                let gy = 0.5 * f64::from(bw[i + w] - bw[i - w]);
                let it = f64::from(bw[i]) - (gain * f64::from(a[i]) + offset);
                sxx += gx * gx;
                sxy += gx * gy;
                syy += gy * gy;
                sxt += gx * it;
                syt += gy * it;
            }
        }
        let det = sxx * syy - sxy * sxy;
        if !(det.is_finite() && det > 1e-9 * (sxx + syy).powi(2).max(1e-12)) {
            break;
        }
        let ddx = -(syy * sxt - sxy * syt) / det;
        let ddy = -(sxx * syt - sxy * sxt) / det;
        if !(ddx.is_finite() && ddy.is_finite()) {
            break;
        }
        dx = (dx + ddx).clamp(-MAX_SHIFT, MAX_SHIFT);
        dy = (dy + ddy).clamp(-MAX_SHIFT, MAX_SHIFT);
        if ddx.abs().max(ddy.abs()) < 0.02 {
            break;
        }
    }
    (dx, dy)
}

/// The face region of a pair: frame `t`'s face box (the whole frame without one), clipped.
fn region(w: usize, h: usize, face: Option<&FaceBox>) -> Option<[usize; 4]> {
    match face {
        Some(b) => clip_box(
            f64::from(b.x1),
            f64::from(b.y1),
            f64::from(b.x2),
            f64::from(b.y2),
            w,
            h,
        ),
        None => Some([0, 0, w, h]),
    }
}

/// How much the face changed from `prev` to `cur` (grey levels), beyond a rigid shift, a global
/// gain and offset, and the pair's noise floor; `None` when the planes differ in size or the region
/// is too small to compare.
///
/// The region is frame `t`'s face box (the whole frame without a face), cut from both planes and
/// box-downscaled so that its longer side is at most [`CHANGE_GRID`] cells. The translation of `cur`
/// against `prev` is estimated on a grid twice as coarse ([`global_shift`]) and undone with a
/// bilinear warp; the gain and offset that best map `prev` onto the warped `cur` are removed; the
/// residual is averaged over [`RESIDUAL_BLOCK`]-cell square blocks, and each block counts only what exceeds
/// [`NOISE_FLOOR_FACTOR`] times the median block (a talking face changes in a minority of its blocks,
/// grain in all of them). The result is the mean over blocks: 0 for a still face under grain, jitter or
/// flicker; about a grey level or more for a frame whose mouth moved.
pub fn face_change(prev: &Grey, cur: &Grey, face: Option<&FaceBox>) -> Option<f64> {
    pair_change(prev, cur, face).map(|c| c.face)
}

/// What [`pair_change`] measures of one frame pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairChange {
    /// [`face_change`].
    pub face: f64,
    /// The mouth's share of it: the mean excess over the blocks whose centre lies in the face box's
    /// mouth rectangle ([`mouth_rect`](super::lipsync::mouth_rect)), with the alignment, gain, offset
    /// and noise floor of the whole face; `None` without a face box or a block in the rectangle. The
    /// hardened profile's mouth signal: grain, jitter and flicker of a still face leave it near 0,
    /// where the reference's mouth |Δgrey| followed them (and a chance correlation with the audio
    /// passed the sync gate).
    pub mouth: Option<f64>,
    /// The signed residual over the mouth rectangle on [`mouth_motion::FIELD`]'s grid, for the clip's
    /// [`mouth_motion::coherence`]; `None` where `mouth` is, or when a field cell holds no residual.
    pub mouth_field: Option<MouthField>,
}

/// [`face_change`], the mouth's share of it and the mouth's signed change ([`PairChange`]).
pub fn pair_change(prev: &Grey, cur: &Grey, face: Option<&FaceBox>) -> Option<PairChange> {
    if prev.is_empty() || cur.is_empty() || prev.w != cur.w || prev.h != cur.h {
        return None;
    }
    let [x0, y0, x1, y1] = region(cur.w, cur.h, face)?;
    let (rw, rh) = (x1 - x0, y1 - y0);
    let k = rw.max(rh).div_ceil(CHANGE_GRID).max(1);
    let cut = |g: &Grey| -> Vec<f32> {
        let mut v = Vec::with_capacity(rw * rh);
        for y in y0..y1 {
            v.extend(g.px[y * g.w + x0..y * g.w + x1].iter().map(|&p| f32::from(p)));
        }
        v
    };
    let (a, w, h) = box_down(&cut(prev), rw, rh, k);
    let (b, _, _) = box_down(&cut(cur), rw, rh, k);
    if w < 16 || h < 16 {
        return None;
    }
    // The shift, on the half-resolution grid (grain halved again, and a wider reach), then here.
    let (a2, w2, h2) = box_down(&a, w, h, 2);
    let (b2, _, _) = box_down(&b, w, h, 2);
    let (sx, sy) = global_shift(&a2, &b2, w2, h2);
    let (dx, dy) = (2.0 * sx, 2.0 * sy);
    let bw = shifted(&b, w, h, dx, dy);
    // Cells a shift brought in from beyond the region's edge are not compared.
    let margin = 2 + dx.abs().max(dy.abs()).ceil() as usize;
    if w <= 2 * margin + RESIDUAL_BLOCK || h <= 2 * margin + RESIDUAL_BLOCK {
        return None;
    }
    let (gain, offset) = photometric_fit(&a, &bw, w, h, margin);
    let (iw, ih) = (w - 2 * margin, h - 2 * margin);
    let mut residual = Vec::with_capacity(iw * ih);
    for y in margin..h - margin {
        for x in margin..w - margin {
            let i = y * w + x;
            residual.push((f64::from(bw[i]) - (gain * f64::from(a[i]) + offset)) as f32);
        }
    }
    let (blocks, bw_n, _) = box_down(&residual, iw, ih, RESIDUAL_BLOCK);
    let magnitude: Vec<f32> = blocks.iter().map(|v| v.abs()).collect();
    if magnitude.is_empty() {
        return None;
    }
    let mut sorted = magnitude.clone();
    let mid = sorted.len() / 2;
    let (_, median, _) = sorted.select_nth_unstable_by(mid, f32::total_cmp);
    let floor = NOISE_FLOOR_FACTOR * f64::from(*median);
    let excess = |v: f32| (f64::from(v) - floor).max(0.0);
    let change = magnitude.iter().map(|&v| excess(v)).sum::<f64>() / magnitude.len() as f64;
    // Frame-pixel coordinates of the centre of residual cell `i` (`cells` residual cells a side).
    let centre =
        |i: usize, cells: usize| (margin as f64 + (i * cells) as f64 + cells as f64 / 2.0) * k as f64;
    let mouth_rect = face.and_then(|b| super::lipsync::mouth_rect(b, cur.w, cur.h));
    // The blocks whose centre lies in the mouth rectangle.
    let mouth = mouth_rect.and_then(|[mx0, my0, mx1, my1]| {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (i, &v) in magnitude.iter().enumerate() {
            let (bx, by) = (i % bw_n.max(1), i / bw_n.max(1));
            let (cx, cy) = (
                x0 as f64 + centre(bx, RESIDUAL_BLOCK),
                y0 as f64 + centre(by, RESIDUAL_BLOCK),
            );
            if (mx0 as f64..mx1 as f64).contains(&cx) && (my0 as f64..my1 as f64).contains(&cy) {
                sum += excess(v);
                count += 1;
            }
        }
        (count > 0).then(|| sum / count as f64)
    });
    // The signed residual of the cells in the mouth rectangle, averaged over the field's grid.
    let mouth_field = mouth_rect
        .filter(|_| mouth.is_some())
        .and_then(|[mx0, my0, mx1, my1]| {
            let (fw, fh) = mouth_motion::FIELD;
            // The field column of each residual column and the field row of each residual row (`None`
            // outside the rectangle), so that only the rectangle's cells are visited.
            let bins =
                |cells: usize, origin: usize, lo: usize, hi: usize, parts: usize| -> Vec<Option<usize>> {
                    let span = (hi - lo) as f64;
                    (0..cells)
                        .map(|i| {
                            let at = (origin as f64 + centre(i, 1) - lo as f64) / span;
                            (0.0..1.0).contains(&at).then_some((at * parts as f64) as usize)
                        })
                        .collect()
                };
            let (columns, rows) = (bins(iw, x0, mx0, mx1, fw), bins(ih, y0, my0, my1, fh));
            let mut sums = [0.0f64; mouth_motion::FIELD_CELLS];
            let mut counts = [0usize; mouth_motion::FIELD_CELLS];
            for (y, row) in rows.iter().enumerate() {
                let Some(fy) = row else { continue };
                for (x, column) in columns.iter().enumerate() {
                    if let Some(fx) = column {
                        sums[fy * fw + fx] += f64::from(residual[y * iw + x]);
                        counts[fy * fw + fx] += 1;
                    }
                }
            }
            counts
                .iter()
                .all(|&c| c > 0)
                .then(|| std::array::from_fn(|i| (sums[i] / counts[i] as f64) as f32))
        });
    change.is_finite().then_some(PairChange {
        face: change,
        mouth: mouth.filter(|m| m.is_finite()),
        mouth_field,
    })
}

/// The Laplacian variance of the challenge face at the frames' size (`w × h`; box-resampled when the
/// sizes differ), the sharpness an output made from it can honestly have; `None` for an unusable face.
pub fn reference_sharpness(reference: &Frame, w: usize, h: usize) -> Option<f64> {
    let g = Grey::from_frame(reference)?;
    if w == 0 || h == 0 {
        return None;
    }
    if (g.w, g.h) == (w, h) {
        return laplacian_variance(&g);
    }
    let cells = resample_region(&g, [0, 0, g.w, g.h], w, h)?;
    let resized = Grey {
        w,
        h,
        px: cells.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect(),
    };
    laplacian_variance(&resized)
}

/// The blur term of one frame, `clamp01(min(lap_var, cap) / 500)`: the reference's with the
/// Laplacian variance capped at the challenge face's ([`reference_sharpness`]; no cap when that is
/// unknown).
pub fn capped_blur(lap_var: f64, cap: Option<f64>) -> f64 {
    let v = match cap {
        Some(c) if c.is_finite() => lap_var.min(c.max(0.0)),
        _ => lap_var,
    };
    clamp01(v / 500.0)
}

/// `(audio, audio_quality)` with the loudness part of `audio_quality` judged on the output's RMS
/// capped at the challenge audio's (`source_rms`): `0.8·clamp01((min(rms, source_rms) − 0.01) / 0.14)`
/// plus the unchanged clipping part. The audio component is linear in `audio_quality` (weight 0.25, or
/// 0.25 / 0.60 when WER is unavailable), so the component moves by that weight times the change.
pub fn capped_loudness(detail: &AudioDetail, source_rms: f64) -> (f64, f64) {
    let loud = |rms: f64| 0.8 * clamp01((rms - 0.01) / 0.14);
    let cap = if source_rms.is_finite() { source_rms } else { 0.0 };
    let drop = loud(detail.rms) - loud(detail.rms.min(cap));
    if !(drop.is_finite() && drop > 0.0) {
        return (detail.audio, detail.audio_quality);
    }
    let weight = if detail.wer.is_some() { 0.25 } else { 0.25 / 0.60 };
    let quality = clamp01(detail.audio_quality - drop);
    (clamp01(detail.audio - weight * drop), quality)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A textured "face": smooth shading, a few edges, and a dark mouth ellipse of opening `open`.
    fn face_plane(w: usize, h: usize, shift: (f64, f64), open: f64, gain: f64, offset: f64) -> Grey {
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f64 - shift.0, y as f64 - shift.1);
                let mut v = 120.0 + 40.0 * (fx / 23.0).sin() * (fy / 17.0).cos() + 0.2 * fx;
                // Eyes.
                for ex in [0.35, 0.65] {
                    let (dx, dy) = (fx - ex * w as f64, fy - 0.4 * h as f64);
                    if dx * dx + dy * dy < 64.0 {
                        v -= 70.0;
                    }
                }
                // Mouth.
                let (mx, my) = (
                    (fx - 0.5 * w as f64) / 30.0,
                    (fy - 0.75 * h as f64) / (1.0 + open),
                );
                if mx * mx + my * my < 1.0 {
                    v -= 60.0;
                }
                px.push((gain * v + offset).round().clamp(0.0, 255.0) as u8);
            }
        }
        Grey { w, h, px }
    }

    /// Deterministic grain of amplitude `amp`, different for each `seed`.
    fn grain(g: &Grey, amp: f64, seed: u64) -> Grey {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let px =
            g.px.iter()
                .map(|&p| {
                    s = s
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let u = ((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0;
                    (f64::from(p) + amp * u).round().clamp(0.0, 255.0) as u8
                })
                .collect();
        Grey { w: g.w, h: g.h, px }
    }

    #[test]
    fn a_still_face_under_grain_jitter_and_flicker_does_not_change() {
        let still = face_plane(200, 240, (0.0, 0.0), 2.0, 1.0, 0.0);
        assert_eq!(face_change(&still, &still, None), Some(0.0));
        for (name, next) in [
            ("grain", grain(&still, 40.0, 7)),
            ("1.5 px jitter", face_plane(200, 240, (1.5, -1.0), 2.0, 1.0, 0.0)),
            ("2 px jitter", face_plane(200, 240, (-2.0, 2.0), 2.0, 1.0, 0.0)),
            ("flicker", face_plane(200, 240, (0.0, 0.0), 2.0, 1.1, -8.0)),
        ] {
            let prev = if name == "grain" {
                grain(&still, 40.0, 3)
            } else {
                still.clone()
            };
            let c = face_change(&prev, &next, None).unwrap();
            assert!(c < 0.3, "{name}: {c}");
            // The reference's whole-frame difference calls every one of them motion.
            let raw = crate::analysis::image::mean_abs_diff(&prev, &next).unwrap();
            assert!(raw > 0.8, "{name}: {raw}");
        }
    }

    #[test]
    fn a_moving_mouth_is_change_with_or_without_grain() {
        let closed = face_plane(200, 240, (0.0, 0.0), 2.0, 1.0, 0.0);
        let open = face_plane(200, 240, (0.0, 0.0), 14.0, 1.0, 0.0);
        let clean = face_change(&closed, &open, None).unwrap();
        assert!(clean > 1.0, "{clean}");
        // The mouth opening while the head moves a pixel and the light changes is still change.
        let moved = face_plane(200, 240, (1.0, 0.0), 14.0, 1.05, 3.0);
        let c = face_change(&closed, &moved, None).unwrap();
        assert!(c > 0.8 * clean, "{c} vs {clean}");
        // Under grain: about the same change, not the grain's.
        let noisy = face_change(&grain(&closed, 30.0, 1), &grain(&open, 30.0, 2), None).unwrap();
        assert!(noisy > 0.6 * clean && noisy < 1.6 * clean, "{noisy} vs {clean}");
    }

    #[test]
    fn the_region_is_the_face_box_and_odd_planes_are_unmeasured() {
        let closed = face_plane(200, 240, (0.0, 0.0), 2.0, 1.0, 0.0);
        let open = face_plane(200, 240, (0.0, 0.0), 14.0, 1.0, 0.0);
        let face = |y1: f32, y2: f32| FaceBox {
            x1: 20.0,
            y1,
            x2: 180.0,
            y2,
            score: 1.0,
            landmarks: None,
        };
        // A box over the mouth sees it; a box over the forehead does not.
        assert!(face_change(&closed, &open, Some(&face(120.0, 230.0))).unwrap() > 1.0);
        assert_eq!(face_change(&closed, &open, Some(&face(0.0, 90.0))), Some(0.0));
        // Too small, mismatched or empty planes: not measured.
        let tiny = face_plane(12, 12, (0.0, 0.0), 2.0, 1.0, 0.0);
        assert_eq!(face_change(&tiny, &tiny, None), None);
        assert_eq!(face_change(&closed, &tiny, None), None);
        assert_eq!(face_change(&Grey::default(), &closed, None), None);
        assert_eq!(face_change(&closed, &open, Some(&face(300.0, 400.0))), None);
    }

    #[test]
    fn the_mouth_field_is_the_signed_change_of_the_mouth_rectangle() {
        let closed = face_plane(200, 240, (0.0, 0.0), 2.0, 1.0, 0.0);
        let open = face_plane(200, 240, (0.0, 0.0), 14.0, 1.0, 0.0);
        // The mouth rectangle of this box (rows 150–221, columns 52–148) holds the mouth (centre 100, 180).
        let face = FaceBox {
            x1: 20.0,
            y1: 20.0,
            x2: 180.0,
            y2: 230.0,
            score: 1.0,
            landmarks: None,
        };
        let opening = pair_change(&closed, &open, Some(&face)).unwrap();
        let field = opening.mouth_field.unwrap();
        // The mouth grows darker: the change is negative, largest in the middle columns, and the
        // closing pair's is nearly its opposite (each pair has its own gain and offset fit).
        let (fw, _) = mouth_motion::FIELD;
        let column = |x: usize| (0..mouth_motion::FIELD.1).map(|y| field[y * fw + x]).sum::<f32>();
        let middle = column(3).max(column(4));
        assert!(middle < -30.0, "{field:?}");
        assert!(
            column(0).abs() * 8.0 < -middle && column(fw - 1).abs() * 8.0 < -middle,
            "{field:?}"
        );
        let closing = pair_change(&open, &closed, Some(&face))
            .unwrap()
            .mouth_field
            .unwrap();
        let dot =
            |a: &MouthField, b: &MouthField| a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>();
        let cosine = dot(&field, &closing) / (dot(&field, &field) * dot(&closing, &closing)).sqrt();
        assert!(cosine < -0.85, "{cosine}: {field:?} {closing:?}");
        // Grain alone leaves it small beside the opening; no face box, no field.
        let peak = |f: &MouthField| f.iter().fold(0f32, |m, v| m.max(v.abs()));
        let grained = pair_change(&grain(&closed, 30.0, 1), &grain(&closed, 30.0, 2), Some(&face)).unwrap();
        assert!(
            peak(&grained.mouth_field.unwrap()) * 5.0 < peak(&field),
            "{grained:?}"
        );
        assert_eq!(pair_change(&closed, &open, None).unwrap().mouth_field, None);
    }

    #[test]
    fn blur_is_capped_at_the_reference_face() {
        assert_eq!(capped_blur(250.0, None), 0.5);
        assert_eq!(capped_blur(250.0, Some(100.0)), 0.2);
        assert_eq!(capped_blur(50.0, Some(100.0)), 0.1);
        assert_eq!(capped_blur(5000.0, Some(f64::NAN)), 1.0);
        let face = face_plane(64, 64, (0.0, 0.0), 2.0, 1.0, 0.0);
        let rgb: Vec<u8> = face.px.iter().flat_map(|&p| [p, p, p]).collect();
        let frame = Frame::rgb(64, 64, rgb);
        let own = reference_sharpness(&frame, 64, 64).unwrap();
        assert_eq!(Some(own), laplacian_variance(&face));
        // Upscaled to the frames' size (nearest cells: no sharper than the face's own edges allow).
        assert!(reference_sharpness(&frame, 128, 128).unwrap() > 0.0);
        assert_eq!(reference_sharpness(&frame, 0, 10), None);
        assert_eq!(reference_sharpness(&Frame::rgb(4, 4, vec![0; 5]), 4, 4), None);
    }

    #[test]
    fn loudness_is_capped_at_the_challenge_audio() {
        let detail = |rms: f64, wer: Option<f64>| AudioDetail {
            audio: 0.9,
            wer,
            wer_unavailable: None,
            tsim: 1.0,
            audio_quality: 0.8 * clamp01((rms - 0.01) / 0.14) + 0.2,
            rms,
            clip_fraction: 0.0,
            video_audio_energy: rms * rms,
            source_audio_energy: 0.01,
        };
        // Quieter than the challenge: unchanged.
        let d = detail(0.05, None);
        assert_eq!(capped_loudness(&d, 0.1), (d.audio, d.audio_quality));
        // Twice as loud as the challenge: judged at the challenge's loudness.
        let loud = detail(0.2, None);
        let (audio, quality) = capped_loudness(&loud, 0.1);
        let at_source = 0.8 * clamp01(0.09 / 0.14) + 0.2;
        assert!((quality - at_source).abs() < 1e-12, "{quality}");
        assert!((audio - (0.9 - 0.25 / 0.6 * (loud.audio_quality - at_source))).abs() < 1e-12);
        // With WER the term weighs 0.25.
        let (audio, _) = capped_loudness(&detail(0.2, Some(0.1)), 0.1);
        assert!((audio - (0.9 - 0.25 * (loud.audio_quality - at_source))).abs() < 1e-12);
        // A meaningless cap caps to silence, never to NaN.
        let (audio, quality) = capped_loudness(&loud, f64::NAN);
        assert!(audio.is_finite() && quality.is_finite());
    }
}
