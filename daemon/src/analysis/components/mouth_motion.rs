//! Whether the mouth's change over a clip is the motion of one mouth, or change painted onto a still
//! face and shaped to the audio (hardened profile, docs/scoring.md "Hardened profile").
//!
//! The lipsync correlation is a Pearson correlation: it does not care how large the mouth signal is,
//! only that it rises and falls with the loudness. Noise painted into the mouth rectangle and scaled by
//! the audio's envelope therefore correlates as well as a real mouth does, whatever its amplitude, and
//! a threshold on the signal's size cannot stop it. What stops it must not depend on the amplitude
//! either. Owns two such properties of the signed mouth-change fields of a clip (one
//! [`MouthField`] per consecutive frame pair, from [`face_and_mouth_change`](super::hardened::face_and_mouth_change)):
//! - **persistence**, the lag-1 correlation of consecutive fields: a mouth that opens keeps opening
//!   for a few frames (about 0 or above); a pattern drawn afresh every frame differences to −0.5, and
//!   one that flips sign every frame to −1 (only the latter is refused on it: the former is refused on
//!   concentration, and an honest mouth that follows a jumpy loudness comes close to −0.3);
//! - **concentration**, the share of the fields' energy in their three main spatial patterns: a mouth
//!   opens and closes in much the same way every time (one or two patterns), random blotches spread
//!   their energy over all of the field's cells.
//!
//! Must not: look at anything but the fields, or decide anything but whether the change is motion
//! (the lipsync component turns a refusal into [`LipsyncStatus::IncoherentMouthMotion`](super::LipsyncStatus)).

use serde::Serialize;

/// Cells of a [`MouthField`] (columns, rows) over the mouth rectangle.
pub const FIELD: (usize, usize) = (8, 4);
/// Cells of a [`MouthField`].
pub const FIELD_CELLS: usize = FIELD.0 * FIELD.1;
/// A frame pair's signed change over the mouth rectangle, after the face's alignment, gain, offset:
/// the mean residual (grey levels) of each of [`FIELD`]'s cells, row-major.
pub type MouthField = [f32; FIELD_CELLS];

/// Persistence below which the mouth's change is a pattern flipping sign, not motion. The test miner's
/// honest renders, whose mouth follows a frame-by-frame loudness that jumps, measure −0.28 to +0.09
/// (docs/scoring.md); a sign flipping every frame −0.6 to −1 through the codec.
pub const MIN_PERSISTENCE: f64 = -0.4;
/// Concentration below which the mouth's change is random patterns, not motion. Honest renders
/// measure 0.91–0.99; noise or blotches redrawn in the mouth rectangle every frame 0.30–0.46.
pub const MIN_CONCENTRATION: f64 = 0.7;
/// Main patterns whose share of the energy is the concentration.
const PATTERNS: usize = 3;
/// Fewest fields (frame pairs) that the two properties are judged on; fewer are not judged.
pub const MIN_FIELDS: usize = 8;

/// The two properties of a clip's mouth change, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MouthCoherence {
    /// Lag-1 correlation of consecutive fields (`None`: fewer than [`MIN_FIELDS`] consecutive pairs,
    /// or no change at all).
    pub persistence: Option<f64>,
    /// Share of the fields' energy in their [`PATTERNS`] main patterns (`None` as above).
    pub concentration: Option<f64>,
    /// Fields measured.
    pub fields: usize,
    /// `false` when a property is measured and below its floor.
    pub is_motion: bool,
}

/// The [`MouthCoherence`] of a clip's fields (`None`: a pair without a mouth field).
pub fn coherence(fields: &[Option<MouthField>]) -> MouthCoherence {
    let dot = |a: &MouthField, b: &MouthField| -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
    };
    let (mut cross, mut before, mut after, mut consecutive) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for pair in fields.windows(2) {
        if let [Some(a), Some(b)] = pair {
            cross += dot(a, b);
            before += dot(a, a);
            after += dot(b, b);
            consecutive += 1;
        }
    }
    let defined: Vec<&MouthField> = fields.iter().flatten().collect();
    let persistence = (consecutive >= MIN_FIELDS && before > 0.0 && after > 0.0)
        .then(|| cross / (before * after).sqrt())
        .filter(|p| p.is_finite());
    let concentration = (defined.len() >= MIN_FIELDS)
        .then(|| concentration(&defined))
        .flatten();
    let is_motion = persistence.is_none_or(|p| p >= MIN_PERSISTENCE)
        && concentration.is_none_or(|c| c >= MIN_CONCENTRATION);
    MouthCoherence {
        persistence,
        concentration,
        fields: defined.len(),
        is_motion,
    }
}

/// `(λ₁ + … + λ_PATTERNS) / trace` of `Σ f fᵀ` (power iteration with deflation; the matrix is
/// symmetric positive semi-definite, so every step is a plain product). `None` without energy.
fn concentration(fields: &[&MouthField]) -> Option<f64> {
    const N: usize = FIELD_CELLS;
    let mut m = [[0.0f64; N]; N];
    for f in fields {
        for i in 0..N {
            for j in 0..N {
                m[i][j] += f64::from(f[i]) * f64::from(f[j]);
            }
        }
    }
    let trace: f64 = (0..N).map(|i| m[i][i]).sum();
    if !(trace.is_finite() && trace > 0.0) {
        return None;
    }
    let mut top = 0.0;
    for pattern in 0..PATTERNS {
        // A start no eigenvector of a real field is orthogonal to in practice.
        let mut v: Vec<f64> = (0..N)
            .map(|i| 1.0 + ((i * 7 + pattern * 3) % 11) as f64 / 10.0)
            .collect();
        let mut lambda = 0.0;
        for _ in 0..200 {
            let w: Vec<f64> = (0..N).map(|i| (0..N).map(|j| m[i][j] * v[j]).sum()).collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm <= trace * 1e-12 {
                lambda = 0.0;
                break;
            }
            let next: Vec<f64> = w.iter().map(|x| x / norm).collect();
            let moved: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = next;
            lambda = norm;
            if moved < 1e-10 {
                break;
            }
        }
        top += lambda;
        for i in 0..N {
            for j in 0..N {
                m[i][j] -= lambda * v[i] * v[j];
            }
        }
    }
    Some((top / trace).clamp(0.0, 1.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::tests::Lcg;
    use super::*;

    /// A mouth that opens and closes: one pattern (darker in the middle) scaled by the change of an
    /// opening that follows a slow wave, with a little codec noise.
    fn talking(n: usize, noise: f32, seed: u64) -> Vec<Option<MouthField>> {
        let mut rng = Rng(Lcg(seed));
        let pattern: MouthField = std::array::from_fn(|i| {
            let (x, y) = ((i % FIELD.0) as f32, (i / FIELD.0) as f32);
            -40.0 * (-(x - 3.5).powi(2) / 6.0 - (y - 1.5).powi(2) / 2.0).exp()
        });
        let opening = |t: usize| (t as f32 * 0.9).sin().max(0.0);
        (1..=n)
            .map(|t| {
                Some(std::array::from_fn(|i| {
                    (opening(t) - opening(t - 1)) * pattern[i] + noise * rng.signed()
                }))
            })
            .collect()
    }

    /// Differences of patterns drawn afresh every frame, as a still face with noise painted on.
    fn redrawn(n: usize, amplitude: f32, seed: u64) -> Vec<Option<MouthField>> {
        let mut rng = Rng(Lcg(seed));
        let mut last: MouthField = std::array::from_fn(|_| amplitude * rng.signed());
        (0..n)
            .map(|_| {
                let next: MouthField = std::array::from_fn(|_| amplitude * rng.signed());
                let field = std::array::from_fn(|i| next[i] - last[i]);
                last = next;
                Some(field)
            })
            .collect()
    }

    /// Uniform in [−1, 1).
    struct Rng(Lcg);
    impl Rng {
        fn signed(&mut self) -> f32 {
            (self.0.next() * 2.0 - 1.0) as f32
        }
    }

    #[test]
    fn a_mouth_that_opens_and_closes_is_motion() {
        for noise in [0.0, 1.0, 4.0] {
            let c = coherence(&talking(80, noise, 3));
            assert!(c.is_motion, "{noise}: {c:?}");
            assert!(
                c.persistence.unwrap() > 0.0 && c.concentration.unwrap() > 0.6,
                "{c:?}"
            );
        }
    }

    #[test]
    fn patterns_redrawn_every_frame_are_not_motion_at_any_amplitude() {
        for amplitude in [1.0, 20.0, 120.0] {
            let c = coherence(&redrawn(80, amplitude, 5));
            assert!(!c.is_motion, "{amplitude}: {c:?}");
            let p = c.persistence.unwrap();
            assert!((p + 0.5).abs() < 0.15, "{p}");
            assert!(c.concentration.unwrap() < 0.5, "{c:?}");
        }
    }

    #[test]
    fn a_fixed_pattern_flipping_sign_every_frame_is_not_motion() {
        let pattern: MouthField = std::array::from_fn(|i| if i % 5 == 0 { 10.0 } else { 0.0 });
        let fields: Vec<_> = (0..40)
            .map(|t| Some(pattern.map(|v| if t % 2 == 0 { v } else { -v })))
            .collect();
        let c = coherence(&fields);
        assert!((c.persistence.unwrap() + 1.0).abs() < 1e-9, "{c:?}");
        // One pattern: concentrated, so persistence alone refuses it.
        assert!(c.concentration.unwrap() > 0.99 && !c.is_motion, "{c:?}");
    }

    #[test]
    fn too_few_or_empty_fields_are_not_judged() {
        let c = coherence(&redrawn(MIN_FIELDS - 1, 50.0, 1));
        assert_eq!((c.persistence, c.concentration, c.is_motion), (None, None, true));
        let c = coherence(&vec![Some([0.0; FIELD_CELLS]); 20]);
        assert_eq!((c.persistence, c.concentration, c.is_motion), (None, None, true));
        // Gaps break the pairs: a field between two missing ones is not consecutive with anything.
        let gappy: Vec<_> = redrawn(30, 50.0, 2)
            .into_iter()
            .enumerate()
            .map(|(i, f)| f.filter(|_| i % 2 == 0))
            .collect();
        let c = coherence(&gappy);
        assert_eq!(c.persistence, None);
        assert_eq!(c.fields, 15);
    }
}
