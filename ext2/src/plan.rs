//! Planning: turns a [`Tree`] and [`Options`] into the complete layout of the
//! image before a byte is written — inode numbers, directory blocks, every
//! block number (data, indirect, directory, symlink), bitmaps, group
//! descriptors and superblocks — as a list of metadata chunks to write and a
//! list of data copies to run.
//!
//! Numbering and allocation follow the tree's sorted walk: the root is inode
//! 2, `lost+found` 11, then the entries of each directory get consecutive
//! numbers before its subdirectories are visited. Blocks are handed out in
//! one ascending sweep: all directories first (compact metadata near the
//! start of the image), then slow symlinks, then file data in inode order,
//! so that reading a directory's files is sequential. Nothing here depends
//! on hash-map iteration order or on the order the tree was built in, which
//! is what makes images reproducible.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::blockmap::{blocks_needed, BlockMap, Mapper, Run};
use crate::disk::{self, Inode, Superblock, INODE_SIZE};
use crate::error::{show, Ext2Error};
use crate::io::DirCache;
use crate::layout::{Allocator, Geometry, GeometryError};
use crate::tree::{FileData, Meta, NodeId, NodeKind, Timestamp, Tree};
use crate::{Options, Summary};

/// ext2's limit on subdirectories (`EXT2_LINK_MAX`): each adds a link to its
/// parent, and the ext2 driver refuses more.
const DIR_LINK_MAX: u64 = 32_000;
/// `i_links_count` is 16 bits; ext4 caps at 65000.
const FILE_LINK_MAX: u64 = 65_000;
/// `mke2fs`'s default bytes-per-inode ratio, used when the size is given.
const INODE_RATIO: u64 = 16_384;
/// `mke2fs` makes lost+found 16 KiB so e2fsck can reconnect files without
/// allocating; within the 12 direct blocks.
const LOST_FOUND_BYTES: u64 = 16_384;
const LOST_FOUND: &[u8] = b"lost+found";

/// Bytes to write at an offset of the image: metadata, or small in-memory
/// file contents.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Where a copy job reads from.
#[derive(Debug)]
pub(crate) enum Source<'t> {
    Host(&'t Path),
    Range {
        file: &'t File,
        offset: u64,
        image_path: String,
    },
}

/// Copy a file's data into its planned blocks.
#[derive(Debug)]
pub(crate) struct CopyJob<'t> {
    pub source: Source<'t>,
    pub len: u64,
    pub runs: Vec<Run>,
}

#[derive(Debug)]
pub(crate) struct Plan<'t> {
    pub image_size: u64,
    pub block_size: u32,
    /// Sorted by offset, never overlapping.
    pub chunks: Vec<Chunk>,
    pub jobs: Vec<CopyJob<'t>>,
    pub summary: Summary,
}

#[derive(Debug)]
struct Entry<'t> {
    name: &'t [u8],
    ino: u32,
    file_type: u8,
}

#[derive(Debug)]
enum RecKind<'t> {
    Dir {
        node: Option<NodeId>,
        entries: Vec<Entry<'t>>,
        subdirs: u64,
        min_blocks: u64,
    },
    File(&'t FileData),
    Symlink(&'t [u8]),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
    Socket,
}

#[derive(Debug)]
struct Rec<'t> {
    meta: Meta,
    kind: RecKind<'t>,
    links: u64,
    /// The first name this inode was found under, for messages.
    parent: u32,
    name: &'t [u8],
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::Dir => disk::FT_DIR,
        NodeKind::File(_) => disk::FT_REG,
        NodeKind::Symlink(_) => disk::FT_SYMLINK,
        NodeKind::CharDev { .. } => disk::FT_CHRDEV,
        NodeKind::BlockDev { .. } => disk::FT_BLKDEV,
        NodeKind::Fifo => disk::FT_FIFO,
        NodeKind::Socket => disk::FT_SOCK,
    }
}

/// All inodes, indexed by inode number; `None` for unused reserved ones.
struct Inodes<'t> {
    recs: Vec<Option<Rec<'t>>>,
    /// `recs.len() - 1`: numbering checked that every number fits in 32 bits.
    last_ino: u32,
}

impl<'t> Inodes<'t> {
    fn rec(&self, ino: u32) -> Option<&Rec<'t>> {
        self.recs.get(ino as usize).and_then(Option::as_ref)
    }

    fn last_ino(&self) -> u32 {
        self.last_ino
    }

    /// The used inodes with their numbers, in order.
    fn iter(&self) -> impl Iterator<Item = (u32, &Rec<'t>)> {
        (0..=self.last_ino)
            .zip(&self.recs)
            .filter_map(|(ino, rec)| Some((ino, rec.as_ref()?)))
    }

    /// The path an inode was first found under, for messages.
    fn path_of(&self, ino: u32) -> String {
        let mut names = Vec::new();
        let mut at = ino;
        while at != disk::ROOT_INO {
            match self.rec(at) {
                Some(r) => {
                    names.push(r.name);
                    at = r.parent;
                }
                None => break,
            }
        }
        let mut path = Vec::new();
        for n in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(n);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        show(&path)
    }
}

fn rec_from_node<'t>(
    tree: &'t Tree,
    id: NodeId,
    parent: u32,
    name: &'t [u8],
    min_blocks: u64,
) -> Rec<'t> {
    let node = &tree.nodes[id.0];
    let kind = match &node.kind {
        NodeKind::Dir => RecKind::Dir {
            node: Some(id),
            entries: Vec::new(),
            subdirs: 0,
            min_blocks,
        },
        NodeKind::File(d) => RecKind::File(d),
        NodeKind::Symlink(t) => RecKind::Symlink(t),
        NodeKind::CharDev { major, minor } => RecKind::CharDev(*major, *minor),
        NodeKind::BlockDev { major, minor } => RecKind::BlockDev(*major, *minor),
        NodeKind::Fifo => RecKind::Fifo,
        NodeKind::Socket => RecKind::Socket,
    };
    Rec {
        meta: node.meta,
        kind,
        links: 0,
        parent,
        name,
    }
}

/// Numbers every reachable node and fills in directory entries and link
/// counts. See the module documentation for the order.
fn number<'t>(
    tree: &'t Tree,
    lost_found_meta: Meta,
    lpf_blocks: u64,
) -> Result<Inodes<'t>, Ext2Error> {
    let mut recs: Vec<Option<Rec<'t>>> = (0..=disk::FIRST_INO).map(|_| None).collect();
    let mut last_ino = disk::FIRST_INO;
    let mut ino_of = vec![0u32; tree.nodes.len()];
    let root = tree.root();
    recs[disk::ROOT_INO as usize] = Some(rec_from_node(tree, root, disk::ROOT_INO, b"", 1));
    ino_of[root.0] = disk::ROOT_INO;

    // lost+found is inode 11 whatever it is; made here if the tree has none.
    let synth_lpf = match tree.nodes[root.0].children.get(LOST_FOUND) {
        Some(&id) => {
            recs[disk::FIRST_INO as usize] = Some(rec_from_node(
                tree,
                id,
                disk::ROOT_INO,
                LOST_FOUND,
                lpf_blocks,
            ));
            ino_of[id.0] = disk::FIRST_INO;
            false
        }
        None => {
            recs[disk::FIRST_INO as usize] = Some(Rec {
                meta: lost_found_meta,
                kind: RecKind::Dir {
                    node: None,
                    entries: Vec::new(),
                    subdirs: 0,
                    min_blocks: lpf_blocks,
                },
                links: 0,
                parent: disk::ROOT_INO,
                name: LOST_FOUND,
            });
            true
        }
    };

    let mut stack = vec![(disk::ROOT_INO, disk::ROOT_INO)];
    while let Some((dir_ino, parent_ino)) = stack.pop() {
        let node = match &recs[dir_ino as usize] {
            Some(Rec {
                kind: RecKind::Dir { node, .. },
                ..
            }) => *node,
            _ => None,
        };
        let mut entries = vec![
            Entry {
                name: b".",
                ino: dir_ino,
                file_type: disk::FT_DIR,
            },
            Entry {
                name: b"..",
                ino: parent_ino,
                file_type: disk::FT_DIR,
            },
        ];
        let mut subdirs = Vec::new();
        if let Some(id) = node {
            for (name, &child) in &tree.nodes[id.0].children {
                let mut ino = ino_of[child.0];
                if ino == 0 {
                    ino = u32::try_from(recs.len()).map_err(|_| Ext2Error::TooManyInodes {
                        count: tree.nodes.len() as u64,
                    })?;
                    last_ino = ino;
                    recs.push(Some(rec_from_node(tree, child, dir_ino, name, 1)));
                    ino_of[child.0] = ino;
                }
                let kind = &tree.nodes[child.0].kind;
                if kind.is_dir() {
                    subdirs.push(ino);
                }
                if let Some(r) = recs[ino as usize].as_mut() {
                    r.links += 1;
                }
                entries.push(Entry {
                    name,
                    ino,
                    file_type: file_type(kind),
                });
            }
        }
        if dir_ino == disk::ROOT_INO && synth_lpf {
            let at = entries[2..].partition_point(|e| e.name < LOST_FOUND) + 2;
            entries.insert(
                at,
                Entry {
                    name: LOST_FOUND,
                    ino: disk::FIRST_INO,
                    file_type: disk::FT_DIR,
                },
            );
            subdirs.insert(0, disk::FIRST_INO);
        }
        if let Some(Rec {
            kind:
                RecKind::Dir {
                    entries: e,
                    subdirs: s,
                    ..
                },
            ..
        }) = recs[dir_ino as usize].as_mut()
        {
            *e = entries;
            *s = subdirs.len() as u64;
        }
        stack.extend(subdirs.into_iter().rev().map(|d| (d, dir_ino)));
    }
    // A directory's links: its own entry in the parent (or the root's
    // "."), its ".", and each subdirectory's "..".
    for r in recs.iter_mut().flatten() {
        if let RecKind::Dir { subdirs, .. } = r.kind {
            r.links = 2 + subdirs;
        }
    }
    Ok(Inodes { recs, last_ino })
}

/// Lays out a directory's entries in blocks: entries never straddle a block
/// and the last one in each block claims the rest of it (`rec_len`).
// `bs` is a block size, at most 4096 (`check_options`), and an entry is at
// most `dirent_len(255)` bytes (names are capped in `Tree`), so every
// `rec_len` written here fits in 16 bits.
#[allow(clippy::cast_possible_truncation)]
fn pack_dir(entries: &[Entry<'_>], bs: usize, min_blocks: u64) -> Vec<u8> {
    let mut out = vec![0u8; bs];
    let mut block = 0usize;
    let mut pos = 0usize;
    let mut last: Option<usize> = None;
    let close = |out: &mut Vec<u8>, block: usize, last: Option<usize>| {
        if let Some(off) = last {
            let rec_len = (bs - off) as u16;
            out[block + off + 4..block + off + 6].copy_from_slice(&rec_len.to_le_bytes());
        }
    };
    for e in entries {
        let need = disk::dirent_len(e.name.len());
        if pos + need > bs {
            close(&mut out, block, last);
            block = out.len();
            out.resize(block + bs, 0);
            pos = 0;
        }
        disk::put_dirent(
            &mut out[block + pos..],
            e.ino,
            need as u16,
            e.name,
            e.file_type,
        );
        last = Some(pos);
        pos += need;
    }
    close(&mut out, block, last);
    while ((out.len() / bs) as u64) < min_blocks {
        let at = out.len();
        out.resize(at + bs, 0);
        // An empty block is one unused entry spanning it.
        disk::put_dirent(&mut out[at..], 0, bs as u16, b"", 0);
    }
    out
}

/// The logical block ranges of a file that hold data, found with
/// SEEK_DATA/SEEK_HOLE. Sources that cannot tell report everything as data.
fn probe_extents<Fd: AsFd>(
    fd: Fd,
    base: u64,
    len: u64,
    bs: u64,
) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |from: u64, to: u64| {
        let (s, e) = (from / bs, to.div_ceil(bs));
        match out.last_mut() {
            Some((ls, lc)) if *ls + *lc >= s => *lc = (*lc).max(e - *ls),
            _ => out.push((s, e - s)),
        }
    };
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(&fd, SeekFrom::Data(base + pos)) {
            Ok(d) => d.saturating_sub(base).max(pos),
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {
                push(pos, len);
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match seek(&fd, SeekFrom::Hole(base + data)) {
            Ok(h) => h.saturating_sub(base),
            Err(Errno::NXIO) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => len,
            Err(e) => return Err(e.into()),
        };
        let end = hole.clamp(data + 1, len);
        push(data, end);
        pos = end;
    }
    Ok(out)
}

fn file_extents(
    dirs: &mut DirCache,
    data: &FileData,
    bs: u64,
    image_path: impl Fn() -> String,
) -> Result<Vec<(u64, u64)>, Ext2Error> {
    match data {
        FileData::Empty => Ok(Vec::new()),
        FileData::Bytes(b) if b.is_empty() => Ok(Vec::new()),
        FileData::Bytes(b) => Ok(vec![(0, (b.len() as u64).div_ceil(bs))]),
        FileData::Host { len: 0, .. } | FileData::Range { len: 0, .. } => Ok(Vec::new()),
        FileData::Host { path, len } => {
            let f = dirs.open(path).map_err(|source| Ext2Error::OpenSource {
                path: path.clone(),
                source,
            })?;
            probe_extents(&f, 0, *len, bs).map_err(|source| Ext2Error::ReadSource {
                path: path.clone(),
                source,
            })
        }
        FileData::Range { file, offset, len } => {
            probe_extents(&**file, *offset, *len, bs).map_err(|source| Ext2Error::ReadRange {
                image_path: image_path(),
                offset: *offset,
                len: *len,
                source,
            })
        }
    }
}

/// Block count and geometry that give `want_free` data blocks and
/// `inodes` inodes.
fn derive_geometry(bs: u32, want_free: u64, inodes: u64) -> Result<Geometry, Ext2Error> {
    let bsl = u64::from(bs);
    let max_blocks = u64::from(u32::MAX);
    let mut blocks = want_free + 4 + (inodes * INODE_SIZE as u64).div_ceil(bsl);
    loop {
        if blocks > max_blocks {
            return Err(Ext2Error::ImageTooLarge {
                size: blocks.saturating_mul(bsl),
                block_size: bs,
                max: max_blocks * bsl,
            });
        }
        match Geometry::new(bs, blocks, inodes) {
            Ok(geo) if geo.capacity() >= want_free => return Ok(geo),
            Ok(geo) => blocks += want_free - geo.capacity(),
            Err(GeometryError::TooFewBlocks) => blocks += blocks / 8 + 16,
            Err(GeometryError::TooManyInodes) => blocks += 8 * bsl,
        }
    }
}

/// The geometry for this content: the given size, or one derived with
/// headroom (a fifth more data blocks, at least 4 MiB free, and a quarter
/// more inodes, at least 1024).
fn choose_geometry(
    opts: &Options,
    content: u64,
    used_inodes: u64,
) -> Result<(Geometry, u64), Ext2Error> {
    let bs = opts.block_size;
    let bsl = u64::from(bs);
    let min_geo = || derive_geometry(bs, content, used_inodes);
    let Some(size) = opts.size else {
        let headroom = (content / 5).max((4 << 20) / bsl);
        let inodes = used_inodes + (used_inodes / 4).max(1024);
        let geo = derive_geometry(bs, content + headroom, inodes)?;
        let size = geo.blocks_count * bsl;
        return Ok((geo, size));
    };
    let blocks = size / bsl;
    if blocks > u64::from(u32::MAX) {
        return Err(Ext2Error::ImageTooLarge {
            size,
            block_size: bs,
            max: u64::from(u32::MAX) * bsl,
        });
    }
    let too_small = || -> Ext2Error {
        match min_geo() {
            Ok(g) => Ext2Error::ImageTooSmall {
                size,
                needed: g.blocks_count * bsl,
            },
            Err(e) => e,
        }
    };
    // mke2fs's inode ratio when it fits; else as many inodes as are used, so
    // that the smallest size reported in the error does work.
    let wanted = (size / INODE_RATIO).max(used_inodes + 16);
    let fits = |inodes: u64| {
        Geometry::new(bs, blocks, inodes)
            .ok()
            .filter(|g| g.capacity() >= content)
    };
    let geo = fits(wanted)
        .or_else(|| fits(used_inodes))
        .ok_or_else(too_small)?;
    Ok((geo, size))
}

/// Splits `content` (whole blocks in logical order) along `runs`.
fn place(content: &[u8], runs: &[Run], bs: u64, chunks: &mut Vec<Chunk>) {
    for r in runs {
        // Offsets past what usize can hold are past `content` too.
        let from = usize::try_from(r.lblock * bs).unwrap_or(usize::MAX);
        let to = usize::try_from((r.lblock + r.count) * bs)
            .unwrap_or(usize::MAX)
            .min(content.len());
        if from < to {
            chunks.push(Chunk {
                offset: r.pblock * bs,
                data: content[from..to].to_vec(),
            });
        }
    }
}

fn hash_meta(h: &mut Sha256, m: &Meta) {
    h.update(m.mode.to_le_bytes());
    h.update(m.uid.to_le_bytes());
    h.update(m.gid.to_le_bytes());
    for t in [m.atime, m.mtime, m.ctime] {
        h.update(t.secs.to_le_bytes());
        h.update(t.nsec.to_le_bytes());
    }
}

/// A UUID from the tree as numbered and the options: the same description
/// gives the same UUID. Version 5 style bits mark it as name-based.
fn derive_uuid(inodes: &Inodes<'_>, opts: &Options) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"supermin-ext2 uuid v1\0");
    h.update(opts.block_size.to_le_bytes());
    h.update(opts.size.unwrap_or(u64::MAX).to_le_bytes());
    h.update(opts.creation_time.to_le_bytes());
    h.update(opts.label.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    h.update(opts.hash_seed.unwrap_or_default());
    for (ino, rec) in inodes.iter() {
        h.update(ino.to_le_bytes());
        hash_meta(&mut h, &rec.meta);
        match &rec.kind {
            RecKind::Dir { entries, .. } => {
                h.update(b"d");
                for e in entries {
                    h.update(e.ino.to_le_bytes());
                    // Names are at most MAX_NAME_LEN (255) bytes, checked by Tree.
                    #[allow(clippy::cast_possible_truncation)]
                    h.update([e.name.len() as u8]);
                    h.update(e.name);
                }
            }
            RecKind::File(d) => {
                h.update(b"f");
                h.update(d.len().to_le_bytes());
                match d {
                    FileData::Empty => {}
                    FileData::Host { path, .. } => {
                        use std::os::unix::ffi::OsStrExt;
                        h.update(path.as_os_str().as_bytes());
                    }
                    FileData::Range { offset, .. } => h.update(offset.to_le_bytes()),
                    FileData::Bytes(b) => h.update(b),
                }
                h.update([0]);
            }
            RecKind::Symlink(t) => {
                h.update(b"l");
                h.update(t);
                h.update([0]);
            }
            RecKind::CharDev(a, b) | RecKind::BlockDev(a, b) => {
                h.update(if matches!(rec.kind, RecKind::CharDev(..)) {
                    b"c"
                } else {
                    b"b"
                });
                h.update(a.to_le_bytes());
                h.update(b.to_le_bytes());
            }
            RecKind::Fifo => h.update(b"p"),
            RecKind::Socket => h.update(b"s"),
        }
    }
    let digest = h.finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x50;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

fn derive_hash_seed(uuid: &[u8; 16]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"supermin-ext2 hash seed v1\0")
        .chain_update(uuid)
        .finalize();
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&digest[..16]);
    seed
}

/// What each inode got in the sweep.
struct Placed {
    map: BlockMap,
    /// For directories and slow symlinks: the bytes of their blocks.
    content: Vec<u8>,
}

/// The inodes sorted by what they need from the block sweep, in inode
/// order, after the limits are checked.
struct Needs<'t> {
    files: Vec<(u32, &'t FileData)>,
    dirs: Vec<(u32, Vec<u8>)>,
    slow_links: Vec<(u32, &'t [u8])>,
}

fn check_and_sort<'t>(inodes: &Inodes<'t>, bs: u32) -> Result<Needs<'t>, Ext2Error> {
    let max_size = disk::max_file_size(bs.trailing_zeros());
    let mut needs = Needs {
        files: Vec::new(),
        dirs: Vec::new(),
        slow_links: Vec::new(),
    };
    for (ino, rec) in inodes.iter() {
        let max_links = if matches!(rec.kind, RecKind::Dir { .. }) {
            DIR_LINK_MAX
        } else {
            FILE_LINK_MAX
        };
        if rec.links > max_links {
            return Err(Ext2Error::TooManyLinks {
                path: inodes.path_of(ino),
                links: rec.links,
                max: max_links,
            });
        }
        match &rec.kind {
            RecKind::Dir {
                entries,
                min_blocks,
                ..
            } => {
                let content = pack_dir(entries, bs as usize, *min_blocks);
                // Without large_dir, a directory's size is 32 bits.
                if content.len() as u64 > u64::from(u32::MAX) {
                    return Err(Ext2Error::DirTooLarge {
                        path: inodes.path_of(ino),
                        size: content.len() as u64,
                    });
                }
                needs.dirs.push((ino, content));
            }
            RecKind::File(d) => {
                if d.len() > max_size {
                    return Err(Ext2Error::FileTooLarge {
                        path: inodes.path_of(ino),
                        len: d.len(),
                        block_size: bs,
                        max: max_size,
                    });
                }
                needs.files.push((ino, d));
            }
            // Shorter targets live in i_block (fast symlinks).
            RecKind::Symlink(t) if t.len() >= 60 => {
                // e2fsck wants a slow symlink's size below the block size.
                if t.len() >= bs as usize {
                    return Err(Ext2Error::SymlinkTooLong {
                        path: inodes.path_of(ino),
                        len: t.len(),
                        block_size: bs,
                        max: bs as usize - 1,
                    });
                }
                needs.slow_links.push((ino, t));
            }
            _ => {}
        }
    }
    Ok(needs)
}

/// The block sweep: every directory, slow symlink and file gets its blocks;
/// in-memory contents become chunks and host data becomes copy jobs.
fn allocate<'t>(
    alloc: &mut Allocator<'_>,
    needs: Needs<'t>,
    extents: &[Vec<(u64, u64)>],
    inodes: &Inodes<'t>,
    bs: u32,
    chunks: &mut Vec<Chunk>,
) -> Result<(Vec<Option<Placed>>, Vec<CopyJob<'t>>), Ext2Error> {
    let bsl = u64::from(bs);
    let ppb = bsl / 4;
    let mut placed: Vec<Option<Placed>> = (0..=inodes.last_ino()).map(|_| None).collect();
    // choose_geometry checked the capacity against the same counts.
    let out_of_space = |_| Ext2Error::Internal {
        what: "block allocation overran the planned image size",
    };
    for (ino, content) in needs.dirs {
        let mut m = Mapper::new(ppb, true, || alloc.alloc());
        m.map_range(0, content.len() as u64 / bsl)
            .map_err(out_of_space)?;
        placed[ino as usize] = Some(Placed {
            map: m.finish(),
            content,
        });
    }
    for (ino, target) in needs.slow_links {
        let mut m = Mapper::new(ppb, true, || alloc.alloc());
        m.map_block(0).map_err(out_of_space)?;
        let mut content = target.to_vec();
        content.resize(bs as usize, 0);
        placed[ino as usize] = Some(Placed {
            map: m.finish(),
            content,
        });
    }
    let mut jobs = Vec::new();
    for ((ino, data), ext) in needs.files.iter().zip(extents) {
        let mut m = Mapper::new(ppb, true, || alloc.alloc());
        for &(start, count) in ext {
            m.map_range(start, count).map_err(out_of_space)?;
        }
        let map = m.finish();
        let source = match data {
            FileData::Bytes(b) if !b.is_empty() => {
                let mut content = b.to_vec();
                content.resize(content.len().next_multiple_of(bs as usize), 0);
                place(&content, &map.runs, bsl, chunks);
                None
            }
            FileData::Host { path, .. } => Some(Source::Host(path)),
            FileData::Range { file, offset, .. } => Some(Source::Range {
                file,
                offset: *offset,
                image_path: inodes.path_of(*ino),
            }),
            _ => None,
        };
        if let Some(source) = source.filter(|_| !map.runs.is_empty()) {
            jobs.push(CopyJob {
                source,
                len: data.len(),
                runs: map.runs.clone(),
            });
        }
        placed[*ino as usize] = Some(Placed {
            map,
            content: Vec::new(),
        });
    }
    Ok((placed, jobs))
}

fn encode_inode(
    rec: &Rec<'_>,
    placed: Option<&Placed>,
    crtime: Timestamp,
    bs: u64,
) -> Result<Inode, Ext2Error> {
    let mut block = [0u8; 60];
    let (type_bits, size) = match &rec.kind {
        RecKind::Dir { .. } => (disk::S_IFDIR, placed.map_or(0, |p| p.content.len() as u64)),
        RecKind::File(d) => (disk::S_IFREG, d.len()),
        RecKind::Symlink(t) => {
            if t.len() < 60 {
                block[..t.len()].copy_from_slice(t);
            }
            (disk::S_IFLNK, t.len() as u64)
        }
        RecKind::CharDev(major, minor) => {
            put_dev(&mut block, *major, *minor);
            (disk::S_IFCHR, 0)
        }
        RecKind::BlockDev(major, minor) => {
            put_dev(&mut block, *major, *minor);
            (disk::S_IFBLK, 0)
        }
        RecKind::Fifo => (disk::S_IFIFO, 0),
        RecKind::Socket => (disk::S_IFSOCK, 0),
    };
    let mut blocks_512 = 0u32;
    if let Some(p) = placed {
        if p.map.total_blocks > 0 {
            block = disk::block_pointers(&p.map.i_block);
        }
        // Fits: files are capped at max_file_size, whose bound counts
        // indirect blocks in i_blocks; directories are capped at 4 GiB.
        blocks_512 = u32::try_from(p.map.total_blocks * (bs / 512))
            .map_err(|_| internal("i_blocks of an inode exceeds 32 bits"))?;
    }
    Ok(Inode {
        mode: type_bits | (rec.meta.mode & 0o7777),
        uid: rec.meta.uid,
        gid: rec.meta.gid,
        size,
        atime: rec.meta.atime,
        ctime: rec.meta.ctime,
        mtime: rec.meta.mtime,
        crtime,
        // check_and_sort capped links at FILE_LINK_MAX.
        links_count: u16::try_from(rec.links)
            .map_err(|_| internal("a link count exceeds 16 bits"))?,
        blocks_512,
        block,
    })
}

/// A value the plan derived that does not fit its on-disk field: the checks
/// before it (options, geometry, link counts) should have made that impossible.
fn internal(what: &'static str) -> Ext2Error {
    Ext2Error::Internal { what }
}

/// Directory, slow symlink and indirect blocks as chunks.
fn block_chunks(placed: &[Option<Placed>], bs: u32, chunks: &mut Vec<Chunk>) {
    let bsl = u64::from(bs);
    for p in placed.iter().flatten() {
        place(&p.content, &p.map.runs, bsl, chunks);
        for (phys, ptrs) in &p.map.indirect {
            let mut b = vec![0u8; bs as usize];
            for (i, v) in ptrs.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            chunks.push(Chunk {
                offset: u64::from(*phys) * bsl,
                data: b,
            });
        }
    }
}

/// Descriptors, bitmaps and inode tables of every group. Inodes are used
/// from 1 up to `last_ino` and blocks from each group's start up to what the
/// sweep handed out, so both bitmaps are a run of ones; the bits past the
/// end of the group are set too, as e2fsck expects. Inode tables are
/// written up to the last used inode only: the rest stays a hole, and
/// zeros are what an unused inode is.
fn group_metadata(
    geo: &Geometry,
    alloc: &Allocator<'_>,
    inodes: &Inodes<'_>,
    itable: &[u8],
    chunks: &mut Vec<Chunk>,
) -> Result<Vec<disk::GroupDesc>, Ext2Error> {
    let bs = u64::from(geo.block_size);
    let bsz = geo.block_size as usize;
    let ipg = u64::from(geo.inodes_per_group);
    let last_ino = u64::from(inodes.last_ino());
    let mut dirs_per_group = vec![0u16; geo.groups as usize];
    for (ino, rec) in inodes.iter() {
        if let RecKind::Dir { .. } = rec.kind {
            dirs_per_group[((ino - 1) / geo.inodes_per_group) as usize] += 1;
        }
    }
    let block_nr =
        |b: u64| u32::try_from(b).map_err(|_| internal("a block number exceeds 32 bits"));
    let index = |n: u64| usize::try_from(n).map_err(|_| internal("a group's size exceeds usize"));
    let mut descs = Vec::with_capacity(geo.groups as usize);
    for g in 0..geo.groups {
        let len = geo.group_len(g);
        let used_blocks = geo.overhead(g) + alloc.used_in_group(g);
        let first_ino = u64::from(g) * ipg + 1;
        let used_inodes = (last_ino + 1).saturating_sub(first_ino).min(ipg);
        descs.push(disk::GroupDesc {
            block_bitmap: block_nr(geo.block_bitmap(g))?,
            inode_bitmap: block_nr(geo.inode_bitmap(g))?,
            inode_table: block_nr(geo.inode_table(g))?,
            // A group has at most 8 * 4096 blocks and, by Geometry::new,
            // fewer than 65536 inodes.
            free_blocks: u16::try_from(len - used_blocks)
                .map_err(|_| internal("a group's free block count exceeds 16 bits"))?,
            free_inodes: u16::try_from(ipg - used_inodes)
                .map_err(|_| internal("a group's free inode count exceeds 16 bits"))?,
            used_dirs: dirs_per_group[g as usize],
        });
        let mut bmap = vec![0u8; bsz];
        disk::set_bits(&mut bmap, 0, index(used_blocks)?);
        disk::set_bits(&mut bmap, index(len)?, 8 * bsz);
        chunks.push(Chunk {
            offset: geo.block_bitmap(g) * bs,
            data: bmap,
        });
        let mut imap = vec![0u8; bsz];
        disk::set_bits(&mut imap, 0, index(used_inodes)?);
        disk::set_bits(&mut imap, geo.inodes_per_group as usize, 8 * bsz);
        chunks.push(Chunk {
            offset: geo.inode_bitmap(g) * bs,
            data: imap,
        });
        if used_inodes > 0 {
            let from = index(first_ino - 1)? * INODE_SIZE;
            let to = from + index(used_inodes)? * INODE_SIZE;
            chunks.push(Chunk {
                offset: geo.inode_table(g) * bs,
                data: itable[from..to].to_vec(),
            });
        }
    }
    Ok(descs)
}

/// The superblock and descriptor table, in group 0 and in every group that
/// keeps a backup.
fn superblock_copies(
    geo: &Geometry,
    sb: &Superblock,
    descs: &[disk::GroupDesc],
    chunks: &mut Vec<Chunk>,
) -> Result<(), Ext2Error> {
    let bs = u64::from(geo.block_size);
    let gdt_len = usize::try_from(geo.gdt_blocks * bs)
        .map_err(|_| internal("the descriptor table's size exceeds usize"))?;
    let mut gdt = Vec::with_capacity(gdt_len);
    for d in descs {
        gdt.extend_from_slice(&d.encode());
    }
    gdt.resize(gdt_len, 0);
    for g in (0..geo.groups).filter(|&g| geo.backup_blocks(g) > 0) {
        let start = geo.group_start(g);
        let sb_offset = if g == 0 {
            disk::SUPERBLOCK_OFFSET
        } else {
            start * bs
        };
        // s_block_group_nr is 16 bits: like e2fsprogs, groups past 65535
        // store the low 16 bits of their number.
        let [lo, hi, ..] = g.to_le_bytes();
        chunks.push(Chunk {
            offset: sb_offset,
            data: sb.encode(u16::from_le_bytes([lo, hi])).to_vec(),
        });
        chunks.push(Chunk {
            offset: (start + 1) * bs,
            data: gdt.clone(),
        });
    }
    Ok(())
}

pub(crate) fn plan<'t>(tree: &'t Tree, opts: &Options) -> Result<Plan<'t>, Ext2Error> {
    let bs = opts.block_size;
    let bsl = u64::from(bs);
    let ppb = bsl / 4;
    let creation = Timestamp {
        secs: opts.creation_time,
        nsec: 0,
    };
    let lpf_meta = Meta {
        mode: 0o700,
        uid: 0,
        gid: 0,
        atime: creation,
        mtime: creation,
        ctime: creation,
    };
    let lpf_blocks = (LOST_FOUND_BYTES / bsl).clamp(2, disk::N_DIRECT as u64);
    let inodes = number(tree, lpf_meta, lpf_blocks)?;
    let last_ino = inodes.last_ino();
    let needs = check_and_sort(&inodes, bs)?;

    // Probing holes opens every host file once; both cores help.
    let extents: Vec<Vec<(u64, u64)>> = needs
        .files
        .par_iter()
        .map_init(DirCache::default, |dirs, (ino, d)| {
            file_extents(dirs, d, bsl, || inodes.path_of(*ino))
        })
        .collect::<Result<_, _>>()?;

    let dir_blocks: u64 = needs
        .dirs
        .iter()
        .map(|(_, c)| blocks_needed(&[(0, c.len() as u64 / bsl)], ppb))
        .sum();
    let file_blocks: u64 = extents.iter().map(|e| blocks_needed(e, ppb)).sum();
    let content = dir_blocks + file_blocks + needs.slow_links.len() as u64;
    let (geo, image_size) = choose_geometry(opts, content, u64::from(last_ino))?;

    let mut chunks = Vec::new();
    let mut alloc = Allocator::new(&geo);
    let (placed, mut jobs) = allocate(&mut alloc, needs, &extents, &inodes, bs, &mut chunks)?;
    debug_assert_eq!(alloc.allocated(), content);
    block_chunks(&placed, bs, &mut chunks);

    let mut itable = vec![0u8; last_ino as usize * INODE_SIZE];
    for (ino, rec) in inodes.recs.iter().enumerate() {
        if let Some(rec) = rec {
            let at = (ino - 1) * INODE_SIZE;
            let inode = encode_inode(rec, placed[ino].as_ref(), creation, bsl)?;
            itable[at..at + INODE_SIZE].copy_from_slice(&inode.encode());
        }
    }
    let descs = group_metadata(&geo, &alloc, &inodes, &itable, &mut chunks)?;

    let uuid = opts.uuid.unwrap_or_else(|| derive_uuid(&inodes, opts));
    let mut volume_name = [0u8; 16];
    if let Some(l) = &opts.label {
        volume_name[..l.len()].copy_from_slice(l.as_bytes());
    }
    let free_blocks: u64 = descs.iter().map(|d| u64::from(d.free_blocks)).sum();
    let free_inodes: u64 = descs.iter().map(|d| u64::from(d.free_inodes)).sum();
    // choose_geometry keeps the block count within 32 bits and
    // Geometry::new the inode count; the rest are smaller.
    let sb_u32 =
        |v: u64| u32::try_from(v).map_err(|_| internal("a superblock count exceeds 32 bits"));
    let sb = Superblock {
        inodes_count: sb_u32(geo.inodes_count())?,
        blocks_count: sb_u32(geo.blocks_count)?,
        r_blocks_count: 0,
        free_blocks_count: sb_u32(free_blocks)?,
        free_inodes_count: sb_u32(free_inodes)?,
        first_data_block: sb_u32(geo.first_data_block)?,
        log_block_size: geo.log_block_size - 10,
        blocks_per_group: sb_u32(geo.blocks_per_group)?,
        inodes_per_group: geo.inodes_per_group,
        // s_wtime is unsigned 32-bit seconds: before 1970 is 0, past 2106 u32::MAX.
        time: u32::try_from(opts.creation_time.max(0)).unwrap_or(u32::MAX),
        uuid,
        volume_name,
        hash_seed: opts.hash_seed.unwrap_or_else(|| derive_hash_seed(&uuid)),
        large_file: true,
    };
    superblock_copies(&geo, &sb, &descs, &mut chunks)?;
    chunks.sort_unstable_by_key(|c| c.offset);
    jobs.sort_by_key(|j| j.runs.first().map_or(0, |r| r.pblock));

    Ok(Plan {
        image_size,
        block_size: bs,
        chunks,
        jobs,
        summary: Summary {
            size: image_size,
            blocks_used: geo.blocks_count - free_blocks,
            inodes_used: u64::from(last_ino),
            uuid,
            private: false,
        },
    })
}

fn put_dev(block: &mut [u8; 60], major: u32, minor: u32) {
    let [w0, w1] = disk::encode_dev(major, minor);
    block[0..4].copy_from_slice(&w0.to_le_bytes());
    block[4..8].copy_from_slice(&w1.to_le_bytes());
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn entry(name: &[u8], ino: u32) -> Entry<'_> {
        Entry {
            name,
            ino,
            file_type: disk::FT_REG,
        }
    }

    /// Walks a packed directory the way the kernel reads it.
    fn read_entries(content: &[u8], bs: usize) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for block in content.chunks(bs) {
            let mut pos = 0;
            while pos < bs {
                let ino = u32::from_le_bytes(block[pos..pos + 4].try_into().unwrap());
                let rec_len = u16::from_le_bytes([block[pos + 4], block[pos + 5]]) as usize;
                let name_len = block[pos + 6] as usize;
                assert!(rec_len >= disk::dirent_len(name_len) && rec_len % 4 == 0);
                if ino != 0 {
                    out.push((ino, block[pos + 8..pos + 8 + name_len].to_vec()));
                }
                pos += rec_len;
            }
            assert_eq!(pos, bs, "entries must end exactly at the block end");
        }
        out
    }

    #[test]
    fn packed_directory_blocks_hold_every_entry_once() {
        let names: Vec<Vec<u8>> = (0..300)
            .map(|i| vec![b'a' + (i % 26) as u8; 1 + i % 255])
            .collect();
        let entries: Vec<Entry> = names
            .iter()
            .enumerate()
            .map(|(i, n)| entry(n, i as u32 + 12))
            .collect();
        let content = pack_dir(&entries, 1024, 1);
        assert_eq!(content.len() % 1024, 0);
        let got = read_entries(&content, 1024);
        let want: Vec<(u32, Vec<u8>)> = entries.iter().map(|e| (e.ino, e.name.to_vec())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn directory_is_padded_with_empty_blocks_to_its_minimum() {
        let entries = [entry(b".", 11), entry(b"..", 2)];
        let content = pack_dir(&entries, 4096, 4);
        assert_eq!(content.len(), 4 * 4096);
        assert_eq!(read_entries(&content, 4096).len(), 2);
    }

    #[test]
    fn probing_a_sparse_file_finds_only_its_data() {
        use std::os::unix::fs::FileExt;
        let dir = std::env::temp_dir().join(format!("ext2-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.write_all_at(b"y", 40 << 20).unwrap();
        let ext = probe_extents(&f, 0, 64 << 20, 4096).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Filesystems may round data extents up to their own allocation
        // unit, but the data must be found and the big hole left out.
        let covered: u64 = ext.iter().map(|e| e.1).sum();
        assert!(ext.iter().any(|&(s, c)| s == 0 && c >= 1));
        assert!(ext
            .iter()
            .any(|&(s, c)| (s..s + c).contains(&((40 << 20) / 4096))));
        assert!(covered < 1024, "{ext:?}");
    }

    #[test]
    fn probing_stops_at_the_planned_length() {
        use std::os::unix::fs::FileExt;
        let dir = std::env::temp_dir().join(format!("ext2-probe-len-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let f = File::create(&path).unwrap();
        f.write_all_at(&[1u8; 10000], 0).unwrap();
        let ext = probe_extents(&f, 0, 5000, 4096).unwrap();
        // A file that shrank below the planned length: the rest is a hole.
        let ext_long = probe_extents(&f, 0, 100_000, 4096).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ext, vec![(0, 2)]);
        assert_eq!(ext_long, vec![(0, 3)]);
    }

    #[test]
    fn derived_geometry_leaves_headroom() {
        let opts = Options::default();
        let (geo, size) = choose_geometry(&opts, 10_000, 500).unwrap();
        assert_eq!(size, geo.blocks_count * 4096);
        assert!(geo.capacity() >= 12_000);
        assert!(geo.inodes_count() >= 1524);
    }

    #[test]
    fn explicit_size_too_small_names_the_size_needed() {
        let opts = Options {
            size: Some(1 << 20),
            ..Options::default()
        };
        match choose_geometry(&opts, 10_000, 500) {
            Err(Ext2Error::ImageTooSmall { size, needed }) => {
                assert_eq!(size, 1 << 20);
                assert!(needed > 10_000 * 4096);
                let ok = Options {
                    size: Some(needed),
                    ..Options::default()
                };
                assert!(choose_geometry(&ok, 10_000, 500).is_ok());
            }
            other => panic!("{other:?}"),
        }
    }
}
