//! The worker's side of the cluster listener: fetch the attempt's spec and challenge files from the
//! coordinator, verifying every file against the SHA-256 and size the spec lists, and upload the
//! scored videos and the run report.
//!
//! The coordinator is trusted to issue attempts, not to be reachable: every answer is bounded in size
//! and time, a refusal carries the listener's status and stable reason, and a file that does not match
//! its spec is never written where the run would read it.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::attempts::{AttemptSpec, is_plain_relative_path};
use super::job::{check_coordinator_url, submission_id};
use super::report::{UploadedVideo, WorkerReport};
use super::token::AttemptToken;

/// Most bytes of a spec or of a JSON answer.
const MAX_ANSWER: u64 = 1 << 20;
/// Time one request may take (a video upload of the caps' size over a private network included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The listener refused (its status, stable reason and message).
    #[error("the coordinator refused ({status} {reason}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The listener's stable reason (`unauthorized`, `attempt_superseded`...).
        reason: String,
        /// Its message.
        message: String,
    },
    /// The coordinator could not be reached, or its answer could not be read.
    #[error("the coordinator could not be reached: {0}")]
    Unreachable(String),
    /// What arrived is not what the spec lists, or not of the expected shape.
    #[error("{0}")]
    Integrity(String),
    /// This host could not read or write a file.
    #[error("{0}")]
    Local(String),
}

/// A client of the cluster listener for one attempt.
pub struct CoordinatorClient {
    http: reqwest::Client,
    base: String,
    token: AttemptToken,
}

impl CoordinatorClient {
    /// A client of the listener at `url` (the coordinator's `cluster.advertise_url`) for
    /// `evaluation`'s attempt `attempt`, presenting `token`.
    pub fn new(
        url: &str,
        evaluation: &str,
        attempt: u32,
        token: AttemptToken,
    ) -> Result<CoordinatorClient, String> {
        let url = check_coordinator_url(url).map_err(|e| e.to_string())?;
        submission_id(evaluation, attempt).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(CoordinatorClient {
            http,
            base: format!("{}/v1/attempts/{evaluation}/{attempt}", url.trim_end_matches('/')),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder, limit: u64) -> Result<Vec<u8>, CoordinatorError> {
        let mut response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| CoordinatorError::Unreachable(e.to_string()))?;
        let status = response.status();
        let limit = if status.is_success() { limit } else { MAX_ANSWER };
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CoordinatorError::Unreachable(e.to_string()))?
        {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(CoordinatorError::Integrity(format!(
                    "the coordinator's answer exceeds {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |key: &str| json.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        Err(CoordinatorError::Refused {
            status: status.as_u16(),
            reason: text("error"),
            message: text("message"),
        })
    }

    /// `GET …/spec`.
    pub async fn spec(&self) -> Result<AttemptSpec, CoordinatorError> {
        let body = self
            .send(self.http.get(format!("{}/spec", self.base)), MAX_ANSWER)
            .await?;
        let spec: AttemptSpec = serde_json::from_slice(&body)
            .map_err(|e| CoordinatorError::Integrity(format!("the spec is not valid: {e}")))?;
        if let Some(bad) = spec.files.iter().find(|f| !is_plain_relative_path(&f.path)) {
            return Err(CoordinatorError::Integrity(format!(
                "the spec lists {:?}, not a plain relative path",
                bad.path
            )));
        }
        Ok(spec)
    }

    /// Fetches every file `spec` lists into `dir` (created; each file written only once its size and
    /// SHA-256 match the spec's).
    pub async fn fetch_files(&self, spec: &AttemptSpec, dir: &Path) -> Result<(), CoordinatorError> {
        for file in &spec.files {
            let url = format!("{}/files/{}", self.base, file.path);
            let bytes = self.send(self.http.get(url), file.size).await?;
            let got = hex::encode(Sha256::digest(&bytes));
            if bytes.len() as u64 != file.size || got != file.sha256 {
                return Err(CoordinatorError::Integrity(format!(
                    "{}: {} bytes with SHA-256 {got} arrived, the spec lists {} bytes with {}",
                    file.path,
                    bytes.len(),
                    file.size,
                    file.sha256
                )));
            }
            let target = dir.join(&file.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| CoordinatorError::Local(format!("{}: {e}", parent.display())))?;
            }
            std::fs::write(&target, &bytes)
                .map_err(|e| CoordinatorError::Local(format!("{}: {e}", target.display())))?;
        }
        Ok(())
    }

    /// `PUT …/videos/<name>` with `bytes`; the listener's hash must be the one computed here.
    pub async fn upload_video(&self, name: &str, bytes: Vec<u8>) -> Result<UploadedVideo, CoordinatorError> {
        let expected = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        let request = self.http.put(format!("{}/videos/{name}", self.base)).body(bytes);
        let body = self.send(request, MAX_ANSWER).await?;
        let video: UploadedVideo = serde_json::from_slice(&body)
            .map_err(|e| CoordinatorError::Integrity(format!("the upload's answer is not valid: {e}")))?;
        if video.sha256 != expected || video.size != size || video.name != name {
            return Err(CoordinatorError::Integrity(format!(
                "the coordinator stored {video:?}, not {name} of {size} bytes with {expected}"
            )));
        }
        Ok(video)
    }

    /// `PUT …/report`.
    pub async fn upload_report(&self, report: &WorkerReport) -> Result<(), CoordinatorError> {
        let body = serde_json::to_vec(report).map_err(|e| CoordinatorError::Local(e.to_string()))?;
        let request = self
            .http
            .put(format!("{}/report", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(request, MAX_ANSWER).await.map(|_| ())
    }
}
