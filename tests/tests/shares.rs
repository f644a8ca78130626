//! `supermin run --share` and `--cwd-share` through the real binary and a
//! real guest (TCG): host directories mounted in the default appliance over
//! 9p, read-only unless asked, and the cargo test runner recipe of the
//! README run end to end.
//!
//! Each test has its own runtime cache (the default appliance and saved
//! machines) and `$TMPDIR` under its scratch directory. Scratch directories
//! live under the system temporary directory, which qemu (running as
//! `nobody` when the tests run as root) can reach.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use supermin_tests::{supermin_bin, TempDir};

fn scratch(tag: &str) -> TempDir {
    let dir = TempDir::new(&format!("shares-{tag}"));
    for d in ["tmp", "cache"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    // Reachable by the unprivileged user qemu runs as.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn supermin(dir: &TempDir, cwd: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new(supermin_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env("TMPDIR", dir.join("tmp"))
        .env("LIBGUESTFS_CACHEDIR", dir.join("cache"))
        .env("SUPERMIN_ACCEL", "tcg")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SUPERMIN_QEMU_USER")
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn shares_are_read_only_unless_rw_and_keep_odd_names() {
    let dir = scratch("modes");
    // A path with a space, holding a name that is not UTF-8.
    let ro = dir.join("read only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("hello.txt"), b"from the host\n").unwrap();
    std::fs::write(ro.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n").unwrap();
    let rw = dir.join("rw");
    std::fs::create_dir(&rw).unwrap();
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut ro_spec = ro.clone().into_os_string();
    ro_spec.push(":/mnt/ro");
    let mut rw_spec = rw.clone().into_os_string();
    rw_spec.push(":rw");
    let script = "cat /mnt/ro/hello.txt; ls /mnt/ro | od -An -c | tr -s ' '; \
        echo nope >/mnt/ro/new 2>/dev/null || echo ro-refused; \
        echo from-the-guest >\"$1/out\" && echo rw-written";
    let out = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "--share".as_ref(),
            &ro_spec,
            "--share".as_ref(),
            &rw_spec,
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
            "sh".as_ref(),
            rw.as_os_str(),
        ],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.starts_with("from the host\n"), "{}", text(&out));
    // od shows the raw byte 351 (0xe9) of the Latin-1 name.
    assert!(stdout.contains("c a f 351"), "{}", text(&out));
    assert!(stdout.contains("ro-refused"), "{}", text(&out));
    assert!(stdout.contains("rw-written"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "from-the-guest\n"
    );
    assert!(!ro.join("new").exists());
}

#[test]
fn a_share_qemu_cannot_reach_is_refused_in_one_line() {
    let dir = scratch("private");
    let private = dir.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    assert!(
        is_root.unwrap(),
        "this test runs as root, as CI does: qemu then runs as nobody"
    );
    let out = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "--share".as_ref(),
            private.as_os_str(),
            "--".as_ref(),
            "true".as_ref(),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr.lines().count(), 1, "{}", text(&out));
    assert!(stderr.contains("--qemu-user root"), "{}", text(&out));
}

/// A cargo project whose tests run through `supermin run --cwd-share --`.
fn cargo_project(dir: &TempDir) -> PathBuf {
    let proj = dir.join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::create_dir_all(proj.join(".cargo")).unwrap();
    std::fs::write(
        proj.join("Cargo.toml"),
        "[package]\nname = \"vmtests\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("src/lib.rs"),
        r#"#[cfg(test)]
mod tests {
    #[test]
    fn runs_as_a_child_of_the_appliances_pid_1() {
        // The daemon is PID 1 of the appliance (exec'd as /init) and the test
        // binary its child; on the host cargo would be the parent.
        assert_eq!(std::os::unix::process::parent_id(), 1);
        let comm = std::fs::read_to_string("/proc/1/comm").unwrap();
        assert_eq!(comm.trim(), "init");
        println!("IN-THE-APPLIANCE");
    }

    #[test]
    fn meant_to_fail() {
        panic!("this test fails on purpose");
    }
}
"#,
    )
    .unwrap();
    let runner = format!(
        "[target.x86_64-unknown-linux-gnu]\nrunner = [{:?}, \"run\", \"--cwd-share\", \"--\"]\n",
        supermin_bin().display().to_string()
    );
    std::fs::write(proj.join(".cargo/config.toml"), runner).unwrap();
    proj
}

fn cargo_test(dir: &TempDir, proj: &Path, filter: &str) -> Output {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--offline", "--lib", "--", "--nocapture", filter])
        .current_dir(proj)
        .env("TMPDIR", dir.join("tmp"))
        .env("LIBGUESTFS_CACHEDIR", dir.join("cache"))
        .env("SUPERMIN_ACCEL", "tcg")
        .env("CARGO_TARGET_DIR", proj.join("target"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SUPERMIN_QEMU_USER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .output()
        .expect("cargo")
}

#[test]
fn cargo_test_runs_each_test_binary_in_an_appliance_through_the_runner() {
    let dir = scratch("cargo");
    let proj = cargo_project(&dir);
    let pass = cargo_test(&dir, &proj, "runs_as_a_child");
    let pass_out = String::from_utf8_lossy(&pass.stdout);
    assert!(pass.status.success(), "{}", text(&pass));
    assert!(pass_out.contains("IN-THE-APPLIANCE"), "{}", text(&pass));
    assert!(pass_out.contains("1 passed"), "{}", text(&pass));

    let fail = cargo_test(&dir, &proj, "meant_to_fail");
    let fail_out = String::from_utf8_lossy(&fail.stdout);
    // libtest exits 101 on a failed test; the runner hands it back unchanged.
    assert_eq!(fail.status.code(), Some(101), "{}", text(&fail));
    assert!(fail_out.contains("1 failed"), "{}", text(&fail));
    assert!(
        String::from_utf8_lossy(&fail.stderr).contains("this test fails on purpose")
            || fail_out.contains("this test fails on purpose"),
        "{}",
        text(&fail)
    );
}
