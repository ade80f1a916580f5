//! Criterion benches of the pure scoring hot path (`talkheadd::scoring`).
//!
//! Owns the performance targets of the scoring module: one challenge (quality + efficiency) under
//! 200 ns, ranking 1,024 miners under 100 µs. Inputs are built outside the timed closures; the benches
//! must not touch I/O or anything outside `scoring`.

use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use talkheadd::scoring::{
    ChallengeComponents, ChallengeOutcome, IdentityMode, Measurement, RankCandidate, ScoringConfig,
    cohort_norms, rank, score_challenge, score_run, select_winner,
};

fn components(i: u32) -> ChallengeComponents {
    let x = f64::from(i % 97) / 97.0;
    ChallengeComponents {
        identity: 0.55 + 0.4 * x,
        lipsync: 0.7 - 0.3 * x,
        audio: 0.6,
        video: 0.5 + 0.2 * x,
        temporal: 0.8,
        penalty: 0.05 + 0.1 * x,
        wer: 0.1 + 0.6 * x,
        sync_c: 0.4 + 0.5 * x,
        sync_d: 0.2,
        face_detect_ratio: 0.7 + 0.3 * x,
        identity_mode: IdentityMode::Insightface,
        picture_mismatches: 0,
    }
}

/// A deterministic pseudo-random stream (no rand dependency; the values only need to look unsorted).
fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    // Top 53 bits → [0, 1).
    f64::from_bits(0x3FF0_0000_0000_0000 | (*state >> 12)) - 1.0
}

fn bench_challenge(c: &mut Criterion) {
    let cfg = ScoringConfig::default();
    let comps = components(42);
    let m = Measurement::new(11.5, 9.25);
    c.bench_function("one_challenge_quality_and_efficiency", |b| {
        b.iter(|| score_challenge(black_box(&comps), black_box(&m), black_box(&cfg)));
    });
}

fn bench_run(c: &mut Criterion) {
    let cfg = ScoringConfig::default();
    let outcomes: Vec<ChallengeOutcome> = (0..5u32)
        .map(|i| ChallengeOutcome {
            quality: 0.5 + 0.1 * f64::from(i),
            measurement: Measurement::new(8.0 + f64::from(i), 7.5 + 0.25 * f64::from(i)),
        })
        .collect();
    c.bench_function("run_aggregation_5_challenges", |b| {
        b.iter(|| score_run(black_box(&outcomes), black_box(&cfg)));
    });
}

fn bench_rank(c: &mut Criterion) {
    let eps = ScoringConfig::default().tie_epsilon;
    let mut s = 0x5EED_u64;
    let hotkeys: Vec<String> = (0..1024).map(|i| format!("5H{i:046}")).collect();
    let cands: Vec<RankCandidate<'_>> = hotkeys
        .iter()
        .enumerate()
        .map(|(i, h)| RankCandidate {
            hotkey: h,
            // Coarse scores so that many tie groups form, as with copycat images.
            final_score: (lcg(&mut s) * 2_000.0).floor() / 2_000.0,
            mean_time: (i % 13 != 0).then(|| 5.0 + 30.0 * lcg(&mut s)),
            mean_vram: (i % 17 != 0).then(|| 4.0 + 12.0 * lcg(&mut s)),
            submit_time: 1.7e9 + (lcg(&mut s) * 1e5).floor(),
            eligible: i % 11 != 0,
        })
        .collect();
    c.bench_function("rank_1024_miners", |b| {
        b.iter(|| rank(black_box(&cands), black_box(eps)));
    });
    c.bench_function("select_winner_1024_miners", |b| {
        b.iter(|| select_winner(black_box(&cands), black_box(eps)));
    });
    // Worst case for the tie pass: every score equal (a copycat swarm), so one 1,024-wide group.
    let tied: Vec<RankCandidate<'_>> = cands
        .iter()
        .map(|c| RankCandidate {
            final_score: 0.5,
            ..*c
        })
        .collect();
    c.bench_function("rank_1024_miners_all_tied", |b| {
        b.iter(|| rank(black_box(&tied), black_box(eps)));
    });
    let times: Vec<Option<f64>> = cands.iter().map(|c| c.mean_time).collect();
    c.bench_function("cohort_norms_1024_miners", |b| {
        b.iter(|| cohort_norms(black_box(&times), black_box(3.0)));
    });
}

/// `criterion_group!` emits an undocumented `pub fn`; a private module keeps it out of `missing_docs`.
mod group {
    use super::{bench_challenge, bench_rank, bench_run};
    criterion::criterion_group!(benches, bench_challenge, bench_run, bench_rank);
}

criterion_main!(group::benches);
