//! Efficiency: inference time and peak VRAM → norms → a soft factor in `[0, 1]`, plus hard caps on the
//! worst challenge (docs/reference.md#scoring-efficiency).
//!
//! Owns: measurement sanitising, the per-run summary (means and worsts), linear and cohort
//! normalisation, the factor, and the cap decision. Must not: measure anything, read a clock, log, or
//! allocate on the per-challenge path (only the cohort functions, run once per round, allocate).
//!
//! Deviation from the reference (docs/reference.md#weakness-18): a missing metric (no usable sample at all)
//! is normalised as if it were equal to its reference (norm 1.0) and flagged, in linear and cohort mode
//! alike, and the reported `efficiency_factor` is exactly the one the final score uses. The reference
//! gave a missing VRAM norm 0 (a host-dependent free advantage) and reported a factor of 0.0 while
//! scoring with 1.0.

use serde::{Deserialize, Serialize};

use super::config::{CapMode, EfficiencyConfig};
use super::math::{clamp0_to, clamp01, usable};

/// Consistency constant that makes the MAD estimate σ for normally distributed values.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// What the host measured for one challenge. `None`, non-finite or negative values count as missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Wall-clock inference time of the challenge in seconds.
    pub inference_time_sec: Option<f64>,
    /// Peak VRAM of the miner's container during the challenge in GB.
    pub peak_vram_gb: Option<f64>,
}

impl Measurement {
    /// A measurement with both metrics present.
    pub const fn new(inference_time_sec: f64, peak_vram_gb: f64) -> Self {
        Self {
            inference_time_sec: Some(inference_time_sec),
            peak_vram_gb: Some(peak_vram_gb),
        }
    }
}

/// Means and worsts of the usable samples of a run (or of a single challenge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Mean of the usable inference times; `None` when there is none.
    pub mean_time_sec: Option<f64>,
    /// Mean of the usable peak VRAM values; `None` when there is none.
    pub mean_vram_gb: Option<f64>,
    /// Largest usable inference time (feeds the time cap).
    pub worst_time_sec: Option<f64>,
    /// Largest usable peak VRAM (feeds the VRAM cap).
    pub worst_vram_gb: Option<f64>,
}

/// Running mean/max of one metric without allocating.
#[derive(Default)]
struct Acc {
    sum: f64,
    n: u32,
    max: f64,
}

impl Acc {
    #[inline]
    fn add(&mut self, v: Option<f64>) {
        if let Some(x) = usable(v) {
            self.sum += x;
            self.max = if self.n == 0 || x > self.max { x } else { self.max };
            self.n += 1;
        }
    }

    #[inline]
    fn mean(&self) -> Option<f64> {
        // A sum of many huge finite values can overflow to inf: treat that as unusable too.
        (self.n > 0)
            .then(|| self.sum / f64::from(self.n))
            .filter(|m| m.is_finite())
    }

    #[inline]
    fn max(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max)
    }
}

impl MetricSummary {
    /// Summary of one challenge: mean and worst are the sample itself (when usable).
    #[inline]
    pub fn single(m: &Measurement) -> Self {
        let t = usable(m.inference_time_sec);
        let v = usable(m.peak_vram_gb);
        Self {
            mean_time_sec: t,
            mean_vram_gb: v,
            worst_time_sec: t,
            worst_vram_gb: v,
        }
    }

    /// Summary of a run: each metric's unusable samples are dropped (as in the reference), the rest
    /// give the mean (soft factor) and the max (caps).
    pub fn from_measurements<'a, I>(measurements: I) -> Self
    where
        I: IntoIterator<Item = &'a Measurement>,
    {
        let mut t = Acc::default();
        let mut v = Acc::default();
        for m in measurements {
            t.add(m.inference_time_sec);
            v.add(m.peak_vram_gb);
        }
        Self {
            mean_time_sec: t.mean(),
            mean_vram_gb: v.mean(),
            worst_time_sec: t.max(),
            worst_vram_gb: v.max(),
        }
    }
}

/// Time and VRAM norms, each in `[0, norm_max]`; 1.0 means "equal to the reference" (or the cohort median).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Norms {
    /// Norm of the mean inference time.
    pub time_norm: f64,
    /// Norm of the mean peak VRAM.
    pub vram_norm: f64,
}

/// Why a run was rejected in `cap_mode = "reject"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Worst peak VRAM above `max_vram_gb`.
    VramCapExceeded,
    /// Worst inference time above `max_inference_time_sec`.
    TimeCapExceeded,
    /// Both caps exceeded.
    BothCapsExceeded,
}

impl RejectReason {
    /// Stable reason string for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::VramCapExceeded => "vram_cap_exceeded",
            Self::TimeCapExceeded => "time_cap_exceeded",
            Self::BothCapsExceeded => "both_caps_exceeded",
        }
    }
}

/// The efficiency block of a challenge or a run (reference keys plus the flags talkheadd adds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyReport {
    /// Mean peak VRAM in GB over usable samples.
    pub peak_vram_gb: Option<f64>,
    /// Mean inference time in seconds over usable samples.
    pub inference_time_sec: Option<f64>,
    /// Worst (max) peak VRAM in GB.
    pub peak_vram_gb_worst: Option<f64>,
    /// Worst (max) inference time in seconds.
    pub inference_time_sec_worst: Option<f64>,
    /// Time norm used, in `[0, norm_max]` (1.0 when missing).
    pub time_norm: f64,
    /// VRAM norm used, in `[0, norm_max]` (1.0 when missing).
    pub vram_norm: f64,
    /// `clamp01(exp(−time_weight·time_norm − vram_weight·vram_norm))`, exactly the factor the final
    /// score uses.
    pub efficiency_factor: f64,
    /// Worst VRAM above `max_vram_gb` or worst time above `max_inference_time_sec`.
    pub cap_violation: bool,
    /// 1.0 without a violation; `cap_penalty` (penalty mode) or 0.0 (reject mode) with one.
    pub cap_multiplier: f64,
    /// Set in reject mode when a cap was exceeded; the final score is then 0.
    pub reject_reason: Option<RejectReason>,
    /// No usable inference time: normalised as 1.0 and the time cap cannot fire.
    pub time_missing: bool,
    /// No usable VRAM: normalised as 1.0 and the VRAM cap cannot fire.
    pub vram_missing: bool,
}

impl EfficiencyReport {
    /// The block as `/metrics` reports it: the reference's keys, with `efficiency_factor` already
    /// multiplied by the cap's multiplier (as the reference reports it) and `cap_multiplier` beside it.
    pub fn reported(&self) -> crate::domain::metrics::EfficiencyMetrics {
        crate::domain::metrics::EfficiencyMetrics {
            peak_vram_gb: self.peak_vram_gb,
            inference_time_sec: self.inference_time_sec,
            time_norm: self.time_norm,
            vram_norm: self.vram_norm,
            efficiency_factor: self.efficiency_factor * self.cap_multiplier,
            cap_violation: self.cap_violation,
            cap_multiplier: self.cap_multiplier,
            time_missing: self.time_missing,
            vram_missing: self.vram_missing,
        }
    }

    /// The summary this report was built from (to re-evaluate it with other norms at round commit).
    pub const fn summary(&self) -> MetricSummary {
        MetricSummary {
            mean_time_sec: self.inference_time_sec,
            mean_vram_gb: self.peak_vram_gb,
            worst_time_sec: self.inference_time_sec_worst,
            worst_vram_gb: self.peak_vram_gb_worst,
        }
    }

    /// `efficiency_factor × cap_multiplier`: what multiplies the quality score.
    #[inline]
    pub fn multiplier(&self) -> f64 {
        self.efficiency_factor * self.cap_multiplier
    }
}

/// The norm given to a missing metric: 1.0, i.e. "as if equal to the reference".
#[inline]
fn missing_norm(norm_max: f64) -> f64 {
    clamp0_to(1.0, norm_max)
}

/// Linear norm `clamp(value / reference, 0, norm_max)`; a missing (or unusable) value gives 1.0.
#[inline]
pub fn linear_norm(value: Option<f64>, reference: f64, norm_max: f64) -> f64 {
    match usable(value) {
        Some(x) => clamp0_to(x / reference, norm_max),
        None => missing_norm(norm_max),
    }
}

/// `clamp01(exp(−time_weight·time_norm − vram_weight·vram_norm))`.
#[inline]
pub fn efficiency_factor(norms: Norms, cfg: &EfficiencyConfig) -> f64 {
    clamp01((-cfg.time_weight * norms.time_norm - cfg.vram_weight * norms.vram_norm).exp())
}

/// Linear norms of a summary's means against `time_ref_sec` / `vram_ref_gb`.
#[inline]
pub fn linear_norms(summary: &MetricSummary, cfg: &EfficiencyConfig) -> Norms {
    Norms {
        time_norm: linear_norm(summary.mean_time_sec, cfg.time_ref_sec, cfg.norm_max),
        vram_norm: linear_norm(summary.mean_vram_gb, cfg.vram_ref_gb, cfg.norm_max),
    }
}

/// Efficiency of a summary with linear norms (the reference's only mode).
#[inline]
pub fn evaluate_linear(summary: &MetricSummary, cfg: &EfficiencyConfig) -> EfficiencyReport {
    evaluate_with_norms(summary, linear_norms(summary, cfg), cfg)
}

/// Efficiency of a summary with precomputed norms (cohort mode at round commit).
///
/// The norms are clamped to `[0, norm_max]`, and a metric with no usable sample gets norm 1.0 whatever
/// was passed, so the missing-metric rule holds in every mode. Caps always use the worst values.
pub fn evaluate_with_norms(
    summary: &MetricSummary,
    norms: Norms,
    cfg: &EfficiencyConfig,
) -> EfficiencyReport {
    let mean_time = usable(summary.mean_time_sec);
    let mean_vram = usable(summary.mean_vram_gb);
    let worst_time = usable(summary.worst_time_sec);
    let worst_vram = usable(summary.worst_vram_gb);
    let time_missing = mean_time.is_none();
    let vram_missing = mean_vram.is_none();

    let norms = Norms {
        time_norm: if time_missing {
            missing_norm(cfg.norm_max)
        } else {
            clamp0_to(norms.time_norm, cfg.norm_max)
        },
        vram_norm: if vram_missing {
            missing_norm(cfg.norm_max)
        } else {
            clamp0_to(norms.vram_norm, cfg.norm_max)
        },
    };
    let factor = efficiency_factor(norms, cfg);

    let vram_over = worst_vram.is_some_and(|v| v > cfg.max_vram_gb);
    let time_over = worst_time.is_some_and(|t| t > cfg.max_inference_time_sec);
    let cap_violation = vram_over || time_over;
    let (cap_multiplier, reject_reason) = match (cap_violation, cfg.cap_mode) {
        (false, _) => (1.0, None),
        (true, CapMode::Penalty) => (clamp01(cfg.cap_penalty), None),
        (true, CapMode::Reject) => {
            let reason = match (vram_over, time_over) {
                (true, true) => RejectReason::BothCapsExceeded,
                (true, false) => RejectReason::VramCapExceeded,
                _ => RejectReason::TimeCapExceeded,
            };
            (0.0, Some(reason))
        }
    };

    EfficiencyReport {
        peak_vram_gb: mean_vram,
        inference_time_sec: mean_time,
        peak_vram_gb_worst: worst_vram,
        inference_time_sec_worst: worst_time,
        time_norm: norms.time_norm,
        vram_norm: norms.vram_norm,
        efficiency_factor: factor,
        cap_violation,
        cap_multiplier,
        reject_reason,
        time_missing,
        vram_missing,
    }
}

/// Efficiency of one challenge (linear; informational per-challenge block). Allocation-free.
#[inline]
pub fn challenge_efficiency(m: &Measurement, cfg: &EfficiencyConfig) -> EfficiencyReport {
    evaluate_linear(&MetricSummary::single(m), cfg)
}

/// Efficiency of a run from its per-challenge measurements (linear). Allocation-free.
pub fn run_efficiency(measurements: &[Measurement], cfg: &EfficiencyConfig) -> EfficiencyReport {
    evaluate_linear(&MetricSummary::from_measurements(measurements), cfg)
}

/// Median of a sorted, non-empty slice (mean of the middle two for an even length).
fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match (sorted.get(n / 2), n % 2) {
        (Some(&hi), 1) => hi,
        (Some(&hi), _) => sorted.get(n / 2 - 1).map_or(hi, |&lo| lo + (hi - lo) / 2.0),
        (None, _) => 0.0,
    }
}

/// Robust cohort norms of one metric across the round's miners (one value per miner, in order).
///
/// `norm = clamp(1 + (x − median) / (1.4826·MAD), 0, norm_max)` over the usable values, so the median
/// miner gets 1.0 like a value equal to its reference in linear mode, and one robust σ slower adds 1.
/// Degenerate cases:
/// - a missing or unusable value → 1.0 (the caller flags it from its `None`);
/// - no usable value at all → every norm 1.0;
/// - MAD = 0 (at least half the values identical) → the median is used as a linear reference,
///   `clamp(x / median, 0, norm_max)`;
/// - MAD = 0 and median = 0 → every norm 1.0 (no scale to compare against).
///
/// Runs once per round at commit; it allocates two scratch vectors.
pub fn cohort_norms(values: &[Option<f64>], norm_max: f64) -> Vec<f64> {
    let missing = missing_norm(norm_max);
    let mut present: Vec<f64> = values.iter().filter_map(|&v| usable(v)).collect();
    if present.is_empty() {
        return vec![missing; values.len()];
    }
    present.sort_unstable_by(f64::total_cmp);
    let median = median_sorted(&present);
    for x in &mut present {
        *x = (*x - median).abs();
    }
    present.sort_unstable_by(f64::total_cmp);
    let mad = median_sorted(&present);
    let scale = MAD_TO_SIGMA * mad;

    values
        .iter()
        .map(|&v| match usable(v) {
            None => missing,
            Some(x) if scale > 0.0 && scale.is_finite() => clamp0_to(1.0 + (x - median) / scale, norm_max),
            Some(x) if median > 0.0 => clamp0_to(x / median, norm_max),
            Some(_) => missing,
        })
        .collect()
}

/// Cohort [`Norms`] for every miner of a round, from each miner's [`MetricSummary`] means.
pub fn cohort_norms_for(summaries: &[MetricSummary], norm_max: f64) -> Vec<Norms> {
    let times: Vec<Option<f64>> = summaries.iter().map(|s| s.mean_time_sec).collect();
    let vrams: Vec<Option<f64>> = summaries.iter().map(|s| s.mean_vram_gb).collect();
    cohort_norms(&times, norm_max)
        .into_iter()
        .zip(cohort_norms(&vrams, norm_max))
        .map(|(time_norm, vram_norm)| Norms { time_norm, vram_norm })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::scoring::config::Normalisation;

    fn latest() -> EfficiencyConfig {
        EfficiencyConfig::default()
    }

    /// The talkhead-executor@daa5d99 constants (30 s / 8 GB references).
    fn ref_30_8() -> EfficiencyConfig {
        EfficiencyConfig {
            max_vram_gb: 10.0,
            max_inference_time_sec: 30.0,
            time_ref_sec: 30.0,
            vram_ref_gb: 8.0,
            ..EfficiencyConfig::default()
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn protocol_example_30_8_constants() {
        let r = challenge_efficiency(&Measurement::new(10.0, 8.0), &ref_30_8());
        assert!(close(r.time_norm, 1.0 / 3.0, 1e-12));
        assert_eq!(r.vram_norm, 1.0);
        // exp(−0.05 − 0.10) = exp(−0.15) = 0.860708
        assert!(close(r.efficiency_factor, (-0.15f64).exp(), 1e-12));
        assert!(close(r.efficiency_factor, 0.861, 5e-4));
        assert!(!r.cap_violation && r.cap_multiplier == 1.0);
    }

    #[test]
    fn protocol_example_latest_constants() {
        let r = challenge_efficiency(&Measurement::new(10.0, 8.0), &latest());
        assert!(close(r.time_norm, 0.083, 5e-4));
        assert_eq!(r.vram_norm, 0.25);
        // exp(−0.15/12 − 0.025) = exp(−0.0375) = 0.963194
        assert!(close(r.efficiency_factor, (-0.0375f64).exp(), 1e-12));
        assert!(close(r.efficiency_factor, 0.963, 5e-4));
    }

    #[test]
    fn norms_clamp_at_norm_max_and_factor_bottoms_out() {
        let r = challenge_efficiency(&Measurement::new(1e6, 1e6), &latest());
        assert_eq!((r.time_norm, r.vram_norm), (3.0, 3.0));
        assert!(close(r.efficiency_factor, (-0.75f64).exp(), 1e-12));
        let r = challenge_efficiency(&Measurement::new(0.0, 0.0), &latest());
        assert_eq!((r.time_norm, r.vram_norm, r.efficiency_factor), (0.0, 0.0, 1.0));
    }

    #[test]
    fn run_uses_means_for_the_factor_and_worsts_for_the_caps() {
        let ms = [
            Measurement::new(10.0, 8.0),
            Measurement::new(20.0, 12.0),
            Measurement::new(30.0, 10.0),
        ];
        let r = run_efficiency(&ms, &latest());
        assert_eq!(r.inference_time_sec, Some(20.0));
        assert_eq!(r.peak_vram_gb, Some(10.0));
        assert_eq!(r.inference_time_sec_worst, Some(30.0));
        assert_eq!(r.peak_vram_gb_worst, Some(12.0));
        assert!(close(r.time_norm, 20.0 / 120.0, 1e-12));
        assert!(close(r.vram_norm, 10.0 / 32.0, 1e-12));
        assert!(!r.cap_violation);
    }

    #[test]
    fn cap_penalty_mode_on_the_worst_challenge() {
        // Mean VRAM 12 is under 16, but one challenge peaked at 17.
        let ms = [Measurement::new(10.0, 7.0), Measurement::new(10.0, 17.0)];
        let r = run_efficiency(&ms, &latest());
        assert!(r.cap_violation);
        assert_eq!(r.cap_multiplier, 0.01);
        assert_eq!(r.reject_reason, None);
        assert!(close(r.multiplier(), 0.01 * r.efficiency_factor, 1e-15));
        // Exactly at the cap is not over it.
        let r = run_efficiency(&[Measurement::new(60.0, 16.0)], &latest());
        assert!(!r.cap_violation && r.cap_multiplier == 1.0);
        let r = run_efficiency(&[Measurement::new(60.001, 16.0)], &latest());
        assert!(r.cap_violation);
    }

    #[test]
    fn cap_reject_mode_gives_zero_and_a_reason() {
        let cfg = EfficiencyConfig {
            cap_mode: CapMode::Reject,
            ..latest()
        };
        let cases = [
            (Measurement::new(10.0, 17.0), Some(RejectReason::VramCapExceeded)),
            (Measurement::new(61.0, 8.0), Some(RejectReason::TimeCapExceeded)),
            (Measurement::new(61.0, 17.0), Some(RejectReason::BothCapsExceeded)),
            (Measurement::new(10.0, 8.0), None),
        ];
        for (m, want) in cases {
            let r = challenge_efficiency(&m, &cfg);
            assert_eq!(r.reject_reason, want, "{m:?}");
            assert_eq!(r.cap_violation, want.is_some());
            assert_eq!(r.cap_multiplier, if want.is_some() { 0.0 } else { 1.0 });
        }
        assert_eq!(RejectReason::BothCapsExceeded.as_str(), "both_caps_exceeded");
    }

    #[test]
    fn missing_metrics_count_as_the_reference_and_are_flagged() {
        // VRAM missing: norm 1.0, never 0 (the reference's free advantage), and the factor used is reported.
        let m = Measurement {
            inference_time_sec: Some(12.0),
            peak_vram_gb: None,
        };
        let r = challenge_efficiency(&m, &latest());
        assert!(r.vram_missing && !r.time_missing);
        assert_eq!(r.vram_norm, 1.0);
        assert!(close(r.efficiency_factor, (-0.015f64 - 0.10).exp(), 1e-12));
        // A measured miner with the same time and any VRAM up to the reference does at least as well.
        let measured = challenge_efficiency(&Measurement::new(12.0, 32.0), &latest());
        assert!(measured.efficiency_factor >= r.efficiency_factor);

        // Everything missing: both norms 1.0, factor exp(−0.25), no cap can fire, reported = used.
        for m in [
            Measurement::default(),
            Measurement {
                inference_time_sec: Some(f64::NAN),
                peak_vram_gb: Some(-3.0),
            },
            Measurement {
                inference_time_sec: Some(f64::INFINITY),
                peak_vram_gb: Some(f64::NEG_INFINITY),
            },
        ] {
            let r = challenge_efficiency(&m, &latest());
            assert!(r.time_missing && r.vram_missing);
            assert_eq!((r.time_norm, r.vram_norm), (1.0, 1.0));
            assert!(close(r.efficiency_factor, (-0.25f64).exp(), 1e-12));
            assert!(!r.cap_violation && r.cap_multiplier == 1.0);
            assert_eq!(r.inference_time_sec, None);
        }
    }

    #[test]
    fn partially_missing_samples_are_dropped_from_mean_and_worst() {
        let ms = [
            Measurement::new(10.0, 8.0),
            Measurement {
                inference_time_sec: None,
                peak_vram_gb: Some(20.0),
            },
            Measurement {
                inference_time_sec: Some(-1.0),
                peak_vram_gb: Some(f64::NAN),
            },
        ];
        let s = MetricSummary::from_measurements(&ms);
        assert_eq!(s.mean_time_sec, Some(10.0));
        assert_eq!(s.worst_time_sec, Some(10.0));
        assert_eq!(s.mean_vram_gb, Some(14.0));
        assert_eq!(s.worst_vram_gb, Some(20.0));
        assert_eq!(MetricSummary::from_measurements(&[]), MetricSummary::default());
    }

    #[test]
    fn with_norms_forces_missing_to_one_and_clamps() {
        let s = MetricSummary {
            mean_time_sec: Some(5.0),
            mean_vram_gb: None,
            worst_time_sec: Some(5.0),
            worst_vram_gb: None,
        };
        let r = evaluate_with_norms(
            &s,
            Norms {
                time_norm: 7.0,
                vram_norm: 0.0,
            },
            &latest(),
        );
        assert_eq!((r.time_norm, r.vram_norm), (3.0, 1.0));
        let r = evaluate_with_norms(
            &s,
            Norms {
                time_norm: f64::NAN,
                vram_norm: 0.0,
            },
            &latest(),
        );
        assert_eq!(r.time_norm, 0.0);
        // The report round-trips to its summary.
        assert_eq!(r.summary(), s);
    }

    #[test]
    fn cohort_median_gets_one_and_robust_sigma_adds_one() {
        // median 10, |dev| = [8, 2, 0, 2, 30] → MAD 2, scale 2.9652.
        let v = [Some(2.0), Some(8.0), Some(10.0), Some(12.0), Some(40.0)];
        let n = cohort_norms(&v, 3.0);
        let scale = 1.4826 * 2.0;
        // 1 − 8/2.9652 < 0 → clamped to 0.
        assert_eq!(n[0], 0.0);
        assert!(close(n[1], 1.0 - 2.0 / scale, 1e-12));
        assert_eq!(n[2], 1.0);
        assert!(close(n[3], 1.0 + 2.0 / scale, 1e-12));
        assert_eq!(n[4], 3.0);
    }

    #[test]
    fn cohort_even_count_median_is_the_midpoint() {
        // sorted [1, 3, 5, 7]: median 4, |dev| [3, 1, 1, 3] → MAD 2.
        let n = cohort_norms(&[Some(7.0), Some(1.0), Some(5.0), Some(3.0)], 3.0);
        let scale = 1.4826 * 2.0;
        assert!(close(n[0], 1.0 + 3.0 / scale, 1e-12));
        assert!(close(n[2], 1.0 + 1.0 / scale, 1e-12));
        assert!(close(n[3], 1.0 - 1.0 / scale, 1e-12));
    }

    #[test]
    fn cohort_degenerate_cases() {
        // Nothing usable: all 1.0.
        assert_eq!(
            cohort_norms(&[None, Some(f64::NAN), Some(-1.0)], 3.0),
            [1.0, 1.0, 1.0]
        );
        assert!(cohort_norms(&[], 3.0).is_empty());
        // One miner: MAD 0, x / median = 1.
        assert_eq!(cohort_norms(&[Some(12.0)], 3.0), [1.0]);
        // MAD 0 with median > 0: the median is the linear reference.
        assert_eq!(
            cohort_norms(
                &[Some(10.0), Some(10.0), Some(10.0), Some(25.0), Some(5.0), None],
                3.0
            ),
            [1.0, 1.0, 1.0, 2.5, 0.5, 1.0]
        );
        assert_eq!(
            cohort_norms(&[Some(10.0), Some(10.0), Some(100.0)], 3.0),
            [1.0, 1.0, 3.0]
        );
        // MAD 0 and median 0: all 1.0.
        assert_eq!(
            cohort_norms(&[Some(0.0), Some(0.0), Some(4.0)], 3.0),
            [1.0, 1.0, 1.0]
        );
    }

    #[test]
    fn cohort_norms_feed_the_same_report_path() {
        let summaries = [
            MetricSummary::single(&Measurement::new(10.0, 8.0)),
            MetricSummary::single(&Measurement::new(20.0, 8.0)),
            MetricSummary::single(&Measurement {
                inference_time_sec: Some(30.0),
                peak_vram_gb: None,
            }),
        ];
        let cfg = EfficiencyConfig {
            normalisation: Normalisation::Cohort,
            ..latest()
        };
        let norms = cohort_norms_for(&summaries, cfg.norm_max);
        assert_eq!(norms.len(), 3);
        assert_eq!(norms[1].time_norm, 1.0);
        let r = evaluate_with_norms(&summaries[2], norms[2], &cfg);
        assert!(r.vram_missing && r.vram_norm == 1.0);
        let faster = evaluate_with_norms(&summaries[0], norms[0], &cfg);
        let slower = evaluate_with_norms(&summaries[1], norms[1], &cfg);
        assert!(faster.efficiency_factor > slower.efficiency_factor);
    }

    #[test]
    fn a_cap_violation_is_reported_in_the_factor_as_the_reference_does_and_beside_it() {
        let cfg = crate::scoring::ScoringConfig::default();
        // 100 s over the 60 s cap: the reference reports factor × 0.01.
        let run = crate::scoring::score_run(
            &[crate::scoring::ChallengeOutcome {
                quality: 0.8,
                measurement: Measurement::new(100.0, 8.0),
            }],
            &cfg,
        )
        .unwrap();
        assert!(run.efficiency.cap_violation);
        let block = run.efficiency.reported();
        assert_eq!(block.cap_multiplier, 0.01);
        assert!((block.efficiency_factor - run.efficiency.efficiency_factor * 0.01).abs() < 1e-15);
        // Without a violation the factor is the soft factor alone.
        let fast = crate::scoring::score_run(
            &[crate::scoring::ChallengeOutcome {
                quality: 0.8,
                measurement: Measurement::new(10.0, 8.0),
            }],
            &cfg,
        )
        .unwrap();
        let block = fast.efficiency.reported();
        assert_eq!(block.cap_multiplier, 1.0);
        assert_eq!(block.efficiency_factor, fast.efficiency.efficiency_factor);
        // A document written before the field reads 1.
        let old: crate::domain::metrics::EfficiencyMetrics = serde_json::from_value(serde_json::json!({
            "peak_vram_gb": null, "inference_time_sec": 1.0, "time_norm": 0.1, "vram_norm": 1.0,
            "efficiency_factor": 0.9, "cap_violation": false
        }))
        .unwrap();
        assert_eq!(old.cap_multiplier, 1.0);
    }
}
