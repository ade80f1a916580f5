//! Tests of the round rules: scenarios, then random operation sequences checked against a naive model
//! written independently of `plan.rs` (per-miner change counters instead of a global generation).

use super::testkit::{
    HOTKEYS, LIMIT, Op, SCORES, TIMES, hotkey, image, metrics, op, policy, rank, sub, topk, verdict,
};
use super::*;
use crate::domain::Verdict;
use proptest::prelude::*;

fn stage_all(book: &mut RoundBook, score_of: impl Fn(u8) -> f64) {
    for t in book.pending() {
        let i = (0..32).find(|&i| hotkey(i) == t.hotkey).unwrap();
        let m = metrics(&t, Verdict::Ok, score_of(i));
        assert_eq!(book.stage(&t, m).unwrap(), StageOutcome::Staged);
    }
}

#[test]
fn a_b_a_during_one_evaluation_is_stale() {
    let mut book = RoundBook::new(10);
    book.upsert(&[sub(0, 0, 1.0)], 0.0).unwrap();
    let ticket = book.pending().remove(0);
    book.upsert(&[sub(0, 1, 1.0)], 1.0).unwrap();
    book.upsert(&[sub(0, 0, 1.0)], 2.0).unwrap();
    assert_eq!(book.pending()[0].image_ref, ticket.image_ref);
    let out = book.stage(&ticket, metrics(&ticket, Verdict::Ok, 0.5)).unwrap();
    assert!(
        matches!(
            out,
            StageOutcome::Discarded {
                reason: DiscardReason::StaleGeneration { .. }
            }
        ),
        "{out:?}"
    );
}

#[test]
fn duplicates_in_a_batch_last_wins_and_a_b_a_in_one_batch_is_no_change() {
    let mut book = RoundBook::new(10);
    book.upsert(&[sub(0, 0, 1.0)], 0.0).unwrap();
    let gen0 = book.pending()[0].generation;
    let r = book.upsert(&[sub(0, 1, 1.0), sub(0, 0, 1.0)], 1.0).unwrap();
    assert_eq!(r.unchanged, 1);
    assert_eq!(book.pending()[0].generation, gen0);
    let r = book.upsert(&[sub(0, 0, 1.0), sub(0, 2, 3.0)], 1.0).unwrap();
    assert_eq!((r.image_changed, r.inserted), (1, 0));
    assert_eq!(book.pending()[0].image_ref, image(2));
}

#[test]
fn infra_error_is_refused_and_the_miner_stays_pending() {
    let mut book = RoundBook::new(10);
    book.upsert(&[sub(0, 0, 1.0)], 0.0).unwrap();
    let t = book.pending().remove(0);
    let err = book.stage(&t, metrics(&t, Verdict::InfraError, 0.0)).unwrap_err();
    assert_eq!(err.reason(), "result_not_committable");
    assert_eq!(book.pending().len(), 1);
    assert!(
        book.commit_if_complete(&ReevaluatePolicy::All, &rank, 1.0)
            .is_none()
    );
}

#[test]
fn submit_time_change_keeps_results_and_bumps_version_only_with_committed_metrics() {
    let mut book = RoundBook::new(10);
    book.upsert(&[sub(0, 0, 1.0)], 0.0).unwrap();
    let v = book.counters().metrics_version;
    book.upsert(&[sub(0, 0, 2.0)], 1.0).unwrap();
    assert_eq!(book.counters().metrics_version, v, "no committed metrics yet");
    stage_all(&mut book, |_| 0.5);
    book.upsert(&[sub(0, 0, 3.0)], 2.0).unwrap();
    assert!(
        book.pending().is_empty(),
        "staged result survives a submit_time change"
    );
    let c = book
        .commit_if_complete(&ReevaluatePolicy::All, &rank, 3.0)
        .unwrap();
    assert_eq!(c.metrics_version, v + 1);
    let r = book.upsert(&[sub(0, 0, 4.0)], 4.0).unwrap();
    assert_eq!(r.submit_time_changed, 1);
    assert_eq!(r.metrics_version, v + 2);
    assert_eq!(book.metrics_rows()[0].submit_time, 4.0);
    let r = book.upsert(&[sub(0, 1, 4.0)], 5.0).unwrap();
    assert_eq!(r.metrics_version, v + 3);
    assert!(
        book.metrics_rows().is_empty(),
        "new image leaves /metrics until next commit"
    );
}

#[test]
fn commit_needs_nothing_pending_and_something_staged() {
    let mut book = RoundBook::new(10);
    assert!(
        book.commit_if_complete(&ReevaluatePolicy::All, &rank, 0.0)
            .is_none()
    );
    book.upsert(&[sub(0, 0, 1.0), sub(1, 1, 2.0)], 0.0).unwrap();
    let t = book.pending().remove(0);
    book.stage(&t, metrics(&t, Verdict::Ok, 0.4)).unwrap();
    assert!(
        book.commit_if_complete(&ReevaluatePolicy::All, &rank, 1.0)
            .is_none()
    );
    book.set_challenge_set("abc").unwrap();
    stage_all(&mut book, |_| 0.2);
    let c = book
        .commit_if_complete(&ReevaluatePolicy::All, &rank, 2.0)
        .unwrap();
    assert_eq!((c.round, c.committed, c.carried), (1, 2, 0));
    assert_eq!(c.reevaluate_next.len(), 2);
    assert_eq!(book.counters().round, 2);
    assert_eq!(book.counters().challenge_set_hash, None);
    assert_eq!(book.counters().last_commit_at, Some(2.0));
    assert_eq!(book.pending().len(), 2, "under All everyone is pending again");
}

#[test]
fn challenge_set_is_fixed_for_the_round() {
    let mut book = RoundBook::new(10);
    book.set_challenge_set("h1").unwrap();
    book.set_challenge_set("h1").unwrap();
    let e = book.set_challenge_set("h2").unwrap_err();
    assert_eq!(e.reason(), "challenge_set_mismatch");
    assert_eq!(
        book.set_challenge_set("").unwrap_err(),
        RoundError::InvalidChallengeSetHash
    );
}

#[test]
fn stale_round_ticket_is_discarded() {
    let mut book = RoundBook::new(10);
    book.upsert(&[sub(0, 0, 1.0)], 0.0).unwrap();
    let t = book.pending().remove(0);
    book.stage(&t, metrics(&t, Verdict::Ok, 0.4)).unwrap();
    let again = book.stage(&t, metrics(&t, Verdict::Ok, 0.9)).unwrap();
    assert_eq!(
        again,
        StageOutcome::Discarded {
            reason: DiscardReason::AlreadyStaged
        }
    );
    book.commit_if_complete(&ReevaluatePolicy::All, &rank, 1.0)
        .unwrap();
    let late = book.stage(&t, metrics(&t, Verdict::Ok, 0.9)).unwrap();
    assert_eq!(
        late,
        StageOutcome::Discarded {
            reason: DiscardReason::StaleRound {
                ticket: 1,
                current: 2
            }
        }
    );
}

#[test]
fn top_k_carries_the_rest_unchanged_and_reevaluates_them_after_max_carry_rounds() {
    let mut book = RoundBook::new(10);
    let policy = topk(1, 2);
    book.upsert(&[sub(0, 0, 1.0), sub(1, 1, 2.0), sub(2, 2, 3.0)], 0.0)
        .unwrap();
    // Miner 2 fails to pull: it is never in the top K but is retried after max_carry_rounds.
    for t in book.pending() {
        let m = if t.hotkey == hotkey(2) {
            metrics(&t, Verdict::PullFailed, 0.0)
        } else if t.hotkey == hotkey(0) {
            metrics(&t, Verdict::Ok, 0.9)
        } else {
            metrics(&t, Verdict::Ok, 0.5)
        };
        book.stage(&t, m).unwrap();
    }
    let before = book.metrics_rows();
    let c = book.commit_if_complete(&policy, &rank, 1.0).unwrap();
    assert_eq!((c.committed, c.carried), (3, 2));
    assert_eq!(c.reevaluate_next, vec![hotkey(0)]);
    let rows = book.metrics_rows();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row.carried_over, row.hotkey != hotkey(0));
        assert!(
            row.metrics.final_score > 0.0 || row.hotkey == hotkey(2),
            "never zeroed"
        );
        assert!(before.iter().all(|b| b.hotkey != row.hotkey));
    }
    // Rounds 2 and 3: only miner 0 is pending; 1 and 2 keep their metrics untouched.
    let kept: Vec<_> = rows.iter().filter(|r| r.carried_over).cloned().collect();
    for round in 2..=3 {
        let p = book.pending();
        assert_eq!(p.len(), 1, "round {round}");
        assert_eq!(p[0].hotkey, hotkey(0));
        stage_all(&mut book, |_| 0.9);
        book.commit_if_complete(&policy, &rank, round as f64).unwrap();
        let rows = book.metrics_rows();
        for k in &kept {
            let now = rows.iter().find(|r| r.hotkey == k.hotkey).unwrap();
            if round == 2 {
                assert_eq!(now, k);
            } else {
                assert_eq!(now.metrics, k.metrics);
                assert!(!now.carried_over, "expired carry is re-evaluated");
            }
        }
    }
    // Round 4: carries expired (2 rounds old), everyone is pending again.
    assert_eq!(book.pending().len(), 3);
}

#[test]
fn a_misbehaving_ranker_cannot_panic_or_promote_twice() {
    let mut book = RoundBook::new(10);
    book.upsert(&[sub(0, 0, 1.0), sub(1, 1, 2.0)], 0.0).unwrap();
    stage_all(&mut book, |_| 0.5);
    let bad = |_: &[RankInput<'_>]| vec![7, 1, 1, 99];
    let c = book.commit_if_complete(&topk(2, 5), &bad, 1.0).unwrap();
    assert_eq!(c.reevaluate_next, vec![hotkey(1)]);
    assert_eq!(c.carried, 1);
}

#[test]
fn submission_limit_writes_nothing() {
    let mut book = RoundBook::new(2);
    book.upsert(&[sub(0, 0, 1.0)], 0.0).unwrap();
    let before = book.clone();
    let e = book
        .upsert(&[sub(0, 1, 1.0), sub(1, 1, 1.0), sub(2, 2, 1.0)], 1.0)
        .unwrap_err();
    assert_eq!(
        e,
        RoundError::SubmissionLimit {
            limit: 2,
            would_have: 3
        }
    );
    assert_eq!(book, before);
    book.upsert(&[sub(0, 1, 1.0), sub(1, 1, 1.0), sub(1, 2, 1.0)], 1.0)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------------
// Property tests against a naive model.

#[derive(Debug, Clone, PartialEq)]
struct NCommitted {
    image: u8,
    epoch: u64,
    evaluated_round: u64,
    carried: bool,
    score: f64,
    eligible: bool,
}

#[derive(Debug, Clone)]
struct NMiner {
    id: u8,
    image: u8,
    time: f64,
    /// Per-miner count of image changes: the naive stand-in for the global generation.
    epoch: u64,
    staged: Option<(u64, f64, bool)>,
    committed: Option<NCommitted>,
}

#[derive(Debug, Default)]
struct Naive {
    round: u64,
    version: u64,
    challenge: Option<u8>,
    miners: Vec<NMiner>,
    /// Per-hotkey change counters; they survive removal, so a re-added miner is a new epoch.
    epochs: [u64; HOTKEYS as usize],
}

impl Naive {
    fn new() -> Naive {
        Naive {
            round: 1,
            ..Naive::default()
        }
    }

    fn miner(&mut self, id: u8) -> Option<&mut NMiner> {
        self.miners.iter_mut().find(|m| m.id == id)
    }

    /// Returns (inserted, image_changed, submit_time_changed, unchanged) or None when over the limit.
    fn upsert(&mut self, batch: &[(u8, u8, f64)]) -> Option<(usize, usize, usize, usize)> {
        let mut last: Vec<(u8, u8, f64)> = Vec::new();
        for &(h, i, t) in batch {
            last.retain(|x| x.0 != h);
            last.push((h, i, t));
        }
        let new = last
            .iter()
            .filter(|x| !self.miners.iter().any(|m| m.id == x.0))
            .count();
        if self.miners.len() + new > LIMIT {
            return None;
        }
        let mut counts = (0, 0, 0, 0);
        let mut bump = false;
        for (h, i, t) in last {
            match self.miners.iter().position(|m| m.id == h) {
                None => {
                    counts.0 += 1;
                    self.epochs[h as usize] += 1;
                    self.miners.push(NMiner {
                        id: h,
                        image: i,
                        time: t,
                        epoch: self.epochs[h as usize],
                        staged: None,
                        committed: None,
                    });
                }
                Some(k) if self.miners[k].image != i => {
                    counts.1 += 1;
                    self.epochs[h as usize] += 1;
                    let m = &mut self.miners[k];
                    bump |= m.committed.is_some();
                    m.image = i;
                    m.time = t;
                    m.epoch = self.epochs[h as usize];
                    m.staged = None;
                    m.committed = None;
                }
                Some(k) if self.miners[k].time != t => {
                    counts.2 += 1;
                    let m = &mut self.miners[k];
                    bump |= m.committed.is_some();
                    m.time = t;
                }
                Some(_) => counts.3 += 1,
            }
        }
        if bump {
            self.version += 1;
        }
        Some(counts)
    }

    fn pending(&self) -> Vec<(u8, u8, f64)> {
        let mut p: Vec<(u8, u8, f64)> = self
            .miners
            .iter()
            .filter(|m| m.staged.is_none() && !m.committed.as_ref().is_some_and(|c| c.carried))
            .map(|m| (m.id, m.image, m.time))
            .collect();
        p.sort_by(|a, b| a.2.total_cmp(&b.2).then(hotkey(a.0).cmp(&hotkey(b.0))));
        p
    }

    /// `Err(())` for infra errors, `Ok(None)` staged, `Ok(Some(code))` discarded.
    fn stage(
        &mut self,
        id: u8,
        epoch: u64,
        round: u64,
        verdict: Verdict,
        score: f64,
    ) -> Result<Option<&'static str>, ()> {
        if verdict == Verdict::InfraError {
            return Err(());
        }
        let current_round = self.round;
        let Some(m) = self.miner(id) else {
            return Ok(Some("miner_gone"));
        };
        if m.epoch != epoch {
            return Ok(Some("stale_generation"));
        }
        if round != current_round {
            return Ok(Some("stale_round"));
        }
        if m.staged.is_some() {
            return Ok(Some("already_staged"));
        }
        if m.committed.as_ref().is_some_and(|c| c.carried) {
            return Ok(Some("not_pending"));
        }
        let eligible = verdict == Verdict::Ok && score > 0.0;
        m.staged = Some((
            m.epoch,
            if verdict == Verdict::Ok { score } else { 0.0 },
            eligible,
        ));
        Ok(None)
    }

    /// Returns (committed, carried, reevaluate_next ids sorted by hotkey).
    fn commit(&mut self, policy: &ReevaluatePolicy) -> Option<(usize, usize, Vec<u8>)> {
        if !self.pending().is_empty() || self.miners.iter().all(|m| m.staged.is_none()) {
            return None;
        }
        let closing = self.round;
        let mut committed = 0;
        for m in &mut self.miners {
            if let Some((epoch, score, eligible)) = m.staged.take() {
                committed += 1;
                m.committed = Some(NCommitted {
                    image: m.image,
                    epoch,
                    evaluated_round: closing,
                    carried: false,
                    score,
                    eligible,
                });
            }
        }
        let mut order: Vec<(u8, f64, f64)> = self
            .miners
            .iter()
            .filter_map(|m| {
                let c = m.committed.as_ref()?;
                c.eligible.then_some((m.id, c.score, m.time))
            })
            .collect();
        order.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(a.2.total_cmp(&b.2))
                .then(hotkey(a.0).cmp(&hotkey(b.0)))
        });
        let (k, max) = match policy {
            ReevaluatePolicy::All => (usize::MAX, 0),
            ReevaluatePolicy::TopK {
                top_k,
                max_carry_rounds,
            } => (top_k.get(), *max_carry_rounds),
        };
        let top: Vec<u8> = order.iter().take(k).map(|x| x.0).collect();
        let mut carried = 0;
        let mut again = Vec::new();
        for m in &mut self.miners {
            if let Some(c) = &mut m.committed {
                c.carried = !matches!(policy, ReevaluatePolicy::All)
                    && !top.contains(&m.id)
                    && closing - c.evaluated_round < max;
                if c.carried {
                    carried += 1;
                } else {
                    again.push(m.id);
                }
            }
        }
        again.sort_by_key(|&id| hotkey(id));
        self.round += 1;
        self.version += 1;
        self.challenge = None;
        Some((committed, carried, again))
    }

    fn remove(&mut self, id: u8) -> usize {
        let Some(k) = self.miners.iter().position(|m| m.id == id) else {
            return 0;
        };
        if self.miners[k].committed.is_some() {
            self.version += 1;
        }
        self.miners.remove(k);
        1
    }

    fn rows(&self) -> Vec<(u8, u8, f64, f64, bool)> {
        let mut rows: Vec<_> = self
            .miners
            .iter()
            .filter_map(|m| {
                let c = m.committed.as_ref()?;
                Some((m.id, m.image, m.time, c.score, c.carried))
            })
            .collect();
        rows.sort_by(|a, b| a.2.total_cmp(&b.2).then(hotkey(a.0).cmp(&hotkey(b.0))));
        rows
    }
}

fn id_of(h: &crate::domain::Hotkey) -> u8 {
    (0..HOTKEYS).find(|&i| hotkey(i) == *h).unwrap_or(u8::MAX)
}

fn book_rows(book: &RoundBook) -> Vec<(u8, u8, f64, f64, bool)> {
    book.metrics_rows()
        .iter()
        .map(|r| {
            let img = (0..3).find(|&i| image(i) == r.image_ref).unwrap_or(u8::MAX);
            (
                id_of(&r.hotkey),
                img,
                r.submit_time,
                r.metrics.final_score,
                r.carried_over,
            )
        })
        .collect()
}

/// Invariants that hold of the book after every operation, whatever the model says.
fn check_book_invariants(book: &RoundBook, policy: &ReevaluatePolicy) -> Result<(), TestCaseError> {
    let round = book.counters().round;
    for m in book.miners() {
        if let Some(c) = &m.committed {
            prop_assert_eq!(c.generation, m.record.generation);
            prop_assert_eq!(c.metrics.image_ref.as_str(), m.record.image_ref.as_str());
            if c.carried {
                let ReevaluatePolicy::TopK { max_carry_rounds, .. } = policy else {
                    return Err(TestCaseError::fail("carried under All"));
                };
                prop_assert!(round - c.evaluated_round <= *max_carry_rounds);
            }
        }
        if let Some(s) = &m.staged {
            prop_assert_eq!(s.generation, m.record.generation);
            prop_assert_eq!(s.round, round);
        }
        prop_assert!(m.record.generation <= book.counters().generation);
    }
    Ok(())
}

proptest! {
    // No regression files: failures print their minimal input instead of writing into the source tree.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn round_book_matches_the_naive_model(
        policy in policy(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut book = RoundBook::new(LIMIT);
        let mut naive = Naive::new();
        // Tickets held by the "engine": the book's ticket plus the naive epoch at issuance.
        let mut held: Vec<(EvaluationTicket, u64)> = Vec::new();
        let times = TIMES;
        let mut now = 0.0;
        for op in ops {
            now += 1.0;
            let version_before = book.counters().metrics_version;
            let rows_before = book.metrics_rows();
            let mut committed = false;
            match op {
                Op::Upsert(batch) => {
                    let subs: Vec<_> = batch.iter().map(|&(h, i, t)| sub(h, i, times[t as usize])).collect();
                    let nb: Vec<_> = batch.iter().map(|&(h, i, t)| (h, i, times[t as usize])).collect();
                    match (book.upsert(&subs, now), naive.upsert(&nb)) {
                        (Ok(r), Some(n)) => {
                            prop_assert_eq!((r.inserted, r.image_changed, r.submit_time_changed, r.unchanged), n);
                            prop_assert_eq!(r.metrics_version, book.counters().metrics_version);
                        }
                        (Err(RoundError::SubmissionLimit { limit, .. }), None) => prop_assert_eq!(limit, LIMIT),
                        (b, n) => return Err(TestCaseError::fail(format!("book {b:?} vs naive {n:?}"))),
                    }
                }
                Op::Take(i) => {
                    let p = book.pending();
                    if !p.is_empty() {
                        let t = p[i % p.len()].clone();
                        let epoch = naive.miners.iter().find(|m| hotkey(m.id) == t.hotkey).map(|m| m.epoch).unwrap_or(0);
                        held.push((t, epoch));
                        if held.len() > 8 {
                            held.remove(0);
                        }
                    }
                }
                Op::Stage { ticket, verdict: v, score } => {
                    if !held.is_empty() {
                        let (t, epoch) = held[ticket % held.len()].clone();
                        let v = verdict(v);
                        let m = metrics(&t, v, SCORES[score]);
                        let current = book.miners().find(|m| m.record.hotkey == t.hotkey).map(|m| m.record.generation);
                        let got = book.stage(&t, m);
                        let want = naive.stage(id_of(&t.hotkey), epoch, t.round, v, SCORES[score]);
                        match (&got, want) {
                            (Err(RoundError::NotCommittable { .. }), Err(())) => {}
                            (Ok(StageOutcome::Staged), Ok(None)) => {
                                // Never stage a stale ticket: same generation and round as now.
                                prop_assert_eq!(Some(t.generation), current);
                                prop_assert_eq!(t.round, book.counters().round);
                            }
                            (Ok(StageOutcome::Discarded { reason }), Ok(Some(code))) => prop_assert_eq!(reason.as_str(), code),
                            (g, w) => return Err(TestCaseError::fail(format!("book {g:?} vs naive {w:?}"))),
                        }
                    }
                }
                Op::Commit => {
                    let complete = book.pending().is_empty() && book.miners().any(|m| m.staged.is_some());
                    let got = book.commit_if_complete(&policy, &rank, now);
                    let want = naive.commit(&policy);
                    prop_assert_eq!(got.is_some(), complete);
                    match (got, want) {
                        (None, None) => {}
                        (Some(c), Some((n_committed, n_carried, again))) => {
                            committed = true;
                            prop_assert_eq!(c.committed, n_committed);
                            prop_assert_eq!(c.carried, n_carried);
                            let ids: Vec<u8> = c.reevaluate_next.iter().map(id_of).collect();
                            prop_assert_eq!(ids, again);
                            prop_assert_eq!(c.metrics_version, version_before + 1);
                            prop_assert_eq!(c.round + 1, book.counters().round);
                            prop_assert_eq!(book.counters().challenge_set_hash.as_deref(), None);
                            if policy == ReevaluatePolicy::All {
                                prop_assert_eq!(book.pending().len(), book.miners().count());
                            }
                        }
                        (g, w) => return Err(TestCaseError::fail(format!("book {g:?} vs naive {w:?}"))),
                    }
                }
                Op::Remove(h) => {
                    prop_assert_eq!(book.remove(&[hotkey(h)]), naive.remove(h));
                }
                Op::SetChallenge(h) => {
                    let hash = format!("set{h}");
                    let got = book.set_challenge_set(&hash);
                    match naive.challenge {
                        Some(c) if c != h => prop_assert!(got.is_err()),
                        _ => {
                            prop_assert!(got.is_ok());
                            naive.challenge = Some(h);
                        }
                    }
                }
            }
            // metrics_version never decreases and moves exactly when /metrics can change.
            let version_after = book.counters().metrics_version;
            prop_assert!(version_after >= version_before);
            if !committed {
                prop_assert_eq!(version_after > version_before, book.metrics_rows() != rows_before);
            }
            prop_assert_eq!(version_after, naive.version);
            prop_assert_eq!(book.counters().round, naive.round);
            let p: Vec<_> = book.pending().iter().map(|t| (id_of(&t.hotkey), (0..3).find(|&i| image(i) == t.image_ref).unwrap_or(9), t.submit_time)).collect();
            prop_assert_eq!(p, naive.pending());
            prop_assert_eq!(book_rows(&book), naive.rows());
            check_book_invariants(&book, &policy)?;
        }
    }
}
