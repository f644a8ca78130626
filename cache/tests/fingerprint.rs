//! Fingerprints of supermin.d-like inputs move exactly when something that
//! determines the output moves.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use supermin_cache::{Fingerprint, FingerprintBuilder, HashMode};

/// A small supermin.d: packages, hostfiles, a base "tarball", a subdirectory.
fn supermin_d(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("packages"), "bash\ncoreutils\nkmod\n").unwrap();
    fs::write(root.join("hostfiles"), "/etc/hosts\n").unwrap();
    fs::write(root.join("base.tar.gz"), vec![0x1f_u8; 10_000]).unwrap();
    fs::write(root.join("sub/excludefiles"), "-/usr/share/doc/*\n").unwrap();
}

/// What the builder would hash for one `--build`.
fn build_fp(input: &Path, mode: HashMode, size: &str) -> Fingerprint {
    build_fp_env(input, mode, size, None)
}

/// [`build_fp`] with `SUPERMIN_KERNEL` as the caller captured it (`None` = unset).
fn build_fp_env(input: &Path, mode: HashMode, size: &str, kernel: Option<&str>) -> Fingerprint {
    let mut b = FingerprintBuilder::new("supermin-rs 0.1.0");
    b.tree(input, mode).unwrap();
    b.str("format", "ext2");
    b.str("size", size);
    b.env_value("SUPERMIN_KERNEL", kernel.map(OsStr::new));
    b.finish()
}

fn set_mtime(p: &Path, t: SystemTime) {
    // Read-only is enough for futimens on a file or directory one owns.
    File::open(p).unwrap().set_modified(t).unwrap();
}

#[test]
fn unchanged_inputs_give_the_same_fingerprint() {
    let d = tempfile::tempdir().unwrap();
    supermin_d(d.path());
    for mode in [HashMode::Contents, HashMode::ContentsUpTo(1 << 20)] {
        assert_eq!(
            build_fp(d.path(), mode, "4G"),
            build_fp(d.path(), mode, "4G")
        );
    }
}

#[test]
fn an_edit_inside_supermin_d_with_size_and_mtime_restored_changes_it() {
    // supermin 5 compares only the mtime of the named directory and misses this.
    let d = tempfile::tempdir().unwrap();
    supermin_d(d.path());
    let file = d.path().join("sub/excludefiles");
    let dir_mtime = fs::metadata(d.path()).unwrap().modified().unwrap();
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let before: Vec<_> = [
        HashMode::Contents,
        HashMode::Identity,
        HashMode::ContentsUpTo(4096),
    ]
    .iter()
    .map(|m| build_fp(d.path(), *m, "4G"))
    .collect();
    fs::write(&file, "-/usr/share/man/*\n").unwrap();
    set_mtime(&file, mtime);
    set_mtime(d.path(), dir_mtime);
    assert_eq!(
        fs::metadata(&file).unwrap().len(),
        "-/usr/share/doc/*\n".len() as u64
    );
    let after: Vec<_> = [
        HashMode::Contents,
        HashMode::Identity,
        HashMode::ContentsUpTo(4096),
    ]
    .iter()
    .map(|m| build_fp(d.path(), *m, "4G"))
    .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a);
    }
}

#[test]
fn adding_removing_or_renaming_an_input_file_changes_it() {
    let d = tempfile::tempdir().unwrap();
    supermin_d(d.path());
    let base = build_fp(d.path(), HashMode::Contents, "4G");
    fs::write(d.path().join("zz-extra"), "x").unwrap();
    let added = build_fp(d.path(), HashMode::Contents, "4G");
    assert_ne!(base, added);
    fs::remove_file(d.path().join("zz-extra")).unwrap();
    assert_eq!(build_fp(d.path(), HashMode::Contents, "4G"), base);
    fs::rename(d.path().join("hostfiles"), d.path().join("hostfiles2")).unwrap();
    assert_ne!(build_fp(d.path(), HashMode::Contents, "4G"), base);
}

#[test]
fn a_mode_change_changes_it() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    supermin_d(d.path());
    let base = build_fp(d.path(), HashMode::Contents, "4G");
    fs::set_permissions(d.path().join("packages"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(build_fp(d.path(), HashMode::Contents, "4G"), base);
}

#[test]
fn options_and_environment_change_it() {
    let d = tempfile::tempdir().unwrap();
    supermin_d(d.path());
    let base = build_fp(d.path(), HashMode::Contents, "4G");
    assert_ne!(build_fp(d.path(), HashMode::Contents, "8G"), base);
    let with_env = build_fp_env(d.path(), HashMode::Contents, "4G", Some("/boot/vmlinuz-x"));
    let empty_env = build_fp_env(d.path(), HashMode::Contents, "4G", Some(""));
    assert_ne!(with_env, base);
    assert_ne!(empty_env, base);
    assert_ne!(empty_env, with_env);
    assert_eq!(build_fp(d.path(), HashMode::Contents, "4G"), base);
}

#[test]
fn a_symlinked_input_file_is_followed_for_its_contents() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("supermin.d");
    supermin_d(&input);
    let target = d.path().join("real-hostfiles");
    fs::write(&target, "/etc/a\n").unwrap();
    std::os::unix::fs::symlink(&target, input.join("hostfiles-extra")).unwrap();
    let before = build_fp(&input, HashMode::Contents, "4G");
    fs::write(&target, "/etc/b\n").unwrap();
    assert_ne!(build_fp(&input, HashMode::Contents, "4G"), before);
}

#[test]
fn a_symlink_loop_inside_the_tree_terminates() {
    let d = tempfile::tempdir().unwrap();
    supermin_d(d.path());
    std::os::unix::fs::symlink(".", d.path().join("sub/self")).unwrap();
    std::os::unix::fs::symlink("loop-b", d.path().join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", d.path().join("loop-b")).unwrap();
    let a = build_fp(d.path(), HashMode::Contents, "4G");
    assert_eq!(a, build_fp(d.path(), HashMode::Contents, "4G"));
}

#[test]
fn a_missing_input_is_recorded_not_an_error_and_differs_from_an_empty_one() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let gone = build_fp(&missing, HashMode::Contents, "4G");
    fs::create_dir(&missing).unwrap();
    assert_ne!(build_fp(&missing, HashMode::Contents, "4G"), gone);
    let mut b = FingerprintBuilder::new("v");
    b.file_identity(&d.path().join("no-kernel")).unwrap();
    b.file_contents(&d.path().join("no-kernel")).unwrap();
}

#[test]
fn an_unreadable_input_is_an_error_naming_it() {
    // Reading /proc/self/mem at offset 0 fails (EIO) for everyone, root included.
    let mem = Path::new("/proc/self/mem");
    let mut b = FingerprintBuilder::new("v");
    let err = b.file_contents(mem).unwrap_err();
    assert!(err.to_string().contains("/proc/self/mem"), "{err}");
    let mut b = FingerprintBuilder::new("v");
    assert!(b.tree(mem, HashMode::Contents).is_err());
}

#[test]
fn contents_up_to_hashes_small_files_by_bytes_and_large_ones_by_identity() {
    let d = tempfile::tempdir().unwrap();
    let small = d.path().join("small");
    let large = d.path().join("large");
    fs::write(&small, vec![1u8; 100]).unwrap();
    fs::write(&large, vec![2u8; 10_000]).unwrap();
    // Identical bytes in a new inode: identity changes, contents do not.
    let relink = |p: &Path| {
        let data = fs::read(p).unwrap();
        let t = fs::metadata(p).unwrap().modified().unwrap();
        fs::remove_file(p).unwrap();
        fs::write(p, data).unwrap();
        set_mtime(p, t);
    };
    let fp = |p: &Path| {
        let mut b = FingerprintBuilder::new("v");
        b.tree(p, HashMode::ContentsUpTo(1000)).unwrap();
        b.finish()
    };
    // The small file is hashed by bytes only: a new inode with the same
    // bytes is the same input. The large one is hashed by identity (plus
    // bytes, being racy), so its new inode shows.
    let small_before = fp(&small);
    relink(&small);
    assert_eq!(fp(&small), small_before);
    let large_before = fp(&large);
    std::thread::sleep(Duration::from_millis(10));
    relink(&large);
    assert_ne!(fp(&large), large_before);
}

#[test]
fn the_installed_libguestfs_supermin_d_fingerprints_stably_if_present() {
    let real = Path::new("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d");
    if !real.is_dir() {
        // Nothing to check on a host without libguestfs; the synthetic
        // supermin.d tests above cover the logic.
        return;
    }
    let a = build_fp(real, HashMode::Contents, "4G");
    let b = build_fp(real, HashMode::Identity, "4G");
    assert_ne!(a, b);
    assert_eq!(a, build_fp(real, HashMode::Contents, "4G"));
    assert_eq!(b, build_fp(real, HashMode::Identity, "4G"));
}

// Regression: a symlink to a directory inside supermin.d is read by the builder (as by
// supermin), so an edit behind it must change the fingerprint; it once did not.
#[test]
fn an_edit_behind_a_symlinked_subdirectory_changes_it() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("supermin.d");
    let other = d.path().join("other");
    supermin_d(&input);
    fs::create_dir(&other).unwrap();
    fs::write(other.join("hostfiles2"), "/bin/ls\n").unwrap();
    std::os::unix::fs::symlink("../other", input.join("linked")).unwrap();
    let before = build_fp(&input, HashMode::ContentsUpTo(1 << 20), "4G");
    fs::write(other.join("hostfiles2"), "/bin/ls\n/bin/cat\n").unwrap();
    let after = build_fp(&input, HashMode::ContentsUpTo(1 << 20), "4G");
    assert_ne!(before, after);
}
