//! Grey planes and the few pixel operations the components and the face detector share (a leaf of
//! the analysis: it uses only the decoder's [`Frame`]).
//!
//! Owns: RGB24 → grey conversion (OpenCV's fixed-point `0.299R + 0.587G + 0.114B`), the per-frame
//! statistics that need one pass over the pixels (mean, std, Laplacian variance, dark/bright fractions,
//! histogram), frame differences that tolerate mismatched sizes, box-area crops and resizes.
//!
//! Must not: allocate per pixel, panic on any size (0×0 and 1×1 included), or know about scores; every
//! function returns plain measurements and the callers turn them into components.

use super::decode::{Frame, PixelFormat};

/// An 8-bit grey plane, row-major, `px.len() == w * h` (OpenCV's grey of a frame, or a part of one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grey {
    /// Width in pixels.
    pub w: usize,
    /// Height in pixels.
    pub h: usize,
    /// The pixels, row after row.
    pub px: Vec<u8>,
}

/// OpenCV's `RGB2GRAY` fixed-point weights (14 bits): 0.299, 0.587, 0.114.
const R_W: u32 = 4899;
const G_W: u32 = 9617;
const B_W: u32 = 1868;

/// Grey value of one RGB pixel, rounded like OpenCV (`(r·R + g·G + b·B + 2¹³) >> 14`).
#[inline]
pub(crate) fn grey_of(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * R_W + u32::from(g) * G_W + u32::from(b) * B_W + 8192) >> 14) as u8
}

impl Frame {
    /// True when the buffer holds exactly `width · height` pixels of its format and the frame is not
    /// empty.
    pub fn is_well_formed(&self) -> bool {
        let n = (self.width as u64)
            .checked_mul(self.height as u64)
            .and_then(|n| n.checked_mul(self.format.bytes_per_pixel() as u64));
        self.width > 0 && self.height > 0 && n == Some(self.pixels.len() as u64)
    }
}

impl Grey {
    /// The grey plane of a well-formed frame; `None` for a malformed one (wrong buffer size, 0×0).
    pub(crate) fn from_frame(f: &Frame) -> Option<Self> {
        let mut g = Self::default();
        g.fill_from(f).then_some(g)
    }

    /// Converts `f` into this plane, reusing its buffer (no allocation once it is big enough);
    /// false (and an empty plane) for a malformed frame.
    pub(crate) fn fill_from(&mut self, f: &Frame) -> bool {
        self.px.clear();
        if !f.is_well_formed() {
            (self.w, self.h) = (0, 0);
            return false;
        }
        match f.format {
            PixelFormat::Rgb24 => {
                self.px.resize(f.pixels.len() / 3, 0);
                for (o, p) in self.px.iter_mut().zip(f.pixels.chunks_exact(3)) {
                    *o = grey_of(p[0], p[1], p[2]);
                }
            }
            // Already grey (the decoder's full-range luma).
            PixelFormat::Grey => self.px.extend_from_slice(&f.pixels),
        }
        (self.w, self.h) = (f.width as usize, f.height as usize);
        true
    }

    /// True when there is no pixel.
    pub(crate) fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0 || self.px.len() != self.w * self.h
    }
}

/// One-pass statistics of a grey plane (all on the 0–255 scale unless noted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PlaneStats {
    pub mean: f64,
    /// Population standard deviation (numpy's default).
    pub std: f64,
    /// Fraction of pixels with `px/255 < 0.01` (i.e. `px <= 2`).
    pub dark_frac: f64,
    /// Fraction of pixels with `px/255 > 0.99` (i.e. `px >= 253`).
    pub bright_frac: f64,
    /// 64-bin intensity histogram (bin width 4), as counts.
    pub hist: [u32; 64],
}

/// Mean, std, clipped fractions and the 64-bin histogram in one pass; `None` for an empty plane.
pub(crate) fn plane_stats(g: &Grey) -> Option<PlaneStats> {
    if g.is_empty() {
        return None;
    }
    // Four interleaved histograms: runs of equal pixels (flat regions) would otherwise serialise on
    // one counter.
    let mut sub = [[0u32; 256]; 4];
    let quads = g.px.chunks_exact(4);
    for &p in quads.remainder() {
        sub[0][usize::from(p)] += 1;
    }
    for q in quads {
        sub[0][usize::from(q[0])] += 1;
        sub[1][usize::from(q[1])] += 1;
        sub[2][usize::from(q[2])] += 1;
        sub[3][usize::from(q[3])] += 1;
    }
    let mut counts = [0u32; 256];
    for (i, c) in counts.iter_mut().enumerate() {
        *c = sub[0][i] + sub[1][i] + sub[2][i] + sub[3][i];
    }
    let n = g.px.len() as f64;
    let (mut s, mut s2) = (0.0f64, 0.0f64);
    let mut hist = [0u32; 64];
    for (v, &c) in counts.iter().enumerate() {
        let c64 = f64::from(c);
        s += v as f64 * c64;
        s2 += (v * v) as f64 * c64;
        hist[v / 4] += c;
    }
    let mean = s / n;
    let var = (s2 / n - mean * mean).max(0.0);
    // px/255 < 0.01 ⇔ px < 2.55 ⇔ px ≤ 2; px/255 > 0.99 ⇔ px > 252.45 ⇔ px ≥ 253.
    let dark = counts[..3].iter().map(|&c| f64::from(c)).sum::<f64>();
    let bright = counts[253..].iter().map(|&c| f64::from(c)).sum::<f64>();
    Some(PlaneStats {
        mean,
        std: var.sqrt(),
        dark_frac: dark / n,
        bright_frac: bright / n,
        hist,
    })
}

/// OpenCV `BORDER_REFLECT_101` index (`gfedcb|abcdefgh|gfedcba`); 0 for a length-1 axis.
#[inline]
fn reflect101(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let n = n as isize;
    let mut i = i;
    // One reflection suffices for the ±1 offsets of a 3×3 kernel.
    if i < 0 {
        i = -i;
    }
    if i >= n {
        i = 2 * n - 2 - i;
    }
    i.clamp(0, n - 1) as usize
}

/// Variance of `cv2.Laplacian(grey, CV_64F)` (ksize 1: `[0 1 0; 1 −4 1; 0 1 0]`, reflect-101 border).
pub(crate) fn laplacian_variance(g: &Grey) -> Option<f64> {
    if g.is_empty() {
        return None;
    }
    let (w, h) = (g.w, g.h);
    let px = &g.px;
    let at = |x: isize, y: isize| -> i64 { i64::from(px[reflect101(y, h) * w + reflect101(x, w)]) };
    let lap = |x: usize, y: usize| -> i64 {
        let (xi, yi) = (x as isize, y as isize);
        at(xi - 1, yi) + at(xi + 1, yi) + at(xi, yi - 1) + at(xi, yi + 1) - 4 * at(xi, yi)
    };
    let (mut s, mut s2) = (0i64, 0i64);
    for y in 0..h {
        if y == 0 || y + 1 == h || w < 3 {
            for x in 0..w {
                let v = lap(x, y);
                s += v;
                s2 += v * v;
            }
            continue;
        }
        // Left and right border pixels reflect; the interior is a plain stencil.
        for x in [0, w - 1] {
            let v = lap(x, y);
            s += v;
            s2 += v * v;
        }
        let (up, row, down) = (
            &px[(y - 1) * w..y * w],
            &px[y * w..(y + 1) * w],
            &px[(y + 1) * w..(y + 2) * w],
        );
        let (mut rs, mut rs2) = (0i64, 0i64);
        // i32 lanes over chunks short enough that Σv² cannot overflow (|v| ≤ 1020), then widen: this
        // is the loop that runs over every pixel of every frame, and it vectorises this way.
        let (left, mid, right) = (&row[..w - 2], &row[1..w - 1], &row[2..]);
        let (up, down) = (&up[1..w - 1], &down[1..w - 1]);
        for start in (0..w - 2).step_by(1024) {
            let end = (start + 1024).min(w - 2);
            let (mut cs, mut cs2) = (0i32, 0i32);
            for ((((&l, &m), &r), &u), &d) in left[start..end]
                .iter()
                .zip(&mid[start..end])
                .zip(&right[start..end])
                .zip(&up[start..end])
                .zip(&down[start..end])
            {
                let v = i32::from(l) + i32::from(r) + i32::from(u) + i32::from(d) - 4 * i32::from(m);
                cs += v;
                cs2 += v * v;
            }
            rs += i64::from(cs);
            rs2 += i64::from(cs2);
        }
        s += rs;
        s2 += rs2;
    }
    let n = (w * h) as f64;
    let mean = s as f64 / n;
    Some((s2 as f64 / n - mean * mean).max(0.0))
}

/// Mean absolute difference of two planes (0–255 scale). A plane of another size is sampled
/// nearest-neighbour on `a`'s grid, so decoders or hostile inputs with changing sizes still compare.
pub(crate) fn mean_abs_diff(a: &Grey, b: &Grey) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    if a.w == b.w && a.h == b.h {
        for (row_a, row_b) in a.px.chunks_exact(a.w).zip(b.px.chunks_exact(b.w)) {
            let mut s: u32 = 0;
            for (&p, &q) in row_a.iter().zip(row_b) {
                s += u32::from(p.abs_diff(q));
            }
            total += u64::from(s);
        }
    } else {
        for y in 0..a.h {
            let by = (y * b.h / a.h).min(b.h - 1);
            for x in 0..a.w {
                let bx = (x * b.w / a.w).min(b.w - 1);
                total += u64::from(a.px[y * a.w + x].abs_diff(b.px[by * b.w + bx]));
            }
        }
    }
    Some(total as f64 / (a.w * a.h) as f64)
}

/// Integer pixel bounds `[x0, x1) × [y0, y1)` of a float box clipped to a `w × h` plane, truncated
/// like Python's `int()`; `None` when nothing of it is inside. NaN coordinates give `None`.
pub(crate) fn clip_box(x1: f64, y1: f64, x2: f64, y2: f64, w: usize, h: usize) -> Option<[usize; 4]> {
    if !(x1.is_finite() && y1.is_finite() && x2.is_finite() && y2.is_finite()) {
        return None;
    }
    let cx = |v: f64| v.trunc().clamp(0.0, w as f64) as usize;
    let cy = |v: f64| v.trunc().clamp(0.0, h as f64) as usize;
    let (a, b, c, d) = (cx(x1), cy(y1), cx(x2), cy(y2));
    (c > a && d > b).then_some([a, b, c, d])
}

/// Pixel variance of a region on the 0–1 scale (`var(px / 255)`).
pub(crate) fn region_variance01(g: &Grey, r: [usize; 4]) -> Option<f64> {
    let [x0, y0, x1, y1] = r;
    if g.is_empty() || x1 > g.w || y1 > g.h || x0 >= x1 || y0 >= y1 {
        return None;
    }
    let (mut s, mut s2) = (0u64, 0u64);
    for y in y0..y1 {
        for &p in &g.px[y * g.w + x0..y * g.w + x1] {
            let p = u64::from(p);
            s += p;
            s2 += p * p;
        }
    }
    let n = ((x1 - x0) * (y1 - y0)) as f64;
    let mean = s as f64 / n;
    Some(((s2 as f64 / n - mean * mean) / (255.0 * 255.0)).max(0.0))
}

/// Box-area resample of a region of `g` to `out_w × out_h` floats (0–255 scale). Each output cell
/// averages the source pixels whose index falls in its footprint (at least one pixel).
pub(crate) fn resample_region(g: &Grey, r: [usize; 4], out_w: usize, out_h: usize) -> Option<Vec<f32>> {
    let [x0, y0, x1, y1] = r;
    if g.is_empty() || out_w == 0 || out_h == 0 || x1 > g.w || y1 > g.h || x0 >= x1 || y0 >= y1 {
        return None;
    }
    let (rw, rh) = (x1 - x0, y1 - y0);
    let span = |i: usize, n_out: usize, n_in: usize| -> (usize, usize) {
        let a = i * n_in / n_out;
        let b = ((i + 1) * n_in / n_out).max(a + 1).min(n_in);
        (a, b)
    };
    let mut out = Vec::with_capacity(out_w * out_h);
    for oy in 0..out_h {
        let (ya, yb) = span(oy, out_h, rh);
        for ox in 0..out_w {
            let (xa, xb) = span(ox, out_w, rw);
            let mut s = 0u32;
            for y in ya..yb {
                let row = &g.px[(y0 + y) * g.w + x0..(y0 + y) * g.w + x1];
                for &p in &row[xa..xb] {
                    s += u32::from(p);
                }
            }
            out.push(s as f32 / ((yb - ya) * (xb - xa)) as f32);
        }
    }
    Some(out)
}

/// The grid a frame is box-downscaled to so that its longer side is at most `max_side` (never
/// upscaled): `(out_w, out_h)`.
pub(crate) fn working_grid(w: usize, h: usize, max_side: usize) -> (usize, usize) {
    let long = w.max(h);
    if long <= max_side || max_side == 0 {
        (w, h)
    } else {
        ((w * max_side / long).max(1), (h * max_side / long).max(1))
    }
}

/// Box-area downscale of a grey plane to the grid whose longer side is at most `max_side` (never
/// upscales; see [`working_grid`]), computing only the part `[x0, x1) × [y0, y1)` of that grid
/// (clipped to it): each cell is the rounded mean of the source pixels in its footprint, i.e. what
/// OpenCV's detector sees (the frame converted to grey, then resized). Returns the part and the
/// (x, y) factors that map grid → plane coordinates.
pub(crate) fn downscale_grey_region(g: &Grey, max_side: usize, r: [usize; 4]) -> Option<(Grey, f64, f64)> {
    if g.is_empty() || max_side == 0 {
        return None;
    }
    let (w, h) = (g.w, g.h);
    let (ow, oh) = working_grid(w, h, max_side);
    let [x0, y0] = [r[0].min(ow), r[1].min(oh)];
    let [x1, y1] = [r[2].min(ow), r[3].min(oh)];
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let span = |i: usize, n_out: usize, n_in: usize| -> (usize, usize) {
        let a = i * n_in / n_out;
        (a, ((i + 1) * n_in / n_out).max(a + 1).min(n_in))
    };
    // Each output column's source span, summed contiguously (no per-pixel index).
    let cols: Vec<(usize, usize)> = (x0..x1).map(|i| span(i, ow, w)).collect();
    let mut px = Vec::with_capacity((x1 - x0) * (y1 - y0));
    // u64: a cell may cover a whole large frame when max_side is tiny.
    let mut acc = vec![0u64; x1 - x0];
    for oy in y0..y1 {
        let (ya, yb) = span(oy, oh, h);
        acc.iter_mut().for_each(|a| *a = 0);
        for row in g.px[ya * w..yb * w].chunks_exact(w) {
            for (a, &(xa, xb)) in acc.iter_mut().zip(&cols) {
                // A span is at most a row (≤ 2²⁴ pixels), so its u32 sum cannot overflow.
                *a += u64::from(row[xa..xb].iter().map(|&p| u32::from(p)).sum::<u32>());
            }
        }
        let rows = (yb - ya) as u64;
        for (&a, &(xa, xb)) in acc.iter().zip(&cols) {
            let n = rows * (xb - xa) as u64;
            px.push(((a + n / 2) / n).min(255) as u8);
        }
    }
    Some((
        Grey {
            w: x1 - x0,
            h: y1 - y0,
            px,
        },
        w as f64 / ow as f64,
        h as f64 / oh as f64,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn plane(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Grey {
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                px.push(f(x, y));
            }
        }
        Grey { w, h, px }
    }

    #[test]
    fn grey_matches_opencv_weights() {
        assert_eq!(grey_of(255, 255, 255), 255);
        assert_eq!(grey_of(0, 0, 0), 0);
        assert_eq!(grey_of(255, 0, 0), 76); // 0.299·255 = 76.2
        assert_eq!(grey_of(0, 255, 0), 150); // 0.587·255 = 149.7
        assert_eq!(grey_of(0, 0, 255), 29); // 0.114·255 = 29.1
    }

    #[test]
    fn laplacian_of_flat_and_checker() {
        assert_eq!(laplacian_variance(&plane(7, 5, |_, _| 90)).unwrap(), 0.0);
        // A 0/255 checkerboard: every interior Laplacian is ±4·255, and reflect-101 keeps that at the
        // border (the reflected neighbours have the opposite colour), so the variance is (4·255)².
        let c = plane(8, 8, |x, y| if (x + y) % 2 == 0 { 0 } else { 255 });
        let v = laplacian_variance(&c).unwrap();
        assert!((v - (4.0f64 * 255.0).powi(2)).abs() < 1e-6, "{v}");
        assert!(laplacian_variance(&plane(1, 1, |_, _| 5)).unwrap() == 0.0);
        assert!(laplacian_variance(&Grey::default()).is_none());
    }

    #[test]
    fn diffs_and_regions() {
        let a = plane(4, 4, |_, _| 10);
        let b = plane(2, 2, |_, _| 13);
        assert_eq!(mean_abs_diff(&a, &b), Some(3.0));
        assert_eq!(mean_abs_diff(&a, &a), Some(0.0));
        assert!(mean_abs_diff(&a, &Grey::default()).is_none());
        assert_eq!(clip_box(-5.0, 1.9, 2.5, 100.0, 4, 4), Some([0, 1, 2, 4]));
        assert_eq!(clip_box(5.0, 0.0, 9.0, 1.0, 4, 4), None);
        assert_eq!(clip_box(f64::NAN, 0.0, 9.0, 1.0, 4, 4), None);
        let r = resample_region(&plane(4, 2, |x, _| (x * 10) as u8), [0, 0, 4, 2], 2, 1).unwrap();
        assert_eq!(r, vec![5.0, 25.0]);
        let half = plane(2, 1, |x, _| if x == 0 { 0 } else { 255 });
        assert!((region_variance01(&half, [0, 0, 2, 1]).unwrap() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn stats_and_downscale() {
        let s = plane_stats(&plane(2, 2, |x, _| if x == 0 { 0 } else { 255 })).unwrap();
        assert_eq!(s.mean, 127.5);
        assert_eq!(s.std, 127.5);
        assert_eq!((s.dark_frac, s.bright_frac), (0.5, 0.5));
        assert_eq!(s.hist[0] + s.hist[63], 4);
        let f = Frame::rgb(8, 4, vec![200; 8 * 4 * 3]);
        let g = Grey::from_frame(&f).unwrap();
        let (small, sx, sy) = downscale_grey_region(&g, 4, [0, 0, 4, 2]).unwrap();
        assert_eq!((small.w, small.h, sx, sy), (4, 2, 2.0, 2.0));
        assert!(small.px.iter().all(|&p| p == 200));
        let (part, _, _) = downscale_grey_region(&g, 4, [1, 1, 3, 9]).unwrap();
        assert_eq!((part.w, part.h), (2, 1));
        assert!(downscale_grey_region(&g, 4, [3, 0, 3, 2]).is_none());
        // Each cell is the rounded mean of its footprint: 3×2 pixels to 2×1 cells of columns {0} and
        // {1, 2}, both rows: (0 + 1) / 2 = 0.5 → 1 and (10 + 11 + 20 + 21) / 4 = 15.5 → 16.
        let ramp = plane(3, 2, |x, y| (x * 10 + y) as u8);
        let (cells, _, _) = downscale_grey_region(&ramp, 2, [0, 0, 2, 1]).unwrap();
        assert_eq!(cells.px, vec![1, 16]);
        let bad = Frame::rgb(8, 4, vec![0; 5]);
        assert!(Grey::from_frame(&bad).is_none());
        assert!(downscale_grey_region(&Grey::default(), 4, [0, 0, 4, 4]).is_none());
    }
}
