//! The runtime cache directory is created 0755 and refused when someone else
//! could have tampered with it, as libguestfs refuses it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use supermin_cache::{check_cache_dir, runtime_cache_dir_in, BaseOrigin, CacheError};

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn cache_dir_is_created_0755_whatever_the_umask() {
    let base = tempfile::tempdir().unwrap();
    // SAFETY: umask only swaps an integer in the process; no memory involved.
    let old = unsafe { libc::umask(0o077) };
    let made = runtime_cache_dir_in(base.path(), BaseOrigin::Tmpdir);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let dir = made.unwrap();
    assert_eq!(
        dir,
        fs::canonicalize(base.path())
            .unwrap()
            .join(format!(".guestfs-{}", euid()))
    );
    assert_eq!(mode(&dir), 0o755);
    // A second call adopts the directory it made.
    assert_eq!(
        runtime_cache_dir_in(base.path(), BaseOrigin::Tmpdir).unwrap(),
        dir
    );
}

#[test]
fn a_relative_base_becomes_absolute() {
    let base = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(base.path(), &cwd);
    let dir = runtime_cache_dir_in(&rel, BaseOrigin::LibguestfsCachedir).unwrap();
    assert!(dir.is_absolute(), "{}", dir.display());
}

/// `base` relative to `from`, through `..`s.
fn pathdiff(base: &Path, from: &Path) -> std::path::PathBuf {
    let mut rel = std::path::PathBuf::new();
    for _ in from.components().skip(1) {
        rel.push("..");
    }
    rel.join(base.strip_prefix("/").unwrap())
}

#[test]
fn a_missing_base_is_an_error_naming_the_variable() {
    let err = runtime_cache_dir_in(
        Path::new("/nonexistent/supermin-cache-test"),
        BaseOrigin::LibguestfsCachedir,
    )
    .unwrap_err();
    assert!(matches!(err, CacheError::BaseDir { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("LIBGUESTFS_CACHEDIR") && msg.contains("/nonexistent/supermin-cache-test"),
        "{msg}"
    );
}

#[test]
fn a_dir_owned_by_another_user_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let dir = if euid() == 0 {
        let d = base.path().join("theirs");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        d
    } else {
        // Not root: "/" is a directory that belongs to root.
        Path::new("/").to_path_buf()
    };
    let err = check_cache_dir(&dir).unwrap_err();
    assert!(
        matches!(err, CacheError::NotOwned { owner, .. } if owner != euid()),
        "{err}"
    );
    assert!(err.to_string().contains("security:"), "{err}");

    if euid() == 0 {
        // Through runtime_cache_dir_in too: a squatted .guestfs-UID.
        let squat = base.path().join(format!(".guestfs-{}", euid()));
        fs::create_dir(&squat).unwrap();
        std::os::unix::fs::chown(&squat, Some(65534), Some(65534)).unwrap();
        let err = runtime_cache_dir_in(base.path(), BaseOrigin::Tmpdir).unwrap_err();
        assert!(matches!(err, CacheError::NotOwned { .. }), "{err}");
    }
}

#[test]
fn a_symlink_is_refused_even_to_a_good_directory() {
    let base = tempfile::tempdir().unwrap();
    let real = base.path().join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
    check_cache_dir(&real).unwrap();
    let link = base.path().join(format!(".guestfs-{}", euid()));
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(matches!(
        check_cache_dir(&link),
        Err(CacheError::IsSymlink { .. })
    ));
    assert!(matches!(
        runtime_cache_dir_in(base.path(), BaseOrigin::Tmpdir),
        Err(CacheError::IsSymlink { .. })
    ));
}

#[test]
fn a_file_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join(format!(".guestfs-{}", euid()));
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        check_cache_dir(&file),
        Err(CacheError::NotADirectory { .. })
    ));
    assert!(matches!(
        runtime_cache_dir_in(base.path(), BaseOrigin::Tmpdir),
        Err(CacheError::NotADirectory { .. })
    ));
}

#[test]
fn group_or_other_writable_dirs_are_refused_and_not_repaired() {
    let base = tempfile::tempdir().unwrap();
    for bad in [0o775, 0o757, 0o777, 0o1777] {
        let dir = base.path().join(format!("d{bad:o}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(bad)).unwrap();
        let err = check_cache_dir(&dir).unwrap_err();
        assert!(
            matches!(err, CacheError::WritableByOthers { .. }),
            "{bad:o}: {err}"
        );
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        assert_eq!(mode(&dir), bad);
    }
    let own = base.path().join(format!(".guestfs-{}", euid()));
    fs::create_dir(&own).unwrap();
    fs::set_permissions(&own, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        runtime_cache_dir_in(base.path(), BaseOrigin::Tmpdir),
        Err(CacheError::WritableByOthers { .. })
    ));
    for ok in [0o755, 0o700, 0o1755] {
        fs::set_permissions(&own, fs::Permissions::from_mode(ok)).unwrap();
        check_cache_dir(&own).unwrap();
    }
}
