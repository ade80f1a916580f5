//! The local directory source (`evaluation.challenges_dir`, docs/reference.md#challenge-dir): one
//! sub-directory per challenge, in sorted name order, whose name is the challenge id, holding `face.png`,
//! `audio.wav` and optionally `text.txt`.
//!
//! Owns the safe reading of those files: symlinks are never followed (neither a challenge directory nor
//! a file inside one), only regular files are opened (a FIFO or a device is refused before `open`, and
//! `open` itself is non-blocking and `O_NOFOLLOW`), the opened file must be the inode that was checked,
//! and no read takes more than the limit plus one byte.
//!
//! Must not: follow a symlink below `dir`, open anything but a regular file, read unbounded, or skip a
//! broken challenge silently (every problem is an error naming the challenge). `dir` itself is the
//! operator's configured path and is resolved normally. The directory is assumed writable only by the
//! operator: a challenge directory swapped for a symlink between its check and the opens inside it is
//! detected afterwards (device and inode compared), not prevented.
//!
//! This is blocking I/O; async callers run it on a blocking thread.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Limits;
use super::error::{Asset, ChallengeError, IdError, TextError, UnsafeFileReason, sanitize};
use super::id::ChallengeId;
use super::set::{Challenge, ChallengeSet};

/// File name of the face inside a challenge directory.
pub const FACE_FILE: &str = "face.png";
/// File name of the audio clip inside a challenge directory.
pub const AUDIO_FILE: &str = "audio.wav";
/// File name of the optional transcript inside a challenge directory.
pub const TEXT_FILE: &str = "text.txt";

/// `open(2)` flags that std does not name. Values from the Linux UAPI headers; architectures whose
/// values differ (mips, sparc, alpha) and other systems get 0 and rely on the `lstat`/`fstat` checks
/// alone.
mod oflags {
    /// Linux architectures using the asm-generic values.
    const LINUX_GENERIC: bool = cfg!(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "riscv64",
            target_arch = "loongarch64",
            target_arch = "s390x"
        )
    ));
    /// Linux architectures that swap `O_DIRECTORY` and `O_NOFOLLOW`.
    const LINUX_ARM_LIKE: bool = cfg!(all(
        target_os = "linux",
        any(
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "powerpc64"
        )
    ));

    /// Fail with `ELOOP` instead of following a symlink in the last component.
    pub const O_NOFOLLOW: i32 = if LINUX_GENERIC {
        0o400_000
    } else if LINUX_ARM_LIKE {
        0o100_000
    } else {
        0
    };
    /// Do not block opening a FIFO (no effect on regular files).
    pub const O_NONBLOCK: i32 = if LINUX_GENERIC || LINUX_ARM_LIKE {
        0o4_000
    } else {
        0
    };
    /// Never acquire a controlling terminal.
    pub const O_NOCTTY: i32 = if LINUX_GENERIC || LINUX_ARM_LIKE { 0o400 } else { 0 };
    /// What `O_NOFOLLOW` answers for a symlink on the architectures above.
    pub const ELOOP: i32 = 40;
}

/// Loads every challenge under `dir`: sub-directories in byte order of their names, each name a valid
/// [`ChallengeId`], each holding a valid `face.png` and `audio.wav` and optionally `text.txt`
/// (UTF-8, trimmed, at most `limits.max_text_chars` characters, one line). Plain files directly under
/// `dir` are ignored; symlinks and invalid names are errors. The set must hold between one and
/// `limits.max_challenges` challenges.
pub fn load_directory(dir: &Path, limits: &Limits) -> Result<ChallengeSet, ChallengeError> {
    let entries = list_challenge_dirs(dir, limits)?;
    let mut challenges = Vec::with_capacity(entries.len());
    for (id, path) in entries {
        challenges.push(load_one(id, &path, limits)?);
    }
    ChallengeSet::new(challenges, limits)
}

/// The validated ids and paths of the challenge directories, sorted by name.
fn list_challenge_dirs(dir: &Path, limits: &Limits) -> Result<Vec<(ChallengeId, PathBuf)>, ChallengeError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ChallengeError::Io { path, source }
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        // `DirEntry::file_type` does not follow symlinks.
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_symlink() {
            return Err(ChallengeError::UnsafeFile {
                path,
                reason: UnsafeFileReason::Symlink,
            });
        }
        if !kind.is_dir() {
            tracing::debug!(path = %path.display(), "ignoring a non-directory entry in the challenges directory");
            continue;
        }
        let name = entry.file_name();
        let id = match name.to_str() {
            Some(text) => ChallengeId::parse(text).map_err(|reason| ChallengeError::InvalidId {
                id: sanitize(text),
                reason,
            })?,
            None => {
                return Err(ChallengeError::InvalidId {
                    id: sanitize(&name.to_string_lossy()),
                    reason: IdError::NotAString,
                });
            }
        };
        found.push((id, path));
        if found.len() > limits.max_challenges {
            return Err(ChallengeError::TooManyChallenges {
                count: found.len(),
                max: limits.max_challenges,
            });
        }
    }
    // Ids are ASCII, so string order is byte order (Python's `sorted` on the names).
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn load_one(id: ChallengeId, dir: &Path, limits: &Limits) -> Result<Challenge, ChallengeError> {
    let before = lstat_dir(dir)?;
    let face = read_regular(&dir.join(FACE_FILE), limits.max_face_bytes, &id, Asset::Face)?;
    let audio = read_regular(&dir.join(AUDIO_FILE), limits.max_audio_bytes, &id, Asset::Audio)?;
    let text = read_regular(&dir.join(TEXT_FILE), limits.max_text_bytes(), &id, Asset::Text)?;
    let after = lstat_dir(dir)?;
    if (before.dev(), before.ino()) != (after.dev(), after.ino()) {
        return Err(ChallengeError::UnsafeFile {
            path: dir.to_path_buf(),
            reason: UnsafeFileReason::Replaced,
        });
    }

    let face = face.ok_or_else(|| ChallengeError::MissingAsset {
        challenge: id.clone(),
        asset: Asset::Face,
        detail: FACE_FILE,
    })?;
    let audio = audio.ok_or_else(|| ChallengeError::MissingAsset {
        challenge: id.clone(),
        asset: Asset::Audio,
        detail: AUDIO_FILE,
    })?;
    let text = match text {
        None => None,
        Some(bytes) => Some(String::from_utf8(bytes).map_err(|_| ChallengeError::Text {
            challenge: id.clone(),
            reason: TextError::NotUtf8,
        })?),
    };
    Challenge::new(id, face, audio, text.as_deref(), limits)
}

/// `lstat` of a challenge directory, which must still be a directory and not a symlink.
fn lstat_dir(dir: &Path) -> Result<Metadata, ChallengeError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| ChallengeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(ChallengeError::UnsafeFile {
            path: dir.to_path_buf(),
            reason: UnsafeFileReason::Symlink,
        });
    }
    if !meta.is_dir() {
        return Err(ChallengeError::UnsafeFile {
            path: dir.to_path_buf(),
            reason: UnsafeFileReason::Replaced,
        });
    }
    Ok(meta)
}

/// Reads a regular file of at most `limit` bytes without following a symlink; `None` when it does
/// not exist. The size error reports the asset so the message names the challenge.
fn read_regular(
    path: &Path,
    limit: u64,
    id: &ChallengeId,
    asset: Asset,
) -> Result<Option<Vec<u8>>, ChallengeError> {
    let unsafe_file = |reason| ChallengeError::UnsafeFile {
        path: path.to_path_buf(),
        reason,
    };
    let io_error = |source| ChallengeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let checked = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    check_kind(&checked).map_err(unsafe_file)?;
    let too_large = |len: u64| match asset {
        Asset::Text => ChallengeError::Text {
            challenge: id.clone(),
            reason: TextError::FileTooLarge { len, limit },
        },
        Asset::Face | Asset::Audio => ChallengeError::Media {
            challenge: id.clone(),
            asset,
            reason: super::error::MediaError::TooLarge { len, limit },
        },
    };
    if checked.len() > limit {
        return Err(too_large(checked.len()));
    }

    let file = OpenOptions::new()
        .read(true)
        .custom_flags(oflags::O_NOFOLLOW | oflags::O_NONBLOCK | oflags::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(oflags::ELOOP) {
                unsafe_file(UnsafeFileReason::Symlink)
            } else {
                io_error(e)
            }
        })?;
    let opened = file.metadata().map_err(io_error)?;
    check_kind(&opened).map_err(unsafe_file)?;
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        return Err(unsafe_file(UnsafeFileReason::Replaced));
    }
    let bytes = read_bounded(file, limit).map_err(io_error)?;
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > limit {
        return Err(too_large(len));
    }
    Ok(Some(bytes))
}

/// Refuses anything that is not a regular file, naming what it is.
fn check_kind(meta: &Metadata) -> Result<(), UnsafeFileReason> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    Err(if kind.is_symlink() {
        UnsafeFileReason::Symlink
    } else if kind.is_dir() {
        UnsafeFileReason::NotRegular("directory")
    } else if kind.is_fifo() {
        UnsafeFileReason::NotRegular("FIFO")
    } else if kind.is_socket() {
        UnsafeFileReason::NotRegular("socket")
    } else if kind.is_block_device() {
        UnsafeFileReason::NotRegular("block device")
    } else if kind.is_char_device() {
        UnsafeFileReason::NotRegular("character device")
    } else {
        UnsafeFileReason::NotRegular("special file")
    })
}

/// Reads at most `limit + 1` bytes, so that the caller can tell "exactly at the limit" from "over".
pub(crate) fn read_bounded(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::challenges::MediaError;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    const FIXTURES: &str = "/work/shared/fixtures/challenges";

    fn fixtures() -> PathBuf {
        // The shared fixtures sit beside the repository; fall back to the absolute path of the dev box.
        let rel = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/challenges");
        if rel.is_dir() {
            rel
        } else {
            PathBuf::from(FIXTURES)
        }
    }

    fn write_challenge(root: &Path, name: &str, text: Option<&str>) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(FACE_FILE), png(64, 64)).unwrap();
        fs::write(dir.join(AUDIO_FILE), wav_default()).unwrap();
        if let Some(text) = text {
            fs::write(dir.join(TEXT_FILE), text).unwrap();
        }
        dir
    }

    fn load(root: &Path) -> Result<ChallengeSet, ChallengeError> {
        load_directory(root, &Limits::default())
    }

    #[test]
    fn shared_fixtures_load_with_a_stable_hash() {
        let dir = fixtures();
        assert!(
            dir.is_dir(),
            "the shared fixtures are missing at {}",
            dir.display()
        );
        let set = load(&dir).unwrap();
        assert_eq!(set.len(), 7);
        let ids: Vec<_> = set.iter().map(|c| c.id().to_string()).collect();
        assert_eq!(ids, (0..7).map(|i| format!("challenge-{i}")).collect::<Vec<_>>());
        for c in &set {
            assert_eq!(c.face_format(), crate::challenges::ImageFormat::Png);
            assert_eq!((c.face_info().width, c.face_info().height), (512, 512));
            assert_eq!(c.audio_info().sample_rate, 16_000);
            assert_eq!(c.audio_info().channels, 1);
            assert!(c.audio_info().duration_secs >= 3.0, "{c:?}");
            assert!(c.text().is_some_and(|t| !t.is_empty() && !t.ends_with('\n')));
        }
        assert_eq!(
            set.challenges()[0].text(),
            Some("The quick brown fox jumps over the lazy dog.")
        );
        assert!(set.ensure_enough(2, 5).is_ok());
        let again = load(&dir).unwrap();
        assert_eq!(set.hash(), again.hash());
    }

    #[test]
    fn sorted_order_optional_text_and_ignored_plain_files() {
        let root = tempfile::tempdir().unwrap();
        write_challenge(root.path(), "b", None);
        write_challenge(root.path(), "a", Some("  hi there \n"));
        write_challenge(root.path(), "C10", Some(""));
        fs::write(root.path().join("README.md"), "notes").unwrap();
        let set = load(root.path()).unwrap();
        let ids: Vec<_> = set.iter().map(|c| c.id().to_string()).collect();
        assert_eq!(ids, ["C10", "a", "b"]);
        assert_eq!(set.challenges()[1].text(), Some("hi there"));
        assert_eq!(set.challenges()[0].text(), None);
        assert_eq!(set.challenges()[2].text(), None);
        // Editing a transcript changes the hash.
        let before = set.hash().to_string();
        fs::write(root.path().join("b").join(TEXT_FILE), "new").unwrap();
        assert_ne!(load(root.path()).unwrap().hash(), before);
    }

    #[test]
    fn symlinked_face_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        let secret = root.path().join("secret.png");
        fs::write(&secret, png(64, 64)).unwrap();
        fs::remove_file(dir.join(FACE_FILE)).unwrap();
        symlink(&secret, dir.join(FACE_FILE)).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(
            matches!(&err, ChallengeError::UnsafeFile { reason: UnsafeFileReason::Symlink, path } if path.ends_with("c0/face.png")),
            "{err}"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn o_nofollow_refuses_a_symlink_at_open() {
        // Bypass the lstat pre-check to prove the open itself does not follow.
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("t");
        fs::write(&target, b"x").unwrap();
        let link = root.path().join("l");
        symlink(&target, &link).unwrap();
        let err = OpenOptions::new()
            .read(true)
            .custom_flags(oflags::O_NOFOLLOW | oflags::O_NONBLOCK)
            .open(&link)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(oflags::ELOOP));
    }

    #[test]
    fn symlinked_challenge_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let real = write_challenge(elsewhere.path(), "real", None);
        symlink(&real, root.path().join("c0")).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::UnsafeFile {
                    reason: UnsafeFileReason::Symlink,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        fs::remove_file(dir.join(AUDIO_FILE)).unwrap();
        let status = Command::new("mkfifo").arg(dir.join(AUDIO_FILE)).status().unwrap();
        assert!(status.success());
        let err = load(root.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::UnsafeFile {
                    reason: UnsafeFileReason::NotRegular("FIFO"),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn directory_in_place_of_a_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        fs::create_dir(dir.join(TEXT_FILE)).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(matches!(
            &err,
            ChallengeError::UnsafeFile {
                reason: UnsafeFileReason::NotRegular("directory"),
                ..
            }
        ));
    }

    #[test]
    fn oversized_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        let limits = Limits {
            max_face_bytes: 100,
            ..Limits::default()
        };
        let err = load_directory(root.path(), &limits).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::Media {
                    asset: Asset::Face,
                    reason: MediaError::TooLarge { limit: 100, .. },
                    ..
                }
            ),
            "{err}"
        );
        // A sparse 40 MiB audio file: refused from its size, never read.
        let f = File::create(dir.join(AUDIO_FILE)).unwrap();
        f.set_len(40 * 1024 * 1024).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::Media {
                    asset: Asset::Audio,
                    reason: MediaError::TooLarge { .. },
                    ..
                }
            ),
            "{err}"
        );
        // A transcript over the character limit.
        write_challenge(root.path(), "c1", Some(&"w".repeat(2001)));
        fs::remove_dir_all(&dir).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::Text {
                    reason: TextError::TooLong { .. },
                    ..
                }
            ),
            "{err}"
        );
        // A transcript file too large to hold any acceptable transcript is not even read whole.
        fs::write(root.path().join("c1").join(TEXT_FILE), "w".repeat(50_000)).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                ChallengeError::Text {
                    reason: TextError::FileTooLarge { len: 50_000, .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn read_bounded_stops_at_limit_plus_one() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("f");
        fs::write(&path, vec![7u8; 1000]).unwrap();
        assert_eq!(read_bounded(File::open(&path).unwrap(), 10).unwrap().len(), 11);
        assert_eq!(
            read_bounded(File::open(&path).unwrap(), 1000).unwrap().len(),
            1000
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        for name in ["bad name", ".hidden", "-x", "a:b", &"x".repeat(65)] {
            let root = tempfile::tempdir().unwrap();
            write_challenge(root.path(), "good", None);
            write_challenge(root.path(), name, None);
            let err = load(root.path()).unwrap_err();
            assert!(matches!(&err, ChallengeError::InvalidId { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn missing_audio_or_face_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        fs::remove_file(dir.join(AUDIO_FILE)).unwrap();
        let err = load(root.path()).unwrap_err();
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
        assert_eq!(err.to_string(), "challenge c0: audio is missing (audio.wav)");
        fs::write(dir.join(AUDIO_FILE), wav_default()).unwrap();
        fs::remove_file(dir.join(FACE_FILE)).unwrap();
        assert!(matches!(
            load(root.path()),
            Err(ChallengeError::MissingAsset {
                asset: Asset::Face,
                ..
            })
        ));
    }

    #[test]
    fn garbage_png_and_mp3_audio_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
        garbage.extend_from_slice(&[0xAB; 512]);
        fs::write(dir.join(FACE_FILE), garbage).unwrap();
        let err = load(root.path()).unwrap_err();
        assert!(matches!(
            &err,
            ChallengeError::Media {
                asset: Asset::Face,
                reason: MediaError::CorruptImage { .. },
                ..
            }
        ));

        fs::write(dir.join(FACE_FILE), png(64, 64)).unwrap();
        let mut mp3 = b"ID3\x04\0\0\0\0\0\x23".to_vec();
        mp3.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        mp3.extend_from_slice(&[0; 4000]);
        fs::write(dir.join(AUDIO_FILE), mp3).unwrap();
        let err = load(root.path()).unwrap_err();
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
        assert!(text.contains("challenge c0") && text.contains("MP3"), "{text}");
    }

    #[test]
    fn non_utf8_transcript_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_challenge(root.path(), "c0", None);
        fs::write(dir.join(TEXT_FILE), b"caf\xe9").unwrap();
        assert!(matches!(
            load(root.path()),
            Err(ChallengeError::Text {
                reason: TextError::NotUtf8,
                ..
            })
        ));
    }

    #[test]
    fn empty_missing_and_crowded_directories() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(load(root.path()), Err(ChallengeError::Empty)));
        assert!(matches!(
            load(&root.path().join("nope")),
            Err(ChallengeError::Io { .. })
        ));
        for i in 0..3 {
            write_challenge(root.path(), &format!("c{i}"), None);
        }
        let tight = Limits {
            max_challenges: 2,
            ..Limits::default()
        };
        assert!(matches!(
            load_directory(root.path(), &tight),
            Err(ChallengeError::TooManyChallenges { max: 2, .. })
        ));
    }
}
