//! Moving bytes into the image: metadata chunks coalesced into large
//! sequential writes, and file data copied with `copy_file_range` (the
//! kernel moves the pages, no user-space buffer) with a pread/pwrite
//! fallback where the kernel refuses, e.g. across filesystem types.
//!
//! Every write goes to an offset no other write touches, so the metadata
//! writer and the data copiers share one image descriptor from several
//! threads with positional I/O only.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::io::Errno;

use crate::blockmap::Run;
use crate::error::Ext2Error;
use crate::plan::{Chunk, CopyJob, Source};

/// Upper bound of one coalesced metadata write.
const MAX_WRITE: usize = 8 << 20;
/// Buffer of the read/write fallback.
const FALLBACK_BUF: usize = 1 << 20;

fn write_error(path: &Path, source: io::Error) -> Ext2Error {
    Ext2Error::WriteImage {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `chunks` (sorted, disjoint), merging neighbours into one write.
pub(crate) fn write_chunks(img: &File, path: &Path, chunks: &[Chunk]) -> Result<(), Ext2Error> {
    let mut buf = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let start = chunks[i].offset;
        let mut end = start + chunks[i].data.len() as u64;
        let mut j = i + 1;
        while j < chunks.len() && chunks[j].offset == end && end - start < MAX_WRITE as u64 {
            end += chunks[j].data.len() as u64;
            j += 1;
        }
        if j == i + 1 {
            img.write_all_at(&chunks[i].data, start)
        } else {
            buf.clear();
            for c in &chunks[i..j] {
                buf.extend_from_slice(&c.data);
            }
            img.write_all_at(&buf, start)
        }
        .map_err(|e| write_error(path, e))?;
        i = j;
    }
    Ok(())
}

/// Data per unit of parallel work: big files are split so that both cores
/// stay busy to the end instead of one copying the largest file alone.
const PIECE_BYTES: u64 = 16 << 20;

/// Runs every copy job, spread over the rayon pool.
pub(crate) fn copy_all(
    img: &File,
    path: &Path,
    jobs: &[CopyJob<'_>],
    bs: u32,
) -> Result<(), Ext2Error> {
    let bs = u64::from(bs);
    let mut pieces: Vec<(&CopyJob<'_>, &[Run])> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut start = 0;
        let mut bytes = 0;
        for (i, r) in job.runs.iter().enumerate() {
            bytes += r.count * bs;
            if bytes >= PIECE_BYTES {
                pieces.push((job, &job.runs[start..=i]));
                start = i + 1;
                bytes = 0;
            }
        }
        if start < job.runs.len() {
            pieces.push((job, &job.runs[start..]));
        }
    }
    pieces
        .par_iter()
        .try_for_each_init(Worker::default, |worker, (job, runs)| {
            copy_job(worker, img, path, job, runs, bs)
        })
}

/// Opens source files relative to their directory, kept open between
/// calls: siblings are planned and copied together, and resolving a long
/// absolute path for every one of tens of thousands of files shows up in
/// profiles. One cache per rayon task; nothing outlives `write_image`.
#[derive(Default)]
pub(crate) struct DirCache {
    dir: Option<(PathBuf, OwnedFd)>,
}

impl DirCache {
    /// Like `File::open(path)`.
    pub(crate) fn open(&mut self, path: &Path) -> io::Result<File> {
        use rustix::fs::{Mode, OFlags};
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return File::open(path);
        };
        if parent.as_os_str().is_empty() {
            return File::open(path);
        }
        let dir = match self.dir.take() {
            Some((p, fd)) if p == parent => (p, fd),
            _ => {
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                (
                    parent.to_path_buf(),
                    rustix::fs::open(parent, flags, Mode::empty())?,
                )
            }
        };
        let opened = rustix::fs::openat(
            &dir.1,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        );
        self.dir = Some(dir);
        Ok(File::from(opened?))
    }
}

/// What one rayon task keeps between copy jobs.
#[derive(Default)]
struct Worker {
    dirs: DirCache,
    /// The read/write fallback's buffer, allocated on first use.
    buf: Vec<u8>,
}

/// Errors that mean "the image side failed", as opposed to the source.
fn is_write_side(e: Errno) -> bool {
    matches!(e, Errno::NOSPC | Errno::FBIG | Errno::DQUOT | Errno::ROFS)
}

fn copy_job(
    worker: &mut Worker,
    img: &File,
    img_path: &Path,
    job: &CopyJob<'_>,
    runs: &[Run],
    bs: u64,
) -> Result<(), Ext2Error> {
    let opened;
    let (src, base): (BorrowedFd<'_>, u64) = match &job.source {
        Source::Host(p) => {
            opened = worker
                .dirs
                .open(p)
                .map_err(|source| Ext2Error::OpenSource {
                    path: p.to_path_buf(),
                    source,
                })?;
            (opened.as_fd(), 0)
        }
        Source::Range { file, offset, .. } => (file.as_fd(), *offset),
    };
    let fail = |e: Errno| -> Ext2Error {
        if is_write_side(e) {
            return write_error(img_path, e.into());
        }
        match &job.source {
            Source::Host(p) => Ext2Error::ReadSource {
                path: p.to_path_buf(),
                source: e.into(),
            },
            Source::Range {
                offset, image_path, ..
            } => Ext2Error::ReadRange {
                image_path: image_path.clone(),
                offset: *offset,
                len: job.len,
                source: e.into(),
            },
        }
    };
    let mut by_hand = false;
    for run in runs {
        let file_off = run.lblock * bs;
        if file_off >= job.len {
            break;
        }
        let n = (run.count * bs).min(job.len - file_off);
        let (dst_off, buf) = (run.pblock * bs, &mut worker.buf);
        let done =
            copy_range(src, base + file_off, img, dst_off, n, &mut by_hand, buf).map_err(fail)?;
        if done < n {
            // The source shrank since planning; the rest reads as zeros.
            break;
        }
    }
    Ok(())
}

/// Copies up to `len` bytes; returns how many, fewer only at the source's
/// end of file. Once `copy_file_range` is refused, `by_hand` is set and the
/// rest (and later calls) go through `buf` with pread/pwrite.
fn copy_range(
    src: BorrowedFd<'_>,
    mut src_off: u64,
    img: &File,
    mut dst_off: u64,
    len: u64,
    by_hand: &mut bool,
    buf: &mut Vec<u8>,
) -> Result<u64, Errno> {
    let mut done = 0u64;
    while done < len && !*by_hand {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut src_off), img, Some(&mut dst_off), want) {
            Ok(0) => return Ok(done),
            Ok(n) => done += n as u64,
            Err(Errno::INTR) => {}
            // Not possible between these two files: copy by hand from here.
            Err(Errno::XDEV) | Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => {
                *by_hand = true;
            }
            Err(e) => return Err(e),
        }
    }
    if !*by_hand {
        return Ok(done);
    }
    if buf.is_empty() {
        buf.resize(FALLBACK_BUF, 0);
    }
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match rustix::io::pread(src, &mut buf[..want], src_off) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        };
        img.write_all_at(&buf[..n], dst_off)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        src_off += n as u64;
        dst_off += n as u64;
        done += n as u64;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ext2-io-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn neighbouring_chunks_are_written_in_place() {
        let d = tmp("chunks");
        let p = d.join("img");
        let img = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        img.set_len(64).unwrap();
        let chunks = vec![
            Chunk {
                offset: 0,
                data: vec![1; 8],
            },
            Chunk {
                offset: 8,
                data: vec![2; 8],
            },
            Chunk {
                offset: 32,
                data: vec![3; 4],
            },
        ];
        write_chunks(&img, &p, &chunks).unwrap();
        let got = std::fs::read(&p).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        let mut want = vec![0u8; 64];
        want[..8].fill(1);
        want[8..16].fill(2);
        want[32..36].fill(3);
        assert_eq!(got, want);
    }

    #[test]
    fn copy_range_falls_back_and_stops_at_source_end() {
        let d = tmp("range");
        let src_p = d.join("src");
        std::fs::write(&src_p, b"hello world").unwrap();
        let src = File::open(&src_p).unwrap();
        let p = d.join("img");
        let img = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        // Once through copy_file_range, once through the forced fallback.
        let (mut by_hand, mut buf) = (false, Vec::new());
        let n1 = copy_range(src.as_fd(), 6, &img, 0, 100, &mut by_hand, &mut buf).unwrap();
        assert!(!by_hand, "same filesystem: copy_file_range works");
        // A tiny buffer makes the fallback loop go round.
        let (mut by_hand, mut buf) = (true, vec![0u8; 3]);
        let n2 = copy_range(src.as_fd(), 0, &img, 8, 5, &mut by_hand, &mut buf).unwrap();
        let got = std::fs::read(&p).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!((n1, n2), (5, 5));
        assert_eq!(&got, b"world\0\0\0hello");
    }
}
