//! End-to-end tests of `supermin --build` / `--prepare` through the real binary: supermin 5's
//! own checks, `--if-newer` correctness, locks, killed builds, reproducibility, and the
//! libguestfs appliance (which libguestfs itself then boots, under TCG).
//!
//! The `supermin` binary is found beside the test executable's directory (cargo puts it in
//! `target/PROFILE/`); `.ci/test` builds it first. `SUPERMIN_BIN` overrides.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use supermin_tests::{assert_e2fsck_clean, supermin_bin, TempDir};

const LIBGUESTFS_SUPERMIN_D: &str = "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d";

fn supermin(args: &[&str]) -> Output {
    supermin_env(args, &[])
}

fn supermin_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(supermin_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run supermin")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "supermin failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Exit status 1 and exactly one `supermin: error:` line (an optional hint may follow).
#[track_caller]
fn fails_with_one_line(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("supermin: hint:"))
        .collect();
    assert_eq!(lines.len(), 1, "want one line, got: {err}");
    assert!(lines[0].starts_with("supermin: error: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("run debugfs");
    text(&out.stdout)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has_libguestfs() -> bool {
    Path::new(LIBGUESTFS_SUPERMIN_D).is_dir()
}

/// A private, editable copy of a small supermin.d: hostfiles only (fast to build).
fn small_supermin_d(dir: &Path) -> PathBuf {
    let d = dir.join("supermin.d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("hostfiles"), "/usr/bin/ls\n/usr/bin/true\n").unwrap();
    d
}

/// `--build -f chroot D -o OUT`: the quickest build, for tests of the inputs' handling.
fn build_chroot(d: &Path, out: &Path) -> Output {
    Command::new(supermin_bin())
        .args(["--build", "-f", "chroot"])
        .arg(d)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .expect("run supermin")
}

/// `--build -v --if-newer -f ext2 D -o OUT`, the call the `--if-newer` tests repeat.
fn if_newer_args(d: &Path, out: &Path) -> Vec<String> {
    ["--build", "-v", "--if-newer", "-f", "ext2"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            d.display().to_string(),
            "-o".to_string(),
            out.display().to_string(),
        ])
        .collect()
}

#[test]
fn version_first_line_is_supermin_5() {
    let out = ok(&supermin(&["--version"]));
    let first = out.lines().next().unwrap_or("");
    let version = first
        .strip_prefix("supermin ")
        .expect("starts with `supermin `");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!((major, minor) >= (5, 1), "{first}");
    assert!(out.contains("supermin-rs"), "{out}");
}

#[test]
fn list_drivers_names_each_handler_and_detects_dpkg() {
    let out = ok(&supermin(&["--list-drivers"]));
    for h in ["debian/dpkg", "fedora/rpm", "arch/pacman"] {
        assert!(out.contains(h), "{out}");
    }
    if Path::new("/var/lib/dpkg/status").exists() {
        assert!(out.contains("debian/dpkg\tdetected\n"), "{out}");
        assert!(out.contains("arch/pacman\tnot-detected\n"), "{out}");
    }
}

#[test]
fn misuse_gets_supermins_errors_on_one_line_and_status_1() {
    fails_with_one_line(&supermin(&["-o", "x", "in"]), "--prepare or --build");
    fails_with_one_line(
        &supermin(&["--prepare", "-f", "ext2", "-o", "x", "bash"]),
        "--prepare and --format",
    );
    fails_with_one_line(&supermin(&["--build", "-o", "x", "in"]), "--format");
    fails_with_one_line(
        &supermin(&["--build", "-f", "ext2", "--size", "12Q", "-o", "x"]),
        "12Q",
    );
    fails_with_one_line(&supermin(&["--build", "-f", "ext2", "in"]), "-o");
    fails_with_one_line(&supermin(&["--bogus"]), "--bogus");
    let tmp = TempDir::new("misuse");
    fails_with_one_line(
        &supermin(&[
            "--build",
            "-f",
            "chroot",
            "/nonexistent/supermin.d",
            "-o",
            tmp.join("o").to_str().unwrap(),
        ]),
        "/nonexistent/supermin.d",
    );
}

#[test]
fn prepare_then_chroot_build_runs_bash_ls_and_sync() {
    let tmp = TempDir::new("prepare-chroot");
    let d = tmp.join("supermin.d");
    let ds = d.to_str().unwrap();
    // -o is replaced as a whole, as by supermin: a stale input left there must not survive.
    fs::create_dir(&d).unwrap();
    fs::write(d.join("hostfiles"), "/stale\n").unwrap();
    ok(&supermin(&[
        "--prepare",
        "--use-installed",
        "bash",
        "coreutils",
        "-o",
        ds,
    ]));
    assert!(!d.join("hostfiles").exists(), "stale file kept in -o");
    let packages = fs::read_to_string(d.join("packages")).unwrap();
    assert_eq!(packages, "bash\ncoreutils\n");
    assert!(d.join("base.tar.gz").exists());

    let root = tmp.join("chroot");
    ok(&supermin(&[
        "--build",
        "-f",
        "chroot",
        ds,
        "-o",
        root.to_str().unwrap(),
    ]));
    // Absolute symlinks are made relative, so the tree is usable where it lies.
    let mut absolute = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                if fs::read_link(e.path()).unwrap().is_absolute() {
                    absolute.push(e.path());
                }
            } else if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(absolute.is_empty(), "absolute symlinks left: {absolute:?}");
    let out = Command::new("chroot")
        .arg(&root)
        .args([
            "/bin/bash",
            "-c",
            "ls / >/dev/null && sync && echo chroot-ok",
        ])
        .output()
        .expect("chroot");
    assert!(
        text(&out.stdout).contains("chroot-ok"),
        "bash/ls/sync in the chroot: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn prepare_then_ext2_build_holds_bash_and_passes_e2fsck() {
    let tmp = TempDir::new("prepare-ext2");
    let d = tmp.join("supermin.d");
    let ds = d.to_str().unwrap();
    ok(&supermin(&[
        "--prepare",
        "--use-installed",
        "bash",
        "-o",
        ds,
    ]));
    let out = tmp.join("appliance");
    ok(&supermin(&[
        "--build",
        "-f",
        "ext2",
        "--include-packagelist",
        ds,
        "-o",
        out.to_str().unwrap(),
    ]));
    for f in ["kernel", "initrd", "root"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let root = out.join("root");
    assert_e2fsck_clean(&root);
    let stat = debugfs(&root, "stat /usr/bin/bash");
    assert!(stat.contains("Type: regular"), "{stat}");
    let list = debugfs(&root, "cat /packagelist");
    assert!(list.lines().any(|l| l.starts_with("bash_")), "{list}");
    // The kernel's modules are in the root, so the appliance can modprobe.
    let version = supermin_tests::host_kernel().version;
    let ls = debugfs(&root, &format!("ls -l /lib/modules/{version}"));
    assert!(ls.contains("modules.dep"), "{ls}");
}

#[test]
fn if_newer_skips_an_unchanged_output_and_says_so() {
    let tmp = TempDir::new("if-newer-skip");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let args = if_newer_args(&d, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = ok(&supermin(&args));
    assert!(!first.contains("does not need rebuilding"), "{first}");
    let inode = fs::metadata(out.join("root")).unwrap();
    let second = ok(&supermin(&args));
    assert!(
        second.contains("supermin: if-newer: output does not need rebuilding"),
        "{second}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(out.join("root")).unwrap().ino(),
        inode.ino(),
        "root rewritten"
    );
}

#[test]
fn if_newer_rebuilds_after_removing_each_output() {
    let tmp = TempDir::new("if-newer-remove");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let args = if_newer_args(&d, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&supermin(&args));
    for f in ["kernel", "initrd", "root"] {
        fs::remove_file(out.join(f)).unwrap();
        let again = ok(&supermin(&args));
        assert!(
            !again.contains("does not need rebuilding"),
            "removed {f} but: {again}"
        );
        assert!(out.join(f).exists(), "{f} not rebuilt");
    }
    assert_e2fsck_clean(&out.join("root"));
}

#[test]
fn if_newer_rebuilds_after_an_edit_inside_supermin_d() {
    // supermin 5 compares only the mtimes of the named inputs and misses this.
    let tmp = TempDir::new("if-newer-edit");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let args = if_newer_args(&d, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&supermin(&args));
    let list = d.join("hostfiles");
    let before = fs::metadata(&list).unwrap();
    let dir_before = fs::metadata(&d).unwrap();
    // Same size, same mtimes (of the file and of the directory): only the bytes differ.
    fs::write(&list, "/usr/bin/ls\n/usr/bin/yes\n").unwrap();
    let set_times = |p: &Path, m: &fs::Metadata| {
        let f = fs::File::open(p).unwrap();
        f.set_times(
            fs::FileTimes::new()
                .set_modified(m.modified().unwrap())
                .set_accessed(m.accessed().unwrap()),
        )
        .unwrap();
    };
    set_times(&list, &before);
    set_times(&d, &dir_before);
    let again = ok(&supermin(&args));
    assert!(!again.contains("does not need rebuilding"), "{again}");
    let root = out.join("root");
    assert_e2fsck_clean(&root);
    assert!(debugfs(&root, "stat /usr/bin/yes").contains("Type: regular"));
    assert!(!debugfs(&root, "stat /usr/bin/true").contains("Type: regular"));
}

#[test]
fn if_newer_rebuilds_when_a_supermin_variable_changes() {
    let tmp = TempDir::new("if-newer-env");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let mut args = if_newer_args(&d, &out);
    // `kernel` as a symlink names the kernel chosen (a PVH vmlinux would be a file).
    args.extend(["--kernel-format".to_string(), "bzimage".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&supermin(&args));
    let kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("vmlinuz-"))
        .collect();
    let chosen = fs::read_link(out.join("kernel")).unwrap();
    let Some(other) = kernels.iter().find(|k| **k != chosen) else {
        eprintln!("skipped: only one kernel installed");
        return;
    };
    let version = other
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = format!("/lib/modules/{version}");
    let env = [
        ("SUPERMIN_KERNEL", other.to_str().unwrap()),
        ("SUPERMIN_MODULES", modules.as_str()),
    ];
    let again = ok(&supermin_env(&args, &env));
    assert!(!again.contains("does not need rebuilding"), "{again}");
    assert_eq!(fs::read_link(out.join("kernel")).unwrap(), *other);
    let third = ok(&supermin_env(&args, &env));
    assert!(third.contains("does not need rebuilding"), "{third}");
}

#[test]
fn concurrent_builders_with_a_lock_build_once() {
    let tmp = TempDir::new("lock");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let lock = tmp.join("lock");
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(supermin_bin())
                .args(["--build", "-v", "--if-newer", "--lock"])
                .arg(&lock)
                .args(["-f", "ext2"])
                .arg(&d)
                .arg("-o")
                .arg(&out)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let skipped = outputs
        .iter()
        .map(ok)
        .filter(|o| o.contains("does not need rebuilding"))
        .count();
    assert_eq!(skipped, 2, "exactly one of three builders builds");
    assert_e2fsck_clean(&out.join("root"));
}

#[test]
fn killed_build_never_publishes_a_torn_appliance() {
    let tmp = TempDir::new("killed");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let build = |extra: &str| {
        Command::new(supermin_bin())
            .args(["--build", "-f", "ext2", "--size", extra])
            .arg(&d)
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // A complete first appliance.
    assert!(build("256M").wait().unwrap().success());
    let good = fs::read_to_string(out.join(".supermin-stamp")).unwrap();
    // Rebuilds killed at different moments: the output is always a whole appliance.
    for delay_ms in [5u64, 20, 50, 100, 200, 400] {
        let mut child = build(&format!("{}M", 256 + delay_ms));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        for f in ["kernel", "initrd", "root", ".supermin-stamp"] {
            assert!(
                out.join(f).exists(),
                "{f} missing after kill at {delay_ms} ms"
            );
        }
        assert_e2fsck_clean(&out.join("root"));
    }
    // The next build cleans up whatever the killed ones left beside the output.
    assert!(build("300M").wait().unwrap().success());
    let debris: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("supermin-tmp") || n.contains("supermin-old"))
        .collect();
    assert!(debris.is_empty(), "debris left: {debris:?}");
    assert_ne!(
        fs::read_to_string(out.join(".supermin-stamp")).unwrap(),
        good,
        "the last build published"
    );
}

#[test]
fn same_inputs_and_source_date_epoch_give_identical_outputs() {
    // Regression: the UUID and some inodes once differed between two builds into the same
    // -o, because host access times (which a build's own reads move) and a /tmp-like
    // directory's mtime went into the image.
    let tmp = TempDir::new("repro");
    let d = small_supermin_d(tmp.path());
    let data = tmp.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("read-me"), "contents\n").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::open(data.join("read-me"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_accessed(old).set_modified(old))
        .unwrap();
    fs::write(
        d.join("hostfiles"),
        format!("/usr/bin/ls\n{}/read-me\n", data.display()),
    )
    .unwrap();
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let out = tmp.join("out");
    let mut copies = Vec::new();
    for round in 0..2 {
        if round == 1 {
            // Something new in a directory of the tree: its mtime moves past the epoch.
            fs::write(data.join("not-in-the-image"), "x").unwrap();
        }
        ok(&supermin_env(
            &[
                "--build",
                "-f",
                "ext2",
                "--size",
                "256M",
                d.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            &env,
        ));
        assert_e2fsck_clean(&out.join("root"));
        for f in ["root", "initrd"] {
            let copy = tmp.join(&format!("{f}.{round}"));
            fs::copy(out.join(f), &copy).unwrap();
            copies.push(copy);
        }
    }
    for (first, second) in [(&copies[0], &copies[2]), (&copies[1], &copies[3])] {
        let same = Command::new("cmp")
            .arg(first)
            .arg(second)
            .status()
            .expect("cmp");
        assert!(
            same.success(),
            "{} differs between two identical builds",
            first.display()
        );
    }
}

#[test]
fn unreadable_host_file_becomes_empty_with_a_warning() {
    // As root every file is readable: run the build as `nobody` (needs setpriv).
    if !have("setpriv") || !rustix_is_root() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let tmp = TempDir::new("unreadable");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let secret = tmp.join("secret");
    fs::write(&secret, "top secret").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("hostfiles"), format!("{}\n", secret.display())).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    let out = tmp.join("chroot");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(supermin_bin())
        .args(["--build", "-f", "chroot"])
        .arg(&d)
        .arg("-o")
        .arg(&out)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains(secret.to_str().unwrap()),
        "{stderr}"
    );
    let copied = out.join(secret.strip_prefix("/").unwrap());
    assert_eq!(fs::metadata(&copied).unwrap().len(), 0);
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "0")
}

#[test]
fn no_input_builds_the_embedded_default_appliance() {
    let tmp = TempDir::new("default");
    let out = tmp.join("out");
    ok(&supermin(&[
        "--build",
        "-f",
        "ext2",
        "-o",
        out.to_str().unwrap(),
    ]));
    let root = out.join("root");
    assert_e2fsck_clean(&root);
    let init = debugfs(&root, "stat /init");
    assert!(
        init.contains("Type: regular") && init.contains("Mode:  0755"),
        "{init}"
    );
    for tool in [
        "/usr/bin/ls",
        "/usr/sbin/mke2fs",
        "/usr/bin/mount",
        "/usr/bin/kmod",
    ] {
        assert!(
            debugfs(&root, &format!("stat {tool}")).contains("Type: regular"),
            "{tool} missing"
        );
    }
}

fn libguestfs_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .stdin(Stdio::null())
}

#[track_caller]
fn test_tool_passes(cmd: &mut Command) {
    let out = libguestfs_env(cmd).output().expect("libguestfs-test-tool");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("===== TEST FINISHED OK ====="),
        "libguestfs-test-tool did not pass:\n{}",
        all.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn libguestfs_boots_our_fixed_appliance_and_guestfish_uses_a_disk() {
    if !has_libguestfs() || !have("libguestfs-test-tool") {
        eprintln!("skipped: libguestfs is not installed");
        return;
    }
    let tmp = TempDir::new("lgfs-fixed");
    let app = tmp.join("appliance");
    let printed = ok(&supermin(&["update-appliance", app.to_str().unwrap()]));
    assert!(
        printed.contains(&format!("export LIBGUESTFS_PATH={}", app.display())),
        "{printed}"
    );
    assert!(app.join("README.fixed").exists());
    assert!(!fs::symlink_metadata(app.join("kernel"))
        .unwrap()
        .is_symlink());
    assert_e2fsck_clean(&app.join("root"));
    test_tool_passes(Command::new("libguestfs-test-tool").env("LIBGUESTFS_PATH", &app));

    // guestfish: make a filesystem on a scratch disk, write, upload and read back.
    let disk = tmp.join("scratch.img");
    fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let upload = tmp.join("upload.txt");
    fs::write(&upload, "uploaded through the appliance\n").unwrap();
    let script = format!(
        "run\n\
         part-disk /dev/sda mbr\n\
         mkfs ext4 /dev/sda1\n\
         mount /dev/sda1 /\n\
         write /hello.txt \"hello from guestfish\"\n\
         upload {} /up.txt\n\
         cat /hello.txt\n\
         cat /up.txt\n",
        upload.display()
    );
    let mut child = libguestfs_env(&mut Command::new("guestfish"))
        .env("LIBGUESTFS_PATH", &app)
        .arg("-a")
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guestfish");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "guestfish: {}", text(&out.stderr));
    assert!(stdout.contains("hello from guestfish"), "{stdout}");
    assert!(
        stdout.contains("uploaded through the appliance"),
        "{stdout}"
    );
    // The writes reached the disk image: mount it on the host and look.
    let dump = Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(format!("{}?offset=1048576", disk.display()))
        .output();
    if let Ok(d) = dump {
        let s = text(&d.stdout);
        if !s.is_empty() {
            assert!(s.contains("hello from guestfish"), "{s}");
        }
    }
}

#[test]
fn libguestfs_uses_us_as_a_drop_in_for_usr_bin_supermin() {
    if !has_libguestfs() || !have("libguestfs-test-tool") || !have("unshare") {
        eprintln!("skipped: libguestfs or unshare missing");
        return;
    }
    if !Path::new("/usr/bin/supermin").exists() {
        eprintln!("skipped: /usr/bin/supermin is not installed to bind over");
        return;
    }
    let tmp = TempDir::new("lgfs-dropin");
    let cache = tmp.join("cache");
    fs::create_dir(&cache).unwrap();
    // A private mount namespace: our binary over /usr/bin/supermin for libguestfs only.
    let script = format!(
        "mount --make-rprivate / && mount --bind {bin} /usr/bin/supermin && \
         /usr/bin/supermin --version | head -n 2 && libguestfs-test-tool",
        bin = supermin_bin().display()
    );
    let out = libguestfs_env(&mut Command::new("unshare"))
        .args(["-m", "sh", "-c", &script])
        .env("LIBGUESTFS_CACHEDIR", &cache)
        .env_remove("LIBGUESTFS_PATH")
        .output()
        .expect("unshare");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("supermin-rs"),
        "our binary was not the one run:\n{all}"
    );
    assert!(
        all.contains("===== TEST FINISHED OK ====="),
        "{}",
        &all[all.len().saturating_sub(4000)..]
    );
    // libguestfs's own call built the cached appliance through us.
    let stamps: Vec<PathBuf> = walk_find(&cache, ".supermin-stamp");
    assert!(
        !stamps.is_empty(),
        "no appliance built by us in {}",
        cache.display()
    );
}

fn walk_find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name() == name {
                found.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    found
}

#[test]
fn kernel_command_reports_the_choice_and_the_initrd_modules() {
    let text_out = ok(&supermin(&["kernel"]));
    assert!(text_out.contains("chosen"), "{text_out}");
    assert!(text_out.contains("ext4"), "{text_out}");
    let json = ok(&supermin(&["kernel", "--json"]));
    let trimmed = json.trim();
    assert!(
        trimmed.starts_with('{') && trimmed.ends_with('}'),
        "not a JSON object: {json}"
    );
    assert!(json.contains("\"version\""), "{json}");
    assert!(json.contains("\"candidates\""), "{json}");
}

#[test]
fn a_supermin_variable_pointing_at_nothing_is_an_error_not_ignored() {
    // supermin 5 silently falls back to another kernel here.
    let out = supermin_env(&["kernel"], &[("SUPERMIN_KERNEL", "/nonexistent/vmlinuz")]);
    fails_with_one_line(&out, "/nonexistent/vmlinuz");
    assert!(
        text(&out.stderr).contains("supermin: hint:"),
        "{}",
        text(&out.stderr)
    );
    let tmp = TempDir::new("bad-env");
    let d = small_supermin_d(tmp.path());
    let out = supermin_env(
        &[
            "--build",
            "-f",
            "ext2",
            d.to_str().unwrap(),
            "-o",
            tmp.join("o").to_str().unwrap(),
        ],
        &[("SUPERMIN_MODULES", "/nonexistent/modules")],
    );
    fails_with_one_line(&out, "/nonexistent/modules");
    assert!(!tmp.join("o").exists(), "nothing published on error");
}

#[test]
fn prepare_without_use_installed_takes_config_files_from_downloaded_packages() {
    if !Path::new("/var/lib/dpkg/status").exists() || !have("apt-get") {
        eprintln!("skipped: not a dpkg system");
        return;
    }
    let tmp = TempDir::new("prepare-download");
    let d = tmp.join("supermin.d");
    let out = supermin_env(
        &["--prepare", "bash", "-o", d.to_str().unwrap()],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    ok(&out);
    assert_eq!(fs::read_to_string(d.join("packages")).unwrap(), "bash\n");
    let listing = Command::new("tar")
        .args(["tzvf"])
        .arg(d.join("base.tar.gz"))
        .output()
        .expect("tar");
    let listing = text(&listing.stdout);
    assert!(listing.contains("etc/bash.bashrc"), "{listing}");
    assert!(
        listing.lines().all(|l| l.contains("root/root")),
        "config files are owned by root: {listing}"
    );
    assert!(
        listing.contains("2023-11-14"),
        "mtime from SOURCE_DATE_EPOCH: {listing}"
    );
}

/// `tar` of `files` (relative names under `dir`) into `out`, with extra tar flags.
fn tar_create(dir: &Path, out: &Path, flags: &[&str], files: &[&str]) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(flags)
        .arg("-cf")
        .arg(out)
        .args(files)
        .status()
        .expect("tar");
    assert!(status.success());
}

#[test]
fn a_sparse_base_image_member_keeps_its_contents() {
    // Regression: the packed data of a GNU sparse member was once copied as if it were
    // the whole file.
    let tmp = TempDir::new("sparse-member");
    let src = tmp.join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(10 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"XYZ", 5_000_000).unwrap();
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    tar_create(
        &src,
        &d.join("base.tar"),
        &["--sparse", "--format=gnu"],
        &["sparse"],
    );
    let out = tmp.join("out");
    ok(&build_chroot(&d, &out));
    let same = Command::new("cmp")
        .arg(src.join("sparse"))
        .arg(out.join("sparse"))
        .status()
        .unwrap();
    assert!(same.success(), "sparse member contents differ");
}

#[test]
fn a_truncated_base_image_is_an_error_not_zeros() {
    let tmp = TempDir::new("truncated");
    let src = tmp.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), vec![0x5au8; 100_000]).unwrap();
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    let tar = d.join("base.tar");
    tar_create(&src, &tar, &[], &["big"]);
    fs::OpenOptions::new()
        .write(true)
        .open(&tar)
        .unwrap()
        .set_len(20_000)
        .unwrap();
    let out = tmp.join("out");
    let o = build_chroot(&d, &out);
    fails_with_one_line(&o, "truncated");
    assert!(!out.exists());
}

#[test]
fn an_output_inside_an_input_or_over_a_file_is_refused() {
    let tmp = TempDir::new("bad-output");
    let d = small_supermin_d(tmp.path());
    let inside = d.join("out");
    fails_with_one_line(&build_chroot(&d, &inside), "inside input");
    let file = tmp.join("a-file");
    fs::write(&file, "keep me").unwrap();
    fails_with_one_line(&build_chroot(&d, &file), "not a directory");
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn a_relative_supermin_kernel_still_gives_a_working_kernel_link() {
    let tmp = TempDir::new("relative-kernel");
    let d = small_supermin_d(tmp.path());
    let chosen = supermin_tests::host_kernel();
    let dir = chosen.path.parent().unwrap();
    let name = chosen.path.file_name().unwrap().to_str().unwrap();
    let out = tmp.join("out");
    let o = Command::new(supermin_bin())
        .current_dir(dir)
        .env("SUPERMIN_KERNEL", name)
        .env("SUPERMIN_MODULES", &chosen.modules_dir)
        // The symlink is the bzImage's (a PVH vmlinux `kernel` is always a file).
        .args(["--build", "-f", "ext2", "--kernel-format", "bzimage"])
        .arg(&d)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    ok(&o);
    let link = fs::read_link(out.join("kernel")).unwrap();
    assert!(link.is_absolute(), "{}", link.display());
    assert!(out.join("kernel").exists());
}

// Regression: --host-cpu aarch64 on an x86_64 host silently built an appliance whose init
// could not run there.
#[test]
fn a_host_cpu_other_than_ours_is_refused_in_one_line() {
    let tmp = TempDir::new("host-cpu");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    let o = supermin(&[
        "--build",
        "-f",
        "chroot",
        "--host-cpu",
        other,
        d.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    fails_with_one_line(&o, other);
    assert!(!out.exists());
    // Our own architecture is fine, as libguestfs passes it.
    let o = supermin(&[
        "--build",
        "-f",
        "chroot",
        "--host-cpu",
        std::env::consts::ARCH,
        d.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    ok(&o);
}
