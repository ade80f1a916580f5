//! One evaluation attempt as a Ray job: its submission id, its entrypoint and the request body of
//! `POST /api/jobs/`, as pure functions of values the coordinator owns.
//!
//! Ray runs a job's entrypoint with a shell, so the entrypoint is built only from words this module
//! has checked against a conservative alphabet; a word outside it is refused, never quoted.

use std::collections::BTreeMap;

use serde::Serialize;

/// Environment variable that carries the attempt's bearer token to the worker.
pub const TOKEN_ENV: &str = "TALKHEADD_ATTEMPT_TOKEN";
/// Prefix of every submission id this daemon makes (jobs of others on the cluster are left alone).
pub const SUBMISSION_PREFIX: &str = "talkheadd-";

/// Why a job could not be described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// A word of the entrypoint holds a character outside `[A-Za-z0-9._:/=-]`.
    #[error("{what} {value:?} holds a character a shell could read (allowed: letters, digits, . _ : / = -)")]
    UnsafeWord {
        /// Which word.
        what: &'static str,
        /// The word.
        value: String,
    },
    /// The coordinator URL is not a plain `http(s)://host[:port][/path]`.
    #[error(
        "cluster.advertise_url {0:?} must be http:// or https:// with a host, and no user, query or fragment"
    )]
    BadCoordinatorUrl(String),
    /// An evaluation id that is empty or longer than 96 characters.
    #[error("evaluation id {0:?} must be 1 to 96 characters")]
    BadEvaluationId(String),
}

/// The characters an entrypoint word may hold.
fn is_safe_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'=' | b'-'))
}

fn checked<'a>(what: &'static str, value: &'a str) -> Result<&'a str, JobError> {
    if is_safe_word(value) {
        Ok(value)
    } else {
        Err(JobError::UnsafeWord {
            what,
            value: value.to_owned(),
        })
    }
}

/// The submission id of attempt `attempt` of evaluation `evaluation`: `talkheadd-<evaluation>-a<attempt>`.
/// The same inputs always give the same id, so a coordinator that restarts recognises its jobs.
pub fn submission_id(evaluation: &str, attempt: u32) -> Result<String, JobError> {
    if evaluation.is_empty() || evaluation.len() > 96 {
        return Err(JobError::BadEvaluationId(evaluation.to_owned()));
    }
    checked("evaluation id", evaluation)?;
    Ok(format!("{SUBMISSION_PREFIX}{evaluation}-a{attempt}"))
}

/// `(evaluation, attempt)` of a submission id this daemon made, `None` for any other job's.
pub fn parse_submission_id(id: &str) -> Option<(&str, u32)> {
    let rest = id.strip_prefix(SUBMISSION_PREFIX)?;
    let (evaluation, attempt) = rest.rsplit_once("-a")?;
    let attempt = attempt
        .parse()
        .ok()
        .filter(|_| attempt.bytes().all(|b| b.is_ascii_digit()))?;
    (!evaluation.is_empty() && is_safe_word(evaluation)).then_some((evaluation, attempt))
}

/// A URL the workers can reach the coordinator at: `http(s)://host[:port][/path]`, nothing else.
pub fn check_coordinator_url(url: &str) -> Result<&str, JobError> {
    let bad = || JobError::BadCoordinatorUrl(url.to_owned());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || url.contains(['?', '#']) || !is_safe_word(url) {
        return Err(bad());
    }
    Ok(url)
}

/// The worker's command line: `<binary> worker --coordinator <url> --evaluation <id> --attempt <n>`.
pub fn entrypoint(
    binary: &str,
    coordinator: &str,
    evaluation: &str,
    attempt: u32,
) -> Result<String, JobError> {
    let binary = checked("worker binary", binary)?;
    let coordinator = check_coordinator_url(coordinator)?;
    submission_id(evaluation, attempt)?;
    Ok(format!(
        "{binary} worker --coordinator {coordinator} --evaluation {evaluation} --attempt {attempt}"
    ))
}

/// `runtime_env` of a job: only environment variables (no working directory, packages or images).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeEnv {
    /// Set in the entrypoint's environment.
    pub env_vars: BTreeMap<String, String>,
}

/// The body of `POST /api/jobs/` (Ray's `JobSubmitRequest`).
#[derive(Clone, PartialEq, Serialize)]
pub struct JobRequest {
    /// The shell command Ray runs ([`entrypoint`]).
    pub entrypoint: String,
    /// [`submission_id`].
    pub submission_id: String,
    /// GPUs reserved for the entrypoint: Ray sets `CUDA_VISIBLE_DEVICES` to them.
    pub entrypoint_num_gpus: f64,
    /// CPUs reserved for the entrypoint (the analysis runs in it).
    pub entrypoint_num_cpus: f64,
    /// Custom resources (a GPU-model label, so that a round stays on one model).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub entrypoint_resources: BTreeMap<String, f64>,
    /// The attempt's token, and nothing else.
    pub runtime_env: RuntimeEnv,
    /// Shown by `ray job list`; read back to find this daemon's jobs.
    pub metadata: BTreeMap<String, String>,
}

/// The token never shows in logs or panics.
impl std::fmt::Debug for JobRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRequest")
            .field("entrypoint", &self.entrypoint)
            .field("submission_id", &self.submission_id)
            .field("entrypoint_num_gpus", &self.entrypoint_num_gpus)
            .field("entrypoint_num_cpus", &self.entrypoint_num_cpus)
            .field("entrypoint_resources", &self.entrypoint_resources)
            .field("env_vars", &self.runtime_env.env_vars.keys().collect::<Vec<_>>())
            .field("metadata", &self.metadata)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn submission_ids_are_derived_and_read_back() {
        let id = submission_id("e3b0c44298fc", 2).unwrap();
        assert_eq!(id, "talkheadd-e3b0c44298fc-a2");
        assert_eq!(parse_submission_id(&id), Some(("e3b0c44298fc", 2)));
        // An evaluation id with "-a" in it still reads back (the attempt is the last part).
        let id = submission_id("run-a7-x", 11).unwrap();
        assert_eq!(parse_submission_id(&id), Some(("run-a7-x", 11)));
        for other in [
            "raysubmit_4LamXRuQpYdSMg7J",
            "talkheadd-",
            "talkheadd-x-a",
            "talkheadd-x-a+1",
            "talkheadd--a1",
        ] {
            assert_eq!(parse_submission_id(other), None, "{other}");
        }
        assert!(matches!(submission_id("", 1), Err(JobError::BadEvaluationId(_))));
        assert!(matches!(
            submission_id(&"e".repeat(97), 1),
            Err(JobError::BadEvaluationId(_))
        ));
    }

    #[test]
    fn an_entrypoint_holds_only_checked_words() {
        let e = entrypoint("/usr/bin/talkheadd", "https://10.0.0.5:8443/cluster", "abc123", 1).unwrap();
        assert_eq!(
            e,
            "/usr/bin/talkheadd worker --coordinator https://10.0.0.5:8443/cluster --evaluation abc123 --attempt 1"
        );
        for evil in [
            "abc;rm -rf /",
            "$(id)",
            "a b",
            "`x`",
            "a|b",
            "a&b",
            "a\nb",
            "'",
            "\"",
            "a>b",
        ] {
            assert!(
                matches!(
                    entrypoint("talkheadd", "http://h:1", evil, 1),
                    Err(JobError::UnsafeWord { .. })
                ),
                "{evil:?}"
            );
            assert!(entrypoint(evil, "http://h:1", "abc", 1).is_err(), "{evil:?}");
        }
        for url in [
            "ftp://h/",
            "http://",
            "http://user@h:1/",
            "http://h:1/?q=1",
            "http://h:1/#f",
            "http://h:1/$(id)",
            "h:1",
        ] {
            assert!(
                matches!(
                    entrypoint("talkheadd", url, "abc", 1),
                    Err(JobError::BadCoordinatorUrl(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn the_request_body_is_rays_shape_and_its_debug_hides_the_token() {
        let request = JobRequest {
            entrypoint: "talkheadd worker".into(),
            submission_id: "talkheadd-x-a1".into(),
            entrypoint_num_gpus: 1.0,
            entrypoint_num_cpus: 2.0,
            entrypoint_resources: BTreeMap::new(),
            runtime_env: RuntimeEnv {
                env_vars: BTreeMap::from([(TOKEN_ENV.to_owned(), "s3cret".to_owned())]),
            },
            metadata: BTreeMap::from([("evaluation".to_owned(), "x".to_owned())]),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["entrypoint_num_gpus"], 1.0);
        assert_eq!(json["runtime_env"]["env_vars"][TOKEN_ENV], "s3cret");
        assert!(json.get("entrypoint_resources").is_none());
        let debug = format!("{request:?}");
        assert!(!debug.contains("s3cret") && debug.contains(TOKEN_ENV), "{debug}");
    }
}
