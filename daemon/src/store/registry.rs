//! The process-wide registry of open state files: one LMDB environment per file per process.
//!
//! LMDB forbids opening the same environment twice in one process (its POSIX locks are per process,
//! so a second handle would silently break the reader table and the writer mutex); this registry turns
//! that into a typed error before LMDB is called. It owns nothing else: no I/O besides path resolution.

use super::StoreError;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static OPEN_PATHS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn open_paths() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding this lock cannot leave the set inconsistent (single insert/remove).
    OPEN_PATHS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The canonical form of a state-file path, resolved the way heed resolves it: the file itself if it
/// exists (following symlinks), else its canonical directory joined with its name.
pub(crate) fn resolve(path: &Path) -> Result<PathBuf, StoreError> {
    if path.is_dir() {
        return Err(StoreError::IsDirectory {
            path: path.to_owned(),
        });
    }
    let Some(name) = path.file_name() else {
        return Err(StoreError::IsDirectory {
            path: path.to_owned(),
        });
    };
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let dir = dir.canonicalize().map_err(|source| StoreError::ParentMissing {
                path: path.to_owned(),
                source,
            })?;
            if !dir.is_dir() {
                return Err(StoreError::ParentMissing {
                    path: path.to_owned(),
                    source: io::Error::new(io::ErrorKind::NotADirectory, "parent is not a directory"),
                });
            }
            Ok(dir.join(name))
        }
        Err(source) => Err(StoreError::ParentMissing {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A claim on a canonical path; released when dropped.
#[derive(Debug)]
pub(crate) struct PathClaim {
    path: PathBuf,
}

impl PathClaim {
    /// Claim `canonical` for this process, or refuse if it is already claimed.
    pub(crate) fn acquire(canonical: &Path) -> Result<PathClaim, StoreError> {
        if open_paths().insert(canonical.to_owned()) {
            Ok(PathClaim {
                path: canonical.to_owned(),
            })
        } else {
            Err(StoreError::AlreadyOpen {
                path: canonical.to_owned(),
            })
        }
    }
}

impl Drop for PathClaim {
    fn drop(&mut self) {
        open_paths().remove(&self.path);
    }
}
