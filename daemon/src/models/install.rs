//! The files on disk: measuring them (size, SHA-256), writing a member or copy to `<name>.part` while
//! hashing it, and installing a checked `.part` by renaming it into place (after an fsync, so that
//! nothing half-written is ever at the final path, even across a crash), with its pin beside it when
//! its hash is unconfirmed.

use super::manifest::{Measured, Sha256, parse_pin, pin_text};
use sha2::{Digest, Sha256 as Hasher};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`m.bin` → `m.bin.part`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates (or empties) a `.part` file, never through a symbolic link planted at its path (the
/// directory may belong to the daemon's user while root runs the command).
pub fn create_part(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// The size and SHA-256 of a file.
pub fn measure(path: &Path) -> io::Result<Measured> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Measured {
        size,
        sha256: hasher.finalize().into(),
    })
}

/// A new `.part` file that hashes what is written to it.
pub struct HashingFile {
    out: BufWriter<File>,
    hasher: Hasher,
    size: u64,
    path: PathBuf,
}

impl HashingFile {
    /// Creates (or empties) `path`.
    pub fn create(path: &Path) -> io::Result<HashingFile> {
        let file = create_part(path)?;
        Ok(HashingFile {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Hasher::new(),
            size: 0,
            path: path.to_owned(),
        })
    }

    /// Flushes and syncs the file; what was written.
    pub fn finish(self) -> io::Result<Measured> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Measured {
            size: self.size,
            sha256: self.hasher.finalize().into(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Copies `from` into a new `part` file, hashing it on the way.
pub fn copy_hashed(from: &Path, part: &Path) -> io::Result<Measured> {
    let mut out = HashingFile::create(part)?;
    io::copy(&mut File::open(from)?, &mut out)?;
    out.finish()
}

/// Moves a checked `part` (already synced) to `target`, readable by everyone (the daemon runs as
/// another user), then syncs the directory so the rename survives a crash.
pub fn install(part: &Path, target: &Path) -> io::Result<()> {
    std::fs::set_permissions(part, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(part, target)?;
    sync_dir(target)
}

fn sync_dir(file: &Path) -> io::Result<()> {
    match file.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The pin file of an installed file.
pub fn pin_path(target: &Path) -> PathBuf {
    with_suffix(target, ".sha256")
}

/// Records `sha256` as the hash `target` must keep (an unconfirmed entry's, for `models verify`).
pub fn write_pin(target: &Path, name: &str, sha256: &Sha256) -> io::Result<PathBuf> {
    let pin = pin_path(target);
    let part = with_suffix(&pin, ".part");
    let mut file = create_part(&part)?;
    file.write_all(pin_text(name, sha256).as_bytes())?;
    file.sync_all()?;
    install(&part, &pin)?;
    Ok(pin)
}

/// The hash pinned for `target`, if any.
pub fn read_pin(target: &Path, name: &str) -> Option<Sha256> {
    let text = std::fs::read_to_string(pin_path(target)).ok()?;
    parse_pin(&text, name)
}

/// Removes a file that may not be there.
pub fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_hashed_installed_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"abc").unwrap();
        let target = dir.path().join("m.bin");
        let part = with_suffix(&target, ".part");
        assert_eq!(part, dir.path().join("m.bin.part"));
        let got = copy_hashed(&src, &part).unwrap();
        // SHA-256("abc"), FIPS 180-2's first example.
        assert_eq!(
            hex::encode(got.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(got, measure(&part).unwrap());
        install(&part, &target).unwrap();
        assert!(!part.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"abc");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let pin = write_pin(&target, "m.bin", &got.sha256).unwrap();
        assert_eq!(read_pin(&target, "m.bin"), Some(got.sha256));
        assert!(std::fs::read_to_string(pin).unwrap().ends_with("  m.bin\n"));
        remove_if_there(&target).unwrap();
        remove_if_there(&target).unwrap();
        assert!(!target.exists());
    }

    #[test]
    fn a_part_file_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let part = dir.path().join("m.bin.part");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        assert!(HashingFile::create(&part).is_err());
        assert!(write_pin(&dir.path().join("m.bin"), "m.bin", &[0; 32]).is_ok());
        std::os::unix::fs::symlink(&victim, dir.path().join("n.bin.sha256.part")).unwrap();
        assert!(write_pin(&dir.path().join("n.bin"), "n.bin", &[0; 32]).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
