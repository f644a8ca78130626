//! Saved machines: after the first cold boot of an appliance, with its
//! daemon up and idle, the machine is saved into the runtime cache; later
//! runs restore it instead of booting (a fraction of a second against
//! seconds under TCG).
//!
//! A saved machine is a directory named by its [`Key`] holding `state` (a
//! qemu migration stream with the `mapped-ram` capability: RAM pages at fixed
//! offsets in a sparse file, so neither saving nor restoring copies the
//! guest's empty memory), `overlay.qcow2` (the root's writes up to the save,
//! which the saved page cache expects to find) and `info` (the daemon's
//! hello text). It is written in a private temporary directory and renamed
//! into place whole; a restore copies the overlay and reads `state` through a
//! read-only descriptor, so any number of runs restore one saved machine at
//! once, and a saved machine is never changed, only replaced.
//!
//! The key covers everything that shapes the saved machine: this launcher
//! and its protocol, the qemu binary and its version, the whole qemu command
//! line (accelerator, machine, CPU model, memory, CPUs, every device, the
//! kernel command line) and the identity of the kernel, initrd and root
//! files. Anything else is another key: a cold boot, and a new saved machine.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use supermin_cache::current_boot_id as boot_id;

use super::qemu::{self, Plan};

/// Saved machines kept per user; older ones are removed when a new one is saved.
const KEEP: usize = 4;

/// Names one saved machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key of the machine `plan` describes (with an overlay root and a
/// monitor, as saved machines are booted).
pub fn key(plan: &Plan) -> io::Result<Key> {
    let mut h = Sha256::new();
    h.update(b"supermin-rs saved machine 1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(supermin_protocol::PROTOCOL_VERSION.to_be_bytes());
    h.update(plan.qemu.identity.as_bytes());
    h.update(b"\0");
    h.update(plan.qemu.version.as_bytes());
    h.update(b"\0");
    // The command line with what differs from run to run (descriptors, the
    // scratch directory) held fixed.
    let shape = Plan {
        root_overlay: Some(PathBuf::from("OVERLAY")),
        qmp: true,
        incoming: false,
        never_saved: false,
        fdsets: Vec::new(),
        ..plan.clone()
    };
    for arg in qemu::args(&shape, 0, Some(0)) {
        h.update(arg.as_bytes());
        h.update(b"\0");
    }
    for file in [&plan.kernel, &plan.initrd, &plan.root] {
        let m = fs::metadata(file)?;
        h.update(file.as_os_str().as_bytes());
        for n in [m.dev(), m.ino(), m.size()] {
            h.update(n.to_be_bytes());
        }
        h.update(m.mtime().to_be_bytes());
        h.update(m.mtime_nsec().to_be_bytes());
        // An in-place rewrite that keeps the inode and the mtime still moves ctime.
        h.update(m.ctime().to_be_bytes());
        h.update(m.ctime_nsec().to_be_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Key(hex[..32].to_string()))
}

/// One saved machine, as `supermin cache` shows it.
#[derive(Debug, Clone)]
pub struct SavedInfo {
    /// Its directory.
    pub dir: PathBuf,
    /// Blocks on disk (the state file is sparse).
    pub bytes: u64,
    /// When it was saved or last restored.
    pub last_used: Option<std::time::SystemTime>,
}

/// The saved machines in the store `dir` (none when it does not exist).
pub fn list_saved(dir: &Path) -> Vec<SavedInfo> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let hidden = e.file_name().as_bytes().first() == Some(&b'.');
        if hidden || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let bytes = fs::read_dir(&path)
            .map(|files| {
                files
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        let last_used = fs::metadata(&path).and_then(|m| m.modified()).ok();
        out.push(SavedInfo {
            dir: path,
            bytes,
            last_used,
        });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// Removes a saved machine: renamed aside first, so a run looking for it
/// finds it whole or not at all (a run restoring it holds what it needs open).
pub fn remove_saved(dir: &Path) -> io::Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut aside = OsStr::new(".discard-").to_os_string();
    aside.push(std::process::id().to_string());
    aside.push("-");
    aside.push(name);
    let doomed = dir.with_file_name(aside);
    fs::rename(dir, &doomed)?;
    fs::remove_dir_all(&doomed)
}

/// This user's saved machines.
pub struct Store {
    dir: PathBuf,
}

/// A saved machine found in the store.
pub struct Saved {
    pub dir: PathBuf,
}

impl Saved {
    /// Opens its state and its overlay through one handle on its directory,
    /// so that both come from the same saved machine even if another run
    /// replaces it meanwhile.
    pub fn open(&self) -> io::Result<(fs::File, fs::File)> {
        use rustix::fs::{openat, Mode, OFlags};
        let dir = fs::File::open(&self.dir)?;
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let state = openat(&dir, "state", flags, Mode::empty())?;
        let overlay = openat(&dir, "overlay.qcow2", flags, Mode::empty())?;
        Ok((fs::File::from(state), fs::File::from(overlay)))
    }

    /// Records a use (its directory's time), for `supermin cache gc --older-than`.
    pub fn mark_used(&self) {
        let _ =
            fs::File::open(&self.dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
    }

    /// The daemon's hello text, saved with the machine.
    pub fn info(&self) -> String {
        let mut bytes = Vec::new();
        let _ = fs::File::open(self.dir.join("info"))
            .and_then(|f| f.take(1024).read_to_end(&mut bytes));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Store {
    /// The store in `dir`, created private (0700) if missing; refused when
    /// it is not a directory of ours.
    pub fn open(dir: &Path) -> io::Result<Store> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let m = fs::symlink_metadata(dir)?;
        let uid = rustix::process::geteuid().as_raw();
        if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a private directory of this user (mode 0700)",
                    dir.display()
                ),
            ));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The saved machine for `key`, if a whole one is there. Saved machines
    /// are not synced to disk (a cold boot remakes them): one written in an
    /// earlier boot of the host may have lost data to a power cut, so it is
    /// discarded, not restored.
    pub fn find(&self, key: &Key) -> Option<Saved> {
        let dir = self.dir.join(key.as_str());
        let whole = ["state", "overlay.qcow2", "info", "boot_id"]
            .iter()
            .all(|f| fs::symlink_metadata(dir.join(f)).is_ok_and(|m| m.is_file()));
        if !whole {
            return None;
        }
        let written_in = fs::read_to_string(dir.join("boot_id")).unwrap_or_default();
        if boot_id().is_none_or(|now| now != written_in.trim()) {
            self.discard(key);
            return None;
        }
        Some(Saved { dir })
    }

    /// Removes the saved machine for `key` (it failed to restore).
    pub fn discard(&self, key: &Key) {
        let dir = self.dir.join(key.as_str());
        let doomed = self
            .dir
            .join(format!(".discard-{}-{}", std::process::id(), key.as_str()));
        if fs::rename(&dir, &doomed).is_ok() {
            let _ = fs::remove_dir_all(&doomed);
        }
    }

    /// A private directory to write a new saved machine in.
    pub fn begin(&self) -> io::Result<Pending> {
        let dir = self.dir.join(format!(
            ".new-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Pending {
            dir,
            committed: false,
        })
    }

    /// Keeps the newest [`KEEP`] saved machines, and sweeps debris of
    /// writers that died.
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut saved = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Ok(meta) = e.metadata() else { continue };
            if let Some(rest) = name.to_str().and_then(|n| {
                n.strip_prefix(".new-")
                    .or_else(|| n.strip_prefix(".discard-"))
            }) {
                let alive = rest
                    .split('-')
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = fs::remove_dir_all(e.path());
                }
                continue;
            }
            if meta.is_dir() {
                saved.push((meta.mtime(), e.path()));
            }
        }
        saved.sort();
        let excess = saved.len().saturating_sub(KEEP);
        for (_, dir) in saved.into_iter().take(excess) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A saved machine being written; removed unless committed.
pub struct Pending {
    dir: PathBuf,
    committed: bool,
}

impl Pending {
    /// Creates the state file, write-only (as qemu opens a migration file),
    /// for qemu to fill through an inherited descriptor.
    pub fn state_file(&self) -> io::Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join("state"))
    }

    /// Copies the root's overlay, as it is while the machine is stopped.
    pub fn keep_overlay(&self, overlay: &Path) -> io::Result<()> {
        copy_private(overlay, &self.dir.join("overlay.qcow2"))
    }

    /// Publishes it under `key` (unless another run did first), then prunes.
    pub fn commit(mut self, store: &Store, key: &Key, info: &str) -> io::Result<()> {
        for (name, text) in [
            ("info", info.to_string()),
            ("boot_id", boot_id().unwrap_or_default()),
        ] {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(name))?
                .write_all(text.as_bytes())?;
        }
        let dest = store.dir.join(key.as_str());
        match fs::rename(&self.dir, &dest) {
            Ok(()) => self.committed = true,
            // Another run saved the same machine first: keep theirs.
            Err(e) if dest.is_dir() => drop(e),
            Err(e) => return Err(e),
        }
        store.prune();
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Copies `from` to a new private (0600) file `to`, holes and all (the
/// kernel's copy_file_range keeps sparse runs cheap).
pub fn copy_private(from: &Path, to: &Path) -> io::Result<()> {
    copy_private_from(&mut fs::File::open(from)?, to)
}

/// [`copy_private`] from an open file.
pub fn copy_private_from(src: &mut fs::File, to: &Path) -> io::Result<()> {
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    io::copy(src, &mut dst)?;
    Ok(())
}

/// Makes an empty qcow2 overlay of `size` bytes (the root's) at `path`, with
/// `qemu-img` from beside `qemu` (or `PATH`).
pub fn create_overlay(
    qemu: &Path,
    path_var: Option<&OsStr>,
    path: &Path,
    size: u64,
) -> io::Result<()> {
    let beside = qemu.with_file_name("qemu-img");
    let program = if beside.is_file() {
        beside
    } else {
        std::env::split_paths(path_var.unwrap_or(OsStr::new("/usr/bin:/bin")))
            .map(|d| d.join("qemu-img"))
            .find(|p| p.is_file())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "qemu-img not found"))?
    };
    // The backing file is named when the overlay is opened, never written
    // into this header.
    let out = std::process::Command::new(program)
        .args(["create", "-q", "-f", "qcow2", "-o", "compat=1.1"])
        .arg(path)
        .arg(size.to_string())
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Host entropy for a restored guest.
pub fn host_entropy() -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}
