//! Gathering a tick's [`Snapshot`]: the reads (store, slots, gate, backoffs) its decision depends on.
//! The drain set is applied and quarantined GPUs re-probed on the way ([`super::super::slots`]).

use super::{EvaluationLoop, gate_hold};
use crate::engine::blocking::{LoopError, blocking};
use crate::engine::plan::{CalibrationState, ChallengesView, DuplicateFacts, EngineView, Snapshot};
use std::time::Instant;

impl EvaluationLoop {
    /// What this tick's decision depends on. Paused, nothing is read (as before the plan existed).
    pub(super) async fn snapshot(&mut self) -> Result<Snapshot, LoopError> {
        let now = Instant::now();
        let settings = self.env.settings.clone();
        let mut snap = Snapshot {
            now,
            now_unix: self.env.clock.now_unix(),
            paused: self.control.is_paused(),
            pending: Vec::new(),
            slots: Vec::new(),
            tasks: self.tasks.len(),
            backoff: self
                .backoff_until
                .iter()
                .map(|(h, (_, until))| (h.clone(), *until))
                .collect(),
            engine: match self.gate.waiting(now) {
                Some(wait) => EngineView::Closed {
                    wait,
                    why: gate_hold(&self.gate),
                },
                None => EngineView::Unchecked,
            },
            challenges: ChallengesView::Unknown,
            set_in_memory: self.set.current.is_some(),
            open_round: None,
            calibration: None,
            duplicates: DuplicateFacts {
                policy: settings.evaluation.duplicates,
                scoring_count: u32::try_from(settings.evaluation.scoring_count).unwrap_or(u32::MAX),
                miners: Vec::new(),
            },
            same_model_per_round: settings.gpu.same_model_per_round,
            round_model: self.round_model.clone(),
            // Images are pulled where they run: ahead of time only on this host's engine.
            prepull_ahead: if self.local_engine() {
                usize::try_from(settings.docker.prepull_ahead).unwrap_or(0)
            } else {
                0
            },
        };
        let drained = blocking(&self.store, move |store| store.drained_gpus()).await?;
        self.slots.refresh(&drained, self.env.clock.now_unix());
        snap.slots = self.slots.states();
        snap.pending = blocking(&self.store, move |store| store.pending()).await?;
        if snap.paused {
            // Read even so: `talkheadctl status` shows who is held back by the pause.
            return Ok(snap);
        }
        let round = match snap.pending.first() {
            Some(t) => Some(t.round),
            // Nothing pending: the round may still need calibrating before it commits.
            None if self.tasks.is_empty()
                && self.set.current.is_some()
                && settings.gpu.calibration_image.is_some() =>
            {
                let round = blocking(&self.store, move |store| store.round_state())
                    .await?
                    .number;
                snap.open_round = Some(round);
                Some(round)
            }
            None => None,
        };
        if let (Some(image), Some(round)) = (&settings.gpu.calibration_image, round) {
            // After a restart, the calibrations stored for the round count as done.
            if self.calibrated.0 != round {
                let stored = blocking(&self.store, move |store| store.calibrations(Some(round))).await?;
                self.calibrated = (round, stored.into_iter().map(|c| c.gpu_uuid).collect());
            }
            snap.calibration = Some(CalibrationState {
                digest: image.digest(),
                round,
                done: self.calibrated.1.clone(),
            });
        }
        if !snap.pending.is_empty() {
            snap.duplicates.miners = blocking(&self.store, move |store| store.miners()).await?;
        }
        Ok(snap)
    }
}
