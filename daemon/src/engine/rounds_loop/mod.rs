//! The evaluation loop: pending miners → runs → staged results → round commit, one challenge set per
//! round. It is the only writer of evaluation results; HTTP upserts wake it through a [`Notify`].
//!
//! Each tick: gather a snapshot (`gather`: store, slots, gate, backoffs), let the pure [`plan`]
//! decide, apply its actions (`apply`), wait. The decisions are all in [`super::plan`]; the effects in
//! their own modules: `engine::dispatch` (runs, calibrations, duplicates settled), `engine::slots`
//! (health, drain, board), [`super::gate`] (engine ping and sweeps), `engine::challenge_set`,
//! `engine::prefetch` and `engine::evict`. What stays here is the state carried from tick to tick
//! and the book-keeping after a run ends: an infrastructure failure puts the miner on a capped backoff
//! (recorded in its history, never staged as a score); a run task that panics still frees its slot
//! ([`super::tasks`]), its run recorded as `infra_error`.

use super::calibration;
use super::challenge_set::RoundSet;
use super::dispatch::{Dispatcher, Finished, Tasks};
use super::executor::{Executor, LocalExecutor};
use super::gate::{self, Blocked, EngineGate};
use super::plan::{ChallengesView, EngineView, GateHold, Need, Plan, plan};
use super::prefetch::Prefetches;
use super::run::RunEnv;
use super::slots::Slots;
use super::tasks::Ended;
use crate::gpu::{GpuBoard, GpuInventory};
use crate::runtime::pull::backoff;
use crate::store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use super::blocking::LoopError;
pub use super::challenge_set::{Source, sets_dir};

/// Longest backoff for a miner whose evaluation failed on the host's side.
const MAX_INFRA_BACKOFF: Duration = Duration::from_secs(600);
/// Longest wait between two attempts to reach a Docker engine that stopped answering.
const MAX_ENGINE_BACKOFF: Duration = Duration::from_secs(30);

/// The loop's controls are the service layer's: the gateway and the admin plane hold them, the loop obeys.
pub use crate::service::LoopControl;

/// The loop and what it carries from tick to tick.
pub struct EvaluationLoop {
    env: Arc<RunEnv>,
    store: Store,
    inventory: Arc<dyn GpuInventory>,
    control: LoopControl,
    set: RoundSet,
    backoff_until: HashMap<String, (u32, Instant)>,
    slots: Slots,
    dispatcher: Dispatcher,
    /// The GPU model the open round is measured on (`gpu.same_model_per_round`).
    round_model: Option<(u64, String)>,
    /// The round whose calibrations are tracked, and the GPUs that have had theirs (stored or running).
    calibrated: (u64, HashSet<String>),
    tasks: Tasks,
    /// Pulls of the next submissions' images, running beside the evaluations.
    prefetches: Prefetches,
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
        let set = RoundSet::new(source, &env.settings.evaluation.work_dir);
        let slots = Slots::new(inventory.clone(), env.clone());
        let executor: Arc<dyn Executor> = Arc::new(LocalExecutor::new(env.clone()));
        let dispatcher = Dispatcher::new(env.clone(), store.clone(), inventory.vram_meter(), executor);
        EvaluationLoop {
            env,
            store,
            inventory,
            control,
            set,
            backoff_until: HashMap::new(),
            slots,
            dispatcher,
            round_model: None,
            calibrated: (0, HashSet::new()),
            tasks: Tasks::default(),
            prefetches: Prefetches::default(),
            gate: EngineGate::new(MAX_ENGINE_BACKOFF),
            evict: Arc::new(Notify::new()),
        }
    }

    /// Runs execute through `executor` instead of on this host's Docker engine (the Ray coordinator):
    /// the loop then neither waits for a local engine nor pulls images ahead nor sweeps containers.
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> EvaluationLoop {
        self.dispatcher.executor = executor;
        self
    }

    /// Whether runs use this host's Docker engine.
    fn local_engine(&self) -> bool {
        self.dispatcher.executor.uses_local_engine()
    }

    /// The shared per-GPU status board (for `status` and the admin plane).
    pub fn board(&self) -> GpuBoard {
        self.slots.board.clone()
    }

    /// Run until `shutdown`; runs in flight see the cancellation, kill their containers and are
    /// awaited before this returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(slots = self.slots.list.len(), real_gpus = self.inventory.is_real(), analyzer = %self.env.analyzer.describe(), executor = %self.dispatcher.executor.describe(), "evaluation loop started");
        // The watchdog is fed from this tick: if the scheduler wedges (a step that never returns),
        // systemd stops hearing from it and restarts the daemon.
        let watchdog = crate::systemd::watchdog_interval();
        let local_engine = self.local_engine();
        // Images are cached only where they are pulled: a coordinator's hosts trim their own.
        let evictor = local_engine
            .then(|| tokio::spawn(super::evict::evictor(self.env.images.clone(), self.evict.clone())));
        while !shutdown.is_cancelled() {
            if watchdog.is_some() {
                crate::systemd::watchdog();
            }
            while let Some(ended) = self.tasks.try_next() {
                self.ended(ended).await;
            }
            self.prefetches.reap();
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
                () = self.control.notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(ended) = self.tasks.next(), if busy => self.ended(ended).await,
            }
        }
        self.prefetches.abort();
        while let Some(ended) = self.tasks.next().await {
            self.ended(ended).await;
        }
        // Awaited, as the pre-pulls are: their handles on the store must be gone before it closes.
        if let Some(evictor) = evictor {
            evictor.abort();
            let _ = evictor.await;
        }
        self.prefetches.join().await;
        if local_engine {
            gate::final_sweep(&self.env.engine).await;
            super::evict::final_eviction(&self.env.images).await;
        }
        tracing::info!("evaluation loop stopped");
    }

    /// A run task ended: with its result, or lost (it panicked), in which case the run it held is
    /// recorded as an `infra_error` and its slot is freed the same way as after any infrastructure
    /// failure.
    async fn ended(&mut self, ended: Ended<Finished, super::dispatch::Lost>) {
        let done = match ended {
            Ended::Returned(done) => done,
            Ended::Lost { held, reason } => {
                let gpu = self
                    .slots
                    .list
                    .get(held.slot)
                    .map(|s| s.slot.uuid.clone())
                    .unwrap_or_default();
                self.dispatcher.lost(held, reason, &gpu).await
            }
        };
        self.finish(done);
    }

    /// Book-keeping after a run task ended: free its slot, back the miner off on an infrastructure
    /// failure, feed the GPU's health.
    fn finish(&mut self, done: Finished) {
        let now_unix = self.env.clock.now_unix();
        let hotkey = done.hotkey.as_deref().unwrap_or(calibration::CALIBRATION);
        if let Err(e) = &done.recorded {
            tracing::error!(%hotkey, error = %e, "recording the run failed");
        }
        if done.infra.is_some() && self.local_engine() {
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
        self.slots
            .free(done.slot, done.gpu_fault.as_ref(), done.infra.is_some(), now_unix);
    }

    /// One tick: gather, plan (obtaining the facts the plan asks for), apply. `Ok(None)`: go again at
    /// once; `Ok(Some(d))`: idle up to `d`, until woken or until a run finishes.
    async fn step(&mut self, shutdown: &CancellationToken) -> Result<Option<Duration>, LoopError> {
        let mut snap = self.snapshot().await?;
        let mut set = None;
        // Each fact is asked for at most once per tick; the bound only guards against a plan that would
        // keep asking.
        for _ in 0..4 {
            match plan(&snap) {
                Plan::Decided(decision) => return self.apply(decision, set, &snap, shutdown).await,
                Plan::Need(Need::Engine) if !self.local_engine() => snap.engine = EngineView::Open,
                Plan::Need(Need::Engine) => {
                    let keep = self.slots.running();
                    let now = Instant::now();
                    snap.engine = match gate::check(&mut self.gate, &self.env.engine, &keep, now).await {
                        None => EngineView::Open,
                        Some(wait) => EngineView::Closed {
                            wait,
                            why: gate_hold(&self.gate),
                        },
                    };
                }
                Plan::Need(Need::Challenges) => {
                    snap.challenges = match self.set.get(&self.store, &self.env.settings).await {
                        Ok(s) => {
                            set = Some(s);
                            ChallengesView::Ready
                        }
                        Err(LoopError::Challenges(e)) => {
                            tracing::warn!(error = %e, transient = e.is_transient(), "cannot obtain the round's challenges");
                            // Shown by `systemctl status`: why nothing is evaluated although miners
                            // are pending.
                            crate::systemd::status(&format!(
                                "cannot obtain the round's challenges ({}): {e}",
                                e.reason()
                            ));
                            ChallengesView::Unavailable {
                                retry: Duration::from_secs(e.retry_after_secs().unwrap_or(30).clamp(5, 600)),
                            }
                        }
                        Err(e) => return Err(e),
                    };
                }
            }
        }
        Err(LoopError::Internal(
            "the tick's plan kept asking for facts".into(),
        ))
    }
}

/// Why the gate is closed, for the plan.
fn gate_hold(gate: &EngineGate) -> GateHold {
    match gate.blocked() {
        Some((_, Blocked::SweepFailed(_))) => GateHold::SweepFailed,
        _ => GateHold::Unreachable,
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

mod apply;
mod gather;
#[cfg(test)]
mod tests;
