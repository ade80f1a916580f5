//! Test helpers shared by the `rounds` and `store` tests: hotkeys, images, metrics and a ranker.

use super::{EvaluationTicket, RankInput, ReevaluatePolicy};
use crate::domain::{EvaluationMetrics, Hotkey, ImageRef, Submission, Verdict};
use proptest::prelude::*;
use std::num::NonZeroUsize;

/// A valid hotkey per index (through the real constructor, so it is valid SS58 in the real crate).
pub(crate) fn hotkey(i: u8) -> Hotkey {
    Hotkey::from_public_key([i.wrapping_add(1); 32])
}

/// A valid digest-pinned image per index.
pub(crate) fn image(i: u8) -> ImageRef {
    let hex = format!("{:02x}", i).repeat(32);
    match ImageRef::parse(&format!("miner/img{i}@sha256:{hex}")) {
        Ok(r) => r,
        Err(e) => unreachable!("test image {i} must parse: {e}"),
    }
}

/// A submission.
pub(crate) fn sub(h: u8, img: u8, t: f64) -> Submission {
    Submission {
        hotkey: hotkey(h),
        image_ref: image(img),
        submit_time: t,
    }
}

/// Metrics for a ticket: `verdict` with `final_score` (an error string unless the verdict is ok).
pub(crate) fn metrics(ticket: &EvaluationTicket, verdict: Verdict, score: f64) -> EvaluationMetrics {
    let mut m = EvaluationMetrics::failed(
        verdict,
        verdict.as_str(),
        ticket.image_ref.as_str(),
        ticket.submit_time,
        0.0,
        5,
    );
    m.round = ticket.round;
    if verdict == Verdict::Ok {
        m.error = None;
        m.final_score = score;
        m.quality_score = score;
    }
    m
}

/// `final_score` descending, then `submit_time` ascending, then hotkey.
pub(crate) fn rank(inputs: &[RankInput<'_>]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..inputs.len()).collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (&inputs[a], &inputs[b]);
        b.final_score
            .total_cmp(&a.final_score)
            .then(a.submit_time.total_cmp(&b.submit_time))
            .then(a.hotkey.cmp(b.hotkey))
    });
    idx
}

/// A top-K policy.
pub(crate) fn topk(k: usize, m: u64) -> ReevaluatePolicy {
    ReevaluatePolicy::TopK {
        top_k: NonZeroUsize::new(k).unwrap_or(NonZeroUsize::MIN),
        max_carry_rounds: m,
    }
}

/// Hotkeys 0..5 with a limit of 4, images 0..3, three submit times.
pub(crate) const HOTKEYS: u8 = 5;
pub(crate) const LIMIT: usize = 4;
pub(crate) const SCORES: [f64; 4] = [0.0, 0.3, 0.5, 0.9];
pub(crate) const TIMES: [f64; 3] = [10.0, 20.0, 30.0];

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Upsert(Vec<(u8, u8, u8)>),
    Take(usize),
    Stage {
        ticket: usize,
        verdict: u8,
        score: usize,
    },
    Commit,
    SetChallenge(u8),
    Remove(u8),
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((0..HOTKEYS, 0u8..3, 0u8..3), 0..4).prop_map(Op::Upsert),
        3 => (0usize..8).prop_map(Op::Take),
        4 => (0usize..8, 0u8..8, 0usize..SCORES.len())
            .prop_map(|(ticket, verdict, score)| Op::Stage { ticket, verdict, score }),
        2 => Just(Op::Commit),
        1 => (0u8..2).prop_map(Op::SetChallenge),
        1 => (0..HOTKEYS).prop_map(Op::Remove),
    ]
}

pub(crate) fn policy() -> impl Strategy<Value = ReevaluatePolicy> {
    prop_oneof![
        Just(ReevaluatePolicy::All),
        (1usize..4, 0u64..4).prop_map(|(k, m)| topk(k, m)),
    ]
}

/// Verdicts used by the random results: mostly ok, some miner faults, some infra errors.
pub(crate) fn verdict(v: u8) -> Verdict {
    match v {
        0..=4 => Verdict::Ok,
        5 => Verdict::Crashed,
        6 => Verdict::PullFailed,
        _ => Verdict::InfraError,
    }
}
