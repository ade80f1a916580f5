//! One evaluation of one miner image on one GPU slot: pull, check, run the hardened container through
//! the file protocol, time every challenge on the host, collect outputs out of the container's reach,
//! stop the container, then analyse and score. Cleanup (container, job directory) happens on every path.
//!
//! The result is either metrics to stage (verdict `ok` or a miner verdict) or an infrastructure failure
//! to retry later, never both: the host's failures are never charged to the miner.

use super::metrics::{failed_entry, scored_entry};
use super::verdicts::{Failure, container_failure, gpu_failure, one_line, quota_violation};
use crate::analysis::decode::FrameSpec;
use crate::analysis::{AnalysisFailure, AnalysisInput, Analyzer};
use crate::challenges::{Challenge, ChallengeSet};
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::metrics::{ChallengeMetrics, GpuIdentity, MeasurementProvenance, MeasurementSource};
use crate::domain::{EvaluationMetrics, Verdict};
use crate::events::{EventBus, EventKind};
use crate::gpu::GpuSlot;
use crate::gpu::cgroup::ContainerProcs;
use crate::gpu::cuda_requirement::{self, Compatibility};
use crate::gpu::health::Fault;
use crate::gpu::vram::{VramMeter, VramReading, VramSession, weakest};
use crate::rounds::EvaluationTicket;
use crate::runtime::job::{JobDir, OutputWatcher, Placement, READY_FILE, TaskJson};
use crate::runtime::pull::{PullFailure, registry_refusal, retry_wait, size_refusal};
use crate::runtime::spec::{self, RunSpecInput};
use crate::runtime::{Engine, ImageCache, Provenance, PulledImage, RuntimeError};
use crate::scoring::{ChallengeOutcome, Measurement, score_challenge, score_run};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Largest result JSON read from `/output`.
const RESULT_JSON_CAP: u64 = 64 * 1024;
/// Largest output video copied out.
const VIDEO_CAP: u64 = 256 << 20;
/// Bytes of container log kept with the run.
const LOG_TAIL_BYTES: usize = 16 * 1024;
/// How often `/output` is measured against its quota: a violation is acted on within ~2 periods.
const QUOTA_PERIOD: Duration = Duration::from_millis(25);
/// Most directory entries `/output` may hold.
const OUTPUT_ENTRY_LIMIT: u64 = 10_000;
/// Consecutive challenge timeouts after which the miner is deemed wedged and the run stops.
const MAX_CONSECUTIVE_TIMEOUTS: usize = 2;
use crate::domain::task::{
    FPS as TASK_FPS, MAX_SECONDS as TASK_MAX_SECONDS, RESOLUTION as TASK_RESOLUTION, SEED as TASK_SEED,
};

/// Everything a run needs from the daemon.
pub struct RunEnv {
    /// The Docker engine.
    pub engine: Engine,
    /// The miner images the daemon pulled (kept within `docker.image_cache_bytes`).
    pub images: Arc<ImageCache>,
    /// The output analyser.
    pub analyzer: Arc<dyn Analyzer>,
    /// Configuration.
    pub settings: Arc<Settings>,
    /// Wall clock for timestamps (timings use the monotonic clock).
    pub clock: Arc<dyn Clock>,
    /// The user the container runs as, and whether `output/` must be handed to it.
    pub container_user: ContainerUser,
    /// Where progress is published (admin `watch`, `status`).
    pub events: EventBus,
}

impl RunEnv {
    /// The run environment on a connected `engine` with `settings`: the image cache recorded in
    /// `store` (within `docker.image_cache_bytes`), the configured analyser (an error names what is
    /// wrong with the analysis settings), and the container user. Shared by the daemon and
    /// `talkheadd evaluate`, so that both run miners the same way.
    pub async fn assemble(
        engine: Engine,
        store: &crate::store::Store,
        settings: Arc<Settings>,
        events: EventBus,
    ) -> Result<RunEnv, String> {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let images = Arc::new(ImageCache::new(
            engine.clone(),
            store.clone(),
            settings.docker.image_cache_bytes,
            clock.clone(),
        ));
        Ok(RunEnv {
            engine,
            images,
            analyzer: crate::analysis::default_analyzer(&settings.analysis).await?,
            container_user: ContainerUser::resolve(&settings.container.user),
            settings,
            clock,
            events,
        })
    }
}

/// Who the miner runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUser {
    /// `uid:gid` for the container.
    pub user: String,
    /// `Some` when the daemon is root and must chown `output/` to the container's user.
    pub chown_output_to: Option<(u32, u32)>,
}

impl ContainerUser {
    /// Root daemons run miners as the configured user (default 65534:65534) and hand them `output/`;
    /// unprivileged daemons cannot chown, so miners run as the daemon's own non-root uid.
    pub fn resolve(configured: &str) -> ContainerUser {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        if uid == 0 {
            let parsed = configured
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
            ContainerUser {
                user: configured.to_owned(),
                chown_output_to: parsed,
            }
        } else {
            ContainerUser {
                user: format!("{uid}:{gid}"),
                chown_output_to: None,
            }
        }
    }
}

/// One evaluation to perform.
pub struct RunRequest<'a> {
    /// Unique run id (container label, job directory name).
    pub run_id: String,
    /// What is evaluated.
    pub ticket: &'a EvaluationTicket,
    /// The round's challenges.
    pub challenges: &'a ChallengeSet,
    /// Where it runs.
    pub slot: &'a GpuSlot,
    /// How its peak VRAM is measured.
    pub meter: &'a dyn VramMeter,
    /// Where to keep a copy of each scored challenge's analysed video (`<challenge id>.mp4`), for a
    /// cluster worker that uploads them; `None` keeps nothing (the job directory is removed).
    pub keep_videos: Option<&'a Path>,
}

/// How a run ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// Metrics to stage: verdict `ok` or a miner verdict.
    Result(Box<EvaluationMetrics>),
    /// The host failed; retry later.
    Infra(String),
}

/// The run's record for the history, whatever the outcome.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Seconds per stage.
    pub stage_times: BTreeMap<String, f64>,
    /// The container's log tail.
    pub log_tail: String,
    /// A GPU fault seen during the run (the run is then an infrastructure failure).
    pub gpu_fault: Option<Fault>,
    /// Provenance of each scored challenge's VRAM figure.
    pub vram_sources: Vec<MeasurementSource>,
    /// What the run record should say beyond the verdict (e.g. an image CUDA requirement that could not
    /// be read).
    pub notes: Vec<String>,
    /// Where the image came from, once it was available.
    pub image_source: Option<Provenance>,
    /// The videos kept for [`RunRequest::keep_videos`]: `(challenge id, path)`.
    pub kept_videos: Vec<(String, PathBuf)>,
}

/// The reason given to challenges the container was no longer alive to answer; the container's own
/// failure replaces it once the container has been inspected.
const CONTAINER_STOPPED: &str = "the container had stopped";

/// What one challenge produced inside the container.
#[derive(Debug)]
struct ChallengeRun {
    id: String,
    scored: bool,
    /// Host-measured seconds from task.json to the result, when answered or timed out.
    seconds: Option<f64>,
    result: Result<Option<PathBuf>, Failure>,
    /// The container stopped before answering it.
    container_stopped: bool,
    /// Peak VRAM while it ran (scored challenges only).
    vram: VramReading,
}

/// Run one evaluation.
pub async fn run_evaluation(
    env: &RunEnv,
    req: RunRequest<'_>,
    cancel: &CancellationToken,
) -> (RunOutcome, RunReport) {
    let mut report = RunReport::default();
    // Pinned before the pull so that no eviction removes it between the pull and the container.
    let pin = env.images.pin(&req.ticket.image_ref);
    let outcome = match evaluate(env, &req, cancel, &mut report).await {
        Ok(metrics) => RunOutcome::Result(Box::new(metrics)),
        Err(Stop::Miner(f)) => RunOutcome::Result(Box::new(failed_metrics(env, &req, &f, &report))),
        Err(Stop::Infra(reason)) => RunOutcome::Infra(reason),
        // `run_container` classifies every exit before returning; this is a bug of ours, not the miner's.
        Err(Stop::Exited(phase)) => RunOutcome::Infra(format!("unclassified container exit {phase}")),
    };
    // The image stays cached for later rounds. Eviction is not done here: it would keep the GPU slot
    // busy while images are removed; the loop runs it once the slot is free.
    drop(pin);
    (outcome, report)
}

/// Why a run stopped early.
enum Stop {
    Miner(Failure),
    Infra(String),
    /// The container exited on its own during `phase` (e.g. "before ready.txt"): classified by
    /// [`container_failure`] once the container has been inspected.
    Exited(&'static str),
}

impl From<RuntimeError> for Stop {
    fn from(e: RuntimeError) -> Stop {
        match e {
            RuntimeError::Pull {
                failure: PullFailure::Miner(r),
                ..
            } => Stop::Miner(Failure::new(Verdict::PullFailed, r)),
            RuntimeError::DigestMismatch { .. } => {
                Stop::Miner(Failure::new(Verdict::PullFailed, e.to_string()))
            }
            other => Stop::Infra(other.to_string()),
        }
    }
}

fn infra(what: &str) -> impl Fn(std::io::Error) -> Stop + '_ {
    move |e| Stop::Infra(format!("{what}: {e}"))
}

/// Tell watchers the run entered `stage`.
fn enter_stage(env: &RunEnv, req: &RunRequest<'_>, stage: &str) {
    env.events.publish(EventKind::StageChanged {
        run_id: req.run_id.clone(),
        stage: stage.to_owned(),
    });
}

async fn evaluate(
    env: &RunEnv,
    req: &RunRequest<'_>,
    cancel: &CancellationToken,
    report: &mut RunReport,
) -> Result<EvaluationMetrics, Stop> {
    let s = &env.settings;
    let warmups = req
        .challenges
        .warmups(s.evaluation.warmup_count)
        .map_err(|e| Stop::Infra(e.to_string()))?;
    let scored = req
        .challenges
        .scored(s.evaluation.warmup_count, s.evaluation.scoring_count)
        .map_err(|e| Stop::Infra(e.to_string()))?;

    let started = Instant::now();
    let (image, source) = pull(env, req, cancel).await?;
    report.image_source = Some(source);
    report
        .stage_times
        .insert("pull".into(), started.elapsed().as_secs_f64());
    if let Some(why) = size_refusal(image.size_bytes, s.docker.max_image_bytes) {
        let _ = env.images.discard(&req.ticket.image_ref).await;
        return Err(Stop::Miner(Failure::new(Verdict::ImageRejected, why)));
    }

    if let Some(failure) = check_cuda_requirement(req, &image, report) {
        let _ = env.images.discard(&req.ticket.image_ref).await;
        return Err(Stop::Miner(failure));
    }

    let job = JobDir::create(
        &s.evaluation.work_dir,
        &req.run_id,
        env.container_user.chown_output_to,
    )
    .map_err(infra("creating the job directory"))?;
    let result = run_container(env, req, &job, warmups, scored, cancel, report).await;
    let analysed = match result {
        Ok(runs) => analyse_and_score(env, req, scored, runs, report).await,
        Err(stop) => Err(stop),
    };
    if let Err(e) = job.remove() {
        tracing::warn!(run_id = %req.run_id, error = %e, "could not remove the job directory");
    }
    analysed
}

/// The image's declared CUDA requirement against the slot's GPU, before any container exists: a
/// certain mismatch is the miner's `gpu_arch_unsupported`; a declaration that cannot be read or decided
/// lets the run go on and is noted in the run record.
fn check_cuda_requirement(
    req: &RunRequest<'_>,
    image: &PulledImage,
    report: &mut RunReport,
) -> Option<Failure> {
    let note = match cuda_requirement::check(&image.env, &req.slot.facts()) {
        Compatibility::Undeclared | Compatibility::Satisfied => return None,
        Compatibility::Unsatisfied { reason } => {
            return Some(Failure::new(
                Verdict::GpuArchUnsupported,
                format!("GPU {}: {reason}", req.slot.uuid),
            ));
        }
        Compatibility::Malformed { why } => {
            format!("CUDA requirement unknown (malformed, not trusted): {why}")
        }
        Compatibility::Undecided { why } => format!("CUDA requirement undecided: {why}"),
    };
    tracing::warn!(run_id = %req.run_id, gpu = %req.slot.uuid, note = %note, "image CUDA requirement not checked");
    report.notes.push(one_line(&note));
    None
}

/// Pull with bounded retries for infrastructure failures; a miner failure stops at once.
async fn pull(
    env: &RunEnv,
    req: &RunRequest<'_>,
    cancel: &CancellationToken,
) -> Result<(PulledImage, Provenance), Stop> {
    let s = &env.settings;
    let image = &req.ticket.image_ref;
    if let Some(why) = registry_refusal(image, &s.docker.allowed_registries) {
        return Err(Stop::Miner(Failure::new(Verdict::ImageRejected, why)));
    }
    let mut attempt = 1;
    loop {
        match env.images.acquire(image, s.evaluation.pull_timeout).await {
            Ok((pulled, source)) => {
                tracing::info!(run_id = %req.run_id, image_source = source.as_str(), "image ready");
                return Ok((pulled, source));
            }
            Err(e) => {
                let wait = match &e {
                    RuntimeError::Pull { failure, .. } => {
                        retry_wait(failure, attempt, s.docker.pull_attempts)
                    }
                    _ => None,
                };
                let Some(wait) = wait else {
                    // Attempts spent on the host's side of failures: retried in a later run, unless
                    // the registry has stayed unreachable while others served (the miner's choice).
                    if let RuntimeError::Pull {
                        failure: PullFailure::Infra(reason),
                        ..
                    } = &e
                        && let Some(why) =
                            env.images
                                .pull_exhausted(image, reason, &s.docker.allowed_registries)
                    {
                        return Err(Stop::Miner(Failure::new(Verdict::PullFailed, why)));
                    }
                    return Err(e.into());
                };
                tracing::warn!(run_id = %req.run_id, attempt, ?wait, reason = %e, "pull failed (infrastructure); retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Err(Stop::Infra("daemon shutting down".into())),
                    () = tokio::time::sleep(wait) => {}
                }
                attempt += 1;
            }
        }
    }
}

/// Runs the container through every challenge; always kills and removes it before returning.
async fn run_container(
    env: &RunEnv,
    req: &RunRequest<'_>,
    job: &JobDir,
    warmups: &[Challenge],
    scored: &[Challenge],
    cancel: &CancellationToken,
    report: &mut RunReport,
) -> Result<Vec<ChallengeRun>, Stop> {
    let s = &env.settings;
    let mut policy = s.container.clone();
    policy.user = env.container_user.user.clone();
    // Docker refuses NanoCpus above the host's CPU count.
    let host_cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    policy.cpus = policy.cpus.min(host_cpus);
    let spec = spec::build(&RunSpecInput {
        run_id: &req.run_id,
        instance: env.engine.instance(),
        image: &req.ticket.image_ref,
        gpu: req.slot.assignment.clone(),
        input_dir: job.input_dir(),
        output_dir: job.output_dir(),
        policy: &policy,
    })
    .map_err(|e| Stop::Infra(format!("container spec refused: {e}")))?;
    spec::audit(&spec.body).map_err(|e| Stop::Infra(format!("container spec failed the audit: {e}")))?;

    let mut watcher = OutputWatcher::new(job).map_err(infra("watching /output"))?;
    // The engine's event log is asked from here on (a second early: its timestamps are whole seconds).
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(1);
    let id = env.engine.create(&spec.name, spec.body).await?;
    // Set when the daemon itself kills the container (the output quota): that reason is the verdict,
    // whatever phase the container was in and whatever exit the kill caused.
    let daemon_kill: Arc<OnceLock<Failure>> = Arc::new(OnceLock::new());
    let guard = ContainerGuard {
        engine: env.engine.clone(),
        id: Some(id.clone()),
    };
    let (exited_tx, exited) = watch::channel(false);
    // Set when the wait ends without the engine reporting an exit: dockerd went away (restart), so
    // whatever happened to the container is the host's doing, never the miner's.
    let engine_lost = Arc::new(AtomicBool::new(false));
    let waiter = {
        let engine_lost = engine_lost.clone();
        let docker = env.engine.client().clone();
        let id = id.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            // "next-exit": the default "not-running" answers at once for a container that is created
            // but not yet started.
            let options = bollard::query_parameters::WaitContainerOptionsBuilder::default()
                .condition("next-exit")
                .build();
            let mut wait = docker.wait_container(&id, Some(options));
            let first = wait.next().await;
            tracing::debug!(container = %id, ?first, "container stopped");
            // bollard reports a non-zero exit as DockerContainerWaitError: still a real exit.
            let exited = matches!(
                first,
                Some(Ok(_) | Err(bollard::errors::Error::DockerContainerWaitError { .. }))
            );
            if !exited {
                engine_lost.store(true, Ordering::SeqCst);
            }
            let _ = exited_tx.send(true);
        })
    };
    let quota = spawn_quota_watch(
        env.engine.clone(),
        id.clone(),
        job,
        policy.output_bytes,
        daemon_kill.clone(),
    );

    let result = async {
        enter_stage(env, req, "start");
        env.engine.start(&id).await?;
        let mut vram = start_vram(env, req, &id).await;
        enter_stage(env, req, "ready");
        let ready_started = Instant::now();
        let ready = wait_output(
            &mut watcher,
            job,
            READY_FILE,
            s.evaluation.ready_timeout,
            exited.clone(),
            cancel,
        )
        .await;
        report
            .stage_times
            .insert("ready".into(), ready_started.elapsed().as_secs_f64());
        if !matches!(ready, Wait::Seen(_))
            && let Some(fault) = vram.take_fault()
        {
            // A GPU that faulted or throttled while the model loaded explains a load that failed or
            // never finished: the host's doing, never the miner's.
            let why = format!("GPU {} fault while the model loaded: {fault}", req.slot.uuid);
            report.gpu_fault = Some(fault);
            return Err(Stop::Infra(why));
        }
        match ready {
            Wait::Seen(_) => crate::systemd::status(&format!(
                "round {}: {} ready on {}, running challenges",
                req.ticket.round, req.ticket.hotkey, req.slot.uuid
            )),
            Wait::TimedOut => {
                return Err(Stop::Miner(Failure::new(
                    Verdict::ReadyTimeout,
                    format!("no /output/ready.txt within {:?}", s.evaluation.ready_timeout),
                )));
            }
            Wait::Exited => return Err(Stop::Exited("before ready.txt")),
            Wait::Cancelled => return Err(Stop::Infra("daemon shutting down".into())),
            Wait::Io(e) => return Err(Stop::Infra(format!("watching /output: {e}"))),
        }

        enter_stage(env, req, "challenges");
        let challenges_started = Instant::now();
        let total = u32::try_from(warmups.len() + scored.len()).unwrap_or(u32::MAX);
        let mut runs = Vec::new();
        let mut consecutive_timeouts = 0;
        for (challenge, is_scored) in warmups
            .iter()
            .map(|c| (c, false))
            .chain(scored.iter().map(|c| (c, true)))
        {
            if *exited.borrow() {
                runs.push(ChallengeRun {
                    id: challenge.id().to_string(),
                    scored: is_scored,
                    seconds: None,
                    result: Err(Failure::new(Verdict::Crashed, CONTAINER_STOPPED)),
                    container_stopped: true,
                    vram: VramReading::UNAVAILABLE,
                });
                continue;
            }
            // Each scored challenge's peak is its own: drop what earlier challenges left.
            let _ = vram.take_peak();
            let mut run = run_challenge(
                env,
                job,
                &mut watcher,
                (challenge, is_scored),
                req.slot.compute_capability.as_deref(),
                exited.clone(),
                cancel,
            )
            .await?;
            if is_scored {
                run.vram = vram.take_peak();
            }
            if let Some(fault) = vram.take_fault() {
                // The timing was taken on a faulty or throttled GPU: not the miner's doing.
                let why = format!("GPU {} fault during challenge {}: {fault}", req.slot.uuid, run.id);
                report.gpu_fault = Some(fault);
                return Err(Stop::Infra(why));
            }
            env.events.publish(EventKind::ChallengeFinished {
                run_id: req.run_id.clone(),
                index: u32::try_from(runs.len() + 1).unwrap_or(u32::MAX),
                total,
                challenge_id: run.id.clone(),
                scored: is_scored,
                seconds: run.seconds,
                failure: run
                    .result
                    .as_ref()
                    .err()
                    .map(|f| format!("{}: {}", f.verdict, f.reason)),
            });
            let timed_out = matches!(&run.result, Err(f) if f.verdict == Verdict::ChallengeTimeout);
            consecutive_timeouts = if timed_out { consecutive_timeouts + 1 } else { 0 };
            let warmup_failed = !is_scored && run.result.is_err();
            runs.push(run);
            if warmup_failed || consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS {
                break;
            }
        }
        report
            .stage_times
            .insert("challenges".into(), challenges_started.elapsed().as_secs_f64());
        Ok(runs)
    }
    .await;

    quota.abort();
    if engine_lost.load(Ordering::SeqCst) {
        // The guard's drop still tries to remove the container; what survives the restart is removed
        // by the loop's reconciliation once the engine answers again.
        let _ = waiter.await;
        return Err(Stop::Infra(format!(
            "lost the Docker engine at {} during the run (dockerd restarted or stopped)",
            env.engine.host()
        )));
    }
    // A container that stopped before we killed it may have been stopped by dockerd (shutting down
    // or restarted) or an operator: that is never the miner's doing.
    if *exited.borrow() && daemon_kill.get().is_none() {
        let outside = env.engine.stopped_externally(&id, created_unix).await?;
        if let Some(why) = outside {
            let _ = waiter.await;
            return Err(Stop::Infra(why));
        }
    }
    env.engine.kill(&id).await?;
    let _ = waiter.await;
    report.log_tail = env.engine.log_tail(&id, LOG_TAIL_BYTES).await.unwrap_or_default();
    let outcome = env.engine.outcome(&id).await?;
    guard.remove().await?;

    if let Some(kill) = daemon_kill.get() {
        return Err(Stop::Miner(kill.clone()));
    }
    let cc = req.slot.compute_capability.as_deref();
    let runs = match result {
        Err(Stop::Exited(phase)) => {
            let failure = container_failure(&outcome, &report.log_tail, cc);
            return Err(Stop::Miner(Failure::new(
                failure.verdict,
                format!("{phase}: {}", failure.reason),
            )));
        }
        other => other?,
    };
    if runs.iter().any(|r| r.container_stopped) {
        return Err(Stop::Miner(container_failure(&outcome, &report.log_tail, cc)));
    }
    if let Some(warmup) = runs.iter().find(|r| !r.scored && r.result.is_err())
        && let Err(f) = &warmup.result
    {
        return Err(Stop::Miner(Failure::new(
            f.verdict,
            format!("warm-up {} failed: {}", warmup.id, f.reason),
        )));
    }
    Ok(runs)
}

/// Resolve the container's processes (its cgroup, from the init PID Docker reports) and start the
/// slot's VRAM meter on them. Virtual slots skip the lookup.
async fn start_vram(env: &RunEnv, req: &RunRequest<'_>, id: &str) -> Box<dyn VramSession> {
    let procs = if req.meter.measures() {
        let pid = env
            .engine
            .client()
            .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state?.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        match pid.map(ContainerProcs::resolve) {
            Some(Ok(p)) => Some(p),
            other => {
                tracing::warn!(run_id = %req.run_id, ?other, "cannot map the container to host PIDs; VRAM unavailable");
                None
            }
        }
    } else {
        None
    };
    req.meter.start(&req.slot.uuid, procs)
}

/// Kills and removes the container when dropped without `remove` (e.g. on an early `?`).
struct ContainerGuard {
    engine: Engine,
    /// `None` once removed explicitly: nothing left for `Drop` to do.
    id: Option<String>,
}

impl ContainerGuard {
    async fn remove(mut self) -> Result<(), RuntimeError> {
        match self.id.take() {
            Some(id) => self.engine.remove(&id).await,
            None => Ok(()),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let engine = self.engine.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = engine.kill(&id).await;
                let _ = engine.remove(&id).await;
            });
        }
    }
}

/// Measure `/output` every [`QUOTA_PERIOD`]; on excess, record the reason as the daemon's kill and
/// kill the container.
fn spawn_quota_watch(
    engine: Engine,
    id: String,
    job: &JobDir,
    quota: u64,
    daemon_kill: Arc<OnceLock<Failure>>,
) -> tokio::task::JoinHandle<()> {
    let output = job.output_dir().to_path_buf();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(QUOTA_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let dir = output.clone();
            let usage =
                tokio::task::spawn_blocking(move || crate::runtime::job::usage_of(&dir, OUTPUT_ENTRY_LIMIT))
                    .await;
            let Ok(Ok(usage)) = usage else { continue };
            if let Some(failure) = quota_violation(usage, quota, OUTPUT_ENTRY_LIMIT) {
                tracing::warn!(container = %id, bytes = usage.bytes, entries = usage.entries, reason = %failure.reason, "output quota exceeded; killing");
                // Recorded before the kill, so whoever sees the exit also sees why.
                let _ = daemon_kill.set(failure);
                let _ = engine.kill(&id).await;
                return;
            }
        }
    })
}

enum Wait {
    Seen(Instant),
    TimedOut,
    Exited,
    Cancelled,
    Io(std::io::Error),
}

async fn wait_output(
    watcher: &mut OutputWatcher,
    job: &JobDir,
    name: &str,
    timeout: Duration,
    mut exited: watch::Receiver<bool>,
    cancel: &CancellationToken,
) -> Wait {
    tokio::select! {
        biased;
        seen = watcher.wait_for(job, name) => match seen { Ok(at) => Wait::Seen(at), Err(e) => Wait::Io(e) },
        () = cancel.cancelled() => Wait::Cancelled,
        _ = exited.wait_for(|e| *e) => {
            // The file may have been completed just before the exit.
            if job.output_exists(name) { Wait::Seen(Instant::now()) } else { Wait::Exited }
        }
        () = tokio::time::sleep(timeout) => Wait::TimedOut,
    }
}

async fn run_challenge(
    env: &RunEnv,
    job: &JobDir,
    watcher: &mut OutputWatcher,
    (challenge, scored): (&Challenge, bool),
    compute_capability: Option<&str>,
    exited: watch::Receiver<bool>,
    cancel: &CancellationToken,
) -> Result<ChallengeRun, Stop> {
    let id = challenge.id().to_string();
    let json_name = format!("{id}.json");
    let video_name = format!("{id}.mp4");
    let task = TaskJson {
        challenge_id: &id,
        text: challenge.text(),
        seed: TASK_SEED,
        fps: TASK_FPS,
        resolution: TASK_RESOLUTION,
        max_seconds: TASK_MAX_SECONDS,
    };
    let staging = Instant::now();
    let placement = job
        .stage_challenge(challenge.face(), challenge.audio(), &task)
        .map_err(infra("staging the challenge"))?;
    let t0 = placement.visible_from;
    let placed_unix = super::timing::unix_at(t0);
    let timeout = env.settings.evaluation.challenge_timeout;
    let waited = wait_output(watcher, job, &json_name, timeout, exited, cancel).await;
    let container_stopped = matches!(waited, Wait::Exited);
    let (seconds, result) = match waited {
        Wait::Seen(_) if placement.wall_clock_stepped_back() => {
            // Results are dated by inode change times against the placement's: not after a step.
            return Err(Stop::Infra(format!(
                "the wall clock stepped back during challenge {id}; its result cannot be dated"
            )));
        }
        Wait::Seen(t1) => {
            let seconds = t1.saturating_duration_since(t0).as_secs_f64();
            if tracing::enabled!(target: super::timing::TARGET, tracing::Level::DEBUG) {
                let detected_unix = super::timing::unix_at(t1);
                let (seen, written) = job
                    .read_output(&json_name, RESULT_JSON_CAP, Some(&placement))
                    .map_or((None, None), |b| super::timing::miner_reported(&b));
                super::timing::ChallengeTiming {
                    challenge_id: &id,
                    placement: t0.saturating_duration_since(staging),
                    placed_unix,
                    detected_unix,
                    host_seconds: seconds,
                    miner_task_seen_unix: seen,
                    miner_written_unix: written,
                }
                .log();
            }
            (
                Some(seconds),
                read_result(
                    job,
                    (&json_name, &video_name),
                    &placement,
                    scored,
                    compute_capability,
                ),
            )
        }
        Wait::TimedOut => (
            Some(timeout.as_secs_f64()),
            Err(Failure::new(
                Verdict::ChallengeTimeout,
                format!("no result within {timeout:?}"),
            )),
        ),
        Wait::Exited => (None, Err(Failure::new(Verdict::Crashed, CONTAINER_STOPPED))),
        Wait::Cancelled => return Err(Stop::Infra("daemon shutting down".into())),
        Wait::Io(e) => return Err(Stop::Infra(format!("watching /output: {e}"))),
    };
    job.clear_challenge().map_err(infra("clearing the challenge"))?;
    // Free the quota for the next challenge; what we need was copied out already.
    for name in [&json_name, &video_name] {
        let _ = std::fs::remove_file(job.output_dir().join(name));
    }
    Ok(ChallengeRun {
        id,
        scored,
        seconds,
        result,
        container_stopped,
        vram: VramReading::UNAVAILABLE,
    })
}

/// Parse `{id}.json` and, for a scored success, copy `{id}.mp4` out of the container's reach; both
/// must have been written after `placement`.
fn read_result(
    job: &JobDir,
    (json_name, video_name): (&str, &str),
    placement: &Placement,
    scored: bool,
    compute_capability: Option<&str>,
) -> Result<Option<PathBuf>, Failure> {
    let bad = |reason: String| Failure::new(Verdict::BadOutput, reason);
    let bytes = job
        .read_output(json_name, RESULT_JSON_CAP, Some(placement))
        .map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("{json_name} is not valid JSON: {e}")))?;
    if value.get("success") != Some(&serde_json::Value::Bool(true)) {
        let error = value
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no error given");
        return Err(gpu_failure(error, compute_capability)
            .unwrap_or_else(|| bad(format!("the miner reported failure: {}", one_line(error)))));
    }
    if !scored {
        return Ok(None);
    }
    job.collect_output(video_name, VIDEO_CAP, Some(placement))
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Analyses every collected output and scores the run. Called only once `run_container` has killed
/// and removed the container, so the host's decoding and analysis never compete with a miner being
/// timed (issue 5, fairness); each challenge's analysis time is recorded as `analysis:<id>` in the
/// stage times and in its entry's `debug.analysis_time_sec`.
async fn analyse_and_score(
    env: &RunEnv,
    req: &RunRequest<'_>,
    scored: &[Challenge],
    runs: Vec<ChallengeRun>,
    report: &mut RunReport,
) -> Result<EvaluationMetrics, Stop> {
    enter_stage(env, req, "analysis");
    let cfg = &env.settings.scoring;
    let started = Instant::now();
    let mut entries: Vec<ChallengeMetrics> = Vec::new();
    let mut outcomes: Vec<ChallengeOutcome> = Vec::new();
    for challenge in scored {
        let id = challenge.id().to_string();
        let run = runs.iter().find(|r| r.scored && r.id == id);
        let vram = run.map_or(VramReading::UNAVAILABLE, |r| r.vram);
        report.vram_sources.push(vram.source);
        let measurement = Measurement {
            inference_time_sec: run.and_then(|r| r.seconds),
            peak_vram_gb: vram.gib(),
        };
        let failure = match run.map(|r| &r.result) {
            None => Some(not_attempted(&runs)),
            Some(Err(f)) => Some(f.clone()),
            Some(Ok(None)) => Some(Failure::new(Verdict::BadOutput, "no video collected")),
            Some(Ok(Some(video))) => {
                let challenge_started = Instant::now();
                let input = AnalysisInput {
                    video,
                    challenge,
                    max_seconds: f64::from(TASK_MAX_SECONDS),
                    frame: Some(FrameSpec::task()),
                };
                let analysed = env.analyzer.analyse(input).await;
                let took = analysed
                    .as_ref()
                    .map_or_else(|_| challenge_started.elapsed().as_secs_f64(), |a| a.analysis_secs);
                report.stage_times.insert(format!("analysis:{id}"), took);
                match analysed {
                    Ok(analysis) => {
                        if let Some(dir) = req.keep_videos {
                            let kept = dir.join(format!("{id}.mp4"));
                            std::fs::copy(video, &kept).map_err(infra("keeping a scored video"))?;
                            report.kept_videos.push((id.clone(), kept));
                        }
                        let score = score_challenge(&analysis.components, &measurement, cfg);
                        let debug = analysis.metrics_debug(&score.quality);
                        entries.push(scored_entry(&id, &score, analysis.reported_wer(), debug));
                        outcomes.push(ChallengeOutcome::scored(&score.quality, measurement));
                        None
                    }
                    Err(AnalysisFailure::BadOutput { reason, detail }) => {
                        Some(Failure::new(Verdict::BadOutput, format!("{reason}: {detail}")))
                    }
                    Err(AnalysisFailure::Infra(reason)) => {
                        return Err(Stop::Infra(format!("analysis: {reason}")));
                    }
                }
            }
        };
        if let Some(f) = failure {
            entries.push(failed_entry(
                &id,
                f.verdict,
                &f.reason,
                measurement.inference_time_sec,
                measurement.peak_vram_gb,
            ));
            outcomes.push(ChallengeOutcome::failed(measurement));
        }
    }
    report
        .stage_times
        .insert("analysis".into(), started.elapsed().as_secs_f64());
    let run = score_run(&outcomes, cfg).map_err(|e| Stop::Infra(format!("scoring: {e}")))?;
    let any_scored = entries.iter().any(|e| e.success);
    let (verdict, error) = if any_scored {
        (Verdict::Ok, None)
    } else {
        let first = entries.iter().find_map(|e| Some((e.verdict, e.error.clone()?)));
        let (v, reason) = first.unwrap_or((Verdict::BadOutput, "no scored challenge succeeded".into()));
        (
            v,
            Some(format!("no scored challenge succeeded; first failure: {reason}")),
        )
    };
    let mut metrics = base_metrics(env, req, verdict, error, report);
    metrics.final_score = if any_scored { run.final_score } else { 0.0 };
    metrics.quality_score = run.quality_score;
    metrics.efficiency = run.efficiency.reported();
    metrics.challenge_metrics = entries;
    Ok(metrics)
}

/// Why a scored challenge was never placed: the daemon stops a run after [`MAX_CONSECUTIVE_TIMEOUTS`]
/// timeouts in a row (the miner is wedged), and the challenges it did not reach say so, not "crashed".
fn not_attempted(runs: &[ChallengeRun]) -> Failure {
    let timed_out = |r: &ChallengeRun| matches!(&r.result, Err(f) if f.verdict == Verdict::ChallengeTimeout);
    if runs.len() >= MAX_CONSECUTIVE_TIMEOUTS
        && runs.iter().rev().take(MAX_CONSECUTIVE_TIMEOUTS).all(timed_out)
    {
        Failure::new(
            Verdict::ChallengeTimeout,
            format!(
                "not attempted: the daemon stopped the run after {MAX_CONSECUTIVE_TIMEOUTS} consecutive challenge timeouts"
            ),
        )
    } else {
        Failure::new(Verdict::Crashed, "not attempted: the run stopped early")
    }
}

fn base_metrics(
    env: &RunEnv,
    req: &RunRequest<'_>,
    verdict: Verdict,
    error: Option<String>,
    report: &RunReport,
) -> EvaluationMetrics {
    let mut m = EvaluationMetrics::failed(
        verdict,
        "",
        req.ticket.image_ref.as_str(),
        req.ticket.submit_time,
        env.clock.now_unix(),
        u32::try_from(env.settings.evaluation.scoring_count).unwrap_or(u32::MAX),
    );
    m.error = error;
    m.run_id = req.run_id.clone();
    m.round = req.ticket.round;
    m.stage_times = report.stage_times.clone();
    m.gpu = Some(GpuIdentity {
        uuid: req.slot.uuid.clone(),
        name: req.slot.name.clone(),
    });
    m.measurement = Some(MeasurementProvenance {
        time: MeasurementSource::HostClock,
        vram: weakest(report.vram_sources.iter().copied()),
    });
    m
}

fn failed_metrics(env: &RunEnv, req: &RunRequest<'_>, f: &Failure, report: &RunReport) -> EvaluationMetrics {
    base_metrics(env, req, f.verdict, Some(f.reason.clone()), report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(id: &str, result: Result<Option<PathBuf>, Failure>) -> ChallengeRun {
        ChallengeRun {
            id: id.to_owned(),
            scored: true,
            seconds: Some(1.0),
            result,
            container_stopped: false,
            vram: VramReading::UNAVAILABLE,
        }
    }

    #[test]
    fn challenges_left_after_consecutive_timeouts_are_timeouts_the_daemon_decided() {
        let timeout = || Err(Failure::new(Verdict::ChallengeTimeout, "no result within 10s"));
        let wedged = [ran("a", Ok(None)), ran("b", timeout()), ran("c", timeout())];
        let f = not_attempted(&wedged);
        assert_eq!(f.verdict, Verdict::ChallengeTimeout);
        assert!(
            f.reason.contains("2 consecutive challenge timeouts"),
            "{}",
            f.reason
        );
        // One timeout then an answer: not why the run stopped.
        let other = [ran("a", timeout()), ran("b", Ok(None))];
        assert_eq!(not_attempted(&other).verdict, Verdict::Crashed);
        assert_eq!(not_attempted(&[]).verdict, Verdict::Crashed);
    }
}
