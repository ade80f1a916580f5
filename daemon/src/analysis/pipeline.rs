//! The production [`Analyzer`]: sandboxed decode of the output ([`super::decode`]) beside one blocking
//! worker per analysis, which decodes the challenge's reference face while ffmpeg starts, runs the
//! per-frame half of the components ([`components::FramePass`]) on each sampled frame as ffmpeg
//! delivers it, then, given the decoded audio, the speech recogniser when one is configured
//! ([`super::asr`]) and the rest of the native components ([`super::components`]); the frames'
//! buffers then go back to the analyser's [`FrameBuffers`] for the next decode (up to 128 MiB stay
//! resident between analyses). The challenge's source audio is decoded by ffmpeg with the output's
//! own audio options ([`decode::decode_wav`]: one downmix and one resampler for both sides), beside
//! the output's decode the first time a challenge is analysed, and kept by clip digest for the
//! next miners' runs of that challenge. Owns the glue and
//! the mapping of failures: a bad file is the miner's `bad_output`; anything wrong on the host
//! (including an analysis issue of validator origin) is infrastructure, retried and never scored.

use super::asr::{self, SpeechRecognizer};
use super::components::{
    self, AnalysisContext, AnalysisOptions, Frame, FramePass, HistogramIdentity, IdentityBackend, Media,
};
use super::decode::{self, DecodeError, DecodeLimits, Expectation, PixelFormat};
use super::face::FaceDetector;
use super::frame_buffers::FrameBuffers;
use super::{AnalysisFailure, AnalysisFuture, AnalysisInput, Analyzer, ChallengeAnalysis, PictureMismatch};
use crate::challenges::Challenge;
use crate::scoring::ScoringProfile;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Decode + builtin components.
pub struct MediaAnalyzer {
    limits: DecodeLimits,
    detector: Arc<dyn FaceDetector + Send + Sync>,
    detector_name: String,
    identity: Arc<dyn IdentityBackend + Send + Sync>,
    asr: Option<Arc<dyn SpeechRecognizer>>,
    /// Frame buffers recycled from one analysis to the next (resident memory, no page faults).
    buffers: Arc<FrameBuffers>,
    /// The challenges' source audio, decoded once per clip.
    sources: Arc<SourceAudioCache>,
    /// `scoring.profile`: which formulas the components are computed with.
    profile: ScoringProfile,
    /// `analysis.conformance`: a picture off the task's is refused or scored with a penalty.
    conformance: decode::Conformance,
}

/// Most bytes of decoded source audio the analyser keeps: 64 clips of 30 s (the default challenge
/// limits' most) at 16 kHz take 123 MB, so a whole set stays decoded and no miner's run pays the
/// decode again.
pub const SOURCE_AUDIO_CACHE_BYTES: usize = 128 << 20;

/// Decoded source audio by the clip's SHA-256: every miner's run of a challenge compares against the
/// same clip, so ffmpeg decodes it once per challenge rather than once per analysis. Holds at most
/// [`SOURCE_AUDIO_CACHE_BYTES`] of samples, dropping the least recently used clip first (the newest is
/// always kept).
struct SourceAudioCache {
    /// Least recently used first.
    clips: Mutex<Clips>,
    /// [`SOURCE_AUDIO_CACHE_BYTES`] (smaller in tests).
    budget_bytes: usize,
}

/// Decoded clips by SHA-256, least recently used first.
type Clips = VecDeque<([u8; 32], Arc<[f32]>)>;

impl Default for SourceAudioCache {
    fn default() -> Self {
        SourceAudioCache {
            clips: Mutex::default(),
            budget_bytes: SOURCE_AUDIO_CACHE_BYTES,
        }
    }
}

impl SourceAudioCache {
    fn get(&self, digest: &[u8; 32]) -> Option<Arc<[f32]>> {
        let mut clips = self.clips.lock().unwrap_or_else(PoisonError::into_inner);
        let i = clips.iter().position(|(d, _)| d == digest)?;
        let entry = clips.remove(i)?;
        let samples = Arc::clone(&entry.1);
        clips.push_back(entry);
        Some(samples)
    }

    fn insert(&self, digest: [u8; 32], samples: Arc<[f32]>) {
        let mut clips = self.clips.lock().unwrap_or_else(PoisonError::into_inner);
        // Two analyses of a new challenge may both have decoded it: one copy is enough.
        clips.retain(|(d, _)| *d != digest);
        clips.push_back((digest, samples));
        let bytes = |clips: &Clips| {
            clips
                .iter()
                .map(|(_, s)| s.len() * size_of::<f32>())
                .sum::<usize>()
        };
        while clips.len() > 1 && bytes(&clips) > self.budget_bytes {
            clips.pop_front();
        }
    }
}

impl MediaAnalyzer {
    /// An analyser with these decode limits and face detector.
    pub fn new(
        limits: DecodeLimits,
        detector: Arc<dyn FaceDetector + Send + Sync>,
        detector_name: &str,
    ) -> Self {
        MediaAnalyzer {
            limits,
            detector,
            detector_name: detector_name.to_owned(),
            identity: Arc::new(HistogramIdentity),
            asr: None,
            buffers: Arc::new(FrameBuffers::default()),
            sources: Arc::default(),
            profile: ScoringProfile::default(),
            conformance: decode::Conformance::default(),
        }
    }

    /// The same analyser holding outputs to the task's picture as `conformance` says (default:
    /// strict).
    #[must_use]
    pub fn with_conformance(mut self, conformance: decode::Conformance) -> Self {
        self.conformance = conformance;
        self
    }

    /// The same analyser computing the components with `profile`'s formulas (default: hardened).
    #[must_use]
    pub fn with_profile(mut self, profile: ScoringProfile) -> Self {
        self.profile = profile;
        self
    }

    /// The same analyser with another identity backend (the default is the reference's
    /// `fallback_histogram`; the `onnx` face backend brings ArcFace).
    pub fn with_identity(mut self, identity: Arc<dyn IdentityBackend + Send + Sync>) -> Self {
        self.identity = identity;
        self
    }

    /// The same analyser with a speech recogniser behind the WER (`None`: no ASR).
    #[must_use]
    pub fn with_asr(mut self, asr: Option<Arc<dyn SpeechRecognizer>>) -> Self {
        self.asr = asr;
        self
    }

    /// Grey frames when neither the face detector nor the identity backend reads colour (the builtin
    /// backend), which spares ffmpeg the RGB conversion; RGB otherwise.
    pub fn frame_format(&self) -> PixelFormat {
        if self.detector.reads_colour() || self.identity.reads_colour() {
            PixelFormat::Rgb24
        } else {
            PixelFormat::Grey
        }
    }

    fn asr_name(&self) -> &'static str {
        self.asr.as_ref().map_or("none", |a| a.name())
    }

    /// The challenge's source audio as mono 16 kHz: kept from an earlier analysis of the same clip, or
    /// decoded now ([`decode::decode_wav`]). A failure is the host's (the challenge is the validator's).
    async fn source_audio(&self, challenge: &Challenge) -> Result<Arc<[f32]>, AnalysisFailure> {
        let digest = challenge.audio_sha256();
        if let Some(samples) = self.sources.get(digest) {
            return Ok(samples);
        }
        let samples: Arc<[f32]> = decode::decode_wav(challenge.audio(), &self.limits)
            .await
            .map_err(|e| AnalysisFailure::Infra(e.to_string()))?
            .into();
        self.sources.insert(*digest, Arc::clone(&samples));
        Ok(samples)
    }
}

impl Analyzer for MediaAnalyzer {
    fn analyse<'a>(&'a self, input: AnalysisInput<'a>) -> AnalysisFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let challenge = input.challenge;
            let audio_duration = challenge.audio_info().duration_secs;
            let mut expectation = Expectation::new(audio_duration, input.max_seconds);
            // The task's picture, held as `analysis.conformance` says.
            let frame = input.frame.map(|f| f.with_conformance(self.conformance));
            if let Some(frame) = frame {
                expectation = expectation.with_frame(frame);
            }
            // The analysis runs on one blocking thread, fed each sampled frame as ffmpeg delivers it:
            // before the first frame comes (ffmpeg takes ~100 ms to start) it decodes the challenge's
            // face, then follows the face and runs the pixel passes frame by frame while the rest
            // decodes, then, given both soundtracks (the output's and the challenge's, decoded alike
            // beside the frames), the speech recogniser and the remaining components. One thread for
            // all of it, because the onnx backend attributes a detection failure to the identity
            // computed after it on the same thread.
            let (frame_tx, frame_rx) = std::sync::mpsc::channel::<Frame>();
            let (audio_tx, audio_rx) = std::sync::mpsc::channel::<(f64, Vec<f32>, Arc<[f32]>)>();
            let decode_failed = Arc::new(AtomicBool::new(false));
            let worker = {
                let detector = Arc::clone(&self.detector);
                let identity = Arc::clone(&self.identity);
                let recogniser = self.asr.clone();
                let decode_failed = Arc::clone(&decode_failed);
                let buffers = Arc::clone(&self.buffers);
                let challenge = challenge.clone();
                let profile = self.profile;
                tokio::task::spawn_blocking(move || {
                    // This thread served other analyses before: nothing of theirs may be charged here.
                    crate::analysis::face::forget_detection_failures();
                    let face = decode_face(&challenge);
                    let mut pass = FramePass::with_profile(detector.as_ref(), profile);
                    let mut frames = Vec::new();
                    for frame in frame_rx {
                        // A failed decode is answered without the analysis: stop working on it.
                        if decode_failed.load(Ordering::Relaxed) {
                            break;
                        }
                        pass.push(&frame);
                        frames.push(frame);
                    }
                    let followed = pass.finish();
                    let analysis = (|| {
                        // Nothing comes when the decode failed (its error is the answer).
                        let Ok((fps, video_audio, source_audio)) = audio_rx.recv() else {
                            crate::analysis::face::forget_detection_failures();
                            return Err(AnalysisFailure::Infra(
                                "the decode ended without its audio".into(),
                            ));
                        };
                        let face = face.map_err(AnalysisFailure::Infra)?;
                        let transcript = challenge.text();
                        let (reference, hypothesis) =
                            asr::transcripts(recogniser.as_deref(), transcript, &source_audio, &video_audio)
                                .map_err(|e| AnalysisFailure::Infra(format!("speech recognition: {e}")))?;
                        let media = Media {
                            frames: &frames,
                            fps,
                            video_audio: &video_audio,
                            source_audio: &source_audio,
                            reference_face: &face,
                        };
                        let context = AnalysisContext {
                            identity: identity.as_ref(),
                            transcript: reference.as_deref(),
                            hypothesis: hypothesis.as_deref(),
                            options: AnalysisOptions {
                                profile,
                                ..AnalysisOptions::default()
                            },
                        };
                        components::analyse_followed(&media, followed, &context)
                            .map_err(|e| AnalysisFailure::Infra(e.to_string()))
                    })();
                    buffers.recycle(frames.into_iter().map(|frame| frame.pixels));
                    analysis
                })
            };
            let mut hand_over = move |frame: Frame| {
                // The receiver only goes away if the worker panicked, which its join reports.
                let _ = frame_tx.send(frame);
            };
            let (decoded, source_audio) = tokio::join!(
                decode::probe_and_decode_each(
                    input.video,
                    &self.limits,
                    &expectation,
                    self.frame_format(),
                    &self.buffers,
                    &mut hand_over,
                ),
                self.source_audio(challenge),
            );
            drop(hand_over);
            let decoded = decoded.map_err(|e| match e {
                DecodeError::BadOutput(b) => AnalysisFailure::BadOutput {
                    reason: b.reason.as_str().to_owned(),
                    detail: b.detail,
                },
                DecodeError::Infra(reason) => AnalysisFailure::Infra(reason),
            });
            // The output's verdict first: a bad file is the miner's whatever became of the source.
            let mut picture_mismatches = Vec::new();
            match decoded.and_then(|decoded| Ok((decoded, source_audio?))) {
                Ok(((info, d), source_audio)) => {
                    // Under strict conformance a mismatch was already refused; under penalty it is
                    // scored below.
                    if let Some(spec) = frame {
                        picture_mismatches = info
                            .picture_mismatches(&spec)
                            .into_iter()
                            .map(|m| PictureMismatch {
                                reason: m.reason.as_str().to_owned(),
                                detail: m.detail,
                            })
                            .collect();
                    }
                    // The worker only goes away if it panicked, which its join reports.
                    let _ = audio_tx.send((d.fps, d.audio, source_audio));
                }
                Err(e) => {
                    // The worker stops at its next frame and ends on its own.
                    decode_failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            let mut analysis = worker
                .await
                .map_err(|e| AnalysisFailure::Infra(format!("analysis worker failed: {e}")))??;
            analysis.components.picture_mismatches = picture_mismatches.len() as u32;
            // Something that went wrong on this host is never the miner's score: the run is retried.
            if analysis.has_validator_issue() {
                let issues: Vec<String> = analysis
                    .validator_issues()
                    .map(|i| serde_json::to_string(i).unwrap_or_else(|_| format!("{i:?}")))
                    .collect();
                return Err(AnalysisFailure::Infra(format!(
                    "the analysis failed on the host: {}",
                    issues.join(", ")
                )));
            }
            Ok(ChallengeAnalysis {
                components: analysis.components,
                debug: analysis.debug,
                asr_backend: self.asr_name(),
                analysis_secs: started.elapsed().as_secs_f64(),
                profile: self.profile,
                picture_mismatches,
            })
        })
    }

    fn describe(&self) -> String {
        format!(
            "ffmpeg decode + builtin components ({} face detector, {} identity, {} speech recogniser, {} scoring profile)",
            self.detector_name,
            self.identity.name(),
            self.asr_name(),
            self.profile.as_str()
        )
    }
}

/// The challenge face as an RGB frame (it was validated, by the same decoder, when the challenge was
/// loaded).
pub fn decode_face(challenge: &Challenge) -> Result<Frame, String> {
    let face = crate::challenges::decode_rgb(challenge.face()).map_err(|e| format!("reference face: {e}"))?;
    Ok(Frame::rgb(face.width, face.height, face.pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_audio_cache_keeps_the_most_recently_used_clips_within_its_budget() {
        let cache = SourceAudioCache {
            clips: Mutex::default(),
            budget_bytes: 3 * 100 * size_of::<f32>(),
        };
        let clip = |n: usize| -> Arc<[f32]> { vec![0.5; n].into() };
        let (a, b, c, d) = ([1; 32], [2; 32], [3; 32], [4; 32]);
        cache.insert(a, clip(100));
        cache.insert(b, clip(100));
        cache.insert(c, clip(100));
        let kept = cache.get(&a).unwrap();
        assert!(
            Arc::ptr_eq(&kept, &cache.get(&a).unwrap()),
            "a hit is the kept clip, not a copy"
        );
        // Over the budget: the least recently used (b, since a was just read) goes.
        cache.insert(d, clip(100));
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some() && cache.get(&d).is_some());
        // The same clip decoded twice (two analyses of a new challenge) is kept once.
        cache.insert(d, clip(100));
        assert_eq!(cache.clips.lock().unwrap().len(), 3);
        // A clip larger than the whole budget is still kept (alone): the analysis in flight uses it.
        cache.insert(b, clip(1000));
        assert_eq!(cache.clips.lock().unwrap().len(), 1);
        assert!(cache.get(&b).is_some());
    }

    #[tokio::test]
    async fn the_source_audio_is_decoded_once_per_clip_like_the_output_soundtrack() {
        let dir = tempfile::TempDir::new().unwrap();
        let (_, challenge) = face_clip_and_challenge(dir.path());
        let analyzer = MediaAnalyzer::new(DecodeLimits::default(), haar(), "haar");
        let first = analyzer.source_audio(&challenge).await.unwrap();
        assert_eq!(
            *first,
            *decode::decode_wav(challenge.audio(), &DecodeLimits::default())
                .await
                .unwrap()
        );
        // 2 s at 16 kHz.
        assert_eq!(first.len(), 32_000);
        // Another miner's run of the same challenge: the same samples, not decoded again.
        let again = analyzer.source_audio(&challenge).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // A tool that cannot run fails the analysis as the host's fault, never the miner's.
        let mut limits = DecodeLimits::default();
        limits.tools.ffmpeg = "/nonexistent/ffmpeg".into();
        let broken = MediaAnalyzer::new(limits, haar(), "haar");
        assert!(matches!(
            broken.source_audio(&challenge).await,
            Err(AnalysisFailure::Infra(_))
        ));
    }

    /// A 2 s clip of the first fixture face, gently turning, over a 440 Hz tone, and the challenge it
    /// answers (the same face and tone).
    fn face_clip_and_challenge(dir: &std::path::Path) -> (std::path::PathBuf, Challenge) {
        let face = crate::analysis::face::tests::fixtures_dir().join("challenge-0/face.png");
        let (clip, wav) = (dir.join("clip.mp4"), dir.join("audio.wav"));
        // The clip and audio as the decode bench makes them (tests/common/media.rs), 2 s long.
        crate::analysis::test_media::face_over_tone(&face, 2.0, &clip, &wav);
        let challenge = Challenge::new(
            crate::challenges::ChallengeId::from_index(0),
            std::fs::read(&face).unwrap(),
            std::fs::read(&wav).unwrap(),
            None,
            &crate::challenges::Limits::default(),
        )
        .unwrap();
        (clip, challenge)
    }

    fn haar() -> Arc<dyn FaceDetector + Send + Sync> {
        let (detector, _) = crate::analysis::face::tests::haar_and_faces().unwrap();
        Arc::new(detector)
    }

    #[tokio::test]
    async fn frames_followed_during_the_decode_give_the_same_analysis_as_after_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let (clip, challenge) = face_clip_and_challenge(dir.path());
        let limits = DecodeLimits::default();
        let detector = haar();
        let analyzer = MediaAnalyzer::new(limits.clone(), Arc::clone(&detector), "haar");
        let input = AnalysisInput {
            video: &clip,
            challenge: &challenge,
            max_seconds: 2.0,
            frame: None,
        };
        // Haar and the histogram identity read grey only: the decoder delivers the luma plane.
        assert_eq!(analyzer.frame_format(), PixelFormat::Grey);
        let streamed = analyzer.analyse(input).await.unwrap();

        // The same analysis, in two steps: decode every sampled frame, then all the components.
        let batch = |format| {
            let (limits, detector, challenge) = (&limits, &detector, &challenge);
            let clip = &clip;
            async move {
                let (buffers, mut frames) = (FrameBuffers::new(0), Vec::new());
                let mut keep = |frame| frames.push(frame);
                let expectation = Expectation::new(2.0, 2.0);
                let (_, decoded) =
                    decode::probe_and_decode_each(clip, limits, &expectation, format, &buffers, &mut keep)
                        .await
                        .unwrap();
                let face = decode_face(challenge).unwrap();
                let source = decode::decode_wav(challenge.audio(), limits).await.unwrap();
                let media = Media {
                    frames: &frames,
                    fps: decoded.fps,
                    video_audio: &decoded.audio,
                    source_audio: &source,
                    reference_face: &face,
                };
                let analysis = components::analyse(&media, detector.as_ref(), None, None);
                (frames, analysis)
            }
        };
        let (frames, grey) = batch(PixelFormat::Grey).await;
        assert_eq!(frames.len(), 50);
        assert_eq!(streamed.debug.frames, 50);
        assert_eq!(streamed.debug.frame_format, Some(PixelFormat::Grey));
        assert!(streamed.debug.frames_with_face > 40, "{:?}", streamed.debug);
        assert_eq!(streamed.components, grey.components);
        assert_eq!(streamed.debug.issues, grey.debug.issues);

        // The decoder's luma is the RGB frames' grey up to rounding: the same faces, the pixel
        // components within a hair of those of RGB frames. (Not lipsync here: over a steady tone
        // the mouth signal and the envelope are both noise, and their correlation moves with any
        // rounding; docs/scoring.md has both formats on talking clips.)
        let (_, rgb) = batch(PixelFormat::Rgb24).await;
        assert_eq!(rgb.debug.frames_with_face, grey.debug.frames_with_face);
        let (g, c) = (&grey.components, &rgb.components);
        for (name, a, b) in [
            ("identity", g.identity, c.identity),
            ("video", g.video, c.video),
            ("audio", g.audio, c.audio),
            ("temporal", g.temporal, c.temporal),
        ] {
            assert!((a - b).abs() < 0.02, "{name}: grey {a}, rgb {b}");
        }

        // The 50 frames' buffers (and the one the decoder would have filled next) went back to the
        // analyser; the next analysis writes into them and finds exactly the same: no pixel of the
        // previous video reaches it.
        let frame_bytes = frames[0].pixels.len();
        assert_eq!(frame_bytes, 512 * 512, "one byte per pixel");
        assert_eq!(analyzer.buffers.held_bytes(), 51 * frame_bytes);
        let again = analyzer.analyse(input).await.unwrap();
        assert_eq!(again.components, streamed.components);
        assert_eq!(again.debug.issues, streamed.debug.issues);
        assert_eq!(analyzer.buffers.held_bytes(), 51 * frame_bytes);
    }

    /// An identity backend that fails as configured.
    struct FailingIdentity(components::IdentityError);

    impl IdentityBackend for FailingIdentity {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn mode(&self) -> crate::scoring::IdentityMode {
            crate::scoring::IdentityMode::Insightface
        }
        fn similarities(
            &self,
            _: &components::IdentityInput<'_>,
        ) -> Result<Vec<f64>, components::IdentityError> {
            Err(self.0.clone())
        }
    }

    #[tokio::test]
    async fn a_failure_on_the_host_is_infrastructure_and_a_bad_challenge_face_is_scored() {
        let dir = tempfile::TempDir::new().unwrap();
        let (clip, challenge) = face_clip_and_challenge(dir.path());
        let input = AnalysisInput {
            video: &clip,
            challenge: &challenge,
            max_seconds: 2.0,
            frame: None,
        };
        let with = |error: components::IdentityError| {
            MediaAnalyzer::new(DecodeLimits::default(), haar(), "haar")
                .with_identity(Arc::new(FailingIdentity(error)))
        };

        // The backend failed on this host: never the miner's score, the run is retried.
        let backend = with(components::IdentityError::Backend("session lost".into()));
        // A backend that does not say it reads grey only gets RGB frames.
        assert_eq!(backend.frame_format(), PixelFormat::Rgb24);
        match backend.analyse(input).await {
            Err(AnalysisFailure::Infra(reason)) => {
                assert!(reason.contains("identity_unavailable"), "{reason}");
                assert!(reason.contains("session lost"), "{reason}");
            }
            other => panic!("expected an infrastructure failure, got {other:?}"),
        }

        // The challenge's face is unusable: the same for every miner, a retry cannot help, so the
        // output is scored (identity 0 for everyone) and the issue reported as the challenge's.
        let reference = with(components::IdentityError::ReferenceUnusable("no face".into()));
        let scored = reference.analyse(input).await.unwrap();
        assert_eq!(scored.components.identity, 0.0);
        assert!(scored.debug.issues.iter().any(|i| matches!(
            i,
            components::AnalysisIssue::IdentityUnavailable {
                reference_unusable: true,
                ..
            }
        ) && i.origin() == components::IssueOrigin::Challenge));
    }
}
