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
//!
//! And, per pair, the **coherent mouth change** ([`coherent_changes`]): the part of the pair's field
//! that lies in the clip's three main patterns, which the hardened freeze penalty reads. Change painted
//! on a pair whose mouth is still (blotches, noise) is nearly orthogonal to them, so it does not make
//! the pair count as moving; painted strongly enough to become a main pattern, it spoils the
//! concentration and lip sync is not measured.
//!
//! Must not: look at anything but the fields, or decide anything but whether the change is motion
//! (the lipsync component turns a refusal into [`LipsyncStatus::IncoherentMouthMotion`](super::LipsyncStatus)).

use serde::Serialize;

/// Cells of a [`MouthField`] (columns, rows) over the mouth rectangle.
pub const FIELD: (usize, usize) = (8, 4);
/// Cells of a [`MouthField`].
pub const FIELD_CELLS: usize = FIELD.0 * FIELD.1;
/// A unit vector over a field's cells.
type Pattern = [f64; FIELD_CELLS];
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

/// The [`PATTERNS`] main spatial patterns of a clip's fields (unit vectors, the eigenvectors of
/// `Σ f fᵀ` with the largest eigenvalues, the largest first) and the share of the fields' energy they
/// hold; `None`
/// without energy. Power iteration with deflation: the matrix is symmetric positive semi-definite,
/// so every step is a plain product.
fn main_patterns(fields: &[&MouthField]) -> Option<(Vec<Pattern>, f64)> {
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
    let (mut top, mut patterns) = (0.0, Vec::with_capacity(PATTERNS));
    for pattern in 0..PATTERNS {
        // A start no eigenvector of a real field is orthogonal to in practice.
        let mut v: [f64; N] = std::array::from_fn(|i| 1.0 + ((i * 7 + pattern * 3) % 11) as f64 / 10.0);
        let mut lambda = 0.0;
        for _ in 0..200 {
            let w: [f64; N] = std::array::from_fn(|i| (0..N).map(|j| m[i][j] * v[j]).sum());
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm <= trace * 1e-12 {
                lambda = 0.0;
                break;
            }
            let next = w.map(|x| x / norm);
            let moved: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = next;
            lambda = norm;
            if moved < 1e-10 {
                break;
            }
        }
        if lambda == 0.0 {
            break;
        }
        top += lambda;
        for i in 0..N {
            for j in 0..N {
                m[i][j] -= lambda * v[i] * v[j];
            }
        }
        patterns.push(v);
    }
    Some((patterns, (top / trace).clamp(0.0, 1.0)))
}

/// `(λ₁ + … + λ_PATTERNS) / trace` of `Σ f fᵀ`: the share of the fields' energy in their main
/// patterns. `None` without energy.
fn concentration(fields: &[&MouthField]) -> Option<f64> {
    main_patterns(fields).map(|(_, share)| share)
}

/// [`CoherentChange::rms`] (grey levels) below which a pair's mouth did not move, and from which it
/// moved fully: a ramp, so that a small change of an output (sharpening, re-encoding) moves the freeze
/// penalty a little rather than flipping pairs. The test miner's renders: 0.00–0.07 on pairs whose
/// mouth is still, 1 and more on pairs whose mouth moves (docs/scoring.md).
pub const COHERENT_CHANGE_RAMP: (f64, f64) = (0.25, 1.0);
/// [`CoherentChange::share`] below which a pair's change is not its mouth moving, and from which it
/// fully is. The renders' moving pairs: 0.4–0.99, most above 0.8; change painted on a still pair keeps
/// about `PATTERNS / FIELD_CELLS` (0.09) of its energy whatever its amplitude, and ±5-level blotches
/// measured 0.0–0.38.
pub const COHERENT_SHARE_RAMP: (f64, f64) = (0.3, 0.6);

/// The part of one pair's mouth change that is the clip's own mouth motion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoherentChange {
    /// RMS over the field's cells of its projection onto the clip's main patterns (grey levels).
    pub rms: f64,
    /// That projection's share of the field's energy (0 for a field without energy).
    pub share: f64,
}

impl CoherentChange {
    /// How much the pair's mouth moved, 0 (still, or change that is not the clip's mouth motion) to
    /// 1: the product of the two ramps, [`COHERENT_CHANGE_RAMP`] on the size and
    /// [`COHERENT_SHARE_RAMP`] on the share.
    pub fn motion(&self) -> f64 {
        let ramp = |v: f64, (lo, hi): (f64, f64)| ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        ramp(self.rms, COHERENT_CHANGE_RAMP) * ramp(self.share, COHERENT_SHARE_RAMP)
    }
}

/// Each pair's [`CoherentChange`]: its field projected onto the clip's [`PATTERNS`] main patterns.
/// Change that is not the clip's mouth motion (blotches, noise, texture painted in) is nearly
/// orthogonal to them, so neither its amplitude nor its correlation with the audio makes a still pair
/// count as moving; change strong enough to become a main pattern spoils the clip's concentration
/// instead ([`coherence`]). `None` where the field is.
pub fn coherent_changes(fields: &[Option<MouthField>]) -> Vec<Option<CoherentChange>> {
    // The patterns of the sums of consecutive changes: a mouth that opens keeps opening for a frame or
    // two, so its patterns survive; a pattern whose sign flips every frame (blotches painted on every
    // pair) cancels and cannot become one of them.
    let sums: Vec<MouthField> = fields
        .windows(2)
        .filter_map(|pair| match pair {
            [Some(a), Some(b)] => Some(std::array::from_fn(|i| a[i] + b[i])),
            _ => None,
        })
        .collect();
    let sums: Vec<&MouthField> = sums.iter().collect();
    let patterns = main_patterns(&sums).map(|(p, _)| p).unwrap_or_default();
    fields
        .iter()
        .map(|f| {
            f.as_ref().map(|f| {
                let total: f64 = f.iter().map(|v| f64::from(*v).powi(2)).sum();
                let along: f64 = patterns
                    .iter()
                    .map(|p| {
                        p.iter()
                            .zip(f)
                            .map(|(a, b)| a * f64::from(*b))
                            .sum::<f64>()
                            .powi(2)
                    })
                    .sum();
                CoherentChange {
                    rms: (along / FIELD_CELLS as f64).sqrt(),
                    share: if total > 0.0 {
                        (along / total).min(1.0)
                    } else {
                        0.0
                    },
                }
            })
        })
        .collect()
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

    /// A mouth that opens, widens and shifts sideways, each at its own pace (three patterns, as the
    /// test miner's renders measure), standing still on every fourth pair.
    fn articulating(n: usize, seed: u64) -> Vec<Option<MouthField>> {
        let mut rng = Rng(Lcg(seed));
        let at = |i: usize| ((i % FIELD.0) as f32 - 3.5, (i / FIELD.0) as f32 - 1.5);
        let patterns: [MouthField; 3] = [
            std::array::from_fn(|i| -40.0 * (-at(i).0.powi(2) / 6.0 - at(i).1.powi(2) / 2.0).exp()),
            std::array::from_fn(|i| -20.0 * (-at(i).0.powi(2) / 20.0 - at(i).1.powi(2)).exp()),
            std::array::from_fn(|i| 6.0 * at(i).0 * (-at(i).0.powi(2) / 8.0).exp()),
        ];
        let course = |k: usize, t: usize| (t as f32 * [0.9, 0.37, 0.23][k]).sin().max(0.0);
        (1..=n)
            .map(|t| {
                let still = t.is_multiple_of(4);
                Some(std::array::from_fn(|i| {
                    let moved: f32 = (0..3)
                        .map(|k| (course(k, t) - course(k, t - 1)) * patterns[k][i])
                        .sum();
                    (if still { 0.0 } else { moved }) + 0.3 * rng.signed()
                }))
            })
            .collect()
    }

    #[test]
    fn a_pair_moves_when_its_change_is_the_clips_mouth_motion_not_change_painted_on_it() {
        let honest = articulating(80, 7);
        let still = |t: usize| (t + 1).is_multiple_of(4);
        let coherent = coherent_changes(&honest);
        for (t, c) in coherent.iter().enumerate() {
            let c = c.unwrap();
            if still(t) {
                assert_eq!(c.motion(), 0.0, "{t}: {c:?}");
            } else if c.rms >= 2.0 * COHERENT_CHANGE_RAMP.1 {
                // A visible change of the opening, the width or the sideways position moves fully.
                assert!(c.share > 0.9 && c.motion() == 1.0, "{t}: {c:?}");
            }
        }
        let moving = coherent.iter().flatten().filter(|c| c.motion() > 0.5).count();
        assert!(moving > 40, "{moving}");
        // Blotches (a random ±amplitude pattern) painted on the still pairs: large, but almost none
        // of it is the clip's mouth motion. Painted strong enough to become a main pattern, they
        // spoil the clip's concentration instead, and lip sync is not measured at all.
        let mut rng = Rng(Lcg(11));
        for amplitude in [1.0f32, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0] {
            let painted: Vec<Option<MouthField>> = honest
                .iter()
                .enumerate()
                .map(|(t, f)| {
                    f.map(|f| {
                        std::array::from_fn(|i| {
                            f[i] + if still(t) {
                                amplitude * rng.signed().signum()
                            } else {
                                0.0
                            }
                        })
                    })
                })
                .collect();
            let refused = !coherence(&painted).is_motion;
            // A random field lies in three of 32 dimensions by chance only (a share of 0.09 on
            // average, above the ramp's foot on a few pairs): the still pairs barely move.
            let credited: Vec<f64> = coherent_changes(&painted)
                .iter()
                .enumerate()
                .filter(|(t, _)| still(*t))
                .map(|(_, c)| c.unwrap().motion())
                .collect();
            let mean = credited.iter().sum::<f64>() / credited.len() as f64;
            // Faint blotches are not motion; blotches as strong as the mouth's lesser patterns (5:
            // the clip's concentration 0.88) earn a sixth of the still pairs at most, and stronger
            // ones cost the clip its lip sync.
            match amplitude {
                a if a <= 3.0 => assert!(!refused && mean < 0.05, "{a}: {credited:?}"),
                a if a < 10.0 => assert!(!refused && mean < 0.2, "{a}: {credited:?}"),
                a => assert!(refused, "{a}: {:?}", coherence(&painted)),
            }
        }
        // A fixed pattern flipping sign on every pair (blotches that brighten and darken in turn) is
        // as consistent as a mouth, but it cancels in the sums of consecutive changes that the
        // patterns are taken from: the still pairs stay still.
        let flip: MouthField = std::array::from_fn(|i| if i % 5 == 0 { 3.0 } else { 0.0 });
        let flipping: Vec<Option<MouthField>> = honest
            .iter()
            .enumerate()
            .map(|(t, f)| {
                f.map(|f| std::array::from_fn(|i| f[i] + if t % 2 == 0 { flip[i] } else { -flip[i] }))
            })
            .collect();
        let credited: f64 = coherent_changes(&flipping)
            .iter()
            .enumerate()
            .filter(|(t, _)| still(*t))
            .map(|(_, c)| c.unwrap().motion())
            .sum();
        assert!(credited < 1.0, "{credited}");
        // Without a field there is nothing to project: `None`; a field without energy does not move.
        assert_eq!(coherent_changes(&[None]), vec![None]);
        let empty = coherent_changes(&[Some([0.0; FIELD_CELLS])])[0].unwrap();
        assert_eq!((empty.rms, empty.share, empty.motion()), (0.0, 0.0, 0.0));
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
