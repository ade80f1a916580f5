//! What `talkheadd evaluate` prints: the report of one run, as JSON with stable field names or as a
//! table, and the exit code its verdict maps to. Pure: built from the run's outcome, never touches the
//! host.
//!
//! The JSON document's top-level fields are a contract (add fields, never rename them); its `metrics`
//! member is the evaluation's [`EvaluationMetrics`] exactly as `GET /metrics` serialises it (absent
//! when the host failed and nothing was scored).

use crate::domain::metrics::{ChallengeMetrics, MeasurementSource};
use crate::domain::{EvaluationMetrics, Verdict};
use crate::gpu::GpuInfo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Exit code: the verdict is `ok`.
pub const EXIT_OK: u8 = 0;
/// Exit code: an infrastructure failure (Docker unreachable, a pull failed for the host's reasons,
/// the run was interrupted...), never the miner's doing.
pub const EXIT_INFRA: u8 = 1;
/// Exit code: a command-line mistake (a reference not pinned by digest, a `--gpu` index the inventory
/// does not have, a challenge directory that cannot be used).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the miner's verdict is not `ok` (the report says which).
pub const EXIT_MINER: u8 = 65;
/// Exit code: the configuration cannot run an evaluation (no GPU inventory, analysis backends).
pub const EXIT_CONFIG: u8 = 78;

/// Lines of the container's log the table shows (the JSON carries the whole tail).
const TABLE_LOG_LINES: usize = 20;

/// The report of one `talkheadd evaluate` run.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluateReport {
    /// The image evaluated (pinned reference).
    pub image_ref: String,
    /// The run id (the container's `talkhead.run` label).
    pub run_id: String,
    /// This command's instance id (the container's `talkhead.instance` label), never a daemon's.
    pub instance: String,
    /// The slot's index in the configured inventory (`--gpu`).
    pub gpu_index: usize,
    /// The GPU (or virtual slot) the run used.
    pub gpu: GpuInfo,
    /// `ok`, the miner's verdict, or `infra_error` when the host failed.
    pub verdict: Verdict,
    /// Why, when the verdict is not `ok`.
    pub reason: Option<String>,
    /// The process's exit code for this report.
    pub exit_code: u8,
    /// Where the image came from (`pulled`, `foreign`: already on the host), once it was available.
    pub image_source: Option<&'static str>,
    /// Seconds per stage (`pull`, `ready`, `challenges`, `analysis:<id>`...).
    pub stage_times: BTreeMap<String, f64>,
    /// Provenance of each scored challenge's VRAM figure.
    pub vram_sources: Vec<MeasurementSource>,
    /// What the run noted beyond the verdict.
    pub notes: Vec<String>,
    /// A GPU fault seen during the run.
    pub gpu_fault: Option<String>,
    /// The container's log tail.
    pub log_tail: String,
    /// The metrics document `/metrics` would serve; `None` when the host failed.
    pub metrics: Option<EvaluationMetrics>,
    /// The signal that interrupted the run (`SIGINT`, `SIGTERM`), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<&'static str>,
    /// The scored videos kept for [`EvaluateRequest::keep_videos`](super::EvaluateRequest::keep_videos):
    /// `(challenge id, path)`.
    #[serde(skip)]
    pub kept_videos: Vec<(String, std::path::PathBuf)>,
}

/// The exit code for a verdict.
pub fn exit_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Ok => EXIT_OK,
        Verdict::InfraError => EXIT_INFRA,
        _ => EXIT_MINER,
    }
}

impl EvaluateReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as aligned tables: the run, the efficiency block and final score, one row per scored
    /// challenge, then the log tail.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("verdict", self.verdict.to_string()),
            ("image", self.image_ref.clone()),
            ("run", format!("{} (instance {})", self.run_id, self.instance)),
            ("gpu", gpu_line(self.gpu_index, &self.gpu)),
            ("image_source", self.image_source.unwrap_or("-").to_owned()),
        ];
        if let Some(reason) = &self.reason {
            rows.insert(1, ("reason", reason.clone()));
        }
        if let Some(m) = &self.metrics {
            rows.push(("final_score", format!("{:.6}", m.final_score)));
            rows.push(("quality_score", format!("{:.6}", m.quality_score)));
            rows.extend(m.efficiency.table_rows());
            if let Some(p) = &m.measurement {
                rows.push((
                    "measurement",
                    format!("time {}, vram {}", source(p.time), source(p.vram)),
                ));
            }
        }
        if !self.vram_sources.is_empty() {
            let sources: Vec<&str> = self.vram_sources.iter().map(|s| source(*s)).collect();
            rows.push(("vram_sources", sources.join(", ")));
        }
        if !self.stage_times.is_empty() {
            let stages: Vec<String> = self
                .stage_times
                .iter()
                .map(|(stage, secs)| format!("{stage} {secs:.3}s"))
                .collect();
            rows.push(("stage_times", stages.join(", ")));
        }
        if let Some(fault) = &self.gpu_fault {
            rows.push(("gpu_fault", fault.clone()));
        }
        rows.extend(self.notes.iter().map(|n| ("note", n.clone())));
        let mut out = aligned(&rows);
        if let Some(m) = self.metrics.as_ref().filter(|m| !m.challenge_metrics.is_empty()) {
            out.push('\n');
            out.push_str(&challenge_table(&m.challenge_metrics));
        }
        if !self.log_tail.is_empty() {
            let lines: Vec<&str> = self.log_tail.lines().collect();
            let shown = &lines[lines.len().saturating_sub(TABLE_LOG_LINES)..];
            let _ = writeln!(out, "\nlog tail (last {} lines):", shown.len());
            for line in shown {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

fn gpu_line(index: usize, gpu: &GpuInfo) -> String {
    let mut line = format!("slot {index}: {} ({})", gpu.uuid, gpu.name);
    if gpu.is_virtual {
        line.push_str(", virtual: VRAM not measured");
    }
    if let Some(cc) = &gpu.compute_capability {
        let _ = write!(line, ", compute {cc}");
    }
    if let Some(driver) = &gpu.driver_version {
        let _ = write!(line, ", driver {driver}");
    }
    line
}

fn source(s: MeasurementSource) -> &'static str {
    match s {
        MeasurementSource::HostClock => "host_clock",
        MeasurementSource::Accounting => "accounting",
        MeasurementSource::Sampled => "sampled",
        MeasurementSource::MinerReported => "miner_reported",
        MeasurementSource::Unavailable => "unavailable",
    }
}

/// `key  value` lines, the keys padded to one width.
fn aligned(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// One row per challenge: verdict, host time, VRAM, quality components and scores.
fn challenge_table(entries: &[ChallengeMetrics]) -> String {
    const HEAD: [&str; 13] = [
        "challenge",
        "verdict",
        "time_s",
        "vram_gb",
        "identity",
        "lipsync",
        "audio",
        "video",
        "temporal",
        "penalty",
        "wer",
        "quality",
        "final",
    ];
    let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    let mut grid: Vec<Vec<String>> = vec![HEAD.iter().map(|h| (*h).to_owned()).collect()];
    for e in entries {
        let eff = e.efficiency.as_ref();
        let time = eff.and_then(|x| x.inference_time_sec).or(e.host_time_sec);
        let vram = eff.and_then(|x| x.peak_vram_gb).or(e.peak_vram_gb);
        grid.push(vec![
            e.challenge_id.clone(),
            e.verdict.to_string(),
            time.map_or("-".to_owned(), |t| format!("{t:.3}")),
            vram.map_or("-".to_owned(), |v| format!("{v:.3}")),
            num(e.identity),
            num(e.lipsync),
            num(e.audio),
            num(e.video),
            num(e.temporal),
            num(e.penalty),
            num(e.wer),
            num(e.quality_score),
            num(e.final_score),
        ]);
    }
    let widths: Vec<usize> = (0..HEAD.len())
        .map(|c| grid.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &grid {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for e in entries.iter().filter(|e| e.error.is_some()) {
        let _ = writeln!(
            out,
            "{}: {}",
            e.challenge_id,
            e.error.as_deref().unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verdict: Verdict, metrics: Option<EvaluationMetrics>) -> EvaluateReport {
        EvaluateReport {
            image_ref: format!("127.0.0.1:5000/m@sha256:{}", "a".repeat(64)),
            run_id: "evaluate-1".into(),
            instance: "0".repeat(32),
            gpu_index: 0,
            gpu: crate::gpu::GpuInventory::describe(&crate::gpu::VirtualInventory::new(1)).remove(0),
            verdict,
            reason: (verdict != Verdict::Ok).then(|| "exit code 3".to_owned()),
            exit_code: exit_code(verdict),
            image_source: Some("pulled"),
            stage_times: BTreeMap::from([("pull".to_owned(), 1.5)]),
            vram_sources: vec![MeasurementSource::Unavailable],
            notes: Vec::new(),
            gpu_fault: None,
            log_tail: "loading\nready\n".into(),
            metrics,
            interrupted: None,
            kept_videos: Vec::new(),
        }
    }

    #[test]
    fn verdicts_map_to_distinct_exit_codes() {
        assert_eq!(exit_code(Verdict::Ok), 0);
        assert_eq!(exit_code(Verdict::InfraError), 1);
        for v in [
            Verdict::Crashed,
            Verdict::PullFailed,
            Verdict::BadOutput,
            Verdict::ImageRejected,
        ] {
            assert_eq!(exit_code(v), 65, "{v}");
        }
    }

    #[test]
    fn the_json_nests_the_metrics_document_as_metrics_serves_it() {
        let mut m = EvaluationMetrics::failed(Verdict::Crashed, "exit code 3", "img", 0.0, 1.0, 5);
        m.run_id = "evaluate-1".into();
        let r = report(Verdict::Crashed, Some(m.clone()));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap_or_default();
        assert_eq!(json["verdict"], "crashed");
        assert_eq!(json["exit_code"], 65);
        assert_eq!(json["gpu"]["uuid"], "virtual-0");
        assert_eq!(json["vram_sources"][0], "unavailable");
        assert_eq!(json["metrics"], serde_json::to_value(&m).unwrap_or_default());
        let infra = report(Verdict::InfraError, None);
        let json: serde_json::Value = serde_json::from_str(&infra.to_json()).unwrap_or_default();
        assert!(json["metrics"].is_null() && json["exit_code"] == 1, "{json}");
    }

    #[test]
    fn the_table_shows_the_verdict_reason_stages_log_and_the_gpu() {
        let m = EvaluationMetrics::failed(Verdict::Crashed, "exit code 3", "img", 0.0, 1.0, 5);
        let table = report(Verdict::Crashed, Some(m)).to_table();
        for needle in [
            "verdict",
            "crashed",
            "reason",
            "exit code 3",
            "virtual-0",
            "pull 1.500s",
            "final_score",
            "log tail (last 2 lines)",
            "  ready",
        ] {
            assert!(table.contains(needle), "{needle} missing from:\n{table}");
        }
    }
}
