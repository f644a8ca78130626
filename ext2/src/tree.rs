//! The in-memory description of the filesystem to write: a tree of named
//! nodes (directories, files, symlinks, devices, FIFOs, sockets) with their
//! metadata, and where each file's bytes come from.
//!
//! The tree holds no file contents of its own beyond small generated blobs:
//! regular files point at host files or byte ranges that are read when the
//! image is written. Children are kept sorted by name bytes, so every walk is
//! deterministic whatever order entries were inserted in. Hard links are
//! several names bound to one node; a replaced entry simply becomes
//! unreachable and is ignored by the writer.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::disk::{MAX_MAJOR, MAX_MINOR};
use crate::error::{show, Ext2Error, TreeError};

/// Longest file name ext2 stores (`name_len` is one byte).
pub const MAX_NAME_LEN: usize = 255;

/// A point in time: seconds since the epoch (negative before 1970) and
/// nanoseconds within that second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl Timestamp {
    /// A timestamp of `secs` and `nsec`.
    pub fn new(secs: i64, nsec: u32) -> Timestamp {
        Timestamp { secs, nsec }
    }
}

/// Ownership, permissions and times of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky; the file type
    /// comes from [`NodeKind`], so bits above `0o7777` are ignored.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum FileData {
    /// No bytes.
    Empty,
    /// A host file read at write time (holes found with SEEK_DATA/SEEK_HOLE
    /// stay holes). `len` is the size recorded at planning time; if the file
    /// changed size, what is there is written up to `len` and the rest reads
    /// as zeros.
    Host {
        /// The host file.
        path: PathBuf,
        /// The size to write.
        len: u64,
    },
    /// A byte range of an open file (e.g. a member of a decompressed tar
    /// archive). Data is read with positional I/O, but probing for holes
    /// (`lseek` with SEEK_DATA/SEEK_HOLE) moves the file's offset: do not
    /// rely on it while an image is being written.
    Range {
        /// The open file.
        file: Arc<File>,
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Small in-memory contents (generated files such as README or module
    /// lists).
    Bytes(Arc<[u8]>),
}

impl FileData {
    /// The size the file will have in the image.
    pub fn len(&self) -> u64 {
        match self {
            FileData::Empty => 0,
            FileData::Host { len, .. } | FileData::Range { len, .. } => *len,
            FileData::Bytes(b) => b.len() as u64,
        }
    }

    /// True when the file has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file and where its bytes come from.
    File(FileData),
    /// The link target, any bytes but NUL.
    Symlink(Vec<u8>),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl NodeKind {
    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, NodeKind::Dir)
    }
}

/// A handle to one node of a [`Tree`]. Only meaningful for the tree that
/// returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub(crate) usize);

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) meta: Meta,
    /// Sorted by name bytes; empty for everything but directories.
    pub(crate) children: BTreeMap<Box<[u8]>, NodeId>,
}

/// The whole filesystem to write. See the module documentation.
#[derive(Debug, Clone)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
}

/// One name found by [`Tree::walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// Absolute path, e.g. `b"/usr/bin/ls"`; the root is `b"/"`.
    pub path: Vec<u8>,
    /// The node.
    pub id: NodeId,
}

fn split_components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    if path.first() != Some(&b'/') {
        return Err(TreeError::NotAbsolute { path: show(path) });
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if c == b"." || c == b".." || c.contains(&0) {
            return Err(TreeError::InvalidName { path: show(path) });
        }
        if c.len() > MAX_NAME_LEN {
            return Err(TreeError::NameTooLong {
                path: show(path),
                len: c.len(),
            });
        }
        out.push(c);
    }
    Ok(out)
}

fn check_kind(path: &[u8], kind: &NodeKind) -> Result<(), TreeError> {
    match kind {
        NodeKind::Symlink(target) => {
            if target.is_empty() {
                return Err(TreeError::EmptySymlink { path: show(path) });
            }
            if target.contains(&0) {
                return Err(TreeError::SymlinkHasNul { path: show(path) });
            }
        }
        NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor }
            if *major > MAX_MAJOR || *minor > MAX_MINOR =>
        {
            return Err(TreeError::DeviceOutOfRange {
                path: show(path),
                major: *major,
                minor: *minor,
            });
        }
        _ => {}
    }
    Ok(())
}

impl Tree {
    /// Whether any regular file in the tree with contents is kept from other
    /// users (no read permission for "other"): an image of the tree must then
    /// be no more readable than that file was. Directories (`/root` is 0700 on
    /// every host) and empty files hold nothing to leak.
    pub fn has_private_nodes(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(&n.kind, NodeKind::File(data) if !data.is_empty()) && n.meta.mode & 0o004 == 0
        })
    }

    /// A tree holding only the root directory.
    pub fn new(root: Meta) -> Tree {
        Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir,
                meta: root,
                children: BTreeMap::new(),
            }],
        }
    }

    /// The root directory's node.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0)
    }

    /// Walks to the directory holding the last component of `path`, which
    /// must exist. Returns it and that last name (`None` for the root).
    fn parent_of<'p>(&self, path: &'p [u8]) -> Result<(NodeId, Option<&'p [u8]>), TreeError> {
        let comps = split_components(path)?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok((self.root(), None));
        };
        let mut dir = self.root();
        for c in parents {
            let child = self.nodes[dir.0].children.get(*c).copied();
            match child {
                None => return Err(TreeError::ParentMissing { path: show(path) }),
                Some(id) if !self.nodes[id.0].kind.is_dir() => {
                    return Err(TreeError::ParentNotDir { path: show(path) })
                }
                Some(id) => dir = id,
            }
        }
        Ok((dir, Some(last)))
    }

    /// Insert at an absolute path (bytes, e.g. `b"/usr/bin/ls"`); the parent
    /// must exist and be a directory. Replacing: a non-directory entry is
    /// replaced; a directory over a directory keeps the children and takes
    /// the new meta; anything else over a directory replaces the subtree.
    /// Returns the node.
    pub fn insert(&mut self, path: &[u8], kind: NodeKind, meta: Meta) -> Result<NodeId, TreeError> {
        check_kind(path, &kind)?;
        let (parent, name) = self.parent_of(path)?;
        let Some(name) = name else {
            if !kind.is_dir() {
                return Err(TreeError::RootNotDir { path: show(path) });
            }
            self.nodes[0].meta = meta;
            return Ok(self.root());
        };
        if let Some(&old) = self.nodes[parent.0].children.get(name) {
            if kind.is_dir() && self.nodes[old.0].kind.is_dir() {
                self.nodes[old.0].meta = meta;
                return Ok(old);
            }
        }
        let id = NodeId(self.nodes.len());
        self.nodes.push(Node {
            kind,
            meta,
            children: BTreeMap::new(),
        });
        self.nodes[parent.0].children.insert(name.into(), id);
        Ok(id)
    }

    /// A hard link: `path` becomes another name of `target` (a
    /// non-directory). An existing entry at `path` is replaced as by
    /// [`Tree::insert`].
    pub fn link(&mut self, path: &[u8], target: NodeId) -> Result<(), TreeError> {
        match self.node(target) {
            None => return Err(TreeError::UnknownNode { path: show(path) }),
            Some(n) if n.kind.is_dir() => return Err(TreeError::LinkToDir { path: show(path) }),
            Some(_) => {}
        }
        let (parent, name) = self.parent_of(path)?;
        let Some(name) = name else {
            return Err(TreeError::RootNotDir { path: show(path) });
        };
        self.nodes[parent.0].children.insert(name.into(), target);
        Ok(())
    }

    /// Makes the tree's times reproducible (the `SOURCE_DATE_EPOCH` convention): every
    /// modification time later than `epoch` becomes `epoch`, and access and change times
    /// become the modification time (they record when the host last read or touched a
    /// file, which a build itself changes).
    pub fn clamp_times(&mut self, epoch: i64) {
        for node in &mut self.nodes {
            let m = &mut node.meta;
            if m.mtime.secs >= epoch {
                m.mtime = Timestamp::new(epoch, 0);
            }
            m.atime = m.mtime;
            m.ctime = m.mtime;
        }
    }

    /// The entry `name` of directory `dir`, if there is one (nothing for other kinds).
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.nodes.get(dir.0)?.children.get(name).copied()
    }

    /// The node at `path`, without following symlinks.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let comps = split_components(path).ok()?;
        let mut id = self.root();
        for c in comps {
            id = *self.nodes[id.0].children.get(c)?;
        }
        Some(id)
    }

    /// Create missing parent directories of `path` with `meta` (like
    /// `mkdir -p` on the parent). Existing directories keep their meta.
    pub fn ensure_parents(&mut self, path: &[u8], meta: Meta) -> Result<(), TreeError> {
        let comps = split_components(path)?;
        let Some((_, parents)) = comps.split_last() else {
            return Ok(());
        };
        let mut dir = self.root();
        for c in parents {
            let child = self.nodes[dir.0].children.get(*c).copied();
            dir = match child {
                Some(id) if self.nodes[id.0].kind.is_dir() => id,
                Some(_) => return Err(TreeError::ParentNotDir { path: show(path) }),
                None => {
                    let id = NodeId(self.nodes.len());
                    self.nodes.push(Node {
                        kind: NodeKind::Dir,
                        meta,
                        children: BTreeMap::new(),
                    });
                    self.nodes[dir.0].children.insert((*c).into(), id);
                    id
                }
            };
        }
        Ok(())
    }

    /// What `id` is. Panics if `id` came from another tree.
    pub fn kind(&self, id: NodeId) -> &NodeKind {
        &self.nodes[id.0].kind
    }

    /// The metadata of `id`. Panics if `id` came from another tree.
    pub fn meta(&self, id: NodeId) -> &Meta {
        &self.nodes[id.0].meta
    }

    /// Replaces the metadata of `id`.
    pub fn set_meta(&mut self, id: NodeId, meta: Meta) {
        self.nodes[id.0].meta = meta;
    }

    /// The entries of directory `id` in name order (nothing for other kinds).
    pub fn children(&self, id: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> + '_ {
        self.nodes[id.0].children.iter().map(|(k, v)| (&**k, *v))
    }

    /// Every reachable name, starting with the root (`b"/"`): the entries of
    /// a directory together in name order, then each subdirectory's in turn,
    /// so parents always come before children. A hard-linked node appears
    /// once per name.
    pub fn walk(&self) -> Vec<WalkEntry> {
        let mut out = vec![WalkEntry {
            path: b"/".to_vec(),
            id: self.root(),
        }];
        let mut stack = vec![(Vec::new(), self.root())];
        while let Some((prefix, dir)) = stack.pop() {
            let start = out.len();
            for (name, id) in self.children(dir) {
                let mut path = prefix.clone();
                path.push(b'/');
                path.extend_from_slice(name);
                out.push(WalkEntry { path, id });
            }
            // Push subdirectories in reverse so the first is opened first:
            // a directory's entries come together, then its subtrees in order.
            let subdirs: Vec<_> = out[start..]
                .iter()
                .filter(|e| self.kind(e.id).is_dir())
                .map(|e| (e.path.clone(), e.id))
                .collect();
            stack.extend(subdirs.into_iter().rev());
        }
        out
    }

    /// Reads a host directory tree exactly as it is (lstat, no following
    /// symlinks): contents as [`FileData::Host`], modes, owners, times with
    /// nanoseconds, devices, and hard links kept as links (grouped by device
    /// and inode number). `src` itself may be a symlink to a directory.
    ///
    /// Directories are read level by level, each level's directories in
    /// parallel; the tree is then filled in that (parents-first) order.
    pub fn from_dir(src: &Path) -> Result<Tree, Ext2Error> {
        let md = std::fs::metadata(src).map_err(|source| Ext2Error::Stat {
            path: src.to_path_buf(),
            source,
        })?;
        if !md.is_dir() {
            return Err(Ext2Error::NotADirectory {
                path: src.to_path_buf(),
            });
        }
        let mut tree = Tree::new(meta_of(&md));
        let mut seen: HashMap<(u64, u64), NodeId> = HashMap::new();
        let mut level: Vec<(PathBuf, Vec<u8>)> = vec![(src.to_path_buf(), Vec::new())];
        while !level.is_empty() {
            let scanned: Vec<Vec<Scanned>> = level
                .par_iter()
                .map(|(dir, prefix)| scan_dir(dir, prefix))
                .collect::<Result<_, _>>()?;
            let mut next = Vec::new();
            for e in scanned.into_iter().flatten() {
                let ft = e.md.file_type();
                let linkable = !ft.is_dir() && e.md.nlink() > 1;
                if linkable {
                    if let Some(&id) = seen.get(&(e.md.dev(), e.md.ino())) {
                        tree.link(&e.path, id)?;
                        continue;
                    }
                }
                let kind = if ft.is_dir() {
                    next.push((e.host.clone(), e.path.clone()));
                    NodeKind::Dir
                } else if ft.is_file() {
                    NodeKind::File(FileData::Host {
                        path: e.host,
                        len: e.md.len(),
                    })
                } else if let Some(target) = e.target {
                    NodeKind::Symlink(target)
                } else if ft.is_char_device() {
                    let (major, minor) = split_dev(e.md.rdev());
                    NodeKind::CharDev { major, minor }
                } else if ft.is_block_device() {
                    let (major, minor) = split_dev(e.md.rdev());
                    NodeKind::BlockDev { major, minor }
                } else if ft.is_fifo() {
                    NodeKind::Fifo
                } else if ft.is_socket() {
                    NodeKind::Socket
                } else {
                    return Err(Ext2Error::UnsupportedFileType { path: e.host });
                };
                let id = tree.insert(&e.path, kind, meta_of(&e.md))?;
                if linkable {
                    seen.insert((e.md.dev(), e.md.ino()), id);
                }
            }
            level = next;
        }
        Ok(tree)
    }
}

/// One directory entry as read from the host.
struct Scanned {
    /// Where it goes in the tree.
    path: Vec<u8>,
    host: PathBuf,
    md: std::fs::Metadata,
    /// The target, for symlinks.
    target: Option<Vec<u8>>,
}

fn scan_dir(dir: &Path, prefix: &[u8]) -> Result<Vec<Scanned>, Ext2Error> {
    let read_err = |source| Ext2Error::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let host = entry.path();
        // fstatat on the open directory: no walk of the whole path.
        let md = entry.metadata().map_err(|source| Ext2Error::Stat {
            path: host.clone(),
            source,
        })?;
        let target = if md.file_type().is_symlink() {
            let t = std::fs::read_link(&host).map_err(|source| Ext2Error::ReadLink {
                path: host.clone(),
                source,
            })?;
            Some(t.into_os_string().into_vec())
        } else {
            None
        };
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(entry.file_name().as_bytes());
        out.push(Scanned {
            path,
            host,
            md,
            target,
        });
    }
    Ok(out)
}

fn meta_of(md: &std::fs::Metadata) -> Meta {
    let ts = |secs: i64, nsec: i64| Timestamp {
        secs,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    };
    Meta {
        mode: (md.mode() & 0o7777) as u16,
        uid: md.uid(),
        gid: md.gid(),
        atime: ts(md.atime(), md.atime_nsec()),
        mtime: ts(md.mtime(), md.mtime_nsec()),
        ctime: ts(md.ctime(), md.ctime_nsec()),
    }
}

/// glibc's `gnu_dev_major`/`gnu_dev_minor` split of a 64-bit `dev_t`.
fn split_dev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    // Both are masked to 32 bits just above, as glibc's unsigned int results.
    #[allow(clippy::cast_possible_truncation)]
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mode: u16) -> Meta {
        Meta {
            mode,
            ..Meta::default()
        }
    }

    fn file(bytes: &[u8]) -> NodeKind {
        NodeKind::File(FileData::Bytes(bytes.into()))
    }

    #[test]
    fn clamp_times_caps_mtime_and_aligns_atime_and_ctime() {
        let mut t = Tree::new(m(0o755));
        let at = |secs| Timestamp::new(secs, 7);
        let old = Meta {
            atime: at(9_999),
            mtime: at(100),
            ctime: at(5_000),
            ..m(0o644)
        };
        let new = Meta {
            mtime: at(2_000_000_000),
            ..old
        };
        let a = t.insert(b"/old", file(b"a"), old).unwrap();
        let b = t.insert(b"/new", file(b"b"), new).unwrap();
        t.clamp_times(1_700_000_000);
        assert_eq!(t.meta(a).mtime, at(100), "older times are kept");
        assert_eq!(t.meta(a).atime, at(100));
        assert_eq!(t.meta(a).ctime, at(100));
        let clamped = Timestamp::new(1_700_000_000, 0);
        assert_eq!(t.meta(b).mtime, clamped);
        assert_eq!(t.meta(b).atime, clamped);
        assert_eq!(t.meta(t.root()).mtime, Timestamp::new(0, 0));
    }

    #[test]
    fn insert_then_lookup_finds_nested_nodes() {
        let mut t = Tree::new(m(0o755));
        let usr = t.insert(b"/usr", NodeKind::Dir, m(0o755)).unwrap();
        let ls = t.insert(b"/usr/ls", file(b"x"), m(0o755)).unwrap();
        assert_eq!(t.lookup(b"/usr"), Some(usr));
        assert_eq!(t.lookup(b"//usr//ls"), Some(ls));
        assert_eq!(t.lookup(b"/"), Some(t.root()));
        assert_eq!(t.lookup(b"/nope"), None);
    }

    #[test]
    fn insert_needs_an_existing_directory_parent() {
        let mut t = Tree::new(m(0o755));
        assert!(matches!(
            t.insert(b"/a/b", file(b""), m(0)),
            Err(TreeError::ParentMissing { .. })
        ));
        t.insert(b"/f", file(b""), m(0)).unwrap();
        assert!(matches!(
            t.insert(b"/f/b", file(b""), m(0)),
            Err(TreeError::ParentNotDir { .. })
        ));
    }

    #[test]
    fn insert_rejects_bad_names() {
        let mut t = Tree::new(m(0o755));
        assert!(matches!(
            t.insert(b"rel", file(b""), m(0)),
            Err(TreeError::NotAbsolute { .. })
        ));
        assert!(matches!(
            t.insert(b"/a\0b", file(b""), m(0)),
            Err(TreeError::InvalidName { .. })
        ));
        assert!(matches!(
            t.insert(b"/..", file(b""), m(0)),
            Err(TreeError::InvalidName { .. })
        ));
        let mut long = b"/".to_vec();
        long.extend(std::iter::repeat_n(b'x', 256));
        assert!(matches!(
            t.insert(&long, file(b""), m(0)),
            Err(TreeError::NameTooLong { len: 256, .. })
        ));
        long.pop();
        assert!(t.insert(&long, file(b""), m(0)).is_ok());
    }

    #[test]
    fn insert_rejects_unrepresentable_devices_and_symlinks() {
        let mut t = Tree::new(m(0o755));
        let dev = NodeKind::CharDev {
            major: 4096,
            minor: 0,
        };
        assert!(matches!(
            t.insert(b"/d", dev, m(0)),
            Err(TreeError::DeviceOutOfRange { major: 4096, .. })
        ));
        assert!(matches!(
            t.insert(b"/l", NodeKind::Symlink(Vec::new()), m(0)),
            Err(TreeError::EmptySymlink { .. })
        ));
        assert!(matches!(
            t.insert(b"/l", NodeKind::Symlink(b"a\0".to_vec()), m(0)),
            Err(TreeError::SymlinkHasNul { .. })
        ));
    }

    #[test]
    fn dir_over_dir_keeps_children_and_takes_new_meta() {
        let mut t = Tree::new(m(0o755));
        let d = t.insert(b"/d", NodeKind::Dir, m(0o700)).unwrap();
        t.insert(b"/d/f", file(b"1"), m(0o644)).unwrap();
        let d2 = t.insert(b"/d", NodeKind::Dir, m(0o711)).unwrap();
        assert_eq!(d, d2);
        assert_eq!(t.meta(d).mode, 0o711);
        assert!(t.lookup(b"/d/f").is_some());
    }

    #[test]
    fn file_over_dir_drops_the_subtree() {
        let mut t = Tree::new(m(0o755));
        t.insert(b"/d", NodeKind::Dir, m(0o700)).unwrap();
        t.insert(b"/d/f", file(b"1"), m(0o644)).unwrap();
        let f = t.insert(b"/d", file(b"2"), m(0o600)).unwrap();
        assert_eq!(t.lookup(b"/d"), Some(f));
        assert_eq!(t.lookup(b"/d/f"), None);
    }

    #[test]
    fn root_takes_dir_meta_but_refuses_other_kinds() {
        let mut t = Tree::new(m(0o755));
        t.insert(b"/", NodeKind::Dir, m(0o700)).unwrap();
        assert_eq!(t.meta(t.root()).mode, 0o700);
        assert!(matches!(
            t.insert(b"/", file(b""), m(0)),
            Err(TreeError::RootNotDir { .. })
        ));
    }

    #[test]
    fn links_share_one_node_and_refuse_directories() {
        let mut t = Tree::new(m(0o755));
        let f = t.insert(b"/f", file(b"x"), m(0o644)).unwrap();
        t.link(b"/g", f).unwrap();
        assert_eq!(t.lookup(b"/g"), Some(f));
        let d = t.insert(b"/d", NodeKind::Dir, m(0o755)).unwrap();
        assert!(matches!(t.link(b"/e", d), Err(TreeError::LinkToDir { .. })));
        assert!(matches!(
            t.link(b"/e", NodeId(999)),
            Err(TreeError::UnknownNode { .. })
        ));
    }

    #[test]
    fn ensure_parents_creates_only_missing_directories() {
        let mut t = Tree::new(m(0o755));
        let a = t.insert(b"/a", NodeKind::Dir, m(0o700)).unwrap();
        t.ensure_parents(b"/a/b/c/file", m(0o755)).unwrap();
        assert_eq!(t.meta(a).mode, 0o700);
        let c = t.lookup(b"/a/b/c").unwrap();
        assert!(t.kind(c).is_dir());
        assert_eq!(t.meta(c).mode, 0o755);
        assert_eq!(t.lookup(b"/a/b/c/file"), None);
    }

    #[test]
    fn walk_lists_every_name_in_sorted_preorder() {
        let mut t = Tree::new(m(0o755));
        t.insert(b"/b", NodeKind::Dir, m(0)).unwrap();
        t.insert(b"/a", NodeKind::Dir, m(0)).unwrap();
        t.insert(b"/b/y", file(b""), m(0)).unwrap();
        let x = t.insert(b"/a/x", file(b""), m(0)).unwrap();
        t.link(b"/b/z", x).unwrap();
        let paths: Vec<_> = t.walk().into_iter().map(|e| e.path).collect();
        let want: Vec<&[u8]> = vec![b"/", b"/a", b"/b", b"/a/x", b"/b/y", b"/b/z"];
        assert_eq!(paths, want);
    }

    #[test]
    fn split_dev_decodes_large_numbers() {
        // makedev(510, 70000) as glibc builds it.
        let (major, minor) = (510u64, 70000u64);
        let dev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(split_dev(dev), (510, 70000));
    }
}
