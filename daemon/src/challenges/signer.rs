//! The executor's own hotkey, used only to sign `GET {SUBNET_API_URL}/challenge` the way the reference
//! does (docs/reference.md#auth-challenge): `X-Hotkey`, `X-Timestamp` (integer seconds), `X-Signature` (hex
//! sr25519, context `b"substrate"`) over `<Bytes>{path}:{timestamp}:{hotkey}</Bytes>`.
//!
//! Owns loading the key from a bittensor hotkey file (`secretSeed` and/or `privateKey`, checked against
//! `ss58Address` and `publicKey`), named by a path or a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`,
//! `LoadCredential=`), and producing those headers.
//!
//! Must not: take the key itself from configuration, accept a key file that group or others can access,
//! accept key material that does not match the declared address, or expose the secret in any error,
//! log line or `Debug` output (schnorrkel zeroes its secret key on drop). Signing the `/challenge`
//! request with the validator key on the host that runs miner containers is the reference's bug 8
//! (docs/reference.md#weakness-8); this module keeps the key out of the config and the containers' reach but
//! cannot make it unnecessary.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use schnorrkel::{ExpansionMode, Keypair, MiniSecretKey, SecretKey};
use serde::Deserialize;

use super::error::{KeyError, sanitize};
use crate::domain::hotkey::Hotkey;

/// The signed-header scheme's names: what this module signs, `api::auth` verifies.
pub use crate::domain::signing::{HEADER_HOTKEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, SIGNING_CONTEXT};
/// Environment variable systemd sets for units with `LoadCredential=`.
pub const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Real hotkey files are well under 1 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// `O_NONBLOCK` (Linux, all common architectures): opening a FIFO planted at the path must not hang.
const O_NONBLOCK: i32 = if cfg!(target_os = "linux") { 0o4_000 } else { 0 };

/// Where the hotkey key file comes from. The configuration holds one of these, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A bittensor hotkey file, e.g. `~/.bittensor/wallets/<wallet>/hotkeys/<hotkey>`.
    File(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

/// The bytes of a secret named by `source` (a hotkey file, the Ray cluster's token), read with the
/// checks every secret gets: a regular file, no permission bits for group or others, at most 64 KiB, a
/// credential name that is one plain path component.
pub fn read_secret(source: &KeySource) -> Result<Vec<u8>, KeyError> {
    match source {
        KeySource::File(path) => read_key_file(path),
        KeySource::Credential(name) => {
            let dir = std::env::var_os(CREDENTIALS_DIRECTORY_ENV)
                .ok_or_else(|| KeyError::NoCredentialsDirectory { name: sanitize(name) })?;
            read_key_file(&credential_path(Path::new(&dir), name)?)
        }
    }
}

/// `dir/name` when `name` is one plain path component.
fn credential_path(dir: &Path, name: &str) -> Result<PathBuf, KeyError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if !plain {
        return Err(KeyError::BadCredentialName { name: sanitize(name) });
    }
    Ok(dir.join(name))
}

/// The three legacy signed headers for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `X-Hotkey`: the SS58 address.
    pub hotkey: String,
    /// `X-Timestamp`: integer unix seconds.
    pub timestamp: String,
    /// `X-Signature`: 128 lowercase hex digits, no `0x`.
    pub signature: String,
}

impl SignedHeaders {
    /// `(name, value)` pairs in the reference's header names.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_HOTKEY, &self.hotkey),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

/// The signed message of the legacy scheme: `<Bytes>{path}:{timestamp}:{hotkey}</Bytes>`.
pub fn legacy_message(path: &str, unix_secs: u64, hotkey: &str) -> String {
    format!("<Bytes>{path}:{unix_secs}:{hotkey}</Bytes>")
}

/// An sr25519 hotkey able to sign requests. `Debug` shows the address only.
pub struct Signer {
    keypair: Keypair,
    hotkey: Hotkey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("hotkey", &self.hotkey)
            .finish_non_exhaustive()
    }
}

/// The fields of a bittensor keyfile we use. Deliberately not `Debug`.
#[derive(Deserialize)]
struct KeyFileJson {
    #[serde(rename = "secretSeed")]
    secret_seed: Option<String>,
    #[serde(rename = "privateKey")]
    private_key: Option<String>,
    #[serde(rename = "publicKey")]
    public_key: Option<String>,
    #[serde(rename = "ss58Address")]
    ss58_address: Option<String>,
    #[serde(rename = "cryptoType")]
    crypto_type: Option<u8>,
}

impl Signer {
    /// Loads the key from wherever `source` says.
    pub fn load(source: &KeySource) -> Result<Signer, KeyError> {
        match source {
            KeySource::File(path) => Signer::from_key_file(path),
            KeySource::Credential(name) => Signer::from_credential(name),
        }
    }

    /// Loads a bittensor hotkey file. The file must be a regular file (symlinks to one are resolved),
    /// with no permission bits for group or others, at most 64 KiB, unencrypted JSON with `ss58Address`
    /// and `secretSeed` (0x-hex 32-byte mini secret) and/or `privateKey` (0x-hex 64-byte expanded key);
    /// every key field present must agree with the others and with the address.
    pub fn from_key_file(path: &Path) -> Result<Signer, KeyError> {
        let bytes = read_key_file(path)?;
        Signer::from_key_json(path, &bytes)
    }

    /// Loads the systemd credential `name` from `$CREDENTIALS_DIRECTORY`.
    pub fn from_credential(name: &str) -> Result<Signer, KeyError> {
        let dir = std::env::var_os(CREDENTIALS_DIRECTORY_ENV)
            .ok_or_else(|| KeyError::NoCredentialsDirectory { name: sanitize(name) })?;
        Signer::from_credential_in(Path::new(&dir), name)
    }

    /// Loads the credential `name` from the given credentials directory (what
    /// [`Signer::from_credential`] does with `$CREDENTIALS_DIRECTORY`).
    pub fn from_credential_in(dir: &Path, name: &str) -> Result<Signer, KeyError> {
        Signer::from_key_file(&credential_path(dir, name)?)
    }

    /// Parses the JSON of a hotkey file; `path` only names the source in errors.
    pub fn from_key_json(path: &Path, bytes: &[u8]) -> Result<Signer, KeyError> {
        let malformed = |detail: &str| KeyError::Malformed {
            path: path.to_path_buf(),
            detail: detail.to_owned(),
        };
        let mismatch = |detail: &str| KeyError::Mismatch {
            path: path.to_path_buf(),
            detail: detail.to_owned(),
        };
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let body = &bytes[start..];
        if body.starts_with(b"$NACL")
            || body.starts_with(b"$BITTENSOR")
            || body.starts_with(b"$ANSIBLE_VAULT")
        {
            return Err(KeyError::Encrypted {
                path: path.to_path_buf(),
            });
        }
        // serde_json errors carry positions, never the content.
        let file: KeyFileJson = serde_json::from_slice(body)
            .map_err(|e| malformed(&format!("not the expected JSON object ({e})")))?;
        if let Some(kind) = file.crypto_type.filter(|kind| *kind != 1) {
            return Err(malformed(&format!("cryptoType {kind} is not sr25519 (1)")));
        }
        let address = file
            .ss58_address
            .as_deref()
            .ok_or_else(|| malformed("ss58Address is missing"))?;
        let hotkey =
            Hotkey::parse(address).map_err(|e| malformed(&format!("ss58Address is invalid: {e}")))?;

        let from_seed = match &file.secret_seed {
            None => None,
            Some(text) => {
                let seed: [u8; 32] = decode_hex_field(text)
                    .ok_or_else(|| malformed("secretSeed is not 0x + 64 hex digits"))?;
                let mini = MiniSecretKey::from_bytes(&seed)
                    .map_err(|_| malformed("secretSeed is not a valid mini secret key"))?;
                Some(mini.expand_to_keypair(ExpansionMode::Ed25519))
            }
        };
        let from_private = match &file.private_key {
            None => None,
            Some(text) => {
                let raw: [u8; 64] = decode_hex_field(text)
                    .ok_or_else(|| malformed("privateKey is not 0x + 128 hex digits"))?;
                Some(private_key_candidates(&raw))
            }
        };
        let keypair = match (from_seed, from_private) {
            (Some(seeded), Some(candidates)) => {
                // Both present: they must describe the same key.
                if !candidates
                    .iter()
                    .any(|k| k.public.to_bytes() == seeded.public.to_bytes())
                {
                    return Err(mismatch("secretSeed and privateKey describe different keys"));
                }
                seeded
            }
            (Some(seeded), None) => seeded,
            (None, Some(candidates)) => candidates
                .into_iter()
                .find(|k| &k.public.to_bytes() == hotkey.public_key())
                .ok_or_else(|| mismatch("privateKey does not belong to ss58Address"))?,
            (None, None) => return Err(malformed("neither secretSeed nor privateKey is present")),
        };
        let public = keypair.public.to_bytes();
        if &public != hotkey.public_key() {
            return Err(mismatch("the key does not belong to ss58Address"));
        }
        if let Some(text) = &file.public_key {
            let declared: [u8; 32] =
                decode_hex_field(text).ok_or_else(|| malformed("publicKey is not 0x + 64 hex digits"))?;
            if declared != public {
                return Err(mismatch("publicKey does not match the secret key"));
            }
        }
        Ok(Signer { keypair, hotkey })
    }

    /// A signer from a 32-byte mini secret (the `secretSeed` of a hotkey file), for tests and tools.
    pub fn from_mini_secret(seed: &[u8; 32]) -> Result<Signer, KeyError> {
        let mini = MiniSecretKey::from_bytes(seed).map_err(|_| KeyError::Malformed {
            path: PathBuf::new(),
            detail: "not a valid mini secret key".into(),
        })?;
        let keypair = mini.expand_to_keypair(ExpansionMode::Ed25519);
        let hotkey = Hotkey::from_public_key(keypair.public.to_bytes());
        Ok(Signer { keypair, hotkey })
    }

    /// The hotkey this signer signs as.
    pub fn hotkey(&self) -> &Hotkey {
        &self.hotkey
    }

    /// sr25519 signature of `message` under the substrate context.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.keypair.sign_simple(SIGNING_CONTEXT, message).to_bytes()
    }

    /// The legacy headers for a request to `path` at `unix_secs`.
    pub fn signed_headers(&self, path: &str, unix_secs: u64) -> SignedHeaders {
        let hotkey = self.hotkey.as_str();
        let message = legacy_message(path, unix_secs, hotkey);
        SignedHeaders {
            hotkey: hotkey.to_owned(),
            timestamp: unix_secs.to_string(),
            signature: hex::encode(self.sign(message.as_bytes())),
        }
    }
}

/// The keypairs a 64-byte `privateKey` may denote: schnorrkel's canonical encoding (what
/// bittensor-wallet writes, sp-core's `to_raw_vec`) first, then the ed25519-style one (substrate's
/// `to_ed25519_bytes`, written by older Python tooling). The caller keeps the one matching the address.
fn private_key_candidates(raw: &[u8; 64]) -> Vec<Keypair> {
    let mut out = Vec::with_capacity(2);
    if let Ok(secret) = SecretKey::from_bytes(raw) {
        out.push(secret.to_keypair());
    }
    if let Ok(secret) = SecretKey::from_ed25519_bytes(raw) {
        out.push(secret.to_keypair());
    }
    out
}

/// `0x`-prefixed (or bare) hex of exactly `N` bytes.
fn decode_hex_field<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let io_error = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(io_error)?;
    // Checks on the opened file, not the path, so nothing can be swapped in between.
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else {
            "special file"
        };
        return Err(KeyError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_KEY_FILE_BYTES,
        });
    }
    read_at_most(file, MAX_KEY_FILE_BYTES)
        .map_err(io_error)?
        .ok_or_else(|| KeyError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_KEY_FILE_BYTES,
        })
}

fn read_at_most(file: File, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schnorrkel::{PublicKey, Signature};
    use std::fs;

    /// A throwaway hotkey written by bittensor-wallet 4.1.1 (`Wallet.create_new_hotkey`), mode 0600.
    pub(crate) const BT_HOTKEY_JSON: &str = r#"{"secretSeed":"0x8c4efebd34660511e4e5e756937435f7ee8775447c0de9bdb3ffe941bf6d07ef","ss58Address":"5F9hECYHEWNek3Z8t7QeJu74yNQBAYn4zDEFme9j5fZJAVvR","cryptoType":1,"privateKey":"0x07debbd5efd4d0d773de076386e64ca4d2a058bc8c7644e7b296bda847160f0eca72028831352591fd1a72fdcd39121adba4671c2c79ab3db635897e1b300f0e","publicKey":"0x8882cf8c3c9700fd66754a6d8928b74ad2d17a260b4d4c060e41b4765b3f382d","accountId":"0x8882cf8c3c9700fd66754a6d8928b74ad2d17a260b4d4c060e41b4765b3f382d","secretPhrase":"combine inject rhythm someone ski hammer exit habit marriage deer able protect"}"#;
    const BT_ADDRESS: &str = "5F9hECYHEWNek3Z8t7QeJu74yNQBAYn4zDEFme9j5fZJAVvR";
    /// `Keypair.sign` of bittensor-wallet over `<Bytes>/challenge:1700000000:{BT_ADDRESS}</Bytes>`.
    const BT_SIGNATURE: &str = "f4686a13d8484f1ef3de9b83cc98fd24ca3b61ab735c0c3d5d03c57bed417568ee3acd91dcaf53f956d39f412bc2d6b95636390aa0f4d733c6ee0358575d998e";

    fn write_key(dir: &Path, name: &str, json: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, json).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn edit(json: &str, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
        edit(value.as_object_mut().unwrap());
        value.to_string()
    }

    fn verify(hotkey: &Hotkey, message: &[u8], signature: &[u8]) -> bool {
        let public = PublicKey::from_bytes(hotkey.public_key()).unwrap();
        let signature = Signature::from_bytes(signature).unwrap();
        public.verify_simple(SIGNING_CONTEXT, message, &signature).is_ok()
    }

    #[test]
    fn loads_a_real_bittensor_hotkey_file_and_signs_verifiably() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_key(tmp.path(), "default", BT_HOTKEY_JSON, 0o600);
        let signer = Signer::from_key_file(&path).unwrap();
        assert_eq!(signer.hotkey().as_str(), BT_ADDRESS);
        let headers = signer.signed_headers("/challenge", 1_700_000_000);
        assert_eq!(headers.hotkey, BT_ADDRESS);
        assert_eq!(headers.timestamp, "1700000000");
        assert_eq!(headers.signature.len(), 128);
        assert!(
            headers
                .signature
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let message = format!("<Bytes>/challenge:1700000000:{BT_ADDRESS}</Bytes>");
        assert_eq!(legacy_message("/challenge", 1_700_000_000, BT_ADDRESS), message);
        assert!(verify(
            signer.hotkey(),
            message.as_bytes(),
            &hex::decode(&headers.signature).unwrap()
        ));
        // Not valid for another path or time.
        assert!(!verify(
            signer.hotkey(),
            b"<Bytes>/update:1700000000:x</Bytes>",
            &hex::decode(&headers.signature).unwrap()
        ));
        // The reference library's own signature over the same message verifies against the same key.
        assert!(verify(
            signer.hotkey(),
            message.as_bytes(),
            &hex::decode(BT_SIGNATURE).unwrap()
        ));
        let debug = format!("{signer:?}");
        assert!(debug.contains(BT_ADDRESS) && !debug.contains("8c4efe"), "{debug}");
    }

    #[test]
    fn either_secret_field_alone_is_enough() {
        let tmp = tempfile::tempdir().unwrap();
        let seed_only = edit(BT_HOTKEY_JSON, |m| {
            m.remove("privateKey");
        });
        let private_only = edit(BT_HOTKEY_JSON, |m| {
            m.remove("secretSeed");
            m.remove("secretPhrase");
        });
        for (name, json) in [("seed", seed_only), ("private", private_only)] {
            let path = write_key(tmp.path(), name, &json, 0o400);
            let signer = Signer::from_key_file(&path).unwrap();
            assert_eq!(signer.hotkey().as_str(), BT_ADDRESS, "{name}");
            let sig = signer.sign(b"m");
            assert!(verify(signer.hotkey(), b"m", &sig));
        }
    }

    #[test]
    fn bittensor_private_key_is_the_canonical_encoding() {
        let value: serde_json::Value = serde_json::from_str(BT_HOTKEY_JSON).unwrap();
        let raw: [u8; 64] = decode_hex_field(value["privateKey"].as_str().unwrap()).unwrap();
        let address = Hotkey::parse(BT_ADDRESS).unwrap();
        let canonical = SecretKey::from_bytes(&raw).unwrap().to_keypair();
        assert_eq!(&canonical.public.to_bytes(), address.public_key());
        // Read the other way it is a different key, which is why the address decides.
        let ed25519 = SecretKey::from_ed25519_bytes(&raw).unwrap().to_keypair();
        assert_ne!(&ed25519.public.to_bytes(), address.public_key());
        // The ed25519-style encoding of the same key is accepted too.
        let other_form = canonical.secret.to_ed25519_bytes();
        let json = edit(BT_HOTKEY_JSON, |m| {
            m.remove("secretSeed");
            m.insert(
                "privateKey".into(),
                format!("0x{}", hex::encode(other_form)).into(),
            );
        });
        let signer = Signer::from_key_json(Path::new("mem"), json.as_bytes()).unwrap();
        assert_eq!(signer.hotkey(), &address);
        assert_eq!(
            &private_key_candidates(&raw)[0].public.to_bytes(),
            address.public_key()
        );
    }

    #[test]
    fn permissive_modes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o601] {
            let path = write_key(tmp.path(), "k", BT_HOTKEY_JSON, mode);
            let err = Signer::from_key_file(&path).unwrap_err();
            assert!(
                matches!(&err, KeyError::Permissions { mode: m, .. } if *m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains(&format!("{mode:04o}")), "{err}");
        }
        let path = write_key(tmp.path(), "k", BT_HOTKEY_JSON, 0o600);
        assert!(Signer::from_key_file(&path).is_ok());
    }

    #[test]
    fn mismatched_or_malformed_keys_are_refused_without_leaking() {
        let tmp = tempfile::tempdir().unwrap();
        let other = Signer::from_mini_secret(&[9; 32]).unwrap();
        let cases = [
            edit(BT_HOTKEY_JSON, |m| {
                m.insert("ss58Address".into(), other.hotkey().as_str().into());
            }),
            edit(BT_HOTKEY_JSON, |m| {
                m.insert("secretSeed".into(), format!("0x{}", "11".repeat(32)).into());
            }),
            edit(BT_HOTKEY_JSON, |m| {
                m.remove("secretSeed");
                m.insert("privateKey".into(), format!("0x{}", "22".repeat(64)).into());
            }),
            edit(BT_HOTKEY_JSON, |m| {
                m.insert("publicKey".into(), format!("0x{}", "33".repeat(32)).into());
            }),
        ];
        for json in &cases {
            let path = write_key(tmp.path(), "k", json, 0o600);
            let err = Signer::from_key_file(&path).unwrap_err();
            assert!(matches!(err, KeyError::Mismatch { .. }), "{err}");
            let text = err.to_string();
            assert!(
                !text.contains("8c4efe") && !text.contains("07debb") && !text.contains("1111"),
                "{text}"
            );
        }
        let malformed = [
            "not json".to_owned(),
            "{}".to_owned(),
            edit(BT_HOTKEY_JSON, |m| {
                m.remove("secretSeed");
                m.remove("privateKey");
            }),
            edit(BT_HOTKEY_JSON, |m| {
                m.remove("ss58Address");
            }),
            edit(BT_HOTKEY_JSON, |m| {
                m.insert("secretSeed".into(), "0x1234".into());
            }),
            edit(BT_HOTKEY_JSON, |m| {
                m.insert("cryptoType".into(), 0.into());
            }),
        ];
        for json in &malformed {
            let path = write_key(tmp.path(), "k", json, 0o600);
            let err = Signer::from_key_file(&path).unwrap_err();
            assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
            assert!(!err.to_string().contains("8c4efe"), "{err}");
        }
        let path = write_key(tmp.path(), "k", "$NACL\x00\x01binary", 0o600);
        assert!(matches!(
            Signer::from_key_file(&path),
            Err(KeyError::Encrypted { .. })
        ));
    }

    #[test]
    fn special_files_missing_files_and_credentials() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Signer::from_key_file(&tmp.path().join("absent")),
            Err(KeyError::Io { .. })
        ));
        let fifo = tmp.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg("-m")
                .arg("600")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(matches!(
            Signer::from_key_file(&fifo),
            Err(KeyError::NotRegular { kind: "FIFO", .. })
        ));
        let sub = tmp.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            Signer::from_key_file(&sub),
            Err(KeyError::NotRegular {
                kind: "directory",
                ..
            })
        ));
        let big = write_key(tmp.path(), "big", &" ".repeat(70_000), 0o600);
        assert!(matches!(
            Signer::from_key_file(&big),
            Err(KeyError::TooLarge { .. })
        ));

        write_key(tmp.path(), "talkheadd-hotkey", BT_HOTKEY_JSON, 0o400);
        let signer = Signer::from_credential_in(tmp.path(), "talkheadd-hotkey").unwrap();
        assert_eq!(signer.hotkey().as_str(), BT_ADDRESS);
        for bad in ["", ".", "..", "../talkheadd-hotkey", "a/b", "a\nb"] {
            assert!(
                matches!(
                    Signer::from_credential_in(tmp.path(), bad),
                    Err(KeyError::BadCredentialName { .. })
                ),
                "{bad:?}"
            );
        }
        let via_source = Signer::load(&KeySource::File(tmp.path().join("talkheadd-hotkey"))).unwrap();
        assert_eq!(via_source.hotkey(), signer.hotkey());
    }

    #[test]
    fn signed_headers_pairs_use_reference_names() {
        let signer = Signer::from_mini_secret(&[1; 32]).unwrap();
        let headers = signer.signed_headers("/challenge", 5);
        let names: Vec<_> = headers.pairs().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["X-Hotkey", "X-Timestamp", "X-Signature"]);
        // sr25519 signatures are randomised, yet both verify.
        let again = signer.signed_headers("/challenge", 5);
        assert_ne!(headers.signature, again.signature);
        let message = legacy_message("/challenge", 5, signer.hotkey().as_str());
        for h in [&headers, &again] {
            assert!(verify(
                signer.hotkey(),
                message.as_bytes(),
                &hex::decode(&h.signature).unwrap()
            ));
        }
    }
}
