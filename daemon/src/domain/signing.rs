//! The signed-header scheme's names, a wire contract shared by both ends: [`crate::api::auth`] verifies
//! them on requests to the gateway, [`crate::challenges::Signer`] signs requests to the Subnet API with
//! them (docs/auth.md, docs/reference.md#auth-headers).

/// `X-Hotkey`: the caller's SS58 hotkey (both schemes).
pub const HEADER_HOTKEY: &str = "X-Hotkey";
/// `X-Timestamp`: unix seconds (legacy: anything Python `float()` accepts; talkhead-v1: an integer).
pub const HEADER_TIMESTAMP: &str = "X-Timestamp";
/// `X-Signature`: the 64-byte sr25519 signature in hex, with or without `0x`.
pub const HEADER_SIGNATURE: &str = "X-Signature";
/// `X-Auth-Scheme`: absent for the legacy scheme, [`SCHEME_TALKHEAD_V1`] for the strong one.
pub const HEADER_AUTH_SCHEME: &str = "X-Auth-Scheme";
/// `X-Nonce`: talkhead-v1 only, 16–128 characters of `[A-Za-z0-9_-]`, unique per hotkey.
pub const HEADER_NONCE: &str = "X-Nonce";
/// `X-Content-SHA256`: talkhead-v1 only, lowercase hex SHA-256 of the exact body bytes.
pub const HEADER_CONTENT_SHA256: &str = "X-Content-SHA256";

/// Value of `X-Auth-Scheme` that selects the strong scheme; also the first line of its message.
pub const SCHEME_TALKHEAD_V1: &str = "talkhead-v1";

/// sr25519 signing context used by substrate / bittensor `Keypair.sign`.
pub const SIGNING_CONTEXT: &[u8] = b"substrate";
