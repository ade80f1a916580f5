//! The evaluation loop: pending miners → runs → staged results → round commit, one challenge set per
//! round. It is the only writer of evaluation results; HTTP upserts wake it through a [`Notify`].
//!
//! A round's challenge set is persisted under `<work_dir>/../challenge-sets/<hash>/` before its hash is
//! recorded in the store, so a restarted daemon resumes the round on exactly the same challenges.
//! Infrastructure failures put the miner on a capped backoff and are recorded in its history, never
//! staged as a score.
//!
//! One run task per GPU slot: pending miners are placed on free slots ([`crate::gpu::placement`]), N
//! slots evaluate N miners at once, and the round commits only when every run has finished. Drained
//! (store) and quarantined (health) slots finish their current run and take no new one. With
//! `gpu.calibration_image`, each slot in service first takes the round's calibration
//! ([`super::calibration`]) when it is free; a run task that panics still frees its slot
//! ([`super::tasks`]), its run recorded as `infra_error`.

use super::calibration::{self, Calibration};
use super::duplicates::DuplicateAction;
use super::gate::{Blocked, EngineGate};
use super::run::{RunEnv, RunOutcome, RunRequest, run_evaluation};
use super::tasks::{Ended, Held, RunTasks};
use super::verdicts::one_line;
use crate::challenges::{ChallengeError, ChallengeSet, Limits, SubnetApiSource, load_directory};
use crate::domain::Verdict;
use crate::events::EventKind;
use crate::gpu::health::{Fault, GpuHealth, Health, Transition};
use crate::gpu::placement::{SlotView, choose_model, place};
use crate::gpu::vram::VramMeter;
use crate::gpu::{GpuBoard, GpuInventory, GpuSlot, GpuState, ProbeResult};
use crate::rounds::{EvaluationTicket, StageOutcome, ranker};
use crate::runtime::pull::backoff;
use crate::store::{RunRecord, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long the loop idles without a wake-up before it looks again.
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Longest backoff for a miner whose evaluation failed on the host's side.
const MAX_INFRA_BACKOFF: Duration = Duration::from_secs(600);
/// Longest the last image cache eviction may hold up a stop.
const FINAL_EVICTION: Duration = Duration::from_secs(10);
/// Longest the last sweep of this instance's containers may hold up a stop. With the HTTP drain and the
/// final eviction it stays well inside the unit's `TimeoutStopSec=45s`.
const FINAL_SWEEP: Duration = Duration::from_secs(10);
/// Longest wait between two attempts to reach a Docker engine that stopped answering.
const MAX_ENGINE_BACKOFF: Duration = Duration::from_secs(30);

/// Where a round's challenges come from.
pub enum Source {
    /// A local directory.
    Directory(PathBuf),
    /// The Subnet API.
    Api(Box<SubnetApiSource>),
}

/// Shared controls of the loop (pause/resume, wake-up), for the HTTP gateway and the admin plane.
#[derive(Clone, Default)]
pub struct LoopControl {
    wake: Arc<Notify>,
    paused: Arc<AtomicBool>,
}

impl LoopControl {
    /// Look for work now (new submissions arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stop starting new evaluations (running ones finish).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Start evaluating again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether evaluation is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}

/// One GPU slot as the loop sees it.
struct SlotRuntime {
    slot: GpuSlot,
    health: GpuHealth,
    drained: bool,
    /// The run it is executing.
    busy: Option<Busy>,
}

/// A run occupying a slot.
struct Busy {
    run_id: String,
    /// The miner, or [`calibration::CALIBRATION`].
    hotkey: String,
    /// The image's digest: every run removes its image when it ends, so two runs of one digest
    /// (a calibration image on several GPUs, a miner who submitted it) never overlap.
    digest: String,
}

/// What the loop needs to account for a run task that ended without a result (it panicked).
#[derive(Debug, Clone, PartialEq)]
enum Lost {
    /// A miner's evaluation.
    Miner {
        ticket: EvaluationTicket,
        /// Unix time the run was dispatched.
        started_at: f64,
    },
    /// A calibration run.
    Calibration(Calibration),
}

/// What a finished run task hands back to the loop.
struct Finished {
    slot: usize,
    /// The miner evaluated; `None` for a calibration run (no miner to back off or clear).
    hotkey: Option<String>,
    /// `Some(reason)` for an infrastructure failure (the miner backs off and is retried).
    infra: Option<String>,
    /// A GPU fault seen during the run.
    gpu_fault: Option<Fault>,
    /// Store errors while recording the result.
    recorded: Result<(), LoopError>,
}

/// The loop and what it owns.
pub struct EvaluationLoop {
    env: Arc<RunEnv>,
    store: Store,
    source: Source,
    inventory: Arc<dyn GpuInventory>,
    control: LoopControl,
    sets_dir: PathBuf,
    current: Option<Arc<ChallengeSet>>,
    backoff_until: HashMap<String, (u32, Instant)>,
    run_seq: Arc<AtomicU64>,
    slots: Vec<SlotRuntime>,
    board: GpuBoard,
    meter: Arc<dyn VramMeter>,
    /// The GPU model the open round is measured on (`gpu.same_model_per_round`).
    round_model: Option<(u64, String)>,
    /// The round whose calibrations are tracked, and the GPUs that have had theirs (stored or running).
    calibrated: (u64, HashSet<String>),
    tasks: RunTasks<Finished, Lost>,
    /// Pulls of the next submissions' images, running beside the evaluations.
    prefetches: JoinSet<()>,
    /// Images pulled ahead (or being pulled) this round.
    prefetched: HashSet<String>,
    /// Whether containers may be started: the engine answers and this instance's leftovers are swept.
    gate: EngineGate,
    /// Wakes the image cache's eviction task (after each run, once its slot is free).
    evict: Arc<Notify>,
}

impl EvaluationLoop {
    /// Assemble the loop.
    pub fn new(
        env: Arc<RunEnv>,
        store: Store,
        source: Source,
        inventory: Arc<dyn GpuInventory>,
        control: LoopControl,
    ) -> EvaluationLoop {
        let sets_dir = env.settings.evaluation.work_dir.with_file_name("challenge-sets");
        let policy = env.settings.gpu.health;
        let slots = inventory
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
        let meter = inventory.vram_meter();
        EvaluationLoop {
            env,
            store,
            source,
            inventory,
            control,
            sets_dir,
            current: None,
            backoff_until: HashMap::new(),
            run_seq: Arc::new(AtomicU64::new(0)),
            slots,
            board,
            meter,
            round_model: None,
            calibrated: (0, HashSet::new()),
            tasks: RunTasks::default(),
            prefetches: JoinSet::new(),
            prefetched: HashSet::new(),
            gate: EngineGate::new(MAX_ENGINE_BACKOFF),
            evict: Arc::new(Notify::new()),
        }
    }

    /// The shared per-GPU status board (for `status` and the admin plane).
    pub fn board(&self) -> GpuBoard {
        self.board.clone()
    }

    /// Run until `shutdown`; runs in flight see the cancellation, kill their containers and are
    /// awaited before this returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(slots = self.slots.len(), real_gpus = self.inventory.is_real(), analyzer = %self.env.analyzer.describe(), "evaluation loop started");
        // The watchdog is fed from this tick: if the scheduler wedges (a step that never returns),
        // systemd stops hearing from it and restarts the daemon.
        let watchdog = crate::systemd::watchdog_interval();
        let evictor = tokio::spawn(evictor(self.env.images.clone(), self.evict.clone()));
        while !shutdown.is_cancelled() {
            if watchdog.is_some() {
                crate::systemd::watchdog();
            }
            while let Some(ended) = self.tasks.try_next() {
                self.ended(ended).await;
            }
            while self.prefetches.try_join_next().is_some() {}
            let wait = match self.step(&shutdown).await {
                Ok(Some(wait)) => wait,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "evaluation loop step failed; retrying");
                    Duration::from_secs(5)
                }
            };
            let busy = !self.tasks.is_empty();
            let wait = watchdog.map_or(wait, |w| wait.min(w));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.control.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(ended) = self.tasks.next(), if busy => self.ended(ended).await,
            }
        }
        self.prefetches.abort_all();
        while let Some(ended) = self.tasks.next().await {
            self.ended(ended).await;
        }
        // Awaited, as the pre-pulls are: their handles on the store must be gone before it closes.
        evictor.abort();
        let _ = evictor.await;
        while self.prefetches.join_next().await.is_some() {}
        // Every container this instance created goes before the stop completes. A run removes its own,
        // but its cleanup can be cut short (an engine error after the kill leaves the removal to a
        // background task that the stop would abandon), and a state file no later daemon opens would
        // never have it reconciled.
        match tokio::time::timeout(FINAL_SWEEP, self.env.engine.reconcile_orphans(&HashSet::new())).await {
            Ok(Ok(runs)) if !runs.is_empty() => {
                tracing::warn!(count = runs.len(), "removed containers left by runs at shutdown");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not sweep this instance's containers at shutdown")
            }
            Err(_) => tracing::warn!(?FINAL_SWEEP, "container sweep at shutdown cut short"),
        }
        // One last trim for the runs that ended since (bounded: an engine that hangs must not hold up
        // the stop; what is left is trimmed after the next run).
        match tokio::time::timeout(FINAL_EVICTION, self.env.images.evict()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "image cache eviction at shutdown failed"),
            Err(_) => tracing::warn!(?FINAL_EVICTION, "image cache eviction at shutdown cut short"),
        }
        tracing::info!("evaluation loop stopped");
    }

    /// A run task ended: with its result, or lost (it panicked), in which case the run it held is
    /// recorded as an `infra_error` (a bug of ours, never the miner's fault) and its slot is freed the
    /// same way as after any infrastructure failure.
    async fn ended(&mut self, ended: Ended<Finished, Lost>) {
        let done = match ended {
            Ended::Returned(done) => done,
            Ended::Lost { held, reason } => self.lost(held, reason).await,
        };
        self.finish(done);
    }

    /// Record a lost run as `infra_error` and tell watchers, so the history shows what happened.
    async fn lost(&mut self, held: Held<Lost>, reason: String) -> Finished {
        let reason = one_line(&reason);
        let Held { slot, run_id, key } = held;
        let (ticket, started_at) = match key {
            Lost::Miner { ticket, started_at } => (ticket, started_at),
            Lost::Calibration(c) => {
                tracing::error!(run_id = %run_id, gpu_uuid = %c.slot.uuid, %reason, "a calibration task ended without a result; its GPU slot is freed");
                let outcome = RunOutcome::Infra(reason.clone());
                let record = calibration::record(&c, &outcome, self.env.clock.now_unix());
                let store = self.store.clone();
                let recorded = blocking(move || store.record_calibration(&record)).await;
                return Finished {
                    slot,
                    hotkey: None,
                    infra: Some(reason),
                    gpu_fault: None,
                    recorded,
                };
            }
        };
        let gpu = self
            .slots
            .get(slot)
            .map(|s| s.slot.uuid.clone())
            .unwrap_or_default();
        tracing::error!(
            run_id = %run_id,
            miner_hotkey = %ticket.hotkey,
            gpu_uuid = %gpu,
            verdict = %Verdict::InfraError,
            %reason,
            "a run task ended without a result; its GPU slot is freed and the miner will be retried"
        );
        self.env.events.publish(EventKind::Verdict {
            run_id: run_id.clone(),
            hotkey: ticket.hotkey.to_string(),
            verdict: Verdict::InfraError.to_string(),
            reason: Some(reason.clone()),
            score: None,
        });
        let record = RunRecord {
            run_id,
            hotkey: ticket.hotkey.clone(),
            image_ref: ticket.image_ref.to_string(),
            generation: ticket.generation,
            round: ticket.round,
            verdict: Verdict::InfraError,
            reason: Some(reason.clone()),
            stage_times: Default::default(),
            metrics: None,
            started_at,
            finished_at: self.env.clock.now_unix(),
            log_tail: None,
            notes: Vec::new(),
            image_source: None,
        };
        let store = self.store.clone();
        let recorded = blocking(move || store.record_run(&record)).await;
        Finished {
            slot,
            hotkey: Some(ticket.hotkey.to_string()),
            infra: Some(reason),
            gpu_fault: None,
            recorded,
        }
    }

    /// Book-keeping after a run task ended: free its slot, back the miner off on an infrastructure
    /// failure, feed the GPU's health.
    fn finish(&mut self, done: Finished) {
        let now_unix = self.env.clock.now_unix();
        let hotkey = done.hotkey.as_deref().unwrap_or(calibration::CALIBRATION);
        if let Err(e) = &done.recorded {
            tracing::error!(%hotkey, error = %e, "recording the run failed");
        }
        if done.infra.is_some() {
            // Its container may have outlived it (an engine that restarted under it): sweep this
            // instance's idle containers before the next dispatch.
            self.gate.request_sweep();
        }
        match (&done.infra, &done.hotkey) {
            (_, None) => {}
            (None, Some(hotkey)) => {
                self.backoff_until.remove(hotkey);
            }
            (Some(reason), Some(hotkey)) => {
                let attempts = self.backoff_until.get(hotkey).map_or(1, |(a, _)| a + 1);
                let wait = backoff(attempts, MAX_INFRA_BACKOFF);
                self.backoff_until
                    .insert(hotkey.clone(), (attempts, Instant::now() + wait));
                tracing::warn!(%hotkey, %reason, ?wait, "infrastructure failure; the miner is not charged and will be retried");
            }
        }
        // The slot is free from here on; the image cache is trimmed beside the next dispatches.
        self.evict.notify_one();
        let Some(rt) = self.slots.get_mut(done.slot) else {
            return;
        };
        rt.busy = None;
        let transition = match &done.gpu_fault {
            Some(fault) => {
                tracing::warn!(gpu = %rt.slot.uuid, %fault, "GPU fault during a run");
                rt.health.fault(fault, now_unix)
            }
            None if done.infra.is_none() => rt.health.clean(now_unix),
            None => None,
        };
        let uuid = rt.slot.uuid.clone();
        self.note_health(done.slot, transition, done.gpu_fault.as_ref());
        self.refresh_board(&uuid);
    }

    /// Publish a health transition and mirror the slot on the board.
    fn note_health(&mut self, slot: usize, transition: Option<Transition>, fault: Option<&Fault>) {
        let Some(rt) = self.slots.get(slot) else { return };
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
    fn refresh_board(&self, uuid: &str) {
        let Some(rt) = self.slots.iter().find(|s| s.slot.uuid == uuid) else {
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
    async fn refresh_slots(&mut self) -> Result<(), LoopError> {
        let store = self.store.clone();
        let drained = blocking(move || store.drained_gpus()).await?;
        let now_unix = self.env.clock.now_unix();
        for i in 0..self.slots.len() {
            let Some(rt) = self.slots.get_mut(i) else { continue };
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
                .slots
                .get(i)
                .is_some_and(|rt| rt.busy.is_none() && rt.health.due_for_probe(now_unix));
            if due {
                let transition = match self.inventory.probe(&uuid) {
                    ProbeResult::Healthy => self.slots.get_mut(i).and_then(|rt| rt.health.clean(now_unix)),
                    ProbeResult::Fault(f) => {
                        tracing::warn!(gpu = %uuid, fault = %f, "quarantined GPU still faulty");
                        self.slots.get_mut(i).and_then(|rt| rt.health.fault(&f, now_unix))
                    }
                };
                self.note_health(i, transition, None);
            }
            self.refresh_board(&uuid);
        }
        Ok(())
    }

    /// The model this round is measured on, when `gpu.same_model_per_round` pins one.
    fn model_for(&mut self, round: u64, views: &[SlotView<'_>]) -> Option<String> {
        if !self.env.settings.gpu.same_model_per_round {
            return None;
        }
        let pinned = self
            .round_model
            .as_ref()
            .filter(|(r, m)| *r == round && views.iter().any(|v| v.in_service && v.model == m))
            .map(|(_, m)| m.clone());
        let model = pinned.or_else(|| choose_model(views).map(str::to_owned))?;
        if self
            .round_model
            .as_ref()
            .is_none_or(|(r, m)| *r != round || *m != model)
        {
            tracing::info!(round, model = %model, "round measured on one GPU model");
            self.round_model = Some((round, model.clone()));
        }
        Some(model)
    }

    /// One decision. `Ok(None)`: go again at once; `Ok(Some(d))`: idle up to `d`, until woken or
    /// until a run finishes.
    async fn step(&mut self, shutdown: &CancellationToken) -> Result<Option<Duration>, LoopError> {
        if self.control.is_paused() {
            return Ok(Some(IDLE_RECHECK));
        }
        self.refresh_slots().await?;
        let store = self.store.clone();
        let pending = blocking(move || store.pending()).await?;
        if pending.is_empty() {
            // A GPU that was busy (or shared the calibration image) while miners were placed has its
            // calibration now, before the round commits.
            if self.tasks.is_empty()
                && let Some(set) = self.current.clone()
            {
                let store = self.store.clone();
                let round = blocking(move || store.round_state()).await?.number;
                if let Some(wait) = self.calibrate(round, &set, shutdown).await? {
                    return Ok(Some(wait));
                }
            }
            if !self.tasks.is_empty() {
                return Ok(Some(IDLE_RECHECK));
            }
            let store = self.store.clone();
            let epsilon = self.env.settings.scoring.tie_epsilon;
            let policy = self.env.settings.evaluation.reevaluate;
            let committed =
                blocking(move || store.commit_round_if_complete(&policy, &ranker(epsilon))).await?;
            if let Some(c) = committed {
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
                self.current = None;
                self.prefetched.clear();
                return Ok(None);
            }
            return Ok(Some(IDLE_RECHECK));
        }
        let now = Instant::now();
        let running: HashSet<&str> = self
            .slots
            .iter()
            .filter_map(|s| s.busy.as_ref().map(|b| b.hotkey.as_str()))
            .collect();
        let ready: Vec<EvaluationTicket> = pending
            .iter()
            .filter(|t| !running.contains(t.hotkey.as_str()))
            .filter(|t| {
                self.backoff_until
                    .get(t.hotkey.as_str())
                    .is_none_or(|(_, until)| *until <= now)
            })
            .cloned()
            .collect();
        let ready = match self.settle_duplicates(ready).await? {
            Some(ready) => ready,
            // Some were settled without running: the pending set changed, look again at once.
            None => return Ok(None),
        };
        if ready.is_empty() {
            let next = self
                .backoff_until
                .values()
                .map(|(_, until)| *until)
                .filter(|u| *u > now)
                .min();
            return Ok(Some(next.map_or(IDLE_RECHECK, |t| {
                t.saturating_duration_since(now).max(Duration::from_millis(100))
            })));
        }
        if let Some(wait) = self.engine_gate().await {
            return Ok(Some(wait));
        }
        let set = match self.challenge_set().await {
            Ok(set) => set,
            Err(LoopError::Challenges(e)) => {
                tracing::warn!(error = %e, transient = e.is_transient(), "cannot obtain the round's challenges");
                // Shown by `systemctl status`: why nothing is evaluated although miners are pending.
                crate::systemd::status(&format!(
                    "cannot obtain the round's challenges ({}): {e}",
                    e.reason()
                ));
                return Ok(Some(Duration::from_secs(
                    e.retry_after_secs().unwrap_or(30).clamp(5, 600),
                )));
            }
            Err(e) => return Err(e),
        };
        let round = ready.first().map_or(0, |t| t.round);
        if let Some(wait) = self.calibrate(round, &set, shutdown).await? {
            return Ok(Some(wait));
        }
        // One run per image digest at a time (see `Busy::digest`), calibrations included.
        let mut digests: HashSet<String> = self
            .slots
            .iter()
            .filter_map(|s| s.busy.as_ref().map(|b| b.digest.clone()))
            .collect();
        let ready: Vec<EvaluationTicket> = ready
            .into_iter()
            .filter(|t| digests.insert(t.image_ref.digest()))
            .collect();
        // Owned: placing needs `&mut self` (the round's model) while the views are alive.
        let owned_views: Vec<(String, bool, bool)> = self
            .slots
            .iter()
            .map(|s| {
                (
                    s.slot.name.clone(),
                    !s.drained && s.health.usable(),
                    s.busy.is_some(),
                )
            })
            .collect();
        let views: Vec<SlotView<'_>> = owned_views
            .iter()
            .map(|(m, s, b)| SlotView {
                model: m.as_str(),
                in_service: *s,
                busy: *b,
            })
            .collect();
        let model = self.model_for(round, &views);
        let placements = place(ready.len(), &views, model.as_deref());
        if placements.is_empty() && self.tasks.is_empty() {
            tracing::warn!(
                pending = pending.len(),
                "no GPU slot in service (drained or quarantined)"
            );
        }
        let placed: HashSet<usize> = placements.iter().map(|p| p.ticket).collect();
        for p in placements {
            let Some(ticket) = ready.get(p.ticket) else {
                continue;
            };
            if !self.passes_probe(p.slot) {
                continue;
            }
            self.dispatch(p.slot, ticket.clone(), set.clone(), pending.len(), shutdown);
        }
        let waiting: Vec<&EvaluationTicket> = ready
            .iter()
            .enumerate()
            .filter(|(i, _)| !placed.contains(i))
            .map(|(_, t)| t)
            .collect();
        self.pull_ahead(&waiting);
        let gpus: Vec<(&str, &str)> = self
            .slots
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
            .collect();
        let running = self.slots.iter().filter(|s| s.busy.is_some()).count();
        crate::systemd::status(&status_line(
            round,
            pending.len().saturating_sub(running),
            running,
            &gpus,
        ));
        Ok(Some(IDLE_RECHECK))
    }

    /// Apply `evaluation.duplicates` to the ready tickets: stage `duplicate` (first_wins) or a copy of the
    /// original's result (share) without running anything. `None` when something was staged; otherwise
    /// the tickets still to run (a share copy waiting for its original is held back).
    async fn settle_duplicates(
        &mut self,
        ready: Vec<EvaluationTicket>,
    ) -> Result<Option<Vec<EvaluationTicket>>, LoopError> {
        let store = self.store.clone();
        let miners = blocking(move || store.miners()).await?;
        let policy = self.env.settings.evaluation.duplicates;
        let scoring_count = u32::try_from(self.env.settings.evaluation.scoring_count).unwrap_or(u32::MAX);
        let now = self.env.clock.now_unix();
        let mut to_run = Vec::new();
        let mut settled = false;
        for ticket in ready {
            let metrics = match super::duplicates::plan(policy, &miners, &ticket, scoring_count, now) {
                DuplicateAction::Run => {
                    to_run.push(ticket);
                    continue;
                }
                DuplicateAction::Wait { original } => {
                    tracing::debug!(hotkey = %ticket.hotkey, %original, "waiting for the original of a shared digest");
                    continue;
                }
                DuplicateAction::Reject(m) | DuplicateAction::Copy(m) => m,
            };
            let run_id = next_run_id(&self.run_seq, self.env.clock.as_ref());
            let mut metrics = *metrics;
            metrics.run_id.clone_from(&run_id);
            let record = RunRecord {
                run_id: run_id.clone(),
                hotkey: ticket.hotkey.clone(),
                image_ref: ticket.image_ref.to_string(),
                generation: ticket.generation,
                round: ticket.round,
                verdict: metrics.verdict,
                reason: metrics.error.clone(),
                stage_times: Default::default(),
                metrics: Some(metrics.clone()),
                started_at: now,
                finished_at: now,
                log_tail: None,
                notes: Vec::new(),
                image_source: None,
            };
            self.env.events.publish(EventKind::Verdict {
                run_id,
                hotkey: ticket.hotkey.to_string(),
                verdict: metrics.verdict.to_string(),
                reason: metrics.error.clone(),
                score: Some(metrics.final_score),
            });
            tracing::info!(
                miner_hotkey = %ticket.hotkey,
                image_digest = %ticket.image_ref.digest(),
                verdict = %metrics.verdict,
                duplicate_of = metrics.duplicate_of.as_deref().unwrap_or("-"),
                "duplicate image digest settled without a run"
            );
            let store = self.store.clone();
            blocking(move || {
                store.stage_result(&ticket, metrics)?;
                store.record_run(&record)
            })
            .await?;
            settled = true;
        }
        Ok((!settled).then_some(to_run))
    }

    /// Check an idle GPU before it takes a run; a fault feeds its health and the run is not started.
    fn passes_probe(&mut self, slot: usize) -> bool {
        let Some(uuid) = self.slots.get(slot).map(|rt| rt.slot.uuid.clone()) else {
            return false;
        };
        let ProbeResult::Fault(f) = self.inventory.probe(&uuid) else {
            return true;
        };
        tracing::warn!(gpu = %uuid, fault = %f, "GPU failed its pre-run probe");
        let now_unix = self.env.clock.now_unix();
        let t = self
            .slots
            .get_mut(slot)
            .and_then(|rt| rt.health.fault(&f, now_unix));
        self.note_health(slot, t, Some(&f));
        self.refresh_board(&uuid);
        false
    }

    /// With `gpu.calibration_image` set, start the round's calibration on every free GPU in service
    /// that has not had it yet (after a restart, those stored for the round count as done). Each takes
    /// a slot like a miner's run, so a GPU is never shared; miners are placed on the slots left.
    async fn calibrate(
        &mut self,
        round: u64,
        set: &Arc<ChallengeSet>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Duration>, LoopError> {
        let Some(image) = self.env.settings.gpu.calibration_image.clone() else {
            return Ok(None);
        };
        if self.calibrated.0 != round {
            let store = self.store.clone();
            let stored = blocking(move || store.calibrations(Some(round))).await?;
            self.calibrated = (round, stored.into_iter().map(|c| c.gpu_uuid).collect());
        }
        let digest = image.digest();
        let any_due = self.slots.iter().any(|rt| {
            rt.busy.is_none()
                && !rt.drained
                && rt.health.usable()
                && !self.calibrated.1.contains(&rt.slot.uuid)
        });
        // A calibration starts a container like any run: not while the engine is down or unswept.
        if any_due && let Some(wait) = self.engine_gate().await {
            return Ok(Some(wait));
        }
        for slot in 0..self.slots.len() {
            let image_busy = self
                .slots
                .iter()
                .any(|s| s.busy.as_ref().is_some_and(|b| b.digest == digest));
            let due = !image_busy
                && self.slots.get(slot).is_some_and(|rt| {
                    rt.busy.is_none()
                        && !rt.drained
                        && rt.health.usable()
                        && !self.calibrated.1.contains(&rt.slot.uuid)
                });
            if !due || !self.passes_probe(slot) {
                continue;
            }
            let Some(rt) = self.slots.get_mut(slot) else {
                continue;
            };
            let run_id = format!(
                "{}{}",
                calibration::RUN_ID_PREFIX,
                next_run_id(&self.run_seq, self.env.clock.as_ref())
            );
            rt.busy = Some(Busy {
                run_id: run_id.clone(),
                hotkey: calibration::CALIBRATION.to_owned(),
                digest: digest.clone(),
            });
            self.calibrated.1.insert(rt.slot.uuid.clone());
            let c = Calibration {
                run_id: run_id.clone(),
                round,
                image: image.clone(),
                slot: rt.slot.clone(),
                started_at: self.env.clock.now_unix(),
            };
            let uuid = c.slot.uuid.clone();
            let held = Held {
                slot,
                run_id,
                key: Lost::Calibration(c.clone()),
            };
            let (env, store, meter, set, cancel) = (
                self.env.clone(),
                self.store.clone(),
                self.meter.clone(),
                set.clone(),
                shutdown.clone(),
            );
            self.tasks.spawn(held, async move {
                let done = calibration::run(&env, meter.as_ref(), &c, &set, &cancel).await;
                let recorded = match done.record {
                    Some(record) => blocking(move || store.record_calibration(&record)).await,
                    None => Ok(()),
                };
                Finished {
                    slot,
                    hotkey: None,
                    infra: done
                        .infra
                        .then(|| "calibration infrastructure failure".to_owned()),
                    gpu_fault: done.gpu_fault,
                    recorded,
                }
            });
            self.refresh_board(&uuid);
        }
        Ok(None)
    }

    /// Whether containers may be started now. `None`: go on. `Some(wait)`: not before `wait` — the
    /// engine does not answer (dockerd stopped or restarting), or it answers again but the containers
    /// the interrupted runs left behind could not be swept yet; nothing is dispatched (calibrations
    /// included) and the next attempt is after a capped backoff, so no miner is charged for the
    /// outage. Why is said in the logs and the `systemctl status` line.
    async fn engine_gate(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if let Some(wait) = self.gate.waiting(now) {
            return Some(wait);
        }
        let host = self.env.engine.host().to_owned();
        if !self.env.engine.ping().await {
            let wait = self.gate.unreachable(now);
            let attempts = self.gate.blocked().map_or(1, |(a, _)| a);
            tracing::warn!(%host, attempts, ?wait, "Docker engine not reachable; evaluations wait for it (miners are not charged)");
            crate::systemd::status(&format!(
                "Docker engine not reachable at {host}; nothing is dispatched (attempt {attempts}, next in {}s)",
                wait.as_secs()
            ));
            return Some(wait);
        }
        if let Some((attempts, Blocked::Unreachable)) = self.gate.blocked() {
            tracing::info!(%host, attempts, "Docker engine reachable again");
        }
        if !self.gate.reachable() {
            self.gate.open();
            return None;
        }
        let keep: HashSet<String> = self
            .slots
            .iter()
            .filter_map(|s| s.busy.as_ref().map(|b| b.run_id.clone()))
            .collect();
        let swept = self.env.engine.reconcile_orphans(&keep).await;
        if let Ok(runs) = &swept
            && !runs.is_empty()
        {
            tracing::warn!(
                count = runs.len(),
                "removed containers left by runs that failed on the host's side"
            );
        }
        let wait = self
            .gate
            .swept(swept.map(|_| ()).map_err(|e| e.to_string()), now)?;
        let attempts = self.gate.blocked().map_or(1, |(a, _)| a);
        let reason = match self.gate.blocked() {
            Some((_, Blocked::SweepFailed(r))) => r.clone(),
            _ => String::new(),
        };
        tracing::warn!(%host, attempts, ?wait, error = %reason, "could not sweep this instance's leftover containers; nothing is dispatched until a sweep succeeds");
        crate::systemd::status(&format!(
            "leftover containers not swept yet ({}): nothing is dispatched (attempt {attempts}, next in {}s)",
            one_line(&reason),
            wait.as_secs()
        ));
        Some(wait)
    }

    /// While evaluations run, pull the images of the next `docker.prepull_ahead` waiting submissions
    /// (in the order they will run), protected from eviction. A failed pull decides nothing: the run
    /// pulls again and classifies the failure itself.
    fn pull_ahead(&mut self, waiting: &[&EvaluationTicket]) {
        let ahead = usize::try_from(self.env.settings.docker.prepull_ahead).unwrap_or(0);
        let next: Vec<crate::domain::ImageRef> = if self.tasks.is_empty() {
            Vec::new()
        } else {
            let mut seen = HashSet::new();
            waiting
                .iter()
                .map(|t| t.image_ref.clone())
                .filter(|i| seen.insert(i.pinned()))
                .take(ahead)
                .collect()
        };
        self.env.images.set_upcoming(&next);
        for image in next {
            if self.prefetches.len() >= ahead || !self.prefetched.insert(image.pinned()) {
                continue;
            }
            let images = self.env.images.clone();
            let timeout = self.env.settings.evaluation.pull_timeout;
            self.prefetches.spawn(async move {
                images.prefetch(&image, timeout).await;
            });
        }
    }

    /// Start one evaluation on `slot` in its own task.
    fn dispatch(
        &mut self,
        slot: usize,
        ticket: EvaluationTicket,
        set: Arc<ChallengeSet>,
        pending: usize,
        shutdown: &CancellationToken,
    ) {
        let Some(rt) = self.slots.get_mut(slot) else {
            return;
        };
        let run_id = next_run_id(&self.run_seq, self.env.clock.as_ref());
        rt.busy = Some(Busy {
            run_id: run_id.clone(),
            hotkey: ticket.hotkey.to_string(),
            digest: ticket.image_ref.digest(),
        });
        let gpu = rt.slot.clone();
        tracing::debug!(pending, gpu = %gpu.uuid, "dispatching");
        let (env, store, meter, cancel) = (
            self.env.clone(),
            self.store.clone(),
            self.meter.clone(),
            shutdown.clone(),
        );
        let held = Held {
            slot,
            run_id: run_id.clone(),
            key: Lost::Miner {
                ticket: ticket.clone(),
                started_at: self.env.clock.now_unix(),
            },
        };
        self.tasks.spawn(
            held,
            run_task(env, store, meter, slot, gpu, ticket, set, run_id, cancel),
        );
        if let Some(uuid) = self.slots.get(slot).map(|s| s.slot.uuid.clone()) {
            self.refresh_board(&uuid);
        }
    }

    /// The open round's challenge set: the one in memory, the persisted one, or a fresh one recorded
    /// in the store.
    async fn challenge_set(&mut self) -> Result<Arc<ChallengeSet>, LoopError> {
        let store = self.store.clone();
        let round = blocking(move || store.round_state()).await?;
        if let (Some(hash), Some(current)) = (&round.challenge_set_hash, &self.current)
            && current.hash() == hash
        {
            return Ok(current.clone());
        }
        let set = match &round.challenge_set_hash {
            Some(hash) => {
                let dir = self.sets_dir.join(hash);
                let set = blocking_challenges(move || load_directory(&dir, &Limits::default())).await?;
                if set.hash() != hash {
                    return Err(LoopError::Internal(format!(
                        "persisted challenge set {hash} has changed on disk"
                    )));
                }
                set
            }
            None => {
                let set = match &self.source {
                    Source::Directory(dir) => {
                        let dir = dir.clone();
                        blocking_challenges(move || load_directory(&dir, &Limits::default())).await?
                    }
                    Source::Api(api) => api.fetch().await.map_err(LoopError::Challenges)?,
                };
                let s = &self.env.settings.evaluation;
                set.ensure_enough(s.warmup_count, s.scoring_count)
                    .map_err(LoopError::Challenges)?;
                persist_set(&self.sets_dir, &set)
                    .map_err(|e| LoopError::Internal(format!("persisting the challenge set: {e}")))?;
                let store = self.store.clone();
                let hash = set.hash().to_owned();
                blocking(move || store.set_challenge_set(&hash)).await?;
                tracing::info!(
                    round = round.number,
                    hash = set.hash(),
                    challenges = set.len(),
                    "challenge set fixed for the round"
                );
                set
            }
        };
        let set = Arc::new(set);
        self.current = Some(set.clone());
        Ok(set)
    }
}

/// The one-line `systemctl status` summary: `round 12: 3 queued, 2 running; GPU-a busy, GPU-b idle`.
fn status_line(round: u64, queued: usize, running: usize, gpus: &[(&str, &str)]) -> String {
    let gpus: Vec<String> = gpus.iter().map(|(id, state)| format!("{id} {state}")).collect();
    format!(
        "round {round}: {queued} queued, {running} running; {}",
        gpus.join(", ")
    )
}

#[cfg(test)]
#[test]
fn the_status_line_names_the_round_queue_and_every_gpu() {
    assert_eq!(
        status_line(12, 3, 2, &[("virtual-0", "busy"), ("virtual-1", "drained")]),
        "round 12: 3 queued, 2 running; virtual-0 busy, virtual-1 drained"
    );
}

fn next_run_id(seq: &AtomicU64, clock: &dyn crate::clock::Clock) -> String {
    let seq = seq.fetch_add(1, Ordering::SeqCst);
    let millis = (clock.now_unix() * 1000.0) as u64;
    format!("run-{millis:x}-{seq}")
}

/// One evaluation, from `RunStarted` to its recorded result; runs concurrently with the other slots.
#[allow(clippy::too_many_arguments)]
async fn run_task(
    env: Arc<RunEnv>,
    store: Store,
    meter: Arc<dyn VramMeter>,
    slot_index: usize,
    slot: GpuSlot,
    ticket: EvaluationTicket,
    set: Arc<ChallengeSet>,
    run_id: String,
    shutdown: CancellationToken,
) -> Finished {
    // Field names are the journald contract (logging::JOURNAL_FIELDS): RUN_ID, MINER_HOTKEY, GPU_UUID,
    // ROUND, IMAGE_DIGEST, VERDICT.
    let span = tracing::info_span!(
        "run",
        run_id = %run_id,
        miner_hotkey = %ticket.hotkey,
        gpu_uuid = %slot.uuid,
        round = ticket.round
    );
    let blocked = {
        let (store, hotkey, image) = (store.clone(), ticket.hotkey.clone(), ticket.image_ref.clone());
        blocking(move || store.blocking_rule(&hotkey, &image)).await
    };
    let started_at = env.clock.now_unix();
    env.events.publish(EventKind::RunStarted {
        run_id: run_id.clone(),
        hotkey: ticket.hotkey.to_string(),
        image: ticket.image_ref.to_string(),
        gpu: slot.uuid.clone(),
        round: ticket.round,
        challenges: u32::try_from(
            env.settings.evaluation.warmup_count + env.settings.evaluation.scoring_count,
        )
        .unwrap_or(u32::MAX),
    });
    let req = RunRequest {
        run_id: run_id.clone(),
        ticket: &ticket,
        challenges: &set,
        slot: &slot,
        meter: meter.as_ref(),
    };
    // Everything the run logs carries run_id, miner_hotkey, gpu_uuid and round.
    let (outcome, report) = async {
        if let Ok(Some(rule)) = &blocked {
            // An operator block: the image is never pulled or run.
            tracing::info!(image_digest = %ticket.image_ref.digest(), "submission blocked by the operator");
            let metrics = crate::domain::EvaluationMetrics::failed(
                Verdict::ImageRejected,
                format!("blocked by the operator: {}", rule.reason),
                ticket.image_ref.as_str(),
                ticket.submit_time,
                env.clock.now_unix(),
                u32::try_from(env.settings.evaluation.scoring_count).unwrap_or(u32::MAX),
            );
            return (
                RunOutcome::Result(Box::new(metrics)),
                super::run::RunReport::default(),
            );
        }
        tracing::info!(image_digest = %ticket.image_ref.digest(), "evaluation started");
        run_evaluation(&env, req, &shutdown).await
    }
    .instrument(span.clone())
    .await;
    let finished_at = env.clock.now_unix();
    let mut record = RunRecord {
        run_id: run_id.clone(),
        hotkey: ticket.hotkey.clone(),
        image_ref: ticket.image_ref.to_string(),
        generation: ticket.generation,
        round: ticket.round,
        verdict: Verdict::InfraError,
        reason: None,
        stage_times: report.stage_times.clone(),
        metrics: None,
        started_at,
        finished_at,
        log_tail: Some(report.log_tail.clone()).filter(|l| !l.is_empty()),
        notes: report.notes.clone(),
        image_source: report.image_source.map(|p| p.as_str().to_owned()),
    };
    env.events.publish(EventKind::Verdict {
        run_id: run_id.clone(),
        hotkey: ticket.hotkey.to_string(),
        verdict: match &outcome {
            RunOutcome::Result(m) => m.verdict.to_string(),
            RunOutcome::Infra(_) => Verdict::InfraError.to_string(),
        },
        reason: match &outcome {
            RunOutcome::Result(m) => m.error.clone(),
            RunOutcome::Infra(r) => Some(r.clone()),
        },
        score: match &outcome {
            RunOutcome::Result(m) => Some(m.final_score),
            RunOutcome::Infra(_) => None,
        },
    });
    let hotkey = ticket.hotkey.to_string();
    let gpu_fault = report.gpu_fault.clone();
    match outcome {
        RunOutcome::Result(metrics) => {
            record.verdict = metrics.verdict;
            record.reason = metrics.error.clone();
            record.metrics = Some((*metrics).clone());
            let verdict = metrics.verdict;
            let t = ticket.clone();
            let staged = blocking(move || {
                let outcome = store.stage_result(&t, *metrics)?;
                store.record_run(&record)?;
                Ok(outcome)
            })
            .await;
            match &staged {
                Ok(StageOutcome::Staged) => {
                    span.in_scope(|| tracing::info!(%verdict, "result staged"))
                }
                Ok(StageOutcome::Discarded { reason }) => {
                    span.in_scope(|| tracing::info!(%verdict, reason = reason.as_str(), "result discarded: the submission changed during the run"))
                }
                Err(_) => {}
            }
            Finished {
                slot: slot_index,
                hotkey: Some(hotkey),
                infra: None,
                gpu_fault,
                recorded: staged.map(|_| ()),
            }
        }
        RunOutcome::Infra(reason) => {
            span.in_scope(|| tracing::warn!(verdict = %Verdict::InfraError, %reason, "run ended in an infrastructure failure"));
            record.reason = Some(reason.clone());
            let recorded = blocking(move || store.record_run(&record)).await;
            Finished {
                slot: slot_index,
                hotkey: Some(hotkey),
                infra: Some(reason),
                gpu_fault,
                recorded,
            }
        }
    }
}

/// Trims the image cache each time it is woken, one eviction at a time and never in a run's task (a
/// run's GPU slot is free before its image may be removed). Wake-ups during an eviction coalesce into
/// one more; failures are only logged (the next wake-up tries again).
async fn evictor(images: Arc<crate::runtime::ImageCache>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        match images.evict().await {
            Ok(removed) if !removed.is_empty() => {
                crate::systemd::status(&format!(
                    "image cache: removed {} least recently used image(s)",
                    removed.len()
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "image cache eviction failed; tried again after the next run")
            }
        }
    }
}

/// Write the set in the challenge-directory format, atomically (temporary directory, then rename).
fn persist_set(sets_dir: &Path, set: &ChallengeSet) -> std::io::Result<()> {
    let final_dir = sets_dir.join(set.hash());
    if final_dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(sets_dir)?;
    let tmp = sets_dir.join(format!(".{}.tmp", set.hash()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    for c in set.iter() {
        let dir = tmp.join(c.id().as_str());
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("face.png"), c.face())?;
        std::fs::write(dir.join("audio.wav"), c.audio())?;
        if let Some(text) = c.text() {
            std::fs::write(dir.join("text.txt"), text)?;
        }
    }
    std::fs::rename(&tmp, &final_dir)
}

/// Why a loop step failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The challenges could not be obtained.
    #[error("challenges: {0}")]
    Challenges(ChallengeError),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, LoopError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| LoopError::Internal(e.to_string()))?
        .map_err(LoopError::Store)
}

async fn blocking_challenges(
    op: impl FnOnce() -> Result<ChallengeSet, ChallengeError> + Send + 'static,
) -> Result<ChallengeSet, LoopError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| LoopError::Internal(e.to_string()))?
        .map_err(LoopError::Challenges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigLocation, load};
    use crate::domain::{Hotkey, ImageRef};
    use crate::gpu::VirtualInventory;

    /// The loop with the real Docker engine, analyser and LMDB store, on one virtual slot. Docker is
    /// only connected to: nothing runs in it.
    async fn one_slot_loop(dir: &Path) -> EvaluationLoop {
        one_slot_loop_with(dir, "").await
    }

    /// [`one_slot_loop`] with more keys in `[gpu]`.
    async fn one_slot_loop_with(dir: &Path, gpu: &str) -> EvaluationLoop {
        let config = dir.join("t.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"{}\"\n[gpu]\nvirtual = 1\n{gpu}",
                dir.join("state.db").display()
            ),
        )
        .unwrap();
        let settings = Arc::new(
            load(&ConfigLocation::Explicit(config), &|_| None)
                .unwrap()
                .settings,
        );
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let store = Store::open_small(&dir.join("state.db"));
        let engine = crate::runtime::Engine::connect(&settings.docker.host, store.instance_id())
            .await
            .unwrap();
        let images = Arc::new(crate::runtime::ImageCache::new(
            engine.clone(),
            store.clone(),
            settings.docker.image_cache_bytes,
            clock.clone(),
        ));
        let env = Arc::new(RunEnv {
            engine,
            images,
            analyzer: crate::analysis::default_analyzer(&settings.analysis).await.unwrap(),
            settings: settings.clone(),
            clock: clock.clone(),
            container_user: super::super::run::ContainerUser::resolve(&settings.container.user),
            events: crate::events::EventBus::new(clock),
        });
        EvaluationLoop::new(
            env,
            store,
            Source::Directory(dir.to_path_buf()),
            Arc::new(VirtualInventory::new(1)),
            LoopControl::default(),
        )
    }

    #[tokio::test]
    async fn a_calibration_waits_for_the_engine_gate_like_any_run() {
        let dir = tempfile::tempdir().unwrap();
        let image = format!(
            "127.0.0.1:5000/talkheadd-cache-test/calib@sha256:{}",
            "e".repeat(64)
        );
        let mut lp = one_slot_loop_with(dir.path(), &format!("calibration_image = \"{image}\"\n")).await;
        let fixtures = crate::analysis::face::tests::fixtures_dir();
        lp.current = Some(Arc::new(load_directory(&fixtures, &Limits::default()).unwrap()));
        // Nothing pending, the round's set known, the GPU not calibrated: a calibration is due. The
        // engine gate is closed (its last ping failed).
        lp.gate.unreachable(Instant::now());
        let wait = lp.step(&CancellationToken::new()).await.unwrap();
        assert!(
            lp.tasks.is_empty(),
            "a calibration was started while the engine gate was closed"
        );
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(2)),
            "{wait:?}"
        );
        // Once the gate opens (the engine answers), the calibration starts.
        lp.gate = EngineGate::new(MAX_ENGINE_BACKOFF);
        lp.step(&CancellationToken::new()).await.unwrap();
        assert_eq!(lp.tasks.len(), 1, "the calibration did not start");
        assert!(
            lp.slots[0]
                .busy
                .as_ref()
                .is_some_and(|b| b.run_id.starts_with(calibration::RUN_ID_PREFIX))
        );
    }

    #[tokio::test]
    async fn a_run_hands_its_slot_back_without_waiting_for_the_image_cache_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let mut lp = one_slot_loop(dir.path()).await;
        let fixtures = crate::analysis::face::tests::fixtures_dir();
        let set = Arc::new(load_directory(&fixtures, &Limits::default()).unwrap());
        // Not in the local registry: the run ends at its pull (`pull_failed`), no container involved.
        let ticket = EvaluationTicket {
            hotkey: Hotkey::from_public_key([8; 32]),
            image_ref: ImageRef::parse(&format!(
                "127.0.0.1:5000/talkheadd-cache-test/absent@sha256:{}",
                "d".repeat(64)
            ))
            .unwrap(),
            generation: 1,
            submit_time: 1.0,
            round: 1,
        };
        let images = lp.env.images.clone();
        let held = images.hold_evictions().await;
        let slot = lp.slots[0].slot.clone();
        let run = run_task(
            lp.env.clone(),
            lp.store.clone(),
            lp.meter.clone(),
            0,
            slot,
            ticket,
            set,
            "run-evict".into(),
            CancellationToken::new(),
        );
        // A bound, not a synchronisation: the run must end while an eviction holds the cache.
        let done = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("the run waited for the image cache eviction");
        assert!(done.infra.is_none(), "{:?}", done.infra);
        lp.finish(done);
        assert!(lp.slots[0].busy.is_none());
        // The eviction is handed to the loop's evictor, woken once the slot is free.
        assert!(
            futures_util::FutureExt::now_or_never(lp.evict.notified()).is_some(),
            "no eviction was asked for"
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_run_task_that_panics_frees_its_slot_and_is_recorded_as_infra_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut lp = one_slot_loop(dir.path()).await;
        let ticket = EvaluationTicket {
            hotkey: Hotkey::from_public_key([7; 32]),
            image_ref: ImageRef::parse(&format!("127.0.0.1:5000/m@sha256:{}", "c".repeat(64))).unwrap(),
            generation: 1,
            submit_time: 1.0,
            round: 1,
        };
        // What `dispatch` does, with a task that panics in place of `run_task`.
        let Some(rt) = lp.slots.get_mut(0) else {
            panic!("one slot")
        };
        rt.busy = Some(Busy {
            run_id: "run-1".into(),
            hotkey: ticket.hotkey.to_string(),
            digest: ticket.image_ref.digest(),
        });
        let held = Held {
            slot: 0,
            run_id: "run-1".into(),
            key: Lost::Miner {
                ticket: ticket.clone(),
                started_at: 5.0,
            },
        };
        lp.tasks.spawn(held, async { panic!("index out of bounds") });
        lp.refresh_board("virtual-0");
        assert_eq!(lp.board.snapshot()[0].state.name(), "busy");

        let ended = lp.tasks.next().await.unwrap();
        lp.ended(ended).await;

        assert!(lp.slots[0].busy.is_none(), "the slot is free again");
        assert_eq!(lp.board.snapshot()[0].state, GpuState::Available);
        assert!(
            lp.backoff_until.contains_key(ticket.hotkey.as_str()),
            "retried later, like any infrastructure failure"
        );
        let runs = lp.store.runs_for(&ticket.hotkey, 5).unwrap();
        assert_eq!(runs.len(), 1, "{runs:#?}");
        assert_eq!(runs[0].verdict, Verdict::InfraError, "never the miner's fault");
        assert_eq!(runs[0].run_id, "run-1");
        assert_eq!(runs[0].started_at, 5.0);
        let reason = runs[0].reason.clone().unwrap_or_default();
        assert!(reason.contains("panicked: index out of bounds"), "{reason}");
    }
}
