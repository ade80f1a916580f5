//! What a worker uploads at the end of an attempt, and the checks the coordinator applies to it before
//! anything is staged: the run report ([`WorkerReport`]: verdict, metrics, stage times, GPU identity,
//! VRAM provenance, log tail) and the manifest of the scored videos it uploaded beside it
//! ([`UploadedVideo`], each with its SHA-256).
//!
//! Pure: parsing and validation of bytes a worker sent, no I/O. A worker host is trusted to run the
//! hardened runtime, not to be right: the report must name the attempt it was issued for, stay within
//! its caps, and list exactly the videos the listener received with the hashes the listener computed
//! itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::attempts::is_plain_relative_path;
use crate::domain::metrics::{EvaluationMetrics, MeasurementSource};
use crate::domain::verdict::Verdict;

/// Most bytes of the container's log tail a report may carry.
pub const MAX_LOG_TAIL: usize = 64 << 10;
/// Most videos an attempt may upload (one per challenge; the reference's rounds have seven).
pub const MAX_VIDEOS: usize = 64;
/// Most stage timings a report may carry.
const MAX_STAGES: usize = 256;

/// The GPU a worker ran the attempt on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerGpu {
    /// The UUID Ray handed the job (`CUDA_VISIBLE_DEVICES`), or the virtual slot's.
    pub uuid: String,
    /// The model NVML names (`virtual` for a virtual slot).
    pub model: String,
    /// The worker host's name, as the worker reports it.
    pub host: String,
}

/// One scored video uploaded with the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadedVideo {
    /// Its name (one plain path component: `challenge-1.mp4`).
    pub name: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The run report of one attempt, as the worker uploads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerReport {
    /// The evaluation (must be the attempt's).
    pub evaluation: String,
    /// The attempt number (must be the attempt's).
    pub attempt: u32,
    /// `ok`, the miner's verdict, or `infra_error` when the worker's host failed.
    pub verdict: Verdict,
    /// Why, when the verdict is not `ok`.
    pub reason: Option<String>,
    /// The GPU the attempt ran on.
    pub gpu: WorkerGpu,
    /// Seconds per stage (`pull`, `ready`, `challenges`, `analysis:<id>`...).
    pub stage_times: BTreeMap<String, f64>,
    /// Provenance of each scored challenge's VRAM figure.
    pub vram_sources: Vec<MeasurementSource>,
    /// The container's log tail (at most [`MAX_LOG_TAIL`] bytes).
    pub log_tail: String,
    /// The metrics document of the evaluation; `None` when the host failed and nothing was scored.
    pub metrics: Option<EvaluationMetrics>,
    /// The scored videos uploaded before the report.
    pub videos: Vec<UploadedVideo>,
    /// When the worker started the attempt's run, Unix seconds on its host's clock.
    pub started_at: f64,
    /// When the run ended (before the uploads), Unix seconds on its host's clock.
    pub finished_at: f64,
}

/// A report the cluster listener accepted: the coordinator stages it (the same generation check as a
/// local run's result applies there).
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedReport {
    /// The report, checked against the uploads.
    pub report: WorkerReport,
    /// The attempt's directory under the inbox's `accepted/`: `report.json` and the videos.
    pub dir: std::path::PathBuf,
}

/// Why an uploaded report is refused (HTTP 400 with the reason; the attempt may still report again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not JSON of the report's shape.
    #[error("the report is not a valid run report: {0}")]
    Malformed(String),
    /// It names another attempt than the one it was uploaded for.
    #[error("the report is for attempt {got} but was uploaded for {expected}")]
    WrongAttempt {
        /// What the URL names.
        expected: String,
        /// What the report names.
        got: String,
    },
    /// A field is out of bounds.
    #[error("{0}")]
    OutOfBounds(String),
    /// The video manifest does not match what was uploaded.
    #[error("{0}")]
    Videos(String),
}

/// A plain video name: one path component of `[A-Za-z0-9._-]`.
pub fn is_video_name(name: &str) -> bool {
    !name.contains('/') && is_plain_relative_path(name)
}

/// Parses and checks a report uploaded for `evaluation`'s attempt `attempt`, against the videos the
/// listener received for it (`name → (sha256, size)`, as the listener hashed them).
pub fn check_report(
    body: &[u8],
    evaluation: &str,
    attempt: u32,
    received: &BTreeMap<String, (String, u64)>,
) -> Result<WorkerReport, ReportError> {
    let report: WorkerReport =
        serde_json::from_slice(body).map_err(|e| ReportError::Malformed(e.to_string()))?;
    if report.evaluation != evaluation || report.attempt != attempt {
        return Err(ReportError::WrongAttempt {
            expected: format!("{evaluation}/{attempt}"),
            got: format!("{}/{}", report.evaluation, report.attempt),
        });
    }
    if report.log_tail.len() > MAX_LOG_TAIL {
        return Err(ReportError::OutOfBounds(format!(
            "log_tail of {} bytes exceeds {MAX_LOG_TAIL}",
            report.log_tail.len()
        )));
    }
    if report.stage_times.len() > MAX_STAGES
        || report.stage_times.values().any(|s| !s.is_finite() || *s < 0.0)
    {
        return Err(ReportError::OutOfBounds(
            "stage_times must be at most 256 finite, non-negative values".into(),
        ));
    }
    if !(report.started_at.is_finite()
        && report.started_at >= 0.0
        && report.finished_at.is_finite()
        && report.finished_at >= report.started_at)
    {
        return Err(ReportError::OutOfBounds(
            "started_at and finished_at must be finite, non-negative and in order".into(),
        ));
    }
    if report.videos.len() > MAX_VIDEOS {
        return Err(ReportError::OutOfBounds(format!(
            "{} videos exceed {MAX_VIDEOS}",
            report.videos.len()
        )));
    }
    let mut listed = BTreeMap::new();
    for v in &report.videos {
        if !is_video_name(&v.name) {
            return Err(ReportError::Videos(format!(
                "{:?} is not a plain video name",
                v.name
            )));
        }
        if listed
            .insert(v.name.clone(), (v.sha256.clone(), v.size))
            .is_some()
        {
            return Err(ReportError::Videos(format!("{:?} is listed twice", v.name)));
        }
    }
    if let Some((name, _)) = received.iter().find(|(name, _)| !listed.contains_key(*name)) {
        return Err(ReportError::Videos(format!(
            "{name:?} was uploaded but the report does not list it"
        )));
    }
    for (name, (sha256, size)) in &listed {
        match received.get(name) {
            None => {
                return Err(ReportError::Videos(format!(
                    "{name:?} is listed but was never uploaded"
                )));
            }
            Some((got_sha, got_size)) if got_sha != sha256 || got_size != size => {
                return Err(ReportError::Videos(format!(
                    "{name:?} is listed as {size} bytes with SHA-256 {sha256}, but {got_size} bytes with {got_sha} were uploaded"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn report(videos: Vec<UploadedVideo>) -> WorkerReport {
        WorkerReport {
            evaluation: "e1".into(),
            attempt: 2,
            verdict: Verdict::InfraError,
            reason: Some("the host's Docker engine did not answer".into()),
            gpu: WorkerGpu {
                uuid: "GPU-aaaa".into(),
                model: "virtual".into(),
                host: "worker-a".into(),
            },
            stage_times: BTreeMap::from([("pull".into(), 1.5)]),
            vram_sources: Vec::new(),
            log_tail: String::new(),
            metrics: None,
            videos,
            started_at: 1.0,
            finished_at: 2.0,
        }
    }

    fn video(name: &str, sha: &str, size: u64) -> UploadedVideo {
        UploadedVideo {
            name: name.into(),
            sha256: sha.into(),
            size,
        }
    }

    fn check(r: &WorkerReport, received: &[(&str, &str, u64)]) -> Result<WorkerReport, ReportError> {
        let received = received
            .iter()
            .map(|(n, s, z)| ((*n).to_owned(), ((*s).to_owned(), *z)))
            .collect();
        check_report(&serde_json::to_vec(r).unwrap(), "e1", 2, &received)
    }

    #[test]
    fn a_report_listing_exactly_what_was_uploaded_is_accepted() {
        let r = report(vec![video("challenge-1.mp4", "ab", 10)]);
        assert_eq!(check(&r, &[("challenge-1.mp4", "ab", 10)]).unwrap(), r);
        assert_eq!(check(&report(Vec::new()), &[]).unwrap(), report(Vec::new()));
    }

    #[test]
    fn a_report_that_does_not_match_its_attempt_or_its_uploads_is_refused() {
        let r = report(vec![video("challenge-1.mp4", "ab", 10)]);
        let mut other = r.clone();
        other.attempt = 1;
        assert!(matches!(
            check(&other, &[("challenge-1.mp4", "ab", 10)]),
            Err(ReportError::WrongAttempt { .. })
        ));
        for received in [
            vec![],
            vec![("challenge-1.mp4", "cd", 10)],
            vec![("challenge-1.mp4", "ab", 11)],
            vec![("challenge-1.mp4", "ab", 10), ("extra.mp4", "ab", 10)],
        ] {
            assert!(
                matches!(check(&r, &received), Err(ReportError::Videos(_))),
                "{received:?}"
            );
        }
        let twice = report(vec![video("a.mp4", "ab", 1), video("a.mp4", "ab", 1)]);
        assert!(matches!(
            check(&twice, &[("a.mp4", "ab", 1)]),
            Err(ReportError::Videos(_))
        ));
        let climbing = report(vec![video("../a.mp4", "ab", 1)]);
        assert!(matches!(check(&climbing, &[]), Err(ReportError::Videos(_))));
        let mut long_log = report(Vec::new());
        long_log.log_tail = "x".repeat(MAX_LOG_TAIL + 1);
        assert!(matches!(check(&long_log, &[]), Err(ReportError::OutOfBounds(_))));
        let mut nan = report(Vec::new());
        nan.stage_times.insert("ready".into(), -1.0);
        assert!(matches!(check(&nan, &[]), Err(ReportError::OutOfBounds(_))));
        assert!(matches!(
            check_report(
                br#"{"evaluation":"e1","attempt":2,"surprise":1}"#,
                "e1",
                2,
                &BTreeMap::new()
            ),
            Err(ReportError::Malformed(_))
        ));
    }
}
