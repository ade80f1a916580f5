//! The dispatch effect: starting what the plan placed. A miner's run or a calibration is spawned in its
//! own task on [`RunTasks`] (whatever way it ends, its slot is handed back with a [`Finished`], or
//! recovered from its [`Lost`] key); a duplicate digest is settled without a run. A miner's run executes
//! through the loop's [`Executor`] (this host's slot, or a cluster's GPU host); its outcome is recorded
//! and staged here the same way for every executor.

use super::blocking::{LoopError, blocking};
use super::calibration::{self, Calibration};
use super::executor::Executor;
use super::run::{RunEnv, RunOutcome, RunRequest};
use super::tasks::{Held, RunTasks};
use super::verdicts::one_line;
use crate::challenges::ChallengeSet;
use crate::domain::{EvaluationMetrics, Verdict};
use crate::events::EventKind;
use crate::gpu::GpuSlot;
use crate::gpu::health::Fault;
use crate::gpu::vram::VramMeter;
use crate::rounds::{EvaluationTicket, StageOutcome};
use crate::store::{RunRecord, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The run tasks in flight.
pub(super) type Tasks = RunTasks<Finished, Lost>;

/// What the loop needs to account for a run task that ended without a result (it panicked).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lost {
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
pub(super) struct Finished {
    pub(super) slot: usize,
    /// The miner evaluated; `None` for a calibration run (no miner to back off or clear).
    pub(super) hotkey: Option<String>,
    /// `Some(reason)` for an infrastructure failure (the miner backs off and is retried).
    pub(super) infra: Option<String>,
    /// A GPU fault seen during the run.
    pub(super) gpu_fault: Option<Fault>,
    /// Store errors while recording the result.
    pub(super) recorded: Result<(), LoopError>,
}

/// What every dispatch needs.
pub(super) struct Dispatcher {
    pub(super) env: Arc<RunEnv>,
    pub(super) store: Store,
    pub(super) meter: Arc<dyn VramMeter>,
    /// Where miners' runs execute.
    pub(super) executor: Arc<dyn Executor>,
    run_seq: AtomicU64,
}

impl Dispatcher {
    /// Dispatches through `executor`, with the inventory's VRAM meter.
    pub(super) fn new(
        env: Arc<RunEnv>,
        store: Store,
        meter: Arc<dyn VramMeter>,
        executor: Arc<dyn Executor>,
    ) -> Dispatcher {
        Dispatcher {
            env,
            store,
            meter,
            executor,
            run_seq: AtomicU64::new(0),
        }
    }

    /// A fresh run id.
    pub(super) fn next_run_id(&self) -> String {
        let seq = self.run_seq.fetch_add(1, Ordering::SeqCst);
        let millis = (self.env.clock.now_unix() * 1000.0) as u64;
        format!("run-{millis:x}-{seq}")
    }

    /// Start one evaluation of `ticket` on `gpu` (slot `slot`) in its own task.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        tasks: &mut Tasks,
        slot: usize,
        gpu: GpuSlot,
        ticket: EvaluationTicket,
        set: Arc<ChallengeSet>,
        run_id: String,
        shutdown: &CancellationToken,
    ) {
        let held = Held {
            slot,
            run_id: run_id.clone(),
            key: Lost::Miner {
                ticket: ticket.clone(),
                started_at: self.env.clock.now_unix(),
            },
        };
        tasks.spawn(
            held,
            run_task(
                self.env.clone(),
                self.executor.clone(),
                self.store.clone(),
                self.meter.clone(),
                slot,
                gpu,
                ticket,
                set,
                run_id,
                shutdown.clone(),
            ),
        );
    }

    /// Start calibration `c` on slot `slot` in its own task; its record is stored when it ends.
    pub(super) fn calibrate(
        &self,
        tasks: &mut Tasks,
        slot: usize,
        c: Calibration,
        set: Arc<ChallengeSet>,
        shutdown: &CancellationToken,
    ) {
        let held = Held {
            slot,
            run_id: c.run_id.clone(),
            key: Lost::Calibration(c.clone()),
        };
        let (env, store, meter, cancel) = (
            self.env.clone(),
            self.store.clone(),
            self.meter.clone(),
            shutdown.clone(),
        );
        tasks.spawn(held, async move {
            let done = calibration::run(&env, meter.as_ref(), &c, &set, &cancel).await;
            let recorded = match done.record {
                Some(record) => blocking(&store, move |store| store.record_calibration(&record)).await,
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
    }

    /// Record a run whose task ended without a result (it panicked) as `infra_error` — a bug of ours,
    /// never the miner's fault — and tell watchers, so the history shows what happened. `gpu` is the
    /// UUID of the slot it held.
    pub(super) async fn lost(&self, held: Held<Lost>, reason: String, gpu: &str) -> Finished {
        let reason = one_line(&reason);
        let Held { slot, run_id, key } = held;
        let (ticket, started_at) = match key {
            Lost::Miner { ticket, started_at } => (ticket, started_at),
            Lost::Calibration(c) => {
                tracing::error!(run_id = %run_id, gpu_uuid = %c.slot.uuid, %reason, "a calibration task ended without a result; its GPU slot is freed");
                let outcome = RunOutcome::Infra(reason.clone());
                let record = calibration::record(&c, &outcome, self.env.clock.now_unix());
                let recorded = blocking(&self.store, move |store| store.record_calibration(&record)).await;
                return Finished {
                    slot,
                    hotkey: None,
                    infra: Some(reason),
                    gpu_fault: None,
                    recorded,
                };
            }
        };
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
        let recorded = blocking(&self.store, move |store| store.record_run(&record)).await;
        Finished {
            slot,
            hotkey: Some(ticket.hotkey.to_string()),
            infra: Some(reason),
            gpu_fault: None,
            recorded,
        }
    }

    /// Settle a duplicate digest without a run (`evaluation.duplicates`): stage `metrics` for the
    /// ticket and record the run, stamped `now`, in the miner's history.
    pub(super) async fn settle(
        &self,
        ticket: EvaluationTicket,
        metrics: EvaluationMetrics,
        now: f64,
    ) -> Result<(), LoopError> {
        let run_id = self.next_run_id();
        let mut metrics = metrics;
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
        blocking(&self.store, move |store| {
            store.stage_result(&ticket, metrics)?;
            store.record_run(&record)
        })
        .await
    }
}

/// One evaluation, from `RunStarted` to its recorded result; runs concurrently with the other slots.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_task(
    env: Arc<RunEnv>,
    executor: Arc<dyn Executor>,
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
        let (hotkey, image) = (ticket.hotkey.clone(), ticket.image_ref.clone());
        blocking(&store, move |store| store.blocking_rule(&hotkey, &image)).await
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
        keep_videos: None,
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
        executor.evaluate(req, &shutdown).await
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
            let staged = blocking(&store, move |store| {
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
            let recorded = blocking(&store, move |store| store.record_run(&record)).await;
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
