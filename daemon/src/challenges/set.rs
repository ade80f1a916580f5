//! Validated challenges and the round's challenge set.
//!
//! Owns [`Challenge`] (which can only be built through validation, so holding one proves the face
//! decodes, the audio parses and the transcript is clean) and [`ChallengeSet`] (the ordered list a round
//! evaluates every miner on, its warm-up / scored split, and its content hash).
//!
//! The hash is SHA-256 (lowercase hex) over a canonical, length-prefixed encoding:
//! `"talkhead-challenge-set/v1\0"`, the count as u64 big-endian, then per challenge in order the id
//! (u64 BE length + bytes), the transcript (`0` when absent, else `1` + u64 BE length + UTF-8 bytes),
//! SHA-256 of the face bytes and SHA-256 of the audio bytes. Every field is length-prefixed or fixed
//! size, so distinct sets cannot collide by concatenation; the order is part of the hash because it
//! decides which challenges are warm-ups.
//!
//! Must not: do I/O, or offer any way to build a `Challenge` that skips validation.

use std::fmt;

use sha2::{Digest, Sha256};

use super::Limits;
use super::error::{Asset, ChallengeError};
use super::id::ChallengeId;
use super::media::{AudioInfo, ImageFormat, ImageInfo, validate_audio, validate_face, validate_text};

const HASH_DOMAIN: &[u8] = b"talkhead-challenge-set/v1\0";

/// One validated challenge: a face image, a speech clip and an optional transcript.
#[derive(Clone)]
pub struct Challenge {
    id: ChallengeId,
    face: Vec<u8>,
    face_info: ImageInfo,
    face_sha256: [u8; 32],
    audio: Vec<u8>,
    audio_info: AudioInfo,
    audio_sha256: [u8; 32],
    text: Option<String>,
}

impl Challenge {
    /// Validates and builds a challenge. The face must be a PNG or JPEG within the limits, the audio
    /// a PCM WAV within the limits, and the transcript (if any) is trimmed, bounded and free of
    /// control characters; an empty transcript becomes `None`. Errors name the challenge.
    pub fn new(
        id: ChallengeId,
        face: Vec<u8>,
        audio: Vec<u8>,
        text: Option<&str>,
        limits: &Limits,
    ) -> Result<Challenge, ChallengeError> {
        let face_info = validate_face(&face, limits).map_err(|reason| ChallengeError::Media {
            challenge: id.clone(),
            asset: Asset::Face,
            reason,
        })?;
        let audio_info = validate_audio(&audio, limits).map_err(|reason| ChallengeError::Media {
            challenge: id.clone(),
            asset: Asset::Audio,
            reason,
        })?;
        let text = match text {
            None => None,
            Some(raw) => {
                validate_text(raw, limits.max_text_chars).map_err(|reason| ChallengeError::Text {
                    challenge: id.clone(),
                    reason,
                })?
            }
        };
        Ok(Challenge {
            face_sha256: Sha256::digest(&face).into(),
            audio_sha256: Sha256::digest(&audio).into(),
            id,
            face,
            face_info,
            audio,
            audio_info,
            text,
        })
    }

    /// The challenge id (safe as a file name).
    pub fn id(&self) -> &ChallengeId {
        &self.id
    }

    /// The face image bytes, exactly as received.
    pub fn face(&self) -> &[u8] {
        &self.face
    }

    /// The face's container format.
    pub fn face_format(&self) -> ImageFormat {
        self.face_info.format
    }

    /// The face's format and dimensions.
    pub fn face_info(&self) -> ImageInfo {
        self.face_info
    }

    /// The WAV bytes, exactly as received.
    pub fn audio(&self) -> &[u8] {
        &self.audio
    }

    /// Sample rate, channels and measured duration of the clip.
    pub fn audio_info(&self) -> AudioInfo {
        self.audio_info
    }

    /// The transcript, if any (trimmed, one line, bounded).
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// SHA-256 of the face bytes.
    pub fn face_sha256(&self) -> &[u8; 32] {
        &self.face_sha256
    }

    /// SHA-256 of the audio bytes.
    pub fn audio_sha256(&self) -> &[u8; 32] {
        &self.audio_sha256
    }
}

impl fmt::Debug for Challenge {
    /// Ids, formats, sizes and digests; never the media bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("id", &self.id)
            .field("face", &self.face_info)
            .field("face_bytes", &self.face.len())
            .field("face_sha256", &hex::encode(self.face_sha256))
            .field("audio", &self.audio_info)
            .field("audio_bytes", &self.audio.len())
            .field("audio_sha256", &hex::encode(self.audio_sha256))
            .field("text", &self.text)
            .finish()
    }
}

/// The ordered challenges of one round, with a content hash stored alongside every result.
#[derive(Clone)]
pub struct ChallengeSet {
    challenges: Vec<Challenge>,
    hash: String,
}

impl ChallengeSet {
    /// Builds a set: at least one challenge, at most `limits.max_challenges`, ids unique.
    pub fn new(challenges: Vec<Challenge>, limits: &Limits) -> Result<ChallengeSet, ChallengeError> {
        if challenges.is_empty() {
            return Err(ChallengeError::Empty);
        }
        if challenges.len() > limits.max_challenges {
            return Err(ChallengeError::TooManyChallenges {
                count: challenges.len(),
                max: limits.max_challenges,
            });
        }
        let mut ids: Vec<&ChallengeId> = challenges.iter().map(Challenge::id).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ChallengeError::DuplicateId { id: pair[0].clone() });
        }
        let hash = set_hash(&challenges);
        Ok(ChallengeSet { challenges, hash })
    }

    /// All challenges, in evaluation order.
    pub fn challenges(&self) -> &[Challenge] {
        &self.challenges
    }

    /// Iterates in evaluation order.
    pub fn iter(&self) -> std::slice::Iter<'_, Challenge> {
        self.challenges.iter()
    }

    /// Number of challenges (at least one).
    pub fn len(&self) -> usize {
        self.challenges.len()
    }

    /// Always false: a set holds at least one challenge.
    pub fn is_empty(&self) -> bool {
        self.challenges.is_empty()
    }

    /// The challenge with this id.
    pub fn get(&self, id: &ChallengeId) -> Option<&Challenge> {
        self.challenges.iter().find(|c| c.id() == id)
    }

    /// Lowercase hex SHA-256 of the canonical encoding (module docs): equal sets give equal hashes and
    /// any change of an id, a transcript, a byte of media or the order gives a different one.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Checks that the set can feed `warmup` warm-ups followed by `scoring` scored challenges.
    pub fn ensure_enough(&self, warmup: usize, scoring: usize) -> Result<(), ChallengeError> {
        self.scored(warmup, scoring).map(|_| ())
    }

    /// The first `n` challenges, used as warm-ups; an error if the set is smaller.
    pub fn warmups(&self, n: usize) -> Result<&[Challenge], ChallengeError> {
        self.challenges
            .get(..n)
            .ok_or_else(|| ChallengeError::NotEnoughChallenges {
                have: self.challenges.len(),
                need: n,
                detail: format!("{n} warm-ups"),
            })
    }

    /// The `scoring` challenges that follow the first `warmup`; an error if the set holds fewer than
    /// `warmup + scoring`.
    pub fn scored(&self, warmup: usize, scoring: usize) -> Result<&[Challenge], ChallengeError> {
        let need = warmup.saturating_add(scoring);
        self.challenges
            .get(warmup..need)
            .ok_or_else(|| ChallengeError::NotEnoughChallenges {
                have: self.challenges.len(),
                need,
                detail: format!("{warmup} warm-ups then {scoring} scored"),
            })
    }
}

impl<'a> IntoIterator for &'a ChallengeSet {
    type Item = &'a Challenge;
    type IntoIter = std::slice::Iter<'a, Challenge>;

    fn into_iter(self) -> Self::IntoIter {
        self.challenges.iter()
    }
}

impl fmt::Debug for ChallengeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeSet")
            .field("hash", &self.hash)
            .field("challenges", &self.challenges)
            .finish()
    }
}

fn set_hash(challenges: &[Challenge]) -> String {
    fn length_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    let mut hasher = Sha256::new();
    hasher.update(HASH_DOMAIN);
    hasher.update((challenges.len() as u64).to_be_bytes());
    for challenge in challenges {
        length_prefixed(&mut hasher, challenge.id.as_str().as_bytes());
        match &challenge.text {
            None => hasher.update([0u8]),
            Some(text) => {
                hasher.update([1u8]);
                length_prefixed(&mut hasher, text.as_bytes());
            }
        }
        hasher.update(challenge.face_sha256);
        hasher.update(challenge.audio_sha256);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::challenges::MediaError;

    fn challenge(id: &str, text: Option<&str>) -> Challenge {
        Challenge::new(
            ChallengeId::parse(id).unwrap(),
            png(64, 64),
            wav_default(),
            text,
            &Limits::default(),
        )
        .unwrap()
    }

    fn set(challenges: Vec<Challenge>) -> ChallengeSet {
        ChallengeSet::new(challenges, &Limits::default()).unwrap()
    }

    fn seven() -> ChallengeSet {
        set((0..7).map(|i| challenge(&format!("c{i}"), None)).collect())
    }

    #[test]
    fn warmups_and_scored_split_in_order() {
        let s = seven();
        let ids = |cs: &[Challenge]| cs.iter().map(|c| c.id().to_string()).collect::<Vec<_>>();
        assert_eq!(ids(s.warmups(2).unwrap()), ["c0", "c1"]);
        assert_eq!(ids(s.scored(2, 5).unwrap()), ["c2", "c3", "c4", "c5", "c6"]);
        assert_eq!(ids(s.scored(0, 1).unwrap()), ["c0"]);
        assert!(s.warmups(0).unwrap().is_empty());
        assert!(s.ensure_enough(2, 5).is_ok());
        let err = s.scored(2, 6).unwrap_err();
        assert!(
            matches!(err, ChallengeError::NotEnoughChallenges { have: 7, need: 8, .. }),
            "{err}"
        );
        assert!(s.ensure_enough(3, 5).is_err());
        assert!(matches!(
            s.warmups(8),
            Err(ChallengeError::NotEnoughChallenges { need: 8, .. })
        ));
        assert!(s.scored(usize::MAX, 2).is_err());
        assert_eq!(s.len(), 7);
        assert!(!s.is_empty());
        assert_eq!(
            s.get(&ChallengeId::parse("c3").unwrap()).unwrap().id().as_str(),
            "c3"
        );
        assert_eq!(s.iter().count(), 7);
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = set(vec![challenge("a", Some("hello")), challenge("b", None)]);
        let b = set(vec![challenge("a", Some("hello")), challenge("b", None)]);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        let variants = [
            set(vec![challenge("a", Some("hello!")), challenge("b", None)]),
            set(vec![challenge("a", None), challenge("b", None)]),
            set(vec![challenge("a", Some("")), challenge("b", Some("x"))]),
            set(vec![challenge("a2", Some("hello")), challenge("b", None)]),
            set(vec![challenge("b", None), challenge("a", Some("hello"))]),
            set(vec![challenge("a", Some("hello"))]),
            set(vec![
                challenge("a", Some("hello")),
                Challenge::new(
                    ChallengeId::parse("b").unwrap(),
                    png(64, 65),
                    wav_default(),
                    None,
                    &Limits::default(),
                )
                .unwrap(),
            ]),
        ];
        for v in &variants {
            assert_ne!(v.hash(), a.hash());
        }
    }

    #[test]
    fn sets_refuse_empty_duplicate_and_oversized() {
        assert!(matches!(
            ChallengeSet::new(vec![], &Limits::default()),
            Err(ChallengeError::Empty)
        ));
        let err = ChallengeSet::new(
            vec![challenge("a", None), challenge("a", None)],
            &Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ChallengeError::DuplicateId { id } if id.as_str() == "a"),
            "{err}"
        );
        let tight = Limits {
            max_challenges: 1,
            ..Limits::default()
        };
        assert!(matches!(
            ChallengeSet::new(vec![challenge("a", None), challenge("b", None)], &tight),
            Err(ChallengeError::TooManyChallenges { count: 2, max: 1 })
        ));
    }

    #[test]
    fn construction_validates_and_names_the_challenge() {
        let id = ChallengeId::parse("bad-one").unwrap();
        let err = Challenge::new(
            id.clone(),
            b"nope".to_vec(),
            wav_default(),
            None,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(
            &err,
            ChallengeError::Media {
                asset: Asset::Face,
                ..
            }
        ));
        assert!(err.to_string().starts_with("challenge bad-one: face:"), "{err}");
        let err = Challenge::new(
            id.clone(),
            png(64, 64),
            b"ID3\x04".to_vec(),
            None,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(
            &err,
            ChallengeError::Media {
                asset: Asset::Audio,
                reason: MediaError::UnsupportedFormat { .. },
                ..
            }
        ));
        let err =
            Challenge::new(id, png(64, 64), wav_default(), Some("a\nb"), &Limits::default()).unwrap_err();
        assert!(matches!(&err, ChallengeError::Text { .. }), "{err}");
        let c = challenge("ok", Some("  spoken words  "));
        assert_eq!(c.text(), Some("spoken words"));
        assert_eq!(c.face_format(), ImageFormat::Png);
        assert_eq!(c.audio_info().channels, 1);
        let debug = format!("{c:?}");
        assert!(debug.contains("face_sha256") && debug.len() < 1000, "{debug}");
    }
}
