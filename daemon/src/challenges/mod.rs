//! Challenge sources: where a round's challenges come from, and the validation every challenge passes
//! before any miner container sees it.
//!
//! Owns:
//! - the validated value types: [`ChallengeId`] (a strict allow-list, because it becomes the file names
//!   `{id}.json` / `{id}.mp4`), [`Challenge`] (a face that fully decodes as PNG or JPEG, a PCM WAV clip,
//!   an optional transcript) and [`ChallengeSet`] (the round's ordered challenges and their content hash);
//! - the two sources of issue 3 requirement 6: a local directory ([`load_directory`], the format of
//!   docs/reference.md#challenge-dir) and the Subnet API ([`SubnetApiSource`],
//!   `GET {SUBNET_API_URL}/challenge` signed as docs/reference.md#auth-challenge by a [`Signer`] whose key is
//!   loaded from a file or a systemd credential);
//! - the pure parser of every `/challenge` payload form of docs/reference.md#challenge-subnet
//!   ([`parse_payload`]).
//!
//! Must not: read a host path named by remote input (`challenges_dir`, `challenge_dir`, `face_path`,
//! `audio_path` are refused, docs/reference.md#weakness-9), follow a symlink or open a FIFO or device inside
//! a challenge directory, read more than a size limit from anything, parse the body of a non-2xx
//! response, follow redirects, hand out a challenge that failed validation, or put key material in an
//! error, a log line or a `Debug` string. It does not schedule retries: errors say whether they are
//! transient ([`ChallengeError::is_transient`]) and the caller backs off.

mod dir;
mod error;
mod id;
mod media;
mod payload;
mod set;
mod signer;
mod subnet;

#[cfg(test)]
mod testkit;

pub use dir::load_directory;
pub(crate) use dir::read_bounded;
pub use error::{Asset, ChallengeError, IdError, KeyError, MediaError, TextError, UnsafeFileReason};
pub use id::ChallengeId;
pub use media::{
    AudioInfo, ImageFormat, ImageInfo, RgbImage, SampleFormat, decode_rgb, validate_audio, validate_face,
    validate_text,
};
pub use payload::parse_payload;
pub use set::{Challenge, ChallengeSet};
pub use signer::{KeySource, SignedHeaders, Signer, legacy_message, read_secret};
pub use subnet::{CHALLENGE_PATH, FetchTimeouts, SubnetApiSource};

/// Bounds applied to every challenge, whatever its source. The defaults follow issue 3: faces of
/// 64–4096 px per side and at most 16 MiB, WAV clips of 0.5–30 s at 8–48 kHz, one or two channels,
/// at most 32 MiB, transcripts of at most 2000 characters, payloads of at most 256 MiB and 64
/// challenges.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest face file accepted, in bytes.
    pub max_face_bytes: u64,
    /// Smallest accepted width and height of a face, in pixels.
    pub min_face_side: u32,
    /// Largest accepted width and height of a face, in pixels.
    pub max_face_side: u32,
    /// Largest audio file accepted, in bytes.
    pub max_audio_bytes: u64,
    /// Lowest accepted sample rate, in Hz.
    pub min_sample_rate: u32,
    /// Highest accepted sample rate, in Hz.
    pub max_sample_rate: u32,
    /// Most audio channels accepted (at least one is always required).
    pub max_channels: u16,
    /// Shortest accepted clip, in seconds.
    pub min_audio_secs: f64,
    /// Longest accepted clip, in seconds.
    pub max_audio_secs: f64,
    /// Longest transcript accepted, in Unicode scalar values after trimming.
    pub max_text_chars: usize,
    /// Largest `/challenge` response body accepted, in bytes (enforced while streaming).
    pub max_payload_bytes: u64,
    /// Most challenges in one set, from either source.
    pub max_challenges: usize,
}

impl Limits {
    /// Largest transcript file read: `max_text_chars` characters of at most 4 bytes each, plus
    /// whitespace to trim.
    pub fn max_text_bytes(&self) -> u64 {
        u64::try_from(self.max_text_chars)
            .unwrap_or(u64::MAX)
            .saturating_mul(4)
            .saturating_add(4096)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_face_bytes: 16 * 1024 * 1024,
            min_face_side: 64,
            max_face_side: 4096,
            max_audio_bytes: 32 * 1024 * 1024,
            min_sample_rate: 8_000,
            max_sample_rate: 48_000,
            max_channels: 2,
            min_audio_secs: 0.5,
            max_audio_secs: 30.0,
            max_text_chars: 2000,
            max_payload_bytes: 256 * 1024 * 1024,
            max_challenges: 64,
        }
    }
}
