//! The build's check of the assembled tree, end to end: a supermin.d whose `/init` cannot
//! run fails the build with one line (the libguestfs FAQ's `execl: /init: Permission
//! denied`, found before boot), and one whose binary lost a library to `excludefiles`
//! builds with a warning naming both.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use supermin_tests::{assert_e2fsck_clean, output_of, supermin_bin, TempDir};

/// A supermin.d: hostfiles (a shell and `ls`), optional excludefiles, and an init.tar.gz
/// holding a `/init` script with `mode`.
fn supermin_d(dir: &Path, init_mode: u32, excludes: &[&str]) -> PathBuf {
    let d = dir.join("supermin.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hostfiles"), "/bin/sh\n/usr/bin/dash\n/usr/bin/ls\n").unwrap();
    if !excludes.is_empty() {
        let lines: String = excludes.iter().map(|e| format!("-{e}\n")).collect();
        std::fs::write(d.join("excludefiles"), lines).unwrap();
    }
    let src = dir.join("init-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("init"), "#!/bin/sh\nexec /usr/bin/ls /\n").unwrap();
    std::fs::set_permissions(src.join("init"), std::fs::Permissions::from_mode(init_mode)).unwrap();
    let status = Command::new("tar")
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(d.join("init.tar.gz"))
        .arg("-C")
        .arg(&src)
        .arg("./init")
        .status()
        .expect("run tar");
    assert!(status.success());
    d
}

#[test]
fn a_supermin_d_whose_init_is_not_executable_fails_the_build_with_one_line() {
    let t = TempDir::new("check-init");
    let d = supermin_d(t.path(), 0o644, &[]);
    for format in ["chroot", "ext2"] {
        let out = t.join(&format!("out-{format}"));
        let (code, stdout, stderr) = output_of(
            Command::new(supermin_bin())
                .args(["--build", "-f", format])
                .arg(&d)
                .arg("-o")
                .arg(&out)
                .env("TMPDIR", t.path()),
        );
        assert_eq!(code, 1, "{format}: {stdout}{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{format}: one line: {stderr}");
        assert!(
            stderr.starts_with("supermin: error:")
                && stderr.contains("/init is not executable (mode 0644)")
                && stderr.contains("chmod 0755"),
            "{stderr}"
        );
        assert!(!out.exists(), "nothing published");
        // No staging debris either.
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("supermin-tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn a_binary_whose_library_is_excluded_builds_with_a_warning_naming_both() {
    let t = TempDir::new("check-lib");
    let lib = "/usr/lib/x86_64-linux-gnu/libselinux.so.1";
    assert!(Path::new(lib).exists(), "{lib} (ls needs it on Debian)");
    let d = supermin_d(t.path(), 0o755, &[lib]);
    let out = t.join("out");
    let (code, stdout, stderr) = output_of(
        Command::new(supermin_bin())
            .args(["--build", "-f", "ext2"])
            .arg(&d)
            .arg("-o")
            .arg(&out)
            .env("TMPDIR", t.path()),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("supermin: warning:") && l.contains("libselinux.so.1"))
        .unwrap_or_else(|| panic!("no warning about libselinux.so.1:\n{stderr}"));
    assert!(warning.contains("/usr/bin/ls"), "{warning}");
    assert_e2fsck_clean(&out.join("root"));
    // Without the exclude the same appliance is complete: no warning.
    let d2 = supermin_d(&t.join("plain"), 0o755, &[]);
    let (code, stdout, stderr) = output_of(
        Command::new(supermin_bin())
            .args(["--build", "-f", "chroot"])
            .arg(&d2)
            .arg("-o")
            .arg(t.join("out-plain"))
            .env("TMPDIR", t.path()),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("not in the appliance"), "{stderr}");
}
