//! `talkheadd analyze`: the operator's offline scorer. Runs the daemon's own analyser (the one
//! [`super::default_analyzer`] builds from the configuration: same sandboxed decode, same face and
//! speech backends, same components) and the quality formula of `[scoring]` on one output video
//! against a face, an audio clip and an optional transcript, so an operator can see why a miner scored
//! what it did.
//!
//! Owns: turning the command's files into a [`Challenge`] (validated with the daemon's challenge
//! limits), the report ([`OfflineReport`]: JSON with `--json`, else a readable table) and the exit codes
//! of the subcommand ([`EXIT_BAD_OUTPUT`], [`EXIT_BAD_INPUT`]). Must not: score efficiency (there is no
//! timed miner here) or touch the daemon's state.

use super::components::AnalysisDebug;
use super::decode::PixelFormat;
use super::{AnalysisFailure, AnalysisInput, Analyzer, ChallengeAnalysis};
use crate::challenges::{Challenge, ChallengeId, Limits};
use crate::domain::metrics::ChallengeDebug;
use crate::scoring::{ChallengeOutcome, Measurement, QualityScore, ScoringConfig, score_quality, score_run};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Exit code when the video is unusable (`bad_output`); sysexits' `EX_DATAERR`.
pub const EXIT_BAD_OUTPUT: u8 = 65;
/// Exit code when the face, audio or transcript given cannot be used; sysexits' `EX_NOINPUT`.
pub const EXIT_BAD_INPUT: u8 = 66;
/// Exit code when the host cannot analyse (tool missing, detector not loadable, disk...).
pub const EXIT_HOST_FAILURE: u8 = 1;

/// `task.json`'s `max_seconds`, as the engine gives it to every challenge.
const MAX_SECONDS: f64 = crate::domain::task::MAX_SECONDS as f64;

/// What to analyse.
#[derive(Debug, Clone)]
pub struct OfflineRequest {
    /// The output video.
    pub video: PathBuf,
    /// The reference face (PNG or JPEG).
    pub face: PathBuf,
    /// The challenge audio (PCM WAV).
    pub audio: PathBuf,
    /// The transcript, when there is one.
    pub text: Option<PathBuf>,
    /// What the run would be scored with: the inference seconds and peak VRAM (GB) of the scored
    /// challenges (one value for all of them, or one each; either may be empty), and how many
    /// challenges a run scores (`evaluation.scoring_count`).
    pub timing: Timing,
}

/// The efficiency calculator's inputs (`--time-sec`, `--vram-gb`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timing {
    /// Inference seconds: none, one for every scored challenge, or one each.
    pub time_sec: Vec<f64>,
    /// Peak VRAM, GB: none, one for every scored challenge, or one each.
    pub vram_gb: Vec<f64>,
    /// Scored challenges per run.
    pub scored_challenges: usize,
}

impl Timing {
    /// One [`Measurement`] per scored challenge, or `None` when neither list was given. A list of
    /// another length than 1 or the scored count, or a value that is not a finite non-negative
    /// number, is the caller's mistake.
    fn measurements(&self) -> Result<Option<Vec<Measurement>>, OfflineError> {
        if self.time_sec.is_empty() && self.vram_gb.is_empty() {
            return Ok(None);
        }
        let n = self.scored_challenges.max(1);
        let per_challenge = |flag: &str, values: &[f64]| -> Result<Vec<Option<f64>>, OfflineError> {
            if let Some(bad) = values.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(OfflineError::BadInput(format!(
                    "{flag} {bad}: not a finite non-negative number"
                )));
            }
            match values.len() {
                0 => Ok(vec![None; n]),
                1 => Ok(vec![Some(values[0]); n]),
                len if len == n => Ok(values.iter().copied().map(Some).collect()),
                len => Err(OfflineError::BadInput(format!(
                    "{flag} takes 1 value or {n} (evaluation.scoring_count), got {len}"
                ))),
            }
        };
        let times = per_challenge("--time-sec", &self.time_sec)?;
        let vrams = per_challenge("--vram-gb", &self.vram_gb)?;
        Ok(Some(
            times
                .into_iter()
                .zip(vrams)
                .map(|(t, v)| Measurement {
                    inference_time_sec: t,
                    peak_vram_gb: v,
                })
                .collect(),
        ))
    }
}

/// Why the analysis of one file did not give components.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The video is unusable: what a miner would get as `bad_output`.
    #[error("bad_output ({reason}): {detail}")]
    BadOutput {
        /// Stable reason code (`not_a_video`, `wrong_duration`...).
        reason: String,
        /// Details.
        detail: String,
    },
    /// A face, audio or transcript file cannot be read or fails the daemon's challenge checks.
    #[error("{0}")]
    BadInput(String),
    /// The host failed.
    #[error("{0}")]
    Host(String),
}

impl OfflineError {
    /// The subcommand's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            OfflineError::BadOutput { .. } => EXIT_BAD_OUTPUT,
            OfflineError::BadInput(_) => EXIT_BAD_INPUT,
            OfflineError::Host(_) => EXIT_HOST_FAILURE,
        }
    }
}

/// The components of one file and how they score.
#[derive(Debug, Clone, Serialize)]
pub struct OfflineReport {
    /// The video analysed.
    pub video: PathBuf,
    /// Quality score, gates and the clamped components the formula used.
    pub quality: QualityScore,
    /// WER, `null` when unavailable.
    pub wer: Option<f64>,
    /// What the `/metrics` entry's `debug` would hold.
    pub debug: ChallengeDebug,
    /// Every intermediate value of the analysis.
    pub analysis: AnalysisDebug,
    /// With `--time-sec`/`--vram-gb`: the run the daemon would commit if every scored challenge had
    /// this output's quality and these measurements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<OfflineRun>,
}

/// What `/metrics` would say of such a run.
#[derive(Debug, Clone, Serialize)]
pub struct OfflineRun {
    /// Mean quality of the scored challenges.
    pub quality_score: f64,
    /// The run's efficiency block, as `/metrics` reports it.
    pub efficiency: crate::domain::metrics::EfficiencyMetrics,
    /// The final score the daemon would commit.
    pub final_score: f64,
}

/// Loads the request's files as a challenge and analyses the video with `analyzer`.
pub async fn analyse_file(
    analyzer: &dyn Analyzer,
    scoring: &ScoringConfig,
    request: &OfflineRequest,
) -> Result<OfflineReport, OfflineError> {
    let measurements = request.timing.measurements()?;
    let challenge = load_challenge(request)?;
    let input = AnalysisInput {
        video: &request.video,
        challenge: &challenge,
        max_seconds: MAX_SECONDS,
        // Held to the picture the engine's task.json asks for, as every output is.
        frame: Some(super::decode::FrameSpec::task()),
    };
    let analysis = analyzer.analyse(input).await.map_err(|e| match e {
        AnalysisFailure::BadOutput { reason, detail } => OfflineError::BadOutput { reason, detail },
        AnalysisFailure::Infra(reason) => {
            OfflineError::Host(format!("analysis failed on this host: {reason}"))
        }
    })?;
    let mut report = report(&request.video, &analysis, scoring);
    if let Some(measurements) = measurements {
        let outcomes: Vec<ChallengeOutcome> = measurements
            .into_iter()
            .map(|measurement| ChallengeOutcome {
                quality: report.quality.quality_score,
                measurement,
            })
            .collect();
        let run = score_run(&outcomes, scoring)
            .map_err(|e| OfflineError::BadInput(format!("scoring the run: {e}")))?;
        report.run = Some(OfflineRun {
            quality_score: run.quality_score,
            efficiency: run.efficiency.reported(),
            final_score: run.final_score,
        });
    }
    Ok(report)
}

/// The report of one analysis scored with `scoring`.
fn report(video: &Path, analysis: &ChallengeAnalysis, scoring: &ScoringConfig) -> OfflineReport {
    let quality = score_quality(&analysis.components, scoring);
    OfflineReport {
        video: video.to_path_buf(),
        quality,
        wer: analysis.reported_wer(),
        debug: analysis.metrics_debug(&quality),
        analysis: analysis.debug.clone(),
        run: None,
    }
}

fn load_challenge(request: &OfflineRequest) -> Result<Challenge, OfflineError> {
    let limits = Limits::default();
    let face = read_input("--face", &request.face, limits.max_face_bytes)?;
    let audio = read_input("--audio", &request.audio, limits.max_audio_bytes)?;
    let text = match &request.text {
        Some(path) => Some(
            String::from_utf8(read_input("--text", path, limits.max_text_bytes())?)
                .map_err(|_| OfflineError::BadInput(format!("--text {}: not UTF-8", path.display())))?,
        ),
        None => None,
    };
    let id = ChallengeId::from_index(0);
    Challenge::new(id, face, audio, text.as_deref(), &limits)
        .map_err(|e| OfflineError::BadInput(e.to_string()))
}

/// Reads an operator-named input of at most `limit` bytes: a regular file (a FIFO, device or
/// directory is refused before anything is read, so `/dev/zero` cannot make it read forever), never
/// more than `limit + 1` bytes even if the file grows meanwhile.
fn read_input(what: &str, path: &Path, limit: u64) -> Result<Vec<u8>, OfflineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |detail: String| OfflineError::BadInput(format!("{what} {}: {detail}", path.display()));
    // Non-blocking so that opening a FIFO with no writer returns at once; the check below refuses it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(bad(format!(
            "{} bytes, more than the {limit} allowed",
            meta.len()
        )));
    }
    let bytes = crate::challenges::read_bounded(file, limit).map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(bad(format!(
            "grew beyond the {limit} bytes allowed while being read"
        )));
    }
    Ok(bytes)
}

impl OfflineReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            Err(e) => return format!("{{\"error\": \"{e}\"}}"),
        };
        // The scoring core's `wer` input is the transcript gate's value (the audio match's 0 or 1 when
        // no recogniser ran); as a field named `wer` it must read null then, as `/metrics` does.
        if let Some(slot) = value.pointer_mut("/quality/components/wer") {
            *slot = serde_json::json!(self.wer);
        }
        serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as an aligned two-column table.
    pub fn to_table(&self) -> String {
        let q = &self.quality;
        let c = &q.components;
        let a = &self.analysis;
        let p = &a.penalties;
        let mut rows: Vec<(&str, String)> = vec![
            ("video", self.video.display().to_string()),
            ("quality_score", format!("{:.6}", q.quality_score)),
            ("blended", format!("{:.6}", q.blended)),
            ("gates", gates(q)),
            (
                "identity",
                format!("{:.6}  (mode {})", c.identity, c.identity_mode.as_str()),
            ),
            (
                "lipsync",
                format!(
                    "{:.6}  (sync_c {:.4}, sync_d {:.4})",
                    c.lipsync, c.sync_c, c.sync_d
                ),
            ),
            ("video_score", format!("{:.6}", c.video)),
            ("audio", format!("{:.6}", c.audio)),
            ("temporal", format!("{:.6}", c.temporal)),
            (
                "penalty",
                format!(
                    "{:.6}  (freeze {:.3}, loop {:.3}, face_missing {:.3}, offscreen {:.3}, \
                     mouth_occlusion {:.3}, silent_mismatch {:.3}, desync_spikes {:.3})",
                    c.penalty,
                    p.freeze,
                    p.loop_,
                    p.face_missing,
                    p.offscreen,
                    p.mouth_occlusion,
                    p.silent_mismatch,
                    p.desync_spikes
                ),
            ),
            ("wer", wer(self)),
            (
                "face_detect_ratio",
                format!(
                    "{:.4}  ({} of {} frames)",
                    c.face_detect_ratio, a.frames_with_face, a.frames
                ),
            ),
            (
                "backends",
                format!(
                    "face {}, identity {}, asr {}, frames {}",
                    a.detector,
                    a.identity_backend,
                    self.debug.asr_backend,
                    a.frame_format.map_or("none", PixelFormat::name)
                ),
            ),
            ("analysis_time", format!("{:.3} s", self.debug.analysis_time_sec)),
        ];
        if let Some(run) = &self.run {
            rows.extend(run.efficiency.table_rows());
            rows.push(("final_score", format!("{:.6}", run.final_score)));
        }
        for issue in &a.issues {
            rows.push((
                "issue",
                serde_json::to_string(issue).unwrap_or_else(|_| format!("{issue:?}")),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in rows {
            let _ = writeln!(out, "{key:<width$}  {value}");
        }
        out
    }
}

fn gates(q: &QualityScore) -> String {
    let g = q.gates_applied;
    let mut fired: Vec<&str> = Vec::new();
    if g.face_detect {
        fired.push("face_detect");
    }
    if g.identity {
        fired.push("identity");
    }
    if g.sync {
        fired.push("sync");
    }
    if q.wer_hard_fail {
        fired.push("wer_hard_fail (quality 0)");
    }
    if fired.is_empty() {
        "none".to_owned()
    } else {
        format!("{} (multiplier {:.3})", fired.join(", "), q.gate_multiplier)
    }
}

fn wer(r: &OfflineReport) -> String {
    use super::components::TranscriptGate;
    match (r.wer, r.analysis.transcript_gate) {
        (Some(w), _) => format!("{w:.4}"),
        (
            None,
            TranscriptGate::AudioMatch {
                similarity,
                threshold,
                passed,
            },
        ) => format!(
            "unavailable; audio match {similarity:.3} {} threshold {threshold:.3}: {}",
            if passed { ">=" } else { "<" },
            if passed { "passed" } else { "failed (quality 0)" }
        ),
        (None, _) => "unavailable; no check possible (silent challenge audio)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented_values() {
        let bad = OfflineError::BadOutput {
            reason: "not_a_video".into(),
            detail: "x".into(),
        };
        assert_eq!(bad.exit_code(), 65);
        assert_eq!(OfflineError::BadInput("x".into()).exit_code(), 66);
        assert_eq!(OfflineError::Host("x".into()).exit_code(), 1);
        assert_eq!(bad.to_string(), "bad_output (not_a_video): x");
    }

    #[test]
    fn timing_is_one_value_for_every_challenge_or_one_each() {
        let timing = |time_sec: &[f64], vram_gb: &[f64]| Timing {
            time_sec: time_sec.to_vec(),
            vram_gb: vram_gb.to_vec(),
            scored_challenges: 5,
        };
        assert_eq!(timing(&[], &[]).measurements().unwrap(), None);
        let one = timing(&[12.0], &[]).measurements().unwrap().unwrap();
        assert_eq!(one.len(), 5);
        assert!(
            one.iter()
                .all(|m| m.inference_time_sec == Some(12.0) && m.peak_vram_gb.is_none())
        );
        let each = timing(&[1.0, 2.0, 3.0, 4.0, 70.0], &[8.0])
            .measurements()
            .unwrap()
            .unwrap();
        assert_eq!(each[4], Measurement::new(70.0, 8.0));
        for (t, v, needle) in [
            (&[1.0, 2.0][..], &[][..], "takes 1 value or 5"),
            (&[-1.0][..], &[][..], "not a finite non-negative number"),
            (&[][..], &[f64::NAN][..], "--vram-gb NaN"),
        ] {
            let err = timing(t, v).measurements().unwrap_err();
            assert!(
                matches!(&err, OfflineError::BadInput(m) if m.contains(needle)),
                "{err}"
            );
        }
    }

    #[test]
    fn unreadable_and_invalid_inputs_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("face.png");
        std::fs::write(&junk, b"not an image").unwrap();
        let missing = OfflineRequest {
            video: dir.path().join("v.mp4"),
            face: dir.path().join("absent.png"),
            audio: dir.path().join("absent.wav"),
            text: None,
            timing: Timing::default(),
        };
        let err = load_challenge(&missing).unwrap_err();
        assert!(
            matches!(&err, OfflineError::BadInput(m) if m.contains("--face")),
            "{err}"
        );
        let invalid = OfflineRequest {
            face: junk,
            ..missing
        };
        let err = load_challenge(&invalid).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_BAD_INPUT, "{err}");
    }

    #[test]
    fn inputs_are_read_bounded_and_only_from_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let message = |result: Result<Vec<u8>, OfflineError>| match result {
            Err(OfflineError::BadInput(m)) => m,
            other => panic!("expected bad input, got {other:?}"),
        };
        // A device would never end: refused before a byte is read.
        let m = message(read_input("--face", Path::new("/dev/zero"), 16));
        assert!(
            m.contains("--face /dev/zero") && m.contains("not a regular file"),
            "{m}"
        );
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("audio.wav");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(message(read_input("--audio", &fifo, 16)).contains("not a regular file"));
        // Over the limit (sparse: nothing is written): refused from its size.
        let big = dir.path().join("text.txt");
        std::fs::File::create(&big).unwrap().set_len(1 << 40).unwrap();
        let m = message(read_input("--text", &big, 1024));
        assert!(m.contains("more than the 1024 allowed"), "{m}");
        // At the limit: read whole.
        let ok = dir.path().join("ok.txt");
        std::fs::write(&ok, b"0123456789").unwrap();
        assert_eq!(read_input("--text", &ok, 10).unwrap(), b"0123456789");
        assert!(message(read_input("--text", &ok, 9)).contains("more than the 9 allowed"));
    }
}
