//! Base images: the tar archives of a supermin.d, overlaid on the appliance root in input
//! order. Everything about them is here: recognising their entries' paths as safe
//! ([`safe_tar_path`], [`BaseImageGuard`]), a seekable decompressed view of each
//! ([`open_base_image`]) and the walk over its members ([`read_base_image`]), which hands
//! the builder plain [`BaseEntry`] values to place in its tree. Nothing is extracted to a
//! directory and nothing is written but scratch files.
//!
//! Member data is not copied: a regular member is a byte range of the view, read once when
//! the output is written. The two exceptions, a compressed base image (decompressed into one
//! scratch file) and a GNU sparse member (expanded into its own), are written sparse: zeros
//! and holes cost no disk, and the build's [`InputBudget`] bounds what is decompressed and
//! how large a member may be.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::budget::{too_large, InputBudget};
use crate::error::{HostfilesError, Result};
use crate::inputs::{open_budgeted, Compression};
use crate::sparse::{CopyError, SparseWriter};

/// A tar archive to overlay on the appliance root, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The file, as named in the inputs.
    pub path: PathBuf,
    /// How it is compressed on disk (`None`: a plain tar).
    pub compression: Option<Compression>,
}

/// One member of a base image, ready to be placed in the appliance tree.
#[derive(Debug)]
pub struct BaseEntry {
    /// Where it goes, relative to the root (checked by [`BaseImageGuard`]; never empty).
    pub path: PathBuf,
    /// What it is.
    pub kind: BaseEntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, in seconds since the epoch.
    pub mtime: i64,
}

/// What a [`BaseEntry`] is.
#[derive(Debug)]
pub enum BaseEntryKind {
    /// A directory.
    Dir,
    /// A regular file: `len` bytes of `file` from `offset` (the view, or a scratch file of
    /// its own for a sparse member).
    File {
        /// Where the bytes are.
        file: Arc<File>,
        /// Where they start in it.
        offset: u64,
        /// How many.
        len: u64,
    },
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same image, by its [`BaseEntry::path`].
    HardLink(PathBuf),
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
}

/// Validate a tar entry's path: returns it as a normalized relative path inside the root
/// (`./etc/x/` -> `etc/x`; `.` or `./` -> empty, meaning the root itself), or an error for
/// absolute paths and any `..` component. Symlinks are checked by [`BaseImageGuard`].
pub fn safe_tar_path(entry: &Path) -> Result<PathBuf> {
    let bad = |reason| HostfilesError::UnsafeTarPath {
        entry: entry.display().to_string(),
        reason,
    };
    let mut out = PathBuf::new();
    for c in entry.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(bad("it contains '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("it is an absolute path")),
        }
    }
    Ok(out)
}

/// Rejects base-image entries that would be written through a symlink: one made by an
/// earlier entry (of any base image) or one the file set already holds (e.g. `/lib -> usr/lib`).
#[derive(Debug, Default, Clone)]
pub struct BaseImageGuard {
    symlinks: HashSet<PathBuf>,
}

impl BaseImageGuard {
    /// A guard that knows the symlinks of the host file set (relative to the root).
    pub fn new<'a>(existing_symlinks: impl IntoIterator<Item = &'a Path>) -> Self {
        let symlinks = existing_symlinks
            .into_iter()
            .filter_map(|p| safe_tar_path(p.strip_prefix("/").unwrap_or(p)).ok())
            .collect();
        BaseImageGuard { symlinks }
    }

    /// Check one entry; `is_symlink` records it so later entries below it are refused.
    /// A symlink replaced by a non-symlink entry of the same name stops being a symlink.
    pub fn check(&mut self, entry: &Path, is_symlink: bool) -> Result<PathBuf> {
        let rel = safe_tar_path(entry)?;
        let mut anc = rel.parent();
        while let Some(a) = anc {
            if a.as_os_str().is_empty() {
                break;
            }
            if self.symlinks.contains(a) {
                return Err(HostfilesError::UnsafeTarPath {
                    entry: entry.display().to_string(),
                    reason: "a parent directory is a symlink",
                });
            }
            anc = a.parent();
        }
        if is_symlink {
            self.symlinks.insert(rel.clone());
        } else {
            self.symlinks.remove(&rel);
        }
        Ok(rel)
    }
}

/// A base image as a decompressed tar stream (what [`open_base_image`] copies). The
/// read that passes `budget` fails with an [`io::Error`] that [`too_large`] turns back into
/// [`HostfilesError::InputTooLarge`].
pub(crate) fn open_stream(img: &BaseImage, budget: &InputBudget) -> Result<Box<dyn Read + Send>> {
    open_budgeted(&img.path, img.compression, budget)
}

/// A seekable, uncompressed view of a base image: the file itself, or an unlinked
/// scratch copy in `scratch_dir` of its decompressed bytes (never a directory of extracted
/// files), with its zero blocks left as holes. Decompression stops at `budget`'s limit.
/// Needs no tree, so it can run while the file set is being resolved.
pub fn open_base_image(img: &BaseImage, scratch_dir: &Path, budget: &InputBudget) -> Result<File> {
    let io_err = |source| HostfilesError::BaseImage {
        path: img.path.clone(),
        source,
    };
    if img.compression.is_none() {
        return File::open(&img.path).map_err(io_err);
    }
    let mut reader = open_stream(img, budget).map_err(|e| io_err(io::Error::other(e)))?;
    let scratch_err = |source| HostfilesError::Scratch {
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
            return Err(match too_large(e) {
                Ok(limit) => limit,
                Err(e) => io_err(e),
            })
        }
        Err(CopyError::Write(e)) => return Err(scratch_err(e)),
    }
    let len = w.position();
    w.finish(len).map_err(scratch_err)?;
    Ok(scratch)
}

/// Walks one base image, given as the seekable `view` [`open_base_image`] made of it, and
/// hands each member to `each` in archive order; returns how many it handed over. Regular
/// members are byte ranges of the view; a GNU sparse member is expanded into its own
/// scratch file in `scratch_dir`, holes kept. A member declaring more than `budget`'s
/// limit, an unsafe path, a member cut off by the end of the archive and a hard link to
/// nothing before it are errors. `./` itself and entries with no place in a filesystem
/// (volume labels) are skipped.
pub fn read_base_image<E: From<HostfilesError>>(
    img: &BaseImage,
    view: File,
    scratch_dir: &Path,
    budget: &InputBudget,
    mut each: impl FnMut(BaseEntry) -> std::result::Result<(), E>,
) -> std::result::Result<usize, E> {
    let archive_len = view
        .metadata()
        .map_err(|source| HostfilesError::BaseImage {
            path: img.path.clone(),
            source,
        })?
        .len();
    let file = Arc::new(view);
    let metadata_read = Cell::new(0);
    let mut archive = tar::Archive::new(MetadataBound {
        file: &file,
        read: &metadata_read,
    });
    let mut guard = BaseImageGuard::new(std::iter::empty::<&Path>());
    // What a later hard link may point at.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut count = 0;
    let format_err = |source| HostfilesError::BaseImageFormat {
        path: img.path.clone(),
        source,
    };
    for entry in archive.entries_with_seek().map_err(format_err)? {
        let entry = entry.map_err(|e: io::Error| {
            if e.get_ref().is_some_and(|e| e.is::<MetadataTooLarge>()) {
                HostfilesError::MemberMetadata {
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
            .map_err(|source| HostfilesError::UnsafeEntry {
                image: img.path.clone(),
                source: Box::new(source),
            })?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself: the root keeps its own metadata
        }
        let abs = Path::new("/").join(&rel);
        let owner = |id: u64| {
            u32::try_from(id).map_err(|_| HostfilesError::OwnerTooLarge {
                image: img.path.clone(),
                member: abs.display().to_string(),
                id,
            })
        };
        let mode = u16::try_from(header.mode().unwrap_or(0o644) & 0o7777).unwrap_or(0o644);
        let uid = owner(header.uid().unwrap_or(0))?;
        let gid = owner(header.gid().unwrap_or(0))?;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let kind = match etype {
            tar::EntryType::Directory => BaseEntryKind::Dir,
            tar::EntryType::GNUSparse => {
                // The tar reader would expand the holes into zeros: write the data
                // regions where its map puts them and leave the rest a hole.
                let member = abs.display().to_string();
                let len = entry.size(); // the expanded size
                budget.check_member(&img.path, &member, len)?;
                let scratch_err = |source| HostfilesError::Scratch {
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
                    SparseError::Read(source) => HostfilesError::BaseImage {
                        path: img.path.clone(),
                        source,
                    },
                    SparseError::Write(source) => scratch_err(source),
                    SparseError::Truncated => HostfilesError::Truncated {
                        image: img.path.clone(),
                        member: member.clone(),
                    },
                    SparseError::Map(reason) => HostfilesError::SparseMap {
                        image: img.path.clone(),
                        member: member.clone(),
                        reason,
                    },
                })?;
                BaseEntryKind::File {
                    file: Arc::new(scratch),
                    offset: 0,
                    len,
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (offset, len) = (entry.raw_file_position(), entry.size());
                budget.check_member(&img.path, &abs.display().to_string(), len)?;
                // Members are read later, in place: a cut archive must fail now, not
                // leave zeros where its bytes should be.
                if offset.saturating_add(len) > archive_len {
                    return Err(HostfilesError::Truncated {
                        image: img.path.clone(),
                        member: abs.display().to_string(),
                    }
                    .into());
                }
                BaseEntryKind::File {
                    file: Arc::clone(&file),
                    offset,
                    len,
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                BaseEntryKind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(format_err)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                // Only a lookup: the target's own entry already passed the guard.
                let target_rel =
                    safe_tar_path(&target).map_err(|source| HostfilesError::UnsafeEntry {
                        image: img.path.clone(),
                        source: Box::new(source),
                    })?;
                if !seen.contains(&target_rel) {
                    return Err(HostfilesError::DanglingHardLink {
                        image: img.path.clone(),
                        path: abs.display().to_string(),
                        target: target.display().to_string(),
                    }
                    .into());
                }
                BaseEntryKind::HardLink(target_rel)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if etype == tar::EntryType::Char {
                    BaseEntryKind::CharDev { major, minor }
                } else {
                    BaseEntryKind::BlockDev { major, minor }
                }
            }
            tar::EntryType::Fifo => BaseEntryKind::Fifo,
            // pax headers and long names are consumed by the tar crate; anything else
            // (e.g. a volume label) has no place in a filesystem.
            _ => continue,
        };
        if !matches!(kind, BaseEntryKind::HardLink(_)) {
            seen.insert(rel.clone());
        }
        each(BaseEntry {
            path: rel,
            kind,
            mode,
            uid,
            gid,
            mtime,
        })?;
        count += 1;
    }
    Ok(count)
}

/// How many bytes of tar metadata (its header, GNU long names, pax records, sparse
/// extension headers) one member may have. The tar reader holds one member's metadata in
/// memory, a sparse map at some 2.7 times its size (measured: 100 MiB of extension headers,
/// 272 MB resident), so an archive of repeated extension headers would be a memory bomb
/// within any input limit. Real members carry a few hundred bytes; 16 MiB is a sparse map
/// of 700 000 regions.
pub(crate) const MAX_MEMBER_METADATA: u64 = 16 << 20;

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

    /// Opens and walks `img` as a build does; its entries and the opened view.
    fn walk(img: &BaseImage, dir: &Path, budget: &InputBudget) -> Result<(Vec<BaseEntry>, File)> {
        let view = open_base_image(img, dir, budget)?;
        let kept = view.try_clone().unwrap();
        let mut entries = Vec::new();
        let n = read_base_image(img, view, dir, budget, |e| {
            entries.push(e);
            Ok::<(), HostfilesError>(())
        })?;
        assert_eq!(n, entries.len());
        Ok((entries, kept))
    }

    fn file_data<'a>(entries: &'a [BaseEntry], path: &str) -> (&'a File, u64, u64) {
        let e = entries.iter().find(|e| e.path == Path::new(path)).unwrap();
        match &e.kind {
            BaseEntryKind::File { file, offset, len } => (&**file, *offset, *len),
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
        let (entries, view) = walk(&img, d.path(), &budget).unwrap();
        let (file, offset, len) = file_data(&entries, "hole");
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
        let (entries, _) = walk(&img, d.path(), &InputBudget::default()).unwrap();
        let (file, _, got_len) = file_data(&entries, "dir/f");
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
        let e = walk(&img, d.path(), &budget).err().unwrap();
        assert!(
            matches!(
                &e,
                HostfilesError::MemberTooLarge { member, size, limit, .. }
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
        let e = walk(&img, d.path(), &budget).err().unwrap();
        assert!(matches!(e, HostfilesError::MemberTooLarge { .. }), "{e}");
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
            matches!(&e, HostfilesError::InputTooLarge { path: p, limit }
                if p == &path && *limit == 8 << 20),
            "{e}"
        );
        // Allowed, the zeros are holes in the view and in the member.
        let budget = InputBudget::new(65 << 20);
        let (entries, view) = walk(&img, d.path(), &budget).unwrap();
        assert!(disk_bytes(&view) <= 4096, "{}", disk_bytes(&view));
        assert_eq!(file_data(&entries, "zeros").2, 64 << 20);
    }

    #[test]
    fn a_sparse_map_of_repeated_extension_headers_is_refused_before_it_fills_memory() {
        // 17 MiB of extension headers, each 21 empty regions at the end of the file: valid
        // for the tar reader, which would keep every region in memory.
        let d = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let regions: Vec<(u64, &[u8])> = vec![(len, b""); 4 + 21 * (17 << 11)];
        let img = image(d.path(), "map.tar", &sparse_tar("f", len, &regions));
        let e = walk(&img, d.path(), &InputBudget::default()).err().unwrap();
        assert!(matches!(e, HostfilesError::MemberMetadata { .. }), "{e}");
        assert!(e.to_string().contains("16 MiB"), "{e}");
    }

    #[test]
    fn a_sparse_member_whose_data_is_cut_off_is_truncated() {
        let d = tempfile::tempdir().unwrap();
        let data = vec![7u8; 4096];
        let mut tar = sparse_tar("f", 1 << 20, &[(0, &data), (1 << 20, b"")]);
        tar.truncate(512 + 1024);
        let img = image(d.path(), "cut.tar", &tar);
        let e = walk(&img, d.path(), &InputBudget::default()).err().unwrap();
        assert!(matches!(e, HostfilesError::Truncated { .. }), "{e}");
    }

    /// A GNU tar header of `kind`, mode and size, checksummed.
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_cksum();
        h
    }

    #[test]
    fn members_come_out_in_archive_order_with_their_metadata() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(Directory, 0o750, 0);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, "etc/", &[][..]).unwrap();
        b.append_data(&mut header(Regular, 0o644, 3), "etc/a", &b"abc"[..])
            .unwrap();
        b.append_link(&mut header(Link, 0o644, 0), "etc/b", "etc/a")
            .unwrap();
        b.append_link(&mut header(Symlink, 0o777, 0), "etc/c", "a")
            .unwrap();
        let img = image(d.path(), "base.tar", &b.into_inner().unwrap());
        let (entries, _) = walk(&img, d.path(), &InputBudget::default()).unwrap();
        let paths: Vec<_> = entries
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(paths, ["etc", "etc/a", "etc/b", "etc/c"]);
        assert!(matches!(entries[0].kind, BaseEntryKind::Dir));
        assert_eq!(
            (
                entries[0].mode,
                entries[0].uid,
                entries[0].gid,
                entries[0].mtime
            ),
            (0o750, 7, 8, 1_700_000_000)
        );
        let (file, offset, len) = file_data(&entries, "etc/a");
        let mut buf = [0u8; 3];
        file.read_exact_at(&mut buf, offset).unwrap();
        assert_eq!((&buf, len), (b"abc", 3));
        assert!(matches!(&entries[2].kind, BaseEntryKind::HardLink(t) if t == Path::new("etc/a")));
        assert!(matches!(&entries[3].kind, BaseEntryKind::Symlink(t) if t == b"a"));
    }

    #[test]
    fn a_hard_link_to_nothing_before_it_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_link(&mut header(tar::EntryType::Link, 0o644, 0), "b", "a")
            .unwrap();
        let img = image(d.path(), "base.tar", &b.into_inner().unwrap());
        let e = walk(&img, d.path(), &InputBudget::default()).err().unwrap();
        assert!(matches!(e, HostfilesError::DanglingHardLink { .. }), "{e}");
    }

    #[test]
    fn safe_tar_path_normalizes_and_refuses_escapes() {
        assert_eq!(
            safe_tar_path(Path::new("./etc/x/")).unwrap(),
            PathBuf::from("etc/x")
        );
        assert_eq!(safe_tar_path(Path::new("./")).unwrap(), PathBuf::new());
        assert!(safe_tar_path(Path::new("../etc/passwd")).is_err());
        assert!(safe_tar_path(Path::new("etc/../../x")).is_err());
        assert!(safe_tar_path(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn guard_refuses_entries_below_a_symlink() {
        let mut g = BaseImageGuard::new([Path::new("/lib")]);
        assert!(g.check(Path::new("lib/evil.so"), false).is_err());
        assert!(g.check(Path::new("./etc/link"), true).is_ok());
        assert!(g.check(Path::new("etc/link/passwd"), false).is_err());
        assert_eq!(
            g.check(Path::new("etc/other"), false).unwrap(),
            PathBuf::from("etc/other")
        );
        // Replacing the symlink by a directory makes its children fine again.
        g.check(Path::new("etc/link"), false).unwrap();
        assert!(g.check(Path::new("etc/link/passwd"), false).is_ok());
    }
}
