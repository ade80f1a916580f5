//! The admin plane's operations (status, miners, runs, scores, blocks, pause, re-evaluate, reload) over
//! the same [`Service`] the HTTP gateway uses: each read is one store read on a blocking thread, each
//! control is one store decision. The gRPC layer only converts types and maps errors.

use super::{Service, ServiceError};
use crate::domain::{Hotkey, Verdict};
use crate::events::ActiveRun;
use crate::gpu::GpuState;
use crate::rounds::{rank_input, ranker};
use crate::store::{BlockRecord, BlockTarget, MetricsRow, MinerView, ReevaluateOutcome, RunRecord};
use std::sync::Arc;
use std::time::Instant;

/// Facts about this daemon process that status reports.
pub struct RuntimeInfo {
    /// When the process started.
    pub started: Instant,
    /// SHA-256 (hex) of the effective configuration as `print-config` renders it.
    pub config_digest: String,
    /// `nvml`, `virtual (N slots)`.
    pub gpu_backend: String,
    /// The GPUs the daemon may use and where each stands.
    pub gpus: crate::gpu::GpuBoard,
    /// The Docker engine, when an evaluation loop runs.
    pub docker: Option<crate::runtime::Engine>,
    /// Tie epsilon of the winner selection.
    pub tie_epsilon: f64,
}

/// Re-reads the configuration and applies the reloadable subset.
pub type Reloader = Arc<dyn Fn() -> Result<ReloadReport, String> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys whose new values are in effect.
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
}

/// Admin-only parts of the service.
#[derive(Clone)]
pub struct AdminContext {
    /// Process facts.
    pub runtime: Arc<RuntimeInfo>,
    /// Engine events and the live board.
    pub events: crate::events::EventBus,
    /// Configuration reload.
    pub reloader: Reloader,
}

/// State of one GPU for status.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStatus {
    /// UUID or `virtual-N`.
    pub id: String,
    /// Model.
    pub name: String,
    /// `available`, `drained`, `quarantined`.
    pub state: String,
    /// Why, when not available.
    pub reason: Option<String>,
    /// What it runs now.
    pub current: Option<ActiveRun>,
    /// Its latest calibration, if any.
    pub last_calibration: Option<crate::store::CalibrationRecord>,
}

/// The daemon at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Configuration digest.
    pub config_digest: String,
    /// Docker engine state.
    pub docker: String,
    /// GPU backend.
    pub gpu_backend: String,
    /// Per GPU.
    pub gpus: Vec<GpuStatus>,
    /// Pending miners.
    pub queue_length: u64,
    /// Open round.
    pub round: u64,
    /// Miners of the open round with a staged result.
    pub round_evaluated: u64,
    /// Tracked miners.
    pub round_total: u64,
    /// Last commit (unix), if any.
    pub last_commit_unix: Option<f64>,
    /// Evaluation paused.
    pub paused: bool,
    /// `/metrics` ETag counter.
    pub metrics_version: u64,
    /// Newest event.
    pub last_event_seq: u64,
    /// The scheduler's latest decision, once it made one.
    pub scheduler: Option<crate::events::SchedulerNote>,
}

/// One row of the committed ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// 1-based rank; rank 1 is what winner selection picks (when eligible).
    pub rank: u32,
    /// The committed row.
    pub row: MetricsRow,
    /// Whether it may win (verdict ok, no error, positive score).
    pub eligible: bool,
}

/// Filter of [`Service::list_miners`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinerStateFilter {
    /// Waiting for evaluation in the open round.
    Pending,
    /// Evaluated in the open round, not yet committed.
    Staged,
    /// Neither: its committed result stands.
    Committed,
}

impl MinerStateFilter {
    /// Parse `pending`, `staged`, `committed`.
    pub fn parse(text: &str) -> Result<MinerStateFilter, ServiceError> {
        match text {
            "pending" => Ok(MinerStateFilter::Pending),
            "staged" => Ok(MinerStateFilter::Staged),
            "committed" => Ok(MinerStateFilter::Committed),
            other => Err(ServiceError::InvalidArgument(format!(
                "unknown state '{other}': expected pending, staged or committed"
            ))),
        }
    }
}

/// The state a miner is in.
pub fn miner_state(m: &MinerView) -> MinerStateFilter {
    if m.pending {
        MinerStateFilter::Pending
    } else if m
        .state
        .staged
        .as_ref()
        .is_some_and(|s| s.generation == m.state.record.generation)
    {
        MinerStateFilter::Staged
    } else {
        MinerStateFilter::Committed
    }
}

/// The newest result's verdict and score: staged if any, else committed.
pub fn latest_result(m: &MinerView) -> Option<(Verdict, f64)> {
    m.state
        .staged
        .as_ref()
        .map(|s| &s.metrics)
        .or(m.state.committed.as_ref().map(|c| &c.metrics))
        .map(|metrics| (metrics.verdict, metrics.final_score))
}

/// Parse a verdict filter.
pub fn parse_verdict(text: &str) -> Result<Verdict, ServiceError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| ServiceError::InvalidArgument(format!("unknown verdict '{text}'")))
}

/// Parse a hotkey argument.
pub fn parse_hotkey(text: &str) -> Result<Hotkey, ServiceError> {
    Hotkey::parse(text).map_err(|e| ServiceError::InvalidArgument(format!("hotkey '{text}': {e}")))
}

impl Service {
    /// Attach the admin plane's context (the daemon does this once at start-up).
    pub fn with_admin(mut self, admin: AdminContext) -> Service {
        self.admin = Some(admin);
        self
    }

    fn admin(&self) -> Result<&AdminContext, ServiceError> {
        self.admin
            .as_ref()
            .ok_or_else(|| ServiceError::Unavailable("the admin context is not set up".into()))
    }

    /// The daemon at a glance.
    pub async fn status(&self) -> Result<StatusReport, ServiceError> {
        let admin = self.admin()?.clone();
        let (counts, round, staged_now, calibrations) = self
            .blocking(|s| {
                let round = s.round_state()?;
                let miners = s.miners()?;
                let staged_now = miners
                    .iter()
                    .filter(|m| miner_state(m) == MinerStateFilter::Staged)
                    .count() as u64;
                Ok((s.counts()?, round, staged_now, s.calibrations(None)?))
            })
            .await?;
        let docker = match &admin.runtime.docker {
            None => "not configured (no challenge source)".to_owned(),
            Some(engine) if engine.ping().await => format!("connected ({})", engine.host()),
            Some(engine) => format!("unreachable at {}", engine.host()),
        };
        let board = admin.events.board();
        let gpus = admin
            .runtime
            .gpus
            .snapshot()
            .into_iter()
            .map(|g| {
                let reason = match &g.state {
                    GpuState::Quarantined { reason, .. } => Some(reason.clone()),
                    GpuState::Drained { finishing: Some(run) } => Some(format!("finishing {run}")),
                    _ => g.last_fault.clone(),
                };
                GpuStatus {
                    current: board.iter().find(|r| r.gpu == g.info.uuid).cloned(),
                    // Oldest first: the last one of this GPU is its latest.
                    last_calibration: calibrations
                        .iter()
                        .rev()
                        .find(|c| c.gpu_uuid == g.info.uuid)
                        .cloned(),
                    id: g.info.uuid,
                    name: g.info.name,
                    state: g.state.name().to_owned(),
                    reason,
                }
            })
            .collect();
        Ok(StatusReport {
            uptime_secs: admin.runtime.started.elapsed().as_secs_f64(),
            config_digest: admin.runtime.config_digest.clone(),
            docker,
            gpu_backend: admin.runtime.gpu_backend.clone(),
            gpus,
            queue_length: counts.pending,
            round: round.number,
            round_evaluated: staged_now,
            round_total: counts.submissions,
            last_commit_unix: round.last_commit_at,
            paused: self.control.is_paused(),
            metrics_version: round.metrics_version,
            last_event_seq: admin.events.last_seq(),
            scheduler: admin.events.scheduler(),
        })
    }

    /// Miners, optionally filtered by state and by the newest result's verdict, sorted by hotkey.
    pub async fn list_miners(
        &self,
        state: Option<MinerStateFilter>,
        verdict: Option<Verdict>,
    ) -> Result<Vec<(MinerView, bool)>, ServiceError> {
        self.blocking(move |s| {
            let blocked = s.blocks()?;
            let mut out = Vec::new();
            for m in s.miners()? {
                if state.is_some_and(|f| miner_state(&m) != f) {
                    continue;
                }
                if verdict.is_some_and(|v| latest_result(&m).map(|(mv, _)| mv) != Some(v)) {
                    continue;
                }
                let is_blocked = is_blocked(&blocked, &m);
                out.push((m, is_blocked));
            }
            Ok(out)
        })
        .await
    }

    /// One miner and its newest `runs` runs.
    pub async fn miner(
        &self,
        hotkey: Hotkey,
        runs: usize,
    ) -> Result<(MinerView, bool, Vec<RunRecord>), ServiceError> {
        self.blocking(move |s| {
            let m = s
                .miner(&hotkey)?
                .ok_or_else(|| ServiceError::NotFound(format!("no miner with hotkey {hotkey}")))?;
            let blocked = is_blocked(&s.blocks()?, &m);
            let history = s.runs_for(&hotkey, runs)?;
            Ok((m, blocked, history))
        })
        .await
    }

    /// Newest runs, optionally of one miner and with one verdict.
    pub async fn list_runs(
        &self,
        hotkey: Option<Hotkey>,
        verdict: Option<Verdict>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, ServiceError> {
        self.blocking(move |s| {
            // Filter after reading the bounded history: there are at most history_per_miner per miner.
            let mut runs = s.recent_runs(hotkey.as_ref(), usize::MAX)?;
            runs.retain(|r| verdict.is_none_or(|v| r.verdict == v));
            runs.truncate(limit);
            Ok(runs)
        })
        .await
    }

    /// One run.
    pub async fn run(&self, run_id: String) -> Result<RunRecord, ServiceError> {
        self.blocking(move |s| {
            s.run(&run_id)?.ok_or_else(|| {
                ServiceError::NotFound(format!("no run with id {run_id} (history is bounded)"))
            })
        })
        .await
    }

    /// The committed ranking with the tie-break applied, and the `metrics_version` it belongs to.
    pub async fn scores(&self) -> Result<(u64, Vec<ScoreRow>), ServiceError> {
        let eps = self.admin()?.runtime.tie_epsilon;
        self.blocking(move |s| {
            let view = s.metrics_view()?;
            let inputs: Vec<_> = view
                .rows
                .iter()
                .map(|r| rank_input(&r.hotkey, r.submit_time, &r.metrics))
                .collect();
            let order = ranker(eps)(&inputs);
            let rows = order
                .iter()
                .enumerate()
                .filter_map(|(pos, &i)| {
                    Some(ScoreRow {
                        rank: u32::try_from(pos + 1).ok()?,
                        row: view.rows.get(i)?.clone(),
                        eligible: inputs.get(i)?.eligible,
                    })
                })
                .collect();
            Ok((view.metrics_version, rows))
        })
        .await
    }

    /// Persisted blocks.
    pub async fn blocks(&self) -> Result<Vec<BlockRecord>, ServiceError> {
        self.blocking(|s| Ok(s.blocks()?)).await
    }

    /// Block a hotkey or digest; `Ok(false)`: it already was.
    pub async fn block(&self, target: &str, reason: String) -> Result<bool, ServiceError> {
        let target = BlockTarget::parse(target).map_err(ServiceError::InvalidArgument)?;
        let now = self.clock.now_unix();
        let reason = if reason.trim().is_empty() {
            "blocked by the operator".to_owned()
        } else {
            reason.trim().chars().take(500).collect()
        };
        let changed = self
            .blocking(move |s| Ok(s.block(&target, &reason, now)?))
            .await?;
        Ok(changed)
    }

    /// Lift a block; `Ok(false)`: there was none.
    pub async fn unblock(&self, target: &str) -> Result<bool, ServiceError> {
        let target = BlockTarget::parse(target).map_err(ServiceError::InvalidArgument)?;
        self.blocking(move |s| Ok(s.unblock(&target)?)).await
    }

    /// Evaluate a miner again now.
    pub async fn reevaluate(&self, hotkey: Hotkey) -> Result<ReevaluateOutcome, ServiceError> {
        let outcome = self
            .blocking(move |s| {
                s.reevaluate(&hotkey)?
                    .ok_or_else(|| ServiceError::NotFound(format!("no miner with hotkey {hotkey}")))
            })
            .await?;
        if outcome == ReevaluateOutcome::Requeued {
            self.control.wake();
        }
        Ok(outcome)
    }

    /// Drain (`true`) or undrain a GPU given by UUID, `virtual-N` or index; `Ok((uuid, changed))`.
    pub async fn set_gpu_drained(&self, gpu: &str, drained: bool) -> Result<(String, bool), ServiceError> {
        let gpus = self.admin()?.runtime.gpus.snapshot();
        let wanted = gpu.trim();
        let uuid = gpus
            .iter()
            .find(|g| g.info.uuid == wanted || g.info.index.to_string() == wanted)
            .map(|g| g.info.uuid.clone())
            .ok_or_else(|| {
                let known: Vec<String> = gpus
                    .iter()
                    .map(|g| format!("{} ({})", g.info.uuid, g.info.index))
                    .collect();
                ServiceError::NotFound(format!(
                    "no GPU '{wanted}' in use by this daemon; known: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
        let id = uuid.clone();
        let changed = self
            .blocking(move |s| Ok(s.set_gpu_drained(&id, drained)?))
            .await?;
        // The loop reads the drain set on every step: wake it so the change takes effect now.
        self.control.wake();
        Ok((uuid, changed))
    }

    /// Pause evaluation; `false` if it already was.
    pub fn pause(&self) -> bool {
        let was = self.control.is_paused();
        self.control.pause();
        !was
    }

    /// Resume evaluation; `false` if it was not paused.
    pub fn resume(&self) -> bool {
        let was = self.control.is_paused();
        self.control.resume();
        was
    }

    /// Re-read the configuration.
    pub async fn reload(&self) -> Result<ReloadReport, ServiceError> {
        let reloader = self.admin()?.reloader.clone();
        tokio::task::spawn_blocking(move || reloader())
            .await
            .map_err(|e| ServiceError::Worker(e.to_string()))?
            .map_err(ServiceError::InvalidArgument)
    }

    /// The event bus (for `watch`).
    pub fn events(&self) -> Result<crate::events::EventBus, ServiceError> {
        Ok(self.admin()?.events.clone())
    }
}

fn is_blocked(blocks: &[BlockRecord], m: &MinerView) -> bool {
    let digest = m.state.record.image_ref.digest();
    blocks.iter().any(|b| match &b.target {
        BlockTarget::Hotkey(h) => h == &m.state.record.hotkey,
        BlockTarget::Digest(d) => d == &digest,
    })
}
