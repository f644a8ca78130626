//! Input fingerprints: one SHA-256 over everything that determines an output.
//!
//! The hash input is a sequence of typed records. Each record starts with a
//! tag byte and every variable-length field is prefixed with its length, so
//! two different sequences of parts can never produce the same byte stream
//! (`("ab","c")` and `("a","bc")` differ). The tool version opens the stream,
//! so a new version of the tool never trusts an old output.
//!
//! A file is recorded either by contents (exact, costs a read) or by identity
//! (dev, inode, size, mode, mtime and ctime in nanoseconds, costs a stat).
//! Identity is a sound witness of "unchanged" only because ctime cannot be
//! set by a user and moves on every write. It has one hole, the one git calls
//! "racy": a write that lands in the same timestamp tick as the previous
//! change leaves ctime unchanged. Therefore a file whose ctime or mtime is
//! within [`RACY_WINDOW`] of the moment it is looked at is recorded by
//! identity *and* contents. The cost is one spurious rebuild when an output
//! was built within seconds of an edit to its inputs; the gain is that no
//! edit is ever missed.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::CacheError;

/// How close to "now" a file's ctime or mtime must be to count as racy.
/// Wider than any local filesystem's timestamp granularity (ext2/3 with
/// 128-byte inodes have whole seconds) plus clock tick and NFS attribute skew.
pub const RACY_WINDOW: Duration = Duration::from_secs(3);

/// The result: a SHA-256 digest. Displays and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fingerprint (64 hex digits): {0:?}")]
pub struct ParseFingerprintError(pub String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseFingerprintError(s.chars().take(80).collect());
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// How [`FingerprintBuilder::tree`] records the regular files it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMode {
    /// Every file by its bytes.
    Contents,
    /// Every file by its identity (racy files also by their bytes).
    Identity,
    /// Files up to this many bytes by contents, larger ones by identity.
    ContentsUpTo(u64),
}

impl HashMode {
    fn wants_contents(self, size: u64) -> bool {
        match self {
            HashMode::Contents => true,
            HashMode::Identity => false,
            HashMode::ContentsUpTo(limit) => size <= limit,
        }
    }
}

// Record tags. Part of the hash format: changing one changes every fingerprint.
const TAG_HEADER: u8 = b'H';
const TAG_STR: u8 = b'S';
const TAG_BYTES: u8 = b'B';
const TAG_ENV_SET: u8 = b'E';
const TAG_ENV_UNSET: u8 = b'e';
const TAG_IDENTITY: u8 = b'I';
const TAG_CONTENTS: u8 = b'C';
const TAG_TREE: u8 = b'T';
const TAG_TREE_END: u8 = b't';
const TAG_LOOP: u8 = b'L';
// Entry kinds, inside identity and tree records.
const KIND_MISSING: u8 = b'-';
const KIND_FILE: u8 = b'f';
const KIND_DIR: u8 = b'd';
const KIND_SYMLINK: u8 = b'l';
const KIND_OTHER: u8 = b'o';
const FILE_BY_IDENTITY: u8 = b'i';
const FILE_BY_CONTENTS: u8 = b'c';
const FILE_RACY_CONTENTS: u8 = b'r';

/// Builds a [`Fingerprint`] part by part. The order of calls matters.
pub struct FingerprintBuilder {
    hasher: Sha256,
    racy_window: Duration,
    // Reused across files: a fresh 256 KiB buffer per file would be an
    // mmap/munmap pair each time, which dominates for trees of small files.
    buf: Vec<u8>,
}

impl FingerprintBuilder {
    /// A fingerprint that starts with the tool's version, so that another version never reuses an output.
    pub fn new(tool_version: &str) -> Self {
        let mut b = FingerprintBuilder {
            hasher: Sha256::new(),
            racy_window: RACY_WINDOW,
            buf: Vec::new(),
        };
        b.tag(TAG_HEADER);
        b.field(b"supermin-rs fingerprint v1");
        b.field(tool_version.as_bytes());
        b
    }

    /// A named string part, e.g. an option value (`"size"`, `"4G"`).
    pub fn str(&mut self, key: &str, value: &str) {
        self.tag(TAG_STR);
        self.field(key.as_bytes());
        self.field(value.as_bytes());
    }

    /// A named binary part.
    pub fn bytes(&mut self, key: &str, value: &[u8]) {
        self.tag(TAG_BYTES);
        self.field(key.as_bytes());
        self.field(value);
    }

    /// An environment variable's value as the caller captured it (`None` =
    /// unset; unset and set-to-empty differ). The caller reads the environment,
    /// once, so that what the fingerprint saw is a value it can be tested with.
    pub fn env_value(&mut self, name: &str, value: Option<&OsStr>) {
        match value {
            Some(v) => {
                self.tag(TAG_ENV_SET);
                self.field(name.as_bytes());
                self.field(v.as_bytes());
            }
            None => {
                self.tag(TAG_ENV_UNSET);
                self.field(name.as_bytes());
            }
        }
    }

    /// A file's identity without reading it (unless it is racy, see the module
    /// docs). A symlink is recorded by its target text and by the identity of
    /// what it points to; a missing path is recorded as missing.
    pub fn file_identity(&mut self, path: &Path) -> Result<(), CacheError> {
        self.tag(TAG_IDENTITY);
        self.field(path.as_os_str().as_bytes());
        self.entry(path, HashMode::Identity, true).map(drop)
    }

    /// A file's contents, streamed. A missing file is recorded as missing.
    pub fn file_contents(&mut self, path: &Path) -> Result<(), CacheError> {
        self.tag(TAG_CONTENTS);
        self.field(path.as_os_str().as_bytes());
        self.entry(path, HashMode::Contents, true).map(drop)
    }

    /// A directory input: its entries in byte order of their names,
    /// recursively, each by contents or identity as `mode` says. Symlinks are
    /// followed, into directories too (each directory once per path, so loops
    /// end), since readers of the input see through them. A missing path is recorded as missing; a
    /// path that is a file is recorded as that one file.
    pub fn tree(&mut self, path: &Path, mode: HashMode) -> Result<(), CacheError> {
        self.tag(TAG_TREE);
        self.field(path.as_os_str().as_bytes());
        self.field(&[match mode {
            HashMode::Contents => b'c',
            HashMode::Identity => b'i',
            HashMode::ContentsUpTo(_) => b'u',
        }]);
        if let HashMode::ContentsUpTo(limit) = mode {
            self.u64(limit);
        }
        // The root itself may be a symlink (e.g. /usr/lib/guestfs -> ...):
        // follow it, since the caller named it as the input.
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if is_missing(&e) => {
                self.tag(KIND_MISSING);
                self.tag(TAG_TREE_END);
                return Ok(());
            }
            Err(source) => return Err(read_error(path, source)),
        };
        if meta.is_dir() {
            self.tag(KIND_DIR);
            self.u64(u64::from(meta.mode()));
            self.walk(path, mode, &mut vec![(meta.dev(), meta.ino())])?;
        } else {
            self.entry(path, mode, true)?;
        }
        self.tag(TAG_TREE_END);
        Ok(())
    }

    /// The fingerprint of everything added.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hasher.finalize().into())
    }

    /// `ancestors` are the (dev, ino) of the directories being walked, to enter a
    /// directory reached again through a symlink loop only once.
    fn walk(
        &mut self,
        dir: &Path,
        mode: HashMode,
        ancestors: &mut Vec<(u64, u64)>,
    ) -> Result<(), CacheError> {
        let mut names = Vec::new();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            // Vanished between being listed and being read: a concurrent
            // edit; record it as such and let the next check see the result.
            Err(e) if is_missing(&e) => {
                self.tag(KIND_MISSING);
                return Ok(());
            }
            Err(source) => return Err(read_error(dir, source)),
        };
        for ent in rd {
            let ent = ent.map_err(|source| read_error(dir, source))?;
            names.push(ent.file_name());
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        self.u64(names.len() as u64);
        for name in names {
            let child = dir.join(&name);
            self.field(name.as_bytes());
            let is_dir = self.entry(&child, mode, false)?;
            // supermin (and our reader) follow symlinks to directories inside an input, so
            // what lies behind them determines the output too.
            let descend =
                is_dir || fs::symlink_metadata(&child).is_ok_and(|m| m.file_type().is_symlink());
            if !descend {
                continue;
            }
            let Ok(target) = fs::metadata(&child) else {
                continue;
            };
            if !target.is_dir() {
                continue;
            }
            let key = (target.dev(), target.ino());
            if ancestors.contains(&key) {
                self.tag(TAG_LOOP);
                continue;
            }
            ancestors.push(key);
            self.walk(&child, mode, ancestors)?;
            ancestors.pop();
        }
        Ok(())
    }

    /// Records one entry (not following a symlink at `path` itself unless
    /// `follow_root`). Returns whether it is a directory to descend into.
    fn entry(
        &mut self,
        path: &Path,
        mode: HashMode,
        follow_root: bool,
    ) -> Result<bool, CacheError> {
        let lmeta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if is_missing(&e) => {
                self.tag(KIND_MISSING);
                return Ok(false);
            }
            Err(source) => return Err(read_error(path, source)),
        };
        let ft = lmeta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|source| read_error(path, source))?;
            self.tag(KIND_SYMLINK);
            self.field(target.as_os_str().as_bytes());
            // What the link points to, by the same rules, except that a
            // directory behind a link inside a tree is not entered.
            match fs::metadata(path) {
                Ok(m) if m.is_file() => self.regular(path, &m, mode)?,
                Ok(m) if m.is_dir() => {
                    self.tag(KIND_DIR);
                    self.u64(u64::from(m.mode()));
                    if follow_root {
                        self.identity_fields(&m);
                    }
                }
                Ok(m) => self.other(&m),
                // Dangling or looping: the link text above is all there is.
                Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::ELOOP) => {
                    self.tag(KIND_MISSING)
                }
                Err(source) => return Err(read_error(path, source)),
            }
            Ok(false)
        } else if ft.is_dir() {
            self.tag(KIND_DIR);
            self.u64(u64::from(lmeta.mode()));
            if follow_root && mode == HashMode::Identity {
                self.identity_fields(&lmeta);
            }
            Ok(!follow_root)
        } else if ft.is_file() {
            self.regular(path, &lmeta, mode)?;
            Ok(false)
        } else {
            self.other(&lmeta);
            Ok(false)
        }
    }

    fn regular(
        &mut self,
        path: &Path,
        meta: &fs::Metadata,
        mode: HashMode,
    ) -> Result<(), CacheError> {
        self.tag(KIND_FILE);
        self.u64(u64::from(meta.mode()));
        if mode.wants_contents(meta.size()) {
            self.tag(FILE_BY_CONTENTS);
            self.contents(path)
        } else {
            self.tag(FILE_BY_IDENTITY);
            self.identity_fields(meta);
            if self.is_racy(meta) {
                self.tag(FILE_RACY_CONTENTS);
                self.contents(path)?;
            }
            Ok(())
        }
    }

    fn other(&mut self, meta: &fs::Metadata) {
        self.tag(KIND_OTHER);
        self.u64(u64::from(meta.mode()));
        self.u64(meta.rdev());
    }

    fn identity_fields(&mut self, meta: &fs::Metadata) {
        self.u64(meta.dev());
        self.u64(meta.ino());
        self.u64(meta.size());
        self.u64(u64::from(meta.mode()));
        self.i64(meta.mtime());
        self.i64(meta.mtime_nsec());
        self.i64(meta.ctime());
        self.i64(meta.ctime_nsec());
    }

    fn is_racy(&self, meta: &fs::Metadata) -> bool {
        let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let newest = ns(meta.ctime(), meta.ctime_nsec()).max(ns(meta.mtime(), meta.mtime_nsec()));
        let now = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            // A clock before 1970 cannot tell old from new: trust nothing.
            Err(_) => return true,
        };
        // A timestamp in the future is racy too: the clock was stepped back.
        newest >= now - self.racy_window.as_nanos() as i128
    }

    /// Streams a file's bytes into a sub-hash and records the digest, so
    /// that the length need not be known before reading.
    fn contents(&mut self, path: &Path) -> Result<(), CacheError> {
        let mut file = match fs::OpenOptions::new()
            .read(true)
            // A file swapped for a FIFO after the stat must not block us.
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if is_missing(&e) => {
                self.tag(KIND_MISSING);
                return Ok(());
            }
            Err(source) => return Err(read_error(path, source)),
        };
        let mut sub = Sha256::new();
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(256 * 1024, 0);
        let mut total: u64 = 0;
        let result = loop {
            match file.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    sub.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => break Err(read_error(path, source)),
            }
        };
        self.buf = buf;
        result?;
        let digest: [u8; 32] = sub.finalize().into();
        self.u64(total);
        self.hasher.update(digest);
        Ok(())
    }

    fn tag(&mut self, t: u8) {
        self.hasher.update([t]);
    }

    fn field(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.hasher.update(v);
    }

    fn u64(&mut self, v: u64) {
        self.hasher.update(v.to_le_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.hasher.update(v.to_le_bytes());
    }

    #[cfg(test)]
    fn with_racy_window(mut self, w: Duration) -> Self {
        self.racy_window = w;
        self
    }
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn read_error(path: &Path, source: io::Error) -> CacheError {
    CacheError::ReadInput {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    fn fp(f: impl FnOnce(&mut FingerprintBuilder)) -> Fingerprint {
        let mut b = FingerprintBuilder::new("test 1");
        f(&mut b);
        b.finish()
    }

    fn write(path: &Path, data: &[u8]) {
        File::create(path).unwrap().write_all(data).unwrap();
    }

    #[test]
    fn parts_are_length_prefixed_so_splits_differ() {
        let a = fp(|b| {
            b.str("ab", "c");
        });
        let b = fp(|b| {
            b.str("a", "bc");
        });
        assert_ne!(a, b);
        let c = fp(|b| {
            b.str("k", "ab");
            b.str("k", "c");
        });
        let d = fp(|b| {
            b.str("k", "a");
            b.str("k", "bc");
        });
        assert_ne!(c, d);
    }

    #[test]
    fn str_and_bytes_with_the_same_content_differ() {
        assert_ne!(fp(|b| b.str("k", "v")), fp(|b| b.bytes("k", b"v")));
    }

    #[test]
    fn tool_version_is_part_of_the_fingerprint() {
        let a = FingerprintBuilder::new("1.0").finish();
        let b = FingerprintBuilder::new("1.1").finish();
        assert_ne!(a, b);
        assert_eq!(a, FingerprintBuilder::new("1.0").finish());
    }

    #[test]
    fn env_unset_and_empty_differ() {
        let unset = fp(|b| b.env_value("SUPERMIN_KERNEL", None));
        let empty = fp(|b| b.env_value("SUPERMIN_KERNEL", Some(OsStr::new(""))));
        let set = fp(|b| b.env_value("SUPERMIN_KERNEL", Some(OsStr::new("/boot/x"))));
        assert_ne!(unset, empty);
        assert_ne!(empty, set);
    }

    #[test]
    fn fingerprint_displays_and_parses_as_hex() {
        let f = fp(|b| b.str("a", "b"));
        let s = f.to_string();
        assert_eq!(s.len(), 64);
        assert!(s
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(s.parse::<Fingerprint>().unwrap(), f);
        assert!("xyz".parse::<Fingerprint>().is_err());
        assert!(s[..63].parse::<Fingerprint>().is_err());
        assert!(format!("{}g", &s[..63]).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn identity_mode_is_stable_for_untouched_files() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a"), b"hello");
        let run = || {
            let mut b = FingerprintBuilder::new("t").with_racy_window(Duration::ZERO);
            b.tree(dir.path(), HashMode::Identity).unwrap();
            b.finish()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn identity_mode_sees_a_rewrite_with_restored_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("packages");
        write(&file, b"bash\ncoreutils\n");
        let old_mtime = fs::metadata(&file).unwrap().modified().unwrap();
        // Outside the racy window: identity alone must carry the change,
        // through ctime, which the restore below cannot put back.
        let run = || {
            let mut b = FingerprintBuilder::new("t").with_racy_window(Duration::ZERO);
            b.tree(dir.path(), HashMode::Identity).unwrap();
            b.finish()
        };
        let before = run();
        std::thread::sleep(Duration::from_millis(50));
        write(&file, b"bash\ncoreutilz\n");
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old_mtime)
            .unwrap();
        assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), old_mtime);
        assert_ne!(before, run());
    }

    #[test]
    fn racy_files_are_hashed_by_contents_even_in_identity_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        write(&file, b"one");
        let mut b = FingerprintBuilder::new("t");
        b.file_identity(&file).unwrap();
        let first = b.finish();
        // Same size, same (restored) mtime, rewritten within the same
        // timestamp tick or not: the contents are in the hash either way.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        write(&file, b"two");
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let mut b = FingerprintBuilder::new("t");
        b.file_identity(&file).unwrap();
        assert_ne!(first, b.finish());
    }
}
