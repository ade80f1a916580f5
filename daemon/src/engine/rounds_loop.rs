//! The evaluation loop: pending miners → runs → staged results → round commit, one challenge set per
//! round. It is the only writer of evaluation results; HTTP upserts wake it through a [`Notify`].
//!
//! A round's challenge set is persisted under `<work_dir>/../challenge-sets/<hash>/` before its hash is
//! recorded in the store, so a restarted daemon resumes the round on exactly the same challenges.
//! Infrastructure failures put the miner on a capped backoff and are recorded in its history, never
//! staged as a score.

use super::run::{RunEnv, RunOutcome, RunRequest, run_evaluation};
use crate::challenges::{ChallengeError, ChallengeSet, Limits, SubnetApiSource, load_directory};
use crate::domain::Verdict;
use crate::events::EventKind;
use crate::gpu::GpuInventory;
use crate::rounds::{EvaluationTicket, StageOutcome, ranker};
use crate::runtime::pull::backoff;
use crate::store::{RunRecord, Store, StoreError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long the loop idles without a wake-up before it looks again.
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Longest backoff for a miner whose evaluation failed on the host's side.
const MAX_INFRA_BACKOFF: Duration = Duration::from_secs(600);

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
    run_seq: AtomicU64,
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
        EvaluationLoop {
            env,
            store,
            source,
            inventory,
            control,
            sets_dir,
            current: None,
            backoff_until: HashMap::new(),
            run_seq: AtomicU64::new(0),
        }
    }

    /// Run until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(slots = self.inventory.slots().len(), analyzer = %self.env.analyzer.describe(), "evaluation loop started");
        while !shutdown.is_cancelled() {
            let wait = match self.step(&shutdown).await {
                Ok(Some(wait)) => wait,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "evaluation loop step failed; retrying");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.control.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("evaluation loop stopped");
    }

    /// One decision. `Ok(None)`: go again at once; `Ok(Some(d))`: idle up to `d` or until woken.
    async fn step(&mut self, shutdown: &CancellationToken) -> Result<Option<Duration>, LoopError> {
        if self.control.is_paused() {
            return Ok(Some(IDLE_RECHECK));
        }
        let store = self.store.clone();
        let pending = blocking(move || store.pending()).await?;
        let now = Instant::now();
        let ready: Vec<&EvaluationTicket> = pending
            .iter()
            .filter(|t| {
                self.backoff_until
                    .get(t.hotkey.as_str())
                    .is_none_or(|(_, until)| *until <= now)
            })
            .collect();
        if pending.is_empty() {
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
                return Ok(None);
            }
            return Ok(Some(IDLE_RECHECK));
        }
        let Some(ticket) = ready.first().map(|t| (*t).clone()) else {
            let next = self.backoff_until.values().map(|(_, until)| *until).min();
            return Ok(Some(next.map_or(IDLE_RECHECK, |t| {
                t.saturating_duration_since(now).max(Duration::from_millis(100))
            })));
        };
        let set = match self.challenge_set().await {
            Ok(set) => set,
            Err(LoopError::Challenges(e)) => {
                tracing::warn!(error = %e, transient = e.is_transient(), "cannot obtain the round's challenges");
                return Ok(Some(Duration::from_secs(
                    e.retry_after_secs().unwrap_or(30).clamp(5, 600),
                )));
            }
            Err(e) => return Err(e),
        };
        let Some(slot) = self.inventory.slots().into_iter().next() else {
            tracing::warn!("no GPU slot available");
            return Ok(Some(IDLE_RECHECK));
        };
        let run_id = self.next_run_id();
        crate::systemd::status(&format!(
            "round {}: evaluating {} ({} pending)",
            ticket.round,
            ticket.hotkey,
            pending.len()
        ));
        let span = tracing::info_span!("run", run_id = %run_id, hotkey = %ticket.hotkey, gpu = %slot.uuid);
        let started_at = self.env.clock.now_unix();
        let req = RunRequest {
            run_id: run_id.clone(),
            ticket: &ticket,
            challenges: &set,
            slot: &slot,
        };
        // Everything the run logs carries run_id, hotkey and gpu.
        self.env.events.publish(EventKind::RunStarted {
            run_id: run_id.clone(),
            hotkey: ticket.hotkey.to_string(),
            image: ticket.image_ref.to_string(),
            gpu: slot.uuid.clone(),
            round: ticket.round,
            challenges: u32::try_from(
                self.env.settings.evaluation.warmup_count + self.env.settings.evaluation.scoring_count,
            )
            .unwrap_or(u32::MAX),
        });
        let (outcome, report) = async {
            tracing::info!(image = %ticket.image_ref, "evaluation started");
            run_evaluation(&self.env, req, shutdown).await
        }
        .instrument(span)
        .await;
        let finished_at = self.env.clock.now_unix();
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
        };
        self.env.events.publish(EventKind::Verdict {
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
        match outcome {
            RunOutcome::Result(metrics) => {
                self.backoff_until.remove(ticket.hotkey.as_str());
                record.verdict = metrics.verdict;
                record.reason = metrics.error.clone();
                record.metrics = Some((*metrics).clone());
                let verdict = metrics.verdict;
                let store = self.store.clone();
                let t = ticket.clone();
                let staged = blocking(move || {
                    let outcome = store.stage_result(&t, *metrics)?;
                    store.record_run(&record)?;
                    Ok(outcome)
                })
                .await?;
                match staged {
                    StageOutcome::Staged => {
                        tracing::info!(run_id = %run_id, hotkey = %ticket.hotkey, %verdict, "result staged")
                    }
                    StageOutcome::Discarded { reason } => {
                        tracing::info!(run_id = %run_id, hotkey = %ticket.hotkey, reason = reason.as_str(), "result discarded: the submission changed during the run")
                    }
                }
            }
            RunOutcome::Infra(reason) => {
                let attempts = self
                    .backoff_until
                    .get(ticket.hotkey.as_str())
                    .map_or(1, |(a, _)| a + 1);
                let wait = backoff(attempts, MAX_INFRA_BACKOFF);
                self.backoff_until
                    .insert(ticket.hotkey.to_string(), (attempts, Instant::now() + wait));
                tracing::warn!(run_id = %run_id, hotkey = %ticket.hotkey, %reason, ?wait, "infrastructure failure; the miner is not charged and will be retried");
                record.reason = Some(reason);
                let store = self.store.clone();
                blocking(move || store.record_run(&record)).await?;
            }
        }
        Ok(None)
    }

    fn next_run_id(&self) -> String {
        let seq = self.run_seq.fetch_add(1, Ordering::SeqCst);
        let millis = (self.env.clock.now_unix() * 1000.0) as u64;
        format!("run-{millis:x}-{seq}")
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
