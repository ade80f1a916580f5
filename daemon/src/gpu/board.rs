//! The live per-GPU status board: what each GPU is (inventory), whether it is in service and what it
//! runs. The evaluation loop is its only writer; `status`, the admin plane and the logs read cheap
//! snapshots through a shared [`GpuBoard`] (clone the handle; it is an `Arc` inside).
//! It decides nothing: drain lives in the store, health in [`super::health`].

use super::GpuInfo;
use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError};

/// Where one GPU stands, as shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuState {
    /// In service and idle.
    Available,
    /// Running an evaluation.
    Busy {
        /// Its run id.
        run_id: String,
    },
    /// Drained by the operator: finishes its current run (then shows `drained`), takes no new one.
    Drained {
        /// The run it is finishing, if any.
        finishing: Option<String>,
    },
    /// Taken out of service after repeated faults; re-probed at `until`.
    Quarantined {
        /// Why.
        reason: String,
        /// Unix time of the re-probe.
        until: f64,
        /// The run it is finishing, if any.
        finishing: Option<String>,
    },
}

impl GpuState {
    /// The short name (`available`, `busy`, `drained`, `quarantined`).
    pub fn name(&self) -> &'static str {
        match self {
            GpuState::Available => "available",
            GpuState::Busy { .. } => "busy",
            GpuState::Drained { .. } => "drained",
            GpuState::Quarantined { .. } => "quarantined",
        }
    }
}

/// One GPU on the board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuStatus {
    /// What the inventory reports.
    pub info: GpuInfo,
    /// Where it stands.
    pub state: GpuState,
    /// Consecutive faults seen (reset by a clean run).
    pub faults: u32,
    /// The last fault seen, if any.
    pub last_fault: Option<String>,
}

/// Shared handle to the board (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct GpuBoard {
    inner: Arc<Mutex<Vec<GpuStatus>>>,
}

impl GpuBoard {
    /// A board listing `gpus`, all available.
    pub fn new(gpus: Vec<GpuInfo>) -> GpuBoard {
        let rows = gpus
            .into_iter()
            .map(|info| GpuStatus {
                info,
                state: GpuState::Available,
                faults: 0,
                last_fault: None,
            })
            .collect();
        GpuBoard {
            inner: Arc::new(Mutex::new(rows)),
        }
    }

    /// Every GPU, in inventory order.
    pub fn snapshot(&self) -> Vec<GpuStatus> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// One GPU by UUID (or `virtual-N`).
    pub fn get(&self, uuid: &str) -> Option<GpuStatus> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|g| g.info.uuid == uuid)
            .cloned()
    }

    /// Update one GPU's row (the evaluation loop only).
    pub fn update(&self, uuid: &str, f: impl FnOnce(&mut GpuStatus)) {
        let mut rows = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(row) = rows.iter_mut().find(|g| g.info.uuid == uuid) {
            f(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{GpuInventory, VirtualInventory};

    #[test]
    fn updates_are_visible_through_every_clone() {
        let board = GpuBoard::new(VirtualInventory::new(2).describe());
        let reader = board.clone();
        board.update("virtual-1", |g| {
            g.state = GpuState::Busy {
                run_id: "run-1".into(),
            }
        });
        let snap = reader.snapshot();
        assert_eq!(snap[0].state, GpuState::Available);
        assert_eq!(snap[1].state.name(), "busy");
        assert_eq!(reader.get("virtual-1").map(|g| g.info.index), Some(1));
        assert!(reader.get("virtual-9").is_none());
    }
}
