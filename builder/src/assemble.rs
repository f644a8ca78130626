//! Assembling the appliance root as one [`Tree`]: the base images first, then the resolved
//! host files, then `/packagelist` and the kernel's modules tree, in that order, later
//! entries replacing earlier ones (supermin 5's order). Both output formats (the ext2 image
//! and the chroot directory) are written from this one tree, so they cannot disagree.
//!
//! Nothing here copies file contents: regular files are references (a host path, or a byte
//! range of a decompressed base image), read once when the output is written. The two
//! exceptions, a compressed base image (decompressed into one scratch file) and a GNU sparse
//! member (expanded into its own), are written sparse: zeros and holes cost no disk, and
//! the build's [`InputBudget`] bounds what is decompressed and how large a member may be.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use supermin_ext2::{FileData, Meta, NodeId, NodeKind, Timestamp, Tree, TreeError};
use supermin_hostfiles::{BaseImage, FileKind, FileSet, HostFile, HostfilesError, InputBudget};

use crate::sparse::{CopyError, SparseWriter};

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
    #[error("cannot write a scratch copy of base image {image} in {dir}")]
    Scratch {
        image: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base image {image}: sparse member {member} has a malformed map: {reason}")]
    SparseMap {
        image: PathBuf,
        member: String,
        reason: &'static str,
    },
    /// Past the build's [`InputBudget`]: what was too large, the limit, and the way out.
    #[error(transparent)]
    TooLarge(HostfilesError),
    #[error(
        "base image {image}: a member carries more than {} MiB of tar metadata (sparse map, long \
         names, pax records) where real archives carry kilobytes; repack it (GNU tar: \
         --format=gnu, without --sparse)",
        MAX_MEMBER_METADATA >> 20
    )]
    MemberMetadata { image: PathBuf },
    #[error("base image {image}: member {member} has owner id {id}; ext2 stores 32-bit ids")]
    OwnerTooLarge {
        image: PathBuf,
        member: String,
        id: u64,
    },
}

impl AssembleError {
    /// The way out, where the message and its cause do not say it: only what a wrapped
    /// [`HostfilesError`] knows (each variant of ours says its own in its message).
    pub fn hint(&self) -> Option<String> {
        match self {
            AssembleError::TooLarge(e) => e.hint(),
            _ => None,
        }
    }
}

/// How many bytes of tar metadata (its header, GNU long names, pax records, sparse
/// extension headers) one member may have. The tar reader holds one member's metadata in
/// memory, a sparse map at some 2.7 times its size (measured: 100 MiB of extension headers,
/// 272 MB resident), so an archive of repeated extension headers would be a memory bomb
/// within any input limit. Real members carry a few hundred bytes; 16 MiB is a sparse map
/// of 700 000 regions.
const MAX_MEMBER_METADATA: u64 = 16 << 20;

/// The archive as the tar reader sees it: every byte it reads is metadata (member data is
/// read by position, never through it), counted in `read` and refused past
/// [`MAX_MEMBER_METADATA`]. The caller resets the count at each member.
struct MetadataBound<'a> {
    file: &'a File,
    read: &'a Cell<u64>,
}

/// The marker inside the I/O error that [`MetadataBound`] returns.
#[derive(Debug, thiserror::Error)]
#[error("tar metadata of one member past {MAX_MEMBER_METADATA} bytes")]
struct MetadataTooLarge;

impl Read for MetadataBound<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = MAX_MEMBER_METADATA.saturating_sub(self.read.get());
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(MetadataTooLarge));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl Seek for MetadataBound<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
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
    /// a GNU sparse member is expanded into its own scratch file in `scratch_dir`, holes
    /// kept. A member declaring more than `budget`'s limit is refused.
    pub fn add_base_image(
        &mut self,
        img: &BaseImage,
        file: File,
        scratch_dir: &Path,
        budget: &InputBudget,
    ) -> Result<usize, AssembleError> {
        let archive_len = file
            .metadata()
            .map_err(|source| AssembleError::BaseImage {
                path: img.path.clone(),
                source,
            })?
            .len();
        let file = Arc::new(file);
        let metadata_read = Cell::new(0);
        let mut archive = tar::Archive::new(MetadataBound {
            file: &file,
            read: &metadata_read,
        });
        let mut guard = supermin_hostfiles::BaseImageGuard::new(std::iter::empty::<&Path>());
        let mut by_name: HashMap<PathBuf, NodeId> = HashMap::new();
        let mut count = 0;
        let format_err = |source| AssembleError::BaseImageFormat {
            path: img.path.clone(),
            source,
        };
        for entry in archive.entries_with_seek().map_err(format_err)? {
            let entry = entry.map_err(|e: io::Error| {
                if e.get_ref().is_some_and(|e| e.is::<MetadataTooLarge>()) {
                    AssembleError::MemberMetadata {
                        image: img.path.clone(),
                    }
                } else {
                    format_err(e)
                }
            })?;
            // Everything read so far belonged to this member.
            metadata_read.set(0);
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
            let owner = |id: u64| {
                u32::try_from(id).map_err(|_| AssembleError::OwnerTooLarge {
                    image: img.path.clone(),
                    member: abs.display().to_string(),
                    id,
                })
            };
            let meta = Meta {
                mode: (header.mode().unwrap_or(0o644) & 0o7777) as u16,
                uid: owner(header.uid().unwrap_or(0))?,
                gid: owner(header.gid().unwrap_or(0))?,
                atime: t,
                mtime: t,
                ctime: t,
            };
            let kind = match etype {
                tar::EntryType::Directory => NodeKind::Dir,
                tar::EntryType::GNUSparse => {
                    // The tar reader would expand the holes into zeros: write the data
                    // regions where its map puts them and leave the rest a hole.
                    let member = abs.display().to_string();
                    let len = entry.size(); // the expanded size
                    budget
                        .check_member(&img.path, &member, len)
                        .map_err(AssembleError::TooLarge)?;
                    let scratch_err = |source| AssembleError::Scratch {
                        image: img.path.clone(),
                        dir: scratch_dir.to_path_buf(),
                        source,
                    };
                    let scratch = scratch_file(scratch_dir).map_err(scratch_err)?;
                    let sparse = SparseMember {
                        archive: &file,
                        archive_len,
                        header,
                        ext_pos: entry.raw_file_position(),
                        len,
                    };
                    sparse.expand(&scratch).map_err(|e| match e {
                        SparseError::Read(source) => AssembleError::BaseImage {
                            path: img.path.clone(),
                            source,
                        },
                        SparseError::Write(source) => scratch_err(source),
                        SparseError::Truncated => AssembleError::Truncated {
                            image: img.path.clone(),
                            member: member.clone(),
                        },
                        SparseError::Map(reason) => AssembleError::SparseMap {
                            image: img.path.clone(),
                            member: member.clone(),
                            reason,
                        },
                    })?;
                    NodeKind::File(FileData::Range {
                        file: Arc::new(scratch),
                        offset: 0,
                        len,
                    })
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let (offset, len) = (entry.raw_file_position(), entry.size());
                    budget
                        .check_member(&img.path, &abs.display().to_string(), len)
                        .map_err(AssembleError::TooLarge)?;
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
/// files), with its zero blocks left as holes. Decompression stops at `budget`'s limit.
/// Needs no assembler, so it can run while the file set is being resolved.
pub fn open_base_image(
    img: &BaseImage,
    scratch_dir: &Path,
    budget: &InputBudget,
) -> Result<File, AssembleError> {
    let io_err = |source| AssembleError::BaseImage {
        path: img.path.clone(),
        source,
    };
    if img.compression.is_none() {
        return File::open(&img.path).map_err(io_err);
    }
    let mut reader = supermin_hostfiles::open_base_image(img, budget)
        .map_err(|e| io_err(io::Error::other(e)))?;
    let scratch_err = |source| AssembleError::Scratch {
        image: img.path.clone(),
        dir: scratch_dir.to_path_buf(),
        source,
    };
    let scratch = scratch_file(scratch_dir).map_err(scratch_err)?;
    // Positional writes: the file offset stays at 0 for the tar reader.
    let mut w = SparseWriter::new(&scratch);
    match w.copy_from(&mut reader) {
        Ok(_) => {}
        Err(CopyError::Read(e)) => {
            return Err(match supermin_hostfiles::too_large(e) {
                Ok(limit) => AssembleError::TooLarge(limit),
                Err(e) => io_err(e),
            })
        }
        Err(CopyError::Write(e)) => return Err(scratch_err(e)),
    }
    let len = w.position();
    w.finish(len).map_err(scratch_err)?;
    Ok(scratch)
}

/// Why a sparse member could not be expanded.
enum SparseError {
    Read(io::Error),
    Write(io::Error),
    Truncated,
    Map(&'static str),
}

/// A GNU sparse member (type `S`) of a seekable archive. Its header holds four
/// (offset, length) pairs of its map, and, when `isextended` is set, 512-byte extension
/// headers of 21 pairs each follow it; the data regions come after them, back to back
/// (GNU tar manual, "Storing Sparse Files", old GNU format).
struct SparseMember<'a> {
    archive: &'a File,
    archive_len: u64,
    header: &'a tar::Header,
    /// Where the extension headers (or the data, without them) start.
    ext_pos: u64,
    /// The expanded size.
    len: u64,
}

impl SparseMember<'_> {
    /// Writes the data regions into `out` (a new, empty file) at their offsets and sets its
    /// length: holes cost nothing, whatever size the header declares.
    fn expand(&self, out: &File) -> Result<(), SparseError> {
        // A first pass finds where the data starts (after the last extension header) and
        // checks the map, a second copies. The map is never held in memory: a malicious one
        // may have millions of entries.
        let mut stored = 0u64;
        let mut end = 0u64;
        let data_pos = self.walk_map(|offset, length| {
            if offset < end {
                return Err(SparseError::Map("its regions overlap or are out of order"));
            }
            end = offset
                .checked_add(length)
                .filter(|&e| e <= self.len)
                .ok_or(SparseError::Map("a region ends past the file's size"))?;
            stored += length;
            Ok(())
        })?;
        let data_size = self
            .header
            .entry_size()
            .map_err(|_| SparseError::Map("its stored size is not a number"))?;
        if stored != data_size {
            return Err(SparseError::Map(
                "its regions do not add up to the stored size",
            ));
        }
        if data_pos.saturating_add(stored) > self.archive_len {
            return Err(SparseError::Truncated);
        }
        let mut w = SparseWriter::new(out);
        let mut buf =
            vec![0u8; usize::try_from(stored.max(1)).map_or(128 << 10, |s| s.min(128 << 10))];
        let mut from = data_pos;
        let data_end = data_pos + stored;
        self.walk_map(|offset, length| {
            // Only an archive rewritten under us could get here: stop, never loop.
            if offset < w.position() || from.saturating_add(length) > data_end {
                return Err(SparseError::Map("it changed while being read"));
            }
            w.skip_to(offset);
            let mut left = length;
            while left > 0 {
                let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                self.archive
                    .read_exact_at(&mut buf[..n], from)
                    .map_err(SparseError::Read)?;
                w.write(&buf[..n]).map_err(SparseError::Write)?;
                from += n as u64;
                left -= n as u64;
            }
            Ok(())
        })?;
        w.finish(self.len).map_err(SparseError::Write)
    }

    /// Calls `region` for each (offset, length) of the map, in archive order, skipping
    /// unused slots the way GNU tar and the tar crate do; returns where the data starts.
    fn walk_map(
        &self,
        mut region: impl FnMut(u64, u64) -> Result<(), SparseError>,
    ) -> Result<u64, SparseError> {
        let bad = |_| SparseError::Map("an offset or length is not a number");
        let mut visit = |slots: &[tar::GnuSparseHeader]| -> Result<(), SparseError> {
            for slot in slots.iter().filter(|s| !s.is_empty()) {
                region(slot.offset().map_err(bad)?, slot.length().map_err(bad)?)?;
            }
            Ok(())
        };
        let gnu = self
            .header
            .as_gnu()
            .ok_or(SparseError::Map("its header is not in GNU format"))?;
        visit(&gnu.sparse)?;
        let mut pos = self.ext_pos;
        let mut more = gnu.is_extended();
        while more {
            if pos.saturating_add(512) > self.archive_len {
                return Err(SparseError::Truncated);
            }
            let mut ext = tar::GnuExtSparseHeader::new();
            self.archive
                .read_exact_at(ext.as_mut_bytes(), pos)
                .map_err(SparseError::Read)?;
            visit(ext.sparse())?;
            more = ext.is_extended();
            pos += 512;
        }
        Ok(pos)
    }
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
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::sparse::disk_bytes;
    use std::io::Write;
    use supermin_hostfiles::Compression;

    const TIB: u64 = 1 << 40;

    /// A tar archive (end blocks included) holding one GNU sparse member `name` of `len`
    /// bytes whose data is `regions` ((offset, bytes), in order; all but the last a multiple
    /// of 512 bytes long). Past four regions the map goes on in extension headers.
    fn sparse_tar(name: &str, len: u64, regions: &[(u64, &[u8])]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(regions.iter().map(|r| r.1.len() as u64).sum());
        let (first, rest) = regions.split_at(regions.len().min(4));
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(len);
        for (slot, (offset, data)) in gnu.sparse.iter_mut().zip(first) {
            slot.set_offset(*offset);
            slot.set_length(data.len() as u64);
        }
        gnu.set_is_extended(!rest.is_empty());
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        let exts: Vec<&[(u64, &[u8])]> = rest.chunks(21).collect();
        for (i, group) in exts.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (slot, (offset, data)) in ext.sparse_mut().iter_mut().zip(group.iter()) {
                slot.set_offset(*offset);
                slot.set_length(data.len() as u64);
            }
            ext.set_is_extended(i + 1 < exts.len());
            out.extend_from_slice(ext.as_bytes());
        }
        for (_, data) in regions {
            out.extend_from_slice(data);
        }
        out.resize(out.len().next_multiple_of(512) + 1024, 0);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn image(dir: &Path, name: &str, bytes: &[u8]) -> BaseImage {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let compression = name.ends_with(".gz").then_some(Compression::Gzip);
        BaseImage { path, compression }
    }

    /// Opens and adds `img` as a build does; the assembler and the opened view.
    fn assemble(
        img: &BaseImage,
        dir: &Path,
        budget: &InputBudget,
    ) -> Result<(Assembler, File), AssembleError> {
        let view = open_base_image(img, dir, budget)?;
        let kept = view.try_clone().unwrap();
        let mut a = Assembler::new(0);
        a.add_base_image(img, view, dir, budget)?;
        Ok((a, kept))
    }

    fn file_data<'a>(a: &'a Assembler, path: &[u8]) -> (&'a File, u64, u64) {
        let id = a.tree().lookup(path).unwrap();
        match a.tree().kind(id) {
            NodeKind::File(FileData::Range { file, offset, len }) => (&**file, *offset, *len),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tiny_gzip_declaring_a_tebibyte_of_holes_costs_no_disk() {
        // Regression (builder input bombs): the tar reader expanded this member into a
        // terabyte of zeros in a scratch file, and the output wrote them again.
        let d = tempfile::tempdir().unwrap();
        let gz = gzip(&sparse_tar("hole", TIB, &[(TIB, b"")]));
        assert!(gz.len() <= 137, "{} bytes", gz.len());
        let img = image(d.path(), "base.tar.gz", &gz);
        let budget = InputBudget::new(2 * TIB);
        let (a, view) = assemble(&img, d.path(), &budget).unwrap();
        let (file, offset, len) = file_data(&a, b"/hole");
        assert_eq!((offset, len), (0, TIB));
        assert_eq!(file.metadata().unwrap().len(), TIB);
        assert_eq!(disk_bytes(file), 0);
        // The decompressed view: one header block of data, the rest zeros left out.
        assert!(disk_bytes(&view) <= 4096, "{}", disk_bytes(&view));
    }

    #[test]
    fn sparse_regions_land_at_their_offsets_through_extension_headers() {
        let d = tempfile::tempdir().unwrap();
        let blocks: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i + 1; 512]).collect();
        let len = 40 << 20;
        let mut regions: Vec<(u64, &[u8])> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| ((i as u64) << 20, b.as_slice()))
            .collect();
        regions.push((len, b""));
        let img = image(d.path(), "base.tar", &sparse_tar("dir/f", len, &regions));
        let (a, _) = assemble(&img, d.path(), &InputBudget::default()).unwrap();
        let (file, _, got_len) = file_data(&a, b"/dir/f");
        assert_eq!(got_len, len);
        let mut buf = vec![0u8; 1024];
        for i in 0..30u64 {
            file.read_exact_at(&mut buf, i << 20).unwrap();
            assert!(buf[..512].iter().all(|&b| b == i as u8 + 1), "region {i}");
            assert!(buf[512..].iter().all(|&b| b == 0), "after region {i}");
        }
        // 30 regions of data, never 40 MiB.
        assert!(disk_bytes(file) <= 30 * 8192, "{}", disk_bytes(file));
    }

    #[test]
    fn a_member_declaring_more_than_the_limit_is_refused_before_anything_is_written() {
        let d = tempfile::tempdir().unwrap();
        let budget = InputBudget::new(1 << 20);
        let img = image(
            d.path(),
            "sparse.tar",
            &sparse_tar("hole", TIB, &[(TIB, b"")]),
        );
        let e = assemble(&img, d.path(), &budget).err().unwrap();
        assert!(
            matches!(
                &e,
                AssembleError::TooLarge(HostfilesError::MemberTooLarge { member, size, limit, .. })
                    if member == "/hole" && *size == TIB && *limit == 1 << 20
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("1 TiB") && msg.contains("SUPERMIN_MAX_INPUT_SIZE=1T"),
            "{msg}"
        );

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "big", &vec![1u8; 2 << 20][..])
            .unwrap();
        let img = image(d.path(), "regular.tar", &b.into_inner().unwrap());
        let e = assemble(&img, d.path(), &budget).err().unwrap();
        assert!(
            matches!(
                e,
                AssembleError::TooLarge(HostfilesError::MemberTooLarge { .. })
            ),
            "{e}"
        );
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit_and_its_zeros_cost_no_disk() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("bomb.tar.gz");
        // A member header, then 64 MiB of zeros, compressed as they are written.
        let mut e = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut h = tar::Header::new_gnu();
        h.set_path("zeros").unwrap();
        h.set_size(64 << 20);
        h.set_cksum();
        e.write_all(h.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        e.write_all(&[0; 1024]).unwrap();
        e.finish().unwrap();
        let img = BaseImage {
            path: path.clone(),
            compression: Some(Compression::Gzip),
        };
        let e = open_base_image(&img, d.path(), &InputBudget::new(8 << 20)).unwrap_err();
        assert!(
            matches!(&e, AssembleError::TooLarge(HostfilesError::InputTooLarge { path: p, limit })
                if p == &path && *limit == 8 << 20),
            "{e}"
        );
        // Allowed, the zeros are holes in the view and in the member.
        let budget = InputBudget::new(65 << 20);
        let (a, view) = assemble(&img, d.path(), &budget).unwrap();
        assert!(disk_bytes(&view) <= 4096, "{}", disk_bytes(&view));
        assert_eq!(file_data(&a, b"/zeros").2, 64 << 20);
    }

    #[test]
    fn a_sparse_map_of_repeated_extension_headers_is_refused_before_it_fills_memory() {
        // 17 MiB of extension headers, each 21 empty regions at the end of the file: valid
        // for the tar reader, which would keep every region in memory.
        let d = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let regions: Vec<(u64, &[u8])> = vec![(len, b""); 4 + 21 * (17 << 11)];
        let img = image(d.path(), "map.tar", &sparse_tar("f", len, &regions));
        let e = assemble(&img, d.path(), &InputBudget::default())
            .err()
            .unwrap();
        assert!(matches!(e, AssembleError::MemberMetadata { .. }), "{e}");
        assert!(e.to_string().contains("16 MiB"), "{e}");
    }

    #[test]
    fn a_sparse_member_whose_data_is_cut_off_is_truncated() {
        let d = tempfile::tempdir().unwrap();
        let data = vec![7u8; 4096];
        let mut tar = sparse_tar("f", 1 << 20, &[(0, &data), (1 << 20, b"")]);
        tar.truncate(512 + 1024);
        let img = image(d.path(), "cut.tar", &tar);
        let e = assemble(&img, d.path(), &InputBudget::default())
            .err()
            .unwrap();
        assert!(matches!(e, AssembleError::Truncated { .. }), "{e}");
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
