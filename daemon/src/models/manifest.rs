//! The manifest (`packaging/models.toml`, embedded; or `--manifest FILE`): what to install, from where,
//! and what each file must hash to. Parsing, validation and every decision that needs no I/O: which
//! entries apply to this architecture, whether a file's size and SHA-256 pass, and the configuration
//! lines that point the daemon at the installed files.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// The manifest shipped with the package (`packaging/models.toml`).
pub const EMBEDDED: &str = include_str!("../../../packaging/models.toml");

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// What a file (or archive) must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Its size in bytes, when the manifest gives one.
    pub size: Option<u64>,
    /// Its SHA-256, when one was confirmed (`confirmed = true`); `None` means unconfirmed.
    pub sha256: Option<Sha256>,
}

impl Expect {
    /// Whether the manifest carries a confirmed hash for it.
    pub fn confirmed(&self) -> bool {
        self.sha256.is_some()
    }
}

/// How an archive is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A zip file (stored or deflated entries).
    Zip,
    /// A gzip-compressed tar file.
    TarGz,
}

/// An `[[archive]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// File name, also of its download (`<dir>/<name>.part`) and of its copy in `--from DIR`.
    pub name: String,
    /// Where it is downloaded from.
    pub url: String,
    /// How it is packed.
    pub format: ArchiveFormat,
    /// What it must be.
    pub expect: Expect,
}

/// Where a file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Downloaded as it is from this URL.
    Url(String),
    /// Extracted from an archive of the manifest.
    Member {
        /// The archive's `name`.
        archive: String,
        /// The member's path in it (or its last components).
        member: String,
    },
}

/// The configuration key a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigKey {
    /// `analysis.face.detector_model`
    FaceDetector,
    /// `analysis.face.recognizer_model`
    FaceRecognizer,
    /// `analysis.face.onnxruntime_library`
    OnnxRuntime,
    /// `analysis.asr.model`
    AsrModel,
}

impl ConfigKey {
    const ALL: [ConfigKey; 4] = [
        ConfigKey::FaceDetector,
        ConfigKey::FaceRecognizer,
        ConfigKey::OnnxRuntime,
        ConfigKey::AsrModel,
    ];

    /// The dotted key.
    pub fn dotted(self) -> &'static str {
        match self {
            ConfigKey::FaceDetector => "analysis.face.detector_model",
            ConfigKey::FaceRecognizer => "analysis.face.recognizer_model",
            ConfigKey::OnnxRuntime => "analysis.face.onnxruntime_library",
            ConfigKey::AsrModel => "analysis.asr.model",
        }
    }

    fn parse(text: &str) -> Option<ConfigKey> {
        ConfigKey::ALL.into_iter().find(|k| k.dotted() == text)
    }
}

/// A `[[file]]` entry: one file installed as `<dir>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// The installed file's name.
    pub name: String,
    /// The configuration key it is for.
    pub key: ConfigKey,
    /// Where it comes from.
    pub source: Source,
    /// What it must be.
    pub expect: Expect,
}

/// The entries of a manifest that apply to one architecture, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The archives files are extracted from.
    pub archives: Vec<Archive>,
    /// The files to install, in manifest order.
    pub files: Vec<ModelFile>,
}

/// Why a manifest was refused: every problem found, each naming its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub Vec<String>);

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ManifestError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    archive: Vec<RawArchive>,
    #[serde(default)]
    file: Vec<RawFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    name: String,
    url: String,
    format: String,
    arch: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    confirmed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    key: String,
    arch: Option<String>,
    url: Option<String>,
    archive: Option<String>,
    member: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    confirmed: bool,
}

/// Parses a manifest and keeps the entries for `arch` (entries without `arch` apply everywhere).
/// Every entry is validated, whatever its architecture.
pub fn parse(text: &str, arch: &str) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError(vec![e.to_string()]))?;
    let mut problems = Vec::new();
    let applies = |a: &Option<String>| a.as_deref().is_none_or(|a| a == arch);

    let mut archives = Vec::new();
    for (i, a) in raw.archive.iter().enumerate() {
        let at = format!("[[archive]] #{} ({})", i + 1, a.name);
        check_name(&a.name, &at, &mut problems);
        check_url(&a.url, &at, &mut problems);
        check_arch(&a.arch, &at, &mut problems);
        let format = match a.format.as_str() {
            "zip" => ArchiveFormat::Zip,
            "tar.gz" => ArchiveFormat::TarGz,
            other => {
                problems.push(format!("{at}: format \"{other}\" is not \"zip\" or \"tar.gz\""));
                ArchiveFormat::Zip
            }
        };
        let expect = expect(a.size, a.sha256.as_deref(), a.confirmed, &at, &mut problems);
        if applies(&a.arch) {
            archives.push(Archive {
                name: a.name.clone(),
                url: a.url.clone(),
                format,
                expect,
            });
        }
    }

    let mut files = Vec::new();
    for (i, f) in raw.file.iter().enumerate() {
        let at = format!("[[file]] #{} ({})", i + 1, f.name);
        check_name(&f.name, &at, &mut problems);
        check_arch(&f.arch, &at, &mut problems);
        let key = ConfigKey::parse(&f.key).unwrap_or_else(|| {
            let known: Vec<&str> = ConfigKey::ALL.iter().map(|k| k.dotted()).collect();
            problems.push(format!(
                "{at}: key \"{}\" is not one of {}",
                f.key,
                known.join(", ")
            ));
            ConfigKey::AsrModel
        });
        let source = match (&f.url, &f.archive, &f.member) {
            (Some(url), None, None) => {
                check_url(url, &at, &mut problems);
                Source::Url(url.clone())
            }
            (None, Some(archive), Some(member)) => {
                if member.is_empty() || member.starts_with('/') || member.ends_with('/') {
                    problems.push(format!("{at}: member \"{member}\" is not a relative file path"));
                }
                // The archive must exist wherever the file does.
                let found = raw
                    .archive
                    .iter()
                    .any(|a| a.name == *archive && (a.arch.is_none() || a.arch == f.arch));
                if !found {
                    problems.push(format!(
                        "{at}: archive \"{archive}\" is not an [[archive]] of this manifest (for its arch)"
                    ));
                }
                Source::Member {
                    archive: archive.clone(),
                    member: member.clone(),
                }
            }
            _ => {
                problems.push(format!(
                    "{at}: give either `url`, or `archive` and `member` (the file's source)"
                ));
                Source::Url(String::new())
            }
        };
        let expect = expect(f.size, f.sha256.as_deref(), f.confirmed, &at, &mut problems);
        if applies(&f.arch) {
            files.push(ModelFile {
                name: f.name.clone(),
                key,
                source,
                expect,
            });
        }
    }

    let mut names = BTreeSet::new();
    let mut keys = BTreeMap::new();
    for f in &files {
        if !names.insert(f.name.as_str()) {
            problems.push(format!("[[file]] {}: listed twice for {arch}", f.name));
        }
        if let Some(other) = keys.insert(f.key, f.name.as_str()) {
            problems.push(format!(
                "[[file]] {}: {} is already the key of {other}",
                f.name,
                f.key.dotted()
            ));
        }
    }
    let mut archive_names = BTreeSet::new();
    for a in &archives {
        if !archive_names.insert(a.name.as_str()) {
            problems.push(format!("[[archive]] {}: listed twice for {arch}", a.name));
        }
        if names.contains(a.name.as_str()) {
            problems.push(format!("[[archive]] {}: also the name of a [[file]]", a.name));
        }
    }
    if problems.is_empty() {
        Ok(Manifest { archives, files })
    } else {
        Err(ManifestError(problems))
    }
}

fn check_name(name: &str, at: &str, problems: &mut Vec<String>) {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if !plain {
        problems.push(format!(
            "{at}: name must be a plain file name (letters, digits, . _ - +; not starting with a dot)"
        ));
    }
}

/// Whether files may be fetched from `url`: https, or http on this machine's loopback (127.0.0.0/8,
/// `localhost`, `::1`: a mirror or test server on the host itself, where nothing is in between).
pub fn secure_url(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => {
            let host = url.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

fn check_url(url: &str, at: &str, problems: &mut Vec<String>) {
    let ok =
        reqwest::Url::parse(url).is_ok_and(|u| secure_url(&u) && u.host_str().is_some_and(|h| !h.is_empty()));
    if !ok {
        problems.push(format!(
            "{at}: url \"{url}\" is not an https URL (http:// is taken only for 127.0.0.1, localhost \
             or ::1)"
        ));
    }
}

fn check_arch(arch: &Option<String>, at: &str, problems: &mut Vec<String>) {
    if arch.as_deref().is_some_and(|a| a.is_empty()) {
        problems.push(format!(
            "{at}: arch is empty (leave it out for every architecture)"
        ));
    }
}

fn expect(
    size: Option<u64>,
    sha256: Option<&str>,
    confirmed: bool,
    at: &str,
    problems: &mut Vec<String>,
) -> Expect {
    let sha256 = match (sha256, confirmed) {
        (Some(hex), true) => match parse_sha256(hex) {
            Some(d) => Some(d),
            None => {
                problems.push(format!("{at}: sha256 is not 64 lowercase hex digits"));
                None
            }
        },
        (None, true) => {
            problems.push(format!("{at}: confirmed = true needs the sha256 it confirms"));
            None
        }
        (Some(_), false) => {
            problems.push(format!(
                "{at}: confirmed = false takes no sha256 (an unconfirmed hash is never enforced: \
                 leave it out, or confirm it)"
            ));
            None
        }
        (None, false) => None,
    };
    Expect { size, sha256 }
}

/// A SHA-256 written as 64 lowercase hex digits.
pub fn parse_sha256(hex_text: &str) -> Option<Sha256> {
    if hex_text.len() != 64 || hex_text.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// What a file on disk (or a download) turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Sha256,
}

/// The outcome of checking a measured file against its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Size (if given) and confirmed hash match.
    Verified,
    /// The size (if given) matches, and there is no confirmed hash: the operator must compare
    /// [`Measured::sha256`] with another source.
    Unconfirmed,
    /// Refused: the size differs.
    WrongSize {
        /// The manifest's size.
        expected: u64,
        /// The file's.
        got: u64,
    },
    /// Refused: the hash differs.
    WrongHash {
        /// The manifest's hash.
        expected: Sha256,
        /// The file's.
        got: Sha256,
    },
}

impl Verdict {
    /// Whether the file may be installed (or stay installed).
    pub fn accepted(&self) -> bool {
        matches!(self, Verdict::Verified | Verdict::Unconfirmed)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Verified => f.write_str("verified"),
            Verdict::Unconfirmed => f.write_str("UNCONFIRMED (no published hash to check it against)"),
            Verdict::WrongSize { expected, got } => {
                write!(f, "size is {got} bytes, the manifest expects {expected}")
            }
            Verdict::WrongHash { expected, got } => write!(
                f,
                "SHA-256 is {}, the manifest expects {}",
                hex::encode(got),
                hex::encode(expected)
            ),
        }
    }
}

/// Checks a measured file against what it must be. `pinned` stands in for the hash of an unconfirmed
/// entry (the one `models fetch` recorded beside it).
pub fn check(expect: &Expect, pinned: Option<Sha256>, got: &Measured) -> Verdict {
    if let Some(expected) = expect.size
        && expected != got.size
    {
        return Verdict::WrongSize {
            expected,
            got: got.size,
        };
    }
    match expect.sha256.or(pinned) {
        Some(expected) if expected != got.sha256 => Verdict::WrongHash {
            expected,
            got: got.sha256,
        },
        Some(_) if expect.sha256.is_some() => Verdict::Verified,
        _ if pinned.is_some() => Verdict::Verified,
        _ => Verdict::Unconfirmed,
    }
}

/// Whether a download of `have` bytes is already longer than the entry allows.
pub fn overlong(expect: &Expect, have: u64) -> bool {
    expect.size.is_some_and(|size| have > size)
}

/// The text of a pin file (`<name>.sha256`, the format `sha256sum -c` reads).
pub fn pin_text(name: &str, sha256: &Sha256) -> String {
    format!("{}  {name}\n", hex::encode(sha256))
}

/// The hash of a pin file for `name`, if it is one.
pub fn parse_pin(text: &str, name: &str) -> Option<Sha256> {
    let line = text.lines().next()?;
    let (hash, file) = line.split_once("  ")?;
    (file == name).then(|| parse_sha256(hash)).flatten()
}

/// The configuration lines for the installed files in `dir` (absolute): `[analysis.face]` with
/// `backend = "onnx"` when the detector, recogniser and runtime are all there, `[analysis.asr]` with
/// `backend = "whisper"` when the ggml model is.
pub fn config_lines(dir: &Path, files: &[&ModelFile]) -> String {
    let path_of = |key: ConfigKey| {
        files
            .iter()
            .find(|f| f.key == key)
            .map(|f| toml_string(&dir.join(&f.name).display().to_string()))
    };
    let mut out = String::new();
    if let (Some(det), Some(rec), Some(ort)) = (
        path_of(ConfigKey::FaceDetector),
        path_of(ConfigKey::FaceRecognizer),
        path_of(ConfigKey::OnnxRuntime),
    ) {
        out.push_str(&format!(
            "[analysis.face]\nbackend = \"onnx\"\ndetector_model = {det}\nrecognizer_model = {rec}\n\
             onnxruntime_library = {ort}\n"
        ));
    }
    if let Some(model) = path_of(ConfigKey::AsrModel) {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "[analysis.asr]\nbackend = \"whisper\"\nmodel = {model}\n"
        ));
    }
    out
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn one_file(extra: &str) -> String {
        format!(
            "[[file]]\nname = \"m.bin\"\nkey = \"analysis.asr.model\"\nurl = \"https://x/m.bin\"\n{extra}"
        )
    }

    #[test]
    fn the_embedded_manifest_parses_for_both_architectures_and_is_all_confirmed() {
        for arch in ["x86_64", "aarch64"] {
            let m = parse(EMBEDDED, arch).unwrap();
            let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "det_10g.onnx",
                    "w600k_r50.onnx",
                    "libonnxruntime.so.1.28.0",
                    "ggml-base.bin"
                ],
                "{arch}"
            );
            assert!(m.files.iter().all(|f| f.expect.confirmed()), "{arch}");
            assert!(m.archives.iter().all(|a| a.expect.confirmed()), "{arch}");
            assert_eq!(m.archives.len(), 2, "{arch}: buffalo_l and this arch's runtime");
            let ort = m
                .archives
                .iter()
                .find(|a| a.name.starts_with("onnxruntime"))
                .unwrap();
            assert!(
                ort.name
                    .contains(if arch == "x86_64" { "-x64-" } else { "-aarch64-" })
            );
            assert_eq!(ort.format, ArchiveFormat::TarGz);
        }
        // An architecture without a runtime build gets the models only, and no face lines.
        let m = parse(EMBEDDED, "riscv64").unwrap();
        assert_eq!(m.files.len(), 3);
        let lines = config_lines(Path::new("/m"), &m.files.iter().collect::<Vec<_>>());
        assert!(!lines.contains("[analysis.face]"), "{lines}");
        assert!(lines.contains("[analysis.asr]"), "{lines}");
    }

    #[test]
    fn a_confirmed_entry_needs_its_hash_and_an_unconfirmed_one_refuses_one() {
        let e = parse(&one_file("confirmed = true\n"), "x86_64").unwrap_err();
        assert!(e.to_string().contains("confirmed = true needs the sha256"), "{e}");
        let e = parse(
            &one_file(&format!("sha256 = \"{A}\"\nconfirmed = false\n")),
            "x86_64",
        )
        .unwrap_err();
        assert!(e.to_string().contains("takes no sha256"), "{e}");
        let e = parse(&one_file("sha256 = \"ABCD\"\nconfirmed = true\n"), "x86_64").unwrap_err();
        assert!(e.to_string().contains("64 lowercase hex"), "{e}");
        let m = parse(&one_file("size = 3\nconfirmed = false\n"), "x86_64").unwrap();
        assert_eq!(
            m.files[0].expect,
            Expect {
                size: Some(3),
                sha256: None
            }
        );
        // `confirmed` itself is required: leaving it out is not a way to skip the check.
        let e = parse(&one_file(&format!("sha256 = \"{A}\"\n")), "x86_64").unwrap_err();
        assert!(e.to_string().contains("confirmed"), "{e}");
    }

    #[test]
    fn bad_entries_are_all_named() {
        let text = "[[archive]]\nname = \"../a.zip\"\nurl = \"ftp://x\"\nformat = \"rar\"\nconfirmed = false\n\
                    [[file]]\nname = \"a\"\nkey = \"analysis.face.cascade\"\narchive = \"nope.zip\"\n\
                    member = \"/abs\"\nconfirmed = false\n\
                    [[file]]\nname = \"b\"\nkey = \"analysis.asr.model\"\nconfirmed = false\n";
        let e = parse(text, "x86_64").unwrap_err();
        let all = e.to_string();
        for needle in [
            "plain file name",
            "not an https URL",
            "format \"rar\"",
            "key \"analysis.face.cascade\"",
            "not an [[archive]]",
            "not a relative file path",
            "give either `url`",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        let e = parse("[[file]]\nname = \"x\"\nwhat = 1\n", "x86_64").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn urls_must_be_https_but_on_the_loopback() {
        for (url, ok) in [
            ("https://example.org/m.bin", true),
            ("http://127.0.0.1:8080/m.bin", true),
            ("http://localhost/m.bin", true),
            ("http://[::1]:80/m.bin", true),
            ("http://example.org/m.bin", false),
            ("http://127.0.0.1.example.org/m.bin", false),
            ("http://10.0.0.1/m.bin", false),
            ("ftp://127.0.0.1/m.bin", false),
            ("https://", false),
        ] {
            let text = format!(
                "[[file]]\nname = \"m.bin\"\nkey = \"analysis.asr.model\"\nurl = \"{url}\"\nconfirmed = false\n"
            );
            let got = parse(&text, "x86_64");
            assert_eq!(got.is_ok(), ok, "{url}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("not an https URL"), "{e}");
            }
        }
    }

    #[test]
    fn two_files_for_one_key_or_name_are_refused_per_architecture() {
        let twice = format!(
            "{}{}",
            one_file("confirmed = false\narch = \"x86_64\"\n"),
            one_file("confirmed = false\narch = \"aarch64\"\n")
        );
        assert_eq!(parse(&twice, "x86_64").unwrap().files.len(), 1);
        let twice = format!(
            "{}{}",
            one_file("confirmed = false\n"),
            one_file("confirmed = false\n")
        );
        let e = parse(&twice, "x86_64").unwrap_err().to_string();
        assert!(e.contains("listed twice") && e.contains("already the key"), "{e}");
    }

    #[test]
    fn the_verdict_checks_size_then_the_confirmed_or_pinned_hash() {
        let good = Measured {
            size: 3,
            sha256: [1; 32],
        };
        let bad = Measured {
            size: 3,
            sha256: [2; 32],
        };
        let confirmed = Expect {
            size: Some(3),
            sha256: Some([1; 32]),
        };
        assert_eq!(check(&confirmed, None, &good), Verdict::Verified);
        assert_eq!(
            check(&confirmed, None, &bad),
            Verdict::WrongHash {
                expected: [1; 32],
                got: [2; 32]
            }
        );
        // A pin never overrides a confirmed hash.
        assert!(!check(&confirmed, Some([2; 32]), &bad).accepted());
        let short = Measured {
            size: 2,
            sha256: [1; 32],
        };
        assert_eq!(
            check(&confirmed, None, &short),
            Verdict::WrongSize { expected: 3, got: 2 }
        );
        let unconfirmed = Expect {
            size: None,
            sha256: None,
        };
        assert_eq!(check(&unconfirmed, None, &bad), Verdict::Unconfirmed);
        assert!(Verdict::Unconfirmed.accepted());
        assert_eq!(check(&unconfirmed, Some([2; 32]), &bad), Verdict::Verified);
        assert!(!check(&unconfirmed, Some([1; 32]), &bad).accepted());
        let text = check(&confirmed, None, &bad).to_string();
        assert!(text.contains(&hex::encode([2u8; 32])) && text.contains(&hex::encode([1u8; 32])));
        assert!(overlong(&confirmed, 4) && !overlong(&confirmed, 3) && !overlong(&unconfirmed, 9));
    }

    #[test]
    fn pins_round_trip_in_sha256sum_format() {
        let text = pin_text("m.bin", &[0xab; 32]);
        assert_eq!(text, format!("{}  m.bin\n", "ab".repeat(32)));
        assert_eq!(parse_pin(&text, "m.bin"), Some([0xab; 32]));
        assert_eq!(parse_pin(&text, "other.bin"), None);
        assert_eq!(parse_pin("junk", "m.bin"), None);
    }

    #[test]
    fn config_lines_point_at_the_installed_files() {
        let m = parse(EMBEDDED, "x86_64").unwrap();
        let dir = PathBuf::from("/var/lib/talkheadd/models");
        let all: Vec<&ModelFile> = m.files.iter().collect();
        let text = config_lines(&dir, &all);
        assert_eq!(
            text,
            "[analysis.face]\nbackend = \"onnx\"\n\
             detector_model = \"/var/lib/talkheadd/models/det_10g.onnx\"\n\
             recognizer_model = \"/var/lib/talkheadd/models/w600k_r50.onnx\"\n\
             onnxruntime_library = \"/var/lib/talkheadd/models/libonnxruntime.so.1.28.0\"\n\n\
             [analysis.asr]\nbackend = \"whisper\"\nmodel = \"/var/lib/talkheadd/models/ggml-base.bin\"\n"
        );
        // The lines are TOML the daemon reads back.
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["analysis"]["asr"]["backend"].as_str(), Some("whisper"));
        // A path that needs escaping stays one string.
        let text = config_lines(Path::new("/odd \"dir\""), &all[3..]);
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["analysis"]["asr"]["model"].as_str(),
            Some("/odd \"dir\"/ggml-base.bin")
        );
    }
}
