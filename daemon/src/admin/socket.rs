//! The admin socket file: bound with a restrictive umask (the mode is right from the first instant; it
//! is never chmod-ed after bind), group-owned so that the admin groups can reach it, a stale file from
//! a crashed instance replaced, and a live one never stolen from another daemon.

use nix::sys::stat::{Mode, umask};
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on the socket.
    #[error(
        "another talkheadd is already serving the admin socket {0} (stop it first, or set admin.socket to another path)"
    )]
    InUse(PathBuf),
    /// The path exists and is not a socket: refuse to delete someone's file.
    #[error("admin.socket {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The directory is missing and cannot be created.
    #[error(
        "admin.socket {0}: cannot create its directory ({1}); under systemd RuntimeDirectory= creates /run/talkheadd, otherwise create it or change admin.socket"
    )]
    NoDirectory(PathBuf, std::io::Error),
    /// Anything else.
    #[error("admin.socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Held while the process umask is narrowed for a bind.
static UMASK_SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bind the admin socket at `path` with permission bits `mode` and, when given, group `gid`.
///
/// The umask is process-wide, so this runs at start-up before any other thread creates files (binds
/// themselves are serialised).
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.is_dir()) {
        // What systemd's RuntimeDirectory= would have made: owner-writable, world-traversable (the
        // socket's own mode and the peer-credential check guard access).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| SocketError::NoDirectory(path.to_owned(), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_owned())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing the stale admin socket of a previous instance");
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mask = Mode::from_bits_truncate(!mode & 0o777);
    let bound = {
        // Two binds at once would each run under the other's umask (the daemon binds once, but the
        // tests bind in parallel threads: one saw 0600 where it asked for 0660).
        let _one_at_a_time = UMASK_SWAP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = umask(mask);
        let bound = UnixListener::bind(path);
        umask(previous);
        bound
    };
    let listener = bound.map_err(|e| match e.kind() {
        // Lost a race with another instance starting at the same moment.
        ErrorKind::AddrInUse => SocketError::InUse(path.to_owned()),
        _ => io(e),
    })?;
    if let Some(gid) = gid {
        // Narrowing or widening to the admin group only; until then the file is owned by our own
        // group, which is never broader than the admin groups.
        if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
            tracing::warn!(path = %path.display(), gid, error = %e, "cannot hand the admin socket to the admin group; only our own user and group can connect");
        }
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_socket_gets_the_configured_mode_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let _l = bind(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file behind");
        let live = bind(&path, 0o600, None).expect("stale socket replaced");
        let err = bind(&path, 0o600, None).unwrap_err();
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        assert!(err.to_string().contains("another talkheadd"));
        drop(live);
    }

    #[test]
    fn a_regular_file_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            bind(&path, 0o600, None),
            Err(SocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn a_missing_directory_is_created_and_an_impossible_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/talkheadd/admin.sock");
        let _l = bind(&path, 0o600, None).unwrap();
        assert!(path.exists());
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let err = bind(&blocker.join("admin.sock"), 0o600, None).unwrap_err();
        assert!(err.to_string().contains("RuntimeDirectory"), "{err}");
    }
}
