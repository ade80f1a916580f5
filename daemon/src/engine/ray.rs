//! The Ray executor (`cluster.engine = "ray"`): one evaluation placed as Ray jobs, one per attempt,
//! each running `talkheadd worker` on a GPU host of the cluster.
//!
//! Per attempt: the attempt is issued in the book the cluster listener consults (its token kept only
//! as a hash), the coordinator waits until the cluster has a free GPU beyond the jobs it already
//! started (so nothing waits into Ray's start timeout; the queue itself stays in the store), submits
//! the job (`cluster::job`: a derived submission id, one GPU, `cluster.job_cpus` CPUs, the
//! `cluster.gpu_model_resource`, the token as the job's only environment variable) and watches it until
//! the listener hands over the attempt's accepted report. A job that ends without one (host lost,
//! stopped, start timeout, Ray unreachable for too long) or a worker that reports `infra_error` is an
//! infrastructure failure: the next attempt supersedes it, up to `cluster.max_attempts`, and the miner
//! is never charged. A miner's verdict comes only from an accepted report, and goes through the same
//! staging and generation check as a local run's (the caller's, above the seam).
//!
//! On shutdown the attempt's job is stopped. A restarted coordinator finds the jobs of this instance by
//! their submission ids ([`RayExecutor::resume`]): the ones still running are stopped (their tokens
//! died with the previous process, so no report of theirs could be accepted) and new attempts are
//! numbered after them, so no attempt ever runs twice.

use super::executor::Executor;
use super::run::{RunOutcome, RunReport, RunRequest};
use crate::challenges::ChallengeSet;
use crate::cluster::attempts::{AttemptBook, AttemptSpec, SharedSettings, SpecFile};
use crate::cluster::job::{self, JobRequest, RuntimeEnv, TOKEN_ENV};
use crate::cluster::ray_jobs::{JobStatus, RayError, RayJobs};
use crate::cluster::report::{AcceptedReport, WorkerReport};
use crate::domain::Verdict;
use crate::rounds::EvaluationTicket;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Metadata key naming the coordinator instance that submitted a job.
pub const INSTANCE_METADATA: &str = "talkheadd_instance";
/// How long an ended job's report may take to reach the coordinator (it is uploaded before the
/// worker exits; the hand-over is asynchronous).
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// How long Ray may stay unreachable before the attempt in hand counts as lost.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);
/// How long shutdown waits for a stopped job to end (within the unit's `TimeoutStopSec`).
const STOP_WAIT: Duration = Duration::from_secs(20);
/// How long one job may stay pending before the next start is allowed to try (the free-GPU figure
/// lags the scheduler by a heartbeat).
const START_HOLD: Duration = Duration::from_secs(30);

/// How the coordinator places jobs (from `[cluster]`).
#[derive(Debug, Clone)]
pub struct RayPlacement {
    /// The listener's URL as workers reach it (`cluster.advertise_url`).
    pub advertise_url: String,
    /// `cluster.max_attempts`.
    pub max_attempts: u32,
    /// `cluster.job_cpus`.
    pub job_cpus: f64,
    /// `cluster.gpu_model_resource`.
    pub gpu_model_resource: Option<String>,
    /// The worker's binary on the GPU hosts (this binary's path: the same package on every host).
    pub worker_binary: String,
    /// This coordinator's instance id (the store's): its jobs carry it.
    pub instance: String,
    /// How often jobs and the cluster's resources are polled.
    pub poll: Duration,
}

/// What one attempt came to.
enum Attempted {
    /// The worker's report was accepted.
    Reported(Box<AcceptedReport>, String),
    /// Nothing the miner can be charged with: why.
    Lost(String),
    /// The coordinator is shutting down.
    Interrupted,
}

/// What the coordinator's jobs came to so far (for `/prometheus`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Jobs in flight by Ray's state (`PENDING`, `RUNNING`).
    pub in_flight: BTreeMap<&'static str, usize>,
    /// Jobs submitted since start.
    pub submitted: u64,
    /// Attempts whose report was accepted.
    pub reported: u64,
    /// Attempts lost (ended without a report, or the host's `infra_error`).
    pub lost: u64,
}

/// A job this coordinator has in flight (for the free-GPU count).
#[derive(Debug, Clone)]
struct InFlight {
    status: JobStatus,
}

/// The Ray executor.
pub struct RayExecutor {
    jobs: RayJobs,
    book: Arc<Mutex<AttemptBook>>,
    placement: RayPlacement,
    shared: SharedSettings,
    sets_dir: PathBuf,
    /// Attempts waiting for their report: (evaluation, attempt) → hand-over.
    waiting: Mutex<HashMap<(String, u32), oneshot::Sender<AcceptedReport>>>,
    /// The latest attempt number issued per evaluation.
    latest: Mutex<HashMap<String, u32>>,
    /// Held from the free-GPU check until the job started (or [`START_HOLD`]): one start at a time.
    starting: tokio::sync::Mutex<()>,
    /// Jobs submitted and not yet seen ended, by submission id.
    in_flight: Mutex<BTreeMap<String, InFlight>>,
    /// Totals since start.
    totals: Mutex<JobCounts>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RayExecutor {
    /// An executor submitting to `jobs`, issuing attempts in `book` (which the cluster listener
    /// consults), requiring `shared` of every host; challenge files are served from
    /// `sets_dir/<set hash>/` (where the loop persists each round's set).
    pub fn new(
        jobs: RayJobs,
        book: Arc<Mutex<AttemptBook>>,
        placement: RayPlacement,
        shared: SharedSettings,
        sets_dir: PathBuf,
    ) -> RayExecutor {
        RayExecutor {
            jobs,
            book,
            placement,
            shared,
            sets_dir,
            waiting: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            in_flight: Mutex::new(BTreeMap::new()),
            totals: Mutex::new(JobCounts::default()),
        }
    }

    /// After a restart: finds this instance's jobs by their submission ids, stops those still pending
    /// or running (their tokens are gone), deletes the ended ones, and numbers new attempts after the
    /// highest found. Ray unreachable: logged; the attempts then start at 1 on evaluations Ray does not
    /// know, and a clash of submission ids is skipped past at submission.
    pub async fn resume(&self) {
        let jobs = match self.jobs.list().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the Ray cluster's jobs at start; earlier attempts are found when their ids clash");
                return;
            }
        };
        let mut stopped = 0usize;
        for j in jobs {
            let Some(id) = j.submission_id.as_deref() else {
                continue;
            };
            let ours = j
                .metadata
                .as_ref()
                .and_then(|m| m.get(INSTANCE_METADATA))
                .is_some_and(|i| *i == self.placement.instance);
            let Some((evaluation, attempt)) = job::parse_submission_id(id).filter(|_| ours) else {
                continue;
            };
            {
                let mut latest = locked(&self.latest);
                let n = latest.entry(evaluation.to_owned()).or_insert(0);
                *n = (*n).max(attempt);
            }
            if j.status.is_terminal() {
                let _ = self.jobs.delete(id).await;
            } else {
                match self.jobs.stop(id).await {
                    Ok(_) => stopped += 1,
                    Err(e) => tracing::warn!(job = id, error = %e, "cannot stop an earlier instance's job"),
                }
            }
        }
        if stopped > 0 {
            tracing::warn!(
                stopped,
                "stopped jobs left running by the previous coordinator process; their evaluations get new attempts"
            );
        }
    }

    /// Hands each report the listener accepts to the attempt waiting for it, until `accepted` closes.
    /// A report nobody waits for (its evaluation was interrupted meanwhile) is dropped with its files.
    pub async fn route_reports(self: Arc<Self>, mut accepted: mpsc::UnboundedReceiver<AcceptedReport>) {
        while let Some(report) = accepted.recv().await {
            let key = (report.report.evaluation.clone(), report.report.attempt);
            let waiter = locked(&self.waiting).remove(&key);
            match waiter {
                Some(tx) => {
                    if let Err(report) = tx.send(report) {
                        discard(&report);
                    }
                }
                None => {
                    tracing::warn!(evaluation = %key.0, attempt = key.1, "an accepted report nobody waits for is dropped");
                    discard(&report);
                }
            }
        }
    }

    /// Jobs in flight by state, and the totals since start (for `/prometheus`).
    pub fn job_counts(&self) -> JobCounts {
        let mut counts = locked(&self.totals).clone();
        for state in [JobStatus::Pending, JobStatus::Running] {
            counts.in_flight.insert(state.as_str(), 0);
        }
        for j in locked(&self.in_flight).values() {
            *counts.in_flight.entry(j.status.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// The next attempt number of `evaluation`.
    fn next_attempt(&self, evaluation: &str) -> u32 {
        let mut latest = locked(&self.latest);
        let n = latest.entry(evaluation.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    async fn run(&self, req: RunRequest<'_>, cancel: &CancellationToken) -> (RunOutcome, RunReport) {
        let evaluation = evaluation_id(&self.placement.instance, req.ticket);
        let files = spec_files(req.challenges);
        let files_root = self.sets_dir.join(req.challenges.hash());
        let mut lost = Vec::new();
        for _ in 0..self.placement.max_attempts {
            let attempt = self.next_attempt(&evaluation);
            let spec = AttemptSpec {
                evaluation: evaluation.clone(),
                attempt,
                image: req.ticket.image_ref.to_string(),
                files: files.clone(),
                settings: self.shared.clone(),
            };
            match self.attempt(spec, files_root.clone(), cancel).await {
                Attempted::Reported(accepted, job_id) => {
                    discard(&accepted);
                    locked(&self.totals).reported += 1;
                    match outcome_of(accepted.report, req.ticket, &req.run_id, &self.shared, &job_id) {
                        Ok((outcome, mut report)) => {
                            // The history says what the miner was not charged with.
                            report
                                .notes
                                .extend(lost.iter().map(|l| format!("not charged: {l}")));
                            // Done: a later round or submission is another evaluation id.
                            locked(&self.book).forget(&evaluation);
                            locked(&self.latest).remove(&evaluation);
                            return (outcome, report);
                        }
                        Err(reason) => {
                            locked(&self.totals).lost += 1;
                            tracing::warn!(%evaluation, attempt, %reason, "the worker's host could not evaluate; trying another attempt");
                            lost.push(format!("attempt {attempt}: {reason}"));
                        }
                    }
                }
                Attempted::Lost(reason) => {
                    locked(&self.totals).lost += 1;
                    tracing::warn!(%evaluation, attempt, %reason, "attempt lost; the miner is not charged");
                    lost.push(format!("attempt {attempt}: {reason}"));
                }
                Attempted::Interrupted => {
                    locked(&self.book).forget(&evaluation);
                    return (
                        RunOutcome::Infra("interrupted: the coordinator is shutting down".into()),
                        RunReport::default(),
                    );
                }
            }
        }
        // The loop retries the ticket later under the same id: its attempt numbers go on from here.
        locked(&self.book).forget(&evaluation);
        (
            RunOutcome::Infra(format!(
                "every one of {} cluster attempts was lost: {}",
                self.placement.max_attempts,
                lost.join("; ")
            )),
            RunReport::default(),
        )
    }

    /// One attempt, from issuing its token to its report (or its loss).
    async fn attempt(&self, spec: AttemptSpec, files_root: PathBuf, cancel: &CancellationToken) -> Attempted {
        let (evaluation, attempt) = (spec.evaluation.clone(), spec.attempt);
        let key = (evaluation.clone(), attempt);
        let id = match job::submission_id(&evaluation, attempt) {
            Ok(id) => id,
            Err(e) => return Attempted::Lost(e.to_string()),
        };
        let token = match locked(&self.book).issue(spec, files_root) {
            Ok(token) => token,
            Err(e) => return Attempted::Lost(format!("cannot issue the attempt: {e}")),
        };
        let entrypoint = match job::entrypoint(
            &self.placement.worker_binary,
            &self.placement.advertise_url,
            &evaluation,
            attempt,
        ) {
            Ok(e) => e,
            Err(e) => return Attempted::Lost(e.to_string()),
        };
        let request = JobRequest {
            entrypoint,
            submission_id: id.clone(),
            entrypoint_num_gpus: 1.0,
            entrypoint_num_cpus: self.placement.job_cpus,
            entrypoint_resources: self
                .placement
                .gpu_model_resource
                .iter()
                .map(|r| (r.clone(), 1.0))
                .collect(),
            runtime_env: RuntimeEnv {
                env_vars: BTreeMap::from([(TOKEN_ENV.to_owned(), token.expose().to_owned())]),
            },
            metadata: BTreeMap::from([(INSTANCE_METADATA.to_owned(), self.placement.instance.clone())]),
        };
        let (tx, mut report) = oneshot::channel();
        locked(&self.waiting).insert(key.clone(), tx);
        let done = self.submit_and_watch(&request, &mut report, cancel).await;
        locked(&self.waiting).remove(&key);
        locked(&self.in_flight).remove(&id);
        // Stop what may still run and forget the job once it ended, beside the next attempt. A job
        // stopped at shutdown is left for the next process to find: its attempt number must not be
        // used again.
        let jobs = self.jobs.clone();
        match done {
            Attempted::Interrupted => {}
            Attempted::Reported(..) => {
                tokio::spawn(async move { retire(&jobs, &id, false).await });
            }
            Attempted::Lost(_) => {
                tokio::spawn(async move { retire(&jobs, &id, true).await });
            }
        }
        done
    }

    async fn submit_and_watch(
        &self,
        request: &JobRequest,
        report: &mut oneshot::Receiver<AcceptedReport>,
        cancel: &CancellationToken,
    ) -> Attempted {
        let id = request.submission_id.clone();
        let mut start = Some(self.starting.lock().await);
        if let Err(lost) = self.wait_for_gpu(cancel).await {
            return lost;
        }
        match self.jobs.submit(request).await {
            Ok(()) => {}
            Err(RayError::AlreadyExists(_)) => {
                return Attempted::Lost(format!("a job {id} exists already (an earlier coordinator's)"));
            }
            Err(e) => return Attempted::Lost(format!("submitting job {id}: {e}")),
        }
        locked(&self.in_flight).insert(
            id.clone(),
            InFlight {
                status: JobStatus::Pending,
            },
        );
        locked(&self.totals).submitted += 1;
        tracing::info!(job = %id, "Ray job submitted");
        let submitted = Instant::now();
        let mut unreachable_since: Option<Instant> = None;
        let mut ended: Option<String> = None;
        loop {
            if start.is_some() && submitted.elapsed() >= START_HOLD {
                start = None;
            }
            tokio::select! {
                got = &mut *report => {
                    return match got {
                        Ok(accepted) => Attempted::Reported(Box::new(accepted), id),
                        Err(_) => Attempted::Lost("the report's hand-over was dropped".into()),
                    };
                }
                () = cancel.cancelled() => {
                    stop_and_wait(&self.jobs, &id).await;
                    return Attempted::Interrupted;
                }
                () = tokio::time::sleep(self.placement.poll) => {}
            }
            if let Some(why) = &ended {
                return Attempted::Lost(why.clone());
            }
            match self.jobs.job(&id).await {
                Ok(Some(details)) => {
                    unreachable_since = None;
                    if details.status != JobStatus::Pending {
                        start = None;
                    }
                    if let Some(j) = locked(&self.in_flight).get_mut(&id) {
                        j.status = details.status;
                    }
                    if details.status.is_terminal() {
                        let why = format!(
                            "job {id} ended {} without a report{}{}",
                            details.status.as_str(),
                            details
                                .error_type
                                .as_deref()
                                .map(|t| format!(" ({t})"))
                                .unwrap_or_default(),
                            details
                                .message
                                .as_deref()
                                .map(|m| format!(": {}", crate::engine::verdicts::one_line(m)))
                                .unwrap_or_default()
                        );
                        // The report may still be on its way: one more wait, bounded.
                        match tokio::time::timeout(REPORT_GRACE, &mut *report).await {
                            Ok(Ok(accepted)) => return Attempted::Reported(Box::new(accepted), id),
                            _ => ended = Some(why),
                        }
                        if let Some(why) = &ended {
                            return Attempted::Lost(why.clone());
                        }
                    }
                }
                Ok(None) => return Attempted::Lost(format!("Ray no longer knows job {id}")),
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= UNREACHABLE_LIMIT {
                        let _ = self.jobs.stop(&id).await;
                        return Attempted::Lost(format!("Ray stopped answering about job {id}: {e}"));
                    }
                }
            }
        }
    }

    /// Wait until the cluster has a GPU free beyond the jobs this coordinator started.
    async fn wait_for_gpu(&self, cancel: &CancellationToken) -> Result<(), Attempted> {
        let mut unreachable_since: Option<Instant> = None;
        loop {
            match self.jobs.resources().await {
                Ok(resources) => {
                    unreachable_since = None;
                    let ours = locked(&self.in_flight).len() as f64;
                    if has_room(&resources, ours, self.placement.gpu_model_resource.as_deref()) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= UNREACHABLE_LIMIT {
                        return Err(Attempted::Lost(format!("Ray's resources are unknown: {e}")));
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(Attempted::Interrupted),
                () = tokio::time::sleep(self.placement.poll) => {}
            }
        }
    }
}

impl Executor for RayExecutor {
    fn evaluate<'a>(
        &'a self,
        req: RunRequest<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, (RunOutcome, RunReport)> {
        Box::pin(self.run(req, cancel))
    }

    fn uses_local_engine(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("ray (workers report to {})", self.placement.advertise_url)
    }
}

/// Whether one more one-GPU job fits: the cluster's free GPUs (and units of the GPU-model resource)
/// beyond the `ours` jobs this coordinator has in flight. Ray's usage figure lags its scheduler, so
/// the larger of what it reports and what is known to be ours counts as used.
pub fn has_room(
    resources: &BTreeMap<String, crate::cluster::ray_jobs::ResourceUse>,
    ours: f64,
    model_resource: Option<&str>,
) -> bool {
    let fits = |name: &str| {
        resources
            .get(name)
            .is_some_and(|r| r.total - r.used.max(ours) >= 1.0)
    };
    fits("GPU") && model_resource.is_none_or(fits)
}

/// How a wait for a job's end came out.
enum Waited {
    /// Ray says it ended.
    Ended,
    /// Ray no longer knows it.
    Unknown,
    /// It had not ended within the wait.
    Running,
    /// Ray did not answer (with [`OnError::GiveUp`]).
    Unanswered(RayError),
}

/// What a wait does when Ray does not answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnError {
    GiveUp,
    Retry,
}

/// Polls `id` every `every`, for at most `limit`, until Ray says it ended.
async fn wait_until_ended(
    jobs: &RayJobs,
    id: &str,
    limit: Duration,
    every: Duration,
    on_error: OnError,
) -> Waited {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match jobs.job(id).await {
            Ok(Some(d)) if d.status.is_terminal() => return Waited::Ended,
            Ok(None) => return Waited::Unknown,
            Ok(Some(_)) => {}
            Err(e) if on_error == OnError::GiveUp => return Waited::Unanswered(e),
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
    Waited::Running
}

/// Stop a job at shutdown and wait, bounded by [`STOP_WAIT`], until Ray says it ended (its worker
/// removes its container on the SIGTERM), so that no job outlives the coordinator that started it.
async fn stop_and_wait(jobs: &RayJobs, id: &str) {
    if let Err(e) = jobs.stop(id).await {
        tracing::warn!(job = id, error = %e, "cannot stop the job at shutdown");
        return;
    }
    match wait_until_ended(jobs, id, STOP_WAIT, Duration::from_millis(250), OnError::GiveUp).await {
        Waited::Ended | Waited::Unknown => {}
        Waited::Unanswered(e) => tracing::warn!(job = id, error = %e, "cannot see the stopped job end"),
        Waited::Running => tracing::warn!(
            job = id,
            "a stopped job had not ended when the coordinator stopped waiting"
        ),
    }
}

/// Stop (when `stop`) and delete a job once it has ended; best effort, bounded.
async fn retire(jobs: &RayJobs, id: &str, stop: bool) {
    if stop {
        let _ = jobs.stop(id).await;
    }
    match wait_until_ended(
        jobs,
        id,
        Duration::from_secs(120),
        Duration::from_secs(1),
        OnError::Retry,
    )
    .await
    {
        Waited::Ended => {
            let _ = jobs.delete(id).await;
        }
        Waited::Unknown | Waited::Unanswered(_) => {}
        Waited::Running => tracing::warn!(
            job = id,
            "a job did not end within 2 minutes of its attempt; it is left to Ray"
        ),
    }
}

/// Remove an accepted report's files: the coordinator keeps the result, not the videos.
fn discard(accepted: &AcceptedReport) {
    if let Err(e) = std::fs::remove_dir_all(&accepted.dir) {
        tracing::warn!(dir = %accepted.dir.display(), error = %e, "cannot remove an accepted report's files");
    }
}

/// The evaluation's id: stable for one ticket across coordinator restarts (instance, round, miner,
/// submission generation), made only of characters an entrypoint may carry.
pub fn evaluation_id(instance: &str, ticket: &EvaluationTicket) -> String {
    let instance: String = instance
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let miner = hex::encode(Sha256::digest(ticket.hotkey.as_str().as_bytes()));
    format!(
        "{instance}-r{}-{}-g{}",
        ticket.round,
        &miner[..16],
        ticket.generation
    )
}

/// The spec's files for `set`, in the layout the round's set is persisted in (`<id>/face.png`,
/// `<id>/audio.wav`, `<id>/text.txt`).
pub fn spec_files(set: &ChallengeSet) -> Vec<SpecFile> {
    let mut files = Vec::new();
    for c in set.iter() {
        let id = c.id().as_str();
        files.push(SpecFile {
            path: format!("{id}/face.png"),
            sha256: hex::encode(c.face_sha256()),
            size: c.face().len() as u64,
        });
        files.push(SpecFile {
            path: format!("{id}/audio.wav"),
            sha256: hex::encode(c.audio_sha256()),
            size: c.audio().len() as u64,
        });
        if let Some(text) = c.text() {
            files.push(SpecFile {
                path: format!("{id}/text.txt"),
                sha256: hex::encode(Sha256::digest(text.as_bytes())),
                size: text.len() as u64,
            });
        }
    }
    files
}

/// What an accepted report means for the ticket: the miner's result (its metrics made the ticket's:
/// run id, submission time, round), or why the host could not evaluate (an infrastructure failure:
/// another attempt follows). A report whose metrics contradict the spec is the host's failure too.
pub fn outcome_of(
    report: WorkerReport,
    ticket: &EvaluationTicket,
    run_id: &str,
    shared: &SharedSettings,
    job_id: &str,
) -> Result<(RunOutcome, RunReport), String> {
    let host = format!(
        "host {} GPU {} ({})",
        report.gpu.host, report.gpu.uuid, report.gpu.model
    );
    if report.verdict == Verdict::InfraError {
        return Err(format!(
            "{host}: {}",
            report.reason.as_deref().unwrap_or("infrastructure failure")
        ));
    }
    let Some(mut metrics) = report.metrics else {
        return Err(format!("{host}: a {} report without metrics", report.verdict));
    };
    let image = ticket.image_ref.to_string();
    if metrics.image_ref != image {
        return Err(format!(
            "{host}: the report's metrics are for {} not {image}",
            metrics.image_ref
        ));
    }
    if metrics.verdict != report.verdict {
        return Err(format!(
            "{host}: the report says {} but its metrics say {}",
            report.verdict, metrics.verdict
        ));
    }
    if metrics.scoring_count as usize != shared.scoring_count {
        return Err(format!(
            "{host}: scored {} challenges where the coordinator requires {}",
            metrics.scoring_count, shared.scoring_count
        ));
    }
    metrics.run_id = run_id.to_owned();
    metrics.submit_time = ticket.submit_time;
    metrics.round = ticket.round;
    metrics.duplicate_of = None;
    let run_report = RunReport {
        stage_times: report.stage_times,
        log_tail: report.log_tail,
        vram_sources: report.vram_sources,
        notes: vec![format!(
            "ran on {host} as Ray job {job_id}, from {:.3} to {:.3} (Unix seconds, that host's clock)",
            report.started_at, report.finished_at
        )],
        ..RunReport::default()
    };
    Ok((RunOutcome::Result(Box::new(metrics)), run_report))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cluster::ray_jobs::ResourceUse;
    use crate::cluster::report::WorkerGpu;
    use crate::domain::{EvaluationMetrics, Hotkey, ImageRef};

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    fn ticket(generation: u64, round: u64) -> EvaluationTicket {
        EvaluationTicket {
            hotkey: Hotkey::parse(ALICE).unwrap(),
            image_ref: ImageRef::parse(&format!("127.0.0.1:5000/m@sha256:{}", "a".repeat(64))).unwrap(),
            generation,
            submit_time: 5.0,
            round,
        }
    }

    fn shared() -> SharedSettings {
        let loaded = crate::config::load(
            &crate::config::ConfigLocation::Default(PathBuf::from("/nonexistent/talkheadd.toml")),
            &|_| None,
        )
        .unwrap();
        crate::engine::worker::shared_settings(&loaded.settings)
    }

    fn report(verdict: Verdict, metrics: Option<EvaluationMetrics>) -> WorkerReport {
        WorkerReport {
            evaluation: "e".into(),
            attempt: 1,
            verdict,
            reason: Some("why".into()),
            gpu: WorkerGpu {
                uuid: "GPU-1".into(),
                model: "H100".into(),
                host: "gpu-host-2".into(),
            },
            stage_times: BTreeMap::from([("pull".to_owned(), 1.5)]),
            vram_sources: Vec::new(),
            log_tail: "tail".into(),
            metrics,
            videos: Vec::new(),
            started_at: 10.0,
            finished_at: 20.0,
        }
    }

    fn metrics(verdict: Verdict, image: &str, scoring_count: usize) -> EvaluationMetrics {
        let mut m = EvaluationMetrics::failed(verdict, "x", image, 99.0, 100.0, scoring_count as u32);
        m.run_id = "worker-run".into();
        m.round = 77;
        m.duplicate_of = Some("someone".into());
        m
    }

    #[test]
    fn one_more_job_fits_only_beyond_what_ray_and_this_coordinator_count_as_used() {
        let gpus = |used: f64, total: f64| BTreeMap::from([("GPU".to_owned(), ResourceUse { used, total })]);
        assert!(has_room(&gpus(2.0, 4.0), 1.0, None));
        assert!(has_room(&gpus(2.0, 4.0), 3.0, None));
        assert!(!has_room(&gpus(2.0, 4.0), 4.0, None));
        // Ray's figure lags: two jobs of ours started, Ray still says none used.
        assert!(!has_room(&gpus(0.0, 2.0), 2.0, None));
        assert!(!has_room(&gpus(2.0, 2.0), 0.0, None));
        assert!(!has_room(&BTreeMap::new(), 0.0, None));
        // The GPU-model resource must have a unit free too.
        let mut both = gpus(0.0, 4.0);
        assert!(!has_room(&both, 0.0, Some("gpu-h100")));
        both.insert(
            "gpu-h100".into(),
            ResourceUse {
                used: 1.0,
                total: 2.0,
            },
        );
        assert!(has_room(&both, 0.0, Some("gpu-h100")));
        assert!(!has_room(&both, 2.0, Some("gpu-h100")));
    }

    #[test]
    fn an_accepted_report_becomes_the_tickets_result_or_the_hosts_failure() {
        let t = ticket(3, 2);
        let image = t.image_ref.to_string();
        let s = shared();
        let n = s.scoring_count;
        // A miner verdict: the metrics become the ticket's, the history says where it ran.
        let (outcome, run) = outcome_of(
            report(Verdict::Crashed, Some(metrics(Verdict::Crashed, &image, n))),
            &t,
            "run-1",
            &s,
            "talkheadd-e-a1",
        )
        .unwrap();
        let RunOutcome::Result(m) = outcome else {
            panic!("a miner verdict is a result")
        };
        assert_eq!(
            (m.verdict, m.run_id.as_str(), m.round, m.submit_time),
            (Verdict::Crashed, "run-1", 2, 5.0)
        );
        assert_eq!(m.duplicate_of, None);
        assert_eq!(run.stage_times["pull"], 1.5);
        assert_eq!(run.log_tail, "tail");
        assert!(
            run.notes[0].starts_with(
                "ran on host gpu-host-2 GPU GPU-1 (H100) as Ray job talkheadd-e-a1, from 10.000 to 20.000"
            ),
            "{:?}",
            run.notes
        );
        // Whatever the host could not do is its failure, never the miner's.
        let host_failures = [
            report(Verdict::InfraError, None),
            report(Verdict::Ok, None),
            report(
                Verdict::Ok,
                Some(metrics(Verdict::Ok, "127.0.0.1:5000/other@sha256:bb", n)),
            ),
            report(Verdict::Ok, Some(metrics(Verdict::Crashed, &image, n))),
            report(Verdict::Ok, Some(metrics(Verdict::Ok, &image, n + 1))),
        ];
        for r in host_failures {
            let why = outcome_of(r.clone(), &t, "run-1", &s, "j")
                .map(|_| ())
                .unwrap_err();
            assert!(why.contains("gpu-host-2"), "{why}: {r:?}");
        }
    }

    #[test]
    fn an_evaluation_id_is_stable_per_ticket_and_fits_a_submission_id() {
        let instance = "311b2a18ff6506584e5d13e20692740b";
        let id = evaluation_id(instance, &ticket(3, 2));
        assert_eq!(id, evaluation_id(instance, &ticket(3, 2)));
        assert!(id.starts_with("311b2a18-r2-") && id.ends_with("-g3"), "{id}");
        for other in [ticket(4, 2), ticket(3, 3)] {
            assert_ne!(evaluation_id(instance, &other), id);
        }
        assert_ne!(evaluation_id("0000000000", &ticket(3, 2)), id);
        let submission = job::submission_id(&id, 12).unwrap();
        assert_eq!(job::parse_submission_id(&submission), Some((id.as_str(), 12)));
    }

    #[test]
    fn the_spec_lists_every_file_of_the_set_as_it_is_persisted() {
        let dir = crate::analysis::face::tests::fixtures_dir();
        let set = crate::challenges::load_directory(&dir, &crate::challenges::Limits::default()).unwrap();
        let sets = tempfile::tempdir().unwrap();
        crate::engine::challenge_set::persist_set(sets.path(), &set).unwrap();
        let root = sets.path().join(set.hash());
        let files = spec_files(&set);
        assert!(files.len() >= 2 * set.len());
        let mut on_disk = 0;
        for challenge in std::fs::read_dir(&root).unwrap() {
            on_disk += std::fs::read_dir(challenge.unwrap().path()).unwrap().count();
        }
        assert_eq!(files.len(), on_disk, "the spec lists every persisted file");
        for f in &files {
            let bytes = std::fs::read(root.join(&f.path)).unwrap();
            assert_eq!(
                (hex::encode(Sha256::digest(&bytes)), bytes.len() as u64),
                (f.sha256.clone(), f.size),
                "{}",
                f.path
            );
        }
    }
}
