//! SCRFD (InsightFace `det_10g.onnx`) pre- and post-processing, as pure functions.
//!
//! Owns: the letterbox geometry and the input tensor (InsightFace `SCRFD.detect`: aspect kept, image
//! at the top-left of a black canvas, `(x − 127.5) / 128`, RGB planes), the anchor decoding of the
//! nine outputs (scores, box distances and keypoint offsets for strides 8, 16 and 32 with two anchors
//! per location: `distance2bbox` / `distance2kps`), and the reference's NMS (IoU 0.4, pixel-inclusive
//! areas). Numbers follow `insightface/model_zoo/scrfd.py` so a detection here is the reference's.
//!
//! Must not: run a model, touch files, or return boxes in anything but the analysed frame's pixels.

use super::Frame;

/// Feature-map strides of det_10g, in output order.
pub const STRIDES: [usize; 3] = [8, 16, 32];
/// Anchors per feature-map location (det_10g: 2, both centred on the location).
pub const ANCHORS_PER_CELL: usize = 2;
/// Input normalisation: `(x − MEAN) / STD` (SCRFD's `input_mean` / `input_std`).
pub const INPUT_MEAN: f32 = 127.5;
/// See [`INPUT_MEAN`].
pub const INPUT_STD: f32 = 128.0;
/// The reference's score threshold (`det_thresh`).
pub const SCORE_THRESHOLD: f32 = 0.5;
/// The reference's NMS IoU threshold.
pub const NMS_IOU: f32 = 0.4;
/// The reference's detector input side (`FaceAnalysis.prepare(det_size=(640, 640))`).
pub const DEFAULT_INPUT_SIDE: u32 = 640;

/// One detection in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Face score in `[0, 1]`.
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corners (image left/right), `[x, y]`.
    pub kps: [[f32; 2]; 5],
}

/// Where a frame lands in the detector input: scaled by `scale` (aspect kept) to `new_w × new_h` at
/// the top-left of an `input_w × input_h` canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Input width of the model.
    pub input_w: u32,
    /// Input height of the model.
    pub input_h: u32,
    /// Width of the resized frame.
    pub new_w: u32,
    /// Height of the resized frame.
    pub new_h: u32,
    /// `new_h / frame_h` (SCRFD's `det_scale`): divide decoded coordinates by it.
    pub scale: f32,
}

impl Letterbox {
    /// SCRFD's resize rule: fit the longer relative side, truncate the other (Python `int()`).
    /// `None` for an empty frame or input.
    pub fn new(frame_w: u32, frame_h: u32, input_w: u32, input_h: u32) -> Option<Self> {
        if frame_w == 0 || frame_h == 0 || input_w == 0 || input_h == 0 {
            return None;
        }
        let im_ratio = f64::from(frame_h) / f64::from(frame_w);
        let model_ratio = f64::from(input_h) / f64::from(input_w);
        let (new_w, new_h) = if im_ratio > model_ratio {
            ((f64::from(input_h) / im_ratio) as u32, input_h)
        } else {
            (input_w, (f64::from(input_w) * im_ratio) as u32)
        };
        if new_w == 0 || new_h == 0 {
            return None;
        }
        Some(Letterbox {
            input_w,
            input_h,
            new_w,
            new_h,
            scale: (f64::from(new_h) / f64::from(frame_h)) as f32,
        })
    }
}

/// The detector input, `1 × 3 × input_h × input_w`, planes in **RGB** order.
///
/// Why RGB: InsightFace reads images with OpenCV (BGR) and builds the blob with `swapRB=True`, so the
/// network is fed RGB. Our frames are RGB already, so they go in as they are. (The reference decoded
/// frames to RGB and then let InsightFace swap them again, feeding BGR: docs/reference.md#weakness-11.)
///
/// The frame is resized to 8 bits exactly as `cv2.resize` does ([`resize_linear_u8`]) and the rest of
/// the canvas is black before normalisation, as in `SCRFD.detect`.
pub fn input_tensor(frame: &Frame, lb: &Letterbox) -> Vec<f32> {
    let (iw, ih) = (lb.input_w as usize, lb.input_h as usize);
    let plane = iw * ih;
    let black = (0.0 - INPUT_MEAN) / INPUT_STD;
    let mut out = vec![black; 3 * plane];
    if !frame.is_well_formed() {
        return out;
    }
    let resized = resize_linear_u8(&frame.rgb_pixels(), frame.width, frame.height, lb.new_w, lb.new_h);
    let (nw, nh) = (lb.new_w as usize, lb.new_h as usize);
    for (y, row) in resized.chunks_exact(nw * 3).enumerate().take(nh.min(ih)) {
        for (x, px) in row.chunks_exact(3).enumerate().take(nw.min(iw)) {
            for (c, &v) in px.iter().enumerate() {
                out[c * plane + y * iw + x] = (f32::from(v) - INPUT_MEAN) / INPUT_STD;
            }
        }
    }
    out
}

/// OpenCV's fixed-point coefficient scale for 8-bit `INTER_LINEAR` (`INTER_RESIZE_COEF_BITS` = 11).
const RESIZE_ONE: f32 = 2048.0;

/// Which way a [`resize_taps`] table runs: OpenCV tabulates the two axes differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TapAxis {
    /// Columns: a position outside the source takes the edge pixel with full weight.
    Columns,
    /// Rows: the position is not clamped before its fraction is taken; the two row indices are.
    Rows,
}

/// For each of `dst` positions: the two source indices and their 11-bit weights, as OpenCV's
/// `resize` tabulates them: `f = (float)((d + 0.5) · scale − 0.5)` with `scale = 1 / (dst / src)` in
/// double, `i = floor(f)`, weights `round(2048 · (1 − frac))`, `round(2048 · frac)` (ties to even,
/// `saturate_cast<short>`); out-of-range positions as `axis` says.
fn resize_taps(src: u32, dst: u32, axis: TapAxis) -> Vec<(usize, usize, i32, i32)> {
    let scale = 1.0 / (f64::from(dst) / f64::from(src));
    let last = i64::from(src) - 1;
    (0..dst)
        .map(|d| {
            let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let i = f.floor();
            let (i, frac) = match axis {
                TapAxis::Columns if i < 0.0 => (0, 0.0),
                TapAxis::Columns if i as i64 >= last => (last, 0.0),
                _ => (i as i64, f - i),
            };
            let w0 = ((1.0 - frac) * RESIZE_ONE).round_ties_even() as i32;
            let w1 = (frac * RESIZE_ONE).round_ties_even() as i32;
            (i.clamp(0, last) as usize, (i + 1).clamp(0, last) as usize, w0, w1)
        })
        .collect()
}

/// `cv2.resize(img, (dst_w, dst_h))` (`INTER_LINEAR`) of an 8-bit, 3-channel image, bit for bit:
/// OpenCV's fixed-point path for 8-bit images (11-bit weights, a horizontal pass into integers, then
/// `((b0·(h0 >> 4)) >> 16) + ((b1·(h1 >> 4)) >> 16) + 2) >> 2`), which rounds to 8 bits, not a
/// floating-point bilinear resize, which can differ from it by almost one grey level.
pub fn resize_linear_u8(pixels: &[u8], src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Vec<u8> {
    let (sw, dw) = (src_w as usize, dst_w as usize);
    if src_w == 0 || src_h == 0 || pixels.len() < sw * src_h as usize * 3 {
        return vec![0; dw * dst_h as usize * 3];
    }
    let xs = resize_taps(src_w, dst_w, TapAxis::Columns);
    let ys = resize_taps(src_h, dst_h, TapAxis::Rows);
    let horizontal = |y: usize| -> Vec<i32> {
        let row = &pixels[y * sw * 3..][..sw * 3];
        let mut h = Vec::with_capacity(dw * 3);
        for &(x0, x1, a0, a1) in &xs {
            for c in 0..3 {
                h.push(i32::from(row[x0 * 3 + c]) * a0 + i32::from(row[x1 * 3 + c]) * a1);
            }
        }
        h
    };
    let mut out = Vec::with_capacity(dw * dst_h as usize * 3);
    let mut cache: Option<(usize, Vec<i32>, usize, Vec<i32>)> = None;
    for &(y0, y1, b0, b1) in &ys {
        let (h0, h1) = match cache.take() {
            Some((c0, h0, c1, h1)) if c0 == y0 && c1 == y1 => (h0, h1),
            Some((_, _, c1, h1)) if c1 == y0 => (h1, horizontal(y1)),
            _ => (horizontal(y0), horizontal(y1)),
        };
        out.extend(h0.iter().zip(&h1).map(|(&s0, &s1)| {
            ((((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2).clamp(0, 255) as u8
        }));
        cache = Some((y0, h0, y1, h1));
    }
    out
}

/// The three tensors of one stride, flattened (a leading batch dimension of 1 changes nothing).
#[derive(Debug, Clone, Copy)]
pub struct StrideOutputs<'a> {
    /// Feature-map stride.
    pub stride: usize,
    /// One score per anchor.
    pub scores: &'a [f32],
    /// Four distances (left, top, right, bottom) per anchor, in stride units.
    pub bboxes: &'a [f32],
    /// Ten offsets (x, y for five points) per anchor, in stride units.
    pub kps: &'a [f32],
}

/// The outputs do not have det_10g's layout: the model is not an SCRFD with keypoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stride {stride}: {what} has {got} values, expected {expected}")]
pub struct LayoutError {
    /// Stride of the tensor.
    pub stride: usize,
    /// Which tensor.
    pub what: &'static str,
    /// Values found.
    pub got: usize,
    /// Values expected for the input size.
    pub expected: usize,
}

/// Decodes every anchor scoring at least `threshold` into frame pixels, then applies [`nms`].
///
/// Anchor `a` of a stride sits at location `a / 2` in row-major order over an
/// `(input_h / stride) × (input_w / stride)` grid, centred at `(x · stride, y · stride)` (no half-cell
/// offset in SCRFD). Boxes are `centre ∓ distance · stride`, keypoints `centre + offset · stride`, and
/// everything is divided by the letterbox scale.
pub fn decode(
    outputs: &[StrideOutputs<'_>],
    lb: &Letterbox,
    threshold: f32,
) -> Result<Vec<Detection>, LayoutError> {
    let mut found = Vec::new();
    for o in outputs {
        let (gw, gh) = (lb.input_w as usize / o.stride, lb.input_h as usize / o.stride);
        let anchors = gw * gh * ANCHORS_PER_CELL;
        for (what, got, per) in [
            ("scores", o.scores.len(), 1),
            ("bboxes", o.bboxes.len(), 4),
            ("kps", o.kps.len(), 10),
        ] {
            if got != anchors * per {
                return Err(LayoutError {
                    stride: o.stride,
                    what,
                    got,
                    expected: anchors * per,
                });
            }
        }
        let s = o.stride as f32;
        for (a, &score) in o.scores.iter().enumerate() {
            if score.is_nan() || score < threshold {
                continue;
            }
            let cell = a / ANCHORS_PER_CELL;
            let (cx, cy) = (((cell % gw) * o.stride) as f32, ((cell / gw) * o.stride) as f32);
            let d = &o.bboxes[a * 4..a * 4 + 4];
            let bbox = [
                (cx - d[0] * s) / lb.scale,
                (cy - d[1] * s) / lb.scale,
                (cx + d[2] * s) / lb.scale,
                (cy + d[3] * s) / lb.scale,
            ];
            let k = &o.kps[a * 10..a * 10 + 10];
            let kps =
                std::array::from_fn(|i| [(cx + k[2 * i] * s) / lb.scale, (cy + k[2 * i + 1] * s) / lb.scale]);
            if bbox.iter().chain(kps.iter().flatten()).all(|v| v.is_finite()) {
                found.push(Detection { bbox, score, kps });
            }
        }
    }
    Ok(nms(found, NMS_IOU))
}

/// Greedy NMS as InsightFace's: highest score first (ties keep decoding order), drop every later box
/// whose IoU with a kept one is above `iou`. Areas count pixels inclusively (`x2 − x1 + 1`), as the
/// reference does, so results match it on small boxes too.
pub fn nms(mut dets: Vec<Detection>, iou: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        let overlaps = kept.iter().any(|k| {
            let w = (d.bbox[2].min(k.bbox[2]) - d.bbox[0].max(k.bbox[0]) + 1.0).max(0.0);
            let h = (d.bbox[3].min(k.bbox[3]) - d.bbox[1].max(k.bbox[1]) + 1.0).max(0.0);
            let inter = w * h;
            inter / (area(&d.bbox) + area(&k.bbox) - inter) > iou
        });
        if !overlaps {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_keeps_aspect_like_scrfd() {
        // 1280×720 into 640×640: width-bound, height int(640 · 0.5625) = 360, scale 360/720.
        let lb = Letterbox::new(1280, 720, 640, 640).unwrap();
        assert_eq!((lb.new_w, lb.new_h, lb.scale), (640, 360, 0.5));
        // 300×500 (taller than the input): height-bound, width int(640 / (5/3)) = 384, scale 640/500.
        let lb = Letterbox::new(300, 500, 640, 640).unwrap();
        assert_eq!((lb.new_w, lb.new_h), (384, 640));
        assert!((lb.scale - 1.28).abs() < 1e-6);
        // Python's int() truncates: 333 × 640/1000 = 213.12 → 213.
        let lb = Letterbox::new(1000, 333, 640, 640).unwrap();
        assert_eq!((lb.new_w, lb.new_h), (640, 213));
        assert_eq!(Letterbox::new(0, 10, 640, 640), None);
    }

    #[test]
    fn input_is_rgb_normalised_and_padded_black() {
        // A 2×1 frame (red, blue) into a 4×4 input: scale 2, resized 4×2 at the top.
        let frame = Frame::rgb(2, 1, vec![255, 0, 0, 0, 0, 255]);
        let lb = Letterbox::new(2, 1, 4, 4).unwrap();
        assert_eq!((lb.new_w, lb.new_h), (4, 2));
        let t = input_tensor(&frame, &lb);
        let plane = 16;
        let (hi, lo) = ((255.0 - 127.5) / 128.0, -127.5 / 128.0);
        // Plane 0 is R: full at the left edge (x=0: src −0.25 clamps to 0), blending by
        // (x + 0.5)/2 − 0.5 → x=1: 0.25 of the way to blue, x=2: 0.75, x=3: clamped blue. Rounded
        // to 8 bits as cv2.resize does: 0.75·255 = 191.25 → 191, 0.25·255 = 63.75 → 64.
        let r = |x: usize, y: usize| t[y * 4 + x];
        let b = |x: usize, y: usize| t[2 * plane + y * 4 + x];
        assert!((r(0, 0) - hi).abs() < 1e-6);
        assert_eq!(r(1, 0), (191.0 - 127.5) / 128.0);
        assert_eq!(r(2, 0), (64.0 - 127.5) / 128.0);
        assert!((b(3, 1) - hi).abs() < 1e-6 && (r(3, 1) - lo).abs() < 1e-6);
        // Rows 2 and 3 are the black canvas in every plane.
        assert!(
            t.iter()
                .enumerate()
                .filter(|(i, _)| i % plane >= 8)
                .all(|(_, v)| (*v - lo).abs() < 1e-6)
        );
    }

    /// `cv2.resize(src, (w, h))` (INTER_LINEAR) of two seeded random 3-channel images, as OpenCV 5.1
    /// (opencv-python-headless, tests/setup.sh) computes them: an upscale with the edge clamps and a
    /// downscale. A floating-point bilinear resize misses these by up to 0.8 of a grey level.
    const SRC_5X3: [u8; 45] = [
        168, 229, 184, 171, 238, 171, 20, 206, 245, 153, 204, 5, 37, 53, 213, 206, 192, 173, 6, 120, 63, 96,
        236, 131, 118, 4, 87, 161, 124, 71, 42, 73, 237, 16, 194, 250, 10, 103, 206, 13, 143, 2, 38, 71, 133,
    ];
    const UP_8X5: [u8; 120] = [
        168, 229, 184, 169, 233, 178, 161, 236, 175, 67, 216, 222, 61, 205, 170, 144, 204, 20, 88, 119, 122,
        37, 53, 213, 183, 214, 179, 149, 204, 157, 101, 192, 132, 67, 209, 177, 78, 188, 149, 133, 130, 48,
        109, 100, 104, 86, 81, 156, 206, 192, 173, 119, 161, 125, 12, 127, 67, 68, 200, 110, 103, 164, 117,
        117, 19, 90, 142, 72, 78, 161, 124, 71, 107, 121, 211, 66, 140, 195, 14, 164, 175, 34, 159, 176, 48,
        135, 132, 54, 92, 45, 73, 90, 76, 87, 92, 108, 42, 73, 237, 30, 126, 243, 15, 188, 247, 12, 131, 220,
        11, 115, 142, 13, 140, 15, 27, 102, 76, 38, 71, 133,
    ];
    const SRC_9X7: [u8; 189] = [
        196, 35, 57, 146, 50, 179, 145, 104, 206, 53, 141, 33, 181, 39, 151, 11, 180, 138, 66, 0, 165, 98,
        123, 12, 144, 184, 24, 38, 129, 1, 202, 255, 85, 54, 228, 48, 127, 169, 1, 167, 109, 247, 16, 192,
        78, 220, 8, 60, 189, 181, 64, 72, 8, 185, 88, 111, 191, 138, 99, 67, 48, 68, 100, 249, 67, 40, 127,
        45, 33, 51, 206, 229, 217, 85, 53, 204, 120, 134, 31, 216, 14, 127, 160, 29, 208, 161, 116, 100, 83,
        151, 198, 160, 173, 193, 54, 126, 126, 57, 118, 170, 107, 131, 59, 173, 52, 139, 181, 169, 63, 196,
        144, 15, 138, 137, 135, 245, 15, 140, 59, 142, 252, 140, 76, 231, 51, 218, 125, 69, 151, 117, 140,
        92, 189, 209, 48, 225, 71, 217, 216, 47, 124, 91, 112, 16, 45, 88, 184, 95, 72, 215, 222, 173, 36,
        146, 75, 31, 190, 30, 190, 222, 190, 75, 79, 87, 255, 139, 49, 58, 133, 9, 97, 139, 135, 24, 60, 229,
        52, 107, 73, 226, 194, 51, 72, 223, 74, 189, 116, 78, 92,
    ];
    const DOWN_4X3: [u8; 36] = [
        148, 153, 80, 100, 163, 23, 33, 165, 97, 135, 126, 78, 178, 161, 83, 186, 150, 170, 132, 63, 120, 89,
        176, 96, 185, 58, 150, 80, 100, 120, 181, 130, 92, 195, 85, 149,
    ];

    #[test]
    fn resize_is_opencvs_fixed_point_linear_bit_for_bit() {
        assert_eq!(resize_linear_u8(&SRC_5X3, 5, 3, 8, 5), UP_8X5);
        assert_eq!(resize_linear_u8(&SRC_9X7, 9, 7, 4, 3), DOWN_4X3);
        // The same size is a copy; one source pixel fills everything.
        assert_eq!(resize_linear_u8(&SRC_5X3, 5, 3, 5, 3), SRC_5X3);
        assert_eq!(resize_linear_u8(&[9, 8, 7], 1, 1, 2, 3), [9, 8, 7].repeat(6));
    }

    /// Outputs for a 64×64 input where exactly one anchor of one stride scores.
    fn one_hot(
        stride: usize,
        anchor: usize,
        score: f32,
        d: [f32; 4],
        k: [f32; 10],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = (64 / stride) * (64 / stride) * 2;
        let mut s = vec![0.01; n];
        s[anchor] = score;
        let b = (0..n).flat_map(|_| d).collect();
        let kp = (0..n).flat_map(|_| k).collect();
        (s, b, kp)
    }

    #[test]
    fn anchors_decode_to_frame_pixels() {
        // Stride 16 on a 64×64 input: a 4×4 grid, 2 anchors per cell. Anchor 13 → cell 6 → (x=2, y=1),
        // centre (32, 16). Distances (1, 0.5, 2, 1)·16 → box (16, 8, 64, 32); keypoint 0 offset
        // (0.25, −0.5)·16 → (36, 8). The frame was scaled by 0.5, so everything doubles.
        let k = [0.25, -0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let (s8, b8, k8) = one_hot(8, 0, 0.1, [0.0; 4], [0.0; 10]);
        let (s16, b16, k16) = one_hot(16, 13, 0.9, [1.0, 0.5, 2.0, 1.0], k);
        let (s32, b32, k32) = one_hot(32, 0, 0.2, [0.0; 4], [0.0; 10]);
        let outs = [
            StrideOutputs {
                stride: 8,
                scores: &s8,
                bboxes: &b8,
                kps: &k8,
            },
            StrideOutputs {
                stride: 16,
                scores: &s16,
                bboxes: &b16,
                kps: &k16,
            },
            StrideOutputs {
                stride: 32,
                scores: &s32,
                bboxes: &b32,
                kps: &k32,
            },
        ];
        let lb = Letterbox {
            input_w: 64,
            input_h: 64,
            new_w: 64,
            new_h: 32,
            scale: 0.5,
        };
        let dets = decode(&outs, &lb, SCORE_THRESHOLD).unwrap();
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].bbox, [32.0, 16.0, 128.0, 64.0]);
        assert_eq!(dets[0].score, 0.9);
        assert_eq!(dets[0].kps[0], [72.0, 16.0]);
        assert_eq!(dets[0].kps[1], [96.0, 32.0]);
        assert_eq!(dets[0].kps[4], [64.0, 64.0]);
        // The second anchor of the same cell is a duplicate: NMS keeps one.
        let mut s16b = s16.clone();
        s16b[12] = 0.8;
        let outs = [StrideOutputs {
            stride: 16,
            scores: &s16b,
            bboxes: &b16,
            kps: &k16,
        }];
        let dets = decode(&outs, &lb, SCORE_THRESHOLD).unwrap();
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].score, 0.9);
    }

    #[test]
    fn the_threshold_decides_which_anchors_are_faces() {
        // Three far-apart anchors of stride 16 on a 64×64 input (cells (0,0), (3,0), (0,3): boxes
        // that do not overlap, so NMS keeps every one that passes): scores 0.9, 0.5 and 0.2.
        let (mut s, b, k) = one_hot(16, 0, 0.9, [0.5; 4], [0.0; 10]);
        s[6] = 0.5;
        s[24] = 0.2;
        let outs = [StrideOutputs {
            stride: 16,
            scores: &s,
            bboxes: &b,
            kps: &k,
        }];
        let lb = Letterbox::new(64, 64, 64, 64).unwrap();
        let scores = |threshold: f32| -> Vec<f32> {
            decode(&outs, &lb, threshold)
                .unwrap()
                .iter()
                .map(|d| d.score)
                .collect()
        };
        assert_eq!(scores(0.15), vec![0.9, 0.5, 0.2]);
        // The reference's 0.5 keeps a score equal to it (InsightFace: `scores >= det_thresh`).
        assert_eq!(scores(SCORE_THRESHOLD), vec![0.9, 0.5]);
        assert_eq!(scores(0.95), Vec::<f32>::new());
        // Below the background score (0.01) every anchor passes: one face per cell of the 4×4 grid
        // (NMS merges the two anchors of a cell).
        assert_eq!(scores(0.005).len(), 16);
    }

    #[test]
    fn wrong_layout_is_an_error() {
        let (s, b, k) = one_hot(16, 0, 0.9, [0.0; 4], [0.0; 10]);
        let lb = Letterbox::new(64, 64, 64, 64).unwrap();
        let outs = [StrideOutputs {
            stride: 8,
            scores: &s,
            bboxes: &b,
            kps: &k,
        }];
        let e = decode(&outs, &lb, 0.5).unwrap_err();
        assert_eq!((e.what, e.got, e.expected), ("scores", 32, 128));
    }

    #[test]
    fn nms_matches_the_reference_arithmetic() {
        let det = |bbox: [f32; 4], score| Detection {
            bbox,
            score,
            kps: [[0.0; 2]; 5],
        };
        // A = (0,0,9,9): 100 px inclusive. B = (5,0,14,9): inter 5·10 = 50, IoU 50/150 = 0.333 ≤ 0.4:
        // kept. C = (3,0,12,9): inter 70, IoU 70/130 = 0.538 > 0.4 with A: dropped.
        let kept = nms(
            vec![
                det([5.0, 0.0, 14.0, 9.0], 0.7),
                det([0.0, 0.0, 9.0, 9.0], 0.9),
                det([3.0, 0.0, 12.0, 9.0], 0.8),
            ],
            NMS_IOU,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }
}
