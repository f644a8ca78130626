//! Assembling the appliance root as one [`Tree`]: the base images first, then the resolved
//! host files, then `/packagelist` and the kernel's modules tree, in that order, later
//! entries replacing earlier ones (supermin 5's order). Both output formats (the ext2 image
//! and the chroot directory) are written from this one tree, so they cannot disagree.
//!
//! Nothing here copies file contents: regular files are references (a host path, or a byte
//! range of a decompressed base image), read once when the output is written.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use supermin_ext2::{FileData, Meta, NodeId, NodeKind, Timestamp, Tree, TreeError};
use supermin_hostfiles::{BaseImage, FileKind, FileSet, HostFile};

/// Why assembling failed.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("cannot read base image {path}")]
    BaseImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base image {path} is not a valid tar archive")]
    BaseImageFormat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base image {image}: unsafe entry")]
    UnsafeEntry {
        image: PathBuf,
        #[source]
        source: supermin_hostfiles::HostfilesError,
    },
    #[error(
        "base image {image} is truncated: member {member} runs past its end; rebuild or re-download it"
    )]
    Truncated { image: PathBuf, member: String },
    #[error(
        "base image {image}: hard link {path} points at {target}, which is not in the archive"
    )]
    DanglingHardLink {
        image: PathBuf,
        path: String,
        target: String,
    },
    #[error("cannot place {path} in the appliance tree")]
    Tree {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("cannot read the modules directory {path}")]
    Modules {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make a scratch file in {dir} for a decompressed base image")]
    Scratch {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The metadata of directories the tree needs but no input describes (root-owned, 0755).
pub fn default_dir_meta(time: i64) -> Meta {
    let t = Timestamp::new(time, 0);
    Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// Builds the tree step by step; `warnings` collects what the user should hear about.
pub struct Assembler {
    tree: Tree,
    time: i64,
    pub warnings: Vec<String>,
}

fn tree_err(path: &[u8], source: TreeError) -> AssembleError {
    AssembleError::Tree {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

fn ts((secs, nsec): (i64, u32)) -> Timestamp {
    Timestamp::new(secs, nsec)
}

fn split_dev(rdev: u64) -> (u32, u32) {
    // glibc's gnu_dev_major/minor encoding.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

impl Assembler {
    /// `time` stamps directories that no input describes.
    pub fn new(time: i64) -> Assembler {
        Assembler {
            tree: Tree::new(default_dir_meta(time)),
            time,
            warnings: Vec::new(),
        }
    }

    pub fn finish(self) -> Tree {
        self.tree
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    fn insert(&mut self, path: &[u8], kind: NodeKind, meta: Meta) -> Result<NodeId, AssembleError> {
        let path = self.resolve_parent(path);
        let dir_meta = default_dir_meta(self.time);
        self.tree
            .ensure_parents(&path, dir_meta)
            .map_err(|e| tree_err(&path, e))?;
        self.tree
            .insert(&path, kind, meta)
            .map_err(|e| tree_err(&path, e))
    }

    /// The path with every symlink among its parent components resolved inside the tree, so
    /// that `/lib/modules/V` lands in `/usr/lib/modules/V` when `/lib -> usr/lib`. Walks the
    /// tree node by node; below a missing component nothing is looked up (the insert creates
    /// the rest as directories).
    pub fn resolve_parent(&self, path: &[u8]) -> Vec<u8> {
        let mut pending: VecDeque<Vec<u8>> = components(path).map(<[u8]>::to_vec).collect();
        let Some(last) = pending.pop_back() else {
            return b"/".to_vec();
        };
        // Each resolved component with its node (`None` once below something missing).
        let mut resolved: Vec<(Vec<u8>, Option<NodeId>)> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            match c.as_slice() {
                b"." => continue,
                b".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let dir = resolved
                .last()
                .map_or(Some(self.tree.root()), |(_, id)| *id);
            let child = dir.and_then(|d| self.tree.child(d, &c));
            if let Some(NodeKind::Symlink(target)) = child.map(|id| self.tree.kind(id)) {
                // ld.so and the kernel give up after 40 links; a loop is left as it is
                // for the insert to report.
                hops += 1;
                if hops <= 40 {
                    if target.first() == Some(&b'/') {
                        resolved.clear();
                    }
                    for t in components(target).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(t.to_vec());
                    }
                    continue;
                }
            }
            resolved.push((c, child));
        }
        let mut out = Vec::with_capacity(path.len());
        for (c, _) in &resolved {
            out.push(b'/');
            out.extend_from_slice(c);
        }
        out.push(b'/');
        out.extend_from_slice(&last);
        out
    }

    /// Overlays one base image (a tar archive), given as the seekable view
    /// [`open_base_image`] made of it. Members are referenced where they lie in that view;
    /// a GNU sparse member is expanded into its own scratch file in `scratch_dir`.
    pub fn add_base_image(
        &mut self,
        img: &BaseImage,
        file: File,
        scratch_dir: &Path,
    ) -> Result<usize, AssembleError> {
        let archive_len = file
            .metadata()
            .map_err(|source| AssembleError::BaseImage {
                path: img.path.clone(),
                source,
            })?
            .len();
        let file = Arc::new(file);
        let mut archive = tar::Archive::new(&*file);
        let mut guard = supermin_hostfiles::BaseImageGuard::new(std::iter::empty::<&Path>());
        let mut by_name: HashMap<PathBuf, NodeId> = HashMap::new();
        let mut count = 0;
        let format_err = |source| AssembleError::BaseImageFormat {
            path: img.path.clone(),
            source,
        };
        for entry in archive.entries_with_seek().map_err(format_err)? {
            let entry = entry.map_err(format_err)?;
            let header = entry.header();
            let raw_path = entry.path().map_err(format_err)?.into_owned();
            let etype = header.entry_type();
            let rel = guard
                .check(&raw_path, etype.is_symlink())
                .map_err(|source| AssembleError::UnsafeEntry {
                    image: img.path.clone(),
                    source,
                })?;
            if rel.as_os_str().is_empty() {
                continue; // "./" itself: the root keeps its own metadata
            }
            let abs = Path::new("/").join(&rel);
            let path = abs.as_os_str().as_bytes();
            let mtime = header.mtime().unwrap_or(0) as i64;
            let t = Timestamp::new(mtime, 0);
            let meta = Meta {
                mode: (header.mode().unwrap_or(0o644) & 0o7777) as u16,
                uid: header.uid().unwrap_or(0) as u32,
                gid: header.gid().unwrap_or(0) as u32,
                atime: t,
                mtime: t,
                ctime: t,
            };
            let kind = match etype {
                tar::EntryType::Directory => NodeKind::Dir,
                tar::EntryType::GNUSparse => {
                    // The archive holds only the data regions; the tar reader expands them.
                    let mut entry = entry;
                    let mut scratch =
                        scratch_file(scratch_dir).map_err(|source| AssembleError::Scratch {
                            dir: scratch_dir.to_path_buf(),
                            source,
                        })?;
                    let len = io::copy(&mut entry, &mut scratch).map_err(format_err)?;
                    self.warnings.push(format!(
                        "base image {}: sparse member {} is stored with its holes filled",
                        img.path.display(),
                        abs.display()
                    ));
                    NodeKind::File(FileData::Range {
                        file: Arc::new(scratch),
                        offset: 0,
                        len,
                    })
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let (offset, len) = (entry.raw_file_position(), entry.size());
                    // Members are read later, in place: a cut archive must fail now, not
                    // leave zeros where its bytes should be.
                    if offset.saturating_add(len) > archive_len {
                        return Err(AssembleError::Truncated {
                            image: img.path.clone(),
                            member: abs.display().to_string(),
                        });
                    }
                    if len == 0 {
                        NodeKind::File(FileData::Empty)
                    } else {
                        NodeKind::File(FileData::Range {
                            file: Arc::clone(&file),
                            offset,
                            len,
                        })
                    }
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| b.into_owned())
                        .unwrap_or_default();
                    NodeKind::Symlink(target)
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(format_err)?
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    // Only a lookup: the target's own entry already passed the guard.
                    let target_rel =
                        supermin_hostfiles::safe_tar_path(&target).map_err(|source| {
                            AssembleError::UnsafeEntry {
                                image: img.path.clone(),
                                source,
                            }
                        })?;
                    let Some(&id) = by_name.get(&target_rel) else {
                        return Err(AssembleError::DanglingHardLink {
                            image: img.path.clone(),
                            path: abs.display().to_string(),
                            target: target.display().to_string(),
                        });
                    };
                    let p = self.resolve_parent(path);
                    self.tree.link(&p, id).map_err(|e| tree_err(&p, e))?;
                    count += 1;
                    continue;
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    if etype == tar::EntryType::Char {
                        NodeKind::CharDev { major, minor }
                    } else {
                        NodeKind::BlockDev { major, minor }
                    }
                }
                tar::EntryType::Fifo => NodeKind::Fifo,
                // pax headers and long names are consumed by the tar crate; anything else
                // (e.g. a volume label) has no place in a filesystem.
                _ => continue,
            };
            let id = self.insert(path, kind, meta)?;
            by_name.insert(rel, id);
            count += 1;
        }
        Ok(count)
    }

    /// Adds the resolved host files. Hard-linked host files stay one inode; unreadable files
    /// become empty files with a warning (supermin's behaviour), never a silent change.
    pub fn add_file_set(&mut self, set: &FileSet) -> Result<(), AssembleError> {
        let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
        for f in &set.files {
            let host_path = host_path(&set.root, &f.path);
            let path = f.path.as_os_str().as_bytes();
            if f.kind != FileKind::Dir && f.nlink > 1 {
                if let Some(&id) = links.get(&(f.dev, f.ino)) {
                    let p = self.resolve_parent(path);
                    if self.tree.link(&p, id).is_ok() {
                        continue;
                    }
                }
            }
            let kind = match self.host_kind(f, &host_path) {
                Some(k) => k,
                None => continue,
            };
            let id = self.insert(path, kind, host_meta(f))?;
            if f.kind != FileKind::Dir && f.nlink > 1 {
                links.insert((f.dev, f.ino), id);
            }
        }
        Ok(())
    }

    fn host_kind(&mut self, f: &HostFile, host_path: &Path) -> Option<NodeKind> {
        Some(match f.kind {
            FileKind::Dir => NodeKind::Dir,
            FileKind::Regular => {
                if f.size == 0 {
                    NodeKind::File(FileData::Empty)
                } else if !readable(f, host_path) {
                    self.warnings.push(format!(
                        "{} is not readable by this user: the appliance gets an empty file",
                        host_path.display()
                    ));
                    NodeKind::File(FileData::Empty)
                } else {
                    NodeKind::File(FileData::Host {
                        path: host_path.to_path_buf(),
                        len: f.size,
                    })
                }
            }
            FileKind::Symlink => {
                let target = match &f.link_target {
                    Some(t) => t.as_os_str().as_bytes().to_vec(),
                    None => match std::fs::read_link(host_path) {
                        Ok(t) => t.as_os_str().as_bytes().to_vec(),
                        Err(_) => return None, // vanished since it was resolved
                    },
                };
                if target.is_empty() {
                    return None;
                }
                NodeKind::Symlink(target)
            }
            FileKind::CharDev | FileKind::BlockDev => {
                let (major, minor) = split_dev(f.rdev);
                if f.kind == FileKind::CharDev {
                    NodeKind::CharDev { major, minor }
                } else {
                    NodeKind::BlockDev { major, minor }
                }
            }
            FileKind::Fifo => NodeKind::Fifo,
            FileKind::Socket => NodeKind::Socket,
        })
    }

    /// `/packagelist` for `--include-packagelist`: root-owned, 0644, one package a line.
    pub fn add_packagelist(&mut self, packages: &[String]) -> Result<(), AssembleError> {
        let mut text = String::new();
        for p in packages {
            text.push_str(p);
            text.push('\n');
        }
        let t = Timestamp::new(self.time, 0);
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime: t,
            mtime: t,
            ctime: t,
        };
        let data = if text.is_empty() {
            FileData::Empty
        } else {
            FileData::Bytes(Arc::from(text.into_bytes()))
        };
        self.insert(b"/packagelist", NodeKind::File(data), meta)?;
        Ok(())
    }

    /// A generated file (e.g. the embedded default appliance's `/init`).
    pub fn add_bytes(&mut self, path: &[u8], bytes: &[u8], mode: u16) -> Result<(), AssembleError> {
        let t = Timestamp::new(self.time, 0);
        let meta = Meta {
            mode,
            uid: 0,
            gid: 0,
            atime: t,
            mtime: t,
            ctime: t,
        };
        self.insert(
            path,
            NodeKind::File(FileData::Bytes(Arc::from(bytes.to_vec()))),
            meta,
        )?;
        Ok(())
    }

    /// A directory no input describes (a mount point, say), root-owned.
    pub fn add_dir(&mut self, path: &[u8], mode: u16) -> Result<(), AssembleError> {
        let meta = Meta {
            mode,
            ..default_dir_meta(self.time)
        };
        self.insert(path, NodeKind::Dir, meta)?;
        Ok(())
    }

    /// A symlink no input describes.
    pub fn add_symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), AssembleError> {
        let meta = Meta {
            mode: 0o777,
            ..default_dir_meta(self.time)
        };
        self.insert(path, NodeKind::Symlink(target.to_vec()), meta)?;
        Ok(())
    }

    /// The kernel's whole modules tree at `/lib/modules/VERSION` (through the tree's own
    /// `/lib` symlink on merged-/usr systems), so that the appliance can modprobe.
    pub fn add_modules(
        &mut self,
        modules_dir: &Path,
        version: &str,
    ) -> Result<usize, AssembleError> {
        // Resolve `/lib/modules/VERSION` through the tree's symlinks once; below it the walk
        // yields every directory before its entries, so each insert finds its parent.
        let dest_root = self.resolve_parent(format!("/lib/modules/{version}").as_bytes());
        let mut count = 0;
        let walk_err = |e: walkdir::Error| AssembleError::Modules {
            path: e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| modules_dir.to_path_buf()),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("filesystem loop")),
        };
        let mut dest = Vec::with_capacity(256);
        for entry in walkdir::WalkDir::new(modules_dir)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(walk_err)?;
            let rel = entry
                .path()
                .strip_prefix(modules_dir)
                .unwrap_or(Path::new(""));
            dest.clear();
            dest.extend_from_slice(&dest_root);
            if !rel.as_os_str().is_empty() {
                dest.push(b'/');
                dest.extend_from_slice(rel.as_os_str().as_bytes());
            }
            let md = entry.metadata().map_err(walk_err)?;
            let f = HostFile::from_meta(entry.path().to_path_buf(), &md, None);
            let Some(kind) = self.host_kind(&f, entry.path()) else {
                continue;
            };
            if count == 0 {
                // The top directory: its parents may be missing (no /lib/modules yet).
                self.insert(&dest, kind, host_meta(&f))?;
            } else {
                self.tree
                    .insert(&dest, kind, host_meta(&f))
                    .map_err(|e| tree_err(&dest, e))?;
            }
            count += 1;
        }
        Ok(count)
    }
}

/// Whether this process can read the file. The mode bits answer without a syscall for the
/// common cases (root, or bits that allow it); only a "no" is confirmed by opening, since
/// supplementary groups and ACLs can still grant access.
fn readable(f: &HostFile, host_path: &Path) -> bool {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return true;
    }
    let bits = if f.uid == euid.as_raw() {
        f.mode & 0o400
    } else if f.gid == rustix::process::getegid().as_raw() {
        f.mode & 0o040
    } else {
        f.mode & 0o004
    };
    bits != 0 || File::open(host_path).is_ok()
}

/// A seekable, uncompressed view of a base image: the file itself, or an unlinked
/// scratch copy in `scratch_dir` of its decompressed bytes (never a directory of extracted
/// files). Needs no assembler, so it can run while the file set is being resolved.
pub fn open_base_image(img: &BaseImage, scratch_dir: &Path) -> Result<File, AssembleError> {
    let io_err = |source| AssembleError::BaseImage {
        path: img.path.clone(),
        source,
    };
    if img.compression == supermin_hostfiles::Compression::None {
        return File::open(&img.path).map_err(io_err);
    }
    let mut reader =
        supermin_hostfiles::open_base_image(img).map_err(|e| AssembleError::BaseImage {
            path: img.path.clone(),
            source: io::Error::other(e),
        })?;
    let mut scratch = scratch_file(scratch_dir).map_err(|source| AssembleError::Scratch {
        dir: scratch_dir.to_path_buf(),
        source,
    })?;
    io::copy(&mut reader, &mut scratch).map_err(io_err)?;
    scratch.seek(SeekFrom::Start(0)).map_err(io_err)?;
    Ok(scratch)
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn host_path(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") {
        path.to_path_buf()
    } else {
        root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

fn host_meta(f: &HostFile) -> Meta {
    Meta {
        mode: (f.mode & 0o7777) as u16,
        uid: f.uid,
        gid: f.gid,
        atime: ts(f.atime),
        mtime: ts(f.mtime),
        ctime: ts(f.ctime),
    }
}

/// An anonymous file in `dir`: created and unlinked at once, so nothing is left behind
/// whatever happens to this process.
fn scratch_file(dir: &Path) -> io::Result<File> {
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    );
    match fd {
        Ok(fd) => Ok(File::from(fd)),
        // O_TMPFILE is not supported everywhere (e.g. some network filesystems).
        Err(_) => {
            let name = dir.join(format!(
                ".supermin-scratch-{}-{}",
                std::process::id(),
                SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&name)?;
            std::fs::remove_file(&name)?;
            Ok(f)
        }
    }
}

static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_like_glibc() {
        // makedev(510, 70000)
        let (ma, mi) = (510u64, 70000u64);
        let rdev = ((ma & 0xfffff000) << 32)
            | ((ma & 0xfff) << 8)
            | ((mi & 0xffffff00) << 12)
            | (mi & 0xff);
        assert_eq!(split_dev(rdev), (510, 70000));
        assert_eq!(split_dev((8 << 8) | 1), (8, 1));
    }

    #[test]
    fn parents_resolve_through_tree_symlinks() {
        let mut a = Assembler::new(0);
        let m = default_dir_meta(0);
        a.insert(b"/usr", NodeKind::Dir, m).unwrap();
        a.insert(b"/usr/lib", NodeKind::Dir, m).unwrap();
        a.insert(b"/lib", NodeKind::Symlink(b"usr/lib".to_vec()), m)
            .unwrap();
        assert_eq!(
            a.resolve_parent(b"/lib/modules/6.1"),
            b"/usr/lib/modules/6.1"
        );
        a.insert(b"/lib/modules/6.1", NodeKind::Dir, m).unwrap();
        assert!(a.tree().lookup(b"/usr/lib/modules/6.1").is_some());
        // An absolute link resolves from the root.
        a.insert(b"/bin", NodeKind::Symlink(b"/usr/bin".to_vec()), m)
            .unwrap();
        assert_eq!(a.resolve_parent(b"/bin/ls"), b"/usr/bin/ls");
    }

    #[test]
    fn relative_links_resolve_from_their_own_directory() {
        let mut a = Assembler::new(0);
        let m = default_dir_meta(0);
        a.insert(b"/usr/lib", NodeKind::Dir, m).unwrap();
        a.insert(b"/usr/lib64", NodeKind::Symlink(b"lib".to_vec()), m)
            .unwrap();
        assert_eq!(a.resolve_parent(b"/usr/lib64/ld.so"), b"/usr/lib/ld.so");
        a.insert(b"/a/b", NodeKind::Symlink(b"../c/./d".to_vec()), m)
            .unwrap();
        assert_eq!(a.resolve_parent(b"/a/b/x"), b"/c/d/x");
        // Below a missing directory nothing is resolved, and nothing panics.
        assert_eq!(a.resolve_parent(b"/no/such/x"), b"/no/such/x");
    }

    #[test]
    fn symlink_loops_do_not_hang() {
        let mut a = Assembler::new(0);
        let m = default_dir_meta(0);
        a.insert(b"/a", NodeKind::Symlink(b"b".to_vec()), m)
            .unwrap();
        a.insert(b"/b", NodeKind::Symlink(b"a".to_vec()), m)
            .unwrap();
        let _ = a.resolve_parent(b"/a/x");
    }
}
