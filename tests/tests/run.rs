//! End-to-end tests of `supermin run` through the real binary: real appliances
//! built by `supermin --build` from this host (plus the kernel's `vmlinux`,
//! as `supermin run`'s own default appliance has), booted under qemu TCG
//! (KVM hangs Debian kernels on these machines), with the daemon as `/init`.
//!
//! Each test has its own scratch directory, which is also the launcher's
//! `$TMPDIR`: the launcher must leave it empty (no scratch directory, no
//! overlay) however the run ended. Every run is under a watchdog so that a
//! hung launcher fails the test instead of hanging it.
//!
//! The `supermin` binary is found beside the test executable's directory
//! (`cargo build -p supermin` first); `SUPERMIN_BIN` overrides.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use supermin_kernel_probe::Kernel;
use supermin_tests::{
    host_kernel, kernel_by_version_prefix, root_without_init, send_signal, supermin_bin, TempDir,
};

/// Far above any healthy TCG run here (a few seconds); only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(300);

/// A test's scratch space: appliances, disks, and the launcher's `$TMPDIR`.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = TempDir::new(&format!("run-{tag}"));
        std::fs::create_dir(dir.join("tmp")).unwrap();
        std::fs::create_dir(dir.join("cache")).unwrap();
        Scratch { dir }
    }

    /// Where this test's saved machines go (its own runtime cache).
    fn saved_dir(&self) -> PathBuf {
        let uid = std::fs::metadata("/proc/self").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        self.dir
            .join("cache")
            .join(format!(".guestfs-{}", uid.unwrap()))
            .join("supermin-rs-saved")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The default appliance for `kernel` (the host's default when `None`),
    /// built by `supermin --build`, plus its `vmlinux`.
    fn appliance(&self, name: &str, kernel: Option<&Kernel>) -> PathBuf {
        let out = self.dir.join(name);
        let mut cmd = Command::new(supermin_bin());
        cmd.args(["--build", "-f", "ext2", "-o"])
            .arg(&out)
            .env("TMPDIR", self.tmp())
            .env("LIBGUESTFS_CACHEDIR", self.dir.join("cache"))
            .stdin(Stdio::null());
        if let Some(k) = kernel {
            cmd.env("SUPERMIN_KERNEL", &k.path)
                .env("SUPERMIN_MODULES", &k.modules_dir);
        }
        let built = cmd.output().expect("run supermin --build");
        assert!(
            built.status.success(),
            "supermin --build failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let kernel_path = match kernel {
            Some(k) => k.path.clone(),
            None => host_kernel().path,
        };
        supermin_kernel_probe::extract_vmlinux(&kernel_path, &out.join("vmlinux"))
            .unwrap_or_else(|e| panic!("extracting vmlinux from {}: {e}", kernel_path.display()));
        out
    }

    /// Asserts the launcher left nothing in its `$TMPDIR` but the one file
    /// meant to outlive runs: the memo that KVM guests hang on this host.
    #[track_caller]
    fn assert_tmp_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.tmp())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().starts_with("supermin-kvm-verdict-"))
            .collect();
        assert!(left.is_empty(), "the launcher left {left:?} in its TMPDIR");
    }
}

struct RunOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl RunOutput {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl std::fmt::Debug for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout_text(),
            self.stderr
        )
    }
}

fn run_command(scratch: &Scratch, args: &[OsString]) -> Command {
    let mut cmd = Command::new(supermin_bin());
    // The KVM verdict goes to TMPDIR (the scratch) without XDG_RUNTIME_DIR;
    // saved machines to the test's own runtime cache.
    cmd.arg("run")
        .args(args)
        .env("TMPDIR", scratch.tmp())
        .env("LIBGUESTFS_CACHEDIR", scratch.dir.join("cache"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SUPERMIN_ACCEL")
        .env_remove("SUPERMIN_QEMU_USER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Waits for `child` under the watchdog; kills it and fails the test on expiry.
fn wait_watched(child: &mut Child) -> ExitStatus {
    let until = Instant::now() + WATCHDOG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("supermin run did not finish within {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn collect(mut stream: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// `supermin run ARGS` with `stdin` fed to it (or `/dev/null`).
fn supermin_run(scratch: &Scratch, args: &[OsString], stdin: Option<Vec<u8>>) -> RunOutput {
    let mut cmd = run_command(scratch, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn supermin run");
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = wait_watched(&mut child);
    RunOutput {
        status,
        stdout: out.recv().unwrap(),
        stderr: String::from_utf8_lossy(&err.recv().unwrap()).into_owned(),
    }
}

fn with_appliance(app: &Path, accel: &str, rest: &[&str]) -> Vec<OsString> {
    let mut args = vec![
        OsString::from("--appliance"),
        app.into(),
        "--accel".into(),
        accel.into(),
    ];
    args.extend(rest.iter().map(OsString::from));
    args
}

#[test]
fn uname_r_in_the_default_appliance_prints_the_kernel_version() {
    let scratch = Scratch::new("default");
    // The runtime cache (where the default appliance is built) goes in the scratch too.
    let cache = scratch.dir.join("cache");
    let mut cmd = run_command(&scratch, &os(&["--accel", "tcg", "--", "uname", "-r"]));
    cmd.env("LIBGUESTFS_CACHEDIR", &cache).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = wait_watched(&mut child);
    let (stdout, stderr) = (out.recv().unwrap(), err.recv().unwrap());
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(stdout, format!("{}\n", host_kernel().version));
    scratch.assert_tmp_clean();

    // A cached root damaged behind the stamp's back (truncated) is rebuilt, not a dead end.
    let uid_dir = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(".guestfs-"))
        .expect("the runtime cache directory .guestfs-UID");
    let root = uid_dir.path().join("supermin-rs-default.d").join("root");
    assert!(root.exists(), "{} missing", root.display());
    {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&root)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut cmd = run_command(&scratch, &os(&["--accel", "tcg", "--", "echo", "again"]));
        cmd.env("LIBGUESTFS_CACHEDIR", &cache).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let status = wait_watched(&mut child);
        let (stdout, stderr) = (out.recv().unwrap(), err.recv().unwrap());
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(status.success(), "{status}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&stdout), "again\n");
        assert!(
            stderr.contains("rebuilding the default appliance"),
            "{stderr}"
        );
    }
}

#[test]
fn stdout_and_stderr_arrive_separately() {
    let scratch = Scratch::new("streams");
    let app = scratch.appliance("app", None);
    let out = supermin_run(
        &scratch,
        &with_appliance(
            &app,
            "tcg",
            &[
                "--",
                "sh",
                "-c",
                "echo to-stdout; echo to-stderr >&2; echo more-stdout",
            ],
        ),
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "to-stdout\nmore-stdout\n", "{out:?}");
    assert!(out.stderr.contains("to-stderr\n"), "{out:?}");
    assert!(!out.stderr.contains("to-stdout"), "{out:?}");
    scratch.assert_tmp_clean();
}

#[test]
fn exit_statuses_and_signals_map_like_a_shell() {
    let scratch = Scratch::new("status");
    let app = scratch.appliance("app", None);
    let out = supermin_run(
        &scratch,
        &with_appliance(&app, "tcg", &["--", "sh", "-c", "exit 42"]),
        None,
    );
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    let out = supermin_run(
        &scratch,
        &with_appliance(&app, "tcg", &["--", "sh", "-c", "kill -KILL $$"]),
        None,
    );
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    scratch.assert_tmp_clean();
}

#[test]
fn stdin_is_passed_through_whole() {
    let scratch = Scratch::new("stdin");
    let app = scratch.appliance("app", None);
    // Several protocol chunks, and not a multiple of any of them.
    let input: Vec<u8> = (0..1_000_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let out = supermin_run(
        &scratch,
        &with_appliance(&app, "tcg", &["--", "cat"]),
        Some(input.clone()),
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin came back altered");
    scratch.assert_tmp_clean();
}

#[test]
fn added_disks_show_inside_and_writes_reach_the_file_unless_read_only() {
    let scratch = Scratch::new("disks");
    let app = scratch.appliance("app", None);
    let rw = scratch.dir.join("rw.img");
    let ro = scratch.dir.join("ro.img");
    for disk in [&rw, &ro] {
        std::fs::File::create(disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
    }
    let script = "set -e; test -b /dev/vdb; test -b /dev/vdc; \
                  printf supermin-marker | dd of=/dev/vdb conv=notrunc status=none; \
                  if printf x | dd of=/dev/vdc conv=notrunc status=none 2>/dev/null; \
                  then echo ro-disk-was-writable; fi; \
                  echo checked";
    let mut args = os(&["--appliance"]);
    args.push(app.clone().into());
    args.extend(os(&["--accel", "tcg", "--add"]));
    args.push(rw.clone().into());
    args.push("--add".into());
    let mut ro_spec = OsString::from(&ro);
    ro_spec.push(":ro");
    args.push(ro_spec);
    args.extend(os(&["--", "sh", "-c", script]));
    let out = supermin_run(&scratch, &args, None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "checked\n", "{out:?}");
    let data = std::fs::read(&rw).unwrap();
    assert_eq!(&data[..15], b"supermin-marker");
    assert!(std::fs::read(&ro).unwrap().iter().all(|&b| b == 0));
    scratch.assert_tmp_clean();
}

#[test]
fn a_disk_named_qcow2_keeps_what_the_guest_wrote() {
    let scratch = Scratch::new("qcow2");
    let app = scratch.appliance("app", None);
    let disk = scratch.dir.join("disk.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .expect("qemu-img (qemu-utils)");
    assert!(made.success());
    let mut args = with_appliance(&app, "tcg", &["--add"]);
    let mut spec = disk.clone().into_os_string();
    spec.push(":format=qcow2");
    args.push(spec);
    args.extend(os(&[
        "--",
        "sh",
        "-c",
        "printf qcow2-marker | dd of=/dev/vdb bs=512 seek=2048 conv=notrunc status=none",
    ]));
    let out = supermin_run(&scratch, &args, None);
    assert!(out.status.success(), "{out:?}");
    // qemu-img check: the image's metadata was written out, not lost with qemu.
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let raw = scratch.dir.join("disk.raw");
    let converted = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&disk)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(converted.success());
    let data = std::fs::read(&raw).unwrap();
    assert_eq!(&data[2048 * 512..2048 * 512 + 12], b"qcow2-marker");
    scratch.assert_tmp_clean();
}

fn qemu_img(args: &[&std::ffi::OsStr]) {
    let made = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img (qemu-utils)");
    assert!(made.success(), "qemu-img {args:?}");
}

fn spec(path: &Path, suffix: &str) -> OsString {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    s
}

// Regression (the CVE-2010-3851 class): a raw disk whose guest wrote a qcow2
// header naming a host file as its backing file was sniffed as qcow2, and
// the next run's guest read that host file.
#[test]
fn a_raw_disk_carrying_a_qcow2_header_cannot_read_a_host_file() {
    let scratch = Scratch::new("evil-backing");
    let app = scratch.appliance("app", None);
    let secret = scratch.dir.join("secret");
    std::fs::write(&secret, "HOST-SECRET-".repeat(100)).unwrap();
    let evil = scratch.dir.join("evil.img");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        "-b".as_ref(),
        secret.as_os_str(),
        evil.as_os_str(),
        "1M".as_ref(),
    ]);
    let mut args = with_appliance(&app, "tcg", &["--add"]);
    args.push(spec(&evil, ":ro"));
    args.extend(os(&["--", "head", "-c", "65536", "/dev/vdb"]));
    let out = supermin_run(&scratch, &args, None);
    assert!(out.status.success(), "{out:?}");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        !seen.contains("HOST-SECRET"),
        "the guest read the host file"
    );
    // It saw the image's own bytes: the qcow2 header, attached raw.
    assert!(
        out.stdout.starts_with(b"QFI\xfb"),
        "{:?}",
        &out.stdout[..16.min(out.stdout.len())]
    );
    assert!(out.stderr.contains("starts like a qcow2 image"), "{out:?}");
    scratch.assert_tmp_clean();
}

// Regression: the same with an external data file made guest writes land in
// any host file the user (root here) could write.
#[test]
fn a_raw_disk_carrying_a_data_file_header_cannot_write_a_host_file() {
    let scratch = Scratch::new("evil-datafile");
    let app = scratch.appliance("app", None);
    let victim = scratch.dir.join("victim");
    std::fs::write(&victim, vec![0u8; 1 << 20]).unwrap();
    let evil = scratch.dir.join("evil.img");
    let opt = format!("data_file={},data_file_raw=on", victim.display());
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-o".as_ref(),
        opt.as_ref(),
        evil.as_os_str(),
        "1M".as_ref(),
    ]);
    let mut args = with_appliance(&app, "tcg", &["--add"]);
    args.push(evil.clone().into());
    args.extend(os(&[
        "--",
        "sh",
        "-c",
        "printf PWNED | dd of=/dev/vdb bs=512 seek=100 conv=notrunc status=none",
    ]));
    let out = supermin_run(&scratch, &args, None);
    assert!(out.status.success(), "{out:?}");
    let after = std::fs::read(&victim).unwrap();
    assert!(
        after.iter().all(|&b| b == 0),
        "the guest wrote into the host file"
    );
    // The write went where it belongs: into the image file itself.
    let img = std::fs::read(&evil).unwrap();
    assert_eq!(&img[51200..51205], b"PWNED");
    scratch.assert_tmp_clean();
}

#[test]
fn a_qcow2_overlay_reads_its_backing_file_only_when_allowed() {
    let scratch = Scratch::new("allowed-backing");
    let app = scratch.appliance("app", None);
    let base = scratch.dir.join("base.raw");
    let mut data = vec![0u8; 1 << 20];
    data[..10].copy_from_slice(b"BASE-BYTES");
    std::fs::write(&base, data).unwrap();
    let overlay = scratch.dir.join("overlay.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        overlay.as_os_str(),
    ]);
    let mut args = with_appliance(&app, "tcg", &["--add"]);
    args.push(spec(&overlay, ":format=qcow2:ro:allow-backing"));
    args.extend(os(&["--", "head", "-c", "10", "/dev/vdb"]));
    let out = supermin_run(&scratch, &args, None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"BASE-BYTES");
    scratch.assert_tmp_clean();
}

#[test]
fn a_missing_command_is_a_clear_error() {
    let scratch = Scratch::new("missing");
    let app = scratch.appliance("app", None);
    let out = supermin_run(
        &scratch,
        &with_appliance(&app, "tcg", &["--", "no-such-command-here", "arg"]),
        None,
    );
    assert_eq!(out.status.code(), Some(127), "like a shell: {out:?}");
    assert!(out.stderr.contains("no-such-command-here"), "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    scratch.assert_tmp_clean();
}

#[test]
fn kernels_with_plain_and_xz_compressed_modules_boot_the_same_way() {
    let scratch = Scratch::new("kernels");
    for (prefix, module_suffix) in [("6.1.", ".ko"), ("6.12.", ".ko.xz")] {
        let kernel = kernel_by_version_prefix(prefix);
        let virtio_blk = kernel
            .modules_dir
            .join(format!("kernel/drivers/block/virtio_blk{module_suffix}"));
        assert!(
            virtio_blk.exists(),
            "{} should hold {module_suffix} modules",
            kernel.modules_dir.display()
        );
        let app = scratch.appliance(&format!("app-{prefix}"), Some(&kernel));
        let out = supermin_run(
            &scratch,
            &with_appliance(&app, "tcg", &["--", "uname", "-r"]),
            None,
        );
        assert!(out.status.success(), "{prefix}: {out:?}");
        assert_eq!(out.stdout_text(), format!("{}\n", kernel.version));
    }
    scratch.assert_tmp_clean();
}

#[test]
fn timeout_kills_the_vm_and_cleans_up() {
    let scratch = Scratch::new("timeout");
    let app = scratch.appliance("app", None);
    let out = supermin_run(
        &scratch,
        &with_appliance(&app, "tcg", &["--timeout", "4", "--", "sleep", "600"]),
        None,
    );
    assert_eq!(out.status.code(), Some(124), "like timeout(1): {out:?}");
    assert!(out.stderr.contains("timed out"), "{out:?}");
    scratch.assert_tmp_clean();
}

/// A qemu wrapper whose boots save the machine at 200 kB/s (`x-max-bandwidth`):
/// the first run's save then lasts minutes, so a `--timeout` or a signal
/// lands inside it every time.
fn slow_save_qemu(scratch: &Scratch) -> OsString {
    qemu_wrapper(
        scratch,
        r#"case " $* " in *" -kernel "*) set -- "$@" -global migration.x-max-bandwidth=200000;; esac"#,
    )
}

/// Kills the child when dropped (a failed assertion must not leave a
/// `supermin run` and its qemu behind).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `stream` line by line on a thread of its own: the receiver gets one
/// message when a line contains `marker` (and disconnects at the end of the
/// stream); the thread returns all the lines.
fn watch_lines(
    stream: impl Read + Send + 'static,
    marker: &'static str,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<String>) {
    let (tx, rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.contains(marker) {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (rx, log)
}

/// `supermin run -v` of `sleep 600` on `app` with `PATH`, its stderr read
/// line by line; `on_save(child)` is called when the machine starts being
/// saved. Returns the exit status and the whole log.
fn run_until_saving(
    scratch: &Scratch,
    path: &OsString,
    args: &[OsString],
    on_save: impl FnOnce(&Child),
) -> (ExitStatus, String) {
    let mut cmd = run_command(scratch, args);
    cmd.env("PATH", path).stdin(Stdio::null());
    let mut child = KillOnDrop(cmd.spawn().expect("spawn supermin run"));
    let _out = collect(child.0.stdout.take().unwrap());
    let (saving_rx, log) = watch_lines(child.0.stderr.take().unwrap(), "saving the machine");
    // Ends when the save begins, or when the run ends without one.
    if saving_rx.recv_timeout(WATCHDOG).is_ok() {
        on_save(&child.0);
    }
    let status = wait_watched(&mut child.0);
    (status, log.join().unwrap())
}

// Regression: a --timeout or a signal that came while the first run saved its
// machine cut qemu's monitor short, and the run ended as a failed boot
// ("the machine did not resume after saving it: interrupted", exit 1) instead
// of a timeout (124) or the signal's status.
#[test]
fn a_timeout_or_a_signal_during_the_first_save_ends_the_run_as_such() {
    let scratch = Scratch::new("save-halt");
    let app = scratch.appliance("app", None);
    let path = slow_save_qemu(&scratch);

    // The timeout: far past a TCG boot here, far short of the slowed save.
    let args = with_appliance(
        &app,
        "tcg",
        &["-v", "--timeout", "20", "--", "sleep", "600"],
    );
    let (status, log) = run_until_saving(&scratch, &path, &args, |_| {});
    assert!(
        log.contains("saving the machine"),
        "the save never began:\n{log}"
    );
    assert!(!log.contains(SAVED), "the save was not slowed:\n{log}");
    assert_eq!(status.code(), Some(124), "like timeout(1): {status}\n{log}");
    assert!(log.contains("timed out after 20s"), "{log}");
    assert!(!log.contains("did not resume"), "{log}");

    // The signal, a second into the save.
    let args = with_appliance(&app, "tcg", &["-v", "--", "sleep", "600"]);
    let (status, log) = run_until_saving(&scratch, &path, &args, |child| {
        std::thread::sleep(Duration::from_secs(1));
        send_signal(child.id(), "TERM");
    });
    assert!(
        log.contains("saving the machine"),
        "the save never began:\n{log}"
    );
    assert!(!log.contains(SAVED), "the save was not slowed:\n{log}");
    assert_eq!(status.code(), Some(143), "128 + SIGTERM: {status}\n{log}");
    assert!(log.contains("interrupted by signal 15"), "{log}");

    // Neither left a saved machine, whole or half-written, nor a file in TMPDIR.
    let saved: Vec<_> = std::fs::read_dir(scratch.saved_dir())
        .expect("the store, made before the save began")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(saved.is_empty(), "left in the store: {saved:?}");
    scratch.assert_tmp_clean();
}

/// The pid of `parent`'s child named `comm`, from /proc.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if name.trim_end().starts_with(comm) {
                return pid.parse().ok();
            }
        }
    }
    None
}

/// Running = has a /proc entry that is not a zombie.
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

#[test]
fn ctrl_c_kills_the_vm_and_cleans_up() {
    let scratch = Scratch::new("sigint");
    let app = scratch.appliance("app", None);
    let mut cmd = run_command(
        &scratch,
        &with_appliance(&app, "tcg", &["-v", "--", "sleep", "600"]),
    );
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let _out = collect(child.stdout.take().unwrap());
    // Wait until the command runs (the launcher says so with -v), then interrupt.
    let (ready_rx, log) = watch_lines(child.stderr.take().unwrap(), "appliance ready");
    if ready_rx.recv_timeout(WATCHDOG).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the appliance never became ready:\n{}", log.join().unwrap());
    }
    let qemu = child_named(child.id(), "qemu-system").expect("qemu is the launcher's child");
    assert!(is_running(qemu));
    send_signal(child.id(), "INT");
    let status = wait_watched(&mut child);
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(130), "128 + SIGINT: {status}\n{log}");
    assert!(log.contains("interrupted"), "{log}");
    assert!(!is_running(qemu), "qemu {qemu} outlived the launcher");
    scratch.assert_tmp_clean();
}

#[test]
fn a_boot_failure_ends_with_the_console_lines() {
    let scratch = Scratch::new("bootfail");
    let good = scratch.appliance("good", None);
    // Same kernel and initrd, but a root without /init: the init says so and powers off.
    let bad = scratch.dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    for f in ["vmlinux", "initrd"] {
        std::fs::rename(good.join(f), bad.join(f)).unwrap();
    }
    let root = root_without_init(&bad, "5e1f0000-0000-4000-8000-00000000b007");
    std::fs::rename(root, bad.join("root")).unwrap();
    let out = supermin_run(
        &scratch,
        &with_appliance(&bad, "tcg", &["--", "true"]),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("did not start"), "{out:?}");
    assert!(out.stderr.contains("console"), "{out:?}");
    assert!(out.stderr.contains("supermin-init"), "{out:?}");
    scratch.assert_tmp_clean();
}

#[test]
fn a_bad_accel_from_the_flag_or_the_environment_is_one_line_and_exit_1() {
    let scratch = Scratch::new("bad-accel");
    // Refused before anything is built or booted, so no appliance is needed.
    let flag = supermin_run(&scratch, &os(&["--accel", "xen", "--", "true"]), None);
    let mut cmd = run_command(&scratch, &os(&["--", "true"]));
    let env = cmd
        .env("SUPERMIN_ACCEL", "KVM")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let env = RunOutput {
        status: env.status,
        stdout: env.stdout,
        stderr: String::from_utf8_lossy(&env.stderr).into_owned(),
    };
    for (out, named) in [(&flag, "--accel \"xen\""), (&env, "SUPERMIN_ACCEL=\"KVM\"")] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {out:?}");
        assert!(lines[0].contains(named), "{out:?}");
        assert!(lines[0].contains("use auto, kvm or tcg"), "{out:?}");
    }
    scratch.assert_tmp_clean();
}

#[test]
fn accel_auto_runs_the_command_whether_or_not_kvm_works() {
    let scratch = Scratch::new("auto");
    let app = scratch.appliance("app", None);
    let out = supermin_run(
        &scratch,
        &with_appliance(&app, "auto", &["--", "echo", "auto-ok"]),
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "auto-ok\n");
    scratch.assert_tmp_clean();
}

/// `supermin run -v --appliance APP --accel tcg -- sh -c SCRIPT`.
fn run_sh(scratch: &Scratch, app: &Path, script: &str) -> RunOutput {
    supermin_run(
        scratch,
        &with_appliance(app, "tcg", &["-v", "--", "sh", "-c", script]),
        None,
    )
}

const RESTORED: &str = "restored saved machine";
const SAVED: &str = "saved the machine as";

#[test]
fn a_saved_machine_restores_with_fresh_randomness_and_the_hosts_clock() {
    let scratch = Scratch::new("restore");
    let app = scratch.appliance("app", None);
    let script = "cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let first = run_sh(&scratch, &app, script);
    assert!(first.status.success(), "{first:?}");
    assert!(first.stderr.contains(SAVED), "{first:?}");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let out = run_sh(&scratch, &app, script);
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.contains(RESTORED), "{out:?}");
        let text = out.stdout_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{out:?}");
        let guest_now: i64 = lines[2].parse().unwrap();
        assert!(
            (host_now - guest_now).abs() <= 2,
            "guest clock {guest_now}, host {host_now}"
        );
        seen.push((lines[0].to_string(), lines[1].to_string()));
    }
    let first_text = first.stdout_text();
    let first_lines: Vec<&str> = first_text.lines().collect();
    assert_ne!(
        seen[0].0, seen[1].0,
        "two restored runs printed the same uuid"
    );
    assert_ne!(
        seen[0].1, seen[1].1,
        "two restored runs read the same random bytes"
    );
    for (uuid, bytes) in &seen {
        assert_ne!(uuid, first_lines[0]);
        assert_ne!(bytes, first_lines[1]);
    }
    // Saved machines are private to the user.
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch.saved_dir();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let saved: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    for f in std::fs::read_dir(saved[0].path()).unwrap().flatten() {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.path().display());
    }
    scratch.assert_tmp_clean();
}

#[test]
fn the_root_of_a_restored_machine_is_consistent_and_its_writes_are_thrown_away() {
    let scratch = Scratch::new("restore-root");
    let app = scratch.appliance("app", None);
    let first = run_sh(&scratch, &app, "true");
    assert!(first.stderr.contains(SAVED), "{first:?}");
    let script = "test ! -e /written-before || echo LEAKED; \
        dd if=/dev/urandom of=/written-before bs=1M count=8 status=none && sync && \
        md5sum /written-before >/sum && echo 3 >/proc/sys/vm/drop_caches && md5sum -c /sum >/dev/null && \
        echo consistent; dmesg | grep -ci 'ext4.*error' || true";
    for _ in 0..2 {
        let out = run_sh(&scratch, &app, script);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.contains(RESTORED), "{out:?}");
        assert_eq!(out.stdout_text(), "consistent\n0\n", "{out:?}");
    }
    scratch.assert_tmp_clean();
}

#[test]
fn four_runs_restore_one_saved_machine_at_once() {
    let scratch = Scratch::new("restore-four");
    let app = scratch.appliance("app", None);
    let first = run_sh(&scratch, &app, "true");
    assert!(first.stderr.contains(SAVED), "{first:?}");
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let mut cmd = run_command(
                &scratch,
                &with_appliance(&app, "tcg", &["-v", "--", "echo", &format!("run-{i}")]),
            );
            cmd.stdin(Stdio::null());
            (i, cmd.spawn().unwrap())
        })
        .collect();
    for (i, mut child) in runs {
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let status = wait_watched(&mut child);
        let stderr = String::from_utf8_lossy(&err.recv().unwrap()).into_owned();
        assert!(status.success(), "run {i}: {stderr}");
        assert!(stderr.contains(RESTORED), "run {i}: {stderr}");
        assert_eq!(out.recv().unwrap(), format!("run-{i}\n").into_bytes());
    }
    scratch.assert_tmp_clean();
}

#[test]
fn disks_are_hot_plugged_into_a_restored_machine_in_order_and_keep_their_modes() {
    let scratch = Scratch::new("restore-disks");
    let app = scratch.appliance("app", None);
    let first = run_sh(&scratch, &app, "true");
    assert!(first.stderr.contains(SAVED), "{first:?}");
    let rw = scratch.dir.join("rw.img");
    let mut data = vec![0u8; 1 << 20];
    data[..8].copy_from_slice(b"RW-DISK!");
    std::fs::write(&rw, &data).unwrap();
    let ro = scratch.dir.join("ro.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        ro.as_os_str(),
        "1M".as_ref(),
    ]);
    let mut args = with_appliance(&app, "tcg", &["-v", "--add"]);
    args.push(rw.clone().into());
    args.push("--add".into());
    args.push(spec(&ro, ":format=qcow2:ro"));
    args.extend(os(&[
        "--",
        "sh",
        "-c",
        "cat /sys/block/vdb/ro /sys/block/vdc/ro; head -c 8 /dev/vdb; echo; \
         printf WRITTEN | dd of=/dev/vdb bs=512 seek=1 conv=notrunc status=none; \
         printf x | dd of=/dev/vdc conv=notrunc status=none 2>/dev/null || echo vdc-refused",
    ]));
    let out = supermin_run(&scratch, &args, None);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.contains(RESTORED), "{out:?}");
    assert_eq!(
        out.stdout_text(),
        "0\n1\nRW-DISK!\nvdc-refused\n",
        "{out:?}"
    );
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(&after[512..519], b"WRITTEN");
    scratch.assert_tmp_clean();
}

#[test]
fn a_corrupt_saved_machine_means_a_cold_boot_and_a_new_one() {
    let scratch = Scratch::new("restore-corrupt");
    let app = scratch.appliance("app", None);
    let first = run_sh(&scratch, &app, "true");
    assert!(first.stderr.contains(SAVED), "{first:?}");
    let saved = std::fs::read_dir(scratch.saved_dir())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(saved.join("state"), b"not a migration stream").unwrap();
    let out = run_sh(&scratch, &app, "echo fine");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "fine\n");
    assert!(out.stderr.contains("does not restore"), "{out:?}");
    assert!(out.stderr.contains(SAVED), "replaced: {out:?}");
    let again = run_sh(&scratch, &app, "echo fine");
    assert!(again.stderr.contains(RESTORED), "{again:?}");
    // --cold boots even with a saved machine there, and saves none.
    let args = with_appliance(&app, "tcg", &["-v", "--cold", "--", "echo", "cold"]);
    let cold = supermin_run(&scratch, &args, None);
    assert!(cold.status.success(), "{cold:?}");
    assert!(
        !cold.stderr.contains(RESTORED) && !cold.stderr.contains(SAVED),
        "{cold:?}"
    );
    assert_eq!(cold.stdout_text(), "cold\n");
    scratch.assert_tmp_clean();
}

/// The real qemu, found in `PATH` as the launcher would.
fn real_qemu() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("qemu-system-x86_64 in PATH (bash .ci/setup installs it)")
}

/// A directory holding a `qemu-system-x86_64` wrapper that runs `on_kvm`
/// (shell) when asked for KVM, appending a line to `kvm.log` each time, and
/// the real qemu otherwise. Returns the `PATH` to run with.
fn fake_kvm_qemu(scratch: &Scratch, on_kvm: &str) -> OsString {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (present on the project's machines) to reach the KVM attempt"
    );
    let log = scratch.dir.join("kvm.log");
    qemu_wrapper(
        scratch,
        &format!(
            "for a in \"$@\"; do case \"$a\" in *accel=kvm*) echo kvm >>'{}'; {on_kvm};; esac; done",
            log.display()
        ),
    )
}

/// A directory holding a `qemu-system-x86_64` wrapper that runs `before`
/// (shell) and then the real qemu. Returns the `PATH` to run with.
fn qemu_wrapper(scratch: &Scratch, before: &str) -> OsString {
    use std::os::unix::fs::PermissionsExt;
    let bin = scratch.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n{before}\nexec '{}' \"$@\"\n",
        real_qemu().display()
    );
    let wrapper = bin.join("qemu-system-x86_64");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = OsString::from(&bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

// Regression: teardown joined the console readers without a bound, so a
// process that qemu left behind holding its stdout and stderr (a helper it
// started) kept `supermin run` waiting after the VM had ended.
#[test]
fn a_process_left_holding_the_console_cannot_hold_up_the_end_of_the_run() {
    let scratch = Scratch::new("console-held");
    let app = scratch.appliance("app", None);
    let pid_file = scratch.dir.join("lingering.pid");
    // Only the boot (`-kernel`), not the `-help` probe, leaves the process.
    let path = qemu_wrapper(
        &scratch,
        &format!(
            "case \" $* \" in *\" -kernel \"*) sleep 60 & echo $! >'{}';; esac",
            pid_file.display()
        ),
    );

    let started = Instant::now();
    let out = run_with_path(
        &scratch,
        &path,
        &with_appliance(&app, "tcg", &["--cold", "--", "echo", "done"]),
    );
    let took = started.elapsed();
    let lingering = std::fs::read_to_string(&pid_file).unwrap_or_default();
    if !lingering.trim().is_empty() {
        let _ = Command::new("kill").arg(lingering.trim()).status();
    }
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "done\n");
    assert!(!lingering.trim().is_empty(), "the wrapper left no process");
    assert!(took < Duration::from_secs(45), "the run took {took:?}");
    scratch.assert_tmp_clean();
}

fn kvm_attempts(scratch: &Scratch) -> usize {
    std::fs::read_to_string(scratch.dir.join("kvm.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn run_with_path(scratch: &Scratch, path: &OsString, args: &[OsString]) -> RunOutput {
    let mut cmd = run_command(scratch, args);
    cmd.env("PATH", path).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn supermin run");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = wait_watched(&mut child);
    RunOutput {
        status,
        stdout: out.recv().unwrap(),
        stderr: String::from_utf8_lossy(&err.recv().unwrap()).into_owned(),
    }
}

fn fallback_lines(out: &RunOutput) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.contains("KVM failed"))
        .collect()
}

// Regression: on hosts where qemu aborts under KVM (kvm_pvm: "failed to set
// MSR ... kvm_buf_set_msrs: Assertion"), --accel auto failed every run.
#[test]
fn auto_falls_back_once_when_qemu_aborts_under_kvm_and_remembers_it() {
    let scratch = Scratch::new("kvm-abort");
    let app = scratch.appliance("app", None);
    let path = fake_kvm_qemu(
        &scratch,
        "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0xc000069' >&2; kill -ABRT $$",
    );
    let args = with_appliance(&app, "auto", &["--", "echo", "auto-ok"]);

    let first = run_with_path(&scratch, &path, &args);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(first.stdout_text(), "auto-ok\n");
    let said = fallback_lines(&first);
    assert_eq!(said.len(), 1, "one line about the fallback: {first:?}");
    assert!(said[0].contains("failed to set MSR"), "{first:?}");
    assert!(said[0].contains("using TCG"), "{first:?}");
    assert!(said[0].contains("--recheck-kvm"), "{first:?}");
    assert_eq!(kvm_attempts(&scratch), 1);

    // The verdict holds: straight to TCG, silently.
    let second = run_with_path(&scratch, &path, &args);
    assert!(second.status.success(), "{second:?}");
    assert!(fallback_lines(&second).is_empty(), "{second:?}");
    assert_eq!(kvm_attempts(&scratch), 1, "KVM tried again: {second:?}");

    // --recheck-kvm forgets it.
    let mut recheck = with_appliance(&app, "auto", &["--recheck-kvm"]);
    recheck.extend(os(&["--", "echo", "auto-ok"]));
    let third = run_with_path(&scratch, &path, &recheck);
    assert!(third.status.success(), "{third:?}");
    assert_eq!(fallback_lines(&third).len(), 1, "{third:?}");
    assert_eq!(kvm_attempts(&scratch), 2);

    // Another qemu binary (an upgrade) tries KVM again.
    let wrapper = scratch.dir.join("bin").join("qemu-system-x86_64");
    let mut body = std::fs::read(&wrapper).unwrap();
    body.extend_from_slice(b"# upgraded\n");
    std::fs::write(&wrapper, body).unwrap();
    let fourth = run_with_path(&scratch, &path, &args);
    assert!(fourth.status.success(), "{fourth:?}");
    assert_eq!(kvm_attempts(&scratch), 3, "{fourth:?}");
    scratch.assert_tmp_clean();
}

#[test]
fn auto_falls_back_when_the_kvm_guest_hangs_silently() {
    let scratch = Scratch::new("kvm-hang");
    let app = scratch.appliance("app", None);
    // A "guest" that prints nothing and never answers.
    let path = fake_kvm_qemu(&scratch, "exec sleep 600");
    let out = run_with_path(
        &scratch,
        &path,
        &with_appliance(&app, "auto", &["--", "echo", "auto-ok"]),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "auto-ok\n");
    let said = fallback_lines(&out);
    assert_eq!(said.len(), 1, "{out:?}");
    assert!(said[0].contains("printed nothing"), "{out:?}");
    assert!(
        child_named(std::process::id(), "sleep").is_none(),
        "the hung KVM qemu outlived its run"
    );
    scratch.assert_tmp_clean();
}

#[test]
fn accel_kvm_on_a_host_where_kvm_fails_is_one_line_with_the_way_out() {
    let scratch = Scratch::new("kvm-only");
    let app = scratch.appliance("app", None);
    let path = fake_kvm_qemu(
        &scratch,
        "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0xc000069' >&2; kill -ABRT $$",
    );
    let out = run_with_path(
        &scratch,
        &path,
        &with_appliance(&app, "kvm", &["--", "echo", "never"]),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {out:?}");
    assert!(lines[0].contains("failed to set MSR"), "{out:?}");
    assert!(lines[0].contains("--accel tcg"), "{out:?}");
    // --accel kvm records nothing: auto still tries for itself.
    assert!(std::fs::read_dir(scratch.tmp())
        .unwrap()
        .flatten()
        .all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with("supermin-kvm-verdict-")));
    scratch.assert_tmp_clean();
}

#[test]
fn a_session_uploads_runs_and_downloads_files() {
    use supermin_launcher::{Accel, ExitStatus, LaunchEnv, LaunchError, RunOptions, Session};
    let scratch = Scratch::new("session");
    let app = scratch.appliance("app", None);
    let mut env = LaunchEnv::from_process();
    env.tmp_dir = scratch.tmp();
    let opts = RunOptions {
        env,
        recheck_kvm: false,
        qemu_user: None,
        saved_machines: None,
        cold: false,
        shares: Vec::new(),
        share_transport: supermin_launcher::ShareTransport::Auto,
        on_notice: |n| panic!("no notice expected under TCG: {n}"),
        appliance: app,
        accel: Accel::Tcg,
        memory_mib: 512,
        cpus: 1,
        disks: Vec::new(),
        timeout: Some(WATCHDOG),
        verbose: false,
        argv: Vec::new(),
        stdin: false,
        command_env: Vec::new(),
        cwd: None,
        interactive: None,
        copy_in: Vec::new(),
        copy_out: Vec::new(),
        copy_out_limit: 1 << 30,
    };
    let mut session = Session::boot(&opts).unwrap_or_else(|e| panic!("boot: {e}"));
    assert!(session.daemon_info().contains(&host_kernel().version));
    // Bigger than one protocol chunk and not a multiple of it.
    let data: Vec<u8> = (0..300_001u32).map(|i| (i % 253) as u8).collect();
    let local = scratch.dir.join("up");
    std::fs::write(&local, &data).unwrap();
    session
        .upload(&local, Path::new("/tmp/up"), 0o640)
        .unwrap_or_else(|e| panic!("upload: {e}"));
    // The guest transforms it, so the download is not just the upload echoed.
    let status = session
        .exec(
            &os(&[
                "sh",
                "-c",
                "test \"$(stat -c %a /tmp/up)\" = 640 && cat /tmp/up /tmp/up >/tmp/down",
            ]),
            false,
        )
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let back = scratch.dir.join("down");
    session
        .download(Path::new("/tmp/down"), &back, 1 << 30)
        .unwrap_or_else(|e| panic!("download: {e}"));
    let expected = [data.as_slice(), data.as_slice()].concat();
    assert!(
        std::fs::read(&back).unwrap() == expected,
        "downloaded bytes differ"
    );
    match session.download(Path::new("/no/such/file"), &scratch.dir.join("x"), 1 << 30) {
        Err(LaunchError::Daemon { message }) => assert!(message.contains("/no/such/file")),
        other => panic!("{other:?}"),
    }
    // A failed download leaves nothing behind, not even its temporary file.
    assert!(!scratch.dir.join("x").exists());
    assert!(std::fs::read_dir(scratch.dir.path())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().contains(".partial-")));
    session.shutdown();
    scratch.assert_tmp_clean();
}

#[test]
fn a_reader_that_goes_away_ends_the_command_like_a_local_pipe() {
    // Regression: `supermin run -- yes | head -1` once ran until killed.
    let scratch = Scratch::new("epipe");
    let app = scratch.appliance("app", None);
    let mut cmd = run_command(&scratch, &with_appliance(&app, "tcg", &["--", "yes"]));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn supermin run");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\n");
    drop(stdout); // like `head -1` exiting
    let status = wait_watched(&mut child);
    assert_eq!(status.code(), Some(141), "128 + SIGPIPE: {status}");
    scratch.assert_tmp_clean();
}

#[test]
fn a_background_job_does_not_keep_the_run_open() {
    let scratch = Scratch::new("bgjob");
    let app = scratch.appliance("app", None);
    let out = supermin_run(
        &scratch,
        &with_appliance(
            &app,
            "tcg",
            &["--timeout", "120", "--", "sh", "-c", "sleep 600 & echo hi"],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"hi\n", "{out:?}");
}
