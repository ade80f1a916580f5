//! Validated SS58 hotkey addresses (Bittensor network prefix 42).
//!
//! Owns the parsing, checksum verification and canonical encoding of the public hotkeys that the
//! executor sees on the wire (`X-Hotkey`, `/update` bodies, the auth allow-list). A [`Hotkey`] can only
//! be built from a well-formed, checksummed, prefix-42 address, so every layer above can compare hotkeys
//! as plain values.
//!
//! Must not: verify signatures or know about sr25519 (that is `api::auth`), hold or derive private keys,
//! touch the network, the chain or the clock, or accept any other network's addresses.

use std::fmt;
use std::str::FromStr;

use blake2::{Blake2b512, Digest};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only SS58 network prefix accepted: Bittensor and the generic Substrate format
/// (the reference builds its keypairs with `ss58_format=42`).
pub const BITTENSOR_SS58_PREFIX: u16 = 42;

/// Longest address text accepted before decoding. Real addresses are 47–48 characters; the cap keeps
/// hostile inputs from reaching the base58 decoder (which is quadratic in the input length).
pub const MAX_ADDRESS_LEN: usize = 64;

/// Length of an sr25519 public key (the SS58 account id).
const PUBLIC_KEY_LEN: usize = 32;
/// Length of the SS58 checksum suffix for a 32-byte account id.
const CHECKSUM_LEN: usize = 2;
/// Domain-separation prefix of the SS58 checksum preimage.
const SS58_CHECKSUM_DOMAIN: &[u8] = b"SS58PRE";

/// Why a string is not an acceptable hotkey. Messages never echo the input (callers decide whether and
/// how to show it), only positions, lengths and prefixes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotkeyError {
    /// The input was the empty string.
    #[error("hotkey is empty")]
    Empty,
    /// The input is longer than [`MAX_ADDRESS_LEN`] characters.
    #[error("hotkey is {len} bytes long, the maximum is {MAX_ADDRESS_LEN}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The input contains whitespace, a control character or non-ASCII text.
    #[error("hotkey contains whitespace, a control or a non-ASCII character at byte {position}")]
    InvalidCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// The input is not valid base58 (Bitcoin alphabet).
    #[error("hotkey is not valid base58")]
    NotBase58,
    /// The first byte announces a prefix form SS58 reserves (128..=255).
    #[error("hotkey uses a reserved SS58 prefix byte {byte:#04x}")]
    ReservedPrefix {
        /// The offending first byte.
        byte: u8,
    },
    /// A small network id was written in the two-byte form; SS58 encodes ids below 64 in one byte, and
    /// accepting both would give one account two spellings.
    #[error("hotkey encodes network prefix {prefix} in the non-canonical two-byte form")]
    NonCanonicalPrefix {
        /// The decoded network id.
        prefix: u16,
    },
    /// The decoded payload does not hold a 32-byte account id plus a 2-byte checksum.
    #[error(
        "hotkey decodes to {len} bytes, expected {expected} (prefix, 32-byte public key, 2-byte checksum)"
    )]
    WrongLength {
        /// Decoded length in bytes.
        len: usize,
        /// Length a 32-byte account id with this prefix form must have.
        expected: usize,
    },
    /// The SS58 checksum does not match (typo or tampering).
    #[error("hotkey checksum does not match")]
    BadChecksum,
    /// A well-formed address of another network (e.g. 0 for Polkadot).
    #[error("hotkey has SS58 network prefix {prefix}, only {BITTENSOR_SS58_PREFIX} (Bittensor) is accepted")]
    WrongPrefix {
        /// The network id the address carries.
        prefix: u16,
    },
}

/// A validated Bittensor hotkey: an SS58 address with network prefix 42 and a verified checksum.
///
/// Equality, ordering and hashing follow the address text, which is canonical (one spelling per key),
/// so they agree with comparing public keys. Serialises as the address string; deserialising validates.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hotkey {
    // Field order matters for the derived `Ord`: address first, so sorted sets list addresses
    // alphabetically (what logs and `/metrics` readers expect).
    address: Box<str>,
    public_key: [u8; PUBLIC_KEY_LEN],
}

impl Hotkey {
    /// Parses and validates an SS58 address: bounded length, no whitespace or control characters,
    /// base58, simple (1-byte) or full (2-byte) prefix form, 32-byte account id, checksum, network 42.
    pub fn parse(address: &str) -> Result<Hotkey, HotkeyError> {
        if address.is_empty() {
            return Err(HotkeyError::Empty);
        }
        if address.len() > MAX_ADDRESS_LEN {
            return Err(HotkeyError::TooLong { len: address.len() });
        }
        if let Some(position) = address.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(HotkeyError::InvalidCharacter { position });
        }
        let data = bs58::decode(address)
            .into_vec()
            .map_err(|_| HotkeyError::NotBase58)?;

        let (prefix_len, prefix) = decode_prefix(&data)?;
        let expected = prefix_len + PUBLIC_KEY_LEN + CHECKSUM_LEN;
        if data.len() != expected {
            return Err(HotkeyError::WrongLength {
                len: data.len(),
                expected,
            });
        }
        let (body, checksum) = data.split_at(prefix_len + PUBLIC_KEY_LEN);
        if ss58_checksum(body) != checksum {
            return Err(HotkeyError::BadChecksum);
        }
        // Checked after the checksum so that a typo is reported as a typo, and a real address of
        // another network is reported by its prefix.
        if prefix != BITTENSOR_SS58_PREFIX {
            return Err(HotkeyError::WrongPrefix { prefix });
        }
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        public_key.copy_from_slice(&body[prefix_len..]);
        Ok(Hotkey {
            address: address.into(),
            public_key,
        })
    }

    /// Encodes a 32-byte sr25519 public key as a prefix-42 SS58 address.
    pub fn from_public_key(public_key: [u8; PUBLIC_KEY_LEN]) -> Hotkey {
        let prefix = encode_prefix(BITTENSOR_SS58_PREFIX);
        let mut data = Vec::with_capacity(prefix.len() + PUBLIC_KEY_LEN + CHECKSUM_LEN);
        data.extend_from_slice(&prefix);
        data.extend_from_slice(&public_key);
        let checksum = ss58_checksum(&data);
        data.extend_from_slice(&checksum);
        Hotkey {
            address: bs58::encode(data).into_string().into_boxed_str(),
            public_key,
        }
    }

    /// The 32-byte sr25519 public key (SS58 account id).
    pub fn public_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// The SS58 address text.
    pub fn as_str(&self) -> &str {
        &self.address
    }
}

/// Splits the SS58 prefix off the decoded payload: returns its length in bytes and the network id.
fn decode_prefix(data: &[u8]) -> Result<(usize, u16), HotkeyError> {
    let first = *data.first().ok_or(HotkeyError::WrongLength {
        len: 0,
        expected: 1 + PUBLIC_KEY_LEN + CHECKSUM_LEN,
    })?;
    match first {
        0..=63 => Ok((1, u16::from(first))),
        64..=127 => {
            let second = *data.get(1).ok_or(HotkeyError::WrongLength {
                len: data.len(),
                expected: 2 + PUBLIC_KEY_LEN + CHECKSUM_LEN,
            })?;
            // Full form (as in sp-core): the 14-bit id is split over the two bytes with the top two bits
            // of the first byte fixed to 0b01.
            let lower = (first << 2) | (second >> 6);
            let upper = second & 0b0011_1111;
            let prefix = u16::from(lower) | (u16::from(upper) << 8);
            if prefix < 64 {
                return Err(HotkeyError::NonCanonicalPrefix { prefix });
            }
            Ok((2, prefix))
        }
        byte => Err(HotkeyError::ReservedPrefix { byte }),
    }
}

/// Encodes a network id (0..=16383) in the shortest SS58 prefix form.
fn encode_prefix(prefix: u16) -> Vec<u8> {
    let ident = prefix & 0b0011_1111_1111_1111;
    match u8::try_from(ident) {
        Ok(small) if small < 64 => vec![small],
        _ => {
            let first = ((ident & 0b0000_0000_1111_1100) >> 2) as u8;
            let second = ((ident >> 8) as u8) | (((ident & 0b0000_0000_0000_0011) as u8) << 6);
            vec![first | 0b0100_0000, second]
        }
    }
}

/// First two bytes of blake2b-512(`"SS58PRE"` ++ prefix ++ public key).
fn ss58_checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Blake2b512::new();
    hasher.update(SS58_CHECKSUM_DOMAIN);
    hasher.update(body);
    let hash = hasher.finalize();
    [hash[0], hash[1]]
}

impl fmt::Display for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address alone identifies the key; the raw bytes would only add noise to logs.
        f.debug_tuple("Hotkey").field(&&*self.address).finish()
    }
}

impl FromStr for Hotkey {
    type Err = HotkeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hotkey::parse(s)
    }
}

impl TryFrom<&str> for Hotkey {
    type Error = HotkeyError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Hotkey::parse(s)
    }
}

impl AsRef<str> for Hotkey {
    fn as_ref(&self) -> &str {
        &self.address
    }
}

impl Serialize for Hotkey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.address)
    }
}

impl<'de> Deserialize<'de> for Hotkey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Hotkey::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const ALICE_PUB: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";
    /// Alice's key in Polkadot format (prefix 0).
    const ALICE_POLKADOT: &str = "15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5";
    /// Alice's key in Kusama format (prefix 2).
    const ALICE_KUSAMA: &str = "HNZata7iMYWmk5RvZRTiAsSDhV8366zq2YGb3tLH5Upf74F";

    fn alice_pub() -> [u8; 32] {
        hex::decode(ALICE_PUB).unwrap().try_into().unwrap()
    }

    /// Encodes an arbitrary prefix/key pair the way SS58 does, for negative tests.
    fn encode_with(prefix_bytes: &[u8], key: &[u8]) -> String {
        let mut data = prefix_bytes.to_vec();
        data.extend_from_slice(key);
        let checksum = ss58_checksum(&data);
        data.extend_from_slice(&checksum);
        bs58::encode(data).into_string()
    }

    #[test]
    fn alice_parses_to_her_public_key() {
        let hotkey = Hotkey::parse(ALICE).unwrap();
        assert_eq!(hotkey.public_key(), &alice_pub());
        assert_eq!(hotkey.as_str(), ALICE);
        assert_eq!(hotkey.to_string(), ALICE);
        assert_eq!(format!("{hotkey:?}"), format!("Hotkey({ALICE:?})"));
    }

    #[test]
    fn alice_public_key_encodes_to_her_address() {
        assert_eq!(Hotkey::from_public_key(alice_pub()).as_str(), ALICE);
        assert_eq!(
            Hotkey::from_public_key(alice_pub()),
            Hotkey::parse(ALICE).unwrap()
        );
    }

    #[test]
    fn one_character_change_fails_the_checksum() {
        // Swap the last character for another base58 digit: still decodes, checksum breaks.
        let mut tampered = ALICE.to_string();
        tampered.pop();
        tampered.push('Z');
        assert_eq!(Hotkey::parse(&tampered), Err(HotkeyError::BadChecksum));
        // A change in the middle (the public key part) too.
        let tampered = ALICE.replacen("Xb26", "Xb27", 1);
        assert_ne!(tampered, ALICE);
        assert_eq!(Hotkey::parse(&tampered), Err(HotkeyError::BadChecksum));
    }

    #[test]
    fn other_networks_are_rejected_by_prefix() {
        assert_eq!(
            Hotkey::parse(ALICE_POLKADOT),
            Err(HotkeyError::WrongPrefix { prefix: 0 })
        );
        assert_eq!(
            Hotkey::parse(ALICE_KUSAMA),
            Err(HotkeyError::WrongPrefix { prefix: 2 })
        );
        let err = Hotkey::parse(ALICE_POLKADOT).unwrap_err().to_string();
        assert!(err.contains("prefix 0"), "{err}");
    }

    #[test]
    fn full_two_byte_prefixes_decode() {
        // 255 needs the full form; it is well formed but not Bittensor.
        let address = encode_with(&encode_prefix(255), &alice_pub());
        assert_eq!(
            Hotkey::parse(&address),
            Err(HotkeyError::WrongPrefix { prefix: 255 })
        );
        let address = encode_with(&encode_prefix(16383), &alice_pub());
        assert_eq!(
            Hotkey::parse(&address),
            Err(HotkeyError::WrongPrefix { prefix: 16383 })
        );
    }

    #[test]
    fn two_byte_spelling_of_42_is_rejected() {
        // 42 written in the full form: first = 0b01 | (42 >> 2), second = (42 & 3) << 6.
        let first = 0b0100_0000 | (42u8 >> 2);
        let second = (42u8 & 0b11) << 6;
        let address = encode_with(&[first, second], &alice_pub());
        assert_eq!(
            Hotkey::parse(&address),
            Err(HotkeyError::NonCanonicalPrefix { prefix: 42 })
        );
    }

    #[test]
    fn reserved_prefix_bytes_are_rejected() {
        let address = encode_with(&[0x80], &alice_pub());
        assert_eq!(
            Hotkey::parse(&address),
            Err(HotkeyError::ReservedPrefix { byte: 0x80 })
        );
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let address = encode_with(&[42], &alice_pub()[..31]);
        assert_eq!(
            Hotkey::parse(&address),
            Err(HotkeyError::WrongLength {
                len: 34,
                expected: 35
            })
        );
        let mut long = alice_pub().to_vec();
        long.push(0);
        let address = encode_with(&[42], &long);
        assert!(matches!(
            Hotkey::parse(&address),
            Err(HotkeyError::WrongLength { len: 36, .. })
        ));
        assert!(matches!(Hotkey::parse("1"), Err(HotkeyError::WrongLength { .. })));
    }

    #[test]
    fn garbage_is_rejected_before_decoding() {
        assert_eq!(Hotkey::parse(""), Err(HotkeyError::Empty));
        assert_eq!(
            Hotkey::parse(&"5".repeat(65)),
            Err(HotkeyError::TooLong { len: 65 })
        );
        assert_eq!(
            Hotkey::parse(&format!(" {ALICE}")),
            Err(HotkeyError::InvalidCharacter { position: 0 })
        );
        assert_eq!(
            Hotkey::parse(&format!("{ALICE}\n")),
            Err(HotkeyError::InvalidCharacter { position: 48 })
        );
        assert_eq!(
            Hotkey::parse("5Grw\u{0}"),
            Err(HotkeyError::InvalidCharacter { position: 4 })
        );
        assert_eq!(
            Hotkey::parse("5Grwé"),
            Err(HotkeyError::InvalidCharacter { position: 4 })
        );
        // 0, O, I and l are not in the base58 alphabet.
        assert_eq!(
            Hotkey::parse("0GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"),
            Err(HotkeyError::NotBase58)
        );
    }

    #[test]
    fn serde_roundtrip_and_validation() {
        let hotkey = Hotkey::parse(ALICE).unwrap();
        let json = serde_json::to_string(&hotkey).unwrap();
        assert_eq!(json, format!("\"{ALICE}\""));
        let back: Hotkey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hotkey);
        let err = serde_json::from_str::<Hotkey>(&format!("\"{ALICE_POLKADOT}\"")).unwrap_err();
        assert!(err.to_string().contains("prefix 0"), "{err}");
        assert!(serde_json::from_str::<Hotkey>("42").is_err());
    }

    #[test]
    fn ordering_follows_the_address_text() {
        let a = Hotkey::from_public_key([1; 32]);
        let b = Hotkey::from_public_key([2; 32]);
        assert_eq!(a.cmp(&b), a.as_str().cmp(b.as_str()));
    }

    proptest! {
        #[test]
        fn from_public_key_roundtrips_through_parse(key in any::<[u8; 32]>()) {
            let hotkey = Hotkey::from_public_key(key);
            let parsed = Hotkey::parse(hotkey.as_str()).unwrap();
            prop_assert_eq!(parsed.public_key(), &key);
            prop_assert_eq!(&parsed, &hotkey);
        }

        #[test]
        fn prefix_encoding_roundtrips(prefix in 0u16..=16383) {
            let bytes = encode_prefix(prefix);
            let mut data = bytes.clone();
            data.extend_from_slice(&[0u8; 34]);
            prop_assert_eq!(decode_prefix(&data).unwrap(), (bytes.len(), prefix));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            let _ = Hotkey::parse(&input);
        }
    }
}
