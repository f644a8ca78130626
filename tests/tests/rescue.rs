//! End-to-end tests of `supermin run` as a rescue tool: the interactive
//! shell (`-i`) driven through tmux as a user would type, and files copied
//! in and out (`--copy-in`, `--copy-out`) with `--env` and `--cwd`, on real
//! appliances built by `supermin --build` from this host and booted under
//! TCG. The hostile-guest side of copy-out is in `hostile.rs`.
//!
//! Each test has its own scratch directory, which is also the launcher's
//! `$TMPDIR` (left empty however the run ended), and a watchdog.

#![allow(clippy::cast_possible_truncation)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use supermin_tests::{host_kernel, supermin_bin, TempDir};

/// Far above a healthy TCG boot and command here; only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(180);

struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = TempDir::new(&format!("rescue-{tag}"));
        std::fs::create_dir(dir.join("tmp")).unwrap();
        Scratch { dir }
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The default appliance built by `supermin --build`, plus its `vmlinux`.
    fn appliance(&self) -> PathBuf {
        let out = self.dir.join("app");
        let built = Command::new(supermin_bin())
            .args(["--build", "-f", "ext2", "-o"])
            .arg(&out)
            .env("TMPDIR", self.tmp())
            .env("LIBGUESTFS_CACHEDIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run supermin --build");
        assert!(
            built.status.success(),
            "supermin --build failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let kernel = host_kernel().path;
        supermin_kernel_probe::extract_vmlinux(&kernel, &out.join("vmlinux"))
            .unwrap_or_else(|e| panic!("extracting vmlinux from {}: {e}", kernel.display()));
        out
    }

    fn run(&self, app: &Path, args: &[&str]) -> Output {
        self.run_with_umask(app, None, args)
    }

    /// [`Scratch::run`], with `umask` set first when given (through `sh`).
    fn run_with_umask(&self, app: &Path, umask: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = match umask {
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("umask {mask} && exec \"$0\" \"$@\"")])
                    .arg(supermin_bin());
                sh
            }
            None => Command::new(supermin_bin()),
        };
        cmd.arg("run")
            .arg("--appliance")
            .arg(app)
            .args(["--accel", "tcg", "--timeout", "150"])
            .args(args)
            .env("TMPDIR", self.tmp())
            .env("LIBGUESTFS_CACHEDIR", self.dir.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("SUPERMIN_ACCEL")
            .stdin(Stdio::null());
        cmd.output().expect("run supermin run")
    }

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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kind and mode, size, mtime (to the nanosecond) and link target of every
/// path under `root`; contents are the caller's to compare.
fn describe_tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let target = if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        // A directory's size is the filesystem's business, not the copy's.
        let size = if m.is_dir() { 0 } else { m.size() };
        out.push(format!(
            "{rel} mode={:o} size={size} mtime={}.{:09} target={target}",
            m.mode(),
            m.mtime(),
            m.mtime_nsec()
        ));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Sets a path's times (a symlink's own) to `sec.nsec`.
fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let ok = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{sec}.{nsec:09}"))
        .arg(path)
        .status()
        .expect("touch");
    assert!(ok.success(), "touch {}", path.display());
}

#[test]
fn a_tree_copied_in_and_out_again_comes_back_identical_and_env_and_cwd_reach_the_command() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("copy");
    let app = s.appliance();
    // The tree: a 20 MiB file, a file in a subdirectory with an unusual mode,
    // an empty directory and a relative symlink, all with chosen times.
    let src = s.dir.join("src");
    let tree = src.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::create_dir(tree.join("empty")).unwrap();
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("big"), &big).unwrap();
    std::fs::set_permissions(tree.join("big"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::write(tree.join("sub/f"), b"small\n").unwrap();
    std::fs::set_permissions(tree.join("sub/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("sub/f", tree.join("link")).unwrap();
    set_mtime(&tree.join("big"), 981_173_106, 123_456_789);
    set_mtime(&tree.join("sub/f"), 1_000_000_000, 1);
    set_mtime(&tree.join("link"), 1_009_843_200, 0);
    for d in ["empty", "sub", ""] {
        set_mtime(&tree.join(d), 1_041_379_200, 500);
    }
    std::fs::set_permissions(tree.join("empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dest = s.dir.join("dest");
    std::fs::create_dir(&dest).unwrap();

    let copy_in = format!("{}:/root", tree.display());
    let copy_out = format!("/root/tree:{}", dest.display());
    let started = Instant::now();
    let out = s.run(
        &app,
        &[
            "--copy-in",
            &copy_in,
            "--copy-out",
            &copy_out,
            "--env",
            "GREETING=hello there",
            "--cwd",
            "/root/tree/sub",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; cat f; readlink ../link; exit 7",
        ],
    );
    assert!(started.elapsed() < WATCHDOG);
    // The command's failure does not stop the copy-out; its status is ours.
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hello there\n/root/tree/sub\nsmall\nsub/f\n"
    );
    assert_eq!(describe_tree(&tree), describe_tree(&dest.join("tree")));
    assert!(std::fs::read(dest.join("tree/big")).unwrap() == big);
    assert_eq!(std::fs::read(dest.join("tree/sub/f")).unwrap(), b"small\n");
    s.assert_tmp_clean();
}

// Regression: --copy-out once gave host files the guest's modes as they were
// (a world-writable file in the guest came out world-writable) instead of
// applying our umask as `cp` does.
#[test]
fn copy_out_applies_the_host_umask_to_the_guests_modes() {
    let s = Scratch::new("umask");
    let app = s.appliance();
    let dest = s.dir.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let spec = format!("/root/out:{}", dest.display());
    let out = s.run_with_umask(
        &app,
        Some("027"),
        &[
            "--copy-out",
            &spec,
            "--",
            "sh",
            "-c",
            "mkdir /root/out && echo x >/root/out/rw && echo y >/root/out/exe && \
             chmod 0666 /root/out/rw && chmod 0777 /root/out/exe /root/out",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("out"), 0o750);
    assert_eq!(mode("out/rw"), 0o640);
    assert_eq!(mode("out/exe"), 0o750);
    s.assert_tmp_clean();
}

#[test]
fn copy_out_of_a_missing_path_is_one_line_naming_it_and_exit_1() {
    let s = Scratch::new("missing");
    let app = s.appliance();
    let dest = s.dir.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let spec = format!("/no/such/file:{}", dest.display());
    let out = s.run(&app, &["--copy-out", &spec, "--", "true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("/no/such/file"), "{stderr}");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    s.assert_tmp_clean();
}

#[test]
fn interactive_without_a_terminal_is_one_line_and_exit_1() {
    let s = Scratch::new("no-tty");
    // No appliance needed: refused before anything is built or booted.
    let out = s.run(&s.dir.join("no-appliance"), &["-i"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("-i needs a terminal"), "{stderr}");
}

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux (install it: .ci/setup does)")
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "rescue"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success(), "send-keys {keys:?}");
    }

    fn screen(&self) -> String {
        text(&self.cmd(&["capture-pane", "-p", "-t", "rescue"]).stdout)
    }

    /// Waits until the screen satisfies `pred`; fails with the screen.
    #[track_caller]
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + WATCHDOG;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > until {
                panic!("waited {WATCHDOG:?} for {what}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Root's prompt, bash's (`bash-5.2# `) or sh's (`# `).
fn has_prompt(screen: &str) -> bool {
    screen.lines().any(|l| l.trim_end().ends_with('#'))
}

/// `supermin run -i ARGS` in a 100x30 tmux pane, between two `stty -a`s of
/// the pane's terminal; its exit status goes to a file.
struct Session {
    tmux: Tmux,
    status: PathBuf,
    before: PathBuf,
    after: PathBuf,
}

impl Session {
    fn start(s: &Scratch, app: &Path, args: &str) -> Session {
        let status = s.dir.join("status");
        let (before, after) = (s.dir.join("stty-before"), s.dir.join("stty-after"));
        let script = s.dir.join("session.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nstty -a > '{before}'\n'{bin}' run --appliance '{app}' --accel tcg {args} -i\necho $? > '{status}.tmp'\nstty -a > '{after}'\nmv '{status}.tmp' '{status}'\nexec sleep 1000\n",
                before = before.display(),
                after = after.display(),
                bin = supermin_bin().display(),
                app = app.display(),
                status = status.display(),
            ),
        )
        .unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tmux = Tmux {
            socket: format!(
                "supermin-rescue-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        };
        let started = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "rescue",
            "-x",
            "100",
            "-y",
            "30",
            "-e",
            &format!("TMPDIR={}", s.tmp().display()),
            "-e",
            &format!("LIBGUESTFS_CACHEDIR={}", s.dir.path().display()),
            "-e",
            "XDG_RUNTIME_DIR=",
            "sh",
            &script.display().to_string(),
        ]);
        assert!(started.status.success(), "{}", text(&started.stderr));
        Session {
            tmux,
            status,
            before,
            after,
        }
    }

    /// The launcher's exit status, once it has ended.
    #[track_caller]
    fn wait_exit(&self) -> i32 {
        let until = Instant::now() + WATCHDOG;
        while !self.status.exists() {
            assert!(
                Instant::now() < until,
                "no exit; screen:\n{}",
                self.tmux.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::fs::read_to_string(&self.status)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[track_caller]
    fn assert_terminal_restored(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.before).unwrap(),
            std::fs::read_to_string(&self.after).unwrap(),
            "the terminal was not restored"
        );
    }
}

#[test]
fn interactive_shell_has_a_real_terminal_job_control_and_returns_the_exit_status() {
    let s = Scratch::new("interactive");
    let app = s.appliance();
    let session = Session::start(&s, &app, "--timeout 170");
    let tmux = &session.tmux;
    let status = &session.status;
    tmux.wait_for("the shell's prompt", has_prompt);
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("stty size of the pane", |s| s.contains("\n30 100"));

    tmux.cmd(&["resize-window", "-t", "rescue", "-x", "120", "-y", "40"]);
    // The resize travels as a message; give it a moment before asking.
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("stty size after the resize", |s| s.contains("\n40 120"));

    // Ctrl-C goes to the guest's foreground job, not to the launcher.
    tmux.keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_secs(1));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo alive-$((40+2))", "Enter"]);
    tmux.wait_for("the shell after Ctrl-C", |s| s.contains("\nalive-42"));
    assert!(!status.exists(), "the launcher ended on Ctrl-C");

    // Back to the size it started with, so that `stty -a` can be compared.
    tmux.cmd(&["resize-window", "-t", "rescue", "-x", "100", "-y", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["exit 3", "Enter"]);
    assert_eq!(session.wait_exit(), 3);
    session.assert_terminal_restored();
    s.assert_tmp_clean();
}

#[test]
fn the_escape_and_the_timeout_end_a_stuck_session_and_restore_the_terminal() {
    let s = Scratch::new("escape");
    let app = s.appliance();
    let session = Session::start(&s, &app, "--timeout 170");
    session.tmux.wait_for("the shell's prompt", has_prompt);
    // A job that ignores Ctrl-C: only the escape gets out.
    session.tmux.keys(&["trap '' INT; sleep 1000", "Enter"]);
    std::thread::sleep(Duration::from_secs(1));
    session.tmux.keys(&["C-c", "Enter", "~."]);
    assert_eq!(session.wait_exit(), 255);
    session.assert_terminal_restored();
    let screen = session.tmux.screen();
    assert!(screen.contains("escape"), "{screen}");
    drop(session);
    s.assert_tmp_clean();
    std::fs::remove_file(s.dir.join("status")).unwrap();

    let session = Session::start(&s, &app, "--timeout 40");
    session.tmux.wait_for("the shell's prompt", has_prompt);
    session.tmux.keys(&["sleep 1000", "Enter"]);
    assert_eq!(session.wait_exit(), 124, "like timeout(1)");
    session.assert_terminal_restored();
    s.assert_tmp_clean();
}
