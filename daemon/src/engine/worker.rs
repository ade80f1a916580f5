//! `talkheadd worker`: one attempt of an evaluation on a cluster's GPU host, started by Ray as a job's
//! entrypoint (`talkheadd worker --coordinator <url> --evaluation <id> --attempt <n>`, the attempt's
//! token in `TALKHEADD_ATTEMPT_TOKEN`, its GPU in `CUDA_VISIBLE_DEVICES`).
//!
//! It fetches the attempt's spec and challenge files from the coordinator's cluster listener (each file
//! checked against its SHA-256), runs the evaluation exactly as `talkheadd evaluate` does
//! ([`super::oneshot`]: the same pull by digest, hardened container, timing, VRAM, analysis and
//! scoring, with this host's configuration), then uploads the scored videos and the run report.
//!
//! A host that cannot run the attempt (no GPU given, a GPU that is not this host's, a configuration
//! that cannot evaluate, an image the spec names that is not pinned) reports `infra_error` with the
//! reason: never the miner's fault. Interrupted (SIGTERM from `ray job stop`), it removes its
//! container and reports nothing: the coordinator decides what happens to a stopped attempt.

use std::path::Path;

use crate::cluster::attempts::SharedSettings;
use crate::cluster::coordinator::{CoordinatorClient, CoordinatorError};
use crate::cluster::job::TOKEN_ENV;
use crate::cluster::report::{MAX_LOG_TAIL, UploadedVideo, WorkerGpu, WorkerReport};
use crate::cluster::token::AttemptToken;
use crate::cluster::worker_gpu::given_slot;
use crate::config::Settings;
use crate::domain::ImageRef;
use crate::domain::verdict::Verdict;

use super::oneshot::{self, EvaluateError, EvaluateReport, EvaluateRequest};

/// Exit code: the attempt ran (or failed on this host) and its report was accepted.
pub const EXIT_REPORTED: u8 = 0;
/// Exit code: no report could be delivered (coordinator unreachable or refusing, or interrupted).
pub const EXIT_UNREPORTED: u8 = 1;
/// Exit code: the command line or the environment cannot name an attempt (no token...).
pub const EXIT_USAGE: u8 = 2;

/// What names the attempt.
#[derive(Debug, Clone)]
pub struct WorkerRequest {
    /// The coordinator's cluster listener (`cluster.advertise_url`).
    pub coordinator: String,
    /// The evaluation.
    pub evaluation: String,
    /// The attempt number.
    pub attempt: u32,
}

/// The settings a coordinator configured with `settings` requires of every host ([`SharedSettings`]).
pub fn shared_settings(settings: &Settings) -> SharedSettings {
    let e = &settings.evaluation;
    SharedSettings {
        warmup_count: e.warmup_count,
        scoring_count: e.scoring_count,
        ready_timeout_secs: e.ready_timeout.as_secs_f64(),
        challenge_timeout_secs: e.challenge_timeout.as_secs_f64(),
        scoring: settings.scoring.clone(),
        face_backend: settings.analysis.face.backend.as_str().to_owned(),
        asr_backend: settings.analysis.asr.as_str().to_owned(),
        conformance: settings.analysis.conformance.as_str().to_owned(),
    }
}

/// This host's `settings` with the coordinator's `shared` ones applied: the counts, timeouts and
/// scoring constants are the coordinator's; the analysis backends and conformance must already be the
/// same here (they are this host's installation), or the host cannot run the attempt (the reason
/// names the key).
pub fn apply_shared(settings: &mut Settings, shared: &SharedSettings) -> Result<(), String> {
    let here = shared_settings(settings);
    for (key, ours, theirs) in [
        ("analysis.face.backend", &here.face_backend, &shared.face_backend),
        ("analysis.asr.backend", &here.asr_backend, &shared.asr_backend),
        ("analysis.conformance", &here.conformance, &shared.conformance),
    ] {
        if ours != theirs {
            return Err(format!(
                "this host's {key} is {ours:?} but the coordinator scores with {theirs:?}: configure the \
                 same on every GPU host"
            ));
        }
    }
    let timeout = |secs: f64, key: &str| {
        (secs.is_finite() && secs > 0.0 && secs <= 86_400.0)
            .then(|| std::time::Duration::from_secs_f64(secs))
            .ok_or_else(|| format!("the coordinator's {key} {secs} is not a usable timeout"))
    };
    let e = &mut settings.evaluation;
    e.ready_timeout = timeout(shared.ready_timeout_secs, "evaluation.ready_timeout_secs")?;
    e.challenge_timeout = timeout(shared.challenge_timeout_secs, "evaluation.challenge_timeout_secs")?;
    e.warmup_count = shared.warmup_count;
    e.scoring_count = shared.scoring_count;
    settings.scoring = shared.scoring.clone();
    settings.analysis.profile = shared.scoring.profile;
    Ok(())
}

/// Run the attempt and deliver its report; the process's exit code.
pub async fn run_worker(settings: Settings, request: WorkerRequest) -> u8 {
    let Some(token) = std::env::var(TOKEN_ENV)
        .ok()
        .and_then(|t| AttemptToken::given(&t))
    else {
        eprintln!("talkheadd worker: {TOKEN_ENV} does not hold an attempt token");
        return EXIT_USAGE;
    };
    let client =
        match CoordinatorClient::new(&request.coordinator, &request.evaluation, request.attempt, token) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("talkheadd worker: {e}");
                return EXIT_USAGE;
            }
        };
    let scratch = match tempfile::Builder::new().prefix("talkheadd-worker-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("talkheadd worker: cannot create a temporary directory: {e}");
            return EXIT_UNREPORTED;
        }
    };
    let code = attempt(settings, &request, &client, scratch.path()).await;
    if let Err(e) = scratch.close() {
        tracing::warn!(error = %e, "could not remove the worker's temporary directory");
    }
    code
}

async fn attempt(
    mut settings: Settings,
    request: &WorkerRequest,
    client: &CoordinatorClient,
    scratch: &Path,
) -> u8 {
    let failed = |e: CoordinatorError| {
        eprintln!("talkheadd worker: {e}");
        EXIT_UNREPORTED
    };
    let spec = match client.spec().await {
        Ok(spec) => spec,
        Err(e) => return failed(e),
    };
    let challenges = scratch.join("challenges");
    let videos = scratch.join("videos");
    let host = host_name();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let prepared = async {
        apply_shared(&mut settings, &spec.settings)?;
        client
            .fetch_files(&spec, &challenges)
            .await
            .map_err(|e| format!("fetching the challenge files: {e}"))?;
        std::fs::create_dir_all(&videos).map_err(|e| format!("{}: {e}", videos.display()))?;
        let image =
            ImageRef::parse(&spec.image).map_err(|e| format!("the spec's image {:?}: {e}", spec.image))?;
        let (inventory, _) = crate::gpu::open_inventory(&settings.gpu).map_err(|e| format!("gpu: {e}"))?;
        let slots = inventory.slots();
        let real = slots
            .iter()
            .any(|s| matches!(s.assignment, crate::gpu::GpuAssignment::Nvidia { .. }));
        let gpu = given_slot(visible.as_deref(), &slots, real).map_err(|e| e.to_string())?;
        reap_dead_workers(&settings.docker.host).await?;
        Ok::<_, String>(EvaluateRequest {
            image,
            challenges: challenges.clone(),
            gpu,
            keep_videos: Some(videos.clone()),
            instance: Some(worker_instance()),
        })
    };
    let unknown_gpu = || WorkerGpu {
        uuid: visible.clone().unwrap_or_default(),
        model: String::new(),
        host: host.clone(),
    };
    let report = match prepared.await {
        Err(reason) => infra_report(request, unknown_gpu(), reason),
        Ok(evaluate) => match timed(oneshot::evaluate(settings, evaluate)).await {
            (Ok(run), _) if run.interrupted.is_some() => {
                eprintln!("talkheadd worker: interrupted; the container was removed and nothing is reported");
                return EXIT_UNREPORTED;
            }
            (Ok(run), span) => {
                let (uploaded, refused) = upload_videos(client, &run).await;
                match refused {
                    None => from_run(request, run, &host, uploaded, span),
                    // The coordinator would not take a video (a cap smaller than this host's output
                    // cap): this host's failure to deliver, reported as such with what it did take.
                    Some(CoordinatorError::Refused {
                        status,
                        reason,
                        message,
                    }) if status != 401 && status != 409 => {
                        let mut report = infra_report(
                            request,
                            WorkerGpu {
                                uuid: run.gpu.uuid.clone(),
                                model: run.gpu.name.clone(),
                                host: host.clone(),
                            },
                            format!("the coordinator refused a scored video ({status} {reason}): {message}"),
                        );
                        report.videos = uploaded;
                        report
                    }
                    Some(e) => return failed(e),
                }
            }
            (Err(e @ (EvaluateError::Usage(_) | EvaluateError::Config(_) | EvaluateError::Infra(_))), _) => {
                infra_report(request, unknown_gpu(), format!("worker host {host}: {e}"))
            }
        },
    };
    match client.upload_report(&report).await {
        Ok(()) => {
            tracing::info!(evaluation = %request.evaluation, attempt = request.attempt, verdict = %report.verdict, "report accepted");
            EXIT_REPORTED
        }
        Err(e) => failed(e),
    }
}

/// Uploads the run's kept videos in order, up to the first that fails: those uploaded, and why the
/// rest were not.
async fn upload_videos(
    client: &CoordinatorClient,
    run: &EvaluateReport,
) -> (Vec<UploadedVideo>, Option<CoordinatorError>) {
    let mut uploaded = Vec::new();
    for (id, path) in &run.kept_videos {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                return (
                    uploaded,
                    Some(CoordinatorError::Local(format!("{}: {e}", path.display()))),
                );
            }
        };
        match client.upload_video(&format!("{id}.mp4"), bytes).await {
            Ok(video) => uploaded.push(video),
            Err(e) => return (uploaded, Some(e)),
        }
    }
    (uploaded, None)
}

/// The report of a run.
fn from_run(
    request: &WorkerRequest,
    run: EvaluateReport,
    host: &str,
    videos: Vec<UploadedVideo>,
    (started_at, finished_at): (f64, f64),
) -> WorkerReport {
    WorkerReport {
        evaluation: request.evaluation.clone(),
        attempt: request.attempt,
        verdict: run.verdict,
        reason: run.reason,
        gpu: WorkerGpu {
            uuid: run.gpu.uuid,
            model: run.gpu.name,
            host: host.to_owned(),
        },
        stage_times: run.stage_times,
        vram_sources: run.vram_sources,
        log_tail: tail(&run.log_tail, MAX_LOG_TAIL),
        metrics: run.metrics,
        videos,
        started_at,
        finished_at,
    }
}

/// The report of an attempt this host could not run.
fn infra_report(request: &WorkerRequest, gpu: WorkerGpu, reason: String) -> WorkerReport {
    tracing::warn!(evaluation = %request.evaluation, attempt = request.attempt, %reason, "the attempt cannot run on this host");
    WorkerReport {
        evaluation: request.evaluation.clone(),
        attempt: request.attempt,
        verdict: Verdict::InfraError,
        reason: Some(reason),
        gpu,
        stage_times: Default::default(),
        vram_sources: Vec::new(),
        log_tail: String::new(),
        metrics: None,
        videos: Vec::new(),
        started_at: now_unix(),
        finished_at: now_unix(),
    }
}

/// `run`'s output and when it started and ended, Unix seconds on this host's clock.
async fn timed<T>(run: impl std::future::Future<Output = T>) -> (T, (f64, f64)) {
    let started = now_unix();
    let out = run.await;
    (out, (started, now_unix()))
}

/// Unix seconds on this host's clock.
fn now_unix() -> f64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_unix()
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// Prefix of a worker's `talkhead.instance` label: `worker-<pid>-<start time in clock ticks>`.
pub const WORKER_INSTANCE_PREFIX: &str = "worker-";

/// This process's instance label: its pid and start time, which together name it for as long as the
/// host runs (a pid alone is reused).
pub fn worker_instance() -> String {
    let pid = std::process::id();
    let start = process_start(pid).unwrap_or(0);
    format!("{WORKER_INSTANCE_PREFIX}{pid}-{start}")
}

/// Whether the worker an instance label names is gone: no process with its pid, or one started at
/// another time. Labels that are not a worker's are never dead here.
pub fn is_dead_worker(instance: &str, start_of: impl Fn(u32) -> Option<u64>) -> bool {
    let Some((pid, start)) = instance
        .strip_prefix(WORKER_INSTANCE_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(pid, start)| Some((pid.parse::<u32>().ok()?, start.parse::<u64>().ok()?)))
    else {
        return false;
    };
    start_of(pid) != Some(start)
}

/// Field 22 of `/proc/<pid>/stat` (the start time in clock ticks since boot); `None` when no such
/// process runs. The command name (field 2) may hold spaces and parentheses: fields are counted
/// after its last `)`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Remove the containers that workers gone from this host left (a job killed with its host's raylet
/// can leave its container running and holding the GPU). A worker that cannot reach its engine
/// cannot run the attempt either.
async fn reap_dead_workers(docker_host: &str) -> Result<(), String> {
    let engine = crate::runtime::Engine::connect(docker_host, &worker_instance())
        .await
        .map_err(|e| e.to_string())?;
    let reaped = engine
        .reap_dead_instances(|instance| is_dead_worker(instance, process_start))
        .await
        .map_err(|e| format!("reaping containers of earlier workers: {e}"))?;
    if !reaped.is_empty() {
        eprintln!(
            "talkheadd worker: removed {} container(s) left by earlier workers on this host",
            reaped.len()
        );
    }
    Ok(())
}

/// This host's name (the kernel's), for the report.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_instance_is_dead_only_when_its_process_is_gone_or_another_took_its_pid() {
        let me = worker_instance();
        assert!(me.starts_with(WORKER_INSTANCE_PREFIX), "{me}");
        assert!(!is_dead_worker(&me, process_start), "this process is alive: {me}");
        let pid = std::process::id();
        let start = process_start(pid).unwrap();
        // The same pid started at another time is another process.
        assert!(is_dead_worker(
            &format!("worker-{pid}-{}", start + 1),
            process_start
        ));
        assert!(is_dead_worker("worker-7-5", |_| None));
        assert!(!is_dead_worker("worker-7-5", |_| Some(5)));
        // Labels that are not a worker's (a daemon's store id, malformed ones) are never reaped.
        for other in [
            "311b2a18ff6506584e5d13e20692740b",
            "worker-",
            "worker-x-1",
            "worker-1",
            "worker-1-y",
        ] {
            assert!(!is_dead_worker(other, |_| None), "{other}");
        }
    }

    /// The settings of a configuration file with `text`.
    fn settings(text: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talkheadd.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::load(&crate::config::ConfigLocation::Explicit(path), &|_| None)
            .unwrap()
            .settings
    }

    #[test]
    fn the_coordinators_counts_timeouts_and_scoring_apply_and_its_backends_must_match() {
        let coordinator = settings(
            "[evaluation]\nwarmup_count = 1\nscoring_count = 2\nready_timeout_secs = 40\n\
             [scoring]\nprofile = \"reference\"\n",
        );
        let shared = shared_settings(&coordinator);
        let mut host = settings("[evaluation]\nwarmup_count = 2\nscoring_count = 5\n");
        apply_shared(&mut host, &shared).unwrap();
        assert_eq!(shared_settings(&host), shared);
        assert_eq!(host.analysis.profile, crate::scoring::ScoringProfile::Reference);
        assert_eq!(host.evaluation.ready_timeout.as_secs(), 40);
        // A backend or a conformance that differs refuses the attempt, naming the key.
        type Change = fn(&mut SharedSettings);
        let changes: [(&str, Change); 3] = [
            ("analysis.face.backend", |s| s.face_backend = "onnx".into()),
            ("analysis.asr.backend", |s| s.asr_backend = "whisper".into()),
            ("analysis.conformance", |s| s.conformance = "penalty".into()),
        ];
        for (key, change) in changes {
            let mut other = shared.clone();
            change(&mut other);
            let mut host = settings("");
            let refused = apply_shared(&mut host, &other).unwrap_err();
            assert!(refused.contains(key), "{refused}");
        }
        let mut nonsense = shared.clone();
        nonsense.challenge_timeout_secs = f64::NAN;
        assert!(apply_shared(&mut settings(""), &nonsense).is_err());
    }

    #[test]
    fn the_log_tail_is_cut_at_a_character_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        // "é" is two bytes: a cut inside it moves forward.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
