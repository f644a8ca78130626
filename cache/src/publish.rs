//! Atomic publish of an output directory, and cleanup of what killed builds
//! leave behind.
//!
//! An output is built in a sibling directory named
//! `.<name>.supermin-tmp-<pid>-<n>` (same filesystem, so a rename can move
//! it), then swapped into place with `renameat2(RENAME_EXCHANGE)`. Readers
//! see the old complete output or the new complete one at every instant; the
//! old tree, now under the temporary name, is then deleted. Where the
//! filesystem cannot exchange, the old output is first renamed aside
//! (`.<name>.supermin-old-<pid>-<n>`), which leaves a moment with no output,
//! still never a torn one. supermin 5 does the same two-rename dance.
//!
//! A staging directory is `flock`ed for its whole life. The lock dies with
//! the process, however it dies, so [`clean_debris`] can tell a directory
//! of a killed build (lock free) from one still being written (lock held)
//! without trusting pids, which are reused and differ across pid namespaces.
//!
//! Durability against power loss is separate from atomicity: only
//! [`Durability::Synced`] pays for `fsync`, on every file and directory of
//! the staged tree before the rename and on the parent after it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{FlockOperation, RenameFlags, CWD};

use crate::stamp::{current_boot_id, Stamp, STAMP_NAME};
use crate::{CacheError, Fingerprint};

/// Whether a commit pays for `fsync` so that the output survives power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `--fixed`, `update-appliance`: outputs meant to last.
    Synced,
    /// The runtime cache: cheap to rebuild; the stamp records the boot so
    /// that an entry from before a possible power cut is rebuilt once.
    Unsynced,
}

/// What a successful [`Staging::commit`] did.
#[derive(Debug)]
pub struct Published {
    /// An older output was replaced.
    pub replaced: bool,
    /// The old output could not be deleted; [`clean_debris`] will retry.
    /// The new output is in place regardless.
    pub leftover: Option<CacheError>,
}

const TMP_TAG: &str = ".supermin-tmp-";
const OLD_TAG: &str = ".supermin-old-";
/// A locked-free staging dir younger than this whose pid is alive may be in
/// the instant between its `mkdir` and its `flock`: leave it alone.
const CREATION_GRACE: Duration = Duration::from_secs(60);
/// Where locks cannot be taken (some network filesystems), debris of a live
/// pid is only removed when it is this old.
const UNLOCKABLE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Above this many entries one `syncfs` is cheaper than one `fsync` each.
const SYNC_EACH_LIMIT: usize = 256;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary sibling of an output, published by [`Staging::commit`] and
/// deleted if dropped uncommitted.
#[derive(Debug)]
pub struct Staging {
    out: PathBuf,
    tmp: PathBuf,
    parent: PathBuf,
    name: OsString,
    // flock held on the staging directory until commit or drop.
    lock: Option<File>,
    done: bool,
}

impl Staging {
    /// Creates `.<name>.supermin-tmp-<pid>-<n>` beside `out`, mode 0755.
    pub fn new(out: &Path) -> Result<Staging, CacheError> {
        let (parent, name) = split_out(out)?;
        let pid = std::process::id();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = parent.join(sibling_name(&name, TMP_TAG, pid, n));
            match fs::DirBuilder::new().mode(0o755).create(&tmp) {
                Ok(()) => {}
                // Left by an earlier process with our pid; take another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(CacheError::CreateStaging { path: tmp, source }),
            }
            match lock_fresh_dir(&tmp) {
                Ok(Some(lock)) => {
                    return Ok(Staging {
                        out: out.to_path_buf(),
                        tmp,
                        parent,
                        name,
                        lock,
                        done: false,
                    })
                }
                // A concurrent clean_debris took it in the instant before our
                // lock; it removes it. Take another name.
                Ok(None) => continue,
                Err(source) => {
                    let _ = remove_tree(&tmp);
                    return Err(CacheError::CreateStaging { path: tmp, source });
                }
            }
        }
    }

    /// Where the builder writes the new output.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The output this staging directory will replace.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Writes the stamp into the staged tree, syncs it if asked, and swaps it
    /// into place as the output.
    pub fn commit(
        self,
        fp: &Fingerprint,
        tool_version: &str,
        durability: Durability,
    ) -> Result<Published, CacheError> {
        let synced = durability == Durability::Synced;
        let stamp = Stamp {
            fingerprint: *fp,
            synced,
            boot_id: current_boot_id(),
            tool_version: tool_version.to_string(),
        };
        write_stamp(&self.tmp.join(STAMP_NAME), &stamp.to_text(), synced)?;
        self.publish(durability)
    }

    /// Swaps the staged tree into place as it is, with no stamp: for outputs that are
    /// read as a whole by something else (a `--prepare`d supermin.d, where a stamp would
    /// be taken for an input). Atomic like [`Staging::commit`].
    pub fn commit_without_stamp(self, durability: Durability) -> Result<Published, CacheError> {
        self.publish(durability)
    }

    fn publish(mut self, durability: Durability) -> Result<Published, CacheError> {
        let synced = durability == Durability::Synced;
        if synced {
            sync_tree(&self.tmp)?;
        }

        let replaced = self.swap_into_place()?;
        if synced {
            sync_path(&self.parent)?;
        }
        self.done = true;
        self.lock = None;

        // After an exchange the old output sits under our temporary name.
        let leftover = if replaced {
            remove_tree(&self.tmp)
                .err()
                .map(|source| CacheError::Remove {
                    path: self.tmp.clone(),
                    source,
                })
        } else {
            None
        };
        Ok(Published { replaced, leftover })
    }

    /// Returns whether an old output was replaced.
    fn swap_into_place(&self) -> Result<bool, CacheError> {
        let publish_err = |source: io::Error| CacheError::Publish {
            from: self.tmp.clone(),
            to: self.out.clone(),
            source,
        };
        // Another builder without --lock may publish between our attempts;
        // each failed attempt means the state changed, so a few suffice.
        for _ in 0..8 {
            match rename_with(&self.tmp, &self.out, RenameFlags::EXCHANGE) {
                Ok(()) => return Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match rename_with(&self.tmp, &self.out, RenameFlags::NOREPLACE) {
                        Ok(()) => return Ok(false),
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                        Err(e) if unsupported(&e) => {
                            return fs::rename(&self.tmp, &self.out)
                                .map(|()| false)
                                .map_err(publish_err)
                        }
                        Err(e) => return Err(publish_err(e)),
                    }
                }
                Err(e) if unsupported(&e) => return self.swap_by_two_renames(),
                Err(e) => return Err(publish_err(e)),
            }
        }
        Err(publish_err(io::Error::other(
            "the output kept changing under us; use --lock",
        )))
    }

    /// For filesystems without `RENAME_EXCHANGE`: move the old output aside,
    /// then the new one in. A kill in between leaves no output (and debris).
    fn swap_by_two_renames(&self) -> Result<bool, CacheError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let old = self
            .parent
            .join(sibling_name(&self.name, OLD_TAG, std::process::id(), n));
        let replaced = match fs::rename(&self.out, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(CacheError::Publish {
                    from: self.out.clone(),
                    to: old,
                    source,
                })
            }
        };
        fs::rename(&self.tmp, &self.out).map_err(|source| CacheError::Publish {
            from: self.tmp.clone(),
            to: self.out.clone(),
            source,
        })?;
        if replaced {
            // Debris if this fails: clean_debris retries.
            let _ = remove_tree(&old);
        }
        // The old tree is gone already; nothing is left at our tmp name.
        Ok(false)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            self.lock = None;
            // Best effort: what stays is debris that clean_debris removes.
            let _ = remove_tree(&self.tmp);
        }
    }
}

/// Removes debris of killed builds beside `out`: staging and set-aside
/// directories of this output whose builder is gone. Touches only entries
/// named exactly `.<name>.supermin-{tmp,old}-<pid>-<n>`, never follows a
/// symlink, and leaves alone anything a live builder still holds. Returns
/// how many entries it removed.
pub fn clean_debris(out: &Path) -> Result<usize, CacheError> {
    let (parent, name) = split_out(out)?;
    let entries = match fs::read_dir(&parent) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(CacheError::ListDebris {
                path: parent,
                source,
            })
        }
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|source| CacheError::ListDebris {
            path: parent.clone(),
            source,
        })?;
        let Some(pid) = debris_pid(&name, &entry.file_name()) else {
            continue;
        };
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CacheError::ListDebris { path, source }),
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or(Duration::ZERO);
        let alive = pid_alive(pid);
        // Held while we decide and delete, so no builder can adopt it.
        let _held;
        if meta.is_dir() {
            match try_lock_dir(&path) {
                DirLock::Held(f) => {
                    if alive && age < CREATION_GRACE {
                        continue;
                    }
                    _held = f;
                }
                DirLock::Busy => continue,
                DirLock::Gone => continue,
                DirLock::Unsupported => {
                    if alive && age < UNLOCKABLE_MAX_AGE {
                        continue;
                    }
                }
            }
        } else if alive && age < UNLOCKABLE_MAX_AGE {
            // A replaced non-directory output, or a symlink: no lock to ask.
            continue;
        }
        match remove_tree(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(CacheError::Remove { path, source }),
        }
    }
    Ok(removed)
}

/// Splits `out` into its parent (`.` for a bare name) and final component.
fn split_out(out: &Path) -> Result<(PathBuf, OsString), CacheError> {
    let bad = || CacheError::BadOutputPath {
        path: out.to_path_buf(),
    };
    let name = out.file_name().ok_or_else(bad)?.to_os_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => return Err(bad()),
    };
    Ok((parent, name))
}

fn sibling_name(name: &OsStr, tag: &str, pid: u32, n: u64) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!("{tag}{pid}-{n}"));
    s
}

/// The pid in `.<name>.supermin-{tmp,old}-<pid>-<n>`, if `entry` is exactly
/// such a name for this `name`.
fn debris_pid(name: &OsStr, entry: &OsStr) -> Option<u32> {
    let e = entry.as_bytes();
    let rest = e.strip_prefix(b".")?.strip_prefix(name.as_bytes())?;
    let rest = rest
        .strip_prefix(TMP_TAG.as_bytes())
        .or_else(|| rest.strip_prefix(OLD_TAG.as_bytes()))?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

enum DirLock {
    Held(File),
    Busy,
    Gone,
    Unsupported,
}

fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

fn try_lock_dir(path: &Path) -> DirLock {
    let file = match open_dir_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return DirLock::Gone,
        Err(_) => return DirLock::Unsupported,
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => DirLock::Held(file),
        Err(rustix::io::Errno::WOULDBLOCK) => DirLock::Busy,
        Err(_) => DirLock::Unsupported,
    }
}

/// Locks a directory this process just created. `Ok(None)` if a cleaner got
/// to it first (holds it, or already removed it).
fn lock_fresh_dir(path: &Path) -> io::Result<Option<Option<File>>> {
    let file = match open_dir_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
        // No locks on this filesystem: clean_debris falls back to pid and age.
        Err(_) => return Ok(Some(None)),
    }
    // A cleaner may have locked, emptied, removed and unlocked it between our
    // open and our lock: then we hold a deleted directory.
    let by_fd = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.ino() == by_fd.ino() && m.dev() == by_fd.dev() && by_fd.nlink() > 0 => {
            Ok(Some(Some(file)))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

fn rename_with(from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
    rustix::fs::renameat_with(CWD, from, CWD, to, flags).map_err(io::Error::from)
}

fn write_stamp(path: &Path, text: &str, sync: bool) -> Result<(), CacheError> {
    let err = |source| CacheError::WriteStamp {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    if sync {
        f.sync_all().map_err(err)?;
    }
    Ok(())
}

/// Makes every file and directory under `root` durable.
fn sync_tree(root: &Path) -> Result<(), CacheError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    collect(root, &mut files, &mut dirs).map_err(|source| CacheError::Sync {
        path: root.to_path_buf(),
        source,
    })?;
    if files.len() + dirs.len() > SYNC_EACH_LIMIT {
        let dir = File::open(root).map_err(|source| CacheError::Sync {
            path: root.to_path_buf(),
            source,
        })?;
        return rustix::fs::syncfs(&dir).map_err(|e| CacheError::Sync {
            path: root.to_path_buf(),
            source: e.into(),
        });
    }
    for path in files.iter().chain(dirs.iter()) {
        sync_path(path)?;
    }
    Ok(())
}

/// Regular files and directories under `root` (children before parents);
/// symlinks are made durable by their directory's fsync.
fn collect(root: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect(&entry.path(), files, dirs)?;
        } else if ft.is_file() {
            files.push(entry.path());
        }
    }
    dirs.push(root.to_path_buf());
    Ok(())
}

fn sync_path(path: &Path) -> Result<(), CacheError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| CacheError::Sync {
            path: path.to_path_buf(),
            source,
        })
}

/// Deletes a file, symlink or directory tree without following symlinks.
/// Directories without write permission (`-f chroot` outputs have them) are
/// made writable first, as supermin's `chmod -R +w` does.
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    // Entries were lstat'ed as real directories, and the tree is ours and
    // private, so set_permissions (which follows symlinks) meets no link.
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.mode() & 0o700 != 0o700 {
        fs::set_permissions(
            dir,
            fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o700),
        )?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debris_names_match_only_this_output() {
        let name = OsStr::new("appliance.d");
        assert_eq!(
            debris_pid(name, OsStr::new(".appliance.d.supermin-tmp-123-4")),
            Some(123)
        );
        assert_eq!(
            debris_pid(name, OsStr::new(".appliance.d.supermin-old-9-0")),
            Some(9)
        );
        for other in [
            "appliance.d",
            ".appliance.d",
            ".appliance.d.supermin-tmp-",
            ".appliance.d.supermin-tmp-12",
            ".appliance.d.supermin-tmp-12-",
            ".appliance.d.supermin-tmp-1x-2",
            ".appliance.d.supermin-tmp-1-2-3",
            ".appliance.dd.supermin-tmp-1-2",
            ".other.supermin-tmp-1-2",
            "appliance.d.abcdefgh",
            ".appliance.d.supermin-tmp-1-2.supermin-tmp-3-4",
        ] {
            assert_eq!(debris_pid(name, OsStr::new(other)), None, "{other}");
        }
    }

    #[test]
    fn sibling_names_parse_back_to_their_pid() {
        let name = OsStr::new("root");
        let s = sibling_name(name, TMP_TAG, 4242, 17);
        assert_eq!(s, OsStr::new(".root.supermin-tmp-4242-17"));
        assert_eq!(debris_pid(name, &s), Some(4242));
    }

    #[test]
    fn output_paths_without_a_final_name_are_refused() {
        for p in ["/", "..", "a/.."] {
            assert!(
                matches!(
                    split_out(Path::new(p)),
                    Err(CacheError::BadOutputPath { .. })
                ),
                "{p}"
            );
        }
        assert_eq!(
            split_out(Path::new("out")).unwrap(),
            (PathBuf::from("."), OsString::from("out"))
        );
        assert_eq!(
            split_out(Path::new("/var/tmp/appliance.d/")).unwrap(),
            (PathBuf::from("/var/tmp"), OsString::from("appliance.d"))
        );
    }

    #[test]
    fn the_current_process_is_alive_and_an_unused_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn remove_tree_clears_unwritable_directories_and_never_follows_links() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let tree = base.path().join("tree");
        fs::create_dir_all(tree.join("ro/sub")).unwrap();
        fs::write(tree.join("ro/sub/f"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        fs::set_permissions(tree.join("ro/sub"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
    }
}
