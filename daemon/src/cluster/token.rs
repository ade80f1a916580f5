//! Per-attempt bearer tokens for the workers: every job attempt gets a fresh 256-bit random token
//! that travels only in that job's environment ([`TOKEN_ENV`](super::job::TOKEN_ENV)); the
//! coordinator keeps only its SHA-256 ([`TokenDigest`]) and checks a presented token against the
//! digest of the attempt it claims, in constant time. A token is worth one attempt: a new attempt
//! gets a new one, so a late upload of a superseded attempt cannot pass for the current one.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of randomness in a token (its hex form is twice as long).
pub const TOKEN_BYTES: usize = 32;

/// A token's secret. Shown only by [`AttemptToken::expose`]; `Debug` prints a placeholder.
pub struct AttemptToken(String);

impl AttemptToken {
    /// A fresh token from the operating system's randomness.
    pub fn generate() -> Result<AttemptToken, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(AttemptToken(hex::encode(bytes)))
    }

    /// The token a worker was given (the value of [`TOKEN_ENV`](super::job::TOKEN_ENV)): `None` unless
    /// it has a token's form (hex of [`TOKEN_BYTES`] bytes).
    pub fn given(text: &str) -> Option<AttemptToken> {
        let text = text.trim();
        (text.len() == 2 * TOKEN_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| AttemptToken(text.to_ascii_lowercase()))
    }

    /// The secret, to put in the job's environment and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the coordinator keeps.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

impl std::fmt::Debug for AttemptToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttemptToken(<secret>)")
    }
}

/// The SHA-256 of a token. Deliberately not `PartialEq`: compare with [`TokenDigest::verify`].
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token this is the digest of (constant time in the digest).
    pub fn verify(&self, presented: &str) -> bool {
        bool::from(TokenDigest::of(presented).0.ct_eq(&self.0))
    }

    /// Hex, for the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// From [`Self::to_hex`]'s form.
    pub fn from_hex(text: &str) -> Option<TokenDigest> {
        let bytes = hex::decode(text).ok()?;
        Some(TokenDigest(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenDigest({}…)", &self.to_hex()[..8])
    }
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme in any case, one space,
/// a token of visible ASCII), or `None` for anything else.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_graphic()))
    .then_some(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_against_its_digest_only() {
        let token = AttemptToken::generate().unwrap();
        let other = AttemptToken::generate().unwrap();
        assert_eq!(token.expose().len(), 2 * TOKEN_BYTES);
        assert!(token.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token.expose(), other.expose());
        let digest = token.digest();
        assert!(digest.verify(token.expose()));
        for wrong in [
            other.expose(),
            "",
            &token.expose()[1..],
            &format!("{} ", token.expose()),
        ] {
            assert!(!digest.verify(wrong), "{wrong:?}");
        }
        // Stored and read back.
        let stored = TokenDigest::from_hex(&digest.to_hex()).unwrap();
        assert!(stored.verify(token.expose()));
        assert!(TokenDigest::from_hex("abcd").is_none());
        assert!(TokenDigest::from_hex("zz").is_none());
    }

    #[test]
    fn neither_the_secret_nor_the_digest_shows_in_debug() {
        let token = AttemptToken::generate().unwrap();
        let shown = format!("{token:?} {:?}", token.digest());
        assert!(!shown.contains(token.expose()), "{shown}");
        assert!(!shown.contains(&token.digest().to_hex()), "{shown}");
    }

    #[test]
    fn only_a_plain_bearer_header_yields_a_token() {
        assert_eq!(bearer("Bearer abc123"), Some("abc123"));
        assert_eq!(bearer("bearer abc123"), Some("abc123"));
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearer a b",
            "Bearer  abc",
            "Bearer\tabc",
            "abc",
            "Bearer é",
        ] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
    }
}
