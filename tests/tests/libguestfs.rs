//! libguestfs on the appliances we build (issue 12): `kernel` is the PVH-bootable vmlinux
//! where the kernel carries the note, and libguestfs boots it with every installed kernel
//! series; a kernel without the note keeps the bzImage; `--kernel-format` and
//! `--complete-deps` are part of `--if-newer`'s fingerprint; the package set is supermin 5's.
//!
//! libguestfs runs under TCG (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`): KVM hangs here.

#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use supermin_tests::{
    assert_e2fsck_clean, fake_bzimage_without_pvh, kernel_series, supermin_bin, TempDir,
};

const LIBGUESTFS_SUPERMIN_D: &str = "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d";

fn supermin_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
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

fn has_libguestfs() -> bool {
    Path::new(LIBGUESTFS_SUPERMIN_D).is_dir()
        && Command::new("sh")
            .args([
                "-c",
                "command -v libguestfs-test-tool && command -v guestfish",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn is_elf(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| b.starts_with(b"\x7fELF"))
}

fn libguestfs(cmd: &str, app: &Path) -> Command {
    let mut c = Command::new(cmd);
    c.env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .env("LIBGUESTFS_PATH", app)
        .stdin(Stdio::null());
    c
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A small supermin.d (hostfiles only): quick to build, for tests of the kernel file.
fn small_supermin_d(dir: &Path) -> PathBuf {
    let d = dir.join("supermin.d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("hostfiles"), "/usr/bin/true\n").unwrap();
    d
}

#[test]
fn libguestfs_boots_the_pvh_appliance_with_every_installed_kernel_series() {
    if !has_libguestfs() {
        eprintln!("skipped: libguestfs is not installed");
        return;
    }
    for kernel in kernel_series() {
        let tmp = TempDir::new("lgfs-pvh");
        let app = tmp.join("appliance");
        let env = [
            ("SUPERMIN_KERNEL", kernel.path.as_path()),
            ("SUPERMIN_MODULES", kernel.modules_dir.as_path()),
        ];
        let out = ok(&supermin_env(
            &[
                "--build",
                "-v",
                "-f",
                "ext2",
                "--fixed",
                LIBGUESTFS_SUPERMIN_D,
                "-o",
                app.to_str().unwrap(),
            ],
            &env,
        ));
        assert!(
            out.contains("kernel format: PVH vmlinux"),
            "{}: {out}",
            kernel.version
        );
        // What libguestfs's root loads at every launch comes from the initrd instead.
        for line in [
            "initrd: dm_mod, loaded by the init: the root's /init runs `modprobe dm_mod`",
            "initrd: sg, loaded by the init when the VM has a SCSI device: udev loads it",
        ] {
            assert!(
                out.contains(line),
                "{}: no {line:?} in {out}",
                kernel.version
            );
        }
        let meta = fs::symlink_metadata(app.join("kernel")).unwrap();
        assert!(meta.is_file(), "a fixed appliance ships a real kernel file");
        assert!(is_elf(&app.join("kernel")), "{}", kernel.version);
        assert_e2fsck_clean(&app.join("root"));

        let test_tool = libguestfs("libguestfs-test-tool", &app)
            .output()
            .expect("libguestfs-test-tool");
        let all = format!("{}{}", text(&test_tool.stdout), text(&test_tool.stderr));
        assert!(
            all.contains("===== TEST FINISHED OK ====="),
            "libguestfs-test-tool failed with {}:\n{}",
            kernel.version,
            tail(&all, 60)
        );
        assert!(
            all.contains(&kernel.version),
            "booted another kernel:\n{}",
            tail(&all, 60)
        );

        // guestfish: partition, mkfs, write, upload, checksum.
        let disk = tmp.join("scratch.img");
        fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
        let upload = tmp.join("upload.bin");
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        fs::write(&upload, &payload).unwrap();
        let sha = Command::new("sha256sum").arg(&upload).output().unwrap();
        let sha = text(&sha.stdout);
        let sha = sha.split_whitespace().next().unwrap().to_owned();
        let script = format!(
            "run\n\
             part-disk /dev/sda mbr\n\
             mkfs ext4 /dev/sda1\n\
             mount /dev/sda1 /\n\
             write /hello.txt \"hello from guestfish\"\n\
             upload {} /up.bin\n\
             cat /hello.txt\n\
             checksum sha256 /up.bin\n\
             umount-all\n\
             debug sh \"cat /proc/modules\"\n",
            upload.display()
        );
        let mut child = libguestfs("guestfish", &app)
            .arg("-a")
            .arg(&disk)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("guestfish");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "guestfish with {}: {}",
            kernel.version,
            text(&out.stderr)
        );
        assert!(stdout.contains("hello from guestfish"), "{stdout}");
        assert!(stdout.contains(&sha), "checksum {sha} not in {stdout}");
        // Loaded by our init, without their signatures ("E": unsigned), not by the root's
        // modprobe and udev from the signed .ko(.xz) files.
        for module in ["dm_mod", "sg"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{module} ")))
                .unwrap_or_else(|| panic!("{module} not loaded:\n{stdout}"));
            assert!(line.contains("(E)"), "{module} came from the root: {line}");
        }
    }
}

#[test]
fn a_kernel_without_the_pvh_note_gets_the_bzimage() {
    let real = &kernel_series()[0];
    let tmp = TempDir::new("no-pvh");
    let fake = tmp.join("vmlinuz-fake");
    fake_bzimage_without_pvh(&real.version, &fake);
    let d = small_supermin_d(tmp.path());
    let env = [
        ("SUPERMIN_KERNEL", fake.as_path()),
        ("SUPERMIN_MODULES", real.modules_dir.as_path()),
    ];
    let copied = tmp.join("copied");
    let out = ok(&supermin_env(
        &[
            "--build",
            "-v",
            "-f",
            "ext2",
            "--copy-kernel",
            d.to_str().unwrap(),
            "-o",
            copied.to_str().unwrap(),
        ],
        &env,
    ));
    assert!(
        out.contains("kernel format: bzImage") && out.contains("no PVH entry note"),
        "{out}"
    );
    assert_eq!(
        fs::read(copied.join("kernel")).unwrap(),
        fs::read(&fake).unwrap()
    );
    assert!(!fs::symlink_metadata(copied.join("kernel"))
        .unwrap()
        .is_symlink());
    assert_e2fsck_clean(&copied.join("root"));

    // Without --copy-kernel, supermin's semantics: a symlink to the bzImage.
    let linked = tmp.join("linked");
    ok(&supermin_env(
        &[
            "--build",
            "-f",
            "ext2",
            d.to_str().unwrap(),
            "-o",
            linked.to_str().unwrap(),
        ],
        &env,
    ));
    assert_eq!(fs::read_link(linked.join("kernel")).unwrap(), fake);
    assert_e2fsck_clean(&linked.join("root"));

    // `supermin kernel` says the same.
    let report = ok(&supermin_env(&["kernel"], &env));
    assert!(
        report.contains("appliance kernel") && report.contains("no PVH entry note"),
        "{report}"
    );
}

#[test]
fn kernel_format_and_complete_deps_are_part_of_if_newers_fingerprint() {
    let real = &kernel_series()[0];
    let tmp = TempDir::new("kfmt");
    let d = small_supermin_d(tmp.path());
    let out = tmp.join("out");
    let env = [
        ("SUPERMIN_KERNEL", real.path.as_path()),
        ("SUPERMIN_MODULES", real.modules_dir.as_path()),
    ];
    let build = |extra: &[&str]| {
        let mut args = vec!["--build", "-v", "--if-newer", "-f", "ext2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[d.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        ok(&supermin_env(&args, &env))
    };
    let first = build(&[]);
    assert!(first.contains("kernel format: PVH vmlinux"), "{first}");
    // Even without --copy-kernel the vmlinux is a file: there is nothing to link to.
    assert!(fs::symlink_metadata(out.join("kernel")).unwrap().is_file());
    assert!(is_elf(&out.join("kernel")));
    assert!(build(&[]).contains("does not need rebuilding"));

    let bz = build(&["--kernel-format", "bzimage"]);
    assert!(bz.contains("rebuilding"), "{bz}");
    assert!(bz.contains("--kernel-format bzimage"), "{bz}");
    assert_eq!(fs::read_link(out.join("kernel")).unwrap(), real.path);
    assert!(build(&["--kernel-format", "bzimage"]).contains("does not need rebuilding"));

    let complete = build(&["--kernel-format", "bzimage", "--complete-deps"]);
    assert!(complete.contains("rebuilding"), "{complete}");
    assert_e2fsck_clean(&out.join("root"));
}

#[test]
fn the_libguestfs_package_set_is_supermin_5s_and_complete_deps_adds_to_it() {
    if !Path::new(LIBGUESTFS_SUPERMIN_D).is_dir() || !Path::new("/usr/bin/supermin").exists() {
        eprintln!("skipped: libguestfs's supermin.d or supermin 5 is not installed");
        return;
    }
    let tmp = TempDir::new("pkgs");
    let list = |bin: &Path, extra: &[&str], name: &str| -> Vec<String> {
        let out = tmp.join(name);
        let mut cmd = Command::new(bin);
        cmd.args(["--build", "-f", "chroot", "--include-packagelist"])
            .args(extra)
            .arg(LIBGUESTFS_SUPERMIN_D)
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null());
        let o = cmd.output().expect("build");
        assert!(o.status.success(), "{}: {}", bin.display(), text(&o.stderr));
        let mut l: Vec<String> = fs::read_to_string(out.join("packagelist"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    let ours = list(&supermin_bin(), &[], "ours");
    let theirs = list(Path::new("/usr/bin/supermin"), &[], "theirs");
    assert_eq!(ours, theirs, "our package set differs from supermin 5's");
    let complete = list(&supermin_bin(), &["--complete-deps"], "complete");
    assert!(complete.len() > ours.len());
    assert!(ours.iter().all(|p| complete.contains(p)));
    assert!(
        complete.iter().any(|p| p.starts_with("perl_")),
        "sleuthkit's perl:any is followed with --complete-deps"
    );
}
