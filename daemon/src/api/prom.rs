//! Prometheus exposition (`GET /prometheus`): request counts by route and status, store size, rounds
//! committed and submissions by state, and on a Ray coordinator its jobs in flight by state and its
//! attempts by outcome, in the text format through `prometheus-client`.
//!
//! Gauges that mirror the store are refreshed at scrape time, so nothing polls in the background.

use crate::engine::ray::JobCounts;
use crate::service::{Service, ServiceError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of `talkheadd_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route pattern (`/update`, `/metrics`, ..., or `other`: never the raw path, which is unbounded).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Where a Ray coordinator's job counts are read at scrape time.
pub type JobCountsSource = Arc<dyn Fn() -> JobCounts + Send + Sync>;

/// The families of a Ray coordinator.
struct ClusterFamilies {
    source: JobCountsSource,
    jobs: Family<StateLabels, Gauge>,
    attempts: Family<OutcomeLabels, Gauge>,
}

/// The daemon's metric families.
pub struct PromMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    store_size: Gauge,
    rounds_committed: Gauge,
    submissions: Family<StateLabels, Gauge>,
    cluster: Option<ClusterFamilies>,
}

impl PromMetrics {
    /// Register every family.
    pub fn new() -> Arc<PromMetrics> {
        PromMetrics::with_cluster(None)
    }

    /// Register every family, and a Ray coordinator's from `jobs` when it is one.
    pub fn with_cluster(jobs: Option<JobCountsSource>) -> Arc<PromMetrics> {
        let mut registry = Registry::with_prefix("talkheadd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let store_size = Gauge::default();
        registry.register(
            "store_size_bytes",
            "Size of the LMDB data file",
            store_size.clone(),
        );
        let rounds_committed = Gauge::default();
        registry.register(
            "rounds_committed",
            "Rounds committed since the store was created",
            rounds_committed.clone(),
        );
        let submissions = Family::<StateLabels, Gauge>::default();
        registry.register("submissions", "Submissions by state", submissions.clone());
        let cluster = jobs.map(|source| {
            let jobs = Family::<StateLabels, Gauge>::default();
            registry.register(
                "cluster_jobs",
                "Ray jobs of this coordinator in flight, by Ray's state",
                jobs.clone(),
            );
            let attempts = Family::<OutcomeLabels, Gauge>::default();
            registry.register(
                "cluster_attempts",
                "Evaluation attempts since start: submitted as Ray jobs, reported, lost",
                attempts.clone(),
            );
            ClusterFamilies {
                source,
                jobs,
                attempts,
            }
        });
        Arc::new(PromMetrics {
            registry,
            requests,
            store_size,
            rounds_committed,
            submissions,
            cluster,
        })
    }

    /// Count one answered request.
    pub fn observe_request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// Refresh store-derived gauges and render the text exposition.
    pub async fn render(&self, service: &Service) -> Result<String, ServiceError> {
        let counts = service.counts().await?;
        let rounds = service.rounds_committed().await?;
        self.store_size
            .set(i64::try_from(service.store_size_bytes()).unwrap_or(i64::MAX));
        self.rounds_committed
            .set(i64::try_from(rounds).unwrap_or(i64::MAX));
        for (state, n) in [
            ("total", counts.submissions),
            ("pending", counts.pending),
            ("staged", counts.staged),
            ("committed", counts.committed),
        ] {
            self.submissions
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(c) = &self.cluster {
            let counts = (c.source)();
            for (state, n) in &counts.in_flight {
                c.jobs
                    .get_or_create(&StateLabels { state })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            for (outcome, n) in [
                ("submitted", counts.submitted),
                ("reported", counts.reported),
                ("lost", counts.lost),
            ] {
                c.attempts
                    .get_or_create(&OutcomeLabels { outcome })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| ServiceError::Worker(format!("prometheus encoding: {e}")))?;
        Ok(out)
    }
}
