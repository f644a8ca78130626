//! Just enough of the newc cpio format ("070701", and "070702" with checksums, which
//! `rpm2cpio` writes) to pull wanted regular files out of an rpm payload as it streams by:
//! a 110-byte ASCII header of 13 hex fields, the NUL-terminated name, padding to 4 bytes,
//! the data, padding to 4 bytes; the archive ends with the name `TRAILER!!!`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::base_image::safe_tar_path;
use crate::error::{write_err, HostfilesError, Result};

/// Longer names are not paths rpm writes; refusing them bounds what a bad archive costs.
const MAX_NAME: u64 = 4096;

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

/// Extract the regular files whose absolute paths are in `wanted` into `tree`.
pub(crate) fn extract_wanted(
    mut r: impl Read,
    tree: &Path,
    wanted: &BTreeSet<String>,
    archive: &Path,
) -> Result<()> {
    let bad = |message: String| HostfilesError::PackageDb {
        path: archive.to_path_buf(),
        message: format!("bad cpio payload: {message}"),
    };
    let io_bad = |e: io::Error| bad(e.to_string());
    loop {
        let mut header = [0u8; 110];
        r.read_exact(&mut header).map_err(io_bad)?;
        if &header[..6] != b"070701" && &header[..6] != b"070702" {
            return Err(bad("not a newc archive (magic 070701/070702)".into()));
        }
        let field = |i: usize| -> Result<u64> {
            let s = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("header field is not ASCII".into()))?;
            u64::from_str_radix(s, 16).map_err(|_| bad(format!("header field {s:?} is not hex")))
        };
        let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
        if namesize == 0 || namesize > MAX_NAME {
            return Err(bad(format!("name of {namesize} bytes")));
        }
        let name_len =
            usize::try_from(namesize).map_err(|_| bad(format!("name of {namesize} bytes")))?;
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name).map_err(io_bad)?;
        skip(&mut r, pad4(110 + namesize)).map_err(io_bad)?;
        name.pop(); // the NUL
        if name == b"TRAILER!!!" {
            return Ok(());
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let rel = safe_tar_path(Path::new(&name))?;
        let abs = format!("/{}", rel.display());
        // Hard-linked files keep their data in the last link only; config files are not
        // hard links in practice, and a zero-length copy is never written over a good one.
        let regular = mode & 0o170000 == 0o100000;
        if regular && wanted.contains(&abs) && !(size == 0 && tree.join(&rel).exists()) {
            let dest = tree.join(&rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(write_err(parent))?;
            }
            let mut out = File::create(&dest).map_err(write_err(&dest))?;
            let copied = io::copy(&mut (&mut r).take(size), &mut out).map_err(write_err(&dest))?;
            if copied != size {
                return Err(bad(format!("{name}: truncated data")));
            }
            fs::set_permissions(&dest, fs::Permissions::from_mode((mode & 0o7777) as u32))
                .map_err(write_err(&dest))?;
        } else {
            skip(&mut r, size).map_err(io_bad)?;
        }
        skip(&mut r, pad4(size)).map_err(io_bad)?;
    }
}

fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "archive ends early",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len() + pad4(110 + namesize as u64) as usize, 0);
        out.extend_from_slice(data);
        out.resize(out.len() + pad4(data.len() as u64) as usize, 0);
    }

    #[test]
    fn wanted_regular_files_are_extracted_and_the_rest_skipped() {
        let mut a = Vec::new();
        entry(&mut a, "./etc", 0o40755, b"");
        entry(&mut a, "./etc/hello.conf", 0o100640, b"conf\n");
        entry(&mut a, "./usr/bin/hello", 0o100755, b"\x7fELF....");
        entry(&mut a, "TRAILER!!!", 0, b"");
        let d = tempfile::tempdir().unwrap();
        let wanted: BTreeSet<String> = ["/etc/hello.conf".to_string()].into();
        extract_wanted(&a[..], d.path(), &wanted, Path::new("x.rpm")).unwrap();
        let got = d.path().join("etc/hello.conf");
        assert_eq!(fs::read(&got).unwrap(), b"conf\n");
        assert_eq!(
            fs::metadata(&got).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!d.path().join("usr").exists());
    }

    #[test]
    fn a_truncated_or_foreign_archive_is_an_error_naming_it() {
        let mut a = Vec::new();
        entry(&mut a, "./etc/hello.conf", 0o100644, b"conf\n");
        let d = tempfile::tempdir().unwrap();
        let wanted = BTreeSet::new();
        let e = extract_wanted(&a[..], d.path(), &wanted, Path::new("x.rpm")).unwrap_err();
        assert!(e.to_string().contains("x.rpm"), "{e}");
        let e =
            extract_wanted(&b"0707070000"[..], d.path(), &wanted, Path::new("y.rpm")).unwrap_err();
        assert!(e.to_string().contains("y.rpm"), "{e}");
    }

    #[test]
    fn names_climbing_out_of_the_tree_are_refused() {
        let mut a = Vec::new();
        entry(&mut a, "../../etc/passwd", 0o100644, b"x");
        entry(&mut a, "TRAILER!!!", 0, b"");
        let d = tempfile::tempdir().unwrap();
        let wanted: BTreeSet<String> = ["/etc/passwd".to_string()].into();
        assert!(extract_wanted(&a[..], d.path(), &wanted, Path::new("x.rpm")).is_err());
    }
}
