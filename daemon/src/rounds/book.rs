//! [`RoundBook`]: the round state held in memory, applying the `plan_*` decisions to a `BTreeMap`.
//!
//! It is the executable reference of what [`crate::store::Store`] does on LMDB (both apply the same
//! plans), used by property tests and usable wherever persistence is not wanted. No I/O, no clock.

use super::{
    EvaluationTicket, MetricsRow, MinerState, RankInput, ReevaluatePolicy, RoundCommit, RoundCounters,
    RoundError, StageDecision, StageOutcome, UpsertReport, is_pending, plan_challenge_set, plan_commit,
    plan_remove, plan_stage, plan_upsert,
};
use crate::domain::{EvaluationMetrics, Hotkey, Submission};
use std::collections::BTreeMap;

/// Round state in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundBook {
    counters: RoundCounters,
    miners: BTreeMap<Hotkey, MinerState>,
    max_submissions: usize,
}

impl RoundBook {
    /// An empty book (round 1) tracking at most `max_submissions` hotkeys.
    pub fn new(max_submissions: usize) -> RoundBook {
        RoundBook {
            counters: RoundCounters::default(),
            miners: BTreeMap::new(),
            max_submissions,
        }
    }

    /// Round counters and identity.
    pub fn counters(&self) -> &RoundCounters {
        &self.counters
    }

    /// Every miner, in hotkey order.
    pub fn miners(&self) -> impl Iterator<Item = &MinerState> {
        self.miners.values()
    }

    /// Apply a batch of submissions (see [`plan_upsert`]).
    pub fn upsert(&mut self, batch: &[Submission], now: f64) -> Result<UpsertReport, RoundError> {
        let existing = batch
            .iter()
            .filter_map(|s| self.miners.get(&s.hotkey))
            .map(|m| (m.record.hotkey.clone(), m.snapshot()))
            .collect();
        let plan = plan_upsert(
            &self.counters,
            batch,
            &existing,
            self.miners.len(),
            self.max_submissions,
            now,
        )?;
        for change in plan.changes {
            let hotkey = change.record.hotkey.clone();
            let entry = self.miners.entry(hotkey).or_insert_with(|| MinerState {
                record: change.record.clone(),
                staged: None,
                committed: None,
            });
            entry.record = change.record;
            if change.drop_staged {
                entry.staged = None;
            }
            if change.drop_committed {
                entry.committed = None;
            }
        }
        self.counters.generation = plan.generation;
        self.counters.metrics_version = plan.metrics_version;
        Ok(plan.report)
    }

    /// Remove miners with their results (see [`plan_remove`]); returns how many existed.
    pub fn remove(&mut self, hotkeys: &[Hotkey]) -> usize {
        let existing = hotkeys
            .iter()
            .filter_map(|h| self.miners.get(h))
            .map(|m| (m.record.hotkey.clone(), m.snapshot()))
            .collect();
        let plan = plan_remove(&self.counters, hotkeys, &existing);
        for h in &plan.removed {
            self.miners.remove(h);
        }
        self.counters.metrics_version = plan.metrics_version;
        plan.removed.len()
    }

    /// Tickets of every pending miner, sorted by (submit_time, hotkey).
    pub fn pending(&self) -> Vec<EvaluationTicket> {
        let mut out: Vec<EvaluationTicket> = self
            .miners
            .values()
            .filter(|m| is_pending(&m.snapshot()))
            .map(|m| EvaluationTicket {
                hotkey: m.record.hotkey.clone(),
                image_ref: m.record.image_ref.clone(),
                generation: m.record.generation,
                submit_time: m.record.submit_time,
                round: self.counters.round,
            })
            .collect();
        sort_tickets(&mut out);
        out
    }

    /// Stage a result (see [`plan_stage`]).
    pub fn stage(
        &mut self,
        ticket: &EvaluationTicket,
        metrics: EvaluationMetrics,
    ) -> Result<StageOutcome, RoundError> {
        let snapshot = self.miners.get(&ticket.hotkey).map(MinerState::snapshot);
        match plan_stage(&self.counters, snapshot.as_ref(), ticket, metrics)? {
            StageDecision::Discard(reason) => Ok(StageOutcome::Discarded { reason }),
            StageDecision::Stage(staged) => {
                if let Some(m) = self.miners.get_mut(&ticket.hotkey) {
                    m.staged = Some(*staged);
                }
                Ok(StageOutcome::Staged)
            }
        }
    }

    /// Commit the open round if it is complete (see [`plan_commit`]).
    pub fn commit_if_complete(
        &mut self,
        policy: &ReevaluatePolicy,
        rank: &dyn Fn(&[RankInput<'_>]) -> Vec<usize>,
        now: f64,
    ) -> Option<RoundCommit> {
        let miners: Vec<MinerState> = self.miners.values().cloned().collect();
        let plan = plan_commit(&self.counters, &miners, policy, rank, now)?;
        for hotkey in &plan.clear_staged {
            if let Some(m) = self.miners.get_mut(hotkey) {
                m.staged = None;
            }
        }
        for (hotkey, result) in plan.put_committed {
            if let Some(m) = self.miners.get_mut(&hotkey) {
                m.committed = Some(result);
            }
        }
        self.counters = plan.counters;
        Some(plan.commit)
    }

    /// Set the open round's challenge-set hash (see [`plan_challenge_set`]).
    pub fn set_challenge_set(&mut self, hash: &str) -> Result<(), RoundError> {
        if let Some(h) = plan_challenge_set(&self.counters, hash)? {
            self.counters.challenge_set_hash = Some(h);
        }
        Ok(())
    }

    /// What `GET /metrics` serves: miners with committed metrics, sorted by (submit_time, hotkey).
    pub fn metrics_rows(&self) -> Vec<MetricsRow> {
        let mut rows: Vec<MetricsRow> = self
            .miners
            .values()
            .filter_map(|m| {
                let c = m.committed.as_ref()?;
                Some(MetricsRow {
                    hotkey: m.record.hotkey.clone(),
                    image_ref: m.record.image_ref.clone(),
                    submit_time: m.record.submit_time,
                    metrics: c.metrics.clone(),
                    carried_over: c.carried,
                })
            })
            .collect();
        sort_metrics_rows(&mut rows);
        rows
    }
}

/// The `/metrics` order: (submit_time, hotkey).
pub(crate) fn sort_metrics_rows<M>(rows: &mut [MetricsRow<M>]) {
    rows.sort_by(|a, b| submission_order((a.submit_time, &a.hotkey), (b.submit_time, &b.hotkey)));
}

/// The one order of submissions everywhere (pending tickets, `/metrics` rows): earlier `submit_time`
/// first, then the hotkey's address.
pub(crate) fn submission_order<K: Ord + ?Sized>(a: (f64, &K), b: (f64, &K)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// The pending order: (submit_time, hotkey).
pub(crate) fn sort_tickets(tickets: &mut [EvaluationTicket]) {
    tickets.sort_by(|a, b| submission_order((a.submit_time, &a.hotkey), (b.submit_time, &b.hotkey)));
}
