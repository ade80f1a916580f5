//! Test media made with the host's ffmpeg, shared by the integration tests (through `common`) and the
//! decode bench (through `#[path]`).

#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

/// `face` at 512×512, 25 fps, H.264, over the audio input `audio` (ffmpeg input options ending in
/// `-i <source>`), AAC, cut to `seconds`. `turn` rotates the face gently so that every frame differs;
/// otherwise it is held still.
pub fn face_clip(face: &Path, audio: &[&str], turn: bool, seconds: f64, out: &Path) {
    let motion = if turn {
        "rotate=0.04*sin(2*PI*t):fillcolor=black,"
    } else {
        ""
    };
    let status = Command::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-loop", "1", "-framerate", "25", "-i"])
        .arg(face)
        .args(audio)
        .arg("-vf")
        .arg(format!("scale=512:512,{motion}format=yuv420p"))
        .args(["-r", "25", "-c:v", "libx264", "-c:a", "aac", "-t"])
        .arg(format!("{seconds:.3}"))
        .arg(out)
        .status()
        .expect("ffmpeg must be installed (tests/setup.sh)");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
}

/// `face` gently turning over a 440 Hz tone of `seconds` as `clip` (see [`face_clip`]), and the same
/// tone as mono 16 kHz WAV `wav`: an output clip and the challenge audio it answers.
pub fn face_over_tone(face: &Path, seconds: f64, clip: &Path, wav: &Path) {
    let sine = format!("sine=frequency=440:duration={seconds}");
    let tone = ["-f", "lavfi", "-i", sine.as_str()];
    face_clip(face, &tone, true, seconds, clip);
    let status = Command::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(tone)
        .args(["-ac", "1", "-ar", "16000"])
        .arg(wav)
        .status()
        .expect("ffmpeg must be installed (tests/setup.sh)");
    assert!(status.success(), "ffmpeg could not make {}", wav.display());
}

/// The challenge's face held still over the challenge's audio (`audio.wav`, whose own length is
/// exact: `-shortest` overshoots with a looped image), 512×512 at 25 fps: what a miner that ignores
/// the audio would output.
pub fn still_face_clip(challenge: &Path, out: &Path) {
    let audio = challenge.join("audio.wav");
    let wav = hound::WavReader::open(&audio).expect("the challenge's audio.wav");
    let seconds = f64::from(wav.duration()) / f64::from(wav.spec().sample_rate);
    let input = audio.to_str().expect("a UTF-8 fixture path");
    face_clip(&challenge.join("face.png"), &["-i", input], false, seconds, out);
}
