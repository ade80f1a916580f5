//! The pure parser of `/challenge` payloads (docs/reference.md#challenge-subnet), minus the reference's
//! holes.
//!
//! Owns the accepted shapes: a top-level list, or an object with a `challenges` list; items as a list
//! `[text, audio_b64, face_b64, ...]` (id `challenge-{index}`) or an object
//! `{challenge_id?, text?, face_base64, audio_base64}` (id `challenge_id` when present, else
//! `challenge-{index}`); base64 in the standard or URL-safe alphabet (never mixed), padding optional,
//! with an optional `data:<mime>;base64,` prefix.
//!
//! Must not: read any host path. A payload carrying `challenges_dir`, `challenge_dir`, `face_path` or
//! `audio_path` (at the top level or in any item, whatever the value) is refused as a whole
//! (docs/reference.md#weakness-9). It also must not skip a broken item, substitute an id for an invalid
//! one, accept duplicate ids, decode a field that cannot fit the limits, or do any I/O.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::Limits;
use super::error::{Asset, ChallengeError, IdError, TextError, sanitize};
use super::id::ChallengeId;
use super::set::{Challenge, ChallengeSet};

/// Keys that name paths on the executor host in the reference; their presence refuses the payload.
const HOST_PATH_KEYS: [&str; 4] = ["challenges_dir", "challenge_dir", "face_path", "audio_path"];

/// Parses and validates a `/challenge` payload into a set. Checks, in order: body size, JSON, shape,
/// host-path keys anywhere, item count, ids (valid and unique), then each item's base64 and media.
pub fn parse_payload(json: &[u8], limits: &Limits) -> Result<ChallengeSet, ChallengeError> {
    let len = u64::try_from(json.len()).unwrap_or(u64::MAX);
    if len > limits.max_payload_bytes {
        return Err(ChallengeError::PayloadTooLarge {
            len: Some(len),
            limit: limits.max_payload_bytes,
        });
    }
    let value: Value =
        serde_json::from_slice(json).map_err(|source| ChallengeError::PayloadJson { source })?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut top) => {
            refuse_host_paths(&top, None)?;
            match top.remove("challenges") {
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(ChallengeError::PayloadShape {
                        detail: format!("`challenges` is {}, expected a list", json_type(&other)),
                    });
                }
                None => {
                    return Err(ChallengeError::PayloadShape {
                        detail: "an object without a `challenges` list".into(),
                    });
                }
            }
        }
        other => {
            return Err(ChallengeError::PayloadShape {
                detail: format!(
                    "the top level is {}, expected a list or an object with `challenges`",
                    json_type(&other)
                ),
            });
        }
    };
    // Refuse host paths before anything else is looked at, wherever they are.
    for (index, item) in items.iter().enumerate() {
        if let Value::Object(map) = item {
            refuse_host_paths(map, Some(index))?;
        }
    }
    if items.is_empty() {
        return Err(ChallengeError::Empty);
    }
    if items.len() > limits.max_challenges {
        return Err(ChallengeError::TooManyChallenges {
            count: items.len(),
            max: limits.max_challenges,
        });
    }
    // Ids first (cheap), so that a duplicate is reported before megabytes of media are decoded.
    let ids = items
        .iter()
        .enumerate()
        .map(|(index, item)| item_id(index, item))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sorted: Vec<&ChallengeId> = ids.iter().collect();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(ChallengeError::DuplicateId { id: pair[0].clone() });
    }

    let mut challenges = Vec::with_capacity(items.len());
    for ((index, item), id) in items.into_iter().enumerate().zip(ids) {
        let raw = RawItem::take(index, item, &id)?;
        let face = decode_field(&id, Asset::Face, &raw.face, limits.max_face_bytes)?;
        // Free the base64 text as soon as it is decoded: payloads can be hundreds of MiB.
        drop(raw.face);
        let audio = decode_field(&id, Asset::Audio, &raw.audio, limits.max_audio_bytes)?;
        drop(raw.audio);
        challenges.push(Challenge::new(id, face, audio, raw.text.as_deref(), limits)?);
    }
    ChallengeSet::new(challenges, limits)
}

/// One item's fields, taken out of the JSON without copying the base64 strings.
struct RawItem {
    text: Option<String>,
    face: String,
    audio: String,
}

impl RawItem {
    fn take(index: usize, item: Value, id: &ChallengeId) -> Result<RawItem, ChallengeError> {
        let bad = |detail: String| ChallengeError::BadItem { index, detail };
        match item {
            Value::Array(elements) => {
                if elements.len() < 3 {
                    return Err(bad(format!(
                        "a list item needs [text, audio_base64, face_base64], got {} elements",
                        elements.len()
                    )));
                }
                let mut elements = elements.into_iter();
                let text = elements.next().unwrap_or(Value::Null);
                let audio = elements.next().unwrap_or(Value::Null);
                let face = elements.next().unwrap_or(Value::Null);
                Ok(RawItem {
                    text: text_value(id, text)?,
                    audio: media_value(index, id, Asset::Audio, "element 1 (audio base64)", Some(audio))?,
                    face: media_value(index, id, Asset::Face, "element 2 (face base64)", Some(face))?,
                })
            }
            Value::Object(mut map) => Ok(RawItem {
                text: text_value(id, map.remove("text").unwrap_or(Value::Null))?,
                face: media_value(index, id, Asset::Face, "face_base64", map.remove("face_base64"))?,
                audio: media_value(
                    index,
                    id,
                    Asset::Audio,
                    "audio_base64",
                    map.remove("audio_base64"),
                )?,
            }),
            other => Err(bad(format!(
                "{}, expected a list or an object",
                json_type(&other)
            ))),
        }
    }
}

fn refuse_host_paths(map: &Map<String, Value>, item: Option<usize>) -> Result<(), ChallengeError> {
    match HOST_PATH_KEYS.iter().find(|key| map.contains_key(**key)) {
        Some(key) => Err(ChallengeError::HostPathRefused { key, item }),
        None => Ok(()),
    }
}

fn item_id(index: usize, item: &Value) -> Result<ChallengeId, ChallengeError> {
    let Value::Object(map) = item else {
        return Ok(ChallengeId::from_index(index));
    };
    match map.get("challenge_id") {
        None | Some(Value::Null) => Ok(ChallengeId::from_index(index)),
        Some(Value::String(text)) => ChallengeId::parse(text).map_err(|reason| ChallengeError::InvalidId {
            id: sanitize(text),
            reason,
        }),
        Some(other) => Err(ChallengeError::InvalidId {
            id: sanitize(&other.to_string()),
            reason: IdError::NotAString,
        }),
    }
}

fn text_value(id: &ChallengeId, value: Value) -> Result<Option<String>, ChallengeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text)),
        _ => Err(ChallengeError::Text {
            challenge: id.clone(),
            reason: TextError::NotAString,
        }),
    }
}

fn media_value(
    index: usize,
    id: &ChallengeId,
    asset: Asset,
    field: &'static str,
    value: Option<Value>,
) -> Result<String, ChallengeError> {
    match value {
        None | Some(Value::Null) => Err(ChallengeError::MissingAsset {
            challenge: id.clone(),
            asset,
            detail: field,
        }),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(ChallengeError::BadItem {
            index,
            detail: format!("{field} is {}, expected a base64 string", json_type(&other)),
        }),
    }
}

fn decode_field(id: &ChallengeId, asset: Asset, text: &str, limit: u64) -> Result<Vec<u8>, ChallengeError> {
    decode_base64(text, limit).map_err(|problem| match problem {
        Base64Problem::TooLarge { len } => ChallengeError::Media {
            challenge: id.clone(),
            asset,
            reason: super::error::MediaError::TooLarge { len, limit },
        },
        Base64Problem::Invalid(detail) => ChallengeError::BadBase64 {
            challenge: id.clone(),
            asset,
            detail,
        },
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Base64Problem {
    /// The decoded size (exact, computed from the encoded length) is over the limit.
    TooLarge {
        len: u64,
    },
    Invalid(String),
}

/// Decodes base64 as the hardened reference does (@1a61b40): an optional `data:...;base64,` prefix is
/// stripped, padding is optional (repaired), the whole string must be in the standard or the URL-safe
/// alphabet, never a mix. Surrounding whitespace is trimmed; inner whitespace is refused. Trailing
/// bits must be zero (one encoding per byte string).
fn decode_base64(text: &str, limit: u64) -> Result<Vec<u8>, Base64Problem> {
    let invalid = |s: &str| Base64Problem::Invalid(s.to_owned());
    let mut data = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if data.len() >= 5 && data.as_bytes()[..5].eq_ignore_ascii_case(b"data:") {
        let comma = data
            .find(',')
            .ok_or_else(|| invalid("a data: URL without a comma"))?;
        let header = &data[..comma];
        if !header.to_ascii_lowercase().ends_with(";base64") {
            return Err(invalid("a data: URL that is not ;base64"));
        }
        data = &data[comma + 1..];
    }
    let unpadded = data.trim_end_matches('=');
    if data.len() - unpadded.len() > 2 {
        return Err(invalid("more than two padding characters"));
    }
    if unpadded.is_empty() {
        return Err(invalid("empty"));
    }
    let mut standard = false;
    let mut url_safe = false;
    for (position, byte) in unpadded.bytes().enumerate() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => {}
            b'+' | b'/' => standard = true,
            b'-' | b'_' => url_safe = true,
            b'=' => {
                return Err(Base64Problem::Invalid(format!(
                    "padding inside the data at byte {position}"
                )));
            }
            _ => {
                return Err(Base64Problem::Invalid(format!(
                    "byte {position} is not in the base64 alphabet"
                )));
            }
        }
    }
    if standard && url_safe {
        return Err(invalid("mixes the standard (+/) and URL-safe (-_) alphabets"));
    }
    if unpadded.len() % 4 == 1 {
        return Err(invalid("impossible length (one character past a whole group)"));
    }
    let decoded_len = (unpadded.len() / 4 * 3 + (unpadded.len() % 4).saturating_sub(1)) as u64;
    if decoded_len > limit {
        return Err(Base64Problem::TooLarge { len: decoded_len });
    }
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false);
    let engine = GeneralPurpose::new(
        if url_safe {
            &alphabet::URL_SAFE
        } else {
            &alphabet::STANDARD
        },
        config,
    );
    engine
        .decode(unpadded)
        .map_err(|e| Base64Problem::Invalid(e.to_string()))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::challenges::MediaError;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(value: &Value) -> Result<ChallengeSet, ChallengeError> {
        parse_payload(value.to_string().as_bytes(), &Limits::default())
    }

    fn dict_item(id: Option<&str>, text: Option<&str>) -> Value {
        let mut item = json!({
            "face_base64": b64(&png(64, 64)),
            "audio_base64": b64(&wav_default()),
        });
        if let Some(id) = id {
            item["challenge_id"] = json!(id);
        }
        if let Some(text) = text {
            item["text"] = json!(text);
        }
        item
    }

    fn list_item(text: &str) -> Value {
        json!([text, b64(&wav_default()), b64(&png(64, 64)), "ignored extra"])
    }

    fn ids(set: &ChallengeSet) -> Vec<String> {
        set.iter().map(|c| c.id().to_string()).collect()
    }

    #[test]
    fn top_level_list_of_dicts() {
        let set = parse(&json!([
            dict_item(Some("alpha"), Some("hi")),
            dict_item(None, None)
        ]))
        .unwrap();
        assert_eq!(ids(&set), ["alpha", "challenge-1"]);
        assert_eq!(set.challenges()[0].text(), Some("hi"));
        assert_eq!(set.challenges()[1].text(), None);
    }

    #[test]
    fn dict_with_challenges_of_lists() {
        let set = parse(&json!({"round": 3, "challenges": [list_item("one"), list_item("")]})).unwrap();
        assert_eq!(ids(&set), ["challenge-0", "challenge-1"]);
        assert_eq!(set.challenges()[0].text(), Some("one"));
        assert_eq!(set.challenges()[1].text(), None);
        // Same content through the two shapes gives the same set hash.
        let again = parse(&json!([list_item("one"), list_item("")])).unwrap();
        assert_eq!(set.hash(), again.hash());
    }

    #[test]
    fn mixed_item_shapes_and_null_text() {
        let set = parse(&json!([
            json!([null, b64(&wav_default()), b64(&png(64, 64))]),
            dict_item(Some("x"), None),
        ]))
        .unwrap();
        assert_eq!(ids(&set), ["challenge-0", "x"]);
    }

    #[test]
    fn base64_variants_decode_to_the_same_bytes() {
        let face = png(64, 64);
        let variants = [
            b64(&face),
            b64url(&face),
            b64(&face).trim_end_matches('=').to_owned(),
            format!("data:image/png;base64,{}", b64(&face)),
            format!("DATA:image/png;BASE64,{}", b64url(&face)),
            format!("  {}\n", b64(&face)),
        ];
        for v in &variants {
            assert_eq!(decode_base64(v, u64::MAX).unwrap(), face, "{}", &v[..40]);
        }
        let set = parse(&json!([{
            "face_base64": format!("data:image/png;base64,{}", b64url(&face)),
            "audio_base64": b64(&wav_default()).trim_end_matches('='),
        }]))
        .unwrap();
        assert_eq!(set.challenges()[0].face(), &face[..]);
    }

    #[test]
    fn base64_refusals() {
        let bad = |s: &str| decode_base64(s, u64::MAX).unwrap_err();
        assert!(matches!(bad("ab+c-_xy"), Base64Problem::Invalid(d) if d.contains("mixes")));
        assert!(matches!(bad("ab/c_dxy"), Base64Problem::Invalid(d) if d.contains("mixes")));
        assert!(matches!(bad("ab c"), Base64Problem::Invalid(_)));
        assert!(matches!(bad("ab=c"), Base64Problem::Invalid(d) if d.contains("padding")));
        assert!(matches!(bad("abc==="), Base64Problem::Invalid(_)));
        assert!(matches!(bad("abcde"), Base64Problem::Invalid(d) if d.contains("length")));
        assert!(matches!(bad(""), Base64Problem::Invalid(_)));
        assert!(matches!(bad("=="), Base64Problem::Invalid(_)));
        assert!(matches!(bad("data:image/png,abcd"), Base64Problem::Invalid(d) if d.contains("base64")));
        assert!(matches!(bad("data:abcd"), Base64Problem::Invalid(_)));
        // Non-zero trailing bits: "QR==" and "QQ==" would both mean "A".
        assert!(matches!(bad("QR=="), Base64Problem::Invalid(_)));
        assert_eq!(decode_base64("QQ==", u64::MAX).unwrap(), b"A");
        assert_eq!(decode_base64("QUJD", 3).unwrap(), b"ABC");
        assert_eq!(
            decode_base64("QUJD", 2).unwrap_err(),
            Base64Problem::TooLarge { len: 3 }
        );
    }

    #[test]
    fn host_paths_are_refused_wherever_they_appear() {
        for key in ["challenges_dir", "challenge_dir"] {
            let err = parse(&json!({ key: "/etc", "challenges": [dict_item(None, None)] })).unwrap_err();
            assert!(
                matches!(&err, ChallengeError::HostPathRefused { key: k, item: None } if *k == key),
                "{err}"
            );
            let err = parse(&json!({ key: "/var/lib/talkheadd" })).unwrap_err();
            assert!(matches!(&err, ChallengeError::HostPathRefused { .. }), "{err}");
        }
        for key in ["face_path", "audio_path"] {
            let mut item = dict_item(Some("c"), None);
            item[key] = json!("/root/.bittensor/wallets/validator/hotkeys/default");
            let err = parse(&json!([dict_item(Some("ok"), None), item])).unwrap_err();
            assert!(
                matches!(&err, ChallengeError::HostPathRefused { key: k, item: Some(1) } if *k == key),
                "{err}"
            );
            assert!(err.to_string().contains("never read"), "{err}");
            // Even as a fallback next to missing base64, and even when null.
            let err = parse(&json!([{ key: null }])).unwrap_err();
            assert!(matches!(&err, ChallengeError::HostPathRefused { .. }), "{err}");
            let err = parse(&json!({"challenges": [{ key: "/x", "face_base64": "", "audio_base64": "" }]}))
                .unwrap_err();
            assert!(matches!(&err, ChallengeError::HostPathRefused { .. }), "{err}");
        }
    }

    #[test]
    fn ids_are_never_substituted() {
        for bad in [
            "../../etc/cron.d/x",
            "a/b",
            "",
            ".",
            "..",
            "a\u{0}b",
            &"x".repeat(65),
        ] {
            let err = parse(&json!([dict_item(Some(bad), None)])).unwrap_err();
            assert!(matches!(&err, ChallengeError::InvalidId { .. }), "{bad:?}: {err}");
        }
        let err = parse(&json!([{"challenge_id": 7, "face_base64": "", "audio_base64": ""}])).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::InvalidId {
                    reason: IdError::NotAString,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn duplicate_ids_are_refused_before_decoding() {
        // The second item has broken base64, but the duplicate is reported first.
        let err = parse(&json!([
            dict_item(Some("challenge-1"), None),
            {"face_base64": "!!!", "audio_base64": "!!!"},
        ]))
        .unwrap_err();
        assert!(
            matches!(&err, ChallengeError::DuplicateId { id } if id.as_str() == "challenge-1"),
            "{err}"
        );
    }

    #[test]
    fn missing_media_is_an_error_not_a_skip() {
        let mut item = dict_item(Some("c"), None);
        item.as_object_mut().unwrap().remove("audio_base64");
        let err = parse(&json!([dict_item(Some("ok"), None), item])).unwrap_err();
        assert!(
            matches!(&err, ChallengeError::MissingAsset { asset: Asset::Audio, challenge, .. } if challenge.as_str() == "c"),
            "{err}"
        );
        let err =
            parse(&json!([{"challenge_id": "c", "face_base64": null, "audio_base64": "QQ=="}])).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::MissingAsset {
                    asset: Asset::Face,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(&json!([["text", b64(&wav_default())]])).unwrap_err();
        assert!(matches!(&err, ChallengeError::BadItem { index: 0, .. }), "{err}");
        let err = parse(&json!([["text", null, b64(&png(64, 64))]])).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::MissingAsset {
                    asset: Asset::Audio,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_and_shapes_are_refused() {
        assert!(matches!(
            parse(&json!("x")),
            Err(ChallengeError::PayloadShape { .. })
        ));
        assert!(matches!(
            parse(&json!(42)),
            Err(ChallengeError::PayloadShape { .. })
        ));
        assert!(matches!(
            parse(&json!({"items": []})),
            Err(ChallengeError::PayloadShape { .. })
        ));
        assert!(matches!(
            parse(&json!({"challenges": {}})),
            Err(ChallengeError::PayloadShape { .. })
        ));
        assert!(matches!(parse(&json!([])), Err(ChallengeError::Empty)));
        assert!(matches!(
            parse(&json!({"challenges": []})),
            Err(ChallengeError::Empty)
        ));
        assert!(matches!(
            parse(&json!([42])),
            Err(ChallengeError::BadItem { index: 0, .. })
        ));
        let err = parse(&json!([{"face_base64": 1, "audio_base64": "QQ=="}])).unwrap_err();
        assert!(matches!(&err, ChallengeError::BadItem { .. }), "{err}");
        let mut item = dict_item(None, None);
        item["text"] = json!(12);
        assert!(matches!(
            parse(&json!([item])),
            Err(ChallengeError::Text {
                reason: TextError::NotAString,
                ..
            })
        ));
        assert!(matches!(
            parse_payload(b"{not json", &Limits::default()),
            Err(ChallengeError::PayloadJson { .. })
        ));
        assert!(matches!(
            parse_payload(b"", &Limits::default()),
            Err(ChallengeError::PayloadJson { .. })
        ));
    }

    #[test]
    fn bounds_on_body_items_and_fields() {
        let tight = Limits {
            max_payload_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_payload(b"[1, 2, 3, 4, 5]", &tight),
            Err(ChallengeError::PayloadTooLarge {
                len: Some(15),
                limit: 10
            })
        ));
        let tight = Limits {
            max_challenges: 2,
            ..Limits::default()
        };
        let body = json!([[null, "", ""], [null, "", ""], [null, "", ""]]).to_string();
        assert!(matches!(
            parse_payload(body.as_bytes(), &tight),
            Err(ChallengeError::TooManyChallenges { count: 3, max: 2 })
        ));
        let tight = Limits {
            max_face_bytes: 50,
            ..Limits::default()
        };
        let body = json!([dict_item(None, None)]).to_string();
        let err = parse_payload(body.as_bytes(), &tight).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::Media {
                    asset: Asset::Face,
                    reason: MediaError::TooLarge { limit: 50, .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn media_is_validated_and_errors_name_the_challenge() {
        let err = parse(&json!([{
            "challenge_id": "freesound-1",
            "face_base64": b64(&png(64, 64)),
            "audio_base64": b64(b"ID3\x04\0\0\0\0\0\x23TSSE\0\0\0"),
        }]))
        .unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::Media {
                    asset: Asset::Audio,
                    reason: MediaError::UnsupportedFormat { .. },
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("freesound-1") && text.contains("MP3"), "{text}");
        let err = parse(&json!([{
            "challenge_id": "c",
            "face_base64": b64(b"GIF89a...."),
            "audio_base64": b64(&wav_default()),
        }]))
        .unwrap_err();
        assert!(err.to_string().contains("GIF"), "{err}");
        let err = parse(&json!([{"challenge_id": "c", "face_base64": "ab+c-_xy", "audio_base64": "QQ=="}]))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::BadBase64 {
                    asset: Asset::Face,
                    ..
                }
            ),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn base64_roundtrips_in_both_alphabets(bytes in proptest::collection::vec(any::<u8>(), 1..300)) {
            prop_assert_eq!(decode_base64(&b64(&bytes), u64::MAX).unwrap(), bytes.clone());
            prop_assert_eq!(decode_base64(&b64url(&bytes), u64::MAX).unwrap(), bytes.clone());
            // The exact decoded length is known before decoding.
            let limit = bytes.len() as u64;
            prop_assert!(decode_base64(&b64(&bytes), limit).is_ok());
            prop_assert_eq!(
                decode_base64(&b64(&bytes), limit - 1).unwrap_err(),
                Base64Problem::TooLarge { len: limit }
            );
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_payload(&body, &Limits::default());
        }

        #[test]
        fn parser_never_panics_on_json_shapes(text in "[\\[\\]{}\",:a-z_0-9 ]{0,200}") {
            let _ = parse_payload(text.as_bytes(), &Limits::default());
        }
    }
}
