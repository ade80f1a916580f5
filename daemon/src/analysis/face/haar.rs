//! The builtin face detector: OpenCV's Haar cascade evaluation (Viola–Jones), natively.
//!
//! Owns: [`HaarDetector`] — image pyramid, integral images, variance normalisation, stage evaluation
//! and the grouping of overlapping hits, following OpenCV 4's `CascadeClassifier::detectMultiScale`
//! (cascadedetect.cpp) for HAAR/BOOST cascades:
//! - a pyramid of the (downscaled) grey frame with `scale_factor` between levels, bilinear like
//!   `INTER_LINEAR`; the window keeps the cascade's size and the image shrinks;
//! - window step 2 px on levels with factor ≤ 2 and 1 px above, skipping one extra step after a
//!   window that fails the first stage;
//! - every feature value is divided by `area · σ` of the window's inner `(w−2)×(h−2)` rectangle, and
//!   windows with σ ≤ 10 grey levels are rejected outright, both as OpenCV does;
//! - stage sums (in `f32`; OpenCV sums in `double`, which changed no detection on the fixtures)
//!   compared with `stageThreshold − 1e-5`; trees and stumps;
//! - `groupRectangles(minNeighbors, eps = 0.2)` with the small-inside-large filter.
//!
//! The frame is first box-downscaled so that its long side is at most [`HaarParams::max_side`]
//! (128 by default) and boxes are mapped back to the frame's own coordinates: a talking head's face
//! is large, and this keeps a full search of a 512×512 frame to a few milliseconds. Every frame gets
//! the full search (see [`super::track_largest`]).
//!
//! Must not: allocate per window, panic on any frame, or return boxes outside the frame's coordinate
//! system.

use std::path::Path;

use super::cascade::{Cascade, CascadeError};
use super::{FaceBox, FaceDetector};
use crate::analysis::decode::Frame;
use crate::analysis::image::{Grey, downscale_grey_region, working_grid};

/// Tunables of the Haar detector (OpenCV's `detectMultiScale` arguments plus the working size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaarParams {
    /// Pyramid step between levels (OpenCV `scaleFactor`), `> 1`.
    pub scale_factor: f64,
    /// Raw hits a group needs to be kept (OpenCV `minNeighbors`); 0 returns the raw hits.
    pub min_neighbors: usize,
    /// The frame is box-downscaled so that its long side is at most this many pixels before detection
    /// (faces smaller than the cascade window at that scale are not found). At most
    /// `16384 / (window height + 1) − 1` (654 for the 24-px frontal cascade).
    pub max_side: usize,
    /// Smallest face searched, as a fraction of the working image's short side (OpenCV `minSize`).
    pub min_size_frac: f64,
}

impl Default for HaarParams {
    fn default() -> Self {
        Self {
            scale_factor: 1.1,
            min_neighbors: 3,
            max_side: 128,
            min_size_frac: 0.0,
        }
    }
}

/// OpenCV's `GROUP_EPS`.
const GROUP_EPS: f64 = 0.2;

/// Windows whose σ is at most this are rejected (OpenCV: `area · normFactor < 0.1` ⇔ σ > 10).
const MIN_WINDOW_STD: f64 = 10.0;

/// A feature prepared for one integral-image stride: corner offsets and weights of ≤ 3 rects.
#[derive(Debug, Clone, Copy)]
struct OptFeature {
    ofs: [[u32; 4]; 3],
    weight: [f32; 3],
}

/// A stump (one-node tree), the form of every weak classifier in the default frontal cascade, with
/// its feature's `R` rects' corner offsets inlined so that the hot loop touches one array.
#[derive(Debug, Clone, Copy)]
struct Stump<const R: usize> {
    ofs: [[u32; 4]; R],
    weight: [f32; R],
    threshold: f32,
    left: f32,
    right: f32,
}

/// One stage of stumps, split by rect count (a stage's sum does not depend on order), so that the
/// loops have no per-feature branch.
#[derive(Debug, Clone, Default)]
struct StumpStage {
    threshold: f32,
    two: Vec<Stump<2>>,
    three: Vec<Stump<3>>,
}

/// Length of the window view into the integral images: a power of two, so that masking an offset
/// proves it in bounds and the per-corner bounds checks disappear. The integral buffers carry this
/// much zero padding at the end.
const WIN_BUF: usize = 1 << 14;

/// The builtin Haar-cascade face detector.
#[derive(Debug, Clone)]
pub struct HaarDetector {
    cascade: Cascade,
    params: HaarParams,
    /// Integral-image row stride every level uses, so feature offsets are computed once.
    stride: usize,
    opt: Vec<OptFeature>,
    /// Offsets of the variance rectangle `(1, 1, w−2, h−2)`.
    norm_ofs: [u32; 4],
    norm_area: f64,
    /// `Some` when every tree is a stump: the fast path.
    stumps: Option<Vec<StumpStage>>,
    /// One past the largest offset a window reads (its slice length in the integral images).
    span: usize,
}

/// Pyramid level scratch buffers, reused across levels and frames of one call.
#[derive(Default)]
struct Scratch {
    level: Vec<u8>,
    sum: Vec<i32>,
    sq: Vec<i64>,
    xmap: Vec<(u32, u32, u16)>,
}

impl HaarDetector {
    /// Loads an OpenCV "new format" Haar cascade, e.g.
    /// `/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml` (Debian `opencv-data`).
    pub fn from_opencv_xml(path: impl AsRef<Path>) -> Result<Self, CascadeError> {
        Ok(Self::from_cascade(
            Cascade::from_file(path.as_ref())?,
            HaarParams::default(),
        ))
    }

    /// Parses cascade XML text (for tests and embedded cascades).
    pub fn from_xml_str(xml: &str) -> Result<Self, CascadeError> {
        Ok(Self::from_cascade(Cascade::from_xml(xml)?, HaarParams::default()))
    }

    /// The same cascade with other parameters (out-of-range values are clamped to sane ones).
    #[must_use]
    pub fn with_params(self, params: HaarParams) -> Self {
        Self::from_cascade(self.cascade, params)
    }

    /// The parameters in use.
    pub fn params(&self) -> HaarParams {
        self.params
    }

    fn from_cascade(cascade: Cascade, params: HaarParams) -> Self {
        let params = HaarParams {
            scale_factor: if params.scale_factor.is_finite() && params.scale_factor > 1.001 {
                params.scale_factor
            } else {
                1.1
            },
            min_neighbors: params.min_neighbors,
            // The window view must fit WIN_BUF: stride · (win_h + 1) ≤ WIN_BUF.
            max_side: params.max_side.clamp(
                cascade.win_w.max(cascade.win_h) as usize,
                WIN_BUF / (cascade.win_h as usize + 1) - 1,
            ),
            min_size_frac: if params.min_size_frac.is_finite() {
                params.min_size_frac.clamp(0.0, 1.0)
            } else {
                0.0
            },
        };
        let stride = params.max_side + 1;
        let at = |x: u32, y: u32| y * stride as u32 + x;
        let opt: Vec<OptFeature> = cascade
            .features
            .iter()
            .map(|f| {
                let mut o = OptFeature {
                    ofs: [[0; 4]; 3],
                    weight: [0.0; 3],
                };
                for (i, r) in f.rects.iter().enumerate().take(3) {
                    o.ofs[i] = [
                        at(r.x, r.y),
                        at(r.x + r.w, r.y),
                        at(r.x, r.y + r.h),
                        at(r.x + r.w, r.y + r.h),
                    ];
                    o.weight[i] = r.weight;
                }
                o
            })
            .collect();
        let (nw, nh) = (cascade.win_w - 2, cascade.win_h - 2);
        let norm_ofs = [at(1, 1), at(1 + nw, 1), at(1, 1 + nh), at(1 + nw, 1 + nh)];
        let stumps = cascade
            .stages
            .iter()
            .map(|st| {
                let mut out = StumpStage {
                    threshold: st.threshold,
                    ..StumpStage::default()
                };
                for t in cascade.trees.get(st.tree_start..st.tree_start + st.tree_count)? {
                    let n = cascade.nodes.get(t.node_start)?;
                    if t.node_count != 1 || n.left != 0 || n.right != -1 {
                        return None;
                    }
                    let f: &OptFeature = opt.get(n.feature)?;
                    let nrects = cascade.features.get(n.feature)?.rects.len();
                    let (left, right) = (
                        *cascade.leaves.get(t.leaf_start)?,
                        *cascade.leaves.get(t.leaf_start + 1)?,
                    );
                    let threshold = n.threshold;
                    match nrects {
                        2 => out.two.push(Stump {
                            ofs: [f.ofs[0], f.ofs[1]],
                            weight: [f.weight[0], f.weight[1]],
                            threshold,
                            left,
                            right,
                        }),
                        _ => out.three.push(Stump {
                            ofs: f.ofs,
                            weight: f.weight,
                            threshold,
                            left,
                            right,
                        }),
                    }
                }
                Some(out)
            })
            .collect::<Option<Vec<_>>>();
        let span = cascade.win_h as usize * stride + cascade.win_w as usize + 1;
        // The masked fast path is only sound when a window's offsets fit the view; otherwise the
        // checked path evaluates (never the case for cascade windows ≤ 64 px, see `max_side`).
        let stumps = stumps.filter(|_| span <= WIN_BUF);
        Self {
            norm_area: f64::from(nw * nh),
            cascade,
            params,
            stride,
            opt,
            norm_ofs,
            stumps,
            span,
        }
    }

    /// Raw hits on the working image `g`, on the pyramid levels whose window side is at least
    /// `win_lo` working pixels; rects in working pixels.
    fn scan(&self, g: &Grey, win_lo: f64, hits: &mut Vec<[i32; 4]>) {
        let (ww, wh) = (self.cascade.win_w as usize, self.cascade.win_h as usize);
        if g.is_empty() || g.w > self.params.max_side || g.h > self.params.max_side || g.w < ww || g.h < wh {
            return;
        }
        let mut scratch = Scratch::default();
        let mut factor = 1.0f64;
        // Same ladder and termination as OpenCV: stop when the window outgrows the image or the scaled
        // image becomes smaller than the window.
        for _ in 0..512 {
            let win_w = (ww as f64 * factor).round() as usize;
            let win_h = (wh as f64 * factor).round() as usize;
            if win_w > g.w || win_h > g.h {
                break;
            }
            let sw = (g.w as f64 / factor).round() as usize;
            let sh = (g.h as f64 / factor).round() as usize;
            if sw < ww || sh < wh {
                break;
            }
            if win_w.min(win_h) as f64 >= win_lo {
                let win = [win_w as i32, win_h as i32];
                let step = if factor > 2.0 { 1 } else { 2 };
                self.scan_level(g, factor, sw, sh, win, step, &mut scratch, hits);
            }
            factor *= self.params.scale_factor;
        }
    }

    /// Maps grouped working-plane rects to frame boxes.
    fn to_boxes(groups: Vec<([f64; 4], usize)>, sx: f64, sy: f64) -> Vec<FaceBox> {
        groups
            .into_iter()
            .map(|([x, y, w, h], n)| FaceBox {
                x1: (x * sx) as f32,
                y1: (y * sy) as f32,
                x2: ((x + w) * sx) as f32,
                y2: ((y + h) * sy) as f32,
                score: n as f32,
                landmarks: None,
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_level(
        &self,
        g: &Grey,
        factor: f64,
        sw: usize,
        sh: usize,
        win: [i32; 2],
        step: usize,
        s: &mut Scratch,
        hits: &mut Vec<[i32; 4]>,
    ) {
        resize_bilinear(g, sw, sh, s);
        integral(&s.level, sw, sh, self.stride, &mut s.sum, &mut s.sq);
        let (ww, wh) = (self.cascade.win_w as usize, self.cascade.win_h as usize);
        let (max_x, max_y) = (sw - ww, sh - wh);
        let mut y = 0;
        while y <= max_y {
            let mut x = 0;
            while x <= max_x {
                let base = y * self.stride + x;
                let r = self.run_at(&s.sum, &s.sq, base);
                if r > 0 {
                    hits.push([
                        (x as f64 * factor).round() as i32,
                        (y as f64 * factor).round() as i32,
                        win[0],
                        win[1],
                    ]);
                }
                if r == 0 {
                    x += step;
                }
                x += step;
            }
            y += step;
        }
    }

    /// OpenCV `runAt`: 1 = face, `-1` = window rejected before any stage (flat), `-si` = rejected at
    /// stage `si` (0 for the first stage, which lets the caller skip a step).
    #[inline]
    fn run_at(&self, sum: &[i32], sq: &[i64], base: usize) -> i32 {
        let (Some(win), Some(winq)) = (sum.get(base..base + self.span), sq.get(base..base + self.span))
        else {
            return -1;
        };
        let n = self.norm_ofs.map(|o| o as usize);
        let vs = i64::from(win[n[0]] - win[n[1]] - win[n[2]] + win[n[3]]);
        let vsq = winq[n[0]] - winq[n[1]] - winq[n[2]] + winq[n[3]];
        let nf = self.norm_area * vsq as f64 - (vs as f64) * (vs as f64);
        if nf <= 0.0 {
            return -1;
        }
        let nf = nf.sqrt();
        // area/nf = 1/σ: OpenCV refuses windows with σ ≤ 10.
        if self.norm_area / nf >= 1.0 / MIN_WINDOW_STD {
            return -1;
        }
        let inv = (1.0 / nf) as f32;
        if let Some(stages) = &self.stumps {
            // The integral buffers are padded by WIN_BUF, so this view always exists.
            let Some(view) = sum
                .get(base..base + WIN_BUF)
                .and_then(|s| <&[i32; WIN_BUF]>::try_from(s).ok())
            else {
                return -1;
            };
            let at = |o: u32| view[o as usize & (WIN_BUF - 1)];
            let rect = |o: &[u32; 4]| (at(o[0]) - at(o[1]) - at(o[2]) + at(o[3])) as f32;
            for (si, stage) in stages.iter().enumerate() {
                let mut total = 0.0f32;
                for st in &stage.two {
                    let v = st.weight[0] * rect(&st.ofs[0]) + st.weight[1] * rect(&st.ofs[1]);
                    total += if v * inv < st.threshold { st.left } else { st.right };
                }
                for st in &stage.three {
                    let v = st.weight[0] * rect(&st.ofs[0])
                        + st.weight[1] * rect(&st.ofs[1])
                        + st.weight[2] * rect(&st.ofs[2]);
                    total += if v * inv < st.threshold { st.left } else { st.right };
                }
                if total < stage.threshold {
                    return -(si as i32);
                }
            }
            return 1;
        }
        let rect = |o: &[u32; 4]| -> f32 {
            (win[o[0] as usize] - win[o[1] as usize] - win[o[2] as usize] + win[o[3] as usize]) as f32
        };
        let feat = |fi: usize| -> f32 {
            let Some(f) = self.opt.get(fi) else {
                return 0.0;
            };
            let mut v = 0.0f32;
            for k in 0..3 {
                v += f.weight[k] * rect(&f.ofs[k]);
            }
            v * inv
        };
        for (si, stage) in self.cascade.stages.iter().enumerate() {
            let end = (stage.tree_start + stage.tree_count).min(self.cascade.trees.len());
            let mut total = 0.0f64;
            for t in self.cascade.trees.get(stage.tree_start..end).unwrap_or(&[]) {
                total += f64::from(self.eval_tree(t, &feat));
            }
            if total < f64::from(stage.threshold) {
                return -(si as i32);
            }
        }
        1
    }

    /// Walks one tree; the walk is bounded by its node count, so a malformed cycle cannot hang.
    fn eval_tree(&self, t: &super::cascade::Tree, feat: &dyn Fn(usize) -> f32) -> f32 {
        let mut idx: i32 = 0;
        for _ in 0..=t.node_count {
            let Some(node) = self.cascade.nodes.get(t.node_start + idx as usize) else {
                return 0.0;
            };
            idx = if feat(node.feature) < node.threshold {
                node.left
            } else {
                node.right
            };
            if idx <= 0 {
                return self
                    .cascade
                    .leaves
                    .get(t.leaf_start + (-idx) as usize)
                    .copied()
                    .unwrap_or(0.0);
            }
        }
        0.0
    }
}

/// OpenCV-style bilinear resize (`INTER_LINEAR`: `src = (dst + 0.5)·scale − 0.5`, edges clamped).
fn resize_bilinear(g: &Grey, sw: usize, sh: usize, s: &mut Scratch) {
    s.level.clear();
    if sw == g.w && sh == g.h {
        s.level.extend_from_slice(&g.px);
        return;
    }
    let (fx, fy) = (g.w as f64 / sw as f64, g.h as f64 / sh as f64);
    // Per-column source indices and an 11-bit weight, computed once per level.
    s.xmap.clear();
    for x in 0..sw {
        let sx = ((x as f64 + 0.5) * fx - 0.5).max(0.0);
        let x0 = (sx.floor() as usize).min(g.w - 1);
        let x1 = (x0 + 1).min(g.w - 1);
        let a = ((sx - x0 as f64).clamp(0.0, 1.0) * 2048.0).round() as u16;
        s.xmap.push((x0 as u32, x1 as u32, a));
    }
    for y in 0..sh {
        let syf = ((y as f64 + 0.5) * fy - 0.5).max(0.0);
        let y0 = (syf.floor() as usize).min(g.h - 1);
        let y1 = (y0 + 1).min(g.h - 1);
        let b = ((syf - y0 as f64).clamp(0.0, 1.0) * 2048.0).round() as u32;
        let (r0, r1) = (&g.px[y0 * g.w..(y0 + 1) * g.w], &g.px[y1 * g.w..(y1 + 1) * g.w]);
        for &(x0, x1, a) in &s.xmap {
            let a = u32::from(a);
            let top = u32::from(r0[x0 as usize]) * (2048 - a) + u32::from(r0[x1 as usize]) * a;
            let bot = u32::from(r1[x0 as usize]) * (2048 - a) + u32::from(r1[x1 as usize]) * a;
            let v = (top * (2048 - b) + bot * b + (1 << 21)) >> 22;
            s.level.push(v.min(255) as u8);
        }
    }
}

/// Integral and squared-integral images with a fixed row stride (`stride ≥ w + 1`).
fn integral(px: &[u8], w: usize, h: usize, stride: usize, sum: &mut Vec<i32>, sq: &mut Vec<i64>) {
    let len = stride * (h + 1) + WIN_BUF;
    sum.clear();
    sum.resize(len, 0);
    sq.clear();
    sq.resize(len, 0);
    for y in 0..h {
        let (mut rs, mut rq) = (0i32, 0i64);
        let row = &px[y * w..(y + 1) * w];
        let (prev, cur) = ((y) * stride, (y + 1) * stride);
        for x in 0..w {
            let p = i32::from(row[x]);
            rs += p;
            rq += i64::from(p * p);
            sum[cur + x + 1] = sum[prev + x + 1] + rs;
            sq[cur + x + 1] = sq[prev + x + 1] + rq;
        }
    }
}

/// OpenCV `SimilarRects`: all four edges within `eps · (min widths + min heights) / 2`.
fn similar(a: &[i32; 4], b: &[i32; 4], eps: f64) -> bool {
    let delta = eps * f64::from(a[2].min(b[2]) + a[3].min(b[3])) * 0.5;
    f64::from((a[0] - b[0]).abs()) <= delta
        && f64::from((a[1] - b[1]).abs()) <= delta
        && f64::from((a[0] + a[2] - b[0] - b[2]).abs()) <= delta
        && f64::from((a[1] + a[3] - b[1] - b[3]).abs()) <= delta
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// OpenCV `groupRectangles(rects, groupThreshold, eps)`: cluster by [`similar`] (transitively),
/// average each cluster, drop clusters with ≤ `threshold` members, then drop a cluster lying inside a
/// bigger, better-supported one. Returns `(x, y, w, h)` rects with their member counts.
pub(crate) fn group_rectangles(rects: &[[i32; 4]], threshold: usize, eps: f64) -> Vec<([f64; 4], usize)> {
    if threshold == 0 {
        return rects.iter().map(|r| (r.map(f64::from), 1)).collect();
    }
    let n = rects.len();
    let mut parent: Vec<usize> = (0..n).collect();
    for i in 0..n {
        for j in i + 1..n {
            if similar(&rects[i], &rects[j], eps) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    parent[b] = a;
                }
            }
        }
    }
    let mut root_to_class = vec![usize::MAX; n];
    let mut sums: Vec<([i64; 4], usize)> = Vec::new();
    for (i, r) in rects.iter().enumerate() {
        let root = find(&mut parent, i);
        if root_to_class[root] == usize::MAX {
            root_to_class[root] = sums.len();
            sums.push(([0; 4], 0));
        }
        let c = &mut sums[root_to_class[root]];
        for (acc, &v) in c.0.iter_mut().zip(r) {
            *acc += i64::from(v);
        }
        c.1 += 1;
    }
    let avg: Vec<([i32; 4], usize)> = sums
        .iter()
        .map(|(s, cnt)| (s.map(|v| (v as f64 / *cnt as f64).round() as i32), *cnt))
        .collect();
    let mut out = Vec::new();
    for (i, (r1, n1)) in avg.iter().enumerate() {
        if *n1 <= threshold {
            continue;
        }
        let inside_better = avg.iter().enumerate().any(|(j, (r2, n2))| {
            if j == i || *n2 <= threshold {
                return false;
            }
            let dx = (f64::from(r2[2]) * eps).round() as i32;
            let dy = (f64::from(r2[3]) * eps).round() as i32;
            r1[0] >= r2[0] - dx
                && r1[1] >= r2[1] - dy
                && r1[0] + r1[2] <= r2[0] + r2[2] + dx
                && r1[1] + r1[3] <= r2[1] + r2[3] + dy
                && (*n2 > (*n1).max(3) || *n1 < 3)
        });
        if !inside_better {
            out.push((r1.map(f64::from), *n1));
        }
    }
    out
}

impl HaarDetector {
    /// The whole working grid of `grey`, scanned on every pyramid level.
    fn full_pass(&self, grey: &Grey) -> Vec<FaceBox> {
        let (ow, oh) = working_grid(grey.w, grey.h, self.params.max_side);
        let Some((g, sx, sy)) = downscale_grey_region(grey, self.params.max_side, [0, 0, ow, oh]) else {
            return Vec::new();
        };
        let lo = self.params.min_size_frac * g.w.min(g.h) as f64;
        let mut hits = Vec::new();
        self.scan(&g, lo, &mut hits);
        Self::to_boxes(
            group_rectangles(&hits, self.params.min_neighbors, GROUP_EPS),
            sx,
            sy,
        )
    }
}

/// The cascade runs on grey, as OpenCV's does on `cvtColor(frame, GRAY)`: the frame is converted
/// first (or its plane comes from the per-frame passes, the `_grey` methods), then box-downscaled to
/// the working grid. Every method gives the same boxes for a frame whether or not its plane is given.
impl FaceDetector for HaarDetector {
    fn detect(&self, frame: &Frame) -> Vec<FaceBox> {
        Grey::from_frame(frame).map_or_else(Vec::new, |g| self.detect_grey(frame, &g))
    }

    fn detect_grey(&self, frame: &Frame, grey: &Grey) -> Vec<FaceBox> {
        if !plane_of(frame, grey) {
            return Vec::new();
        }
        self.full_pass(grey)
    }

    fn name(&self) -> &'static str {
        "haar"
    }

    /// The cascade sees only grey (see above).
    fn reads_colour(&self) -> bool {
        false
    }
}

/// True when `grey` can be `frame`'s plane (a well-formed frame of the same size): boxes are mapped
/// back to the frame through the plane's size.
fn plane_of(frame: &Frame, grey: &Grey) -> bool {
    frame.is_well_formed()
        && !grey.is_empty()
        && grey.w == frame.width as usize
        && grey.h == frame.height as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn grouping_follows_opencv() {
        // Four near-identical hits and one far away: one group of 4 survives min_neighbors 3.
        let rects = [
            [10, 10, 24, 24],
            [11, 10, 24, 24],
            [10, 11, 24, 24],
            [12, 12, 24, 24],
            [100, 100, 24, 24],
        ];
        let g = group_rectangles(&rects, 3, GROUP_EPS);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].1, 4);
        assert_eq!(g[0].0, [11.0, 11.0, 24.0, 24.0]); // (10+11+10+12)/4 = 10.75 → 11
        assert!(group_rectangles(&rects, 4, GROUP_EPS).is_empty());
        assert_eq!(group_rectangles(&rects, 0, GROUP_EPS).len(), 5);
        // A small well-supported cluster inside a big, better-supported one is dropped.
        let mut nested = vec![[0, 0, 100, 100]; 6];
        nested.extend(vec![[30, 30, 30, 30]; 4]);
        let g = group_rectangles(&nested, 3, GROUP_EPS);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].0, [0.0, 0.0, 100.0, 100.0]);
    }

    #[test]
    fn integral_images() {
        let px = [1u8, 2, 3, 4, 5, 6];
        let (mut s, mut q) = (Vec::new(), Vec::new());
        integral(&px, 3, 2, 5, &mut s, &mut q);
        // Bottom-right of a 3×2 image: total sum 21, total squares 91.
        assert_eq!(s[2 * 5 + 3], 21);
        assert_eq!(q[2 * 5 + 3], 91);
        assert_eq!(s[5 + 2], 3);
    }
}
