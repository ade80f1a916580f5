//! Challenge ids: a strict allow-list, because an id becomes the file names `{id}.json` and `{id}.mp4`
//! in the miner's output directory and a key in stored results.
//!
//! Owns [`ChallengeId`]: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. The first character being alphanumeric rules
//! out `.`, `..`, hidden files and option-like leading dashes; the alphabet rules out separators,
//! control characters, whitespace and anything non-ASCII.
//!
//! Must not: normalise, truncate or otherwise "repair" an id (a refused id is an error, never silently
//! replaced by another one), or touch the filesystem.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::IdError;

/// A validated challenge id, safe to use as a file name component.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChallengeId(Box<str>);

impl ChallengeId {
    /// Longest accepted id, in bytes (all characters are ASCII).
    pub const MAX_LEN: usize = 64;

    /// Validates `text` against the allow-list.
    pub fn parse(text: &str) -> Result<ChallengeId, IdError> {
        let bytes = text.as_bytes();
        let first = *bytes.first().ok_or(IdError::Empty)?;
        if bytes.len() > Self::MAX_LEN {
            return Err(IdError::TooLong { len: bytes.len() });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(IdError::BadFirstCharacter);
        }
        if let Some(position) = bytes
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
        {
            return Err(IdError::BadCharacter { position });
        }
        Ok(ChallengeId(text.into()))
    }

    /// The id given to the item at `index` of a payload that carries no id of its own:
    /// `challenge-{index}` (always valid).
    pub fn from_index(index: usize) -> ChallengeId {
        ChallengeId(format!("challenge-{index}").into_boxed_str())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChallengeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChallengeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChallengeId").field(&&*self.0).finish()
    }
}

impl FromStr for ChallengeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChallengeId::parse(s)
    }
}

impl TryFrom<&str> for ChallengeId {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ChallengeId::parse(s)
    }
}

impl AsRef<str> for ChallengeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChallengeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChallengeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ChallengeId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_reference_shapes() {
        for ok in [
            "0",
            "challenge-0",
            "challenge-3-123456",
            "challenge-12-1089-134686-0003",
            "a.b_c-D",
            "a..b",
            &"x".repeat(64),
        ] {
            assert_eq!(ChallengeId::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(ChallengeId::from_index(7).as_str(), "challenge-7");
        assert!(ChallengeId::parse(ChallengeId::from_index(usize::MAX).as_str()).is_ok());
    }

    #[test]
    fn refuses_traversal_separators_and_controls() {
        assert_eq!(ChallengeId::parse(""), Err(IdError::Empty));
        assert_eq!(ChallengeId::parse("."), Err(IdError::BadFirstCharacter));
        assert_eq!(ChallengeId::parse(".."), Err(IdError::BadFirstCharacter));
        assert_eq!(ChallengeId::parse("../x"), Err(IdError::BadFirstCharacter));
        assert_eq!(ChallengeId::parse(".hidden"), Err(IdError::BadFirstCharacter));
        assert_eq!(ChallengeId::parse("-rf"), Err(IdError::BadFirstCharacter));
        assert_eq!(ChallengeId::parse("_x"), Err(IdError::BadFirstCharacter));
        assert_eq!(
            ChallengeId::parse("a/../b"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse("a\\b"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse("a\0"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse("a\nb"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse("a b"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse("aé"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse("a:b"),
            Err(IdError::BadCharacter { position: 1 })
        );
        assert_eq!(
            ChallengeId::parse(&"x".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        );
    }

    #[test]
    fn serde_validates() {
        let id: ChallengeId = serde_json::from_str("\"challenge-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"challenge-1\"");
        assert!(serde_json::from_str::<ChallengeId>("\"../etc/passwd\"").is_err());
        assert!(serde_json::from_str::<ChallengeId>("3").is_err());
    }

    proptest! {
        #[test]
        fn accepted_ids_are_safe_file_names(text in "\\PC{0,80}") {
            if let Ok(id) = ChallengeId::parse(&text) {
                let s = id.as_str();
                prop_assert!(!s.is_empty() && s.len() <= ChallengeId::MAX_LEN);
                prop_assert!(s != "." && s != "..");
                prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
                prop_assert!(s.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(!s.starts_with('.') && !s.starts_with('-'));
            }
        }

        #[test]
        fn allow_list_strings_parse(text in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}") {
            let id = ChallengeId::parse(&text).unwrap();
            prop_assert_eq!(id.as_str(), text.as_str());
        }
    }
}
