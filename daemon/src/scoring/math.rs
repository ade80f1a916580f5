//! Small numeric helpers shared by the scoring modules.
//!
//! Owns: the NaN-safe clamps every score passes through. Must not: allocate or depend on config.

/// Clamps to `[0, 1]`; NaN becomes 0 so that no score can ever leave the unit interval.
#[inline]
pub(crate) fn clamp01(x: f64) -> f64 {
    // `f64::clamp` propagates NaN; the explicit comparisons send NaN to 0 instead.
    if x >= 1.0 {
        1.0
    } else if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Clamps to `[0, hi]`; NaN becomes 0. `hi` is the validated `norm_max`.
#[inline]
pub(crate) fn clamp0_to(x: f64, hi: f64) -> f64 {
    let x = if x > 0.0 { x } else { 0.0 };
    if x > hi { hi } else { x }
}

/// A measurement is usable when it is finite and not negative (the reference drops the rest).
#[inline]
pub(crate) fn usable(v: Option<f64>) -> Option<f64> {
    match v {
        Some(x) if x.is_finite() && x >= 0.0 => Some(x),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn clamps_are_nan_safe() {
        assert_eq!(clamp01(f64::NAN), 0.0);
        assert_eq!(clamp01(f64::INFINITY), 1.0);
        assert_eq!(clamp01(f64::NEG_INFINITY), 0.0);
        assert_eq!(clamp01(-0.0), 0.0);
        assert_eq!(clamp01(0.25), 0.25);
        assert_eq!(clamp0_to(5.0, 3.0), 3.0);
        assert_eq!(clamp0_to(f64::NAN, 3.0), 0.0);
        assert_eq!(clamp0_to(-2.0, 3.0), 0.0);
        assert_eq!(usable(Some(-1.0)), None);
        assert_eq!(usable(Some(f64::NAN)), None);
        assert_eq!(usable(Some(f64::INFINITY)), None);
        assert_eq!(usable(Some(0.0)), Some(0.0));
        assert_eq!(usable(None), None);
    }
}
