//! Pure classification of how a miner's container failed: from what the engine reports (exit code, the
//! OOM killer), what the miner wrote (its result's `error`) and its log tail, to a [`Verdict`] with a
//! reason. Only outcomes positively attributable to the miner become miner verdicts.

use crate::domain::Verdict;
use crate::runtime::ContainerOutcome;
use crate::runtime::job::Usage;

/// Log or error text that means the miner ran out of GPU memory.
const CUDA_OOM: &[&str] = &[
    "cuda out of memory",
    "cuda error: out of memory",
    "outofmemoryerror",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
];

/// Log or error text that means the image's CUDA build does not support this GPU's architecture.
const ARCH_UNSUPPORTED: &[&str] = &[
    "no kernel image is available for execution on the device",
    "is not compatible with the current pytorch installation",
    "cudaerrornokernelimagefordevice",
    "unsupported gpu architecture",
];

/// A classified failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, for people (bounded, single line).
    pub reason: String,
}

impl Failure {
    /// A failure with a reason.
    pub fn new(verdict: Verdict, reason: impl Into<String>) -> Failure {
        Failure {
            verdict,
            reason: one_line(&reason.into()),
        }
    }
}

/// Recognise GPU failures in a miner's own words (its result `error` or its log).
/// `compute_capability` names the refused architecture in the reason, when known.
pub fn gpu_failure(text: &str, compute_capability: Option<&str>) -> Option<Failure> {
    let lower = text.to_ascii_lowercase();
    if CUDA_OOM.iter().any(|p| lower.contains(p)) {
        return Some(Failure::new(
            Verdict::CudaOom,
            "the miner ran out of GPU memory (CUDA out of memory)",
        ));
    }
    let sm = lower
        .find("cuda capability sm_")
        .map(|i| &lower[i + "cuda capability sm_".len()..]);
    if ARCH_UNSUPPORTED.iter().any(|p| lower.contains(p)) || sm.is_some_and(|s| s.contains("not compatible"))
    {
        // The inventory's figure when there is one; else what the framework said it saw (`sm_120`).
        let gpu = match (compute_capability, sm.and_then(capability_of_sm)) {
            (Some(cc), _) => format!("compute capability {cc}"),
            (None, Some(cc)) => format!("compute capability {cc} (as the miner's log reports it)"),
            (None, None) => "this GPU".to_owned(),
        };
        return Some(Failure::new(
            Verdict::GpuArchUnsupported,
            format!("the image's CUDA build has no kernels for {gpu}"),
        ));
    }
    None
}

/// `120…` → `12.0`, `86…` → `8.6`: the digits after `sm_`, the last one the minor version.
fn capability_of_sm(after_sm: &str) -> Option<String> {
    let digits: String = after_sm
        .chars()
        .take_while(char::is_ascii_digit)
        .take(4)
        .collect();
    if digits.len() < 2 {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(format!("{major}.{minor}"))
}

/// Classify a container that stopped on its own before the run finished. (A container the daemon
/// killed itself takes the daemon's reason instead: see `engine::run`.)
pub fn container_failure(
    outcome: &ContainerOutcome,
    log_tail: &str,
    compute_capability: Option<&str>,
) -> Failure {
    // The kernel's verdict, not exit code 137 alone (which any SIGKILL gives).
    if outcome.oom_killed {
        return Failure::new(
            Verdict::HostOom,
            "killed by the kernel OOM killer at the container's memory limit",
        );
    }
    if let Some(f) = gpu_failure(log_tail, compute_capability) {
        return f;
    }
    let how = match outcome.exit_code {
        Some(code) if code > 128 && code < 160 => format!("killed by signal {}", code - 128),
        Some(code) => format!("exited with code {code}"),
        None => "stopped without an exit code".to_owned(),
    };
    let last_line = log_tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if last_line.is_empty() {
        Failure::new(Verdict::Crashed, format!("the container {how}"))
    } else {
        Failure::new(
            Verdict::Crashed,
            format!("the container {how}; last log line: {last_line}"),
        )
    }
}

/// The verdict for `/output`'s usage against its byte quota and entry limit, if it is over either: the
/// daemon then kills the container, and this is the run's verdict whatever phase it was in.
pub fn quota_violation(usage: Usage, quota_bytes: u64, entry_limit: u64) -> Option<Failure> {
    let reason = if usage.entries > entry_limit {
        format!("/output held more than {entry_limit} entries; the daemon killed the container")
    } else if usage.bytes > quota_bytes {
        format!(
            "/output held {} bytes, over its quota of {quota_bytes}; the daemon killed the container",
            usage.bytes
        )
    } else {
        return None;
    };
    Some(Failure::new(Verdict::OutputQuotaExceeded, reason))
}

/// Single line, printable, at most 300 characters: reasons end up in JSON, logs and tables.
pub fn one_line(text: &str) -> String {
    crate::domain::text::echo(text, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i64) -> ContainerOutcome {
        ContainerOutcome {
            running: false,
            exit_code: Some(code),
            oom_killed: false,
            error: None,
        }
    }

    #[test]
    fn the_oom_killer_is_host_oom_but_a_plain_sigkill_is_a_crash() {
        let oom = ContainerOutcome {
            oom_killed: true,
            ..exited(137)
        };
        assert_eq!(container_failure(&oom, "", None).verdict, Verdict::HostOom);
        let killed = container_failure(&exited(137), "", None);
        assert_eq!(killed.verdict, Verdict::Crashed);
        assert!(killed.reason.contains("signal 9"), "{}", killed.reason);
    }

    #[test]
    fn output_over_its_bytes_or_entries_is_a_quota_kill_naming_which() {
        let usage = |bytes, entries| Usage { bytes, entries };
        assert_eq!(quota_violation(usage(100, 10), 100, 10), None);
        let bytes = quota_violation(usage(101, 1), 100, 10).unwrap();
        assert_eq!(bytes.verdict, Verdict::OutputQuotaExceeded);
        assert!(
            bytes.reason.contains("101 bytes, over its quota of 100"),
            "{}",
            bytes.reason
        );
        let entries = quota_violation(usage(0, 11), 100, 10).unwrap();
        assert_eq!(entries.verdict, Verdict::OutputQuotaExceeded);
        assert!(
            entries.reason.contains("more than 10 entries"),
            "{}",
            entries.reason
        );
    }

    #[test]
    fn cuda_failures_are_recognised_from_logs_and_name_the_architecture() {
        let log = "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB";
        assert_eq!(container_failure(&exited(1), log, None).verdict, Verdict::CudaOom);
        let log = "RuntimeError: CUDA error: no kernel image is available for execution on the device";
        let f = container_failure(&exited(1), log, Some("12.0"));
        assert_eq!(f.verdict, Verdict::GpuArchUnsupported);
        assert!(f.reason.contains("compute capability 12.0"), "{}", f.reason);
        let warn = "NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the current PyTorch installation.";
        let from_log = gpu_failure(warn, None).unwrap();
        assert_eq!(from_log.verdict, Verdict::GpuArchUnsupported);
        assert!(
            from_log.reason.contains("compute capability 12.0"),
            "{}",
            from_log.reason
        );
        // The inventory's figure wins over the log's.
        let known = container_failure(&exited(1), warn, Some("12.0"));
        assert_eq!(known.verdict, Verdict::GpuArchUnsupported);
        assert!(
            known.reason.ends_with("no kernels for compute capability 12.0"),
            "{}",
            known.reason
        );
        assert_eq!(
            gpu_failure("CUDA capability sm_86 is not compatible", None).map(|f| f.reason),
            Some("the image's CUDA build has no kernels for compute capability 8.6 (as the miner's log reports it)".to_owned())
        );
        assert_eq!(gpu_failure("all good", None), None);
    }

    #[test]
    fn crashes_carry_the_exit_code_and_last_log_line() {
        let f = container_failure(&exited(3), "starting\nboom: bad weights\n\n", None);
        assert_eq!(f.verdict, Verdict::Crashed);
        assert_eq!(
            f.reason,
            "the container exited with code 3; last log line: boom: bad weights"
        );
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        let f = Failure::new(Verdict::Crashed, format!("a\nb{}", "x".repeat(500)));
        assert!(!f.reason.contains('\n'));
        assert!(f.reason.chars().count() <= 300);
    }
}
