//! `talkheadd models fetch | verify`: installs and checks the files the `onnx` face backend and the
//! `whisper` speech backend need (InsightFace buffalo_l's `det_10g.onnx` and `w600k_r50.onnx`, ONNX
//! Runtime's shared library for this architecture, whisper.cpp's `ggml-base.bin`), as the manifest
//! (`packaging/models.toml`, embedded) lists them with their sizes and SHA-256.
//!
//! - [`manifest`]: parsing and validating the manifest; the pure checks (a file's verdict, the
//!   configuration lines to print).
//! - [`fetch`]: HTTP downloads into `<dir>/<name>.part`: resumed with `Range`, redirects followed,
//!   connect and idle timeouts.
//! - [`archive`]: one member out of a `.zip` or `.tar.gz`.
//! - [`install`]: hashing, and installing a checked `.part` by renaming it into place.
//! - [`progress`]: a progress bar on a terminal, plain lines otherwise.
//!
//! Nothing is ever written at a file's final path but a checked file: downloads, copies and extracted
//! members go to `<name>.part`, are checked against the manifest (size, then SHA-256), and are renamed
//! into place only when they pass; a file that fails is removed and named. `--from DIR` installs from
//! files copied by hand (each file as installed, or the archive it comes from), with the same checks.

pub mod archive;
pub mod fetch;
pub mod install;
pub mod manifest;
pub mod progress;

use crate::analysis::settings::{AnalysisSettings, AsrBackend, FaceBackend};
use archive::ArchiveError;
use fetch::{FetchError, Http};
use manifest::{Archive, Expect, Manifest, ManifestError, Measured, ModelFile, Source, Verdict};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the files go unless `--dir` says otherwise (beside the daemon's state, readable by it).
pub const DEFAULT_DIR: &str = "/var/lib/talkheadd/models";
/// Connect and idle timeout unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the package installs the manifest (the same text as the embedded one), for operators to read.
pub const PACKAGED_MANIFEST: &str = "/usr/share/talkheadd/models.toml";

/// Exit code: a file was refused (size or hash differs), or `verify` found one missing or wrong.
pub const EXIT_REFUSED: u8 = 65;
/// Exit code: `--from DIR` holds neither a file nor the archive it comes from.
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code: the manifest given with `--manifest` is unreadable or invalid.
pub const EXIT_MANIFEST: u8 = 78;

/// The hint configuration errors give for a missing model file.
pub const FETCH_HINT: &str = "`talkheadd models fetch` installs it (into /var/lib/talkheadd/models)";

/// `talkheadd models fetch`.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Where to install.
    pub dir: PathBuf,
    /// Install from files copied here instead of downloading.
    pub from: Option<PathBuf>,
    /// Another manifest than the embedded one.
    pub manifest: Option<PathBuf>,
    /// Connect timeout, and the longest wait for any data.
    pub timeout: Duration,
}

/// `talkheadd models verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Where the files are.
    pub dir: PathBuf,
    /// Another manifest than the embedded one.
    pub manifest: Option<PathBuf>,
}

/// Why a file was not installed.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The manifest is unreadable or invalid.
    #[error("manifest {origin}: {detail}")]
    Manifest {
        /// The file, or "embedded".
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// A download, copy or member failed its check.
    #[error("{name}: refused: {verdict}{}", removed.as_ref().map(|p| format!("; removed {}, nothing installed", p.display())).unwrap_or_default())]
    Refused {
        /// The file or archive.
        name: String,
        /// Why.
        verdict: Verdict,
        /// The `.part` file removed, if one was.
        removed: Option<PathBuf>,
    },
    /// A download failed.
    #[error("{name}: {error}")]
    Fetch {
        /// The file or archive.
        name: String,
        /// Why.
        error: FetchError,
    },
    /// A member could not be extracted.
    #[error("{name}: {} {error}", archive.display())]
    Archive {
        /// The file.
        name: String,
        /// The archive.
        archive: PathBuf,
        /// Why.
        error: ArchiveError,
    },
    /// `--from DIR` lacks a file.
    #[error("{name}: not found: put {} there (copied from {url})", candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or "))]
    Missing {
        /// The file.
        name: String,
        /// Where it was looked for.
        candidates: Vec<PathBuf>,
        /// Where it is published.
        url: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ModelsError {
    /// The exit code this failure gives (see main.rs).
    pub fn exit_code(&self) -> u8 {
        match self {
            ModelsError::Manifest { .. } => EXIT_MANIFEST,
            ModelsError::Refused { .. }
            | ModelsError::Fetch {
                error: FetchError::WrongSize { .. },
                ..
            } => EXIT_REFUSED,
            ModelsError::Archive {
                error: ArchiveError::Io(_),
                ..
            } => 1,
            ModelsError::Archive { .. } => EXIT_REFUSED,
            ModelsError::Missing { .. } => EXIT_NO_INPUT,
            ModelsError::Fetch { .. } | ModelsError::Io { .. } => 1,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelsError + '_ {
    move |source| ModelsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The manifest for this machine's architecture: `path`'s, or the embedded one.
pub fn load_manifest(path: Option<&Path>) -> Result<Manifest, ModelsError> {
    let (origin, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| ModelsError::Manifest {
                origin: p.display().to_string(),
                detail: e.to_string(),
            })?,
        ),
        None => ("embedded".to_owned(), manifest::EMBEDDED.to_owned()),
    };
    manifest::parse(&text, std::env::consts::ARCH).map_err(|ManifestError(problems)| ModelsError::Manifest {
        origin,
        detail: problems.join("\n  "),
    })
}

fn absolute(dir: &Path) -> Result<PathBuf, ModelsError> {
    std::path::absolute(dir).map_err(io_error(dir))
}

fn hex_of(sha256: &manifest::Sha256) -> String {
    hex::encode(sha256)
}

/// The configured model files that are not there (`check-config` names each with [`FETCH_HINT`]).
pub fn missing_model_files(analysis: &AnalysisSettings) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    if let FaceBackend::Onnx(o) = &analysis.face.backend {
        files.push(("analysis.face.detector_model", o.detector_model.clone()));
        files.push(("analysis.face.recognizer_model", o.recognizer_model.clone()));
        files.push(("analysis.face.onnxruntime_library", o.onnxruntime_library.clone()));
    }
    if let AsrBackend::Whisper { model, .. } = &analysis.asr {
        files.push(("analysis.asr.model", model.clone()));
    }
    files.retain(|(_, path)| !path.is_file());
    files
}

/// Runs `talkheadd models fetch`; the exit code.
pub fn fetch(options: &FetchOptions) -> u8 {
    match Fetcher::new(options) {
        Ok(mut fetcher) => fetcher.run(),
        Err(e) => {
            eprintln!("talkheadd: models fetch: {e}");
            e.exit_code()
        }
    }
}

struct Fetcher {
    dir: PathBuf,
    from: Option<PathBuf>,
    manifest: Manifest,
    timeout: Duration,
    http: Option<Http>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Files installed (or found installed and verified) so far.
    installed: usize,
}

impl Fetcher {
    fn new(options: &FetchOptions) -> Result<Fetcher, ModelsError> {
        let manifest = load_manifest(options.manifest.as_deref())?;
        let dir = absolute(&options.dir)?;
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let from = options.from.as_deref().map(absolute).transpose()?;
        Ok(Fetcher {
            dir,
            from,
            manifest,
            timeout: options.timeout,
            http: None,
            runtime: None,
            installed: 0,
        })
    }

    fn run(&mut self) -> u8 {
        let files = self.manifest.files.clone();
        let mut failures = Vec::new();
        let mut todo = Vec::new();
        for f in &files {
            match self.installed(f) {
                Ok(true) => {}
                Ok(false) => todo.push(f),
                Err(e) => failures.push(e),
            }
        }
        let mut archives_done = BTreeSet::new();
        for f in &todo {
            match &f.source {
                Source::Url(url) => {
                    if let Err(e) = self.direct(f, url) {
                        failures.push(e);
                    }
                }
                Source::Member { archive, .. } => {
                    if !archives_done.insert(archive.clone()) {
                        continue;
                    }
                    let Some(a) = self
                        .manifest
                        .archives
                        .iter()
                        .find(|a| a.name == *archive)
                        .cloned()
                    else {
                        continue;
                    };
                    let members: Vec<&ModelFile> = todo
                        .iter()
                        .copied()
                        .filter(|m| matches!(&m.source, Source::Member { archive, .. } if *archive == a.name))
                        .collect();
                    failures.extend(self.members_of(&a, &members));
                }
            }
        }
        if failures.is_empty() {
            let all: Vec<&ModelFile> = files.iter().collect();
            let lines = manifest::config_lines(&self.dir, &all);
            println!();
            println!(
                "# {} file(s) in {}. Put these lines in /etc/talkheadd/talkheadd.toml (or a drop-in in \
                 /etc/talkheadd/talkheadd.toml.d/), then run `talkheadd check-config`:",
                files.len(),
                self.dir.display()
            );
            print!("{lines}");
            return 0;
        }
        for e in &failures {
            eprintln!("talkheadd: models fetch: {e}");
        }
        eprintln!(
            "talkheadd: models fetch: {} of {} file(s) not installed in {}",
            files.len() - self.installed.min(files.len()),
            files.len(),
            self.dir.display()
        );
        // A refused file says the most (something does not hash as it must); else the first failure.
        let codes: Vec<u8> = failures.iter().map(ModelsError::exit_code).collect();
        codes
            .iter()
            .copied()
            .find(|c| *c == EXIT_REFUSED)
            .unwrap_or_else(|| codes.first().copied().unwrap_or(1))
    }

    fn target(&self, f: &ModelFile) -> PathBuf {
        self.dir.join(&f.name)
    }

    /// Whether `f` is installed and passes its check (then nothing is fetched for it).
    fn installed(&mut self, f: &ModelFile) -> Result<bool, ModelsError> {
        let target = self.target(f);
        if !target.exists() {
            return Ok(false);
        }
        let got = install::measure(&target).map_err(io_error(&target))?;
        let pin = install::read_pin(&target, &f.name).filter(|_| !f.expect.confirmed());
        match manifest::check(&f.expect, pin, &got) {
            Verdict::Verified => {
                println!(
                    "{}: already installed, verified (sha256 {})",
                    f.name,
                    hex_of(&got.sha256)
                );
                self.installed += 1;
                Ok(true)
            }
            Verdict::Unconfirmed => {
                eprintln!(
                    "{}: installed, but with no confirmed or pinned hash: fetching it again",
                    f.name
                );
                Ok(false)
            }
            wrong => {
                eprintln!("{}: the installed file is wrong ({wrong}): replacing it", f.name);
                Ok(false)
            }
        }
    }

    fn download(&mut self, url: &str, part: &Path, expect: &Expect, label: &str) -> Result<(), ModelsError> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_error(Path::new("(async runtime)")))?;
            self.runtime = Some(runtime);
        }
        if self.http.is_none() {
            let http = Http::new(self.timeout, self.timeout).map_err(|error| ModelsError::Fetch {
                name: label.to_owned(),
                error,
            })?;
            self.http = Some(http);
        }
        let (Some(runtime), Some(http)) = (&self.runtime, &self.http) else {
            return Ok(());
        };
        runtime
            .block_on(http.download(url, part, expect, label))
            .map_err(|error| ModelsError::Fetch {
                name: label.to_owned(),
                error,
            })
    }

    /// Installs a checked `.part` as `f`, or removes it and says why.
    fn accept(&mut self, f: &ModelFile, part: &Path, got: &Measured) -> Result<(), ModelsError> {
        let target = self.target(f);
        let verdict = manifest::check(&f.expect, None, got);
        if !verdict.accepted() {
            install::remove_if_there(part).map_err(io_error(part))?;
            return Err(ModelsError::Refused {
                name: f.name.clone(),
                verdict,
                removed: Some(part.to_owned()),
            });
        }
        install::install(part, &target).map_err(io_error(&target))?;
        if f.expect.confirmed() {
            let pin = install::pin_path(&target);
            install::remove_if_there(&pin).map_err(io_error(&pin))?;
            println!(
                "installed {} ({} bytes, sha256 {}, verified)",
                target.display(),
                got.size,
                hex_of(&got.sha256)
            );
        } else {
            let pin = install::write_pin(&target, &f.name, &got.sha256).map_err(io_error(&target))?;
            println!(
                "installed {} ({} bytes), sha256 {} UNCONFIRMED: the manifest has no confirmed hash for it; \
                 compare this hash with another source before trusting the file (pinned in {} for \
                 `talkheadd models verify`)",
                target.display(),
                got.size,
                hex_of(&got.sha256),
                pin.display()
            );
        }
        self.installed += 1;
        Ok(())
    }

    /// A file installed as it is published.
    fn direct(&mut self, f: &ModelFile, url: &str) -> Result<(), ModelsError> {
        let part = install::with_suffix(&self.target(f), ".part");
        let got = match &self.from {
            Some(from) => {
                let src = from.join(&f.name);
                if !src.is_file() {
                    return Err(ModelsError::Missing {
                        name: f.name.clone(),
                        candidates: vec![src],
                        url: url.to_owned(),
                    });
                }
                install::copy_hashed(&src, &part).map_err(io_error(&part))?
            }
            None => {
                self.download(url, &part, &f.expect, &f.name)?;
                install::measure(&part).map_err(io_error(&part))?
            }
        };
        self.accept(f, &part, &got)
    }

    /// Files extracted from archive `a` (or, with `--from`, copied as they are where the operator put
    /// them so).
    fn members_of(&mut self, a: &Archive, members: &[&ModelFile]) -> Vec<ModelsError> {
        let mut failures = Vec::new();
        let mut rest = Vec::new();
        if let Some(from) = self.from.clone() {
            for f in members {
                let src = from.join(&f.name);
                if src.is_file() {
                    let part = install::with_suffix(&self.target(f), ".part");
                    let done = install::copy_hashed(&src, &part)
                        .map_err(io_error(&part))
                        .and_then(|got| self.accept(f, &part, &got));
                    failures.extend(done.err());
                } else {
                    rest.push(*f);
                }
            }
        } else {
            rest.extend(members.iter().copied());
        }
        if rest.is_empty() {
            return failures;
        }
        let (archive_path, downloaded) = match &self.from {
            Some(from) => {
                let src = from.join(&a.name);
                if !src.is_file() {
                    failures.extend(rest.iter().map(|f| ModelsError::Missing {
                        name: f.name.clone(),
                        candidates: vec![from.join(&f.name), src.clone()],
                        url: a.url.clone(),
                    }));
                    return failures;
                }
                (src, false)
            }
            None => {
                let part = install::with_suffix(&self.dir.join(&a.name), ".part");
                if let Err(e) = self.download(&a.url, &part, &a.expect, &a.name) {
                    failures.push(e);
                    return failures;
                }
                (part, true)
            }
        };
        let checked = install::measure(&archive_path)
            .map_err(io_error(&archive_path))
            .and_then(|got| {
                let verdict = manifest::check(&a.expect, None, &got);
                match verdict {
                    Verdict::Verified => {
                        eprintln!("{}: verified (sha256 {})", a.name, hex_of(&got.sha256));
                        Ok(())
                    }
                    Verdict::Unconfirmed => {
                        println!(
                            "{}: sha256 {} UNCONFIRMED (the manifest has no confirmed hash for the archive; \
                             its members are checked on their own)",
                            a.name,
                            hex_of(&got.sha256)
                        );
                        Ok(())
                    }
                    wrong => {
                        let removed = downloaded.then(|| archive_path.clone());
                        if downloaded {
                            install::remove_if_there(&archive_path).map_err(io_error(&archive_path))?;
                        }
                        Err(ModelsError::Refused {
                            name: a.name.clone(),
                            verdict: wrong,
                            removed,
                        })
                    }
                }
            });
        if let Err(e) = checked {
            failures.push(e);
            return failures;
        }
        let mut all_extracted = true;
        for f in rest {
            let Source::Member { member, .. } = &f.source else {
                continue;
            };
            let part = install::with_suffix(&self.target(f), ".part");
            let limit = f.expect.size.unwrap_or(fetch::UNKNOWN_SIZE_LIMIT);
            let extracted = install::HashingFile::create(&part)
                .map_err(io_error(&part))
                .and_then(|mut out| {
                    archive::extract(&archive_path, a.format, member, limit, &mut out).map_err(|error| {
                        ModelsError::Archive {
                            name: f.name.clone(),
                            archive: archive_path.clone(),
                            error,
                        }
                    })?;
                    let path = out.path().to_owned();
                    out.finish().map_err(io_error(&path))
                })
                .and_then(|got| self.accept(f, &part, &got));
            if let Err(e) = extracted {
                all_extracted = false;
                let _ = install::remove_if_there(&part);
                failures.push(e);
            }
        }
        if downloaded && all_extracted {
            let _ = install::remove_if_there(&archive_path);
        }
        failures
    }
}

/// Runs `talkheadd models verify`; the exit code.
pub fn verify(options: &VerifyOptions) -> u8 {
    let checked = load_manifest(options.manifest.as_deref()).and_then(|m| Ok((m, absolute(&options.dir)?)));
    let (manifest, dir) = match checked {
        Ok(x) => x,
        Err(e) => {
            eprintln!("talkheadd: models verify: {e}");
            return e.exit_code();
        }
    };
    let mut bad = Vec::new();
    for f in &manifest.files {
        let target = dir.join(&f.name);
        if !target.exists() {
            println!("MISSING {} ({})", f.name, target.display());
            bad.push(f.name.as_str());
            continue;
        }
        let got = match install::measure(&target) {
            Ok(got) => got,
            Err(e) => {
                println!("WRONG   {}: cannot read {}: {e}", f.name, target.display());
                bad.push(f.name.as_str());
                continue;
            }
        };
        let pin = install::read_pin(&target, &f.name).filter(|_| !f.expect.confirmed());
        match manifest::check(&f.expect, pin, &got) {
            Verdict::Verified => println!("ok      {} (sha256 {})", f.name, hex_of(&got.sha256)),
            Verdict::Unconfirmed => println!(
                "ok      {} (sha256 {} UNCONFIRMED: no confirmed or pinned hash to check it against)",
                f.name,
                hex_of(&got.sha256)
            ),
            wrong => {
                println!("WRONG   {}: {wrong}", f.name);
                bad.push(f.name.as_str());
            }
        }
    }
    if bad.is_empty() {
        return 0;
    }
    eprintln!(
        "talkheadd: models verify: missing or wrong in {}: {}; `talkheadd models fetch --dir {}` installs them",
        dir.display(),
        bad.join(", "),
        dir.display()
    );
    EXIT_REFUSED
}
