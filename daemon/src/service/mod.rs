//! The daemon's operations, shared by every surface (the HTTP gateway now, the admin plane later): each
//! is one decision against the store, run on a blocking thread so no LMDB transaction ever meets an
//! `.await`.
//!
//! Surfaces parse, authenticate and map errors; they never reach into the store themselves. Errors map
//! through one [`ErrorClass`] to both HTTP statuses and gRPC codes.

pub mod admin;
mod control;

pub use control::LoopControl;

use crate::clock::Clock;
use crate::domain::Submission;
use crate::store::{Store, StoreError, SubmissionCounts, UpsertReport, WorkerFailed};
use bytes::Bytes;
use hyper::StatusCode;

use std::sync::{Arc, Mutex};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking worker died (a bug, or shutdown in progress).
    #[error("internal worker failed: {0}")]
    Worker(String),
    /// A response could not be serialised (a bug: every stored value is serialisable).
    #[error("could not serialise the response: {0}")]
    Render(#[from] sonic_rs::Error),
    /// The caller's argument is malformed or refers to nothing that can exist.
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation cannot be done in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A part of the daemon the operation needs is not running.
    #[error("{0}")]
    Unavailable(String),
}

impl From<WorkerFailed> for ServiceError {
    fn from(e: WorkerFailed) -> Self {
        ServiceError::Worker(e.0)
    }
}

/// What kind of failure an error is, for every surface: the one mapping to HTTP statuses and gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (HTTP 400, gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// Nothing by that name (404, NOT_FOUND).
    NotFound,
    /// Valid, but refused by a rule or the current state (422, FAILED_PRECONDITION).
    FailedPrecondition,
    /// Try again later (503, UNAVAILABLE).
    Unavailable,
    /// A bug (500, INTERNAL).
    Internal,
}

impl ErrorClass {
    /// The HTTP status.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorClass::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ServiceError {
    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            ServiceError::Store(StoreError::SubmissionLimit { .. }) | ServiceError::FailedPrecondition(_) => {
                ErrorClass::FailedPrecondition
            }
            ServiceError::Store(_) | ServiceError::Worker(_) | ServiceError::Unavailable(_) => {
                ErrorClass::Unavailable
            }
            ServiceError::Render(_) => ErrorClass::Internal,
            ServiceError::InvalidArgument(_) => ErrorClass::InvalidArgument,
            ServiceError::NotFound(_) => ErrorClass::NotFound,
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        self.class().http_status()
    }

    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceError::Store(e) => e.reason(),
            ServiceError::Worker(_) => "internal_worker_failed",
            ServiceError::Render(_) => "internal_render_failed",
            ServiceError::InvalidArgument(_) => "invalid_argument",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::FailedPrecondition(_) => "failed_precondition",
            ServiceError::Unavailable(_) => "unavailable",
        }
    }
}

/// Operations over the daemon's state.
#[derive(Clone)]
pub struct Service {
    store: Store,
    clock: Arc<dyn Clock>,
    /// `/metrics` body rendered for one `metrics_version`: every change to what `/metrics` shows bumps the
    /// version, so the cache can never serve stale rows.
    metrics_cache: Arc<Mutex<Option<(u64, Bytes)>>>,
    /// Wakes the evaluation loop when submissions change.
    control: LoopControl,
    /// The admin plane's context (process facts, events, reload); `None` in HTTP-only tests.
    admin: Option<admin::AdminContext>,
}

pub use crate::store::{MetricsBodyRow, render_metrics_body};

impl Service {
    /// Wrap an open store; `control` is the evaluation loop's (a detached default when none runs).
    pub fn new(store: Store, clock: Arc<dyn Clock>, control: LoopControl) -> Service {
        Service {
            store,
            clock,
            metrics_cache: Arc::new(Mutex::new(None)),
            control,
            admin: None,
        }
    }

    /// The evaluation loop's controls.
    pub fn control(&self) -> &LoopControl {
        &self.control
    }

    /// The store (for the daemon's own lifecycle).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// [`Store::blocking`] with the service's error type (so that closures may use `?` on store calls).
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.store.blocking(op).await
    }

    /// Upsert a validated batch in one transaction (`POST /update`). Duplicated hotkeys: the last wins.
    pub async fn update_submissions(&self, batch: Vec<Submission>) -> Result<UpsertReport, ServiceError> {
        let now = self.clock.now_unix();
        let report = self
            .blocking(move |s| Ok(s.upsert_submissions(&batch, now)?))
            .await?;
        self.control.wake();
        Ok(report)
    }

    /// The current `metrics_version` (the ETag), without reading the rows.
    pub async fn metrics_version(&self) -> Result<u64, ServiceError> {
        self.blocking(|s| Ok(s.metrics_version()?)).await
    }

    /// The `/metrics` body and the version it belongs to, from the cache when the version is unchanged.
    pub async fn metrics_body(&self) -> Result<(u64, Bytes), ServiceError> {
        let version = self.metrics_version().await?;
        if let Some(hit) = self.cached_metrics(version) {
            return Ok(hit);
        }
        let (version, body) = self
            .blocking(|s| {
                let (version, body) =
                    s.with_metrics_json(|version, rows| (version, render_metrics_body(rows)))?;
                Ok((version, Bytes::from(body?)))
            })
            .await?;
        if let Ok(mut cache) = self.metrics_cache.lock() {
            *cache = Some((version, body.clone()));
        }
        Ok((version, body))
    }

    fn cached_metrics(&self, version: u64) -> Option<(u64, Bytes)> {
        let cache = self.metrics_cache.lock().ok()?;
        cache.as_ref().filter(|(v, _)| *v == version).cloned()
    }

    /// Submission counts by state (Prometheus, status).
    pub async fn counts(&self) -> Result<SubmissionCounts, ServiceError> {
        self.blocking(|s| Ok(s.counts()?)).await
    }

    /// Rounds committed so far.
    pub async fn rounds_committed(&self) -> Result<u64, ServiceError> {
        self.blocking(|s| Ok(s.round_state()?.number.saturating_sub(1)))
            .await
    }

    /// Size of the LMDB data file in bytes.
    pub fn store_size_bytes(&self) -> u64 {
        self.store.file_size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EvaluationMetrics, Hotkey, ImageRef, Verdict};
    use crate::rounds::ReevaluatePolicy;
    use crate::store::{MetricsRow, RankInput, StoreOptions};
    use serde::Serialize;

    #[test]
    fn a_store_call_that_never_returned_is_the_worker_failure() {
        let e = ServiceError::from(WorkerFailed("task 7 panicked".into()));
        assert!(
            matches!(&e, ServiceError::Worker(m) if m == "task 7 panicked"),
            "{e:?}"
        );
        assert_eq!(e.reason(), "internal_worker_failed");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.to_string(), "internal worker failed: task 7 panicked");
    }

    /// The reference's `MinerMetricsResponse`, serialised by serde_json: what the body must say.
    #[derive(Serialize)]
    struct ReferenceRow<'a> {
        hotkey: &'a Hotkey,
        image_ref: &'a str,
        submit_time: f64,
        metrics: &'a EvaluationMetrics,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        carried_over: bool,
    }

    fn reference_body(rows: &[MetricsRow]) -> serde_json::Value {
        let rows: Vec<ReferenceRow<'_>> = rows
            .iter()
            .map(|r| ReferenceRow {
                hotkey: &r.hotkey,
                image_ref: r.image_ref.as_str(),
                submit_time: r.submit_time,
                metrics: &r.metrics,
                carried_over: r.carried_over,
            })
            .collect();
        serde_json::from_slice(&serde_json::to_vec(&rows).unwrap()).unwrap()
    }

    fn tricky_rows() -> Vec<MetricsRow> {
        let image = ImageRef::parse(&format!("r.example/m@sha256:{}", "a".repeat(64))).unwrap();
        let mut metrics = EvaluationMetrics::failed(Verdict::Ok, "", image.as_str(), 1.5, 2.25, 5);
        metrics.error = Some("quote \" and \\ and \u{1} and é".into());
        metrics.final_score = 0.123_456_789;
        metrics.efficiency.inference_time_sec = Some(f64::NAN);
        metrics.stage_times.insert("pull".into(), 1e-7);
        vec![
            MetricsRow {
                hotkey: Hotkey::from_public_key([3; 32]),
                image_ref: image.clone(),
                submit_time: 1.5,
                metrics: metrics.clone(),
                carried_over: true,
            },
            MetricsRow {
                hotkey: Hotkey::from_public_key([4; 32]),
                image_ref: image,
                submit_time: 1e300,
                metrics,
                carried_over: false,
            },
        ]
    }

    #[test]
    fn the_metrics_body_says_exactly_what_serde_json_would_write() {
        let rows = tricky_rows();
        let ours: serde_json::Value = serde_json::from_slice(&render_metrics_body(&rows).unwrap()).unwrap();
        assert_eq!(ours, reference_body(&rows));
        assert_eq!(
            ours[0]["metrics"]["efficiency"]["inference_time_sec"],
            serde_json::Value::Null
        );
        assert_eq!(ours[0]["carried_over"], true);
        assert!(ours[1].get("carried_over").is_none());
        assert_eq!(render_metrics_body::<MetricsRow>(&[]).unwrap(), b"[]");
    }

    #[test]
    fn the_body_served_from_stored_json_equals_the_decoded_rows_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db"), StoreOptions::default()).unwrap();
        let mut rows = tricky_rows();
        rows[0].carried_over = false;
        let batch: Vec<Submission> = rows
            .iter()
            .map(|r| Submission {
                hotkey: r.hotkey.clone(),
                image_ref: r.image_ref.clone(),
                submit_time: r.submit_time,
            })
            .collect();
        store.upsert_submissions(&batch, 10.0).unwrap();
        for ticket in store.pending().unwrap() {
            let row = rows.iter_mut().find(|r| r.hotkey == ticket.hotkey).unwrap();
            row.metrics.round = ticket.round;
            store.stage_result(&ticket, row.metrics.clone()).unwrap();
        }
        let in_order = |inputs: &[RankInput<'_>]| (0..inputs.len()).collect();
        assert!(
            store
                .commit_round_if_complete(&ReevaluatePolicy::All, &in_order)
                .unwrap()
                .is_some()
        );

        let decoded = store.metrics_view().unwrap();
        let (version, served) = store
            .with_metrics_json(|v, rows| (v, render_metrics_body(rows).unwrap()))
            .unwrap();
        assert_eq!(version, decoded.metrics_version);
        assert_eq!(served, render_metrics_body(&decoded.rows).unwrap());
        let served: serde_json::Value = serde_json::from_slice(&served).unwrap();
        assert_eq!(served, reference_body(&rows));
    }
}
