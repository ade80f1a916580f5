//! The typed errors of the challenge sources and their transient/permanent classification.
//!
//! Owns [`ChallengeError`] and the detail enums it carries, the single place that decides whether a
//! failure is worth retrying ([`ChallengeError::is_transient`]) and the stable reason codes.
//!
//! Must not: echo untrusted text unbounded or with control characters (see [`sanitize`]), or carry key
//! material of any kind: key errors name the file and the field, never a value.

use std::fmt;
use std::path::PathBuf;

use super::id::ChallengeId;
use super::media::ImageFormat;

/// How many characters of an untrusted value an error message may echo.
const ECHO_MAX_CHARS: usize = 80;

/// Which part of a challenge an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asset {
    /// The source face image.
    Face,
    /// The source speech clip.
    Audio,
    /// The transcript.
    Text,
}

impl Asset {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Asset::Face => "face",
            Asset::Audio => "audio",
            Asset::Text => "text",
        }
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an acceptable [`ChallengeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("it is empty")]
    Empty,
    /// The id is longer than [`ChallengeId::MAX_LEN`] bytes.
    #[error("it is {len} bytes long, the maximum is {max}", max = ChallengeId::MAX_LEN)]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// The first character is not an ASCII letter or digit (this also rules out `.`, `..` and a
    /// leading `-`).
    #[error("it must start with an ASCII letter or digit")]
    BadFirstCharacter,
    /// A character outside `[A-Za-z0-9._-]` (a path separator, a control character, non-ASCII...).
    #[error("byte {position} is not one of [A-Za-z0-9._-]")]
    BadCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// The value is not a string at all (payload `challenge_id` of another JSON type, or a
    /// directory name that is not UTF-8).
    #[error("it is not a string")]
    NotAString,
}

/// Why a face or an audio clip was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// The file is larger than the limit (`len` is a lower bound when the read stopped early).
    #[error("{len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Size seen, in bytes.
        len: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The bytes are a recognised format that is not accepted here (mp3, ogg, flac, GIF, WebP...).
    #[error("the data is {detected}, but only {expected} is accepted")]
    UnsupportedFormat {
        /// The format the magic bytes announce.
        detected: &'static str,
        /// What is accepted.
        expected: &'static str,
    },
    /// The bytes do not start like any format we know.
    #[error("the data is not {expected} (unrecognised magic bytes)")]
    Unrecognised {
        /// What is accepted.
        expected: &'static str,
    },
    /// Width or height outside the accepted range (checked from the header, before decoding).
    #[error("{width}x{height} px is outside the accepted {min}..={max} px per side")]
    BadDimensions {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// Smallest side accepted.
        min: u32,
        /// Largest side accepted.
        max: u32,
    },
    /// The image does not fully decode.
    #[error("the {format} image does not decode: {detail}")]
    CorruptImage {
        /// The sniffed format.
        format: ImageFormat,
        /// The decoder's message.
        detail: String,
    },
    /// The WAV file does not parse, or its sample data is truncated or non-finite.
    #[error("the WAV file does not parse: {detail}")]
    CorruptAudio {
        /// What is wrong.
        detail: String,
    },
    /// A WAV sample format other than 8/16/24/32-bit integer or 32-bit float PCM.
    #[error(
        "{bits}-bit {kind} samples are not supported (8/16/24/32-bit integer or 32-bit float PCM only)",
        kind = if *float { "float" } else { "integer" }
    )]
    UnsupportedSampleFormat {
        /// Bits per sample from the header.
        bits: u16,
        /// Whether the header says IEEE float.
        float: bool,
    },
    /// Channel count outside `1..=max`.
    #[error("{channels} channels, the accepted range is 1..={max}")]
    BadChannels {
        /// From the header.
        channels: u16,
        /// The limit.
        max: u16,
    },
    /// Sample rate outside the accepted range.
    #[error("sample rate {rate} Hz is outside the accepted {min}..={max} Hz")]
    BadSampleRate {
        /// From the header.
        rate: u32,
        /// Lowest accepted.
        min: u32,
        /// Highest accepted.
        max: u32,
    },
    /// Duration outside the accepted range.
    #[error("duration {secs:.3} s is outside the accepted {min}..={max} s")]
    BadDuration {
        /// Measured from the sample data.
        secs: f64,
        /// Shortest accepted.
        min: f64,
        /// Longest accepted.
        max: f64,
    },
}

/// Why a transcript was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The file is not UTF-8.
    #[error("it is not valid UTF-8")]
    NotUtf8,
    /// The payload value is neither a string nor null.
    #[error("it is not a string")]
    NotAString,
    /// The transcript file is larger than any transcript within the limit could be.
    #[error("the file is {len} bytes, over the bound of {limit} bytes")]
    FileTooLarge {
        /// Size seen (a lower bound when the read stopped early).
        len: u64,
        /// The bound.
        limit: u64,
    },
    /// Longer than the limit after trimming.
    #[error("{chars} characters is over the limit of {max}")]
    TooLong {
        /// Length in Unicode scalar values.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// A control character (newline and tab included) inside the trimmed text.
    #[error("it contains a control character at character {position}")]
    ControlCharacter {
        /// Index (in characters) of the first one.
        position: usize,
    },
}

/// Why a file inside a challenge directory was not opened or not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeFileReason {
    /// It is a symbolic link (never followed).
    Symlink,
    /// It is not a regular file (directory, FIFO, socket, device); the kind is named.
    NotRegular(&'static str),
    /// It was replaced between the check and the open.
    Replaced,
}

impl fmt::Display for UnsafeFileReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsafeFileReason::Symlink => f.write_str("it is a symbolic link, which is never followed"),
            UnsafeFileReason::NotRegular(kind) => write!(f, "it is a {kind}, not a regular file"),
            UnsafeFileReason::Replaced => f.write_str("it was replaced while being opened"),
        }
    }
}

/// Why a hotkey key file could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be opened or read.
    #[error("cannot read hotkey key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or other permission bits are set.
    #[error(
        "hotkey key file {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600, or load it as a systemd credential)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("hotkey key file {path} is a {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Larger than any real key file.
    #[error("hotkey key file {path} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound.
        limit: u64,
    },
    /// `$CREDENTIALS_DIRECTORY` is unset (the unit has no `LoadCredential=`).
    #[error(
        "hotkey credential {name:?} requested but $CREDENTIALS_DIRECTORY is not set (add LoadCredential= to the unit)"
    )]
    NoCredentialsDirectory {
        /// The credential name.
        name: String,
    },
    /// The credential name is not a plain file name.
    #[error("hotkey credential name {name:?} is not a plain file name")]
    BadCredentialName {
        /// The name, sanitised.
        name: String,
    },
    /// The file is encrypted (bittensor `$NACL` / ansible-vault); the daemon has no password.
    #[error(
        "hotkey key file {path} is encrypted; talkheadd needs an unencrypted hotkey file readable only by its user"
    )]
    Encrypted {
        /// The file.
        path: PathBuf,
    },
    /// Not the JSON of a bittensor hotkey file.
    #[error("hotkey key file {path} is not a bittensor keyfile: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (names a field, never a value).
        detail: String,
    },
    /// The key material does not match `ss58Address` (or `publicKey`, or `secretSeed` does not match
    /// `privateKey`).
    #[error("hotkey key file {path}: {detail}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Which fields disagree.
        detail: String,
    },
}

/// Every failure of a challenge source. `Display` names the challenge (or the payload item, file or
/// URL) and the reason; [`ChallengeError::is_transient`] says whether retrying later can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// A challenge id (directory name or payload `challenge_id`) is not on the allow-list.
    #[error("challenge id {id:?} is refused: {reason}")]
    InvalidId {
        /// The value, sanitised and truncated.
        id: String,
        /// Why.
        reason: IdError,
    },
    /// A face or an audio clip failed validation.
    #[error("challenge {challenge}: {asset}: {reason}")]
    Media {
        /// The challenge.
        challenge: ChallengeId,
        /// Face or audio.
        asset: Asset,
        /// Why.
        #[source]
        reason: MediaError,
    },
    /// The transcript failed validation.
    #[error("challenge {challenge}: transcript: {reason}")]
    Text {
        /// The challenge.
        challenge: ChallengeId,
        /// Why.
        #[source]
        reason: TextError,
    },
    /// A challenge has no face or no audio (directory file absent, payload field absent or null).
    #[error("challenge {challenge}: {asset} is missing ({detail})")]
    MissingAsset {
        /// The challenge.
        challenge: ChallengeId,
        /// Face or audio.
        asset: Asset,
        /// The file or field that was expected.
        detail: &'static str,
    },
    /// A file in a challenge directory is a symlink, not regular, or was swapped while opening.
    #[error("{path}: refused: {reason}")]
    UnsafeFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: UnsafeFileReason,
    },
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No challenges at all.
    #[error("the challenge source holds no challenges")]
    Empty,
    /// More challenges than [`super::Limits::max_challenges`].
    #[error("the challenge source holds {count} challenges, more than the limit of {max}")]
    TooManyChallenges {
        /// How many were seen (a lower bound when counting stopped early).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two challenges share an id (their output files would collide).
    #[error("challenge id {id} appears more than once")]
    DuplicateId {
        /// The repeated id.
        id: ChallengeId,
    },
    /// The set is smaller than the evaluation needs.
    #[error("the challenge set has {have} challenges but {need} are needed ({detail})")]
    NotEnoughChallenges {
        /// Challenges in the set.
        have: usize,
        /// Challenges needed.
        need: usize,
        /// What they are needed for.
        detail: String,
    },
    /// The `/challenge` body is larger than [`super::Limits::max_payload_bytes`].
    #[error("the /challenge payload is over the limit of {limit} bytes{}", len.map(|l| format!(" ({l} bytes)")).unwrap_or_default())]
    PayloadTooLarge {
        /// Announced or read size, when known.
        len: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// The `/challenge` body is not JSON.
    #[error("the /challenge payload is not valid JSON: {source}")]
    PayloadJson {
        /// The parser's error (line and column, no content).
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is not one of the accepted shapes.
    #[error("unsupported /challenge payload format: {detail}")]
    PayloadShape {
        /// What was expected.
        detail: String,
    },
    /// The payload names a path on the executor host; such payloads are refused, never read.
    #[error(
        "the /challenge payload names a host path ({key}{}); host paths from the network are refused, never read",
        item.map(|i| format!(" in item {i}")).unwrap_or_default()
    )]
    HostPathRefused {
        /// The offending key.
        key: &'static str,
        /// The item carrying it, `None` at the top level.
        item: Option<usize>,
    },
    /// A payload item is malformed.
    #[error("/challenge payload item {index}: {detail}")]
    BadItem {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// A base64 field does not decode.
    #[error("challenge {challenge}: {asset}: invalid base64: {detail}")]
    BadBase64 {
        /// The challenge.
        challenge: ChallengeId,
        /// Face or audio.
        asset: Asset,
        /// What is wrong.
        detail: String,
    },
    /// The hotkey key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `subnet_api_url` is not a usable base URL.
    #[error("subnet API URL {url:?} is not usable: {detail}")]
    BadUrl {
        /// The URL, sanitised.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The HTTP client could not be built (TLS roots, ...).
    #[error("cannot build the HTTP client: {source}")]
    Client {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The Subnet API answered with a redirect, which is not followed.
    #[error("GET {url} answered {status} redirect{}; redirects are not followed (fix subnet_api_url)",
        location.as_ref().map(|l| format!(" to {l:?}")).unwrap_or_default())]
    Redirect {
        /// The URL requested.
        url: String,
        /// The 3xx status.
        status: u16,
        /// The `Location` header, sanitised.
        location: Option<String>,
    },
    /// The Subnet API answered a non-2xx status; the body was not parsed.
    #[error("GET {url} answered HTTP {status}{}", retry_after_secs.map(|s| format!(" (Retry-After {s}s)")).unwrap_or_default())]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// `Retry-After` in seconds, when the server sent an integer one.
        retry_after_secs: Option<u64>,
    },
    /// The request or the body did not complete within the timeouts.
    #[error("GET {url} timed out: {source}")]
    Timeout {
        /// The URL requested.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Connection, TLS or body transfer failure.
    #[error("GET {url} failed: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The blocking validation task died (a bug or a shutdown).
    #[error("challenge validation task failed: {detail}")]
    Internal {
        /// What happened.
        detail: String,
    },
}

impl ChallengeError {
    /// Whether the same request may succeed later: network failures, timeouts, HTTP 5xx, 408 and
    /// 429, and internal task failures. Everything else (4xx, redirects, bad payloads, invalid media,
    /// key and configuration problems) is permanent until someone changes something; callers should
    /// still retry those eventually, but with a long backoff and a loud log.
    pub fn is_transient(&self) -> bool {
        match self {
            ChallengeError::Timeout { .. }
            | ChallengeError::Transport { .. }
            | ChallengeError::Internal { .. } => true,
            ChallengeError::HttpStatus { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// `Retry-After` sent with a 429/503, if any.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ChallengeError::HttpStatus { retry_after_secs, .. } => *retry_after_secs,
            _ => None,
        }
    }

    /// Stable snake_case reason code, for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ChallengeError::InvalidId { .. } => "invalid_id",
            ChallengeError::Media { .. } => "invalid_media",
            ChallengeError::Text { .. } => "invalid_text",
            ChallengeError::MissingAsset { .. } => "missing_asset",
            ChallengeError::UnsafeFile { .. } => "unsafe_file",
            ChallengeError::Io { .. } => "io",
            ChallengeError::Empty => "empty",
            ChallengeError::TooManyChallenges { .. } => "too_many_challenges",
            ChallengeError::DuplicateId { .. } => "duplicate_id",
            ChallengeError::NotEnoughChallenges { .. } => "not_enough_challenges",
            ChallengeError::PayloadTooLarge { .. } => "payload_too_large",
            ChallengeError::PayloadJson { .. } => "payload_json",
            ChallengeError::PayloadShape { .. } => "payload_shape",
            ChallengeError::HostPathRefused { .. } => "host_path_refused",
            ChallengeError::BadItem { .. } => "bad_item",
            ChallengeError::BadBase64 { .. } => "bad_base64",
            ChallengeError::Key(_) => "key",
            ChallengeError::BadUrl { .. } => "bad_url",
            ChallengeError::Client { .. } => "client",
            ChallengeError::Redirect { .. } => "redirect",
            ChallengeError::HttpStatus { .. } => "http_status",
            ChallengeError::Timeout { .. } => "timeout",
            ChallengeError::Transport { .. } => "transport",
            ChallengeError::Internal { .. } => "internal",
        }
    }
}

/// Makes untrusted text safe to echo: at most [`ECHO_MAX_CHARS`] characters ([`crate::domain::text`]).
pub(crate) fn sanitize(text: &str) -> String {
    crate::domain::text::echo(text, ECHO_MAX_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_truncates_and_replaces_controls() {
        assert_eq!(sanitize("a\nb"), "a b");
        let long = "x".repeat(200);
        let s = sanitize(&long);
        assert_eq!(s.chars().count(), ECHO_MAX_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(sanitize(&"y".repeat(ECHO_MAX_CHARS)), "y".repeat(ECHO_MAX_CHARS));
    }
}
