//! What is cached, and removing it safely: the listing and garbage collection behind
//! `supermin cache list|gc|clean` (the libguestfs FAQ's "libguestfs takes too much disk
//! space", answered without `rm -rf /var/tmp/.guestfs-*` under a running build).
//!
//! An entry is an appliance directory of a known name in a per-user cache directory:
//! ours (`supermin-rs-default.d`, built by `supermin run`) and libguestfs's (`appliance.d`,
//! built by whichever supermin is `/usr/bin/supermin`). Each has the lock file its builder
//! takes (`--lock`); an entry is removed only while that lock is held by us, so a build in
//! progress (or waiting) is never pulled from under its builder, and it is first renamed
//! aside, so a reader sees the whole appliance or none.
//!
//! Whether an entry is still fresh needs the builder's fingerprint; this module reports
//! what it can see (sizes, times, the stamp) and leaves the verdict to its caller.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{check_cache_dir, try_lock, BaseOrigin, CacheError, Stamp};

/// A kind of cached appliance: its directory name and its builders' lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryKind {
    /// Its directory's name in the per-user cache directory.
    pub name: &'static str,
    /// Its builders' lock file's name beside it.
    pub lock: &'static str,
    /// Who builds it, for people.
    pub builder: &'static str,
}

/// `supermin run`'s default appliance.
pub const DEFAULT_ENTRY: EntryKind = EntryKind {
    name: "supermin-rs-default.d",
    lock: "supermin-rs-default.lock",
    builder: "supermin run",
};

/// libguestfs's appliance (`supermin --build --lock CACHE/lock ... -o CACHE/appliance.d`).
pub const LIBGUESTFS_ENTRY: EntryKind = EntryKind {
    name: "appliance.d",
    lock: "lock",
    builder: "libguestfs",
};

/// Every kind of cached appliance, in the order `supermin cache list` shows them.
pub const ENTRY_KINDS: [EntryKind; 2] = [DEFAULT_ENTRY, LIBGUESTFS_ENTRY];

/// The per-user cache directories this environment names: `$LIBGUESTFS_CACHEDIR` and
/// `$TMPDIR` when set (libguestfs and `supermin run` use the first; the other may hold
/// entries from runs without it), `/var/tmp` only when neither is set. Each is
/// `BASE/.guestfs-<euid>`; those that do not exist are left out, none is created.
pub fn user_cache_dirs(env: impl Fn(&str) -> Option<OsString>) -> Vec<(PathBuf, BaseOrigin)> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut bases = Vec::new();
    if let Some(b) = set("LIBGUESTFS_CACHEDIR") {
        bases.push((b, BaseOrigin::LibguestfsCachedir));
    }
    if let Some(b) = set("TMPDIR") {
        bases.push((b, BaseOrigin::Tmpdir));
    }
    if bases.is_empty() {
        bases.push((PathBuf::from("/var/tmp"), BaseOrigin::Default));
    }
    let euid = rustix::process::geteuid().as_raw();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (base, origin) in bases {
        let Ok(base) = fs::canonicalize(&base) else {
            continue;
        };
        let dir = base.join(format!(".guestfs-{euid}"));
        if dir.is_dir() && seen.insert(dir.clone()) {
            out.push((dir, origin));
        }
    }
    out
}

/// One cached appliance as found on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Which kind of appliance it is.
    pub kind: EntryKind,
    /// Its directory.
    pub dir: PathBuf,
    /// Its builders' lock file.
    pub lock: PathBuf,
    /// Allocated bytes (`st_blocks`: a sparse 4 GiB root costs what it holds), hard links
    /// counted once, symlinks not followed.
    pub bytes: u64,
    /// The later of the root image's access time and the entry's last build.
    pub last_used: Option<SystemTime>,
    /// When it was built (the stamp's, else the directory's modification time).
    pub built: Option<SystemTime>,
    /// `None`: no stamp (supermin 5 builds none); `Some(Err)`: corrupt.
    pub stamp: Option<Result<Stamp, String>>,
    /// A builder holds its lock right now.
    pub locked: bool,
}

/// The entries of one per-user cache directory (checked like a builder checks it first).
pub fn list_entries(user_dir: &Path) -> Result<Vec<Entry>, CacheError> {
    check_cache_dir(user_dir)?;
    let mut out = Vec::new();
    for kind in ENTRY_KINDS {
        let dir = user_dir.join(kind.name);
        let meta = match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CacheError::InspectDir { path: dir, source }),
        };
        let stamp = Stamp::read(&dir)?;
        let built = fs::metadata(dir.join(crate::STAMP_NAME))
            .and_then(|m| m.modified())
            .or_else(|_| meta.modified())
            .ok();
        let used = fs::metadata(dir.join("root"))
            .and_then(|m| m.accessed())
            .ok();
        let last_used = match (used, built) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let lock = user_dir.join(kind.lock);
        out.push(Entry {
            kind,
            bytes: disk_usage(&dir).map_err(|source| CacheError::InspectDir {
                path: dir.clone(),
                source,
            })?,
            locked: is_locked(&lock)?,
            dir,
            lock,
            last_used,
            built,
            stamp,
        });
    }
    Ok(out)
}

/// Whether someone holds `lock` (a missing lock file is held by nobody; none is created).
fn is_locked(lock: &Path) -> Result<bool, CacheError> {
    if !lock.exists() {
        return Ok(false);
    }
    Ok(try_lock(lock)?.is_none())
}

/// Allocated bytes under `path` (`st_blocks * 512`), not following symlinks, each inode once.
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Removed while we looked: it costs nothing any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total = total.saturating_add(meta.blocks().saturating_mul(512));
        }
        if meta.is_dir() {
            for e in fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(total)
}

/// What [`remove_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The entry is gone.
    Removed {
        /// The bytes it held.
        bytes: u64,
    },
    /// A builder holds the lock: left alone.
    InUse,
}

/// Removes `entry` under its builders' lock (never waiting for it): renamed aside first,
/// so a reader sees the whole appliance or nothing, then deleted.
pub fn remove_entry(entry: &Entry) -> Result<Removal, CacheError> {
    let Some(_held) = try_lock(&entry.lock)? else {
        return Ok(Removal::InUse);
    };
    let bytes = disk_usage(&entry.dir).unwrap_or(entry.bytes);
    let parent = entry.dir.parent().unwrap_or(Path::new("/"));
    let aside = parent.join(format!(
        ".{}.supermin-gc-{}",
        entry.kind.name,
        std::process::id()
    ));
    match fs::rename(&entry.dir, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Removed { bytes: 0 }),
        Err(source) => {
            return Err(CacheError::Remove {
                path: entry.dir.clone(),
                source,
            })
        }
    }
    fs::remove_dir_all(&aside).map_err(|source| CacheError::Remove {
        path: aside.clone(),
        source,
    })?;
    Ok(Removal::Removed { bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn user_dir(base: &Path) -> PathBuf {
        let d = base.join("u");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn a_sparse_root_counts_what_it_holds() {
        let t = tempfile::tempdir().unwrap();
        let f = fs::File::create(t.path().join("root")).unwrap();
        f.set_len(4 << 30).unwrap();
        assert!(disk_usage(t.path()).unwrap() < 1 << 20);
    }

    #[test]
    fn entries_are_listed_and_a_locked_one_is_never_removed() {
        let t = tempfile::tempdir().unwrap();
        let u = user_dir(t.path());
        fs::create_dir(u.join("appliance.d")).unwrap();
        fs::write(u.join("appliance.d/root"), vec![1u8; 8192]).unwrap();
        fs::create_dir(u.join("supermin-rs-default.d")).unwrap();
        fs::create_dir(u.join("unrelated.d")).unwrap();
        let entries = list_entries(&u).unwrap();
        assert_eq!(entries.len(), 2);
        let lg = entries.iter().find(|e| e.kind == LIBGUESTFS_ENTRY).unwrap();
        assert!(lg.bytes >= 8192 && !lg.locked && lg.stamp.is_none());
        assert!(!u.join("lock").exists(), "listing creates no lock file");

        let held = crate::lock(&u.join("lock")).unwrap();
        let entries = list_entries(&u).unwrap();
        let lg = entries.iter().find(|e| e.kind == LIBGUESTFS_ENTRY).unwrap();
        assert!(lg.locked);
        assert_eq!(remove_entry(lg).unwrap(), Removal::InUse);
        assert!(u.join("appliance.d/root").exists());
        drop(held);
        assert!(matches!(remove_entry(lg).unwrap(), Removal::Removed { bytes } if bytes >= 8192));
        assert!(!u.join("appliance.d").exists());
        assert!(u.join("unrelated.d").exists());
    }
}
