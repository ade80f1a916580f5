//! Small NaN-safe statistics shared by the components (numpy semantics where the reference used numpy).
//!
//! Owns: clamps, `norm_up`, mean/std/percentile, Pearson correlation, the reference's `smoothness`,
//! linear resampling and lagged correlation. Must not: allocate more than one output vector, or return
//! NaN where it returns a plain `f64` (undefined results are `None`).

/// Clamps to `[0, 1]`, NaN to 0: the scoring core's clamp, so components and scores agree.
pub(crate) use crate::scoring::math::clamp01;

/// The reference's `norm_up(x, lo, hi) = clamp01((x − lo) / (hi − lo))`.
#[inline]
pub(crate) fn norm_up(x: f64, lo: f64, hi: f64) -> f64 {
    clamp01((x - lo) / (hi - lo))
}

/// Arithmetic mean; `None` for an empty slice or a non-finite result.
pub(crate) fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    m.is_finite().then_some(m)
}

/// Population standard deviation (numpy's default `ddof = 0`); `None` for an empty slice.
pub(crate) fn std_pop(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64;
    v.is_finite().then(|| v.max(0.0).sqrt())
}

/// numpy's default (`linear`) percentile, `p` in `[0, 100]`; `None` for an empty slice or NaN input.
pub(crate) fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Variances below this are "flat": a correlation with a constant series is undefined, not 0.
const FLAT_VARIANCE: f64 = 1e-18;

/// Pearson correlation of two equally long series; `None` when shorter than 2, when either is flat,
/// or when anything is non-finite.
pub(crate) fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len().min(b.len());
    if n < 2 {
        return None;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let (ma, mb) = (mean(a)?, mean(b)?);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    let nf = n as f64;
    if !(saa / nf > FLAT_VARIANCE && sbb / nf > FLAT_VARIANCE) {
        return None;
    }
    let r = sab / (saa.sqrt() * sbb.sqrt());
    r.is_finite().then(|| r.clamp(-1.0, 1.0))
}

/// Correlation of `a` shifted against `b`: lag `k > 0` pairs `a[t + k]` with `b[t]` (a lags b by k),
/// `k < 0` pairs `a[t]` with `b[t − k]`. `None` when the overlap is < 3 or the correlation undefined.
pub(crate) fn lagged_pearson(a: &[f64], b: &[f64], lag: isize) -> Option<f64> {
    let n = a.len().min(b.len());
    let k = lag.unsigned_abs();
    if k >= n || n - k < 3 {
        return None;
    }
    if lag >= 0 {
        pearson(&a[k..n], &b[..n - k])
    } else {
        pearson(&a[..n - k], &b[k..n])
    }
}

/// The reference's `smoothness(x) = 1 / (1 + mean|Δ²x|)`; `None` with fewer than 3 values.
pub(crate) fn smoothness(xs: &[f64]) -> Option<f64> {
    if xs.len() < 3 {
        return None;
    }
    let d2: Vec<f64> = xs.windows(3).map(|w| (w[2] - 2.0 * w[1] + w[0]).abs()).collect();
    mean(&d2).map(|m| 1.0 / (1.0 + m))
}

/// numpy `interp(linspace(0, len−1, n), arange(len), xs)`: linear resampling to `n` points.
pub(crate) fn resample_linear(xs: &[f64], n: usize) -> Vec<f64> {
    match (xs.len(), n) {
        (_, 0) | (0, _) => Vec::new(),
        (1, _) => vec![xs[0]; n],
        (_, 1) => vec![xs[0]],
        (len, _) => (0..n)
            .map(|i| {
                let pos = i as f64 * (len - 1) as f64 / (n - 1) as f64;
                let lo = (pos.floor() as usize).min(len - 1);
                let hi = (lo + 1).min(len - 1);
                xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn basic_statistics() {
        assert_eq!(clamp01(f64::NAN), 0.0);
        assert!((norm_up(0.525, 0.2, 0.85) - 0.5).abs() < 1e-12);
        assert_eq!(mean(&[]), None);
        assert_eq!(std_pop(&[1.0, 3.0]), Some(1.0));
        // numpy.percentile([1, 2, 3, 4], 10) = 1.3
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 10.0).unwrap() - 1.3).abs() < 1e-12);
        assert_eq!(percentile(&[f64::NAN], 10.0), None);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), None);
        assert_eq!(smoothness(&[0.0, 1.0, 2.0, 3.0]), Some(1.0));
        assert_eq!(smoothness(&[0.0, 2.0, 0.0]), Some(0.2));
        assert_eq!(smoothness(&[1.0, 2.0]), None);
        assert_eq!(resample_linear(&[0.0, 10.0], 3), vec![0.0, 5.0, 10.0]);
        assert_eq!(resample_linear(&[7.0], 2), vec![7.0, 7.0]);
        assert!(resample_linear(&[], 4).is_empty());
    }

    #[test]
    fn lag_convention() {
        let b: Vec<f64> = (0..20).map(|i| ((i * 7919) % 13) as f64).collect();
        // a[t] = b[t − 3]: a lags b by 3, so lag +3 is a perfect match.
        let a: Vec<f64> = (0..20).map(|i| if i >= 3 { b[i - 3] } else { 0.0 }).collect();
        assert!((lagged_pearson(&a, &b, 3).unwrap() - 1.0).abs() < 1e-12);
        assert!(lagged_pearson(&a, &b, -3).unwrap() < 0.9);
        assert_eq!(lagged_pearson(&a, &b, 19), None);
    }
}
