//! `talkheadd analyze`: the real binary, the real sandboxed ffmpeg decode and the builtin face
//! detector on videos made with ffmpeg from a fixture challenge; a good clip gives its components
//! (exit 0, table or JSON), a hostile file its `bad_output` reason (exit 65), unusable inputs exit 66,
//! and the face backend comes from `--config`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Case {
    dir: tempfile::TempDir,
    config: PathBuf,
    challenge: PathBuf,
}

impl Case {
    /// A temporary directory with a configuration on the embedded defaults plus virtual slots (so the
    /// file loads on a host without NVML), and fixture challenge-0.
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("talkheadd.toml");
        std::fs::write(&config, "[gpu]\nvirtual = 1\n").unwrap();
        Case {
            dir,
            config,
            challenge: fixtures().join("challenge-0"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The fixture's face held still over the fixture's audio, 512×512 at 25 fps: what a miner that
    /// ignores the audio would output.
    fn still_face_clip(&self) -> PathBuf {
        let out = self.path("still.mp4");
        media::still_face_clip(&self.challenge, &out);
        out
    }

    fn analyze(&self, video: &Path, extra: &[&str]) -> Output {
        self.analyze_with(&self.config, video, extra)
    }

    fn analyze_with(&self, config: &Path, video: &Path, extra: &[&str]) -> Output {
        Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("analyze")
            .arg("--video")
            .arg(video)
            .arg("--face")
            .arg(self.challenge.join("face.png"))
            .arg("--audio")
            .arg(self.challenge.join("audio.wav"))
            .args(extra)
            .current_dir(self.dir.path())
            .env_remove("TALKHEADD_CONFIG")
            .output()
            .unwrap()
    }
}

#[test]
fn a_good_clip_gives_its_components_as_json_and_as_a_table() {
    let case = Case::new();
    let clip = case.still_face_clip();
    let transcript = case.challenge.join("text.txt");
    let out = case.analyze(&clip, &["--text", transcript.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let quality = &report["quality"];
    let q = quality["quality_score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&q), "{report}");
    for key in ["identity", "lipsync", "audio", "video", "temporal", "penalty"] {
        let v = quality["components"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    // A face that never moves its mouth: the sync gate fires and the freeze penalty is charged.
    assert_eq!(quality["gates_applied"]["sync"], true, "{report}");
    assert!(
        report["analysis"]["penalties"]["freeze"].as_f64().unwrap() > 0.5,
        "{report}"
    );
    // The same debug object as a /metrics entry, with the builtin backend and no ASR.
    let debug = &report["debug"];
    assert_eq!(debug["face_backend"], "haar");
    assert_eq!(debug["asr_backend"], "none");
    assert_eq!(debug["identity_mode"], "fallback_histogram");
    assert_eq!(debug["face_detect_gate_applied"], false);
    assert!(debug["analysis_time_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(debug["sync_c"], quality["components"]["sync_c"]);
    // No ASR: WER unavailable (null), the audio-match check stands in, and it passes on the
    // challenge's own audio.
    assert!(report["wer"].is_null(), "{report}");
    // No recogniser ran: no `wer` anywhere reads as a number (the scoring input included).
    assert!(report["quality"]["components"]["wer"].is_null(), "{report}");
    assert_eq!(report["analysis"]["transcript_gate"]["kind"], "audio_match");
    assert_eq!(report["analysis"]["transcript_gate"]["passed"], true, "{report}");
    // 3.44 s at 25 fps is 86 frames: the reference's 80 are sampled.
    assert_eq!(report["analysis"]["frames"], 80);
    assert_eq!(report["analysis"]["frame_format"], "grey");

    let table = case.analyze(&clip, &[]);
    assert_eq!(table.status.code(), Some(0), "{}", output_text(&table));
    let table = String::from_utf8(table.stdout).unwrap();
    let line = |key: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} row in:\n{table}"))
            .to_owned()
    };
    assert!(line("quality_score").contains(&format!("{q:.6}")), "{table}");
    assert!(line("gates").contains("sync"), "{table}");
    assert!(line("wer").contains("unavailable; audio match"), "{table}");
    assert!(line("backends").contains("face haar"), "{table}");
    // Haar and the histogram identity read no colour: the decoder delivered grey frames.
    assert!(line("backends").contains("frames grey"), "{table}");
}

#[test]
fn a_text_file_named_mp4_is_bad_output_with_its_reason() {
    let case = Case::new();
    let fake = case.path("fake.mp4");
    std::fs::write(&fake, "this is not a video, whatever its name says\n".repeat(100)).unwrap();
    let out = case.analyze(&fake, &["--json"]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["bad_output"]["reason"], "not_a_video", "{body}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_output (not_a_video)"));

    let empty = case.path("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let out = case.analyze(&empty, &[]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("bad_output (empty_file)"),
        "{}",
        output_text(&out)
    );
    assert!(out.stdout.is_empty(), "no components for a bad output");
}

#[test]
fn unusable_inputs_exit_66_and_the_face_backend_follows_the_configuration() {
    let case = Case::new();
    let clip = case.path("never-read.mp4");
    std::fs::write(&clip, b"x").unwrap();
    let out = case.analyze(&clip, &["--text", case.path("absent.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66), "{}", output_text(&out));
    assert!(output_text(&out).contains("--text"), "{}", output_text(&out));

    // The detector is the configured one: a cascade that is not there stops the analysis (host
    // failure, exit 1) naming the key, before any video is judged.
    let config = case.path("other.toml");
    let cascade = case.path("no-such-cascade.xml");
    std::fs::write(
        &config,
        format!(
            "[gpu]\nvirtual = 1\n[analysis.face]\ncascade = \"{}\"\n",
            cascade.display()
        ),
    )
    .unwrap();
    let out = case.analyze_with(&config, &clip, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("analysis.face.cascade")
            && output_text(&out).contains("no-such-cascade.xml"),
        "{}",
        output_text(&out)
    );
}

/// Held to the task's picture: the same honest clip downscaled to 256×256 (which scored above the
/// original before), or resampled to 15 fps, is `bad_output` with its reason, as in the daemon.
#[test]
fn an_output_off_the_tasks_size_or_frame_rate_is_bad_output() {
    let case = Case::new();
    let clip = case.still_face_clip();
    for (name, filter, reason) in [
        ("small.mp4", "scale=256:256", "wrong_resolution"),
        ("slow.mp4", "fps=15", "wrong_fps"),
    ] {
        let out = case.path(name);
        let made = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&clip)
            .args([
                "-vf",
                filter,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "copy",
            ])
            .arg(&out)
            .status()
            .unwrap();
        assert!(made.success(), "ffmpeg {filter}");
        let result = case.analyze(&out, &["--json"]);
        assert_eq!(result.status.code(), Some(65), "{}", output_text(&result));
        let body: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
        assert_eq!(body["bad_output"]["reason"], reason, "{body}");
        // `analysis.conformance = "penalty"`: the same output is scored, the mismatch named and its
        // quality halved by the conformance gate.
        let penalty = case.path("penalty.toml");
        std::fs::write(
            &penalty,
            "[gpu]\nvirtual = 1\n[analysis]\nconformance = \"penalty\"\n",
        )
        .unwrap();
        let result = case.analyze_with(&penalty, &out, &["--json"]);
        assert_eq!(result.status.code(), Some(0), "{}", output_text(&result));
        let body: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
        assert_eq!(
            body["debug"]["picture_mismatches"],
            serde_json::json!([reason]),
            "{body}"
        );
        let quality = &body["quality"];
        assert_eq!(quality["gates_applied"]["conformance"], true, "{quality}");
        assert_eq!(quality["components"]["picture_mismatches"], 1, "{quality}");
        assert!(quality["gate_multiplier"].as_f64().unwrap() <= 0.5, "{quality}");
    }
    // The task's own picture has nothing to penalise.
    let penalty = case.path("penalty.toml");
    let result = case.analyze_with(&penalty, &clip, &["--json"]);
    assert_eq!(result.status.code(), Some(0), "{}", output_text(&result));
    let body: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert!(body["debug"].get("picture_mismatches").is_none(), "{body}");
    assert_eq!(body["quality"]["gates_applied"]["conformance"], false, "{body}");
}

/// Bit-identical frames (a lossless still, as the issue that found the tracker's jitter made it) keep
/// one face box throughout: the face tracker gives what per-frame detection gives, so the box centre
/// never moves and bbox smoothness is 1 (it was 0.83 when the near search's grid differed from the
/// full search's).
#[test]
fn a_lossless_still_keeps_one_face_box_and_full_bbox_smoothness() {
    let case = Case::new();
    let audio = case.challenge.join("audio.wav");
    let wav = hound::WavReader::open(&audio).unwrap();
    let seconds = f64::from(wav.duration()) / f64::from(wav.spec().sample_rate);
    let out = case.path("lossless.mp4");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-loop", "1", "-framerate", "25", "-i"])
        .arg(case.challenge.join("face.png"))
        .arg("-i")
        .arg(&audio)
        .args(["-t", &format!("{seconds:.3}"), "-vf", "scale=512:512"])
        .args([
            "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-c:a", "aac",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(made.success(), "ffmpeg lossless still");
    let result = case.analyze(&out, &["--json"]);
    assert_eq!(result.status.code(), Some(0), "{}", output_text(&result));
    let body: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let temporal = &body["analysis"]["temporal"];
    assert_eq!(
        body["analysis"]["frames_with_face"], body["analysis"]["frames"],
        "{body}"
    );
    assert_eq!(temporal["bbox_smoothness"].as_f64(), Some(1.0), "{temporal}");
}

/// The efficiency calculator: the run the daemon would commit for this output's quality and the
/// given measurements, the cap included; a wrong number of values is the operator's mistake (66).
#[test]
fn time_and_vram_give_the_efficiency_block_and_final_score_the_daemon_would_commit() {
    let case = Case::new();
    let clip = case.still_face_clip();
    let out = case.analyze(
        &clip,
        &["--json", "--time-sec", "10,10,10,10,100", "--vram-gb", "8"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &body["run"];
    let quality = body["quality"]["quality_score"].as_f64().unwrap();
    assert_eq!(run["quality_score"].as_f64().unwrap(), quality, "{run}");
    // The worst challenge (100 s) exceeds the 60 s cap: the reference's ×0.01.
    assert_eq!(run["efficiency"]["cap_violation"], true, "{run}");
    assert_eq!(run["efficiency"]["cap_multiplier"], 0.01, "{run}");
    // As /metrics reports it: the factor already includes the cap's 0.01.
    let factor = run["efficiency"]["efficiency_factor"].as_f64().unwrap();
    assert!(factor < 0.01, "{run}");
    let expected = quality * factor;
    assert!(
        (run["final_score"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{run}"
    );
    // Mean time 28 s: time_norm 28/120 with the default reference.
    assert!((run["efficiency"]["inference_time_sec"].as_f64().unwrap() - 28.0).abs() < 1e-9);

    let table = String::from_utf8_lossy(&case.analyze(&clip, &["--time-sec", "12"]).stdout).into_owned();
    assert!(
        table.contains("final_score") && table.contains("unavailable (norm 1)"),
        "{table}"
    );

    let wrong = case.analyze(&clip, &["--time-sec", "1,2"]);
    assert_eq!(wrong.status.code(), Some(66), "{}", output_text(&wrong));
    assert!(
        output_text(&wrong).contains("takes 1 value or 5"),
        "{}",
        output_text(&wrong)
    );
}
