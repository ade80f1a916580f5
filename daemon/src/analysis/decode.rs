//! Sandboxed probing and decoding of an untrusted output video (docs/reference.md#scoring-preprocessing;
//! docs/reference.md#weakness-4; docs/reference.md#weakness-19).
//!
//! Owns: turning the collected copy of a miner's `{id}.mp4` into validated header facts
//! ([`ProbeInfo`]), the frames the reference samples (up to 80, evenly spaced, **RGB** order, or grey
//! for a caller that reads no colour: [`PixelFormat`]) and the soundtrack as mono 16 kHz `f32`
//! ([`Decoded`]); or into one specific [`BadOutputReason`]. Also the challenge's source clip, through
//! the very same downmix and resampler as the soundtrack ([`decode_wav`]), so that the two sides of
//! every audio comparison are treated alike.
//!
//! How: the header of a plain MP4 is read in-process by a bounded box parser ([`super::mp4`]) that
//! hands ffprobe's fields to the same validation; any other file is probed by ffprobe. Debian's
//! `ffprobe`/`ffmpeg` run as child processes under util-linux `prlimit` (address space,
//! CPU seconds, written file size, 64 descriptors, no core dumps), with a wall-clock deadline after which
//! the child is killed, an empty environment (only `PATH`), stdin closed, a private empty working
//! directory, and the input passed as `file:<absolute path>` with `-protocol_whitelist file`, a
//! demuxer whitelist (MP4/MOV and Matroska/WebM: no playlist or concat demuxer can make the tool read
//! another file) and a decoder whitelist (only mainstream decoders are ever opened, also while
//! probing). The header is validated before anything is decoded, so a declared 100000×100000 picture
//! or an hours-long stream is refused without a frame being allocated, and the decoder itself is
//! given `-max_pixels`, so a stream whose pictures are larger than its container says is refused by
//! the decoder. The decode is then one ffmpeg run with two outputs: RGB frames (or the luma plane,
//! framed as YUV4MPEG2 so that its colour range is known: [`super::y4m`]) on stdout (only the sampled
//! ones, chosen by ffmpeg's `select` filter, plus two sentinels that keep the truncation and overflow
//! checks exact), audio into a file of the private directory. Everything
//! the tools produce is bounded: the probe's JSON and the frames are read through bounded sinks (never
//! more than one frame buffered beyond those kept; at most the declared frame count plus a slack),
//! the audio file is capped by `RLIMIT_FSIZE` at `max_duration_secs` of samples (every other run may
//! write no file at all), and only the tail of stderr is kept.
//!
//! Must not: panic or let a hostile file affect the daemon (memory, time and disk are bounded; every
//! failure is a value); follow a symlink or open anything but the one regular file; charge a miner for
//! a host failure (a missing tool is [`DecodeError::Infra`], never `bad_output`); reproduce the
//! reference's RGB/BGR mix-up (frames here are R, G, B in that order, always); compute quality
//! components (that is the rest of `analysis`).
//!
//! Not a security boundary against code execution inside ffmpeg itself: resource limits bound what a
//! malformed file can cost, the whitelists shrink the attack surface, but a decoder exploit would run
//! with the daemon's user. Run the daemon as an unprivileged user with the usual systemd hardening.

use super::frame_buffers::FrameBuffers;
use super::y4m;
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;

/// Frames the reference samples per video (`read_video_frames(max_frames=80)`).
pub const REFERENCE_SAMPLED_FRAMES: usize = 80;

/// Sample rate of the extracted soundtrack (mono `f32`).
pub const AUDIO_SAMPLE_RATE: u32 = 16_000;

/// Demuxer names (as ffprobe's `format_name` reports them) an output may use.
pub const ALLOWED_CONTAINERS: &[&str] = &["mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"];

/// Video codec names (ffprobe's `codec_name`) an output may use.
pub const ALLOWED_VIDEO_CODECS: &[&str] = &["h264", "hevc", "mpeg4", "vp8", "vp9", "av1"];

/// Audio codec names (ffprobe's `codec_name`) an output may use.
pub const ALLOWED_AUDIO_CODECS: &[&str] = &[
    "aac",
    "mp3",
    "opus",
    "vorbis",
    "flac",
    "alac",
    "pcm_s16le",
    "pcm_s24le",
    "pcm_s32le",
    "pcm_f32le",
];

/// `-format_whitelist`: the demuxers of [`ALLOWED_CONTAINERS`]. Keeps out `hls`, `concat`, `image2`
/// and every other demuxer that opens further files or parses exotic formats.
const FORMAT_WHITELIST: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm";

/// `-codec_whitelist`: decoder names for the allowed codecs (`libdav1d` decodes AV1, `mp3float` MP3 on
/// Debian). ffprobe refuses a file with any stream needing another decoder, so none is ever opened.
const DECODER_WHITELIST: &str = "h264,hevc,mpeg4,vp8,vp9,libdav1d,av1,aac,mp3float,mp3,opus,libopus,\
                                 vorbis,libvorbis,flac,alac,pcm_s16le,pcm_s24le,pcm_s32le,pcm_f32le";

/// Only the fields validated here: no tags, so no miner-chosen strings reach us.
const PROBE_ENTRIES: &str = "format=format_name,duration:stream=index,codec_type,codec_name,width,height,\
                             avg_frame_rate,r_frame_rate,nb_frames,duration,sample_rate,channels:\
                             stream_disposition=attached_pic";

/// Largest ffprobe answer read (a few KiB is normal; many streams could inflate it).
const MAX_PROBE_OUTPUT: usize = 1 << 20;

/// Bytes of a tool's stderr kept (the tail; the rest is drained and dropped).
const STDERR_TAIL: usize = 8 << 10;

/// Longest `detail` taken from a tool's message.
const DETAIL_CHARS: usize = 300;

/// What ffmpeg prints when an allocation fails (`ENOMEM`, e.g. under `RLIMIT_AS`).
const OUT_OF_MEMORY: &str = "Cannot allocate memory";

/// What a libavcodec decoder prints when it could not get a buffer for a picture.
const NO_PICTURE_BUFFER: &str = "get_buffer() failed";

/// Capacity asked for the decoder's stdout pipe.
const PIPE_BYTES: nix::libc::c_int = 1 << 20;

/// Linux's signal for exceeding `RLIMIT_CPU`.
const SIGXCPU: i32 = 24;

/// Linux's signal for exceeding `RLIMIT_FSIZE`.
const SIGXFSZ: i32 = 25;

/// The only environment variable the tools get.
const SAFE_PATH: &str = "/usr/bin:/bin";

/// How long a killed child gets to be reaped before we stop waiting for it.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Absolute paths of the external tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPaths {
    /// `ffmpeg` (Debian: `/usr/bin/ffmpeg`).
    pub ffmpeg: PathBuf,
    /// `ffprobe` (Debian: `/usr/bin/ffprobe`).
    pub ffprobe: PathBuf,
    /// util-linux `prlimit` (Debian: `/usr/bin/prlimit`).
    pub prlimit: PathBuf,
}

impl Default for ToolPaths {
    fn default() -> Self {
        ToolPaths {
            ffmpeg: PathBuf::from("/usr/bin/ffmpeg"),
            ffprobe: PathBuf::from("/usr/bin/ffprobe"),
            prlimit: PathBuf::from("/usr/bin/prlimit"),
        }
    }
}

/// Bounds on what an output may declare and on what decoding it may cost.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeLimits {
    /// Largest accepted file (checked with `lstat` before any tool runs). Default 512 MiB.
    pub max_file_bytes: u64,
    /// Widest accepted picture. Default 4096.
    pub max_width: u32,
    /// Tallest accepted picture. Default 4096.
    pub max_height: u32,
    /// Most pixels per picture (width × height). Default 4096 × 4096.
    pub max_pixels: u64,
    /// Shortest accepted side. Default 16.
    pub min_side: u32,
    /// Highest accepted frame rate, frames per second. Default 120.
    pub max_fps: f64,
    /// Lowest accepted frame rate. Default 1.
    pub min_fps: f64,
    /// Longest accepted declared duration (container, video or audio), seconds. Default 60.
    pub max_duration_secs: f64,
    /// Wall-clock limit of the ffprobe run. Default 10 s.
    pub probe_timeout: Duration,
    /// Wall-clock limit of the decode run (video and audio). Default 60 s.
    pub decode_timeout: Duration,
    /// `RLIMIT_CPU` of each tool run, seconds. Default 60.
    pub cpu_secs: u64,
    /// `RLIMIT_AS` of each tool run, bytes. Default 4 GiB.
    pub address_space_bytes: u64,
    /// Frames sampled per video (the reference: 80).
    pub max_frames: usize,
    /// Most bytes of sampled frames kept in memory, counted as RGB whatever the delivery (sampled
    /// frames × width × height × 3), so every backend accepts the same files. Default 1 GiB,
    /// enough for 80 frames of 1920×1080 (80 of 4096×4096 would be 4 GiB).
    pub max_sampled_bytes: u64,
    /// Video decoder threads (`-threads`). Default 2.
    pub threads: u32,
    /// Where the tools are.
    pub tools: ToolPaths,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_file_bytes: 512 << 20,
            max_width: 4096,
            max_height: 4096,
            max_pixels: 4096 * 4096,
            min_side: 16,
            max_fps: 120.0,
            min_fps: 1.0,
            max_duration_secs: 60.0,
            probe_timeout: Duration::from_secs(10),
            decode_timeout: Duration::from_secs(60),
            cpu_secs: 60,
            address_space_bytes: 4 << 30,
            max_frames: REFERENCE_SAMPLED_FRAMES,
            max_sampled_bytes: 1 << 30,
            threads: 2,
            tools: ToolPaths::default(),
        }
    }
}

/// How an output whose picture is not the task's (size, frame rate) is treated:
/// `analysis.conformance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conformance {
    /// `bad_output` with its reason (`wrong_resolution`, `wrong_fps`). The default.
    #[default]
    Strict,
    /// Analysed as it is, and each mismatch is a scored penalty (the quality's conformance gate),
    /// named in the run's debug: never silently ignored.
    Penalty,
}

impl Conformance {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Conformance::Strict => "strict",
            Conformance::Penalty => "penalty",
        }
    }
}

/// The picture `task.json` asks for: `resolution` × `resolution` pixels at `fps` frames per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSpec {
    /// `task.json`'s `resolution`: the side of the square frame, pixels.
    pub side: u32,
    /// `task.json`'s `fps`.
    pub fps: f64,
    /// What a mismatch costs.
    pub conformance: Conformance,
}

impl FrameSpec {
    /// The picture the engine's `task.json` asks for ([`crate::domain::task`]), held strictly.
    pub fn task() -> FrameSpec {
        FrameSpec {
            side: crate::domain::task::RESOLUTION,
            fps: f64::from(crate::domain::task::FPS),
            conformance: Conformance::Strict,
        }
    }

    /// The same picture, a mismatch treated as `conformance` says.
    pub fn with_conformance(self, conformance: Conformance) -> FrameSpec {
        FrameSpec { conformance, ..self }
    }

    /// How far the declared average frame rate may be from the task's, as a fraction of it: a
    /// variable-frame-rate encode of the task's rate averages within it (25 fps: 24.5–25.5), a
    /// 24 fps or 15 fps output (or 12.5 fps played at 25 by a container trick) does not.
    pub const FPS_TOLERANCE: f64 = 0.02;
}

/// What the output must agree with: the challenge audio and `task.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expectation {
    /// Duration of the challenge's source audio, seconds.
    pub audio_duration_secs: f64,
    /// `task.json`'s `max_seconds`.
    pub max_seconds: f64,
    /// Slack on both bounds, seconds (default [`Expectation::DEFAULT_TOLERANCE_SECS`]).
    pub tolerance_secs: f64,
    /// `task.json`'s `resolution` and `fps`, when the output is held to them (`None`: not checked).
    pub frame: Option<FrameSpec>,
}

impl Expectation {
    /// Default slack on both duration bounds, seconds.
    pub const DEFAULT_TOLERANCE_SECS: f64 = 0.5;

    /// An expectation with the default tolerance.
    pub fn new(audio_duration_secs: f64, max_seconds: f64) -> Self {
        Expectation {
            audio_duration_secs,
            max_seconds,
            tolerance_secs: Self::DEFAULT_TOLERANCE_SECS,
            frame: None,
        }
    }

    /// The same expectation, holding the output to the task's picture too.
    pub fn with_frame(self, frame: FrameSpec) -> Self {
        Expectation {
            frame: Some(frame),
            ..self
        }
    }

    /// Accepted video duration `(lowest, highest)`, seconds: at least the audio's duration (capped at
    /// `max_seconds`, since a longer audio must be cut there) minus the tolerance, at most
    /// `max_seconds` plus the tolerance.
    pub fn bounds(&self) -> (f64, f64) {
        let low = (self.audio_duration_secs.min(self.max_seconds) - self.tolerance_secs).max(0.0);
        (low, self.max_seconds + self.tolerance_secs)
    }
}

/// Why an output is unusable. Every value maps to the `bad_output` verdict upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadOutputReason {
    /// The file is empty.
    EmptyFile,
    /// The file is larger than `max_file_bytes`.
    TooLarge,
    /// A symlink, directory, FIFO or device instead of a regular file.
    NotARegularFile,
    /// No container format could be recognised (e.g. a text file named `.mp4`).
    NotAVideo,
    /// A recognised container outside [`ALLOWED_CONTAINERS`] (MPEG-TS, an HLS playlist, an image...).
    UnsupportedContainer,
    /// A stream coded with something outside the allowed codecs.
    UnsupportedCodec,
    /// No video stream (cover art does not count).
    NoVideoStream,
    /// No audio stream.
    NoAudioStream,
    /// The declared picture is wider, taller or bigger than the limits.
    ResolutionTooLarge,
    /// The declared picture has a side below `min_side` (or none).
    ResolutionTooSmall,
    /// The frame rate is missing, absurd or outside the limits, or the frame count implies so.
    BadFrameRate,
    /// The audio stream declares an impossible sample rate or channel count.
    BadAudioStream,
    /// A declared duration exceeds `max_duration_secs`.
    TooLong,
    /// No declared duration, or one that disagrees with the challenge audio / `max_seconds`.
    WrongDuration,
    /// The frame size is not the task's `resolution` × `resolution`.
    WrongResolution,
    /// The average frame rate is not the task's `fps` (within [`FrameSpec::FPS_TOLERANCE`]).
    WrongFps,
    /// The audio and video streams' durations differ by more than the tolerance.
    AvDurationMismatch,
    /// The file ends early: fewer frames or samples than declared, or no index (`moov`) at all.
    Truncated,
    /// A tool did not finish within its wall-clock limit.
    DecoderTimeout,
    /// A tool hit its CPU, memory or file-size limit.
    DecoderResourceLimit,
    /// A tool failed or crashed on the file.
    DecoderFailed,
    /// A tool produced more than the declared content can account for (frames or audio).
    DecoderOutputTooLarge,
}

impl BadOutputReason {
    /// Every reason, in declaration order.
    pub const ALL: [BadOutputReason; 22] = [
        BadOutputReason::EmptyFile,
        BadOutputReason::TooLarge,
        BadOutputReason::NotARegularFile,
        BadOutputReason::NotAVideo,
        BadOutputReason::UnsupportedContainer,
        BadOutputReason::UnsupportedCodec,
        BadOutputReason::NoVideoStream,
        BadOutputReason::NoAudioStream,
        BadOutputReason::ResolutionTooLarge,
        BadOutputReason::ResolutionTooSmall,
        BadOutputReason::BadFrameRate,
        BadOutputReason::BadAudioStream,
        BadOutputReason::TooLong,
        BadOutputReason::WrongDuration,
        BadOutputReason::WrongResolution,
        BadOutputReason::WrongFps,
        BadOutputReason::AvDurationMismatch,
        BadOutputReason::Truncated,
        BadOutputReason::DecoderTimeout,
        BadOutputReason::DecoderResourceLimit,
        BadOutputReason::DecoderFailed,
        BadOutputReason::DecoderOutputTooLarge,
    ];

    /// The stable `snake_case` reason code (same as the serde form).
    pub fn as_str(self) -> &'static str {
        match self {
            BadOutputReason::EmptyFile => "empty_file",
            BadOutputReason::TooLarge => "too_large",
            BadOutputReason::NotARegularFile => "not_a_regular_file",
            BadOutputReason::NotAVideo => "not_a_video",
            BadOutputReason::UnsupportedContainer => "unsupported_container",
            BadOutputReason::UnsupportedCodec => "unsupported_codec",
            BadOutputReason::NoVideoStream => "no_video_stream",
            BadOutputReason::NoAudioStream => "no_audio_stream",
            BadOutputReason::ResolutionTooLarge => "resolution_too_large",
            BadOutputReason::ResolutionTooSmall => "resolution_too_small",
            BadOutputReason::BadFrameRate => "bad_frame_rate",
            BadOutputReason::BadAudioStream => "bad_audio_stream",
            BadOutputReason::TooLong => "too_long",
            BadOutputReason::WrongDuration => "wrong_duration",
            BadOutputReason::WrongResolution => "wrong_resolution",
            BadOutputReason::WrongFps => "wrong_fps",
            BadOutputReason::AvDurationMismatch => "av_duration_mismatch",
            BadOutputReason::Truncated => "truncated",
            BadOutputReason::DecoderTimeout => "decoder_timeout",
            BadOutputReason::DecoderResourceLimit => "decoder_resource_limit",
            BadOutputReason::DecoderFailed => "decoder_failed",
            BadOutputReason::DecoderOutputTooLarge => "decoder_output_too_large",
        }
    }
}

impl fmt::Display for BadOutputReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unusable output: the miner's fault, with a specific reason and a bounded, printable detail
/// (tool messages are sanitised and the input's path is replaced by `<input>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct BadOutput {
    /// Stable reason code.
    pub reason: BadOutputReason,
    /// Human-readable specifics (numbers, the tool's last message).
    pub detail: String,
}

impl BadOutput {
    /// A bad output with this reason and detail.
    pub fn new(reason: BadOutputReason, detail: impl Into<String>) -> Self {
        BadOutput {
            reason,
            detail: detail.into(),
        }
    }
}

/// Why probing or decoding failed: the output's fault, or the host's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The output is unusable (`bad_output` verdict).
    #[error("bad output: {0}")]
    BadOutput(#[from] BadOutput),
    /// The host failed (a tool missing, no temporary directory, a pipe error): never the miner's fault.
    #[error("decoder infrastructure failed: {0}")]
    Infra(String),
}

impl DecodeError {
    /// The bad-output details, when the output is to blame.
    pub fn bad_output(&self) -> Option<&BadOutput> {
        match self {
            DecodeError::BadOutput(bad) => Some(bad),
            DecodeError::Infra(_) => None,
        }
    }

    /// The reason code, when the output is to blame.
    pub fn reason(&self) -> Option<BadOutputReason> {
        self.bad_output().map(|bad| bad.reason)
    }

    /// Whether the miner is to blame.
    pub fn is_miners_fault(&self) -> bool {
        matches!(self, DecodeError::BadOutput(_))
    }
}

fn bad(reason: BadOutputReason, detail: impl Into<String>) -> DecodeError {
    DecodeError::BadOutput(BadOutput::new(reason, detail))
}

/// The output's first real video stream, as declared by the container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoStreamInfo {
    /// Absolute stream index in the file (what `-map 0:N` selects).
    pub index: u32,
    /// Codec name (`h264`...).
    pub codec: String,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Frame rate: `avg_frame_rate`, else `r_frame_rate`.
    pub fps: f64,
    /// Frame count from the container, when it declares one (MP4 does; Matroska does not).
    pub nb_frames: Option<u64>,
    /// The stream's own duration, seconds, when declared.
    pub duration_secs: Option<f64>,
}

/// The output's first audio stream, as declared by the container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioStreamInfo {
    /// Absolute stream index in the file.
    pub index: u32,
    /// Codec name (`aac`...).
    pub codec: String,
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channel count.
    pub channels: u32,
    /// Duration, seconds: the stream's own, else the container's.
    pub duration_secs: f64,
}

/// Validated header facts of an output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeInfo {
    /// Demuxer name as ffprobe reports it (one of [`ALLOWED_CONTAINERS`]).
    pub format_name: String,
    /// File size, bytes.
    pub file_bytes: u64,
    /// Container duration, seconds, when declared.
    pub container_duration_secs: Option<f64>,
    /// How long the video lasts, seconds: the video stream's duration, else the container's.
    pub duration_secs: f64,
    /// The video stream.
    pub video: VideoStreamInfo,
    /// The audio stream.
    pub audio: AudioStreamInfo,
    /// Frame count as the reference computes it (cv2's `CAP_PROP_FRAME_COUNT`): `nb_frames`, else
    /// duration × fps rounded (container duration first, as cv2).
    pub total_frames: usize,
    /// Whether `total_frames` was declared (`nb_frames`) rather than estimated.
    pub frame_count_declared: bool,
    /// Seconds the probe took.
    pub probe_secs: f64,
}

impl ProbeInfo {
    /// How the picture differs from `spec`: its size (`wrong_resolution`), then its average frame rate
    /// beyond [`FrameSpec::FPS_TOLERANCE`] (`wrong_fps`); empty when it is the task's.
    pub fn picture_mismatches(&self, spec: &FrameSpec) -> Vec<BadOutput> {
        let mut mismatches = Vec::new();
        let (w, h) = (self.video.width, self.video.height);
        if (w, h) != (spec.side, spec.side) {
            mismatches.push(BadOutput::new(
                BadOutputReason::WrongResolution,
                format!("video is {w}x{h}; the task asked for {0}x{0}", spec.side),
            ));
        }
        let fps = self.video.fps;
        // Written so that a NaN rate is a mismatch too.
        let within_tolerance = (fps - spec.fps).abs() <= spec.fps * FrameSpec::FPS_TOLERANCE;
        if !within_tolerance {
            mismatches.push(BadOutput::new(
                BadOutputReason::WrongFps,
                format!(
                    "video runs at {fps:.3} fps; the task asked for {} fps (tolerance {:.0} %)",
                    spec.fps,
                    FrameSpec::FPS_TOLERANCE * 100.0
                ),
            ));
        }
        mismatches
    }

    /// Checks the output against the challenge and its task: with a strict [`FrameSpec`], the picture
    /// must be the task's size (else `wrong_resolution`) at its frame rate (else `wrong_fps`; with
    /// [`Conformance::Penalty`] the caller scores [`Self::picture_mismatches`] instead); the video must
    /// last within [`Expectation::bounds`] (else `wrong_duration`, with both numbers), and its audio
    /// stream must last as long as its video within the tolerance (else `av_duration_mismatch`).
    pub fn check_expectation(&self, expectation: &Expectation) -> Result<(), BadOutput> {
        if let Some(spec) = expectation.frame
            && spec.conformance == Conformance::Strict
            && let Some(mismatch) = self.picture_mismatches(&spec).into_iter().next()
        {
            return Err(mismatch);
        }
        let (low, high) = expectation.bounds();
        let video = self.duration_secs;
        if !(video >= low && video <= high) {
            return Err(BadOutput::new(
                BadOutputReason::WrongDuration,
                format!(
                    "video lasts {video:.3} s; expected between {low:.3} and {high:.3} s (challenge audio \
                     {:.3} s, max_seconds {:.3}, tolerance {:.3} s)",
                    expectation.audio_duration_secs, expectation.max_seconds, expectation.tolerance_secs
                ),
            ));
        }
        let audio = self.audio.duration_secs;
        let within_tolerance = (audio - video).abs() <= expectation.tolerance_secs;
        if !within_tolerance {
            return Err(BadOutput::new(
                BadOutputReason::AvDurationMismatch,
                format!(
                    "audio stream lasts {audio:.3} s, video {video:.3} s (tolerance {:.3} s)",
                    expectation.tolerance_secs
                ),
            ));
        }
        Ok(())
    }
}

/// How the sampled frames are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// 3 bytes per pixel, R, G, B (ffmpeg's `rgb24`): what a colour model (SCRFD, ArcFace) reads.
    #[default]
    Rgb24,
    /// 1 byte per pixel, 0–255 grey: the decoder's luma plane, a limited-range one expanded to full
    /// range (see [`super::y4m`]). All the builtin backend reads; ffmpeg skips the colour conversion
    /// and a third of the bytes cross the pipe.
    Grey,
}

impl PixelFormat {
    /// The name in debug output (as serialised).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Grey => "grey",
        }
    }

    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb24 => 3,
            PixelFormat::Grey => 1,
        }
    }
}

/// One sampled frame: `width × height` pixels, row-major, in `format`: R, G, B for each pixel with
/// [`PixelFormat::Rgb24`] (`rgb24`; not the BGR of OpenCV, and not the reference's mix of both), one
/// grey byte with [`PixelFormat::Grey`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// What each pixel's bytes are.
    pub format: PixelFormat,
    /// `width × height × format.bytes_per_pixel()` bytes, rows top to bottom.
    pub pixels: Vec<u8>,
}

impl Frame {
    /// An RGB frame.
    pub fn rgb(width: u32, height: u32, pixels: Vec<u8>) -> Frame {
        Frame {
            width,
            height,
            format: PixelFormat::Rgb24,
            pixels,
        }
    }

    /// A grey frame.
    pub fn grey(width: u32, height: u32, pixels: Vec<u8>) -> Frame {
        Frame {
            width,
            height,
            format: PixelFormat::Grey,
            pixels,
        }
    }

    /// `[r, g, b]` of pixel (`x`, `y`) (a grey pixel's value three times), or `None` outside the
    /// picture.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let bpp = self.format.bytes_per_pixel();
        let at =
            (usize::try_from(y).ok()? * usize::try_from(self.width).ok()? + usize::try_from(x).ok()?) * bpp;
        let p = self.pixels.get(at..at + bpp)?;
        Some(match self.format {
            PixelFormat::Rgb24 => [p[0], p[1], p[2]],
            PixelFormat::Grey => [p[0]; 3],
        })
    }

    /// The pixels as R, G, B bytes: borrowed for an RGB frame, each grey value repeated three times
    /// for a grey one (a colour model given a grey frame sees a grey picture rather than failing).
    pub fn rgb_pixels(&self) -> Cow<'_, [u8]> {
        match self.format {
            PixelFormat::Rgb24 => Cow::Borrowed(&self.pixels),
            PixelFormat::Grey => Cow::Owned(self.pixels.iter().flat_map(|&g| [g; 3]).collect()),
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("bytes", &self.pixels.len())
            .finish()
    }
}

/// What the analysis components consume.
#[derive(Clone, PartialEq)]
pub struct Decoded {
    /// Sampled frames, in stream order.
    pub frames: Vec<Frame>,
    /// Index in the decoded stream of each frame of `frames`.
    pub frame_indices: Vec<usize>,
    /// Frame rate (from the probe).
    pub fps: f64,
    /// Frame count the samples were spread over (the reference's `total`).
    pub total_frames: usize,
    /// Frames the decoder produced, counted up to the declared count (the decoder only sends the
    /// frames it is asked for; see `FramePlan`): the declared count for a complete stream, less for a
    /// stream cut within the slack.
    pub decoded_frames: usize,
    /// The soundtrack, mono, [`AUDIO_SAMPLE_RATE`] Hz, `f32` in [-1, 1].
    pub audio: Vec<f32>,
    /// Sample rate of `audio` ([`AUDIO_SAMPLE_RATE`]).
    pub audio_sample_rate: u32,
    /// Seconds the decode took.
    pub decode_secs: f64,
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("frames", &self.frames.len())
            .field("frame_indices", &self.frame_indices)
            .field("fps", &self.fps)
            .field("total_frames", &self.total_frames)
            .field("decoded_frames", &self.decoded_frames)
            .field("audio_samples", &self.audio.len())
            .field("audio_sample_rate", &self.audio_sample_rate)
            .field("decode_secs", &self.decode_secs)
            .finish()
    }
}

/// The reference's frame sampling (docs/reference.md#scoring-preprocessing): a count ≤ 0 is treated as
/// `max_frames`; every frame when the count is at most `max_frames`, else `int(i·total/max_frames)` for
/// `i < max_frames`.
pub fn sample_indices(total: usize, max_frames: usize) -> Vec<usize> {
    let total = if total == 0 { max_frames } else { total };
    if total <= max_frames {
        return (0..total).collect();
    }
    // i·total/max exactly, floored: what Python's int(i * total / 80) gives for these magnitudes.
    (0..max_frames)
        .map(|i| {
            let wide = (i as u128) * (total as u128) / (max_frames as u128);
            usize::try_from(wide).unwrap_or(usize::MAX)
        })
        .collect()
}

/// Checks that the tools start under `prlimit` with these limits. Call it at startup with the
/// configured limits: a missing tool, or an address-space limit too small for ffmpeg's ~200 shared
/// libraries to load (under ~300 MiB on Debian 12; the loader then fails or crashes), fails here as
/// the host's fault instead of later as every miner's `decoder_failed`.
pub async fn check_tools(limits: &DecodeLimits) -> Result<(), DecodeError> {
    let scratch = ScratchDir::new()?;
    for program in [&limits.tools.ffprobe, &limits.tools.ffmpeg] {
        let mut sink = BoundedBytes::new(1 << 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        let args = [OsString::from("-version")];
        let run = RunSpec {
            program,
            args: &args,
            cwd: &scratch.0,
            deadline,
            max_file_bytes: 0,
        };
        let done = run_limited(&run, limits, &mut sink)
            .await
            .map_err(|e| DecodeError::Infra(format!("{}: {e}", program.display())))?;
        if !matches!(done.exit, Exit::Success) {
            return Err(DecodeError::Infra(format!(
                "{} -version failed ({}): {}",
                program.display(),
                done.exit,
                sanitise(last_line(&done.stderr), None)
            )));
        }
    }
    Ok(())
}

/// Probes the header of an untrusted output and validates it before anything is decoded: a regular,
/// non-empty file within `max_file_bytes`; a recognised, allowed container; a video and an audio
/// stream with allowed codecs; a resolution within the limits (declared, so nothing is allocated
/// for an absurd one); a frame rate and frame count within the limits; declared durations within
/// `max_duration_secs`. The challenge-dependent length check is [`ProbeInfo::check_expectation`]
/// (or use [`probe_and_decode`], which runs everything in order).
pub async fn probe(path: &Path, limits: &DecodeLimits) -> Result<ProbeInfo, DecodeError> {
    let started = std::time::Instant::now();
    let file = InputFile::check(path, limits)?;
    // The plain MP4 case is read here (a few KiB of box headers) rather than by starting ffprobe,
    // whose start-up alone costs as much CPU as decoding the clip; everything else goes to ffprobe.
    let json = match file.mp4_header() {
        Some(json) => json,
        None => ffprobe_json(&file, limits).await?,
    };
    let mut info = validate_header(&json, file.len, limits)?;
    info.probe_secs = started.elapsed().as_secs_f64();
    Ok(info)
}

/// ffprobe's description of the input (the fields of [`PROBE_ENTRIES`]), or why it has none.
async fn ffprobe_json(file: &InputFile, limits: &DecodeLimits) -> Result<Value, DecodeError> {
    let scratch = ScratchDir::new()?;
    let args: Vec<OsString> = vec![
        "-hide_banner".into(),
        "-v".into(),
        "error".into(),
        "-threads".into(),
        "1".into(),
        "-protocol_whitelist".into(),
        "file".into(),
        "-format_whitelist".into(),
        FORMAT_WHITELIST.into(),
        "-codec_whitelist".into(),
        DECODER_WHITELIST.into(),
        "-of".into(),
        "json".into(),
        "-show_entries".into(),
        PROBE_ENTRIES.into(),
        "-i".into(),
        file.url.clone(),
    ];
    let mut sink = BoundedBytes::new(MAX_PROBE_OUTPUT);
    let deadline = Instant::now() + limits.probe_timeout;
    let run = RunSpec {
        program: &limits.tools.ffprobe,
        args: &args,
        cwd: &scratch.0,
        deadline,
        max_file_bytes: 0,
    };
    let done = run_limited(&run, limits, &mut sink)
        .await
        .map_err(|e| e.with_tool("ffprobe", limits.probe_timeout))?;
    if !matches!(done.exit, Exit::Success) {
        return Err(classify_probe_failure(&done, &file.path));
    }
    serde_json::from_slice(&sink.bytes).map_err(|e| {
        bad(
            BadOutputReason::NotAVideo,
            format!("ffprobe gave no usable description: {e}"),
        )
    })
}

/// Decodes a probed output: samples frames exactly as the reference (see [`sample_indices`]) as RGB
/// at native resolution, and extracts the audio stream as mono 16 kHz `f32`, in one sandboxed ffmpeg
/// run limited by `decode_timeout`. Fewer frames (or samples) than declared beyond a small margin is
/// `truncated`; more output than declared is `decoder_output_too_large`.
pub async fn decode(path: &Path, info: &ProbeInfo, limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let mut frames = Vec::new();
    let buffers = FrameBuffers::new(0);
    let mut keep = |frame| frames.push(frame);
    let mut decoded = decode_each(path, info, limits, PixelFormat::Rgb24, &buffers, &mut keep).await?;
    decoded.frames = frames;
    Ok(decoded)
}

/// [`decode`] handing each sampled frame, in `format`, to `on_frame` as soon as ffmpeg delivered it,
/// in stream order, instead of keeping them (the returned [`Decoded::frames`] is empty): the caller
/// can work on the frames while the rest decodes. A frame handed over is not taken back if the decode fails
/// later: the caller discards its work on an error. The frames' buffers come from `buffers` (the
/// caller may give them back there once done with the frames).
pub async fn decode_each(
    path: &Path,
    info: &ProbeInfo,
    limits: &DecodeLimits,
    format: PixelFormat,
    buffers: &FrameBuffers,
    on_frame: &mut (dyn FnMut(Frame) + Send),
) -> Result<Decoded, DecodeError> {
    let started = std::time::Instant::now();
    let file = InputFile::check(path, limits)?;
    if file.len != info.file_bytes {
        return Err(DecodeError::Infra(format!(
            "the input changed since it was probed ({} bytes, then {})",
            info.file_bytes, file.len
        )));
    }
    // Re-checked so a hand-built ProbeInfo cannot make us allocate more than the limits allow.
    let frame_bytes = frame_bytes(info.video.width, info.video.height, format, limits)?;
    let wanted = sample_indices(info.total_frames, limits.max_frames);
    check_sampled_bytes(wanted.len(), frame_bytes, limits)?;
    let scratch = ScratchDir::new()?;
    let frames = FrameDelivery {
        format,
        frame_bytes,
        wanted: &wanted,
        buffers,
        on_frame,
    };
    let (frame_indices, decoded_frames, audio) =
        decode_streams(&file, info, limits, &scratch.0, frames).await?;
    Ok(Decoded {
        frames: Vec::new(),
        frame_indices,
        fps: info.video.fps,
        total_frames: info.total_frames,
        decoded_frames,
        audio,
        audio_sample_rate: AUDIO_SAMPLE_RATE,
        decode_secs: started.elapsed().as_secs_f64(),
    })
}

/// [`probe`], [`ProbeInfo::check_expectation`], then [`decode`]: nothing is decoded unless every
/// header check passed.
pub async fn probe_and_decode(
    path: &Path,
    limits: &DecodeLimits,
    expectation: &Expectation,
) -> Result<(ProbeInfo, Decoded), DecodeError> {
    let info = probe(path, limits).await?;
    info.check_expectation(expectation)?;
    let decoded = decode(path, &info, limits).await?;
    Ok((info, decoded))
}

/// [`probe_and_decode`] with the frames handed to `on_frame` in `format` as they come (see
/// [`decode_each`]).
pub async fn probe_and_decode_each(
    path: &Path,
    limits: &DecodeLimits,
    expectation: &Expectation,
    format: PixelFormat,
    buffers: &FrameBuffers,
    on_frame: &mut (dyn FnMut(Frame) + Send),
) -> Result<(ProbeInfo, Decoded), DecodeError> {
    let info = probe(path, limits).await?;
    info.check_expectation(expectation)?;
    let decoded = decode_each(path, &info, limits, format, buffers, on_frame).await?;
    Ok((info, decoded))
}

// ---------------------------------------------------------------------------------------------
// Header validation

fn validate_header(json: &Value, file_bytes: u64, limits: &DecodeLimits) -> Result<ProbeInfo, DecodeError> {
    use BadOutputReason as R;
    let format_name = json
        .pointer("/format/format_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(R::NotAVideo, "no container format was recognised"))?;
    if !ALLOWED_CONTAINERS.contains(&format_name) {
        return Err(bad(
            R::UnsupportedContainer,
            format!("container {} is not accepted", sanitise(format_name, None)),
        ));
    }
    let streams = json
        .get("streams")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let is_type = |s: &&Value, t: &str| s.get("codec_type").and_then(Value::as_str) == Some(t);
    let video = streams
        .iter()
        .find(|s| is_type(s, "video") && number(s.pointer("/disposition/attached_pic")) != Some(1.0))
        .ok_or_else(|| bad(R::NoVideoStream, "the file has no video stream"))?;
    let audio = streams
        .iter()
        .find(|s| is_type(s, "audio"))
        .ok_or_else(|| bad(R::NoAudioStream, "the file has no audio stream"))?;

    let video_codec = codec_of(video, ALLOWED_VIDEO_CODECS, "video")?;
    let audio_codec = codec_of(audio, ALLOWED_AUDIO_CODECS, "audio")?;

    // Resolution, from the header: nothing has been allocated for it yet.
    let width = dimension(video.get("width"));
    let height = dimension(video.get("height"));
    if width > u64::from(limits.max_width)
        || height > u64::from(limits.max_height)
        || width.saturating_mul(height) > limits.max_pixels
    {
        return Err(bad(
            R::ResolutionTooLarge,
            format!(
                "{width}x{height} exceeds {}x{} ({} pixels)",
                limits.max_width, limits.max_height, limits.max_pixels
            ),
        ));
    }
    if width < u64::from(limits.min_side) || height < u64::from(limits.min_side) {
        return Err(bad(
            R::ResolutionTooSmall,
            format!("{width}x{height} is below {} pixels a side", limits.min_side),
        ));
    }
    // Both fit u32: bounded by max_width/max_height above.
    let (width, height) = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );

    // Durations: every declared one is bounded, and the video's must exist.
    let container_duration = positive(number(json.pointer("/format/duration")));
    let video_duration = positive(number(video.get("duration")));
    let audio_duration = positive(number(audio.get("duration")));
    for (what, d) in [
        ("container", container_duration),
        ("video stream", video_duration),
        ("audio stream", audio_duration),
    ] {
        if let Some(d) = d
            && d > limits.max_duration_secs
        {
            return Err(bad(
                R::TooLong,
                format!(
                    "{what} declares {d:.3} s; at most {:.3} s is accepted",
                    limits.max_duration_secs
                ),
            ));
        }
    }
    let duration_secs = video_duration
        .or(container_duration)
        .ok_or_else(|| bad(R::WrongDuration, "the video declares no duration"))?;
    let audio_duration_secs = audio_duration
        .or(container_duration)
        .ok_or_else(|| bad(R::WrongDuration, "the audio declares no duration"))?;

    let fps = [video.get("avg_frame_rate"), video.get("r_frame_rate")]
        .into_iter()
        .find_map(|r| r.and_then(Value::as_str).and_then(parse_rate))
        .ok_or_else(|| bad(R::BadFrameRate, "the video declares no frame rate"))?;
    if !(fps >= limits.min_fps && fps <= limits.max_fps) {
        return Err(bad(
            R::BadFrameRate,
            format!(
                "{fps:.3} fps is outside {}..={} fps",
                limits.min_fps, limits.max_fps
            ),
        ));
    }

    // Frame count as cv2 reports it, and bounded like the frame rate.
    let nb_frames = number(video.get("nb_frames"))
        .filter(|n| *n >= 1.0)
        .map(|n| n as u64);
    let estimated = (container_duration.unwrap_or(duration_secs) * fps).round();
    let total = nb_frames.map_or(estimated, |n| n as f64);
    let most = (limits.max_duration_secs * limits.max_fps).ceil() + 1.0;
    let plausible = total <= most && total <= (duration_secs * limits.max_fps * 1.05).ceil() + 2.0;
    if !plausible {
        return Err(bad(
            R::BadFrameRate,
            format!(
                "{total} frames in {duration_secs:.3} s is more than {} fps allows",
                limits.max_fps
            ),
        ));
    }
    let total_frames = if total >= 1.0 { total as usize } else { 0 };
    let kept = sample_indices(total_frames, limits.max_frames).len();
    // Budgeted as RGB whatever the delivery, so a file is refused or accepted alike by every backend.
    check_sampled_bytes(
        kept,
        frame_bytes(width, height, PixelFormat::Rgb24, limits)?,
        limits,
    )?;

    let sample_rate = number(audio.get("sample_rate")).unwrap_or(0.0);
    let channels = number(audio.get("channels")).unwrap_or(0.0);
    if !(1.0..=768_000.0).contains(&sample_rate) || !(1.0..=64.0).contains(&channels) {
        return Err(bad(
            R::BadAudioStream,
            format!("audio declares {sample_rate} Hz, {channels} channels"),
        ));
    }

    Ok(ProbeInfo {
        format_name: format_name.to_owned(),
        file_bytes,
        container_duration_secs: container_duration,
        duration_secs,
        video: VideoStreamInfo {
            index: stream_index(video)?,
            codec: video_codec,
            width,
            height,
            fps,
            nb_frames,
            duration_secs: video_duration,
        },
        audio: AudioStreamInfo {
            index: stream_index(audio)?,
            codec: audio_codec,
            sample_rate: sample_rate as u32,
            channels: channels as u32,
            duration_secs: audio_duration_secs,
        },
        total_frames,
        frame_count_declared: nb_frames.is_some(),
        probe_secs: 0.0,
    })
}

fn codec_of(stream: &Value, allowed: &[&str], kind: &str) -> Result<String, DecodeError> {
    let codec = stream.get("codec_name").and_then(Value::as_str).unwrap_or("");
    if allowed.contains(&codec) {
        Ok(codec.to_owned())
    } else {
        Err(bad(
            BadOutputReason::UnsupportedCodec,
            format!("{kind} codec {:?} is not accepted", sanitise(codec, None)),
        ))
    }
}

fn stream_index(stream: &Value) -> Result<u32, DecodeError> {
    stream
        .get("index")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| bad(BadOutputReason::NotAVideo, "a stream has no index"))
}

/// A JSON number, or a string holding one (ffprobe prints many numbers as strings).
fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn positive(x: Option<f64>) -> Option<f64> {
    x.filter(|x| *x > 0.0)
}

/// A declared picture side; absent, negative or absurd values become 0 or saturate.
fn dimension(value: Option<&Value>) -> u64 {
    match number(value) {
        Some(x) if x >= 1.0 => x as u64,
        _ => 0,
    }
}

/// `"num/den"` (or a plain number) as frames per second; `None` for `0/0`, non-positive or junk.
fn parse_rate(rate: &str) -> Option<f64> {
    let value = match rate.split_once('/') {
        Some((num, den)) => {
            let num: f64 = num.trim().parse().ok()?;
            let den: f64 = den.trim().parse().ok()?;
            if den == 0.0 {
                return None;
            }
            num / den
        }
        None => rate.trim().parse().ok()?,
    };
    (value.is_finite() && value > 0.0).then_some(value)
}

fn frame_bytes(
    width: u32,
    height: u32,
    format: PixelFormat,
    limits: &DecodeLimits,
) -> Result<usize, DecodeError> {
    let too_large = || {
        bad(
            BadOutputReason::ResolutionTooLarge,
            format!("{width}x{height} exceeds the limits"),
        )
    };
    if width > limits.max_width
        || height > limits.max_height
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(too_large());
    }
    if width < limits.min_side.max(1) || height < limits.min_side.max(1) {
        return Err(bad(
            BadOutputReason::ResolutionTooSmall,
            format!("{width}x{height} is below {} pixels a side", limits.min_side),
        ));
    }
    let bytes_per_pixel = format.bytes_per_pixel() as u64;
    usize::try_from(u64::from(width) * u64::from(height) * bytes_per_pixel).map_err(|_| too_large())
}

fn check_sampled_bytes(frames: usize, frame_bytes: usize, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let bytes = (frames as u128) * (frame_bytes as u128);
    if bytes > u128::from(limits.max_sampled_bytes) {
        return Err(bad(
            BadOutputReason::ResolutionTooLarge,
            format!(
                "{frames} sampled frames of {frame_bytes} bytes exceed the {} byte budget",
                limits.max_sampled_bytes
            ),
        ));
    }
    Ok(())
}

fn classify_probe_failure(done: &Finished, input: &Path) -> DecodeError {
    use BadOutputReason as R;
    let text = &done.stderr;
    let pick = |marker: &str| {
        text.lines()
            .rev()
            .find(|l| l.contains(marker))
            .map(|l| sanitise(l, Some(input)))
    };
    if let Some(line) = pick("Format not on whitelist") {
        return bad(R::UnsupportedContainer, line);
    }
    if let Some(line) = pick("not on whitelist") {
        return bad(R::UnsupportedCodec, line);
    }
    // ffprobe falls back to the MP4 demuxer for any unrecognised `.mp4`, so a missing `moov` means
    // "truncated" only when the file does start like an MP4.
    if let Some(line) = pick("moov atom not found")
        && starts_like_iso_bmff(input)
    {
        return bad(R::Truncated, format!("the MP4 index is missing: {line}"));
    }
    // A plain error exit means ffprobe could not make sense of the file; crashes and resource limits
    // keep their own reasons.
    let unrecognised = || bad(R::NotAVideo, sanitise(last_line(text), Some(input)));
    match done.exit {
        Exit::Code(_) if !text.contains(OUT_OF_MEMORY) => unrecognised(),
        _ => exit_failure(done, input).unwrap_or_else(unrecognised),
    }
}

/// Whether the file begins with an ISO BMFF (MP4/MOV) box header: a plausible size and a known type.
fn starts_like_iso_bmff(path: &Path) -> bool {
    use std::io::Read;
    const BOXES: [&[u8; 4]; 10] = [
        b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"moof",
    ];
    let mut head = [0u8; 8];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() {
        return false;
    }
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    (size == 0 || size == 1 || size >= 8) && BOXES.iter().any(|b| head[4..8] == b[..])
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Indices of the frames handed over, frames decoded, audio samples.
type Streams = (Vec<usize>, usize, Vec<f32>);

/// Where the sampled frames go: in `format`, `frame_bytes` each, the `wanted` indices, in buffers
/// from `buffers`, handed to `on_frame`.
struct FrameDelivery<'a> {
    format: PixelFormat,
    frame_bytes: usize,
    wanted: &'a [usize],
    buffers: &'a FrameBuffers,
    on_frame: &'a mut (dyn FnMut(Frame) + Send),
}

/// One ffmpeg run with two outputs: the video as raw RGB frames or YUV4MPEG2 grey on stdout
/// (streamed through a [`FrameSink`]), the audio as mono 16 kHz `f32le` into a file of the private
/// scratch directory, bounded by `RLIMIT_FSIZE` (one run rather than two saves a process start, the
/// largest fixed cost).
async fn decode_streams(
    file: &InputFile,
    info: &ProbeInfo,
    limits: &DecodeLimits,
    scratch: &Path,
    frames: FrameDelivery<'_>,
) -> Result<Streams, DecodeError> {
    let FrameDelivery {
        format,
        frame_bytes,
        wanted,
        buffers,
        on_frame,
    } = frames;
    let (width, height) = (info.video.width, info.video.height);
    let total = info.total_frames.max(wanted.len());
    let slack = frame_slack(total, info.frame_count_declared);
    let plan = FramePlan::new(wanted, total, slack);
    let audio_path = scratch.join("audio.f32");
    let mut audio_url = OsString::from("file:");
    audio_url.push(audio_path.as_os_str());
    let mut args = input_args(file, limits);
    args.extend(
        [
            "-map".to_owned(),
            format!("0:{}", info.video.index),
            "-an".to_owned(),
            "-sn".to_owned(),
            "-dn".to_owned(),
            // Only the planned frames are converted and cross the pipe (see FramePlan). A mid-stream
            // size change is scaled back to the declared size: every frame has the same byte length,
            // and the declared size (already validated) bounds it.
            "-vf".to_owned(),
            frame_filters(&plan, width, height, format),
            // One output frame per decoded frame, no duplication or dropping: indices are decoded
            // frame numbers, as cv2 reads them.
            "-fps_mode".to_owned(),
            "passthrough".to_owned(),
            "-f".to_owned(),
            output_muxer(format).to_owned(),
            "-pix_fmt".to_owned(),
            output_pixel_format(format).to_owned(),
            "pipe:1".to_owned(),
            "-map".to_owned(),
            format!("0:{}", info.audio.index),
            "-vn".to_owned(),
            "-sn".to_owned(),
            "-dn".to_owned(),
        ]
        .map(OsString::from),
    );
    args.extend(mono_16k_output_args());
    args.push(audio_url);
    let rate = f64::from(AUDIO_SAMPLE_RATE);
    // At most max_duration_secs (+1 s) of audio may be written: beyond, SIGXFSZ stops the run.
    let max_audio_bytes = ((limits.max_duration_secs.max(0.0) + 1.0) * rate * 4.0).ceil();
    let max_audio_bytes = if max_audio_bytes < 1e12 {
        max_audio_bytes as u64
    } else {
        1 << 40
    };

    let mut sink = FrameSink::new(width, height, format, frame_bytes, &plan, buffers, on_frame);
    let deadline = Instant::now() + limits.decode_timeout;
    let run = RunSpec {
        program: &limits.tools.ffmpeg,
        args: &args,
        cwd: scratch,
        deadline,
        max_file_bytes: max_audio_bytes,
    };
    let done = run_limited(&run, limits, &mut sink)
        .await
        .map_err(|e| e.with_tool("ffmpeg", limits.decode_timeout))?;
    if done.exit == Exit::Signal(SIGXFSZ) {
        return Err(bad(
            BadOutputReason::DecoderOutputTooLarge,
            format!("more than {max_audio_bytes} bytes of decoded audio"),
        ));
    }
    let frames = FramesReceived {
        decoded: sink.decoded,
        total,
        slack,
        kept: sink.kept_indices.len(),
    };
    if let Some(e) = frames_failure(&done, &frames, &file.path) {
        return Err(e);
    }
    let samples = read_audio(&audio_path, max_audio_bytes)?;
    let declared = info.audio.duration_secs;
    let got = samples.len() as f64 / rate;
    if got < declared - (declared * 0.1).max(0.5) {
        return Err(bad(
            BadOutputReason::Truncated,
            format!("decoded {got:.3} s of {declared:.3} s of declared audio"),
        ));
    }
    Ok((std::mem::take(&mut sink.kept_indices), frames.decoded, samples))
}

/// How many frames a decode delivered against what the header declared.
struct FramesReceived {
    /// Decoded frames, as far as the frames received show.
    decoded: usize,
    /// Declared frames.
    total: usize,
    /// Frames that may be missing (see [`frame_slack`]).
    slack: usize,
    /// Sampled frames handed over.
    kept: usize,
}

/// Why a finished decode's frames are unusable, if they are: a decode that came up short because the
/// decoder could not allocate its pictures is `decoder_resource_limit` (ffmpeg may report that and
/// still exit 0 with no picture: which happens depends on its threads' timing), any other short
/// decode `truncated`, then a failed exit ([`exit_failure`]), then no frame at all.
fn frames_failure(done: &Finished, frames: &FramesReceived, input: &Path) -> Option<DecodeError> {
    let FramesReceived {
        decoded,
        total,
        slack,
        kept,
    } = *frames;
    let short = decoded + slack < total || kept == 0;
    let tail = sanitise(last_line(&done.stderr), Some(input));
    let colon = if tail.is_empty() { "" } else { ": " };
    if short && allocation_failed(&done.stderr) {
        return Some(bad(
            BadOutputReason::DecoderResourceLimit,
            format!(
                "the decoder could not allocate its pictures ({}, {decoded} of {total} frames){colon}{tail}",
                done.exit
            ),
        ));
    }
    if decoded + slack < total {
        return Some(bad(
            BadOutputReason::Truncated,
            format!("decoded {decoded} of {total} declared frames{colon}{tail}"),
        ));
    }
    if let Some(e) = exit_failure(done, input) {
        return Some(e);
    }
    (kept == 0).then(|| bad(BadOutputReason::Truncated, "no frame could be decoded"))
}

/// What ffmpeg prints when it could not allocate: `ENOMEM` from the allocator, or a decoder that could
/// not get a picture buffer (both under `RLIMIT_AS`; the latter also past `-max_pixels`).
fn allocation_failed(stderr: &str) -> bool {
    stderr.contains(OUT_OF_MEMORY) || stderr.contains(NO_PICTURE_BUFFER)
}

/// Reads the audio ffmpeg wrote (a regular file of at most `max` bytes) as `f32` samples.
fn read_audio(path: &Path, max: u64) -> Result<Vec<f32>, DecodeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // ffmpeg exited cleanly without writing it: the audio decoded to nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DecodeError::Infra(format!("cannot stat the decoded audio: {e}"))),
    };
    if !meta.file_type().is_file() {
        return Err(bad(
            BadOutputReason::DecoderFailed,
            "the decoded audio is not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(bad(
            BadOutputReason::DecoderOutputTooLarge,
            format!("more than {max} bytes of decoded audio"),
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| DecodeError::Infra(format!("cannot read the decoded audio: {e}")))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The audio output options of every decode: downmix to mono and resample to [`AUDIO_SAMPLE_RATE`]
/// with ffmpeg's defaults (swresample: the channels' sum scaled by 1/√2 for stereo, a windowed-sinc
/// low-pass resampler, so nothing above the new Nyquist frequency folds back), as raw `f32le`. The
/// output's soundtrack and the challenge's source audio both go through exactly these, so every
/// comparison of the two (lip sync, the audio match, ASR) sees the same downmix and the same filter.
fn mono_16k_output_args() -> [OsString; 8] {
    [
        "-ac".to_owned(),
        "1".to_owned(),
        "-ar".to_owned(),
        AUDIO_SAMPLE_RATE.to_string(),
        "-c:a".to_owned(),
        "pcm_f32le".to_owned(),
        "-f".to_owned(),
        "f32le".to_owned(),
    ]
    .map(OsString::from)
}

// ---------------------------------------------------------------------------------------------
// Challenge audio

/// `-codec_whitelist` of a challenge clip: the PCM encodings challenge validation accepts (8-bit WAV is
/// unsigned).
const WAV_DECODER_WHITELIST: &str = "pcm_u8,pcm_s16le,pcm_s24le,pcm_s32le,pcm_f32le";

/// A challenge's source audio (a RIFF/WAVE PCM clip, validated when the challenge was loaded) as mono
/// 16 kHz `f32` in [-1, 1], decoded by ffmpeg with the output's own audio options
/// ([`mono_16k_output_args`]) under the same sandbox as the output (prlimit, empty environment,
/// private directory, `-protocol_whitelist file`, the WAV demuxer and PCM decoders only, the decode
/// timeout), reading from a copy in a private scratch directory and writing nothing but its stdout,
/// which is bounded by the clip's header (its duration at 16 kHz, plus a second).
///
/// Every failure is [`DecodeError::Infra`]: the challenge is the validator's, never the miner's.
pub async fn decode_wav(wav: &[u8], limits: &DecodeLimits) -> Result<Vec<f32>, DecodeError> {
    let infra = |detail: String| DecodeError::Infra(format!("challenge audio: {detail}"));
    let reader = hound::WavReader::new(std::io::Cursor::new(wav)).map_err(|e| infra(e.to_string()))?;
    let declared_secs = f64::from(reader.duration()) / f64::from(reader.spec().sample_rate.max(1));
    let max_bytes = ((declared_secs + 1.0) * f64::from(AUDIO_SAMPLE_RATE) * 4.0).ceil();
    let max_bytes = if max_bytes < 1e12 {
        max_bytes as usize
    } else {
        1 << 40
    };

    let scratch = ScratchDir::new()?;
    let path = scratch.0.join("source.wav");
    tokio::fs::write(&path, wav)
        .await
        .map_err(|e| infra(format!("cannot write the scratch copy: {e}")))?;
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    let mut args = ffmpeg_quiet(1);
    args.extend(
        [
            "-protocol_whitelist",
            "file",
            "-format_whitelist",
            "wav",
            "-codec_whitelist",
            WAV_DECODER_WHITELIST,
            "-f",
            "wav",
            "-i",
        ]
        .map(OsString::from),
    );
    args.push(url);
    args.extend(["-map", "0:a:0", "-vn", "-sn", "-dn"].map(OsString::from));
    args.extend(mono_16k_output_args());
    args.push("pipe:1".into());

    let mut sink = BoundedBytes::new(max_bytes);
    let run = RunSpec {
        program: &limits.tools.ffmpeg,
        args: &args,
        cwd: &scratch.0,
        deadline: Instant::now() + limits.decode_timeout,
        max_file_bytes: 0,
    };
    let done = run_limited(&run, limits, &mut sink).await.map_err(|e| match e {
        RunError::Timeout => infra(format!(
            "ffmpeg did not finish within {:.3} s",
            limits.decode_timeout.as_secs_f64()
        )),
        RunError::Output(b) => infra(format!("ffmpeg: {}", b.detail)),
        RunError::Infra(reason) => infra(format!("ffmpeg: {reason}")),
    })?;
    if done.exit != Exit::Success {
        return Err(infra(format!(
            "ffmpeg failed ({}): {}",
            done.exit,
            sanitise(last_line(&done.stderr), Some(&path))
        )));
    }
    if !sink.bytes.len().is_multiple_of(4) {
        return Err(infra(format!(
            "ffmpeg wrote {} bytes, not whole samples",
            sink.bytes.len()
        )));
    }
    Ok(sink
        .bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Frames a decode may miss (truncation) or add (overflow) before it is refused: MP4's declared
/// count is exact, an estimate from duration × fps is not.
fn frame_slack(total: usize, declared: bool) -> usize {
    if declared {
        (total / 50).max(2)
    } else {
        (total / 10).max(3)
    }
}

/// The video filters: the plan's selection, then the frame at the declared size in `format`. RGB is
/// swscale's conversion; grey is the luma plane as decoded (no conversion: its range is expanded
/// here, see [`super::y4m`]). `extractplanes` needs a YUV or grey input named for it: a stream in
/// one of [`GREY_SOURCE_FORMATS`] goes through untouched (a same-size `scale` passes frames through),
/// any other (RGB-coded, 10-bit…) is converted by swscale first, its range tagged as it converts.
fn frame_filters(plan: &FramePlan, width: u32, height: u32, format: PixelFormat) -> String {
    let select = plan.select_filter();
    match format {
        PixelFormat::Rgb24 => format!("{select},scale={width}:{height},format=rgb24"),
        PixelFormat::Grey => {
            format!("{select},scale={width}:{height},format={GREY_SOURCE_FORMATS},extractplanes=y")
        }
    }
}

/// 8-bit planar formats whose first plane is the luma `extractplanes=y` takes as it is.
const GREY_SOURCE_FORMATS: &str =
    "yuv420p|yuvj420p|yuv422p|yuvj422p|yuv444p|yuvj444p|yuv440p|yuvj440p|yuv411p|yuv410p|gray";

/// Raw frames back to back for RGB; YUV4MPEG2 for grey, whose stream header says the luma range.
fn output_muxer(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::Rgb24 => "rawvideo",
        PixelFormat::Grey => "yuv4mpegpipe",
    }
}

fn output_pixel_format(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::Rgb24 => "rgb24",
        PixelFormat::Grey => "gray",
    }
}

/// What every ffmpeg run of the decoder starts with: no stdin, no banner or progress, errors only (the
/// last stderr line is the reason reported), `threads` decoding threads.
fn ffmpeg_quiet(threads: u32) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        "-threads",
    ]
    .map(OsString::from)
    .to_vec();
    args.push(threads.max(1).to_string().into());
    args
}

fn input_args(file: &InputFile, limits: &DecodeLimits) -> Vec<OsString> {
    let mut args = ffmpeg_quiet(limits.threads);
    // The decoder refuses pictures above the pixel limit whatever the container declared (the header
    // was validated from the container's own numbers when ffprobe was not asked).
    args.push("-max_pixels".into());
    args.push(limits.max_pixels.min(i32::MAX as u64).max(1).to_string().into());
    args.extend(
        [
            "-protocol_whitelist",
            "file",
            "-format_whitelist",
            FORMAT_WHITELIST,
            "-codec_whitelist",
            DECODER_WHITELIST,
            "-i",
        ]
        .map(OsString::from),
    );
    args.push(file.url.clone());
    args
}

// ---------------------------------------------------------------------------------------------
// Input file

struct InputFile {
    path: PathBuf,
    url: OsString,
    len: u64,
}

impl InputFile {
    /// `lstat`: a regular file (a symlink is refused, not followed), non-empty, within the size cap.
    fn check(path: &Path, limits: &DecodeLimits) -> Result<InputFile, DecodeError> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| DecodeError::Infra(format!("cannot stat the output copy: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(bad(
                BadOutputReason::NotARegularFile,
                "the output is not a regular file",
            ));
        }
        let len = meta.len();
        if len == 0 {
            return Err(bad(BadOutputReason::EmptyFile, "the output is empty"));
        }
        if len > limits.max_file_bytes {
            return Err(bad(
                BadOutputReason::TooLarge,
                format!("{len} bytes; at most {} are accepted", limits.max_file_bytes),
            ));
        }
        let path = std::path::absolute(path)
            .map_err(|e| DecodeError::Infra(format!("cannot make the output path absolute: {e}")))?;
        let mut url = OsString::from("file:");
        url.push(path.as_os_str());
        Ok(InputFile { path, url, len })
    }

    /// [`super::mp4::describe`] of the file, opened without following a symlink; `None` when the
    /// file is not a plain MP4 (or changed under us): ffprobe is asked then.
    fn mp4_header(&self) -> Option<Value> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&self.path)
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.file_type().is_file() || meta.len() != self.len {
            return None;
        }
        super::mp4::describe(&file, self.len)
    }
}

/// A private (0700), empty working directory for one tool run, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir, DecodeError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..8 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                "talkheadd-decode-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let dir = base.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(ScratchDir(dir)),
                Err(e) => last = Some(e),
            }
        }
        Err(DecodeError::Infra(format!(
            "cannot create a scratch directory in {}: {}",
            base.display(),
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Sandboxed runs

/// Where a tool's stdout goes, a read at a time.
trait Sink {
    /// Space for the next read; never empty.
    fn space(&mut self) -> &mut [u8];
    /// `n` bytes were written at the start of [`Sink::space`]. An error stops the run (the child is
    /// killed).
    fn commit(&mut self, n: usize) -> Result<(), RunError>;
}

/// Collects up to `max` bytes; more is `decoder_output_too_large`.
struct BoundedBytes {
    bytes: Vec<u8>,
    chunk: Vec<u8>,
    max: usize,
}

impl BoundedBytes {
    fn new(max: usize) -> Self {
        BoundedBytes {
            bytes: Vec::new(),
            chunk: vec![0; 64 << 10],
            max,
        }
    }
}

impl Sink for BoundedBytes {
    fn space(&mut self) -> &mut [u8] {
        &mut self.chunk
    }

    fn commit(&mut self, n: usize) -> Result<(), RunError> {
        if self.bytes.len() + n > self.max {
            return Err(RunError::Output(BadOutput::new(
                BadOutputReason::DecoderOutputTooLarge,
                format!("more than {} bytes of output", self.max),
            )));
        }
        self.bytes.extend_from_slice(&self.chunk[..n]);
        Ok(())
    }
}

/// Which decoded frames ffmpeg's `select` filter lets through, so that only those are converted to
/// RGB and cross the pipe (80 of a 5 s clip's 125, not all of them), while the two checks that used
/// to need every frame still hold: frame `total − slack − 1` is always sent (its absence is
/// `truncated`), and every frame from `total + slack` on is sent (its presence is
/// `decoder_output_too_large`). The last declared frame is sent too, so a complete decode reports its
/// full count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FramePlan {
    /// Decoded frame numbers sent below `limit`, ascending, each with whether it is kept.
    sent: Vec<(usize, bool)>,
    /// The first frame number that is one too many (`total + slack`).
    limit: usize,
}

impl FramePlan {
    fn new(wanted: &[usize], total: usize, slack: usize) -> FramePlan {
        let limit = total + slack;
        let mut sent: std::collections::BTreeMap<usize, bool> = wanted
            .iter()
            .filter(|&&i| i < limit)
            .map(|&i| (i, true))
            .collect();
        for sentinel in [total.saturating_sub(slack + 1), total.saturating_sub(1)] {
            sent.entry(sentinel).or_insert(false);
        }
        FramePlan {
            sent: sent.into_iter().collect(),
            limit,
        }
    }

    /// The `select` filter (commas escaped for the filtergraph parser).
    fn select_filter(&self) -> String {
        let mut expr = String::from("select=");
        for (n, _) in &self.sent {
            expr.push_str(&format!("eq(n\\,{n})+"));
        }
        expr.push_str(&format!("gte(n\\,{})", self.limit));
        expr
    }
}

/// Assembles the frames of a [`FramePlan`] from ffmpeg's stdout, hands the wanted ones over, reuses
/// one buffer for the others.
struct FrameSink<'p> {
    width: u32,
    height: u32,
    plan: &'p FramePlan,
    buffers: &'p FrameBuffers,
    /// How frames are laid out on the pipe, which follows from their format: raw RGB, or grey in
    /// YUV4MPEG2.
    framing: Framing,
    /// The frame being received; handed over only once all of it was written (a recycled buffer's
    /// old contents never reach a frame).
    current: Vec<u8>,
    filled: usize,
    /// Frames received so far.
    received: usize,
    /// Decoded frames, as far as the frames received show (the last one's number + 1).
    decoded: usize,
    on_frame: &'p mut (dyn FnMut(Frame) + Send),
    kept_indices: Vec<usize>,
}

/// The layout of ffmpeg's stdout, and where the reading of it stands.
enum Framing {
    /// Frames back to back (`rawvideo`).
    Raw,
    /// YUV4MPEG2 (see [`super::y4m`]): one stream header line, then `FRAME\n` before each frame.
    /// Headers are read exactly (the header line a byte at a time, the marker in one read), so no read
    /// ever runs into a frame's bytes.
    Y4m(Box<Y4mReader>),
}

struct Y4mReader {
    stage: Y4mStage,
    /// The stream header line, then each frame's marker, as far as read.
    head: [u8; y4m::MAX_HEADER_BYTES],
    head_len: usize,
    /// Luma → 0–255 grey, from the stream header's range.
    to_full: [u8; 256],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Y4mStage {
    StreamHeader,
    FrameMarker,
    Pixels,
}

impl Y4mReader {
    fn new() -> Self {
        Y4mReader {
            stage: Y4mStage::StreamHeader,
            head: [0; y4m::MAX_HEADER_BYTES],
            head_len: 0,
            to_full: y4m::LumaRange::Full.to_full(),
        }
    }

    /// Where the next header bytes go (`None`: a frame's bytes come next).
    fn head_space(&mut self) -> Option<&mut [u8]> {
        let wanted = match self.stage {
            Y4mStage::StreamHeader => self.head_len + 1,
            Y4mStage::FrameMarker => y4m::FRAME_MARKER.len(),
            Y4mStage::Pixels => return None,
        };
        Some(&mut self.head[self.head_len..wanted])
    }

    /// `n` header bytes were read; checks a complete stream header against the expected frame size.
    fn commit_head(&mut self, n: usize, width: u32, height: u32) -> Result<(), RunError> {
        self.head_len += n;
        let head = &self.head[..self.head_len];
        match self.stage {
            Y4mStage::StreamHeader if head.ends_with(b"\n") => {
                let header = y4m::parse_stream_header(head).map_err(RunError::Infra)?;
                if (header.width, header.height) != (width, height) {
                    return Err(RunError::Infra(format!(
                        "ffmpeg delivered {}x{} frames, {width}x{height} were asked for",
                        header.width, header.height
                    )));
                }
                self.to_full = header.range.to_full();
                self.stage = Y4mStage::FrameMarker;
                self.head_len = 0;
            }
            Y4mStage::StreamHeader if self.head_len == self.head.len() => {
                return Err(RunError::Infra("ffmpeg's YUV4MPEG2 header never ends".to_owned()));
            }
            Y4mStage::FrameMarker if self.head_len == y4m::FRAME_MARKER.len() => {
                if head != y4m::FRAME_MARKER {
                    return Err(RunError::Infra(format!(
                        "ffmpeg's YUV4MPEG2 stream lost its framing (read {head:?})"
                    )));
                }
                self.stage = Y4mStage::Pixels;
                self.head_len = 0;
            }
            _ => {}
        }
        Ok(())
    }
}

impl<'p> FrameSink<'p> {
    fn new(
        width: u32,
        height: u32,
        format: PixelFormat,
        frame_bytes: usize,
        plan: &'p FramePlan,
        buffers: &'p FrameBuffers,
        on_frame: &'p mut (dyn FnMut(Frame) + Send),
    ) -> Self {
        let wanted = plan.sent.iter().filter(|(_, keep)| *keep).count();
        FrameSink {
            width,
            height,
            plan,
            buffers,
            framing: match format {
                PixelFormat::Rgb24 => Framing::Raw,
                PixelFormat::Grey => Framing::Y4m(Box::new(Y4mReader::new())),
            },
            current: buffers.take(frame_bytes.max(1)),
            filled: 0,
            received: 0,
            decoded: 0,
            on_frame,
            kept_indices: Vec::with_capacity(wanted),
        }
    }
}

impl Drop for FrameSink<'_> {
    fn drop(&mut self) {
        // The buffer of the frame that would have come next.
        self.buffers.recycle([std::mem::take(&mut self.current)]);
    }
}

impl Sink for FrameSink<'_> {
    fn space(&mut self) -> &mut [u8] {
        if let Framing::Y4m(reader) = &mut self.framing
            && let Some(head) = reader.head_space()
        {
            return head;
        }
        &mut self.current[self.filled..]
    }

    fn commit(&mut self, n: usize) -> Result<(), RunError> {
        if let Framing::Y4m(reader) = &mut self.framing
            && reader.stage != Y4mStage::Pixels
        {
            return reader.commit_head(n, self.width, self.height);
        }
        self.filled += n;
        if self.filled < self.current.len() {
            return Ok(());
        }
        self.filled = 0;
        let to_full = match &mut self.framing {
            Framing::Raw => None,
            Framing::Y4m(reader) => {
                reader.stage = Y4mStage::FrameMarker;
                Some(&reader.to_full)
            }
        };
        let Some(&(index, keep)) = self.plan.sent.get(self.received) else {
            // Only frames from `limit` on are sent beyond the plan.
            return Err(RunError::Output(BadOutput::new(
                BadOutputReason::DecoderOutputTooLarge,
                format!("more than {} frames decoded", self.plan.limit),
            )));
        };
        self.received += 1;
        self.decoded = index + 1;
        if keep {
            let fresh = self.buffers.take(self.current.len());
            let mut pixels = std::mem::replace(&mut self.current, fresh);
            let frame = match to_full {
                None => Frame::rgb(self.width, self.height, pixels),
                Some(table) => {
                    pixels.iter_mut().for_each(|p| *p = table[usize::from(*p)]);
                    Frame::grey(self.width, self.height, pixels)
                }
            };
            (self.on_frame)(frame);
            self.kept_indices.push(index);
        }
        Ok(())
    }
}

/// How a tool run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Success,
    Code(i32),
    Signal(i32),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Success => f.write_str("exit 0"),
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// A finished run: its exit and the tail of its stderr.
struct Finished {
    exit: Exit,
    stderr: String,
}

/// Errors of [`run_limited`] before the tool's own exit is looked at.
#[derive(Debug)]
enum RunError {
    Timeout,
    Output(BadOutput),
    Infra(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Timeout => f.write_str("timed out"),
            RunError::Output(b) => write!(f, "{b}"),
            RunError::Infra(s) => f.write_str(s),
        }
    }
}

impl RunError {
    fn with_tool(self, tool: &str, limit: Duration) -> DecodeError {
        match self {
            RunError::Timeout => bad(
                BadOutputReason::DecoderTimeout,
                format!("{tool} did not finish within {:.3} s", limit.as_secs_f64()),
            ),
            RunError::Output(b) => DecodeError::BadOutput(BadOutput {
                detail: format!("{tool}: {}", b.detail),
                ..b
            }),
            RunError::Infra(s) => DecodeError::Infra(format!("{tool}: {s}")),
        }
    }
}

/// One sandboxed tool run.
struct RunSpec<'a> {
    /// The tool (`ffmpeg`, `ffprobe`).
    program: &'a Path,
    /// Its arguments.
    args: &'a [OsString],
    /// Working directory: a [`ScratchDir`].
    cwd: &'a Path,
    /// When it is killed.
    deadline: Instant,
    /// `RLIMIT_FSIZE`: the largest file it may write (pipes are not files).
    max_file_bytes: u64,
}

/// Runs the tool under `prlimit`, streaming stdout into `sink` and keeping stderr's tail, until it
/// exits or the deadline passes (then it is killed and reaped).
async fn run_limited<S: Sink + Send>(
    run: &RunSpec<'_>,
    limits: &DecodeLimits,
    sink: &mut S,
) -> Result<Finished, RunError> {
    let RunSpec {
        program,
        args,
        cwd,
        deadline,
        max_file_bytes,
    } = *run;
    let mut command = Command::new(&limits.tools.prlimit);
    command
        .arg(format!("--as={}", limits.address_space_bytes))
        .arg(format!("--cpu={}", limits.cpu_secs.max(1)))
        .arg(format!("--fsize={max_file_bytes}"))
        .arg("--nofile=64")
        .arg("--core=0")
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| RunError::Infra(format!("cannot start {}: {e}", limits.tools.prlimit.display())))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.start_kill();
        return Err(RunError::Infra("the child's pipes are missing".to_owned()));
    };
    // A 512×512 RGB frame is 786 KB: through the default 64 KiB pipe ffmpeg stalls a dozen times per
    // frame until this task is scheduled again. 1 MiB is the unprivileged maximum (pipe-max-size); a
    // refusal only costs speed.
    let _ = nix::fcntl::fcntl(stdout.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
    tracing::debug!(program = %program.display(), "sandboxed decoder started");

    let child_ref = &mut child;
    let run = async move {
        let (pumped, stderr) = tokio::join!(
            async {
                let result = pump(stdout, sink).await;
                if result.is_err() {
                    let _ = child_ref.start_kill();
                }
                (result, child_ref)
            },
            read_tail(stderr, STDERR_TAIL),
        );
        let ((pumped, child_ref), stderr) = (pumped, stderr);
        let status = child_ref.wait().await;
        (pumped, stderr, status)
    };
    let Ok((pumped, stderr, status)) = tokio::time::timeout_at(deadline, run).await else {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
        return Err(RunError::Timeout);
    };
    pumped?;
    let status = status.map_err(|e| RunError::Infra(format!("cannot wait for the child: {e}")))?;
    let exit = match (status.code(), status.signal()) {
        (Some(0), _) => Exit::Success,
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    };
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    // prlimit's own failures (it could not set a limit, or exec the tool) are the host's. They happen
    // before the tool runs, so prlimit's message is the first line; the tools never exit 126/127.
    if let Exit::Code(code) = exit
        && (code == 126 || code == 127 || stderr.starts_with("prlimit:"))
    {
        return Err(RunError::Infra(format!(
            "{} could not run {} ({exit}): {}",
            limits.tools.prlimit.display(),
            program.display(),
            sanitise(last_line(&stderr), None)
        )));
    }
    Ok(Finished { exit, stderr })
}

async fn pump<S: Sink, R: AsyncRead + Unpin>(mut from: R, sink: &mut S) -> Result<(), RunError> {
    loop {
        let n = from
            .read(sink.space())
            .await
            .map_err(|e| RunError::Infra(format!("reading the tool's output: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        sink.commit(n)?;
    }
}

/// Drains `from` to the end, keeping only the last `cap` bytes.
async fn read_tail<R: AsyncRead + Unpin>(mut from: R, cap: usize) -> Vec<u8> {
    let mut tail = Vec::with_capacity(cap * 2);
    let mut chunk = vec![0u8; 4096];
    while let Ok(n) = from.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > cap * 2 {
            tail.drain(..tail.len() - cap);
        }
    }
    if tail.len() > cap {
        tail.drain(..tail.len() - cap);
    }
    tail
}

/// The output's fault for a failed or killed run, `None` for a clean exit.
fn exit_failure(done: &Finished, input: &Path) -> Option<DecodeError> {
    use BadOutputReason as R;
    let last = sanitise(last_line(&done.stderr), Some(input));
    match done.exit {
        Exit::Success => None,
        Exit::Signal(SIGXCPU | SIGXFSZ) => Some(bad(
            R::DecoderResourceLimit,
            format!("the decoder hit its CPU or file-size limit ({})", done.exit),
        )),
        Exit::Signal(_) => Some(bad(
            R::DecoderFailed,
            format!(
                "the decoder crashed ({}){}{last}",
                done.exit,
                if last.is_empty() { "" } else { ": " }
            ),
        )),
        Exit::Code(_) if allocation_failed(&done.stderr) => Some(bad(
            R::DecoderResourceLimit,
            format!(
                "the decoder ran out of memory or past its pixel limit ({}): {last}",
                done.exit
            ),
        )),
        Exit::Code(_) => Some(bad(
            R::DecoderFailed,
            format!("{}{}{last}", done.exit, if last.is_empty() { "" } else { ": " }),
        )),
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// One printable ASCII line of at most [`DETAIL_CHARS`] characters, with the input's path replaced by
/// `<input>` (details can end up in public metrics).
fn sanitise(text: &str, input: Option<&Path>) -> String {
    let mut text = text.to_owned();
    if let Some(path) = input.and_then(Path::to_str).filter(|p| !p.is_empty()) {
        text = text.replace(path, "<input>");
    }
    crate::domain::text::echo(&text, DETAIL_CHARS)
}
