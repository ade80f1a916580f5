//! The verdict vocabulary (docs/reference.md#verdicts): the outcome of one challenge or one whole evaluation.
//!
//! The strings are a public contract (stored, served by `/metrics`, logged as `VERDICT=`); never rename
//! a variant's serialised form.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Outcome of a challenge or of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Evaluated and scored.
    Ok,
    /// The image could not be pulled for a reason the miner controls (not found, unauthorised).
    PullFailed,
    /// The image was refused before running (too large, blocked, wrong digest, disallowed registry).
    ImageRejected,
    /// The container never signalled readiness in time.
    ReadyTimeout,
    /// A challenge produced no result in time.
    ChallengeTimeout,
    /// The container exited or failed on its own.
    Crashed,
    /// The container exceeded its host memory limit.
    HostOom,
    /// The miner ran out of GPU memory.
    CudaOom,
    /// The image's CUDA build does not support the GPU's architecture.
    GpuArchUnsupported,
    /// The output was missing, malformed or failed validation.
    BadOutput,
    /// The container wrote more than its output quota.
    OutputQuotaExceeded,
    /// The image duplicates an earlier submission's digest.
    Duplicate,
    /// The host, not the miner, failed: retried, never committed as a score.
    InfraError,
}

impl Verdict {
    /// Every verdict, in declaration order.
    pub const ALL: [Verdict; 13] = [
        Verdict::Ok,
        Verdict::PullFailed,
        Verdict::ImageRejected,
        Verdict::ReadyTimeout,
        Verdict::ChallengeTimeout,
        Verdict::Crashed,
        Verdict::HostOom,
        Verdict::CudaOom,
        Verdict::GpuArchUnsupported,
        Verdict::BadOutput,
        Verdict::OutputQuotaExceeded,
        Verdict::Duplicate,
        Verdict::InfraError,
    ];

    /// The stable wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::PullFailed => "pull_failed",
            Verdict::ImageRejected => "image_rejected",
            Verdict::ReadyTimeout => "ready_timeout",
            Verdict::ChallengeTimeout => "challenge_timeout",
            Verdict::Crashed => "crashed",
            Verdict::HostOom => "host_oom",
            Verdict::CudaOom => "cuda_oom",
            Verdict::GpuArchUnsupported => "gpu_arch_unsupported",
            Verdict::BadOutput => "bad_output",
            Verdict::OutputQuotaExceeded => "output_quota_exceeded",
            Verdict::Duplicate => "duplicate",
            Verdict::InfraError => "infra_error",
        }
    }

    /// Whether the miner answers for this outcome. `infra_error` is the host's fault: it is retried and
    /// never committed as a score.
    pub fn is_miners_fault(self) -> bool {
        !matches!(self, Verdict::Ok | Verdict::InfraError)
    }

    /// Whether a result with this verdict may be staged and committed.
    pub fn is_committable(self) -> bool {
        self != Verdict::InfraError
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_match_serde_and_the_design_contract() {
        let expected = [
            "ok",
            "pull_failed",
            "image_rejected",
            "ready_timeout",
            "challenge_timeout",
            "crashed",
            "host_oom",
            "cuda_oom",
            "gpu_arch_unsupported",
            "bad_output",
            "output_quota_exceeded",
            "duplicate",
            "infra_error",
        ];
        for (verdict, name) in Verdict::ALL.iter().zip(expected) {
            assert_eq!(verdict.as_str(), name);
            assert_eq!(serde_json::to_string(verdict).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn only_infra_error_is_uncommittable_and_not_the_miners_fault() {
        for v in Verdict::ALL {
            assert_eq!(v.is_committable(), v != Verdict::InfraError);
        }
        assert!(!Verdict::InfraError.is_miners_fault());
        assert!(!Verdict::Ok.is_miners_fault());
        assert!(Verdict::Crashed.is_miners_fault());
    }
}
