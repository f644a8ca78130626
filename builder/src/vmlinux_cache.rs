//! Extracted `vmlinux` files kept between builds. Turning a bzImage into its
//! PVH `vmlinux` is decompression (0.3-0.9 s and a 64 MiB zstd window for a
//! Debian kernel), the same work for every build with the same kernel; the
//! first build pays it, later ones link (or copy) the result.
//!
//! An entry is `KEY.vmlinux` plus `KEY.info` (compression, size, PVH entry),
//! written under temporary names and renamed into place, so a reader finds
//! both whole or neither. The key is the kernel file's identity (path,
//! device, inode, size, times) and this tool's source id; anything else is a
//! miss. The directory lives in the user's runtime cache, whose ownership
//! and mode the `cache` crate checks.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use supermin_kernel_probe::{self as kprobe, Compression, ProbeError, VmlinuxInfo};

/// Entries kept; older ones are removed when a new one is added.
const KEEP: usize = 4;

/// `kprobe::extract_vmlinux(bzimage, dest)`, served from `cache` when it holds
/// this kernel's `vmlinux` (and filled when it does not). Any problem with the
/// cache falls back to extracting: it can only save time, never fail a build.
pub fn extract(
    bzimage: &Path,
    dest: &Path,
    cache: Option<&Path>,
) -> Result<VmlinuxInfo, ProbeError> {
    let Some(dir) = cache else {
        return kprobe::extract_vmlinux(bzimage, dest);
    };
    let Some(key) = key(bzimage) else {
        return kprobe::extract_vmlinux(bzimage, dest);
    };
    let body = dir.join(format!("{key}.vmlinux"));
    let info_path = dir.join(format!("{key}.info"));
    if let Some(info) = read_info(&info_path) {
        if link_or_copy(&body, dest).is_ok() {
            return Ok(info);
        }
    }
    let info = kprobe::extract_vmlinux(bzimage, dest)?;
    let _ = store(dir, dest, &body, &info_path, &info);
    Ok(info)
}

fn key(bzimage: &Path) -> Option<String> {
    let m = fs::metadata(bzimage).ok()?;
    let path = fs::canonicalize(bzimage).ok()?;
    // DefaultHasher::new() is deterministic for one toolchain, and the source
    // id (which names the toolchain's target too) is part of the key.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
        .hash(&mut h);
    env!("SUPERMIN_SOURCE_ID").hash(&mut h);
    Some(format!("{:016x}", h.finish()))
}

fn read_info(path: &Path) -> Option<VmlinuxInfo> {
    let text = fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let compression = Compression::from_name(fields.next()?)?;
    let size = fields.next()?.parse().ok()?;
    let pvh_entry = match fields.next()? {
        "none" => None,
        hex => Some(u64::from_str_radix(hex, 16).ok()?),
    };
    Some(VmlinuxInfo {
        compression,
        size,
        pvh_entry,
    })
}

/// A hard link when `dest` is on the cache's file system (the entries are
/// never written again, only replaced), a copy otherwise.
fn link_or_copy(from: &Path, dest: &Path) -> io::Result<()> {
    match fs::hard_link(from, dest) {
        Ok(()) => Ok(()),
        Err(_) => fs::copy(from, dest).map(drop),
    }
}

fn store(
    dir: &Path,
    extracted: &Path,
    body: &Path,
    info_path: &Path,
    info: &VmlinuxInfo,
) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let tmp = |what: &str| dir.join(format!(".{what}.{}", std::process::id()));
    let (tmp_body, tmp_info) = (tmp("vmlinux"), tmp("info"));
    let result = link_or_copy(extracted, &tmp_body)
        .and_then(|()| {
            let entry = info
                .pvh_entry
                .map_or("none".to_string(), |e| format!("{e:x}"));
            fs::write(
                &tmp_info,
                format!("{} {} {entry}\n", info.compression.as_str(), info.size),
            )
        })
        .and_then(|()| fs::rename(&tmp_body, body))
        .and_then(|()| fs::rename(&tmp_info, info_path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp_body);
        let _ = fs::remove_file(&tmp_info);
        return result;
    }
    prune(dir);
    Ok(())
}

fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut bodies: Vec<(i64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".vmlinux"))
        .filter_map(|e| Some((e.metadata().ok()?.mtime(), e.path())))
        .collect();
    bodies.sort();
    let excess = bodies.len().saturating_sub(KEEP);
    for (_, body) in bodies.into_iter().take(excess) {
        let _ = fs::remove_file(body.with_extension("info"));
        let _ = fs::remove_file(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_garbage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.info");
        fs::write(&p, "zstd 61234567 1000000\n").unwrap();
        let info = read_info(&p).unwrap();
        assert_eq!(info.compression, Compression::Zstd);
        assert_eq!(info.size, 61_234_567);
        assert_eq!(info.pvh_entry, Some(0x100_0000));
        fs::write(&p, "xz 10 none\n").unwrap();
        assert_eq!(read_info(&p).unwrap().pvh_entry, None);
        for bad in ["", "brotli 1 none", "xz ten none", "xz 10 zz"] {
            fs::write(&p, bad).unwrap();
            assert!(read_info(&p).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_cached_vmlinux_is_served_and_equals_a_fresh_extraction() {
        let kernel = glob_kernel();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let first = dir.path().join("first");
        let second = dir.path().join("second");
        let fresh = dir.path().join("fresh");
        let a = extract(&kernel, &first, Some(&cache)).unwrap();
        let b = extract(&kernel, &second, Some(&cache)).unwrap();
        let c = kprobe::extract_vmlinux(&kernel, &fresh).unwrap();
        assert_eq!(
            (a.compression, a.size, a.pvh_entry),
            (c.compression, c.size, c.pvh_entry)
        );
        assert_eq!(
            (b.compression, b.size, b.pvh_entry),
            (c.compression, c.size, c.pvh_entry)
        );
        assert!(fs::read(&second).unwrap() == fs::read(&fresh).unwrap());
        // One entry, served by a link the second time.
        assert_eq!(
            fs::metadata(&second).unwrap().ino(),
            fs::metadata(cache.join(format!("{}.vmlinux", key(&kernel).unwrap())))
                .unwrap()
                .ino()
        );
    }

    /// Any installed kernel (the project's machines have two).
    fn glob_kernel() -> PathBuf {
        let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .collect();
        kernels.sort();
        kernels
            .pop()
            .expect("a kernel in /boot (bash .ci/setup installs one)")
    }
}
