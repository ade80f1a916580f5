//! A client of Ray's Job Submission REST API (the dashboard's `/api/jobs/`, `/api/version`,
//! `/api/cluster_status`), with Ray's token authentication (`Authorization: Bearer`).
//!
//! Owns the HTTP exchange and the classification of what went wrong: an unreachable head, a refused
//! token, a submission id that already exists (how a restarted coordinator recognises its own job), a
//! job Ray does not know, and everything else Ray refuses or fails at. Every error here is an
//! infrastructure error; none is ever charged to a miner. Bodies are read up to [`MAX_BODY`] and
//! parsed into the documented shape; extra fields are ignored, missing ones are an error.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::job::JobRequest;

/// Most bytes of one response read (a job list of a busy cluster stays far below it).
pub const MAX_BODY: usize = 8 << 20;
/// Most time one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a request to Ray came to, when it is not what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RayError {
    /// No answer: connection refused, timed out, reset.
    #[error("Ray at {url} is unreachable: {reason}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// 401 or 403: the token is missing or not the cluster's (`cluster.ray_token_file`).
    #[error("Ray refused the token ({status}): {message}")]
    Unauthorized {
        /// The status.
        status: u16,
        /// Ray's words.
        message: String,
    },
    /// A job with this submission id exists already.
    #[error("a Ray job with submission id {0} exists already")]
    AlreadyExists(String),
    /// Any other answer that is not a success.
    #[error("Ray answered {status} to {what}: {message}")]
    Refused {
        /// Which request.
        what: String,
        /// The status.
        status: u16,
        /// Ray's words (the first line of a traceback's last line).
        message: String,
    },
    /// A success whose body is not the documented shape.
    #[error("Ray's answer to {what} is not what its API documents: {reason}")]
    BadResponse {
        /// Which request.
        what: String,
        /// Why.
        reason: String,
    },
}

impl RayError {
    /// Worth trying again later (the head is down or busy), as opposed to a configuration error.
    pub fn is_transient(&self) -> bool {
        match self {
            RayError::Unreachable { .. } => true,
            RayError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A job's state (Ray's `JobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Waiting for resources or for its runtime environment.
    Pending,
    /// The entrypoint runs.
    Running,
    /// Stopped by a request.
    Stopped,
    /// The entrypoint exited 0.
    Succeeded,
    /// The entrypoint exited non-zero, or Ray lost it (`error_type` says which).
    Failed,
}

impl JobStatus {
    /// Ray's word for the state, as its API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Stopped => "STOPPED",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
        }
    }

    /// Ended: nothing more will happen to the job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Stopped | JobStatus::Succeeded | JobStatus::Failed
        )
    }
}

/// What Ray says of one job (the fields of `JobDetails` this daemon reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobDetails {
    /// The submission id.
    pub submission_id: Option<String>,
    /// Its state.
    pub status: JobStatus,
    /// Ray's explanation of the state.
    #[serde(default)]
    pub message: Option<String>,
    /// Why it failed, when Ray knows (`JOB_SUPERVISOR_ACTOR_DIED`, `JOB_ENTRYPOINT_COMMAND_ERROR`…).
    #[serde(default)]
    pub error_type: Option<String>,
    /// The node the entrypoint ran on.
    #[serde(default)]
    pub driver_node_id: Option<String>,
    /// The entrypoint's exit code.
    #[serde(default)]
    pub driver_exit_code: Option<i32>,
    /// The metadata it was submitted with.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The versions `GET /api/version` reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RayVersion {
    /// The Jobs API version.
    pub version: String,
    /// Ray's release.
    pub ray_version: String,
}

/// One resource's use across the cluster, from `GET /api/cluster_status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceUse {
    /// In use.
    pub used: f64,
    /// In the cluster.
    pub total: f64,
}

impl ResourceUse {
    /// Free now (never negative).
    pub fn free(self) -> f64 {
        (self.total - self.used).max(0.0)
    }
}

/// A client of one Ray cluster's Jobs API.
#[derive(Clone)]
pub struct RayJobs {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// The token never shows.
impl std::fmt::Debug for RayJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RayJobs")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The message of an error body: Ray's plain text, or the last non-empty line of a traceback.
fn error_message(body: &str) -> String {
    let line = body
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && *l != ".")
        .unwrap_or_default();
    line.chars().take(300).collect()
}

impl RayJobs {
    /// A client of the dashboard at `address` (`http://head:8265`), authenticating with `token`.
    pub fn new(address: &str, token: Option<String>) -> Result<RayJobs, String> {
        let base = Url::parse(address).map_err(|e| format!("cluster.ray_address {address:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!(
                "cluster.ray_address {address:?} must be an http(s) URL with a host"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(RayJobs { base, token, http })
    }

    /// `base` joined with `path` (the base's own path kept, as behind a proxy).
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        url
    }

    /// One request: `(status, body)` of any answer, or [`RayError::Unreachable`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, String), RayError> {
        let url = self.url(path);
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let unreachable = |e: reqwest::Error| RayError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(RayError::BadResponse {
                    what: path.to_owned(),
                    reason: format!("a body of more than {MAX_BODY} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// A request whose success body is JSON of type `T`; `Ok(None)` on 404.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>, RayError> {
        let what = format!("{method} {path}");
        let (status, text) = self.exchange(method, path, body).await?;
        match status {
            s if s.is_success() => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RayError::BadResponse {
                    what,
                    reason: e.to_string(),
                }),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RayError::Unauthorized {
                status: status.as_u16(),
                message: error_message(&text),
            }),
            _ => Err(RayError::Refused {
                what,
                status: status.as_u16(),
                message: error_message(&text),
            }),
        }
    }

    /// `GET /api/version`.
    pub async fn version(&self) -> Result<RayVersion, RayError> {
        self.call(Method::GET, "api/version", None)
            .await?
            .ok_or_else(|| RayError::BadResponse {
                what: "GET api/version".into(),
                reason: "404: not a Ray dashboard".into(),
            })
    }

    /// `POST /api/jobs/`: submits `request`; [`RayError::AlreadyExists`] when its submission id is taken.
    pub async fn submit(&self, request: &JobRequest) -> Result<(), RayError> {
        #[derive(Deserialize)]
        struct Submitted {
            submission_id: String,
        }
        let body = serde_json::to_vec(request).map_err(|e| RayError::BadResponse {
            what: "POST api/jobs/".into(),
            reason: e.to_string(),
        })?;
        match self
            .call::<Submitted>(Method::POST, "api/jobs/", Some(body))
            .await
        {
            Ok(Some(s)) if s.submission_id == request.submission_id => Ok(()),
            Ok(Some(s)) => Err(RayError::BadResponse {
                what: "POST api/jobs/".into(),
                reason: format!(
                    "submitted as {:?}, asked for {:?}",
                    s.submission_id, request.submission_id
                ),
            }),
            Ok(None) => Err(RayError::BadResponse {
                what: "POST api/jobs/".into(),
                reason: "404: not a Ray dashboard".into(),
            }),
            // Ray 2.x answers a taken id with a 500 whose traceback ends in "... already exists".
            Err(RayError::Refused { message, .. }) if message.contains("already exists") => {
                Err(RayError::AlreadyExists(request.submission_id.clone()))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /api/jobs/<id>`: the job, or `None` when Ray does not know it.
    pub async fn job(&self, submission_id: &str) -> Result<Option<JobDetails>, RayError> {
        self.call(Method::GET, &format!("api/jobs/{submission_id}"), None)
            .await
    }

    /// `GET /api/jobs/<id>/logs`: the entrypoint's output so far (`None`: Ray does not know the job).
    pub async fn logs(&self, submission_id: &str) -> Result<Option<String>, RayError> {
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let logs: Option<Logs> = self
            .call(Method::GET, &format!("api/jobs/{submission_id}/logs"), None)
            .await?;
        Ok(logs.map(|l| l.logs))
    }

    /// `GET /api/jobs/`: every job the cluster remembers.
    pub async fn list(&self) -> Result<Vec<JobDetails>, RayError> {
        Ok(self
            .call(Method::GET, "api/jobs/", None)
            .await?
            .unwrap_or_default())
    }

    /// `POST /api/jobs/<id>/stop`: whether a running job was stopped (`false`: it had ended, or
    /// Ray does not know it).
    pub async fn stop(&self, submission_id: &str) -> Result<bool, RayError> {
        #[derive(Deserialize)]
        struct Stopped {
            stopped: bool,
        }
        let stopped: Option<Stopped> = self
            .call(Method::POST, &format!("api/jobs/{submission_id}/stop"), None)
            .await?;
        Ok(stopped.is_some_and(|s| s.stopped))
    }

    /// `DELETE /api/jobs/<id>`: forgets an ended job (`false`: Ray does not know it).
    pub async fn delete(&self, submission_id: &str) -> Result<bool, RayError> {
        #[derive(Deserialize)]
        struct Deleted {
            deleted: bool,
        }
        let deleted: Option<Deleted> = self
            .call(Method::DELETE, &format!("api/jobs/{submission_id}"), None)
            .await?;
        Ok(deleted.is_some_and(|d| d.deleted))
    }

    /// Each resource's use across the cluster (`GET /api/cluster_status`: `loadMetricsReport.usage`).
    pub async fn resources(&self) -> Result<BTreeMap<String, ResourceUse>, RayError> {
        let what = "GET api/cluster_status";
        let status: serde_json::Value = self
            .call(Method::GET, "api/cluster_status", None)
            .await?
            .ok_or_else(|| RayError::BadResponse {
                what: what.into(),
                reason: "404".into(),
            })?;
        parse_usage(&status).map_err(|reason| RayError::BadResponse {
            what: what.into(),
            reason,
        })
    }
}

/// `data.clusterStatus.loadMetricsReport.usage` (`{"GPU": [used, total], …}`) of a cluster status.
pub fn parse_usage(status: &serde_json::Value) -> Result<BTreeMap<String, ResourceUse>, String> {
    let usage = status
        .pointer("/data/clusterStatus/loadMetricsReport/usage")
        .and_then(serde_json::Value::as_object)
        .ok_or("no data.clusterStatus.loadMetricsReport.usage")?;
    usage
        .iter()
        .map(|(name, pair)| {
            let pair = pair.as_array().filter(|p| p.len() == 2);
            let number = |i: usize| {
                pair.and_then(|p| p[i].as_f64())
                    .filter(|v| v.is_finite() && *v >= 0.0)
            };
            match (number(0), number(1)) {
                (Some(used), Some(total)) => Ok((name.clone(), ResourceUse { used, total })),
                _ => Err(format!(
                    "resource {name}: want [used, total], got {:?}",
                    usage[name]
                )),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_read_as_their_last_line() {
        assert_eq!(
            error_message("Forbidden: Invalid authentication token"),
            "Forbidden: Invalid authentication token"
        );
        let traceback = "Traceback (most recent call last):\n  File \"x\"\nValueError: Job with submission_id a already exists. Please use a different submission_id.\n.\n";
        assert_eq!(
            error_message(traceback),
            "ValueError: Job with submission_id a already exists. Please use a different submission_id."
        );
        assert_eq!(error_message(""), "");
        assert_eq!(error_message(&"x".repeat(1000)).len(), 300);
    }

    #[test]
    fn usage_is_read_strictly() {
        let status = serde_json::json!({"data": {"clusterStatus": {"loadMetricsReport": {"usage": {
            "GPU": [1.0, 4.0], "CPU": [0.5, 2.0]
        }}}}});
        let usage = parse_usage(&status).unwrap();
        assert_eq!(usage["GPU"].free(), 3.0);
        assert_eq!(
            usage["CPU"],
            ResourceUse {
                used: 0.5,
                total: 2.0
            }
        );
        assert_eq!(
            ResourceUse {
                used: 5.0,
                total: 4.0
            }
            .free(),
            0.0
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"data": {"clusterStatus": {"loadMetricsReport": {"usage": {"GPU": [1.0]}}}}}),
            serde_json::json!({"data": {"clusterStatus": {"loadMetricsReport": {"usage": {"GPU": ["a", 1]}}}}}),
            serde_json::json!({"data": {"clusterStatus": {"loadMetricsReport": {"usage": {"GPU": [-1.0, 1.0]}}}}}),
        ] {
            assert!(parse_usage(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_checked_and_paths_joined_under_a_proxy_prefix() {
        assert!(RayJobs::new("ftp://head:8265", None).is_err());
        assert!(RayJobs::new("not a url", None).is_err());
        let direct = RayJobs::new("http://head:8265", Some("t".into())).unwrap();
        assert_eq!(direct.url("api/jobs/").as_str(), "http://head:8265/api/jobs/");
        let proxied = RayJobs::new("https://proxy/ray/", None).unwrap();
        assert_eq!(proxied.url("api/jobs/x").as_str(), "https://proxy/ray/api/jobs/x");
        assert!(!format!("{direct:?}").contains("\"t\""));
    }

    #[test]
    fn only_an_unreachable_or_failing_head_is_transient() {
        let unreachable = RayError::Unreachable {
            url: "u".into(),
            reason: "r".into(),
        };
        assert!(unreachable.is_transient());
        let refused = |status| RayError::Refused {
            what: "w".into(),
            status,
            message: "m".into(),
        };
        assert!(refused(503).is_transient());
        assert!(!refused(400).is_transient());
        assert!(
            !RayError::Unauthorized {
                status: 403,
                message: "m".into()
            }
            .is_transient()
        );
        assert!(!RayError::AlreadyExists("x".into()).is_transient());
    }
}
