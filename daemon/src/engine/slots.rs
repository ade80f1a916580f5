//! The GPU slots as the evaluation loop holds them: health, drain, the run each executes, and their
//! mirror on the shared per-GPU board. Owns the effects on them: the operator's drain set applied,
//! quarantined GPUs re-probed, the pre-run probe, health transitions published, a slot freed after its
//! run. What a slot takes is [`super::plan`]'s decision, over [`Slots::states`].

use super::plan::{BusyState, SlotState};
use super::run::RunEnv;
use crate::events::EventKind;
use crate::gpu::health::{Fault, GpuHealth, Health, Transition};
use crate::gpu::{GpuBoard, GpuInventory, GpuSlot, GpuState, ProbeResult};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// One GPU slot.
pub(super) struct SlotRuntime {
    pub(super) slot: GpuSlot,
    pub(super) health: GpuHealth,
    pub(super) drained: bool,
    /// The run it is executing.
    pub(super) busy: Option<Busy>,
}

/// A run occupying a slot.
pub(super) struct Busy {
    pub(super) run_id: String,
    /// The miner, or [`super::calibration::CALIBRATION`].
    pub(super) hotkey: String,
    /// The image's digest: every run removes its image when it ends, so two runs of one digest
    /// (a calibration image on several GPUs, a miner who submitted it) never overlap.
    pub(super) digest: String,
}

/// The slots and the board that shows them.
pub(super) struct Slots {
    pub(super) list: Vec<SlotRuntime>,
    pub(super) board: GpuBoard,
    inventory: Arc<dyn GpuInventory>,
    env: Arc<RunEnv>,
}

impl Slots {
    /// Every slot of the inventory, healthy, undrained and free.
    pub(super) fn new(inventory: Arc<dyn GpuInventory>, env: Arc<RunEnv>) -> Slots {
        let policy = env.settings.gpu.health;
        let list = inventory
            .slots()
            .into_iter()
            .map(|slot| SlotRuntime {
                slot,
                health: GpuHealth::new(policy),
                drained: false,
                busy: None,
            })
            .collect();
        let board = GpuBoard::new(inventory.describe());
        Slots {
            list,
            board,
            inventory,
            env,
        }
    }

    /// What the plan sees of them.
    pub(super) fn states(&self) -> Vec<SlotState> {
        self.list
            .iter()
            .map(|rt| SlotState {
                uuid: rt.slot.uuid.clone(),
                model: rt.slot.name.clone(),
                drained: rt.drained,
                usable: rt.health.usable(),
                busy: rt.busy.as_ref().map(|b| BusyState {
                    hotkey: b.hotkey.clone(),
                    digest: b.digest.clone(),
                }),
            })
            .collect()
    }

    /// The run ids in flight (their containers are kept by a sweep).
    pub(super) fn running(&self) -> HashSet<String> {
        self.list
            .iter()
            .filter_map(|s| s.busy.as_ref().map(|b| b.run_id.clone()))
            .collect()
    }

    /// Mark `slot` as running `busy` and show it.
    pub(super) fn occupy(&mut self, slot: usize, busy: Busy) {
        let Some(rt) = self.list.get_mut(slot) else {
            return;
        };
        rt.busy = Some(busy);
        let uuid = rt.slot.uuid.clone();
        self.refresh_board(&uuid);
    }

    /// A run ended on `slot`: free it and feed its health (a fault, or a clean run; an infrastructure
    /// failure says nothing about the GPU).
    pub(super) fn free(&mut self, slot: usize, gpu_fault: Option<&Fault>, infra: bool, now_unix: f64) {
        let Some(rt) = self.list.get_mut(slot) else {
            return;
        };
        rt.busy = None;
        let transition = match gpu_fault {
            Some(fault) => {
                tracing::warn!(gpu = %rt.slot.uuid, %fault, "GPU fault during a run");
                rt.health.fault(fault, now_unix)
            }
            None if !infra => rt.health.clean(now_unix),
            None => None,
        };
        let uuid = rt.slot.uuid.clone();
        self.note_health(slot, transition, gpu_fault);
        self.refresh_board(&uuid);
    }

    /// Publish a health transition and mirror the slot on the board.
    fn note_health(&mut self, slot: usize, transition: Option<Transition>, fault: Option<&Fault>) {
        let Some(rt) = self.list.get(slot) else { return };
        let uuid = rt.slot.uuid.clone();
        let faults = match rt.health.state() {
            Health::Healthy { faults } => *faults,
            Health::Quarantined { .. } => self.env.settings.gpu.health.quarantine_after,
        };
        self.board.update(&uuid, |g| {
            g.faults = faults;
            if let Some(f) = fault {
                g.last_fault = Some(f.to_string());
            }
        });
        match transition {
            Some(Transition::Quarantined { reason }) => {
                tracing::error!(gpu = %uuid, %reason, "GPU quarantined");
                self.env.events.publish(EventKind::GpuStateChanged {
                    gpu: uuid,
                    state: "quarantined".into(),
                    reason: Some(reason),
                });
            }
            Some(Transition::Returned) => {
                tracing::info!(gpu = %uuid, "GPU re-probed clean: back in service");
                self.env.events.publish(EventKind::GpuStateChanged {
                    gpu: uuid,
                    state: "available".into(),
                    reason: Some("re-probed clean after quarantine".into()),
                });
            }
            None => {}
        }
    }

    /// Recompute one GPU's board state from the slot.
    pub(super) fn refresh_board(&self, uuid: &str) {
        let Some(rt) = self.list.iter().find(|s| s.slot.uuid == uuid) else {
            return;
        };
        let finishing = rt.busy.as_ref().map(|b| b.run_id.clone());
        let state = match (rt.health.state(), rt.drained, &finishing) {
            (Health::Quarantined { reason, until }, _, _) => GpuState::Quarantined {
                reason: reason.clone(),
                until: *until,
                finishing,
            },
            (_, true, _) => GpuState::Drained { finishing },
            (_, false, Some(run_id)) => GpuState::Busy {
                run_id: run_id.clone(),
            },
            (_, false, None) => GpuState::Available,
        };
        self.board.update(uuid, |g| g.state = state);
    }

    /// Apply the operator's drain set; re-probe quarantined GPUs whose time is up.
    pub(super) fn refresh(&mut self, drained: &BTreeSet<String>, now_unix: f64) {
        for i in 0..self.list.len() {
            let Some(rt) = self.list.get_mut(i) else { continue };
            let uuid = rt.slot.uuid.clone();
            let now_drained = drained.contains(&uuid);
            if now_drained != rt.drained {
                rt.drained = now_drained;
                let state = if now_drained { "drained" } else { "available" };
                tracing::info!(gpu = %uuid, state, "GPU drain state changed by the operator");
                self.env.events.publish(EventKind::GpuStateChanged {
                    gpu: uuid.clone(),
                    state: state.into(),
                    reason: Some(
                        if now_drained {
                            "drained by the operator"
                        } else {
                            "undrained by the operator"
                        }
                        .into(),
                    ),
                });
            }
            let due = self
                .list
                .get(i)
                .is_some_and(|rt| rt.busy.is_none() && rt.health.due_for_probe(now_unix));
            if due {
                let transition = match self.inventory.probe(&uuid) {
                    ProbeResult::Healthy => self.list.get_mut(i).and_then(|rt| rt.health.clean(now_unix)),
                    ProbeResult::Fault(f) => {
                        tracing::warn!(gpu = %uuid, fault = %f, "quarantined GPU still faulty");
                        self.list.get_mut(i).and_then(|rt| rt.health.fault(&f, now_unix))
                    }
                };
                self.note_health(i, transition, None);
            }
            self.refresh_board(&uuid);
        }
    }

    /// Check an idle GPU before it takes a run; a fault feeds its health and the run is not started.
    /// (A local GPU's check: a run placed elsewhere would have its own.)
    pub(super) fn passes_probe(&mut self, slot: usize, now_unix: f64) -> bool {
        let Some(uuid) = self.list.get(slot).map(|rt| rt.slot.uuid.clone()) else {
            return false;
        };
        let ProbeResult::Fault(f) = self.inventory.probe(&uuid) else {
            return true;
        };
        tracing::warn!(gpu = %uuid, fault = %f, "GPU failed its pre-run probe");
        let t = self
            .list
            .get_mut(slot)
            .and_then(|rt| rt.health.fault(&f, now_unix));
        self.note_health(slot, t, Some(&f));
        self.refresh_board(&uuid);
        false
    }

    /// Each GPU and its state in words, for the `systemctl status` line.
    pub(super) fn summary(&self) -> Vec<(&str, &str)> {
        self.list
            .iter()
            .map(|s| {
                let state = if s.busy.is_some() {
                    "busy"
                } else if s.drained {
                    "drained"
                } else if !s.health.usable() {
                    "quarantined"
                } else {
                    "idle"
                };
                (s.slot.uuid.as_str(), state)
            })
            .collect()
    }
}
