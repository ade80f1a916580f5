//! `talkheadd models fetch | verify`: installs and checks the files the `onnx` face backend and the
//! `whisper` speech backend need (InsightFace buffalo_l's `det_10g.onnx` and `w600k_r50.onnx`, ONNX
//! Runtime's shared library for this architecture, whisper.cpp's `ggml-base.bin`), as the manifest
//! (`packaging/models.toml`, embedded) lists them with their sizes and SHA-256.
//!
//! - [`manifest`]: parsing and validating the manifest; the pure checks (a file's verdict, the
//!   configuration lines to print).
//! - [`fetch`]: HTTPS downloads into `<dir>/<name>.part`: resumed with `Range`, redirects followed
//!   (never off https), connect and idle timeouts.
//! - [`archive`]: one member out of a `.zip` or `.tar.gz`.
//! - [`install`]: the install directory, opened once and used through its descriptor; `.part` files
//!   hashed as they are written, installed by renaming them into place; the run's lock.
//! - [`progress`]: a progress bar on a terminal, plain lines otherwise.
//!
//! Nothing is ever written at a file's final path but a checked file: downloads, copies and extracted
//! members go to `<name>.part`, are checked against the manifest (size, then SHA-256), and are renamed
//! into place only when they pass; a file that fails is removed and named. `--from DIR` installs from
//! files copied by hand (each file as installed, or the archive it comes from), with the same checks.
//!
//! A run holds an exclusive lock on `<dir>/.lock` (a second one fails at once, exit 1). Root may run
//! `fetch` only in a directory only root can write ([`install::root_refusal`]): in the daemon's
//! directory (owned by its user), it is told to run as that user instead.

pub mod archive;
pub mod fetch;
pub mod install;
pub mod manifest;
pub mod progress;

use crate::analysis::settings::{AnalysisSettings, FaceBackend};
use archive::ArchiveError;
use fetch::{FetchError, Http};
use install::{Finished, InstallDir};
use manifest::{Archive, Expect, Manifest, ManifestError, ModelFile, Source, Verdict};
use nix::fcntl::Flock;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the files go unless `--dir` says otherwise (beside the daemon's state, readable by it).
pub const DEFAULT_DIR: &str = "/var/lib/talkheadd/models";
/// Connect and idle timeout unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Another run holds the directory's lock.
    #[error(
        "another `talkheadd models` run is working in {} (it holds {}); wait for it to end",
        dir.display(),
        dir.join(install::LOCK_NAME).display()
    )]
    Locked {
        /// The install directory.
        dir: PathBuf,
    },
    /// Root was asked to work in a directory another user can write.
    #[error("{}: {why}", dir.display())]
    Unsafe {
        /// The install directory.
        dir: PathBuf,
        /// Why, and what to do.
        why: String,
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
            ModelsError::Fetch { .. }
            | ModelsError::Io { .. }
            | ModelsError::Locked { .. }
            | ModelsError::Unsafe { .. } => 1,
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

/// The most bytes read of a file (or archive) that must be `expect`.
fn limit_of(expect: &Expect) -> u64 {
    expect.size.unwrap_or(fetch::UNKNOWN_SIZE_LIMIT)
}

/// An open install directory, and the run's lock on it (none where `verify` may not create it).
type Locked = (InstallDir, Option<Flock<File>>);

/// Opens the install directory (creating it for `fetch`) and takes the run's lock. `Ok(None)`: the
/// directory is not there (and was not to be created). `verify` (`create` false) only reads: where it
/// may not create the lock file, it goes on without it.
fn open_locked(dir: &Path, create: bool) -> Result<Option<Locked>, ModelsError> {
    let Some(opened) = InstallDir::open(dir, create).map_err(io_error(dir))? else {
        return Ok(None);
    };
    if create {
        let (uid, mode) = opened.owner_and_mode().map_err(io_error(dir))?;
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let euid = nix::unistd::geteuid().as_raw();
        if let Some(why) = install::root_refusal(euid, uid, mode, user.as_deref()) {
            return Err(ModelsError::Unsafe {
                dir: dir.to_owned(),
                why,
            });
        }
    }
    match opened.lock() {
        Ok(Some(lock)) => Ok(Some((opened, Some(lock)))),
        Ok(None) => Err(ModelsError::Locked { dir: dir.to_owned() }),
        Err(e)
            if !create
                && matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EACCES | nix::libc::EPERM | nix::libc::EROFS)
                ) =>
        {
            Ok(Some((opened, None)))
        }
        Err(e) => Err(io_error(&dir.join(install::LOCK_NAME))(e)),
    }
}

/// The configured face model files that are not there (`check-config` names each with
/// [`FETCH_HINT`]). The whisper model needs no check here: the configuration's validation already
/// refuses a missing one, naming `talkheadd models fetch`.
pub fn missing_model_files(analysis: &AnalysisSettings) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    if let FaceBackend::Onnx(o) = &analysis.face.backend {
        files.push(("analysis.face.detector_model", o.detector_model.clone()));
        files.push(("analysis.face.recognizer_model", o.recognizer_model.clone()));
        files.push(("analysis.face.onnxruntime_library", o.onnxruntime_library.clone()));
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
    dir: InstallDir,
    /// Held for the whole run.
    _lock: Option<Flock<File>>,
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
        let path = absolute(&options.dir)?;
        let from = options.from.as_deref().map(absolute).transpose()?;
        let Some((dir, lock)) = open_locked(&path, true)? else {
            return Err(io_error(&path)(std::io::ErrorKind::NotFound.into()));
        };
        Ok(Fetcher {
            dir,
            _lock: lock,
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
                        failures.push(ModelsError::Manifest {
                            origin: "(this architecture's entries)".to_owned(),
                            detail: format!(
                                "{}: archive {archive} is not in the manifest for {}",
                                f.name,
                                std::env::consts::ARCH
                            ),
                        });
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
            // Every member is installed: an archive download left by an earlier run is of no more use.
            for a in &self.manifest.archives {
                let part = install::with_suffix(&a.name, ".part");
                if let Err(e) = self.dir.remove_if_there(&part) {
                    eprintln!(
                        "talkheadd: models fetch: cannot remove {}: {e}",
                        self.dir.join(&part).display()
                    );
                }
            }
            let all: Vec<&ModelFile> = files.iter().collect();
            let lines = manifest::config_lines(self.dir.path(), &all);
            println!();
            println!(
                "# {} file(s) in {}. Put these lines in /etc/talkheadd/talkheadd.toml (or a drop-in in \
                 /etc/talkheadd/talkheadd.toml.d/), then run `talkheadd check-config`:",
                files.len(),
                self.dir.path().display()
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
            self.dir.path().display()
        );
        // A refused file says the most (something does not hash as it must); else the first failure.
        let codes: Vec<u8> = failures.iter().map(ModelsError::exit_code).collect();
        codes
            .iter()
            .copied()
            .find(|c| *c == EXIT_REFUSED)
            .unwrap_or_else(|| codes.first().copied().unwrap_or(1))
    }

    fn io(&self, name: &str) -> impl FnOnce(std::io::Error) -> ModelsError {
        let path = self.dir.join(name);
        move |source| ModelsError::Io { path, source }
    }

    /// Whether `f` is installed and passes its check (then nothing is fetched for it).
    fn installed(&mut self, f: &ModelFile) -> Result<bool, ModelsError> {
        let got = match self.dir.measure(&f.name, limit_of(&f.expect)) {
            Ok(Some(got)) => got,
            Ok(None) => return Ok(false),
            Err(e) => {
                eprintln!("{}: the installed file is unusable ({e}): replacing it", f.name);
                return Ok(false);
            }
        };
        let pin = self.dir.read_pin(&f.name).filter(|_| !f.expect.confirmed());
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

    fn download(
        &mut self,
        url: &str,
        part: &str,
        expect: &Expect,
        label: &str,
    ) -> Result<Finished, ModelsError> {
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
            return Err(ModelsError::Fetch {
                name: label.to_owned(),
                error: FetchError::Client("not set up".to_owned()),
            });
        };
        runtime
            .block_on(http.download(url, &self.dir, part, expect, label))
            .map_err(|error| ModelsError::Fetch {
                name: label.to_owned(),
                error,
            })
    }

    /// Installs a checked `.part` as `f`, or removes it and says why.
    fn accept(&mut self, f: &ModelFile, part: &Finished) -> Result<(), ModelsError> {
        let got = part.measured;
        let verdict = manifest::check(&f.expect, None, &got);
        if !verdict.accepted() {
            self.dir
                .remove_if_there(&part.name)
                .map_err(self.io(&part.name))?;
            return Err(ModelsError::Refused {
                name: f.name.clone(),
                verdict,
                removed: Some(self.dir.join(&part.name)),
            });
        }
        self.dir.install(part, &f.name).map_err(self.io(&f.name))?;
        let target = self.dir.join(&f.name);
        if f.expect.confirmed() {
            let pin = install::pin_name(&f.name);
            self.dir.remove_if_there(&pin).map_err(self.io(&pin))?;
            println!(
                "installed {} ({} bytes, sha256 {}, verified)",
                target.display(),
                got.size,
                hex_of(&got.sha256)
            );
        } else {
            let pin = self
                .dir
                .write_pin(&f.name, &got.sha256)
                .map_err(self.io(&install::pin_name(&f.name)))?;
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

    /// Copies `--from` file `src` (already opened) into `f`'s `.part` and installs it if it passes.
    fn copy_in(&mut self, f: &ModelFile, src: &File) -> Result<(), ModelsError> {
        let part = install::with_suffix(&f.name, ".part");
        let done =
            install::copy_hashed(&self.dir, src, &part, limit_of(&f.expect)).map_err(self.io(&part))?;
        self.accept(f, &done)
    }

    /// A file installed as it is published.
    fn direct(&mut self, f: &ModelFile, url: &str) -> Result<(), ModelsError> {
        match self.from.clone() {
            Some(from) => {
                let src = from.join(&f.name);
                match install::open_source(&src).map_err(io_error(&src))? {
                    Some(file) => self.copy_in(f, &file),
                    None => Err(ModelsError::Missing {
                        name: f.name.clone(),
                        candidates: vec![src],
                        url: url.to_owned(),
                    }),
                }
            }
            None => {
                let part = install::with_suffix(&f.name, ".part");
                let done = self.download(url, &part, &f.expect, &f.name)?;
                self.accept(f, &done)
            }
        }
    }

    /// Files extracted from archive `a` (or, with `--from`, copied as they are where the operator put
    /// them so).
    fn members_of(&mut self, a: &Archive, members: &[&ModelFile]) -> Vec<ModelsError> {
        let mut failures = Vec::new();
        let mut rest = Vec::new();
        if let Some(from) = self.from.clone() {
            for f in members {
                let src = from.join(&f.name);
                match install::open_source(&src) {
                    Ok(Some(file)) => failures.extend(self.copy_in(f, &file).err()),
                    Ok(None) => rest.push(*f),
                    Err(e) => failures.push(io_error(&src)(e)),
                }
            }
        } else {
            rest.extend(members.iter().copied());
        }
        if rest.is_empty() {
            return failures;
        }
        let archive_part = install::with_suffix(&a.name, ".part");
        // The archive, opened once: hashed, then read for its members through the same descriptor.
        let (archive_path, file, got, downloaded) = match self.from.clone() {
            Some(from) => {
                let src = from.join(&a.name);
                let opened = install::open_source(&src).and_then(|file| {
                    file.map(|file| Ok((install::measure_file(&file, limit_of(&a.expect))?, file)))
                        .transpose()
                });
                match opened {
                    Ok(Some((got, file))) => (src, file, got, false),
                    Ok(None) => {
                        failures.extend(rest.iter().map(|f| ModelsError::Missing {
                            name: f.name.clone(),
                            candidates: vec![from.join(&f.name), src.clone()],
                            url: a.url.clone(),
                        }));
                        return failures;
                    }
                    Err(e) => {
                        failures.push(io_error(&src)(e));
                        return failures;
                    }
                }
            }
            None => match self.download(&a.url, &archive_part, &a.expect, &a.name) {
                Ok(done) => (self.dir.join(&archive_part), done.file, done.measured, true),
                Err(e) => {
                    failures.push(e);
                    return failures;
                }
            },
        };
        match manifest::check(&a.expect, None, &got) {
            Verdict::Verified => eprintln!("{}: verified (sha256 {})", a.name, hex_of(&got.sha256)),
            Verdict::Unconfirmed => println!(
                "{}: sha256 {} UNCONFIRMED (the manifest has no confirmed hash for the archive; its \
                 members are checked on their own)",
                a.name,
                hex_of(&got.sha256)
            ),
            wrong => {
                drop(file);
                if downloaded && let Err(e) = self.dir.remove_if_there(&archive_part) {
                    failures.push(self.io(&archive_part)(e));
                }
                failures.push(ModelsError::Refused {
                    name: a.name.clone(),
                    verdict: wrong,
                    removed: downloaded.then_some(archive_path),
                });
                return failures;
            }
        }
        let mut all_extracted = true;
        for f in rest {
            let Source::Member { member, .. } = &f.source else {
                continue;
            };
            let part = install::with_suffix(&f.name, ".part");
            let extracted = self
                .dir
                .create_part(&part)
                .map_err(self.io(&part))
                .and_then(|mut out| {
                    archive::extract(&file, a.format, member, limit_of(&f.expect), &mut out).map_err(
                        |error| ModelsError::Archive {
                            name: f.name.clone(),
                            archive: archive_path.clone(),
                            error,
                        },
                    )?;
                    out.finish().map_err(self.io(&part))
                })
                .and_then(|done| self.accept(f, &done));
            if let Err(e) = extracted {
                all_extracted = false;
                let _ = self.dir.remove_if_there(&part);
                failures.push(e);
            }
        }
        if downloaded && all_extracted {
            let _ = self.dir.remove_if_there(&archive_part);
        }
        failures
    }
}

/// Runs `talkheadd models verify`; the exit code.
pub fn verify(options: &VerifyOptions) -> u8 {
    let checked = load_manifest(options.manifest.as_deref())
        .and_then(|m| Ok((m, absolute(&options.dir)?)))
        .and_then(|(m, path)| Ok((m, open_locked(&path, false)?, path)));
    let (manifest, opened, path) = match checked {
        Ok(x) => x,
        Err(e) => {
            eprintln!("talkheadd: models verify: {e}");
            return e.exit_code();
        }
    };
    let mut bad = Vec::new();
    for f in &manifest.files {
        let target = path.join(&f.name);
        let measured = match &opened {
            Some((dir, _lock)) => dir.measure(&f.name, limit_of(&f.expect)),
            None => Ok(None),
        };
        let got = match measured {
            Ok(Some(got)) => got,
            Ok(None) => {
                println!("MISSING {} ({})", f.name, target.display());
                bad.push(f.name.as_str());
                continue;
            }
            Err(e) => {
                println!("WRONG   {}: cannot read {}: {e}", f.name, target.display());
                bad.push(f.name.as_str());
                continue;
            }
        };
        let pin = opened
            .as_ref()
            .and_then(|(dir, _)| dir.read_pin(&f.name))
            .filter(|_| !f.expect.confirmed());
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
        path.display(),
        bad.join(", "),
        path.display()
    );
    EXIT_REFUSED
}
