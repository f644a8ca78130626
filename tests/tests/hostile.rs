//! The hostile-guest harness: `supermin run` and the `Session` API against a
//! fake qemu (`src/bin/hostile-qemu.rs`, first on `PATH`) that speaks the
//! daemon's protocol as an attacker would. Each test reproduces one attack
//! of the security issue and pins what the launcher does about it: memory
//! stays bounded, `--timeout` and signals are honoured, nothing the guest
//! says reaches the terminal raw, and nothing it sends is trusted.
//!
//! The qcow2 attacks need a real guest and live in `run.rs`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use supermin_launcher::{Accel, LaunchEnv, LaunchError, RunOptions, Session};
use supermin_tests::{supermin_bin, TempDir};

/// Only a hang reaches this; every test here ends in seconds.
const WATCHDOG: Duration = Duration::from_secs(120);
/// What the launcher may hold while a guest floods it.
const MEMORY_LIMIT_KIB: u64 = 100 * 1024;

struct Hostile {
    dir: TempDir,
}

impl Hostile {
    /// A scratch directory with a fake appliance (a root with ext2 magic is
    /// all the launcher checks before it starts "qemu"), `bin/` holding the
    /// hostile qemu under qemu's name, and `tmp/` as the launcher's TMPDIR.
    fn new(tag: &str) -> Hostile {
        let dir = TempDir::new(&format!("hostile-{tag}"));
        let app = dir.join("app");
        std::fs::create_dir(&app).unwrap();
        std::fs::write(app.join("vmlinux"), b"not a kernel").unwrap();
        std::fs::write(app.join("initrd"), b"not an initrd").unwrap();
        let mut root = vec![0u8; 4096];
        root[1024 + 0x38] = 0x53;
        root[1024 + 0x39] = 0xef;
        std::fs::write(app.join("root"), root).unwrap();
        std::fs::create_dir(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_hostile-qemu"),
            dir.join("bin").join("qemu-system-x86_64"),
        )
        .unwrap();
        std::fs::create_dir(dir.join("tmp")).unwrap();
        Hostile { dir }
    }

    fn path_var(&self) -> OsString {
        let mut path = OsString::from(self.dir.join("bin"));
        path.push(":/usr/bin:/bin");
        path
    }

    /// `supermin run --appliance APP --accel tcg EXTRA -- CMD...` as `mode`.
    fn command(&self, mode: &str, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(supermin_bin());
        c.arg("run")
            .arg("--appliance")
            .arg(self.dir.join("app"))
            .args(["--accel", "tcg"])
            // The fake qemu plays a daemon, not qemu's monitor: no saved machines here.
            .arg("--cold")
            .args(extra)
            .arg("--")
            .args(cmd)
            .env("PATH", self.path_var())
            .env("HOSTILE_MODE", mode)
            .env("TMPDIR", self.dir.join("tmp"))
            .env("LIBGUESTFS_CACHEDIR", self.dir.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("SUPERMIN_ACCEL");
        c
    }

    fn session_options(&self) -> RunOptions {
        let mut env = LaunchEnv::from_process();
        env.path = Some(self.path_var());
        env.tmp_dir = self.dir.join("tmp");
        RunOptions {
            env,
            recheck_kvm: false,
            qemu_user: None,
            saved_machines: None,
            cold: false,
            shares: Vec::new(),
            share_transport: supermin_launcher::ShareTransport::Auto,
            on_notice: |_| {},
            appliance: self.dir.join("app"),
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            disks: Vec::new(),
            timeout: Some(Duration::from_secs(20)),
            verbose: false,
            argv: Vec::new(),
            stdin: false,
            command_env: Vec::new(),
            cwd: None,
            interactive: None,
            copy_in: Vec::new(),
            copy_out: Vec::new(),
            copy_out_limit: 1 << 30,
        }
    }

    #[track_caller]
    fn assert_tmp_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.dir.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "the launcher left {left:?} in its TMPDIR");
    }
}

/// The peak resident memory of `pid` so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for `child` under the watchdog, sampling its peak memory.
fn wait_sampling(child: &mut Child) -> (ExitStatus, u64) {
    let until = Instant::now() + WATCHDOG;
    let mut peak = 0;
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("supermin run did not finish within {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
    });
    rx
}

// Regression: endless stdout frames with a slow reader grew the launcher to
// 3.6 GB in 8 s and ignored --timeout.
#[test]
fn endless_output_to_a_slow_reader_stays_bounded_and_the_timeout_holds() {
    let h = Hostile::new("flood");
    let mut child = h
        .command("flood-stdout", &["--timeout", "6"], &["yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_of(&mut child);
    let mut out = child.stdout.take().unwrap();
    // A reader that stalls for 3 s, then takes 4 KiB every 10 ms (~400 KB/s)
    // against a guest that sends as fast as it can.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let mut buf = [0u8; 4096];
        let mut total = 0u64;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            std::thread::sleep(Duration::from_millis(10));
        }
        total
    });
    let (status, peak) = wait_sampling(&mut child);
    let stderr = err.recv().unwrap();
    let read = reader.join().unwrap();
    assert_eq!(status.code(), Some(124), "like timeout(1): {stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(read > 0, "the reader got nothing");
    assert!(
        peak < MEMORY_LIMIT_KIB,
        "the launcher grew to {peak} KiB while the guest flooded it"
    );
    h.assert_tmp_clean();
}

// Regression: a guest that printed without newlines grew one console line
// buffer without bound (1.4 GB in 3 s).
#[test]
fn a_console_flood_without_newlines_stays_bounded() {
    let h = Hostile::new("console");
    let mut child = h
        .command("console-flood", &["--timeout", "5"], &["true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_of(&mut child);
    let (status, peak) = wait_sampling(&mut child);
    let stderr = err.recv().unwrap();
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(
        peak < MEMORY_LIMIT_KIB,
        "the launcher grew to {peak} KiB reading the console"
    );
    h.assert_tmp_clean();
}

/// A stdin that never ends: the command's input is more than any guest takes.
fn endless_stdin(child: &mut Child) {
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![b'z'; 1 << 16];
        while pipe.write_all(&chunk).is_ok() {}
    });
}

// Regression: a guest that stopped reading blocked the launcher's sends
// forever, past --timeout and deaf to Ctrl-C.
#[test]
fn a_guest_that_stops_reading_cannot_hold_the_run_past_its_timeout() {
    let h = Hostile::new("deaf-timeout");
    let mut child = h
        .command("stop-reading", &["--timeout", "4"], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    endless_stdin(&mut child);
    let err = stderr_of(&mut child);
    let (status, _) = wait_sampling(&mut child);
    assert_eq!(status.code(), Some(124), "{}", err.recv().unwrap());
    h.assert_tmp_clean();
}

#[test]
fn a_guest_that_stops_reading_cannot_make_the_run_deaf_to_ctrl_c() {
    let h = Hostile::new("deaf-int");
    let mut child = h
        .command("stop-reading", &[], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    endless_stdin(&mut child);
    let err = stderr_of(&mut child);
    // Long enough for the socket buffers to fill and every send to block.
    std::thread::sleep(Duration::from_secs(2));
    supermin_tests::send_signal(child.id(), "INT");
    let (status, _) = wait_sampling(&mut child);
    let stderr = err.recv().unwrap();
    assert_eq!(status.code(), Some(130), "128 + SIGINT: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    h.assert_tmp_clean();
}

// Regression: an upload to a guest that does not read blocked in write_all
// with no deadline.
#[test]
fn an_upload_to_a_guest_that_stops_reading_ends_at_the_timeout() {
    let h = Hostile::new("deaf-upload");
    let big = h.dir.join("big");
    std::fs::write(&big, vec![7u8; 32 << 20]).unwrap();
    let mut opts = h.session_options();
    opts.timeout = Some(Duration::from_secs(4));
    let mut session = with_mode("stop-reading", || Session::boot(&opts)).expect("boot");
    let r = session.upload(&big, Path::new("/tmp/big"), 0o644);
    assert!(matches!(r, Err(LaunchError::Timeout { .. })), "{r:?}");
    drop(session);
    h.assert_tmp_clean();
}

#[test]
fn an_endless_download_stops_at_its_limit_and_leaves_no_file() {
    let h = Hostile::new("download");
    let opts = h.session_options();
    let mut session = with_mode("endless-download", || Session::boot(&opts)).expect("boot");
    let local = h.dir.join("got");
    let r = session.download(Path::new("/dev/zero"), &local, 10 << 20);
    assert!(
        matches!(r, Err(LaunchError::DownloadTooLarge { limit, .. }) if limit == 10 << 20),
        "{r:?}"
    );
    assert!(!local.exists());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(session);
    h.assert_tmp_clean();
}

// Regression: Exit(Signal(i32::MAX)) overflowed 128 + N: a panic in debug
// builds, exit status 0 in release.
#[test]
fn a_signal_number_out_of_range_is_a_protocol_error_not_a_panic() {
    let h = Hostile::new("signal");
    let out = h
        .command("signal-overflow", &["--timeout", "30"], &["true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("signal number"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    h.assert_tmp_clean();
}

#[test]
fn escape_sequences_from_the_guest_never_reach_the_terminal() {
    let h = Hostile::new("escape");
    let out = h
        .command("escape-text", &["--timeout", "30"], &["true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("red"), "{stderr}");
    for bad in ['\x1b', '\x07', '\r'] {
        assert!(!stderr.contains(bad), "{bad:?} reached stderr: {stderr:?}");
    }
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    h.assert_tmp_clean();
}

#[test]
fn a_named_qcow2_that_points_at_host_files_is_refused_in_one_line() {
    let h = Hostile::new("qcow2-refs");
    let secret = h.dir.join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    let backed = h.dir.join("backed.qcow2");
    let data_file = h.dir.join("data.qcow2");
    let run = |args: &[&str]| {
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(args)
            .status()
            .expect("qemu-img (qemu-utils)");
        assert!(ok.success(), "qemu-img {args:?}");
    };
    run(&[
        "-F",
        "raw",
        "-b",
        &secret.to_string_lossy(),
        &backed.to_string_lossy(),
        "1M",
    ]);
    let opt = format!("data_file={},data_file_raw=on", secret.display());
    run(&["-o", &opt, &data_file.to_string_lossy(), "1M"]);
    for (disk, expect) in [
        (&backed, "allow-backing"),
        (&data_file, "external data file"),
    ] {
        let spec = format!("{}:format=qcow2", disk.display());
        let out = h
            .command("stop-reading", &["--add", &spec], &["true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("refused"), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    h.assert_tmp_clean();
}

/// Runs `f` with `HOSTILE_MODE` set for the fake qemu it starts. nextest
/// runs each test in a process of its own, so no other test sees it.
fn with_mode<T>(mode: &str, f: impl FnOnce() -> T) -> T {
    std::env::set_var("HOSTILE_MODE", mode);
    let r = f();
    std::env::remove_var("HOSTILE_MODE");
    r
}

/// Every path under `dir`, relative, for "nothing was created here" checks.
fn tree_of(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

#[test]
fn copy_out_refuses_names_that_would_leave_the_destination() {
    for (name, why) in [("../escape", "slash"), ("a/b", "slash"), ("..", "parent")] {
        let h = Hostile::new("bad-name");
        let outer = h.dir.join("outer");
        let dest = outer.join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        let spec = format!("/x:{}", dest.display());
        let out = h
            .command("bad-name", &["--copy-out", &spec], &["true"])
            .env("HOSTILE_NAME", name)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("not a safe file name"), "{stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        // The top directory is ours (named by the host); nothing else was made.
        assert_eq!(tree_of(&outer), [PathBuf::from("dest"), "dest/x".into()]);
        h.assert_tmp_clean();
    }
}

#[test]
fn copy_out_never_follows_a_symlink_the_guest_had_us_make() {
    let h = Hostile::new("symlink-then-dir");
    let elsewhere = h.dir.join("elsewhere");
    let dest = h.dir.join("dest");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&dest).unwrap();
    // The first copy-out makes dest/x -> elsewhere; the second finds x a
    // directory holding `pwned` and must not write through the link.
    let spec = format!("/x:{}", dest.display());
    let out = h
        .command(
            "symlink-then-dir",
            &["--copy-out", &spec, "--copy-out", &spec],
            &["true"],
        )
        .env("HOSTILE_TARGET", &elsewhere)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(tree_of(&elsewhere).is_empty(), "{:?}", tree_of(&elsewhere));
    assert_eq!(
        std::fs::read_link(dest.join("x")).unwrap(),
        elsewhere,
        "the symlink itself is kept as a symlink"
    );
    h.assert_tmp_clean();
}

#[test]
fn an_endless_copy_out_stops_at_its_limit_and_leaves_no_file() {
    let h = Hostile::new("endless-copy-out");
    let dest = h.dir.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let spec = format!("/x:{}", dest.display());
    let mut child = h
        .command(
            "endless-copy-out",
            &[
                "--copy-out",
                &spec,
                "--copy-out-limit",
                "8M",
                "--timeout",
                "60",
            ],
            &["true"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_of(&mut child);
    let (status, peak) = wait_sampling(&mut child);
    let stderr = err.recv().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("8388608-byte limit"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(tree_of(&dest).is_empty(), "{:?}", tree_of(&dest));
    assert!(peak < MEMORY_LIMIT_KIB, "the launcher grew to {peak} KiB");
    h.assert_tmp_clean();
}
