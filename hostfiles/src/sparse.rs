//! Keeping holes as holes. A base image can describe files that are mostly zeros (a GNU
//! sparse member declaring a terabyte, a member of zeros that compresses to nothing); written
//! out byte by byte they fill the disk twice, once in scratch and once in the output.
//! [`SparseWriter`] fills a new file from a stream, seeking over zero blocks instead of
//! writing them; [`copy_data`] copies a range of a file, data runs only (found with
//! SEEK_DATA/SEEK_HOLE), so the holes of scratch files stay holes in a chroot output. The
//! ext2 writer finds the same holes by itself.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

/// The granularity of zero detection: the page size and the block size of the usual
/// filesystems, so every skipped block can be a hole.
const ZERO_BLOCK: usize = 4096;
static ZEROS: [u8; ZERO_BLOCK] = [0; ZERO_BLOCK];

/// The buffer of [`SparseWriter::copy_from`] and of the copy fallback.
const BUF: usize = 256 << 10;

/// Writes into a file that reads as zeros wherever nothing was written yet (a new file):
/// all-zero 4 KiB blocks are skipped, and [`SparseWriter::finish`] sets the length, so
/// zeros cost no disk. Writes go forward only.
pub struct SparseWriter<'f> {
    file: &'f File,
    pos: u64,
}

impl<'f> SparseWriter<'f> {
    /// A writer at the start of `file`, which must read as zeros (new).
    pub fn new(file: &'f File) -> SparseWriter<'f> {
        SparseWriter { file, pos: 0 }
    }

    /// Where the next byte goes.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves forward to `pos` (never back); the bytes passed over read as zeros.
    pub fn skip_to(&mut self, pos: u64) {
        self.pos = self.pos.max(pos);
    }

    /// Writes `buf` at the current position, skipping its all-zero blocks.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut i = 0;
        // The start of the pending run of non-zero blocks.
        let mut run: Option<usize> = None;
        while i < buf.len() {
            let at = self.pos + i as u64;
            // Below ZERO_BLOCK, a usize constant.
            #[allow(clippy::cast_possible_truncation)]
            let in_block = (at % ZERO_BLOCK as u64) as usize;
            let n = (ZERO_BLOCK - in_block).min(buf.len() - i);
            // A slice comparison is a memcmp: fast even in a debug build.
            if buf[i..i + n] == ZEROS[..n] {
                if let Some(start) = run.take() {
                    self.file
                        .write_all_at(&buf[start..i], self.pos + start as u64)?;
                }
            } else if run.is_none() {
                run = Some(i);
            }
            i += n;
        }
        if let Some(start) = run {
            self.file
                .write_all_at(&buf[start..], self.pos + start as u64)?;
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Copies `reader` to its end. Errors are told apart: [`CopyError::Read`] from the
    /// reader, [`CopyError::Write`] from the file.
    pub fn copy_from(&mut self, reader: &mut dyn Read) -> Result<u64, CopyError> {
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            self.write(&buf[..n]).map_err(CopyError::Write)?;
            total += n as u64;
        }
    }

    /// Sets the file's length to `len` (at least the current position): zeros at the end
    /// are a hole too.
    pub fn finish(self, len: u64) -> io::Result<()> {
        self.file.set_len(len.max(self.pos))
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading failed.
    Read(io::Error),
    /// Writing failed.
    Write(io::Error),
}

impl CopyError {
    /// The error, for a caller whose message already names both sides.
    pub fn into_io(self) -> io::Error {
        match self {
            CopyError::Read(e) | CopyError::Write(e) => e,
        }
    }
}

/// Copies `len` bytes of `src` from `src_off` to `dst` at `dst_off`, data runs only: what is
/// a hole in `src` is left unwritten in `dst`, which must read as zeros there (a new file).
/// Stops early at the end of `src`. Moves `src`'s file offset (SEEK_DATA/SEEK_HOLE).
pub fn copy_data(
    src: &File,
    src_off: u64,
    len: u64,
    dst: &File,
    dst_off: u64,
) -> Result<(), CopyError> {
    use rustix::fs::{seek, SeekFrom};
    let read = |e: Errno| CopyError::Read(e.into());
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(src, SeekFrom::Data(src_off + pos)) {
            Ok(d) => d - src_off,
            // Nothing but a hole up to the end of the file.
            Err(Errno::NXIO) => return Ok(()),
            // The filesystem cannot tell: all data.
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => pos,
            Err(e) => return Err(read(e)),
        };
        if data >= len {
            return Ok(());
        }
        let hole = match seek(src, SeekFrom::Hole(src_off + data)) {
            Ok(h) => (h - src_off).min(len),
            Err(Errno::NXIO) => return Ok(()),
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => len,
            Err(e) => return Err(read(e)),
        };
        let end = hole.max(data + 1).min(len);
        let done = copy_range(src, src_off + data, dst, dst_off + data, end - data)?;
        if done < end - data {
            return Ok(()); // the source ended
        }
        pos = end;
    }
    Ok(())
}

/// `len` bytes from `src` at `src_off` to `dst` at `dst_off`: `copy_file_range` (no user-space
/// buffer), or pread/pwrite where the kernel refuses it. Returns how many, fewer only at
/// the end of `src`.
fn copy_range(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    len: u64,
) -> Result<u64, CopyError> {
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(
            src.as_fd(),
            Some(&mut src_off),
            dst.as_fd(),
            Some(&mut dst_off),
            want,
        ) {
            Ok(0) => return Ok(done),
            Ok(n) => done += n as u64,
            Err(Errno::INTR) => {}
            Err(Errno::XDEV) | Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => {
                break
            }
            // The kernel does not say which side failed; a full disk is the output's.
            Err(e @ (Errno::NOSPC | Errno::FBIG | Errno::DQUOT | Errno::ROFS)) => {
                return Err(CopyError::Write(e.into()))
            }
            Err(e) => return Err(CopyError::Read(e.into())),
        }
    }
    let mut buf = vec![0u8; usize::try_from(len - done).map_or(BUF, |l| l.min(BUF))];
    while done < len {
        let want = usize::try_from(len - done).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match src.read_at(&mut buf[..want], src_off) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        dst.write_all_at(&buf[..n], dst_off)
            .map_err(CopyError::Write)?;
        src_off += n as u64;
        dst_off += n as u64;
        done += n as u64;
    }
    Ok(done)
}

/// Disk blocks of `file` in bytes (`st_blocks` is in 512-byte units).
#[cfg(test)]
pub(crate) fn disk_bytes(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .map(|m| m.blocks() * 512)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn tmpfile() -> File {
        tempfile::tempfile().unwrap()
    }

    fn contents(f: &File) -> Vec<u8> {
        let len = f.metadata().unwrap().len() as usize;
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn zero_blocks_are_skipped_and_everything_reads_back() {
        let f = tmpfile();
        let mut w = SparseWriter::new(&f);
        let mut want = Vec::new();
        // Unaligned pieces: data, 1 MiB of zeros, data, zeros to the end.
        for piece in [&b"head"[..], &vec![0u8; 1 << 20], b"tail"] {
            w.write(piece).unwrap();
            want.extend_from_slice(piece);
        }
        w.finish(8 << 20).unwrap();
        want.resize(8 << 20, 0);
        assert_eq!(contents(&f), want);
        // Two data blocks (the ones holding "head" and "tail"), never 8 MiB.
        assert!(disk_bytes(&f) <= 4 * 4096, "{} bytes", disk_bytes(&f));
    }

    #[test]
    fn a_stream_of_zeros_costs_nothing_and_its_length_is_kept() {
        let f = tmpfile();
        let mut w = SparseWriter::new(&f);
        let n = w.copy_from(&mut io::repeat(0).take(64 << 20)).unwrap();
        assert_eq!(n, 64 << 20);
        w.finish(0).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 64 << 20);
        assert_eq!(disk_bytes(&f), 0);
    }

    #[test]
    fn skipping_forward_leaves_a_hole() {
        let f = tmpfile();
        let mut w = SparseWriter::new(&f);
        w.write(b"a").unwrap();
        w.skip_to(1 << 30);
        w.write(b"b").unwrap();
        assert_eq!(w.position(), (1 << 30) + 1);
        w.finish(0).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 1 << 30).unwrap();
        assert_eq!(&b, b"b");
        assert!(disk_bytes(&f) <= 2 * 4096, "{}", disk_bytes(&f));
    }

    #[test]
    fn copy_data_copies_data_and_leaves_holes() {
        let src = tmpfile();
        src.write_all_at(b"one", 10).unwrap();
        src.write_all_at(b"two", 5 << 20).unwrap();
        src.set_len(1 << 40).unwrap();
        let dst = tmpfile();
        // From offset 7: "one" lands at 3, "two" at 5 MiB - 7.
        copy_data(&src, 7, (1 << 40) - 7, &dst, 0).unwrap();
        dst.set_len((1 << 40) - 7).unwrap();
        let mut b = [0u8; 3];
        dst.read_exact_at(&mut b, 3).unwrap();
        assert_eq!(&b, b"one");
        dst.read_exact_at(&mut b, (5 << 20) - 7).unwrap();
        assert_eq!(&b, b"two");
        assert!(disk_bytes(&dst) <= 4 * 4096, "{}", disk_bytes(&dst));
    }

    #[test]
    fn copy_data_stops_at_the_source_end() {
        let src = tmpfile();
        src.write_all_at(b"abc", 0).unwrap();
        let dst = tmpfile();
        copy_data(&src, 1, 100, &dst, 0).unwrap();
        assert_eq!(contents(&dst), b"bc");
    }
}
