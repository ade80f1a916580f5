//! Ranking and the winner rule: which miner the validator should pay (docs/reference.md#winner-rule).
//!
//! Owns: eligibility, the pairwise rule [`should_prefer`] (talkhead-subnet@ddaf736, extended to a total
//! order), the deterministic [`rank`] and [`select_winner`]. Must not: know about hotkey registration,
//! errors or metagraphs (the caller folds those into [`RankCandidate::eligible`]), clone strings, log,
//! or allocate beyond the one index vector that [`rank`] returns.
//!
//! Tie-break, in order: a final score ahead by more than `eps` wins; else the lower mean inference time
//! (missing = +inf); else the lower mean peak VRAM (missing = +inf); else the earlier `submit_time`
//! (era B's order: the first submission wins, which defeats copycats of a public digest); else the
//! lexicographically smaller hotkey (ddaf736's list order), so the order is total and deterministic.
//!
//! The pairwise rule with `eps` is not transitive (0.30000, 0.29994, 0.29988 chain), so [`rank`]
//! anchors each tie group at its best score: a group is its head and every following candidate within
//! `eps` of the *head*, so ties never chain downwards. Eligible candidates are ranked as a block before
//! ineligible ones, so an errored miner can neither win nor change who wins.

use std::cmp::Ordering;

use super::aggregate::RunScore;
use super::math::usable;

/// One miner as the winner rule sees it. Borrowing the hotkey keeps ranking free of string clones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankCandidate<'a> {
    /// SS58 hotkey; the last tie-break key.
    pub hotkey: &'a str,
    /// Committed run `final_score`.
    pub final_score: f64,
    /// Mean inference time in seconds; `None` (or unusable) ranks as +inf.
    pub mean_time: Option<f64>,
    /// Mean peak VRAM in GB; `None` (or unusable) ranks as +inf.
    pub mean_vram: Option<f64>,
    /// Submission time (unix seconds); earlier wins a full tie. Non-finite ranks as +inf.
    pub submit_time: f64,
    /// The caller's verdict that the row may win: no `metrics.error`, hotkey currently registered.
    pub eligible: bool,
}

impl<'a> RankCandidate<'a> {
    /// A candidate from a committed run: its final score and its mean time and VRAM.
    pub const fn from_run(hotkey: &'a str, run: &RunScore, submit_time: f64, eligible: bool) -> Self {
        Self {
            hotkey,
            final_score: run.final_score,
            mean_time: run.efficiency.inference_time_sec,
            mean_vram: run.efficiency.peak_vram_gb,
            submit_time,
            eligible,
        }
    }

    /// Eligible to win (docs/reference.md#winner-rule, @57711d5): caller-eligible and a finite
    /// `final_score > 0`.
    #[inline]
    pub fn is_eligible(&self) -> bool {
        self.eligible && self.final_score.is_finite() && self.final_score > 0.0
    }

    /// The score used for ordering: non-finite scores sort below everything.
    #[inline]
    fn score(&self) -> f64 {
        if self.final_score.is_finite() {
            self.final_score
        } else {
            f64::NEG_INFINITY
        }
    }

    #[inline]
    fn time_key(&self) -> f64 {
        usable(self.mean_time).unwrap_or(f64::INFINITY)
    }

    #[inline]
    fn vram_key(&self) -> f64 {
        usable(self.mean_vram).unwrap_or(f64::INFINITY)
    }

    #[inline]
    fn submit_key(&self) -> f64 {
        if self.submit_time.is_finite() {
            self.submit_time
        } else {
            f64::INFINITY
        }
    }
}

/// Compares two keys that are never NaN, branch-free; `-0.0` equals `0.0` (unlike `total_cmp`).
#[inline]
fn cmp_key(a: f64, b: f64) -> Ordering {
    (a > b).cmp(&(a < b))
}

/// Orders by the tie-break keys only: `Less` means `a` wins the tie.
#[inline]
fn tie_cmp(a: &RankCandidate<'_>, b: &RankCandidate<'_>) -> Ordering {
    cmp_key(a.time_key(), b.time_key())
        .then_with(|| cmp_key(a.vram_key(), b.vram_key()))
        .then_with(|| cmp_key(a.submit_key(), b.submit_key()))
        .then_with(|| a.hotkey.cmp(b.hotkey))
}

/// `a` is ahead of `b` by more than `eps`: the one comparison every rule here shares, so that `rank`,
/// `select_winner` and `should_prefer` agree bit for bit.
#[inline]
fn clearly_ahead(a: f64, b: f64, eps: f64) -> bool {
    a > b + eps
}

/// True when `a` should be preferred over `b` (ddaf736 `should_prefer_candidate_a`, made total).
///
/// `a` wins if its score is ahead by more than `eps`, loses if behind by more than `eps`; otherwise the
/// tie-break keys decide (lower time, lower VRAM, earlier submit, smaller hotkey). Fully equal → false.
#[inline]
pub fn should_prefer(a: &RankCandidate<'_>, b: &RankCandidate<'_>, eps: f64) -> bool {
    let (sa, sb) = (a.score(), b.score());
    if clearly_ahead(sa, sb, eps) {
        return true;
    }
    if clearly_ahead(sb, sa, eps) {
        return false;
    }
    tie_cmp(a, b) == Ordering::Less
}

/// A deterministic total order of `candidates` (indices, best first) consistent with the winner rule.
///
/// Eligible candidates first, then the rest; inside each block by score descending (non-finite last), then
/// each tie group (head + followers within `eps` of the head) re-ordered by the tie-break keys, with the
/// input index as the final key so even identical rows have one answer.
pub fn rank(candidates: &[RankCandidate<'_>], eps: f64) -> Vec<usize> {
    let c = candidates;
    // The one allocation: eligible indices, then the others (a stable partition, so no comparator
    // has to look at eligibility again).
    let mut idx: Vec<usize> = Vec::with_capacity(c.len());
    idx.extend((0..c.len()).filter(|&i| c[i].is_eligible()));
    let eligible = idx.len();
    idx.extend((0..c.len()).filter(|&i| !c[i].is_eligible()));

    let (head_block, tail_block) = idx.split_at_mut(eligible);
    for block in [head_block, tail_block] {
        // Descending score. Equal scores share a tie group whose own sort is total, so no secondary key
        // is needed (sort_unstable is itself deterministic, which covers an unvalidated negative `eps`).
        block.sort_unstable_by(|&i, &j| cmp_key(c[j].score(), c[i].score()));
        order_tie_groups(c, block, eps);
    }
    idx
}

/// Re-orders each tie group of a score-sorted block by the tie-break keys (then the input index).
fn order_tie_groups(c: &[RankCandidate<'_>], block: &mut [usize], eps: f64) {
    let mut start = 0;
    while let Some(&h) = block.get(start) {
        let head_score = c[h].score();
        let mut end = start + 1;
        // Scores are non-increasing from here, so the first one outside the band ends the group.
        while let Some(&j) = block.get(end) {
            if clearly_ahead(head_score, c[j].score(), eps) {
                break;
            }
            end += 1;
        }
        if end - start > 1 {
            block[start..end].sort_unstable_by(|&i, &j| tie_cmp(&c[i], &c[j]).then_with(|| i.cmp(&j)));
        }
        start = end;
    }
}

/// The winner: the first eligible candidate in [`rank`] order, computed in two passes without allocating.
pub fn select_winner(candidates: &[RankCandidate<'_>], eps: f64) -> Option<usize> {
    let head = candidates
        .iter()
        .filter(|c| c.is_eligible())
        .map(|c| c.final_score)
        .max_by(f64::total_cmp)?;
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_eligible() && !clearly_ahead(head, c.final_score, eps))
        // min_by keeps the first of equal elements, matching rank's index tie-break.
        .min_by(|(_, a), (_, b)| tie_cmp(a, b))
        .map(|(i, _)| i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-4;

    fn cand(hotkey: &str, score: f64) -> RankCandidate<'_> {
        RankCandidate {
            hotkey,
            final_score: score,
            mean_time: Some(10.0),
            mean_vram: Some(8.0),
            submit_time: 1_000.0,
            eligible: true,
        }
    }

    #[test]
    fn eligibility() {
        assert!(cand("a", 0.1).is_eligible());
        assert!(!cand("a", 0.0).is_eligible());
        assert!(!cand("a", -0.1).is_eligible());
        assert!(!cand("a", f64::NAN).is_eligible());
        assert!(!cand("a", f64::INFINITY).is_eligible());
        let mut c = cand("a", 0.9);
        c.eligible = false;
        assert!(!c.is_eligible());
    }

    #[test]
    fn score_ahead_by_more_than_eps_wins() {
        let a = cand("z", 0.5002);
        let mut b = cand("a", 0.5);
        b.mean_time = Some(1.0);
        assert!(should_prefer(&a, &b, EPS));
        assert!(!should_prefer(&b, &a, EPS));
        // Within eps: the faster one wins regardless of the small score edge.
        let a = cand("z", 0.50005);
        assert!(!should_prefer(&a, &b, EPS));
        assert!(should_prefer(&b, &a, EPS));
    }

    #[test]
    fn tie_break_level_time_then_missing_time_is_infinite() {
        let mut a = cand("z", 0.5);
        let mut b = cand("a", 0.5);
        a.mean_time = Some(9.0);
        assert!(should_prefer(&a, &b, EPS) && !should_prefer(&b, &a, EPS));
        a.mean_time = None;
        b.mean_time = Some(1e9);
        assert!(should_prefer(&b, &a, EPS) && !should_prefer(&a, &b, EPS));
        a.mean_time = Some(f64::NAN);
        assert!(should_prefer(&b, &a, EPS));
    }

    #[test]
    fn tie_break_level_vram() {
        let mut a = cand("z", 0.5);
        let mut b = cand("a", 0.5);
        a.mean_vram = Some(7.5);
        assert!(should_prefer(&a, &b, EPS) && !should_prefer(&b, &a, EPS));
        a.mean_vram = None;
        b.mean_vram = Some(1e9);
        assert!(should_prefer(&b, &a, EPS));
    }

    #[test]
    fn tie_break_level_submit_time_earlier_wins() {
        let mut a = cand("z", 0.5);
        let b = cand("a", 0.5);
        a.submit_time = 999.0;
        assert!(should_prefer(&a, &b, EPS) && !should_prefer(&b, &a, EPS));
        a.submit_time = f64::NAN;
        assert!(should_prefer(&b, &a, EPS));
    }

    #[test]
    fn tie_break_level_hotkey_then_full_equality_is_false() {
        let a = cand("5Aaa", 0.5);
        let b = cand("5Bbb", 0.5);
        assert!(should_prefer(&a, &b, EPS) && !should_prefer(&b, &a, EPS));
        assert!(!should_prefer(&a, &a, EPS));
    }

    #[test]
    fn rank_groups_are_anchored_at_the_head() {
        // 0.30000 slow, 0.29994 medium, 0.29988 fastest: the third is within eps of the second but not of
        // the head, so it may not chain into the head's group.
        let mut a = cand("a", 0.30000);
        let mut b = cand("b", 0.29994);
        let mut c = cand("c", 0.29988);
        a.mean_time = Some(30.0);
        b.mean_time = Some(20.0);
        c.mean_time = Some(10.0);
        let cands = [c, a, b];
        assert_eq!(rank(&cands, EPS), [2, 1, 0]);
        assert_eq!(select_winner(&cands, EPS), Some(2));
    }

    #[test]
    fn ineligible_rows_rank_last_and_cannot_change_the_winner() {
        let mut err = cand("err", 0.30010);
        err.eligible = false;
        err.mean_time = Some(1.0);
        let mut b = cand("b", 0.30002);
        b.mean_time = Some(20.0);
        let mut c = cand("c", 0.29995);
        c.mean_time = Some(10.0);
        let zero = cand("zero", 0.0);
        let nan = cand("nan", f64::NAN);
        let cands = [err, b, c, zero, nan];
        let r = rank(&cands, EPS);
        // Eligible block {b, c} (tie: c faster), then ineligible: err (0.3001) > zero (0) > nan.
        assert_eq!(r, [2, 1, 0, 3, 4]);
        assert_eq!(select_winner(&cands, EPS), Some(2));
        // Without the errored row the answer is the same.
        assert_eq!(select_winner(&cands[1..], EPS), Some(1));
    }

    #[test]
    fn no_eligible_candidate_means_no_winner() {
        assert_eq!(select_winner(&[], EPS), None);
        assert!(rank(&[], EPS).is_empty());
        let cands = [cand("a", 0.0), cand("b", f64::NAN)];
        assert_eq!(select_winner(&cands, EPS), None);
        assert_eq!(rank(&cands, EPS), [0, 1]);
    }

    #[test]
    fn identical_rows_rank_by_input_index() {
        let cands = [cand("x", 0.5), cand("x", 0.5), cand("x", 0.5)];
        assert_eq!(rank(&cands, EPS), [0, 1, 2]);
        assert_eq!(select_winner(&cands, EPS), Some(0));
    }

    #[test]
    fn from_run_takes_the_run_means() {
        let cfg = crate::scoring::ScoringConfig::default();
        let outcomes = [crate::scoring::ChallengeOutcome {
            quality: 0.5,
            measurement: crate::scoring::Measurement::new(12.0, 6.0),
        }];
        let run = crate::scoring::score_run(&outcomes, &cfg).unwrap();
        let c = RankCandidate::from_run("5Abc", &run, 7.0, true);
        assert_eq!(
            (c.final_score, c.mean_time, c.mean_vram),
            (run.final_score, Some(12.0), Some(6.0))
        );
        assert_eq!((c.hotkey, c.submit_time, c.eligible), ("5Abc", 7.0, true));
    }

    #[test]
    fn clear_scores_rank_descending() {
        let cands = [cand("a", 0.1), cand("b", 0.9), cand("c", 0.5)];
        assert_eq!(rank(&cands, EPS), [1, 2, 0]);
        assert_eq!(select_winner(&cands, EPS), Some(1));
    }
}
