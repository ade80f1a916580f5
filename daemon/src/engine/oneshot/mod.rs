//! `talkheadd evaluate`: ONE evaluation of one image on this host, with no daemon and no persistent
//! store, exactly as the daemon's local path runs it ([`super::run::run_evaluation`] on a
//! [`RunEnv`] built by the same [`RunEnv::assemble`]): pull by digest under the registry policy and
//! size caps, the hardened container and the file protocol, host-side timing, VRAM through the
//! configured GPU inventory (or a virtual slot), the analysis and the scoring. Its report is
//! [`report`]'s; this module owns the effects around the run.
//!
//! Nothing outlives the command: the image cache's records live in a throw-away store and the job
//! directory under one temporary directory (`$TMPDIR/talkheadd-evaluate-*`; `evaluation.work_dir` is
//! not used), removed at the end. Beside a daemon on the same host it keeps to its own containers:
//! the throw-away store gives it its own instance id, so its container carries its own
//! `talkhead.instance` label; it reconciles and sweeps only containers with that label, and never
//! evicts images. It does not coordinate GPUs with that daemon: `--gpu` must name a GPU the daemon
//! does not use (its `gpu.devices`), or the two runs will see each other's processes (a foreign
//! process on a slot is a GPU fault for the daemon's run) and skew each other's times. The job
//! directory is bind-mounted, so `docker.host` must be this host's engine. An image it pulled
//! is removed again afterwards (with its cache marker); one already on the host is left as found.
//! SIGINT or SIGTERM cancels the run through its cancellation token (the run kills and removes its
//! container; a pull under way finishes first, within `evaluation.pull_timeout_secs`), then the
//! sweep checks that no container of this instance remains.

mod report;

pub use report::{EXIT_CONFIG, EXIT_INFRA, EXIT_MINER, EXIT_OK, EXIT_USAGE, EvaluateReport, exit_code};

use super::calibration;
use super::run::{RunEnv, RunOutcome, RunRequest, run_evaluation};
use crate::challenges::{ChallengeSet, Limits, load_directory};
use crate::clock::SystemClock;
use crate::config::Settings;
use crate::domain::{ImageRef, Verdict};
use crate::events::EventBus;
use crate::gpu::{GpuInventory, ProbeResult};
use crate::runtime::{Engine, Provenance};
use crate::store::{Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Prefix of the run ids of `talkheadd evaluate`, so that its containers and logs tell themselves
/// apart from the daemon's.
pub const RUN_ID_PREFIX: &str = "evaluate-";

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvaluateRequest {
    /// The image, pinned by digest.
    pub image: ImageRef,
    /// The challenge directory (the layout of `evaluation.challenges_dir`).
    pub challenges: PathBuf,
    /// The slot's index in the configured inventory.
    pub gpu: usize,
    /// Where to keep a copy of each scored challenge's analysed video (a cluster worker uploads them).
    pub keep_videos: Option<PathBuf>,
    /// The `talkhead.instance` label of its container: a cluster worker's names its own process (so
    /// that a later worker can tell a dead one's leftovers); `None`, the throw-away store's.
    pub instance: Option<String>,
}

/// Why no run report could be produced.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// A command-line argument cannot be used (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration cannot run an evaluation (exit 78).
    #[error("{0}")]
    Config(String),
    /// The host failed before the run (exit 1).
    #[error("{0}")]
    Infra(String),
}

impl EvaluateError {
    /// The process's exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            EvaluateError::Usage(_) => EXIT_USAGE,
            EvaluateError::Config(_) => EXIT_CONFIG,
            EvaluateError::Infra(_) => EXIT_INFRA,
        }
    }
}

/// Run one evaluation and report it. SIGINT and SIGTERM are handled for the whole call.
pub async fn evaluate(settings: Settings, request: EvaluateRequest) -> Result<EvaluateReport, EvaluateError> {
    let cancel = CancellationToken::new();
    let interrupted = Arc::new(OnceLock::new());
    let signals = watch_signals(cancel.clone(), interrupted.clone())?;
    let scratch = tempfile::Builder::new()
        .prefix("talkheadd-evaluate-")
        .tempdir()
        .map_err(|e| EvaluateError::Infra(format!("cannot create a temporary directory: {e}")))?;
    let result = evaluate_in(settings, &request, scratch.path(), &cancel).await;
    signals.abort();
    if let Err(e) = scratch.close() {
        tracing::warn!(error = %e, "could not remove the temporary directory");
    }
    let mut report = result?;
    report.interrupted = interrupted.get().copied();
    if let Some(signal) = report.interrupted
        && report.verdict == Verdict::InfraError
    {
        report.reason = Some(format!("interrupted by {signal}: the evaluation was cancelled"));
    }
    Ok(report)
}

/// Cancel `cancel` on the first SIGINT or SIGTERM (recording which in `interrupted`); later ones are
/// swallowed so that the run can finish removing its container.
fn watch_signals(
    cancel: CancellationToken,
    interrupted: Arc<OnceLock<&'static str>>,
) -> Result<tokio::task::JoinHandle<()>, EvaluateError> {
    let install =
        |kind| signal(kind).map_err(|e| EvaluateError::Infra(format!("cannot install signal handlers: {e}")));
    let (mut int, mut term) = (
        install(SignalKind::interrupt())?,
        install(SignalKind::terminate())?,
    );
    Ok(tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if interrupted.set(name).is_ok() {
                eprintln!("talkheadd: {name}: cancelling the evaluation and removing its container");
                cancel.cancel();
            }
        }
    }))
}

/// Open the GPU inventory and pick `index`'s slot.
fn pick_slot(
    settings: &Settings,
    index: usize,
) -> Result<(Arc<dyn GpuInventory>, crate::gpu::GpuSlot, crate::gpu::GpuInfo), EvaluateError> {
    let (inventory, backend) =
        crate::gpu::open_inventory(&settings.gpu).map_err(|e| EvaluateError::Config(format!("gpu: {e}")))?;
    let slots = inventory.slots();
    let (Some(slot), Some(info)) = (slots.get(index), inventory.describe().get(index).cloned()) else {
        return Err(EvaluateError::Usage(match slots.len() {
            0 => format!("--gpu {index}: the configured GPU inventory, {backend}, has no usable slot"),
            n => format!(
                "--gpu {index}: no such slot; the configured GPU inventory, {backend}, has slots 0 to {}",
                n - 1
            ),
        }));
    };
    if let ProbeResult::Fault(fault) = inventory.probe(&slot.uuid) {
        return Err(EvaluateError::Infra(format!(
            "GPU {} is not healthy: {fault}",
            slot.uuid
        )));
    }
    Ok((inventory, slot.clone(), info))
}

/// Load the challenge directory and check it holds the configured warm-up and scored counts.
async fn load_challenges(settings: &Settings, dir: &Path) -> Result<ChallengeSet, EvaluateError> {
    let path = dir.to_owned();
    let set = tokio::task::spawn_blocking(move || load_directory(&path, &Limits::default()))
        .await
        .map_err(|e| EvaluateError::Infra(format!("internal task failed: {e}")))?
        .map_err(|e| EvaluateError::Usage(format!("--challenges {}: {e}", dir.display())))?;
    let e = &settings.evaluation;
    set.ensure_enough(e.warmup_count, e.scoring_count)
        .map_err(|err| {
            EvaluateError::Usage(format!(
                "--challenges {}: {err} (evaluation.warmup_count = {}, evaluation.scoring_count = {})",
                dir.display(),
                e.warmup_count,
                e.scoring_count
            ))
        })?;
    Ok(set)
}

async fn evaluate_in(
    mut settings: Settings,
    request: &EvaluateRequest,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<EvaluateReport, EvaluateError> {
    let (inventory, slot, info) = pick_slot(&settings, request.gpu)?;
    let challenges = load_challenges(&settings, &request.challenges).await?;
    settings.evaluation.work_dir = scratch.join("jobs");
    let state = scratch.join("state.db");
    let options = StoreOptions {
        map_size_bytes: 16 << 20,
        history_per_miner: 1,
        max_submissions: 1,
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&state, options))
        .await
        .map_err(|e| EvaluateError::Infra(format!("internal task failed: {e}")))?
        .map_err(|e| EvaluateError::Infra(format!("cannot open the throw-away store: {e}")))?;
    let instance = request.instance.as_deref().unwrap_or(store.instance_id());
    let engine = Engine::connect(&settings.docker.host, instance)
        .await
        .map_err(|e| EvaluateError::Infra(e.to_string()))?;
    let env = RunEnv::assemble(
        engine,
        &store,
        Arc::new(settings),
        EventBus::new(Arc::new(SystemClock)),
    )
    .await
    .map_err(EvaluateError::Config)?;
    let run_id = format!("{RUN_ID_PREFIX}{:x}", (env.clock.now_unix() * 1000.0) as u64);
    if cancel.is_cancelled() {
        return Err(EvaluateError::Infra(
            "interrupted before the run started: nothing was pulled or run".into(),
        ));
    }
    let ticket = calibration::ticket(&request.image, 0);
    let meter = inventory.vram_meter();
    tracing::info!(run_id = %run_id, image = %request.image, gpu = %slot.uuid, instance = env.engine.instance(), "evaluation started");
    let (outcome, run) = run_evaluation(
        &env,
        RunRequest {
            run_id: run_id.clone(),
            ticket: &ticket,
            challenges: &challenges,
            slot: &slot,
            meter: meter.as_ref(),
            keep_videos: request.keep_videos.as_deref(),
        },
        cancel,
    )
    .await;
    let mut notes = run.notes.clone();
    if let Some(left) = sweep(&env.engine).await {
        notes.push(left);
    }
    if run.image_source == Some(Provenance::Pulled)
        && let Err(e) = env.images.discard(&request.image).await
    {
        notes.push(format!("the pulled image could not be removed: {e}"));
    }
    let instance = env.engine.instance().to_owned();
    drop(env);
    // Everything is in the temporary directory, removed next; a close that fails changes nothing.
    let _ = tokio::task::spawn_blocking(move || store.close()).await;

    let (verdict, reason, metrics) = match outcome {
        RunOutcome::Result(m) => (m.verdict, m.error.clone(), Some(*m)),
        RunOutcome::Infra(reason) => (Verdict::InfraError, Some(reason), None),
    };
    Ok(EvaluateReport {
        image_ref: request.image.as_str().to_owned(),
        run_id,
        instance,
        gpu_index: request.gpu,
        gpu: info,
        verdict,
        reason,
        exit_code: exit_code(verdict),
        image_source: run.image_source.map(Provenance::as_str),
        stage_times: run.stage_times,
        vram_sources: run.vram_sources,
        notes,
        gpu_fault: run.gpu_fault.map(|f| f.to_string()),
        log_tail: run.log_tail,
        metrics,
        interrupted: None,
        kept_videos: run.kept_videos,
    })
}

/// Kill and remove any container of this instance that is left (the run removes its own; one whose
/// removal was handed to a background task may still be going). Only this instance's label is
/// matched. Returns a note when one could not be removed.
async fn sweep(engine: &Engine) -> Option<String> {
    let mut last = String::new();
    for _ in 0..5 {
        match engine.labelled_containers().await {
            Ok(left) if left.is_empty() => return None,
            Ok(left) => last = format!("{} container(s) of this run remained", left.len()),
            Err(e) => last = e.to_string(),
        }
        if let Err(e) = engine.reconcile_orphans(&Default::default()).await {
            last = e.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(instance = engine.instance(), reason = %last, "containers of this evaluation may remain");
    Some(format!(
        "containers labelled talkhead.instance={} may remain: {last}",
        engine.instance()
    ))
}
