//! The tonic services of `talkhead.admin.v1`: authorisation by peer credentials in one interceptor per
//! service, then a straight call into [`Service`] and a type conversion. No decisions here.

use super::authz::{Access, AdminPolicy, Caller, caller_groups};
use crate::events::{Event, EventKind};
use crate::service::admin::{self as ops, MinerStateFilter, StatusReport};
use crate::service::{ErrorClass, Service, ServiceError};
use crate::store::{BlockRecord, BlockTarget, MinerView, ReevaluateOutcome, RunRecord};
use std::sync::{Arc, PoisonError, RwLock};
use talkhead_admin_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

/// Runs a miner's history returned by `GetMiner` unless asked otherwise.
const DEFAULT_MINER_RUNS: usize = 20;
/// Runs returned by `ListRuns` unless asked otherwise.
const DEFAULT_RUNS: usize = 50;
/// Most runs one call returns.
const MAX_RUNS: usize = 1000;
/// Events buffered per watcher before it is considered lagging.
const WATCH_BUFFER: usize = 256;

impl From<ErrorClass> for tonic::Code {
    fn from(class: ErrorClass) -> tonic::Code {
        match class {
            ErrorClass::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorClass::NotFound => tonic::Code::NotFound,
            ErrorClass::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorClass::Unavailable => tonic::Code::Unavailable,
            ErrorClass::Internal => tonic::Code::Internal,
        }
    }
}

fn status_of(e: ServiceError) -> Status {
    Status::new(e.class().into(), format!("{}: {e}", e.reason()))
}

/// The policy in force, replaceable on reload.
pub type SharedPolicy = Arc<RwLock<AdminPolicy>>;

/// Check the caller of `req` against the policy.
pub fn authorize(policy: &SharedPolicy, req: &Request<()>, access: Access) -> Result<(), Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .ok_or_else(|| {
            Status::permission_denied("the caller's credentials are unknown (not a Unix socket peer)")
        })?;
    let caller = Caller {
        uid: cred.uid(),
        groups: caller_groups(cred.uid(), cred.gid(), cred.pid()),
    };
    let policy = policy.read().unwrap_or_else(PoisonError::into_inner);
    policy.check(&caller, access).map_err(|denied| {
        tracing::warn!(uid = caller.uid, pid = ?cred.pid(), ?access, "admin call refused");
        Status::permission_denied(denied.0)
    })
}

/// The read-only service.
pub struct ReadApi {
    /// Shared operations.
    pub service: Service,
    /// Ends watch streams at shutdown.
    pub shutdown: CancellationToken,
}

/// The control service.
pub struct ControlApi {
    /// Shared operations.
    pub service: Service,
}

/// An optional filter argument: empty means "no filter", anything else must parse.
fn optional<T>(text: &str, parse: impl FnOnce(&str) -> Result<T, ServiceError>) -> Result<Option<T>, Status> {
    Some(text.trim())
        .filter(|t| !t.is_empty())
        .map(parse)
        .transpose()
        .map_err(status_of)
}

/// A requested count: 0 means `default`, anything else is capped at [`MAX_RUNS`].
fn count_or(requested: u32, default: usize) -> usize {
    match requested {
        0 => default,
        n => (n as usize).min(MAX_RUNS),
    }
}

#[tonic::async_trait]
impl pb::read_server::Read for ReadApi {
    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Result<Response<pb::Status>, Status> {
        let s = self.service.status().await.map_err(status_of)?;
        Ok(Response::new(status_to_pb(s)))
    }

    async fn list_miners(
        &self,
        req: Request<pb::ListMinersRequest>,
    ) -> Result<Response<pb::ListMinersResponse>, Status> {
        let r = req.into_inner();
        let state = optional(&r.state, MinerStateFilter::parse)?;
        let verdict = optional(&r.verdict, ops::parse_verdict)?;
        let miners = self
            .service
            .list_miners(state, verdict)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListMinersResponse {
            miners: miners
                .iter()
                .map(|(m, blocked)| miner_summary(m, *blocked))
                .collect(),
        }))
    }

    async fn get_miner(&self, req: Request<pb::GetMinerRequest>) -> Result<Response<pb::Miner>, Status> {
        let r = req.into_inner();
        let hotkey = ops::parse_hotkey(r.hotkey.trim()).map_err(status_of)?;
        let runs = count_or(r.runs, DEFAULT_MINER_RUNS);
        let (m, blocked, history) = self.service.miner(hotkey, runs).await.map_err(status_of)?;
        let json = |v: Option<&crate::domain::EvaluationMetrics>| {
            v.and_then(|m| serde_json::to_string(m).ok()).unwrap_or_default()
        };
        let committed = m.state.committed.as_ref();
        Ok(Response::new(pb::Miner {
            summary: Some(miner_summary(&m, blocked)),
            generation: m.state.record.generation,
            committed_metrics_json: json(committed.map(|c| &c.metrics)),
            committed_round: committed.map_or(0, |c| c.evaluated_round),
            carried_over: committed.is_some_and(|c| c.carried),
            staged_metrics_json: json(m.state.staged.as_ref().map(|s| &s.metrics)),
            runs: history.iter().map(|r| run_to_pb(r, false)).collect(),
        }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let hotkey = optional(&r.hotkey, ops::parse_hotkey)?;
        let verdict = optional(&r.verdict, ops::parse_verdict)?;
        let limit = count_or(r.limit, DEFAULT_RUNS);
        let runs = self
            .service
            .list_runs(hotkey, verdict, limit)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(|r| run_to_pb(r, false)).collect(),
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let id = req.into_inner().run_id;
        if id.trim().is_empty() {
            return Err(Status::invalid_argument("run_id is empty"));
        }
        let run = self.service.run(id.trim().to_owned()).await.map_err(status_of)?;
        Ok(Response::new(run_to_pb(&run, true)))
    }

    async fn get_scores(&self, _: Request<pb::GetScoresRequest>) -> Result<Response<pb::Scores>, Status> {
        let (metrics_version, rows) = self.service.scores().await.map_err(status_of)?;
        Ok(Response::new(pb::Scores {
            metrics_version,
            rows: rows
                .into_iter()
                .map(|r| pb::ScoreRow {
                    rank: r.rank,
                    hotkey: r.row.hotkey.to_string(),
                    image_ref: r.row.image_ref.to_string(),
                    final_score: r.row.metrics.final_score,
                    verdict: r.row.metrics.verdict.to_string(),
                    submit_time: r.row.submit_time,
                    carried_over: r.row.carried_over,
                })
                .collect(),
        }))
    }

    async fn list_blocks(
        &self,
        _: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        let blocks = self.service.blocks().await.map_err(status_of)?;
        Ok(Response::new(pb::ListBlocksResponse {
            blocks: blocks.iter().map(block_to_pb).collect(),
        }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Event, Status>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let after = req.into_inner().after_seq;
        let bus = self.service.events().map_err(status_of)?;
        let mut sub = bus.subscribe(after);
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            if sub.missed > 0 && tx.send(Ok(missed(sub.missed, after + sub.missed))).await.is_err() {
                return;
            }
            for e in sub.backlog.drain(..) {
                if tx.send(Ok(event_to_pb(&e))).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    next = sub.live.recv() => next,
                };
                let item = match next {
                    Ok(e) => event_to_pb(&e),
                    // The watcher fell behind the broadcast buffer: say how much it lost and go on.
                    Err(RecvError::Lagged(n)) => missed(n, 0),
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

fn missed(count: u64, seq: u64) -> pb::Event {
    pb::Event {
        seq,
        at_unix: 0.0,
        kind: Some(pb::event::Kind::Missed(pb::Missed { count })),
    }
}

fn control_response(changed: bool, message: impl Into<String>) -> Response<pb::ControlResponse> {
    let message = message.into();
    tracing::info!(changed, "{message}");
    Response::new(pb::ControlResponse { changed, message })
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlApi {
    async fn pause(&self, _: Request<pb::PauseRequest>) -> Result<Response<pb::ControlResponse>, Status> {
        let changed = self.service.pause();
        Ok(control_response(
            changed,
            if changed {
                "evaluation paused: running evaluations finish, no new ones start"
            } else {
                "evaluation was already paused"
            },
        ))
    }

    async fn resume(&self, _: Request<pb::ResumeRequest>) -> Result<Response<pb::ControlResponse>, Status> {
        let changed = self.service.resume();
        Ok(control_response(
            changed,
            if changed {
                "evaluation resumed"
            } else {
                "evaluation was not paused"
            },
        ))
    }

    async fn reevaluate(
        &self,
        req: Request<pb::ReevaluateRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let hotkey = ops::parse_hotkey(req.into_inner().hotkey.trim()).map_err(status_of)?;
        let outcome = self.service.reevaluate(hotkey.clone()).await.map_err(status_of)?;
        Ok(match outcome {
            ReevaluateOutcome::Requeued => {
                control_response(true, format!("{hotkey} queued for re-evaluation"))
            }
            ReevaluateOutcome::AlreadyPending => {
                control_response(false, format!("{hotkey} is already waiting for evaluation"))
            }
            ReevaluateOutcome::CarriedOver => {
                return Err(Status::failed_precondition(format!(
                    "{hotkey} is carried over this round by evaluation.reevaluate (top_k); it is re-evaluated when its carry ends"
                )));
            }
        })
    }

    async fn drain_gpu(&self, req: Request<pb::GpuRequest>) -> Result<Response<pb::ControlResponse>, Status> {
        let (gpu, changed) = self
            .service
            .set_gpu_drained(&req.into_inner().gpu, true)
            .await
            .map_err(status_of)?;
        Ok(control_response(
            changed,
            if changed {
                format!("{gpu} drained: it finishes its current run and takes no new one")
            } else {
                format!("{gpu} was already drained")
            },
        ))
    }

    async fn undrain_gpu(
        &self,
        req: Request<pb::GpuRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let (gpu, changed) = self
            .service
            .set_gpu_drained(&req.into_inner().gpu, false)
            .await
            .map_err(status_of)?;
        Ok(control_response(
            changed,
            if changed {
                format!("{gpu} back in service")
            } else {
                format!("{gpu} was not drained")
            },
        ))
    }

    async fn block(&self, req: Request<pb::BlockRequest>) -> Result<Response<pb::ControlResponse>, Status> {
        let r = req.into_inner();
        let changed = self.service.block(&r.target, r.reason).await.map_err(status_of)?;
        Ok(control_response(
            changed,
            if changed {
                format!("blocked {}: its submissions get image_rejected", r.target.trim())
            } else {
                format!("{} was already blocked (reason updated)", r.target.trim())
            },
        ))
    }

    async fn unblock(
        &self,
        req: Request<pb::UnblockRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let target = req.into_inner().target;
        let changed = self.service.unblock(&target).await.map_err(status_of)?;
        if !changed {
            return Err(Status::not_found(format!("{} is not blocked", target.trim())));
        }
        Ok(control_response(true, format!("unblocked {}", target.trim())))
    }

    async fn reload(&self, _: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        let report = self.service.reload().await.map_err(status_of)?;
        Ok(Response::new(pb::ReloadResponse {
            applied: report.applied,
            needs_restart: report.needs_restart,
        }))
    }
}

fn status_to_pb(s: StatusReport) -> pb::Status {
    pb::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        build: crate::BUILD.to_owned(),
        uptime_seconds: s.uptime_secs,
        config_digest: s.config_digest,
        docker: s.docker,
        gpu_backend: s.gpu_backend,
        gpus: s
            .gpus
            .into_iter()
            .map(|g| pb::Gpu {
                id: g.id,
                name: g.name,
                state: g.state,
                state_reason: g.reason.unwrap_or_default(),
                current: g.current.map(|r| pb::ActiveRun {
                    run_id: r.run_id,
                    hotkey: r.hotkey,
                    stage: r.stage,
                    challenges_done: r.challenges_done,
                    challenges_total: r.challenges_total,
                    started_unix: r.started_at,
                }),
                last_calibration: g.last_calibration.map(|c| pb::Calibration {
                    round: c.round,
                    verdict: c.verdict.to_string(),
                    seconds: c.seconds.unwrap_or(0.0),
                    reason: c.reason.unwrap_or_default(),
                    finished_unix: c.finished_at,
                }),
            })
            .collect(),
        queue_length: s.queue_length,
        round: s.round,
        round_evaluated: s.round_evaluated,
        round_total: s.round_total,
        last_commit_unix: s.last_commit_unix.unwrap_or(0.0),
        paused: s.paused,
        metrics_version: s.metrics_version,
        last_event_seq: s.last_event_seq,
        scheduler: s.scheduler.map(|n| pb::Scheduler {
            at_unix: n.at_unix,
            summary: n.summary,
            held: n
                .held
                .into_iter()
                .map(|(hotkey, reason)| pb::HeldMiner { hotkey, reason })
                .collect(),
            idle: n
                .idle
                .into_iter()
                .map(|(id, reason)| pb::IdleGpu { id, reason })
                .collect(),
        }),
    }
}

fn miner_summary(m: &MinerView, blocked: bool) -> pb::MinerSummary {
    let latest = ops::latest_result(m);
    pb::MinerSummary {
        hotkey: m.state.record.hotkey.to_string(),
        image_ref: m.state.record.image_ref.to_string(),
        submit_time: m.state.record.submit_time,
        state: match ops::miner_state(m) {
            MinerStateFilter::Pending => "pending",
            MinerStateFilter::Staged => "staged",
            MinerStateFilter::Committed => "committed",
        }
        .to_owned(),
        verdict: latest.map(|(v, _)| v.to_string()).unwrap_or_default(),
        score: latest.map(|(_, s)| s),
        blocked,
    }
}

fn run_to_pb(r: &RunRecord, with_log: bool) -> pb::Run {
    let m = r.metrics.as_ref();
    let provenance = m.and_then(|m| m.measurement).map(|p| {
        serde_json::to_value(p.vram)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    });
    pb::Run {
        run_id: r.run_id.clone(),
        hotkey: r.hotkey.to_string(),
        image_ref: r.image_ref.clone(),
        round: r.round,
        verdict: r.verdict.to_string(),
        reason: r.reason.clone().unwrap_or_default(),
        stage_seconds: r.stage_times.clone().into_iter().collect(),
        started_unix: r.started_at,
        finished_unix: r.finished_at,
        gpu: m
            .and_then(|m| m.gpu.as_ref())
            .map(|g| g.uuid.clone())
            .unwrap_or_default(),
        gpu_name: m
            .and_then(|m| m.gpu.as_ref())
            .map(|g| g.name.clone())
            .unwrap_or_default(),
        peak_vram_gb: m.and_then(|m| m.efficiency.peak_vram_gb),
        vram_provenance: provenance.unwrap_or_else(|| "unavailable".into()),
        score: m.filter(|m| m.verdict.is_committable()).map(|m| m.final_score),
        log_tail: if with_log {
            r.log_tail.clone().unwrap_or_default()
        } else {
            String::new()
        },
        image_source: r.image_source.clone().unwrap_or_default(),
        notes: r.notes.clone(),
    }
}

fn block_to_pb(b: &BlockRecord) -> pb::Block {
    let (kind, value) = match &b.target {
        BlockTarget::Hotkey(h) => ("hotkey", h.to_string()),
        BlockTarget::Digest(d) => ("digest", d.clone()),
    };
    pb::Block {
        kind: kind.to_owned(),
        value,
        reason: b.reason.clone(),
        since_unix: b.since,
    }
}

/// One engine event on the wire.
pub fn event_to_pb(e: &Event) -> pb::Event {
    use pb::event::Kind;
    let kind = match e.kind.clone() {
        EventKind::RunStarted {
            run_id,
            hotkey,
            image,
            gpu,
            round,
            challenges,
        } => Kind::RunStarted(pb::RunStarted {
            run_id,
            hotkey,
            image,
            gpu,
            round,
            challenges,
        }),
        EventKind::StageChanged { run_id, stage } => Kind::StageChanged(pb::StageChanged { run_id, stage }),
        EventKind::ChallengeFinished {
            run_id,
            index,
            total,
            challenge_id,
            scored,
            seconds,
            failure,
        } => Kind::ChallengeFinished(pb::ChallengeFinished {
            run_id,
            index,
            total,
            challenge_id,
            scored,
            seconds,
            failure: failure.unwrap_or_default(),
        }),
        EventKind::Verdict {
            run_id,
            hotkey,
            verdict,
            reason,
            score,
        } => Kind::Verdict(pb::VerdictReached {
            run_id,
            hotkey,
            verdict,
            reason: reason.unwrap_or_default(),
            score,
        }),
        EventKind::RoundCommitted {
            round,
            committed,
            metrics_version,
        } => Kind::RoundCommitted(pb::RoundCommitted {
            round,
            committed,
            metrics_version,
        }),
        EventKind::GpuStateChanged { gpu, state, reason } => Kind::GpuStateChanged(pb::GpuStateChanged {
            gpu,
            state,
            reason: reason.unwrap_or_default(),
        }),
    };
    pb::Event {
        seq: e.seq,
        at_unix: e.at_unix,
        kind: Some(kind),
    }
}
