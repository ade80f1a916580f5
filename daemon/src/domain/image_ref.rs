//! Digest-pinned image references (`[registry/]name[:tag]@sha256:<64 hex>`), parsed with the grammar of
//! the Docker distribution reference, minus everything a hostile submitter could abuse.
//!
//! A reference that parses here is safe to hand to the Docker API: no whitespace, no control characters,
//! no leading `-` (never mistakable for an option), lowercase repository path, and a SHA-256 digest that
//! pins the content. The tag, when present, is informational only: the digest decides what runs.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Longest accepted reference; the distribution spec bounds the name at 255 and the tag at 128.
pub const MAX_IMAGE_REF_LEN: usize = 512;
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A validated, digest-pinned image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    raw: String,
    registry: Option<String>,
    repository: String,
    tag: Option<String>,
    digest_hex: String,
}

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// Empty string.
    #[error("image reference is empty")]
    Empty,
    /// Longer than [`MAX_IMAGE_REF_LEN`].
    #[error("image reference is longer than {MAX_IMAGE_REF_LEN} bytes")]
    TooLong,
    /// Whitespace, control or non-ASCII characters.
    #[error("image reference contains whitespace, control or non-ASCII characters")]
    ForbiddenCharacter,
    /// Starts with `-`, which a command line could read as an option.
    #[error("image reference must not start with '-'")]
    OptionLike,
    /// No `@sha256:` digest.
    #[error("image reference is not pinned by digest: expected name[:tag]@sha256:<64 hex>")]
    NotPinned,
    /// A digest other than sha256, or not 64 lowercase hex digits.
    #[error("digest must be sha256:<64 lowercase hex digits>")]
    BadDigest,
    /// The registry host or port is malformed.
    #[error("registry '{0}' is not a valid host[:port]")]
    BadRegistry(String),
    /// The repository path is malformed.
    #[error(
        "repository path '{0}' is invalid: lowercase [a-z0-9] components separated by '.', '_', '__' or '-', joined by '/'"
    )]
    BadRepository(String),
    /// The tag is malformed.
    #[error("tag '{0}' is invalid: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    BadTag(String),
}

impl ImageRef {
    /// Parse and validate a digest-pinned reference.
    pub fn parse(input: &str) -> Result<ImageRef, ImageRefError> {
        if input.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if input.len() > MAX_IMAGE_REF_LEN {
            return Err(ImageRefError::TooLong);
        }
        if !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImageRefError::ForbiddenCharacter);
        }
        if input.starts_with('-') {
            return Err(ImageRefError::OptionLike);
        }
        let (name_and_tag, digest) = input.rsplit_once('@').ok_or(ImageRefError::NotPinned)?;
        let digest_hex = digest.strip_prefix("sha256:").ok_or(ImageRefError::BadDigest)?;
        if digest_hex.len() != 64
            || !digest_hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ImageRefError::BadDigest);
        }

        // The tag separator is the last ':' after the last '/', so a registry port is never taken for it.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ImageRefError::BadTag(tag.to_owned()));
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(ImageRefError::BadRepository(name.to_owned()));
        }
        let (registry, repository) = split_registry(name);
        if let Some(registry) = registry
            && !valid_registry(registry)
        {
            return Err(ImageRefError::BadRegistry(registry.to_owned()));
        }
        if !valid_repository(repository) {
            return Err(ImageRefError::BadRepository(repository.to_owned()));
        }
        Ok(ImageRef {
            raw: input.to_owned(),
            registry: registry.map(str::to_owned),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest_hex: digest_hex.to_owned(),
        })
    }

    /// The reference exactly as submitted.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The registry `host[:port]`, if the reference names one (Docker Hub otherwise).
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The repository path without registry, tag or digest.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The informational tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:<hex>`: what actually identifies the content.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.digest_hex)
    }

    /// `[registry/]repository@sha256:<hex>`: the reference to pull, with the tag dropped so that only
    /// the digest decides what is fetched.
    pub fn pinned(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}@sha256:{}", self.repository, self.digest_hex),
            None => format!("{}@sha256:{}", self.repository, self.digest_hex),
        }
    }
}

/// The first path component names a registry when it looks like a host (distribution's rule).
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return false,
        }
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

fn valid_repository(repository: &str) -> bool {
    repository.split('/').all(valid_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ImageRef::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_the_common_shapes() {
        let cases = [
            (format!("miner/img@sha256:{D}"), None, "miner/img", None),
            (
                format!("aerast/musetalk:v1.2@sha256:{D}"),
                None,
                "aerast/musetalk",
                Some("v1.2"),
            ),
            (
                format!("localhost:5000/talkhead/demo@sha256:{D}"),
                Some("localhost:5000"),
                "talkhead/demo",
                None,
            ),
            (
                format!("ghcr.io/org/sub/img:latest@sha256:{D}"),
                Some("ghcr.io"),
                "org/sub/img",
                Some("latest"),
            ),
            (format!("a__b.c-d--e@sha256:{D}"), None, "a__b.c-d--e", None),
        ];
        for (input, registry, repository, tag) in cases {
            let r = ImageRef::parse(&input).unwrap();
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest(), format!("sha256:{D}"));
            assert_eq!(r.as_str(), input);
        }
    }

    #[test]
    fn pinned_form_drops_the_tag() {
        let r = ImageRef::parse(&format!("localhost:5000/x:v9@sha256:{D}")).unwrap();
        assert_eq!(r.pinned(), format!("localhost:5000/x@sha256:{D}"));
    }

    #[test]
    fn rejects_hostile_and_malformed_references() {
        let cases: Vec<(String, ImageRefError)> = vec![
            (String::new(), ImageRefError::Empty),
            ("miner/img:latest".into(), ImageRefError::NotPinned),
            ("blacklist".into(), ImageRefError::NotPinned),
            (format!("miner/img@sha512:{D}"), ImageRefError::BadDigest),
            (format!("miner/img@sha256:{}", &D[1..]), ImageRefError::BadDigest),
            (
                format!("miner/img@sha256:{}", D.to_uppercase()),
                ImageRefError::BadDigest,
            ),
            (format!("--privileged@sha256:{D}"), ImageRefError::OptionLike),
            (
                format!("miner/img @sha256:{D}"),
                ImageRefError::ForbiddenCharacter,
            ),
            (
                format!("miner/img\n@sha256:{D}"),
                ImageRefError::ForbiddenCharacter,
            ),
            (
                format!("miner/imgé@sha256:{D}"),
                ImageRefError::ForbiddenCharacter,
            ),
            (
                format!("Miner/img@sha256:{D}"),
                ImageRefError::BadRepository("Miner/img".into()),
            ),
            (
                format!("miner//img@sha256:{D}"),
                ImageRefError::BadRepository("miner//img".into()),
            ),
            (
                format!("miner/../img@sha256:{D}"),
                ImageRefError::BadRepository("miner/../img".into()),
            ),
            (
                format!("miner/img:.bad@sha256:{D}"),
                ImageRefError::BadTag(".bad".into()),
            ),
            (
                format!("bad_host.io:99999/img@sha256:{D}"),
                ImageRefError::BadRegistry("bad_host.io:99999".into()),
            ),
            (
                format!("{}@sha256:{D}", "a".repeat(300)),
                ImageRefError::BadRepository("a".repeat(300)),
            ),
            (format!("{}@sha256:{D}", "a".repeat(600)), ImageRefError::TooLong),
        ];
        for (input, expected) in cases {
            assert_eq!(ImageRef::parse(&input), Err(expected), "{input:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_refs_are_clean(s in "\\PC{0,80}") {
            if let Ok(r) = ImageRef::parse(&s) {
                prop_assert!(r.as_str().bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(r.as_str().contains("@sha256:"));
            }
        }

        #[test]
        fn well_formed_refs_roundtrip(repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}"), hex in "[0-9a-f]{64}") {
            let raw = match &tag { Some(t) => format!("{repo}:{t}@sha256:{hex}"), None => format!("{repo}@sha256:{hex}") };
            let r = ImageRef::parse(&raw).unwrap();
            prop_assert_eq!(r.tag(), tag.as_deref());
            prop_assert_eq!(r.digest(), format!("sha256:{hex}"));
            let back: ImageRef = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}
