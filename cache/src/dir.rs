//! The runtime cache directory: `$LIBGUESTFS_CACHEDIR`, else `$TMPDIR`, else
//! `/var/tmp`, then `/.guestfs-<euid>`, the place libguestfs itself uses
//! (`lib/tmpdirs.c`, `guestfs_int_lazy_make_supermin_appliance_dir`).
//!
//! The base usually is a world-writable sticky directory, so the per-user
//! directory is checked the way libguestfs checks it before anything in it is
//! trusted: it must be a real directory (not a symlink), owned by the
//! effective uid, and not writable by group or other. Unlike libguestfs we do
//! not `chmod` an existing directory back to 0755: a directory somebody else
//! could have written into is refused, not silently adopted.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::CacheError;

/// Where the cache base came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseOrigin {
    /// `$LIBGUESTFS_CACHEDIR`.
    LibguestfsCachedir,
    /// `$TMPDIR`.
    Tmpdir,
    /// Neither is set: `/var/tmp`.
    Default,
}

impl BaseOrigin {
    fn describe(self) -> &'static str {
        match self {
            BaseOrigin::LibguestfsCachedir => "LIBGUESTFS_CACHEDIR",
            BaseOrigin::Tmpdir => "TMPDIR",
            BaseOrigin::Default => "the default /var/tmp",
        }
    }
}

/// Picks the cache base from an environment lookup, in libguestfs's order.
/// An empty value counts as unset (libguestfs would fail on it instead).
pub fn cache_base_from(env: impl Fn(&str) -> Option<OsString>) -> (PathBuf, BaseOrigin) {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(v) = set("LIBGUESTFS_CACHEDIR") {
        (PathBuf::from(v), BaseOrigin::LibguestfsCachedir)
    } else if let Some(v) = set("TMPDIR") {
        (PathBuf::from(v), BaseOrigin::Tmpdir)
    } else {
        (PathBuf::from("/var/tmp"), BaseOrigin::Default)
    }
}

/// `$LIBGUESTFS_CACHEDIR` | `$TMPDIR` | `/var/tmp`, then `.guestfs-<euid>`,
/// created 0755 if missing and checked with [`check_cache_dir`]. The variables are
/// looked up by `env` (the binary's snapshot of its environment).
pub fn runtime_cache_dir(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, CacheError> {
    let (base, origin) = cache_base_from(env);
    runtime_cache_dir_in(&base, origin)
}

/// The per-user cache directory under an explicit base.
pub fn runtime_cache_dir_in(base: &Path, origin: BaseOrigin) -> Result<PathBuf, CacheError> {
    // libguestfs makes the base absolute with realpath (RHBZ#882417): the
    // directory is handed to qemu and to supermin, which run elsewhere.
    let base = fs::canonicalize(base).map_err(|source| CacheError::BaseDir {
        path: base.to_path_buf(),
        origin: origin.describe(),
        source,
    })?;
    if !base.is_dir() {
        return Err(CacheError::BaseNotADirectory {
            path: base,
            origin: origin.describe(),
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    let dir = base.join(format!(".guestfs-{euid}"));

    match fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {
            // The umask may have cut bits off; "created 0755" is what
            // libguestfs promises qemu (it may run as another user as root).
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|source| {
                CacheError::CreateDir {
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(CacheError::CreateDir { path: dir, source }),
    }
    check_cache_dir(&dir)?;
    // Tmp cleaners delete by age; libguestfs touches the directory on every
    // use so that a cache in use is never old. Failing to touch it only makes
    // an early cleanup possible, which costs a rebuild, never correctness.
    let _ = fs::File::open(&dir).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    Ok(dir)
}

/// Refuses a cache directory that another user could have tampered with:
/// a symlink, a non-directory, one owned by another uid, or one writable by
/// group or other.
pub fn check_cache_dir(dir: &Path) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| CacheError::InspectDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.to_path_buf();
    let mode = meta.mode();
    if meta.file_type().is_symlink() {
        return Err(CacheError::IsSymlink { path });
    }
    if !meta.is_dir() {
        return Err(CacheError::NotADirectory { path, mode });
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(CacheError::NotOwned {
            path,
            owner: meta.uid(),
            euid,
        });
    }
    if mode & 0o022 != 0 {
        return Err(CacheError::WritableByOthers { path, mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn libguestfs_cachedir_wins_over_tmpdir() {
        let (base, origin) =
            cache_base_from(env_of(&[("LIBGUESTFS_CACHEDIR", "/a"), ("TMPDIR", "/b")]));
        assert_eq!(base, PathBuf::from("/a"));
        assert_eq!(origin, BaseOrigin::LibguestfsCachedir);
    }

    #[test]
    fn tmpdir_is_used_when_cachedir_is_unset_or_empty() {
        for env in [
            vec![("TMPDIR", "/b")],
            vec![("LIBGUESTFS_CACHEDIR", ""), ("TMPDIR", "/b")],
        ] {
            let (base, origin) = cache_base_from(env_of(&env));
            assert_eq!(base, PathBuf::from("/b"));
            assert_eq!(origin, BaseOrigin::Tmpdir);
        }
    }

    #[test]
    fn var_tmp_is_the_default() {
        let (base, origin) = cache_base_from(env_of(&[("TMPDIR", "")]));
        assert_eq!(base, PathBuf::from("/var/tmp"));
        assert_eq!(origin, BaseOrigin::Default);
    }
}
