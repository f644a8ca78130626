//! How far supermin.d inputs may expand. A few bytes of gzip or xz can decompress to
//! terabytes, and a GNU sparse tar member of a hundred bytes can declare a terabyte file;
//! without a bound either fills the disk (scratch copies, the output) or memory (lists).
//! One limit covers both: what the compressed inputs of a build decompress to, together,
//! and the size any one file in a base image declares. The default sits far above real
//! inputs (libguestfs's base images expand to a few MB) and far below a full disk; the
//! binary lets the user raise it (`SUPERMIN_MAX_INPUT_SIZE`) and passes it down here.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{HostfilesError, Result};

/// The limit when the user sets none: 4 GiB.
pub const DEFAULT_MAX_INPUT_SIZE: u64 = 4 << 30;

/// The expansion budget of one build's inputs. Clones share one count, so the lists, every
/// base image and the thread that decompresses them draw from the same limit.
#[derive(Debug, Clone)]
pub struct InputBudget {
    limit: u64,
    used: Arc<AtomicU64>,
}

impl Default for InputBudget {
    fn default() -> Self {
        InputBudget::new(DEFAULT_MAX_INPUT_SIZE)
    }
}

impl InputBudget {
    /// A budget of `limit` bytes, none used yet.
    pub fn new(limit: u64) -> InputBudget {
        InputBudget {
            limit,
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes decompressed so far, by every clone.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Refuses a base-image member (`member`, as the user would name it in the appliance)
    /// that declares more than the limit, before anything is written for it.
    pub fn check_member(&self, image: &Path, member: &str, size: u64) -> Result<()> {
        if size > self.limit {
            return Err(HostfilesError::MemberTooLarge {
                path: image.to_path_buf(),
                member: member.to_string(),
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// `inner`, decompressing `path`, counted against this budget: the read that passes
    /// the limit fails with an [`io::Error`] wrapping [`HostfilesError::InputTooLarge`]
    /// (see [`too_large`]).
    pub(crate) fn reader<R: Read>(&self, path: &Path, inner: R) -> Budgeted<R> {
        Budgeted {
            inner,
            budget: self.clone(),
            path: path.to_path_buf(),
        }
    }
}

/// A decompressing reader that stops at the budget's limit.
pub(crate) struct Budgeted<R> {
    inner: R,
    budget: InputBudget,
    path: PathBuf,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.budget.used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if used > self.budget.limit {
            return Err(io::Error::other(HostfilesError::InputTooLarge {
                path: self.path.clone(),
                limit: self.budget.limit,
            }));
        }
        Ok(n)
    }
}

/// The typed error inside an I/O error from a budgeted reader, or the I/O error as it was.
/// Lets a caller that only sees `io::Error` (a copy loop, the tar reader) report the limit.
pub fn too_large(err: io::Error) -> std::result::Result<HostfilesError, io::Error> {
    match err.downcast::<HostfilesError>() {
        Ok(e @ HostfilesError::InputTooLarge { .. }) => Ok(e),
        Ok(other) => Err(io::Error::other(other)),
        Err(err) => Err(err),
    }
}

/// `n` bytes for people: `4 GiB`, `32 MiB`, or `1234 bytes` when no unit divides it.
pub(crate) fn human_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// A `SUPERMIN_MAX_INPUT_SIZE` value at least `n`, rounded up to whole G (or T).
pub(crate) fn size_setting(n: u64) -> String {
    const G: u64 = 1 << 30;
    const T: u64 = 1 << 40;
    if n >= T {
        format!("{}T", n.div_ceil(T))
    } else {
        format!("{}G", n.div_ceil(G).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_that_passes_the_limit_fails_with_the_typed_error() {
        let budget = InputBudget::new(10);
        let mut r = budget.reader(Path::new("/x.gz"), &[7u8; 25][..]);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        let err = r.read(&mut buf).unwrap_err();
        match too_large(err).unwrap() {
            HostfilesError::InputTooLarge { path, limit } => {
                assert_eq!(path, Path::new("/x.gz"));
                assert_eq!(limit, 10);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn clones_share_one_count() {
        let budget = InputBudget::new(10);
        let mut a = budget.reader(Path::new("/a"), &[0u8; 6][..]);
        let mut b = budget.clone().reader(Path::new("/b"), &[0u8; 6][..]);
        io::copy(&mut a, &mut io::sink()).unwrap();
        assert_eq!(budget.used(), 6);
        let err = io::copy(&mut b, &mut io::sink()).unwrap_err();
        assert!(too_large(err).is_ok());
    }

    #[test]
    fn exactly_the_limit_is_allowed() {
        let budget = InputBudget::new(6);
        let mut a = budget.reader(Path::new("/a"), &[0u8; 6][..]);
        assert_eq!(io::copy(&mut a, &mut io::sink()).unwrap(), 6);
        assert!(budget.check_member(Path::new("/a"), "/m", 6).is_ok());
        let e = budget.check_member(Path::new("/a"), "/m", 7).unwrap_err();
        assert!(matches!(e, HostfilesError::MemberTooLarge { size: 7, .. }));
    }

    #[test]
    fn other_io_errors_pass_through() {
        let e = too_large(io::Error::from(io::ErrorKind::UnexpectedEof)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(4 << 30), "4 GiB");
        assert_eq!(human_size(1 << 40), "1 TiB");
        assert_eq!(human_size(32 << 20), "32 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
        assert_eq!(size_setting(4 << 30), "4G");
        assert_eq!(size_setting((4 << 30) + 1), "5G");
        assert_eq!(size_setting(1 << 20), "1G");
        assert_eq!(size_setting(1 << 40), "1T");
        assert_eq!(size_setting((1 << 40) + 1), "2T");
    }
}
