//! Assembling the appliance root as one [`Tree`]: the base images first, then the resolved
//! host files, then `/packagelist` and the kernel's modules tree, in that order, later
//! entries replacing earlier ones (supermin 5's order). Both output formats (the ext2 image
//! and the chroot directory) are written from this one tree, so they cannot disagree.
//!
//! Nothing here copies file contents: regular files are references (a host path, or a byte
//! range of a decompressed base image or of a sparse member's scratch file, which
//! `supermin-hostfiles` makes and walks), read once when the output is written.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use supermin_ext2::{FileData, Meta, NodeId, NodeKind, Timestamp, Tree, TreeError};
use supermin_hostfiles::{
    BaseEntryKind, BaseImage, FileKind, FileSet, HostFile, HostfilesError, InputBudget,
};

/// Why assembling failed.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A base image could not be read or walked (what, where and why are in the error).
    #[error(transparent)]
    BaseImage(#[from] HostfilesError),
    /// An entry has no place in the tree.
    #[error("cannot place {path} in the appliance tree")]
    Tree {
        /// The entry's path in the appliance.
        path: String,
        /// Why.
        #[source]
        source: TreeError,
    },
    /// The kernel's modules directory could not be read.
    #[error("cannot read the modules directory {path}")]
    Modules {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl AssembleError {
    /// The way out, where the message and its cause do not say it: only what a wrapped
    /// [`HostfilesError`] knows (each variant of ours says its own in its message).
    pub fn hint(&self) -> Option<String> {
        match self {
            AssembleError::BaseImage(e) => e.hint(),
            _ => None,
        }
    }
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
    /// What the user should hear about, so far.
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
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    // Both are masked to 32 bits just above, as glibc's unsigned int results.
    #[allow(clippy::cast_possible_truncation)]
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

    /// The assembled tree.
    pub fn finish(self) -> Tree {
        self.tree
    }

    /// The tree so far.
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
    /// [`supermin_hostfiles::open_base_image`] made of it, walked by
    /// [`supermin_hostfiles::read_base_image`]: each member lands at its path, parents
    /// resolved through the tree's symlinks, later members replacing earlier ones.
    pub fn add_base_image(
        &mut self,
        img: &BaseImage,
        view: File,
        scratch_dir: &Path,
        budget: &InputBudget,
    ) -> Result<usize, AssembleError> {
        let mut by_name: HashMap<PathBuf, NodeId> = HashMap::new();
        supermin_hostfiles::read_base_image(img, view, scratch_dir, budget, |entry| {
            let abs = Path::new("/").join(&entry.path);
            let path = abs.as_os_str().as_bytes();
            let t = Timestamp::new(entry.mtime, 0);
            let meta = Meta {
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                atime: t,
                mtime: t,
                ctime: t,
            };
            let kind = match entry.kind {
                BaseEntryKind::Dir => NodeKind::Dir,
                BaseEntryKind::File { len: 0, .. } => NodeKind::File(FileData::Empty),
                BaseEntryKind::File { file, offset, len } => {
                    NodeKind::File(FileData::Range { file, offset, len })
                }
                BaseEntryKind::Symlink(target) => NodeKind::Symlink(target),
                BaseEntryKind::HardLink(target) => {
                    // The walk checked that the target came before.
                    let Some(&id) = by_name.get(&target) else {
                        return Err(AssembleError::BaseImage(HostfilesError::DanglingHardLink {
                            image: img.path.clone(),
                            path: abs.display().to_string(),
                            target: target.display().to_string(),
                        }));
                    };
                    let p = self.resolve_parent(path);
                    self.tree.link(&p, id).map_err(|e| tree_err(&p, e))?;
                    return Ok(());
                }
                BaseEntryKind::CharDev { major, minor } => NodeKind::CharDev { major, minor },
                BaseEntryKind::BlockDev { major, minor } => NodeKind::BlockDev { major, minor },
                BaseEntryKind::Fifo => NodeKind::Fifo,
            };
            let id = self.insert(path, kind, meta)?;
            by_name.insert(entry.path, id);
            Ok(())
        })
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

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    // What the walk (supermin-hostfiles, tested there) hands over lands in the tree: a
    // hard link shares its target's inode, a member below a tree symlink follows it.
    #[test]
    fn base_image_members_land_in_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o640);
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, "lib/a", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "lib/b", "lib/a").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, "etc/empty", &[][..]).unwrap();
        let path = d.path().join("base.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        let img = BaseImage {
            path,
            compression: None,
        };
        let budget = InputBudget::default();
        let mut a = Assembler::new(0);
        a.add_dir(b"/usr/lib", 0o755).unwrap();
        a.add_symlink(b"/lib", b"usr/lib").unwrap();
        let view = supermin_hostfiles::open_base_image(&img, d.path(), &budget).unwrap();
        assert_eq!(a.add_base_image(&img, view, d.path(), &budget).unwrap(), 3);
        let t = a.tree();
        let file = t.lookup(b"/usr/lib/a").unwrap();
        assert_eq!(t.lookup(b"/usr/lib/b"), Some(file));
        assert_eq!(t.meta(file).mode, 0o640);
        assert!(matches!(
            t.kind(file),
            NodeKind::File(FileData::Range { len: 3, .. })
        ));
        let empty = t.lookup(b"/etc/empty").unwrap();
        assert!(matches!(t.kind(empty), NodeKind::File(FileData::Empty)));
    }

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
