//! Pure classification of image-pull failures: whose fault is it?
//!
//! A pull that fails because the image does not exist or is not accessible is the miner's fault
//! (`pull_failed`); a failure of the network, the registry or the local engine is not (`infra_error`,
//! retried later and never scored). Unknown failures are treated as infrastructure: a miner is only
//! charged for what is positively known to be its own doing.

use crate::domain::{ImageRef, Verdict};
use std::collections::HashMap;
use std::time::Duration;

/// Who answers for a failed pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullFailure {
    /// The image cannot be had: not found, no access, wrong digest.
    Miner(String),
    /// The host, network or registry failed; retry later.
    Infra(String),
}

impl PullFailure {
    /// The verdict this failure maps to.
    pub fn verdict(&self) -> Verdict {
        match self {
            PullFailure::Miner(_) => Verdict::PullFailed,
            PullFailure::Infra(_) => Verdict::InfraError,
        }
    }

    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        match self {
            PullFailure::Miner(r) | PullFailure::Infra(r) => r,
        }
    }
}

/// Messages (lower-cased substrings) that mean the image itself is unavailable to us.
const MINER_CAUSES: &[&str] = &[
    "manifest unknown",
    "manifest for",
    "not found",
    "unauthorized",
    "authentication required",
    "denied",
    "pull access denied",
    "repository does not exist",
    "name unknown",
    "invalid reference format",
    "no matching manifest",
    "does not match digest",
    "unsupported media type",
];

/// Messages that positively mean the infrastructure failed, checked first so that e.g. a proxy's
/// "503 ... not found upstream" is never blamed on the miner.
const INFRA_CAUSES: &[&str] = &[
    "connection refused",
    "connection reset",
    "i/o timeout",
    "timeout",
    "no such host",
    "tls handshake",
    "toomanyrequests",
    "too many requests",
    "service unavailable",
    "internal server error",
    "bad gateway",
    "gateway timeout",
    "no space left on device",
    "network is unreachable",
    "temporary failure",
    "eof",
];

/// Classify a failed pull from the engine's HTTP status (if the API call itself failed) and message.
pub fn classify(status: Option<u16>, message: &str) -> PullFailure {
    let lower = message.to_ascii_lowercase();
    let reason = sanitise(message);
    // A plain 500 is how the engine wraps many registry answers (including "not found"), so only the
    // other 5xx statuses are infrastructure by status alone.
    if matches!(status, Some(s) if s > 500) || INFRA_CAUSES.iter().any(|c| lower.contains(c)) {
        return PullFailure::Infra(reason);
    }
    if matches!(status, Some(401 | 403 | 404)) || MINER_CAUSES.iter().any(|c| lower.contains(c)) {
        return PullFailure::Miner(reason);
    }
    PullFailure::Infra(reason)
}

/// Backoff before retry `attempt` (1-based): 2 s doubling, capped.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let secs = 2u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_secs(secs).min(cap)
}

/// Longest wait between two pull attempts of one run.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// `docker.allowed_registries`: `None` when `image` may be pulled (an empty list allows every
/// registry; an image without a registry host is Docker Hub's, `docker.io`), else why not.
pub fn registry_refusal(image: &ImageRef, allowed: &[String]) -> Option<String> {
    let registry = registry_of(image);
    (!allowed.is_empty() && !allowed.iter().any(|r| r == registry))
        .then(|| format!("registry {registry} is not in docker.allowed_registries"))
}

/// `docker.max_image_bytes`: `None` when an image of `size_bytes` may run, else why not.
pub fn size_refusal(size_bytes: u64, max_image_bytes: u64) -> Option<String> {
    (size_bytes > max_image_bytes)
        .then(|| format!("image is {size_bytes} bytes, over docker.max_image_bytes = {max_image_bytes}"))
}

/// `docker.pull_attempts`: after attempt `attempt` (1-based) failed with `failure`, how long to wait
/// before the next one, or `None` to stop (a miner's failure, or the attempts are spent).
pub fn retry_wait(failure: &PullFailure, attempt: u32, pull_attempts: u32) -> Option<Duration> {
    match failure {
        PullFailure::Infra(_) if attempt < pull_attempts => Some(backoff(attempt, MAX_RETRY_WAIT)),
        _ => None,
    }
}

/// What a timed-out pull says when the engine relayed nothing from the registry (no manifest, no layer).
pub const NOTHING_HEARD: &str = "the registry sent nothing";

/// Runs in a row whose pull attempts all failed to reach the registry, and the time they must span,
/// before an image's unreachable registry is its miner's doing rather than the host's.
pub const UNREACHABLE_RUNS: u32 = 3;
/// See [`UNREACHABLE_RUNS`].
pub const UNREACHABLE_SPAN_SECS: f64 = 600.0;
/// Past this span an unreachable registry is the miner's even without a pull from another registry
/// to show that this host's network works (every other image may be cached): the longest a dead
/// registry can hold a round open.
pub const UNREACHABLE_MAX_SPAN_SECS: f64 = 3600.0;
/// Failing images forgotten after this long without a new failure (the ledger stays bounded).
const FORGET_AFTER_SECS: f64 = 86_400.0;

/// Public registries whose outages are never a miner's doing (a miner cannot make them unreachable
/// for its image alone; what it can do there, a missing manifest or no access, is `pull_failed`
/// already). Operators vouch for more with `docker.allowed_registries`.
const WELL_KNOWN_REGISTRIES: &[&str] = &[
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "public.ecr.aws",
    "nvcr.io",
    "registry.k8s.io",
    "mcr.microsoft.com",
];

/// Engine messages that mean the registry was never reached (name resolution, connection, TLS), as
/// opposed to a registry that answered badly (429, 5xx, EOF mid-transfer) or a host problem (disk).
const UNREACHABLE_CAUSES: &[&str] = &[
    "no such host",
    "connection refused",
    "network is unreachable",
    "no route to host",
    "i/o timeout",
    "tls handshake timeout",
    NOTHING_HEARD,
];

/// Whether a pull failure's message says the registry was never reached.
pub fn never_reached(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    UNREACHABLE_CAUSES.iter().any(|c| lower.contains(c))
}

/// Who answers for a registry that cannot be reached. An infrastructure failure is retried and never
/// charged, but a miner can point its image at a registry host that never answers (a dead host, a
/// firewalled port, a server that stalls): retried for ever, its evaluation would hold every round
/// open and no result would ever be committed. The ledger remembers successful pulls per registry host
/// and, per image, the runs whose attempts all failed to reach its registry. The registry becomes the
/// miner's problem (`pull_failed`) only when all of these hold:
/// - the failures say the registry was never reached ([`never_reached`]), not that it answered badly;
/// - the registry is neither a well-known public one nor one the operator vouched for;
/// - [`UNREACHABLE_RUNS`] runs in a row failed, over at least [`UNREACHABLE_SPAN_SECS`];
/// - that registry served no pull meanwhile;
/// - another registry served a pull meanwhile (this host's network works), or the failures span
///   [`UNREACHABLE_MAX_SPAN_SECS`].
#[derive(Debug, Default)]
pub struct PullLedger {
    /// Successful pulls per registry host.
    pulled: HashMap<String, u64>,
    /// Images whose runs keep failing to reach their registry, by pinned reference.
    failing: HashMap<String, Failing>,
}

#[derive(Debug, Clone, Copy)]
struct Failing {
    runs: u32,
    since_unix: f64,
    last_unix: f64,
    /// Pulls from its own registry, and from the others, counted when the first of these runs failed.
    own_then: u64,
    others_then: u64,
}

/// The registry host an image is pulled from (`docker.io` when the reference names none).
fn registry_of(image: &ImageRef) -> &str {
    image.registry().unwrap_or("docker.io")
}

impl PullLedger {
    /// `image` was pulled from its registry: the registry works, and the image is no longer failing.
    pub fn pulled(&mut self, image: &ImageRef) {
        *self.pulled.entry(registry_of(image).to_owned()).or_default() += 1;
        self.failing.remove(&image.pinned());
    }

    fn pulls(&self, host: &str) -> (u64, u64) {
        let own = self.pulled.get(host).copied().unwrap_or(0);
        let all: u64 = self.pulled.values().sum();
        (own, all - own)
    }

    /// A run spent all its pull attempts of `image`, the last failing with `last_error` (the host's
    /// side of failures), at `now_unix`; `vouched` are the operator's `docker.allowed_registries`.
    /// `None` while that is still the host's business (retried later); `Some(reason)` once the
    /// registry's unreachability is the miner's (see [`PullLedger`]).
    pub fn exhausted(
        &mut self,
        image: &ImageRef,
        now_unix: f64,
        last_error: &str,
        vouched: &[String],
    ) -> Option<String> {
        self.failing
            .retain(|_, f| now_unix - f.last_unix < FORGET_AFTER_SECS);
        let host = registry_of(image);
        if !never_reached(last_error)
            || WELL_KNOWN_REGISTRIES.contains(&host)
            || vouched.iter().any(|v| v == host)
        {
            return None;
        }
        let (own, others) = self.pulls(host);
        let failing = self.failing.entry(image.pinned()).or_insert(Failing {
            runs: 0,
            since_unix: now_unix,
            last_unix: now_unix,
            own_then: own,
            others_then: others,
        });
        failing.runs += 1;
        failing.last_unix = now_unix;
        let span = now_unix - failing.since_unix;
        let host_healthy = others > failing.others_then || span >= UNREACHABLE_MAX_SPAN_SECS;
        (failing.runs >= UNREACHABLE_RUNS
            && span >= UNREACHABLE_SPAN_SECS
            && own == failing.own_then
            && host_healthy)
            .then(|| {
                format!(
                    "registry {host} unreachable from this host in {} runs over {:.0} min; last error: {}",
                    failing.runs,
                    span / 60.0,
                    sanitise(last_error)
                )
            })
    }
}

/// Bounded, printable, single-line: engine messages can echo registry bodies.
pub fn sanitise(message: &str) -> String {
    crate::domain::text::echo(message, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_forbidden_images_are_the_miners_fault() {
        for (status, msg) in [
            (Some(404), "manifest unknown: manifest unknown"),
            (
                None,
                "pull access denied for miner/x, repository does not exist or may require 'docker login'",
            ),
            (
                None,
                "Head \"https://r/v2/x/manifests/sha256:ab\": unauthorized: authentication required",
            ),
            (
                Some(500),
                "manifest for r/x@sha256:ab not found: manifest unknown",
            ),
            (None, "received unexpected HTTP status: 404 name unknown"),
        ] {
            assert!(matches!(classify(status, msg), PullFailure::Miner(_)), "{msg}");
            assert_eq!(classify(status, msg).verdict(), Verdict::PullFailed);
        }
    }

    #[test]
    fn network_registry_and_host_failures_are_infrastructure() {
        for (status, msg) in [
            (
                None,
                "Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
            ),
            (None, "net/http: TLS handshake timeout"),
            (Some(502), "bad gateway"),
            (None, "toomanyrequests: You have reached your pull rate limit"),
            (None, "write /var/lib/docker/tmp/x: no space left on device"),
            (None, "received unexpected HTTP status: 503 Service Unavailable"),
            (None, "something nobody has seen before"),
        ] {
            assert!(matches!(classify(status, msg), PullFailure::Infra(_)), "{msg}");
            assert_eq!(classify(status, msg).verdict(), Verdict::InfraError);
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (1..=7).map(|a| backoff(a, cap).as_secs()).collect();
        assert_eq!(got, vec![2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX, cap), cap);
    }

    fn image(reference: &str) -> ImageRef {
        ImageRef::parse(&format!("{reference}@sha256:{}", "a".repeat(64))).unwrap()
    }

    #[test]
    fn allowed_registries_refuse_other_hosts_and_docker_hub_is_docker_io() {
        let allowed = vec!["127.0.0.1:5000".to_owned(), "docker.io".to_owned()];
        assert_eq!(registry_refusal(&image("127.0.0.1:5000/m/x"), &allowed), None);
        assert_eq!(registry_refusal(&image("miner/x"), &allowed), None);
        assert_eq!(
            registry_refusal(&image("ghcr.io/m/x"), &allowed).as_deref(),
            Some("registry ghcr.io is not in docker.allowed_registries")
        );
        let only_local = vec!["127.0.0.1:5000".to_owned()];
        assert!(registry_refusal(&image("miner/x"), &only_local).is_some());
        assert_eq!(
            registry_refusal(&image("ghcr.io/m/x"), &[]),
            None,
            "empty: all allowed"
        );
    }

    #[test]
    fn an_image_over_max_image_bytes_is_refused_at_the_limit_allowed() {
        assert_eq!(size_refusal(1000, 1000), None);
        assert_eq!(
            size_refusal(1001, 1000).as_deref(),
            Some("image is 1001 bytes, over docker.max_image_bytes = 1000")
        );
    }

    #[test]
    fn pull_attempts_bound_the_retries_of_infrastructure_failures_only() {
        let infra = PullFailure::Infra("i/o timeout".into());
        let miner = PullFailure::Miner("manifest unknown".into());
        // pull_attempts = 3: two retries, 2 s then 4 s apart, then stop.
        assert_eq!(retry_wait(&infra, 1, 3), Some(Duration::from_secs(2)));
        assert_eq!(retry_wait(&infra, 2, 3), Some(Duration::from_secs(4)));
        assert_eq!(retry_wait(&infra, 3, 3), None);
        // pull_attempts = 1: never retried.
        assert_eq!(retry_wait(&infra, 1, 1), None);
        // The miner's failure is final at once.
        assert_eq!(retry_wait(&miner, 1, 3), None);
        assert_eq!(retry_wait(&infra, 9, 20), Some(MAX_RETRY_WAIT));
    }

    #[test]
    fn an_unreachable_registry_becomes_the_miners_only_when_others_serve_pulls_over_time() {
        let dead = image("203.0.113.9:5000/m/x");
        let other = image("127.0.0.1:5000/m/y");
        let mut ledger = PullLedger::default();
        let unreachable = "dial tcp 203.0.113.9:5000: i/o timeout";
        // Three failed runs within ten minutes: still the host's business.
        assert_eq!(ledger.exhausted(&dead, 0.0, unreachable, &[]), None);
        ledger.pulled(&other);
        assert_eq!(ledger.exhausted(&dead, 60.0, unreachable, &[]), None);
        assert_eq!(ledger.exhausted(&dead, 120.0, unreachable, &[]), None);
        // Past the span, with another registry serving meanwhile: the miner's.
        let reason = ledger
            .exhausted(&dead, 700.0, &format!("{unreachable}\n"), &[])
            .unwrap();
        assert!(
            reason.starts_with("registry 203.0.113.9:5000 unreachable from this host in 4 runs over 12 min"),
            "{reason}"
        );
        assert!(
            reason.ends_with(&format!("last error: {unreachable}")),
            "{reason}"
        );
        // It pulls again: forgiven, and counted from scratch next time.
        ledger.pulled(&dead);
        assert_eq!(ledger.exhausted(&dead, 800.0, unreachable, &[]), None);
    }

    #[test]
    fn without_pulls_elsewhere_an_unreachable_registry_is_the_miners_only_after_the_longest_span() {
        let dead = image("203.0.113.9:5000/m/x");
        let mut ledger = PullLedger::default();
        for at in [0.0, 600.0, 1200.0, 2400.0] {
            assert_eq!(
                ledger.exhausted(&dead, at, "no route to host", &[]),
                None,
                "at {at}"
            );
        }
        assert!(ledger.exhausted(&dead, 3600.0, "no route to host", &[]).is_some());
    }

    #[test]
    fn registries_that_answer_badly_well_known_or_vouched_ones_stay_the_hosts() {
        let other = image("127.0.0.1:5000/m/y");
        let check = |img: &ImageRef, error: &str, vouched: &[String]| {
            let mut ledger = PullLedger::default();
            for at in [0.0, 300.0, 600.0, 900.0] {
                ledger.pulled(&other);
                if ledger.exhausted(img, at, error, vouched).is_some() {
                    return true;
                }
            }
            false
        };
        let dead = image("203.0.113.9:5000/m/x");
        assert!(check(&dead, "connection refused", &[]));
        // Answered, badly: rate limits, server errors, a transfer cut short, our own disk.
        for error in [
            "toomanyrequests: rate limit",
            "received unexpected HTTP status: 503",
            "unexpected EOF",
            "no space left on device",
        ] {
            assert!(!check(&dead, error, &[]), "{error}");
        }
        // A pull that timed out after the registry started answering is slow, not unreachable.
        assert!(!check(
            &dead,
            "pull did not finish within 900s (12 progress messages)",
            &[]
        ));
        assert!(check(
            &dead,
            &format!("pull did not finish within 900s ({NOTHING_HEARD})"),
            &[]
        ));
        // Outages of public registries and of those the operator vouches for are never the miner's.
        assert!(!check(&image("ghcr.io/m/x"), "connection refused", &[]));
        assert!(!check(&image("m/x"), "connection refused", &[]));
        assert!(!check(
            &dead,
            "connection refused",
            &["203.0.113.9:5000".to_owned()]
        ));
    }

    #[test]
    fn a_registry_that_served_another_image_meanwhile_is_not_unreachable() {
        let dead = image("203.0.113.9:5000/m/x");
        let sibling = image("203.0.113.9:5000/m/z");
        let other = image("127.0.0.1:5000/m/y");
        let mut ledger = PullLedger::default();
        assert_eq!(ledger.exhausted(&dead, 0.0, "connection refused", &[]), None);
        ledger.pulled(&sibling);
        ledger.pulled(&other);
        for at in [300.0, 600.0, 4000.0] {
            assert_eq!(
                ledger.exhausted(&dead, at, "connection refused", &[]),
                None,
                "at {at}"
            );
        }
    }

    #[test]
    fn failing_images_are_forgotten_after_a_day_without_failures() {
        let dead = image("203.0.113.9:5000/m/x");
        let mut ledger = PullLedger::default();
        ledger.exhausted(&dead, 0.0, "connection refused", &[]);
        assert_eq!(ledger.failing.len(), 1);
        let other = image("203.0.113.10:5000/m/x");
        ledger.exhausted(&other, 90_000.0, "connection refused", &[]);
        assert_eq!(ledger.failing.len(), 1, "the day-old entry is gone");
    }

    #[test]
    fn messages_are_bounded_and_single_line() {
        let s = sanitise(&format!("a\nb\r{}", "x".repeat(1000)));
        assert!(!s.contains('\n') && s.chars().count() <= 300);
    }
}
