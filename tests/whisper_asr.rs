//! The `whisper` speech backend end to end through real whisper.cpp (cargo feature `whisper`): a
//! generated ggml model loaded through `[analysis.asr]`, transcribing the fixture challenge's audio,
//! and `talkheadd analyze` reporting a WER from it; a cut model file refused with its reason; a
//! transcription stopped at its time bound.
//!
//! The model is `tests/whisper/make_model.py`'s: whisper.cpp's real file layout (tiny: 1 layer, state
//! 64) with random weights, so the transcripts are gibberish made of its vocabulary. These tests prove
//! the path (load, spectrogram, encoder, decoder, detokenisation, WER), not recognition quality: no
//! real ggml model can be downloaded here. `tests/setup.sh` writes it to
//! `$TALKHEAD_WHISPER_TEST_MODEL` (default `/opt/talkhead-test/whisper/ggml-tiny-random.bin`).
//!
//! Run: `tests/setup.sh`, then `cargo test -p talkheadd --test whisper_asr` (the target requires
//! the feature `whisper`, on by default: daemon/Cargo.toml `required-features`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use talkheadd::analysis::asr::{self, SpeechRecognizer, whisper::Whisper};
use talkheadd::analysis::decode::{DecodeLimits, decode_wav};
use talkheadd::config::{self, ConfigLocation, Settings};

fn model() -> PathBuf {
    let model = std::env::var_os("TALKHEAD_WHISPER_TEST_MODEL").map_or_else(
        || PathBuf::from("/opt/talkhead-test/whisper/ggml-tiny-random.bin"),
        PathBuf::from,
    );
    assert!(
        model.is_file(),
        "{} is missing: run tests/setup.sh (it writes the test model with tests/whisper/make_model.py)",
        model.display()
    );
    model
}

/// A configuration file in `dir` on the embedded defaults (virtual slots, so it loads without
/// NVML) selecting whisper with `model`.
fn write_config(dir: &Path, model: &Path) -> PathBuf {
    let config = dir.join("talkheadd.toml");
    std::fs::write(
        &config,
        format!(
            "[gpu]\nvirtual = 1\n[analysis.asr]\nbackend = \"whisper\"\nmodel = \"{}\"\n",
            model.display()
        ),
    )
    .unwrap();
    config
}

fn settings(config: &Path) -> Settings {
    config::load(&ConfigLocation::Explicit(config.to_owned()), &|_| None)
        .unwrap()
        .settings
}

fn challenge() -> PathBuf {
    fixtures().join("challenge-0")
}

/// The fixture's audio as the analysis hands it to the recogniser (mono 16 kHz through ffmpeg).
fn fixture_audio() -> Vec<f32> {
    let wav = std::fs::read(challenge().join("audio.wav")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(decode_wav(&wav, &DecodeLimits::default()))
        .unwrap()
}

#[test]
fn the_configured_model_transcribes_the_fixture_audio() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&write_config(dir.path(), &model()));
    let recogniser = asr::from_settings(&settings.analysis.asr)
        .unwrap()
        .expect("backend = \"whisper\" gives a recogniser");
    assert_eq!(recogniser.name(), "whisper");

    let audio = fixture_audio();
    assert!(audio.len() > 16_000, "the fixture has seconds of speech");
    let text = recogniser.transcribe(&audio).unwrap();
    // Random weights: gibberish, but made of the generated vocabulary's words (" w256" ...
    // " w50255"; whisper.cpp's own names for special tokens, "[_TT_18]" and the like, never reach
    // the text), which shows the decoder's tokens came back as text through the model's vocabulary.
    let generated_word = |w: &str| {
        w.strip_prefix('w')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (256..50_256).contains(&n))
    };
    assert!(text.split_whitespace().any(generated_word), "{text:?}");
    assert!(!text.contains("[_"), "{text:?}");
    // Same model, same audio: the same transcript (whisper.cpp seeds its sampler per state).
    assert_eq!(recogniser.transcribe(&audio).unwrap(), text);

    // The WER's inputs: the challenge's text.txt as reference, this transcript as hypothesis.
    let reference = std::fs::read_to_string(challenge().join("text.txt")).unwrap();
    let (r, h) = asr::transcripts(Some(recogniser.as_ref()), Some(&reference), &audio, &audio).unwrap();
    assert_eq!(r.as_deref(), Some(reference.as_str()));
    assert_eq!(h.as_deref(), Some(text.as_str()));
    // Without text.txt the reference is the recogniser's transcript of the challenge audio.
    let (r, _) = asr::transcripts(Some(recogniser.as_ref()), None, &audio, &audio).unwrap();
    assert_eq!(r.as_deref(), Some(text.as_str()));
}

#[test]
fn analyze_reports_a_wer_from_whisper() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &model());
    let clip = dir.path().join("still.mp4");
    let audio = challenge().join("audio.wav");
    media::still_face_clip(&challenge(), &clip);
    let out = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .arg("analyze")
        .arg("--video")
        .arg(&clip)
        .arg("--face")
        .arg(challenge().join("face.png"))
        .arg("--audio")
        .arg(&audio)
        .arg("--text")
        .arg(challenge().join("text.txt"))
        .arg("--json")
        .env_remove("TALKHEADD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["debug"]["asr_backend"], "whisper", "{report}");
    // A WER was computed (not "unavailable"), and it is the transcript gate.
    let wer = report["wer"]
        .as_f64()
        .unwrap_or_else(|| panic!("no WER: {report}"));
    assert!(wer >= 0.0, "{report}");
    let gate = &report["analysis"]["transcript_gate"];
    assert_eq!(gate["kind"], "wer", "{report}");
    assert_eq!(gate["wer"].as_f64(), Some(wer), "{report}");
    // Gibberish against the fixture's English sentence: the words cannot all match.
    assert!(wer > 0.5, "{report}");
}

#[test]
fn a_cut_model_file_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(model()).unwrap();
    let cut = dir.path().join("ggml-cut.bin");
    // Inside the last tensor (encoder.ln_post.bias, 64 f32): whisper.cpp alone would load this.
    std::fs::write(&cut, &full[..full.len() - 100]).unwrap();
    let config = write_config(dir.path(), &cut);
    let err = asr::from_settings(&settings(&config).analysis.asr)
        .err()
        .expect("a cut model must not load");
    assert!(err.starts_with("analysis.asr.model "), "{err}");
    assert!(
        err.contains("truncated: the data of tensor 'encoder.ln_post.bias' at byte")
            && err.contains("needs 256 bytes"),
        "{err}"
    );

    // The operator's tool says the same, before any video is looked at.
    let out = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .arg("analyze")
        .arg("--video")
        .arg(dir.path().join("never-read.mp4"))
        .arg("--face")
        .arg(challenge().join("face.png"))
        .arg("--audio")
        .arg(challenge().join("audio.wav"))
        .env_remove("TALKHEADD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(output_text(&out).contains("truncated"), "{}", output_text(&out));
}

#[test]
fn a_transcription_past_its_bound_is_stopped_with_its_reason() {
    // No time at all: whisper.cpp is told to stop at its first check, after the first encoder pass.
    let whisper = Whisper::load(&model(), Duration::ZERO).unwrap();
    let err = whisper.transcribe(&fixture_audio()).unwrap_err();
    assert_eq!(
        err,
        "whisper transcription stopped after exceeding 0 s (analysis.asr.timeout_secs)"
    );
    // The bound is per transcription: a generous one lets the same model finish.
    let whisper = Whisper::load(&model(), Duration::from_secs(600)).unwrap();
    assert!(whisper.transcribe(&fixture_audio()).is_ok());
}
