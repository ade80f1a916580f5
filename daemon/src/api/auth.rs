//! Request authentication: sr25519 signed headers from an allow-list of public hotkeys.
//!
//! Owns both wire schemes (see `docs/auth.md`):
//! - **legacy**, byte-compatible with the reference validator (docs/reference.md#auth-headers): `X-Hotkey`,
//!   `X-Timestamp`, `X-Signature` over `<Bytes>{path}:{int(ts)}:{hotkey}</Bytes>`;
//! - **talkhead-v1** (`X-Auth-Scheme: talkhead-v1`), which also binds the method, query, a nonce and the
//!   SHA-256 of the body, and rejects replays through a bounded in-memory nonce cache.
//!
//! It also owns the mapping from every authentication failure to an HTTP status and a stable reason code.
//!
//! Must not: read the clock (callers pass `now`), read or buffer bodies (the HTTP layer streams them
//! with its own bound and hands the bytes to [`Authenticator::check_body`]), hold its lock across an
//! `.await` (the API is synchronous), log, or put a signature or any other secret in an error message.
//! It never needs a private key: verification uses only the allow-listed public keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use hyper::http::{HeaderMap, HeaderValue, Method, StatusCode};
use schnorrkel::{PublicKey, Signature};
use sha2::{Digest, Sha256};

use crate::domain::hotkey::{Hotkey, HotkeyError};

pub use crate::domain::signing::{
    HEADER_AUTH_SCHEME, HEADER_CONTENT_SHA256, HEADER_HOTKEY, HEADER_NONCE, HEADER_SIGNATURE,
    HEADER_TIMESTAMP, SCHEME_TALKHEAD_V1, SIGNING_CONTEXT,
};

/// The reference's `VALIDATOR_MAX_SKEW_SECONDS` default.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 120;

/// A sensible default for [`AuthPolicy::replay_capacity`]: about 270 strong requests per second
/// sustained with the default skew, a few MiB at most.
pub const DEFAULT_REPLAY_CAPACITY: usize = 65_536;

const NONCE_MIN_LEN: usize = 16;
const NONCE_MAX_LEN: usize = 128;
/// Longest legacy timestamp text we bother parsing; real ones are 10–20 characters.
const MAX_TIMESTAMP_LEN: usize = 64;
/// Canonical integer timestamps: up to 19 digits always fit in a `u64`.
const MAX_INT_TIMESTAMP_DIGITS: usize = 19;
/// How much of a header value an error message may echo.
const ECHO_MAX_CHARS: usize = 32;
/// Integral `f64` values strictly below this magnitude convert to `i64` exactly.
const I64_EXACT_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// Who may call, and how strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Public hotkeys whose signatures are accepted. Everyone else gets 403.
    pub allowed: BTreeSet<Hotkey>,
    /// Accepted distance between `X-Timestamp` and the executor clock, inclusive, in seconds.
    pub max_skew_secs: u64,
    /// Most live talkhead-v1 nonces remembered; beyond that requests get 503 until entries expire.
    pub replay_capacity: usize,
    /// When false every request is let through as [`Authorized::anonymous`]; the HTTP layer must then
    /// only listen on loopback.
    pub require_signature: bool,
}

/// Which scheme authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthScheme {
    /// Signatures not required by policy; nothing was checked.
    Anonymous,
    /// The reference's path + timestamp signature (replayable within the skew window).
    Legacy,
    /// `talkhead-v1`: method, path, query, timestamp, nonce and body digest are signed.
    TalkheadV1,
}

impl AuthScheme {
    /// Stable lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Anonymous => "anonymous",
            AuthScheme::Legacy => "legacy",
            AuthScheme::TalkheadV1 => SCHEME_TALKHEAD_V1,
        }
    }
}

impl fmt::Display for AuthScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Proof that a request's headers passed [`Authenticator::check_headers`]. Only this module can build
/// a signed one; the body (empty for `GET`) still has to pass [`Authenticator::check_body`], which for
/// talkhead-v1 is also where the nonce is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    hotkey: Option<Hotkey>,
    scheme: AuthScheme,
    body_sha256: Option<[u8; 32]>,
    nonce: Option<PendingNonce>,
}

/// A verified talkhead-v1 nonce, recorded by `check_body` once the body matched too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingNonce {
    key: ReplayKey,
    hotkey: Hotkey,
    /// Sanitised copy for error messages.
    nonce: String,
    /// The clock reading `check_headers` was given; the entry's lifetime counts from it.
    seen_at: Instant,
}

impl Authorized {
    /// The result when the policy does not require signatures: no hotkey, no body binding.
    pub fn anonymous() -> Authorized {
        Authorized {
            hotkey: None,
            scheme: AuthScheme::Anonymous,
            body_sha256: None,
            nonce: None,
        }
    }

    /// The verified caller, `None` for anonymous requests.
    pub fn hotkey(&self) -> Option<&Hotkey> {
        self.hotkey.as_ref()
    }

    /// The scheme that authenticated the request.
    pub fn scheme(&self) -> AuthScheme {
        self.scheme
    }

    /// The body digest the signature commits to (talkhead-v1 only).
    pub fn body_sha256(&self) -> Option<&[u8; 32]> {
        self.body_sha256.as_ref()
    }
}

impl fmt::Display for Authorized {
    /// `anonymous`, or `<hotkey> (<scheme>)`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hotkey {
            Some(hotkey) => write!(f, "{hotkey} ({})", self.scheme),
            None => f.write_str(self.scheme.as_str()),
        }
    }
}

/// Why a request was refused. [`AuthError::status`] and [`AuthError::reason`] are the single mapping
/// to HTTP; the `Display` text names the header at fault and never contains a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A required header is absent.
    #[error("missing required header {header}")]
    MissingHeader {
        /// Canonical header name.
        header: &'static str,
    },
    /// A header that must be single appears more than once (ambiguous between proxies and us).
    #[error("header {header} must appear exactly once")]
    DuplicateHeader {
        /// Canonical header name.
        header: &'static str,
    },
    /// `X-Timestamp` is not a number of the accepted form.
    #[error("header {HEADER_TIMESTAMP} is not a valid timestamp ({detail}): {value:?}")]
    BadTimestamp {
        /// What is wrong with it.
        detail: &'static str,
        /// The value, truncated and sanitised.
        value: String,
    },
    /// `X-Timestamp` is further from the executor clock than the policy allows.
    #[error(
        "header {HEADER_TIMESTAMP} {value:?} is more than {max_skew_secs}s away from the executor clock ({now_unix_secs})"
    )]
    TimestampSkew {
        /// The value, truncated and sanitised.
        value: String,
        /// The executor's time, whole seconds.
        now_unix_secs: i64,
        /// The policy's window.
        max_skew_secs: u64,
    },
    /// `X-Hotkey` is not a valid Bittensor SS58 address.
    #[error("header {HEADER_HOTKEY} is not a valid Bittensor hotkey ({source}): {value:?}")]
    BadHotkey {
        /// The value, truncated and sanitised.
        value: String,
        /// The parse failure.
        #[source]
        source: HotkeyError,
    },
    /// `X-Hotkey` is valid but not on the allow-list.
    #[error("hotkey {hotkey} (header {HEADER_HOTKEY}) is not allowed on this executor")]
    HotkeyNotAllowed {
        /// The refused hotkey.
        hotkey: Hotkey,
    },
    /// `X-Signature` is not 64 bytes of hex.
    #[error("header {HEADER_SIGNATURE} is not a 64-byte hex signature ({detail})")]
    BadSignatureEncoding {
        /// What is wrong with it (never the value).
        detail: &'static str,
    },
    /// The signature does not verify for this hotkey and message.
    #[error("header {HEADER_SIGNATURE} does not verify for hotkey {hotkey} under the {scheme} scheme")]
    BadSignature {
        /// The claimed signer.
        hotkey: Hotkey,
        /// The scheme whose message was checked.
        scheme: AuthScheme,
    },
    /// `X-Nonce` is malformed.
    #[error(
        "header {HEADER_NONCE} must be {NONCE_MIN_LEN} to {NONCE_MAX_LEN} characters of [A-Za-z0-9_-] ({detail}): {value:?}"
    )]
    BadNonce {
        /// What is wrong with it.
        detail: &'static str,
        /// The value, truncated and sanitised.
        value: String,
    },
    /// This hotkey already used this nonce within the replay window.
    #[error("header {HEADER_NONCE} {nonce:?} was already used by hotkey {hotkey} within the replay window")]
    ReplayedNonce {
        /// The signer.
        hotkey: Hotkey,
        /// The nonce, truncated.
        nonce: String,
    },
    /// The replay cache holds `capacity` live nonces; accepting more would make it unbounded.
    #[error("replay cache is full ({capacity} live nonces); retry later")]
    ReplayCacheFull {
        /// The configured bound.
        capacity: usize,
    },
    /// `X-Content-SHA256` is not 64 lowercase hex digits.
    #[error("header {HEADER_CONTENT_SHA256} must be 64 lowercase hex digits ({detail}): {value:?}")]
    BadContentDigest {
        /// What is wrong with it.
        detail: &'static str,
        /// The value, truncated and sanitised.
        value: String,
    },
    /// The body's SHA-256 differs from the signed `X-Content-SHA256`.
    #[error("request body ({body_len} bytes, sha256 {actual}) does not match header {HEADER_CONTENT_SHA256}")]
    BodyDigestMismatch {
        /// Length of the body received.
        body_len: usize,
        /// Lowercase hex SHA-256 of the body received.
        actual: String,
    },
    /// `X-Auth-Scheme` names a scheme we do not implement.
    #[error(
        "header {HEADER_AUTH_SCHEME} {value:?} is not supported (only {SCHEME_TALKHEAD_V1:?}, or no header for legacy)"
    )]
    BadAuthScheme {
        /// The value, truncated and sanitised.
        value: String,
    },
    /// The path or query handed in by the HTTP layer cannot be part of a signed message.
    #[error("request target cannot be authenticated: {detail}")]
    BadRequestTarget {
        /// What is wrong with it.
        detail: &'static str,
    },
    /// The caller passed a non-finite clock reading; failing closed beats comparing against NaN.
    #[error("executor clock reading is not a finite unix time")]
    ClockUnavailable,
}

impl AuthError {
    /// The HTTP status for this failure: malformed input 400; missing credentials, stale timestamp,
    /// failed proof or replay 401; not allowed 403; replay cache full 503; broken clock 500.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::DuplicateHeader { .. }
            | AuthError::BadTimestamp { .. }
            | AuthError::BadHotkey { .. }
            | AuthError::BadSignatureEncoding { .. }
            | AuthError::BadNonce { .. }
            | AuthError::BadContentDigest { .. }
            | AuthError::BodyDigestMismatch { .. }
            | AuthError::BadAuthScheme { .. }
            | AuthError::BadRequestTarget { .. } => StatusCode::BAD_REQUEST,
            // No credentials is "authentication required" (RFC 9110 §15.5.2); garbled ones are 400.
            AuthError::MissingHeader { .. }
            | AuthError::TimestampSkew { .. }
            | AuthError::BadSignature { .. }
            | AuthError::ReplayedNonce { .. } => StatusCode::UNAUTHORIZED,
            AuthError::HotkeyNotAllowed { .. } => StatusCode::FORBIDDEN,
            AuthError::ReplayCacheFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::ClockUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable snake_case reason code for response bodies and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingHeader { .. } => "missing_header",
            AuthError::DuplicateHeader { .. } => "duplicate_header",
            AuthError::BadTimestamp { .. } => "bad_timestamp",
            AuthError::TimestampSkew { .. } => "timestamp_skew",
            AuthError::BadHotkey { .. } => "bad_hotkey",
            AuthError::HotkeyNotAllowed { .. } => "hotkey_not_allowed",
            AuthError::BadSignatureEncoding { .. } => "bad_signature_encoding",
            AuthError::BadSignature { .. } => "bad_signature",
            AuthError::BadNonce { .. } => "bad_nonce",
            AuthError::ReplayedNonce { .. } => "replayed_nonce",
            AuthError::ReplayCacheFull { .. } => "replay_cache_full",
            AuthError::BadContentDigest { .. } => "bad_content_digest",
            AuthError::BodyDigestMismatch { .. } => "body_digest_mismatch",
            AuthError::BadAuthScheme { .. } => "bad_auth_scheme",
            AuthError::BadRequestTarget { .. } => "bad_request_target",
            AuthError::ClockUnavailable => "clock_unavailable",
        }
    }
}

/// Allow-listed hotkeys with their decoded public keys.
type AllowedKeys = BTreeMap<Hotkey, Option<PublicKey>>;

fn decode_keys(allowed: &BTreeSet<Hotkey>) -> AllowedKeys {
    allowed
        .iter()
        .map(|hotkey| (hotkey.clone(), PublicKey::from_bytes(hotkey.public_key()).ok()))
        .collect()
}

/// Verifies signed headers against an [`AuthPolicy`] and remembers talkhead-v1 nonces.
///
/// Cheap to share (`Arc<Authenticator>`): the only mutable state is the replay cache behind a `Mutex`
/// that is taken for a few hash-map operations and never across an `.await`.
pub struct Authenticator {
    policy: AuthPolicy,
    /// Allow-listed keys decoded once. `None` when the 32 bytes are not a valid Ristretto point: such a
    /// hotkey is allowed by policy but no signature can ever verify for it. Replaced whole on a
    /// configuration reload (the replay cache survives it).
    keys: std::sync::RwLock<Arc<AllowedKeys>>,
    replay: Mutex<ReplayCache>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Nonces are not secret, but dumping thousands of cache entries into a log line helps no one.
        f.debug_struct("Authenticator")
            .field("policy", &self.policy)
            // `try_lock`: formatting must never wait on (or deadlock with) a request in flight.
            .field(
                "replay_cache_len",
                &self.replay.try_lock().ok().map(|cache| cache.len()),
            )
            .finish()
    }
}

/// Headers common to both schemes, extracted and syntactically checked.
struct SignedHeaders<'a> {
    hotkey: &'a str,
    timestamp_text: &'a str,
    signature: [u8; 64],
}

/// The extra talkhead-v1 headers, syntactically checked.
struct StrongHeaders<'a> {
    timestamp: u64,
    nonce: &'a str,
    body_sha256_hex: &'a str,
    body_sha256: [u8; 32],
}

impl Authenticator {
    /// Builds an authenticator; allow-listed public keys are decoded here, once.
    pub fn new(policy: AuthPolicy) -> Authenticator {
        let keys = std::sync::RwLock::new(Arc::new(decode_keys(&policy.allowed)));
        let ttl_secs = policy.max_skew_secs.saturating_mul(2) as f64;
        let replay = Mutex::new(ReplayCache::new(policy.replay_capacity, ttl_secs));
        Authenticator { policy, keys, replay }
    }

    /// Replace the allow-list (configuration reload). Requests already past the check finish under
    /// the old list; nonces already seen stay seen.
    pub fn set_allowed(&self, allowed: &BTreeSet<Hotkey>) {
        let keys = Arc::new(decode_keys(allowed));
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
    }

    fn allowed_keys(&self) -> Arc<AllowedKeys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The policy this authenticator enforces.
    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }

    /// Live entries in the replay cache (for metrics).
    pub fn replay_cache_len(&self) -> usize {
        self.lock_replay().len()
    }

    /// Authenticates a request from its method, raw path, raw query (without `?`) and headers at
    /// `now_unix_secs` (the caller's clock).
    ///
    /// Order: scheme and header presence/syntax (401 missing, 400 garbled), timestamp skew (401),
    /// hotkey syntax (400), allow-list (403), signature (401), then for talkhead-v1 a replay pre-check
    /// (401 replayed nonce, 503 cache full) that records nothing. The caller must then pass the body
    /// (empty for body-less requests) to [`Authenticator::check_body`].
    pub fn check_headers(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        now_unix_secs: f64,
    ) -> Result<Authorized, AuthError> {
        if !self.policy.require_signature {
            return Ok(Authorized::anonymous());
        }
        if !now_unix_secs.is_finite() {
            return Err(AuthError::ClockUnavailable);
        }
        match single_header(headers, HEADER_AUTH_SCHEME)? {
            None => self.check_legacy(path, headers, now_unix_secs),
            Some(value) if value.as_bytes() == SCHEME_TALKHEAD_V1.as_bytes() => {
                self.check_talkhead_v1(method, path, query, headers, now_unix_secs)
            }
            Some(value) => Err(AuthError::BadAuthScheme {
                value: sanitize(value.as_bytes()),
            }),
        }
    }

    /// Checks the body against the digest the signature committed to, then (talkhead-v1) consumes the
    /// nonce: atomically, so of two concurrent copies of one request exactly one gets through. Always
    /// `Ok` for the legacy and anonymous schemes, which do not cover the body.
    ///
    /// The nonce is recorded only here, once signature *and* body are known good, so an on-path
    /// attacker who pairs captured headers with another body cannot burn the genuine request's nonce.
    pub fn check_body(&self, authorized: &Authorized, body: &[u8]) -> Result<(), AuthError> {
        let Some(expected) = authorized.body_sha256.as_ref() else {
            return Ok(());
        };
        let actual: [u8; 32] = Sha256::digest(body).into();
        if &actual != expected {
            return Err(AuthError::BodyDigestMismatch {
                body_len: body.len(),
                actual: hex::encode(actual),
            });
        }
        if let Some(pending) = &authorized.nonce {
            self.lock_replay()
                .admit(&pending.key, pending.seen_at.0, true)
                .map_err(|refusal| self.refusal_error(refusal, pending))?;
        }
        Ok(())
    }

    fn check_legacy(
        &self,
        path: &str,
        headers: &HeaderMap,
        now_unix_secs: f64,
    ) -> Result<Authorized, AuthError> {
        check_target(path, None)?;
        let signed = SignedHeaders::parse(headers)?;
        let timestamp = parse_python_float(signed.timestamp_text)?;
        self.check_skew(timestamp, signed.timestamp_text, now_unix_secs)?;
        let int_ts = truncate_like_python_int(timestamp, signed.timestamp_text)?;
        let hotkey = self.allowed_hotkey(signed.hotkey)?;
        let message = format!("<Bytes>{path}:{int_ts}:{hotkey}</Bytes>");
        self.verify(&hotkey, AuthScheme::Legacy, message.as_bytes(), &signed.signature)?;
        Ok(Authorized {
            hotkey: Some(hotkey),
            scheme: AuthScheme::Legacy,
            body_sha256: None,
            nonce: None,
        })
    }

    fn check_talkhead_v1(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        now_unix_secs: f64,
    ) -> Result<Authorized, AuthError> {
        check_target(path, query)?;
        let signed = SignedHeaders::parse(headers)?;
        let strong = StrongHeaders::parse(headers, signed.timestamp_text)?;
        self.check_skew(strong.timestamp as f64, signed.timestamp_text, now_unix_secs)?;
        let hotkey = self.allowed_hotkey(signed.hotkey)?;
        let message = format!(
            "<Bytes>{SCHEME_TALKHEAD_V1}\n{method}\n{path}\n{query}\n{timestamp}\n{nonce}\n{digest}\n{hotkey}</Bytes>",
            method = method.as_str(),
            query = query.unwrap_or(""),
            timestamp = strong.timestamp,
            nonce = strong.nonce,
            digest = strong.body_sha256_hex,
        );
        self.verify(
            &hotkey,
            AuthScheme::TalkheadV1,
            message.as_bytes(),
            &signed.signature,
        )?;
        let pending = PendingNonce {
            key: replay_key(&hotkey, strong.nonce),
            hotkey: hotkey.clone(),
            nonce: sanitize(strong.nonce.as_bytes()),
            seen_at: Instant(now_unix_secs),
        };
        // Refuse a known replay (or a full cache) before the caller reads the body; nothing is recorded
        // until `check_body`, so only verified requests ever occupy a slot and strangers cannot fill it.
        self.lock_replay()
            .admit(&pending.key, now_unix_secs, false)
            .map_err(|refusal| self.refusal_error(refusal, &pending))?;
        Ok(Authorized {
            hotkey: Some(hotkey),
            scheme: AuthScheme::TalkheadV1,
            body_sha256: Some(strong.body_sha256),
            nonce: Some(pending),
        })
    }

    /// Reference semantics: reject when `|now - ts| > max_skew` (the boundary itself is accepted).
    fn check_skew(&self, timestamp: f64, text: &str, now_unix_secs: f64) -> Result<(), AuthError> {
        let skew = (now_unix_secs - timestamp).abs();
        if skew > self.policy.max_skew_secs as f64 {
            return Err(AuthError::TimestampSkew {
                value: sanitize(text.as_bytes()),
                now_unix_secs: now_unix_secs.trunc() as i64,
                max_skew_secs: self.policy.max_skew_secs,
            });
        }
        Ok(())
    }

    fn allowed_hotkey(&self, text: &str) -> Result<Hotkey, AuthError> {
        let hotkey = Hotkey::parse(text).map_err(|source| AuthError::BadHotkey {
            value: sanitize(text.as_bytes()),
            source,
        })?;
        if !self.allowed_keys().contains_key(&hotkey) {
            return Err(AuthError::HotkeyNotAllowed { hotkey });
        }
        Ok(hotkey)
    }

    fn verify(
        &self,
        hotkey: &Hotkey,
        scheme: AuthScheme,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), AuthError> {
        let bad = || AuthError::BadSignature {
            hotkey: hotkey.clone(),
            scheme,
        };
        let keys = self.allowed_keys();
        let public = keys.get(hotkey).and_then(Option::as_ref).ok_or_else(bad)?;
        // `from_bytes` also rejects signatures without the schnorrkel marker bit (pre-0.8 format),
        // which no current bittensor signer produces.
        let signature = Signature::from_bytes(signature).map_err(|_| bad())?;
        public
            .verify_simple(SIGNING_CONTEXT, message, &signature)
            .map_err(|_| bad())
    }

    fn refusal_error(&self, refusal: Refusal, pending: &PendingNonce) -> AuthError {
        match refusal {
            Refusal::Replayed => AuthError::ReplayedNonce {
                hotkey: pending.hotkey.clone(),
                nonce: pending.nonce.clone(),
            },
            Refusal::Full => AuthError::ReplayCacheFull {
                capacity: self.policy.replay_capacity,
            },
        }
    }

    fn lock_replay(&self) -> std::sync::MutexGuard<'_, ReplayCache> {
        // Every cache operation leaves it consistent, so a panic elsewhere while holding the lock
        // (there is none in this module) cannot leave a half-written entry worth refusing service for.
        self.replay.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<'a> SignedHeaders<'a> {
    fn parse(headers: &'a HeaderMap) -> Result<SignedHeaders<'a>, AuthError> {
        let hotkey = required_header(headers, HEADER_HOTKEY)?;
        let timestamp = required_header(headers, HEADER_TIMESTAMP)?;
        let signature = required_header(headers, HEADER_SIGNATURE)?;

        // Non-ASCII hotkeys are reported by `Hotkey::parse` after the skew check, as in the reference;
        // here they only need to be text.
        let hotkey = hotkey.to_str().map_err(|_| AuthError::BadHotkey {
            value: sanitize(hotkey.as_bytes()),
            source: HotkeyError::InvalidCharacter {
                position: first_non_visible(hotkey.as_bytes()),
            },
        })?;
        let timestamp_text = timestamp.to_str().map_err(|_| AuthError::BadTimestamp {
            detail: "not visible ASCII",
            value: sanitize(timestamp.as_bytes()),
        })?;
        let signature = decode_signature(signature.as_bytes())?;
        Ok(SignedHeaders {
            hotkey,
            timestamp_text,
            signature,
        })
    }
}

impl<'a> StrongHeaders<'a> {
    fn parse(headers: &'a HeaderMap, timestamp_text: &str) -> Result<StrongHeaders<'a>, AuthError> {
        let timestamp = parse_canonical_integer(timestamp_text)?;

        let nonce = required_header(headers, HEADER_NONCE)?;
        let nonce_bytes = nonce.as_bytes();
        let bad_nonce = |detail| AuthError::BadNonce {
            detail,
            value: sanitize(nonce_bytes),
        };
        if !(NONCE_MIN_LEN..=NONCE_MAX_LEN).contains(&nonce_bytes.len()) {
            return Err(bad_nonce("wrong length"));
        }
        if !nonce_bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        {
            return Err(bad_nonce("invalid character"));
        }
        let nonce = nonce.to_str().map_err(|_| bad_nonce("invalid character"))?;

        let digest = required_header(headers, HEADER_CONTENT_SHA256)?;
        let digest_bytes = digest.as_bytes();
        let bad_digest = |detail| AuthError::BadContentDigest {
            detail,
            value: sanitize(digest_bytes),
        };
        if digest_bytes.len() != 64 {
            return Err(bad_digest("wrong length"));
        }
        // Lowercase only: the header text is signed verbatim, one spelling per digest.
        if !digest_bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return Err(bad_digest("not lowercase hex"));
        }
        let mut body_sha256 = [0u8; 32];
        hex::decode_to_slice(digest_bytes, &mut body_sha256).map_err(|_| bad_digest("not lowercase hex"))?;
        let body_sha256_hex = digest.to_str().map_err(|_| bad_digest("not lowercase hex"))?;
        Ok(StrongHeaders {
            timestamp,
            nonce,
            body_sha256_hex,
            body_sha256,
        })
    }
}

/// At most one value; several are refused rather than picking one (a proxy might pick another).
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a HeaderValue>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader { header: name });
    }
    Ok(first)
}

fn required_header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a HeaderValue, AuthError> {
    single_header(headers, name)?.ok_or(AuthError::MissingHeader { header: name })
}

/// The signed message is line- and colon-delimited; a control character from a confused HTTP layer
/// must not get into it.
fn check_target(path: &str, query: Option<&str>) -> Result<(), AuthError> {
    if !path.starts_with('/') {
        return Err(AuthError::BadRequestTarget {
            detail: "path must start with '/'",
        });
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(AuthError::BadRequestTarget {
            detail: "path contains a control character",
        });
    }
    if query.is_some_and(|q| q.bytes().any(|b| b.is_ascii_control())) {
        return Err(AuthError::BadRequestTarget {
            detail: "query contains a control character",
        });
    }
    Ok(())
}

/// Hex with an optional `0x`/`0X`, exactly 64 bytes. Errors never echo the value.
fn decode_signature(raw: &[u8]) -> Result<[u8; 64], AuthError> {
    let hex_part = raw
        .strip_prefix(b"0x")
        .or_else(|| raw.strip_prefix(b"0X"))
        .unwrap_or(raw);
    if hex_part.len() != 128 {
        return Err(AuthError::BadSignatureEncoding {
            detail: "expected 128 hex digits",
        });
    }
    let mut signature = [0u8; 64];
    hex::decode_to_slice(hex_part, &mut signature).map_err(|_| AuthError::BadSignatureEncoding {
        detail: "not hexadecimal",
    })?;
    Ok(signature)
}

/// Parses like Python's `float()` on an ASCII string: surrounding whitespace, an optional sign,
/// `digits[.digits]` / `.digits` / `digits.` with single `_` between digits, optional exponent. `inf`
/// and `nan` parse in Python but are refused here, as are values that overflow to infinity.
fn parse_python_float(text: &str) -> Result<f64, AuthError> {
    let bad = |detail| AuthError::BadTimestamp {
        detail,
        value: sanitize(text.as_bytes()),
    };
    if text.len() > MAX_TIMESTAMP_LEN {
        return Err(bad("too long"));
    }
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    let unsigned = trimmed
        .strip_prefix(['+', '-'])
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    if matches!(unsigned.as_str(), "inf" | "infinity" | "nan") {
        return Err(bad("not finite"));
    }
    let cleaned = python_float_literal(trimmed).ok_or_else(|| bad("not a number"))?;
    let value: f64 = cleaned.parse().map_err(|_| bad("not a number"))?;
    if !value.is_finite() {
        return Err(bad("not finite"));
    }
    Ok(value)
}

/// Validates the Python float literal grammar and returns it without underscores, ready for
/// `f64::from_str` (which rounds correctly, like CPython).
fn python_float_literal(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    if let Some(&sign @ (b'+' | b'-')) = bytes.first() {
        out.push(char::from(sign));
        i = 1;
    }
    let int_digits = digitpart(bytes, &mut i, &mut out);
    let mut frac_digits = 0;
    if bytes.get(i) == Some(&b'.') {
        out.push('.');
        i += 1;
        frac_digits = digitpart(bytes, &mut i, &mut out);
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if let Some(b'e' | b'E') = bytes.get(i) {
        out.push('e');
        i += 1;
        if let Some(&sign @ (b'+' | b'-')) = bytes.get(i) {
            out.push(char::from(sign));
            i += 1;
        }
        if digitpart(bytes, &mut i, &mut out) == 0 {
            return None;
        }
    }
    (i == bytes.len()).then_some(out)
}

/// `digit (["_"] digit)*`: consumes it from `bytes[*i..]` into `out`, returns the digit count (0 when
/// there is none; a dangling `_` is left unconsumed so the caller fails).
fn digitpart(bytes: &[u8], i: &mut usize, out: &mut String) -> usize {
    let mut count = 0;
    loop {
        match bytes.get(*i) {
            Some(&d) if d.is_ascii_digit() => {
                out.push(char::from(d));
                count += 1;
                *i += 1;
            }
            Some(b'_') if count > 0 && bytes.get(*i + 1).is_some_and(u8::is_ascii_digit) => {
                *i += 1;
            }
            _ => return count,
        }
    }
}

/// Python's `int(ts)`: truncation toward zero. Within any sane skew window the value is far below
/// 2^63, where `as i64` of an integral `f64` is exact; anything else is refused rather than saturated.
fn truncate_like_python_int(timestamp: f64, text: &str) -> Result<i64, AuthError> {
    let truncated = timestamp.trunc();
    if truncated.abs() >= I64_EXACT_LIMIT {
        return Err(AuthError::BadTimestamp {
            detail: "out of range",
            value: sanitize(text.as_bytes()),
        });
    }
    Ok(truncated as i64)
}

/// talkhead-v1 timestamps: `0` or a non-zero digit then digits, at most 19 digits, nothing else. The
/// header text is signed verbatim, so only one spelling per instant is accepted.
fn parse_canonical_integer(text: &str) -> Result<u64, AuthError> {
    let bad = |detail| AuthError::BadTimestamp {
        detail,
        value: sanitize(text.as_bytes()),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("talkhead-v1 requires integer unix seconds"));
    }
    if text.len() > MAX_INT_TIMESTAMP_DIGITS {
        return Err(bad("too long"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(bad("leading zero"));
    }
    text.parse()
        .map_err(|_| bad("talkhead-v1 requires integer unix seconds"))
}

fn first_non_visible(bytes: &[u8]) -> usize {
    bytes.iter().position(|b| !b.is_ascii_graphic()).unwrap_or(0)
}

/// A header value made safe to echo (at most [`ECHO_MAX_CHARS`] characters; [`crate::domain::text`]).
fn sanitize(bytes: &[u8]) -> String {
    crate::domain::text::echo(&String::from_utf8_lossy(bytes), ECHO_MAX_CHARS)
}

/// Total order on finite expiry instants, so they can key a `BTreeMap`.
#[derive(Debug, Clone, Copy)]
struct Instant(f64);

impl PartialEq for Instant {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}

impl Eq for Instant {}

impl PartialOrd for Instant {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Instant {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Fixed-size key of a (hotkey, nonce) pair: SHA-256 of the 32-byte public key then the nonce. The
/// public key has a fixed length, so the concatenation is unambiguous; fixed-size keys keep each entry
/// small whatever the nonce length.
type ReplayKey = [u8; 32];

/// Why the replay cache refused a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The (hotkey, nonce) is still live.
    Replayed,
    /// Every slot holds a live entry.
    Full,
}

/// Bounded memory of recently used talkhead-v1 nonces.
///
/// An entry recorded at `now` stays live through `now + 2 × max_skew` inclusive. A request is accepted
/// only while `|now − ts| ≤ max_skew`, and its first use happened no earlier than `ts − max_skew`, so the
/// entry outlives every instant at which a replay could still pass the skew check.
struct ReplayCache {
    capacity: usize,
    ttl_secs: f64,
    /// key → (expiry, insertion sequence), for lookups.
    entries: HashMap<ReplayKey, (Instant, u64)>,
    /// (expiry, insertion sequence) → key, for evicting the oldest expired entries first.
    by_expiry: BTreeMap<(Instant, u64), ReplayKey>,
    next_seq: u64,
}

impl ReplayCache {
    fn new(capacity: usize, ttl_secs: f64) -> ReplayCache {
        ReplayCache {
            capacity,
            ttl_secs,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Refuses a live key, or any new key while the cache is full of live entries; otherwise records
    /// the key when `record` is set. `now` must be finite.
    fn admit(&mut self, key: &ReplayKey, now: f64, record: bool) -> Result<(), Refusal> {
        if let Some(&(expiry, seq)) = self.entries.get(key) {
            if now <= expiry.0 {
                return Err(Refusal::Replayed);
            }
            self.entries.remove(key);
            self.by_expiry.remove(&(expiry, seq));
        }
        if self.entries.len() >= self.capacity {
            self.evict_expired(now);
        }
        if self.entries.len() >= self.capacity {
            // Growing would let a burst of valid requests exhaust memory; refusing is recoverable.
            return Err(Refusal::Full);
        }
        if record {
            let expiry = Instant(now + self.ttl_secs);
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            self.entries.insert(*key, (expiry, seq));
            self.by_expiry.insert((expiry, seq), *key);
        }
        Ok(())
    }

    /// Drops every entry whose expiry is before `now`, oldest expiry first.
    fn evict_expired(&mut self, now: f64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0.0 >= now {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }
}

fn replay_key(hotkey: &Hotkey, nonce: &str) -> ReplayKey {
    let mut hasher = Sha256::new();
    hasher.update(hotkey.public_key());
    hasher.update(nonce.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use hyper::http::HeaderName;
    use proptest::prelude::*;
    use schnorrkel::{ExpansionMode, Keypair, MiniSecretKey};

    const NOW: f64 = 1_700_000_000.0;
    const SKEW: u64 = 120;
    const NONCE: &str = "0123456789abcdef_NONCE-1";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn keypair(seed: u8) -> Keypair {
        MiniSecretKey::from_bytes(&[seed; 32])
            .unwrap()
            .expand_to_keypair(ExpansionMode::Ed25519)
    }

    fn hotkey_of(kp: &Keypair) -> Hotkey {
        Hotkey::from_public_key(kp.public.to_bytes())
    }

    fn sign(kp: &Keypair, message: &str) -> String {
        hex::encode(kp.sign_simple(SIGNING_CONTEXT, message.as_bytes()).to_bytes())
    }

    fn authenticator_with(allowed: &[&Keypair], capacity: usize) -> Authenticator {
        Authenticator::new(AuthPolicy {
            allowed: allowed.iter().map(|kp| hotkey_of(kp)).collect(),
            max_skew_secs: SKEW,
            replay_capacity: capacity,
            require_signature: true,
        })
    }

    fn authenticator() -> Authenticator {
        authenticator_with(&[&keypair(7)], 16)
    }

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn legacy_headers(kp: &Keypair, path: &str, ts: &str, int_ts: &str) -> HeaderMap {
        let hotkey = hotkey_of(kp);
        let sig = sign(kp, &format!("<Bytes>{path}:{int_ts}:{hotkey}</Bytes>"));
        header_map(&[
            (HEADER_HOTKEY, hotkey.as_str()),
            (HEADER_TIMESTAMP, ts),
            (HEADER_SIGNATURE, &sig),
        ])
    }

    struct Strong<'a> {
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        ts: &'a str,
        nonce: &'a str,
        body: &'a [u8],
    }

    impl Default for Strong<'_> {
        fn default() -> Self {
            Strong {
                method: "POST",
                path: "/update",
                query: None,
                ts: "1700000000",
                nonce: NONCE,
                body: b"[]",
            }
        }
    }

    fn strong_headers(kp: &Keypair, s: &Strong<'_>) -> HeaderMap {
        let hotkey = hotkey_of(kp);
        let digest = hex::encode(Sha256::digest(s.body));
        let message = format!(
            "<Bytes>talkhead-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}</Bytes>",
            s.method,
            s.path,
            s.query.unwrap_or(""),
            s.ts,
            s.nonce,
            digest,
            hotkey
        );
        header_map(&[
            (HEADER_AUTH_SCHEME, SCHEME_TALKHEAD_V1),
            (HEADER_HOTKEY, hotkey.as_str()),
            (HEADER_TIMESTAMP, s.ts),
            (HEADER_NONCE, s.nonce),
            (HEADER_CONTENT_SHA256, &digest),
            (HEADER_SIGNATURE, &sign(kp, &message)),
        ])
    }

    fn set(headers: &mut HeaderMap, name: &str, value: &str) {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }

    fn check(auth: &Authenticator, headers: &HeaderMap) -> Result<Authorized, AuthError> {
        auth.check_headers(&Method::POST, "/update", None, headers, NOW)
    }

    /// What the HTTP layer does: headers, then the body (which consumes a talkhead-v1 nonce).
    fn accept(
        auth: &Authenticator,
        headers: &HeaderMap,
        body: &[u8],
        now: f64,
    ) -> Result<Authorized, AuthError> {
        let authorized = auth.check_headers(&Method::POST, "/update", None, headers, now)?;
        auth.check_body(&authorized, body)?;
        Ok(authorized)
    }

    fn assert_err(result: Result<Authorized, AuthError>, reason: &str, status: StatusCode) -> AuthError {
        let err = result.expect_err("expected an auth error");
        assert_eq!(err.reason(), reason, "{err}");
        assert_eq!(err.status(), status, "{err}");
        err
    }

    // ---- legacy scheme ----

    #[test]
    fn legacy_valid_signature_is_accepted() {
        let kp = keypair(7);
        let auth = authenticator();
        let ok = check(&auth, &legacy_headers(&kp, "/update", "1700000000", "1700000000")).unwrap();
        assert_eq!(ok.hotkey(), Some(&hotkey_of(&kp)));
        assert_eq!(ok.scheme(), AuthScheme::Legacy);
        assert_eq!(ok.body_sha256(), None);
        assert_eq!(auth.check_body(&ok, b"anything"), Ok(()));
        assert_eq!(ok.to_string(), format!("{} (legacy)", hotkey_of(&kp)));
    }

    #[test]
    fn legacy_signature_accepts_0x_and_uppercase_hex() {
        let kp = keypair(7);
        let auth = authenticator();
        let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        let sig = headers[HEADER_SIGNATURE].to_str().unwrap().to_string();
        for variant in [format!("0x{sig}"), format!("0X{sig}"), sig.to_uppercase()] {
            set(&mut headers, HEADER_SIGNATURE, &variant);
            check(&auth, &headers).unwrap();
        }
    }

    #[test]
    fn legacy_float_timestamp_is_truncated_like_python_int() {
        let kp = keypair(7);
        let auth = authenticator();
        for (ts, int_ts) in [
            ("1700000000.9", "1700000000"),
            ("1699999999.999", "1699999999"),
            ("1.7e9", "1700000000"),
            ("1_700_000_000", "1700000000"),
            ("+1700000000.", "1700000000"),
            ("1700000010.5E0", "1700000010"),
        ] {
            let headers = legacy_headers(&kp, "/update", ts, int_ts);
            check(&auth, &headers).unwrap_or_else(|e| panic!("{ts}: {e}"));
        }
        // Signing the un-truncated text does not verify.
        let headers = legacy_headers(&kp, "/update", "1700000000.9", "1700000000.9");
        assert_err(check(&auth, &headers), "bad_signature", StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn legacy_path_is_bound() {
        let kp = keypair(7);
        let auth = authenticator();
        let headers = legacy_headers(&kp, "/metrics", "1700000000", "1700000000");
        assert_err(check(&auth, &headers), "bad_signature", StatusCode::UNAUTHORIZED);
        auth.check_headers(&Method::GET, "/metrics", Some("x=1"), &headers, NOW)
            .unwrap();
    }

    #[test]
    fn legacy_bad_timestamps_are_400() {
        let kp = keypair(7);
        let auth = authenticator();
        for ts in [
            "",
            "nan",
            "NaN",
            "inf",
            "-Infinity",
            "1e400",
            "abc",
            "0x10",
            "1__0",
            "_1",
            "1_",
            "1e",
            ".",
            "1.2.3",
            "1 2",
            "١٢",
        ] {
            let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
            match HeaderValue::from_str(ts) {
                Ok(value) => {
                    headers.insert(HEADER_TIMESTAMP, value);
                }
                Err(_) => {
                    headers.insert(HEADER_TIMESTAMP, HeaderValue::from_bytes(ts.as_bytes()).unwrap());
                }
            }
            let err = assert_err(check(&auth, &headers), "bad_timestamp", StatusCode::BAD_REQUEST);
            assert!(err.to_string().contains(HEADER_TIMESTAMP), "{err}");
        }
    }

    #[test]
    fn python_float_grammar() {
        let ok = |s: &str| parse_python_float(s).unwrap();
        assert_eq!(ok("  42 "), 42.0);
        assert_eq!(ok("-1.5"), -1.5);
        assert_eq!(ok(".5"), 0.5);
        assert_eq!(ok("5."), 5.0);
        assert_eq!(ok("1_0.2_5e1_0"), 10.25e10);
        assert_eq!(ok("1e-400"), 0.0);
        for bad in [
            "", "+", "-", "e5", "1e+", "._5", "1._5", "1.5_", "++1", "0b1", "1,5", "∞",
        ] {
            assert!(parse_python_float(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(truncate_like_python_int(-0.7, "").unwrap(), 0);
        assert_eq!(truncate_like_python_int(-1.7, "").unwrap(), -1);
        assert!(truncate_like_python_int(1e19, "").is_err());
    }

    #[test]
    fn missing_headers_are_401_duplicates_400_and_both_named() {
        let kp = keypair(7);
        let auth = authenticator();
        for name in [HEADER_HOTKEY, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
            headers.remove(name);
            let err = assert_err(check(&auth, &headers), "missing_header", StatusCode::UNAUTHORIZED);
            assert_eq!(err, AuthError::MissingHeader { header: name });
            assert!(err.to_string().contains(name));

            let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
            let value = headers[name].clone();
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            let err = assert_err(
                check(&auth, &headers),
                "duplicate_header",
                StatusCode::BAD_REQUEST,
            );
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let kp = keypair(7);
        let hotkey = hotkey_of(&kp);
        let sig = sign(&kp, &format!("<Bytes>/update:1700000000:{hotkey}</Bytes>"));
        let headers = header_map(&[
            ("x-hotkey", hotkey.as_str()),
            ("X-TIMESTAMP", "1700000000"),
            ("x-Signature", &sig),
        ]);
        check(&authenticator(), &headers).unwrap();
    }

    #[test]
    fn skew_edges_inclusive_window() {
        let kp = keypair(7);
        let auth = authenticator();
        let at = |ts: i64| {
            let t = ts.to_string();
            check(&auth, &legacy_headers(&kp, "/update", &t, &t))
        };
        let now = NOW as i64;
        let skew = SKEW as i64;
        at(now - skew).unwrap();
        at(now + skew).unwrap();
        let err = assert_err(at(now - skew - 1), "timestamp_skew", StatusCode::UNAUTHORIZED);
        assert!(err.to_string().contains(HEADER_TIMESTAMP), "{err}");
        assert_err(at(now + skew + 1), "timestamp_skew", StatusCode::UNAUTHORIZED);

        // Fractional: 0.5 s beyond the window is rejected even though int(ts) would be inside.
        let ts = format!("{}.5", now + skew);
        let headers = legacy_headers(&kp, "/update", &ts, &(now + skew).to_string());
        assert_err(check(&auth, &headers), "timestamp_skew", StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn skew_is_checked_before_the_hotkey_and_signature() {
        let auth = authenticator();
        let headers = header_map(&[
            (HEADER_HOTKEY, "not-a-hotkey"),
            (HEADER_TIMESTAMP, "1"),
            (HEADER_SIGNATURE, &"00".repeat(64)),
        ]);
        assert_err(check(&auth, &headers), "timestamp_skew", StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn bad_hotkey_is_400() {
        let kp = keypair(7);
        let auth = authenticator();
        let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        // Polkadot-format Alice: well formed, wrong network.
        set(
            &mut headers,
            HEADER_HOTKEY,
            "15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5",
        );
        let err = assert_err(check(&auth, &headers), "bad_hotkey", StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("prefix 0"), "{err}");
        assert!(err.to_string().contains(HEADER_HOTKEY), "{err}");
    }

    #[test]
    fn unlisted_hotkey_is_403_even_with_a_valid_signature() {
        let stranger = keypair(8);
        let auth = authenticator();
        let headers = legacy_headers(&stranger, "/update", "1700000000", "1700000000");
        let err = assert_err(
            check(&auth, &headers),
            "hotkey_not_allowed",
            StatusCode::FORBIDDEN,
        );
        assert!(err.to_string().contains(hotkey_of(&stranger).as_str()));
    }

    #[test]
    fn signature_encoding_errors_are_400_and_never_echo_the_value() {
        let kp = keypair(7);
        let auth = authenticator();
        let good = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        let sig = good[HEADER_SIGNATURE].to_str().unwrap().to_string();
        for bad in [
            sig[..126].to_string(),
            format!("{sig}00"),
            format!("{}zz", &sig[..126]),
            format!("0x0x{}", &sig[..126]),
            String::new(),
        ] {
            let mut headers = good.clone();
            set(&mut headers, HEADER_SIGNATURE, &bad);
            let err = assert_err(
                check(&auth, &headers),
                "bad_signature_encoding",
                StatusCode::BAD_REQUEST,
            );
            let text = err.to_string();
            assert!(text.contains(HEADER_SIGNATURE), "{text}");
            assert!(!text.contains(&sig[..16]), "{text}");
        }
    }

    #[test]
    fn tampered_signature_is_401_and_never_echoed() {
        let kp = keypair(7);
        let auth = authenticator();
        let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        let sig = headers[HEADER_SIGNATURE].to_str().unwrap().to_string();
        let mut bytes = hex::decode(&sig).unwrap();
        bytes[0] ^= 1;
        set(&mut headers, HEADER_SIGNATURE, &hex::encode(&bytes));
        let err = assert_err(check(&auth, &headers), "bad_signature", StatusCode::UNAUTHORIZED);
        assert!(!err.to_string().contains(&sig[2..18]));
        // All-zero: no schnorrkel marker bit.
        set(&mut headers, HEADER_SIGNATURE, &"00".repeat(64));
        assert_err(check(&auth, &headers), "bad_signature", StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn other_signing_context_does_not_verify() {
        let kp = keypair(7);
        let hotkey = hotkey_of(&kp);
        let message = format!("<Bytes>/update:1700000000:{hotkey}</Bytes>");
        let sig = hex::encode(kp.sign_simple(b"talkhead", message.as_bytes()).to_bytes());
        let headers = header_map(&[
            (HEADER_HOTKEY, hotkey.as_str()),
            (HEADER_TIMESTAMP, "1700000000"),
            (HEADER_SIGNATURE, &sig),
        ]);
        assert_err(
            check(&authenticator(), &headers),
            "bad_signature",
            StatusCode::UNAUTHORIZED,
        );
    }

    #[test]
    fn legacy_replay_is_accepted_as_in_the_reference() {
        let kp = keypair(7);
        let auth = authenticator();
        let headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        check(&auth, &headers).unwrap();
        check(&auth, &headers).unwrap();
        assert_eq!(auth.replay_cache_len(), 0);
    }

    #[test]
    fn echoed_values_are_truncated_and_sanitised() {
        let auth = authenticator();
        let mut long = "A".repeat(20).into_bytes();
        long.push(0xff);
        long.extend_from_slice("B".repeat(100).as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_HOTKEY, HeaderValue::from_static("x"));
        headers.insert(HEADER_SIGNATURE, HeaderValue::from_str(&"00".repeat(64)).unwrap());
        headers.insert(HEADER_TIMESTAMP, HeaderValue::from_bytes(&long).unwrap());
        let err = check(&auth, &headers).unwrap_err();
        let AuthError::BadTimestamp { value, .. } = &err else {
            panic!("{err:?}")
        };
        // 32 characters with the cut mark: the invalid byte is echoed as `?`.
        assert_eq!(value, &format!("{}?{}…", "A".repeat(20), "B".repeat(10)));
        assert!(!err.to_string().contains('\u{ff}'));
    }

    #[test]
    fn unknown_scheme_is_400() {
        let kp = keypair(7);
        let mut headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        set(&mut headers, HEADER_AUTH_SCHEME, "talkhead-v2");
        let err = assert_err(
            check(&authenticator(), &headers),
            "bad_auth_scheme",
            StatusCode::BAD_REQUEST,
        );
        assert!(err.to_string().contains("talkhead-v2"));
    }

    #[test]
    fn anonymous_when_signatures_are_not_required() {
        let auth = Authenticator::new(AuthPolicy {
            allowed: BTreeSet::new(),
            max_skew_secs: SKEW,
            replay_capacity: 0,
            require_signature: false,
        });
        let ok = auth
            .check_headers(&Method::POST, "/update", None, &HeaderMap::new(), f64::NAN)
            .unwrap();
        assert_eq!(ok, Authorized::anonymous());
        assert_eq!(ok.hotkey(), None);
        assert_eq!(ok.to_string(), "anonymous");
        assert_eq!(auth.check_body(&ok, b"x"), Ok(()));
    }

    #[test]
    fn non_finite_clock_fails_closed() {
        let kp = keypair(7);
        let auth = authenticator();
        let headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        for now in [f64::NAN, f64::INFINITY] {
            let err = auth
                .check_headers(&Method::POST, "/update", None, &headers, now)
                .unwrap_err();
            assert_eq!(err.reason(), "clock_unavailable");
            assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
    }

    #[test]
    fn control_characters_in_the_target_are_refused() {
        let kp = keypair(7);
        let auth = authenticator();
        let headers = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        for (path, query) in [("/up\ndate", None), ("update", None), ("/update", Some("a\nb"))] {
            let headers = if query.is_some() {
                strong_headers(&kp, &Strong::default())
            } else {
                headers.clone()
            };
            let err = auth
                .check_headers(&Method::POST, path, query, &headers, NOW)
                .unwrap_err();
            assert_eq!(err.reason(), "bad_request_target");
        }
    }

    // ---- talkhead-v1 ----

    #[test]
    fn strong_valid_request_and_body() {
        let kp = keypair(7);
        let auth = authenticator();
        let s = Strong::default();
        let ok = check(&auth, &strong_headers(&kp, &s)).unwrap();
        assert_eq!(ok.scheme(), AuthScheme::TalkheadV1);
        assert_eq!(ok.hotkey(), Some(&hotkey_of(&kp)));
        let digest: [u8; 32] = Sha256::digest(b"[]").into();
        assert_eq!(ok.body_sha256(), Some(&digest));
        assert_eq!(ok.to_string(), format!("{} (talkhead-v1)", hotkey_of(&kp)));
        let err = auth.check_body(&ok, b"[{}]").unwrap_err();
        assert_eq!(err.reason(), "body_digest_mismatch");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains(HEADER_CONTENT_SHA256));
        auth.check_body(&ok, b"[]").unwrap();
        // The same authorization cannot be used for a second body.
        assert_eq!(
            auth.check_body(&ok, b"[]").unwrap_err().reason(),
            "replayed_nonce"
        );
    }

    #[test]
    fn strong_empty_body_digest() {
        let kp = keypair(7);
        let auth = authenticator();
        let s = Strong {
            method: "GET",
            path: "/metrics",
            body: b"",
            ..Strong::default()
        };
        let headers = strong_headers(&kp, &s);
        assert_eq!(headers[HEADER_CONTENT_SHA256], EMPTY_SHA256);
        let ok = auth
            .check_headers(&Method::GET, "/metrics", None, &headers, NOW)
            .unwrap();
        auth.check_body(&ok, b"").unwrap();
    }

    #[test]
    fn strong_replay_is_rejected() {
        let kp = keypair(7);
        let auth = authenticator();
        let headers = strong_headers(&kp, &Strong::default());
        accept(&auth, &headers, b"[]", NOW).unwrap();
        let err = assert_err(check(&auth, &headers), "replayed_nonce", StatusCode::UNAUTHORIZED);
        assert!(err.to_string().contains(HEADER_NONCE));
        // A fresh signature with the same nonce is still a replay.
        let again = strong_headers(
            &kp,
            &Strong {
                ts: "1700000001",
                ..Strong::default()
            },
        );
        assert_err(check(&auth, &again), "replayed_nonce", StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn nonces_are_per_hotkey() {
        let (a, b) = (keypair(7), keypair(8));
        let auth = authenticator_with(&[&a, &b], 16);
        accept(&auth, &strong_headers(&a, &Strong::default()), b"[]", NOW).unwrap();
        accept(&auth, &strong_headers(&b, &Strong::default()), b"[]", NOW).unwrap();
        assert_eq!(auth.replay_cache_len(), 2);
    }

    #[test]
    fn nonce_is_recorded_only_after_signature_and_body_verify() {
        let kp = keypair(7);
        let auth = authenticator();
        let good = strong_headers(&kp, &Strong::default());
        let mut forged = good.clone();
        set(&mut forged, HEADER_SIGNATURE, &sign(&keypair(9), "whatever"));
        assert_err(check(&auth, &forged), "bad_signature", StatusCode::UNAUTHORIZED);
        // Not allowed and not well-formed requests do not burn it either.
        let stranger = strong_headers(&keypair(8), &Strong::default());
        assert_err(
            check(&auth, &stranger),
            "hotkey_not_allowed",
            StatusCode::FORBIDDEN,
        );
        assert_eq!(auth.replay_cache_len(), 0);
        // Headers that verify, paired with another body, do not burn it either.
        let ok = check(&auth, &good).unwrap();
        assert_eq!(auth.replay_cache_len(), 0);
        let err = auth.check_body(&ok, b"[\"tampered\"]").unwrap_err();
        assert_eq!(err.reason(), "body_digest_mismatch");
        assert_eq!(auth.replay_cache_len(), 0);
        // The genuine request goes through once, and only once.
        accept(&auth, &good, b"[]", NOW).unwrap();
        assert_eq!(auth.replay_cache_len(), 1);
        assert_err(
            accept(&auth, &good, b"[]", NOW),
            "replayed_nonce",
            StatusCode::UNAUTHORIZED,
        );
    }

    #[test]
    fn concurrent_copies_of_one_request_get_through_once() {
        let kp = keypair(7);
        let auth = authenticator();
        let headers = strong_headers(&kp, &Strong::default());
        // Both pass the header stage before either body arrives.
        let first = check(&auth, &headers).unwrap();
        let second = check(&auth, &headers).unwrap();
        auth.check_body(&second, b"[]").unwrap();
        let err = auth.check_body(&first, b"[]").unwrap_err();
        assert_eq!(
            (err.reason(), err.status()),
            ("replayed_nonce", StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn strong_binds_method_path_query_and_timestamp() {
        let kp = keypair(7);
        let auth = authenticator();
        let s = Strong {
            query: Some("a=1&b=2"),
            ..Strong::default()
        };
        let headers = strong_headers(&kp, &s);
        for (method, path, query) in [
            (Method::GET, "/update", Some("a=1&b=2")),
            (Method::PUT, "/update", Some("a=1&b=2")),
            (Method::POST, "/metrics", Some("a=1&b=2")),
            (Method::POST, "/update", Some("a=1&b=3")),
            (Method::POST, "/update", None),
        ] {
            let err = auth
                .check_headers(&method, path, query, &headers, NOW)
                .unwrap_err();
            assert_eq!(err.reason(), "bad_signature", "{method} {path} {query:?}");
        }
        auth.check_headers(&Method::POST, "/update", Some("a=1&b=2"), &headers, NOW)
            .unwrap();

        // Changing the timestamp header breaks the signature.
        let mut moved = strong_headers(
            &kp,
            &Strong {
                nonce: "another-nonce-0001",
                ..Strong::default()
            },
        );
        set(&mut moved, HEADER_TIMESTAMP, "1700000001");
        assert_err(check(&auth, &moved), "bad_signature", StatusCode::UNAUTHORIZED);
        // So does a digest for another body.
        let mut other_body = strong_headers(
            &kp,
            &Strong {
                nonce: "another-nonce-0002",
                ..Strong::default()
            },
        );
        set(&mut other_body, HEADER_CONTENT_SHA256, EMPTY_SHA256);
        assert_err(
            check(&auth, &other_body),
            "bad_signature",
            StatusCode::UNAUTHORIZED,
        );
    }

    #[test]
    fn strong_requires_an_integer_timestamp() {
        let kp = keypair(7);
        let auth = authenticator();
        for ts in [
            "1700000000.0",
            "1.7e9",
            "+1700000000",
            "01700000000",
            " 1700000000x",
            "-1",
        ] {
            let headers = strong_headers(
                &kp,
                &Strong {
                    ts,
                    ..Strong::default()
                },
            );
            assert_err(check(&auth, &headers), "bad_timestamp", StatusCode::BAD_REQUEST);
        }
        let edge = (NOW as u64 - SKEW).to_string();
        check(
            &auth,
            &strong_headers(
                &kp,
                &Strong {
                    ts: &edge,
                    ..Strong::default()
                },
            ),
        )
        .unwrap();
        let beyond = (NOW as u64 + SKEW + 1).to_string();
        let headers = strong_headers(
            &kp,
            &Strong {
                ts: &beyond,
                nonce: "another-nonce-0003",
                ..Strong::default()
            },
        );
        assert_err(check(&auth, &headers), "timestamp_skew", StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn strong_header_syntax_errors() {
        let kp = keypair(7);
        let auth = authenticator();
        let good = strong_headers(&kp, &Strong::default());
        for (name, value, reason) in [
            (HEADER_NONCE, "short", "bad_nonce"),
            (HEADER_NONCE, &"n".repeat(129), "bad_nonce"),
            (HEADER_NONCE, "has space in the nonce", "bad_nonce"),
            (HEADER_NONCE, "has.dot.in.the.nonce", "bad_nonce"),
            (
                HEADER_CONTENT_SHA256,
                &EMPTY_SHA256.to_uppercase(),
                "bad_content_digest",
            ),
            (HEADER_CONTENT_SHA256, &EMPTY_SHA256[..62], "bad_content_digest"),
            (
                HEADER_CONTENT_SHA256,
                &format!("{}zz", &EMPTY_SHA256[..62]),
                "bad_content_digest",
            ),
        ] {
            let mut headers = good.clone();
            set(&mut headers, name, value);
            let err = assert_err(check(&auth, &headers), reason, StatusCode::BAD_REQUEST);
            assert!(err.to_string().contains(name), "{err}");
        }
        for name in [HEADER_NONCE, HEADER_CONTENT_SHA256] {
            let mut headers = good.clone();
            headers.remove(name);
            let err = assert_err(check(&auth, &headers), "missing_header", StatusCode::UNAUTHORIZED);
            assert!(err.to_string().contains(name));
        }
        // Boundary nonce lengths are fine.
        for nonce in ["n".repeat(16), "-".repeat(128)] {
            check(
                &auth,
                &strong_headers(
                    &kp,
                    &Strong {
                        nonce: &nonce,
                        ..Strong::default()
                    },
                ),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_legacy_signature_cannot_pass_as_strong_and_vice_versa() {
        let kp = keypair(7);
        let auth = authenticator();
        let mut legacy = legacy_headers(&kp, "/update", "1700000000", "1700000000");
        let strong = strong_headers(&kp, &Strong::default());
        for name in [HEADER_AUTH_SCHEME, HEADER_NONCE, HEADER_CONTENT_SHA256] {
            legacy.insert(name, strong[name].clone());
        }
        assert_err(check(&auth, &legacy), "bad_signature", StatusCode::UNAUTHORIZED);
        let mut downgraded = strong.clone();
        downgraded.remove(HEADER_AUTH_SCHEME);
        assert_err(
            check(&auth, &downgraded),
            "bad_signature",
            StatusCode::UNAUTHORIZED,
        );
    }

    #[test]
    fn nonce_expires_after_twice_the_skew() {
        let kp = keypair(7);
        let auth = authenticator();
        let first = strong_headers(&kp, &Strong::default());
        accept(&auth, &first, b"[]", NOW).unwrap();
        let ttl = 2.0 * SKEW as f64;
        // Still remembered at the last instant it could be replayed, and exactly at expiry.
        let later_ts = (NOW as u64 + 2 * SKEW).to_string();
        let later = strong_headers(
            &kp,
            &Strong {
                ts: &later_ts,
                ..Strong::default()
            },
        );
        let err = auth
            .check_headers(&Method::POST, "/update", None, &later, NOW + ttl)
            .unwrap_err();
        assert_eq!(err.reason(), "replayed_nonce");
        accept(&auth, &later, b"[]", NOW + ttl + 1.0).unwrap();
    }

    #[test]
    fn cache_is_bounded_and_recovers_after_expiry() {
        let kp = keypair(7);
        let auth = authenticator_with(&[&kp], 3);
        let nonce = |i: usize| format!("bounded-nonce-{i:04}");
        for i in 0..3 {
            let n = nonce(i);
            let headers = strong_headers(
                &kp,
                &Strong {
                    nonce: &n,
                    ..Strong::default()
                },
            );
            accept(&auth, &headers, b"[]", NOW).unwrap();
        }
        for i in 3..10 {
            let n = nonce(i);
            let headers = strong_headers(
                &kp,
                &Strong {
                    nonce: &n,
                    ..Strong::default()
                },
            );
            let err = assert_err(
                check(&auth, &headers),
                "replay_cache_full",
                StatusCode::SERVICE_UNAVAILABLE,
            );
            assert!(err.to_string().contains('3'));
            assert_eq!(auth.replay_cache_len(), 3);
        }
        // Once the old entries expire they are evicted to make room.
        let later = NOW + 2.0 * SKEW as f64 + 1.0;
        let ts = (later as u64).to_string();
        let n = nonce(99);
        let headers = strong_headers(
            &kp,
            &Strong {
                ts: &ts,
                nonce: &n,
                ..Strong::default()
            },
        );
        accept(&auth, &headers, b"[]", later).unwrap();
        assert_eq!(auth.replay_cache_len(), 1);
    }

    #[test]
    fn zero_capacity_refuses_strong_requests() {
        let kp = keypair(7);
        let auth = authenticator_with(&[&kp], 0);
        let headers = strong_headers(&kp, &Strong::default());
        assert_err(
            check(&auth, &headers),
            "replay_cache_full",
            StatusCode::SERVICE_UNAVAILABLE,
        );
        check(&auth, &legacy_headers(&kp, "/update", "1700000000", "1700000000")).unwrap();
    }

    #[test]
    fn reasons_are_unique_snake_case() {
        let hotkey = hotkey_of(&keypair(7));
        let all = [
            AuthError::MissingHeader {
                header: HEADER_HOTKEY,
            },
            AuthError::DuplicateHeader {
                header: HEADER_HOTKEY,
            },
            AuthError::BadTimestamp {
                detail: "",
                value: String::new(),
            },
            AuthError::TimestampSkew {
                value: String::new(),
                now_unix_secs: 0,
                max_skew_secs: 0,
            },
            AuthError::BadHotkey {
                value: String::new(),
                source: HotkeyError::Empty,
            },
            AuthError::HotkeyNotAllowed {
                hotkey: hotkey.clone(),
            },
            AuthError::BadSignatureEncoding { detail: "" },
            AuthError::BadSignature {
                hotkey: hotkey.clone(),
                scheme: AuthScheme::Legacy,
            },
            AuthError::BadNonce {
                detail: "",
                value: String::new(),
            },
            AuthError::ReplayedNonce {
                hotkey,
                nonce: String::new(),
            },
            AuthError::ReplayCacheFull { capacity: 0 },
            AuthError::BadContentDigest {
                detail: "",
                value: String::new(),
            },
            AuthError::BodyDigestMismatch {
                body_len: 0,
                actual: String::new(),
            },
            AuthError::BadAuthScheme { value: String::new() },
            AuthError::BadRequestTarget { detail: "" },
            AuthError::ClockUnavailable,
        ];
        let reasons: BTreeSet<_> = all.iter().map(AuthError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        for reason in reasons {
            assert!(
                reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{reason}"
            );
        }
    }

    #[test]
    fn authenticator_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
        assert_send_sync::<AuthError>();
    }

    // ---- replay cache invariants ----

    proptest! {
        /// Whatever the sequence of (clock step, nonce) operations, the cache never exceeds its
        /// capacity, never accepts a nonce again while it is live, and accepts it again once expired.
        #[test]
        fn replay_cache_invariants(
            capacity in 0usize..8,
            ops in proptest::collection::vec((0u8..=3, 0u8..12), 1..200),
        ) {
            let hotkey = hotkey_of(&keypair(7));
            let ttl = 2.0 * 10.0;
            let mut cache = ReplayCache::new(capacity, ttl);
            let mut now = 1000.0;
            // Model: nonce → last accepted time.
            let mut accepted: HashMap<u8, f64> = HashMap::new();
            for (step, nonce_id) in ops {
                now += f64::from(step) * 7.0;
                let nonce = format!("prop-nonce-{nonce_id:04}");
                let live_before = accepted.get(&nonce_id).is_some_and(|&t| now <= t + ttl);
                let key = replay_key(&hotkey, &nonce);
                // The pre-check never records and agrees with the recording call.
                let pre = cache.admit(&key, now, false);
                let len_after_pre = cache.len();
                let result = cache.admit(&key, now, true);
                prop_assert_eq!(pre, result);
                match result {
                    Ok(()) => {
                        prop_assert!(!live_before, "accepted a live nonce");
                        prop_assert_eq!(cache.len(), len_after_pre + 1);
                        accepted.insert(nonce_id, now);
                    }
                    Err(Refusal::Replayed) => prop_assert!(live_before),
                    Err(Refusal::Full) => {
                        prop_assert!(!live_before);
                        let live = accepted.values().filter(|&&t| now <= t + ttl).count();
                        prop_assert!(live >= capacity, "refused with room for expired entries");
                    }
                }
                prop_assert!(cache.len() <= capacity);
                prop_assert_eq!(cache.entries.len(), cache.by_expiry.len());
            }
        }

        #[test]
        fn arbitrary_header_values_never_panic(
            hotkey in "\\PC{0,70}",
            ts in "\\PC{0,30}",
            sig in "[0-9a-fA-Fx]{0,140}",
            scheme in proptest::option::of("talkhead-v1|\\PC{0,12}"),
        ) {
            let auth = authenticator();
            let mut headers = HeaderMap::new();
            for (name, value) in [(HEADER_HOTKEY, &hotkey), (HEADER_TIMESTAMP, &ts), (HEADER_SIGNATURE, &sig)] {
                if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                    headers.insert(name, v);
                }
            }
            if let Some(scheme) = scheme.and_then(|s| HeaderValue::from_str(&s).ok()) {
                headers.insert(HEADER_AUTH_SCHEME, scheme);
            }
            let result = check(&auth, &headers);
            prop_assert!(result.is_err());
        }
    }
}
