//! `--lock FILE`: builders of one output serialize on an exclusive lock.
//!
//! supermin 5 takes `lockf(F_LOCK)` on the file, a POSIX record lock. Those
//! belong to the process, not to the open file, so two threads of one
//! process never exclude each other, and closing any descriptor of the file
//! drops the lock. We take an open-file-description lock (`F_OFD_SETLKW`)
//! instead: it belongs to our descriptor like `flock(2)` does, and it
//! conflicts with POSIX record locks, so a supermin 5 and this tool working
//! on one cache still take turns. Kernels without OFD locks (before 3.15)
//! get `flock(2)`.
//!
//! The lock is released when the [`Lock`] is dropped, or by the kernel when
//! the process dies, however it dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::CacheError;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    // Held for its lock; closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes an exclusive lock on `path` (created 0644 if missing), waiting for
/// any other holder to finish.
pub fn lock(path: &Path) -> Result<Lock, CacheError> {
    let file = open(path)?;
    loop {
        match set_lock(&file, true) {
            Ok(()) => {
                return Ok(Lock {
                    _file: file,
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(CacheError::Lock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Takes the lock only if nobody holds it; `Ok(None)` if somebody does.
pub fn try_lock(path: &Path) -> Result<Option<Lock>, CacheError> {
    let file = open(path)?;
    loop {
        match set_lock(&file, false) {
            Ok(()) => {
                return Ok(Some(Lock {
                    _file: file,
                    path: path.to_path_buf(),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_contended(&e) => return Ok(None),
            Err(source) => {
                return Err(CacheError::Lock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

fn open(path: &Path) -> Result<File, CacheError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(|source| CacheError::OpenLock {
            path: path.to_path_buf(),
            source,
        })
}

fn is_contended(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

fn set_lock(file: &File, wait: bool) -> io::Result<()> {
    match ofd_lock(file, wait) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let op = if wait {
                FlockOperation::LockExclusive
            } else {
                FlockOperation::NonBlockingLockExclusive
            };
            rustix::fs::flock(file, op).map_err(io::Error::from)
        }
        other => other,
    }
}

/// A whole-file write lock owned by this open file description.
fn ofd_lock(file: &File, wait: bool) -> io::Result<()> {
    // SAFETY: `flock` is a plain C struct for which all-zeroes is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // F_WRLCK (1) and SEEK_SET (0) are small libc constants that libc types as
    // `c_int`, while `struct flock` declares these two fields `short`.
    #[allow(clippy::cast_possible_truncation)]
    {
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
    }
    fl.l_start = 0;
    fl.l_len = 0; // to the end of the file, however it grows
    fl.l_pid = 0; // required by F_OFD_* commands
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: the descriptor is open for the duration of the call (borrowed
    // from `file`), and `fl` is a valid, initialised `struct flock` that the
    // kernel only reads for these commands.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_excludes_another_description_in_the_same_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock(&path).unwrap();
        assert!(try_lock(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock(&path).unwrap().is_some());
    }

    #[test]
    fn lock_file_is_created_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new-lock");
        let l = lock(&path).unwrap();
        assert!(path.is_file());
        assert_eq!(l.path(), path);
    }

    #[test]
    fn a_lock_in_a_missing_directory_is_a_clear_error() {
        let err = lock(Path::new("/nonexistent-dir-for-supermin-test/lock")).unwrap_err();
        assert!(matches!(err, CacheError::OpenLock { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("/nonexistent-dir-for-supermin-test/lock"));
    }
}
