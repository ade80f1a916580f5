//! Applying a tick's [`Decision`]: each [`Action`] handed to its effect (dispatch, calibration,
//! duplicates settled, pre-pulls, the round's commit, the `systemctl status` line), in order.

use super::{EvaluationLoop, status_line};
use crate::challenges::ChallengeSet;
use crate::engine::blocking::{LoopError, blocking};
use crate::engine::calibration::{self, Calibration};
use crate::engine::plan::{Action, Decision, Next, Snapshot, Why};
use crate::engine::slots::Busy;
use crate::events::EventKind;
use crate::rounds::{EvaluationTicket, ranker};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl EvaluationLoop {
    /// Apply a decision's actions in order; then its wait (or go again at once).
    pub(super) async fn apply(
        &mut self,
        decision: Decision,
        set: Option<Arc<ChallengeSet>>,
        snap: &Snapshot,
        shutdown: &CancellationToken,
    ) -> Result<Option<Duration>, LoopError> {
        let mut next = decision.next;
        tracing::trace!(outcome = ?decision.outcome, "tick planned");
        let note = decision.outcome.note(&snap.slots, snap.now, snap.now_unix);
        if self
            .env
            .events
            .scheduler()
            .is_none_or(|last| (&last.summary, last.held.len()) != (&note.summary, note.held.len()))
        {
            tracing::debug!(
                held = note.held.len(),
                idle = note.idle.len(),
                "scheduler: {}",
                note.summary
            );
            if decision.outcome.why == Why::Paused {
                // `systemctl status` says why nothing runs (the gate and the challenges say theirs).
                crate::systemd::status(&format!("evaluation paused: {} miners pending", note.held.len()));
            }
        }
        self.env.events.set_scheduler(note);
        for action in decision.actions {
            match action {
                Action::Settle { ticket, metrics } => {
                    self.dispatcher.settle(ticket, *metrics, snap.now_unix).await?;
                }
                Action::PinModel { round, model } => {
                    tracing::info!(round, model = %model, "round measured on one GPU model");
                    self.round_model = Some((round, model));
                }
                Action::Calibrate { slot, round } => {
                    let set = set.clone().or_else(|| self.set.current.clone());
                    if let Some(set) = set {
                        self.start_calibration(slot, round, set, shutdown);
                    }
                }
                Action::Dispatch { slot, ticket } => {
                    if let Some(set) = set.clone() {
                        self.start_run(slot, ticket, set, snap.pending.len(), shutdown);
                    }
                }
                Action::Prefetch { images } => {
                    // A pre-run check that failed may have left nothing running.
                    let images = if self.tasks.is_empty() { Vec::new() } else { images };
                    let ahead = snap.prepull_ahead;
                    let timeout = self.env.settings.evaluation.pull_timeout;
                    self.prefetches.pull(&self.env.images, images, ahead, timeout);
                }
                Action::ReportStatus {
                    round,
                    pending,
                    no_slot_in_service,
                } => {
                    if no_slot_in_service && self.tasks.is_empty() {
                        tracing::warn!(pending, "no GPU slot in service (drained or quarantined)");
                    }
                    let running = self.slots.list.iter().filter(|s| s.busy.is_some()).count();
                    crate::systemd::status(&status_line(
                        round,
                        pending.saturating_sub(running),
                        running,
                        &self.slots.summary(),
                    ));
                }
                Action::Commit => {
                    if self.tasks.is_empty() && self.commit().await? {
                        next = Next::Again;
                    }
                }
            }
        }
        Ok(match next {
            Next::Again => None,
            Next::Wait(wait) => Some(wait),
        })
    }

    /// Commit the round if it is complete; whether it was.
    async fn commit(&mut self) -> Result<bool, LoopError> {
        let epsilon = self.env.settings.scoring.tie_epsilon;
        let policy = self.env.settings.evaluation.reevaluate;
        let committed = blocking(&self.store, move |store| {
            store.commit_round_if_complete(&policy, &ranker(epsilon))
        })
        .await?;
        let Some(c) = committed else {
            return Ok(false);
        };
        tracing::info!(
            round = c.round,
            metrics_version = c.metrics_version,
            committed = c.committed,
            carried = c.carried,
            "round committed"
        );
        crate::systemd::status(&format!("round {} committed: {} miners", c.round, c.committed));
        self.env.events.publish(EventKind::RoundCommitted {
            round: c.round,
            committed: u64::try_from(c.committed).unwrap_or(u64::MAX),
            metrics_version: c.metrics_version,
        });
        self.set.current = None;
        self.prefetches.new_round();
        Ok(true)
    }

    /// Start one evaluation on `slot`, once the GPU passed its pre-run probe.
    fn start_run(
        &mut self,
        slot: usize,
        ticket: EvaluationTicket,
        set: Arc<ChallengeSet>,
        pending: usize,
        shutdown: &CancellationToken,
    ) {
        if !self.slots.passes_probe(slot, self.env.clock.now_unix()) {
            return;
        }
        let Some(gpu) = self.slots.list.get(slot).map(|rt| rt.slot.clone()) else {
            return;
        };
        let run_id = self.dispatcher.next_run_id();
        tracing::debug!(pending, gpu = %gpu.uuid, "dispatching");
        self.slots.occupy(
            slot,
            Busy {
                run_id: run_id.clone(),
                hotkey: ticket.hotkey.to_string(),
                digest: ticket.image_ref.digest(),
            },
        );
        self.dispatcher
            .run(&mut self.tasks, slot, gpu, ticket, set, run_id, shutdown);
    }

    /// Start the round's calibration on `slot` (a slot of its own, like a miner's run, so a GPU is never
    /// shared), once the GPU passed its pre-run probe.
    fn start_calibration(
        &mut self,
        slot: usize,
        round: u64,
        set: Arc<ChallengeSet>,
        shutdown: &CancellationToken,
    ) {
        let Some(image) = self.env.settings.gpu.calibration_image.clone() else {
            return;
        };
        if !self.slots.passes_probe(slot, self.env.clock.now_unix()) {
            return;
        }
        let Some(gpu) = self.slots.list.get(slot).map(|rt| rt.slot.clone()) else {
            return;
        };
        let run_id = format!("{}{}", calibration::RUN_ID_PREFIX, self.dispatcher.next_run_id());
        self.slots.occupy(
            slot,
            Busy {
                run_id: run_id.clone(),
                hotkey: calibration::CALIBRATION.to_owned(),
                digest: image.digest(),
            },
        );
        self.calibrated.1.insert(gpu.uuid.clone());
        let c = Calibration {
            run_id,
            round,
            image,
            slot: gpu,
            started_at: self.env.clock.now_unix(),
        };
        self.dispatcher.calibrate(&mut self.tasks, slot, c, set, shutdown);
    }
}
