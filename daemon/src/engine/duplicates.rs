//! `evaluation.duplicates`: what a submission gets when another hotkey submitted the same image digest
//! earlier (the reference scored copies of one image as many times as it was submitted). Pure: the
//! evaluation loop applies the answer.
//!
//! The original of a digest is the submission with the earliest `(submit_time, hotkey)` among every
//! tracked miner; only the original is ever run.

use crate::config::DuplicatePolicy;
use crate::domain::{EvaluationMetrics, Hotkey, Verdict};
use crate::rounds::EvaluationTicket;
use crate::store::MinerView;

/// What to do with one ready ticket.
#[derive(Debug, Clone, PartialEq)]
pub enum DuplicateAction {
    /// Not a duplicate (or the original itself): evaluate it.
    Run,
    /// `first_wins`: stage these metrics (verdict `duplicate`) without running anything.
    Reject(Box<EvaluationMetrics>),
    /// `share`: stage a copy of the original's result for this round.
    Copy(Box<EvaluationMetrics>),
    /// `share`: the original has no result for this round yet; look again later.
    Wait {
        /// The original.
        original: Hotkey,
    },
}

/// Decide for `ticket` given every tracked miner; `now` stamps a rejection.
pub fn plan(
    policy: DuplicatePolicy,
    miners: &[MinerView],
    ticket: &EvaluationTicket,
    scoring_count: u32,
    now: f64,
) -> DuplicateAction {
    let digest = ticket.image_ref.digest();
    let original = miners
        .iter()
        .filter(|m| m.state.record.image_ref.digest() == digest)
        .min_by(|a, b| {
            let (a, b) = (&a.state.record, &b.state.record);
            a.submit_time
                .total_cmp(&b.submit_time)
                .then_with(|| a.hotkey.cmp(&b.hotkey))
        });
    let Some(original) = original.filter(|o| o.state.record.hotkey != ticket.hotkey) else {
        return DuplicateAction::Run;
    };
    let original_key = original.state.record.hotkey.clone();
    match policy {
        DuplicatePolicy::FirstWins => {
            let mut m = EvaluationMetrics::failed(
                Verdict::Duplicate,
                format!("the same image digest was submitted earlier by {original_key}"),
                ticket.image_ref.as_str(),
                ticket.submit_time,
                now,
                scoring_count,
            );
            m.round = ticket.round;
            DuplicateAction::Reject(Box::new(m))
        }
        DuplicatePolicy::Share => {
            let generation = original.state.record.generation;
            // This round's staged result, or a result carried over unchanged (top_k policy).
            let source = original
                .state
                .staged
                .as_ref()
                .filter(|s| s.generation == generation && s.round == ticket.round)
                .map(|s| &s.metrics)
                .or_else(|| {
                    original
                        .state
                        .committed
                        .as_ref()
                        .filter(|c| c.carried && c.generation == generation && !original.pending)
                        .map(|c| &c.metrics)
                });
            match source {
                Some(metrics) => {
                    let mut copy = metrics.clone();
                    copy.image_ref = ticket.image_ref.as_str().to_owned();
                    copy.submit_time = ticket.submit_time;
                    copy.round = ticket.round;
                    copy.duplicate_of = Some(original_key.to_string());
                    DuplicateAction::Copy(Box::new(copy))
                }
                None => DuplicateAction::Wait {
                    original: original_key,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageRef;
    use crate::rounds::{MinerState, StagedResult, SubmissionRecord};

    fn key(i: u8) -> Hotkey {
        Hotkey::from_public_key([i; 32])
    }

    fn image(d: char) -> ImageRef {
        ImageRef::parse(&format!("r.example/m@sha256:{}", d.to_string().repeat(64))).unwrap()
    }

    fn miner(i: u8, d: char, submit_time: f64, staged_score: Option<f64>) -> MinerView {
        let record = SubmissionRecord {
            hotkey: key(i),
            image_ref: image(d),
            submit_time,
            generation: u64::from(i),
            first_seen: submit_time,
            updated_at: submit_time,
        };
        let staged = staged_score.map(|score| {
            let mut metrics =
                EvaluationMetrics::failed(Verdict::Ok, "", record.image_ref.as_str(), submit_time, 0.0, 5);
            metrics.error = None;
            metrics.final_score = score;
            StagedResult {
                generation: record.generation,
                round: 1,
                metrics,
            }
        });
        MinerView {
            pending: staged.is_none(),
            state: MinerState {
                record,
                staged,
                committed: None,
            },
        }
    }

    fn ticket(m: &MinerView) -> EvaluationTicket {
        EvaluationTicket {
            hotkey: m.state.record.hotkey.clone(),
            image_ref: m.state.record.image_ref.clone(),
            generation: m.state.record.generation,
            submit_time: m.state.record.submit_time,
            round: 1,
        }
    }

    #[test]
    fn distinct_digests_and_the_original_run() {
        let miners = vec![miner(1, 'a', 10.0, None), miner(2, 'b', 5.0, None)];
        for m in &miners {
            assert_eq!(
                plan(DuplicatePolicy::FirstWins, &miners, &ticket(m), 5, 0.0),
                DuplicateAction::Run
            );
        }
    }

    #[test]
    fn first_wins_rejects_every_later_copy_naming_the_original() {
        let miners = vec![
            miner(1, 'a', 10.0, None),
            miner(2, 'a', 5.0, None),
            miner(3, 'a', 5.0, None),
        ];
        // Earliest submit_time wins; the hotkey breaks the tie (key(2) < key(3)).
        assert_eq!(
            plan(DuplicatePolicy::FirstWins, &miners, &ticket(&miners[1]), 5, 0.0),
            DuplicateAction::Run
        );
        for later in [&miners[0], &miners[2]] {
            match plan(DuplicatePolicy::FirstWins, &miners, &ticket(later), 5, 7.0) {
                DuplicateAction::Reject(m) => {
                    assert_eq!(m.verdict, Verdict::Duplicate);
                    assert_eq!(m.final_score, 0.0);
                    assert!(m.error.as_deref().unwrap().contains(&key(2).to_string()));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn share_waits_for_the_original_then_copies_its_result() {
        let waiting = vec![miner(1, 'a', 1.0, None), miner(2, 'a', 2.0, None)];
        assert_eq!(
            plan(DuplicatePolicy::Share, &waiting, &ticket(&waiting[1]), 5, 0.0),
            DuplicateAction::Wait { original: key(1) }
        );
        let done = vec![miner(1, 'a', 1.0, Some(0.7)), miner(2, 'a', 2.0, None)];
        match plan(DuplicatePolicy::Share, &done, &ticket(&done[1]), 5, 0.0) {
            DuplicateAction::Copy(m) => {
                assert_eq!(m.final_score, 0.7);
                assert_eq!(m.duplicate_of.as_deref(), Some(key(1).to_string().as_str()));
                assert_eq!(m.submit_time, 2.0);
            }
            other => panic!("{other:?}"),
        }
    }
}
