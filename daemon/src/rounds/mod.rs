//! The round state machine (docs/reference.md#rounds with bugs 20, 24 and 26 of docs/reference.md#weaknesses
//! fixed), as pure functions over in-memory records.
//!
//! This module owns the *rules*: what an upsert does to a miner, which miners are pending, whether a
//! result may be staged, when a round commits and who is re-evaluated next. It owns no storage, no clock
//! (`now` is always a parameter) and no I/O: [`crate::store`] reads the affected records, asks the
//! `plan_*` functions here what to do and applies the answer in one LMDB write transaction;
//! [`RoundBook`] applies the same answers to a `BTreeMap` so the rules can be property-tested without
//! LMDB. Ranking is injected (the real ranker lives in `scoring::ranking`).
//!
//! Differences from the reference, on purpose:
//! - every change to a submission's image takes a fresh value from one global `generation` counter, so
//!   a result for an A→B→A sequence is recognised as stale (bug 26);
//! - `infra_error` results are refused, never staged (bug 20);
//! - under [`ReevaluatePolicy::TopK`] miners outside the top K keep their committed metrics unchanged
//!   and visible, and are re-evaluated after at most `max_carry_rounds` rounds (bug 24);
//! - a result is tied to the round (challenge set) it was evaluated in, so a result computed on last
//!   round's challenges is never committed into this round.

mod book;
mod plan;
mod policy;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

pub use book::RoundBook;
pub(crate) use book::{sort_metrics_rows, sort_tickets, submission_order};
pub use plan::{
    ChangeKind, CommitPlan, MinerChange, RemovePlan, StageDecision, UpsertPlan, is_pending,
    plan_challenge_set, plan_commit, plan_remove, plan_stage, plan_upsert,
};
pub use policy::{DEFAULT_MAX_CARRY_ROUNDS, ReevaluatePolicy};

use crate::domain::{EvaluationMetrics, Hotkey, ImageRef, Verdict};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted challenge-set hash, in bytes (a hex SHA-512 is 128).
pub const MAX_CHALLENGE_SET_HASH_LEN: usize = 256;

/// One miner's current submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionRecord {
    /// The miner.
    pub hotkey: Hotkey,
    /// The image to evaluate.
    pub image_ref: ImageRef,
    /// Submission time as sent by the validator; orders `/metrics` and breaks ties.
    pub submit_time: f64,
    /// Value of the global generation counter when this image was accepted. Changes whenever the image
    /// changes (never when only `submit_time` does), so a ticket of an older generation is stale.
    pub generation: u64,
    /// When the daemon first saw this hotkey.
    pub first_seen: f64,
    /// When this record last changed.
    pub updated_at: f64,
}

/// A result waiting for its round to commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedResult {
    /// Generation of the submission the result was computed for.
    pub generation: u64,
    /// Round (challenge set) the result was computed in.
    pub round: u64,
    /// The result itself.
    pub metrics: EvaluationMetrics,
}

/// A committed result: what `/metrics` serves for the miner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedResult {
    /// Generation of the submission the result was computed for.
    pub generation: u64,
    /// Round in which the result was computed and committed.
    pub evaluated_round: u64,
    /// Whether the miner is carried over in the current open round (kept, not re-evaluated).
    pub carried: bool,
    /// The result itself, unchanged since it was staged.
    pub metrics: EvaluationMetrics,
}

/// The small part of a [`CommittedResult`] the rules need outside a commit (cheap to decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedHeader {
    /// See [`CommittedResult::generation`].
    pub generation: u64,
    /// See [`CommittedResult::evaluated_round`].
    pub evaluated_round: u64,
    /// See [`CommittedResult::carried`].
    pub carried: bool,
}

impl CommittedResult {
    /// The header of this result.
    pub fn header(&self) -> CommittedHeader {
        CommittedHeader {
            generation: self.generation,
            evaluated_round: self.evaluated_round,
            carried: self.carried,
        }
    }
}

/// Everything known about one miner (what a commit needs).
#[derive(Debug, Clone, PartialEq)]
pub struct MinerState {
    /// Current submission.
    pub record: SubmissionRecord,
    /// Staged result for the open round, if any.
    pub staged: Option<StagedResult>,
    /// Committed result, if any.
    pub committed: Option<CommittedResult>,
}

impl MinerState {
    /// The light view of this miner.
    pub fn snapshot(&self) -> MinerSnapshot {
        MinerSnapshot {
            record: self.record.clone(),
            staged_generation: self.staged.as_ref().map(|s| s.generation),
            committed: self.committed.as_ref().map(CommittedResult::header),
        }
    }
}

/// One miner without its metrics documents (what upserts, staging and the pending list need).
#[derive(Debug, Clone, PartialEq)]
pub struct MinerSnapshot {
    /// Current submission.
    pub record: SubmissionRecord,
    /// Generation of the staged result, if any.
    pub staged_generation: Option<u64>,
    /// Header of the committed result, if any.
    pub committed: Option<CommittedHeader>,
}

/// Round-level counters and identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundCounters {
    /// Number of the open round (1 for the first).
    pub round: u64,
    /// ETag counter of `/metrics`: bumped whenever its content can change.
    pub metrics_version: u64,
    /// Last generation handed out (global, monotonic).
    pub generation: u64,
    /// Hash of the open round's challenge set, once the engine has fetched it.
    pub challenge_set_hash: Option<String>,
    /// Unix time of the last commit.
    pub last_commit_at: Option<f64>,
}

impl Default for RoundCounters {
    fn default() -> Self {
        RoundCounters {
            round: 1,
            metrics_version: 0,
            generation: 0,
            challenge_set_hash: None,
            last_commit_at: None,
        }
    }
}

/// What the engine needs to evaluate one pending miner, and to hand the result back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationTicket {
    /// The miner.
    pub hotkey: Hotkey,
    /// The image to evaluate.
    pub image_ref: ImageRef,
    /// Generation of the submission when the ticket was issued.
    pub generation: u64,
    /// Submission time when the ticket was issued.
    pub submit_time: f64,
    /// Round the ticket belongs to: its result is only accepted in that round.
    pub round: u64,
}

/// Result of [`plan_upsert`] / `upsert_submissions`, counted over distinct hotkeys of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpsertReport {
    /// New hotkeys.
    pub inserted: usize,
    /// Hotkeys whose image changed (results dropped, re-evaluated).
    pub image_changed: usize,
    /// Hotkeys whose only change was `submit_time` (results kept).
    pub submit_time_changed: usize,
    /// Hotkeys that did not change.
    pub unchanged: usize,
    /// `metrics_version` after the batch.
    pub metrics_version: u64,
}

/// Outcome of staging a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StageOutcome {
    /// Stored; it commits with the round.
    Staged,
    /// Thrown away; the ticket no longer describes what should be evaluated.
    Discarded {
        /// Why.
        reason: DiscardReason,
    },
}

/// Why a result was discarded instead of staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DiscardReason {
    /// The hotkey has no submission any more.
    MinerGone,
    /// The submission changed (image, possibly back to the same one) after the ticket was issued.
    StaleGeneration {
        /// Generation in the ticket.
        ticket: u64,
        /// Current generation.
        current: u64,
    },
    /// The ticket belongs to an earlier round: the result was computed on another challenge set.
    StaleRound {
        /// Round in the ticket.
        ticket: u64,
        /// Open round.
        current: u64,
    },
    /// The ticket's image is not the submission's image (a forged or corrupted ticket).
    ImageMismatch,
    /// A result for this generation is already staged; the first one stands (no re-rolls).
    AlreadyStaged,
    /// The miner is carried over this round and is not being evaluated.
    NotPending,
}

impl DiscardReason {
    /// Stable snake_case code (logs, API).
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::MinerGone => "miner_gone",
            DiscardReason::StaleGeneration { .. } => "stale_generation",
            DiscardReason::StaleRound { .. } => "stale_round",
            DiscardReason::ImageMismatch => "image_mismatch",
            DiscardReason::AlreadyStaged => "already_staged",
            DiscardReason::NotPending => "not_pending",
        }
    }
}

impl fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscardReason::StaleGeneration { ticket, current } => {
                write!(f, "stale_generation (ticket {ticket}, current {current})")
            }
            DiscardReason::StaleRound { ticket, current } => {
                write!(f, "stale_round (ticket {ticket}, current {current})")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// What a round commit did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundCommit {
    /// The round that was committed (the next open round is `round + 1`).
    pub round: u64,
    /// `metrics_version` after the commit.
    pub metrics_version: u64,
    /// Staged results moved to committed.
    pub committed: usize,
    /// Miners carried over into the next round (metrics kept, not re-evaluated).
    pub carried: usize,
    /// Miners with committed metrics that the policy sends back for evaluation next round (top K plus
    /// expired carries; everyone under `All`), in hotkey order. Miners without metrics are pending anyway.
    pub reevaluate_next: Vec<Hotkey>,
}

/// One row of `GET /metrics`. `M` is the committed metrics: decoded ([`EvaluationMetrics`], for the
/// rules and the admin plane) or the stored JSON text itself (for serving `/metrics` without decoding
/// and re-encoding megabytes of numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow<M = EvaluationMetrics> {
    /// The miner.
    pub hotkey: Hotkey,
    /// Its current image (always the one the metrics were computed for).
    pub image_ref: ImageRef,
    /// Its current submission time.
    pub submit_time: f64,
    /// The committed metrics, unchanged.
    pub metrics: M,
    /// True when the miner is carried over this round (metrics from an earlier round, not re-evaluated).
    pub carried_over: bool,
}

/// The inputs of the injected ranker, one per miner with committed metrics: the scoring core's
/// candidate type, so the round rules and the winner selection rank exactly the same thing.
pub type RankInput<'a> = crate::scoring::RankCandidate<'a>;

/// The ranking inputs of one miner's committed metrics.
pub fn rank_input<'a>(hotkey: &'a Hotkey, submit_time: f64, m: &EvaluationMetrics) -> RankInput<'a> {
    RankInput {
        hotkey: hotkey.as_str(),
        final_score: m.final_score,
        mean_time: m.efficiency.inference_time_sec,
        mean_vram: m.efficiency.peak_vram_gb,
        submit_time,
        eligible: is_eligible(m),
    }
}

/// The production ranker for [`crate::store::Store::commit_round_if_complete`]: the scoring core's
/// tie-break order with the configured epsilon.
pub fn ranker(tie_epsilon: f64) -> impl Fn(&[RankInput<'_>]) -> Vec<usize> {
    move |inputs| crate::scoring::rank(inputs, tie_epsilon)
}

/// Whether committed metrics may win: verdict ok, no error, finite `final_score` > 0.
pub fn is_eligible(m: &EvaluationMetrics) -> bool {
    m.verdict == Verdict::Ok && m.error.is_none() && m.final_score.is_finite() && m.final_score > 0.0
}

/// Refusals of the round rules (the caller did something the rules forbid).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoundError {
    /// An `infra_error` result is the host's fault: it is never staged, the engine retries.
    #[error("result with verdict {verdict} is not committable; retry the evaluation")]
    NotCommittable {
        /// The refused verdict.
        verdict: Verdict,
    },
    /// Applying the batch would track more distinct hotkeys than allowed.
    #[error("batch would exceed the limit of {limit} submissions ({would_have} distinct hotkeys)")]
    SubmissionLimit {
        /// Configured limit.
        limit: usize,
        /// Distinct hotkeys after the batch.
        would_have: usize,
    },
    /// The open round already has a different challenge set.
    #[error(
        "round {round} already uses challenge set {current}; refusing {requested} (every miner of a round must see the same set)"
    )]
    ChallengeSetMismatch {
        /// Open round.
        round: u64,
        /// Hash already set.
        current: String,
        /// Hash refused.
        requested: String,
    },
    /// The challenge-set hash is empty or too long.
    #[error("challenge-set hash must be 1..={MAX_CHALLENGE_SET_HASH_LEN} printable ASCII bytes")]
    InvalidChallengeSetHash,
}

impl RoundError {
    /// Stable snake_case code for the API layer.
    pub fn reason(&self) -> &'static str {
        match self {
            RoundError::NotCommittable { .. } => "result_not_committable",
            RoundError::SubmissionLimit { .. } => "submission_limit",
            RoundError::ChallengeSetMismatch { .. } => "challenge_set_mismatch",
            RoundError::InvalidChallengeSetHash => "invalid_challenge_set_hash",
        }
    }
}
