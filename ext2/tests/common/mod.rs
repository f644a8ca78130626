//! Helpers shared by the integration tests: temporary directories and mounts
//! that clean up on every path, `e2fsck -fn`, a seeded generator, and the
//! check that a mounted image reads back exactly as the tree describes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use supermin_ext2::{FileData, Meta, NodeId, NodeKind, Tree};

/// A directory removed (after unmounting anything under it) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "ext2-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A read-only loop mount, unmounted when dropped (also when a check
/// panics).
pub struct Mount(pub PathBuf);

impl Mount {
    /// Mounts `img` on `dir` as the kernel's ext4 driver reads ext2 (`noload`:
    /// no journal replay). `Err` says why mounting is impossible here.
    pub fn new(img: &Path, dir: &Path) -> Result<Mount, String> {
        if !is_root() {
            return Err("not running as root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro,noload"])
            .arg(img)
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `e2fsck -fn` and panics with its output unless it found nothing.
pub fn assert_fsck_clean(img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed ({}):\n{text}",
        img.display(),
        out.status
    );
    // A clean run prints the five pass headers and the summary only.
    for line in text.lines() {
        let expected = line.starts_with("Pass ")
            || line.starts_with("e2fsck ")
            || line.contains(" files (")
            || line.trim().is_empty();
        assert!(expected, "unexpected e2fsck output {line:?} in:\n{text}");
    }
}

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn join(root: &Path, path: &[u8]) -> PathBuf {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The byte ranges of an open file that hold data (SEEK_DATA/SEEK_HOLE).
pub fn data_segments(f: &File, base: u64, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(d) = seek(f, SeekFrom::Data(base + pos)) else {
            break;
        };
        let d = d - base;
        if d >= len {
            break;
        }
        let h = seek(f, SeekFrom::Hole(base + d))
            .map_or(len, |h| h - base)
            .min(len);
        out.push((d, h));
        pos = h;
    }
    out
}

fn read_at(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

/// Checks a regular file of the image against its source: the same bytes,
/// and holes where the source has holes (so a sparse file stays sparse).
fn check_contents(data: &FileData, img_file: &Path, bs: u64, what: &str) {
    let img = File::open(img_file).unwrap();
    let len = data.len();
    let (src, base): (Option<File>, u64) = match data {
        FileData::Empty => {
            assert_eq!(img.metadata().unwrap().len(), 0, "{what}");
            return;
        }
        FileData::Bytes(b) => {
            let mut got = Vec::new();
            File::open(img_file).unwrap().read_to_end(&mut got).unwrap();
            assert!(got == **b, "{what}: contents differ");
            return;
        }
        FileData::Host { path, .. } => (Some(File::open(path).unwrap()), 0),
        FileData::Range { file, offset, .. } => (Some(file.try_clone().unwrap()), *offset),
    };
    let src = src.unwrap();
    let segs = data_segments(&src, base, len);
    for &(from, to) in &segs {
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(4 << 20);
            let want = read_at(&src, base + at, n);
            let got = read_at(&img, at, n);
            assert!(want == got, "{what}: contents differ at offset {at}");
            at += n as u64;
        }
    }
    // Data in the image only where the source has it (rounded to blocks).
    for (from, to) in data_segments(&img, 0, len) {
        let inside = segs
            .iter()
            .any(|&(f, t)| f / bs * bs <= from && to <= t.div_ceil(bs) * bs);
        assert!(
            inside,
            "{what}: image has data at {from}..{to} where the source has a hole"
        );
    }
    // Holes read back as zeros: spot-check the start of each.
    let mut prev = 0u64;
    for &(from, to) in segs.iter().chain(std::iter::once(&(len, len))) {
        if from > prev.div_ceil(bs) * bs {
            let at = prev.div_ceil(bs) * bs;
            let n = ((from - at) as usize).min(8192);
            assert!(
                read_at(&img, at, n).iter().all(|&b| b == 0),
                "{what}: hole at {at} not zero"
            );
        }
        prev = to;
    }
}

fn check_meta(meta: &Meta, md: &std::fs::Metadata, what: &str) {
    assert_eq!(
        md.mode() & 0o7777,
        u32::from(meta.mode & 0o7777),
        "{what}: mode"
    );
    assert_eq!(md.uid(), meta.uid, "{what}: uid");
    assert_eq!(md.gid(), meta.gid, "{what}: gid");
    assert_eq!(
        (md.mtime(), md.mtime_nsec() as u32),
        (meta.mtime.secs, meta.mtime.nsec),
        "{what}: mtime"
    );
    assert_eq!(
        (md.atime(), md.atime_nsec() as u32),
        (meta.atime.secs, meta.atime.nsec),
        "{what}: atime"
    );
    assert_eq!(
        (md.ctime(), md.ctime_nsec() as u32),
        (meta.ctime.secs, meta.ctime.nsec),
        "{what}: ctime"
    );
}

/// Compares everything a mounted image holds with `tree`: the set of names
/// in every directory, kinds, modes, owners, times, sizes, contents, symlink
/// targets, device numbers and hard-link groups.
pub fn verify_mounted(tree: &Tree, mnt: &Path, block_size: u32) {
    let bs = u64::from(block_size);
    let mut ino_of: HashMap<NodeId, u64> = HashMap::new();
    let mut node_of: HashMap<u64, NodeId> = HashMap::new();
    let walk = tree.walk();
    let mut names: HashMap<NodeId, u64> = HashMap::new();
    for e in &walk {
        *names.entry(e.id).or_default() += 1;
    }
    for entry in walk {
        let what = show(&entry.path);
        let host = join(mnt, &entry.path);
        let md = std::fs::symlink_metadata(&host)
            .unwrap_or_else(|e| panic!("{what}: missing from the image: {e}"));
        let meta = tree.meta(entry.id);
        check_meta(meta, &md, &what);
        // Hard links: one node <=> one inode.
        if let Some(&ino) = ino_of.get(&entry.id) {
            assert_eq!(
                ino,
                md.ino(),
                "{what}: should share the inode of its other names"
            );
        }
        if let Some(&id) = node_of.get(&md.ino()) {
            assert_eq!(id, entry.id, "{what}: shares an inode with another node");
        }
        ino_of.insert(entry.id, md.ino());
        node_of.insert(md.ino(), entry.id);
        let ft = md.file_type();
        match tree.kind(entry.id) {
            NodeKind::Dir => {
                assert!(ft.is_dir(), "{what}: not a directory");
                let mut want: Vec<Vec<u8>> =
                    tree.children(entry.id).map(|(n, _)| n.to_vec()).collect();
                if entry.path == b"/" && tree.lookup(b"/lost+found").is_none() {
                    want.push(b"lost+found".to_vec());
                }
                want.sort();
                let mut got: Vec<Vec<u8>> = std::fs::read_dir(&host)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                    .collect();
                got.sort();
                assert!(want == got, "{what}: directory entries differ");
                let subdirs = want
                    .iter()
                    .filter(|n| {
                        std::fs::symlink_metadata(host.join(OsStr::from_bytes(n)))
                            .unwrap()
                            .is_dir()
                    })
                    .count() as u64;
                assert_eq!(md.nlink(), 2 + subdirs, "{what}: link count");
            }
            NodeKind::File(data) => {
                assert!(ft.is_file(), "{what}: not a regular file");
                assert_eq!(md.len(), data.len(), "{what}: size");
                assert_eq!(md.nlink(), names[&entry.id], "{what}: link count");
                check_contents(data, &host, bs, &what);
            }
            NodeKind::Symlink(target) => {
                assert!(ft.is_symlink(), "{what}: not a symlink");
                let got = std::fs::read_link(&host).unwrap();
                assert_eq!(got.as_os_str().as_bytes(), &target[..], "{what}: target");
            }
            NodeKind::CharDev { major, minor } => {
                assert!(ft.is_char_device(), "{what}: not a char device");
                assert_eq!(split_dev(md.rdev()), (*major, *minor), "{what}: device");
            }
            NodeKind::BlockDev { major, minor } => {
                assert!(ft.is_block_device(), "{what}: not a block device");
                assert_eq!(split_dev(md.rdev()), (*major, *minor), "{what}: device");
            }
            NodeKind::Fifo => assert!(ft.is_fifo(), "{what}: not a FIFO"),
            NodeKind::Socket => assert!(ft.is_socket(), "{what}: not a socket"),
        }
    }
}

pub fn split_dev(rdev: u64) -> (u32, u32) {
    (rustix::fs::major(rdev), rustix::fs::minor(rdev))
}
