//! The decisions of the round state machine: given the records an operation touches, say exactly what
//! to write. Every function is pure and total (no panics, no clock, no I/O); applying the returned plan
//! is the caller's job ([`crate::store`] in one LMDB write transaction, [`super::RoundBook`] in memory).

use super::{
    CommittedResult, DiscardReason, EvaluationTicket, MAX_CHALLENGE_SET_HASH_LEN, MinerSnapshot, MinerState,
    RankInput, ReevaluatePolicy, RoundCommit, RoundCounters, RoundError, StagedResult, SubmissionRecord,
    UpsertReport,
};
use crate::domain::{EvaluationMetrics, Hotkey, Submission};
use std::collections::{BTreeMap, BTreeSet};

/// What an upsert did to one miner (unchanged miners produce no [`MinerChange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// New hotkey.
    Inserted,
    /// New image: new generation, results dropped.
    ImageChanged,
    /// Same image, new `submit_time`: generation and results kept.
    SubmitTimeChanged,
}

/// One record to write for an upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerChange {
    /// What changed.
    pub kind: ChangeKind,
    /// The record to store.
    pub record: SubmissionRecord,
    /// Delete the miner's staged result.
    pub drop_staged: bool,
    /// Delete the miner's committed result.
    pub drop_committed: bool,
}

/// Everything an upsert writes.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsertPlan {
    /// Changed miners, in hotkey order.
    pub changes: Vec<MinerChange>,
    /// Counts for the caller.
    pub report: UpsertReport,
    /// New value of the generation counter.
    pub generation: u64,
    /// New value of `metrics_version`.
    pub metrics_version: u64,
}

/// Decide what a batch of submissions changes.
///
/// `existing` must hold every hotkey of the batch that already has a submission; `total_submissions` is
/// the number of submissions stored before the batch. Duplicated hotkeys: the last one wins (the batch is
/// one snapshot, so A→B→A inside one batch is no change at all). If the batch would make the number of
/// distinct hotkeys exceed `max_submissions`, nothing is planned.
pub fn plan_upsert(
    counters: &RoundCounters,
    batch: &[Submission],
    existing: &BTreeMap<Hotkey, MinerSnapshot>,
    total_submissions: usize,
    max_submissions: usize,
    now: f64,
) -> Result<UpsertPlan, RoundError> {
    let mut last: BTreeMap<&Hotkey, &Submission> = BTreeMap::new();
    for s in batch {
        last.insert(&s.hotkey, s);
    }
    let new_hotkeys = last.keys().filter(|h| !existing.contains_key(**h)).count();
    let would_have = total_submissions.saturating_add(new_hotkeys);
    if would_have > max_submissions {
        return Err(RoundError::SubmissionLimit {
            limit: max_submissions,
            would_have,
        });
    }

    let mut generation = counters.generation;
    let mut report = UpsertReport::default();
    let mut metrics_changed = false;
    let mut changes = Vec::new();
    for (hotkey, sub) in last {
        match existing.get(hotkey) {
            None => {
                generation = generation.saturating_add(1);
                report.inserted += 1;
                changes.push(MinerChange {
                    kind: ChangeKind::Inserted,
                    record: SubmissionRecord {
                        hotkey: hotkey.clone(),
                        image_ref: sub.image_ref.clone(),
                        submit_time: sub.submit_time,
                        generation,
                        first_seen: now,
                        updated_at: now,
                    },
                    drop_staged: false,
                    drop_committed: false,
                });
            }
            Some(old) if old.record.image_ref != sub.image_ref => {
                generation = generation.saturating_add(1);
                report.image_changed += 1;
                // The miner leaves /metrics until its next committed round, as in the reference.
                metrics_changed |= old.committed.is_some();
                changes.push(MinerChange {
                    kind: ChangeKind::ImageChanged,
                    record: SubmissionRecord {
                        image_ref: sub.image_ref.clone(),
                        submit_time: sub.submit_time,
                        generation,
                        updated_at: now,
                        ..old.record.clone()
                    },
                    drop_staged: old.staged_generation.is_some(),
                    drop_committed: old.committed.is_some(),
                });
            }
            // Bit equality: exact identity, and a NaN never reads as "changed" forever.
            Some(old) if old.record.submit_time.to_bits() != sub.submit_time.to_bits() => {
                report.submit_time_changed += 1;
                // The evaluation stays valid (same image, same generation); only the row's
                // submit_time moves, which /metrics shows.
                metrics_changed |= old.committed.is_some();
                changes.push(MinerChange {
                    kind: ChangeKind::SubmitTimeChanged,
                    record: SubmissionRecord {
                        submit_time: sub.submit_time,
                        updated_at: now,
                        ..old.record.clone()
                    },
                    drop_staged: false,
                    drop_committed: false,
                });
            }
            Some(_) => report.unchanged += 1,
        }
    }
    let metrics_version = if metrics_changed {
        counters.metrics_version.saturating_add(1)
    } else {
        counters.metrics_version
    };
    report.metrics_version = metrics_version;
    Ok(UpsertPlan {
        changes,
        report,
        generation,
        metrics_version,
    })
}

/// Everything a removal writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RemovePlan {
    /// Miners to delete with their staged and committed results (only those that exist), in order.
    pub removed: Vec<Hotkey>,
    /// New value of `metrics_version`.
    pub metrics_version: u64,
}

/// Decide what removing `hotkeys` (deregistered or abandoned miners) changes. `existing` must hold every
/// listed hotkey that has a submission; unknown hotkeys are ignored. The version is bumped when a
/// removed miner had committed metrics (its row leaves `/metrics`). A later re-submission gets a fresh
/// generation, so tickets issued before the removal stay stale.
pub fn plan_remove(
    counters: &RoundCounters,
    hotkeys: &[Hotkey],
    existing: &BTreeMap<Hotkey, MinerSnapshot>,
) -> RemovePlan {
    let targets: BTreeSet<&Hotkey> = hotkeys.iter().filter(|h| existing.contains_key(*h)).collect();
    let metrics_changed = targets
        .iter()
        .any(|h| existing.get(*h).is_some_and(|m| m.committed.is_some()));
    RemovePlan {
        removed: targets.into_iter().cloned().collect(),
        metrics_version: if metrics_changed {
            counters.metrics_version.saturating_add(1)
        } else {
            counters.metrics_version
        },
    }
}

/// Whether the miner's committed result is carried over in the open round (valid for its generation).
fn carried_now(s: &MinerSnapshot) -> bool {
    s.committed
        .is_some_and(|c| c.carried && c.generation == s.record.generation)
}

/// Pending: the current generation has no staged result and the policy does not carry the miner over.
pub fn is_pending(s: &MinerSnapshot) -> bool {
    s.staged_generation != Some(s.record.generation) && !carried_now(s)
}

/// Whether to stage a result, or why not.
#[derive(Debug, Clone, PartialEq)]
pub enum StageDecision {
    /// Store this staged result (boxed: it carries the whole metrics document).
    Stage(Box<StagedResult>),
    /// Throw the result away.
    Discard(DiscardReason),
}

/// Decide whether a result for `ticket` may be staged.
///
/// `miner` is the ticket hotkey's current state, `None` if it has no submission. An `infra_error`
/// result is refused with [`RoundError::NotCommittable`] whatever the ticket: the engine retries it.
pub fn plan_stage(
    counters: &RoundCounters,
    miner: Option<&MinerSnapshot>,
    ticket: &EvaluationTicket,
    metrics: EvaluationMetrics,
) -> Result<StageDecision, RoundError> {
    if !metrics.verdict.is_committable() {
        return Err(RoundError::NotCommittable {
            verdict: metrics.verdict,
        });
    }
    let Some(miner) = miner else {
        return Ok(StageDecision::Discard(DiscardReason::MinerGone));
    };
    let reason = if ticket.generation != miner.record.generation {
        Some(DiscardReason::StaleGeneration {
            ticket: ticket.generation,
            current: miner.record.generation,
        })
    } else if ticket.round != counters.round {
        Some(DiscardReason::StaleRound {
            ticket: ticket.round,
            current: counters.round,
        })
    } else if ticket.image_ref != miner.record.image_ref {
        Some(DiscardReason::ImageMismatch)
    } else if miner.staged_generation == Some(miner.record.generation) {
        Some(DiscardReason::AlreadyStaged)
    } else if carried_now(miner) {
        Some(DiscardReason::NotPending)
    } else {
        None
    };
    Ok(match reason {
        Some(r) => StageDecision::Discard(r),
        None => StageDecision::Stage(Box::new(StagedResult {
            generation: ticket.generation,
            round: counters.round,
            metrics,
        })),
    })
}

/// Everything a commit writes.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitPlan {
    /// Summary for the caller.
    pub commit: RoundCommit,
    /// Counters of the next open round.
    pub counters: RoundCounters,
    /// Committed results to write: every newly committed miner, plus carried miners whose carry flag
    /// changed. Others are untouched (incremental writes).
    pub put_committed: Vec<(Hotkey, CommittedResult)>,
    /// Staged results to delete (all of them: they are now committed).
    pub clear_staged: Vec<Hotkey>,
}

/// Decide whether the open round commits and what the next round re-evaluates.
///
/// `miners` must be every miner. Returns `None` unless no miner is pending and at least one result is
/// staged. `rank` orders the [`RankInput`]s it is given (best first, as indexes into its argument);
/// out-of-range and repeated indexes are ignored, and unranked miners are not in the top K.
pub fn plan_commit(
    counters: &RoundCounters,
    miners: &[MinerState],
    policy: &ReevaluatePolicy,
    rank: &dyn Fn(&[RankInput<'_>]) -> Vec<usize>,
    now: f64,
) -> Option<CommitPlan> {
    if miners.iter().any(|m| is_pending(&m.snapshot())) {
        return None;
    }
    let staged_count = miners
        .iter()
        .filter(|m| {
            m.staged
                .as_ref()
                .is_some_and(|s| s.generation == m.record.generation)
        })
        .count();
    if staged_count == 0 {
        return None;
    }
    let closing = counters.round;

    // The committed view after the commit: staged results replace, carried ones stay. Not pending and
    // not staged means carried, so every miner has a result here unless it has none at all.
    let mut after: Vec<(&SubmissionRecord, CommittedResult, bool)> = Vec::new();
    for m in miners {
        match (&m.staged, &m.committed) {
            (Some(s), _) if s.generation == m.record.generation => after.push((
                &m.record,
                CommittedResult {
                    generation: s.generation,
                    evaluated_round: closing,
                    carried: false,
                    metrics: s.metrics.clone(),
                },
                true,
            )),
            (_, Some(c)) if c.generation == m.record.generation => {
                after.push((&m.record, c.clone(), false));
            }
            _ => {}
        }
    }
    after.sort_by(|a, b| a.0.hotkey.cmp(&b.0.hotkey));

    let top: BTreeSet<usize> = match policy {
        ReevaluatePolicy::All => BTreeSet::new(),
        ReevaluatePolicy::TopK { top_k, .. } => {
            let inputs: Vec<RankInput<'_>> = after
                .iter()
                .map(|(r, c, _)| super::rank_input(&r.hotkey, r.submit_time, &c.metrics))
                .collect();
            let mut seen = BTreeSet::new();
            rank(&inputs)
                .into_iter()
                .filter(|&i| i < inputs.len() && inputs[i].eligible && seen.insert(i))
                .take(top_k.get())
                .collect()
        }
    };

    let mut put_committed = Vec::new();
    let mut carried = 0;
    let mut reevaluate_next = Vec::new();
    for (i, (record, mut result, fresh)) in after.into_iter().enumerate() {
        let carry = match policy {
            ReevaluatePolicy::All => false,
            ReevaluatePolicy::TopK { max_carry_rounds, .. } => {
                // Age of the result at the close of this round; carrying it makes it one round older.
                let age = closing.saturating_sub(result.evaluated_round);
                !top.contains(&i) && age < *max_carry_rounds
            }
        };
        if carry {
            carried += 1;
        } else {
            reevaluate_next.push(record.hotkey.clone());
        }
        if fresh || result.carried != carry {
            result.carried = carry;
            put_committed.push((record.hotkey.clone(), result));
        }
    }

    let clear_staged = miners
        .iter()
        .filter(|m| m.staged.is_some())
        .map(|m| m.record.hotkey.clone())
        .collect();
    let next = RoundCounters {
        round: closing.saturating_add(1),
        metrics_version: counters.metrics_version.saturating_add(1),
        generation: counters.generation,
        challenge_set_hash: None,
        last_commit_at: Some(now),
    };
    Some(CommitPlan {
        commit: RoundCommit {
            round: closing,
            metrics_version: next.metrics_version,
            committed: staged_count,
            carried,
            reevaluate_next,
        },
        counters: next,
        put_committed,
        clear_staged,
    })
}

/// Decide the open round's challenge-set hash: `Ok(Some(h))` to store, `Ok(None)` when it is already
/// set to the same value, an error when another set is in use or the hash is malformed.
pub fn plan_challenge_set(counters: &RoundCounters, hash: &str) -> Result<Option<String>, RoundError> {
    if hash.is_empty()
        || hash.len() > MAX_CHALLENGE_SET_HASH_LEN
        || !hash.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RoundError::InvalidChallengeSetHash);
    }
    match &counters.challenge_set_hash {
        None => Ok(Some(hash.to_owned())),
        Some(current) if current == hash => Ok(None),
        Some(current) => Err(RoundError::ChallengeSetMismatch {
            round: counters.round,
            current: current.clone(),
            requested: hash.to_owned(),
        }),
    }
}
