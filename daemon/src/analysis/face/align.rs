//! ArcFace (InsightFace `w600k_r50.onnx`) face alignment and embedding arithmetic, as pure functions.
//!
//! Owns: the five-point similarity transform to the ArcFace 112×112 template (least squares without
//! reflection, what `skimage.transform.SimilarityTransform.estimate` (Umeyama) computes in
//! `insightface.utils.face_align.norm_crop`), the bilinear warp with a black border (`cv2.warpAffine`
//! defaults), the recogniser input tensor, L2 normalisation and cosine similarity.
//!
//! Must not: run a model or touch files.

use super::Frame;

/// Side of the aligned crop ArcFace takes.
pub const ARCFACE_SIDE: u32 = 112;

/// InsightFace's `arcface_dst`: where the eyes, nose and mouth corners go in the 112×112 crop.
pub const ARCFACE_DST: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Recogniser input normalisation: `(x − 127.5) / 127.5` (`ArcFaceONNX` for w600k_r50).
pub const REC_MEAN: f32 = 127.5;
/// See [`REC_MEAN`].
pub const REC_STD: f32 = 127.5;

/// A similarity transform `(x, y) ↦ (a·x − b·y + tx, b·x + a·y + ty)`: uniform scale `√(a² + b²)`,
/// a rotation, a translation, never a reflection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale · cos θ`.
    pub a: f64,
    /// `scale · sin θ`.
    pub b: f64,
    /// Translation x.
    pub tx: f64,
    /// Translation y.
    pub ty: f64,
}

impl Similarity {
    /// Maps a point.
    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        ]
    }

    /// The inverse transform (`None` for a degenerate, zero-scale one).
    pub fn inverse(&self) -> Option<Similarity> {
        let n = self.a * self.a + self.b * self.b;
        if !(n.is_finite() && n > 0.0) {
            return None;
        }
        let (a, b) = (self.a / n, -self.b / n);
        Some(Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }
}

/// The least-squares similarity taking `src` onto `dst`.
///
/// In 2-D, Umeyama's estimate with scaling and the reflection guard equals complex linear regression:
/// with centred points `z = x + iy` (source) and `w` (destination), `a + ib = Σ w·z̄ / Σ|z|²` and the
/// translation maps the source centroid onto the destination one. `None` when the source points all
/// coincide (no scale can be estimated) or are not finite.
pub fn estimate_similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> Option<Similarity> {
    let n = src.len() as f64;
    let centroid = |p: &[[f32; 2]; 5]| {
        let (sx, sy) = p
            .iter()
            .fold((0.0, 0.0), |(x, y), q| (x + f64::from(q[0]), y + f64::from(q[1])));
        (sx / n, sy / n)
    };
    let (sx, sy) = centroid(src);
    let (dx, dy) = centroid(dst);
    let (mut num_re, mut num_im, mut den) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (x, y) = (f64::from(s[0]) - sx, f64::from(s[1]) - sy);
        let (u, v) = (f64::from(d[0]) - dx, f64::from(d[1]) - dy);
        // w · z̄ = (u + iv)(x − iy)
        num_re += u * x + v * y;
        num_im += v * x - u * y;
        den += x * x + y * y;
    }
    if !(den.is_finite() && den > 0.0) {
        return None;
    }
    let (a, b) = (num_re / den, num_im / den);
    let t = Similarity {
        a,
        b,
        tx: dx - (a * sx - b * sy),
        ty: dy - (b * sx + a * sy),
    };
    [t.a, t.b, t.tx, t.ty].iter().all(|v| v.is_finite()).then_some(t)
}

/// The `side × side` image whose pixel `(x, y)` is `frame` sampled bilinearly at `to_crop⁻¹(x, y)`,
/// pixel centres on integer coordinates and black outside the frame (`cv2.warpAffine` with
/// `INTER_LINEAR` and a constant 0 border). `None` for a malformed frame or a degenerate transform.
/// OpenCV rounds the sampling positions to 1/32 pixel and the weights to 15 bits; this samples at the
/// exact position, so a crop can differ from OpenCV's by a grey level on a few pixels
/// (tests/insightface_parity.rs measures it).
pub fn warp(frame: &Frame, to_crop: &Similarity, side: u32) -> Option<Frame> {
    if !frame.is_well_formed() {
        return None;
    }
    let inv = to_crop.inverse()?;
    let (w, h) = (i64::from(frame.width), i64::from(frame.height));
    let pixels = frame.rgb_pixels();
    let px = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= w || y >= h {
            0.0
        } else {
            f64::from(pixels[((y * w + x) * 3) as usize + c])
        }
    };
    let mut rgb = Vec::with_capacity(side as usize * side as usize * 3);
    for y in 0..side {
        for x in 0..side {
            let [sx, sy] = inv.apply([f64::from(x), f64::from(y)]);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            // Far outside, the casts saturate and every tap is border: black.
            let (x0, y0) = (x0 as i64, y0 as i64);
            for c in 0..3 {
                let top = px(x0, y0, c) * (1.0 - fx) + px(x0 + 1, y0, c) * fx;
                let bottom = px(x0, y0 + 1, c) * (1.0 - fx) + px(x0 + 1, y0 + 1, c) * fx;
                rgb.push((top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    Some(Frame::rgb(side, side, rgb))
}

/// The aligned ArcFace crop of the face with landmarks `kps` (`None`: degenerate landmarks).
pub fn align(frame: &Frame, kps: &[[f32; 2]; 5]) -> Option<Frame> {
    warp(frame, &estimate_similarity(kps, &ARCFACE_DST)?, ARCFACE_SIDE)
}

/// Appends the recogniser input of one crop, `3 × side × side` planes in **RGB** order, to `out`.
///
/// Why RGB: `ArcFaceONNX.get_feat` takes OpenCV's BGR crop and builds the blob with `swapRB=True`, so
/// the network is fed RGB; our crops are RGB already. Normalisation `(x − 127.5) / 127.5`.
pub fn push_input(crop: &Frame, out: &mut Vec<f32>) {
    for c in 0..3 {
        out.extend(
            crop.rgb_pixels()
                .chunks_exact(3)
                .map(|p| (f32::from(p[c]) - REC_MEAN) / REC_STD),
        );
    }
}

/// `v / ‖v‖` (InsightFace's `normed_embedding`); `None` for a zero or non-finite vector.
pub fn l2_normalised(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// Cosine similarity of two L2-normalised embeddings (their dot product); 0 for mismatched lengths.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn exact_similarity_is_recovered() {
        // dst = R(90°)·2·src + (10, 20): a = 0, b = 2.
        let src = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [-1.0, 4.0]];
        let dst = src.map(|[x, y]| [-2.0 * y + 10.0, 2.0 * x + 20.0]);
        let t = estimate_similarity(&src, &dst).unwrap();
        assert!(
            close(t.a, 0.0) && close(t.b, 2.0) && close(t.tx, 10.0) && close(t.ty, 20.0),
            "{t:?}"
        );
        let back = t.inverse().unwrap().apply(t.apply([3.0, -7.0]));
        assert!(close(back[0], 3.0) && close(back[1], -7.0));
    }

    #[test]
    fn least_squares_similarity_by_hand() {
        // A plus sign stretched ×2 horizontally only: no similarity fits exactly. By hand:
        // a = Σ(x·u + y·v) / Σ(x² + y²) = (2 + 2 + 1 + 1) / 4 = 1.5, b = Σ(x·v − y·u) / 4 = 0,
        // centroids at the origin so no translation. Umeyama gives the same (scale 1.5, no rotation).
        let src = [[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [0.0, 0.0]];
        let dst = [[-2.0, 0.0], [2.0, 0.0], [0.0, -1.0], [0.0, 1.0], [0.0, 0.0]];
        let t = estimate_similarity(&src, &dst).unwrap();
        assert!(
            close(t.a, 1.5) && close(t.b, 0.0) && close(t.tx, 0.0) && close(t.ty, 0.0),
            "{t:?}"
        );
        // No reflection: for the plus mirrored left-right, Σ(x·u + y·v) = −1 − 1 + 1 + 1 = 0 and
        // Σ(x·v − y·u) = 0, so the best similarity is the zero map, which has no inverse.
        let mirrored = src.map(|[x, y]| [-x, y]);
        let t = estimate_similarity(&src, &mirrored).unwrap();
        assert!(close(t.a, 0.0) && close(t.b, 0.0));
        assert!(t.inverse().is_none());
        assert!(estimate_similarity(&[[1.0, 1.0]; 5], &ARCFACE_DST).is_none());
    }

    #[test]
    fn template_landmarks_align_to_identity() {
        let t = estimate_similarity(&ARCFACE_DST, &ARCFACE_DST).unwrap();
        assert!(close(t.a, 1.0) && close(t.b, 0.0) && t.tx.abs() < 1e-9 && t.ty.abs() < 1e-9);
        // Landmarks at twice the template plus (100, 50): the crop maps by scale 1/2 and (−50, −25).
        let kps = ARCFACE_DST.map(|[x, y]| [2.0 * x + 100.0, 2.0 * y + 50.0]);
        let t = estimate_similarity(&kps, &ARCFACE_DST).unwrap();
        assert!((t.a - 0.5).abs() < 1e-6 && t.b.abs() < 1e-6);
        assert!((t.tx + 50.0).abs() < 1e-4 && (t.ty + 25.0).abs() < 1e-4, "{t:?}");
    }

    #[test]
    fn warp_samples_bilinearly_with_black_border() {
        // 4×1 ramp 0, 100, 200, 250 (R only). Crop = source shifted left by 0.5 px: dst x samples
        // src x + 0.5 → (50, 150, 225, 125): the last tap mixes 250 with the black border.
        let frame = Frame::rgb(
            4,
            1,
            [0u8, 100, 200, 250].iter().flat_map(|&v| [v, 0, 0]).collect(),
        );
        let t = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -0.5,
            ty: 0.0,
        };
        let out = warp(&frame, &t, 4).unwrap();
        let r: Vec<u8> = out.pixels.chunks_exact(3).take(4).map(|p| p[0]).collect();
        assert_eq!(r, vec![50, 150, 225, 125]);
        // Row 1 of the crop is below the one-row frame: black.
        assert!(out.pixels[12..24].iter().all(|&v| v == 0));
    }

    #[test]
    fn recogniser_input_is_rgb_planes() {
        let crop = Frame::rgb(1, 2, vec![255, 0, 128, 0, 255, 127]);
        let mut t = Vec::new();
        push_input(&crop, &mut t);
        let n = |v: f32| (v - 127.5) / 127.5;
        assert_eq!(t, vec![1.0, -1.0, -1.0, 1.0, n(128.0), n(127.0)]);
    }

    #[test]
    fn embeddings_are_normalised_and_compared_by_dot_product() {
        let a = l2_normalised(&[3.0, 4.0]).unwrap();
        assert!((a[0] - 0.6).abs() < 1e-7 && (a[1] - 0.8).abs() < 1e-7);
        let b = l2_normalised(&[4.0, -3.0]).unwrap();
        assert!(cosine(&a, &b).abs() < 1e-7);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-6);
        assert_eq!(l2_normalised(&[0.0, 0.0]), None);
        assert_eq!(cosine(&a, &[1.0]), 0.0);
    }
}
