//! Property tests of the scoring invariants: bounded scores for any input, monotonicity of quality
//! and efficiency, and the ranking/winner contract. Test-only; owns no production code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

use super::config::{CapMode, ScoringConfig};
use super::efficiency::{Measurement, challenge_efficiency, run_efficiency};
use super::quality::{ChallengeComponents, IdentityMode, score_quality};
use super::ranking::{RankCandidate, rank, select_winner, should_prefer};
use super::{ChallengeOutcome, score_challenge, score_run};

/// Any f64 worth worrying about: in range, out of range, huge, and the non-finite ones.
fn wild() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        4 => -0.5..1.5f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
        1 => Just(1.0),
        2 => any::<f64>(),
    ]
}

fn mode() -> impl Strategy<Value = IdentityMode> {
    prop_oneof![
        Just(IdentityMode::Insightface),
        Just(IdentityMode::FallbackHistogram),
        Just(IdentityMode::Unavailable),
    ]
}

fn components(v: impl Strategy<Value = f64> + Clone) -> impl Strategy<Value = ChallengeComponents> {
    (
        (v.clone(), v.clone(), v.clone(), v.clone(), v.clone()),
        (v.clone(), v.clone(), v.clone(), v.clone(), v),
        mode(),
    )
        .prop_map(
            |(
                (identity, lipsync, audio, video, temporal),
                (penalty, wer, sync_c, sync_d, fdr),
                identity_mode,
            )| {
                ChallengeComponents {
                    identity,
                    lipsync,
                    audio,
                    video,
                    temporal,
                    penalty,
                    wer,
                    sync_c,
                    sync_d,
                    face_detect_ratio: fdr,
                    identity_mode,
                    picture_mismatches: 0,
                }
            },
        )
}

fn metric() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        4 => (0.0..200.0f64).prop_map(Some),
        1 => Just(None),
        1 => any::<f64>().prop_map(Some),
    ]
}

fn measurement() -> impl Strategy<Value = Measurement> {
    (metric(), metric()).prop_map(|(t, v)| Measurement {
        inference_time_sec: t,
        peak_vram_gb: v,
    })
}

fn config() -> impl Strategy<Value = ScoringConfig> {
    prop_oneof![Just(CapMode::Penalty), Just(CapMode::Reject)].prop_map(|cap_mode| {
        let mut c = ScoringConfig::default();
        c.efficiency.cap_mode = cap_mode;
        c
    })
}

/// Which monotone field to vary, and in which direction quality must move.
#[derive(Debug, Clone, Copy)]
enum Field {
    Identity,
    Lipsync,
    Video,
    Audio,
    Temporal,
    Penalty,
    Wer,
}

fn set(c: &mut ChallengeComponents, f: Field, v: f64) {
    match f {
        Field::Identity => c.identity = v,
        Field::Lipsync => c.lipsync = v,
        Field::Video => c.video = v,
        Field::Audio => c.audio = v,
        Field::Temporal => c.temporal = v,
        Field::Penalty => c.penalty = v,
        Field::Wer => c.wer = v,
    }
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Identity),
        Just(Field::Lipsync),
        Just(Field::Video),
        Just(Field::Audio),
        Just(Field::Temporal),
        Just(Field::Penalty),
        Just(Field::Wer),
    ]
}

/// (hotkey, final_score, mean_time, mean_vram, submit_time, eligible), owned so candidates can borrow it.
type Row = (String, f64, Option<f64>, Option<f64>, f64, bool);

fn candidates() -> impl Strategy<Value = Vec<Row>> {
    let score = prop_oneof![
        6 => 0.0..1.0f64,
        // Coarse values make exact and near ties common.
        3 => (0u32..8).prop_map(|k| f64::from(k) * 5e-5),
        1 => Just(f64::NAN),
        1 => Just(0.0),
    ];
    let opt = prop_oneof![3 => (0u32..4).prop_map(|k| Some(f64::from(k))), 1 => Just(None)];
    prop::collection::vec(
        (
            "[a-c]{1,2}",
            score,
            opt.clone(),
            opt,
            (0u32..3).prop_map(f64::from),
            prop::bool::weighted(0.85),
        ),
        0..40,
    )
}

fn borrow(rows: &[Row]) -> Vec<RankCandidate<'_>> {
    rows.iter()
        .map(|(h, s, t, v, sub, e)| RankCandidate {
            hotkey: h,
            final_score: *s,
            mean_time: *t,
            mean_vram: *v,
            submit_time: *sub,
            eligible: *e,
        })
        .collect()
}

const EPS: f64 = 1e-4;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn quality_and_challenge_final_are_in_unit_interval(
        c in components(wild()),
        m in measurement(),
        cfg in config(),
    ) {
        let s = score_challenge(&c, &m, &cfg);
        prop_assert!((0.0..=1.0).contains(&s.quality.quality_score), "{s:?}");
        prop_assert!((0.0..=1.0).contains(&s.final_score), "{s:?}");
        prop_assert!((0.0..=1.0).contains(&s.efficiency.efficiency_factor));
        prop_assert!(s.efficiency.time_norm.is_finite() && s.efficiency.vram_norm.is_finite());
        let k = s.quality.components;
        let all = [k.identity, k.lipsync, k.audio, k.video, k.temporal, k.penalty, k.wer, k.sync_c, k.sync_d];
        for x in all.into_iter().chain([k.face_detect_ratio]) {
            prop_assert!((0.0..=1.0).contains(&x));
        }
    }

    #[test]
    fn run_final_is_in_unit_interval(
        rows in prop::collection::vec((wild(), measurement()), 1..8),
        cfg in config(),
    ) {
        let outcomes: Vec<ChallengeOutcome> = rows
            .iter()
            .map(|&(quality, measurement)| ChallengeOutcome { quality, measurement })
            .collect();
        let r = score_run(&outcomes, &cfg).unwrap();
        prop_assert!((0.0..=1.0).contains(&r.quality_score), "{r:?}");
        prop_assert!((0.0..=1.0).contains(&r.final_score), "{r:?}");
        prop_assert!((0.0..=1.0).contains(&r.efficiency.efficiency_factor));
        prop_assert_eq!(r.scored_challenges, outcomes.len());
        if r.efficiency.reject_reason.is_some() {
            prop_assert_eq!(r.final_score, 0.0);
        }
    }

    #[test]
    fn quality_is_monotone_in_each_component(
        base in components(-0.5..1.5f64),
        f in field(),
        a in -0.5..1.5f64,
        b in -0.5..1.5f64,
    ) {
        let cfg = ScoringConfig::default();
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut c_lo = base;
        let mut c_hi = base;
        set(&mut c_lo, f, lo);
        set(&mut c_hi, f, hi);
        let q_lo = score_quality(&c_lo, &cfg).quality_score;
        let q_hi = score_quality(&c_hi, &cfg).quality_score;
        match f {
            Field::Penalty | Field::Wer => prop_assert!(q_hi <= q_lo, "{f:?}: {lo}→{q_lo}, {hi}→{q_hi}"),
            _ => prop_assert!(q_hi >= q_lo, "{f:?}: {lo}→{q_lo}, {hi}→{q_hi}"),
        }
    }

    #[test]
    fn efficiency_is_non_increasing_in_time_and_vram(
        t in 0.0..500.0f64, dt in 0.0..500.0f64,
        v in 0.0..100.0f64, dv in 0.0..100.0f64,
        cfg in config(),
    ) {
        let e = &cfg.efficiency;
        let base = challenge_efficiency(&Measurement::new(t, v), e);
        let slower = challenge_efficiency(&Measurement::new(t + dt, v), e);
        let bigger = challenge_efficiency(&Measurement::new(t, v + dv), e);
        prop_assert!(slower.efficiency_factor <= base.efficiency_factor);
        prop_assert!(bigger.efficiency_factor <= base.efficiency_factor);
        prop_assert!(slower.multiplier() <= base.multiplier());
        prop_assert!(bigger.multiplier() <= base.multiplier());
        // Same at run level, where the caps see the worst challenge.
        let run = [Measurement::new(t, v), Measurement::new(10.0, 4.0)];
        let run_slow = [Measurement::new(t + dt, v + dv), Measurement::new(10.0, 4.0)];
        prop_assert!(run_efficiency(&run_slow, e).multiplier() <= run_efficiency(&run, e).multiplier());
    }

    #[test]
    fn rank_is_a_permutation_and_its_first_eligible_is_the_winner(rows in candidates()) {
        let cands = borrow(&rows);
        let r = rank(&cands, EPS);
        let mut seen = vec![false; cands.len()];
        for &i in &r {
            prop_assert!(i < cands.len() && !seen[i]);
            seen[i] = true;
        }
        prop_assert_eq!(r.len(), cands.len());
        // Deterministic.
        prop_assert_eq!(&rank(&cands, EPS), &r);
        let first_eligible = r.iter().copied().find(|&i| cands[i].is_eligible());
        let winner = select_winner(&cands, EPS);
        prop_assert_eq!(winner, first_eligible);
        // Eligible block first.
        let k = r.iter().take_while(|&&i| cands[i].is_eligible()).count();
        prop_assert!(r[k..].iter().all(|&i| !cands[i].is_eligible()));
        // Nobody eligible is clearly ahead of the winner, and nobody in its tie band beats it.
        if let Some(w) = winner {
            let ws = cands[w].final_score;
            for c in cands.iter().filter(|c| c.is_eligible()) {
                prop_assert!(c.final_score <= ws + EPS);
            }
        }
    }

    #[test]
    fn winner_matches_a_fold_of_should_prefer_when_scores_are_apart(
        rows in candidates(),
        perm in Just((0u32..40).collect::<Vec<u32>>()).prop_shuffle(),
    ) {
        // Rewrite the positive scores to distinct multiples of 1e-3 (≫ eps), in a shuffled order.
        let mut rows = rows;
        for (row, &k) in rows.iter_mut().zip(&perm) {
            if row.1.is_finite() && row.1 > 0.0 {
                row.1 = 0.01 + f64::from(k) * 1e-3;
            }
        }
        let cands = borrow(&rows);
        let folded = cands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_eligible())
            .fold(None::<usize>, |best, (i, c)| match best {
                Some(b) if !should_prefer(c, &cands[b], EPS) => Some(b),
                _ => Some(i),
            });
        prop_assert_eq!(select_winner(&cands, EPS), folded);
    }
}
