//! Reading supermin.d inputs (supermin 5 semantics): each input file is sniffed by content,
//! decompressed if it is gzip or xz, and sorted into packages, hostfiles, excludefiles or base
//! images. Base images are only recorded here; [`crate::base_image`] walks them.
//! Everything decompressed is counted against the build's [`InputBudget`].

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use supermin_kernel_probe::compression::{decoder, Members};
pub use supermin_kernel_probe::Compression;

use crate::base_image::BaseImage;
use crate::budget::{too_large, InputBudget};
use crate::error::{read_err, HostfilesError, Result};

/// Everything the supermin.d inputs asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Package names, in input order (duplicates kept; resolution dedups).
    pub packages: Vec<String>,
    /// Absolute glob patterns to expand on the host.
    pub hostfiles: Vec<String>,
    /// fnmatch patterns (leading `-` removed), applied to package files only.
    pub excludes: Vec<String>,
    /// Base images in input order.
    pub base_images: Vec<BaseImage>,
    /// Every file read, in order (for cache fingerprints).
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    BaseImage,
    Packages,
    Hostfiles,
    Excludefiles,
    Empty,
}

/// Read supermin.d inputs: files, or directories whose entries are read in name order.
/// Compressed lists are decompressed within `budget`.
pub fn read_inputs(paths: &[PathBuf], budget: &InputBudget) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    for p in paths {
        read_one(p, &mut inputs, budget)?;
    }
    Ok(inputs)
}

fn read_one(path: &Path, inputs: &mut Inputs, budget: &InputBudget) -> Result<()> {
    let meta = fs::metadata(path).map_err(read_err(path))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .map_err(read_err(path))?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .map_err(read_err(path))?;
        // supermin sorts with OCaml's byte-wise `compare`; PathBuf's ordering differs only
        // for names with '/', which directory entries cannot contain.
        entries.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
        for e in entries {
            read_one(&e, inputs, budget)?;
        }
        return Ok(());
    }
    inputs.sources.push(path.to_path_buf());
    let compression = sniff_compression(path)?;
    let head = read_head(path, compression)?;
    match classify(path, &head)? {
        Content::Empty => {}
        Content::BaseImage => inputs.base_images.push(BaseImage {
            path: path.to_path_buf(),
            compression,
        }),
        kind => {
            let mut text = String::new();
            open_budgeted(path, compression, budget)?
                .read_to_string(&mut text)
                .map_err(|e| {
                    too_large(e).unwrap_or_else(|source| HostfilesError::Decompress {
                        path: path.to_path_buf(),
                        source,
                    })
                })?;
            for line in text.lines() {
                // Blank lines carry nothing; supermin would look them up as "" and drop them.
                if line.trim().is_empty() {
                    continue;
                }
                match kind {
                    Content::Packages => inputs.packages.push(line.trim().to_string()),
                    Content::Hostfiles => inputs.hostfiles.push(line.to_string()),
                    Content::Excludefiles => match line.strip_prefix('-') {
                        Some(pat) => inputs.excludes.push(pat.to_string()),
                        None => {
                            return Err(HostfilesError::BadExcludeLine {
                                path: path.to_path_buf(),
                                line: line.to_string(),
                            })
                        }
                    },
                    Content::BaseImage | Content::Empty => {}
                }
            }
        }
    }
    Ok(())
}

/// gzip and xz, like supermin: other compressed formats are not inputs. A gzip stream must
/// use deflate (method 8), the only one gzip writes.
fn sniff_compression(path: &Path) -> Result<Option<Compression>> {
    let mut magic = [0u8; 6];
    let mut f = File::open(path).map_err(read_err(path))?;
    let n = read_up_to(&mut f, &mut magic).map_err(read_err(path))?;
    let magic = &magic[..n];
    Ok(match Compression::sniff(magic) {
        Some(Compression::Gzip) if magic.starts_with(&[0x1f, 0x8b, 0x08]) => {
            Some(Compression::Gzip)
        }
        Some(Compression::Xz) => Some(Compression::Xz),
        _ => None,
    })
}

/// The first 512 decompressed bytes, which is all supermin looks at to classify.
fn read_head(path: &Path, compression: Option<Compression>) -> Result<Vec<u8>> {
    let mut r = open_decompressed(path, compression)?;
    let mut buf = vec![0u8; 512];
    let n = read_up_to(&mut r, &mut buf).map_err(|source| HostfilesError::Decompress {
        path: path.to_path_buf(),
        source,
    })?;
    buf.truncate(n);
    Ok(buf)
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn classify(path: &Path, buf: &[u8]) -> Result<Content> {
    let len = buf.len();
    if len >= 262 && &buf[257..262] == b"ustar" {
        Ok(Content::BaseImage)
    } else if len >= 6 && buf.starts_with(b"07070") {
        Err(HostfilesError::CpioInput {
            path: path.to_path_buf(),
        })
    } else if len >= 2 && buf[0] == b'/' {
        Ok(Content::Hostfiles)
    } else if len >= 2 && buf[0] == b'-' {
        Ok(Content::Excludefiles)
    } else if len >= 1 && buf[0].is_ascii_alphanumeric() {
        Ok(Content::Packages)
    } else if len == 0 {
        Ok(Content::Empty)
    } else {
        Err(HostfilesError::UnknownInputType {
            path: path.to_path_buf(),
        })
    }
}

fn open_decompressed(
    path: &Path,
    compression: Option<Compression>,
) -> Result<Box<dyn Read + Send>> {
    let f = BufReader::with_capacity(128 * 1024, File::open(path).map_err(read_err(path))?);
    match compression {
        None => Ok(Box::new(f)),
        // Every stream of the file, as `gzip -d` and `xz -d` read it.
        Some(c) => decoder(c, f, Members::All).map_err(|source| HostfilesError::Decompress {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `path` decompressed; a compressed stream counts against `budget` (see
/// [`InputBudget::reader`]).
pub(crate) fn open_budgeted(
    path: &Path,
    compression: Option<Compression>,
    budget: &InputBudget,
) -> Result<Box<dyn Read + Send>> {
    let r = open_decompressed(path, compression)?;
    Ok(match compression {
        None => r,
        Some(_) => Box::new(budget.reader(path, r)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, data).unwrap();
        p
    }

    fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn directory_entries_are_read_in_name_order_and_sorted_by_kind() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "b-packages", b"bash\ncoreutils\n");
        write(d.path(), "a-packages", b"acl\n");
        write(d.path(), "hostfiles", b"/etc/ld.so.cache\n/lib/lsb/*\n");
        write(d.path(), "excludefiles", b"-/usr/share/doc/*\n-/boot/*\n");
        write(d.path(), "empty", b"");
        let base = write(
            d.path(),
            "base.tar.gz",
            &gzip(&tar_bytes(&[("etc/x", b"1")])),
        );
        let inputs = read_inputs(&[d.path().to_path_buf()], &InputBudget::default()).unwrap();
        assert_eq!(inputs.packages, ["acl", "bash", "coreutils"]);
        assert_eq!(inputs.hostfiles, ["/etc/ld.so.cache", "/lib/lsb/*"]);
        assert_eq!(inputs.excludes, ["/usr/share/doc/*", "/boot/*"]);
        assert_eq!(
            inputs.base_images,
            [BaseImage {
                path: base,
                compression: Some(Compression::Gzip)
            }]
        );
        assert_eq!(inputs.sources.len(), 6);
    }

    #[test]
    fn compressed_lists_are_decompressed_before_sniffing() {
        let d = tempfile::tempdir().unwrap();
        let p1 = write(d.path(), "p.gz", &gzip(b"bash\n"));
        let p2 = write(d.path(), "h.xz", &xz(b"/bin/ls\n"));
        let p3 = write(d.path(), "base.tar.xz", &xz(&tar_bytes(&[("etc/a", b"a")])));
        let inputs = read_inputs(&[p1, p2, p3.clone()], &InputBudget::default()).unwrap();
        assert_eq!(inputs.packages, ["bash"]);
        assert_eq!(inputs.hostfiles, ["/bin/ls"]);
        assert_eq!(inputs.base_images[0].compression, Some(Compression::Xz));
        let mut ar = tar::Archive::new(
            crate::base_image::open_stream(&inputs.base_images[0], &InputBudget::default())
                .unwrap(),
        );
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["etc/a"]);
    }

    #[test]
    fn uncompressed_tar_is_a_base_image() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "base.tar", &tar_bytes(&[("etc/a", b"a")]));
        let inputs = read_inputs(&[p], &InputBudget::default()).unwrap();
        assert_eq!(inputs.base_images[0].compression, None);
    }

    #[test]
    fn cpio_and_unknown_content_are_errors_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "init.cpio", b"070701000000000000");
        let e = read_inputs(&[p], &InputBudget::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("init.cpio") && e.contains("cpio"), "{e}");
        let p = write(d.path(), "weird", b"#!/bin/sh\n");
        let e = read_inputs(&[p], &InputBudget::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("weird") && e.contains("unknown file type"),
            "{e}"
        );
    }

    #[test]
    fn only_gzip_and_xz_are_decompressed_like_supermin() {
        let d = tempfile::tempdir().unwrap();
        // A gzip magic with a method other than deflate, zstd: not decompressed, so their
        // first byte is no input type's.
        for (name, data) in [
            ("p.gz7", &[0x1f, 0x8b, 0x07, 0, 0, 0][..]),
            ("p.zst", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..]),
        ] {
            let p = write(d.path(), name, data);
            let e = read_inputs(&[p], &InputBudget::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("unknown file type"), "{e}");
        }
    }

    #[test]
    fn truncated_gzip_input_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let full = gzip(b"bash\ncoreutils\n");
        let p = write(d.path(), "p.gz", &full[..full.len() / 2]);
        assert!(read_inputs(&[p], &InputBudget::default()).is_err());
    }

    /// A compressed file of `n` copies of `line`, written as it is compressed.
    fn compressed_repeat(path: &Path, compression: Compression, line: &[u8], n: usize) {
        let f = File::create(path).unwrap();
        let mut w: Box<dyn Write> = match compression {
            Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::fast(),
            )),
            Compression::Xz => Box::new(liblzma::write::XzEncoder::new(f, 1)),
            other => panic!("no encoder for {other:?} here"),
        };
        for _ in 0..n {
            w.write_all(line).unwrap();
        }
    }

    #[test]
    fn a_compressed_list_bomb_stops_at_the_limit_with_the_typed_error() {
        let d = tempfile::tempdir().unwrap();
        for (name, c) in [("p.gz", Compression::Gzip), ("p.xz", Compression::Xz)] {
            let p = d.path().join(name);
            // 4 MiB of package names against a 1 MiB budget.
            compressed_repeat(&p, c, b"bash\n", 4 << 20 >> 2);
            let err =
                read_inputs(std::slice::from_ref(&p), &InputBudget::new(1 << 20)).unwrap_err();
            match &err {
                HostfilesError::InputTooLarge { path, limit } => {
                    assert_eq!(path, &p);
                    assert_eq!(*limit, 1 << 20);
                }
                other => panic!("{other}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains("1 MiB") && msg.contains("SUPERMIN_MAX_INPUT_SIZE="),
                "{msg}"
            );
            // Within the limit it reads as before.
            let ok = read_inputs(&[p], &InputBudget::new(8 << 20)).unwrap();
            assert_eq!(ok.packages.len(), 4 << 20 >> 2);
        }
    }

    #[test]
    fn lists_and_base_images_draw_from_one_budget() {
        let d = tempfile::tempdir().unwrap();
        let list = d.path().join("a-packages.gz");
        compressed_repeat(&list, Compression::Gzip, b"bash\n", 1000);
        let base = write(
            d.path(),
            "b-base.tar.gz",
            &gzip(&tar_bytes(&[("a", &[1; 4000])])),
        );
        let budget = InputBudget::new(8000);
        let inputs = read_inputs(&[list, base], &budget).unwrap();
        assert_eq!(budget.used(), 5000);
        // The base image is 4000 bytes of data plus headers: more than the 3000 left.
        let mut r = crate::base_image::open_stream(&inputs.base_images[0], &budget).unwrap();
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(matches!(
            too_large(err),
            Ok(HostfilesError::InputTooLarge { limit: 8000, .. })
        ));
    }

    #[test]
    fn uncompressed_inputs_are_not_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "base.tar", &tar_bytes(&[("a", &[1; 4000])]));
        let budget = InputBudget::new(10);
        let inputs = read_inputs(&[p], &budget).unwrap();
        let mut r = crate::base_image::open_stream(&inputs.base_images[0], &budget).unwrap();
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn missing_input_is_an_error_naming_it() {
        let e = read_inputs(
            &[PathBuf::from("/nonexistent/supermin.d")],
            &InputBudget::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/supermin.d"));
    }
}
