//! The chroot writer (`--build -f chroot`): the assembled [`Tree`] written out as a plain
//! directory, with owners, modes, times, hard links and device nodes as far as this user may
//! create them. Absolute symlinks are made relative, so that the tree is usable where it is
//! (outside a chroot `/usr/lib/x` would name the host's file, not the appliance's).
//!
//! Directories get their final modes and times last, deepest first: a read-only directory
//! must still accept its children, and writing a child changes its parent's mtime.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use supermin_ext2::{FileData, Meta, NodeId, NodeKind, Tree};

use supermin_hostfiles::sparse::copy_data;

/// Why a chroot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// A file or directory cannot be created.
    #[error("cannot create {path}")]
    Create {
        /// Which.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file cannot be copied into the chroot.
    #[error("cannot copy {from} to {to}")]
    Copy {
        /// The source.
        from: String,
        /// The destination.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ChrootError {
    /// The way out, where the message and its cause do not say it. None so far: each
    /// variant that has one says it in its message; this is where a new one goes.
    pub fn hint(&self) -> Option<String> {
        None
    }
}

/// What the writer could not reproduce exactly (e.g. device nodes as non-root).
#[derive(Debug, Default)]
pub struct ChrootReport {
    /// What was not reproduced exactly.
    pub warnings: Vec<String>,
}

fn create_err(path: &Path) -> impl FnOnce(io::Error) -> ChrootError + '_ {
    move |source| ChrootError::Create {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `tree` below `dest`, which must exist and be empty.
pub fn write_chroot(tree: &Tree, dest: &Path) -> Result<ChrootReport, ChrootError> {
    let mut report = ChrootReport::default();
    let is_root = rustix::process::geteuid().is_root();
    // The first name written of each node, for its hard links; nodes that could not be
    // created (device nodes as non-root, sockets) have all their names skipped.
    let mut first_name: HashMap<NodeId, PathBuf> = HashMap::new();
    let mut skipped: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
    let mut dirs: Vec<(PathBuf, Meta)> = Vec::new();
    for entry in tree.walk() {
        let rel = entry.path.strip_prefix(b"/").unwrap_or(&entry.path);
        let path = dest.join(std::ffi::OsStr::from_bytes(rel));
        let meta = *tree.meta(entry.id);
        let kind = tree.kind(entry.id);
        if entry.id == tree.root() {
            dirs.push((path, meta));
            continue;
        }
        let shown = String::from_utf8_lossy(&entry.path);
        if !kind.is_dir() {
            if skipped.contains(&entry.id) {
                report
                    .warnings
                    .push(format!("{shown}: another name of a skipped node; skipped"));
                continue;
            }
            if let Some(first) = first_name.get(&entry.id) {
                fs::hard_link(first, &path).map_err(create_err(&path))?;
                continue;
            }
        }
        match kind {
            NodeKind::Dir => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(create_err(&path))?;
                dirs.push((path, meta));
                continue;
            }
            NodeKind::File(data) => write_file(data, &path)?,
            NodeKind::Symlink(target) => {
                let target = relative_target(&entry.path, target);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(create_err(&path))?;
            }
            NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
                let ft = if matches!(kind, NodeKind::CharDev { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let dev = rustix::fs::makedev(*major, *minor);
                if let Err(e) = rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), dev)
                {
                    report.warnings.push(format!(
                        "cannot create device node {shown} ({major}:{minor}): {e}; skipped"
                    ));
                    skipped.insert(entry.id);
                    continue;
                }
            }
            NodeKind::Fifo => {
                rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| ChrootError::Create {
                        path: path.clone(),
                        source: e.into(),
                    })?;
            }
            NodeKind::Socket => {
                // A socket file is only a name; nothing listens on it in a copy.
                report.warnings.push(format!("socket {shown} not copied"));
                skipped.insert(entry.id);
                continue;
            }
        }
        apply_meta(&path, &meta, !matches!(kind, NodeKind::Symlink(_)), is_root)?;
        first_name.insert(entry.id, path);
    }
    for (path, meta) in dirs.iter().rev() {
        apply_meta(path, meta, true, is_root)?;
    }
    Ok(report)
}

fn write_file(data: &FileData, path: &Path) -> Result<(), ChrootError> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create_err(path))?;
    let copy_err = |from: String| {
        move |source| ChrootError::Copy {
            from,
            to: path.to_path_buf(),
            source,
        }
    };
    match data {
        FileData::Empty => {}
        FileData::Bytes(b) => out.write_all(b).map_err(copy_err("memory".into()))?,
        // Data runs only (copy_file_range between files), then the length: holes in the
        // source, such as a base image's sparse member, stay holes here.
        FileData::Host { path: src, len } => {
            let from = src.display().to_string();
            let f = File::open(src).map_err(copy_err(from.clone()))?;
            copy_data(&f, 0, *len, &out, 0).map_err(|e| copy_err(from.clone())(e.into_io()))?;
            out.set_len(*len).map_err(copy_err(from))?;
        }
        FileData::Range { file, offset, len } => {
            let from = "base image".to_string();
            copy_data(file, *offset, *len, &out, 0)
                .map_err(|e| copy_err(from.clone())(e.into_io()))?;
            out.set_len(*len).map_err(copy_err(from))?;
        }
    }
    Ok(())
}

fn apply_meta(path: &Path, meta: &Meta, chmod: bool, is_root: bool) -> Result<(), ChrootError> {
    let err = |e: rustix::io::Errno| ChrootError::Create {
        path: path.to_path_buf(),
        source: e.into(),
    };
    if is_root {
        rustix::fs::chownat(
            CWD,
            path,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(err)?;
    }
    if chmod {
        // After chown: chown clears setuid/setgid.
        rustix::fs::chmodat(
            CWD,
            path,
            Mode::from_raw_mode(meta.mode as u32),
            AtFlags::empty(),
        )
        .map_err(err)?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime.secs,
            tv_nsec: meta.atime.nsec as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime.secs,
            tv_nsec: meta.mtime.nsec as _,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
    Ok(())
}

/// `target` of a symlink at `link` (both absolute in the tree), relative if it was absolute:
/// `/usr/bin/foo -> /etc/alternatives/foo` becomes `../../etc/alternatives/foo`.
pub fn relative_target(link: &[u8], target: &[u8]) -> Vec<u8> {
    if target.first() != Some(&b'/') {
        return target.to_vec();
    }
    let parent: Vec<&[u8]> = {
        let mut c: Vec<&[u8]> = link
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        c.pop();
        c
    };
    let tgt: Vec<&[u8]> = target
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let common = parent
        .iter()
        .zip(tgt.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out: Vec<u8> = Vec::new();
    for _ in common..parent.len() {
        out.extend_from_slice(b"../");
    }
    for (i, c) in tgt[common..].iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'.');
    } else if out.ends_with(b"/") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_links_become_relative() {
        assert_eq!(
            relative_target(b"/usr/bin/foo", b"/etc/alternatives/foo"),
            b"../../etc/alternatives/foo"
        );
        assert_eq!(relative_target(b"/lib", b"/usr/lib"), b"usr/lib");
        assert_eq!(relative_target(b"/usr/lib/a", b"/usr/lib/b"), b"b");
        assert_eq!(relative_target(b"/a/b", b"/a"), b".");
        assert_eq!(relative_target(b"/x", b"/"), b".");
    }

    #[test]
    fn relative_links_are_kept() {
        assert_eq!(relative_target(b"/lib", b"usr/lib"), b"usr/lib");
    }
}
