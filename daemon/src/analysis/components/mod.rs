//! The native analysis components: pure functions from decoded media to the per-challenge
//! [`ChallengeComponents`] the scoring core consumes (docs/reference.md#scoring-components, with the fixes of
//! docs/reference.md#weaknesses listed in `docs/scoring.md`, "Analysis components: deviations from the
//! reference").
//!
//! Owns: the input types ([`Frame`], [`Media`], [`FaceBox`]), the one-pass per-frame facts every
//! component shares, and [`analyse`] / [`analyse_with`], which run the face detector over the sampled
//! frames and compute identity, lipsync, video, audio, temporal, the seven penalties and the
//! transcript gate (WER when an ASR hypothesis is given, else the audio-match check), with the terms
//! of the configured [`ScoringProfile`] ([`hardened`] by default, or the reference's).
//!
//! Must not: decode files, spawn processes, read a clock, log, or use randomness — the same media give
//! the same [`Analysis`] — and must not panic on any input (empty, malformed, NaN). A measurement that
//! cannot be made is never silently replaced by a value that zeroes a miner or passes a gate: it is
//! reported in [`AnalysisDebug::issues`], each issue tagged with who is responsible
//! ([`IssueOrigin`]), so the caller can refuse to charge a miner for a validator-side problem.

pub mod audio;
pub mod audio_match;
pub mod hardened;
pub mod identity;
pub(crate) use super::image;
pub mod lipsync;
pub mod mouth_motion;
pub mod penalties;
mod stats;
pub mod temporal;
pub mod video;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde::Serialize;

pub use crate::analysis::face::{FaceBox, IdentityBackend, IdentityError, IdentityInput};
pub use audio::{AudioDetail, WerUnavailable, wer};
pub use audio_match::{AUDIO_MATCH_THRESHOLD, AudioMatch, audio_match};
pub use identity::{HistogramIdentity, IdentityDetail};
pub use lipsync::{LipsyncDetail, LipsyncStatus};
pub use penalties::PenaltyDetail;
pub use temporal::TemporalDetail;
pub use video::VideoDetail;

use crate::analysis::face::{FaceDetector, FaceTracker};
use crate::scoring::{ChallengeComponents, IdentityMode, ScoringProfile};
pub use image::Grey;
use image::{PlaneStats, laplacian_variance, mean_abs_diff, plane_stats};

/// One decoded frame (RGB24, or grey for backends that read no colour): the decoder's type, so decoded
/// frames reach the components without a copy.
pub use crate::analysis::decode::{Frame, PixelFormat};

/// Everything one challenge's analysis reads, already decoded.
#[derive(Debug, Clone, Copy)]
pub struct Media<'a> {
    /// The sampled frames of the output (up to 80, evenly spaced, docs/reference.md#scoring-preprocessing).
    pub frames: &'a [Frame],
    /// The output's frame rate (validated; the components work on the sampled frames).
    pub fps: f64,
    /// The output's audio track, mono 16 kHz.
    pub video_audio: &'a [f32],
    /// The challenge audio, mono 16 kHz.
    pub source_audio: &'a [f32],
    /// The decoded challenge face, RGB.
    pub reference_face: &'a Frame,
}

/// Knobs of the analysis that are not reference constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalysisOptions {
    /// Audio-match similarity needed to pass the transcript gate when WER is unavailable (clamped to
    /// `[0, 1]`; a non-finite value means [`AUDIO_MATCH_THRESHOLD`]).
    pub audio_match_threshold: f64,
    /// Which formulas the terms are computed with (`scoring.profile`; the hardened ones by default).
    /// [`analyse_followed`] takes it from its [`FramePass`] instead, which measured the frames for it.
    pub profile: ScoringProfile,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        Self {
            audio_match_threshold: AUDIO_MATCH_THRESHOLD,
            profile: ScoringProfile::default(),
        }
    }
}

/// Who an [`AnalysisIssue`] is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueOrigin {
    /// A property of the miner's output; the scores already account for it.
    Miner,
    /// A problem on the validator's host (a decoder or backend failure, a broken internal contract): the
    /// caller treats the challenge as an infrastructure failure and retries the run, never scoring the
    /// miner on it.
    Validator,
    /// A property of the round's challenge (silent or corrupt challenge audio, no usable face in the
    /// challenge image): the same for every miner of the round, so a retry cannot fix it; the scores
    /// already keep it neutral (no miner is zeroed for it) and it is reported.
    Challenge,
    /// Expected, informational (e.g. no ASR configured).
    Info,
}

/// Something the analysis could not measure or had to work around, reported instead of hidden.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "issue", rename_all = "snake_case")]
pub enum AnalysisIssue {
    /// No frames were given.
    NoFrames,
    /// Frames whose buffer does not match their size (treated as undecodable).
    MalformedFrames {
        /// How many.
        count: usize,
    },
    /// The frame rate is not a positive finite number.
    InvalidFps {
        /// The value given.
        fps: f64,
    },
    /// NaN/±inf samples in the output audio, replaced by 0.
    NonFiniteVideoAudio {
        /// How many.
        samples: usize,
    },
    /// NaN/±inf samples in the challenge audio, replaced by 0.
    NonFiniteSourceAudio {
        /// How many.
        samples: usize,
    },
    /// The output has no audio samples at all.
    NoVideoAudio,
    /// The challenge audio has no active speech, so the audio-match check cannot judge the output.
    SourceAudioSilent,
    /// `sync_c`/`sync_d` were not measurable; they are reported as 0/1.
    LipsyncNotMeasured {
        /// Why.
        status: LipsyncStatus,
    },
    /// The identity backend produced no similarities; identity is 0 and the mode `unavailable`.
    IdentityUnavailable {
        /// Why.
        reason: String,
        /// The challenge's face was unusable (rather than the backend failing).
        reference_unusable: bool,
    },
    /// WER could not be computed; the audio-match check is the transcript gate instead.
    WerUnavailable {
        /// Why.
        reason: WerUnavailable,
    },
    /// With WER unavailable, the output's audio does not match the challenge audio: the challenge
    /// scores 0 (via `components.wer = 1`).
    AudioMatchFailed {
        /// Measured similarity.
        similarity: f64,
        /// Threshold it missed.
        threshold: f64,
    },
}

impl AnalysisIssue {
    /// Who the issue is charged to.
    pub fn origin(&self) -> IssueOrigin {
        match self {
            Self::NoFrames
            | Self::MalformedFrames { .. }
            | Self::InvalidFps { .. }
            | Self::IdentityUnavailable {
                reference_unusable: false,
                ..
            } => IssueOrigin::Validator,
            Self::NonFiniteSourceAudio { .. }
            | Self::SourceAudioSilent
            | Self::IdentityUnavailable {
                reference_unusable: true,
                ..
            } => IssueOrigin::Challenge,
            Self::NonFiniteVideoAudio { .. }
            | Self::NoVideoAudio
            | Self::LipsyncNotMeasured { .. }
            | Self::AudioMatchFailed { .. } => IssueOrigin::Miner,
            Self::WerUnavailable { .. } => IssueOrigin::Info,
        }
    }
}

/// Which check stood in for the reference's `wer > 0.6` hard fail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TranscriptGate {
    /// WER against the transcript; `components.wer` is this WER (the scoring core applies 0.6).
    Wer {
        /// The WER.
        wer: f64,
    },
    /// No WER: the audio-match check decided; `components.wer` is 0 when it passed and 1 when it
    /// failed, so that the scoring core's hard fail zeroes a mismatch.
    AudioMatch {
        /// Similarity measured.
        similarity: f64,
        /// Threshold applied.
        threshold: f64,
        /// `similarity >= threshold`.
        passed: bool,
    },
    /// Neither could be made (the challenge audio is silent): a validator-side issue is raised and
    /// `components.wer` is 0 so that the miner is not zeroed for it.
    Unavailable,
}

/// Everything behind the components, for `debug` output and for operators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisDebug {
    /// Face detector used.
    pub detector: &'static str,
    /// Identity backend used.
    pub identity_backend: &'static str,
    /// Identity mode reported to the scoring core.
    pub identity_mode: IdentityMode,
    /// Which formulas the terms were computed with (`scoring.profile`).
    pub profile: ScoringProfile,
    /// Frames analysed.
    pub frames: usize,
    /// What the frames were: `rgb24`, or `grey` (the decoder's luma, for backends that read no colour;
    /// docs/scoring.md, "One colour order"). `None` without frames.
    pub frame_format: Option<PixelFormat>,
    /// Frames with a face.
    pub frames_with_face: usize,
    /// `frames_with_face / frames` (from the detector in every identity mode).
    pub face_detect_ratio: f64,
    /// `sync_c` as given to the scoring core.
    pub sync_c: f64,
    /// `sync_d` as given to the scoring core.
    pub sync_d: f64,
    /// The WER, or `None` when unavailable (never a made-up value).
    pub wer: Option<f64>,
    /// `wer.is_some()`.
    pub wer_available: bool,
    /// Audio-match similarity (computed in every case; gates only without WER).
    pub audio_match: Option<f64>,
    /// Audio-match details.
    pub audio_match_detail: Option<AudioMatch>,
    /// Which check is the transcript gate.
    pub transcript_gate: TranscriptGate,
    /// Identity details.
    pub identity: IdentityDetail,
    /// Lipsync details.
    pub lipsync: LipsyncDetail,
    /// Audio details.
    pub audio: AudioDetail,
    /// Video details.
    pub video: VideoDetail,
    /// Temporal details.
    pub temporal: TemporalDetail,
    /// Every penalty.
    pub penalties: PenaltyDetail,
    /// What could not be measured, and whose problem it is.
    pub issues: Vec<AnalysisIssue>,
}

/// The result of one challenge's analysis.
///
/// `components.wer` is the transcript-gate input of the scoring core: the WER when available, else
/// 0/1 from the audio-match check (see [`TranscriptGate`]); report `debug.wer` (an `Option`) as the
/// WER, never `components.wer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// What the scoring core consumes.
    pub components: ChallengeComponents,
    /// How they were obtained.
    pub debug: AnalysisDebug,
}

impl Analysis {
    /// True when some issue is on the validator's host (the caller should not charge the miner).
    pub fn has_validator_issue(&self) -> bool {
        self.validator_issues().next().is_some()
    }

    /// The issues on the validator's host, which make the challenge an infrastructure failure.
    pub fn validator_issues(&self) -> impl Iterator<Item = &AnalysisIssue> {
        self.debug
            .issues
            .iter()
            .filter(|i| i.origin() == IssueOrigin::Validator)
    }
}

/// Per-frame facts computed once and shared by the components.
#[derive(Debug, Clone, Default)]
pub(crate) struct FrameFacts {
    /// `(width, height)` per well-formed frame.
    pub sizes: Vec<Option<(usize, usize)>>,
    /// One-pass statistics per frame.
    pub stats: Vec<Option<PlaneStats>>,
    /// Laplacian variance per frame.
    pub laplacian_var: Vec<Option<f64>>,
    /// Mean |Δgrey| of each consecutive pair `(i, i + 1)` (`n − 1` values).
    pub frame_diffs: Vec<Option<f64>>,
    /// [`hardened::face_change`] of each consecutive pair (`n − 1` values; empty unless the pass
    /// measured for the hardened profile).
    pub face_changes: Vec<Option<f64>>,
    /// The mouth's share of each pair's face change ([`hardened::PairChange::mouth`]; `n − 1`
    /// values, empty unless the pass measured for the hardened profile).
    pub mouth_changes: Vec<Option<f64>>,
    /// The mouth's signed change of each pair ([`hardened::PairChange::mouth_field`]; as above).
    pub mouth_fields: Vec<Option<mouth_motion::MouthField>>,
    /// Mouth signal and ROI variance per frame (from `boxes`).
    pub mouth: lipsync::MouthTrack,
    /// Malformed frames.
    pub malformed: usize,
}

impl FrameFacts {
    /// One sweep over the frames (see [`FrameFactsBuilder`]).
    #[cfg(test)]
    pub(crate) fn compute(frames: &[Frame], boxes: &[Option<FaceBox>]) -> Self {
        let mut builder = FrameFactsBuilder::default();
        for (i, f) in frames.iter().enumerate() {
            builder.push(f, boxes.get(i).and_then(Option::as_ref));
        }
        builder.finish()
    }
}

/// [`FrameFacts`] one frame at a time. Only the current and the previous grey plane are alive, so
/// every per-frame pass after the conversion to grey (a copy for a grey frame) runs on a plane still
/// in cache.
#[derive(Default)]
pub(crate) struct FrameFactsBuilder {
    facts: FrameFacts,
    mouth: lipsync::MouthTracker,
    /// Two planes, swapped every frame: no per-frame allocation.
    cur: Grey,
    prev: Grey,
    cur_ok: bool,
    prev_ok: bool,
    seen: usize,
    /// Measure [`FrameFacts::face_changes`] (the hardened profile).
    hardened: bool,
}

impl FrameFactsBuilder {
    /// Adds the sequence's next frame with its face box.
    #[cfg(test)]
    pub(crate) fn push(&mut self, frame: &Frame, face: Option<&FaceBox>) {
        self.convert(frame);
        self.measure(face);
    }

    /// First half of [`Self::push`]: the next frame's grey plane, which [`Self::grey`] then shows
    /// (the face detector works on it too) until [`Self::measure`] is called.
    pub(crate) fn convert(&mut self, frame: &Frame) {
        self.cur_ok = self.cur.fill_from(frame);
    }

    /// The grey plane of the frame [`Self::convert`]ed last (`None`: a malformed frame).
    pub(crate) fn grey(&self) -> Option<&Grey> {
        self.cur_ok.then_some(&self.cur)
    }

    /// Second half of [`Self::push`]: the facts of the frame converted last, with its face box.
    pub(crate) fn measure(&mut self, face: Option<&FaceBox>) {
        let facts = &mut self.facts;
        let ok = self.cur_ok;
        let g = ok.then_some(&self.cur);
        facts.malformed += usize::from(!ok);
        facts.sizes.push(g.map(|g| (g.w, g.h)));
        facts.stats.push(g.and_then(plane_stats));
        facts.laplacian_var.push(g.and_then(laplacian_variance));
        if self.seen > 0 {
            facts.frame_diffs.push(match (self.prev_ok, g) {
                (true, Some(b)) => mean_abs_diff(b, &self.prev),
                _ => None,
            });
            if self.hardened {
                let change = match (self.prev_ok, g) {
                    (true, Some(b)) => hardened::pair_change(&self.prev, b, face),
                    _ => None,
                };
                facts.face_changes.push(change.as_ref().map(|c| c.face));
                facts.mouth_changes.push(change.as_ref().and_then(|c| c.mouth));
                facts.mouth_fields.push(change.and_then(|c| c.mouth_field));
            }
        }
        self.mouth.push(self.prev_ok.then_some(&self.prev), g, face);
        std::mem::swap(&mut self.cur, &mut self.prev);
        self.prev_ok = ok;
        self.seen += 1;
    }

    /// The facts of every frame pushed.
    pub(crate) fn finish(mut self) -> FrameFacts {
        self.facts.mouth = self.mouth.finish();
        self.facts
    }
}

/// The per-frame half of [`analyse_with`] (following the face and the per-frame pixel passes), fed
/// one frame at a time, so that it can run while the decoder is still delivering frames; what it
/// produces goes to [`analyse_followed`].
pub struct FramePass<'d> {
    detector: &'d dyn FaceDetector,
    profile: ScoringProfile,
    tracker: FaceTracker,
    boxes: Vec<Option<FaceBox>>,
    facts: FrameFactsBuilder,
}

/// What a [`FramePass`] saw.
pub struct FramesFollowed {
    detector: &'static str,
    profile: ScoringProfile,
    boxes: Vec<Option<FaceBox>>,
    facts: FrameFacts,
}

impl<'d> FramePass<'d> {
    /// A pass that follows faces with `detector`, for the default (hardened) profile.
    pub fn new(detector: &'d dyn FaceDetector) -> Self {
        Self::with_profile(detector, ScoringProfile::default())
    }

    /// A pass that follows faces with `detector` and measures what `profile`'s terms read.
    pub fn with_profile(detector: &'d dyn FaceDetector, profile: ScoringProfile) -> Self {
        FramePass {
            detector,
            profile,
            tracker: FaceTracker,
            boxes: Vec::new(),
            facts: FrameFactsBuilder {
                hardened: profile == ScoringProfile::Hardened,
                ..FrameFactsBuilder::default()
            },
        }
    }

    /// Adds the sequence's next frame.
    pub fn push(&mut self, frame: &Frame) {
        // One conversion to grey per frame (a copy when the decoder delivered grey), shared by the
        // detector and the pixel passes.
        self.facts.convert(frame);
        let face = self
            .tracker
            .next_with_grey(self.detector, frame, self.facts.grey());
        self.facts.measure(face.as_ref());
        self.boxes.push(face);
    }

    /// The faces and facts of every frame pushed.
    pub fn finish(self) -> FramesFollowed {
        FramesFollowed {
            detector: self.detector.name(),
            profile: self.profile,
            boxes: self.boxes,
            facts: self.facts.finish(),
        }
    }
}

/// The samples with NaN/±inf replaced by 0, and how many were replaced (borrowed when clean).
fn finite_audio(x: &[f32]) -> (Cow<'_, [f32]>, usize) {
    let bad = x.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        (Cow::Borrowed(x), 0)
    } else {
        (
            Cow::Owned(x.iter().map(|&v| if v.is_finite() { v } else { 0.0 }).collect()),
            bad,
        )
    }
}

/// What the analysis needs beside the media and the faces: the identity backend, the transcripts and
/// the options.
#[derive(Clone, Copy)]
pub struct AnalysisContext<'a> {
    /// Computes the per-frame identity similarities.
    pub identity: &'a dyn IdentityBackend,
    /// The challenge's reference text (`text.txt`).
    pub transcript: Option<&'a str>,
    /// The ASR transcript of the output's audio; `None` when no ASR backend is configured.
    pub hypothesis: Option<&'a str>,
    /// Knobs that are not reference constants.
    pub options: AnalysisOptions,
}

impl<'a> AnalysisContext<'a> {
    /// The builtin identity backend ([`HistogramIdentity`]) and default options.
    pub fn builtin(transcript: Option<&'a str>, hypothesis: Option<&'a str>) -> Self {
        AnalysisContext {
            identity: &HistogramIdentity,
            transcript,
            hypothesis,
            options: AnalysisOptions::default(),
        }
    }
}

/// [`analyse_with`] with [`AnalysisContext::builtin`].
pub fn analyse(
    media: &Media<'_>,
    detector: &dyn FaceDetector,
    transcript: Option<&str>,
    hypothesis: Option<&str>,
) -> Analysis {
    analyse_with(media, detector, &AnalysisContext::builtin(transcript, hypothesis))
}

/// Analyses one challenge's output. Never panics; see [`Analysis`].
pub fn analyse_with(
    media: &Media<'_>,
    detector: &dyn FaceDetector,
    context: &AnalysisContext<'_>,
) -> Analysis {
    let mut pass = FramePass::with_profile(detector, context.options.profile);
    for frame in media.frames {
        pass.push(frame);
    }
    analyse_matched(media, pass.finish(), context)
}

/// A [`FramePass`] that did not see the frames it was analysed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the per-frame pass saw {followed} frames, the analysis was given {frames}")]
pub struct FramePassMismatch {
    /// Frames the pass saw.
    pub followed: usize,
    /// Frames in the media.
    pub frames: usize,
}

/// [`analyse_with`] after its per-frame half, which a [`FramePass`] already ran (while the decoder
/// was delivering the frames): `followed` must have seen exactly `media.frames`, in order. A pass
/// over another number of frames is refused (the caller's bug, never the miner's). The terms are
/// computed with the profile the pass measured for ([`FramePass::with_profile`]).
pub fn analyse_followed(
    media: &Media<'_>,
    followed: FramesFollowed,
    context: &AnalysisContext<'_>,
) -> Result<Analysis, FramePassMismatch> {
    if followed.boxes.len() != media.frames.len() {
        return Err(FramePassMismatch {
            followed: followed.boxes.len(),
            frames: media.frames.len(),
        });
    }
    Ok(analyse_matched(media, followed, context))
}

fn analyse_matched(media: &Media<'_>, followed: FramesFollowed, context: &AnalysisContext<'_>) -> Analysis {
    let AnalysisContext {
        identity: identity_backend,
        transcript,
        hypothesis,
        options,
    } = *context;
    let mut issues = Vec::new();
    let frames = media.frames;
    let n = frames.len();
    if n == 0 {
        issues.push(AnalysisIssue::NoFrames);
    }
    if !(media.fps.is_finite() && media.fps > 0.0) {
        issues.push(AnalysisIssue::InvalidFps { fps: media.fps });
    }
    let (video_audio, bad_v) = finite_audio(media.video_audio);
    let (source_audio, bad_s) = finite_audio(media.source_audio);
    if bad_v > 0 {
        issues.push(AnalysisIssue::NonFiniteVideoAudio { samples: bad_v });
    }
    if bad_s > 0 {
        issues.push(AnalysisIssue::NonFiniteSourceAudio { samples: bad_s });
    }
    if video_audio.is_empty() {
        issues.push(AnalysisIssue::NoVideoAudio);
    }

    // Faces: the largest per frame, in frame coordinates, from the detector in every identity mode.
    let FramesFollowed {
        detector,
        profile,
        boxes,
        facts,
    } = followed;
    let hardened = profile == ScoringProfile::Hardened;
    if facts.malformed > 0 {
        issues.push(AnalysisIssue::MalformedFrames {
            count: facts.malformed,
        });
    }
    let frames_with_face = boxes.iter().filter(|b| b.is_some()).count();
    let face_detect_ratio = if n == 0 {
        0.0
    } else {
        frames_with_face as f64 / n as f64
    };

    // Identity.
    let hists: Vec<Option<[u32; 64]>> = facts.stats.iter().map(|s| s.map(|s| s.hist)).collect();
    let input = IdentityInput {
        reference: media.reference_face,
        frames,
        faces: &boxes,
        frame_histograms: &hists,
    };
    let (identity, sims) = identity::summarise(identity_backend, identity_backend.similarities(&input), n);
    if let Some(e) = &identity.error {
        issues.push(AnalysisIssue::IdentityUnavailable {
            reason: e.clone(),
            reference_unusable: identity.reference_unusable,
        });
    }

    // Lipsync (and the per-time local correlation the desync penalty reads).
    // The hardened profile's mouth signal is the mouth's share of the face change (a still face under
    // grain, jitter or flicker does not move its mouth); the ROI variance is the reference's.
    let hardened_mouth;
    let mouth = if hardened {
        hardened_mouth = lipsync::MouthTrack {
            signal: std::iter::once(None)
                .chain(facts.mouth_changes.iter().copied())
                .take(n)
                .collect(),
            variance: facts.mouth.variance.clone(),
        };
        &hardened_mouth
    } else {
        &facts.mouth
    };
    let env = lipsync::audio_envelope(&video_audio, n);
    // The hardened profile also asks whether the mouth's change is a mouth moving at all.
    let coherence = hardened.then(|| mouth_motion::coherence(&facts.mouth_fields));
    let lip = lipsync::lipsync(mouth, &env, coherence);
    if lip.status != LipsyncStatus::Measured {
        issues.push(AnalysisIssue::LipsyncNotMeasured { status: lip.status });
    }
    let local = if lip.status == LipsyncStatus::Measured {
        lipsync::local_correlation(&lipsync::signal_or_zero(mouth), &env, lip.best_lag)
    } else {
        Vec::new()
    };

    // The hardened profile: sharpness capped at the challenge face's, loudness capped at the challenge
    // audio's, and each pair counted by how much its mouth moved as the clip's mouth moves (a still
    // pair with change painted on it does not): the freeze penalty is its complement, and the motion
    // term reads the face change of the pairs that moved (docs/scoring.md, "Hardened profile").
    let moved: Vec<Option<f64>> = if hardened {
        let coherent = mouth_motion::coherent_changes(&facts.mouth_fields);
        facts
            .face_changes
            .iter()
            .zip(&coherent)
            .map(|(face, c)| face.map(|_| c.map_or(0.0, |c| c.motion())))
            .collect()
    } else {
        Vec::new()
    };
    let hardened_motion: Vec<Option<f64>>;
    let (motion_diffs, blur_cap) = if hardened {
        let size = facts.sizes.iter().flatten().next().copied();
        let cap = size.and_then(|(w, h)| hardened::reference_sharpness(media.reference_face, w, h));
        hardened_motion = facts
            .face_changes
            .iter()
            .zip(&moved)
            .map(|(face, m)| face.zip(*m).map(|(f, m)| f * m))
            .collect();
        (&hardened_motion, cap)
    } else {
        (&facts.frame_diffs, None)
    };
    let vid = video::video_with(&facts, &boxes, blur_cap, motion_diffs);
    let mut aud = audio::audio(&source_audio, &video_audio, transcript, hypothesis);
    if hardened {
        (aud.audio, aud.audio_quality) = hardened::capped_loudness(&aud, aud.source_audio_energy.sqrt());
    }
    let tmp = temporal::temporal(&sims, &boxes, &mouth.signal);

    let means: Vec<f64> = facts.stats.iter().flatten().map(|s| s.mean).collect();
    let freeze = if hardened {
        penalties::freeze_of(&moved)
    } else {
        penalties::freeze(motion_diffs)
    };
    let pen = penalties::combine(
        freeze,
        penalties::loop_penalty(&means),
        penalties::face_missing(face_detect_ratio),
        penalties::offscreen(&boxes, &facts.sizes),
        penalties::mouth_occlusion(&boxes, &mouth.variance, &env),
        penalties::silent_mismatch(&source_audio, &video_audio),
        penalties::desync_spikes(&local),
    );

    // The transcript gate: WER when available, else the audio-match check.
    let matched = audio_match(&video_audio, &source_audio);
    let (gate, wer_for_core) = match (aud.wer, matched) {
        (Some(w), _) => (TranscriptGate::Wer { wer: w }, w),
        (None, Some(m)) => {
            // A nonsensical option falls back to the documented default rather than failing everyone.
            let threshold = match options.audio_match_threshold {
                t if t.is_finite() => t.clamp(0.0, 1.0),
                _ => AUDIO_MATCH_THRESHOLD,
            };
            let passed = m.similarity >= threshold;
            if !passed {
                issues.push(AnalysisIssue::AudioMatchFailed {
                    similarity: m.similarity,
                    threshold,
                });
            }
            (
                TranscriptGate::AudioMatch {
                    similarity: m.similarity,
                    threshold,
                    passed,
                },
                if passed { 0.0 } else { 1.0 },
            )
        }
        (None, None) => {
            issues.push(AnalysisIssue::SourceAudioSilent);
            (TranscriptGate::Unavailable, 0.0)
        }
    };
    if let Some(reason) = aud.wer_unavailable {
        issues.push(AnalysisIssue::WerUnavailable { reason });
    }

    let components = ChallengeComponents {
        identity: identity.identity,
        lipsync: lip.lipsync,
        audio: aud.audio,
        video: vid.video,
        temporal: tmp.temporal,
        penalty: pen.penalty,
        wer: wer_for_core,
        sync_c: lip.sync_c,
        sync_d: lip.sync_d,
        face_detect_ratio,
        identity_mode: identity.mode,
        // The analysis sees no task; the caller that held the output to it sets this.
        picture_mismatches: 0,
    };
    Analysis {
        components,
        debug: AnalysisDebug {
            detector,
            identity_backend: identity_backend.name(),
            identity_mode: identity.mode,
            profile,
            frames: n,
            frame_format: frames.first().map(|f| f.format),
            frames_with_face,
            face_detect_ratio,
            sync_c: lip.sync_c,
            sync_d: lip.sync_d,
            wer: aud.wer,
            wer_available: aud.wer.is_some(),
            audio_match: matched.map(|m| m.similarity),
            audio_match_detail: matched,
            transcript_gate: gate,
            identity,
            lipsync: lip,
            audio: aud,
            video: vid,
            temporal: tmp,
            penalties: pen,
            issues,
        },
    }
}
