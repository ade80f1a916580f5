//! Synthetic media with known answers through [`analyse`] (a fixed-box stub detector), the scoring
//! core's verdict on them, the audio-match check on the fixture speech, and the whole pipeline with
//! the Haar detector on the fixture portraits (timed; run with `--nocapture` to see the figure).

use std::time::Instant;

use super::*;
use crate::analysis::face::FaceDetector;
use crate::scoring::{ScoringConfig, score_quality};

// ---------------------------------------------------------------------------------------------------
// Builders

/// Deterministic pseudo-random numbers in [0, 1) (no `rand` dependency).
/// A seeded generator of uniform numbers in [0, 1), for the component tests of this directory.
pub(super) struct Lcg(pub(super) u64);
impl Lcg {
    pub(super) fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Always reports the same box (the frame's own coordinates).
struct Stub(FaceBox);
impl FaceDetector for Stub {
    fn detect(&self, frame: &Frame) -> Vec<FaceBox> {
        if frame.is_well_formed() {
            vec![self.0]
        } else {
            Vec::new()
        }
    }
    fn name(&self) -> &'static str {
        "stub"
    }
}

/// Never finds a face.
struct Blind;
impl FaceDetector for Blind {
    fn detect(&self, _: &Frame) -> Vec<FaceBox> {
        Vec::new()
    }
    fn name(&self) -> &'static str {
        "blind"
    }
}

const W: u32 = 128;
const H: u32 = 128;
const N: usize = 80;
/// 5 s at 16 kHz: one sampled frame per 1000 samples.
const SAMPLES: usize = 80_000;

fn face_box() -> FaceBox {
    FaceBox {
        x1: 32.0,
        y1: 16.0,
        x2: 96.0,
        y2: 112.0,
        score: 1.0,
        landmarks: None,
    }
}

/// A textured "face" frame: mid-grey with a fixed pattern (σ well above the blur/contrast floors).
fn base_frame() -> Frame {
    let mut rgb = Vec::with_capacity((W * H * 3) as usize);
    for y in 0..H {
        for x in 0..W {
            let v = (90 + ((x * 7 + y * 13) % 23) * 4 + ((x / 8 + y / 8) % 2) * 30) as u8;
            rgb.extend([v, v, v]);
        }
    }
    Frame::rgb(W, H, rgb)
}

/// Sets the mouth ROI of `face_box()` to a checkerboard (variance above the occlusion floor) shifted
/// by `offset` grey levels.
fn paint_mouth(f: &mut Frame, offset: f64) {
    let b = face_box();
    let r = lipsync::mouth_rect(&b, W as usize, H as usize).unwrap();
    for y in r[1]..r[3] {
        for x in r[0]..r[2] {
            let chk = if (x / 2 + y / 2) % 2 == 0 { -30.0 } else { 30.0 };
            let v = (128.0 + chk + offset).clamp(0.0, 255.0) as u8;
            let i = (y * W as usize + x) * 3;
            f.pixels[i..i + 3].copy_from_slice(&[v, v, v]);
        }
    }
}

/// A syllable-like loudness per frame: random levels held for 2–5 frames, some pauses.
fn envelope(seed: u64) -> Vec<f64> {
    let mut rng = Lcg(seed);
    let mut e = Vec::with_capacity(N);
    while e.len() < N {
        let level = if rng.next() < 0.25 {
            0.02
        } else {
            0.1 + 0.4 * rng.next()
        };
        let len = 2 + (rng.next() * 4.0) as usize;
        e.extend(std::iter::repeat_n(level, len));
    }
    e.truncate(N);
    e
}

/// Noise whose amplitude in frame slot i is `env[i]`.
fn speech_like(env: &[f64], seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed);
    (0..SAMPLES)
        .map(|s| (env[(s * N / SAMPLES).min(N - 1)] * (2.0 * rng.next() - 1.0) * 1.7) as f32)
        .collect()
}

/// The mouth state of frames driven by `drive`, grey levels: a mouth that opens for two frames and
/// closes for two (a syllable rate of about 6 Hz at 25 fps) by `60·drive[i]` each frame, so the
/// frame-to-frame difference — what the mouth signal measures — is proportional to the drive, and
/// consecutive steps are as often alike as opposite (a mouth, not a pattern flipping sign every frame).
fn mouth_states(drive: &[f64]) -> Vec<f64> {
    drive
        .iter()
        .enumerate()
        .scan(0.0, |state, (i, d)| {
            *state += if i % 4 < 2 { 60.0 } else { -60.0 } * d;
            Some(*state)
        })
        .collect()
}

/// Frames whose mouth moves by an amount following `drive[i]` ([`mouth_states`]).
fn talking_frames(drive: &[f64]) -> Vec<Frame> {
    let base = base_frame();
    mouth_states(drive)
        .into_iter()
        .map(|state| {
            let mut f = base.clone();
            paint_mouth(&mut f, state);
            f
        })
        .collect()
}

/// [`run`] under `profile`.
fn run_profile(
    frames: &[Frame],
    audio: &[f32],
    det: &dyn FaceDetector,
    profile: crate::domain::metrics::ScoringProfile,
) -> Analysis {
    let reference = base_frame();
    let media = Media {
        frames,
        fps: 25.0,
        video_audio: audio,
        source_audio: audio,
        reference_face: &reference,
    };
    let mut context = AnalysisContext::builtin(Some("the quick brown fox"), Some("the quick brown fox"));
    context.options.profile = profile;
    analyse_with(&media, det, &context)
}

fn run(frames: &[Frame], video_audio: &[f32], source_audio: &[f32], det: &dyn FaceDetector) -> Analysis {
    let reference = base_frame();
    let media = Media {
        frames,
        fps: 25.0,
        video_audio,
        source_audio,
        reference_face: &reference,
    };
    analyse(
        &media,
        det,
        Some("the quick brown fox"),
        Some("the quick brown fox"),
    )
}

fn quality(a: &Analysis) -> crate::scoring::QualityScore {
    score_quality(&a.components, &ScoringConfig::default())
}

fn assert_unit(a: &Analysis) {
    let c = &a.components;
    for v in [
        c.identity, c.lipsync, c.audio, c.video, c.temporal, c.penalty, c.wer, c.sync_c, c.sync_d,
    ] {
        assert!(v.is_finite() && (0.0..=1.0).contains(&v), "{c:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Lipsync

#[test]
fn static_face_fails_the_sync_gate_and_freezes() {
    let env = envelope(1);
    let audio = speech_like(&env, 2);
    let mut still = base_frame();
    paint_mouth(&mut still, 0.0);
    let frames = vec![still; N];
    let a = run(&frames, &audio, &audio, &Stub(face_box()));
    assert_unit(&a);
    assert_eq!(a.debug.lipsync.status, LipsyncStatus::NoMouthMotion);
    assert_eq!(
        (a.components.lipsync, a.components.sync_c, a.components.sync_d),
        (0.0, 0.0, 1.0)
    );
    assert_eq!(a.debug.penalties.freeze, 1.0);
    assert!(a.debug.issues.contains(&AnalysisIssue::LipsyncNotMeasured {
        status: LipsyncStatus::NoMouthMotion
    }));
    let q = quality(&a);
    assert!(q.gates_applied.sync);
}

#[test]
fn mouth_following_the_envelope_passes_the_gate() {
    let env = envelope(3);
    let audio = speech_like(&env, 4);
    let frames = talking_frames(&env);
    // The reference's mouth signal (the mouth rectangle's |Δgrey|) peaks at lag 0 on these frames; the
    // hardened one (the mouth's share of the face change) passes the gate too.
    let hardened = run(&frames, &audio, &audio, &Stub(face_box()));
    assert_eq!(hardened.debug.lipsync.status, LipsyncStatus::Measured);
    // Its correlation is lower on these synthetic frames (0.54 against the reference's 0.8: the shift
    // and brightness fits take part of a painted mouth's change) but it peaks at the same lag.
    assert_eq!(hardened.debug.lipsync.best_lag, 0, "{:?}", hardened.debug.lipsync);
    assert!(hardened.components.sync_c > 0.75, "{:?}", hardened.debug.lipsync);
    assert!(!quality(&hardened).gates_applied.sync);
    let a = run_profile(
        &frames,
        &audio,
        &Stub(face_box()),
        crate::domain::metrics::ScoringProfile::Reference,
    );
    assert_unit(&a);
    let l = &a.debug.lipsync;
    assert_eq!(l.status, LipsyncStatus::Measured);
    assert!(a.components.sync_c > 0.85, "{l:?}");
    assert_eq!(l.best_lag, 0);
    assert_eq!(a.components.sync_d, 0.0);
    assert!(a.components.lipsync > 0.9, "{}", a.components.lipsync);
    assert!(!quality(&a).gates_applied.sync);
    // Only pairs inside pauses (a quarter of the syllables, where the mouth moves by about a grey
    // level) are frozen.
    assert!(
        (0.1..0.3).contains(&a.debug.penalties.freeze),
        "{:?}",
        a.debug.penalties
    );
    assert_eq!(a.debug.penalties.mouth_occlusion, 0.0);
}

#[test]
fn a_shifted_mouth_shows_its_offset_in_sync_d() {
    // The lag arithmetic of the reference's mouth signal (the hardened one is a nonlinear measure of
    // the same motion; its lag on these synthetic frames is checked below).
    let reference = crate::domain::metrics::ScoringProfile::Reference;
    let env = envelope(5);
    let audio = speech_like(&env, 6);
    for k in [2usize, 3, 5] {
        // The mouth lags the audio by k sampled frames.
        let drive: Vec<f64> = (0..N).map(|i| if i >= k { env[i - k] } else { 0.02 }).collect();
        let a = run_profile(&talking_frames(&drive), &audio, &Stub(face_box()), reference);
        let l = &a.debug.lipsync;
        assert_eq!(l.max_lag, 8);
        assert_eq!(l.best_lag, k as i32, "{l:?}");
        assert!((a.components.sync_d - k as f64 / 8.0).abs() < 1e-12);
        assert!(a.components.sync_c > 0.85);
        // And the other way round: the mouth leads.
        let lead: Vec<f64> = (0..N)
            .map(|i| if i + k < N { env[i + k] } else { 0.02 })
            .collect();
        let a = run_profile(&talking_frames(&lead), &audio, &Stub(face_box()), reference);
        assert_eq!(a.debug.lipsync.best_lag, -(k as i32));
    }
}

#[test]
fn no_face_means_no_lipsync_not_a_passing_half() {
    let env = envelope(7);
    let audio = speech_like(&env, 8);
    let a = run(&talking_frames(&env), &audio, &audio, &Blind);
    assert_unit(&a);
    assert_eq!(a.debug.lipsync.status, LipsyncStatus::NoFace);
    assert_eq!(a.components.sync_c, 0.0);
    assert_eq!(a.components.face_detect_ratio, 0.0);
    assert_eq!(a.debug.penalties.face_missing, 1.0);
    // No extra offscreen charge when no face was ever seen.
    assert_eq!(a.debug.penalties.offscreen, 0.0);
    assert!(quality(&a).gates_applied.sync);
    // The histogram identity still reports its labelled mode, and the detector's ratio.
    assert_eq!(a.components.identity_mode, IdentityMode::FallbackHistogram);
}

// ---------------------------------------------------------------------------------------------------
// Audio

#[test]
fn silence_charges_silent_mismatch() {
    let env = envelope(9);
    let source = speech_like(&env, 10);
    let silent = vec![0.0f32; SAMPLES];
    let a = run(&talking_frames(&env), &silent, &source, &Stub(face_box()));
    assert_unit(&a);
    assert_eq!(a.debug.penalties.silent_mismatch, 1.0);
    assert_eq!(a.debug.lipsync.status, LipsyncStatus::SilentAudio);
    assert_eq!(a.debug.audio.tsim, 0.0);
    assert!((a.debug.audio.audio_quality - 0.2).abs() < 1e-12);
}

#[test]
fn clipped_audio_has_lower_quality() {
    let clean: Vec<f32> = (0..SAMPLES).map(|i| 0.5 * (i as f32 * 0.03).sin()).collect();
    let clipped: Vec<f32> = clean.iter().map(|v| (v * 4.0).clamp(-1.0, 1.0)).collect();
    let (qc, _, _) = audio::audio_quality(&clean);
    let (qx, _, clip) = audio::audio_quality(&clipped);
    assert!((qc - 1.0).abs() < 1e-9);
    assert!(clip > 0.5);
    // The clipping term (20 %) is gone entirely.
    assert!((qx - 0.8).abs() < 1e-9, "{qx}");
    let env = envelope(11);
    let a = run(&talking_frames(&env), &clipped, &clean, &Stub(face_box()));
    assert!(a.debug.audio.audio_quality < 0.81);
}

#[test]
fn wer_gate_through_the_scoring_core() {
    let env = envelope(12);
    let audio = speech_like(&env, 13);
    let frames = talking_frames(&env);
    let reference = base_frame();
    let media = Media {
        frames: &frames,
        fps: 25.0,
        video_audio: &audio,
        source_audio: &audio,
        reference_face: &reference,
    };
    let det = Stub(face_box());
    let good = analyse(
        &media,
        &det,
        Some("The quick brown fox"),
        Some("the quick brown fox"),
    );
    assert_eq!(good.debug.wer, Some(0.0));
    assert_eq!(good.debug.transcript_gate, TranscriptGate::Wer { wer: 0.0 });
    assert!(!quality(&good).wer_hard_fail);
    let bad = analyse(&media, &det, Some("the quick brown fox"), Some("hello there"));
    assert_eq!(bad.debug.wer, Some(1.0));
    assert!(quality(&bad).wer_hard_fail);
    assert_eq!(quality(&bad).quality_score, 0.0);
}

#[test]
fn without_asr_the_audio_match_is_the_gate() {
    let env = envelope(14);
    let source = speech_like(&env, 15);
    let frames = talking_frames(&env);
    let reference = base_frame();
    let det = Stub(face_box());
    // Same audio: passes, WER reported unavailable (not 0.5).
    let media = Media {
        frames: &frames,
        fps: 25.0,
        video_audio: &source,
        source_audio: &source,
        reference_face: &reference,
    };
    let a = analyse(&media, &det, Some("the quick brown fox"), None);
    assert_eq!(a.debug.wer, None);
    assert!(!a.debug.wer_available);
    assert!(matches!(
        a.debug.transcript_gate,
        TranscriptGate::AudioMatch { passed: true, .. }
    ));
    assert!(a.debug.issues.contains(&AnalysisIssue::WerUnavailable {
        reason: WerUnavailable::NoHypothesis
    }));
    assert!(!quality(&a).wer_hard_fail);
    assert!(!a.has_validator_issue());
    // Unrelated audio with the same loudness contour: fails the match → hard zero, with a flag.
    let other: Vec<f32> = {
        let mut rng = Lcg(99);
        (0..SAMPLES)
            .map(|i| {
                (0.3 * (i as f64 * 0.2).sin()
                    * (0.5 + 0.5 * rng.next())
                    * env[(i * N / SAMPLES).min(N - 1)]
                    * 3.0) as f32
            })
            .collect()
    };
    let media = Media {
        video_audio: &other,
        ..media
    };
    let a = analyse(&media, &det, Some("the quick brown fox"), None);
    assert!(
        matches!(
            a.debug.transcript_gate,
            TranscriptGate::AudioMatch { passed: false, .. }
        ),
        "{:?}",
        a.debug.transcript_gate
    );
    assert!(
        a.debug
            .issues
            .iter()
            .any(|i| matches!(i, AnalysisIssue::AudioMatchFailed { .. }))
    );
    assert_eq!(a.components.wer, 1.0);
    assert_eq!(quality(&a).quality_score, 0.0);
    // A silent challenge cannot be judged: the challenge's issue (a retry cannot fix it), the miner is
    // not zeroed.
    let silent = vec![0.0f32; SAMPLES];
    let media = Media {
        source_audio: &silent,
        video_audio: &source,
        ..media
    };
    let a = analyse(&media, &det, None, None);
    assert_eq!(a.debug.transcript_gate, TranscriptGate::Unavailable);
    assert!(!a.has_validator_issue());
    assert!(
        a.debug
            .issues
            .iter()
            .any(|i| *i == AnalysisIssue::SourceAudioSilent && i.origin() == IssueOrigin::Challenge)
    );
    assert_eq!(a.components.wer, 0.0);
}

fn fixture_wav(i: usize) -> Option<Vec<f32>> {
    let p = crate::analysis::face::tests::fixtures_dir().join(format!("challenge-{i}/audio.wav"));
    let mut r = hound::WavReader::open(p).ok()?;
    let spec = r.spec();
    assert_eq!((spec.channels, spec.sample_rate), (1, 16_000));
    Some(
        r.samples::<i16>()
            .map(|s| f32::from(s.unwrap()) / 32768.0)
            .collect(),
    )
}

#[test]
fn audio_match_on_the_fixture_speech() {
    let (Some(a), Some(b)) = (fixture_wav(0), fixture_wav(1)) else {
        eprintln!("skipping: fixture audio missing");
        return;
    };
    let same = audio_match(&a, &a).unwrap();
    assert!((same.similarity - 1.0).abs() < 1e-9 && same.lag_seconds == 0.0);
    // The output starts 0.25 s late (silence prepended) and 0.013 s off the hop grid.
    let mut late = vec![0.0f32; 4208];
    late.extend(&a);
    let m = audio_match(&late, &a).unwrap();
    assert!(m.similarity > 0.9, "{m:?}");
    assert!((m.lag_seconds - 0.26).abs() < 0.011, "{m:?}");
    // Quieter, with noise at ~20 dB SNR, and low-passed (a crude codec): still far above threshold.
    let mut rng = Lcg(5);
    let rms = (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
    let mut prev = 0.0f32;
    let degraded: Vec<f32> = a
        .iter()
        .map(|&v| {
            prev = 0.6 * prev + 0.4 * v;
            0.5 * prev + 0.1 * rms * (2.0 * rng.next() as f32 - 1.0)
        })
        .collect();
    let m = audio_match(&degraded, &a).unwrap();
    assert!(m.similarity > 0.6, "{m:?}");
    // Different speech, and noise: far below.
    let other = audio_match(&b, &a).unwrap();
    assert!(other.similarity < 0.3, "{other:?}");
    let noise: Vec<f32> = (0..a.len())
        .map(|_| 0.1 * (2.0 * rng.next() as f32 - 1.0))
        .collect();
    let n = audio_match(&noise, &a).unwrap();
    assert!(n.similarity < 0.2, "{n:?}");
    // Silence and a truncated output.
    assert_eq!(audio_match(&vec![0.0; a.len()], &a).unwrap().similarity, 0.0);
    let half = audio_match(&a[..a.len() / 2], &a).unwrap();
    assert!(half.similarity < 0.6 && half.similarity > 0.3, "{half:?}");
    assert!(audio_match(&a, &[]).is_none());
    eprintln!(
        "audio match: same 1.0, late {:.3}, degraded {:.3}, other speech {:.3}, noise {:.3}, half {:.3}",
        audio_match(&late, &a).unwrap().similarity,
        m.similarity,
        other.similarity,
        n.similarity,
        half.similarity
    );
}

// ---------------------------------------------------------------------------------------------------
// Video and penalties

#[test]
fn black_frames_score_low_on_brightness_and_artifacts() {
    let black = vec![Frame::rgb(W, H, vec![0; (W * H * 3) as usize]); N];
    let env = envelope(16);
    let audio = speech_like(&env, 17);
    let a = run(&black, &audio, &audio, &Blind);
    assert_unit(&a);
    let v = &a.debug.video;
    assert_eq!(
        (v.blur, v.brightness_contrast, v.artifacts, v.face_size),
        (0.0, 0.0, 0.0, 0.0)
    );
    assert_eq!(v.motion, 0.4); // no motion term; differences all 0 are perfectly "smooth"
    assert_eq!(a.debug.penalties.freeze, 1.0);
}

#[test]
fn letterboxing_costs_the_artifact_term() {
    let env = envelope(18);
    let audio = speech_like(&env, 19);
    let mut frames = talking_frames(&env);
    // Black bars of 10 % top and bottom: 20 % of the pixels are black → 1 − 0.2 / 0.35.
    let bar = (H / 10) as usize * W as usize * 3;
    for f in &mut frames {
        let len = f.pixels.len();
        f.pixels[..bar].iter_mut().for_each(|p| *p = 0);
        f.pixels[len - bar..].iter_mut().for_each(|p| *p = 0);
    }
    let a = run(&frames, &audio, &audio, &Stub(face_box()));
    let expect = 1.0 - (2.0 * bar as f64 / (W * H * 3) as f64) / 0.35;
    assert!(
        (a.debug.video.artifacts - expect).abs() < 1e-9,
        "{} vs {expect}",
        a.debug.video.artifacts
    );
    let plain = run(&talking_frames(&env), &audio, &audio, &Stub(face_box()));
    assert_eq!(plain.debug.video.artifacts, 1.0);
}

#[test]
fn a_looped_clip_is_charged() {
    // 16 distinct frames (brightness pattern) played 5 times: the last 16 equal the first 16.
    let mut rng = Lcg(20);
    let cycle: Vec<Frame> = (0..16)
        .map(|_| {
            let mut f = base_frame();
            let shift = (rng.next() * 60.0) as u8;
            f.pixels.iter_mut().for_each(|p| *p = p.saturating_add(shift));
            f
        })
        .collect();
    let frames: Vec<Frame> = (0..N).map(|i| cycle[i % 16].clone()).collect();
    let env = envelope(21);
    let audio = speech_like(&env, 22);
    let a = run(&frames, &audio, &audio, &Stub(face_box()));
    assert!(a.debug.penalties.loop_ > 1.0 - 1e-9);
    assert!((a.debug.penalties.loop_correlation.unwrap() - 1.0).abs() < 1e-9);
    // The talking clip does not loop.
    let b = run(&talking_frames(&env), &audio, &audio, &Stub(face_box()));
    assert_eq!(b.debug.penalties.loop_, 0.0);
}

#[test]
fn offscreen_and_face_size() {
    let env = envelope(23);
    let audio = speech_like(&env, 24);
    // A box hugging the left edge, covering 64·96/128² = 0.375 of the frame.
    let edge = FaceBox {
        x1: 0.0,
        y1: 16.0,
        x2: 64.0,
        y2: 112.0,
        score: 1.0,
        landmarks: None,
    };
    let a = run(&talking_frames(&env), &audio, &audio, &Stub(edge));
    assert_eq!(a.debug.penalties.offscreen, 1.0);
    assert_eq!(a.debug.video.face_size, 1.0);
    assert_eq!(a.components.face_detect_ratio, 1.0);
    // A tiny box: 8·8 / 128² = 0.0039 → 0.039.
    let tiny = FaceBox {
        x1: 60.0,
        y1: 60.0,
        x2: 68.0,
        y2: 68.0,
        score: 1.0,
        landmarks: None,
    };
    let b = run(&talking_frames(&env), &audio, &audio, &Stub(tiny));
    assert!((b.debug.video.face_size - 0.0390625).abs() < 1e-9);
    assert_eq!(b.debug.penalties.offscreen, 0.0);
}

#[test]
fn a_flat_mouth_while_loud_is_occluded() {
    let env: Vec<f64> = vec![0.3; N];
    let audio = speech_like(&env, 25);
    // Mouth region a flat grey (variance 0) in every frame.
    let mut f = base_frame();
    let r = lipsync::mouth_rect(&face_box(), W as usize, H as usize).unwrap();
    for y in r[1]..r[3] {
        for x in r[0]..r[2] {
            let i = (y * W as usize + x) * 3;
            f.pixels[i..i + 3].copy_from_slice(&[100, 100, 100]);
        }
    }
    let a = run(&vec![f; N], &audio, &audio, &Stub(face_box()));
    assert_eq!(a.debug.penalties.mouth_occlusion, 1.0);
}

#[test]
fn desync_spikes_read_time_not_lags() {
    let env = envelope(26);
    let audio = speech_like(&env, 27);
    // In sync except for two stretches where the mouth follows something else.
    let mut rng = Lcg(28);
    let drive: Vec<f64> = (0..N)
        .map(|i| {
            if (20..28).contains(&i) || (50..58).contains(&i) {
                0.5 * rng.next()
            } else {
                env[i]
            }
        })
        .collect();
    let a = run(&talking_frames(&drive), &audio, &audio, &Stub(face_box()));
    let p = &a.debug.penalties;
    let lag = a.debug.lipsync.best_lag.unsigned_abs() as usize;
    assert_eq!(p.desync_values, N - lag - lipsync::local_window(N) + 1);
    let clean = run(&talking_frames(&env), &audio, &audio, &Stub(face_box()));
    assert!(p.desync_spikes >= clean.debug.penalties.desync_spikes, "{p:?}");
}

#[test]
fn malformed_and_empty_inputs_are_reported_not_hidden() {
    let reference = base_frame();
    let det = Stub(face_box());
    let media = Media {
        frames: &[],
        fps: f64::NAN,
        video_audio: &[],
        source_audio: &[],
        reference_face: &reference,
    };
    let a = analyse(&media, &det, None, None);
    assert_unit(&a);
    assert!(a.debug.issues.contains(&AnalysisIssue::NoFrames));
    assert_eq!(a.debug.frame_format, None);
    assert!(a.has_validator_issue());
    let bad = Frame::rgb(10, 10, vec![1, 2, 3]);
    let nan_audio = vec![f32::NAN; 100];
    let frames = vec![bad, base_frame()];
    let media = Media {
        frames: &frames,
        fps: 25.0,
        video_audio: &nan_audio,
        source_audio: &nan_audio,
        reference_face: &reference,
    };
    let a = analyse(&media, &det, Some(""), Some(""));
    assert_unit(&a);
    assert_eq!(a.debug.frame_format, Some(PixelFormat::Rgb24));
    assert!(
        a.debug
            .issues
            .contains(&AnalysisIssue::MalformedFrames { count: 1 })
    );
    assert!(
        a.debug
            .issues
            .contains(&AnalysisIssue::NonFiniteVideoAudio { samples: 100 })
    );
    assert!(a.debug.issues.contains(&AnalysisIssue::WerUnavailable {
        reason: WerUnavailable::NoReference
    }));
    // An unusable reference face: identity unavailable, flagged on the validator's side.
    let media = Media {
        frames: &frames,
        fps: 25.0,
        video_audio: &[],
        source_audio: &[],
        reference_face: &Frame::default(),
    };
    let a = analyse(&media, &det, None, None);
    assert_eq!(a.components.identity_mode, IdentityMode::Unavailable);
    assert!(
        a.debug
            .issues
            .iter()
            .any(|i| matches!(i, AnalysisIssue::IdentityUnavailable { .. }))
    );
    assert!(serde_json::to_string(&a.debug).is_ok());
}

#[test]
fn identity_of_the_reference_itself_is_high() {
    let env = envelope(29);
    let audio = speech_like(&env, 30);
    let a = run(&talking_frames(&env), &audio, &audio, &Stub(face_box()));
    assert!(a.components.identity > 0.9, "{}", a.components.identity);
    assert!(a.debug.temporal.id_consistency > 0.9);
}

// ---------------------------------------------------------------------------------------------------
// The whole pipeline with the builtin detector

#[test]
fn haar_pipeline_on_a_fixture_portrait_with_timing() {
    let Some((det, faces)) = crate::analysis::face::tests::haar_and_faces() else {
        return;
    };
    let face = faces[0].1.clone();
    let b = crate::analysis::face::largest(&det.detect(&face)).unwrap();
    // 80 frames of the portrait whose mouth region (from the detected box) changes with the envelope.
    let env = envelope(31);
    let audio = speech_like(&env, 32);
    let (w, h) = (face.width as usize, face.height as usize);
    let r = lipsync::mouth_rect(&b, w, h).unwrap();
    let states = mouth_states(&env);
    let frames: Vec<Frame> = (0..N)
        .map(|i| {
            let mut f = face.clone();
            let d = states[i] * 50.0 / 60.0;
            for y in r[1]..r[3] {
                for x in r[0]..r[2] {
                    let k = (y * w + x) * 3;
                    for c in 0..3 {
                        f.pixels[k + c] = (f64::from(f.pixels[k + c]) + d).clamp(0.0, 255.0) as u8;
                    }
                }
            }
            f
        })
        .collect();
    let media = Media {
        frames: &frames,
        fps: 25.0,
        video_audio: &audio,
        source_audio: &audio,
        reference_face: &face,
    };
    let a = analyse(&media, &det, None, None);
    assert_unit(&a);
    assert_eq!(a.debug.detector, "haar");
    assert!(
        a.components.face_detect_ratio > 0.95,
        "{}",
        a.components.face_detect_ratio
    );
    assert!(a.components.sync_c > 0.7, "{:?}", a.debug.lipsync);
    assert!(a.components.identity > 0.9);
    let q = quality(&a);
    assert!(q.quality_score > 0.0, "{q:?}");
    // Timing, printed with --nocapture: the best of a few runs (a shared box inflates single runs),
    // with the main parts measured the same way. Unoptimised builds only check the results.
    if cfg!(debug_assertions) {
        eprintln!("analyse timing: run the tests with --release");
        return;
    }
    let best = |run: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::INFINITY, f64::min)
    };
    let total = best(&|| {
        std::hint::black_box(analyse(&media, &det, None, None));
    });
    let track = best(&|| {
        std::hint::black_box(crate::analysis::face::track_largest(&det, &frames));
    });
    let boxes = crate::analysis::face::track_largest(&det, &frames);
    let facts = best(&|| {
        std::hint::black_box(FrameFacts::compute(&frames, &boxes));
    });
    let matching = best(&|| {
        std::hint::black_box(audio_match(&audio, &audio));
    });
    eprintln!(
        "analyse (80 frames 512×512 + 5 s audio, haar): {total:.1} ms = faces {track:.1} + per-frame pixels \
         {facts:.1} + audio match {matching:.1} + rest; {:?}",
        a.components
    );
}
