//! The files on disk, all through one descriptor of the install directory ([`InstallDir`], opened once
//! with `O_DIRECTORY | O_NOFOLLOW`): every name is opened, renamed and removed relative to it, so a
//! symbolic link planted at any name (or in place of the directory afterwards) is never followed.
//!
//! - A `.part` is created with `O_CREAT | O_EXCL | O_NOFOLLOW` (a stale one unlinked first), mode 0644,
//!   and hashed while it is written through that descriptor ([`Part`]); a resumed one is re-opened with
//!   `O_NOFOLLOW`, checked to be a regular file with `fstat`, and its existing bytes hashed through the
//!   same descriptor. Nothing is ever re-opened by path to be hashed.
//! - Installing a checked `.part` ([`InstallDir::install`]): `fchmod` on its descriptor, a check that
//!   the name still holds that very file, `renameat` within the directory, then an `fsync` of the
//!   directory (so the rename survives a crash and nothing half-written is ever at the final path).
//! - Reading what is installed (`verify`, pins): `O_NOFOLLOW | O_NONBLOCK`, a regular file only, and
//!   never more than the manifest's size + 1 bytes (pins: 4 KiB), so a link to `/dev/zero` or a FIFO can
//!   neither hang the command nor exhaust memory.
//! - [`InstallDir::lock`]: the exclusive `flock` on `<dir>/.lock` a whole run holds.

use super::manifest::{Measured, Sha256, parse_pin, pin_text};
use crate::runtime::job::HOSTILE_OPEN_FLAGS;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use sha2::{Digest, Sha256 as Hasher};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The mode of installed files, pins and `.part` files: readable by the daemon's user.
const FILE_MODE: u32 = 0o644;
/// The mode of an install directory this command creates.
const DIR_MODE: u32 = 0o755;
/// The largest pin file read.
pub const MAX_PIN: u64 = 4096;
/// The lock file a run holds (`<dir>/.lock`).
pub const LOCK_NAME: &str = ".lock";

/// `name` with `suffix` appended (`m.bin` → `m.bin.part`).
pub fn with_suffix(name: &str, suffix: &str) -> String {
    format!("{name}{suffix}")
}

/// The pin file's name of an installed file.
pub fn pin_name(name: &str) -> String {
    with_suffix(name, ".sha256")
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn not_regular(what: &str) -> io::Error {
    io::Error::other(format!("{what} is not a regular file"))
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// The status of an open file.
pub fn fstat(file: &impl AsFd) -> io::Result<FileStat> {
    nix::sys::stat::fstat(file.as_fd().as_raw_fd()).map_err(errno)
}

/// Fails unless `file` is a regular file (`what` names it in the error).
pub fn require_regular(file: &File, what: &str) -> io::Result<()> {
    if is_regular(&fstat(file)?) {
        Ok(())
    } else {
        Err(not_regular(what))
    }
}

/// Why root may not run `models fetch` on a directory, if it may not: it is owned by another user, or
/// others may write it. Such a user could swap any name in it for a link between two steps; root then
/// works for them. `None`: fine (not root, or a directory only root writes).
pub fn root_refusal(euid: u32, dir_uid: u32, dir_mode: u32, user: Option<&str>) -> Option<String> {
    if euid != 0 {
        return None;
    }
    let who = user.map_or_else(|| format!("uid {dir_uid}"), str::to_owned);
    if dir_uid != 0 {
        return Some(format!(
            "refusing to run as root in a directory owned by {who}: run it as that user \
             (`runuser -u {who} -- talkheadd models fetch`), or use a --dir only root can write"
        ));
    }
    if dir_mode & 0o022 != 0 {
        return Some(format!(
            "refusing to run as root in a directory others can write (mode {:o}): \
             `chmod go-w` it, or use another --dir",
            dir_mode & 0o7777
        ));
    }
    None
}

/// The install directory, opened once; every file operation is relative to it.
#[derive(Debug)]
pub struct InstallDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl InstallDir {
    /// Opens `path` (absolute), a directory and not a symbolic link; with `create`, creates it first
    /// (mode 0755, whatever the umask) when it is not there. `Ok(None)`: not there (and not created).
    pub fn open(path: &Path, create: bool) -> io::Result<Option<InstallDir>> {
        let mut created = false;
        if create && std::fs::symlink_metadata(path).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(path)?;
            created = true;
        }
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path);
        let fd = match opened {
            Ok(file) => OwnedFd::from(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(io::Error::other(
                    "is a symbolic link; give the directory it points to as --dir",
                ));
            }
            Err(e) => return Err(e),
        };
        let dir = InstallDir {
            fd,
            path: path.to_owned(),
        };
        if created {
            nix::sys::stat::fchmod(dir.raw(), Mode::from_bits_truncate(DIR_MODE)).map_err(errno)?;
        }
        Ok(Some(dir))
    }

    fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The directory's path (for messages and the configuration lines).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in it (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory's owner and mode.
    pub fn owner_and_mode(&self) -> io::Result<(u32, u32)> {
        let st = fstat(&self.fd)?;
        Ok((st.st_uid, st.st_mode))
    }

    fn open_at(&self, name: &str, flags: OFlag, mode: u32) -> Result<File, Errno> {
        let fd = nix::fcntl::openat(
            Some(self.raw()),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        Ok(File::from(own_new_fd(fd)))
    }

    /// Takes the exclusive lock of a run on `<dir>/.lock`, without waiting. `Ok(None)`: another run
    /// holds it.
    pub fn lock(&self) -> io::Result<Option<Flock<File>>> {
        let file = self
            .open_at(
                LOCK_NAME,
                // Read-only is enough for flock, and lets the owner open a lock file root created.
                OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK,
                FILE_MODE,
            )
            .map_err(errno)?;
        require_regular(&file, LOCK_NAME)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(errno(e)),
        }
    }

    /// Removes `name` if it is there (a link itself, never what it points to).
    pub fn remove_if_there(&self, name: &str) -> io::Result<()> {
        match nix::unistd::unlinkat(Some(self.raw()), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// A new, empty `.part` file `name` (whatever was at that name removed first), hashing what is
    /// written to it.
    pub fn create_part(&self, name: &str) -> io::Result<Part> {
        self.remove_if_there(name)?;
        let file = self
            .open_at(name, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL, FILE_MODE)
            .map_err(errno)?;
        Ok(Part::new(file, name))
    }

    /// The `.part` file `name` to resume: re-opened (never through a link), its bytes hashed through
    /// that descriptor; a new one when none is there, it is not a regular file, or it already holds more
    /// than `limit` bytes.
    pub fn resume_part(&self, name: &str, limit: u64) -> io::Result<Part> {
        let file = match self.open_at(name, OFlag::O_RDWR | OFlag::O_NONBLOCK, 0) {
            Ok(file) => file,
            Err(Errno::ENOENT) => return self.create_part(name),
            // A symbolic link (or a FIFO, socket, device) at the name: never followed, replaced.
            Err(Errno::ELOOP | Errno::ENXIO) => return self.create_part(name),
            Err(e) => return Err(errno(e)),
        };
        if !is_regular(&fstat(&file)?) {
            return self.create_part(name);
        }
        let mut part = Part::new(file, name);
        let mut reader = part.out.get_ref().take(limit.saturating_add(1));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            part.hasher.update(&buf[..n]);
            part.size += n as u64;
        }
        if part.size > limit {
            return self.create_part(name);
        }
        Ok(part)
    }

    /// Opens an installed file (or pin) for reading: never through a link, never blocking on a FIFO, a
    /// regular file only. `Ok(None)`: not there.
    pub fn open_read(&self, name: &str) -> io::Result<Option<File>> {
        let file = match self.open_at(name, OFlag::from_bits_truncate(HOSTILE_OPEN_FLAGS), 0) {
            Ok(file) => file,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENXIO) => return Err(not_regular(name)),
            Err(e) => return Err(errno(e)),
        };
        require_regular(&file, name)?;
        Ok(Some(file))
    }

    /// The size and SHA-256 of installed file `name`, reading at most `limit + 1` bytes (a larger file
    /// measures `limit + 1`, which no check accepts). `Ok(None)`: not there.
    pub fn measure(&self, name: &str, limit: u64) -> io::Result<Option<Measured>> {
        match self.open_read(name)? {
            Some(file) => measure_file(&file, limit).map(Some),
            None => Ok(None),
        }
    }

    /// Installs checked `part` as `target`, readable by everyone (the daemon runs as another user): mode
    /// set on its descriptor, renamed within the directory only if the `.part` name still holds that
    /// file, the directory synced. The `.part` is already synced ([`Part::finish`]).
    pub fn install(&self, part: &Finished, target: &str) -> io::Result<()> {
        nix::sys::stat::fchmod(part.file.as_raw_fd(), Mode::from_bits_truncate(FILE_MODE)).map_err(errno)?;
        let ours = fstat(&part.file)?;
        let at = nix::sys::stat::fstatat(Some(self.raw()), part.name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(errno)?;
        if (at.st_dev, at.st_ino) != (ours.st_dev, ours.st_ino) {
            return Err(io::Error::other(format!(
                "{} was replaced while it was being checked; nothing installed",
                self.join(&part.name).display()
            )));
        }
        nix::fcntl::renameat(Some(self.raw()), part.name.as_str(), Some(self.raw()), target)
            .map_err(errno)?;
        nix::unistd::fsync(self.raw()).map_err(errno)
    }

    /// Records `sha256` as the hash installed file `name` must keep (an unconfirmed entry's, for
    /// `models verify`); the pin's path.
    pub fn write_pin(&self, name: &str, sha256: &Sha256) -> io::Result<PathBuf> {
        let pin = pin_name(name);
        let mut part = self.create_part(&with_suffix(&pin, ".part"))?;
        part.write_all(pin_text(name, sha256).as_bytes())?;
        let done = part.finish()?;
        self.install(&done, &pin)?;
        Ok(self.join(&pin))
    }

    /// The hash pinned for installed file `name`, if any (a pin larger than [`MAX_PIN`] is none).
    pub fn read_pin(&self, name: &str) -> Option<Sha256> {
        let file = self.open_read(&pin_name(name)).ok()??;
        let mut text = String::new();
        file.take(MAX_PIN + 1).read_to_string(&mut text).ok()?;
        if text.len() as u64 > MAX_PIN {
            return None;
        }
        parse_pin(&text, name)
    }
}

/// Owns a descriptor `openat` just returned.
#[allow(unsafe_code)]
fn own_new_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful openat(2) in the line before the only call, so it is
    // open, and nothing else in the process has its number: this is its one owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The size and SHA-256 of an open file from where it is, reading at most `limit + 1` bytes.
pub fn measure_file(file: &File, limit: u64) -> io::Result<Measured> {
    let mut reader = file.take(limit.saturating_add(1));
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
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

/// Opens a source the operator copied (`--from`): a symbolic link there is followed (the operator's
/// own files), but it must end at a regular file, and a FIFO never blocks the open. `Ok(None)`: not
/// there.
pub fn open_source(path: &Path) -> io::Result<Option<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    require_regular(&file, &path.display().to_string())?;
    Ok(Some(file))
}

/// A `.part` file being written, hashed as it is.
pub struct Part {
    out: BufWriter<File>,
    hasher: Hasher,
    size: u64,
    name: String,
}

/// A synced `.part` file and what it holds.
#[derive(Debug)]
pub struct Finished {
    /// Its descriptor (read-write, positioned at its end).
    pub file: File,
    /// Its size and SHA-256, as written (and read, when resumed) through that descriptor.
    pub measured: Measured,
    /// Its name in the directory.
    pub name: String,
}

impl Part {
    fn new(file: File, name: &str) -> Part {
        Part {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Hasher::new(),
            size: 0,
            name: name.to_owned(),
        }
    }

    /// Bytes in it so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its name in the directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Flushes and syncs the file; it, and what was written.
    pub fn finish(self) -> io::Result<Finished> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Finished {
            file,
            measured: Measured {
                size: self.size,
                sha256: self.hasher.finalize().into(),
            },
            name: self.name,
        })
    }
}

impl Write for Part {
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

/// Copies `from` into a new `.part` file `part`, hashing it on the way; at most `limit + 1` bytes
/// (a larger source measures `limit + 1`, which no size check accepts).
pub fn copy_hashed(dir: &InstallDir, from: &File, part: &str, limit: u64) -> io::Result<Finished> {
    let mut out = dir.create_part(part)?;
    io::copy(&mut from.take(limit.saturating_add(1)), &mut out)?;
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> (tempfile::TempDir, InstallDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstallDir::open(tmp.path(), false).unwrap().unwrap();
        (tmp, dir)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_copy_is_hashed_installed_and_pinned() {
        let (tmp, dir) = dir();
        let src = tmp.path().join("src.bin");
        std::fs::write(&src, b"abc").unwrap();
        let from = open_source(&src).unwrap().unwrap();
        let done = copy_hashed(&dir, &from, "m.bin.part", 100).unwrap();
        // SHA-256("abc"), FIPS 180-2's first example.
        assert_eq!(
            hex::encode(done.measured.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        dir.install(&done, "m.bin").unwrap();
        assert!(!tmp.path().join("m.bin.part").exists());
        assert_eq!(std::fs::read(tmp.path().join("m.bin")).unwrap(), b"abc");
        assert_eq!(mode(&tmp.path().join("m.bin")), 0o644);
        assert_eq!(dir.measure("m.bin", 100).unwrap(), Some(done.measured));
        // Read no further than the limit + 1.
        assert_eq!(dir.measure("m.bin", 1).unwrap().unwrap().size, 2);
        let pin = dir.write_pin("m.bin", &done.measured.sha256).unwrap();
        assert_eq!(dir.read_pin("m.bin"), Some(done.measured.sha256));
        assert!(std::fs::read_to_string(pin).unwrap().ends_with("  m.bin\n"));
        dir.remove_if_there("m.bin").unwrap();
        dir.remove_if_there("m.bin").unwrap();
        assert!(!tmp.path().join("m.bin").exists());
        assert_eq!(dir.measure("m.bin", 100).unwrap(), None);
    }

    #[test]
    fn a_part_file_is_never_written_through_a_symlink() {
        let (tmp, dir) = dir();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("m.bin.part")).unwrap();
        // The link is replaced by a new file, not written through.
        let mut part = dir.create_part("m.bin.part").unwrap();
        part.write_all(b"new").unwrap();
        part.finish().unwrap();
        assert!(
            !std::fs::symlink_metadata(tmp.path().join("m.bin.part"))
                .unwrap()
                .is_symlink()
        );
        // A resumed one too: the link's target is neither read nor appended to.
        std::fs::remove_file(tmp.path().join("m.bin.part")).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("m.bin.part")).unwrap();
        let part = dir.resume_part("m.bin.part", 100).unwrap();
        assert_eq!(part.size(), 0);
        std::os::unix::fs::symlink(&victim, tmp.path().join("n.bin.sha256.part")).unwrap();
        dir.write_pin("n.bin", &[0; 32]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    /// Between the check and the rename, the `.part` name is swapped for a link to another file: the
    /// mode is set on the checked file's descriptor (never through the link), and nothing is renamed.
    #[test]
    fn a_part_swapped_for_a_link_after_its_check_is_neither_chmoded_nor_installed() {
        let (tmp, dir) = dir();
        let victim = tmp.path().join("shadow");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut part = dir.create_part("m.bin.part").unwrap();
        part.write_all(b"model").unwrap();
        let done = part.finish().unwrap();
        std::fs::remove_file(tmp.path().join("m.bin.part")).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("m.bin.part")).unwrap();
        let err = dir.install(&done, "m.bin").unwrap_err();
        assert!(err.to_string().contains("was replaced"), "{err}");
        assert_eq!(mode(&victim), 0o600);
        assert!(!tmp.path().join("m.bin").exists());
    }

    #[test]
    fn a_resumed_part_is_hashed_through_its_descriptor() {
        let (tmp, dir) = dir();
        std::fs::write(tmp.path().join("m.part"), b"ab").unwrap();
        let mut part = dir.resume_part("m.part", 10).unwrap();
        assert_eq!(part.size(), 2);
        part.write_all(b"c").unwrap();
        let done = part.finish().unwrap();
        assert_eq!(
            hex::encode(done.measured.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(std::fs::read(tmp.path().join("m.part")).unwrap(), b"abc");
        // Longer than the limit: started over.
        assert_eq!(dir.resume_part("m.part", 2).unwrap().size(), 0);
    }

    #[test]
    fn hostile_installed_files_and_pins_are_refused_or_bounded() {
        let (tmp, dir) = dir();
        std::os::unix::fs::symlink("/dev/zero", tmp.path().join("zero.bin")).unwrap();
        let err = dir.measure("zero.bin", 10).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        nix::unistd::mkfifo(&tmp.path().join("fifo.bin"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(dir.measure("fifo.bin", 10).is_err());
        std::os::unix::fs::symlink("/dev/zero", tmp.path().join("m.bin.sha256")).unwrap();
        assert_eq!(dir.read_pin("m.bin"), None);
        std::fs::remove_file(tmp.path().join("m.bin.sha256")).unwrap();
        let big = format!("{}  m.bin\n{}", "ab".repeat(32), "x".repeat(5000));
        std::fs::write(tmp.path().join("m.bin.sha256"), big).unwrap();
        assert_eq!(dir.read_pin("m.bin"), None);
        // A --from source may be a link, but only to a regular file.
        assert!(open_source(&tmp.path().join("zero.bin")).is_err());
        assert!(open_source(&tmp.path().join("fifo.bin")).is_err());
        assert!(open_source(&tmp.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn the_lock_is_exclusive_and_never_waited_for() {
        let (_tmp, dir) = dir();
        let held = dir.lock().unwrap();
        assert!(held.is_some());
        assert!(dir.lock().unwrap().is_none());
        drop(held);
        assert!(dir.lock().unwrap().is_some());
    }

    #[test]
    fn root_runs_only_in_a_directory_only_root_writes() {
        assert_eq!(root_refusal(1000, 999, 0o40750, None), None);
        assert_eq!(root_refusal(0, 0, 0o40755, None), None);
        let e = root_refusal(0, 999, 0o40750, Some("talkhead")).unwrap();
        assert!(
            e.contains("`runuser -u talkhead -- talkheadd models fetch`"),
            "{e}"
        );
        assert!(
            root_refusal(0, 0, 0o40777, None)
                .unwrap()
                .contains("others can write")
        );
    }

    #[test]
    fn a_missing_directory_is_created_0755_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/models");
        assert!(InstallDir::open(&path, false).unwrap().is_none());
        InstallDir::open(&path, true).unwrap().unwrap();
        assert_eq!(mode(&path), 0o755);
        // A link in place of the directory is not followed.
        std::os::unix::fs::symlink(&path, tmp.path().join("link")).unwrap();
        assert!(InstallDir::open(&tmp.path().join("link"), false).is_err());
    }
}
