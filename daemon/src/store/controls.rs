//! Operator controls that must survive a restart (the `controls` table), and the read-only views the
//! admin plane shows (miners with their staged and committed results, runs across miners).
//!
//! Keys of `controls`: `block/hotkey/<ss58>` and `block/digest/sha256:<hex>` → JSON [`BlockRecord`].
//! Blocking decides nothing by itself: the evaluation loop asks [`Store::blocking_rule`] before it runs
//! a submission and stages `image_rejected` for a blocked one.

use super::tables::{CONTROLS, RUNS, STAGED, SUBMISSIONS};
use super::{RunRecord, Store, StoreError};
use crate::domain::{Hotkey, ImageRef};
use crate::rounds::{MinerState, is_pending};
use serde::{Deserialize, Serialize};

/// What a block applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum BlockTarget {
    /// Every submission of this hotkey.
    Hotkey(Hotkey),
    /// Every submission of an image with this digest (`sha256:<64 hex>`), whoever submits it.
    Digest(String),
}

impl BlockTarget {
    /// Parse what an operator typed: an SS58 hotkey or an image digest.
    pub fn parse(text: &str) -> Result<BlockTarget, String> {
        let text = text.trim();
        if let Some(hex) = text.strip_prefix("sha256:") {
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Ok(BlockTarget::Digest(text.to_owned()));
            }
            return Err(format!(
                "'{text}' is not a digest: expected sha256: and 64 lowercase hex digits"
            ));
        }
        Hotkey::parse(text)
            .map(BlockTarget::Hotkey)
            .map_err(|e| format!("'{text}' is neither an image digest (sha256:…) nor a valid hotkey: {e}"))
    }

    fn key(&self) -> String {
        match self {
            BlockTarget::Hotkey(h) => format!("block/hotkey/{}", h.as_str()),
            BlockTarget::Digest(d) => format!("block/digest/{d}"),
        }
    }
}

/// One persisted block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// What is blocked.
    pub target: BlockTarget,
    /// Why (operator's words; shown as the `image_rejected` reason).
    pub reason: String,
    /// Unix time it was set.
    pub since: f64,
}

/// A miner as the admin plane shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerView {
    /// Submission, staged and committed results.
    pub state: MinerState,
    /// Waiting for evaluation in the open round.
    pub pending: bool,
}

/// Result of [`Store::reevaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReevaluateOutcome {
    /// Its staged result was dropped: it is pending again.
    Requeued,
    /// It was already pending.
    AlreadyPending,
    /// Carried over this round by `evaluation.reevaluate` (top_k): it runs when the carry ends.
    CarriedOver,
}

impl Store {
    /// Persist a block; `false` if the same target was already blocked (its reason is updated).
    pub fn block(&self, target: &BlockTarget, reason: &str, now: f64) -> Result<bool, StoreError> {
        let t = self.t();
        let key = target.key();
        let mut wtxn = self.wtxn()?;
        let existed = t
            .controls
            .get(&wtxn, &key)
            .map_err(t.err("get", CONTROLS, None))?
            .is_some();
        let record = BlockRecord {
            target: target.clone(),
            reason: reason.to_owned(),
            since: now,
        };
        t.controls
            .put(&mut wtxn, &key, &record)
            .map_err(t.err("put", CONTROLS, None))?;
        self.commit(wtxn, CONTROLS)?;
        Ok(!existed)
    }

    /// Lift a block; `false` if there was none.
    pub fn unblock(&self, target: &BlockTarget) -> Result<bool, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let removed = t
            .controls
            .delete(&mut wtxn, &target.key())
            .map_err(t.err("delete", CONTROLS, None))?;
        self.commit(wtxn, CONTROLS)?;
        Ok(removed)
    }

    /// Every block, hotkeys then digests.
    pub fn blocks(&self) -> Result<Vec<BlockRecord>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        let mut out = Vec::new();
        for item in t
            .controls
            .prefix_iter(&rtxn, "block/")
            .map_err(t.err("prefix_iter", CONTROLS, None))?
        {
            let (_, record) = item.map_err(t.err("prefix_iter", CONTROLS, None))?;
            out.push(record);
        }
        Ok(out)
    }

    /// The block that stops this submission, if any (hotkey first, then the image's digest).
    pub fn blocking_rule(
        &self,
        hotkey: &Hotkey,
        image: &ImageRef,
    ) -> Result<Option<BlockRecord>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        for target in [
            BlockTarget::Hotkey(hotkey.clone()),
            BlockTarget::Digest(image.digest()),
        ] {
            if let Some(record) =
                t.controls
                    .get(&rtxn, &target.key())
                    .map_err(t.err("get", CONTROLS, Some(hotkey.as_str())))?
            {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Every tracked miner with its results, sorted by hotkey.
    pub fn miners(&self) -> Result<Vec<MinerView>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        t.all_records(&rtxn)?
            .into_iter()
            .map(|record| {
                let state = t.miner_state(&rtxn, record)?;
                let pending = is_pending(&state.snapshot());
                Ok(MinerView { state, pending })
            })
            .collect()
    }

    /// One miner, if tracked.
    pub fn miner(&self, hotkey: &Hotkey) -> Result<Option<MinerView>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        let Some(record) = t.submissions.get(&rtxn, hotkey.as_str()).map_err(t.err(
            "get",
            SUBMISSIONS,
            Some(hotkey.as_str()),
        ))?
        else {
            return Ok(None);
        };
        let state = t.miner_state(&rtxn, record)?;
        let pending = is_pending(&state.snapshot());
        Ok(Some(MinerView { state, pending }))
    }

    /// Evaluate a miner again in the open round: drop its staged result so it is pending again.
    /// `Ok(None)`: no such miner.
    pub fn reevaluate(&self, hotkey: &Hotkey) -> Result<Option<ReevaluateOutcome>, StoreError> {
        let t = self.t();
        let h = hotkey.as_str();
        let mut wtxn = self.wtxn()?;
        let Some(record) = t
            .submissions
            .get(&wtxn, h)
            .map_err(t.err("get", SUBMISSIONS, Some(h)))?
        else {
            return Ok(None);
        };
        let snap = t.snapshot_of(&wtxn, record)?;
        if is_pending(&snap) {
            return Ok(Some(ReevaluateOutcome::AlreadyPending));
        }
        if snap.staged_generation.is_none() {
            return Ok(Some(ReevaluateOutcome::CarriedOver));
        }
        t.staged
            .delete(&mut wtxn, h)
            .map_err(t.err("delete", STAGED, Some(h)))?;
        self.commit(wtxn, STAGED)?;
        Ok(Some(ReevaluateOutcome::Requeued))
    }

    /// The newest runs across miners (newest first), optionally of one miner, at most `limit`.
    pub fn recent_runs(&self, hotkey: Option<&Hotkey>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        if let Some(h) = hotkey {
            return self.runs_for(h, limit);
        }
        let t = self.t();
        let rtxn = self.rtxn()?;
        let mut out = Vec::new();
        for item in t.runs.iter(&rtxn).map_err(t.err("iter", RUNS, None))? {
            let (_, run) = item.map_err(t.err("iter", RUNS, None))?;
            out.push(run);
        }
        out.sort_by(|a, b| {
            b.started_at
                .total_cmp(&a.started_at)
                .then_with(|| b.run_id.cmp(&a.run_id))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// One run by id (the history is bounded per miner, so a scan is cheap).
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        for item in t.runs.iter(&rtxn).map_err(t.err("iter", RUNS, None))? {
            let (_, run) = item.map_err(t.err("iter", RUNS, None))?;
            if run.run_id == run_id {
                return Ok(Some(run));
            }
        }
        Ok(None)
    }
}
